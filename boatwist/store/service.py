"""
SQLite storage of the operators' chat history and the audit log.

Why a dedicated writer thread: every commit is fsync'd (``synchronous=FULL``)
because a device may lose power at any moment and a message that was shown
to anyone must survive it.  On cheap flash an fsync can take tens or hundreds
of milliseconds; on the reactor thread that would stall the heartbeat that
detects dead peers.  So all SQLite work runs on ONE thread of a private
L{ThreadPool} (one thread: SQLite serialises writers anyway, and a single
thread keeps operations in the order they were asked for).  The connection
is created on that thread and never leaves it (sqlite3's check_same_thread).

The durability contract: L{Store.add_message} fires only after COMMIT has
returned, so the caller broadcasts or acknowledges a message only once it is
on disk; ``kill -9`` or a power cut at any moment loses nothing anyone saw.

Why errors are translated: a full disk is an expected condition on a device
(logs, uploads) that the chat must survive, so it is a distinct L{StoreFull}
("message not saved", logged once) and the store keeps working once space is
freed; everything else is L{StoreError}.

Schema: a ``version`` table and SQL files shipped as package data in
``boatwist/schema`` (``vN.sql`` for a fresh database, ``upgrade-to-vN.sql``
for each step), applied in one transaction; a database newer than this code
is refused rather than misread.

Why the store has a size and never fills the disk for good: a device's
state directory may be a small flash partition.  Every retained table is
listed in L{RETAINED} with its share of C{max_bytes}; after each insert the
pages in use are compared with the budget and, past it, the oldest rows of
the tables over their share are deleted (their pages are reused, so the
file stops growing).  The WAL is bounded too: C{wal_autocheckpoint} is a
fraction of the budget (SQLite's default of 1,000 pages is 4 MB, more than
a small partition has) and C{journal_size_limit} truncates it after each
checkpoint; after pruning, at open, and when a write meets a full disk, the
WAL is checkpointed and truncated.  A full disk (filled by someone else)
deletes nothing: the write fails with L{StoreFull}, and succeeds again once
there is room -- also after a restart, where a store that could not open is
opened again by the next write.

Why age retention does not use the wall clock at all: a device without an
RTC steps its clock by days or decades (NTP at boot, a wrong answer), and a
step forward -- while running, or while switched off, found at the next
start -- would make every row look old.  Age is counted on the store's own
run clock instead: the seconds it has been open, added up over every run
(the monotonic clock while open, persisted in the C{run_clock} table in the
same transaction as every insert).  Each row carries the run clock it was
written at (C{kept_at}); it goes once the store has run C{retention_days}
since.  Time switched off does not count -- nobody can know how long it
was -- so history is kept longer across downtime, never shorter; count and
size retention still bound it.
"""

from __future__ import annotations

import errno
import math
import os
import sqlite3
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, Sequence, TypeVar, cast

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger
from twisted.python.failure import Failure

from boatwist.store.operations import (
    ControlValue,
    OperationRecord,
    insert_operation,
    select_operations,
    select_values,
)
from boatwist.workers import Runner, SynchronousRunner, ThreadRunner

__all__ = [
    "SCHEMA_VERSION",
    "Message",
    "RETAINED",
    "Retention",
    "Runner",
    "Store",
    "StoreError",
    "StoreFull",
    "StoreVersionError",
    "SynchronousRunner",
    "ThreadRunner",
    "prepare_schema",
    "read_schema",
    "size_budget",
]

_T = TypeVar("_T")

#: The schema version this code reads and writes (``boatwist/store/schema/v3.sql``).
SCHEMA_VERSION = 3

#: Where a chat message may come from (the ``via`` column's CHECK).
VIAS = ("web", "chat")

#: Most messages one history page may hold: bounds the work a single request
#: can make the writer thread do.
MAX_HISTORY_PAGE = 500

#: Most audit entries one audit_log call returns, for the same reason.
MAX_AUDIT_PAGE = 1000

#: How many add_message commit durations L{Store.commit_timings} keeps.
COMMIT_TIMINGS_KEPT = 1000

#: Milliseconds SQLite waits for a lock held by another process (an operator's
#: ``sqlite3`` shell, a backup) before failing; it waits on the writer thread.
BUSY_TIMEOUT_MS = 5000

#: SQLite's primary result code for "database or disk is full".
_SQLITE_FULL = 13

_SECONDS_PER_DAY = 86400.0


@dataclass(frozen=True)
class Retention:
    """
    How one table is kept: the rules are generic so that every table added
    later (operations, control values) states its own line in L{RETAINED}.
    The table needs an AUTOINCREMENT C{id} (oldest first) and an indexed
    run-clock column (C{kept_at}), which L{_Database} sets on every insert.
    """

    table: str
    #: The share of the store's size budget the table may fill.
    share: float


#: Every table retention applies to (a fixed list, never user input); shares add up to at most 1.
RETAINED: tuple[Retention, ...] = (
    Retention("messages", share=0.4),
    # Logins and refusals: a flood of failed logins must not push chat history out.
    Retention("audit", share=0.3),
    # What was done to the device (control_values, one row per control, is never pruned).
    Retention("operations", share=0.3),
)

#: The smallest size budget (bytes): below it SQLite's own pages would not fit.
MIN_BYTES = 256 * 1024
#: The WAL's part of the budget.
WAL_SHARE = 0.25
#: Past the budget, prune down to this fraction of it (so that not every insert prunes).
PRUNE_TO = 0.9
#: Seconds between attempts to open a store that could not be opened (a full disk at start).
REOPEN_INTERVAL = 5.0


def size_budget(setting: int, directory: str) -> int:
    """
    C{[store] max_size} in bytes: C{setting} when given, else (0: auto) a
    quarter of the file system holding C{directory}, at most 64 MiB; never
    below L{MIN_BYTES}.
    """
    if setting > 0:
        return max(MIN_BYTES, setting)
    try:
        stats = os.statvfs(directory)
        total = stats.f_blocks * stats.f_frsize
    except OSError:
        total = 256 * 1024 * 1024
    return max(MIN_BYTES, min(64 * 1024 * 1024, total // 4))


class StoreError(Exception):
    """The store could not do what was asked; the message says what and where."""


class StoreFull(StoreError):
    """
    The disk (or the database's size limit) is full: nothing was saved.

    Distinct from L{StoreError} because it is an expected, recoverable
    condition the caller reports as "message not saved"; the store keeps
    running and the next write after space is freed succeeds.
    """


class StoreVersionError(StoreError):
    """
    The database was written by a newer boatwist: its schema is refused
    rather than misread or "upgraded" backwards.
    """


@dataclass(frozen=True)
class Message:
    """One chat message as stored; C{id} orders messages, C{at} is for display."""

    id: int
    user: str
    text: str
    via: str
    action: bool
    at: float

    def as_event_data(self) -> dict[str, Any]:
        """The ``chat`` event's data (docs/internals.md), so every front end agrees."""
        return {
            "id": self.id,
            "user": self.user,
            "text": self.text,
            "via": self.via,
            "action": self.action,
            "at": self.at,
        }


def _default_reactor() -> IReactorFromThreads:
    """The global reactor, imported only when nobody injected one."""
    from twisted.internet import reactor

    return cast(IReactorFromThreads, reactor)


# ------------------------------------------------------------------- schema

SchemaReader = Callable[[str], str]


def read_schema(name: str) -> str:
    """
    The text of ``boatwist/schema/<name>``, read as package data so it works
    from a wheel or a zip; FileNotFoundError when no such file is shipped.
    """
    from importlib import resources  # here: only the store's thread needs it, after listening

    return (resources.files("boatwist.store") / "schema" / name).read_text(encoding="utf-8")


def _statements(script: str) -> Iterator[str]:
    """
    Split a schema file into single statements.

    Not C{executescript}: it COMMITs first and runs outside our transaction,
    which would make creation and upgrades non-atomic.  C{complete_statement}
    knows about string literals and trigger bodies, so ``;`` inside them is safe.
    """
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending
            pending = ""
    if pending.strip():
        yield pending  # trailing comments run as a no-op; a broken statement fails loudly


def _found_version(conn: sqlite3.Connection, where: str) -> int | None:
    """The schema version of the database, or None for an empty (new) one."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        return None
    if "version" not in tables:
        names = ", ".join(sorted(tables))
        raise StoreError(f"{where}: not a boatwist store: it holds tables ({names}) but no version table")
    rows = conn.execute("SELECT version FROM version").fetchall()
    if len(rows) != 1 or not isinstance(rows[0][0], int):
        raise StoreError(f"{where}: damaged version table: expected one whole number, found {rows!r}")
    return int(rows[0][0])


def prepare_schema(
    conn: sqlite3.Connection,
    *,
    where: str = "<database>",
    target_version: int = SCHEMA_VERSION,
    read: SchemaReader = read_schema,
) -> int | None:
    """
    Create or upgrade the schema on C{conn} (opened with C{isolation_level=None})
    to C{target_version}, all in ONE transaction: a power cut or a failing
    upgrade step leaves the database exactly as it was.

    Returns the version found before (None: the database was new).  Raises
    L{StoreVersionError} for a database newer than C{target_version} and
    L{StoreError} for anything that is not a boatwist store or cannot be
    upgraded.  C{read} is injectable so the upgrade machinery can be tested
    with schema versions this code does not ship yet.
    """
    step = "reading the schema version"
    try:
        conn.execute("BEGIN IMMEDIATE")  # IMMEDIATE: two processes must not both create
        found = _found_version(conn, where)
        if found is None:
            step = f"creating schema v{target_version}"
            for statement in _statements(read(f"v{target_version}.sql")):
                conn.execute(statement)
            conn.execute("INSERT INTO version (version) VALUES (?)", (target_version,))
        elif found > target_version:
            raise StoreVersionError(
                f"{where}: the database has schema version {found}, newer than the {target_version} "
                f"this boatwist understands; refusing to open it (run a newer boatwist, or move the file away)"
            )
        else:
            for version in range(found + 1, target_version + 1):
                step = f"upgrading the schema from v{version - 1} to v{version}"
                try:
                    script = read(f"upgrade-to-v{version}.sql")
                except FileNotFoundError:
                    raise StoreError(
                        f"{where}: no upgrade from schema v{version - 1} to v{version} is shipped; left at v{found}"
                    ) from None
                for statement in _statements(script):
                    conn.execute(statement)
            conn.execute("UPDATE version SET version = ?", (target_version,))
        conn.execute("COMMIT")
    except sqlite3.Error as e:
        _rollback(conn)
        raise _translate(e, f"{where}: {step}") from e
    except BaseException:
        _rollback(conn)
        raise
    return found


# ---------------------------------------------------------------- the database


def _translate(error: BaseException, where: str) -> StoreError:
    """
    Map a low-level error to L{StoreFull} (disk full: SQLITE_FULL or ENOSPC)
    or L{StoreError}, so callers need to know nothing about sqlite3.
    """
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return StoreFull(f"{where}: disk full ({error.strerror or error})")
    if isinstance(error, sqlite3.Error):
        code = getattr(error, "sqlite_errorcode", None)  # Python >= 3.11
        if (code is not None and code & 0xFF == _SQLITE_FULL) or "database or disk is full" in str(error):
            return StoreFull(f"{where}: database or disk is full")
    return StoreError(f"{where}: {error}")


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back whatever is open; after SQLITE_FULL SQLite may already have."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # nothing more can be done; the next BEGIN will tell


def _message(row: Sequence[Any]) -> Message:
    return Message(id=row[0], user=row[1], text=row[2], via=row[3], action=bool(row[4]), at=row[5])


class _Database:
    """
    Everything that touches SQLite.  Lives on the writer thread: nothing here
    is read by the reactor thread; results travel back as return values.
    """

    def __init__(self, path: str, retention_count: int, retention_seconds: float, max_bytes: int,
                 monotonic: Callable[[], float]) -> None:
        """
        @param monotonic: how the run clock advances while open, and the pace
            of attempts to reopen.
        """
        self.path = path
        self.retention_count = retention_count
        self.retention_seconds = retention_seconds
        self.rules = RETAINED
        self.wal_bytes = int(max_bytes * WAL_SHARE)
        self.data_bytes = max_bytes - self.wal_bytes
        self.page_size = 4096
        self._monotonic = monotonic
        #: The run clock: its persisted value at open, and the monotonic clock then.
        self._run_base = 0.0
        self._run_since = monotonic()
        self.connection: sqlite3.Connection | None = None
        self.not_open_because = "not started"
        self._next_open = float("-inf")
        #: Rows deleted for size since open, per table (what a test or a log line reports).
        self.pruned_for_size: dict[str, int] = {}

    def open(self) -> str:
        """Connect (on this thread), set the pragmas, prepare the schema; returns the journal mode."""
        self._next_open = self._monotonic() + REOPEN_INTERVAL
        try:
            conn = sqlite3.connect(self.path, isolation_level=None)
        except sqlite3.Error as e:
            self.not_open_because = str(e)
            raise _translate(e, f"{self.path}: opening") from e
        try:
            # busy_timeout first, so the pragmas below wait for another process's lock too.
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            # A WAL left by the last run (a crash, a full disk) goes into the database first.
            self._checkpoint(conn)
            # WAL: one fsync per commit (of the log) instead of two, readers never block.
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            # FULL: in WAL mode NORMAL may lose the last commits on power loss;
            # a message acknowledged to the room must survive it.
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            self.page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
            # The WAL is checkpointed at a fraction of the budget and truncated after.
            conn.execute(f"PRAGMA journal_size_limit = {self.wal_bytes}")
            conn.execute(f"PRAGMA wal_autocheckpoint = {max(8, self.wal_bytes // self.page_size // 2)}")
            prepare_schema(conn, where=self.path)
            self._run_base = float(conn.execute("SELECT seconds FROM run_clock").fetchone()[0])
            self._run_since = self._monotonic()
            try:
                # Retention may have been lowered, or the device was off for months.
                self._in_transaction(conn, lambda: self._prune_all(conn), "pruning on open")
                self._checkpoint(conn)
            except StoreFull:
                pass  # the disk is full: nothing could be pruned, nothing needs to be; writes will say so
        except BaseException as e:
            conn.close()
            self.not_open_because = str(e)
            if isinstance(e, sqlite3.Error):
                raise _translate(e, f"{self.path}: opening") from e
            raise
        self.connection = conn
        return str(mode)

    def run_clock(self) -> float:
        """Seconds this store has been open, over every run (see the module docstring)."""
        return self._run_base + max(0.0, self._monotonic() - self._run_since)

    def _keep_run_clock(self, conn: sqlite3.Connection) -> float:
        """Write the run clock (inside the caller's transaction); returns it."""
        now = self.run_clock()
        conn.execute("UPDATE run_clock SET seconds = ?", (now,))
        return now

    def close(self) -> None:
        conn, self.connection = self.connection, None
        self.not_open_because = "stopped"
        if conn is not None:
            try:
                # The time since the last insert counts too (a crash loses only that: kept longer).
                self._in_transaction(conn, lambda: self._keep_run_clock(conn), "keeping the run clock")
            except StoreError:
                pass  # a full disk: the last insert's value stands
            conn.close()  # the last connection checkpoints the WAL into the database

    def _require(self) -> sqlite3.Connection:
        if self.connection is None and self.not_open_because != "stopped" and self._monotonic() >= self._next_open:
            # It could not be opened (a full disk at start): try again, now that a write wants it.
            self.open()
        if self.connection is None:
            raise StoreError(f"{self.path}: the store is not open ({self.not_open_because})")
        return self.connection

    @staticmethod
    def _checkpoint(conn: sqlite3.Connection) -> None:
        """Move the WAL into the database and truncate it; a full disk or a reader only delays it."""
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error:
            pass

    def _in_transaction(self, conn: sqlite3.Connection, work: Callable[[], _T], what: str) -> tuple[_T, float]:
        """
        Run C{work} in a write transaction; returns its result and how long
        the COMMIT (where the fsyncs happen) took, in seconds.  A full disk
        is met with a checkpoint that truncates the WAL, and one more try:
        the WAL may be what filled it.
        """
        for attempt in (1, 2):
            try:
                # IMMEDIATE: take the write lock now, so a busy database fails (or
                # waits) here and not halfway through.
                conn.execute("BEGIN IMMEDIATE")
                result = work()
                started = time.perf_counter()
                conn.execute("COMMIT")
                return result, time.perf_counter() - started
            except (sqlite3.Error, OSError) as e:
                _rollback(conn)
                error = _translate(e, f"{self.path}: {what}")
                if attempt == 1 and isinstance(error, StoreFull):
                    self._checkpoint(conn)
                    continue
                raise error from e
            except BaseException:
                _rollback(conn)
                raise
        raise AssertionError("unreachable")

    # -- retention

    def _prune(self, conn: sqlite3.Connection, rule: Retention, newest_id: int | None, now: float) -> None:
        """
        Count and age retention of one table: cheap enough to run on every
        insert.  Ids are AUTOINCREMENT (never reused), so "id <= newest -
        count" is a rowid range delete; age uses the index on the time column.
        """
        table = rule.table
        if newest_id is not None and newest_id > self.retention_count:
            conn.execute(f"DELETE FROM {table} WHERE id <= ?", (newest_id - self.retention_count,))
        conn.execute(f"DELETE FROM {table} WHERE kept_at < ?", (now - self.retention_seconds,))

    def _prune_all(self, conn: sqlite3.Connection) -> None:
        now = self.run_clock()
        for rule in self.rules:
            newest = conn.execute(f"SELECT max(id) FROM {rule.table}").fetchone()[0]
            self._prune(conn, rule, newest, now)
        self._prune_for_size(conn)

    def _used_bytes(self, conn: sqlite3.Connection) -> int:
        pages = conn.execute("PRAGMA page_count").fetchone()[0] - conn.execute("PRAGMA freelist_count").fetchone()[0]
        return int(pages) * self.page_size

    def _table_bytes(self, conn: sqlite3.Connection) -> dict[str, int]:
        """Bytes each retained table uses with its indexes (dbstat; an estimate by row count without it)."""
        names = tuple(rule.table for rule in self.rules)
        try:
            rows = conn.execute(
                "SELECT m.tbl_name, sum(s.pgsize) FROM dbstat AS s JOIN sqlite_master AS m ON m.name = s.name "
                f"WHERE m.tbl_name IN ({','.join('?' * len(names))}) GROUP BY m.tbl_name", names).fetchall()
            return {name: int(size) for name, size in rows}
        except sqlite3.OperationalError:  # SQLite built without dbstat: share the pages by rows
            counts = {name: conn.execute(f"SELECT count(*) FROM {name}").fetchone()[0] for name in names}
            total = sum(counts.values()) or 1
            used = self._used_bytes(conn)
            return {name: used * count // total for name, count in counts.items()}

    def _prune_for_size(self, conn: sqlite3.Connection) -> bool:
        """
        Past the budget, delete the oldest rows of the tables over their
        share until the store is back under PRUNE_TO of it.  True if it did.
        """
        if self._used_bytes(conn) <= self.data_bytes:
            return False
        target = self.data_bytes * PRUNE_TO
        for _ in range(20):  # bounded: each round removes a tenth or more of a table
            sizes = self._table_bytes(conn)
            over = sorted(((sizes.get(rule.table, 0) / (rule.share * target), rule) for rule in self.rules),
                          key=lambda item: item[0], reverse=True)
            ratio, rule = over[0]
            rows = conn.execute(f"SELECT count(*) FROM {rule.table}").fetchone()[0]
            if ratio <= 1.0 or rows <= 1:
                break
            drop = max(1, min(rows - 1, math.ceil(rows * max(0.1, 1 - 1 / ratio))))
            conn.execute(f"DELETE FROM {rule.table} WHERE id IN "
                         f"(SELECT id FROM {rule.table} ORDER BY id LIMIT ?)", (drop,))
            self.pruned_for_size[rule.table] = self.pruned_for_size.get(rule.table, 0) + drop
            if self._used_bytes(conn) <= target:
                break
        return True

    def _insert(self, conn: sqlite3.Connection, rule: Retention, sql: str, params: Sequence[object],
                what: str) -> tuple[int, float]:
        """Insert one row and apply retention, in one transaction; checkpoint after pruning for size."""
        return self._inserting(conn, rule, lambda kept_at: conn.execute(sql, (*params, kept_at)).lastrowid, what)

    def _inserting(self, conn: sqlite3.Connection, rule: Retention, insert_row: Callable[[float], int | None],
                   what: str) -> tuple[int, float]:
        """
        Run C{insert_row(kept_at)} (the new row's id; C{kept_at} is the run
        clock, for its C{kept_at} column) and apply C{rule}, in one transaction
        that also keeps the run clock.
        """
        pruned = [False]

        def insert() -> int:
            now = self._keep_run_clock(conn)
            row_id = insert_row(now)
            assert row_id is not None
            self._prune(conn, rule, row_id, now)
            pruned[0] = self._prune_for_size(conn)
            return row_id

        row_id, commit = self._in_transaction(conn, insert, what)
        if pruned[0]:
            self._checkpoint(conn)
        return row_id, commit

    def _rule(self, table: str) -> Retention:
        return next(rule for rule in self.rules if rule.table == table)

    def add_message(self, user: str, text: str, via: str, action: bool, at: float) -> tuple[Message, float]:
        conn = self._require()
        message_id, commit = self._insert(
            conn, self._rule("messages"),
            "INSERT INTO messages (user, text, via, action, at, kept_at) VALUES (?, ?, ?, ?, ?, ?)",
            (user, text, via, int(action), at), "saving a chat message")
        return Message(message_id, user, text, via, action, at), commit

    def record_operation(self, record: OperationRecord, keep_value: bool) -> int:
        conn = self._require()
        return self._inserting(conn, self._rule("operations"),
                               lambda kept_at: insert_operation(conn, record, keep_value, kept_at),
                               f"saving an operation on {record.control}")[0]

    def operations(self, before: int | None, limit: int, control: str | None) -> list[OperationRecord]:
        conn = self._require()
        try:
            return select_operations(conn, before, limit, control)
        except sqlite3.Error as e:
            raise _translate(e, f"{self.path}: reading the operations") from e

    def control_values(self) -> dict[str, ControlValue]:
        conn = self._require()
        try:
            return select_values(conn)
        except sqlite3.Error as e:
            raise _translate(e, f"{self.path}: reading the control values") from e

    def audit(self, kind: str, user: str | None, address: str | None, detail: str, at: float) -> None:
        conn = self._require()
        self._insert(conn, self._rule("audit"),
                     "INSERT INTO audit (at, kind, user, address, detail, kept_at) VALUES (?, ?, ?, ?, ?, ?)",
                     (at, kind, user, address, detail), f"saving an audit entry ({kind})")

    def sizes(self) -> dict[str, int]:
        """Bytes of the database file, its WAL, and the pages in use."""
        conn = self._require()
        out = {"used": self._used_bytes(conn)}
        for name, suffix in (("file", ""), ("wal", "-wal")):
            try:
                out[name] = os.path.getsize(self.path + suffix)
            except OSError:
                out[name] = 0
        return out

    def _read(self, what: str, sql: str, params: Sequence[object]) -> list[Any]:
        conn = self._require()
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise _translate(e, f"{self.path}: {what}") from e

    def history(self, before: int | None, after: int | None, limit: int) -> list[Message]:
        conditions: list[str] = []
        params: list[Any] = []
        if after is not None:
            conditions.append("id > ?")
            params.append(after)
        if before is not None:
            conditions.append("id < ?")
            params.append(before)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        columns = "id, user, text, via, action, at"
        if after is not None:
            # The ones just after `after`: ascending already.
            sql = f"SELECT {columns} FROM messages {where} ORDER BY id ASC LIMIT ?"
            rows = self._read("reading the chat history", sql, (*params, limit))
        else:
            # The latest (before `before`): newest first by index, then reversed.
            sql = f"SELECT {columns} FROM messages {where} ORDER BY id DESC LIMIT ?"
            rows = self._read("reading the chat history", sql, (*params, limit))
            rows.reverse()
        return [_message(row) for row in rows]

    def audit_log(self, limit: int, before: int | None = None,
                  kinds: Sequence[str] | None = None) -> list[dict[str, Any]]:
        conditions: list[str] = []
        params: list[Any] = []
        if before is not None:
            conditions.append("id < ?")
            params.append(before)
        if kinds is not None:
            conditions.append(f"kind IN ({', '.join('?' * len(kinds))})")
            params.extend(kinds)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        sql = f"SELECT id, at, kind, user, address, detail FROM audit {where} ORDER BY id DESC LIMIT ?"
        rows = self._read("reading the audit log", sql, (*params, limit))
        rows.reverse()
        keys = ("id", "at", "kind", "user", "address", "detail")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def integrity_check(self) -> str:
        rows = self._read("checking integrity", "PRAGMA integrity_check", ())
        return "\n".join(str(row[0]) for row in rows)


# --------------------------------------------------------------------- store


class Store(Service):
    """
    The chat history and audit log, as a service: C{startService} opens the
    database on the writer thread, C{stopService} closes it and stops the
    thread (returning a Deferred, so twistd waits for the last commit).

    Every method returns a Deferred and never blocks the reactor.  Writes are
    serialised on the writer thread in the order they were asked for.
    """

    _log = Logger()

    def __init__(
        self,
        path: str,
        *,
        retention_count: int,
        retention_days: float,
        max_bytes: int = 16 * 1024 * 1024,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        runner: Runner | None = None,
        reactor: IReactorFromThreads | None = None,
    ) -> None:
        """
        @param path: the database file, or ``:memory:`` (unit tests).
        @param retention_count: messages (and audit entries) kept at most.
        @param retention_days: days a message (or audit entry) is kept.
        @param max_bytes: the size the database and its WAL stay within
            (L{size_budget} makes it from C{[store] max_size}).
        @param wall_clock: unix time for ``at`` (what people read; never
            retention); injected so tests control it.
        @param monotonic: how the run clock -- the age of rows -- advances
            while the store is open; tests pass a Clock.
        @param runner: where SQLite work runs; default a L{ThreadRunner} made
            at each start (a stopped thread pool cannot be restarted).
        @param reactor: for the default runner; default the global reactor,
            imported only then.
        """
        if retention_count < 1:
            raise ValueError(f"retention_count must be at least 1, not {retention_count}")
        if not retention_days > 0:
            raise ValueError(f"retention_days must be positive, not {retention_days}")
        self.path = path
        self._wall_clock = wall_clock
        self._monotonic = monotonic
        self._given_runner = runner
        self._reactor = reactor
        self._runner: Runner | None = None
        self._database = _Database(path, retention_count, retention_days * _SECONDS_PER_DAY,
                                   max(MIN_BYTES, max_bytes), monotonic)
        self._commit_timings: deque[float] = deque(maxlen=COMMIT_TIMINGS_KEPT)
        # Reactor-thread state only (callbacks run there):
        self._full = False

    # -- service

    def startService(self) -> None:
        """Start the writer thread and open the database on it."""
        super().startService()
        self._runner = self._given_runner or ThreadRunner(self._reactor or _default_reactor(), "boatwist-store")
        self._runner.start()
        d = self._runner.run(self._database.open)
        d.addCallbacks(self._did_open, self._open_failed)

    def _did_open(self, journal_mode: str) -> None:
        self._log.info("chat store {path} open (schema v{version}, journal {mode})",
                       path=self.path, version=SCHEMA_VERSION, mode=journal_mode)

    def _open_failed(self, failure: Failure) -> None:
        if isinstance(failure.value, StoreError):
            # An operator's problem (newer file, full disk, not a database): one clear line.
            self._log.critical("cannot open the chat store: {error}", error=failure.getErrorMessage())
        else:
            self._log.failure("cannot open the chat store {path}", failure, path=self.path)

    def stopService(self) -> Deferred[None]:
        """Close the connection on the writer thread (after queued work), then stop the thread."""
        super().stopService()
        runner, self._runner = self._runner, None
        if runner is None:
            return defer.succeed(None)
        d = runner.run(self._database.close)

        def failed(failure: Failure) -> None:
            self._log.error("closing the chat store {path} failed: {error}",
                            path=self.path, error=failure.getErrorMessage())

        def stop(_: object) -> None:
            runner.stop()

        d.addErrback(failed)
        d.addCallback(stop)
        return d

    # -- plumbing

    def _run(self, work: Callable[[], _T]) -> Deferred[_T]:
        if self._runner is None:
            return defer.fail(StoreError(f"{self.path}: the store is not running"))
        return self._runner.run(work)

    def _write(self, work: Callable[[], _T]) -> Deferred[_T]:
        """Run a write; track the disk-full state so it is logged once per episode."""
        d = self._run(work)
        d.addCallbacks(self._write_succeeded, self._write_failed)
        return d

    def _write_succeeded(self, result: _T) -> _T:
        if self._full:
            self._full = False
            self._log.info("chat store {path}: writes succeed again", path=self.path)
        return result

    def _write_failed(self, failure: Failure) -> Failure:
        if isinstance(failure.value, StoreFull):
            if not self._full:
                self._full = True
                self._log.error(
                    "chat store full, messages and audit entries are NOT being saved "
                    "(logged once until a write succeeds again): {error}",
                    error=failure.getErrorMessage(),
                )
        elif isinstance(failure.value, StoreError):
            self._log.error("chat store write failed: {error}", error=failure.getErrorMessage())
        return failure

    # -- the API

    def add_message(self, user: str, text: str, via: str, action: bool = False) -> Deferred[Message]:
        """
        Save a chat message.  Fires with the stored L{Message} (with its id)
        only after COMMIT: broadcast and acknowledge only then.  Fails with
        L{StoreFull} when the disk is full (nothing saved), L{StoreError}
        otherwise.  An unknown C{via} is a caller bug: ValueError at once.
        """
        if via not in VIAS:
            raise ValueError(f"via must be one of {', '.join(VIAS)}, not {via!r}")
        at = self._wall_clock()
        action = bool(action)
        d = self._write(lambda: self._database.add_message(user, text, via, action, at))
        return d.addCallback(self._record_commit)

    def _record_commit(self, result: tuple[Message, float]) -> Message:
        message, commit_seconds = result
        self._commit_timings.append(commit_seconds)
        return message

    @property
    def commit_timings(self) -> tuple[float, ...]:
        """
        Seconds the COMMIT of each of the last L{COMMIT_TIMINGS_KEPT}
        add_message calls took (the fsyncs), oldest first: what a benchmark
        reports as the time a message spends in SQLite's commit.
        """
        return tuple(self._commit_timings)

    def history(
        self, before: int | None = None, after: int | None = None, limit: int = 50
    ) -> Deferred[list[Message]]:
        """
        A page of history, oldest first, paged by id: with C{before}, the
        C{limit} messages just before that id; with C{after}, the ones just
        after it (with both, those just after C{after} and before C{before});
        with neither, the latest C{limit}.  C{limit} is clamped to 1..500.
        Ids are coerced with int() at once, so a bad one from a query string
        is a ValueError here rather than a strange comparison in SQL.
        """
        limit = max(1, min(MAX_HISTORY_PAGE, int(limit)))
        before = None if before is None else int(before)
        after = None if after is None else int(after)
        return self._run(lambda: self._database.history(before, after, limit))

    def audit(self, kind: str, user: str | None, address: str | None, detail: str = "") -> Deferred[None]:
        """
        Record who did what from where (kinds: login, login-failed, logout,
        refused, operation, ...).  Same failure modes as L{add_message}.
        """
        at = self._wall_clock()

        def write() -> None:
            self._database.audit(kind, user, address, detail, at)

        return self._write(write)

    def record_operation(self, record: OperationRecord, keep_value: bool) -> Deferred[OperationRecord]:
        """
        Save an operation (with C{keep_value}, also as its control's last
        value, in the same transaction).  Fires with the record and its id
        only after COMMIT: broadcast only then.  Fails like L{add_message}.
        """
        d = self._write(lambda: self._database.record_operation(record, keep_value))
        return d.addCallback(lambda operation_id: replace(record, id=operation_id))

    def operations(self, before: int | None = None, limit: int = 50,
                   control: str | None = None) -> Deferred[list[OperationRecord]]:
        """A page of operations, oldest first: the latest C{limit} (1..500) before id C{before}."""
        limit = max(1, min(MAX_HISTORY_PAGE, int(limit)))
        before = None if before is None else int(before)
        return self._run(lambda: self._database.operations(before, limit, control))

    def control_values(self) -> Deferred[dict[str, ControlValue]]:
        """Every control's last recorded value (restored at start)."""
        return self._run(self._database.control_values)

    def audit_log(self, limit: int = 100, before: int | None = None,
                  kinds: Sequence[str] | None = None) -> Deferred[list[dict[str, Any]]]:
        """
        The latest C{limit} audit entries (clamped to 1..1000), oldest first,
        as dicts with id, at, kind, user, address, detail: with C{before},
        those before that id; with C{kinds}, only entries of those kinds
        (the console's activity pages through logins, logouts and the floor).
        """
        limit = max(1, min(MAX_AUDIT_PAGE, int(limit)))
        before = None if before is None else int(before)
        wanted = None if kinds is None else tuple(str(kind) for kind in kinds)
        if wanted == ():
            return defer.succeed([])
        return self._run(lambda: self._database.audit_log(limit, before, wanted))

    def sizes(self) -> Deferred[dict[str, int]]:
        """Bytes of the database file (C{file}), its WAL (C{wal}) and the pages in use (C{used})."""
        return self._run(self._database.sizes)

    def integrity_check(self) -> Deferred[str]:
        """SQLite's ``PRAGMA integrity_check``: ``'ok'``, or the problems found, one a line."""
        return self._run(self._database.integrity_check)
