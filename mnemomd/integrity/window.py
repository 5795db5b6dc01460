"""Session windows and drift state as plain JSON, for a key-value store shared by replicas.

The AIP SDK keeps both in memory inside one client (``WindowManager``,
``detect_integrity_drift``); a gateway with several replicas must keep them where every
replica sees them. These pure functions take the stored JSON (or ``None``) and return
the JSON to store, following the SDK's semantics: a sliding window of at most
``max_size`` checkpoints no older than ``max_age`` seconds, reset when the session
changes; a drift alert once a streak of non-clear verdicts reaches the threshold.

The SDK re-alerts every 5 further non-clear checks of a long streak; here an alert is
raised exactly once per streak (a clear verdict ends the streak), so a stuck agent does
not send a stream of identical webhooks. Loading, saving (with a TTL of about
``max_age``) and concurrent updates are the caller's business.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from aip.analysis.drift import DriftState, detect_integrity_drift
from aip.constants import (
    DEFAULT_SUSTAINED_CHECKS_THRESHOLD,
    DEFAULT_WINDOW_MAX_AGE_SECONDS,
    DEFAULT_WINDOW_MAX_SIZE,
    MIN_WINDOW_SIZE,
)
from aip.schemas.concern import IntegrityConcern

from mnemomd.integrity.engine import sdk_checkpoint

VERDICTS = ("clear", "review_needed", "boundary_violation")
#: Longest reasoning summary kept per window entry (the prompt shows the window).
MAX_SUMMARY_CHARS = 500
#: Most checkpoint ids / concern categories remembered for one streak.
MAX_STREAK_ITEMS = 100


def _entries(state: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    if not isinstance(state, Mapping) or not isinstance(state.get("checkpoints"), list):
        return []
    return [dict(e) for e in state["checkpoints"]
            if isinstance(e, Mapping) and e.get("verdict") in VERDICTS
            and isinstance(e.get("at"), int | float)]


def window_entries(state_json: Mapping[str, Any] | None, now: float,
                   max_age: float = DEFAULT_WINDOW_MAX_AGE_SECONDS) -> list[dict[str, Any]]:
    """The window's checkpoints still young enough at ``now``, oldest first.

    This is what ``AnalysisRequest.window_checkpoints`` and ``drift_update(window=…)``
    take.
    """
    return [e for e in _entries(state_json) if now - e["at"] <= max_age]


def window_add(state_json: Mapping[str, Any] | None, checkpoint_summary: Mapping[str, Any],
               now: float, max_size: int = DEFAULT_WINDOW_MAX_SIZE,
               max_age: float = DEFAULT_WINDOW_MAX_AGE_SECONDS) -> dict[str, Any]:
    """The window with ``checkpoint_summary`` (``AnalysisOutcome.window_entry()``) added.

    As ``WindowManager.push`` in sliding mode with session boundary ``reset``: a new
    session id starts an empty window, entries older than ``max_age`` are dropped, the
    oldest entry makes room when the window is full. The input is not modified.
    """
    if max_size < MIN_WINDOW_SIZE:
        raise ValueError(f"window max_size must be >= {MIN_WINDOW_SIZE}")
    state = state_json if isinstance(state_json, Mapping) else {}
    session_id = str(checkpoint_summary.get("session_id") or state.get("session_id") or "")
    total = state.get("total_checks")
    total = total if isinstance(total, int) else 0
    if state.get("session_id") not in (None, "", session_id):
        entries: list[dict[str, Any]] = []
        total = 0
    else:
        entries = window_entries(state, now, max_age)
    while len(entries) >= max_size:
        entries.pop(0)
    verdict = checkpoint_summary.get("verdict")
    if verdict not in VERDICTS:
        raise ValueError("checkpoint summary needs a verdict of " + ", ".join(VERDICTS))
    categories = checkpoint_summary.get("concern_categories")
    duration = checkpoint_summary.get("analysis_duration_ms")
    entries.append({
        "checkpoint_id": str(checkpoint_summary.get("checkpoint_id") or ""),
        "verdict": verdict,
        "reasoning_summary": str(checkpoint_summary.get("reasoning_summary") or "")[
            :MAX_SUMMARY_CHARS],
        "concern_categories": [c for c in categories if isinstance(c, str)]
        if isinstance(categories, list) else [],
        "analysis_duration_ms": float(duration) if isinstance(duration, int | float) else 0.0,
        "at": float(now),
    })
    return {"session_id": session_id, "checkpoints": entries, "total_checks": total + 1,
            "updated_at": float(now)}


def window_summary(state_json: Mapping[str, Any] | None, now: float,
                   max_size: int = DEFAULT_WINDOW_MAX_SIZE,
                   max_age: float = DEFAULT_WINDOW_MAX_AGE_SECONDS,
                   drift_alert_active: bool = False) -> dict[str, Any]:
    """``WindowManager.get_summary()`` as JSON: size, verdict counts, integrity ratio."""
    entries = window_entries(state_json, now, max_age)
    counts = {v: sum(1 for e in entries if e["verdict"] == v) for v in VERDICTS}
    return {"size": len(entries), "max_size": max_size, "verdicts": counts,
            "integrity_ratio": counts["clear"] / len(entries) if entries else 1.0,
            "drift_alert_active": drift_alert_active}


def _drift_state(state: Mapping[str, Any] | None) -> DriftState:
    if not isinstance(state, Mapping):
        return DriftState()
    sustained = state.get("sustained_nonclear")
    ids = state.get("streak_checkpoint_ids")
    categories = state.get("streak_categories")
    return DriftState(
        sustained_nonclear=sustained if isinstance(sustained, int) and sustained > 0 else 0,
        alert_fired=state.get("alert_fired") is True,
        streak_checkpoint_ids=[i for i in ids if isinstance(i, str)]
        if isinstance(ids, list) else [],
        streak_categories=[c for c in categories if isinstance(c, str)]
        if isinstance(categories, list) else [])


def _drift_json(state: DriftState, now: float) -> dict[str, Any]:
    return {"sustained_nonclear": state.sustained_nonclear,
            "alert_fired": state.alert_fired,
            "streak_checkpoint_ids": state.streak_checkpoint_ids[-MAX_STREAK_ITEMS:],
            "streak_categories": state.streak_categories[-MAX_STREAK_ITEMS:],
            "updated_at": float(now)}


def drift_update(state_json: Mapping[str, Any] | None, verdict: str, now: float, *,
                 checkpoint_id: str = "", categories: Sequence[str] = (),
                 agent_id: str = "", session_id: str = "",
                 window: Sequence[Mapping[str, Any]] = (),
                 threshold: int = DEFAULT_SUSTAINED_CHECKS_THRESHOLD,
                 ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The drift state after one more verdict, and the drift alert (``ida-…``) if one is
    due: only on the check that makes a non-clear streak reach ``threshold``.

    ``window`` is the session window after this checkpoint was added (its clear ratio
    is the alert's ``integrity_similarity``); ``categories`` are the checkpoint's concern
    categories (the alert's drift direction). A verdict other than the three of AIP
    (``skipped``, ``error``) neither extends nor ends a streak.
    """
    state = _drift_state(state_json)
    if verdict not in VERDICTS:
        return _drift_json(state, now), None
    entry = {"checkpoint_id": checkpoint_id, "session_id": session_id, "verdict": verdict}
    checkpoint = sdk_checkpoint(entry)
    checkpoint.agent_id = agent_id
    # Only the category of a concern matters to drift detection.
    checkpoint.concerns = [
        IntegrityConcern(category=c, severity="low",  # type: ignore[arg-type]
                         description="", evidence="", relevant_card_field=None,
                         relevant_conscience_value=None)
        for c in categories if isinstance(c, str)]
    window_checkpoints = [sdk_checkpoint(e) for e in window if isinstance(e, Mapping)]
    already_alerted = state.alert_fired
    new_state, alert = detect_integrity_drift(state, checkpoint, window_checkpoints,
                                              threshold)
    if alert is None or already_alerted:
        return _drift_json(new_state, now), None
    alert.detection_timestamp = datetime.fromtimestamp(now, UTC).isoformat()
    return _drift_json(new_state, now), asdict(alert)
