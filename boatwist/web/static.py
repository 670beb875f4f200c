"""
The UI's files, read once into memory (at the first request) and served from there.

They are a handful of small, immutable files shipped in the package:
keeping them in memory spares every request an open, a stat, reads and
Twisted's file producer, which cost more than the request itself.  A strong
ETag lets the browser revalidate cheaply (C{Cache-Control: no-cache}), so
after a firmware upgrade it never runs an old app.js.

Text files are also kept gzip-compressed (made once, with the first read) and sent so
to a client that accepts gzip: the console's ~82 kB are ~27 kB on the wire,
which is what a slow link to a device feels.  The compressed form has its own
ETag, and C{Vary: Accept-Encoding} keeps caches from mixing the two.

Nothing is read before the first request: reading and compressing them
(and importing gzip) at start would delay listening and keep ~120 kB
resident on a device nobody has opened the console of yet.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from twisted.web.resource import Resource
from twisted.web.server import Request

from boatwist.web.errors import ErrorResource

__all__ = ["StaticFiles", "static_dir"]


def static_dir() -> Path:
    """The UI's files, shipped in the package (a directory: they are served from a real file system)."""
    return Path(__file__).resolve().parent / "static"


class StaticFiles(Resource):
    """
    The files under a directory, in memory.  Names starting with a dot are
    never loaded, and there are no directory listings: a directory serves
    its index.html or is a 404.
    """

    isLeaf = True
    #: Largest file kept; the UI's files are a few kB.
    MAX_FILE = 1 << 20
    TYPES = {
        ".html": b"text/html; charset=utf-8",
        ".js": b"text/javascript; charset=utf-8",
        ".css": b"text/css; charset=utf-8",
        ".svg": b"image/svg+xml",
        ".png": b"image/png",
        ".ico": b"image/x-icon",
        ".json": b"application/json",
        ".txt": b"text/plain; charset=utf-8",
    }

    #: Types worth compressing.
    COMPRESSED = (b"text/", b"image/svg+xml", b"application/json")

    def __init__(self, directory: str) -> None:
        super().__init__()
        self._directory = directory
        self._files: dict[tuple[bytes, ...], tuple[bytes, bytes, bytes]] = {}
        #: The gzip form of a file that has one (same keys): body and ETag.
        self._gzipped: dict[tuple[bytes, ...], tuple[bytes, bytes]] = {}
        self._loaded = False

    def _load(self) -> None:
        """Read every file (and compress the text ones), once."""
        import gzip

        self._loaded = True
        root = Path(self._directory)
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(root)
            if any(part.startswith(".") for part in relative.parts) or not path.is_file():
                continue
            if path.stat().st_size > self.MAX_FILE:
                continue
            body = path.read_bytes()
            kind = self.TYPES.get(path.suffix.lower(), b"application/octet-stream")
            etag = b'"' + hashlib.sha256(body).hexdigest()[:20].encode() + b'"'
            key = tuple(part.encode("utf-8") for part in relative.parts)
            keys = [key, key[:-1] + (b"",)] if relative.name == "index.html" else [key]
            packed = gzip.compress(body, 9, mtime=0) if kind.startswith(self.COMPRESSED) else body
            for k in keys:
                self._files[k] = (body, kind, etag)
                if len(packed) < len(body) * 0.9:
                    self._gzipped[k] = (packed, etag[:-1] + b'-gz"')

    def render_GET(self, request: Request) -> bytes:
        if not self._loaded:
            self._load()
        key = tuple(request.postpath or ()) or (b"",)
        found = self._files.get(key)
        if found is None:
            return ErrorResource(404, "no such page").render(request)
        body, kind, etag = found
        request.setHeader(b"content-type", kind)
        request.setHeader(b"cache-control", b"no-cache")
        packed = self._gzipped.get(key)
        if packed is not None:
            request.setHeader(b"vary", b"Accept-Encoding")
            if accepts_gzip(request.getHeader(b"accept-encoding")):
                body, etag = packed
                request.setHeader(b"content-encoding", b"gzip")
        request.setHeader(b"etag", etag)
        match = request.getHeader(b"if-none-match")
        if match is not None and etag in [tag.strip() for tag in match.split(b",")]:
            request.setResponseCode(304)
            return b""
        return body




def accepts_gzip(header: bytes | None) -> bool:
    """Whether an Accept-Encoding header accepts gzip (not with q=0)."""
    for part in (header or b"").lower().split(b","):
        name, _, params = part.strip().partition(b";")
        if name.strip() in (b"gzip", b"*"):
            q = params.strip()
            if not q.startswith(b"q="):
                return True
            try:
                return float(q[2:]) > 0
            except ValueError:
                return False
    return False
