"""
Writing a file so that a reader -- or a power cut -- sees the old one or the new one, never a part.

The users files, the generated TLS key and certificate: each is replaced with
one C{rename(2)} of a temporary written in the same directory (a rename is
atomic only within a file system), created with its final mode by
C{O_EXCL} (a private key is never readable by others, not even for an
instant), synced before the rename, and the directory synced after it --
flash on embedded boards loses what was not synced.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["atomic_write"]


def atomic_write(path: Path, data: bytes, mode: int, owner: tuple[int, int] | None = None) -> None:
    """
    Replace C{path} with C{data}, mode C{mode} exactly (the umask does not
    apply), owned by C{owner} (uid, gid) when given.  Raises C{OSError}.
    """
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have taken bits off; put back exactly `mode`
            if owner is not None:
                os.fchown(fd, *owner)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        try:
            temporary.unlink()
        except OSError:
            pass
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make a rename in C{directory} durable; a file system that refuses is left as it is."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
