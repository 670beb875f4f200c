"""
Integration tests of boatwist.store.service on real files, with the real writer
thread and the real reactor (trial TestCase: tests return Deferreds).

Waits are bounded by real events (a Deferred firing, a process ending), never
by sleeping; trial's timeout bounds each test.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any, Generator

from twisted.internet import defer, protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase

import boatwist
from boatwist.store.service import Message, Store, StoreError, StoreFull, prepare_schema

#: Where the boatwist under test was imported from: the child process of the
#: kill -9 test must run the same code.
IMPORTED_FROM = str(Path(boatwist.__file__).resolve().parents[1])

_Gen = Generator[Any, Any, None]


def _temp_dir(test: TestCase) -> str:
    """A fresh directory removed after the test (not self.mktemp: under pytest that lands in the cwd)."""
    directory = tempfile.mkdtemp(prefix="boatwist-store-")
    test.addCleanup(shutil.rmtree, directory, ignore_errors=True)
    return directory


def _reactor() -> Any:
    """The reactor trial runs; imported here, not at module level (STYLE: inject it)."""
    from twisted.internet import reactor

    return reactor


class StoreOnDisk(TestCase):
    timeout = 60

    def start_store(self, path: str, **kwargs: Any) -> Store:
        """A store with the default (threaded) runner, stopped at cleanup, even on failure."""
        kwargs.setdefault("retention_count", 1000)
        kwargs.setdefault("retention_days", 30.0)
        store = Store(path, reactor=_reactor(), **kwargs)
        store.startService()
        self.addCleanup(lambda: store.stopService() if store.running else None)
        return store

    def db_path(self) -> str:
        return os.path.join(_temp_dir(self), "chat.sqlite3")

    @defer.inlineCallbacks
    def test_wal_file_and_reopen(self) -> _Gen:
        """
        A real file is in WAL mode, passes integrity_check, and a message
        whose Deferred fired is there after the store is stopped and reopened.
        """
        path = self.db_path()
        store = self.start_store(path)
        yield store.history()  # open, on the writer thread
        sent = yield store.add_message("ann", "survives a restart", "chat", action=True)
        self.assertEqual((yield store.integrity_check()), "ok")
        yield store.stopService()
        check = sqlite3.connect(path)
        self.addCleanup(check.close)
        self.assertEqual(check.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        reopened = self.start_store(path)
        self.assertEqual((yield reopened.history()), [sent])
        following = yield reopened.add_message("bob", "next", "web")
        self.assertEqual(following.id, sent.id + 1)

    @defer.inlineCallbacks
    def test_age_retention_applies_on_open(self) -> _Gen:
        """
        On disk: a store that has run longer than retention_days since a row
        was written (the run clock kept in the file) drops it when it opens
        again; days switched off -- the wall clock 100 days on -- count for
        nothing.
        """
        path = self.db_path()
        wall, running = [1_000_000.0], [0.0]
        store = self.start_store(path, retention_days=1.0, wall_clock=lambda: wall[0], monotonic=lambda: running[0])
        yield store.add_message("ann", "old", "web")
        yield store.audit("login", "ann", "10.0.0.7")
        running[0] += 0.5 * 86400
        yield store.stopService()
        wall[0] += 100 * 86400  # switched off for 100 days (or the clock stepped): no running time
        reopened = self.start_store(path, retention_days=1.0, wall_clock=lambda: wall[0], monotonic=lambda: 0.0)
        self.assertEqual([m.text for m in (yield reopened.history())], ["old"])
        yield reopened.stopService()
        rebooted = [0.0]
        again = self.start_store(path, retention_days=1.0, wall_clock=lambda: wall[0], monotonic=lambda: rebooted[0])
        yield again.history()  # open (on its thread) before time passes
        rebooted[0] += 0.6 * 86400  # 1.1 days of running in all
        yield again.stopService()
        last = self.start_store(path, retention_days=1.0, wall_clock=lambda: wall[0], monotonic=lambda: 0.0)
        self.assertEqual((yield last.history()), [])
        self.assertEqual((yield last.audit_log()), [])

    @defer.inlineCallbacks
    def test_newer_database_refused(self) -> _Gen:
        """Through the writer thread: a newer database is not opened (writes say why) and is left untouched."""
        path = self.db_path()
        conn = sqlite3.connect(path, isolation_level=None)
        prepare_schema(conn)
        conn.execute("UPDATE version SET version = 42")
        conn.close()
        store = self.start_store(path)
        error = yield self.assertFailure(store.add_message("ann", "hi", "web"), StoreError)
        self.assertIn("schema version 42", str(error))
        conn = sqlite3.connect(path)
        self.addCleanup(conn.close)
        self.assertEqual(conn.execute("SELECT version FROM version").fetchone()[0], 42)

    @defer.inlineCallbacks
    def test_reactor_runs_while_writer_waits(self) -> _Gen:
        """
        SQLite work is off the reactor thread: while the writer waits for a
        lock held by another connection, the reactor still runs timers (here
        the one that releases the lock); the message is saved afterwards.
        Were the commit on the reactor thread, the release could never run.
        """
        path = self.db_path()
        store = self.start_store(path)
        yield store.history()  # open, on the writer thread
        blocker = sqlite3.connect(path, isolation_level=None)
        self.addCleanup(blocker.close)
        blocker.execute("BEGIN IMMEDIATE")  # holds the write lock
        saving = store.add_message("ann", "waited for the lock", "web")
        observed: list[bool] = []

        def release() -> None:
            observed.append(saving.called)
            blocker.execute("COMMIT")

        yield deferLater(_reactor(), 0.2, release)
        message = yield saving
        self.assertEqual(observed, [False])
        self.assertEqual(message.text, "waited for the lock")

    @defer.inlineCallbacks
    def test_kill_9_loses_nothing_acknowledged(self) -> _Gen:
        """
        A daemon killed with SIGKILL while writing: every message whose
        Deferred had fired (printed by the child) is in the database after.
        """
        path = self.db_path()
        child = textwrap.dedent(
            """
            import sys
            from twisted.internet import reactor
            from boatwist.store.service import Store

            store = Store(sys.argv[1], retention_count=100000, retention_days=30, reactor=reactor)

            def send(n):
                d = store.add_message("ann", "message %d" % n, "chat")
                def saved(message):
                    sys.stdout.write("%d\\n" % message.id)
                    sys.stdout.flush()
                    send(n + 1)
                d.addCallback(saved)
                d.addErrback(lambda f: (sys.stdout.write("ERROR %s\\n" % f.getErrorMessage()), reactor.stop()))

            store.startService()
            reactor.callWhenRunning(send, 1)
            reactor.run()
            """
        )
        acknowledged: list[int] = []
        ended: defer.Deferred[None] = defer.Deferred()

        class Child(protocol.ProcessProtocol):
            buffer = b""

            def outReceived(self, data: bytes) -> None:
                self.buffer += data
                *lines, self.buffer = self.buffer.split(b"\n")
                for line in lines:
                    if not line.isdigit():
                        raise AssertionError(f"child said {line!r}")
                    acknowledged.append(int(line))
                transport: Any = self.transport
                if len(acknowledged) >= 50 and transport is not None and transport.pid:
                    transport.signalProcess("KILL")  # mid-stream: the next write is in flight

            def errReceived(self, data: bytes) -> None:
                sys.stderr.write(data.decode(errors="replace"))

            def processEnded(self, reason: Any) -> None:
                ended.callback(None)

        env = dict(os.environ, PYTHONPATH=IMPORTED_FROM)
        process = _reactor().spawnProcess(Child(), sys.executable, [sys.executable, "-c", child, path], env=env)
        self.addCleanup(lambda: process.pid and process.signalProcess("KILL"))
        yield ended
        self.assertGreaterEqual(len(acknowledged), 50)
        self.assertEqual(acknowledged, list(range(1, len(acknowledged) + 1)))
        store = self.start_store(path)
        saved = [m.id for m in (yield store.history(limit=500))]
        self.assertEqual(saved[: len(acknowledged)], acknowledged)
        self.assertEqual((yield store.integrity_check()), "ok")


def _unmount(directory: str) -> None:
    """Unmount, lazily if something still holds a file there: never leave a mount behind."""
    if subprocess.run(["umount", directory], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", directory], capture_output=True)


def _fill(directory: str) -> str:
    """Write a file until the file system says ENOSPC; returns its path."""
    filler = os.path.join(directory, "filler")
    chunk = b"\0" * 4096
    with open(filler, "wb", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                break
    return filler


class StoreOnFullDisk(TestCase):
    """A real, tiny file system filled to the last byte: the failure a device meets."""

    timeout = 60

    def mount_tiny_tmpfs(self) -> str:
        if os.geteuid() != 0:
            raise SkipTest("needs root to mount a 256 KiB tmpfs (mount -t tmpfs)")
        directory = _temp_dir(self)
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", directory], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise SkipTest(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        self.addCleanup(_unmount, directory)
        return directory

    @defer.inlineCallbacks
    def test_disk_full_then_freed(self) -> _Gen:
        """
        On a full file system add_message and audit fail with StoreFull (once
        the room the WAL kept is used) and save nothing; once space is freed
        the store works again without a restart, earlier messages are intact
        and integrity_check is ok.
        """
        directory = self.mount_tiny_tmpfs()
        store = Store(os.path.join(directory, "chat.sqlite3"), retention_count=1000, retention_days=30,
                      reactor=_reactor())
        store.startService()
        self.addCleanup(lambda: store.stopService() if store.running else None)  # runs before the unmount
        yield store.history()  # open, on the writer thread
        before = yield store.add_message("ann", "before the disk filled", "web")
        filler = _fill(directory)

        # The WAL keeps the room it had (journal_size_limit): small messages may fit there for a while.
        saved: list[Message] = []
        for n in range(200):
            try:
                saved.append((yield store.add_message("ann", f"small {n}", "web")))
            except StoreFull:
                break
        else:
            self.fail("a full disk never refused a message")
        yield self.assertFailure(store.add_message("ann", "x" * 20_000, "web"), StoreFull)
        yield self.assertFailure(store.audit("operation", "ann", "10.0.0.7", "y" * 20_000), StoreFull)
        self.assertEqual((yield store.history(limit=500)), [before] + saved)

        os.remove(filler)
        after: Message = yield store.add_message("ann", "x" * 20_000, "web")
        self.assertEqual(after.id, before.id + len(saved) + 1)  # refused inserts rolled their ids back
        self.assertEqual((yield store.history(limit=500)), [before] + saved + [after])
        self.assertEqual((yield store.integrity_check()), "ok")

        yield store.stopService()
        reopened = Store(os.path.join(directory, "chat.sqlite3"), retention_count=1000, retention_days=30,
                         reactor=_reactor())
        reopened.startService()
        self.addCleanup(lambda: reopened.stopService() if reopened.running else None)
        self.assertEqual([m.id for m in (yield reopened.history(limit=500))],
                         [m.id for m in [before] + saved + [after]])
        self.assertEqual((yield reopened.integrity_check()), "ok")
