"""
Who may do what: C{viewer} < C{operator} < C{admin}.

A viewer sees everything and operates nothing (chat is allowed); an operator
operates the controls their role reaches; an admin also kicks users and
breaks the floor.  A control may require a higher role than C{operator}.

The INI::

    [roles]
    default = operator        the role of users listed nowhere below
    viewer = visitor, intern  comma-separated user names
    operator = bob
    admin = alice

A user listed under two roles is a configuration error: which one was meant
cannot be guessed, and guessing wrong either locks out an operator or lets a
visitor flip a relay.

B{The first-start admin.}  On first start boatwist creates the user
C{admin} (L{boatwist.passwords.ensure_initial_admin}) and shows its password
once; that user must be able to kick and break the floor on a fresh device
whose INI has no C{[roles]} at all.  So the user named C{admin}
(L{INITIAL_ADMIN}) is an admin unless C{[roles]} lists it under C{viewer} or
C{operator}.  The rule looks only at the name, not at how the account was
made: an integrator who wants no implicit admin lists C{admin} under another
role, or deletes the account.  Listing other admins does not demote it, so
writing C{admin = alice} before alice's account exists never locks everyone
out of administration.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:  # spec imports Role from here: only the type is needed.
    from boatwist.controls.spec import ControlSpec

__all__ = [
    "INITIAL_ADMIN",
    "Role",
    "RolePolicy",
    "RoleRefusal",
    "RoleSettings",
    "parse_role_setting",
    "parse_user_list",
    "role_lists_conflict",
]

#: The user created on first start; an admin unless [roles] says otherwise.
INITIAL_ADMIN = "admin"


class Role(enum.IntEnum):
    """Ordered: a role may do what every lower one may."""

    VIEWER = 0
    OPERATOR = 1
    ADMIN = 2

    @property
    def label(self) -> str:
        """The name in the INI, the API and the UI."""
        return _LABELS[self]

    @classmethod
    def parse(cls, text: str) -> "Role":
        """C{viewer}, C{operator} or C{admin} (any case); ValueError otherwise."""
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"expected viewer, operator or admin, not {text!r}") from None

    def __str__(self) -> str:
        return self.label


#: Each role's label, made once (an enum member's name is a descriptor call each time).
_LABELS = {role: role.name.lower() for role in Role}


@dataclass(frozen=True)
class RoleSettings:
    """The C{[roles]} section: C{default} and one user list per role."""

    #: The role of a user listed under no role.  Operator, so that a device
    #: with no [roles] behaves as before roles existed: everyone logged in operates.
    default: Role = Role.OPERATOR
    viewer: tuple[str, ...] = ()
    operator: tuple[str, ...] = ()
    admin: tuple[str, ...] = ()

    def listed(self) -> dict[str, Role]:
        """Every user named in a list, with the role it gives (lists do not overlap)."""
        roles: dict[str, Role] = {}
        for role in Role:
            for user in getattr(self, role.label):
                roles[user] = role
        return roles


# ------------------------------------------------------------ INI parsing
#
# These raise ValueError with the "expected ..." part of the message;
# boatwist.config adds the file, line, [section] key and value.


def parse_role_setting(text: str) -> Role:
    """C{[roles] default}: one of the three role names."""
    try:
        return Role[text.strip().upper()]
    except KeyError:
        raise ValueError("expected viewer, operator or admin") from None


def parse_user_list(text: str) -> tuple[str, ...]:
    """
    A comma-separated list of user names, duplicates dropped, order kept.

    A name that no account can have (a colon separates the fields of both
    password files; control characters cannot be typed at a login prompt) is
    surely a typo, and a typo here silently gives someone the default role.
    """
    users: dict[str, None] = {}
    for part in text.split(","):
        user = part.strip()
        if not user:
            continue
        if ":" in user or not user.isprintable():
            raise ValueError("expected user names separated by commas (a name has no colon or control character)")
        users[user] = None
    return tuple(users)


def role_lists_conflict(values: Mapping[str, object]) -> tuple[str, str] | None:
    """
    The first user listed under two roles in a parsed C{[roles]} section, as
    (the key where it is listed the second time, what was expected); None when
    every user has one role.  C{values} is in file order, so the key named is
    the one on the later line -- the one the integrator most likely just added.
    """
    first: dict[str, str] = {}
    for key, users in values.items():
        if key == "default" or not isinstance(users, tuple):
            continue
        for user in users:
            if not isinstance(user, str):
                continue
            if user in first and first[user] != key:
                return key, f"expected each user under one role ({user!r} is also listed under {first[user]})"
            first[user] = key
    return None


# ----------------------------------------------------------------- policy


@dataclass(frozen=True)
class RoleRefusal:
    """Why C{user} may not operate a control: the 403 body, the chat line, the audit record."""

    user: str
    role: Role
    #: The least role the action needs.
    needed: Role
    control: str | None = None

    def message(self) -> str:
        """One line for people: what is missing, not just "forbidden"."""
        if self.role is Role.VIEWER and self.needed is Role.OPERATOR:
            return f"{self.user} is a viewer: viewers watch and chat, they do not operate"
        what = f"operating {self.control}" if self.control else "this"
        return f"{what} needs the {self.needed.label} role; {self.user} is {_article(self.role)} {self.role.label}"


def _article(role: Role) -> str:
    return "an" if role.label[0] in "aeiou" else "a"


class RolePolicy:
    """
    The roles of users, decided once from L{RoleSettings}.

    Pure lookups with no I/O: the operation pipeline asks it before the floor
    (a viewer is refused for their role, not told to take the floor), the
    floor asks it before letting someone take or request it, and the API
    asks it to tell each user which controls they may operate.
    """

    def __init__(self, settings: RoleSettings | None = None) -> None:
        self.settings = settings if settings is not None else RoleSettings()
        self._roles = self.settings.listed()
        self._roles.setdefault(INITIAL_ADMIN, Role.ADMIN)

    def role_of(self, user: str) -> Role:
        """The user's role: as listed, else the first-start admin rule, else C{default}."""
        return self._roles.get(user, self.settings.default)

    def needed_for(self, spec: ControlSpec) -> Role:
        """
        The least role that operates C{spec}: its own C{role}, but never less
        than operator -- viewers operate nothing, even a control declared
        C{role = viewer}.
        """
        return max(spec.role, Role.OPERATOR)

    def check_operate(self, user: str, spec: ControlSpec) -> RoleRefusal | None:
        """None when C{user}'s role reaches C{spec}; else why not (HTTP 403)."""
        role, needed = self.role_of(user), self.needed_for(spec)
        if role >= needed:
            return None
        return RoleRefusal(user, role, needed, spec.name)

    def may_operate(self, user: str, spec: ControlSpec) -> bool:
        """Whether C{user}'s role reaches C{spec} (the floor and confirmation are asked separately)."""
        return self.role_of(user) >= self.needed_for(spec)

    def may_hold_floor(self, user: str) -> bool:
        """Taking or requesting the floor needs the operator role: a viewer holding it would block everyone."""
        return self.role_of(user) >= Role.OPERATOR

    def may_admin(self, user: str) -> bool:
        """Kick users and break the floor."""
        return self.role_of(user) >= Role.ADMIN
