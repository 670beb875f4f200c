"""
The two password files: an htpasswd file of bcrypt hashes (HTTP Basic, the
chat port) and an htdigest file of HA1 values (HTTP Digest).

Why two files: Basic gets the password itself and can afford a slow,
salted bcrypt comparison; Digest never sees the password, only a response
computed from H(user:realm:password), so it needs that "HA1" stored as is.
Both formats are the ones Apache's ``htpasswd -B`` and ``htdigest`` write,
so an integrator can manage users with tools they already know; the only
extension is a ``user:realm:SHA-256:<hex>`` line for RFC 7616's SHA-256
Digest.  The format is described for humans in ``docs/passwords.md``.

Reading is strict (the daemon refuses to start on a hash it cannot verify
safely, naming file, line and user); writing is lenient about *other* lines
(they are kept byte for byte) so ``embweb-passwd`` can repair a file that a
hand edit broke.  Writes are atomic (temporary file + ``os.replace``) and
the files are mode 0600, because an HA1 is as good as the password for
logging in with Digest.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Callable, Iterable

import bcrypt
from twisted.logger import Logger

from boatwist.auth.hashes import DIGEST_ALGORITHMS, digest_hex
from boatwist.files import atomic_write

__all__ = [
    "PasswordFileError",
    "UserDatabase",
    "check_user_name",
    "check_realm",
    "digest_ha1",
    "set_password",
    "delete_user",
    "ensure_initial_admin",
    "user_exists",
    "ALGORITHMS",
    "INITIAL_PASSWORD_FILE",
]

#: Digest algorithms an HA1 may be stored for (RFC 7616 names).
ALGORITHMS = ("MD5", "SHA-256")

#: Name, in state_dir, of the file holding the first admin's password.
INITIAL_PASSWORD_FILE = "initial-admin-password"

#: The user name the console's "log out" makes the browser send (boatwist.web.guard): nobody may have it.
LOGOUT_USER = "logout"
#: Longest user name accepted, in characters.
MAX_USER_LENGTH = 64

#: bcrypt refuses (bcrypt >= 5 raises) passwords longer than this, in bytes.
MAX_PASSWORD_BYTES = 72

_BCRYPT = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
_MD5_HEX = re.compile(r"[0-9a-fA-F]{32}")
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
#: Names of hash formats we refuse, for a more helpful message.
_KNOWN_WEAK = (
    ("$apr1$", "Apache MD5"),
    ("{SHA}", "SHA-1"),
    ("$1$", "MD5-crypt"),
    ("$5$", "SHA-256-crypt"),
    ("$6$", "SHA-512-crypt"),
)


class PasswordFileError(Exception):
    """
    A password file cannot be used or written.

    The message is one line naming the file, the line number and the user
    where there is one, and never contains a password, hash or HA1: it is
    printed by twistd at startup and by embweb-passwd as is.
    """


# ----------------------------------------------------------------- checks


def check_user_name(user: str) -> None:
    """
    Refuse a user name that cannot be stored or sent safely.

    ``:`` separates fields in both files; control characters (and other
    non-printables, some of which Python treats as line breaks) could split
    or hide a line; ``"`` and ``\\`` are escaped inconsistently by Digest
    clients inside the quoted ``username=``; a leading ``#`` would turn the
    line into a comment; surrounding spaces are invisible in every UI;
    ``logout`` is what the console logs people out as.
    """
    if not user:
        raise PasswordFileError("user name is empty")
    if len(user) > MAX_USER_LENGTH:
        raise PasswordFileError(f"user name is longer than {MAX_USER_LENGTH} characters")
    if not user.isprintable():
        raise PasswordFileError(f"user name {user!r} contains control characters")
    for bad in ':"\\':
        if bad in user:
            raise PasswordFileError(f"user name {user!r} contains {bad!r}")
    if user.startswith("#"):
        raise PasswordFileError(f"user name {user!r} starts with '#' (a comment in the files)")
    if user != user.strip():
        raise PasswordFileError(f"user name {user!r} starts or ends with a space")
    if user == LOGOUT_USER:
        raise PasswordFileError(
            f"user name {user!r} is reserved for logging out: the console's Log out makes the browser send it, "
            "and the server never lets it in")


def check_realm(realm: str) -> None:
    """Refuse a realm that would break the htdigest line format (same rule as config.py)."""
    if not realm or not realm.isprintable() or any(c in realm for c in '"\\:'):
        raise PasswordFileError(f"realm {realm!r}: expected a printable name without quotes, backslashes or colons")


def digest_ha1(user: str, realm: str, password: str, algorithm: str = "MD5") -> str:
    """
    H(user:realm:password) in lower-case hex, as RFC 7616 section 3.4.2 and
    ``htdigest`` compute it (UTF-8 bytes).  SHA-256 is our htdigest extension.
    """
    if algorithm not in DIGEST_ALGORITHMS:
        raise ValueError(f"unsupported Digest algorithm {algorithm!r}")
    return digest_hex(algorithm, f"{user}:{realm}:{password}".encode("utf-8"))


# ----------------------------------------------------------------- reading


def _read_lines(path: Path) -> list[str] | None:
    """The file's lines without their line ends, or None if it does not exist."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise PasswordFileError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise PasswordFileError(f"{path}:{line}: not valid UTF-8") from None
    # Split on \n only: str.splitlines() also splits on \x0b, \x1c, \u2028 ...,
    # which must stay inside a line (and then be refused) rather than make one.
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _is_comment(line: str) -> bool:
    stripped = line.strip()
    return not stripped or stripped.startswith("#")


def _parse_htpasswd(path: Path, lines: list[str]) -> dict[str, bytes]:
    """user -> bcrypt hash; refuses anything but bcrypt, duplicates, bad names."""
    hashes: dict[str, bytes] = {}
    for number, line in enumerate(lines, 1):
        if _is_comment(line):
            continue
        user, sep, hashed = line.partition(":")
        if not sep:
            raise PasswordFileError(f"{path}:{number}: expected user:hash")
        try:
            check_user_name(user)
        except PasswordFileError as e:
            raise PasswordFileError(f"{path}:{number}: {e}") from None
        if not _BCRYPT.fullmatch(hashed):
            kind = next((name for prefix, name in _KNOWN_WEAK if hashed.startswith(prefix)), None)
            what = f"{kind} hash refused" if kind else "not a bcrypt hash"
            raise PasswordFileError(
                f"{path}:{number}: user {user!r}: {what}; only bcrypt hashes (htpasswd -B) are accepted"
            )
        if user in hashes:
            raise PasswordFileError(f"{path}:{number}: user {user!r} appears twice")
        hashes[user] = hashed.encode("ascii")
    return hashes


def _digest_key(line: str) -> tuple[str, str, str, str] | None:
    """
    (user, realm, algorithm, hex) of an htdigest line, without checking the
    values; None if it has not the shape of one.
    """
    parts = line.split(":")
    if len(parts) == 3:
        return parts[0], parts[1], "MD5", parts[2]
    if len(parts) == 4:
        return parts[0], parts[1], parts[2], parts[3]
    return None


def _parse_htdigest(path: Path, lines: list[str], realm: str | None) -> dict[tuple[str, str, str], str]:
    """(user, realm, algorithm) -> HA1 hex (lower case); lines of other realms skipped if realm is set."""
    entries: dict[tuple[str, str, str], str] = {}
    for number, line in enumerate(lines, 1):
        if _is_comment(line):
            continue
        parsed = _digest_key(line)
        if parsed is None:
            raise PasswordFileError(f"{path}:{number}: expected user:realm:HA1 or user:realm:SHA-256:HA1")
        user, line_realm, algorithm, hexdigest = parsed
        if realm is not None and line_realm != realm:
            continue  # another realm's line: not ours to judge
        try:
            check_user_name(user)
        except PasswordFileError as e:
            raise PasswordFileError(f"{path}:{number}: {e}") from None
        if algorithm == "MD5" and line.count(":") == 3:
            # "user:realm:MD5:hex" is not a form htdigest writes; refuse rather than guess.
            raise PasswordFileError(f"{path}:{number}: user {user!r}: expected user:realm:HA1 for MD5")
        if algorithm not in ALGORITHMS:
            raise PasswordFileError(
                f"{path}:{number}: user {user!r}: unknown algorithm {algorithm!r} (expected SHA-256)"
            )
        pattern = _MD5_HEX if algorithm == "MD5" else _SHA256_HEX
        if not pattern.fullmatch(hexdigest):
            size = 32 if algorithm == "MD5" else 64
            raise PasswordFileError(
                f"{path}:{number}: user {user!r}: expected a {algorithm} HA1 of {size} hex digits"
            )
        key = (user, line_realm, algorithm)
        if key in entries:
            hint = " (was it edited with htdigest? set the password with embweb-passwd)" if algorithm == "MD5" else ""
            raise PasswordFileError(
                f"{path}:{number}: user {user!r} appears twice for realm {line_realm!r} ({algorithm}){hint}"
            )
        entries[key] = hexdigest.lower()
    return entries


_Signature = tuple[int, int, int] | None


def _signature(path: Path) -> _Signature:
    """(mtime_ns, size, inode) of a file, None if absent: what tells a change."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise PasswordFileError(f"{path}: cannot read ({e.strerror or e})") from None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class UserDatabase:
    """
    The users of both files, as read at one moment.

    Either file may be absent (no users of that kind).  C{reload_if_changed}
    re-reads them when their stat signature changes, so a password changed
    or a user deleted with embweb-passwd takes effect without a restart, and
    C{version} changes so caches of verified credentials can be dropped.

    With C{realm} set, htdigest lines of other realms are skipped unread
    (the file may be shared with other servers); without it all realms are
    loaded and C{ha1} filters.
    """

    _log = Logger()

    def __init__(self, users_path: str | os.PathLike[str] | None, digest_path: str | os.PathLike[str] | None,
                 realm: str | None = None, *, monotonic: Callable[[], float] | None = None,
                 check_interval: float = 0.0) -> None:
        """
        @param check_interval: look at the files at most this often, in
            seconds of C{monotonic}: every login asks, and two stats per
            request are a measurable share of a small device's budget.
            0 looks every time.
        """
        self._monotonic = monotonic
        self._check_interval = check_interval
        self._next_check = float("-inf")
        self.users_path = Path(users_path) if users_path is not None else None
        self.digest_path = Path(digest_path) if digest_path is not None else None
        self.realm = realm
        self.version = 0
        self._hashes: dict[str, bytes] = {}
        self._ha1: dict[tuple[str, str, str], str] = {}
        self._signatures: tuple[_Signature, _Signature] = (None, None)
        self._load()

    def _current_signatures(self) -> tuple[_Signature, _Signature]:
        return (
            _signature(self.users_path) if self.users_path else None,
            _signature(self.digest_path) if self.digest_path else None,
        )

    def _load(self) -> None:
        """Read both files; raises L{PasswordFileError} and then changes nothing."""
        signatures = self._current_signatures()
        hashes: dict[str, bytes] = {}
        ha1: dict[tuple[str, str, str], str] = {}
        if self.users_path is not None:
            lines = _read_lines(self.users_path)
            if lines is not None:
                hashes = _parse_htpasswd(self.users_path, lines)
        if self.digest_path is not None:
            lines = _read_lines(self.digest_path)
            if lines is not None:
                ha1 = _parse_htdigest(self.digest_path, lines, self.realm)
        self._hashes, self._ha1 = hashes, ha1
        self._signatures = signatures
        self.version += 1
        if self.realm is not None:
            md5_only = sorted(
                user for (user, realm, algorithm) in ha1
                if algorithm == "MD5" and (user, realm, "SHA-256") not in ha1
            )
            if md5_only:
                # htdigest writes MD5 only.  What that does to the offer is logged by boatwist.auth.offer.
                self._log.warn(
                    "{path}: no SHA-256 HA1 for {users} (written by htdigest?): Digest SHA-256 cannot be "
                    "offered while they have none; set their passwords with embweb-passwd passwd USER",
                    path=str(self.digest_path), users=", ".join(md5_only),
                )

    def reload_if_changed(self) -> bool:
        """
        Re-read the files if either changed (mtime, size or inode) since the
        last read; True if the users were reloaded.

        A file that fails to parse after a change (a hand edit in progress,
        an ``htpasswd`` without ``-B``) is logged once and the last good
        contents stay in force: a running device must not lock every
        operator out, and the daemon refuses to start on the same file.
        """
        if self._check_interval > 0 and self._monotonic is not None:
            now = self._monotonic()
            if now < self._next_check:
                return False
            self._next_check = now + self._check_interval
        try:
            signatures = self._current_signatures()
        except PasswordFileError as e:
            self._log.error("Password files not reloaded: {error}", error=str(e))
            return False
        if signatures == self._signatures:
            return False
        try:
            self._load()
        except PasswordFileError as e:
            self._signatures = signatures  # do not retry (and log) until it changes again
            self._log.error("Password files not reloaded, keeping the previous users: {error}", error=str(e))
            return False
        self._log.info("Password files reloaded: {count} users", count=len(self.users()))
        return True

    def bcrypt_hash(self, user: str) -> bytes | None:
        """The user's bcrypt hash from the htpasswd file, or None."""
        return self._hashes.get(user)

    def ha1(self, user: str, realm: str, algorithm: str) -> str | None:
        """The user's stored H(user:realm:password) for C{algorithm} ('MD5' or 'SHA-256'), lower-case hex, or None."""
        return self._ha1.get((user, realm, algorithm))

    def available(self, user: str) -> tuple[str, ...]:
        """
        What C{user} can log in with: the Digest algorithms they have an HA1
        for (in C{realm}; strongest first), and ``"basic"`` when a password
        can be checked -- against the bcrypt hash, or else against an HA1
        (L{basic_hash}).  Empty for an unknown user.
        """
        algorithms = tuple(a for a in ("SHA-256", "MD5") if self.realm is not None
                           and (user, self.realm, a) in self._ha1)
        if user in self._hashes or algorithms:
            return algorithms + ("basic",)
        return ()

    def basic_hash(self, user: str) -> tuple[str, str] | None:
        """
        For a user with no bcrypt hash, what a Basic password can be checked
        against: (algorithm, HA1), SHA-256 preferred; None if there is none.
        An HA1 is H(user:realm:password), so the password a Basic client
        sends can be hashed and compared -- which lets an ``htdigest``-made
        user log in with Basic too (wget, a browser's Basic, the chat port).
        """
        if self.realm is None:
            return None
        for algorithm in ("SHA-256", "MD5"):
            ha1 = self._ha1.get((user, self.realm, algorithm))
            if ha1 is not None:
                return algorithm, ha1
        return None

    def users(self) -> list[str]:
        """Every user name in either file (for C{realm}'s lines if one was given), sorted."""
        names = set(self._hashes)
        names.update(user for (user, _realm, _algorithm) in self._ha1)
        return sorted(names)

    def __repr__(self) -> str:
        # Never show hashes.
        return f"<UserDatabase {self.users_path} {self.digest_path} users={len(self.users())} version={self.version}>"


# ----------------------------------------------------------------- writing


def _atomic_write(path: Path, lines: Iterable[str]) -> None:
    """
    Replace C{path} with C{lines} at once, mode 0600 (L{boatwist.files.atomic_write}):
    the hashes are never readable by others, not even for a moment.  When
    root edits a file that belongs to the daemon's user, ownership is
    carried over so the daemon can still read it.
    """
    directory = path.parent
    if not directory.is_dir():
        raise PasswordFileError(f"{path}: directory {directory} does not exist")
    try:
        previous = path.stat()
    except FileNotFoundError:
        previous = None
    except OSError as e:
        raise PasswordFileError(f"{path}: cannot read ({e.strerror or e})") from None
    owner = None
    if previous is not None and hasattr(os, "geteuid") and os.geteuid() == 0:
        owner = (previous.st_uid, previous.st_gid)
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    try:
        atomic_write(path, data, 0o600, owner)
    except OSError as e:
        raise PasswordFileError(f"{path}: cannot write ({e.strerror or e})") from None


def _existing(path: Path) -> list[str]:
    lines = _read_lines(path)
    return [] if lines is None else lines


def _htpasswd_user(line: str) -> str | None:
    if _is_comment(line) or ":" not in line:
        return None
    return line.split(":", 1)[0]


def _htdigest_user(line: str, realm: str) -> str | None:
    """The user of an htdigest line of C{realm}, else None."""
    if _is_comment(line):
        return None
    parsed = _digest_key(line)
    if parsed is None or parsed[1] != realm:
        return None
    return parsed[0]


def _replace_user(lines: list[str], owner: Callable[[str], str | None], user: str,
                  new: list[str]) -> tuple[list[str], bool]:
    """
    C{lines} with every line owned by C{user} removed and C{new} put where
    the first of them was (appended if there was none); and whether any
    was found.  Duplicates left by hand edits are dropped on the way.
    """
    result: list[str] = []
    found = False
    for line in lines:
        if owner(line) == user:
            if not found:
                result.extend(new)
            found = True
            continue
        result.append(line)
    if not found:
        result.extend(new)
    return result, found


def user_exists(users_path: str | os.PathLike[str], digest_path: str | os.PathLike[str], realm: str,
                user: str) -> bool:
    """
    Whether C{user} has a line in either file (the htdigest one for C{realm}).

    Lenient like the writers: a file with lines this module would refuse to
    load can still be inspected and repaired.
    """
    return any(_htpasswd_user(line) == user for line in _existing(Path(users_path))) or any(
        _htdigest_user(line, realm) == user for line in _existing(Path(digest_path))
    )


def _check_password(password: str) -> bytes:
    if not password:
        raise PasswordFileError("password is empty")
    if "\n" in password or "\r" in password or "\x00" in password:
        raise PasswordFileError("password contains a line break or NUL")
    encoded = password.encode("utf-8")
    if len(encoded) > MAX_PASSWORD_BYTES:
        raise PasswordFileError(f"password is longer than {MAX_PASSWORD_BYTES} bytes (the bcrypt limit)")
    return encoded


def _bcrypt_line_hash(password: bytes, rounds: int) -> str:
    """A bcrypt hash written as htpasswd -B writes it: the $2y$ prefix (same algorithm as $2b$)."""
    if not 4 <= rounds <= 31:
        raise PasswordFileError(f"bcrypt rounds {rounds}: expected 4 to 31")
    hashed = bcrypt.hashpw(password, bcrypt.gensalt(rounds=rounds, prefix=b"2b")).decode("ascii")
    return "$2y$" + hashed[4:]


def set_password(users_path: str | os.PathLike[str], digest_path: str | os.PathLike[str], realm: str,
                 user: str, password: str, rounds: int = 12, *, create: bool | None = None) -> bool:
    """
    Give C{user} the password C{password} in both files: a bcrypt hash in
    the htpasswd file, the MD5 and SHA-256 HA1 for C{realm} in the htdigest
    file.  Other lines are kept as they were; the user's lines are replaced
    in place.  Returns True if the user existed before.

    C{create=True} refuses an existing user, C{create=False} a missing one
    (checked against the files as they are read for rewriting).  The two
    files are replaced one after the other, each atomically; the htdigest
    file first, so an interruption leaves at worst Digest ahead of Basic.
    """
    check_user_name(user)
    check_realm(realm)
    encoded = _check_password(password)
    users_file, digest_file = Path(users_path), Path(digest_path)
    users_lines = _existing(users_file)
    digest_lines = _existing(digest_file)
    existed = any(_htpasswd_user(line) == user for line in users_lines) or any(
        _htdigest_user(line, realm) == user for line in digest_lines
    )
    if create is True and existed:
        raise PasswordFileError(f"user {user!r} already exists")
    if create is False and not existed:
        raise PasswordFileError(f"user {user!r} does not exist")
    bcrypt_hash = _bcrypt_line_hash(encoded, rounds)
    # SHA-256 first: ``htdigest`` replaces the first "user:realm:" line it
    # finds, so a password changed with it yields two MD5 lines, which the
    # loader refuses, rather than a SHA-256 HA1 silently keeping the old password.
    digest_new = [
        f"{user}:{realm}:SHA-256:{digest_ha1(user, realm, password, 'SHA-256')}",
        f"{user}:{realm}:{digest_ha1(user, realm, password, 'MD5')}",
    ]
    digest_lines, _ = _replace_user(digest_lines, lambda line: _htdigest_user(line, realm), user, digest_new)
    users_lines, _ = _replace_user(users_lines, _htpasswd_user, user, [f"{user}:{bcrypt_hash}"])
    _atomic_write(digest_file, digest_lines)
    _atomic_write(users_file, users_lines)
    return existed


def delete_user(users_path: str | os.PathLike[str], digest_path: str | os.PathLike[str], realm: str,
                user: str) -> bool:
    """
    Remove C{user}'s line from the htpasswd file and its C{realm} lines from
    the htdigest file (other realms' lines stay).  Returns whether the user
    was found; a file with nothing to remove is not rewritten.
    """
    check_realm(realm)
    found = False
    for path, owner in (
        (Path(digest_path), lambda line: _htdigest_user(line, realm)),
        (Path(users_path), _htpasswd_user),
    ):
        lines = _read_lines(path)
        if lines is None:
            continue
        kept = [line for line in lines if owner(line) != user]
        if len(kept) != len(lines):
            _atomic_write(path, kept)
            found = True
    return found


def ensure_initial_admin(users_path: str | os.PathLike[str], digest_path: str | os.PathLike[str], realm: str,
                         state_dir: str | os.PathLike[str], rounds: int = 12) -> str | None:
    """
    On first start (no htpasswd file), create the user ``admin`` with a
    random password, so a fresh device is never open and never ships with a
    well-known password.  The password is written to
    ``state_dir/initial-admin-password`` (created 0600 with O_EXCL: no other
    user can have pre-created it or a symlink in its place) and returned for
    the caller to show once.  Returns None when the users file exists, or
    when the htdigest file already has users for C{realm} (a Digest-only
    installation already has its operators).
    """
    users_file, digest_file = Path(users_path), Path(digest_path)
    if users_file.exists():
        return None
    if any(_htdigest_user(line, realm) is not None for line in _existing(digest_file)):
        return None
    state = Path(state_dir)
    try:
        state.mkdir(mode=0o700, parents=True, exist_ok=True)
        users_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        digest_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise PasswordFileError(f"{state}: cannot create the state directory ({e.strerror or e})") from None
    password = secrets.token_urlsafe(12)
    secret_file = state / INITIAL_PASSWORD_FILE
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        try:
            fd = os.open(secret_file, flags, 0o600)
        except FileExistsError:
            # Left by a first start that died before writing the users file:
            # that password was never usable.  Unlinking removes a symlink
            # itself, never its target; O_EXCL still guards the re-creation.
            os.unlink(secret_file)
            fd = os.open(secret_file, flags, 0o600)
    except OSError as e:
        raise PasswordFileError(f"{secret_file}: cannot create ({e.strerror or e})") from None
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(password + "\n")
            f.flush()
            os.fsync(f.fileno())
        set_password(users_file, digest_file, realm, "admin", password, rounds, create=True)
    except BaseException:
        try:
            os.unlink(secret_file)
        except OSError:
            pass
        raise
    return password

