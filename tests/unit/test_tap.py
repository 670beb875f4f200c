"""Assembly details of boatwist.tap that need no running reactor."""

from __future__ import annotations

from boatwist.config import AdmissionSettings
from boatwist.tap import FD_RESERVE, fit_connection_cap


class FakeLimits:
    """A stand-in for the resource module with a settable RLIMIT_NOFILE."""

    RLIMIT_NOFILE = 7
    RLIM_INFINITY = -1

    def __init__(self, soft: int, hard: int, settable: bool = True) -> None:
        self.soft, self.hard, self.settable = soft, hard, settable

    def getrlimit(self, which: int) -> tuple[int, int]:
        return self.soft, self.hard

    def setrlimit(self, which: int, value: tuple[int, int]) -> None:
        if not self.settable or value[0] > self.hard:
            raise ValueError("not allowed")
        self.soft = value[0]


def test_soft_limit_is_raised_to_fit_the_cap() -> None:
    """With room under the hard limit, the soft limit is raised and the cap kept."""
    limits = FakeLimits(soft=256, hard=4096)
    admission = fit_connection_cap(AdmissionSettings(max_connections=512), limits)
    assert admission.max_connections == 512
    assert limits.soft == 512 + FD_RESERVE


def test_cap_is_lowered_below_a_hard_limit() -> None:
    """When the hard limit is too low the cap is lowered, so accept() never runs out of descriptors."""
    limits = FakeLimits(soft=200, hard=300)
    admission = fit_connection_cap(AdmissionSettings(max_connections=512, max_connections_per_address=400), limits)
    assert admission.max_connections == 300 - FD_RESERVE
    assert admission.max_connections_per_address <= admission.max_connections


def test_generous_limit_changes_nothing() -> None:
    """An unlimited or large enough limit leaves the settings as they are."""
    settings = AdmissionSettings(max_connections=512)
    assert fit_connection_cap(settings, FakeLimits(soft=-1, hard=-1)) is settings
    assert fit_connection_cap(settings, FakeLimits(soft=100000, hard=100000)) is settings
