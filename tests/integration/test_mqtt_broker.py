"""
The MQTT bridge against a real Mosquitto: each bridge runs in a process of
its own (tests/mqtt_harness.py, fakes of the daemon around the real bridge
and the real reactor), observed with mosquitto_sub -- a client we did not
write -- and with paho.  Waits are bounded and end on real messages.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
from mosquitto import Mosquitto
from mqtt_tools import BridgeProcess, Watcher

pytestmark = pytest.mark.integration

P = "boatwist/press-7"
FLEET = str(Path(sys.executable).parent / "embweb-fleet")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker") as b:
        yield b


@pytest.fixture
def bridges(tmp_path: Path) -> Iterator[list[BridgeProcess]]:
    started: list[BridgeProcess] = []
    yield started
    for b in started:
        b.close()


def start_bridge(bridges: list[BridgeProcess], tmp_path: Path, broker: Mosquitto, *args: str) -> BridgeProcess:
    b = BridgeProcess(tmp_path / f"bridge{len(bridges)}", broker.address, *args)
    bridges.append(b)
    return b


def mosquitto_sub(port: int, *args: str, timeout: float = 10) -> list[tuple[str, str]]:
    """topic, payload lines printed by mosquitto_sub -v."""
    out = subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-v", *args],
                         capture_output=True, timeout=timeout, check=False).stdout.decode()
    return [tuple(line.split(" ", 1)) for line in out.splitlines() if " " in line]  # type: ignore[misc]


def test_retained_state_is_there_for_a_newcomer(broker: Mosquitto, bridges: list[BridgeProcess],
                                                tmp_path: Path) -> None:
    """After connecting: status online (with its session), presence, floor and every control, retained."""
    bridge = start_bridge(bridges, tmp_path, broker)
    session = bridge.expect(lambda m: "connected" in m)["connected"]
    watcher = Watcher(broker.port, f"{P}/status")
    watcher.on(f"{P}/status", where=lambda j: j["state"] == "online")
    watcher.close()
    seen = dict(mosquitto_sub(broker.port, "-t", f"{P}/#", "--retained-only", "-C", "8", "-W", "5"))
    assert len(seen) == 8, seen
    status = json.loads(seen[f"{P}/status"])
    assert status["state"] == "online" and status["session"] == session and status["device"] == "press-7"
    assert json.loads(seen[f"{P}/presence"])["seats"] == {"used": 0, "limit": 10}
    assert json.loads(seen[f"{P}/floor"])["holder"] is None
    assert json.loads(seen[f"{P}/controls/pump"]) == {"value": False, "quality": "good", "changed_by": None,
                                                       "changed_at": None}
    assert json.loads(seen[f"{P}/controls/temp"])["value"] == 21.5


def test_events_arrive_in_order_and_refresh_retained_state(broker: Mosquitto, bridges: list[BridgeProcess],
                                                           tmp_path: Path) -> None:
    """Every kind on …/events/KIND, QoS 1, in hub order; a control event updates …/controls/NAME."""
    bridge = start_bridge(bridges, tmp_path, broker)
    bridge.expect(lambda m: "connected" in m)
    watcher = Watcher(broker.port, f"{P}/events/#", f"{P}/controls/+", f"{P}/last_operation")
    kinds = ["presence", "chat", "control", "value", "floor"]
    for n in range(50):
        kind = kinds[n % 5]
        if kind == "control":
            bridge.send(value=["pump", n % 2 == 0, "alice"])
            bridge.event("control", id=n, user="alice", control="pump", old=None, value=n % 2 == 0,
                         result="ok", error=None, via="web", at=float(n))
        else:
            bridge.event(kind, user="alice", n=n, control="temp", value=20.0 + n, at=float(n))
    last = watcher.wait_for(lambda m: m.topic.startswith(f"{P}/events/") and m.json.get("event_id") == 50)
    events = [m for m in watcher.topics(f"{P}/events/")]
    assert [m.json["event_id"] for m in events] == list(range(1, 51))
    assert [m.topic.rsplit("/", 1)[1] for m in events] == [kinds[n % 5] for n in range(50)]
    assert last.json["user"] == "alice"
    # The chat message keeps its own fields; a control event refreshed the retained state and last_operation.
    pump = watcher.on(f"{P}/controls/pump", where=lambda j: j["changed_by"] == "alice")
    assert pump.retain is False  # live delivery; retained for newcomers:
    seen = dict(mosquitto_sub(broker.port, "-t", f"{P}/last_operation", "-C", "1", "-W", "3"))
    assert json.loads(seen[f"{P}/last_operation"])["id"] == 47
    watcher.close()


def test_commands_reach_the_operator_and_results_come_back(broker: Mosquitto, bridges: list[BridgeProcess],
                                                           tmp_path: Path) -> None:
    """A set command runs as [mqtt] user via mqtt; 200, a 409 refusal, a malformed and a retained one are answered."""
    bridge = start_bridge(bridges, tmp_path, broker, "--commands")
    bridge.expect(lambda m: "connected" in m)
    watcher = Watcher(broker.port, f"{P}/controls/+/result")

    def command(name: str, payload: str, *flags: str) -> None:
        subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1",
                        "-t", f"{P}/controls/{name}/set", "-m", payload, *flags], check=True, timeout=10)

    command("pump", '{"value": true}')
    assert bridge.expect(lambda m: "operate" in m)["operate"] == ["mqtt-bot", "pump", True, "mqtt"]
    ok = watcher.on(f"{P}/controls/pump/result")
    assert ok.json["status"] == 200 and ok.json["operation"]["via"] == "mqtt"

    bridge.send(answer=409, error="the floor is held by alice", detail={"holder": "alice"})
    n = len(watcher.messages)
    command("setpoint", "42.5")
    assert bridge.expect(lambda m: "operate" in m)["operate"] == ["mqtt-bot", "setpoint", 42.5, "mqtt"]
    refused = watcher.on(f"{P}/controls/setpoint/result", after=n)
    assert refused.json == {"status": 409, "error": "the floor is held by alice", "holder": "alice"}

    n = len(watcher.messages)
    command("pump", '{"valeu": 1}')
    bad = watcher.on(f"{P}/controls/pump/result", after=n)
    assert bad.json["status"] == 400 and "valeu" in bad.json["error"]

    watcher.close()


def test_a_retained_command_is_not_run_when_delivered_at_subscription(
        broker: Mosquitto, bridges: list[BridgeProcess], tmp_path: Path) -> None:
    """
    A command left retained on the broker would run again at every reconnect: delivered with the
    retain flag (at subscription) it is refused with a 400 and never reaches the operator.
    """
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1", "-r",
                    "-t", f"{P}/controls/pump/set", "-m", "true"], check=True, timeout=10)
    watcher = Watcher(broker.port, f"{P}/controls/+/result")
    bridge = start_bridge(bridges, tmp_path, broker, "--commands")
    bridge.expect(lambda m: "connected" in m)
    refused = watcher.on(f"{P}/controls/pump/result")
    assert refused.json["status"] == 400 and "retained" in refused.json["error"]
    assert bridge.stats()["connected"] is True
    assert not [m for m in bridge.seen if "operate" in m]
    watcher.close()


def test_broker_restart_reconnects_republishes_and_delivers_queued_events_in_order(
        tmp_path: Path, bridges: list[BridgeProcess]) -> None:
    """
    Broker stopped while events go on: the bridge keeps taking them, reconnects when the broker is back,
    re-publishes its retained state (new session, a value changed meanwhile) and delivers the queued events
    in order.  The broker persists sessions, so the watcher's QoS 1 subscription survives the restart.
    """
    broker = Mosquitto(tmp_path / "broker", extra_config=f"persistence true\npersistence_location {tmp_path}/\n")
    broker.start()
    try:
        bridge = start_bridge(bridges, tmp_path, broker)
        first = bridge.expect(lambda m: "connected" in m)["connected"]
        watcher = Watcher(broker.port, f"{P}/events/#", persistent="restart-watcher")
        bridge.event("chat", user="alice", text="before")
        watcher.wait_for(lambda m: m.topic == f"{P}/events/chat")
        watcher.close()

        broker.stop()
        bridge.expect(lambda m: "disconnected" in m)
        for n in range(30):
            bridge.event("chat", user="alice", text=f"while down {n}")
        bridge.send(value=["setpoint", 33.0, "bob"])
        stats = bridge.stats()
        assert stats["connected"] is False and stats["queued"] == 30

        broker.start()
        second = bridge.expect(lambda m: "connected" in m, timeout=15)["connected"]
        assert second > first
        watcher = Watcher(broker.port, f"{P}/events/#", persistent="restart-watcher")
        watcher.wait_for(lambda m: m.payload and m.json.get("text") == "while down 29", timeout=15)
        texts = [m.json["text"] for m in watcher.topics(f"{P}/events/chat")]
        down = [t for t in texts if t.startswith("while down")]
        assert down == [f"while down {n}" for n in range(30)]
        watcher.close()
        seen = dict(mosquitto_sub(broker.port, "-t", f"{P}/#", "--retained-only", "-C", "8", "-W", "5"))
        assert json.loads(seen[f"{P}/status"])["session"] == second
        assert json.loads(seen[f"{P}/controls/setpoint"])["value"] == 33.0
        stats = bridge.stats()
        assert stats["reconnects"] == 1 and stats["dropped"] == 0 and stats["queued"] == 0
    finally:
        broker.stop()


def test_queue_bound_drops_the_oldest_and_counts(tmp_path: Path, bridges: list[BridgeProcess]) -> None:
    """With queue = 5 and the broker away, 12 events keep the 5 newest; 7 are counted as dropped."""
    broker = Mosquitto(tmp_path / "broker", extra_config=f"persistence true\npersistence_location {tmp_path}/\n")
    broker.start()
    try:
        bridge = start_bridge(bridges, tmp_path, broker, "--queue", "5")
        bridge.expect(lambda m: "connected" in m)
        Watcher(broker.port, f"{P}/events/#", persistent="bound-watcher").close()
        broker.stop()
        bridge.expect(lambda m: "disconnected" in m)
        for n in range(12):
            bridge.event("chat", user="alice", text=str(n))
        assert bridge.stats()["dropped"] == 7
        broker.start()
        bridge.expect(lambda m: "connected" in m, timeout=15)
        watcher = Watcher(broker.port, f"{P}/events/#", persistent="bound-watcher")
        watcher.wait_for(lambda m: m.json.get("text") == "11", timeout=15)
        assert [m.json["text"] for m in watcher.topics(f"{P}/events/")] == ["7", "8", "9", "10", "11"]
        watcher.close()
    finally:
        broker.stop()


def test_kill_9_turns_the_status_offline_through_the_will(broker: Mosquitto, bridges: list[BridgeProcess],
                                                          tmp_path: Path) -> None:
    """kill -9 of the process: the broker publishes the will, offline with that session, within 1.5 x 2 s + 1 s."""
    bridge = start_bridge(bridges, tmp_path, broker, "--keepalive", "2")
    session = bridge.expect(lambda m: "connected" in m)["connected"]
    watcher = Watcher(broker.port, f"{P}/status")
    watcher.on(f"{P}/status", where=lambda j: j["state"] == "online")
    killed = time.monotonic()
    bridge.kill()
    offline = watcher.on(f"{P}/status", timeout=4.0, where=lambda j: j["state"] == "offline")
    assert offline.json == {"state": "offline", "session": session}
    assert offline.at - killed <= 1.5 * 2 + 1
    watcher.close()
    seen = dict(mosquitto_sub(broker.port, "-t", f"{P}/status", "-C", "1", "-W", "3"))
    assert json.loads(seen[f"{P}/status"])["state"] == "offline"


def test_a_frozen_device_is_declared_offline_by_keepalive_and_comes_back_with_a_newer_session(
        broker: Mosquitto, bridges: list[BridgeProcess], tmp_path: Path) -> None:
    """
    SIGSTOP keeps the socket open but silent: only the keepalive can tell.  The broker publishes the will;
    after SIGCONT the bridge notices, reconnects, and says online with a larger session (so a subscriber
    keeping the highest session knows the device is back).

    The bound: MQTT says 1.5 x keepalive after the last packet (a ping is sent at most keepalive + 1 s
    before the freeze); Mosquitto 2.0 looks at keepalives only every 5 s or so -- measured here: 10 s after
    the last PINGREQ with keepalive 2.  The kill -9 test pins the spec's bound, where the socket closes.
    """
    bridge = start_bridge(bridges, tmp_path, broker, "--keepalive", "2")
    session = bridge.expect(lambda m: "connected" in m)["connected"]
    watcher = Watcher(broker.port, f"{P}/status")
    watcher.on(f"{P}/status", where=lambda j: j["state"] == "online")
    stopped = time.monotonic()
    os.kill(bridge.process.pid, signal.SIGSTOP)
    try:
        offline = watcher.on(f"{P}/status", timeout=12.0, where=lambda j: j["state"] == "offline")
    finally:
        os.kill(bridge.process.pid, signal.SIGCONT)
    assert offline.json["session"] == session
    assert offline.at - stopped <= 1.5 * 2 + 6 + 2
    back = watcher.on(f"{P}/status", timeout=10.0, where=lambda j: j["state"] == "online" and j["session"] > session)
    assert back.json["session"] > session
    watcher.close()


def test_clean_stop_publishes_offline_before_disconnecting(broker: Mosquitto, bridges: list[BridgeProcess],
                                                           tmp_path: Path) -> None:
    """A clean stop: retained offline, reason stopped, acknowledged before DISCONNECT (so no will is needed)."""
    bridge = start_bridge(bridges, tmp_path, broker)
    session = bridge.expect(lambda m: "connected" in m)["connected"]
    bridge.stop()
    seen = dict(mosquitto_sub(broker.port, "-t", f"{P}/status", "-C", "1", "-W", "3"))
    status = json.loads(seen[f"{P}/status"])
    assert status["state"] == "offline" and status["reason"] == "stopped" and status["session"] == session


def test_fleet_lists_two_devices_up_and_down(broker: Mosquitto, bridges: list[BridgeProcess],
                                            tmp_path: Path) -> None:
    """embweb-fleet --once: both devices, one up and one down, with operators, floor and last operation."""
    a = start_bridge(bridges, tmp_path, broker, "--device", "press-7")
    b = start_bridge(bridges, tmp_path, broker, "--device", "oven-2")
    a.expect(lambda m: "connected" in m)
    b.expect(lambda m: "connected" in m)
    a.send(presence={"seats": {"used": 1, "limit": 10},
                     "users": [{"user": "alice", "state": "online", "since": 1.0, "connections": [{}]}]})
    a.send(floor={"mode": "required", "holder": "alice", "since": 1.0, "requested_by": None})
    watcher = Watcher(broker.port, "boatwist/+/last_operation", "boatwist/+/status")
    a.event("floor", state="taken", holder="alice", user="alice", reason="taken", at=1.0)
    a.event("presence", user="alice", state="online", reason="login", at=1.0, via="web")
    a.event("control", id=9, user="alice", control="pump", old=False, value=True, result="ok", error=None,
            via="web", at=2.0)
    watcher.on("boatwist/press-7/last_operation")
    b.kill()
    watcher.on("boatwist/oven-2/status", where=lambda j: j["state"] == "offline")
    watcher.close()

    fleet = subprocess.run([FLEET, "--broker", broker.address, "--once", "--json"], capture_output=True,
                           timeout=30, check=True)
    devices = {d["device"]: d for d in json.loads(fleet.stdout)}
    assert devices["boatwist/press-7"]["state"] == "online"
    assert devices["boatwist/oven-2"]["state"] == "offline"
    assert [u["user"] for u in devices["boatwist/press-7"]["operators"]] == ["alice"]
    assert devices["boatwist/press-7"]["floor"]["holder"] == "alice"
    assert devices["boatwist/press-7"]["last_operation"]["id"] == 9

    table = subprocess.run([FLEET, "--broker", broker.address, "--once"], capture_output=True, timeout=30,
                           check=True).stdout.decode()
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["DEVICE", "STATUS", "SINCE"]
    press = next(line for line in lines if line.startswith("boatwist/press-7"))
    oven = next(line for line in lines if line.startswith("boatwist/oven-2"))
    assert " up " in press and "alice set pump to on (was off)" in press and "1/10 alice" in press
    assert " down " in oven


def test_a_silent_broker_never_holds_up_the_device(tmp_path: Path, bridges: list[BridgeProcess]) -> None:
    """
    A "broker" that accepts TCP and never answers: the bridge keeps answering at once (nothing waits on
    the reactor thread), gives the connection up at paho's CONNACK deadline and tries again.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(15)
    accepted = []
    try:
        bridge = BridgeProcess(tmp_path / "bridge", f"tcp:127.0.0.1:{listener.getsockname()[1]}",
                               "--keepalive", "2")
        bridges.append(bridge)
        for _ in range(2):
            conn, _ = listener.accept()
            accepted.append(conn)
            for _ in range(3):
                asked = time.monotonic()
                stats = bridge.stats()
                assert time.monotonic() - asked < 1.0
                assert stats["connected"] is False
        assert accepted[0].recv(1) == b"\x10"  # it did send CONNECT, and got nothing back
    finally:
        for conn in accepted:
            conn.close()
        listener.close()


def _certificates(directory: Path) -> tuple[Path, Path, Path, Path]:
    """A CA, a server certificate for localhost signed by it, its key; and an unrelated CA."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def ca(name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(key, hashes.SHA256()))
        return cert, key

    ca_cert, ca_key = ca("test plant CA")
    other_cert, _ = ca("someone else's CA")
    key = ec.generate_private_key(ec.SECP256R1())
    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
              .issuer_name(ca_cert.subject).public_key(key.public_key())
              .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
              .not_valid_after(now + datetime.timedelta(days=1))
              .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                          x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                             critical=False)
              .sign(ca_key, hashes.SHA256()))
    paths = [directory / n for n in ("ca.pem", "server.pem", "server.key", "other-ca.pem")]
    pem = serialization.Encoding.PEM
    paths[0].write_bytes(ca_cert.public_bytes(pem))
    paths[1].write_bytes(server.public_bytes(pem))
    paths[2].write_bytes(key.private_bytes(pem, serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    paths[3].write_bytes(other_cert.public_bytes(pem))
    return paths[0], paths[1], paths[2], paths[3]


def test_tls_broker_with_the_configured_ca(tmp_path: Path, bridges: list[BridgeProcess]) -> None:
    """ssl:HOST:PORT with ca: the broker's certificate is checked; an unrelated CA never gets connected."""
    ca, cert, key, other = _certificates(tmp_path)
    broker = Mosquitto(tmp_path / "broker", extra_config=f"cafile {ca}\ncertfile {cert}\nkeyfile {key}\n")
    broker.start()
    try:
        address = f"ssl:127.0.0.1:{broker.port}"
        good = BridgeProcess(tmp_path / "good", address, "--ca", str(ca))
        bridges.append(good)
        session = good.expect(lambda m: "connected" in m)["connected"]
        out = subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "--cafile", str(ca),
                              "-t", f"{P}/status", "-C", "1", "-W", "5"], capture_output=True, timeout=10)
        assert json.loads(out.stdout)["session"] == session
        fleet = subprocess.run([FLEET, "--broker", address, "--ca", str(ca), "--once", "--json"],
                               capture_output=True, timeout=30, check=True)
        assert json.loads(fleet.stdout)[0]["state"] == "online"

        wrong = BridgeProcess(tmp_path / "wrong", address, "--ca", str(other), "--device", "oven-2")
        bridges.append(wrong)
        broker.wait_log("unknown ca", count=3)  # refused by the bridge, three attempts
        assert wrong.stats()["connected"] is False
        assert "connected" not in str(wrong.seen)
    finally:
        broker.stop()


def test_the_password_is_sent_and_never_logged(broker: Mosquitto, bridges: list[BridgeProcess],
                                               tmp_path: Path) -> None:
    """username/password_file reach the broker's CONNECT; the password is nowhere in the bridge's log."""
    secret = tmp_path / "mqtt.pw"
    secret.write_text("Very-S3cret-Pw\n")
    bridge = start_bridge(bridges, tmp_path, broker, "--username", "press7", "--password-file", str(secret))
    bridge.expect(lambda m: "connected" in m)
    broker.wait_log("as boatwist-press-7")
    bridge.stop()
    log = (tmp_path / "bridge0" / "bridge.log").read_text()
    assert "MQTT connected" in log and "Very-S3cret-Pw" not in log
