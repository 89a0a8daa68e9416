"""Looking inside a running node from a test, without reaching into its
private attributes: snapshots of an agent's internals, the local calls
waiting for a reply, what the failure detector thinks of a peer."""

from __future__ import annotations

from typing import Any

import attrs

from .._node import Node
from .._node import node_internals

__all__ = ["AgentInternals", "agent_internals", "peer_reachable", "pending_reply_deadlines"]


@attrs.frozen(kw_only=True)
class AgentInternals:
    """What a node holds in memory for one of its agents, at one moment.

    :param status: ``"starting"``, ``"running"``, ``"restarting"`` or ``"stopped"``.
    :param restarts: restarts by its supervisor so far.
    :param state: its state in memory (what a ``"weak"`` query returns).
    :param loaded: whether it holds its committed record and dedupe window in
        memory (a brand-new agent that applied nothing holds none).
    :param remembered_ids: applied instruction ids it remembers in memory.
    :param queued: messages in its mailbox.
    :param has_task: whether its incarnation has a task (a dormant agent,
        started synchronously and never woken, has none).
    """

    status: str
    restarts: int
    state: Any
    loaded: bool
    remembered_ids: int
    queued: int
    has_task: bool


def agent_internals(node: Node, agent_id: str) -> AgentInternals:
    """A snapshot of what ``node`` holds for its agent ``agent_id``.

    :raises AgentNotFound: no agent ``agent_id`` on ``node``.
    :raises AgentUnavailable: it was stopped there for good.
    """
    directory = node_internals(node).directory
    cell = directory.cells.get(agent_id)
    if cell is None:
        directory.raise_missing(agent_id)
    store = cell.store
    return AgentInternals(
        status=cell.status,
        restarts=cell.restarts,
        state=cell.state,
        loaded=store is not None,
        remembered_ids=0 if store is None else len(store.seen),
        queued=len(cell.mailbox),
        has_task=cell.has_task,
    )


def pending_reply_deadlines(node: Node) -> int:
    """How many local calls' reply slots ``node`` still keeps a deadline for
    (answered ones are dropped lazily, and all of them once no agent is left)."""
    return len(node_internals(node).kernel.deadlines)


def peer_reachable(node: Node, peer: str) -> bool:
    """Whether ``node``'s failure detector considers the node ``peer``
    reachable (``True`` on a local-only transport, which watches nobody)."""
    detector = node_internals(node).detector
    return detector is None or detector.is_reachable(peer)
