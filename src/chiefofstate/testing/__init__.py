"""Library mode and test helpers: a node inside this process in front of an SDK write handler called
without RPC (InProcessNode), and pytest fixtures that start one per test (node_fixture)."""

from chiefofstate.testing.fixtures import node_fixture
from chiefofstate.testing.in_process import DirectWriteHandler, InProcessNode

__all__ = ["DirectWriteHandler", "InProcessNode", "node_fixture"]
