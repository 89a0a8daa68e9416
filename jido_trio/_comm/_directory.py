"""The directory of agents: which agents run on this node, which stopped
here, and where the registry says the others live.

A ref names a node (``ref.node``) but agents move (failover, a stop here and a
start there, migration), so the directory has the last word: an agent of this
node is found by id whatever node its ref names, and a ref naming this node
for an agent that is not here is looked up in the registry. A ref naming
another node is sent there; if the agent is not there any more, the remote
client asks the registry where it went (:meth:`Directory.reresolve`).
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
    #: Agents being handed to another node (migration, a node leaving): id ->
    #: that node. Such an agent keeps its registry entry when it stops here,
    #: and answers Unreachable ("moving") until the registry names its new node.
    moving: dict[str, str] = attrs.field(factory=dict, repr=False)
    #: The node leaves the cluster: its permanent and transient agents keep
    #: their registry entries when they stop, for a survivor to take over.
    handing_off: bool = False

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
        """The agent of ``cell`` is stopped for good here: remember it, and
        remove its registry entry in the background, unless it goes on
        elsewhere (moving, or handed off by a node that leaves)."""
        agent_id = cell.ref.id
        self.discard(cell)
        if agent_id in self.moving or (self.handing_off and cell.restart != "temporary"):
            return
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
        """The cell of ``ref``'s agent if it runs here (whatever node the ref
        names: it may have moved here); no registry needed."""
        return self.cells.get(ref.id)

    async def resolve(self, ref: AgentRef) -> AgentCell | str:
        """The local cell for ``ref``, or the name of the node that owns it.

        :raises AgentNotFound: never registered.
        :raises AgentUnavailable: stopped here for good.
        """
        if not isinstance(ref, AgentRef):
            raise TypeError(f"expected an AgentRef, got {type(ref).__name__}")
        cell = self.cells.get(ref.id)
        if cell is not None:
            return cell
        node = ref.node
        if node is None or node == self.node_name:
            return await self.owner_elsewhere(ref.id)
        return node

    async def owner_elsewhere(self, agent_id: str) -> str:
        """The other node the registry names as owner of ``agent_id``, which
        does not run here.

        :raises AgentNotFound: not registered.
        :raises AgentUnavailable: stopped here for good.
        :raises Unreachable: the registry names this node, where it does not
            run yet: it is being started, restarted or taken over here.
        """
        try:
            entry = await self.registry.lookup(agent_id)
        except AgentNotFound:
            self.raise_missing(agent_id)
        if entry.node is not None and entry.node != self.node_name:
            return entry.node
        target = self.moving.get(agent_id)
        if target is not None:
            raise Unreachable(f"agent {agent_id!r} is moving to node {target!r}")
        if agent_id in self.cells:  # started while we asked
            raise Unreachable(f"agent {agent_id!r} is starting on node {self.node_name!r}")
        if agent_id in self._stopped or agent_id in self.unregistering:
            self.raise_missing(agent_id)  # an entry of ours, being removed
        raise Unreachable(
            f"agent {agent_id!r} is registered to node {self.node_name!r} but does not run "
            "there yet (it is being started or taken over)"
        )

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
