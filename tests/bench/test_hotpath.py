"""The benchmark's pure pieces: trends, flatness, pacing, metric parsing, the mock answer."""

from __future__ import annotations

import json

import pytest

from bench.hotpath import (
    THINKING,
    flat,
    metric_values,
    pace_ms,
    slope,
    thinking_answer,
    trend,
)
from mnemomd.integrity.engine import estimate_tokens


def test_slope_of_a_line_and_of_a_constant():
    assert slope([1.0, 3.0, 5.0, 7.0]) == pytest.approx(2.0)
    assert slope([4.0, 4.0, 4.0]) == 0.0
    assert slope([9.0]) == 0.0


def test_a_flat_series_is_flat():
    series = trend([80.0, 82.0, 79.0, 81.0, 80.5, 81.5])
    assert series.low == 79.0 and series.high == 82.0
    assert series.spread_percent < 3
    assert flat(series, 10)


def test_a_growing_series_drifts_and_is_not_flat():
    series = trend([100.0 + 10 * i for i in range(12)])
    assert series.first == 100.0 and series.last == 210.0
    assert series.drift_percent > 50
    assert not flat(series, 10)


def test_one_spike_is_spread_not_drift():
    series = trend([20.0] * 5 + [60.0] + [20.0] * 6)
    assert series.spread_percent == 200.0
    assert abs(series.drift_percent) < 50
    assert not flat(series, 10)


def test_trend_of_nothing_is_an_error():
    with pytest.raises(ValueError):
        trend([])


def test_pace_offers_the_rate_over_the_connections():
    assert pace_ms(16, 500) == 32
    assert pace_ms(16, 100_000) == 1
    with pytest.raises(ValueError):
        pace_ms(16, 0)


def test_metric_values_by_labels():
    text = ('# HELP x\ngateway_bookkeeping_shed_total{kind="checkpoint"} 3.0\n'
            'gateway_bookkeeping_shed_total{kind="trace_outbox"} 5.0\n'
            "gateway_write_queue_depth 17.0\n")
    assert metric_values(text, "gateway_bookkeeping_shed_total") == {
        '{kind="checkpoint"}': 3.0, '{kind="trace_outbox"}': 5.0}
    assert metric_values(text, "gateway_write_queue_depth") == {"": 17.0}
    assert metric_values(text, "absent") == {}


def test_the_mock_answer_carries_thinking_above_the_default_minimum_evidence():
    base = json.dumps({"content": [{"type": "thinking", "thinking": "short"},
                                   {"type": "text", "text": "hi"}]}).encode()
    answer = json.loads(thinking_answer(base))
    assert answer["content"][0]["thinking"] == THINKING
    assert answer["content"][1] == {"type": "text", "text": "hi"}
    assert estimate_tokens(THINKING) > 100
