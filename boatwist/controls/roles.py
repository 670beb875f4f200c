"""
Who may do what: C{viewer} < C{operator} < C{admin}.

A viewer sees everything and operates nothing (chat is allowed); an operator
operates the controls their role reaches; an admin also kicks users and
breaks the floor.  A control may require a higher role than C{operator}.
"""

from __future__ import annotations

import enum

__all__ = ["Role"]


class Role(enum.IntEnum):
    """Ordered: a role may do what every lower one may."""

    VIEWER = 0
    OPERATOR = 1
    ADMIN = 2

    @property
    def label(self) -> str:
        """The name in the INI, the API and the UI."""
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> "Role":
        """C{viewer}, C{operator} or C{admin} (any case); ValueError otherwise."""
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"expected viewer, operator or admin, not {text!r}") from None

    def __str__(self) -> str:
        return self.label
