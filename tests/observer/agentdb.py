"""A migrated SQLite database with one agent and a clock, for the observer's job tests."""

from __future__ import annotations

from twisted.internet.defer import inlineCallbacks, maybeDeferred
from twisted.internet.task import Clock

from mnemomd.agents.store import AgentStore
from tests.storage.engines import MigratedDatabase

NOW = 1_700_000_000_000


def synchronously(func, *args):
    """Stands in for ``deferToThread`` so a job's CPU work runs inline under trial."""
    return maybeDeferred(func, *args)


class AgentDatabase(MigratedDatabase):
    engine = "sqlite"

    @inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.clock = Clock()
        self.clock.advance(NOW / 1000)
        self.agents = AgentStore(self.db)
        agent = yield self.agents.get_or_create("abcdabcdabcdabcd", None, "observe", NOW)
        self.agent_id = agent.agent_id
        self.card = yield self.agents.card(self.agent_id)
