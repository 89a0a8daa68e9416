"""Health policy: what :class:`~jido_trio.Health` a local agent is in, and
the circuit breakers and latency figures that feed it.

A local agent is ``DEGRADED`` while it restarts or shortly after (within
``max_seconds`` of its last restart), while its mailbox is above the
high-water mark, while its calls are slow on average, or while the breaker
of calls to it is not closed; ``NOT_FOUND`` once stopped for good.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs
import trio

from .._config import Config
from .._core import AgentCell
from .._health import Health
from .._resilience import BreakerConfig
from .._resilience import BreakerRegistry
from .._resilience import LatencyTracker

__all__ = ["HealthPolicy", "breaker_key"]


def breaker_key(node: str | None, agent_id: str) -> str:
    """The key of the breaker of calls from this node to ``agent_id`` on ``node``."""
    return f"{node}/{agent_id}"


@attrs.define(eq=False)
class HealthPolicy:
    """Decides a local agent's health and announces its changes.

    :param emit: fires a node hook (``emit(hook_name, **kwargs)``).
    """

    config: Config
    emit: Callable[..., None] = attrs.field(repr=False)
    breakers: BreakerRegistry = attrs.field(init=False)
    latency: LatencyTracker = attrs.field(factory=LatencyTracker, init=False)

    def __attrs_post_init__(self) -> None:
        self.breakers = BreakerRegistry(
            config=BreakerConfig(
                failure_threshold=self.config.breaker_failure_threshold,
                reset_timeout=self.config.breaker_reset_timeout,
            )
        )

    def node_returned(self, node: str) -> None:
        """Close the breakers of calls to ``node``'s agents: it is back (it
        joined the cluster again or answers its heartbeats again), so what
        opened them, its absence, is over. A breaker left open would refuse
        the node's new incarnation of an agent for ``breaker_reset_timeout``
        although everybody else reaches it."""
        self.breakers.remove_prefix(breaker_key(node, ""))

    def local_breaker_key(self, cell: AgentCell) -> str:
        """The key of the breaker of local calls to ``cell`` (kept on the cell)."""
        key = cell.breaker_key
        if key is None:
            key = cell.breaker_key = breaker_key(self.config.node_name, cell.ref.id)
        return key

    def note(self, cell: AgentCell) -> None:
        """Fire ``jido_trio_health_changed`` if the agent's health moved."""
        new = self.local_health(cell)
        old = cell.last_health
        if new is not old:
            cell.last_health = new
            self.emit("jido_trio_health_changed", ref=cell.ref, old=old, new=new)

    def local_health(self, cell: AgentCell) -> Health:
        # Runs for every agent started: the cheap checks first, and no clock
        # read, key or lookup for what a brand-new agent cannot have yet.
        status = cell.status
        if status == "stopped":
            return Health.NOT_FOUND
        if status != "running":
            return Health.DEGRADED
        config = self.config
        mailbox = cell.mailbox
        if len(mailbox) > mailbox.capacity * config.mailbox_high_water:
            return Health.DEGRADED
        restarted = cell.last_restart_at
        if restarted != -math.inf and trio.current_time() - restarted < config.max_seconds:
            return Health.DEGRADED
        if self.latency and self.latency.is_slow(cell.ref.id, config.slow_call_threshold):
            return Health.DEGRADED
        if self.breakers:
            breaker = self.breakers.peek(breaker_key(self.config.node_name, cell.ref.id))
            if breaker is not None and breaker.state != "closed":
                return Health.DEGRADED
        return Health.HEALTHY

    def remote_health(self, node: str, agent_id: str, reported: Any) -> Health:
        """The health another node reported for its agent, lowered to
        ``DEGRADED`` while this node's breaker of calls to it is not closed."""
        health = Health(reported)
        breaker = self.breakers.peek(breaker_key(node, agent_id))
        if health is Health.HEALTHY and breaker is not None and breaker.state != "closed":
            return Health.DEGRADED
        return health
