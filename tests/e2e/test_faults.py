"""The fault probes of ``bench/faults`` in their quick form, each against the real daemon
process: storage outages, ``kill -9``, SIGTERM with streams, hostile and slow clients, a
short soak. Each test passes when every promise of its probe holds; the probe's table is
the failure message. The long forms are run with ``python -m bench.faults <probe>`` and
recorded in docs/reliability.md."""

from __future__ import annotations

from pathlib import Path

from bench.faults.common import Result
from bench.faults.outage import Unavailable
from bench.faults.probes import run_probe
from tests.support import unavailable


def quick(name: str, tmp_path: Path) -> None:
    try:
        results: list[Result] = run_probe(name, True, tmp_path)
    except Unavailable as error:
        unavailable(str(error))
    tables = "\n\n".join(result.table() for result in results)
    print(tables)  # the figures, shown with pytest -s
    assert all(result.ok for result in results), tables


def test_db_outage_sqlite(tmp_path):
    quick("db-outage-sqlite", tmp_path)


def test_db_outage_postgresql(tmp_path):
    quick("db-outage-postgresql", tmp_path)


def test_redis_outage(tmp_path):
    quick("redis-outage", tmp_path)


def test_kill9(tmp_path):
    quick("kill9", tmp_path)


def test_sigterm_streams(tmp_path):
    quick("sigterm-streams", tmp_path)


def test_hostile(tmp_path):
    quick("hostile", tmp_path)


def test_slowloris(tmp_path):
    quick("slowloris", tmp_path)


def test_soak(tmp_path):
    quick("soak", tmp_path)
