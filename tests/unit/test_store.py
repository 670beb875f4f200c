"""
Unit tests of boatwist.store.service: ``:memory:`` databases and a synchronous runner,
so every Deferred has fired by the time the call returns and nothing depends
on threads or timing.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import tempfile
from typing import Any, Callable

from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from boatwist.workers import SynchronousRunner
from boatwist.store.service import (
    COMMIT_TIMINGS_KEPT,
    SCHEMA_VERSION,
    Message,
    Store,
    StoreError,
    StoreFull,
    StoreVersionError,
    _translate,
    prepare_schema,
    read_schema,
)

DAY = 86400.0


def make_store(
    test: SynchronousTestCase,
    *,
    retention_count: int = 1000,
    retention_days: float = 30.0,
    clock: Clock | None = None,
    path: str = ":memory:",
) -> Store:
    """A started store on a synchronous runner, stopped at the end of the test."""
    clock = clock or Clock()
    store = Store(
        path,
        retention_count=retention_count,
        retention_days=retention_days,
        wall_clock=clock.seconds,
        monotonic=clock.seconds,
        runner=SynchronousRunner(),
    )
    store.startService()
    test.addCleanup(store.stopService)
    return store


def connection_of(store: Store) -> sqlite3.Connection:
    """The store's private connection: white-box access, for pragmas and limits."""
    conn = store._database.connection
    assert conn is not None
    return conn


def fake_schemas(files: dict[str, str]) -> Callable[[str], str]:
    """A schema reader over C{files} (name -> SQL) that fails like missing package data."""

    def read(name: str) -> str:
        if name not in files:
            raise FileNotFoundError(name)
        return files[name]

    return read


class MessageTests(SynchronousTestCase):
    def test_event_data(self) -> None:
        """as_event_data has exactly the chat event's keys from docs/internals.md."""
        message = Message(7, "ann", "hello", "chat", True, 12.5)
        self.assertEqual(
            message.as_event_data(),
            {"id": 7, "user": "ann", "text": "hello", "via": "chat", "action": True, "at": 12.5},
        )

    def test_add_message_round_trip(self) -> None:
        """add_message returns what was stored: fresh increasing ids, the clock's time, bool action."""
        clock = Clock()
        clock.advance(1000.0)
        store = make_store(self, clock=clock)
        first = self.successResultOf(store.add_message("ann", "hello", "web"))
        clock.advance(1.5)
        second = self.successResultOf(store.add_message("bob", "waves", "chat", action=True))
        self.assertEqual(first, Message(1, "ann", "hello", "web", False, 1000.0))
        self.assertEqual(second, Message(2, "bob", "waves", "chat", True, 1001.5))
        self.assertEqual(self.successResultOf(store.history()), [first, second])

    def test_text_is_kept_verbatim(self) -> None:
        """Unicode, quotes, newlines and SQL-looking text are stored as given (parameters, not SQL)."""
        store = make_store(self)
        text = "héllo 🚢 '); DROP TABLE messages; --\nsecond line"
        self.successResultOf(store.add_message("ann", text, "chat"))
        [stored] = self.successResultOf(store.history())
        self.assertEqual(stored.text, text)

    def test_unknown_via_is_refused(self) -> None:
        """A via other than web/chat is a caller bug: ValueError at once, nothing stored."""
        store = make_store(self)
        self.assertRaises(ValueError, store.add_message, "ann", "hi", "http")
        self.assertEqual(self.successResultOf(store.history()), [])

    def test_not_started(self) -> None:
        """Before startService every call fails with StoreError instead of hanging."""
        store = Store(":memory:", retention_count=10, retention_days=1, runner=SynchronousRunner())
        self.failureResultOf(store.add_message("ann", "hi", "web"), StoreError)
        self.failureResultOf(store.history(), StoreError)

    def test_stopped(self) -> None:
        """stopService fires, and later calls fail with StoreError."""
        store = Store(":memory:", retention_count=10, retention_days=1, runner=SynchronousRunner())
        store.startService()
        self.assertIsNone(self.successResultOf(store.stopService()))
        self.failureResultOf(store.add_message("ann", "hi", "web"), StoreError)

    def test_bad_retention(self) -> None:
        """Retention that would keep nothing is refused when the store is built."""
        self.assertRaises(ValueError, Store, ":memory:", retention_count=0, retention_days=1)
        self.assertRaises(ValueError, Store, ":memory:", retention_count=1, retention_days=0)


class HistoryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.store = make_store(self)
        for n in range(1, 11):
            self.successResultOf(self.store.add_message("ann", f"m{n}", "web"))

    def ids(self, **kwargs: Any) -> list[int]:
        return [m.id for m in self.successResultOf(self.store.history(**kwargs))]

    def test_latest(self) -> None:
        """With neither before nor after: the latest `limit`, oldest first."""
        self.assertEqual(self.ids(limit=3), [8, 9, 10])
        self.assertEqual(self.ids(), list(range(1, 11)))

    def test_before(self) -> None:
        """before=N: the `limit` messages just before N, oldest first (paging backwards)."""
        self.assertEqual(self.ids(before=8, limit=3), [5, 6, 7])
        self.assertEqual(self.ids(before=3, limit=5), [1, 2])
        self.assertEqual(self.ids(before=1), [])

    def test_after(self) -> None:
        """after=N: the `limit` messages just after N, oldest first (catching up)."""
        self.assertEqual(self.ids(after=2, limit=3), [3, 4, 5])
        self.assertEqual(self.ids(after=8, limit=5), [9, 10])
        self.assertEqual(self.ids(after=10), [])

    def test_both(self) -> None:
        """before and after together: those just after `after` that are also before `before`."""
        self.assertEqual(self.ids(after=2, before=9, limit=3), [3, 4, 5])
        self.assertEqual(self.ids(after=2, before=5, limit=10), [3, 4])

    def test_paging_walks_everything_once(self) -> None:
        """Following `before` from the latest page visits every message exactly once."""
        seen: list[int] = []
        page = self.ids(limit=4)
        while page:
            seen = page + seen
            page = self.ids(before=page[0], limit=4)
        self.assertEqual(seen, list(range(1, 11)))

    def test_limit_clamped(self) -> None:
        """limit below 1 means 1, above 500 means 500: one request cannot ask for everything."""
        self.assertEqual(self.ids(limit=0), [10])
        self.assertEqual(self.ids(limit=-5), [10])
        for n in range(11, 601):
            self.successResultOf(self.store.add_message("ann", f"m{n}", "web"))
        self.assertEqual(len(self.ids(limit=10_000)), 500)


class RetentionTests(SynchronousTestCase):
    def test_by_count(self) -> None:
        """Only the latest retention_count messages are kept; ids are never reused."""
        store = make_store(self, retention_count=3)
        for n in range(1, 6):
            self.successResultOf(store.add_message("ann", f"m{n}", "web"))
        self.assertEqual([m.text for m in self.successResultOf(store.history())], ["m3", "m4", "m5"])
        sixth = self.successResultOf(store.add_message("ann", "m6", "web"))
        self.assertEqual(sixth.id, 6)
        self.assertEqual([m.id for m in self.successResultOf(store.history())], [4, 5, 6])

    def test_by_age(self) -> None:
        """A message older than retention_days is gone once the next message is saved."""
        clock = Clock()
        store = make_store(self, retention_days=1.0, clock=clock)
        self.successResultOf(store.add_message("ann", "old", "web"))
        clock.advance(0.5 * DAY)
        self.successResultOf(store.add_message("ann", "middle", "web"))
        clock.advance(0.5 * DAY)  # "old" is exactly one day old: still kept
        self.successResultOf(store.add_message("ann", "day", "web"))
        self.assertEqual([m.text for m in self.successResultOf(store.history())], ["old", "middle", "day"])
        clock.advance(0.25 * DAY)
        self.successResultOf(store.add_message("ann", "new", "web"))
        self.assertEqual([m.text for m in self.successResultOf(store.history())], ["middle", "day", "new"])

    def test_audit_retention(self) -> None:
        """The audit log is bounded by the same count and age, so failed-login floods cannot fill flash."""
        clock = Clock()
        store = make_store(self, retention_count=2, retention_days=1.0, clock=clock)
        for user in ("a", "b", "c"):
            self.successResultOf(store.audit("login", user, "10.0.0.1"))
        self.assertEqual([e["user"] for e in self.successResultOf(store.audit_log())], ["b", "c"])
        clock.advance(2 * DAY)
        self.successResultOf(store.audit("logout", "c", "10.0.0.1"))
        self.assertEqual([e["kind"] for e in self.successResultOf(store.audit_log())], ["logout"])


class AuditTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        """audit entries come back oldest first with every field, user/address may be None."""
        clock = Clock()
        clock.advance(50.0)
        store = make_store(self, clock=clock)
        self.assertIsNone(self.successResultOf(store.audit("login", "ann", "10.0.0.7")))
        clock.advance(1.0)
        self.successResultOf(store.audit("refused", None, "10.0.0.9", "server full"))
        self.assertEqual(
            self.successResultOf(store.audit_log()),
            [
                {"id": 1, "at": 50.0, "kind": "login", "user": "ann", "address": "10.0.0.7", "detail": ""},
                {"id": 2, "at": 51.0, "kind": "refused", "user": None, "address": "10.0.0.9",
                 "detail": "server full"},
            ],
        )

    def test_limit(self) -> None:
        """audit_log(limit) is the latest `limit` entries; limit is clamped to at least 1."""
        store = make_store(self)
        for n in range(5):
            self.successResultOf(store.audit("operation", "ann", "10.0.0.7", f"op {n}"))
        self.assertEqual([e["detail"] for e in self.successResultOf(store.audit_log(2))], ["op 3", "op 4"])
        self.assertEqual([e["detail"] for e in self.successResultOf(store.audit_log(0))], ["op 4"])


class ConnectionTests(SynchronousTestCase):
    def test_pragmas(self) -> None:
        """The connection runs with synchronous=FULL, foreign keys on and a busy timeout."""
        conn = connection_of(make_store(self))
        self.assertEqual(conn.execute("PRAGMA synchronous").fetchone()[0], 2)  # FULL
        self.assertEqual(conn.execute("PRAGMA foreign_keys").fetchone()[0], 1)
        self.assertGreater(conn.execute("PRAGMA busy_timeout").fetchone()[0], 0)

    def test_integrity_check(self) -> None:
        """integrity_check reports 'ok' for a healthy database."""
        store = make_store(self)
        self.successResultOf(store.add_message("ann", "hi", "web"))
        self.assertEqual(self.successResultOf(store.integrity_check()), "ok")

    def test_commit_timings(self) -> None:
        """Each add_message records one commit duration; only the last COMMIT_TIMINGS_KEPT are kept."""
        store = make_store(self)
        self.assertEqual(store.commit_timings, ())
        self.successResultOf(store.add_message("ann", "hi", "web"))
        self.successResultOf(store.audit("login", "ann", "10.0.0.7"))  # not a message: not counted
        self.assertEqual(len(store.commit_timings), 1)
        self.assertGreaterEqual(store.commit_timings[0], 0.0)
        for n in range(COMMIT_TIMINGS_KEPT + 5):
            self.successResultOf(store.add_message("ann", f"m{n}", "web"))
        self.assertEqual(len(store.commit_timings), COMMIT_TIMINGS_KEPT)


class SchemaTests(SynchronousTestCase):
    V1_BY_HAND = """
        CREATE TABLE version (version INTEGER NOT NULL);
        INSERT INTO version VALUES (1);
        CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, user TEXT NOT NULL,
            text TEXT NOT NULL, via TEXT NOT NULL, action INTEGER NOT NULL DEFAULT 0, at REAL NOT NULL);
        INSERT INTO messages (user, text, via, action, at) VALUES ('ann', 'from v1', 'web', 0, 5.0);
    """

    def connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(":memory:", isolation_level=None)
        self.addCleanup(conn.close)
        return conn

    def version(self, conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT version FROM version").fetchone()[0])

    def columns(self, conn: sqlite3.Connection, table: str) -> list[str]:
        return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]

    def test_shipped_as_package_data(self) -> None:
        """v1.sql is read from the package (importlib.resources), not from a path relative to the cwd."""
        text = read_schema(f"v{SCHEMA_VERSION}.sql")
        self.assertIn("CREATE TABLE messages", text)
        self.assertIn("CREATE TABLE audit", text)
        self.assertRaises(FileNotFoundError, read_schema, "v999.sql")

    def test_fresh_database(self) -> None:
        """A new database gets the current schema and one version row."""
        conn = self.connect()
        self.assertIsNone(prepare_schema(conn))
        self.assertEqual(self.version(conn), SCHEMA_VERSION)
        self.assertEqual(self.columns(conn, "messages"), ["id", "user", "text", "via", "action", "at", "kept_at"])
        self.assertEqual(self.columns(conn, "audit"), ["id", "at", "kind", "user", "address", "detail", "kept_at"])
        self.assertEqual(conn.execute("SELECT count(*) FROM version").fetchone()[0], 1)
        self.assertFalse(conn.in_transaction)

    def test_reopen_is_not_recreated(self) -> None:
        """Preparing an up-to-date database changes nothing and reports its version."""
        conn = self.connect()
        prepare_schema(conn)
        conn.execute("INSERT INTO messages (user, text, via, action, at) VALUES ('a', 'kept', 'web', 0, 1)")
        self.assertEqual(prepare_schema(conn), SCHEMA_VERSION)
        self.assertEqual(conn.execute("SELECT text FROM messages").fetchall(), [("kept",)])

    def test_schema_checks(self) -> None:
        """The schema itself refuses a bad via or action, whatever code writes to it."""
        conn = self.connect()
        prepare_schema(conn)
        insert = "INSERT INTO messages (user, text, via, action, at) VALUES ('a', 't', ?, ?, 1)"
        self.assertRaises(sqlite3.IntegrityError, conn.execute, insert, ("http", 0))
        self.assertRaises(sqlite3.IntegrityError, conn.execute, insert, ("web", 2))

    def test_upgrade_in_order(self) -> None:
        """A v1 database made by hand is upgraded step by step to the target; its data survives."""
        conn = self.connect()
        conn.executescript(self.V1_BY_HAND)
        read = fake_schemas(
            {
                "upgrade-to-v2.sql": "ALTER TABLE messages ADD COLUMN edited INTEGER NOT NULL DEFAULT 0;\n",
                # v3 relies on v2's column: proves the order.
                "upgrade-to-v3.sql": (
                    "-- v3: edited becomes a time\n"
                    "ALTER TABLE messages RENAME COLUMN edited TO edited_at;\n"
                ),
            }
        )
        self.assertEqual(prepare_schema(conn, target_version=3, read=read), 1)
        self.assertEqual(self.version(conn), 3)
        self.assertEqual(conn.execute("SELECT text, edited_at FROM messages").fetchall(), [("from v1", 0)])

    def test_failed_upgrade_changes_nothing(self) -> None:
        """All upgrade steps run in one transaction: a failing step leaves the v1 database untouched."""
        conn = self.connect()
        conn.executescript(self.V1_BY_HAND)
        read = fake_schemas(
            {
                "upgrade-to-v2.sql": "ALTER TABLE messages ADD COLUMN edited INTEGER NOT NULL DEFAULT 0;\n",
                "upgrade-to-v3.sql": "ALTER TABLE no_such_table ADD COLUMN x;\n",
            }
        )
        error = self.assertRaises(StoreError, prepare_schema, conn, where="chat.db", target_version=3, read=read)
        self.assertIn("chat.db", str(error))
        self.assertIn("v2 to v3", str(error))
        self.assertEqual(self.version(conn), 1)
        self.assertNotIn("edited", self.columns(conn, "messages"))
        self.assertFalse(conn.in_transaction)

    def test_missing_upgrade(self) -> None:
        """A version step with no shipped upgrade file is a clear StoreError, nothing changed."""
        conn = self.connect()
        conn.executescript(self.V1_BY_HAND)
        read = fake_schemas({"upgrade-to-v2.sql": "ALTER TABLE messages ADD COLUMN x;\n"})
        error = self.assertRaises(StoreError, prepare_schema, conn, target_version=3, read=read)
        self.assertIn("no upgrade from schema v2 to v3", str(error))
        self.assertEqual(self.version(conn), 1)
        self.assertNotIn("x", self.columns(conn, "messages"))

    def test_newer_database_refused(self) -> None:
        """A database from a newer boatwist is refused with StoreVersionError and left as it was."""
        conn = self.connect()
        prepare_schema(conn)
        conn.execute("UPDATE version SET version = ?", (SCHEMA_VERSION + 1,))
        error = self.assertRaises(StoreVersionError, prepare_schema, conn, where="chat.db")
        self.assertIn(f"schema version {SCHEMA_VERSION + 1}", str(error))
        self.assertIn("chat.db", str(error))
        self.assertEqual(self.version(conn), SCHEMA_VERSION + 1)

    def test_foreign_database_refused(self) -> None:
        """A SQLite file of something else (tables, no version table) is refused, not written into."""
        conn = self.connect()
        conn.execute("CREATE TABLE users (name TEXT)")
        error = self.assertRaises(StoreError, prepare_schema, conn, where="other.db")
        self.assertIn("not a boatwist store", str(error))
        self.assertNotIn("messages", [r[0] for r in conn.execute("SELECT name FROM sqlite_master")])

    def test_store_refuses_newer_file(self) -> None:
        """Store on a newer database: opening fails (logged critical), and writes fail saying why."""
        directory = tempfile.mkdtemp(prefix="boatwist-store-")
        self.addCleanup(shutil.rmtree, directory, ignore_errors=True)
        path = os.path.join(directory, "newer.sqlite3")
        conn = sqlite3.connect(path, isolation_level=None)
        prepare_schema(conn)
        conn.execute("UPDATE version SET version = 99")
        conn.close()
        store = Store(path, retention_count=10, retention_days=1, runner=SynchronousRunner())
        with capturedLogs() as events:
            store.startService()
        self.addCleanup(store.stopService)
        self.assertTrue(any(e["log_level"] is LogLevel.critical and "schema version 99" in str(e.get("error"))
                            for e in events), events)
        failure = self.failureResultOf(store.add_message("ann", "hi", "web"), StoreError)
        self.assertIn("schema version 99", failure.getErrorMessage())


class DiskFullTests(SynchronousTestCase):
    """
    SQLITE_FULL made deterministic: PRAGMA max_page_count caps the database,
    and SQLite fails exactly as on a full disk.
    """

    BIG = "x" * 20_000  # needs overflow pages: cannot fit in free space

    def setUp(self) -> None:
        self.store = make_store(self)
        self.conn = connection_of(self.store)
        self.first = self.successResultOf(self.store.add_message("ann", "before", "web"))

    def fill(self) -> None:
        pages = self.conn.execute("PRAGMA page_count").fetchone()[0]
        self.conn.execute(f"PRAGMA max_page_count = {pages}")

    def free(self) -> None:
        self.conn.execute("PRAGMA max_page_count = 1000000")

    def store_errors(self, events: Any) -> list[Any]:
        return [e for e in events if e["log_level"] is LogLevel.error]

    def test_full_is_store_full(self) -> None:
        """SQLITE_FULL on add_message fails with StoreFull, saves nothing, and leaves no transaction open."""
        self.fill()
        failure = self.failureResultOf(self.store.add_message("ann", self.BIG, "web"), StoreFull)
        self.assertIn("full", failure.getErrorMessage())
        self.assertFalse(self.conn.in_transaction)
        self.assertEqual(self.successResultOf(self.store.history()), [self.first])
        self.failureResultOf(self.store.audit("operation", "ann", "10.0.0.7", self.BIG), StoreFull)

    def test_works_again_after_space_is_freed(self) -> None:
        """After a StoreFull, the next write once space is available succeeds; history and integrity are fine."""
        self.fill()
        self.failureResultOf(self.store.add_message("ann", self.BIG, "web"), StoreFull)
        self.free()
        second = self.successResultOf(self.store.add_message("ann", self.BIG, "web"))
        self.assertEqual(second.id, self.first.id + 1)
        self.assertEqual(self.successResultOf(self.store.history()), [self.first, second])
        self.assertEqual(self.successResultOf(self.store.integrity_check()), "ok")

    def test_logged_once_per_episode(self) -> None:
        """A full disk is logged once, not per message, until a write succeeds; then once again."""
        with capturedLogs() as events:
            self.fill()
            for _ in range(3):
                self.failureResultOf(self.store.add_message("ann", self.BIG, "web"), StoreFull)
            self.assertEqual(len(self.store_errors(events)), 1)
            self.free()
            self.successResultOf(self.store.add_message("ann", "ok", "web"))
            self.fill()
            self.failureResultOf(self.store.add_message("ann", self.BIG, "web"), StoreFull)
        self.assertEqual(len(self.store_errors(events)), 2)

    def test_translation(self) -> None:
        """SQLITE_FULL and ENOSPC become StoreFull; any other error is a plain StoreError."""
        full = sqlite3.OperationalError("database or disk is full")
        self.assertIsInstance(_translate(full, "db"), StoreFull)
        self.assertIsInstance(_translate(OSError(errno.ENOSPC, "No space left on device"), "db"), StoreFull)
        for other in (sqlite3.OperationalError("disk I/O error"), OSError(errno.EIO, "I/O error"),
                      sqlite3.DatabaseError("database disk image is malformed")):
            translated = _translate(other, "chat.db")
            self.assertIs(type(translated), StoreError)
            self.assertIn("chat.db", str(translated))


class OperationsTests(SynchronousTestCase):
    """Operations and control values (schema v2), on :memory: with a SynchronousRunner."""

    def store(self) -> Store:
        store = Store(":memory:", retention_count=3, retention_days=1, runner=SynchronousRunner(),
                      wall_clock=lambda: 1000.0)
        store.startService()
        return store

    def test_operation_and_its_value_are_committed_together(self) -> None:
        """record_operation gives the id; with keep_value the control's last value is that operation's."""
        from boatwist.store.operations import OperationRecord

        store = self.store()
        record = OperationRecord(at=1000.0, user="alice", control="pump", old=False, value=True, result="ok",
                                 error=None, via="web")
        saved = self.successResultOf(store.record_operation(record, keep_value=True))
        self.assertEqual(saved.id, 1)
        values = self.successResultOf(store.control_values())
        self.assertEqual((values["pump"].value, values["pump"].changed_by, values["pump"].changed_at),
                         (True, "alice", 1000.0))
        failed = OperationRecord(at=1001.0, user="bob", control="pump", old=True, value=False, result="error",
                                 error="timed out after 2 s", via="chat")
        self.successResultOf(store.record_operation(failed, keep_value=False))
        self.assertEqual(self.successResultOf(store.control_values())["pump"].value, True)
        page = self.successResultOf(store.operations())
        self.assertEqual([(o.user, o.result, o.error) for o in page],
                         [("alice", "ok", None), ("bob", "error", "timed out after 2 s")])

    def test_operations_are_paged_and_pruned_by_count(self) -> None:
        """Newest last; before= pages back; only retention_count are kept; values are never pruned."""
        from boatwist.store.operations import OperationRecord

        store = self.store()
        for n in range(5):
            record = OperationRecord(at=1000.0 + n, user="alice", control=f"c{n}", old=None, value=n,
                                     result="ok", error=None, via="api")
            self.successResultOf(store.record_operation(record, keep_value=True))
        self.assertEqual([o.id for o in self.successResultOf(store.operations())], [3, 4, 5])
        self.assertEqual([o.id for o in self.successResultOf(store.operations(before=5, limit=1))], [4])
        self.assertEqual([o.control for o in self.successResultOf(store.operations(control="c4"))], ["c4"])
        self.assertEqual(len(self.successResultOf(store.control_values())), 5)


class SizeTests(SynchronousTestCase):
    """The store's size budget (small flash): oldest rows go, per table, by its share."""

    def make(self, max_bytes: int = 256 * 1024, path: str = ":memory:", **kw: Any) -> Store:
        clock = Clock()
        store = Store(path, retention_count=1_000_000, retention_days=3650.0, max_bytes=max_bytes,
                      wall_clock=clock.seconds, monotonic=clock.seconds, runner=SynchronousRunner(), **kw)
        store.startService()
        self.addCleanup(store.stopService)
        return store

    def test_chat_goes_on_indefinitely_within_the_budget(self) -> None:
        """
        Four times the budget of chat (2,000 messages of 500 bytes into
        256 KiB): every message is saved, the oldest are pruned, the pages
        in use stay within the budget's data part, ids keep counting.
        """
        store = self.make()
        for n in range(2000):
            message = self.successResultOf(store.add_message("ann", f"{n:05d} " + "x" * 494, "web"))
        self.assertEqual(message.id, 2000)
        sizes = self.successResultOf(store.sizes())
        self.assertLessEqual(sizes["used"], store._database.data_bytes)
        history = self.successResultOf(store.history(limit=500))
        self.assertEqual(history[-1].id, 2000)
        self.assertGreater(history[0].id, 1)
        self.assertGreater(store._database.pruned_for_size["messages"], 1000)
        self.assertEqual(self.successResultOf(store.integrity_check()), "ok")

    def test_an_audit_flood_does_not_push_the_chat_out(self) -> None:
        """Each table keeps its share: 20,000 failed-login entries leave the 50 chat messages in place."""
        store = self.make()
        for n in range(50):
            self.successResultOf(store.add_message("ann", f"m{n}", "web"))
        for n in range(20_000):
            self.successResultOf(store.audit("login-failed", f"user{n}", "10.0.0.1", "http " + "y" * 40))
        self.assertEqual(len(self.successResultOf(store.history(limit=500))), 50)
        self.assertGreater(store._database.pruned_for_size["audit"], 10_000)
        self.assertNotIn("messages", store._database.pruned_for_size)

    def test_the_wal_stays_bounded_on_a_real_file(self) -> None:
        """On a file, the WAL is checkpointed and truncated well before SQLite's 4 MB default."""
        directory = tempfile.mkdtemp(prefix="boatwist-store-")
        self.addCleanup(shutil.rmtree, directory, ignore_errors=True)
        store = self.make(path=os.path.join(directory, "db.sqlite"))
        largest = 0
        for n in range(1500):
            self.successResultOf(store.add_message("ann", "z" * 400, "chat"))
            largest = max(largest, os.path.getsize(os.path.join(directory, "db.sqlite-wal")))
        sizes = self.successResultOf(store.sizes())
        database = store._database
        self.assertLessEqual(largest, database.wal_bytes + 16 * database.page_size)
        self.assertLessEqual(sizes["file"] + sizes["wal"], 256 * 1024 + 32 * database.page_size)

    def test_size_budget(self) -> None:
        """max_size: given, or a quarter of the file system, at most 64 MiB, at least 256 KiB."""
        from boatwist.store.service import MIN_BYTES, size_budget

        self.assertEqual(size_budget(1_000_000, "/"), 1_000_000)
        self.assertEqual(size_budget(1000, "/"), MIN_BYTES)
        auto = size_budget(0, tempfile.gettempdir())
        self.assertTrue(MIN_BYTES <= auto <= 64 * 1024 * 1024)


class ClockStepTests(SynchronousTestCase):
    """Age retention counts the store's running time: no step of the wall clock, running or off, ages a row."""

    def make(self, wall: Clock, mono: Clock, path: str = ":memory:") -> Store:
        store = Store(path, retention_count=1000, retention_days=30.0, wall_clock=wall.seconds,
                      monotonic=mono.seconds, runner=SynchronousRunner())
        store.startService()
        self.addCleanup(lambda: store.stopService() if store.running else None)
        return store

    def test_a_step_of_100_days_deletes_nothing(self) -> None:
        """
        The wall clock jumps 100 days forward while the store runs (an RTC-less
        device, a wrong NTP answer): the next message deletes none of the
        earlier ones; they go when the store has run 30 days since (with the
        one written just after the step, at the same moment of running).
        """
        wall, mono = Clock(), Clock()
        wall.advance(1_700_000_000)
        store = self.make(wall, mono)
        for n in range(3):
            self.successResultOf(store.add_message("ann", f"before {n}", "web"))
            self.successResultOf(store.audit("login", "ann", "10.0.0.1"))
        wall.advance(100 * DAY)
        self.successResultOf(store.add_message("ann", "after the step", "web"))
        self.successResultOf(store.audit("login", "ann", "10.0.0.1"))
        self.assertEqual(len(self.successResultOf(store.history())), 4)
        self.assertEqual(len(self.successResultOf(store.audit_log())), 4)
        mono.advance(30 * DAY + 1)
        wall.advance(30 * DAY + 1)
        self.successResultOf(store.add_message("ann", "a month later", "web"))
        self.assertEqual([m.text for m in self.successResultOf(store.history())], ["a month later"])

    def test_a_step_back_deletes_nothing_either(self) -> None:
        """A step back of a year: rows now look from the future; nothing is deleted, new rows are kept."""
        wall, mono = Clock(), Clock()
        wall.advance(1_700_000_000)
        store = self.make(wall, mono)
        self.successResultOf(store.add_message("ann", "before", "web"))
        wall.advance(-365 * DAY)
        self.successResultOf(store.add_message("ann", "after", "web"))
        self.assertEqual(len(self.successResultOf(store.history())), 2)

    def _reopenable(self) -> str:
        directory = tempfile.mkdtemp(prefix="boatwist-store-")
        self.addCleanup(shutil.rmtree, directory, ignore_errors=True)
        return os.path.join(directory, "db.sqlite")

    def test_a_step_found_at_start_deletes_nothing(self) -> None:
        """
        The wall clock is 100 days ahead when the store opens again (it was
        stepped while the daemon was stopped, or the device booted with a
        wrong time): nothing is deleted -- time switched off does not count.
        """
        path = self._reopenable()
        wall, mono = Clock(), Clock()
        wall.advance(1_700_000_000)
        store = self.make(wall, mono, path)
        self.successResultOf(store.add_message("ann", "old", "web"))
        self.successResultOf(store.audit("login", "ann", "10.0.0.1"))
        self.successResultOf(store.stopService())
        wall.advance(100 * DAY)
        reopened = self.make(wall, mono, path)
        self.successResultOf(reopened.add_message("ann", "new", "web"))
        self.assertEqual([m.text for m in self.successResultOf(reopened.history())], ["old", "new"])
        self.assertEqual(len(self.successResultOf(reopened.audit_log())), 1)

    def test_running_time_adds_up_over_restarts(self) -> None:
        """
        Run 20 days, stop (for however long), run 10 more: the row is still
        kept (30 days of running is not past); one more day and it goes.
        The run clock survives the restart, also when the monotonic clock
        starts over (a reboot).
        """
        path = self._reopenable()
        wall, mono = Clock(), Clock()
        store = self.make(wall, mono, path)
        self.successResultOf(store.add_message("ann", "old", "web"))
        mono.advance(20 * DAY)
        self.successResultOf(store.stopService())
        rebooted = Clock()  # a new boot: the monotonic clock starts again near zero
        reopened = self.make(wall, rebooted, path)
        rebooted.advance(10 * DAY - 60)
        self.successResultOf(reopened.add_message("ann", "ten days later", "web"))
        self.assertEqual([m.text for m in self.successResultOf(reopened.history())], ["old", "ten days later"])
        rebooted.advance(DAY)
        self.successResultOf(reopened.add_message("ann", "a day later", "web"))
        self.assertEqual([m.text for m in self.successResultOf(reopened.history())],
                         ["ten days later", "a day later"])

    def test_a_version_2_store_is_upgraded_and_its_rows_kept(self) -> None:
        """Rows of a v2 store start at running time 0 when upgraded: kept retention_days of running from then."""
        path = self._reopenable()
        conn = sqlite3.connect(path, isolation_level=None)
        prepare_schema(conn, target_version=2)
        conn.execute("INSERT INTO messages (user, text, via, action, at) VALUES ('ann', 'from v2', 'web', 0, 1)")
        conn.close()
        wall, mono = Clock(), Clock()
        wall.advance(1_700_000_000)
        store = self.make(wall, mono, path)
        self.successResultOf(store.add_message("ann", "v3", "web"))
        self.assertEqual([m.text for m in self.successResultOf(store.history())], ["from v2", "v3"])
        mono.advance(30 * DAY + 1)
        self.successResultOf(store.add_message("ann", "later", "web"))
        self.assertEqual([m.text for m in self.successResultOf(store.history())], ["later"])


class ReopenTests(SynchronousTestCase):
    def test_a_store_that_could_not_open_opens_on_a_later_write(self) -> None:
        """
        Opening failed (here: its directory is missing; on a device: a full
        disk at start); a write after REOPEN_INTERVAL opens it and succeeds,
        no restart needed.
        """
        from boatwist.store.service import REOPEN_INTERVAL

        directory = tempfile.mkdtemp(prefix="boatwist-store-")
        self.addCleanup(shutil.rmtree, directory, ignore_errors=True)
        path = os.path.join(directory, "later", "db.sqlite")
        clock = Clock()
        with capturedLogs():
            store = Store(path, retention_count=10, retention_days=1, wall_clock=clock.seconds,
                          monotonic=clock.seconds, runner=SynchronousRunner())
            store.startService()
            self.addCleanup(store.stopService)
            os.mkdir(os.path.join(directory, "later"))
            self.failureResultOf(store.add_message("ann", "too soon", "web"), StoreError)
            clock.advance(REOPEN_INTERVAL)
            saved = self.successResultOf(store.add_message("ann", "now", "web"))
        self.assertEqual(saved.text, "now")
