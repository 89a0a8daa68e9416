"""The per-node signal bus: publish CloudEvents, subscribe by type pattern.

Three kinds of subscriber, all matched by one :class:`SignalRouter`:

- in-process subscriptions (:meth:`SignalBus.subscribe`): a bounded channel per
  subscriber; a full one either holds the publisher back (``overflow="block"``,
  up to the operation deadline) or loses the signal and counts it
  (``overflow="drop"``) -- never unbounded memory;
- agents (``@jt.on_signal`` methods): each matching signal becomes an
  instruction to the agent's signal action, deduplicated by signal id;
- durable subscriptions (``durable=NAME``): matching signals are appended to a
  StateBackend log, so a subscriber that comes back (even in a new process, on
  SQLite) replays from its last position.

Signals published on one node are forwarded, one-way, to the other nodes the
transport knows, whose buses deliver them to their own subscribers.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal

import attrs
import msgspec
import trio

from ._exceptions import InvalidMessage, JidoError
from ._message import Instruction, Message, encode_value
from ._ref import AgentRef
from ._signal import Signal
from ._signal_router import RouteHandle, SignalRouter, validate_pattern

if TYPE_CHECKING:
    from ._communication import Communication

__all__ = ["Overflow", "SignalBus", "Subscription"]

log = logging.getLogger("jido_trio.signals")

Overflow = Literal["block", "drop"]
_BUS_REF_ID = "jido.signals"
_durable_pattern = msgspec.msgpack.Decoder(str)


@attrs.define(eq=False)
class Subscription:
    """A live subscription: ``async for signal in sub`` (or ``await sub.receive()``).

    ``dropped`` counts signals lost to a full buffer (``overflow="drop"``).
    A durable subscription records its position as it goes; ``position`` is
    the log sequence number of the last signal handed out.
    """

    pattern: str
    _receive: Callable[[], Any]
    dropped: int = 0
    position: int = 0

    async def receive(self) -> Signal:
        """The next matching signal (waits for one)."""
        signal: Signal = await self._receive()
        return signal

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Signal:
        return await self.receive()


@attrs.define(eq=False)
class _ChannelTarget:
    subscription: Subscription
    send: trio.MemorySendChannel[Signal]
    overflow: Overflow


@attrs.define(eq=False)
class _AgentTarget:
    ref: AgentRef
    action: str


@attrs.define(eq=False)
class _DurableTarget:
    name: str
    appended: trio.Event = attrs.field(factory=trio.Event)


_Target = _ChannelTarget | _AgentTarget | _DurableTarget


@attrs.define(eq=False)
class SignalBus:
    """A node's signal bus (``node.signals``)."""

    comm: Communication
    _router: SignalRouter[_Target] = attrs.field(factory=SignalRouter, init=False)
    _agent_routes: dict[str, list[RouteHandle]] = attrs.field(factory=dict, init=False)
    _durables: dict[str, tuple[_DurableTarget, RouteHandle]] = attrs.field(factory=dict, init=False)

    @property
    def node_name(self) -> str:
        return self.comm.node_name

    # ------------------------------------------------------------ publishing

    async def publish(self, signal: Signal) -> int:
        """Deliver ``signal`` to every matching subscriber here and forward it to
        the other nodes; return the number of local deliveries.

        Delivery order follows route priority (higher first). A subscriber that
        cannot take it (a stopped agent, a full buffer past the deadline) is
        skipped and logged; the publisher is never failed by a subscriber.
        """
        if not isinstance(signal, Signal):
            raise TypeError(f"expected a Signal, got {type(signal).__name__}")
        delivered = await self.deliver_local(signal)
        if self.comm.transport.supports_remote:
            await self._forward(signal)
        return delivered

    async def deliver_local(self, signal: Signal) -> int:
        """Deliver to this node's subscribers only (used for forwarded signals)."""
        delivered = 0
        for target in self._router.match(signal):
            try:
                if await self._deliver(target, signal):
                    delivered += 1
            except JidoError as exc:
                log.warning("signal %s not delivered to %r: %s", signal.id, target, exc)
        await trio.lowlevel.checkpoint()
        return delivered

    async def _deliver(self, target: _Target, signal: Signal) -> bool:
        if isinstance(target, _ChannelTarget):
            if target.overflow == "drop":
                try:
                    target.send.send_nowait(signal)
                except trio.WouldBlock:
                    target.subscription.dropped += 1
                    return False
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return False
                return True
            with trio.move_on_after(self.comm.config.operation_timeout) as scope:
                try:
                    await target.send.send(signal)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return False
            if scope.cancelled_caught:
                target.subscription.dropped += 1
                return False
            return True
        if isinstance(target, _AgentTarget):
            instruction = Instruction(
                target.action, {"signal": signal}, id=f"signal:{signal.source}:{signal.id}"
            )
            await self.comm.send_instruction(
                target.ref,
                instruction,
                trace_id=signal.trace_id,
                causation_id=signal.causation_id or signal.id,
            )
            return True
        await self.comm.state.append(_durable_log(target.name), _encode_signal(signal))
        target.appended.set()
        target.appended = trio.Event()
        return True

    async def _forward(self, signal: Signal) -> None:
        payload = signal.to_message_payload()
        for member in await self.comm.transport.members():
            if member.name == self.node_name or not member.alive:
                continue
            recipient = AgentRef(id=_BUS_REF_ID, type=_BUS_REF_ID, node=member.name)
            frame = encode_value(["signal", Message.new(None, recipient, payload).to_bytes()])
            try:
                await self.comm.transport.send(member.name, frame)
            except JidoError as exc:  # best effort: that node's durable logs miss it
                log.warning("signal %s not forwarded to %s: %s", signal.id, member.name, exc)

    async def handle_forwarded(self, message: Message) -> None:
        """Deliver a signal forwarded by another node (no further forwarding)."""
        if not isinstance(message.payload, dict):
            raise InvalidMessage("forwarded signal without a payload")
        await self.deliver_local(Signal.from_message_payload(message.payload))

    # ------------------------------------------------------------ subscribing

    @asynccontextmanager
    async def subscribe(
        self,
        pattern: str,
        *,
        priority: int = 0,
        filter: Callable[[Signal], bool] | None = None,
        buffer: int = 256,
        overflow: Overflow = "block",
        durable: str | None = None,
    ) -> AsyncIterator[Subscription]:
        """Receive the signals whose type matches ``pattern`` for the block's duration.

        ``*`` matches one dot-separated segment and ``**`` any number. With
        ``durable=NAME`` matching signals are logged even while nobody
        listens, and the subscription resumes after the last position it
        handed out before (the position is stored in the StateBackend).
        """
        validate_pattern(pattern)
        if overflow not in ("block", "drop"):
            raise ValueError("overflow must be 'block' or 'drop'")
        if buffer < 1:
            raise ValueError("buffer must be at least 1")
        if durable is not None:
            async with self._durable(pattern, durable, priority, filter) as sub:
                yield sub
            return
        send, receive = trio.open_memory_channel[Signal](buffer)
        subscription = Subscription(pattern=pattern, receive=receive.receive)
        handle = self._router.add(
            pattern,
            _ChannelTarget(subscription=subscription, send=send, overflow=overflow),
            priority=priority,
            filter=filter,
        )
        try:
            async with receive:
                yield subscription
        finally:
            self._router.remove(handle)
            send.close()

    async def register_durable(self, name: str, pattern: str) -> None:
        """Start logging signals matching ``pattern`` for durable subscription ``name``
        (kept in the StateBackend, so it survives restarts of the node)."""
        validate_pattern(pattern)
        key = f"signals/durable/{name}/pattern"
        await self.comm.state.write(key, msgspec.msgpack.encode(pattern))
        self._attach_durable(name, pattern)

    def _attach_durable(self, name: str, pattern: str) -> _DurableTarget:
        existing = self._durables.get(name)
        if existing is not None:
            self._router.remove(existing[1])
        target = _DurableTarget(name=name)
        self._durables[name] = (target, self._router.add(pattern, target))
        return target

    async def load_durables(self) -> None:
        """Re-attach the durable subscriptions registered on the StateBackend."""
        for key in await self.comm.state.keys("signals/durable/"):
            if key.endswith("/pattern"):
                found = await self.comm.state.read(key)
                if found is not None:
                    name = key[len("signals/durable/") : -len("/pattern")]
                    self._attach_durable(name, _durable_pattern.decode(found.value))

    @asynccontextmanager
    async def _durable(
        self,
        pattern: str,
        name: str,
        priority: int,
        filter: Callable[[Signal], bool] | None,
    ) -> AsyncIterator[Subscription]:
        await self.register_durable(name, pattern)
        position_key = f"signals/durable/{name}/position"
        found = await self.comm.state.read(position_key)
        position = 0 if found is None else int(msgspec.msgpack.decode(found.value))
        stream = _durable_log(name)
        pending: list[tuple[int, Signal]] = []

        async def receive() -> Signal:
            while not pending:
                target = self._durables[name][0]
                appended = target.appended
                for entry in await self.comm.state.read_log(
                    stream, after=subscription.position, limit=256
                ):
                    signal = _decode_signal(entry.data)
                    if filter is None or filter(signal):
                        pending.append((entry.seq, signal))
                    else:
                        subscription.position = entry.seq
                if not pending:
                    await appended.wait()
            seq, signal = pending.pop(0)
            subscription.position = seq
            await self.comm.state.write(position_key, msgspec.msgpack.encode(seq))
            await self.comm.state.trim_log(stream, upto=seq - 1)
            return signal

        subscription = Subscription(pattern=pattern, receive=receive, position=position)
        yield subscription

    def subscribe_agent(
        self, ref: AgentRef, pattern: str, action: str, *, priority: int = 0
    ) -> None:
        """Route matching signals to ``ref`` as ``Instruction(action, {"signal": s})``."""
        handle = self._router.add(pattern, _AgentTarget(ref=ref, action=action), priority=priority)
        self._agent_routes.setdefault(ref.id, []).append(handle)

    def unsubscribe_agent(self, agent_id: str) -> None:
        """Drop every route to the agent ``agent_id``."""
        for handle in self._agent_routes.pop(agent_id, []):
            self._router.remove(handle)


def _durable_log(name: str) -> str:
    return f"signals/durable/{name}/log"


def _encode_signal(signal: Signal) -> bytes:
    return encode_value(signal.to_message_payload())


def _decode_signal(data: bytes) -> Signal:
    from ._message import decode_value

    payload = decode_value(data)
    if not isinstance(payload, dict):
        raise InvalidMessage("stored signal is not a map")
    return Signal.from_message_payload(payload)
