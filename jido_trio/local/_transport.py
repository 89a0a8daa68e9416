"""In-process transport: bytes between nodes of one process, through a hub."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import attrs
import trio

from .._exceptions import CallTimeout
from .._exceptions import RemoteNotSupported
from .._exceptions import Unreachable
from ..abc import NodeInfo
from ..abc import RequestHandler
from ..abc import Transport
from ._hub import LocalHub

__all__ = ["LocalTransport"]

#: Requests a node may have queued before senders wait (backpressure).
INBOX_SIZE = 1024


@attrs.define(eq=False)
class _Request:
    """One message on its way to a node's handler (a request or a one-way send)."""

    data: bytes
    reply: bytes | None = None
    #: The handler raised this (the requester gets :class:`Unreachable` from it).
    error: BaseException | None = None
    #: Set when the message never got a reply for a transport reason (the node
    #: stopped, a partition): the requester gets :class:`Unreachable` with it.
    lost: str | None = None
    done: trio.Event = attrs.field(factory=trio.Event)
    wants_reply: bool = True

    def fail(self, reason: str) -> None:
        """Complete the request without a reply (no-op once it is done)."""
        if not self.done.is_set():
            self.lost = reason
            self.done.set()


@attrs.define(eq=False)
class LocalTransport(Transport):
    """Without a hub this transport is local-only: every remote operation raises
    :class:`RemoteNotSupported`. With a hub it reaches the other nodes that
    joined it; a node that is not (or no longer) there is :class:`Unreachable`.

    While the hub has an :attr:`~LocalHub.interceptor` (fault injection),
    ``send`` and ``request`` hand every message to it instead of delivering it
    themselves.
    """

    node_name: str
    hub: LocalHub | None = None
    _inbox_send: trio.MemorySendChannel[_Request] = attrs.field(init=False)
    _inbox_receive: trio.MemoryReceiveChannel[_Request] = attrs.field(init=False)
    _nursery: trio.Nursery | None = attrs.field(init=False, default=None)
    #: Tells this membership from the next one under the same name (see
    #: :attr:`NodeInfo.incarnation`).
    incarnation: str = attrs.field(init=False, factory=lambda: uuid.uuid4().hex)

    def __attrs_post_init__(self) -> None:
        self._inbox_send, self._inbox_receive = trio.open_memory_channel[_Request](INBOX_SIZE)

    @property
    def supports_remote(self) -> bool:  # type: ignore[override]
        return self.hub is not None

    def _peer(self, node: str) -> LocalTransport:
        if self.hub is None:
            raise RemoteNotSupported(
                f"node {node!r} is remote and transport 'local' has no hub "
                "(set plugin_options={'local': {'hub': NAME}} to connect nodes in one process)"
            )
        peer = self.hub.endpoints.get(node)
        if peer is None:
            raise Unreachable(f"node {node!r} is not connected to hub {self.hub.name!r}")
        return peer

    async def _enqueue(self, request: _Request) -> None:
        """Put ``request`` into this node's inbox (waiting while it is full)."""
        try:
            await self._inbox_send.send(request)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise Unreachable(f"node {self.node_name!r} stopped receiving") from exc

    def _spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> bool:
        """Run ``fn(*args)`` in this node's serve nursery; ``False`` when not serving.

        The task ends (cancelled) when this node stops serving.
        """
        if self._nursery is None:
            return False
        self._nursery.start_soon(fn, *args)
        return True

    async def send(self, node: str, data: bytes) -> None:
        request = _Request(data=bytes(data), wants_reply=False)
        hub = self.hub
        if hub is not None and hub.interceptor is not None:
            await hub.interceptor.send(self, node, request)
            return
        await self._peer(node)._enqueue(request)

    async def request(self, node: str, data: bytes, *, timeout: float) -> bytes:
        request = _Request(data=bytes(data))
        hub = self.hub
        with trio.move_on_after(timeout if math.isfinite(timeout) else math.inf) as scope:
            if hub is not None and hub.interceptor is not None:
                await hub.interceptor.request(self, node, request)
            else:
                await self._peer(node)._enqueue(request)
                await request.done.wait()
                if hub is not None and hub.interceptor is not None:
                    # Faults began while it was handled: the reply meets them.
                    await hub.interceptor.reply(self, node, request)
        if scope.cancelled_caught:
            raise CallTimeout(f"no reply from node {node!r} within {timeout}s")
        if request.lost is not None:
            raise Unreachable(request.lost)
        if request.error is not None:
            raise Unreachable(f"node {node!r} failed to handle the request") from request.error
        assert request.reply is not None
        return request.reply

    async def serve(
        self,
        handler: RequestHandler,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        if self.hub is not None:
            if self.node_name in self.hub.endpoints:
                raise Unreachable(f"node {self.node_name!r} is already on hub {self.hub.name!r}")
            self.hub.endpoints[self.node_name] = self
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                async for request in self._inbox_receive:
                    nursery.start_soon(self._handle, handler, request, self.node_name)
        finally:
            self._nursery = None
            if self.hub is not None and self.hub.endpoints.get(self.node_name) is self:
                del self.hub.endpoints[self.node_name]
            # Wakes senders blocked on a full inbox (they get Unreachable) and
            # fails what is queued, so requesters need not wait for a timeout.
            self._inbox_send.close()
            while True:
                try:
                    left = self._inbox_receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                left.fail(f"node {self.node_name!r} stopped before handling the request")
            self._inbox_receive.close()

    @staticmethod
    async def _handle(handler: RequestHandler, request: _Request, node_name: str) -> None:
        try:
            reply = await handler(request.data)
        except Exception as exc:  # reported to the requester, not to this node
            request.error = exc
        else:
            request.reply = b"" if reply is None else reply
        finally:
            if request.reply is None and request.error is None:
                # Cancelled (the node is stopping): no reply will come.
                request.lost = f"node {node_name!r} stopped while handling the request"
            request.done.set()

    async def members(self) -> Sequence[NodeInfo]:
        await trio.lowlevel.checkpoint()
        now = time.time()
        hub = self.hub
        if hub is None:
            return [NodeInfo(name=self.node_name, alive=True, last_seen=now)]
        interceptor = hub.interceptor
        return [
            NodeInfo(
                name=name,
                alive=interceptor is None or interceptor.reachable(self.node_name, name),
                last_seen=now,
                incarnation=endpoint.incarnation,
            )
            for name, endpoint in sorted(hub.endpoints.items())
        ]
