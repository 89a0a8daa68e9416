"""The directory of agents: which agents run on this node, which stopped
here, and where the registry says the others live.

A ref names a node (``ref.node``) but the directory has the last word: an
agent of this node is found by id whatever node its ref names, and a ref
naming this node for an agent that is not here is looked up in the registry
(it may have failed over elsewhere).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable
from collections.abc import Callable
from typing import Any
from typing import NoReturn

import attrs
import trio

from .._core import AgentCell
from .._exceptions import AgentNotFound
from .._exceptions import AgentUnavailable
from .._exceptions import CallTimeout
from .._exceptions import EngineError
from .._exceptions import Unreachable
from .._ref import AgentRef
from ..abc import Registry

__all__ = ["TOMBSTONE_LIMIT", "Directory"]

#: Stopped agents remembered (to answer AgentUnavailable rather than AgentNotFound).
TOMBSTONE_LIMIT = 100_000


@attrs.define(eq=False)
class Directory:
    """The agents of one node, by id, and where the others are.

    :param spawn: runs a job in the node's background task (registry
        clean-ups that must not block the agent that ended).
    """

    node_name: str
    registry: Registry = attrs.field(repr=False)
    spawn: Callable[[Callable[[], Awaitable[Any]]], None] = attrs.field(repr=False)
    #: The cells of the agents that run (or restart) here, by id.
    cells: dict[str, AgentCell] = attrs.field(factory=dict, repr=False)
    #: Ids of agents stopped here for good, oldest first (bounded).
    _stopped: OrderedDict[str, None] = attrs.field(factory=OrderedDict, repr=False)
    #: Agent ids whose registry entry a stopped agent is still removing (set
    #: when it is gone): a new agent with the id registers only after that.
    unregistering: dict[str, trio.Event] = attrs.field(factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.cells)

    def add(self, cell: AgentCell) -> None:
        self.cells[cell.ref.id] = cell
        self._stopped.pop(cell.ref.id, None)

    def discard(self, cell: AgentCell) -> None:
        """Forget ``cell`` if it is still the one for its id (a start that failed)."""
        if self.cells.get(cell.ref.id) is cell:
            del self.cells[cell.ref.id]

    def stopped_here(self, agent_id: str) -> bool:
        """Whether ``agent_id`` was stopped for good on this node (and not started since)."""
        return agent_id in self._stopped

    def is_local(self, agent_id: str) -> bool:
        """Whether ``agent_id`` runs here or was stopped here."""
        return agent_id in self.cells or agent_id in self._stopped

    def gone(self, cell: AgentCell) -> None:
        """The agent of ``cell`` is stopped for good: remember it, and remove
        its registry entry in the background."""
        agent_id = cell.ref.id
        self.discard(cell)
        self._stopped[agent_id] = None
        while len(self._stopped) > TOMBSTONE_LIMIT:
            self._stopped.popitem(last=False)
        removed = self.unregistering[agent_id] = trio.Event()

        async def unregister() -> None:
            try:
                await self.registry.unregister(agent_id, node=self.node_name)
            finally:
                removed.set()
                if self.unregistering.get(agent_id) is removed:
                    del self.unregistering[agent_id]

        try:
            self.spawn(unregister)
        except trio.ClosedResourceError:
            # The node is closing: no agent starts any more, nobody waits.
            removed.set()
            del self.unregistering[agent_id]
            raise

    async def wait_unregistered(self, agent_id: str, timeout: float) -> None:
        """Wait (at most ``timeout``) until a stopped agent with this id is out
        of the registry: otherwise its background removal could remove the
        entry of a new agent with the id."""
        with trio.move_on_after(timeout):
            while (removed := self.unregistering.get(agent_id)) is not None:
                await removed.wait()

    # ------------------------------------------------------------ resolution

    def local_cell(self, ref: AgentRef) -> AgentCell | None:
        """The cell of ``ref`` if its ref names this node (or none) and the
        agent is here; no registry needed."""
        node = ref.node
        if node is None or node == self.node_name:
            return self.cells.get(ref.id)
        return None

    async def resolve(self, ref: AgentRef) -> AgentCell | str:
        """The local cell for ``ref``, or the name of the node that owns it.

        :raises AgentNotFound: never registered.
        :raises AgentUnavailable: stopped here for good.
        """
        if not isinstance(ref, AgentRef):
            raise TypeError(f"expected an AgentRef, got {type(ref).__name__}")
        node = ref.node
        if node is None or node == self.node_name:
            cell = self.cells.get(ref.id)
            if cell is not None:
                return cell
            elsewhere = await self._registered_elsewhere(ref.id)
            if elsewhere is None:
                self.raise_missing(ref.id)
            return elsewhere
        return node

    async def _registered_elsewhere(self, agent_id: str) -> str | None:
        """The other node the registry names as owner of ``agent_id``, if any."""
        try:
            entry = await self.registry.lookup(agent_id)
        except AgentNotFound:
            return None
        if entry.node is None or entry.node == self.node_name:
            return None  # a stale entry of ours, about to be unregistered
        return entry.node

    async def reresolve(self, agent_id: str, old: str) -> AgentCell | str | None:
        """Where ``agent_id`` lives now if the registry no longer names ``old``
        (it failed over): the local cell or the new node; ``None`` if unchanged."""
        try:
            entry = await self.registry.lookup(agent_id)
        except (AgentNotFound, Unreachable, CallTimeout, EngineError):
            return None
        if entry.node is None or entry.node == old:
            return None
        if entry.node == self.node_name:
            return self.cells.get(agent_id)
        return entry.node

    def raise_missing(self, agent_id: str) -> NoReturn:
        """Raise what a caller sees for an agent that is not here."""
        if agent_id in self._stopped:
            raise AgentUnavailable(f"agent {agent_id!r} is stopped")
        raise AgentNotFound(f"no agent {agent_id!r} on node {self.node_name!r}")

    async def lookup(self, agent_id: str) -> AgentRef:
        """The ref of ``agent_id``: the local agent's, or the registry's.

        :raises AgentNotFound: never registered.
        :raises AgentUnavailable: stopped here for good.
        """
        cell = self.cells.get(agent_id)
        if cell is not None:
            await trio.lowlevel.checkpoint()
            return cell.ref
        try:
            entry = await self.registry.lookup(agent_id)
        except AgentNotFound:
            self.raise_missing(agent_id)
        if entry.node is None or entry.node == self.node_name:
            self.raise_missing(agent_id)
        return entry.ref
