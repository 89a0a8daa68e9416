"""Serving other nodes: one request in, one encoded outcome out.

The transport calls :meth:`RemoteServer.handle` for every request it
receives. The request is decoded (anything malformed is refused with
:class:`~jido_trio.InvalidMessage`), checked against the caller's deadline,
and delivered to the local agent exactly as a local operation would be.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Mapping
from typing import TYPE_CHECKING
from typing import Any

import attrs
import trio

from .._core import encode_state
from .._core._inbound import tell
from .._exceptions import ActionError
from .._exceptions import CallTimeout
from .._exceptions import InvalidMessage
from .._exceptions import JidoError
from .._exceptions import Unreachable
from .._message import Instruction
from .._message import Message
from ._directory import Directory
from ._health import HealthPolicy
from ._wire import RemoteActionError
from ._wire import call_chain
from ._wire import decode_request
from ._wire import encode_error
from ._wire import encode_ok
from ._wire import remaining_time

if TYPE_CHECKING:
    from ._communication import Communication

__all__ = ["RemoteServer"]

log = logging.getLogger("jido_trio.communication")


@attrs.define(eq=False)
class RemoteServer:
    """Runs the requests other nodes send to this node.

    :param handle_signal: takes a signal another node forwarded.
    :param node_requests: handlers of the requests that concern the node
        rather than one of its agents (``"adopt"``, ``"migrate"``, ``"stop"``), by kind:
        ``await handler(message, deadline)`` returns the reply.
    """

    node_name: str
    directory: Directory = attrs.field(repr=False)
    health: HealthPolicy = attrs.field(repr=False)
    comm: Communication = attrs.field(repr=False)
    handle_signal: Callable[[Message], Awaitable[None]] = attrs.field(repr=False)
    node_requests: Mapping[str, Callable[[Message, float], Awaitable[Any]]] = attrs.field(
        factory=dict, repr=False
    )

    async def handle(self, data: bytes) -> bytes:
        """Transport handler: run one request and encode its outcome."""
        try:
            value = await self._run(data)
        except JidoError as exc:
            return encode_error(exc)
        except Exception as exc:
            log.exception("remote request failed")
            return encode_error(exc)
        return encode_ok(value)

    async def _run(self, data: bytes) -> Any:
        kind, message = decode_request(data)
        if kind == "signal":
            await self.handle_signal(message)
            return None
        remaining = remaining_time(message)
        if remaining <= 0:
            raise CallTimeout(f"the caller's deadline passed before node {self.node_name!r} got it")
        deadline = trio.current_time() + remaining
        ref = message.recipient
        if kind == "ping":
            await trio.lowlevel.checkpoint()
            return "pong"
        node_request = self.node_requests.get(kind)
        if node_request is not None:
            return await node_request(message, deadline)
        await trio.lowlevel.checkpoint()
        cell = self.directory.cells.get(ref.id)
        if cell is None:
            # Not here: moved away, or being taken over here. Either way
            # Unreachable, which callers retry within their deadline: they ask
            # the registry again and follow the agent (AgentNotFound would say
            # it does not exist, and the registry may lag behind the move).
            owner = await self.directory.owner_elsewhere(ref.id)
            raise Unreachable(f"agent {ref.id!r} runs on node {owner!r}, not {self.node_name!r}")
        if kind == "health":
            return self.health.local_health(cell).value
        comm = self.comm
        if kind in ("tell", "tell_alo", "call"):
            instruction = message.payload
            if not isinstance(instruction, Instruction):
                raise InvalidMessage("instruction message without an Instruction payload")
            if kind != "call":
                receipt = await tell(
                    cell, message, instruction, deadline, durable=kind == "tell_alo"
                )
                return receipt.status
            try:
                return await comm.deliver_call(
                    cell, message, instruction, deadline, call_chain(message)
                )
            except ActionError as exc:
                cause = exc.__cause__
                if cause is None:
                    raise
                raise RemoteActionError(str(exc), type(cause).__name__, str(cause)) from None
        if kind == "query":
            payload = message.payload
            if not isinstance(payload, dict):
                raise InvalidMessage("malformed query")
            state = await comm.deliver_query(
                cell, str(payload.get("query")), payload.get("consistency", "strong"), deadline
            )
            return encode_state(state)
        raise InvalidMessage(f"unknown request kind {kind!r}")
