"""Job leases over the KV store and the database: one holder at a time, renewed while
a run goes on, released after each run."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, gatherResults, inlineCallbacks, succeed
from twisted.internet.task import Clock
from twisted.trial import unittest

from mnemomd.kv import MemoryKeyValueStore
from mnemomd.observer.lease import DatabaseLeases, leased
from tests.storage.engines import MigratedDatabase


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


def test_renewed_while_the_job_runs_past_its_ttl():
    clock = Clock()
    kv = MemoryKeyValueStore(clock)
    never: Deferred = Deferred()
    leased(kv, "traces", "slow", 60, lambda: never, clock=clock)()
    ran = []
    other = leased(kv, "traces", "other", 60, lambda: ran.append(True))
    for _ in range(9):  # 180 s: three times the ttl, renewed every 20 s
        clock.advance(20)
        other()
    assert ran == [], "the lease must be renewed while its job runs"
    never.callback(None)  # done: released, and renewal stops
    assert clock.getDelayedCalls() == []
    other()
    assert ran == [True]


def test_without_a_clock_a_long_run_loses_its_lease():
    clock = Clock()
    kv = MemoryKeyValueStore(clock)
    leased(kv, "traces", "slow", 60, lambda: Deferred())()
    ran = []
    clock.advance(61)
    leased(kv, "traces", "other", 60, lambda: ran.append(True))()
    assert ran == [True]


class DatabaseLeaseTests(MigratedDatabase):
    @inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.leases = DatabaseLeases(self.db, self.clock)

    @inlineCallbacks
    def test_one_holder_at_a_time(self):
        other = DatabaseLeases(self.open_database(), self.clock)
        a, b = yield gatherResults([self.leases.acquire("traces", "a", 60),
                                    other.acquire("traces", "b", 60)])
        self.assertEqual(sorted([a, b]), [False, True])
        holder, loser = ("a", "b") if a else ("b", "a")
        self.assertTrue((yield self.leases.acquire("traces", holder, 60)))  # re-entrant
        self.assertFalse((yield self.leases.acquire("traces", loser, 60)))
        self.assertTrue((yield self.leases.acquire("drift", loser, 60)))  # per job

    @inlineCallbacks
    def test_an_expired_lease_is_taken_over(self):
        self.assertTrue((yield self.leases.acquire("traces", "dead", 60)))
        self.clock.advance(60)
        self.assertFalse((yield self.leases.acquire("traces", "b", 60)))
        self.clock.advance(1)
        self.assertTrue((yield self.leases.acquire("traces", "b", 60)))
        self.assertFalse((yield self.leases.renew("traces", "dead", 60)))
        self.assertFalse((yield self.leases.acquire("traces", "dead", 60)))

    @inlineCallbacks
    def test_only_the_owner_releases(self):
        yield self.leases.acquire("traces", "a", 60)
        yield self.leases.release("traces", "b")
        self.assertFalse((yield self.leases.acquire("traces", "b", 60)))
        yield self.leases.release("traces", "a")
        self.assertTrue((yield self.leases.acquire("traces", "b", 60)))

    @inlineCallbacks
    def test_renewal_keeps_it_past_the_original_ttl(self):
        yield self.leases.acquire("traces", "a", 60)
        for _ in range(4):
            self.clock.advance(40)
            self.assertTrue((yield self.leases.renew("traces", "a", 60)))
            self.assertFalse((yield self.leases.acquire("traces", "b", 60)))
        self.assertFalse((yield self.leases.renew("traces", "b", 60)))
        self.clock.advance(61)
        self.assertTrue((yield self.leases.acquire("traces", "b", 60)))

    @inlineCallbacks
    def test_leased_job_on_the_database(self):
        ran = []
        yield leased(self.leases, "retention", "a", 60, lambda: ran.append("a"),
                     clock=self.clock)()
        yield leased(self.leases, "retention", "b", 60, lambda: ran.append("b"),
                     clock=self.clock)()
        self.assertEqual(ran, ["a", "b"])  # released after each run
        yield self.leases.acquire("retention", "c", 60)
        yield leased(self.leases, "retention", "a", 60, lambda: ran.append("a"))()
        self.assertEqual(ran, ["a", "b"])


class SQLiteDatabaseLeaseTests(DatabaseLeaseTests, unittest.TestCase):
    engine = "sqlite"


class PostgresDatabaseLeaseTests(DatabaseLeaseTests, unittest.TestCase):
    engine = "postgresql"
