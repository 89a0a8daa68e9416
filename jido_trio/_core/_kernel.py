"""What the agent cells of one node share, and the narrow interface they
report to.

A cell does not know the Communication layer, the Node or the signal bus: it
persists through the engines in its :class:`Kernel`, and tells the rest of
the node what happened to it through :class:`CellEvents`, which the layer
above implements (hooks, health policy, the directory of agents).
"""

from __future__ import annotations

from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Mapping
from typing import TYPE_CHECKING
from typing import Any
from typing import Protocol

import attrs
import trio

from .._ref import AgentRef
from ..abc import Registry
from ..abc import StateBackend
from ..abc import SynchronousRegistry
from ..abc import SynchronousState
from ._reply import ReplyDeadlines

if TYPE_CHECKING:
    from .._agent import Messenger
    from .._message import Message
    from ._cell import AgentCell
    from ._delivery import Delivery

__all__ = ["CellEvents", "Kernel"]


class CellEvents(Protocol):
    """What an agent cell reports about itself. Called synchronously; an
    implementation must not raise."""

    def agent_started(self, cell: AgentCell) -> None:
        """An incarnation is ready (its state loaded, its id registered)."""

    def agent_stopped(self, cell: AgentCell, reason: str) -> None:
        """An incarnation ended: ``"normal"``, ``"shutdown"`` or ``"crash: ..."``."""

    def agent_restarted(self, cell: AgentCell) -> None:
        """The cell's supervisor restarted it (``cell.restarts`` counts them)."""

    def health_may_have_changed(self, cell: AgentCell) -> None:
        """The cell's status, mailbox or restarts changed."""

    def message_dead_lettered(self, message: Message, reason: str) -> None:
        """A message was set aside; it is stored already (in the agent's
        dead-letter log, or kept in its durable mailbox)."""

    def dead_letter(self, message: Message, reason: str) -> None:
        """Set a message aside: store it in the agent's dead-letter log (in the
        background: the caller cannot wait), then report it."""

    def agent_gone(self, cell: AgentCell, reason: str, leftover: list[Delivery]) -> None:
        """The agent is stopped for good: it will not run again under this
        cell. ``leftover``: what was still queued, not logged, to be answered,
        dead-lettered or sent on to wherever the agent went."""


@attrs.define(eq=False)
class Kernel:
    """Engines, settings and collaborators every agent cell of a node uses.

    :param node_name: the node the cells run on.
    :param state: where state records, durable mailboxes and dead letters live.
    :param registry: where an agent registers once started.
    :param events: what cells report to.
    :param messenger: what an agent's :class:`~jido_trio.Context` sends through.
    :param claim: claims an agent for this node in the registry before an
        incarnation starts: ``await claim(ref, metadata)`` returns its
        ownership epoch (see the node: it also takes over an agent whose
        owner has left the cluster).
    """

    node_name: str
    state: StateBackend
    registry: Registry
    events: CellEvents
    messenger: Messenger
    claim: Callable[[AgentRef, Mapping[str, Any]], Awaitable[int]]
    dedupe_window: int
    max_delivery_attempts: int
    shutdown_timeout: float
    #: How long an operation waits when given no timeout.
    operation_timeout: float
    #: ``state.synchronous_access()`` and ``registry.synchronous_access()``, asked once.
    state_nowait: SynchronousState | None = attrs.field(init=False)
    registry_nowait: SynchronousRegistry | None = attrs.field(init=False)
    #: Deadlines of local calls waiting for a reply (no cancel scope per call).
    deadlines: ReplyDeadlines = attrs.field(factory=ReplyDeadlines, init=False)
    #: ``trio.current_time``, or the running clock's own method once the node
    #: runs (:meth:`use_clock`): the local call path reads the time 3 times.
    now: Callable[[], float] = attrs.field(default=trio.current_time, init=False)

    def __attrs_post_init__(self) -> None:
        self.state_nowait = self.state.synchronous_access()
        self.registry_nowait = self.registry.synchronous_access()

    def use_clock(self) -> None:
        """Read the time from the current trio run's clock directly (the
        node's run: a kernel never outlives it)."""
        self.now = trio.lowlevel.current_clock().current_time

    def __repr__(self) -> str:  # a node's repr would otherwise list every engine
        return f"<Kernel of node {self.node_name!r}>"
