"""Session windows and drift state as JSON (what replicas share through the KV store)."""

from __future__ import annotations

import json

import pytest

from mnemomd.integrity.window import (
    drift_update,
    session_record,
    session_window,
    streak_key,
    window_add,
    window_entries,
    window_summary,
)


def entry(verdict: str, n: int = 0, session: str = "s1", categories=()) -> dict:
    return {"checkpoint_id": f"ic-{n}", "session_id": session, "verdict": verdict,
            "reasoning_summary": f"check {n}", "concern_categories": list(categories),
            "analysis_duration_ms": 12.5}


def test_window_slides_at_max_size():
    state = None
    for n in range(12):
        state = window_add(state, entry("clear", n), now=1000.0 + n)
    ids = [e["checkpoint_id"] for e in state["checkpoints"]]
    assert ids == [f"ic-{n}" for n in range(2, 12)]
    assert state["total_checks"] == 12
    json.dumps(state)  # storable as is


def test_window_drops_entries_older_than_max_age():
    state = window_add(None, entry("review_needed", 1), now=0.0)
    state = window_add(state, entry("clear", 2), now=3000.0)
    assert [e["checkpoint_id"] for e in window_entries(state, now=3600.0)] == ["ic-1", "ic-2"]
    assert [e["checkpoint_id"] for e in window_entries(state, now=3601.0)] == ["ic-2"]
    state = window_add(state, entry("clear", 3), now=3601.0)
    assert [e["checkpoint_id"] for e in state["checkpoints"]] == ["ic-2", "ic-3"]


def test_window_resets_on_a_new_session():
    state = window_add(None, entry("clear", 1, session="a"), now=1.0)
    state = window_add(state, entry("clear", 2, session="b"), now=2.0)
    assert state["session_id"] == "b"
    assert [e["checkpoint_id"] for e in state["checkpoints"]] == ["ic-2"]
    assert state["total_checks"] == 1


def test_window_add_does_not_modify_its_input():
    state = window_add(None, entry("clear", 1), now=1.0)
    before = json.dumps(state)
    window_add(state, entry("clear", 2), now=2.0)
    assert json.dumps(state) == before


def test_window_summary_counts_like_the_sdk():
    state = None
    for n, verdict in enumerate(["clear", "review_needed", "clear", "boundary_violation"]):
        state = window_add(state, entry(verdict, n), now=float(n))
    summary = window_summary(state, now=10.0)
    assert summary["size"] == 4
    assert summary["verdicts"] == {"clear": 2, "review_needed": 1, "boundary_violation": 1}
    assert summary["integrity_ratio"] == 0.5
    assert window_summary(None, now=0.0)["integrity_ratio"] == 1.0


def test_corrupt_state_is_treated_as_empty():
    for bad in ({"checkpoints": "nope"}, {"checkpoints": [{"verdict": "bogus"}, 7]}, []):
        state = window_add(bad, entry("clear", 1), now=5.0)  # type: ignore[arg-type]
        assert [e["checkpoint_id"] for e in state["checkpoints"]] == ["ic-1"]
    assert drift_update({"sustained_nonclear": "x", "alert_fired": "yes"}, "clear", 1.0)[1] \
        is None


def test_window_rejects_sizes_below_the_sdk_minimum():
    with pytest.raises(ValueError):
        window_add(None, entry("clear"), now=0.0, max_size=2)


def run_drift(verdicts: list[str], threshold: int = 3) -> tuple[list[int], list[dict]]:
    """Feed verdicts through window and drift state; return where alerts were raised."""
    window = drift = None
    at, alerts = [], []
    for n, verdict in enumerate(verdicts):
        categories = ["prompt_injection"] if verdict != "clear" else []
        window = window_add(window, entry(verdict, n, categories=categories), now=float(n))
        drift, alert = drift_update(
            drift, verdict, float(n), checkpoint_id=f"ic-{n}", categories=categories,
            agent_id="agent-1", session_id="s1", window=window_entries(window, float(n)),
            threshold=threshold)
        drift = json.loads(json.dumps(drift))  # through the store and back
        if alert is not None:
            at.append(n)
            alerts.append(alert)
    return at, alerts


def test_one_alert_per_streak():
    r, b, c = "review_needed", "boundary_violation", "clear"
    verdicts = [c, r, b, c,                   # a streak of 2: below the threshold
                r, r, b, b, r, b, b, b, b, b,  # a long streak: one alert, at its 3rd check
                c, c,
                b, b, b, r,                   # a new streak: one more alert
                c]
    at, alerts = run_drift(verdicts)
    assert at == [6, 18]
    first = alerts[0]
    assert first["alert_id"].startswith("ida-")
    assert first["checkpoint_ids"] == ["ic-4", "ic-5", "ic-6"]
    assert first["sustained_checks"] == 3
    assert first["drift_direction"] == "injection_pattern"
    assert first["agent_id"] == "agent-1" and first["session_id"] == "s1"
    assert first["detection_timestamp"].startswith("1970-01-01T00:00:06")
    assert alerts[0]["alert_id"] != alerts[1]["alert_id"]
    # integrity_similarity: clear share of the window after this checkpoint
    assert first["integrity_similarity"] == pytest.approx(2 / 7)
    assert first["severity"] == "high"


def test_threshold_one_alerts_on_every_streak_once():
    at, _ = run_drift(["review_needed", "review_needed", "clear", "boundary_violation",
                       "clear", "clear", "review_needed"], threshold=1)
    assert at == [0, 3, 6]


def test_other_verdicts_neither_extend_nor_end_a_streak():
    state, _ = drift_update(None, "review_needed", 0.0)
    state, _ = drift_update(state, "review_needed", 1.0)
    state, alert = drift_update(state, "skipped", 2.0)
    assert alert is None and state["sustained_nonclear"] == 2
    state, alert = drift_update(state, "review_needed", 3.0)
    assert alert is not None


def stored(state):
    """Through the store and back, as every replica reads it."""
    return json.loads(json.dumps(state))


def record(state, verdict: str, n: int):
    categories = ["prompt_injection"] if verdict != "clear" else []
    new, alert = session_record(state, entry(verdict, n, categories=categories),
                                float(n), agent_id="agent-1")
    return stored(new), alert


def test_streak_key_names_the_streak_by_its_first_checkpoint():
    r, c = "review_needed", "clear"
    state, keys = None, []
    for n, verdict in enumerate([c, r, r, r, r, c, r, r, r]):
        state, _ = record(state, verdict, n)
        keys.append(streak_key(state["drift"], "s1"))
    assert keys == [None, "s1:ic-1", "s1:ic-1", "s1:ic-1", "s1:ic-1", None,
                    "s1:ic-6", "s1:ic-6", "s1:ic-6"]
    assert streak_key(None, "s1") is None


def test_streak_key_of_state_written_without_a_start_uses_the_oldest_id():
    old = {"sustained_nonclear": 2, "alert_fired": False,
           "streak_checkpoint_ids": ["ic-7", "ic-8"], "streak_categories": []}
    assert streak_key(old, "s1") == "s1:ic-7"
    new, _ = drift_update(old, "review_needed", 9.0, checkpoint_id="ic-9")
    assert streak_key(new, "s1") == "s1:ic-7"


def test_session_record_keeps_window_and_drift_in_one_state():
    state, alert = record(None, "review_needed", 1)
    assert alert is None
    assert [e["checkpoint_id"] for e in session_window(state)["checkpoints"]] == ["ic-1"]
    assert state["drift"]["sustained_nonclear"] == 1
    state, _ = record(state, "review_needed", 2)
    state, alert = record(state, "boundary_violation", 3)
    assert alert is not None and alert["checkpoint_ids"] == ["ic-1", "ic-2", "ic-3"]
    assert alert["integrity_similarity"] == 0.0  # the window it saw holds all three
    assert session_window(None) is None and session_window({"window": 3}) is None


def test_replica_that_lost_the_race_re_runs_on_the_winner_and_does_not_alert():
    # Two replicas read the same state (a streak of 2), each with a non-clear verdict.
    state = None
    for n in (1, 2):
        state, _ = record(state, "review_needed", n)
    a_state, a_alert = record(state, "review_needed", 3)
    b_state, b_alert = record(state, "boundary_violation", 4)
    assert a_alert is not None and b_alert is not None  # both would alert: the bug
    assert streak_key(a_state["drift"], "s1") == streak_key(b_state["drift"], "s1")
    # A stores first; B's compare-and-set fails and it re-runs on A's state.
    b_state, b_alert = record(a_state, "boundary_violation", 4)
    assert b_alert is None
    assert b_state["drift"]["sustained_nonclear"] == 4
    assert [e["checkpoint_id"] for e in b_state["window"]["checkpoints"]] == \
        ["ic-1", "ic-2", "ic-3", "ic-4"]
