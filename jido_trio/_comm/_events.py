"""What the node does when an agent cell reports about itself
(:class:`~jido_trio._core.CellEvents`): fire the plugin hooks, re-evaluate
health, and keep the directory and signal routes up to date."""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs

from .._core import AgentCell
from .._message import Message
from ._directory import Directory
from ._health import HealthPolicy

__all__ = ["NodeCellEvents"]

log = logging.getLogger("jido_trio.communication")


@attrs.define(eq=False)
class NodeCellEvents:
    """The node's :class:`~jido_trio._core.CellEvents`.

    :param emit: fires a node hook (``emit(hook_name, **kwargs)``).
    :param forget_routes: drops the signal routes of an agent that is gone.
    """

    emit: Callable[..., None] = attrs.field(repr=False)
    health: HealthPolicy = attrs.field(repr=False)
    directory: Directory = attrs.field(repr=False)
    forget_routes: Callable[[str], None] = attrs.field(repr=False)

    def agent_started(self, cell: AgentCell) -> None:
        self.emit("jido_trio_agent_started", ref=cell.ref)

    def agent_stopped(self, cell: AgentCell, reason: str) -> None:
        self.emit("jido_trio_agent_stopped", ref=cell.ref, reason=reason)

    def agent_restarted(self, cell: AgentCell) -> None:
        self.emit("jido_trio_agent_restarted", ref=cell.ref, restarts=cell.restarts)

    def health_may_have_changed(self, cell: AgentCell) -> None:
        self.health.note(cell)

    def message_dead_lettered(self, message: Message, reason: str) -> None:
        log.warning("dead letter %s to %s: %s", message.id, message.recipient.id, reason)
        self.emit("jido_trio_message_dead_lettered", message=message, reason=reason)

    def agent_gone(self, cell: AgentCell) -> None:
        self.forget_routes(cell.ref.id)
        self.directory.gone(cell)
        if not self.directory.cells:
            # The node's last agent is gone: no local call can still be waiting.
            cell.kernel.deadlines.flush()
