"""
``twistd -n embweb --config FILE`` with a bad configuration, as an
integrator editing ``/etc/boatwist/embweb.ini`` meets it: the real twistd
exits non-zero and prints exactly one line on stderr that names the file
(and, where there is one, the line, the ``[section] key`` and the value),
with no traceback and no usage text to dig it out of; nothing is started,
so nothing is written.  And ``twistd -n embweb --help`` works.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from daemon import TWISTD, free_port

pytestmark = pytest.mark.integration


def run_twistd(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_", "WATCHDOG_"))}
    env["PYTHONUNBUFFERED"] = "1"
    return subprocess.run([TWISTD, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def write_config(directory: Path, server: str = "", extra: str = "") -> Path:
    """
    A configuration that would start (free ports, a private state_dir):
    C{server} lines go at the end of [server] (line 6 on), C{extra} after it.
    """
    path = directory / "embweb.ini"
    path.write_text(
        "# an integrator's file\n"                                   # 1
        "[server]\n"                                                # 2
        f"http = tcp:{free_port()}:interface=127.0.0.1\n"           # 3
        f"state_dir = {directory / 'state'}\n"                      # 4
        "redirect_http = no\n"                                      # 5
        + server
        + extra
    )
    return path


def assert_one_line_error(out: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert out.returncode != 0, out
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{out.stderr}"
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "Traceback" not in out.stdout + out.stderr
    assert "Usage:" not in out.stdout + out.stderr
    return lines[0]


CASES = {
    # name: ([server] lines, further sections, the line of the error, what the message must name)
    "unknown key": ("chat =\n", "[admission]\nmax_user = 3\n", 8, ["[admission] max_user", "unknown key"]),
    "unknown section": ("chat =\n", "[admision]\nmax_users = 3\n", 7, ["[admision]", "unknown section"]),
    "bad CIDR": ("chat =\n", "[admission]\nnetworks = 127.0.0.0/8, 192.168.1.0/33\n", 8,
                 ["[admission] networks", "192.168.1.0/33", "CIDR"]),
    "CIDR with host bits": ("chat =\n", "[admission]\nnetworks = 10.0.0.1/8\n", 8,
                            ["[admission] networks", "10.0.0.1/8"]),
    "bad endpoint": ("chat = tcp:port-eight-thousand\n", "", 6, ["[server] chat", "tcp:port-eight-thousand"]),
    "unknown endpoint type": ("chat = sctp:8023\n", "", 6, ["[server] chat", "sctp:8023"]),
    "bad number": ("chat =\n", "[admission]\nmax_users = ten\n", 8, ["[admission] max_users", "'ten'", "whole number"]),
    "out of range": ("chat =\n", "[keepalive]\ncount = 0\n", 8, ["[keepalive] count", "'0'"]),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_value_stops_twistd_with_one_line(tmp_path: Path, case: str) -> None:
    """
    An unknown key or section, a bad CIDR network, a malformed endpoint
    string, a bad number: non-zero exit, one line on stderr naming the file,
    the line, the [section] key and the value; no traceback; nothing made
    in state_dir, no pidfile (the documented command line, run as is).
    """
    server, extra, line, needles = CASES[case]
    config = write_config(tmp_path, server, extra)
    out = run_twistd(tmp_path, "-n", "embweb", "--config", str(config))
    assert_one_line_error(out, f"{config}:{line}:", *needles)
    assert not (tmp_path / "state").exists()
    assert not (tmp_path / "twistd.pid").exists()


def test_missing_config_file(tmp_path: Path) -> None:
    """A --config naming no file: non-zero, one line naming that file, no traceback."""
    missing = tmp_path / "etc" / "embweb.ini"
    out = run_twistd(tmp_path, "-n", "embweb", "--config", str(missing))
    message = assert_one_line_error(out, str(missing))
    assert "no such" in message.lower()
    assert not (tmp_path / "twistd.pid").exists()


def test_default_config_path_missing(tmp_path: Path) -> None:
    """Without --config the default etc/embweb.ini is read relative to the start directory; missing: one line."""
    out = run_twistd(tmp_path, "-n", "embweb")
    assert_one_line_error(out, "etc/embweb.ini")


def test_missing_certificate_file_stops_with_one_line(tmp_path: Path) -> None:
    """
    https with certificate = a file that does not exist: non-zero, one line
    on stderr naming that file, no traceback (the TLS error is a
    configuration error like any other).
    """
    missing = tmp_path / "tls" / "fullchain.pem"
    config = write_config(
        tmp_path,
        f"chat =\nhttps = tcp:{free_port()}:interface=127.0.0.1\n"
        f"certificate = {missing}\nprivate_key = {tmp_path / 'key.pem'}\n",
    )
    out = run_twistd(tmp_path, "-n", "--pidfile=", "embweb", "--config", str(config))
    assert_one_line_error(out, str(missing))


def test_embweb_help(tmp_path: Path) -> None:
    """`twistd -n embweb --help` exits 0 with the plugin's usage (--config) and reads no configuration."""
    out = run_twistd(tmp_path, "-n", "embweb", "--help")
    assert out.returncode == 0, out.stderr
    assert "embweb" in out.stdout and "--config" in out.stdout
    assert "Traceback" not in out.stdout + out.stderr
    assert not (tmp_path / "twistd.pid").exists()


def test_twistd_help_lists_embweb(tmp_path: Path) -> None:
    """`twistd --help` lists embweb among the plugins, with its description."""
    out = run_twistd(tmp_path, "--help")
    assert out.returncode == 0, out.stderr
    rows = [line.split(None, 1) for line in out.stdout.splitlines() if line.startswith("    embweb")]
    assert rows and rows[0][0] == "embweb", out.stdout
