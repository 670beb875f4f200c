"""
The access log: one combined-format line per response.

By default the lines go to a file of their own (C{state_dir/access.log}, or
C{[http] access_log}), buffered and flushed once a second, the way Boa and
thttpd do it; with C{[http] access_log = log} they go through
C{twisted.logger} (namespace C{boatwist.access}: twistd's log, the journal).
Passwords, hashes and query values are never logged, and no byte a client
sends can forge a line.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Union

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.logger import Logger

if TYPE_CHECKING:
    from twisted.web.http import Request

__all__ = ["AccessLogFile", "access_log_line", "escape_log", "redact_query"]

_PLAIN_LOG = re.compile(rb'[\x20\x21\x23-\x5b\x5d-\x7e]*')


def escape_log(value: Union[bytes, str], *, space: bool = True) -> str:
    """
    A log field with C{"} and C{\\} escaped and every byte outside printable
    ASCII as C{\\xHH}: a request must not be able to forge a log line.
    """
    raw = value.encode("utf-8") if isinstance(value, str) else value
    # The common case, checked at C speed: printable ASCII with nothing to escape.
    if _PLAIN_LOG.fullmatch(raw) is not None and (space or b" " not in raw):
        return raw.decode("ascii")
    out = []
    for byte in raw:
        char = chr(byte)
        if char in '"\\':
            out.append("\\" + char)
        elif 0x21 <= byte <= 0x7E or (space and byte == 0x20):
            out.append(char)
        else:
            out.append(f"\\x{byte:02x}")
    return "".join(out)


def redact_query(uri: bytes) -> bytes:
    """
    C{uri} with every query value replaced by C{*}: tokens and passwords
    passed in a query string do not belong in a log file.
    """
    path, sep, query = uri.partition(b"?")
    if not sep:
        return uri
    redacted = []
    for pair in query.split(b"&"):
        name, eq, _ = pair.partition(b"=")
        redacted.append(name + b"=*" if eq else b"*")
    return path + b"?" + b"&".join(redacted)


def access_log_line(request: Request, timestamp: str) -> str:
    """
    One combined-log-format line for a finished C{request}.

    Like L{http.combinedLogFormatter}, but the user field is the name a
    resource recorded in C{request.boatwist_user} after authentication
    succeeded (never C{getUser()}, which is whatever the Authorization header
    claims, password right or wrong), and query values are redacted.
    No request header other than Referer and User-Agent is read.
    """
    address = request.getClientAddress()
    ip = address.host if isinstance(address, (IPv4Address, IPv6Address)) else "-"
    user = getattr(request, "boatwist_user", None)
    user_field = escape_log(user, space=False) if user else "-"
    referrer = request.getHeader(b"referer")
    agent = request.getHeader(b"user-agent")
    return '%s - %s %s "%s %s %s" %d %s "%s" "%s"' % (
        escape_log(ip),
        user_field,
        timestamp,
        escape_log(request.method),
        escape_log(redact_query(request.uri)),
        escape_log(request.clientproto),
        request.code,
        request.sentLength or "-",
        escape_log(redact_query(referrer)) if referrer else "-",
        escape_log(agent) if agent else "-",
    )




class AccessLogFile:
    """
    An access log written to a file of its own, the way Boa and thttpd do it:
    lines are buffered and flushed once a second (by L{flush}, called from the
    heartbeat), which costs a small fraction of a log event per request.

    The file is rotated as soon as it reaches C{max_size} bytes (checked at
    each line, so a burst cannot overshoot): C{path.1} ... C{path.N} with
    C{files} kept, the oldest deleted, so the access log takes at most
    C{max_size * (files + 1)} bytes and a line.  C{max_size} 0: never rotated.
    """

    _log = Logger()

    def __init__(self, path: str, max_size: int = 0, files: int = 5) -> None:
        self.path = path
        self.max_size = max_size
        self.files = files
        self._file = open(path, "ab", buffering=65536)
        self._size = self._file.tell()
        self._failed = False

    def write(self, line: str) -> None:
        data = line.encode("utf-8") + b"\n"
        try:
            self._file.write(data)
            self._size += len(data)
            if self.max_size and self._size >= self.max_size:
                self._rotate()
        except OSError as e:
            self._report(e)

    def flush(self) -> None:
        try:
            self._file.flush()
            self._failed = False
            if self.max_size and self._size >= self.max_size:
                self._rotate()
        except OSError as e:
            self._report(e)

    def _rotate(self) -> None:
        """path -> path.1 -> ... -> path.N; the one past N is deleted."""
        import os

        self._file.close()  # flushes what is buffered into the file being rotated
        for n in range(self.files, 0, -1):
            source = f"{self.path}.{n - 1}" if n > 1 else self.path
            if os.path.exists(source):
                os.replace(source, f"{self.path}.{n}")  # the one at .N is replaced: dropped
        if self.files == 0:
            os.remove(self.path)
        self._file = open(self.path, "ab", buffering=65536)
        self._size = 0

    def close(self) -> None:
        self.flush()
        self._file.close()

    def _report(self, error: OSError) -> None:
        if not self._failed:
            self._failed = True
            self._log.error("access log {path} cannot be written: {error}", path=self.path, error=error)
