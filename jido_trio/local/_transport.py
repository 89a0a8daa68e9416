"""In-process transport: bytes between nodes of one process, through a hub."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import attrs
import trio

from .._exceptions import CallTimeout, RemoteNotSupported, Unreachable
from ..abc import NodeInfo, RequestHandler, Transport
from ._hub import LocalHub

__all__ = ["LocalTransport"]

#: Requests a node may have queued before senders wait (backpressure).
INBOX_SIZE = 1024


@attrs.define(eq=False)
class _Request:
    data: bytes
    reply: bytes | None = None
    error: BaseException | None = None
    done: trio.Event = attrs.field(factory=trio.Event)
    wants_reply: bool = True


@attrs.define(eq=False)
class LocalTransport(Transport):
    """Without a hub this transport is local-only: every remote operation raises
    :class:`RemoteNotSupported`. With a hub it reaches the other nodes that
    joined it; a node that is not (or no longer) there is :class:`Unreachable`.
    """

    node_name: str
    hub: LocalHub | None = None
    _inbox_send: trio.MemorySendChannel[_Request] = attrs.field(init=False)
    _inbox_receive: trio.MemoryReceiveChannel[_Request] = attrs.field(init=False)

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

    async def _deliver(self, node: str, request: _Request) -> None:
        peer = self._peer(node)
        try:
            await peer._inbox_send.send(request)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise Unreachable(f"node {node!r} stopped receiving") from exc

    async def send(self, node: str, data: bytes) -> None:
        await self._deliver(node, _Request(data=bytes(data), wants_reply=False))

    async def request(self, node: str, data: bytes, *, timeout: float) -> bytes:
        request = _Request(data=bytes(data))
        with trio.move_on_after(timeout if math.isfinite(timeout) else math.inf) as scope:
            await self._deliver(node, request)
            await request.done.wait()
        if scope.cancelled_caught:
            raise CallTimeout(f"no reply from node {node!r} within {timeout}s")
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
                task_status.started()
                async with self._inbox_receive:
                    async for request in self._inbox_receive:
                        nursery.start_soon(self._handle, handler, request)
        finally:
            if self.hub is not None and self.hub.endpoints.get(self.node_name) is self:
                del self.hub.endpoints[self.node_name]
            self._inbox_send.close()

    @staticmethod
    async def _handle(handler: RequestHandler, request: _Request) -> None:
        try:
            reply = await handler(request.data)
        except Exception as exc:  # reported to the requester, not to this node
            request.error = exc
        else:
            request.reply = b"" if reply is None else reply
        finally:
            request.done.set()

    async def members(self) -> Sequence[NodeInfo]:
        await trio.lowlevel.checkpoint()
        now = time.time()
        names = [self.node_name] if self.hub is None else sorted(self.hub.endpoints)
        return [NodeInfo(name=name, alive=True, last_seen=now) for name in names]
