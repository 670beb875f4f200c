"""Telnet on the chat port without I/O: who counts as a telnet client, and what we answer."""

from __future__ import annotations

import pytest

from boatwist.chat.telnet import (
    AO, BINARY, DO, DONT, ECHO, IAC, NOP, SGA, TM, WILL, WONT, Command, Segment, TelnetFilter, TelnetOptions,
)


def data_of(segments: list[Segment]) -> bytes:
    return b"".join(s for s in segments if isinstance(s, bytes))


def commands_of(segments: list[Segment]) -> list[Command]:
    return [s for s in segments if isinstance(s, Command)]


@pytest.mark.parametrize("message", [
    b"price \xff\xfe 12\n",          # IAC DONT <space>: not an option a client offers
    b"\xff\xfeA\xff\xff\xfd\x7f\n",   # IAC DONT 'A', IAC IAC, IAC DO 127
    b"\xff\xf1" * 8 + b"x\n",         # IAC NOP on and on, no negotiation after them
    b"abc\xff\n",                     # a lone IAC before the line end
])
def test_bytes_from_nc_that_are_not_a_negotiation_stay_data(message: bytes) -> None:
    """nc sending FF FE (or other IACs) inside a message is not a telnet client: every byte is data."""
    for size in (1, 2, 3, len(message)):
        f = TelnetFilter()
        out = b""
        for i in range(0, len(message), size):
            segments = f.feed(message[i:i + size])
            assert commands_of(segments) == []
            out += data_of(segments)
        assert out == message, size
        assert not f.spoken


def test_a_cut_beginning_is_held_until_decided() -> None:
    """IAC, then DONT, arriving alone are held (nothing passed on) until the next byte decides."""
    f = TelnetFilter()
    assert f.feed(b"\xff") == []
    assert f.feed(b"\xfe") == []
    assert f.feed(b"x") == [b"\xff\xfex"]
    g = TelnetFilter()
    assert g.feed(b"hi\xff") == [b"hi"]
    assert g.feed(b"\xfb") == []
    assert g.feed(bytes((31,)) + b"!") == [Command(WILL, 31), b"!"]
    assert g.spoken


def test_plain_telnet_turning_a_utf8_byte_into_ao_and_timing_mark_is_telnet() -> None:
    """'telnet HOST PORT' sends IAC AO IAC DO TM for the 0x8F of 号: that proves it is telnet, mid-line."""
    f = TelnetFilter()
    segments = f.feed(b"\xe5" + bytes((IAC, AO, IAC, DO, TM)) + b"\xb7\r\n")
    assert segments == [b"\xe5", Command(AO), Command(DO, TM), b"\xb7\r\n"]
    assert f.spoken


def test_parsing_stops_one_command_past_the_budget() -> None:
    """With max_commands, a flood of IAC NOP is parsed no further than the budget allows (plus one)."""
    f = TelnetFilter()
    flood = bytes((IAC, WILL, SGA)) + bytes((IAC, NOP)) * 10_000
    segments = f.feed(flood, max_commands=5)
    assert len(commands_of(segments)) == 6


def test_every_do_timing_mark_is_answered() -> None:
    """A client that sent DO TM discards our output until answered (RFC 860): each one gets WILL TM."""
    options = TelnetOptions()
    for _ in range(3):
        assert options.answer(Command(DO, TM)) == bytes((IAC, WILL, TM))


def test_what_we_agree_to() -> None:
    """Client's BINARY yes (once), ours no; SGA no; ECHO only while offered; WONT/DONT unanswered."""
    options = TelnetOptions()
    assert options.start() == bytes((IAC, DO, BINARY))
    assert options.start() == b""
    assert options.answer(Command(WILL, BINARY)) == b""  # the answer to our DO
    assert options.answer(Command(DO, BINARY)) == bytes((IAC, WONT, BINARY))
    assert options.answer(Command(DO, SGA)) == bytes((IAC, WONT, SGA))
    assert options.answer(Command(DO, SGA)) == b""
    assert options.answer(Command(DO, ECHO)) == bytes((IAC, WONT, ECHO))
    assert options.echo_off() == bytes((IAC, WILL, ECHO))
    assert options.answer(Command(DO, ECHO)) == b""
    assert options.echo_on() == bytes((IAC, WONT, ECHO))
    assert options.echo_on() == b""
    assert options.answer(Command(WONT, 31)) == b""
    assert options.answer(Command(DONT, 31)) == b""
    assert options.answer(Command(NOP)) == b""


def test_a_refused_echo_is_not_withdrawn() -> None:
    """A client that answers our WILL ECHO with DONT echoes itself: nothing to withdraw after the password."""
    options = TelnetOptions()
    options.echo_off()
    options.answer(Command(DONT, ECHO))
    assert options.echo_on() == b""
