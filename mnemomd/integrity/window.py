"""Session windows and drift state as plain JSON, for a key-value store shared by replicas.

The AIP SDK keeps both in memory inside one client (``WindowManager``,
``detect_integrity_drift``); a gateway with several replicas must keep them where every
replica sees them. These pure functions take the stored JSON (or ``None``) and return
the JSON to store, following the SDK's semantics: a sliding window of at most
``max_size`` checkpoints no older than ``max_age`` seconds, reset when the session
changes; a drift alert once a streak of non-clear verdicts reaches the threshold.

The SDK re-alerts every 5 further non-clear checks of a long streak; here an alert is
raised exactly once per streak (a clear verdict ends the streak), so a stuck agent does
not send a stream of identical webhooks. Loading and saving (with a TTL of about
``max_age``) are the caller's business; ``session_record`` is the whole update of one
checkpoint, so the caller can apply it atomically (an optimistic compare-and-set loop
that re-runs it on the state another replica just wrote). The streak's start is kept in
the state, so :func:`streak_key` names the same streak on every replica.
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


def _streak_start(state: Mapping[str, Any] | None) -> str | None:
    """The id of the checkpoint that started the current streak (None: no streak).

    State written before the start was kept falls back to the oldest id remembered.
    """
    if not isinstance(state, Mapping):
        return None
    start = state.get("streak_start")
    if isinstance(start, str) and start:
        return start
    ids = state.get("streak_checkpoint_ids")
    if isinstance(ids, list) and ids and isinstance(ids[0], str) and ids[0]:
        return ids[0]
    return None


def _drift_json(state: DriftState, now: float, streak_start: str | None) -> dict[str, Any]:
    return {"sustained_nonclear": state.sustained_nonclear,
            "alert_fired": state.alert_fired,
            "streak_start": streak_start if state.sustained_nonclear > 0 else None,
            "streak_checkpoint_ids": state.streak_checkpoint_ids[-MAX_STREAK_ITEMS:],
            "streak_categories": state.streak_categories[-MAX_STREAK_ITEMS:],
            "updated_at": float(now)}


def streak_key(drift_json: Mapping[str, Any] | None, session_id: str) -> str | None:
    """The drift alert's unique key: the session and the checkpoint that started the
    streak (``{session_id}:{checkpoint id}``), None outside a streak.

    The start is written once, by whichever replica saw the streak's first non-clear
    verdict, and read by every later update of the shared state, so replicas that raise
    an alert for the same streak name it the same way and the database keeps one.
    """
    start = _streak_start(drift_json)
    if start is None or not isinstance(drift_json, Mapping) \
            or not isinstance(drift_json.get("sustained_nonclear"), int) \
            or drift_json["sustained_nonclear"] <= 0:
        return None
    return f"{session_id}:{start}"


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
    start = _streak_start(state_json) if state.sustained_nonclear > 0 else None
    if verdict not in VERDICTS:
        return _drift_json(state, now, start), None
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
    if new_state.sustained_nonclear > 0 and start is None:
        start = checkpoint_id or f"at-{now!r}"  # this verdict starts the streak
    if alert is None or already_alerted:
        return _drift_json(new_state, now, start), None
    alert.detection_timestamp = datetime.fromtimestamp(now, UTC).isoformat()
    return _drift_json(new_state, now, start), asdict(alert)


def session_record(state_json: Mapping[str, Any] | None,
                   checkpoint_summary: Mapping[str, Any], now: float, *, agent_id: str,
                   threshold: int = DEFAULT_SUSTAINED_CHECKS_THRESHOLD,
                   ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The session state (``{"window": …, "drift": …}``) after one more real checkpoint,
    and the drift alert if this checkpoint makes the streak reach ``threshold``.

    Window and drift live under one key and change in one step, so a replica that lost
    a race re-runs this on the winner's state: the streak counts both checkpoints and
    only the update that crosses the threshold alerts.
    """
    state = state_json if isinstance(state_json, Mapping) else {}
    window_json = state.get("window")
    drift_json = state.get("drift")
    window = window_add(window_json if isinstance(window_json, Mapping) else None,
                        checkpoint_summary, now)
    categories = checkpoint_summary.get("concern_categories")
    drift, alert = drift_update(
        drift_json if isinstance(drift_json, Mapping) else None,
        str(checkpoint_summary.get("verdict")), now,
        checkpoint_id=str(checkpoint_summary.get("checkpoint_id") or ""),
        categories=[c for c in categories if isinstance(c, str)]
        if isinstance(categories, list) else [],
        agent_id=agent_id, session_id=window["session_id"],
        window=window_entries(window, now), threshold=threshold)
    return {"window": window, "drift": drift}, alert


def session_window(state_json: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The window part of a stored session state (what the next analysis sees)."""
    if not isinstance(state_json, Mapping):
        return None
    window = state_json.get("window")
    return window if isinstance(window, Mapping) else None
