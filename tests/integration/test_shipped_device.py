"""
The demo device of the SHIPPED ``etc/embweb.ini``, through the real daemon and curl.

Issue 10 promises that someone who runs the README's first command sees a
device to operate, on any Linux machine: a few memory relays, a set-point,
a choice, an action, the 1-minute load read from ``/proc/loadavg`` (a
``file`` sensor with ``field = 1``) and the CPU temperature from
``/sys/class/thermal`` -- quality ``error`` with a clear line where the
machine has no thermal zone (containers, most VMs).  The shipped file is
used as it is: the test overrides only what two daemons on one machine must
not share (the listening ports, ``state_dir`` and the password files), and
checks that it overrode nothing else.

Waits are bounded waits for the first readings, never sleeps.
"""

from __future__ import annotations

import configparser
import time
from pathlib import Path
from typing import Iterator

import pytest
from control_clients import curl, require_curl

from daemon import Daemon, _merge

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "etc" / "embweb.ini"
THERMAL = Path("/sys/class/thermal/thermal_zone0/temp")
USERS = {"alice": "alice-pw"}
#: What the test may change in the shipped file, and nothing more.
OVERRIDABLE = {
    "server": {"http", "https", "chat", "state_dir"},
    "auth": {"users", "digest_users"},
}


def ini(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    return parser


def declared_controls() -> list[str]:
    return [s.split(":", 1)[1] for s in ini(SHIPPED.read_text()).sections() if s.startswith("control:")]


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    require_curl()
    d = Daemon(tmp_path_factory.mktemp("shipped"), users=USERS)
    overrides = d.config_path.read_text()
    for section in ini(overrides).sections():
        extra = set(ini(overrides)[section]) - OVERRIDABLE.get(section, set())
        assert not extra, f"the test would override [{section}] {sorted(extra)} of the shipped file"
    d.config_path.write_text(_merge(SHIPPED.read_text(), overrides))
    try:
        d.start()
        yield d
    finally:
        d.stop()


def first_readings(daemon: Daemon, names: tuple[str, ...], timeout: float = 15.0) -> dict[str, dict]:
    """The controls once each of C{names} has been read (quality no longer stale), via curl; bounded."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = curl(daemon, "GET", "/api/controls", "alice")
        assert status == 200, body
        controls = {c["name"]: c for c in body["controls"]}
        if all(controls[name]["quality"] != "stale" for name in names):
            return controls
        assert time.monotonic() < deadline, f"not read within {timeout} s: {controls}"
        time.sleep(0.1)  # integration: a bounded poll of the real daemon for its first reads


def test_every_declared_control_is_listed_in_order(shipped: Daemon) -> None:
    """``GET /api/controls`` lists every [control:NAME] of the shipped file, in its order, with its type."""
    declared = declared_controls()
    assert {"pump", "load", "cpu_temp"} <= set(declared), declared
    status, body = curl(shipped, "GET", "/api/controls", "alice")
    assert status == 200, body
    assert [c["name"] for c in body["controls"]] == declared
    types = ini(SHIPPED.read_text())
    assert [c["type"] for c in body["controls"]] == [types[f"control:{n}"]["type"] for n in declared]
    assert {c["type"] for c in body["controls"]} == {"switch", "number", "choice", "action", "sensor"}


def test_load_reads_good_with_a_number(shipped: Daemon) -> None:
    """``load`` (file sensor on /proc/loadavg, ``field = 1``): quality good, a number, no error."""
    load = first_readings(shipped, ("load",))["load"]
    assert load["quality"] == "good", load
    assert isinstance(load["value"], (int, float)) and not isinstance(load["value"], bool), load
    assert load["value"] >= 0 and load["error"] is None, load


def test_cpu_temp_is_good_or_a_clear_error_naming_the_file(shipped: Daemon) -> None:
    """
    ``cpu_temp``: where the machine has a thermal zone, quality good and a
    number (°C); where it has none (like the machine these tests were written
    on), quality error with one short line that names the missing file.
    """
    temp = first_readings(shipped, ("cpu_temp",))["cpu_temp"]
    if temp["quality"] == "good":
        assert THERMAL.exists(), temp
        assert isinstance(temp["value"], (int, float)) and temp["unit"] == "°C", temp
        return
    assert temp["quality"] == "error", temp
    error = temp["error"]
    assert isinstance(error, str) and "\n" not in error and len(error) <= 200, temp
    assert str(THERMAL) in error, temp
    if not THERMAL.exists():
        assert error == f"{THERMAL}: no such file", temp
