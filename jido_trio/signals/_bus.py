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

Across nodes. When the transport has topics (:attr:`Transport.supports_topics`,
NATS), a signal is published once, on the topic ``signal.<type tokens>``
(:func:`signal_topic`), and every node subscribes to the topics derived from
its own routes (:func:`pattern_topics`): ``*`` stays ``*``, a trailing ``**``
becomes the pattern's prefix plus ``>``, and a pattern a topic cannot express
exactly (``**`` in the middle) subscribes to the widest topic that covers it;
the router then filters precisely. The subscriptions follow the routes: a new
:meth:`SignalBus.subscribe` waits until its topics are in effect, agent and
durable routes bring them up to date in the background
(:meth:`SignalBus.sync_topics` waits for that). Without topics (the in-process
hub), or for a type too long for a topic, the signal is sent one-way to every
other member instead. Either way the receiving bus delivers it to its own
subscribers only, and the publishing node never gets its own signal back.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import AsyncIterator
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Iterable
from contextlib import asynccontextmanager
from typing import Any
from typing import Literal

import attrs
import msgspec
import trio

from .._comm._wire import decode_request
from .._comm._wire import encode_one_way
from .._exceptions import InvalidMessage
from .._exceptions import JidoError
from .._message import Instruction
from .._message import Message
from .._message import Origin
from .._message import Receipt
from .._message import decode_value
from .._message import encode_value
from .._ref import AgentRef
from ..abc import StateBackend
from ..abc import Transport
from ._router import RouteHandle
from ._router import SignalRouter
from ._router import validate_pattern
from ._signal import Signal

__all__ = ["Overflow", "SignalBus", "Subscription", "pattern_topics", "signal_topic"]

log = logging.getLogger("jido_trio.signals")

Overflow = Literal["block", "drop"]
_BUS_REF_ID = "jido.signals"
_durable_pattern = msgspec.msgpack.Decoder(str)

#: First token of every signal topic.
TOPIC_ROOT = "signal"
#: Characters a topic token keeps as they are; others become ``=XX`` (UTF-8 hex).
_TOPIC_SAFE = frozenset(b"-/_ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
#: Beyond this many distinct topics, overlapping ones are not pruned (the
#: transport delivers each message once anyway; pruning is quadratic).
_PRUNE_LIMIT = 256


def _topic_token(segment: str) -> str:
    """One signal type segment as a topic token: safe characters stay, every
    other byte becomes ``=XX``, and the empty segment is ``=``. Injective, and
    never ``*`` or ``>`` or a ``.``: a type cannot smuggle a wildcard in."""
    if not segment:
        return "="
    raw = segment.encode("utf-8", "surrogatepass")
    if all(b in _TOPIC_SAFE for b in raw):
        return segment
    return "".join(chr(b) if b in _TOPIC_SAFE else f"={b:02X}" for b in raw)


def signal_topic(signal_type: str) -> str:
    """The topic a signal of type ``signal_type`` is published on:
    ``signal.`` plus each dot-separated segment escaped on its own
    (``"order.créé"`` -> ``"signal.order.cr=C3=A9=C3=A9"``)."""
    return ".".join((TOPIC_ROOT, *map(_topic_token, signal_type.split("."))))


def pattern_topics(pattern: str) -> tuple[str, ...]:
    """The topic patterns that carry every signal ``pattern`` matches.

    ``*`` maps to ``*``; a trailing ``**`` (any number of segments, none
    included) to the prefix itself plus the prefix with ``>``; a ``**``
    followed by more segments to the widest topic that covers it (prefix plus
    ``>``), which may carry more than the pattern matches: the bus's router
    filters those out. Literal segments are escaped as in :func:`signal_topic`.
    """
    segments: list[str] = []
    for segment in validate_pattern(pattern).split("."):
        if segment == "**" and segments and segments[-1] == "**":
            continue
        segments.append(segment)
    tokens = [TOPIC_ROOT]
    for i, segment in enumerate(segments):
        if segment == "**":
            wide = ".".join((*tokens, ">"))
            if i == len(segments) - 1 and i > 0:
                return (".".join(tokens), wide)
            return (wide,)
        tokens.append("*" if segment == "*" else _topic_token(segment))
    return (".".join(tokens),)


def _covers(wide: list[str], narrow: list[str]) -> bool:
    """Whether every topic matching pattern ``narrow`` also matches ``wide``."""
    for i, token in enumerate(wide):
        if token == ">":
            return len(narrow) > i
        if i >= len(narrow):
            return False
        other = narrow[i]
        if other == ">" or (token != "*" and token != other):
            return False
    return len(wide) == len(narrow)


def _prune(topics: Iterable[str]) -> frozenset[str]:
    """Drop the topic patterns another one of the set covers."""
    distinct = set(topics)
    if len(distinct) > _PRUNE_LIMIT:
        return frozenset(distinct)
    split = {topic: topic.split(".") for topic in distinct}
    return frozenset(
        topic
        for topic, tokens in split.items()
        if not any(other != topic and _covers(split[other], tokens) for other in distinct)
    )


@attrs.define(eq=False)
class Subscription:
    """A live subscription: ``async for signal in sub`` (or ``await sub.receive()``).

    ``dropped`` counts signals lost to a full buffer (``overflow="drop"``).
    A durable subscription records its position as it goes; ``position`` is
    the log sequence number of the last signal handed out (acknowledged, and
    stored, by the next ``receive()``).
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

    node_name: str
    transport: Transport = attrs.field(repr=False)
    state: StateBackend = attrs.field(repr=False)
    #: How long a publisher waits for a full subscriber (``overflow="block"``).
    operation_timeout: float
    #: Sends an instruction to an agent (the Communication layer's ``send_instruction``).
    send_instruction: Callable[..., Awaitable[Receipt]] = attrs.field(repr=False)
    #: Runs a job in the node's background task.
    spawn: Callable[[Callable[[], Awaitable[Any]]], None] = attrs.field(repr=False)
    _router: SignalRouter[_Target] = attrs.field(factory=SignalRouter, init=False)
    _agent_routes: dict[str, list[RouteHandle]] = attrs.field(factory=dict, init=False)
    _durables: dict[str, tuple[_DurableTarget, RouteHandle]] = attrs.field(factory=dict, init=False)
    # Topic subscriptions (transports with topics only): how many routes use
    # each pattern, the topics the transport has now, and whether a
    # background update is queued already.
    _patterns: collections.Counter[str] = attrs.field(factory=collections.Counter, init=False)
    _topics: frozenset[str] = attrs.field(default=frozenset(), init=False)
    _topics_lock: trio.Lock = attrs.field(factory=trio.Lock, init=False)
    _sync_queued: bool = attrs.field(default=False, init=False)

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
        transport = self.transport
        if transport.supports_remote:
            if transport.supports_topics:
                await self._publish_topic(signal)
            else:
                await self._forward(signal)
        return delivered

    async def deliver_local(self, signal: Signal) -> int:
        """Deliver to this node's subscribers only (used for forwarded signals)."""
        delivered = 0

        def filter_failed(target: _Target, exc: Exception) -> None:
            # One subscriber's broken filter must not fail the publisher or
            # keep the signal from the others.
            log.warning("signal %s: the filter of %r raised %r; skipped", signal.id, target, exc)

        for target in self._router.match(signal, on_filter_error=filter_failed):
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
            with trio.move_on_after(self.operation_timeout) as scope:
                try:
                    await target.send.send(signal)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return False
            if scope.cancelled_caught:
                target.subscription.dropped += 1
                return False
            return True
        if isinstance(target, _AgentTarget):
            # One id per handler: two routes of one agent are two instructions.
            instruction = Instruction(
                target.action,
                {"signal": signal},
                id=f"{target.action}:{signal.source}:{signal.id}",
            )
            origin = Origin(None, signal.trace_id, signal.causation_id or signal.id)
            await self.send_instruction(target.ref, instruction, "at_most_once", None, origin)
            return True
        await self.state.append(_durable_log(target.name), _encode_signal(signal))
        target.appended.set()
        target.appended = trio.Event()
        return True

    async def _publish_topic(self, signal: Signal) -> None:
        transport = self.transport
        topic = signal_topic(signal.type)
        if len(topic) > transport.max_topic_length:
            await self._forward(signal)  # too long for a topic: one send per member
            return
        sender = AgentRef(id=_BUS_REF_ID, type=_BUS_REF_ID, node=self.node_name)
        recipient = AgentRef(id=_BUS_REF_ID, type=_BUS_REF_ID, node=None)
        try:
            message = Message.new(sender, recipient, signal.to_message_payload())
            await transport.publish_topic(topic, encode_one_way("signal", message))
        except JidoError as exc:  # best effort, as forwarding is
            log.warning("signal %s not published on topic %s: %s", signal.id, topic, exc)

    async def _on_topic(self, topic: str, data: bytes) -> None:
        """Transport side: a signal another node published on a topic we subscribe."""
        try:
            kind, message = decode_request(data)
            if kind != "signal":
                raise InvalidMessage("not a signal frame")
            if not isinstance(message.payload, dict):
                raise InvalidMessage("signal frame without a payload")
            signal = Signal.from_message_payload(message.payload)
        except InvalidMessage as exc:
            log.warning("dropped a malformed signal on topic %s: %s", topic, exc)
            return
        sender = message.sender
        if sender is not None and sender.node == self.node_name:
            return  # our own, delivered here when it was published
        if signal_topic(signal.type) != topic:
            log.warning(
                "dropped signal %s: type %r published on topic %s", signal.id, signal.type, topic
            )
            return
        await self.deliver_local(signal)

    async def _forward(self, signal: Signal) -> None:
        payload = signal.to_message_payload()
        for member in await self.transport.members():
            if member.name == self.node_name or not member.alive:
                continue
            recipient = AgentRef(id=_BUS_REF_ID, type=_BUS_REF_ID, node=member.name)
            frame = encode_one_way("signal", Message.new(None, recipient, payload))
            try:
                await self.transport.send(member.name, frame)
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
        listens, and delivered at least once: a ``receive()`` acknowledges
        the signal the previous one returned, and a subscription with the same
        name resumes after the last acknowledged signal (the position is
        stored in the StateBackend).
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
        handle = self._add_route(
            pattern,
            _ChannelTarget(subscription=subscription, send=send, overflow=overflow),
            priority=priority,
            filter=filter,
        )
        try:
            await self.sync_topics()
            async with receive:
                yield subscription
        finally:
            self._remove_route(handle)
            send.close()

    async def register_durable(self, name: str, pattern: str) -> None:
        """Start logging signals matching ``pattern`` for durable subscription ``name``
        (kept in the StateBackend, so it survives restarts of the node)."""
        validate_pattern(pattern)
        key = f"signals/durable/{name}/pattern"
        await self.state.write(key, msgspec.msgpack.encode(pattern))
        self._attach_durable(name, pattern)
        await self.sync_topics()

    def _attach_durable(self, name: str, pattern: str) -> _DurableTarget:
        existing = self._durables.get(name)
        if existing is not None:
            self._remove_route(existing[1])
        target = _DurableTarget(name=name)
        self._durables[name] = (target, self._add_route(pattern, target))
        return target

    async def load_durables(self) -> None:
        """Re-attach the durable subscriptions registered on the StateBackend."""
        for key in await self.state.keys("signals/durable/"):
            if key.endswith("/pattern"):
                found = await self.state.read(key)
                if found is not None:
                    name = key[len("signals/durable/") : -len("/pattern")]
                    self._attach_durable(name, _durable_pattern.decode(found.value))
        await self.sync_topics()

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
        found = await self.state.read(position_key)
        position = 0 if found is None else int(msgspec.msgpack.decode(found.value))
        stream = _durable_log(name)
        pending: list[tuple[int, Signal]] = []
        stored = position

        async def receive() -> Signal:
            nonlocal stored
            while not pending:
                target = self._durables[name][0]
                appended = target.appended
                for entry in await self.state.read_log(
                    stream, after=subscription.position, limit=256
                ):
                    signal = _decode_signal(entry.data)
                    if filter is None or filter(signal):
                        pending.append((entry.seq, signal))
                    else:
                        subscription.position = entry.seq
                if not pending:
                    await appended.wait()
            seq, signal = pending[0]
            # Back for more: every signal before this one is processed (or
            # filtered out). Stored before this one is handed out, so that a
            # cancellation here loses nothing, and a consumer that stops
            # before its next receive() gets this one again (at least once).
            if seq - 1 > stored:
                await self.state.write(position_key, msgspec.msgpack.encode(seq - 1))
                stored = seq - 1
                await self.state.trim_log(stream, upto=seq - 1)
            pending.pop(0)
            subscription.position = seq
            return signal

        subscription = Subscription(pattern=pattern, receive=receive, position=position)
        yield subscription

    def subscribe_agent(
        self, ref: AgentRef, pattern: str, action: str, *, priority: int = 0
    ) -> None:
        """Route matching signals to ``ref`` as ``Instruction(action, {"signal": s})``.

        On a transport with topics, the node's topic subscriptions follow in
        the background (:meth:`sync_topics` waits for them).
        """
        handle = self._add_route(pattern, _AgentTarget(ref=ref, action=action), priority=priority)
        self._agent_routes.setdefault(ref.id, []).append(handle)

    def unsubscribe_agent(self, agent_id: str) -> None:
        """Drop every route to the agent ``agent_id``."""
        for handle in self._agent_routes.pop(agent_id, []):
            self._remove_route(handle)

    # ------------------------------------------------------------ topics

    def _add_route(
        self,
        pattern: str,
        target: _Target,
        *,
        priority: int = 0,
        filter: Callable[[Signal], bool] | None = None,
    ) -> RouteHandle:
        handle = self._router.add(pattern, target, priority=priority, filter=filter)
        self._patterns[handle.pattern] += 1
        self._queue_sync()
        return handle

    def _remove_route(self, handle: RouteHandle) -> None:
        if self._router.remove(handle):
            self._patterns[handle.pattern] -= 1
            if self._patterns[handle.pattern] <= 0:
                del self._patterns[handle.pattern]
            self._queue_sync()

    @property
    def topics(self) -> frozenset[str]:
        """The topic patterns this node is subscribed to for signals from
        other nodes (empty unless the transport has topics)."""
        return self._topics

    def wanted_topics(self) -> frozenset[str]:
        """The topic patterns this bus's routes need now (see :func:`pattern_topics`),
        without those another one covers."""
        return _prune(topic for pattern in self._patterns for topic in pattern_topics(pattern))

    def _queue_sync(self) -> None:
        """Bring the topic subscriptions up to date in the node's background."""
        if self._sync_queued or not self.transport.supports_topics:
            return
        try:
            self.spawn(self._background_sync)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return  # the node is closing: its transport goes with it
        self._sync_queued = True

    async def _background_sync(self) -> None:
        self._sync_queued = False
        await self.sync_topics()

    async def sync_topics(self) -> None:
        """Make the transport's topic subscriptions match this bus's routes now,
        and return once they are in effect (a no-op without topics).

        :meth:`subscribe` and durable subscriptions call this themselves; agent
        routes and ended subscriptions are synced in the background, and this
        puts them in effect at once. A transport failure is logged, not
        raised: the next change retries.
        """
        transport = self.transport
        if not (transport.supports_remote and transport.supports_topics):
            await trio.lowlevel.checkpoint()
            return
        async with self._topics_lock:
            wanted = self.wanted_topics()
            if wanted == self._topics:
                return
            try:
                await transport.subscribe_topics(wanted, self._on_topic)
            except JidoError as exc:
                log.warning("node %r: signal topics not updated: %s", self.node_name, exc)
                return
            self._topics = wanted


def _durable_log(name: str) -> str:
    return f"signals/durable/{name}/log"


def _encode_signal(signal: Signal) -> bytes:
    return encode_value(signal.to_message_payload())


def _decode_signal(data: bytes) -> Signal:
    payload = decode_value(data)
    if not isinstance(payload, dict):
        raise InvalidMessage("stored signal is not a map")
    return Signal.from_message_payload(payload)
