"""pytest fixtures for code that uses jido_trio.

Installed with the package and loaded automatically (entry point ``pytest11``).
The fixtures are async, so run your tests with pytest-trio (``trio_mode =
true``). For time-based behaviour add pytest-trio's ``autojump_clock`` fixture:
timeouts, heartbeats and restart windows then pass instantly and exactly.

- ``jido_node``: one node on the local defaults, closed after the test.
- ``jido_cluster``: three nodes ``n1``, ``n2``, ``n3`` on a shared in-process hub
  (a :class:`~jido_trio.testing.Cluster`); ``jido_cluster.faults`` injects
  network faults between them.
- ``jido_open_cluster``: :func:`~jido_trio.testing.open_cluster` itself, to
  choose names and config in the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from collections.abc import Callable
from typing import Any

import pytest

from .._config import Config
from .._node import Node
from .._node import open_node
from ._cluster import Cluster
from ._cluster import open_cluster


@pytest.fixture
async def jido_node() -> AsyncIterator[Node]:
    """A node named ``test-node`` on the local defaults."""
    async with open_node(Config(node_name="test-node")) as node:
        yield node


@pytest.fixture
async def jido_cluster() -> AsyncIterator[Cluster]:
    """Three nodes ``n1``, ``n2``, ``n3`` sharing an in-process hub and state."""
    async with open_cluster("n1", "n2", "n3") as cluster:
        yield cluster


@pytest.fixture
def jido_open_cluster() -> Callable[..., Any]:
    """:func:`jido_trio.testing.open_cluster`, for clusters shaped by the test."""
    return open_cluster
