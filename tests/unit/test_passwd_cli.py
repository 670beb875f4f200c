"""
Tests for embweb-passwd (boatwist.auth.passwd_cli.main), driven in-process with
temporary files; results are checked with bcrypt, hashlib and the real
``htpasswd -vb``.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import subprocess
from pathlib import Path

import bcrypt
import pytest

from boatwist.auth import passwd_cli
from boatwist.auth.passwd_cli import main
from boatwist.auth.passwords import UserDatabase

needs_htpasswd = pytest.mark.skipif(shutil.which("htpasswd") is None, reason="htpasswd (apache2-utils) not installed")


class Run:
    """One invocation of main(): exit status, stdout, stderr."""

    def __init__(self, argv: list[str], stdin: str = "") -> None:
        out, err = io.StringIO(), io.StringIO()
        self.status = main(argv, stdin=io.StringIO(stdin), stdout=out, stderr=err)
        self.out, self.err = out.getvalue(), err.getvalue()


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    users, digest = tmp_path / "users.htpasswd", tmp_path / "users.htdigest"
    return users, digest, ["--users", str(users), "--digest-users", str(digest), "--realm", "lab", "--rounds", "4"]


def htpasswd_verifies(path: Path, user: str, password: str) -> bool:
    result = subprocess.run(["htpasswd", "-vb", str(path), user, password], capture_output=True, text=True)
    return result.returncode == 0


@needs_htpasswd
def test_add_writes_both_files(paths: tuple[Path, Path, list[str]]) -> None:
    """add with --password-stdin writes a bcrypt line (bcrypt and the real htpasswd verify it) and the MD5 and
    SHA-256 HA1 lines for the realm; both files 0600; exit 0."""
    users, digest, options = paths
    run = Run([*options, "--password-stdin", "add", "alice"], stdin="correct horse\n")
    assert run.status == 0, run.err
    assert "added alice" in run.out
    database = UserDatabase(users, digest)
    assert bcrypt.checkpw(b"correct horse", database.bcrypt_hash("alice") or b"")
    assert htpasswd_verifies(users, "alice", "correct horse")
    assert not htpasswd_verifies(users, "alice", "correct horse\n")
    assert database.ha1("alice", "lab", "MD5") == hashlib.md5(b"alice:lab:correct horse").hexdigest()
    assert database.ha1("alice", "lab", "SHA-256") == hashlib.sha256(b"alice:lab:correct horse").hexdigest()
    for path in (users, digest):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_password_stdin_takes_one_line_crlf_too(paths: tuple[Path, Path, list[str]]) -> None:
    """Only the first line is the password; its \\r\\n or \\n is not part of it, inner spaces are."""
    users, digest, options = paths
    assert Run([*options, "--password-stdin", "add", "bob"], stdin=" two words \r\nignored\n").status == 0
    assert bcrypt.checkpw(b" two words ", UserDatabase(users, digest).bcrypt_hash("bob") or b"")


def test_interactive_password_asked_twice(paths: tuple[Path, Path, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --password-stdin the password is asked twice with getpass (no echo); two different answers are
    a failure (exit 1) and nothing is written."""
    users, digest, options = paths
    prompts: list[str] = []
    answers = iter(["first", "second", "same", "same"])

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr(passwd_cli.getpass, "getpass", fake_getpass)
    run = Run([*options, "add", "carol"])
    assert run.status == 1 and "differ" in run.err
    assert not users.exists() and not digest.exists()
    assert Run([*options, "add", "carol"]).status == 0
    assert len(prompts) == 4
    assert bcrypt.checkpw(b"same", UserDatabase(users, digest).bcrypt_hash("carol") or b"")


def test_add_refuses_existing_user(paths: tuple[Path, Path, list[str]]) -> None:
    """add on an existing user fails (exit 1, one line) and leaves the password as it was."""
    users, digest, options = paths
    Run([*options, "--password-stdin", "add", "dave"], stdin="one\n")
    before = users.read_bytes()
    run = Run([*options, "--password-stdin", "add", "dave"], stdin="two\n")
    assert run.status == 1
    assert run.err.count("\n") == 1 and "already exists" in run.err
    assert users.read_bytes() == before


@needs_htpasswd
def test_passwd_changes_an_existing_user_only(paths: tuple[Path, Path, list[str]]) -> None:
    """passwd refuses a missing user (exit 1); for an existing one the new password works and the old no longer
    does, in both files."""
    users, digest, options = paths
    run = Run([*options, "--password-stdin", "passwd", "erin"], stdin="x\n")
    assert run.status == 1 and "does not exist" in run.err
    Run([*options, "--password-stdin", "add", "erin"], stdin="old\n")
    assert Run([*options, "--password-stdin", "passwd", "erin"], stdin="new\n").status == 0
    assert htpasswd_verifies(users, "erin", "new")
    assert not htpasswd_verifies(users, "erin", "old")
    assert UserDatabase(users, digest).ha1("erin", "lab", "MD5") == hashlib.md5(b"erin:lab:new").hexdigest()


def test_delete_and_list(paths: tuple[Path, Path, list[str]]) -> None:
    """list prints each user and what they can log in with; delete removes a user (exit 1 if there was none)."""
    users, digest, options = paths
    for name in ("zoe", "amy"):
        Run([*options, "--password-stdin", "add", name], stdin="pw\n")
    listed = Run([*options, "list"])
    assert listed.status == 0
    assert listed.out == "amy\tbasic,digest-md5,digest-sha-256\nzoe\tbasic,digest-md5,digest-sha-256\n"
    assert Run([*options, "delete", "zoe"]).status == 0
    assert Run([*options, "list"]).out.splitlines() == ["amy\tbasic,digest-md5,digest-sha-256"]
    run = Run([*options, "delete", "zoe"])
    assert run.status == 1 and "does not exist" in run.err


@pytest.mark.parametrize(
    "argv",
    [[], ["frobnicate"], ["add"], ["passwd"], ["delete"], ["list", "someone"], ["add", "a:b"], ["add", ""],
     ["add", "x" * 65], ["--rounds", "3", "add", "ok"], ["--realm", "a:b", "list"]],
)
def test_usage_errors_exit_2(paths: tuple[Path, Path, list[str]], argv: list[str]) -> None:
    """Missing or extra arguments, unknown commands, bad user names, realms and costs are usage errors: exit 2,
    nothing written."""
    users, digest, options = paths
    run = Run([*options, *argv], stdin="pw\n")
    assert run.status == 2
    assert not users.exists() and not digest.exists()


def test_empty_password_refused(paths: tuple[Path, Path, list[str]]) -> None:
    """An empty line on stdin is not a password: exit 1, nothing written."""
    users, digest, options = paths
    assert Run([*options, "--password-stdin", "add", "fay"], stdin="\n").status == 1
    assert Run([*options, "--password-stdin", "add", "fay"], stdin="").status == 1
    assert not users.exists()


def test_too_long_password_refused(paths: tuple[Path, Path, list[str]]) -> None:
    """A password over bcrypt's 72 bytes is refused (exit 1) rather than silently cut."""
    users, digest, options = paths
    run = Run([*options, "--password-stdin", "add", "gus"], stdin="p" * 73 + "\n")
    assert run.status == 1 and "72 bytes" in run.err
    assert not users.exists()


def test_paths_and_realm_come_from_the_config(tmp_path: Path) -> None:
    """With --config, the files and the realm are those the daemon will use ([auth] users, digest_users, realm)."""
    config = tmp_path / "embweb.ini"
    config.write_text(
        f"[server]\nstate_dir = {tmp_path / 'state'}\n"
        f"[auth]\nrealm = Relay board\nusers = {tmp_path / 'basic'}\ndigest_users = {tmp_path / 'digest'}\n"
    )
    run = Run(["--config", str(config), "--rounds", "4", "--password-stdin", "add", "hal"], stdin="pw\n")
    assert run.status == 0, run.err
    database = UserDatabase(tmp_path / "basic", tmp_path / "digest")
    assert database.ha1("hal", "Relay board", "MD5") == hashlib.md5(b"hal:Relay board:pw").hexdigest()
    assert database.bcrypt_hash("hal") is not None


def test_default_files_are_in_state_dir(tmp_path: Path) -> None:
    """A config without [auth] users/digest_users puts both files in state_dir, like the daemon."""
    state = tmp_path / "state"
    state.mkdir()
    config = tmp_path / "embweb.ini"
    config.write_text(f"[server]\nstate_dir = {state}\n")
    assert Run(["--config", str(config), "--rounds", "4", "--password-stdin", "add", "ida"], stdin="pw\n").status == 0
    assert UserDatabase(state / "users.htpasswd", state / "users.htdigest").ha1("ida", "boatwist", "MD5")


def test_bad_config_is_one_line_exit_1(tmp_path: Path) -> None:
    """A configuration the daemon would refuse is reported in the daemon's own one-line words: exit 1."""
    config = tmp_path / "embweb.ini"
    config.write_text("[auth]\nrealm = a:b\n")
    run = Run(["--config", str(config), "list"])
    assert run.status == 1
    assert run.err.count("\n") == 1 and "[auth] realm" in run.err


def test_no_config_and_no_paths_is_usage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --config, without etc/embweb.ini here, and without both file options, nothing is guessed: exit 2."""
    monkeypatch.chdir(tmp_path)
    run = Run(["--users", "u", "list"])
    assert run.status == 2 and "--config" in run.err
    assert not (tmp_path / "var").exists()


def test_broken_file_is_reported_and_repaired(paths: tuple[Path, Path, list[str]]) -> None:
    """list names the line a bad hash is on (exit 1); passwd on that user replaces it with bcrypt and the file
    loads again."""
    users, digest, options = paths
    users.write_text("jan:$apr1$salt$hash\n")
    run = Run([*options, "list"])
    assert run.status == 1 and ":1: user 'jan'" in run.err and "htpasswd -B" in run.err
    assert Run([*options, "--password-stdin", "passwd", "jan"], stdin="fixed\n").status == 0
    assert bcrypt.checkpw(b"fixed", UserDatabase(users, digest).bcrypt_hash("jan") or b"")


def test_console_script_is_declared() -> None:
    """pyproject.toml points embweb-passwd at this main()."""
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    assert 'embweb-passwd = "boatwist.auth.passwd_cli:main"' in pyproject.read_text()


def test_add_refuses_a_non_ascii_name_and_says_why(paths: tuple[Path, Path, list[str]]) -> None:
    """
    Issue 8 item 6: ``add jürgen`` is a usage error naming the reason (Firefox
    sends no Digest answer for such a name), and nothing is written.
    """
    users, digest, options = paths
    run = Run([*options, "--password-stdin", "add", "jürgen"], stdin="pw\n")
    assert run.status == 2
    assert "not ASCII" in run.err and "Firefox" in run.err
    assert not users.exists() or "jürgen" not in users.read_text()


def test_list_shows_each_users_role_from_the_config(tmp_path: Path) -> None:
    """With a config, list names each user's role ([roles]; the first-start admin is an admin)."""
    state = tmp_path / "var"
    state.mkdir()
    config = tmp_path / "embweb.ini"
    config.write_text(f"[server]\nstate_dir = {state}\n[roles]\nviewer = carol\n")
    for user in ("admin", "bob", "carol"):
        assert Run(["--config", str(config), "--rounds", "4", "--password-stdin", "add", user],
                   stdin="pw\n").status == 0
    roles = [line.split("\t")[2] for line in Run(["--config", str(config), "list"]).out.splitlines()]
    assert roles == ["role admin", "role operator", "role viewer"]
