"""The spool's files: records, torn lines, and spools left by workers that are gone."""

from __future__ import annotations

import os
from pathlib import Path

from mnemomd.storage.spool import (
    Spool,
    SpoolRecord,
    decode_line,
    encode_record,
    orphan_spools,
    read_segment,
)


def record(n: int) -> SpoolRecord:
    return SpoolRecord("checkpoint", f"ic-{n}", {"id": f"ic-{n}", "note": "é"}, None)


def test_a_record_round_trips_and_a_damaged_line_is_refused():
    line = encode_record(record(1))
    assert decode_line(line) == record(1)
    assert decode_line(line[:-2] + b"\n") is None  # torn
    assert decode_line(line.replace(b"ic-1", b"ic-2", 1)) is None  # checksum
    assert decode_line(b"not a record\n") is None


def test_a_single_process_adopts_every_workers_spool(tmp_path: Path):
    root = tmp_path / "spool"
    for worker in (0, 3):
        Spool(str(root / f"worker-{worker}")).append([record(worker)])
    own, orphans = orphan_spools(str(root), None, 1)
    assert own == str(root)
    assert orphans == [str(root / "worker-0"), str(root / "worker-3")]
    spool = Spool(own)
    assert spool.adopt(orphans) == 2
    assert spool.census()[0] == 2
    assert not os.listdir(root / "worker-3")


def test_worker_zero_adopts_the_single_process_spool_and_workers_beyond_the_count(
        tmp_path: Path):
    root = tmp_path / "spool"
    Spool(str(root)).append([record(1)])
    Spool(str(root / "worker-1")).append([record(2)])
    Spool(str(root / "worker-2")).append([record(3)])
    own, orphans = orphan_spools(str(root), 0, 2)
    assert own == str(root / "worker-0")
    assert orphans == [str(root), str(root / "worker-2")]  # worker 1 still runs
    assert orphan_spools(str(root), 1, 2) == (str(root / "worker-1"), [])
    spool = Spool(own)
    assert spool.adopt(orphans) == 2
    keys = sorted(r.key for path in spool.segments() for r in read_segment(path).records)
    assert keys == ["ic-1", "ic-3"]
