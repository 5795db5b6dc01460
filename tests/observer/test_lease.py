"""Job leases over the KV store: one holder at a time, released after each run."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from mnemomd.kv import MemoryKeyValueStore
from mnemomd.observer.lease import leased


def test_only_one_owner_runs_at_a_time_and_the_lease_is_released():
    kv = MemoryKeyValueStore(Clock())
    running: list[Deferred] = []
    calls = []

    def slow():
        calls.append("a")
        d: Deferred = Deferred()
        running.append(d)
        return d

    a = leased(kv, "retention", "owner-a", 60, slow)
    b = leased(kv, "retention", "owner-b", 60, lambda: calls.append("b") or succeed(None))
    first = a()
    assert b().called and calls == ["a"], "b must not run while a holds the lease"
    running[0].callback("done")
    assert first.result == "done"
    b()
    assert calls == ["a", "b"]


def test_lease_released_when_the_job_fails():
    kv = MemoryKeyValueStore(Clock())
    failing = leased(kv, "nudges", "owner-a", 60, lambda: fail(RuntimeError("boom")))
    d = failing()
    d.addErrback(lambda f: f.trap(RuntimeError))
    ran = []
    leased(kv, "nudges", "owner-b", 60, lambda: ran.append(True))()
    assert ran == [True]


def test_lease_of_a_dead_owner_expires():
    clock = Clock()
    kv = MemoryKeyValueStore(clock)
    never: Deferred = Deferred()
    leased(kv, "retention", "dead", 60, lambda: never)()
    ran = []
    job = leased(kv, "retention", "alive", 60, lambda: ran.append(True))
    job()
    assert ran == []
    clock.advance(61)
    job()
    assert ran == [True]


def test_kv_failure_means_no_run():
    class Broken:
        def set_if_absent(self, *args):
            return fail(ConnectionError("down"))

    ran = []
    d = leased(Broken(), "retention", "me", 60, lambda: ran.append(True))()
    assert d.called and ran == []
