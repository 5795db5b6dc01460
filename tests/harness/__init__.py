"""The daemon in the test's process: the request path tested in milliseconds, no sockets.

``InProcessDaemon(data_dir, settings).start()`` builds the daemon with the real
``make_service`` (the one builder, nothing wired by hand) on a memory reactor, in the
manner of ``treq.testing.RequestTraversalAgent``:

- **Front door.** The test's client is Twisted's ``Agent``; its connections reach the
  ``GatewayFactory`` the service listened with, through ``twisted.test.iosim`` transports.
  ``daemon.request(method, path, headers, body)`` returns an :class:`Exchange` with the
  status, headers and each body chunk as it arrived.
- **Outside parties.** The daemon's own clients (the proxy's upstream pool, the analysis
  backend) are not touched: they connect through the reactor, and the memory reactor's
  pluggable name resolver sends them to :class:`MemoryNetwork`, which serves the fake
  provider of ``tests.fakes.upstream`` as ``upstream.test`` and the fake analysis model of
  ``tests.fakes.analysis`` as ``analysis.test``. Other names do not resolve and unserved
  ports refuse: nothing leaves the process. Upstream URLs are ``http://`` here (no TLS).
  ``daemon.serve(name, resource)`` adds another party.
- **Providers.** ``InProcessDaemon(..., providers=PROVIDERS.including(acme.PROVIDER))``
  hands a test's registry to ``make_service``; ``configure`` changes the loaded
  configuration last, for what the settings table has no row for (the base URL of that
  provider, or choosing it as the analysis backend).
- **Storage.** SQLite through adbapi needs pool threads, which a memory reactor does not
  run, and waiting on real threads would make every flush a race. ``make_service`` takes
  ``database_threads`` (handed to ``Database``) and ``spool_threads`` (the write queue's
  file thread): the harness passes a :class:`CallingThread` for each, which runs each
  call on the calling thread when asked and hands the result back through
  ``callFromThread`` on the reactor's next turn, as a pool thread would. Two, so that a
  failed database (``fail_storage``) does not fail the spool's disk. The SQL, the
  connection set-up and the Deferred plumbing are production's. The KV store is the
  in-memory one.
- **Time and bytes.** Nothing moves until ``daemon.flush()`` (due calls, new connections
  and buffered bytes, until all is quiet), and time passes only by ``daemon.advance(s)``:
  a timeout is a clock step, never a sleep. The clock starts at 2026-01-01.

The fakes hold on demand: ``x-fake-scenario: gated:<id>`` streams one event per
``daemon.upstream.release(id)``, and a ``"hold"`` in ``daemon.analysis.script`` keeps an
analysis answer until ``daemon.release_analysis()``, so a test proves what waits for what
by cause. ``daemon.fail_storage(database=…, kv=…)`` makes the database (every transaction
fails as an unreachable SQLite file does) and the KV store (as an unreachable Redis) go
away until ``daemon.restore_storage()``; ``daemon.threads.stall()`` makes the database
hang instead. ``daemon.rows(sql)`` reads the database through the daemon's own connection;
``daemon.take_errors()`` returns its log messages at error and above.

What needs a process (signals, sd_notify, real sockets and TLS, the SDKs, PostgreSQL
across replicas) stays in ``tests/e2e``.
"""

from tests.harness.client import Exchange
from tests.harness.daemon import (
    ANALYSIS_HOST,
    GATEWAY_HOST,
    UPSTREAM_HOST,
    FakeUpstream,
    InProcessDaemon,
)
from tests.harness.network import CallingThread, HarnessReactor, MemoryNetwork

__all__ = [
    "ANALYSIS_HOST",
    "GATEWAY_HOST",
    "UPSTREAM_HOST",
    "CallingThread",
    "Exchange",
    "FakeUpstream",
    "HarnessReactor",
    "InProcessDaemon",
    "MemoryNetwork",
]
