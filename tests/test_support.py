"""The shared helpers: a missing dependency skips, except under CI, where it fails."""

from __future__ import annotations

import unittest

import pytest

from tests.support import in_ci, unavailable


@pytest.mark.parametrize(("value", "expected"), [
    ("", False), ("0", False), ("false", False), ("No", False), ("1", True), ("true", True),
])
def test_ci_is_any_value_but_an_explicit_no(monkeypatch, value, expected):
    monkeypatch.setenv("CI", value)
    assert in_ci() is expected


def test_a_missing_dependency_skips_outside_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(unittest.SkipTest, match="no widget"):
        unavailable("no widget")


def test_a_missing_dependency_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(AssertionError, match="no widget.*CI is set"):
        unavailable("no widget")
