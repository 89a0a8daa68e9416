"""Failover: agents of a node that left the cluster start again on a survivor.

A node that crashes (or is cut off long enough for its membership lease to
lapse) leaves its registry entries behind. Every surviving node scans for
such orphans; for each one the survivors agree on a preferred new owner by
rendezvous hashing over the live members, and the preferred node claims the
entry with :meth:`Registry.take_over` — a compare-and-set on the entry's
epoch in the registry (JetStream KV with the NATS plugin), so exactly one
node wins even if the survivors disagree about who is preferred. The winner
starts the agent with the same id: it resumes the last committed state and
replays its durable at-least-once log, deduplicated by instruction id.

If the preferred node cannot start the type (its class is not imported
there), the next node in the ranking tries after a grace period.

The scan also adopts entries that name this node but have no agent here: a
node restarted under the same name picks up the agents of its previous
incarnation.

The orphans one scan finds are adopted concurrently (up to
:data:`ADOPT_AT_ONCE` at a time): each adoption waits on the registry and the
state backend, and one after the other the last agent of a departed node
would answer only after all the others had started.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any

import attrs
import trio

from ._agent import Agent
from ._core import RESTART_KEY
from ._exceptions import AgentAlreadyExists
from ._exceptions import AgentNotFound
from ._exceptions import JidoError
from ._exceptions import RegistryConflict
from ._ref import AgentRef
from .abc import Registry
from .abc import RegistryEntry
from .abc import Transport

__all__ = ["Failover", "rank"]

log = logging.getLogger("jido_trio.failover")

#: Orphans one node adopts at the same time.
ADOPT_AT_ONCE = 16

StartFn = Callable[[type[Agent], str, str, Mapping[str, Any]], Awaitable[AgentRef]]


def rank(agent_id: str, members: list[str]) -> list[str]:
    """Members ordered by preference for owning ``agent_id`` (rendezvous hashing:
    the same order on every node, and few agents move when members change)."""

    def score(member: str) -> bytes:
        return hashlib.blake2b(f"{member}\x00{agent_id}".encode(), digest_size=8).digest()

    return sorted(members, key=score, reverse=True)


@attrs.define(eq=False)
class Failover:
    """The per-node orphan scanner (run only with a remote-capable transport)."""

    node_name: str
    registry: Registry
    transport: Transport
    interval: float
    #: Ids this node runs (or ran and stopped on purpose): never adopted.
    is_local: Callable[[str], bool]
    start: StartFn
    _orphaned_since: dict[str, float] = attrs.field(factory=dict)
    _disabled: bool = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while not self._disabled:
            await trio.sleep(self.interval)
            try:
                await self.scan()
            except JidoError as exc:
                # NATS briefly away, a lookup timing out: try again next round.
                log.warning("failover scan on %r failed: %s", self.node_name, exc)

    async def scan(self) -> int:
        """One pass; returns how many agents this node took over."""
        # Membership, not reachability: a node we cannot reach may still hold
        # its lease (a partition) and keep its agents; only one that left the
        # membership for good is taken over.
        members = sorted({m.name for m in await self.transport.members()})
        if self.node_name not in members:
            return 0  # we are not (yet, or any more) a member: claim nothing
        orphans = [
            entry
            for entry in await self.registry.select()
            if entry.node is not None
            and (entry.node not in members or entry.node == self.node_name)
            and not self.is_local(entry.ref.id)
        ]
        now = trio.current_time()
        live_ids = {entry.ref.id for entry in orphans}
        for agent_id in list(self._orphaned_since):
            if agent_id not in live_ids:
                del self._orphaned_since[agent_id]
        taken = 0
        limiter = trio.CapacityLimiter(ADOPT_AT_ONCE)

        async def adopt(entry: RegistryEntry) -> None:
            nonlocal taken
            async with limiter:
                try:
                    if await self._adopt(entry, members, now):
                        taken += 1
                except JidoError as exc:
                    # The registry or state backend briefly away: next round.
                    log.warning(
                        "failover of %r on %r failed: %s", entry.ref.id, self.node_name, exc
                    )

        async with trio.open_nursery() as nursery:
            for entry in orphans:
                nursery.start_soon(adopt, entry)
        return taken

    async def _adopt(self, entry: RegistryEntry, members: list[str], now: float) -> bool:
        agent_id = entry.ref.id
        restart = str(entry.metadata.get(RESTART_KEY, "permanent"))
        if entry.node != self.node_name:
            if restart == "temporary":
                # Never restarted anywhere: forget it, like its supervisor would.
                await self.registry.unregister(agent_id, node=entry.node)
                return False
            since = self._orphaned_since.setdefault(agent_id, now)
            position = rank(agent_id, members).index(self.node_name)
            # The preferred node goes first; the others wait their turn (one
            # scan each) in case it cannot start this type or does not adopt
            # at all (a member with failover off). Should two try at once,
            # the registry's compare-and-set lets one win.
            if now - since < position * self.interval:
                return False
        cls = Agent.types.get(entry.ref.type)
        if cls is None:
            log.info(
                "cannot adopt %r: agent type %r is not imported here", agent_id, entry.ref.type
            )
            return False
        if entry.node != self.node_name:
            try:
                await self.registry.take_over(
                    attrs.evolve(entry.ref, node=self.node_name), epoch=entry.epoch
                )
            except (AgentAlreadyExists, AgentNotFound):
                return False  # another survivor won, or the owner came back
            except RegistryConflict:
                return False  # the entry kept changing: look again next round
            except NotImplementedError:
                log.warning(
                    "registry %s cannot take agents over: failover is off",
                    type(self.registry).__name__,
                )
                self._disabled = True
                return False
        metadata = {k: v for k, v in entry.metadata.items() if not k.startswith("jido.")}
        try:
            await self.start(cls, agent_id, restart, metadata)
        except AgentAlreadyExists:
            return False
        log.warning("node %r took over agent %r from node %r", self.node_name, agent_id, entry.node)
        self._orphaned_since.pop(agent_id, None)
        return True
