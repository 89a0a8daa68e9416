"""Crash injection for fault-injection tests."""

from __future__ import annotations

import trio

from .._core import InjectedCrash
from .._exceptions import AgentUnavailable
from .._node import Node
from .._node import node_internals
from .._ref import AgentRef

__all__ = ["InjectedCrash", "crash_agent"]


async def crash_agent(node: Node, ref: AgentRef | str, error: BaseException | None = None) -> None:
    """Make the agent's task fail as if its code raised ``error`` (an
    :class:`InjectedCrash` by default); return once its supervisor has seen
    the failure.

    A message being handled at that moment fails (a caller gets
    :class:`~jido_trio.ActionError`); queued messages wait for the restart.

    :raises AgentNotFound: no such agent on ``node``.
    :raises AgentUnavailable: the agent is stopped for good.
    """
    await trio.lowlevel.checkpoint()
    agent_id = ref if isinstance(ref, str) else ref.id
    directory = node_internals(node).directory
    cell = directory.cells.get(agent_id)
    if cell is None:
        directory.raise_missing(agent_id)
    if not cell.alive:
        raise AgentUnavailable(f"agent {agent_id!r} is stopped")
    seen = cell.inject_crash(error or InjectedCrash(f"injected crash of agent {agent_id!r}"))
    await seen.wait()
