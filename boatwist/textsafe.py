"""
Make text typed by one operator safe to show on another operator's screen.

A chat message travels from one person's keyboard to everybody else's
terminal (the chat port is read with C{telnet} and C{nc}, which hand every
byte to the terminal) and browser.  A terminal obeys escape sequences: a
message carrying C{ESC [2J} clears the screen, C{ESC ]0;...BEL} retitles the
window, C{ESC [1A} moves up and overwrites what someone else said, and the
bidi overrides (U+202E ...) make text read differently from what was sent.
So everything relayed to others goes through L{clean_message} first, by the
chat port and by C{POST /api/chat} alike: one definition of "safe" for the
whole room.

What is kept: every printable character of every script (operators may
write Chinese), emoji with their joiners and modifiers.  What goes: C0 and
C1 control characters (those that separate words -- tab, newline, the
Unicode line separators -- become a space, so words do not run together),
whole escape sequences (not only the ESC, else C{[2J} would be left as
litter), the bidi embedding/override/isolate controls, and lone surrogates
(which cannot be encoded to UTF-8 and would break the writer, not the
attacker).
"""

from __future__ import annotations

import re

__all__ = ["clean_message"]

# A whole escape sequence, 7-bit (ESC x) or 8-bit (the C1 code point).
#
# * CSI (ESC [ or U+009B): parameter bytes 0x30-0x3F, intermediates
#   0x20-0x2F, a final byte 0x40-0x7E.  A CSI cut short (no final) is still
#   removed as far as it goes.
# * OSC (ESC ]), DCS (ESC P), SOS (ESC X), PM (ESC ^), APC (ESC _) and their
#   C1 forms: a string up to BEL or ST (ESC \\ or U+009C).  One that never
#   ends runs to the end of the text: better to lose the tail of a hostile
#   message than to let the terminal swallow the next one.
# * Any other ESC: intermediates 0x20-0x2F, then one final 0x30-0x7E (e.g.
#   ESC c, the full reset; ESC ( B, charset selection).
_ESCAPE_SEQUENCE = re.compile(
    r"""
      (?:\x1b\[|\x9b) [\x30-\x3f]* [\x20-\x2f]* [\x40-\x7e]?
    | (?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f]) .*? (?:\x07|\x1b\\|\x9c|\Z)
    | \x1b [\x20-\x2f]* [\x30-\x7e]?
    """,
    re.VERBOSE | re.DOTALL,
)

# Controls that separate words: turned into a space rather than deleted.
_SEPARATORS = re.compile("[\t\n\x0b\x0c\r\x85\u2028\u2029]")

# Everything else that must not reach a terminal or a bidi-aware renderer:
# the rest of C0, DEL, the rest of C1, bidi embeddings/overrides
# (U+202A-U+202E) and isolates (U+2066-U+2069), lone surrogates.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def clean_message(text: str) -> str:
    """
    C{text} with every escape sequence, control character and bidi override
    removed, word-separating controls turned into spaces, and nothing else
    changed (no trimming: whether surrounding spaces matter is the caller's
    policy).  Idempotent, and never raises for any C{str}.
    """
    text = _ESCAPE_SEQUENCE.sub("", text)
    text = _SEPARATORS.sub(" ", text)
    return _UNSAFE.sub("", text)
