"""
The screen a person would see, from the bytes a terminal receives.

A tiny terminal: CR returns to column 0, LF moves down one row (the column
stays: that is what makes a staircase visible), BS moves left, BEL rings
nothing, printable characters are written at the cursor (East Asian wide
ones take two columns).  Anything else -- ESC, other C0/C1 controls, bytes
that are not UTF-8 -- is a *stray*: it would be garbage or a surprise on a
real screen, so tests assert there are none.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field

__all__ = ["Screen", "render"]


@dataclass
class Screen:
    rows: list[str]
    #: Characters a real terminal would not have shown as text (repr'd).
    stray: list[str] = field(default_factory=list)

    def after(self, first: str) -> list[str]:
        """The rows from the first one starting with C{first} (telnet's own preface is before it)."""
        for i, row in enumerate(self.rows):
            if row.startswith(first):
                return self.rows[i:]
        raise AssertionError(f"no row starts with {first!r}: {self.rows}")


def render(data: bytes) -> Screen:
    text = data.decode("utf-8", "replace")
    grid: list[list[str]] = [[]]
    row = col = 0
    stray: list[str] = []
    for ch in text:
        if ch == "\r":
            col = 0
        elif ch == "\n":
            row += 1
            while len(grid) <= row:
                grid.append([])
        elif ch == "\b":
            col = max(0, col - 1)
        elif ch == "\x07":
            pass
        elif ch == "\ufffd" or unicodedata.category(ch) in ("Cc", "Cf"):
            stray.append(repr(ch))
        else:
            cells = grid[row]
            width = 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
            while len(cells) < col + width:
                cells.append(" ")
            cells[col] = ch
            if width == 2:
                cells[col + 1] = ""
            col += width
    return Screen(["".join(cells).rstrip() for cells in grid], stray)
