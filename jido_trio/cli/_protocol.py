"""The admin protocol spoken between ``jido-trio node run`` and the other commands.

Transport: one TCP connection to a loopback address. Each message is a frame::

    +----------------------+---------------------------+
    | length: uint32, BE   | body: msgpack (``length``) |
    +----------------------+---------------------------+

A client sends a :class:`Request` frame and reads one :class:`Reply` frame,
as many times as it likes on one connection. Bodies are plain msgpack maps
encoded and validated with msgspec (never pickle). A request body may be at
most :data:`MAX_REQUEST` bytes; a longer one is answered with an error reply
and the connection is closed. A body that is not a valid request gets an
error reply and the connection stays usable.

Operations (``op``) and their ``result``:

- ``"ping"``: :class:`NodeInfo`
- ``"info"``: :class:`NodeInfo`
- ``"agents"``: list of :class:`AgentRow` (the node's local agents)
- ``"health"`` (needs ``id``): :class:`AgentHealth`
- ``"tree"``: :class:`TreeNode` (the supervision tree from the root)

A failed request has ``ok = false`` and an :class:`ErrorInfo` whose ``code``
is one of :data:`ERROR_CODES`.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any
from typing import Final

import msgspec
import trio

__all__ = [
    "DEFAULT_ADMIN",
    "ERROR_CODES",
    "MAX_REPLY",
    "MAX_REQUEST",
    "OPS",
    "PROTOCOL_VERSION",
    "AdminAddress",
    "AdminError",
    "AgentHealth",
    "AgentRow",
    "ErrorInfo",
    "FrameReader",
    "FrameTooLarge",
    "NodeInfo",
    "Reply",
    "Request",
    "TreeNode",
    "encode_frame",
    "exchange",
    "request",
]

PROTOCOL_VERSION: Final = 1
#: Default admin endpoint of ``node run`` and of the client commands.
DEFAULT_ADMIN: Final = "127.0.0.1:7411"
#: Largest request body a node accepts (bytes).
MAX_REQUEST: Final = 1024 * 1024
#: Largest reply body a client accepts (bytes): trees of many agents are big.
MAX_REPLY: Final = 64 * 1024 * 1024
OPS: Final = ("ping", "info", "agents", "health", "tree")
ERROR_CODES: Final = (
    "invalid_request",  # the body is not msgpack, or not a request map
    "frame_too_large",  # the body is longer than MAX_REQUEST (connection closed)
    "unsupported_version",  # ``v`` is not PROTOCOL_VERSION
    "unknown_op",  # ``op`` is not one of OPS
    "busy",  # too many admin connections (connection closed)
    "internal",  # the node failed to answer (logged on the node)
)

_HEADER = struct.Struct(">I")


class Request(msgspec.Struct, kw_only=True):
    """What a client asks. Unknown fields are ignored (forward compatible)."""

    op: str
    v: int = PROTOCOL_VERSION
    id: str | None = None


class ErrorInfo(msgspec.Struct, kw_only=True):
    code: str
    message: str


class Reply(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What a node answers: ``result`` when ``ok``, ``error`` otherwise."""

    ok: bool
    v: int = PROTOCOL_VERSION
    result: Any = None
    error: ErrorInfo | None = None


class _RawReply(msgspec.Struct, kw_only=True):
    ok: bool
    v: int = PROTOCOL_VERSION
    result: msgspec.Raw = msgspec.Raw(b"\xc0")  # msgpack nil
    error: ErrorInfo | None = None


class NodeInfo(msgspec.Struct, kw_only=True):
    node: str
    mode: str
    pid: int
    version: str
    agents: int
    registry: str
    transport: str
    state: str
    coordination: str


class AgentRow(msgspec.Struct, kw_only=True):
    id: str
    type: str
    node: str | None
    health: str


class AgentHealth(msgspec.Struct, kw_only=True):
    id: str
    health: str
    type: str | None = None
    node: str | None = None


class TreeNode(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A supervisor (``kind="supervisor"``, with ``strategy`` and ``children``)
    or a child (``kind="agent"`` or ``"worker"``)."""

    id: str
    kind: str
    status: str
    restarts: int
    last_failure: str | None = None
    strategy: str | None = None
    children: list[TreeNode] = []


RESULT_TYPES: Final[dict[str, Any]] = {
    "ping": NodeInfo,
    "info": NodeInfo,
    "agents": list[AgentRow],
    "health": AgentHealth,
    "tree": TreeNode,
}

_encoder = msgspec.msgpack.Encoder()
request_decoder: Final = msgspec.msgpack.Decoder(Request)
_reply_decoder: Final = msgspec.msgpack.Decoder(_RawReply)


class AdminError(Exception):
    """The admin endpoint could not be reached or answered with an error."""

    def __init__(self, message: str, code: str = "connection") -> None:
        super().__init__(message)
        self.code = code


class FrameTooLarge(Exception):
    """A frame header announced more than the allowed body size."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame of {size} bytes is over the limit of {limit} bytes")
        self.size = size
        self.limit = limit


def encode_frame(body: Any) -> bytes:
    """Encode ``body`` with msgpack and prefix its length."""
    data = _encoder.encode(body)
    return _HEADER.pack(len(data)) + data


class FrameReader:
    """Reads length-prefixed frames from a trio stream."""

    def __init__(self, stream: trio.abc.ReceiveStream, limit: int) -> None:
        self._stream = stream
        self._limit = limit
        self._buffer = bytearray()

    async def _fill(self, size: int) -> bool:
        """Buffer at least ``size`` bytes; ``False`` at a clean end of stream."""
        while len(self._buffer) < size:
            chunk = await self._stream.receive_some(max(size - len(self._buffer), 65536))
            if not chunk:
                if self._buffer:
                    raise EOFError("connection closed in the middle of a frame")
                return False
            self._buffer += chunk
        return True

    async def header(self) -> int | None:
        """The next frame's body size, or ``None`` if the peer closed cleanly.

        :raises FrameTooLarge: over the limit; the stream cannot be resynchronised.
        """
        if not await self._fill(_HEADER.size):
            return None
        (size,) = _HEADER.unpack_from(self._buffer)
        del self._buffer[: _HEADER.size]
        if size > self._limit:
            raise FrameTooLarge(size, self._limit)
        return int(size)

    async def body(self, size: int) -> bytes:
        if size and not await self._fill(size):
            raise EOFError("connection closed in the middle of a frame")
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data


class AdminAddress(msgspec.Struct, frozen=True):
    """A loopback ``host:port`` of an admin endpoint."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> AdminAddress:
        """Parse ``HOST:PORT`` (``[::1]:PORT`` for IPv6). The host must be a
        loopback address or ``localhost``: the endpoint has no authentication.

        :raises ValueError: malformed, or not a loopback host.
        """
        text = text.strip()
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"admin address must look like 127.0.0.1:PORT, got {text!r}")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        try:
            port = int(port_text)
        except ValueError:
            raise ValueError(f"invalid port in admin address {text!r}") from None
        if not 0 <= port <= 65535:
            raise ValueError(f"port out of range in admin address {text!r}")
        if host != "localhost":
            try:
                loopback = ipaddress.ip_address(host).is_loopback
            except ValueError:
                raise ValueError(f"invalid host in admin address {text!r}") from None
            if not loopback:
                raise ValueError(
                    f"admin address must be on loopback (127.0.0.1, ::1 or localhost), got {host!r}"
                )
        return cls(host, port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


async def _exchange(address: AdminAddress, reqs: list[Request], timeout: float) -> list[Any]:
    bodies: list[bytes] = []
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_tcp_stream(address.host, address.port)
            async with stream:
                reader = FrameReader(stream, MAX_REPLY)
                for req in reqs:
                    await stream.send_all(encode_frame(req))
                    size = await reader.header()
                    if size is None:
                        raise AdminError(f"admin endpoint {address} closed the connection")
                    bodies.append(await reader.body(size))
    except trio.TooSlowError as exc:
        raise AdminError(f"no answer from admin endpoint {address} within {timeout} s") from exc
    except (OSError, trio.BrokenResourceError, EOFError) as exc:
        raise AdminError(f"cannot reach admin endpoint {address}: {exc}") from exc
    except FrameTooLarge as exc:
        raise AdminError(f"reply from {address} too large: {exc}", "protocol") from exc
    results = []
    for req, data in zip(reqs, bodies, strict=True):
        try:
            reply = _reply_decoder.decode(data)
            if reply.ok:
                results.append(msgspec.msgpack.decode(reply.result, type=RESULT_TYPES[req.op]))
                continue
        except msgspec.DecodeError as exc:
            raise AdminError(f"malformed reply from {address}: {exc}", "protocol") from exc
        error = reply.error or ErrorInfo(code="internal", message="unknown error")
        raise AdminError(error.message, error.code)
    return results


def exchange(
    address: AdminAddress, ops: list[tuple[str, str | None]], *, timeout: float = 10.0
) -> list[Any]:
    """Send ``(op, agent_id)`` requests over one connection from synchronous
    code and return their decoded results, in order.

    :raises AdminError: unreachable endpoint, protocol error, or an error reply.
    """
    for op, _ in ops:
        if op not in RESULT_TYPES:
            raise ValueError(f"unknown op {op!r}")
    reqs = [Request(op=op, id=agent_id) for op, agent_id in ops]
    return trio.run(_exchange, address, reqs, timeout)


def request(
    address: AdminAddress, op: str, *, agent_id: str | None = None, timeout: float = 10.0
) -> Any:
    """Send one request from synchronous code and return its decoded result.

    :raises AdminError: unreachable endpoint, protocol error, or an error reply.
    """
    return exchange(address, [(op, agent_id)], timeout=timeout)[0]
