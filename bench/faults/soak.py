"""Sustained load with thinking: the outbox stays bounded, every call gets its trace, the
daemon's memory stays flat, and the traces job keeps up with the proxy."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from bench.faults.common import (
    Counts,
    Result,
    Traffic,
    daemons,
    fakes,
    metric,
    readiness,
    rss_bytes,
    settle,
    tracebacks,
    wait_for,
)

#: Seconds between samples of outbox depth, traces and RSS.
SAMPLE_EVERY = 5.0


def soak(quick: bool, workdir: Path, minutes: float | None = None,
         rate: float | None = None) -> Result:
    minutes = minutes if minutes is not None else (1 / 3 if quick else 10.0)
    rate = rate if rate is not None else (20.0 if quick else 100.0)
    interval = 1.0 if quick else 60.0  # quick: a fast traces job; long: the default
    every = 2.0 if quick else SAMPLE_EVERY
    result = Result(f"soak ({minutes:g} min at {rate:g} calls/s with thinking, "
                    f"OBSERVER_TRACES_INTERVAL_SECONDS={interval:g})")
    with fakes() as fake, daemons() as start:
        data = workdir / "data"
        env = fake.env() | {"MNEMOM_DATA_DIR": str(data),
                            "OBSERVER_TRACES_INTERVAL_SECONDS": f"{interval:g}"}
        daemon = start(workdir / "d", env)
        wait_for(lambda: readiness(daemon)[0] == 200, 30)
        counts = Counts(sqlite_path=data / "mnemomd.db")
        samples: list[tuple[float, float, int, int]] = []  # (t, outbox depth, traces, rss)
        with Traffic(daemon.base_url, rate, workers=64) as traffic:
            began = time.monotonic()
            while (now := time.monotonic()) - began < minutes * 60:
                samples.append((now - began, metric(daemon, "gateway_outbox_depth"),
                                counts.query("SELECT COUNT(*) FROM ap_traces"),
                                rss_bytes(daemon.proc.pid)))
                time.sleep(max(0.0, began + len(samples) * every - time.monotonic()))
        duration = time.monotonic() - began
        succeeded = traffic.succeeded
        calls = len(traffic.calls)
        result.figure("calls made / achieved rate", f"{calls:,} / {calls / duration:.1f} per s")
        result.check("calls failed", calls - succeeded, "0", calls == succeeded)
        drained_from = time.monotonic()
        stored = settle(counts, succeeded, timeout=interval * 2 + 120)
        drain = time.monotonic() - drained_from
        result.check("traces / calls", f"{stored['ap_traces']:,} / {succeeded:,}",
                     "every call has its trace", stored["ap_traces"] == succeeded)
        result.check("checkpoints / calls", f"{stored['integrity_checkpoints']:,} / {succeeded:,}",
                     "every call has its checkpoint",
                     stored["integrity_checkpoints"] == succeeded)
        result.figure("time to drain the outbox after the load", f"{drain:.1f} s")
        third = max(1, len(samples) // 3)
        middle = [s[1] for s in samples[third:2 * third]] or [0.0]
        last = [s[1] for s in samples[2 * third:]] or [0.0]
        bound = 1.5 * statistics.mean(middle) + rate * (interval + every)
        result.check("outbox depth: max / mean of middle third / mean of last third",
                     f"{max(s[1] for s in samples):,.0f} / {statistics.mean(middle):,.0f} / "
                     f"{statistics.mean(last):,.0f}",
                     "bounded: last third ≤ 1.5 × middle + one traces interval of calls",
                     statistics.mean(last) <= bound)
        warm = samples[len(samples) // 4][3]
        end = samples[-1][3]
        change = (end - warm) / warm * 100
        result.check("RSS after the first quarter → at the end",
                     f"{warm / 2**20:.1f} MiB → {end / 2**20:.1f} MiB ({change:+.1f} %)",
                     "flat within ±10 %", abs(change) <= 10)
        built = samples[-1][2] - samples[0][2]
        span = samples[-1][0] - samples[0][0] or 1.0
        result.figure("traces built during the load (sustained traces/s)",
                      f"{built:,} ({built / span:.1f}/s against {rate:g} calls/s)")
        result.figure("peak RSS", f"{max(s[3] for s in samples) / 2**20:.1f} MiB")
        result.figure("tracebacks in the log", tracebacks(daemon))
        daemon.stop(60)
    return result
