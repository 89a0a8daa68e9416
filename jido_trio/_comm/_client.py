"""The remote client: requests to the node that owns an agent.

Every request goes through this node's failure detector (a node known to be
down is refused at once with :class:`~jido_trio.Unreachable`) and the
circuit breaker of its destination agent. Idempotent requests (tells, whose
instruction id makes a second delivery a no-op, and state queries) are
retried with backoff within the caller's deadline, and follow the agent when
the registry says it moved (failover): to the new node, or to this one
(:class:`MovedHere`).
"""

from __future__ import annotations

from typing import Any

import attrs
import trio

from .._core import AgentCell
from .._exceptions import AgentNotFound
from .._exceptions import AgentUnavailable
from .._exceptions import CallTimeout
from .._exceptions import CircuitOpen
from .._exceptions import MailboxFull
from .._exceptions import RemoteNotSupported
from .._exceptions import Unreachable
from .._message import Message
from .._ref import AgentRef
from .._resilience import FailureDetector
from .._resilience import RetryPolicy
from .._resilience import retry_idempotent
from ..abc import Transport
from ._directory import Directory
from ._health import HealthPolicy
from ._health import breaker_key
from ._wire import decode_reply
from ._wire import encode_request

__all__ = ["MovedHere", "RemoteClient", "ping"]


class MovedHere(Exception):
    """The agent a remote operation was for now runs on this node."""

    def __init__(self, cell: AgentCell) -> None:
        super().__init__(cell.ref.id)
        self.cell = cell


async def ping(transport: Transport, node: str, timeout: float) -> None:
    """One heartbeat to ``node`` (raises if it does not answer within ``timeout``)."""
    message = Message.new(None, AgentRef(id="-", type="-", node=node), None)
    decode_reply(
        await transport.request(node, encode_request("ping", message, timeout), timeout=timeout),
        node,
    )


@attrs.frozen
class _NotReadyThere:
    """A node's answer that the agent is not ready there (see ``RemoteClient._send``)."""

    error: Unreachable


@attrs.define(eq=False)
class RemoteClient:
    """Sends requests to other nodes for the Communication layer."""

    node_name: str
    transport: Transport = attrs.field(repr=False)
    directory: Directory = attrs.field(repr=False)
    health: HealthPolicy = attrs.field(repr=False)
    retry: RetryPolicy
    #: Watches the other nodes (``None`` on a local-only transport).
    detector: FailureDetector | None = attrs.field(default=None, repr=False)

    def check_remote(self, node: str, agent_id: str) -> None:
        """:raises RemoteNotSupported: the transport is local-only."""
        if not self.transport.supports_remote:
            raise RemoteNotSupported(
                f"agent {agent_id!r} is on node {node!r} and the "
                f"transport of node {self.node_name!r} is local-only"
            )

    def is_reachable(self, node: str) -> bool:
        """False for a node that missed its heartbeats."""
        return self.detector is None or self.detector.is_reachable(node)

    async def request(self, node: str, kind: str, message: Message, deadline: float) -> Any:
        """One request to ``node``, through its agent's circuit breaker.

        :raises RemoteNotSupported: the transport is local-only.
        :raises Unreachable: the node missed its heartbeats or cannot be reached.
        :raises CallTimeout: no reply before ``deadline``.
        :raises CircuitOpen: the breaker of the agent refuses requests for now.
        """
        self.check_remote(node, message.recipient.id)
        if not self.is_reachable(node):
            await trio.lowlevel.checkpoint()
            raise Unreachable(f"node {node!r} missed its heartbeats")
        breaker = self.health.breakers.get(breaker_key(node, message.recipient.id))
        result = await breaker.call(
            self._send, node, kind, message, deadline, failure_types=(Unreachable, CallTimeout)
        )
        if type(result) is _NotReadyThere:
            raise result.error
        return result

    async def _send(self, node: str, kind: str, message: Message, deadline: float) -> Any:
        timeout = max(0.0, deadline - trio.current_time())
        data = await self.transport.request(
            node, encode_request(kind, message, timeout), timeout=timeout
        )
        try:
            return decode_reply(data, node)
        except Unreachable as exc:
            # The node answered: the agent is not ready there (starting,
            # being taken over or moved). Not a failure of the destination:
            # counted, it would open the breaker for breaker_reset_timeout
            # while the agent is back a moment later.
            return _NotReadyThere(exc)

    async def request_following(
        self, node: str, kind: str, message: Message, deadline: float
    ) -> Any:
        """:meth:`request`, sent once more to the agent's new node when the
        first one reached no agent there (the node is gone, it does not have
        the agent, or the breaker refused): the registry says where it went.
        A request that may have reached the agent (a timeout) is not sent
        again, so this is safe for operations that must not run twice.

        :raises MovedHere: the agent moved to this node.
        """
        try:
            return await self.request(node, kind, message, deadline)
        except (Unreachable, AgentNotFound, AgentUnavailable, CircuitOpen) as exc:
            if isinstance(exc, RemoteNotSupported):
                raise
            moved = await self.directory.reresolve(message.recipient.id, node)
            if moved is None:
                raise
            if isinstance(moved, AgentCell):
                raise MovedHere(moved) from None
            message = attrs.evolve(message, recipient=attrs.evolve(message.recipient, node=moved))
            return await self.request(moved, kind, message, deadline)

    async def request_idempotent(
        self, node: str, kind: str, message: Message, deadline: float
    ) -> Any:
        """:meth:`request`, retried with backoff within ``deadline`` and sent
        on to the agent's new node when the registry says it moved.

        :raises MovedHere: the agent moved to this node.
        """
        if not self.transport.supports_remote:
            # RemoteNotSupported is permanent: retrying with backoff cannot help.
            return await self.request(node, kind, message, deadline)
        attempts = 0

        async def attempt() -> Any:
            # Each attempt gets an equal share of what is left, so a request lost
            # on the way leaves time to try again; the last gets all the rest.
            nonlocal attempts, node, message
            attempts += 1
            left = max(1, self.retry.max_attempts - attempts + 1)
            now = trio.current_time()
            try:
                return await self.request(node, kind, message, now + (deadline - now) / left)
            except (Unreachable, AgentNotFound, AgentUnavailable, CircuitOpen) as exc:
                # The agent may have moved (failover): ask the registry, and
                # send the next attempt to the new owner.
                moved = await self.directory.reresolve(message.recipient.id, node)
                if moved is None:
                    raise
                if isinstance(moved, AgentCell):
                    raise MovedHere(moved) from None
                node = moved
                message = attrs.evolve(
                    message, recipient=attrs.evolve(message.recipient, node=moved)
                )
                raise Unreachable(
                    f"agent {message.recipient.id!r} moved to node {moved!r}"
                ) from exc

        # A tell refused for a full mailbox is tried again within the
        # deadline: a remote sender waits for room like a local one.
        retry_on = (
            (Unreachable, CallTimeout, MailboxFull)
            if kind != "query"
            else (
                Unreachable,
                CallTimeout,
            )
        )
        return await retry_idempotent(
            attempt, deadline=deadline, policy=self.retry, retry_on=retry_on
        )
