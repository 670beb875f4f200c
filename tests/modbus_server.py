"""
A Modbus device for tests: pymodbus's own server, in a process of its own.

    python tests/modbus_server.py tcp 127.0.0.1 5020
    python tests/modbus_server.py rtu /dev/pts/7 19200 8N1

Prints ``ready`` on stdout once it listens (TCP) or has the port open (RTU),
then serves until it is killed.  The datastore (the same for unit ids 1 and
17; other ids get no answer, or exception 4 or 11 depending on the version) holds, at 0-based protocol addresses 0..99:

    coils              all off
    discrete inputs    5 on, the rest off
    holding registers  7 = 1234, the rest 0
    input registers    2 = 215, the rest 0

Reading past address 99 is answered with exception 2 (illegal data address)
by pymodbus 3.11 and later, with an empty answer by 3.9 and 3.10.
Works with the pymodbus versions pyproject allows (the datastore and
keyword names moved in 3.10).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys

SIZE = 100
DEVICES = (1, 17)


def _context() -> object:
    from pymodbus import datastore

    device_context = getattr(datastore, "ModbusDeviceContext", None) or datastore.ModbusSlaveContext
    block = datastore.ModbusSequentialDataBlock

    def device() -> object:
        # Block address 1 is protocol address 0 in every version of the range.
        discretes = [False] * SIZE
        discretes[5] = True
        holding = [0] * SIZE
        holding[7] = 1234
        inputs = [0] * SIZE
        inputs[2] = 215
        return device_context(
            co=block(1, [False] * SIZE),
            di=block(1, discretes),
            hr=block(1, holding),
            ir=block(1, inputs),
        )

    return datastore.ModbusServerContext({unit: device() for unit in DEVICES}, single=False)


def _silent_on_other_ids(server_class: type) -> dict[str, bool]:
    """Unknown unit ids get no answer: the keyword is ignore_missing_devices (3.10+) or _slaves."""
    parameters = inspect.signature(server_class.__init__).parameters
    name = "ignore_missing_devices" if "ignore_missing_devices" in parameters else "ignore_missing_slaves"
    return {name: True}


async def _serve(argv: list[str]) -> None:
    from pymodbus.server import ModbusSerialServer, ModbusTcpServer

    kind = argv[0]
    if kind == "tcp":
        host, port = argv[1], int(argv[2])
        server: object = ModbusTcpServer(_context(), address=(host, port), **_silent_on_other_ids(ModbusTcpServer))
    elif kind == "rtu":
        device, baud, framing = argv[1], int(argv[2]), argv[3]
        server = ModbusSerialServer(
            _context(),
            port=device,
            baudrate=baud,
            bytesize=int(framing[0]),
            parity=framing[1],
            stopbits=int(framing[2]),
            **_silent_on_other_ids(ModbusSerialServer),
        )
    else:
        raise SystemExit(f"usage: {sys.argv[0]} tcp HOST PORT | rtu DEVICE BAUD 8N1")
    await server.serve_forever(background=True)  # type: ignore[attr-defined]
    print("ready", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # deprecation notes, per-request chatter
    asyncio.run(_serve(sys.argv[1:]))


if __name__ == "__main__":
    main()
