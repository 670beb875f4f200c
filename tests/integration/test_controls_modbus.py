"""
Modbus through the real daemon, against a real Modbus TCP server (pymodbus's
own, ``tests/modbus_server.py``, in a process of its own on loopback).

curl operates a coil and a holding register and an independent pymodbus
client reads them on the server; an input register is polled into
``/api/controls`` and the event streams.  Then the server is killed: the
polled sensor's quality turns ``error`` (a ``value`` event everyone sees),
operations fail 502 at once naming the bus; the server is started again on
the same port and the daemon recovers by itself (the sensor good again, an
operation 200) with nobody doing anything.

Each test starts its own server and daemon; both are killed however the test
ends.  Waits are bounded waits on real events.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator

import pytest
from control_clients import Watch, curl, ops_of, require_curl
from modbus_tools import ServerProcess, free_port, pymodbus_present, require

from daemon import Daemon

pytestmark = pytest.mark.integration

USERS = {"alice": "alice-pw", "bob": "bob-pw"}
POLL = 0.5
#: The backend's reconnection backoff (0.5, 1, 2, 4 s) plus a poll and a timeout.
RECOVERY_BOUND = 12.0


def config(port: int) -> str:
    bus = f"tcp:127.0.0.1:{port}"
    return f"""
[floor]
mode = off
[control:pump]
type = switch
backend = modbus
modbus = {bus}
register = coil:3
timeout = 1
[control:level]
type = number
backend = modbus
modbus = {bus}
modbus_device = 17
register = holding:10
min = 0
max = 100
scale = 0.1
timeout = 1
[control:temp]
type = sensor
unit = °C
backend = modbus
modbus = {bus}
register = input:2
scale = 0.1
poll = {POLL}
timeout = 1
"""


@pytest.fixture
def server() -> Iterator[ServerProcess]:
    require("pymodbus (with pyserial)", pymodbus_present())
    require_curl()
    process = ServerProcess("tcp", "127.0.0.1", str(free_port()))
    try:
        yield process.start()
    finally:
        process.kill()


@pytest.fixture
def device(server: ServerProcess, make_daemon: Callable[..., Daemon]) -> Iterator[tuple[Daemon, Watch]]:
    """The daemon on the server's bus, and bob's event stream."""
    d = make_daemon(config(int(server.args[2])), users=USERS).start()
    bob = Watch(d, "bob")
    try:
        yield d, bob
    finally:
        bob.close()


def registers(port: int) -> tuple[bool, list[int]]:
    """Coil 3 (device 1) and holding register 10 (device 17), read by a pymodbus client of the test's own."""
    from pymodbus.client import ModbusTcpClient

    from boatwist.controls.backends.modbus import device_keyword

    client = ModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=1)
    assert client.connect()
    try:
        coil = client.read_coils(3, count=1, **{device_keyword(): 1}).bits[0]
        holding = client.read_holding_registers(10, count=1, **{device_keyword(): 17}).registers
        return bool(coil), list(holding)
    finally:
        client.close()


def first_read(d: Daemon, timeout: float = 5.0) -> dict:
    """temp once its first reading is in (the daemon answers /healthz before the controls' first reads end)."""
    deadline = time.monotonic() + timeout
    while True:
        temp = d.get_json("/api/controls/temp", "alice")
        if temp["quality"] != "stale" or time.monotonic() > deadline:
            assert temp["quality"] == "good", temp
            return temp
        time.sleep(0.05)  # a bounded poll of the real daemon


def value_of(name: str, **fields: Any) -> Callable[[str, dict], bool]:
    return lambda k, d: k == "value" and d["control"] == name and all(d.get(f) == v for f, v in fields.items())


def test_coil_and_holding_register_set_by_curl_are_on_the_device(server: ServerProcess,
                                                                 device: tuple[Daemon, Watch]) -> None:
    """
    curl switches the pump (coil 3) on and sets the level (holding register
    10 of device 17, scale 0.1) to 42.5: the server holds True and 425, as
    an independent client reads them; the answers and bob's events carry
    the values read back.  The input register (215 × 0.1) is in
    ``/api/controls`` as 21.5 °C, quality good.
    """
    d, bob = device
    port = int(server.args[2])
    assert registers(port) == (False, [0])
    status, body = curl(d, "POST", "/api/controls/pump", "alice", '{"value": true}')
    assert status == 200, body
    assert (body["operation"]["old"], body["operation"]["value"]) == (False, True), body
    status, body = curl(d, "POST", "/api/controls/level", "alice", '{"value": 42.5}')
    assert status == 200, body
    assert (body["operation"]["old"], body["operation"]["value"]) == (0.0, 42.5), body
    assert registers(port) == (True, [425])
    bob.wait(ops_of("pump", value=True, result="ok"))
    bob.wait(ops_of("level", value=42.5, result="ok"))
    temp = first_read(d)
    assert (temp["value"], temp["unit"], temp["quality"]) == (21.5, "°C", "good"), temp


def test_server_killed_then_back_recovers_by_itself(server: ServerProcess, device: tuple[Daemon, Watch]) -> None:
    """
    The Modbus server is killed (SIGKILL: no goodbye).  Within a poll and a
    timeout bob gets a ``value`` event: temp quality ``error`` with a line
    naming the bus; an operation fails 502 at once (well under the 1 s
    timeout) naming the bus, and is broadcast as ``result: error``.  The
    server starts again on the same port: without anyone doing anything,
    temp comes back ``good`` (another ``value`` event) and the next
    operation is 200.
    """
    d, bob = device
    first_read(d)
    bus = f"modbus tcp:127.0.0.1:{server.args[2]}"
    mark = bob.mark()
    killed = time.monotonic()
    server.kill()
    down = bob.wait(value_of("temp", quality="error"), timeout=POLL + 1 + 3, since=mark)
    assert down["error"].startswith(bus), down
    print(f"quality error {time.monotonic() - killed:.2f} s after the kill")
    temp = d.get_json("/api/controls/temp", "alice")
    assert temp["quality"] == "error" and temp["error"].startswith(bus), temp

    started = time.monotonic()
    status, body = curl(d, "POST", "/api/controls/pump", "alice", '{"value": true}')
    assert status == 502, body
    assert time.monotonic() - started < 0.9, "fails at once while the bus is down"
    assert body["error"].startswith(bus), body
    event = bob.wait(ops_of("pump", id=body["operation"]["id"]))
    assert (event["result"], event["error"]) == ("error", body["error"]), event

    server.start()
    restarted = time.monotonic()
    up = bob.wait(value_of("temp", quality="good"), timeout=RECOVERY_BOUND, since=mark)
    assert up["value"] == 21.5 and up["error"] is None, up
    print(f"recovered {time.monotonic() - restarted:.2f} s after the restart")
    status, body = curl(d, "POST", "/api/controls/pump", "alice", '{"value": true}')
    assert status == 200, body
    assert registers(int(server.args[2]))[0] is True
