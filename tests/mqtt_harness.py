"""
A process running one MQTT bridge against fakes of the daemon, driven
through stdin (one JSON object a line) and reporting on stdout (same).

    in:  {"event": KIND, "data": {...}}     publish on the event hub
         {"value": [NAME, V, BY]}           change a control in the fake state
         {"presence": {...}} / {"floor": {...}}
         {"answer": STATUS, "error": TEXT, "detail": {...}}   the fake operator's next answers
         {"stats": true}                    print the counters
         {"stop": true}                     stop the service cleanly, then exit
    out: {"ready": true} {"connected": N} {"disconnected": N} {"operate": [...]} {"stats": {...}}
         {"stopped": true}

Used by tests/integration/test_mqtt_*.py; kill -9 of this process is how a
device that vanishes is played.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from mqtt_fakes import FakeDeviceState, FakeOperator
from twisted.internet import reactor as _reactor
from twisted.internet import stdio
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.protocols.basic import LineReceiver

from boatwist.events import EventHub
from boatwist.mqtt.bridge import MqttBridgeService
from boatwist.mqtt.outbox import Backoff
from boatwist.mqtt.settings import MqttSettings

reactor = _reactor


def say(**fields: object) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


class ReportingBridge(MqttBridgeService):
    def connected(self) -> None:
        super().connected()
        say(connected=self.stats.session)

    def disconnected(self) -> None:
        super().disconnected()
        say(disconnected=self.stats.session)


class ReportingOperator(FakeOperator):
    def operate(self, user: str, control: str, raw_value: object, via: str):  # type: ignore[no-untyped-def]
        say(operate=[user, control, raw_value, via])
        return super().operate(user, control, raw_value, via)


class Driver(LineReceiver):
    delimiter = b"\n"

    def __init__(self, hub: EventHub, state: FakeDeviceState, operator: ReportingOperator,
                 bridge: MqttBridgeService) -> None:
        self.hub, self.state, self.operator, self.bridge = hub, state, operator, bridge

    def lineReceived(self, line: bytes) -> None:
        order = json.loads(line)
        if "event" in order:
            self.hub.publish(order["event"], order["data"])
        elif "value" in order:
            name, value, by = order["value"]
            self.state.set_value(name, value, by, 1.0)
        elif "presence" in order:
            self.state.presence = order["presence"]
        elif "floor" in order:
            self.state.floor = order["floor"]
        elif "answer" in order:
            self.operator.next_status = order["answer"]
            self.operator.next_error = order.get("error")
            self.operator.next_detail = order.get("detail", {})
        elif "stats" in order:
            say(stats=dataclasses.asdict(self.bridge.stats))
        elif "stop" in order:
            d = self.bridge.stopService()
            d.addCallback(lambda _: say(stopped=True))
            d.addBoth(lambda _: reactor.stop())

    def connectionLost(self, reason: object = None) -> None:
        if reactor.running:
            reactor.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--broker", required=True)
    parser.add_argument("--device", default="press-7")
    parser.add_argument("--topic", default="")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--keepalive", type=int, default=30)
    parser.add_argument("--commands", action="store_true")
    parser.add_argument("--discovery", default="")
    parser.add_argument("--queue", type=int, default=1000)
    parser.add_argument("--ca", default="")
    parser.add_argument("--username", default="")
    parser.add_argument("--password-file", default="")
    args = parser.parse_args()
    settings = MqttSettings(broker=args.broker, topic=args.topic, keepalive=args.keepalive,
                            commands=args.commands, user="mqtt-bot" if args.commands else "",
                            discovery=args.discovery, queue=args.queue, ca=Path(args.ca) if args.ca else None,
                            username=args.username,
                            password_file=Path(args.password_file) if args.password_file else None)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    hub = EventHub()
    state = FakeDeviceState(args.device)
    operator = ReportingOperator()
    # Fast retries so the tests' bounded waits stay short.
    bridge = ReportingBridge(settings, hub, state, operator, reactor, Path(args.state_dir),
                             backoff=Backoff(initial=0.1, maximum=0.5))
    stdio.StandardIO(Driver(hub, state, operator, bridge))
    reactor.callWhenRunning(bridge.startService)
    reactor.callWhenRunning(say, ready=True)
    reactor.run()


if __name__ == "__main__":
    main()
