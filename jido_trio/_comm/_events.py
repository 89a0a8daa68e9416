"""What the node does when an agent cell reports about itself
(:class:`~jido_trio._core.CellEvents`): fire the plugin hooks, re-evaluate
health, keep the directory and signal routes up to date, store dead letters,
and settle what a stopped agent still had queued."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from collections.abc import Callable
from typing import Any

import attrs
import trio

from .._core import AgentCell
from .._core import Delivery
from .._core import dead_letter_stream
from .._exceptions import AgentUnavailable
from .._exceptions import InvalidMessage
from .._exceptions import JidoError
from .._exceptions import Unreachable
from .._message import Instruction
from .._message import Message
from .._message import Origin
from .._message import Receipt
from ..abc import StateBackend
from ._directory import Directory
from ._health import HealthPolicy

__all__ = ["NodeCellEvents"]

log = logging.getLogger("jido_trio.communication")


@attrs.define(eq=False)
class NodeCellEvents:
    """The node's :class:`~jido_trio._core.CellEvents`.

    :param emit: fires a node hook (``emit(hook_name, **kwargs)``).
    :param forget_routes: drops the signal routes of an agent that is gone.
    :param spawn: runs a job in the node's background task.
    :param send_instruction: the Communication layer's send, for what a moved
        agent still had queued here.
    """

    emit: Callable[..., None] = attrs.field(repr=False)
    health: HealthPolicy = attrs.field(repr=False)
    directory: Directory = attrs.field(repr=False)
    state: StateBackend = attrs.field(repr=False)
    forget_routes: Callable[[str], None] = attrs.field(repr=False)
    spawn: Callable[[Callable[[], Awaitable[Any]]], None] = attrs.field(repr=False)
    send_instruction: Callable[
        [Any, Instruction, str, float | None, Origin], Awaitable[Receipt]
    ] = attrs.field(repr=False)

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

    def dead_letter(self, message: Message, reason: str) -> None:
        async def store() -> None:
            try:
                await self.state.append(
                    dead_letter_stream(message.recipient.id), message.to_bytes()
                )
            except InvalidMessage:
                log.error("dead letter %s cannot be encoded; only reported", message.id)
            except JidoError as exc:
                log.error("dead letter %s could not be stored: %s", message.id, exc)
            self.message_dead_lettered(message, reason)

        try:
            self.spawn(store)
        except trio.ClosedResourceError:  # the node has closed its background task
            self.message_dead_lettered(message, reason)

    def agent_gone(self, cell: AgentCell, reason: str, leftover: list[Delivery]) -> None:
        agent_id = cell.ref.id
        target = self.directory.moving.get(agent_id)
        self.forget_routes(agent_id)
        self.directory.gone(cell)
        for delivery in leftover:
            if delivery.reply is not None:
                # Its caller is waiting: tell it, it may send it again.
                delivery.fail(
                    AgentUnavailable(f"agent {agent_id!r} is stopped ({reason})")
                    if target is None
                    else Unreachable(f"agent {agent_id!r} moved to node {target!r}; send again")
                )
            elif target is not None and delivery.instruction is not None:
                self._send_on(delivery, target)
            else:
                self.dead_letter(delivery.message, f"agent stopped ({reason})")
        if not self.directory.cells:
            # The node's last agent is gone: no local call can still be waiting.
            cell.kernel.deadlines.flush()

    def _send_on(self, delivery: Delivery, target: str) -> None:
        """An accepted one-way message the agent had not handled when it left
        for ``target``: sent on to it (dead-lettered if that fails)."""
        message = delivery.message
        instruction = delivery.instruction
        assert instruction is not None
        origin = Origin(message.sender, message.trace_id, message.causation_id)
        ref = attrs.evolve(message.recipient, node=target)

        async def send() -> None:
            try:
                await self.send_instruction(ref, instruction, "at_most_once", None, origin)
            except JidoError as exc:
                self.dead_letter(message, f"agent moved to node {target!r}, not delivered: {exc}")

        try:
            self.spawn(send)
        except trio.ClosedResourceError:
            self.message_dead_lettered(message, f"agent moved to node {target!r}, node closed")
