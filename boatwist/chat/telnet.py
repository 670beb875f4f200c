"""
Telnet on the chat port, without I/O: bytes in, data and commands out, and
the bytes to answer with.

Two things decide how a terminal looks, and both are here.

**Who is a telnet client.**  The server never negotiates first, so ``nc``,
``socat``, ``ncat`` and ``plink -raw`` never receive a byte of telnet.  A
connection is *raw* until its client proves to be telnet by sending a
well-formed negotiation: ``IAC WILL|WONT|DO|DONT <option>`` with an option a
telnet client may offer (L{KNOWN_OPTIONS}; for WONT and DONT, which a client
never starts with, only the options whose code is a control byte, so that
FF FE before a space is text), optionally preceded by up to
four two-byte commands (``IAC AO IAC DO TIMING-MARK`` is what a plain
``telnet HOST PORT`` sends when a typed byte looks like ^O to it).  Until
then an IAC that does not start such a sequence is data: ``nc`` sending the
bytes FF FE inside a message gets its line refused as not UTF-8, and is not
answered with telnet it would print.  A sequence cut across reads is held
(at most L{_HELD_MAX} bytes) until it can be decided.  Once telnet, always
telnet: every IAC is a command, IAC IAC a literal 255.

**What we agree to** (L{TelnetOptions}, RFC 854/855, 856, 857, 858, 860):

  - BINARY: we ask the client to *send* binary (``DO BINARY``, once, when it
    first speaks telnet), so it stops masking typed bytes to 7 bits and UTF-8
    arrives intact.  We *refuse* to send binary (``WONT BINARY``), even when
    the client asks (``telnet -8`` does): inetutils, netkit and BSD telnet
    switch the local terminal's output processing off (``OPOST``) while the
    server sends binary, and then the terminal's own echo of the user's Enter
    is a bare LF -- every line after it starts where the typed text ended (a
    staircase), and ``password:`` is indented.  Our lines are UTF-8 in CR LF
    either way; a client keeps 8-bit output without BINARY.
  - SGA: refused.  With ECHO and SGA both on, a client goes to character
    mode and expects the server to echo every key; without SGA it stays in
    line mode, edits and echoes the line itself, and sends it on Enter.
  - ECHO: offered (``WILL ECHO``) only while the password is typed, so the
    client stops echoing it, and withdrawn (``WONT ECHO``) after the
    password line -- followed by CR LF, because the Enter was not echoed.
  - TIMING-MARK: every ``DO TM`` is answered ``WILL TM`` (a client that sent
    it discards our output until the answer, RFC 860).
  - anything else: ``WILL x`` is answered ``DONT x`` and ``DO x`` ``WONT x``,
    once per option, so nothing loops; ``WONT``/``DONT`` need no answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "AO", "BINARY", "DO", "DONT", "ECHO", "IAC", "INTERRUPTS", "IP", "KNOWN_OPTIONS", "NOP", "SB", "SE", "SGA", "TM",
    "WILL", "WONT", "Command", "Segment", "TelnetFilter", "TelnetOptions",
]

# RFC 854 command codes.
IAC, DONT, DO, WONT, WILL, SB, GA, EL, EC, AYT, AO, IP, BRK, DM, NOP, SE = (
    255, 254, 253, 252, 251, 250, 249, 248, 247, 246, 245, 244, 243, 242, 241, 240)
EOR_CMD, ABORT, SUSP, EOF = 239, 238, 237, 236
# Options.
BINARY, ECHO, SGA, STATUS, TM = 0, 1, 3, 5, 6

#: Options a telnet client offers or asks for when it starts (inetutils, netkit,
#: BSD, PuTTY, Windows telnet): the ones that make an IAC a negotiation.
KNOWN_OPTIONS = frozenset({
    BINARY, ECHO, SGA, STATUS, TM,
    24,  # TERMINAL-TYPE
    25,  # END-OF-RECORD
    31,  # NAWS
    32,  # TERMINAL-SPEED
    33,  # TOGGLE-FLOW-CONTROL
    34,  # LINEMODE
    35,  # X-DISPLAY-LOCATION
    36,  # ENVIRON
    37,  # AUTHENTICATION
    38,  # ENCRYPT
    39,  # NEW-ENVIRON
    42,  # CHARSET
})

#: Two-byte commands a client sends for a key it took for its own (^C, ^O,
#: ^T, ^\, ^Z, erase) -- or for a byte of UTF-8 it masked to 7 bits and took
#: for one: the line they arrive in is not what the user typed.
INTERRUPTS = frozenset({IP, AO, AYT, EC, EL, BRK, SUSP, ABORT, EOF})

_VERBS = rb"[\xfb-\xfe]"
_TWO_BYTE = rb"[\xec-\xef\xf1-\xf9]"


def _one_of(options: set[int] | frozenset[int]) -> bytes:
    return b"[" + b"".join(re.escape(bytes((o,))) for o in sorted(options)) + b"]"


#: What makes a raw connection telnet (see the module docstring).  WILL/DO with any
#: known option; WONT/DONT only with one whose code is a control byte -- a client
#: never starts with those, and "FF FE" typed before a space (TERMINAL-SPEED, 32)
#: must stay text.
_NEGOTIATION = re.compile(
    rb"(?:\xff" + _TWO_BYTE + rb"){0,4}\xff(?:[\xfb\xfd]" + _one_of(KNOWN_OPTIONS)
    + rb"|[\xfc\xfe]" + _one_of({o for o in KNOWN_OPTIONS if o < 0x20}) + rb")")
#: A proper beginning of L{_NEGOTIATION}: held until more bytes decide.
_BEGINNING = re.compile(rb"(?:\xff" + _TWO_BYTE + rb"){0,4}(?:\xff" + _VERBS + rb"?)?")
_HELD_MAX = 11


@dataclass(frozen=True)
class Command:
    """One telnet command: a negotiation (C{code} WILL/WONT/DO/DONT with its option), SB, or a two-byte one."""

    code: int
    option: int | None = None

    @property
    def negotiation(self) -> bool:
        return self.code in (WILL, WONT, DO, DONT)


#: What the filter yields, in stream order.
Segment = bytes | Command


class TelnetFilter:
    """
    Separates telnet commands from the data, byte-exactly across reads; no I/O.

    L{spoken} turns true when the client proves to be telnet (the module
    docstring says how); before that everything is data.  Lines a telnet
    client ends with CR NUL (RFC 854's bare CR) come out ending in CR LF.
    """

    _DATA, _IAC, _OPTION, _SUB, _SUB_IAC = range(5)

    def __init__(self) -> None:
        self.spoken = False
        self._held = b""
        self._state = self._DATA
        self._verb = 0
        self._cr_last = False

    def feed(self, data: bytes, max_commands: int | None = None) -> list[Segment]:
        """
        The data and commands of C{data}, in order.  With C{max_commands},
        parsing stops after one command more than that (the caller, counting
        them, then knows its budget is spent without having paid to parse
        the rest of a flood).
        """
        segments: list[Segment] = []
        if not self.spoken:
            held, self._held = self._held, b""
            data = self._raw(held + data, segments)
            if not self.spoken:
                return segments
        self._telnet(data, segments, max_commands)
        return segments

    def _raw(self, data: bytes, segments: list[Segment]) -> bytes:
        """Pass data on until a negotiation starts; what follows it is returned for L{_telnet}."""
        start = i = 0
        while True:
            j = data.find(b"\xff", i)
            if j < 0:
                break
            if _NEGOTIATION.match(data, j):
                self.spoken = True
                if j > start:
                    segments.append(data[start:j])
                return data[j:]
            rest = data[j:]
            if len(rest) <= _HELD_MAX and _BEGINNING.fullmatch(rest):
                if j > start:
                    segments.append(data[start:j])
                self._held = rest
                return b""
            i = j + 1  # this IAC is a data byte
        if len(data) > start:
            segments.append(data[start:])
        return b""

    def _telnet(self, data: bytes, segments: list[Segment], max_commands: int | None) -> None:
        out = bytearray()
        commands = 0

        def command(c: Command) -> None:
            nonlocal commands
            if out:
                segments.append(self._crnul(bytes(out)))
                out.clear()
            segments.append(c)
            commands += 1

        i, n = 0, len(data)
        while i < n:
            if max_commands is not None and commands > max_commands:
                return
            state = self._state
            if state == self._DATA:
                j = data.find(b"\xff", i)
                if j < 0:
                    out += data[i:]
                    break
                out += data[i:j]
                self._state = self._IAC
                i = j + 1
                continue
            if state == self._SUB:
                j = data.find(b"\xff", i)
                if j < 0:
                    break  # subnegotiation payload: nothing of it is text
                self._state = self._SUB_IAC
                i = j + 1
                continue
            byte = data[i]
            i += 1
            if state == self._IAC:
                if byte == IAC:
                    out.append(IAC)
                    self._state = self._DATA
                elif byte in (WILL, WONT, DO, DONT):
                    self._verb = byte
                    self._state = self._OPTION
                elif byte == SB:
                    self._state = self._SUB
                else:  # NOP, GA, AYT, IP, AO, BRK, ...
                    self._state = self._DATA
                    command(Command(byte))
            elif state == self._OPTION:
                self._state = self._DATA
                command(Command(self._verb, byte))
            else:  # _SUB_IAC: IAC SE ends it; IAC IAC is a 255 inside it
                if byte == SE:
                    self._state = self._DATA
                    command(Command(SB))
                else:
                    self._state = self._SUB
        if out:
            segments.append(self._crnul(bytes(out)))

    def _crnul(self, text: bytes) -> bytes:
        """A telnet client may end a line with CR NUL, even split across reads: make it CR LF."""
        if self._cr_last and text[:1] == b"\x00":
            text = b"\n" + text[1:]
        text = text.replace(b"\r\x00", b"\r\n")
        self._cr_last = text.endswith(b"\r")
        return text


class TelnetOptions:
    """
    Our side of the negotiation (the module docstring says what we agree to
    and why); every method returns the bytes to send, possibly none.
    """

    def __init__(self) -> None:
        self._started = False
        self._answered: set[tuple[int, int]] = set()
        #: We sent WILL ECHO (password being typed) and have not withdrawn it.
        self.echo_offered = False

    def start(self) -> bytes:
        """The client just proved to be telnet: ask it to send 8-bit data (once)."""
        if self._started:
            return b""
        self._started = True
        # Our DO BINARY is the request; the client's WILL BINARY agrees and needs no answer.
        self._answered.add((WILL, BINARY))
        return bytes((IAC, DO, BINARY))

    def answer(self, command: Command) -> bytes:
        """The reply to one of the client's commands."""
        verb, option = command.code, command.option
        if option is None or verb not in (WILL, DO):
            if verb == DONT and option == ECHO:
                self.echo_offered = False  # refused: nothing to withdraw later
            return b""  # WONT / DONT need no answer; two-byte commands have none
        if verb == DO and option == TM:
            return bytes((IAC, WILL, TM))  # each one: the client waits for it (RFC 860)
        if verb == DO and option == ECHO and self.echo_offered:
            return b""  # agrees to our WILL ECHO
        if (verb, option) in self._answered:
            return b""  # each option is answered once, so nothing loops
        self._answered.add((verb, option))
        if verb == WILL and option == BINARY:
            return bytes((IAC, DO, BINARY))
        return bytes((IAC, DONT if verb == WILL else WONT, option))

    def echo_off(self) -> bytes:
        """Before the password: we echo (that is, nothing), so the client does not."""
        self.echo_offered = True
        return bytes((IAC, WILL, ECHO))

    def echo_on(self) -> bytes:
        """After the password: the client echoes again (empty if we had not taken it over)."""
        if not self.echo_offered:
            return b""
        self.echo_offered = False
        return bytes((IAC, WONT, ECHO))
