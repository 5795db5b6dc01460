"""The durable local spool (SPEC §15): bookkeeping the database could not take, on disk.

A spool is a directory of segment files, ``<sequence>.spool``, each a run of records, one
per line: ``<crc32 hex> <json>``. A batch is appended with one ``write`` and one
``fsync``, so a record is acknowledged only once it is on disk; a torn last line after
``kill -9`` fails its checksum and is skipped (it was never acknowledged). Segments are
replayed oldest first and deleted only after every record in them is in the database,
so a crash during replay replays a segment again (the writes are idempotent).

Everything here blocks on the file system: the write queue calls it on a thread of its
own, never on the reactor. The functions hold no state the queue does not pass in, apart
from the open segment.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

SEGMENT_SUFFIX = ".spool"
#: A segment is closed and a new one opened past this size, so replay frees space early.
SEGMENT_BYTES = 8 * 1024 * 1024
_SEGMENT_NAME = re.compile(r"^(\d{12})\.spool$")


@dataclass(frozen=True)
class SpoolRecord:
    """One write as the spool keeps it."""

    kind: str
    key: str
    row: dict[str, Any]
    expires_at: int | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind, "key": self.key, "row": self.row}
        if self.expires_at is not None:
            data["expires_at"] = self.expires_at
        return data


def encode_record(record: SpoolRecord) -> bytes:
    body = json.dumps(record.to_json(), separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")
    return b"%08x %s\n" % (zlib.crc32(body), body)


def decode_line(line: bytes) -> SpoolRecord | None:
    """The record of one line, or None when the line is torn or damaged."""
    if not line.endswith(b"\n") or len(line) < 11 or line[8:9] != b" ":
        return None
    body = line[9:-1]
    try:
        if int(line[:8], 16) != zlib.crc32(body):
            return None
        data = json.loads(body)
        return SpoolRecord(str(data["kind"]), str(data["key"]), dict(data["row"]),
                           data.get("expires_at"))
    except (ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True)
class SegmentContents:
    records: list[SpoolRecord]
    #: Lines that failed their checksum (a torn tail after a crash, or damage).
    damaged: int


def read_segment(path: str) -> SegmentContents:
    records, damaged = [], 0
    with open(path, "rb") as f:
        for line in f:
            record = decode_line(line)
            if record is None:
                damaged += 1
            else:
                records.append(record)
    return SegmentContents(records, damaged)


def orphan_spools(root: str, worker: int | None, workers: int) -> tuple[str, list[str]]:
    """(this process's spool directory, the directories it adopts at start).

    A single process spools to ``root``; worker ``i`` of several to ``root/worker-<i>``.
    Whatever no running process would replay is adopted by the single process or worker 0:
    every worker's spool when going back to one process, the single process's and those
    of workers beyond the count when going to several.
    """
    def workers_in(lowest: int) -> list[str]:
        try:
            names = os.listdir(root)
        except FileNotFoundError:
            return []
        found = []
        for name in sorted(names):
            if name.startswith("worker-") and name[7:].isdigit() and int(name[7:]) >= lowest:
                found.append(os.path.join(root, name))
        return found

    if worker is None:
        return root, workers_in(0)
    own = os.path.join(root, f"worker-{worker}")
    if worker != 0:
        return own, []
    return own, [root, *workers_in(workers)]


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Segments in ``directory``. Not thread-safe: one thread calls it at a time."""

    def __init__(self, directory: str, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = directory
        self._segment_bytes = segment_bytes
        self._open: Any = None
        self._open_path: str | None = None
        self._open_size = 0

    # -- state ----------------------------------------------------------------------------

    def segments(self) -> list[str]:
        """Segment paths, oldest first."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return [os.path.join(self.directory, n) for n in sorted(names)
                if _SEGMENT_NAME.match(n)]

    def census(self) -> tuple[int, int]:
        """(records, bytes) on disk: run once at startup, then the queue keeps count."""
        records = size = 0
        for path in self.segments():
            contents = read_segment(path)
            records += len(contents.records)
            size += os.path.getsize(path)
        return records, size

    # -- appending ------------------------------------------------------------------------

    def _next_path(self) -> str:
        existing = self.segments()
        last = int(os.path.basename(existing[-1])[:12]) if existing else 0
        return os.path.join(self.directory, f"{last + 1:012d}{SEGMENT_SUFFIX}")

    def append(self, records: Iterable[SpoolRecord]) -> int:
        """Write ``records`` durably (one fsync); returns the bytes written."""
        data = b"".join(encode_record(r) for r in records)
        if not data:
            return 0
        if self._open is None or self._open_size >= self._segment_bytes:
            self.close_segment()
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            self._open_path = self._next_path()
            fd = os.open(self._open_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._open = os.fdopen(fd, "ab", buffering=0)
            self._open_size = 0
            _fsync_directory(self.directory)
        self._open.write(data)
        os.fsync(self._open.fileno())
        self._open_size += len(data)
        return len(data)

    def close_segment(self) -> None:
        """Close the segment being appended to; the next append opens a new one."""
        if self._open is not None:
            self._open.close()
        self._open = None
        self._open_path = None
        self._open_size = 0

    def adopt(self, directories: list[str]) -> int:
        """Move the segments of spools no process will replay (a worker that no longer
        exists) into this one, in order; returns how many were moved."""
        moved = 0
        for directory in directories:
            orphan = Spool(directory)
            for path in orphan.segments():
                os.makedirs(self.directory, mode=0o700, exist_ok=True)
                if self._open is not None:
                    self.close_segment()
                os.rename(path, self._next_path())
                moved += 1
        if moved:
            _fsync_directory(self.directory)
        return moved

    # -- replay ---------------------------------------------------------------------------

    def oldest(self) -> tuple[str, SegmentContents] | None:
        """The oldest segment and its records, closing it first if it is the open one."""
        segments = self.segments()
        if not segments:
            return None
        path = segments[0]
        if path == self._open_path:
            self.close_segment()
        return path, read_segment(path)

    def remove(self, path: str) -> int:
        """Delete a replayed segment; returns the bytes freed."""
        size = os.path.getsize(path)
        os.unlink(path)
        _fsync_directory(self.directory)
        return size
