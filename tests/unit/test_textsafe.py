"""clean_message: what may reach another operator's terminal or browser."""

from __future__ import annotations

import pytest

from boatwist.textsafe import clean_message


@pytest.mark.parametrize(
    "dirty, clean",
    [
        ("\x1b[31mred\x1b[0m", "red"),  # SGR colour
        ("a\x1b[2Jb", "ab"),  # clear screen: the parameters go too, not only the ESC
        ("up\x1b[1A\x1b[2Kover", "upover"),  # cursor up + erase line: repainting someone else's text
        ("\x1b[?1049h", ""),  # private-mode CSI (alternate screen)
        ("x\x1b]0;pwned\x07y", "xy"),  # OSC window title, BEL-terminated
        ("x\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\y", "xlinky"),  # OSC 8 hyperlink, ST-terminated
        ("x\x1bPq#0;2;0;0;0\x1b\\y", "xy"),  # DCS (sixel) string
        ("x\x1b_apc\x9cy", "xy"),  # APC ended by the 8-bit ST
        ("x\x9b31my", "xy"),  # 8-bit CSI (U+009B)
        ("x\x9d0;t\x07y", "xy"),  # 8-bit OSC
        ("x\x1bcy", "xy"),  # ESC c: full terminal reset
        ("x\x1b(By", "xy"),  # charset designation
        ("tail\x1b]0;never ends", "tail"),  # unterminated OSC swallows the rest, not the next message
        ("a\x1b", "a"),  # lone ESC at the end
    ],
)
def test_escape_sequences_are_removed_whole(dirty: str, clean: str) -> None:
    """Every ESC/C1 sequence goes with its parameters, so no command and no litter is left."""
    assert clean_message(dirty) == clean


@pytest.mark.parametrize(
    "dirty, clean",
    [
        ("bell\x07", "bell"),
        ("nul\x00byte", "nulbyte"),
        ("back\x08space", "backspace"),
        ("del\x7f", "del"),
        ("c1\x85next", "c1 next"),  # NEL separates words
        ("c1\x84x", "c1x"),
        ("tab\there", "tab here"),
        ("two\r\nlines", "two  lines"),
        ("line\u2028sep\u2029para", "line sep para"),
        ("\x1c\x1d\x1e\x1f", ""),
    ],
)
def test_control_characters_are_removed_and_separators_become_spaces(dirty: str, clean: str) -> None:
    """C0/C1 controls and DEL never pass; those that separate words leave a space behind."""
    assert clean_message(dirty) == clean


def test_bidi_overrides_and_isolates_are_removed() -> None:
    """U+202A..U+202E and U+2066..U+2069 cannot reorder what others read (trojan-source style)."""
    dirty = "abc\u202edcba\u202c \u2066x\u2069 \u202a\u202b\u202d\u2067\u2068"
    assert clean_message(dirty) == "abcdcba x "


def test_chinese_and_emoji_are_kept_intact() -> None:
    """Operators write Chinese; emoji with ZWJ, skin tones, flags and keycaps survive byte-exactly."""
    text = "阀门已打开，温度 23℃ 👍🏽 👩\u200d🔧 🇨🇳 1\ufe0f\u20e3 ok"
    assert clean_message(text) == text


def test_lone_surrogates_are_removed_so_utf8_encoding_cannot_fail() -> None:
    """A JSON body can carry "\\ud800"; the cleaned text must always encode to UTF-8."""
    cleaned = clean_message("a\ud800b\udfffc")
    assert cleaned == "abc"
    cleaned.encode("utf-8")


def test_nothing_else_changes_and_cleaning_is_idempotent() -> None:
    """Plain text (spaces included) is untouched, and cleaning twice equals cleaning once."""
    assert clean_message("  hello, world  ") == "  hello, world  "
    samples = ["\x1b\x1b[31m[2J", "\x1b\n[2J", "x\x1b]\x1b\\\x1b[", "\x9b\x9b\x1b\x9c"]
    for sample in samples:
        once = clean_message(sample)
        assert clean_message(once) == once
        assert "\x1b" not in once and not any(0x80 <= ord(c) <= 0x9F for c in once)
