"""The Mosquitto test helper: a missing broker skips locally and fails under CI."""

from __future__ import annotations

import pytest

import mosquitto


def test_missing_mosquitto_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """CI=true: no mosquitto is a failure, never a silent skip."""
    monkeypatch.setattr(mosquitto.shutil, "which", lambda name: None)
    monkeypatch.setattr(mosquitto.os, "access", lambda path, mode: False)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="mosquitto"):
        mosquitto.mosquitto_binary()
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception):
        mosquitto.mosquitto_binary()
