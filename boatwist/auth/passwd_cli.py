"""
``embweb-passwd``: manage the operators of a boatwist device.

    embweb-passwd [--config etc/embweb.ini] add USER        (asks the password twice)
    embweb-passwd [--config ...] passwd USER [--password-stdin]
    embweb-passwd [--config ...] delete USER
    embweb-passwd [--config ...] list

Why a tool of our own when ``htpasswd -B`` and ``htdigest`` exist: a user
needs a line in *both* files (bcrypt for Basic and the chat port, MD5 and
SHA-256 HA1 for Digest) with the same password and the realm the daemon
uses, and ``htdigest`` cannot write SHA-256.  This writes all three from one
password, atomically, with the paths and realm read from the daemon's own
configuration, so they cannot disagree.  The running daemon notices the
change by itself (it watches the files).

Exit status: 0 done, 1 failed (user exists / missing, file error, passwords
differ), 2 usage (bad arguments, bad user name).
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import Sequence, TextIO

from boatwist.config import ConfigError, load_config
from boatwist.controls.roles import RolePolicy
from boatwist.auth.passwords import (
    PasswordFileError,
    UserDatabase,
    check_realm,
    check_user_name,
    delete_user,
    set_password,
    user_exists,
)

PROG = "embweb-passwd"
DEFAULT_CONFIG = "etc/embweb.ini"


class _Usage(Exception):
    """Bad arguments: exit status 2."""


class _Failure(Exception):
    """The operation could not be done: exit status 1."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Add, change, delete and list the users of a boatwist server "
        "(writes the htpasswd file for Basic and the htdigest file for Digest).",
    )
    parser.add_argument("--config", metavar="INI",
                        help=f"the daemon's configuration, for the file paths and realm (default {DEFAULT_CONFIG})")
    parser.add_argument("--users", metavar="FILE", help="htpasswd file (overrides [auth] users)")
    parser.add_argument("--digest-users", metavar="FILE", help="htdigest file (overrides [auth] digest_users)")
    parser.add_argument("--realm", help="Digest realm (overrides [auth] realm)")
    parser.add_argument("--password-stdin", action="store_true",
                        help="read the password from the first line of standard input instead of asking")
    parser.add_argument("--rounds", type=int, default=12, metavar="N",
                        help="bcrypt cost, 4 to 31 (default 12; each step doubles the time)")
    parser.add_argument("command", choices=("add", "passwd", "delete", "list"))
    parser.add_argument("user", nargs="?", metavar="USER")
    return parser


def _locations(args: argparse.Namespace) -> tuple[Path, Path, str, RolePolicy | None]:
    """
    (htpasswd path, htdigest path, realm, the roles) from the config and the
    overriding options; the roles are known only when a config was read.
    """
    explicit = args.users is not None and args.digest_users is not None
    config = args.config
    if config is None and not explicit:
        config = DEFAULT_CONFIG
        if not Path(config).exists():
            raise _Usage(f"no {DEFAULT_CONFIG} here: give --config INI, or --users and --digest-users")
    users = Path(args.users) if args.users is not None else None
    digest = Path(args.digest_users) if args.digest_users is not None else None
    realm = args.realm
    roles: RolePolicy | None = None
    if config is not None:
        try:
            settings = load_config(config)
        except ConfigError as e:
            raise _Failure(str(e)) from None
        users = users or settings.users_file
        digest = digest or settings.digest_users_file
        realm = realm if realm is not None else settings.auth.realm
        roles = RolePolicy(settings.roles)
    assert users is not None and digest is not None
    if realm is None:
        realm = "boatwist"  # the daemon's default realm
    try:
        check_realm(realm)
    except PasswordFileError as e:
        raise _Usage(str(e)) from None
    return users, digest, realm, roles


def _read_password(from_stdin: bool, stdin: TextIO) -> str:
    """The new password: one line of stdin, or typed twice at a prompt that does not echo."""
    if from_stdin:
        line = stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        if password.endswith("\r"):
            password = password[:-1]
        if not password:
            raise _Failure("no password on standard input")
        return password
    try:
        first = getpass.getpass("New password: ")
        second = getpass.getpass("Retype new password: ")
    except (EOFError, KeyboardInterrupt):
        raise _Failure("no password given") from None
    if first != second:
        raise _Failure("the passwords differ")
    if not first:
        raise _Failure("empty password")
    return first


def _run(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> None:
    if args.command == "list":
        if args.user is not None:
            raise _Usage("list takes no USER")
    elif args.user is None:
        raise _Usage(f"{args.command} needs a USER")
    else:
        try:
            check_user_name(args.user)
        except PasswordFileError as e:
            raise _Usage(str(e)) from None
    if not 4 <= args.rounds <= 31:
        raise _Usage("--rounds: expected 4 to 31")
    users, digest, realm, roles = _locations(args)
    try:
        if args.command == "list":
            database = UserDatabase(users, digest, realm=realm)
            for name in database.users():
                kinds = []
                if database.bcrypt_hash(name) is not None:
                    kinds.append("basic")
                kinds += [f"digest-{algorithm.lower()}" for algorithm in ("MD5", "SHA-256")
                          if database.ha1(name, realm, algorithm) is not None]
                advice = _advice(name, kinds)
                role = f"\trole {roles.role_of(name).label}" if roles is not None else ""
                stdout.write(f"{name}\t{','.join(kinds)}{role}" + (f"\t{advice}" if advice else "") + "\n")
            return
        user = str(args.user)
        if args.command == "delete":
            if not delete_user(users, digest, realm, user):
                raise _Failure(f"user {user!r} does not exist in {users} or {digest}")
            stdout.write(f"deleted {user}\n")
            return
        if args.command == "add" and not user.isascii():
            raise _Usage(f"user name {user!r} is not ASCII: {NON_ASCII_REASON}")
        # add / passwd: refuse early, before asking for a password that would be wasted.
        exists = user_exists(users, digest, realm, user)
        if args.command == "add" and exists:
            raise _Failure(f"user {user!r} already exists (use passwd to change the password)")
        if args.command == "passwd" and not exists:
            raise _Failure(f"user {user!r} does not exist (use add)")
        password = _read_password(args.password_stdin, stdin)
        set_password(users, digest, realm, user, password, args.rounds, create=(args.command == "add"))
        verb = "added" if args.command == "add" else "changed the password of"
        stdout.write(f"{verb} {user} in {users} and {digest} (realm {realm})\n")
    except PasswordFileError as e:
        raise _Failure(str(e)) from None


#: Why ``add`` refuses non-ASCII names (measured; tests/browser/test_logins.py pins it).
NON_ASCII_REASON = (
    "Firefox sends no Digest answer at all for a non-ASCII user name (with or without charset=UTF-8 or "
    "userhash) and asks again for every challenge offered before falling back to Basic, and httpx's Digest "
    "fails before sending; choose an ASCII name (the name is only a login, a label may say more)"
)


def _advice(user: str, kinds: list[str]) -> str:
    """What a user made by another tool is missing, what that costs, and the command that fixes it."""
    fix = f"fix: {PROG} passwd {user}"
    if "digest-md5" not in kinds and "digest-sha-256" not in kinds:
        return (f"no Digest HA1 (htpasswd -B?): Digest clients cannot log in, browsers ask twice and use "
                f"Basic; {fix}")
    if "digest-sha-256" not in kinds:
        return f"no SHA-256 HA1 (htdigest?): the daemon offers no one Digest SHA-256 while this lasts; {fix}"
    if "digest-md5" not in kinds:
        return f"no MD5 HA1: the daemon offers no one Digest MD5 while this lasts; {fix}"
    return ""


def main(argv: Sequence[str] | None = None, *, stdin: TextIO | None = None, stdout: TextIO | None = None,
         stderr: TextIO | None = None) -> int:
    """
    Run the command line C{argv} (default: sys.argv[1:]); returns the exit
    status instead of exiting, so tests can drive it.  C{stdin}, C{stdout},
    C{stderr} default to the process's.
    """
    stdin = stdin if stdin is not None else sys.stdin
    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    parser = _parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as e:  # argparse already printed usage and the error (or --help)
        return e.code if isinstance(e.code, int) else 2
    try:
        _run(args, stdin, stdout)
    except _Usage as e:
        stderr.write(f"{PROG}: error: {e}\n")
        return 2
    except _Failure as e:
        stderr.write(f"{PROG}: error: {e}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
