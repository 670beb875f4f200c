"""
Logging that cannot be turned against the device.

  - Loggers whose namespace is chosen, not derived from the class: the
    login log (C{boatwist.login}) and the access log (C{boatwist.access})
    are routed and searched by namespace, so they must keep the one they
    were given.
  - L{SourceSummary}: what a flood of unauthenticated requests would write
    line by line is written as a summary per source each second.
  - Bounded files: C{[log] file} is rotated at C{max_size} with C{files}
    kept, and so is twistd's own C{--logfile}, which otherwise keeps every
    rotated file.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Callable

from twisted.application.service import Service
from twisted.logger import ILogObserver, Logger

__all__ = ["BoundedLogs", "NamespacedLogger", "SourceSummary", "bound_twistd_logfiles", "rotating_observer"]


class NamespacedLogger(Logger):
    """
    A class-level L{Logger} that keeps the namespace it was given:
    L{Logger.__get__} would rename it after the class it is an attribute of.
    """

    def __get__(self, instance: object, owner: type | None = None) -> Logger:
        return self.__class__(self.namespace, instance if instance is not None else owner, observer=self.observer)


# ----------------------------------------------------------- summaries


#: Summary lines written per flush at most; the remaining sources share one line.
MAX_SUMMARY_LINES = 10
#: Sources remembered between two flushes at most; the rest are counted together.
MAX_SOURCES = 1000
#: What the sources past MAX_SOURCES are counted under.
OTHERS = "other sources"


class SourceSummary:
    """
    Log lines about requests nobody authenticated (and refusals): one by one
    up to C{per_source} a second for one source and C{max_lines} a second in
    all, then counted and written as one summary line per source each second
    (L{flush}, called by the heartbeat).  A client sending requests as fast as
    it can -- 17 MB of access log a minute before -- costs a handful of lines a
    second, and what it did is still in the log, counted by status.
    """

    _log = NamespacedLogger(namespace="boatwist.summary")

    def __init__(self, monotonic: Callable[[], float], per_source: int, max_lines: int) -> None:
        self._now = monotonic
        self._per_source = per_source
        self._max_lines = max_lines
        self._second = -1
        self._lines: Counter[str] = Counter()
        self._total = 0
        self._held: dict[str, Counter[str]] = {}
        self._held_since: float | None = None

    def admit(self, source: str, what: str) -> bool:
        """May this line about C{source} be written now?  If not, it is counted as C{what}."""
        now = self._now()
        second = int(now)
        if second != self._second:
            self._second, self._total = second, 0
            self._lines.clear()
        if self._lines[source] < self._per_source and self._total < self._max_lines:
            self._lines[source] += 1
            self._total += 1
            return True
        if source not in self._held and len(self._held) >= MAX_SOURCES:
            source = OTHERS
        self._held.setdefault(source, Counter())[what] += 1
        if self._held_since is None:
            self._held_since = now
        return False

    def flush(self) -> None:
        """Write what was held back as summary lines: the largest sources one each, the rest together."""
        if not self._held:
            return
        held, self._held = self._held, {}
        seconds = max(1.0, self._now() - (self._held_since or 0.0))
        self._held_since = None
        ranked = sorted(held.items(), key=lambda item: sum(item[1].values()), reverse=True)
        for source, counts in ranked[:MAX_SUMMARY_LINES]:
            self._log.info("{source}: {count} more lines not written one by one in {seconds:.0f} s ({what})",
                           source=source, count=sum(counts.values()), seconds=seconds, what=_describe(counts))
        rest = ranked[MAX_SUMMARY_LINES:]
        if rest:
            total: Counter[str] = Counter()
            for _, counts in rest:
                total.update(counts)
            self._log.info("{sources} more sources: {count} more lines not written one by one in {seconds:.0f} s "
                           "({what})", sources=len(rest), count=sum(total.values()), seconds=seconds,
                           what=_describe(total))


def _describe(counts: Counter[str]) -> str:
    return ", ".join(f"{what} x{n}" for what, n in counts.most_common(6))


# ----------------------------------------------------------- bounded files

#: A log may take at most this share of the file system it is written on.
FILE_SYSTEM_SHARE = 8
#: The smallest size a log file is rotated at, however small the file system.
MIN_ROTATE_SIZE = 16 * 1024


def rotate_size(path: str, max_size: int, files: int,
                statvfs: Callable[[str], os.statvfs_result] = os.statvfs) -> int:
    """
    The size to rotate a log at C{path} at: C{max_size}, made smaller where
    C{max_size * (files + 1)} would pass an eighth of the file system holding
    it (a small flash partition shared with the store: the log must not be
    what fills it).  At least L{MIN_ROTATE_SIZE}; 0 (never rotated) stays 0.
    """
    if max_size <= 0:
        return max_size
    try:
        stats = statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return max_size
    share = stats.f_blocks * stats.f_frsize // FILE_SYSTEM_SHARE
    return max(MIN_ROTATE_SIZE, min(max_size, share // (files + 1)))


def rotating_observer(path: str, max_size: int, files: int) -> ILogObserver:
    """
    A text log observer writing to C{path}, rotated at C{max_size} bytes,
    keeping C{files} rotated files: at most C{max_size * (files + 1)} bytes.
    Raises OSError when the file cannot be opened.
    """
    from twisted.logger import textFileLogObserver
    from twisted.python.logfile import LogFile

    log_file = LogFile.fromFullPath(path, rotateLength=max_size, maxRotatedFiles=files, defaultMode=0o640)
    return textFileLogObserver(log_file)


def bound_twistd_logfiles(max_size: int, files: int) -> int:
    """
    Give the log file twistd opened for C{--logfile} a bound: rotated at
    C{max_size}, C{files} kept (twistd keeps every rotated file, forever).
    Private Twisted API (the observer's file): returns how many were found,
    0 when there is none or Twisted changed.
    """
    from twisted.logger import globalLogPublisher
    from twisted.python.logfile import LogFile

    found = 0
    for observer in list(getattr(globalLogPublisher, "_observers", [])):
        log_file = getattr(observer, "_outFile", None)
        if isinstance(log_file, LogFile):
            log_file.rotateLength = max_size
            log_file.maxRotatedFiles = files
            found += 1
    return found


class BoundedLogs(Service):
    """
    Puts the bounds on log files when the daemon starts: twistd's own
    C{--logfile} (opened after the plugin is assembled) is found and bounded
    like C{[log] file}; C{observer} (C{[log] file}, when set) is removed at
    stop.  Twistd without C{-n} and without C{--logfile} writes twistd.log:
    bounded the same way.
    """

    _log = Logger()

    def __init__(self, max_size: int, files: int, observer: ILogObserver | None) -> None:
        self.max_size = max_size
        self.files = files
        self.observer = observer

    def startService(self) -> None:
        super().startService()
        if bound_twistd_logfiles(self.max_size, self.files):
            self._log.info("twistd's log file is rotated at {size} bytes, {files} kept", size=self.max_size,
                           files=self.files)

    def stopService(self) -> None:
        super().stopService()
        if self.observer is not None:
            from twisted.logger import globalLogPublisher

            globalLogPublisher.removeObserver(self.observer)
