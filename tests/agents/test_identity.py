"""Agent hash, agent id and session id derivation."""

from __future__ import annotations

import hashlib

from mnemomd.agents.identity import (
    InMemoryAgentDirectory,
    agent_hash,
    agent_id_candidates,
    default_session_id,
    is_valid_session_id,
)


def test_agent_hash_is_sha256_prefix_of_key():
    assert agent_hash(b"sk-test") == hashlib.sha256(b"sk-test").hexdigest()[:16]


def test_named_agent_hash_includes_name():
    expected = hashlib.sha256(b"sk-test\nplanner").hexdigest()[:16]
    assert agent_hash(b"sk-test", "planner") == expected
    assert agent_hash(b"sk-test", "planner") != agent_hash(b"sk-test", "coder")


def test_session_is_hour_bucket():
    assert default_session_id("abcd", 3_600_000 * 5 + 1) == "abcd-5"
    assert default_session_id("abcd", 3_600_000 * 6 - 1) == "abcd-5"


def test_session_header_validation():
    assert is_valid_session_id("run-42:step_7.a")
    assert is_valid_session_id("x" * 128)
    assert not is_valid_session_id("x" * 129)
    assert not is_valid_session_id("")
    assert not is_valid_session_id("has space")
    assert not is_valid_session_id("new\nline")


def test_agent_id_collision_takes_longer_prefix():
    directory = InMemoryAgentDirectory()
    first = directory.resolve("0123456789abcdef", None).result
    second = directory.resolve("01234567ffffffff", None).result
    assert first.agent_id == "smolt-01234567"
    assert second.agent_id == "smolt-01234567f"
    assert directory.resolve("0123456789abcdef", None).result == first
    assert len(directory) == 2


def test_candidates_grow_to_full_hash():
    candidates = agent_id_candidates("0123456789abcdef")
    assert candidates[0] == "smolt-01234567"
    assert candidates[-1] == "smolt-0123456789abcdef"
