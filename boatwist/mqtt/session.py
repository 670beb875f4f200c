"""
The session number of the bridge's connections, persisted in state_dir.

Every connection carries a larger number than the one before, in its
``online`` status and in its last will, across restarts of the daemon --
Sparkplug B's C{bdSeq}.  A broker may publish the will of an old connection
after the new one said ``online`` (a half-open TCP connection that the
broker notices only at 1.5 x keepalive, where it cannot take the old
connection over: see L{boatwist.mqtt.bridge}); a subscriber that keeps the
highest session it has seen online ignores an ``offline`` with a smaller
one, and the bridge itself answers it by saying ``online`` again.  The number
is C{max(last + 1, now in whole seconds)}: it grows by one while the clock
is wrong (a device without a real-time clock boots in 1970), and a lost
state file does not send it back to 1 once the clock is right.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from twisted.logger import Logger

from boatwist.files import atomic_write

__all__ = ["SessionCounter"]


class SessionCounter:
    _log = Logger()

    def __init__(self, path: Path, wall_clock: Callable[[], float]) -> None:
        self._path = path
        self._wall_clock = wall_clock
        self._last: int | None = None

    def _read(self) -> int:
        try:
            return int(self._path.read_text(encoding="ascii").strip())
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as e:
            self._log.warn("MQTT session file {path} unreadable ({error}); starting again", path=self._path,
                           error=e)
            return 0

    def next(self) -> int:
        """
        The next session number, written down before it is used: a few bytes
        replaced at once (L{atomic_write}), so a power cut leaves the old number
        or the new one, never an empty file that would send the count back.
        """
        last = self._read() if self._last is None else self._last
        session = max(last + 1, int(self._wall_clock()))
        self._last = session
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self._path, f"{session}\n".encode("ascii"), 0o644)
        except OSError as e:
            # A full or read-only disk must not keep the device off the broker;
            # the number still grows while this process runs.
            self._log.warn("MQTT session file {path} not written ({error})", path=self._path, error=e)
        return session
