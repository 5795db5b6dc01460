"""The probes by name, and how each is run (quick or long)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bench.faults.clients import hostile, slowloris
from bench.faults.common import Result
from bench.faults.crash import kill9, sigterm_streams
from bench.faults.outage import db_outage, db_outage_postgresql, db_outage_sqlite, redis_outage
from bench.faults.soak import soak

#: probe name → function(quick, workdir, **options) returning one result or several.
PROBES: dict[str, Callable[..., Result | list[Result]]] = {
    "db-outage": db_outage,
    "db-outage-sqlite": db_outage_sqlite,
    "db-outage-postgresql": db_outage_postgresql,
    "redis-outage": redis_outage,
    "kill9": kill9,
    "sigterm-streams": sigterm_streams,
    "hostile": hostile,
    "slowloris": slowloris,
    "soak": soak,
}


def run_probe(name: str, quick: bool, workdir: Path, minutes: float | None = None,
              rate: float | None = None) -> list[Result]:
    """Run one probe; its results (``db-outage`` gives one per engine)."""
    probe = PROBES[name]
    if name == "soak":
        returned = soak(quick, workdir, minutes=minutes, rate=rate)
    else:
        returned = probe(quick, workdir)
    return returned if isinstance(returned, list) else [returned]
