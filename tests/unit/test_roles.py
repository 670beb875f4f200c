"""Roles: the [roles] section, its one-line errors, and who may operate, hold the floor and administer."""

from __future__ import annotations

import pytest

from boatwist.config import ConfigError, parse_config
from boatwist.controls.roles import INITIAL_ADMIN, Role, RolePolicy, RoleSettings
from boatwist.controls.spec import ControlSpec, ControlType, MemorySpec


def spec(role: Role = Role.OPERATOR, name: str = "pump") -> ControlSpec:
    return ControlSpec(name=name, type=ControlType.SWITCH, backend=MemorySpec(initial=False), role=role)


def test_no_roles_section_makes_everyone_an_operator_and_admin_an_admin() -> None:
    """Without [roles] every user operates (as before roles existed) and the first-start admin administers."""
    s = parse_config("")
    assert s.roles == RoleSettings()
    policy = RolePolicy(s.roles)
    assert policy.role_of("bob") is Role.OPERATOR
    assert policy.role_of(INITIAL_ADMIN) is Role.ADMIN
    assert policy.may_admin("admin") and not policy.may_admin("bob")


def test_roles_section_is_parsed_into_lists_and_a_default() -> None:
    """default is a role name (any case); the lists are comma-separated names, duplicates dropped, order kept."""
    s = parse_config(
        "[roles]\ndefault = Viewer\nviewer = visitor,  intern ,visitor\noperator = bob\nadmin = alice, carol\n"
    )
    assert s.roles.default is Role.VIEWER
    assert s.roles.viewer == ("visitor", "intern")
    assert s.roles.operator == ("bob",)
    assert s.roles.admin == ("alice", "carol")
    policy = RolePolicy(s.roles)
    assert [policy.role_of(u) for u in ("visitor", "bob", "alice", "stranger")] == [
        Role.VIEWER, Role.OPERATOR, Role.ADMIN, Role.VIEWER]


def test_unknown_role_name_is_one_line_naming_file_line_and_key() -> None:
    """A misspelt default role stops the start with the usual one line."""
    with pytest.raises(ConfigError) as info:
        parse_config("[roles]\ndefault = boss\n", source="embweb.ini")
    assert str(info.value) == "embweb.ini:2: [roles] default = 'boss': expected viewer, operator or admin"


def test_a_user_under_two_roles_is_refused_naming_the_later_line() -> None:
    """Which of two roles was meant cannot be guessed: the error names the user, both roles and the later line."""
    with pytest.raises(ConfigError) as info:
        parse_config("[roles]\nadmin = alice\n\nviewer = bob, alice\n", source="embweb.ini")
    message = str(info.value)
    assert message == ("embweb.ini:4: [roles] viewer = 'bob, alice': expected each user under one role "
                       "('alice' is also listed under admin)")
    assert "\n" not in message


def test_a_name_no_account_can_have_is_refused() -> None:
    """A colon cannot be in a user name (it separates the password files' fields): surely a typo."""
    with pytest.raises(ConfigError, match=r"^x:2: \[roles\] operator = 'bob:alice': expected user names"):
        parse_config("[roles]\noperator = bob:alice\n", source="x")


def test_unknown_key_in_roles_is_refused() -> None:
    """A misspelt list name would silently give its users the default role."""
    with pytest.raises(ConfigError, match=r"\[roles\] viewers: unknown key"):
        parse_config("[roles]\nviewers = bob\n")


def test_the_initial_admin_is_demoted_only_by_listing_it_elsewhere() -> None:
    """The user `admin` stays admin when other admins are listed; listed as operator it is an operator."""
    assert RolePolicy(RoleSettings(admin=("alice",))).role_of("admin") is Role.ADMIN
    assert RolePolicy(RoleSettings(default=Role.VIEWER)).role_of("admin") is Role.ADMIN
    assert RolePolicy(RoleSettings(operator=("admin",))).role_of("admin") is Role.OPERATOR
    assert RolePolicy(RoleSettings(viewer=("admin",))).role_of("admin") is Role.VIEWER


def test_viewers_operate_nothing_even_a_control_declared_for_viewers() -> None:
    """A viewer sees everything and operates nothing: role = viewer on a control does not change that."""
    policy = RolePolicy(RoleSettings(viewer=("vic",)))
    assert not policy.may_operate("vic", spec(Role.VIEWER))
    assert not policy.may_operate("vic", spec())
    refusal = policy.check_operate("vic", spec())
    assert refusal is not None and refusal.needed is Role.OPERATOR
    assert refusal.message() == "vic is a viewer: viewers watch and chat, they do not operate"


def test_a_control_may_require_a_higher_role() -> None:
    """role = admin on a control refuses operators, with a message naming both roles."""
    policy = RolePolicy(RoleSettings(admin=("alice",)))
    assert policy.may_operate("bob", spec())
    assert not policy.may_operate("bob", spec(Role.ADMIN, "mains"))
    assert policy.may_operate("alice", spec(Role.ADMIN, "mains"))
    refusal = policy.check_operate("bob", spec(Role.ADMIN, "mains"))
    assert refusal is not None
    assert refusal.message() == "operating mains needs the admin role; bob is an operator"


def test_holding_the_floor_needs_the_operator_role() -> None:
    """A viewer holding the floor would block every operator: only operators and admins may."""
    policy = RolePolicy(RoleSettings(viewer=("vic",), admin=("alice",)))
    assert not policy.may_hold_floor("vic")
    assert policy.may_hold_floor("bob") and policy.may_hold_floor("alice")


def test_role_parse_and_labels_round_trip() -> None:
    """The names in the INI, the API and the UI are the lower-case labels."""
    for role in Role:
        assert Role.parse(role.label.upper()) is role
        assert str(role) == role.label
    with pytest.raises(ValueError):
        Role.parse("root")
