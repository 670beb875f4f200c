"""
Tests for boatwist.auth.passwords: the htpasswd (bcrypt) and htdigest files.

Files are written by Apache's own ``htpasswd`` and ``htdigest`` where the
point is compatibility, and checked with them where the point is that what
we write is what they write.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import bcrypt
import pytest
from twisted.logger import Logger

from boatwist.auth import passwords
from apache_tools import run_htdigest
from boatwist.auth.passwords import (
    INITIAL_PASSWORD_FILE,
    PasswordFileError,
    UserDatabase,
    check_user_name,
    delete_user,
    digest_ha1,
    ensure_initial_admin,
    set_password,
    user_exists,
)

REALM = "boatwist"
ROUNDS = 4  # the bcrypt minimum: these tests are about formats, not cost

needs_htpasswd = pytest.mark.skipif(shutil.which("htpasswd") is None, reason="htpasswd (apache2-utils) not installed")
needs_htdigest = pytest.mark.skipif(shutil.which("htdigest") is None, reason="htdigest (apache2-utils) not installed")


def htpasswd_line(*flags: str, user: str = "bob", password: str = "secret") -> str:
    """One line as the real htpasswd writes it (-n: to stdout, -b: password from argv)."""
    out = subprocess.run(["htpasswd", "-nb", *flags, user, password], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def htpasswd_verifies(path: Path, user: str, password: str) -> bool:
    """Whether the real htpasswd accepts C{password} for C{user} in C{path}."""
    result = subprocess.run(["htpasswd", "-vb", str(path), user, password], capture_output=True, text=True)
    return result.returncode == 0


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "users.htpasswd", tmp_path / "users.htdigest"


# ------------------------------------------------------------- htpasswd


@needs_htpasswd
def test_real_htpasswd_B_file_is_accepted(files: tuple[Path, Path]) -> None:
    """A file made by `htpasswd -cbB` ($2y$ hashes) loads, and bcrypt_hash verifies the right password only."""
    users, digest = files
    subprocess.run(["htpasswd", "-cbB", "-C", "4", str(users), "bob", "secret"], check=True, capture_output=True)
    database = UserDatabase(users, digest)
    hashed = database.bcrypt_hash("bob")
    assert hashed is not None and hashed.startswith(b"$2y$04$")
    assert bcrypt.checkpw(b"secret", hashed)
    assert not bcrypt.checkpw(b"wrong", hashed)
    assert database.bcrypt_hash("nobody") is None
    assert database.users() == ["bob"]


@pytest.mark.parametrize("prefix", ["$2a$", "$2b$", "$2y$"])
def test_bcrypt_prefixes_accepted(files: tuple[Path, Path], prefix: str) -> None:
    """The three bcrypt prefixes in use ($2a$, $2b$, $2y$) are all accepted and verify."""
    users, digest = files
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(ROUNDS)).decode()
    users.write_text(f"carol:{prefix}{hashed[4:]}\n")
    stored = UserDatabase(users, digest).bcrypt_hash("carol")
    assert stored is not None and stored.startswith(prefix.encode())
    assert bcrypt.checkpw(b"pw", stored)


@needs_htpasswd
@pytest.mark.parametrize(
    "flag, kind",
    [("-m", "Apache MD5"), ("-s", "SHA-1"), ("-d", None), ("-p", None), ("-2", "SHA-256-crypt"), ("-5", "SHA-512-crypt")],
)
def test_weak_hashes_refused_naming_file_line_and_user(files: tuple[Path, Path], flag: str, kind: str | None) -> None:
    """MD5 ($apr1$), {SHA}, crypt, plain text, $5$, $6$ lines from the real htpasswd are refused with one line
    naming file, line number and user, and the fix (-B); the hash itself is not in the message."""
    users, digest = files
    line = htpasswd_line(flag)
    users.write_text("# operators\n\n" + htpasswd_line("-B", "-C", "4", user="alice") + "\n" + line + "\n")
    with pytest.raises(PasswordFileError) as caught:
        UserDatabase(users, digest)
    message = str(caught.value)
    assert message.startswith(f"{users}:4: user 'bob': ")
    assert "only bcrypt hashes (htpasswd -B) are accepted" in message
    assert "\n" not in message
    assert line.split(":", 1)[1] not in message
    if kind:
        assert kind in message


def test_comments_and_blank_lines_are_ignored(files: tuple[Path, Path]) -> None:
    """Comments (also indented) and blank lines, with CRLF line ends, are not users."""
    users, digest = files
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(ROUNDS)).decode()
    users.write_bytes(f"# header\r\n\r\n   # indented\r\ndave:{hashed}\r\n".encode())
    database = UserDatabase(users, digest)
    assert database.users() == ["dave"]
    assert bcrypt.checkpw(b"pw", database.bcrypt_hash("dave") or b"")


def test_duplicate_htpasswd_user_refused(files: tuple[Path, Path]) -> None:
    """The same user twice is an error naming the second line: which password applies would be a guess."""
    users, digest = files
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(ROUNDS)).decode()
    users.write_text(f"eve:{hashed}\nfrank:{hashed}\neve:{hashed}\n")
    with pytest.raises(PasswordFileError, match=r":3: user 'eve' appears twice"):
        UserDatabase(users, digest)


def test_line_without_colon_refused(files: tuple[Path, Path]) -> None:
    """A line that is not user:hash is an error with its line number."""
    users, digest = files
    users.write_text("justaname\n")
    with pytest.raises(PasswordFileError, match=r"users.htpasswd:1: expected user:hash"):
        UserDatabase(users, digest)


def test_line_separator_characters_do_not_split_lines(files: tuple[Path, Path]) -> None:
    """A U+2028 inside a line (which str.splitlines would split on) cannot smuggle in a second user."""
    users, digest = files
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(ROUNDS)).decode()
    users.write_text(f"x\u2028mallory:{hashed}\n")
    with pytest.raises(PasswordFileError, match="control characters"):
        UserDatabase(users, digest)


# ------------------------------------------------------------- htdigest


@needs_htdigest
def test_real_htdigest_file_loads(files: tuple[Path, Path]) -> None:
    """A file written by the real htdigest gives HA1 = MD5(user:realm:password), for our realm only."""
    users, digest = files
    run_htdigest(digest, REALM, "bob", "s3cret", create=True)
    run_htdigest(digest, "other realm", "bob", "different")
    database = UserDatabase(users, digest, realm=REALM)
    assert database.ha1("bob", REALM, "MD5") == hashlib.md5(b"bob:boatwist:s3cret").hexdigest()
    assert database.ha1("bob", "other realm", "MD5") is None
    assert database.ha1("bob", REALM, "SHA-256") is None
    assert database.users() == ["bob"]


def test_sha256_extension_line(files: tuple[Path, Path]) -> None:
    """user:realm:SHA-256:<64 hex> holds SHA256(user:realm:password), next to the MD5 line; upper-case hex is
    normalised."""
    users, digest = files
    sha = hashlib.sha256(b"bob:boatwist:pw").hexdigest()
    md5 = hashlib.md5(b"bob:boatwist:pw").hexdigest()
    digest.write_text(f"bob:boatwist:SHA-256:{sha.upper()}\nbob:boatwist:{md5}\n")
    database = UserDatabase(users, digest)
    assert database.ha1("bob", REALM, "SHA-256") == sha
    assert database.ha1("bob", REALM, "MD5") == md5
    assert digest_ha1("bob", REALM, "pw", "SHA-256") == sha
    assert digest_ha1("bob", REALM, "pw", "MD5") == md5


@pytest.mark.parametrize(
    "line, expected",
    [
        ("bob:boatwist:abc", "expected a MD5 HA1 of 32 hex digits"),
        ("bob:boatwist:SHA-256:" + "a" * 32, "expected a SHA-256 HA1 of 64 hex digits"),
        ("bob:boatwist:SHA-512:" + "a" * 64, "unknown algorithm 'SHA-512'"),
        ("bob:boatwist:MD5:" + "a" * 32, "expected user:realm:HA1 for MD5"),
        ("bob", "expected user:realm:HA1"),
        ("a:b:c:d:e", "expected user:realm:HA1"),
    ],
)
def test_malformed_htdigest_lines_refused(files: tuple[Path, Path], line: str, expected: str) -> None:
    """Malformed htdigest lines are refused with file and line number and what was expected."""
    users, digest = files
    digest.write_text("# c\n" + line + "\n")
    with pytest.raises(PasswordFileError) as caught:
        UserDatabase(users, digest)
    assert str(caught.value).startswith(f"{digest}:2: ")
    assert expected in str(caught.value)


@needs_htdigest
def test_htdigest_password_change_on_our_file_is_detected(files: tuple[Path, Path]) -> None:
    """Changing a password with the real htdigest on a file we wrote does not leave the SHA-256 HA1 silently
    holding the old password: the result has two MD5 lines and is refused, with a hint to use embweb-passwd."""
    users, digest = files
    set_password(users, digest, REALM, "bob", "old", ROUNDS)
    run_htdigest(digest, REALM, "bob", "new")
    with pytest.raises(PasswordFileError, match=r"appears twice .*embweb-passwd"):
        UserDatabase(users, digest, realm=REALM)


@needs_htdigest
def test_md5_only_users_are_warned_about(files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A user with an MD5 HA1 but no SHA-256 one (what htdigest writes) is named in a warning: clients that pick
    the SHA-256 challenge cannot log in as them.  The HA1 is not in the log."""
    users, digest = files
    events: list[dict] = []
    monkeypatch.setattr(UserDatabase, "_log", Logger(observer=events.append))
    run_htdigest(digest, REALM, "bob", "pw", create=True)
    UserDatabase(users, digest, realm=REALM)
    warnings = [e for e in events if "SHA-256" in e["log_format"]]
    assert len(warnings) == 1 and warnings[0]["users"] == "bob"
    assert hashlib.md5(b"bob:boatwist:pw").hexdigest() not in repr(events)


def test_both_files_may_be_absent(tmp_path: Path) -> None:
    """Missing files mean no users of that kind, not an error (first start, Basic-only, Digest-only)."""
    database = UserDatabase(tmp_path / "none.htpasswd", tmp_path / "none.htdigest")
    assert database.users() == []
    assert database.bcrypt_hash("admin") is None
    assert database.ha1("admin", REALM, "MD5") is None


def test_repr_and_errors_hold_no_secrets(files: tuple[Path, Path]) -> None:
    """Neither the database's repr nor an error message contains a hash or an HA1."""
    users, digest = files
    set_password(users, digest, REALM, "bob", "pw", ROUNDS)
    database = UserDatabase(users, digest)
    text = repr(database)
    assert "$2" not in text and database.ha1("bob", REALM, "MD5") not in text


# ------------------------------------------------------------- reloading


def test_reload_if_changed(files: tuple[Path, Path]) -> None:
    """Unchanged files are not re-read; a change (new password, deleted user) is, and the version moves."""
    users, digest = files
    set_password(users, digest, REALM, "bob", "one", ROUNDS)
    database = UserDatabase(users, digest)
    version = database.version
    assert database.reload_if_changed() is False
    assert database.version == version

    set_password(users, digest, REALM, "bob", "two", ROUNDS)
    assert database.reload_if_changed() is True
    assert database.version != version
    assert bcrypt.checkpw(b"two", database.bcrypt_hash("bob") or b"")
    assert database.ha1("bob", REALM, "MD5") == hashlib.md5(b"bob:boatwist:two").hexdigest()

    delete_user(users, digest, REALM, "bob")
    assert database.reload_if_changed() is True
    assert database.users() == []


def test_reload_sees_in_place_edit_with_same_size(files: tuple[Path, Path]) -> None:
    """An edit in place that keeps size and inode is still seen, through the modification time."""
    users, digest = files
    md5_a = hashlib.md5(b"bob:boatwist:a").hexdigest()
    md5_b = hashlib.md5(b"bob:boatwist:b").hexdigest()
    digest.write_text(f"bob:boatwist:{md5_a}\n")
    database = UserDatabase(users, digest)
    before = os.stat(digest)
    with open(digest, "r+") as f:
        f.write(f"bob:boatwist:{md5_b}\n")
    os.utime(digest, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
    assert database.reload_if_changed() is True
    assert database.ha1("bob", REALM, "MD5") == md5_b


def test_reload_of_broken_file_keeps_last_good(files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A file broken after start (e.g. htpasswd without -B) is logged once and the previous users stay in force
    until the file changes again; then it is read anew."""
    users, digest = files
    events: list[dict] = []
    monkeypatch.setattr(UserDatabase, "_log", Logger(observer=events.append))
    set_password(users, digest, REALM, "bob", "pw", ROUNDS)
    database = UserDatabase(users, digest)
    good = database.bcrypt_hash("bob")
    with open(users, "a") as f:
        f.write("eve:$apr1$abc$def\n")
    assert database.reload_if_changed() is False
    assert database.reload_if_changed() is False
    assert database.bcrypt_hash("bob") == good
    errors = [e for e in events if e["log_level"].name == "error"]
    assert len(errors) == 1 and "only bcrypt" in errors[0]["error"]

    set_password(users, digest, REALM, "eve", "fixed", ROUNDS)  # replaces the bad line
    assert database.reload_if_changed() is True
    assert database.users() == ["bob", "eve"]


# ------------------------------------------------------------- writing


@needs_htpasswd
def test_set_password_writes_what_the_tools_read(files: tuple[Path, Path]) -> None:
    """set_password writes a $2y$ bcrypt line the real htpasswd verifies, and MD5 + SHA-256 HA1 lines equal to
    hashlib's; both files mode 0600."""
    users, digest = files
    assert set_password(users, digest, REALM, "bob", "s3cret pässword", ROUNDS) is False
    line = users.read_text().strip()
    assert line.startswith("bob:$2y$04$")
    assert htpasswd_verifies(users, "bob", "s3cret pässword")
    assert not htpasswd_verifies(users, "bob", "wrong")
    assert digest.read_text().splitlines() == [
        "bob:boatwist:SHA-256:" + hashlib.sha256("bob:boatwist:s3cret pässword".encode()).hexdigest(),
        "bob:boatwist:" + hashlib.md5("bob:boatwist:s3cret pässword".encode()).hexdigest(),
    ]
    assert mode(users) == 0o600 and mode(digest) == 0o600


def test_set_password_default_cost_is_12(files: tuple[Path, Path]) -> None:
    """Without rounds the bcrypt cost is 12 (slow on a device, so stated and pinned once)."""
    users, digest = files
    set_password(users, digest, REALM, "bob", "pw")
    assert users.read_text().startswith("bob:$2y$12$")


def test_set_password_keeps_other_lines_and_replaces_in_place(files: tuple[Path, Path]) -> None:
    """Comments, other users and other realms' lines are kept byte for byte; the user's lines are replaced
    where they were, and a hand-made duplicate of them is dropped."""
    users, digest = files
    other_hash = bcrypt.hashpw(b"x", bcrypt.gensalt(ROUNDS)).decode()
    users.write_text(f"# top\nann:{other_hash}\nbob:$apr1$old$old\n\n# tail\nbob:$apr1$dup$dup\n")
    other_realm = "bob:lab:" + "1" * 32
    digest.write_text(f"# digest\n{other_realm}\nbob:boatwist:{'2' * 32}\nann:boatwist:{'3' * 32}\n")
    assert set_password(users, digest, REALM, "bob", "new", ROUNDS) is True
    lines = users.read_text().splitlines()
    assert lines[0:2] == ["# top", f"ann:{other_hash}"]
    assert lines[2].startswith("bob:$2y$")
    assert lines[3:] == ["", "# tail"]
    assert digest.read_text().splitlines() == [
        "# digest",
        other_realm,
        "bob:boatwist:SHA-256:" + hashlib.sha256(b"bob:boatwist:new").hexdigest(),
        "bob:boatwist:" + hashlib.md5(b"bob:boatwist:new").hexdigest(),
        f"ann:boatwist:{'3' * 32}",
    ]
    UserDatabase(users, digest)  # and the result loads


def test_set_password_is_atomic(files: tuple[Path, Path]) -> None:
    """The file is replaced by rename (new inode), leaves no temporary file behind, and a reader holding the old
    file still sees the whole old content."""
    users, digest = files
    set_password(users, digest, REALM, "bob", "one", ROUNDS)
    before = users.read_text()
    inode = os.stat(users).st_ino
    with open(users) as old:
        set_password(users, digest, REALM, "bob", "two", ROUNDS)
        assert old.read() == before
    assert os.stat(users).st_ino != inode
    assert sorted(p.name for p in users.parent.iterdir()) == ["users.htdigest", "users.htpasswd"]


def test_set_password_mode_is_0600_even_with_open_umask(files: tuple[Path, Path]) -> None:
    """Files are 0600 whatever the umask and whatever mode the old file had."""
    users, digest = files
    users.write_text("")
    os.chmod(users, 0o644)
    old = os.umask(0)
    try:
        set_password(users, digest, REALM, "bob", "pw", ROUNDS)
    finally:
        os.umask(old)
    assert mode(users) == 0o600 and mode(digest) == 0o600


def test_set_password_create_flag(files: tuple[Path, Path]) -> None:
    """create=True refuses an existing user, create=False a missing one, and neither then writes anything."""
    users, digest = files
    with pytest.raises(PasswordFileError, match="does not exist"):
        set_password(users, digest, REALM, "bob", "pw", ROUNDS, create=False)
    assert not users.exists() and not digest.exists()
    set_password(users, digest, REALM, "bob", "pw", ROUNDS, create=True)
    before = users.read_bytes()
    with pytest.raises(PasswordFileError, match="already exists"):
        set_password(users, digest, REALM, "bob", "other", ROUNDS, create=True)
    assert users.read_bytes() == before


def test_user_in_digest_file_only_counts_as_existing(files: tuple[Path, Path]) -> None:
    """A user with only an htdigest line (for this realm) exists; one in another realm only does not."""
    users, digest = files
    digest.write_text("dora:boatwist:" + "a" * 32 + "\nolga:lab:" + "b" * 32 + "\n")
    assert user_exists(users, digest, REALM, "dora")
    assert not user_exists(users, digest, REALM, "olga")
    with pytest.raises(PasswordFileError, match="already exists"):
        set_password(users, digest, REALM, "dora", "pw", ROUNDS, create=True)


@pytest.mark.parametrize(
    "name",
    ["", "a:b", "tab\there", "new\nline", "nul\x00", "del\x7f", "x" * 65, "#comment", " padded", 'quo"te',
     "back\\slash", "sep\u2028arator"],
)
def test_bad_user_names_refused(files: tuple[Path, Path], name: str) -> None:
    """Names that would break a line, the Digest header or the eye are refused, and nothing is written."""
    users, digest = files
    with pytest.raises(PasswordFileError):
        check_user_name(name)
    with pytest.raises(PasswordFileError):
        set_password(users, digest, REALM, name, "pw", ROUNDS)
    assert not users.exists()


@pytest.mark.parametrize("name", ["a", "x" * 64, "Zoë Operator", "ops-1.lab_b"])
def test_good_user_names_accepted(name: str) -> None:
    """Ordinary names, 64 characters, inner spaces and non-ASCII letters are fine."""
    check_user_name(name)


@pytest.mark.parametrize("password", ["", "x" * 73, "é" * 37, "two\nlines"])
def test_bad_passwords_refused(files: tuple[Path, Path], password: str) -> None:
    """Empty passwords, passwords over bcrypt's 72 bytes (UTF-8) and line breaks are refused, not truncated."""
    users, digest = files
    with pytest.raises(PasswordFileError):
        set_password(users, digest, REALM, "bob", password, ROUNDS)


def test_realm_with_colon_refused(files: tuple[Path, Path]) -> None:
    """A realm with ':' would make htdigest lines ambiguous: refused."""
    users, digest = files
    with pytest.raises(PasswordFileError, match="realm"):
        set_password(users, digest, "a:b", "bob", "pw", ROUNDS)


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    """Writing into a directory that does not exist names it instead of raising OSError."""
    with pytest.raises(PasswordFileError, match="does not exist"):
        set_password(tmp_path / "no" / "u", tmp_path / "no" / "d", REALM, "bob", "pw", ROUNDS)


def test_delete_user(files: tuple[Path, Path]) -> None:
    """delete_user removes the user from both files (this realm only), keeps everyone else, says if it found them."""
    users, digest = files
    set_password(users, digest, REALM, "bob", "pw", ROUNDS)
    set_password(users, digest, REALM, "ann", "pw", ROUNDS)
    with open(digest, "a") as f:
        f.write("bob:lab:" + "c" * 32 + "\n")
    assert delete_user(users, digest, REALM, "bob") is True
    database = UserDatabase(users, digest)
    assert database.bcrypt_hash("bob") is None
    assert database.ha1("bob", REALM, "MD5") is None and database.ha1("bob", REALM, "SHA-256") is None
    assert database.ha1("bob", "lab", "MD5") == "c" * 32
    assert database.bcrypt_hash("ann") is not None
    assert delete_user(users, digest, REALM, "bob") is False
    assert mode(users) == 0o600


# ------------------------------------------------------------- first start


def test_initial_admin_created_once(tmp_path: Path) -> None:
    """With no users file, admin gets a random password that works for Basic and Digest, is returned, and sits in
    state_dir/initial-admin-password (0600); with a users file, nothing happens."""
    state = tmp_path / "state"
    users, digest = state / "users.htpasswd", state / "users.htdigest"
    password = ensure_initial_admin(users, digest, REALM, state, rounds=ROUNDS)
    assert password is not None and len(password) >= 16
    secret_file = state / INITIAL_PASSWORD_FILE
    assert secret_file.read_text() == password + "\n"
    assert mode(secret_file) == 0o600
    database = UserDatabase(users, digest)
    assert bcrypt.checkpw(password.encode(), database.bcrypt_hash("admin") or b"")
    assert database.ha1("admin", REALM, "SHA-256") == digest_ha1("admin", REALM, password, "SHA-256")
    assert ensure_initial_admin(users, digest, REALM, state, rounds=ROUNDS) is None
    assert ensure_initial_admin(users, digest, REALM, state) is None
    assert password != ensure_initial_admin(tmp_path / "u2", tmp_path / "d2", REALM, tmp_path / "s2", rounds=ROUNDS)


def test_initial_password_file_is_created_0600_exclusively(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The password file is born 0600 by os.open with O_CREAT|O_EXCL (never world-readable, not even between
    create and chmod), whatever the umask."""
    calls: list[tuple[str, int, int]] = []
    real_open = os.open

    def spy(path, flags, mode=0o777, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append((os.fspath(path), flags, mode))
        return real_open(path, flags, mode, *args, **kwargs)

    monkeypatch.setattr(passwords.os, "open", spy)
    old = os.umask(0)
    try:
        ensure_initial_admin(tmp_path / "u", tmp_path / "d", REALM, tmp_path, rounds=ROUNDS)
    finally:
        os.umask(old)
    [(_, flags, created_mode)] = [c for c in calls if c[0].endswith(INITIAL_PASSWORD_FILE)]
    assert flags & os.O_CREAT and flags & os.O_EXCL
    assert created_mode == 0o600
    assert mode(tmp_path / INITIAL_PASSWORD_FILE) == 0o600


def test_initial_password_file_does_not_follow_a_planted_symlink(tmp_path: Path) -> None:
    """A symlink planted where the password file goes is replaced, and its target is never written."""
    target = tmp_path / "elsewhere"
    target.write_text("untouched\n")
    (tmp_path / INITIAL_PASSWORD_FILE).symlink_to(target)
    password = ensure_initial_admin(tmp_path / "u", tmp_path / "d", REALM, tmp_path, rounds=ROUNDS)
    assert target.read_text() == "untouched\n"
    assert not (tmp_path / INITIAL_PASSWORD_FILE).is_symlink()
    assert (tmp_path / INITIAL_PASSWORD_FILE).read_text() == f"{password}\n"


def test_initial_admin_not_invented_for_digest_only_installations(tmp_path: Path) -> None:
    """If the htdigest file already has users for the realm, no admin is created behind the operator's back."""
    digest = tmp_path / "d"
    digest.write_text("ops:boatwist:" + "a" * 32 + "\n")
    assert ensure_initial_admin(tmp_path / "u", digest, REALM, tmp_path, rounds=ROUNDS) is None
    assert not (tmp_path / "u").exists()


def test_files_are_looked_at_at_most_once_per_check_interval(tmp_path: Path) -> None:
    """With a check interval, a change is seen at the next check, and no stat happens in between."""
    from twisted.internet.task import Clock

    users, digest = tmp_path / "u", tmp_path / "d"
    set_password(users, digest, REALM, "alice", "one", rounds=4)
    clock = Clock()
    db = UserDatabase(users, digest, realm=REALM, monotonic=clock.seconds, check_interval=1.0)
    assert db.reload_if_changed() is False
    set_password(users, digest, REALM, "bob", "two", rounds=4)
    assert db.reload_if_changed() is False  # within the interval: not looked at
    assert db.bcrypt_hash("bob") is None
    clock.advance(1.0)
    assert db.reload_if_changed() is True
    assert db.bcrypt_hash("bob") is not None
