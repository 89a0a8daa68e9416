"""The ``nats`` transport: request/reply and one-way messages on core NATS
subjects; cluster membership as leases in the KV bucket ``<namespace>_nodes``.

Messages. Node ``N`` serves on the subject ``<namespace>.node.<N>`` (its name
through :func:`~jido_trio_nats._keys.encode_token`). A request is a publish
with a reply subject under this transport's own inbox; NATS answers a request
nobody is subscribed for with a "no responders" status, so a request to a node
that is not serving fails at once with :class:`~jido_trio.Unreachable` (a node
that holds its lease gets :data:`NO_RESPONDERS_GRACE` seconds of retries
first: NATS makes a new subscription visible to other connections a moment
after confirming it to its own, so "no responders" can be briefly wrong). A
one-way :meth:`~NatsTransport.send` is a plain publish: NATS cannot tell the
sender that nobody received it, so a send to an unknown or departed node is
silently lost (only a sender without a connection gets ``Unreachable``).

Hand-off between nats-py (asyncio) and trio without a hop per message:
trio-asyncio runs asyncio callbacks in the trio thread, so the subscription
callbacks (real ``async def`` functions, as nats-py wants) hand each message
to trio with a synchronous ``send_nowait`` / ``Event.set``; outgoing messages
go into one queue that a single asyncio task drains with ``publish`` calls,
started with :meth:`~jido_trio_nats._bridge.Bridge.submit` when the queue
turns non-empty. The serving side bounds the handlers in flight
(:data:`MAX_IN_FLIGHT`): beyond it the callback waits, which holds back
nats-py's subscription (whose own pending limits then drop, as for any slow
core-NATS consumer). Handlers start in arrival order, so messages from one
sender are seen in the order sent.

Membership (:mod:`jido_trio_nats._membership`): entering the transport
claims this node's lease in the KV bucket ``<namespace>_nodes``; while the
transport is open the lease is renewed and the peers' leases are watched, and
:meth:`NatsTransport.wait_fenced` returns once this node lost its own.
Leaving deletes the key, so peers see the node go at once.

Topics (:meth:`NatsTransport.publish_topic`, :meth:`NatsTransport.subscribe_topics`).
Topic ``T`` is the subject ``<namespace>.topic.T``: under a root of its own,
so no topic can reach (or a ``>`` pattern overhear) the subjects the engines
use themselves (``node.``, ``log.``, ``wq.``...). Topic patterns use NATS' own
wildcards ``*`` and ``>``, one subscription per pattern. Each message starts
with a 17-byte header (version, a random id of the publishing transport, a
sequence number): a node drops its own messages (no echo) and a message it already
got through another of its overlapping subscriptions. Received messages go
to trio like the serve loop's, without a hop each: the callback puts them in
a bounded channel (waiting while it is full, which holds back that nats-py
subscription), and one trio task takes them in batches and runs the handler
on each in turn. Malformed or oversize input is dropped with a log line.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import math
import re
import secrets
import struct
import time
from collections.abc import AsyncIterator
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Collection
from collections.abc import Mapping
from collections.abc import Sequence
from contextlib import asynccontextmanager
from typing import Any
from typing import TypeVar

import attrs
import trio
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.kv import KeyValue

from jido_trio import CallTimeout
from jido_trio import Config
from jido_trio import InvalidMessage
from jido_trio import JidoError
from jido_trio import Unreachable
from jido_trio.abc import NodeInfo
from jido_trio.abc import RequestHandler
from jido_trio.abc import TopicHandler
from jido_trio.abc import Transport
from jido_trio.abc import single_failure

from ._connection import NatsConnection
from ._connection import open_connection
from ._keys import encode_token
from ._membership import Membership

__all__ = ["MAX_IN_FLIGHT", "MAX_PAYLOAD", "NatsTransport", "open_transport"]

log = logging.getLogger("jido_trio_nats.transport")

T = TypeVar("T")

#: Largest message accepted, sent or received (NATS' default ``max_payload``).
MAX_PAYLOAD = 1 << 20
#: Handlers one node runs at once; further messages wait in NATS' client.
MAX_IN_FLIGHT = 1024
#: Outgoing messages queued before ``send``/``request`` callers wait.
MAX_QUEUED = 4096
#: Reply header carrying why a request got no reply from its handler.
ERROR_HEADER = "Jido-Error"
#: NATS status of the answer to a request nobody is subscribed for.
NO_RESPONDERS = "503"
#: Seconds a request to a node that holds its lease but has no subscriber
#: (yet) keeps being retried.
NO_RESPONDERS_GRACE = 0.25
#: Seconds ``serve`` waits after its subscription is confirmed, for NATS to
#: make it visible to other connections (it does so asynchronously).
SERVE_SETTLE = 0.01
#: How often the connection state is checked to fail requests in flight.
CONNECTION_POLL = 0.1
#: Slowest nats-py subscription backlog (messages, bytes) before it drops.
SUB_PENDING = (65536, 64 * 1024 * 1024)
#: Topic messages received but not yet handled before the callbacks wait.
TOPIC_BUFFER = 1024
#: Topic messages handed to the handler per wake-up of the trio task.
TOPIC_BATCH = 256
#: Recently received topic messages remembered to drop the second copy
#: delivered through an overlapping subscription.
TOPIC_DEDUPE = 4096
#: Header of every topic message: version, publisher incarnation, sequence.
_TOPIC_HEAD = struct.Struct(">B8sQ")
_TOPIC_VERSION = 1
_TOPIC_TOKEN = r"[-/_=A-Za-z0-9]+"
#: The subject token every topic lives under (see the module docstring).
_TOPIC_ROOT = "topic"
_TOPIC_RE = re.compile(rf"{_TOPIC_TOKEN}(?:\.{_TOPIC_TOKEN})*")
_TOPIC_PATTERN_RE = re.compile(rf"(?:{_TOPIC_TOKEN}|\*)(?:\.(?:{_TOPIC_TOKEN}|\*))*(?:\.>)?|>")


def _check_topic(topic: str, limit: int, *, pattern: bool) -> str:
    what = "topic pattern" if pattern else "topic"
    if not isinstance(topic, str):
        raise TypeError(f"a {what} must be a string, not {type(topic).__name__}")
    regex = _TOPIC_PATTERN_RE if pattern else _TOPIC_RE
    if len(topic) > limit or regex.fullmatch(topic) is None:
        raise ValueError(f"not a valid {what} (at most {limit} characters): {topic[:100]!r}")
    return topic


def _payload(data: bytes, limit: int, what: str) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what}: data must be bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) > limit:
        raise InvalidMessage(f"{what}: {len(data)} bytes exceed the limit of {limit} bytes")
    return data


@attrs.define(eq=False)
class _Pending:
    """A request waiting for its reply (completed from the asyncio side)."""

    node: str
    done: trio.Event = attrs.field(factory=trio.Event)
    reply: bytes | None = None
    error: Exception | None = None
    #: NATS answered that nobody serves the node (status 503).
    no_responders: bool = False

    def succeed(self, data: bytes) -> None:
        if not self.done.is_set():
            self.reply = data
            self.done.set()

    def fail(self, error: Exception) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()


@attrs.define(eq=False)
class _Out:
    subject: str
    data: bytes
    reply: str = ""
    headers: dict[str, str] | None = None
    pending: _Pending | None = None


@attrs.define(eq=False)
class _Outbox:
    """Outgoing messages, published in order by one asyncio task at a time."""

    conn: NatsConnection
    queue: collections.deque[_Out] = attrs.field(factory=collections.deque)
    draining: bool = False
    space: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot)
    idle: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot)

    def put_nowait(self, item: _Out) -> None:
        self.queue.append(item)
        if not self.draining:
            self.draining = True
            self.conn.bridge.submit(self._drain)

    async def put(self, item: _Out) -> None:
        while len(self.queue) >= MAX_QUEUED:
            await self.space.park()
        self.put_nowait(item)

    async def wait_idle(self) -> None:
        while self.draining:
            await self.idle.park()

    async def _drain(self) -> None:
        """Asyncio side: publish everything queued, in order (never raises)."""
        nc = self.conn.nc
        try:
            while True:
                if not self.queue:
                    # Linger one loop iteration: a trio sender that queues
                    # message after message finds this task still running.
                    await asyncio.sleep(0)
                    if not self.queue:
                        break
                item = self.queue.popleft()
                try:
                    await nc.publish(
                        item.subject, item.data, reply=item.reply, headers=item.headers
                    )
                except Exception as exc:
                    if item.pending is not None:
                        item.pending.fail(
                            Unreachable(
                                f"cannot send to node {item.pending.node!r}: NATS is unreachable "
                                f"({type(exc).__name__}: {exc})"
                            )
                        )
                    else:
                        log.debug("dropped a message to %s: %r", item.subject, exc)
                if self.space and len(self.queue) < MAX_QUEUED:
                    self.space.unpark_all()
        finally:
            self.draining = False
            self.space.unpark_all()
            self.idle.unpark_all()


@attrs.define(eq=False)
class _Inbox:
    """State shared by :meth:`NatsTransport.serve` and its subscription callback."""

    in_flight: int = 0
    closed: bool = False
    waiters: collections.deque[Any] = attrs.field(factory=collections.deque)

    def release(self) -> None:
        self.in_flight -= 1
        self.wake()

    def wake(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                if not self.closed:
                    return


@attrs.define(eq=False)
class _Topics:
    """Topic subscriptions of one transport, shared with their callbacks."""

    origin: bytes
    send: trio.MemorySendChannel[tuple[str, bytes]]
    receive: trio.MemoryReceiveChannel[tuple[str, bytes]]
    subs: dict[str, Subscription] = attrs.field(factory=dict)
    handler: TopicHandler | None = None
    seq: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1))
    seen: collections.OrderedDict[tuple[bytes, int], None] = attrs.field(
        factory=collections.OrderedDict
    )
    waiters: collections.deque[Any] = attrs.field(factory=collections.deque)
    lock: trio.Lock = attrs.field(factory=trio.Lock)
    closed: bool = False

    @classmethod
    def new(cls) -> _Topics:
        send, receive = trio.open_memory_channel[tuple[str, bytes]](TOPIC_BUFFER)
        return cls(origin=secrets.token_bytes(8), send=send, receive=receive)

    def first_time(self, key: tuple[bytes, int]) -> bool:
        """Whether the message ``key`` is new (and remember it)."""
        if key in self.seen:
            return False
        self.seen[key] = None
        if len(self.seen) > TOPIC_DEDUPE:
            self.seen.popitem(last=False)
        return True

    async def put(self, loop: Any, item: tuple[str, bytes]) -> None:
        """Asyncio side: queue ``item`` for the trio task, waiting while the
        queue is full (dropped if the transport closes meanwhile)."""
        while not self.closed:
            try:
                self.send.send_nowait(item)
                return
            except trio.WouldBlock:
                waiter = loop.create_future()
                self.waiters.append(waiter)
                await waiter

    def wake(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)


@attrs.define(eq=False)
class NatsTransport(Transport):
    """Bytes between nodes over one NATS connection; membership by KV leases."""

    supports_remote = True
    supports_topics = True

    conn: NatsConnection
    node_name: str
    nodes: KeyValue
    incarnation: str = attrs.field(factory=lambda: secrets.token_hex(8))
    since: float = attrs.field(factory=time.time)
    membership: Membership = attrs.field(init=False)
    _outbox: _Outbox = attrs.field(init=False)
    _pending: dict[str, _Pending] = attrs.field(factory=dict, init=False)
    _tokens: itertools.count[int] = attrs.field(factory=itertools.count, init=False)
    _reply_prefix: str = attrs.field(default="", init=False)
    _reply_sub: Subscription | None = attrs.field(default=None, init=False)
    _closed: bool = attrs.field(default=False, init=False)
    _serving: bool = attrs.field(default=False, init=False)
    _topics: _Topics = attrs.field(init=False, factory=_Topics.new)

    def __attrs_post_init__(self) -> None:
        self._outbox = _Outbox(self.conn)
        self.membership = Membership(
            conn=self.conn,
            node_name=self.node_name,
            bucket=self.nodes,
            incarnation=self.incarnation,
            since=self.since,
        )

    # ------------------------------------------------------------ helpers

    def _subject(self, node: str) -> str:
        return self.conn.subject("node", encode_token(node, "node name"))

    @property
    def _limit(self) -> int:
        return min(MAX_PAYLOAD, int(self.conn.nc.max_payload or MAX_PAYLOAD))

    async def _run(
        self, what: str, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any
    ) -> T:
        return await self.conn.run(what, fn, *args, **kwargs)

    def _check_connected(self, node: str) -> None:
        if self._closed:
            raise Unreachable(f"cannot reach node {node!r}: this transport is closed")
        if not self.conn.connected:
            raise Unreachable(f"cannot reach node {node!r}: not connected to NATS")

    # ------------------------------------------------------------ messages

    async def send(self, node: str, data: bytes) -> None:
        """Publish ``data`` to ``node`` one-way.

        NATS gives no receipt for a plain publish: a message to a node that is
        not serving is lost without an error.

        :raises Unreachable: this transport has no connection to NATS.
        :raises InvalidMessage: ``data`` is larger than :data:`MAX_PAYLOAD`.
        """
        try:
            data = _payload(data, self._limit, f"send to node {node!r}")
            self._check_connected(node)
        except BaseException:
            await trio.lowlevel.checkpoint()
            raise
        await trio.lowlevel.checkpoint()
        await self._outbox.put(_Out(self._subject(node), data))

    async def request(self, node: str, data: bytes, *, timeout: float) -> bytes:
        """Send ``data`` to ``node`` and return its handler's reply.

        NATS answers at once when nobody serves ``node``. A node that holds its
        membership lease gets a short grace (:data:`NO_RESPONDERS_GRACE`) with
        retries, since NATS makes a new subscription visible to other
        connections a moment after its own connection confirmed it; a node
        without a lease is :class:`~jido_trio.Unreachable` at once.
        """
        try:
            data = _payload(data, self._limit, f"request to node {node!r}")
            self._check_connected(node)
        except BaseException:
            await trio.lowlevel.checkpoint()
            raise
        subject = self._subject(node)
        pending: _Pending | None = None
        with trio.move_on_after(timeout if math.isfinite(timeout) else math.inf):
            grace_until = trio.current_time() + NO_RESPONDERS_GRACE
            delay = 0.005
            member: bool | None = None
            while True:
                pending = None  # in flight: a timeout now is a CallTimeout
                pending = await self._exchange(node, subject, data)
                if not pending.no_responders:
                    break
                if member is None:
                    member = await self._is_member(node)
                if not member or trio.current_time() + delay > grace_until:
                    break
                await trio.sleep(delay)
                delay *= 2
        if pending is not None and pending.error is not None:
            raise pending.error
        if pending is None or pending.reply is None:
            raise CallTimeout(f"no reply from node {node!r} within {timeout}s")
        return pending.reply

    async def _exchange(self, node: str, subject: str, data: bytes) -> _Pending:
        """Publish one request and wait for its reply (or failure)."""
        token = str(next(self._tokens))
        pending = _Pending(node)
        self._pending[token] = pending
        try:
            await self._outbox.put(
                _Out(subject, data, f"{self._reply_prefix}.{token}", None, pending)
            )
            await pending.done.wait()
        finally:
            self._pending.pop(token, None)
        return pending

    async def _is_member(self, node: str) -> bool:
        """Whether ``node`` holds a membership lease (``False`` if NATS cannot say)."""
        try:
            return await self.membership.is_member(node)
        except JidoError:
            return False

    async def _on_reply(self, msg: Msg) -> None:
        """Asyncio side: complete the request a reply belongs to (never raises)."""
        try:
            pending = self._pending.get(msg.subject[len(self._reply_prefix) + 1 :])
            if pending is None:
                return  # it timed out
            headers = msg.headers
            if headers:
                status = headers.get("Status")
                if status == NO_RESPONDERS:
                    pending.no_responders = True
                    pending.fail(Unreachable(f"node {pending.node!r} is not serving"))
                    return
                error = headers.get(ERROR_HEADER)
                if error is not None or status:
                    why = error or f"NATS status {status} {headers.get('Description', '')}"
                    pending.fail(Unreachable(f"node {pending.node!r} did not reply: {why}"))
                    return
            pending.succeed(msg.data)
        except Exception:
            log.exception("could not handle a reply")

    def _answer(self, reply: str, data: bytes, error: str | None = None) -> None:
        headers = None if error is None else {ERROR_HEADER: error[:200]}
        self._outbox.put_nowait(_Out(reply, data, "", headers))

    async def serve(
        self,
        handler: RequestHandler,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run ``handler`` for every message sent to this node until cancelled.

        A request whose handler raises (or that is still running when serving
        stops) is answered with an error, so its requester gets
        :class:`~jido_trio.Unreachable` at once instead of waiting for its
        timeout.
        """
        if self._serving:
            await trio.lowlevel.checkpoint()
            raise RuntimeError(f"node {self.node_name!r} is already being served")
        self._serving = True
        try:
            await self._serve(handler, task_status)
        finally:
            self._serving = False

    async def _serve(self, handler: RequestHandler, task_status: trio.TaskStatus[None]) -> None:
        inbox = _Inbox()
        loop = self.conn.bridge.loop
        send, receive = trio.open_memory_channel[Msg](math.inf)  # bounded by MAX_IN_FLIGHT

        async def on_message(msg: Msg) -> None:
            # Asyncio side, in the trio thread: no hop, never raises.
            try:
                while inbox.in_flight >= MAX_IN_FLIGHT and not inbox.closed:
                    waiter = loop.create_future()
                    inbox.waiters.append(waiter)
                    await waiter
                if inbox.closed:
                    if msg.reply:
                        self._answer(msg.reply, b"", f"node {self.node_name!r} stopped serving")
                    return
                inbox.in_flight += 1
                send.send_nowait(msg)
            except Exception:
                log.exception("could not take an incoming message")

        async def subscribe() -> Subscription:
            nc = self.conn.nc
            sub = await nc.subscribe(
                self._subject(self.node_name),
                cb=on_message,
                pending_msgs_limit=SUB_PENDING[0],
                pending_bytes_limit=SUB_PENDING[1],
            )
            await nc.flush(timeout=max(1, math.ceil(self.conn.options.request_timeout)))
            return sub

        sub = await self._run(f"serving node {self.node_name!r}", subscribe)
        try:
            async with trio.open_nursery() as nursery:
                await trio.sleep(SERVE_SETTLE)
                task_status.started()
                previous: trio.Event | None = None
                while True:
                    msg = await receive.receive()
                    while True:
                        turn = trio.Event()
                        nursery.start_soon(self._handle, handler, msg, previous, turn, inbox)
                        previous = turn
                        try:
                            msg = receive.receive_nowait()
                        except trio.WouldBlock:
                            break
        finally:
            inbox.closed = True
            inbox.wake()
            send.close()
            while True:
                try:
                    msg = receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                if msg.reply:
                    self._answer(msg.reply, b"", f"node {self.node_name!r} stopped serving")
            with trio.CancelScope(shield=True):
                await self.conn.close_subscription(sub, f"serving node {self.node_name!r}")

    async def _handle(
        self,
        handler: RequestHandler,
        msg: Msg,
        previous: trio.Event | None,
        turn: trio.Event,
        inbox: _Inbox,
    ) -> None:
        reply = msg.reply
        answered = False
        try:
            # Start handlers in arrival order: trio may run tasks spawned in one
            # batch in any order, so each waits until the one before has begun.
            if previous is not None and not previous.is_set():
                await previous.wait()
            previous = None
            data = msg.data
            if len(data) > MAX_PAYLOAD:
                log.warning("dropped a message of %d bytes (limit %d)", len(data), MAX_PAYLOAD)
                if reply:
                    self._answer(reply, b"", f"message of {len(data)} bytes is too large")
                    answered = True
                return
            turn.set()
            try:
                result = await handler(data)
            except Exception as exc:
                log.debug("handler failed on node %r", self.node_name, exc_info=True)
                if reply:
                    self._answer(reply, b"", f"handler failed: {type(exc).__name__}: {exc}")
                    answered = True
                return
            if reply:
                out = b"" if result is None else result
                if not isinstance(out, (bytes, bytearray)) or len(out) > self._limit:
                    what = (
                        type(out).__name__ if not isinstance(out, (bytes, bytearray)) else "reply"
                    )
                    self._answer(reply, b"", f"handler returned an invalid {what}")
                else:
                    self._answer(reply, bytes(out))
                answered = True
        finally:
            turn.set()
            if reply and not answered:
                self._answer(reply, b"", f"node {self.node_name!r} stopped serving")
            inbox.release()

    # ------------------------------------------------------------ topics

    async def publish_topic(self, topic: str, data: bytes) -> None:
        """Publish ``data`` on the subject ``<namespace>.topic.<topic>``, one-way.

        :raises ValueError: ``topic`` is not a valid topic.
        :raises InvalidMessage: ``data`` (plus a 17-byte header) is larger
            than :data:`MAX_PAYLOAD`.
        :raises Unreachable: this transport has no connection to NATS.
        """
        topics = self._topics
        try:
            _check_topic(topic, self.max_topic_length, pattern=False)
            data = _payload(data, self._limit - _TOPIC_HEAD.size, f"publish on topic {topic!r}")
            if self._closed:
                raise Unreachable(f"cannot publish on topic {topic!r}: this transport is closed")
            if not self.conn.connected:
                raise Unreachable(f"cannot publish on topic {topic!r}: not connected to NATS")
        except BaseException:
            await trio.lowlevel.checkpoint()
            raise
        await trio.lowlevel.checkpoint()
        head = _TOPIC_HEAD.pack(_TOPIC_VERSION, topics.origin, next(topics.seq))
        await self._outbox.put(_Out(self.topic_subject(topic), head + data))

    def topic_subject(self, topic: str) -> str:
        """The NATS subject of ``topic`` (or of a topic pattern)."""
        return self.conn.subject(_TOPIC_ROOT, topic)

    async def subscribe_topics(self, patterns: Collection[str], handler: TopicHandler) -> None:
        """Subscribe to ``<namespace>.topic.<pattern>`` for each pattern, replacing
        the previous set (new subscriptions are confirmed with a flush before
        the old ones go).

        :raises ValueError: a pattern is not valid.
        :raises Unreachable: NATS did not confirm in time or cannot be reached.
        """
        wanted = {_check_topic(p, self.max_topic_length, pattern=True) for p in patterns}
        topics = self._topics
        async with topics.lock:
            if self._closed or topics.closed:
                raise Unreachable("cannot subscribe to topics: this transport is closed")
            topics.handler = handler
            added = sorted(wanted - topics.subs.keys())
            removed = sorted(topics.subs.keys() - wanted)
            if not (added or removed):
                return
            try:
                await self.conn.run("subscribing to topics", self._apply_topics, added, removed)
            except JidoError as exc:
                raise Unreachable(f"{exc} (NATS did not confirm)") from exc

    async def _apply_topics(self, added: list[str], removed: list[str]) -> None:
        """Asyncio side: subscribe ``added``, confirm, then unsubscribe ``removed``."""
        nc, subs = self.conn.nc, self._topics.subs
        for pattern in added:
            subs[pattern] = await nc.subscribe(
                self.topic_subject(pattern),
                cb=self._on_topic,
                pending_msgs_limit=SUB_PENDING[0],
                pending_bytes_limit=SUB_PENDING[1],
            )
        if added:
            await _confirm(nc, max(1, math.ceil(self.conn.options.request_timeout)))
        for pattern in removed:
            await subs.pop(pattern).unsubscribe()

    async def _on_topic(self, msg: Msg) -> None:
        """Asyncio side, in the trio thread: hand a topic message to
        :meth:`_serve_topics` (no hop); never raises."""
        topics = self._topics
        try:
            if topics.closed or self._closed:
                return
            data = msg.data
            if not _TOPIC_HEAD.size <= len(data) <= MAX_PAYLOAD:
                log.warning("dropped a topic message of %d bytes on %s", len(data), msg.subject)
                return
            version, origin, seq = _TOPIC_HEAD.unpack_from(data)
            if version != _TOPIC_VERSION:
                log.warning("dropped a topic message of version %d on %s", version, msg.subject)
                return
            if origin == topics.origin or not topics.first_time((origin, seq)):
                return  # our own, or a copy through another subscription
            item = (msg.subject[len(self.topic_subject("")) :], data[_TOPIC_HEAD.size :])
            await topics.put(self.conn.bridge.loop, item)
        except Exception:
            log.exception("could not take a topic message")

    async def _serve_topics(self) -> None:
        """Run the topic handler on every received message, batch by batch,
        until the transport closes."""
        topics = self._topics
        try:
            while True:
                batch = [await topics.receive.receive()]
                while len(batch) < TOPIC_BATCH:
                    try:
                        batch.append(topics.receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                topics.wake()
                for topic, data in batch:
                    handler = topics.handler
                    if handler is None:
                        continue
                    try:
                        await handler(topic, data)
                    except Exception:
                        log.exception("topic handler failed on %r", topic)
        finally:
            topics.closed = True
            topics.wake()
            subs = list(topics.subs.values())
            topics.subs.clear()
            with trio.CancelScope(shield=True):
                await self.conn.close_subscription(subs, "the topic subscriptions")

    # ------------------------------------------------------------ membership

    async def members(self) -> Sequence[NodeInfo]:
        return await self.membership.members()

    async def wait_fenced(self) -> None:
        await self.membership.wait_fenced()

    @property
    def fence_reason(self) -> str | None:
        """Why this node fenced itself, once it did."""
        return self.membership.fence_reason

    async def _watch_connection(self) -> None:
        """Fail requests in flight once the connection drops (their replies are lost)."""
        while True:
            await trio.sleep(CONNECTION_POLL)
            if self._pending and not self.conn.connected:
                for pending in list(self._pending.values()):
                    pending.fail(
                        Unreachable(f"lost the connection to NATS (node {pending.node!r})")
                    )

    # ------------------------------------------------------------ lifetime

    async def _open(self) -> None:
        """Subscribe for replies and claim the membership lease."""
        self._reply_prefix = self.conn.nc.new_inbox()

        async def subscribe() -> Subscription:
            nc = self.conn.nc
            sub = await nc.subscribe(f"{self._reply_prefix}.*", cb=self._on_reply)
            await nc.flush(timeout=max(1, math.ceil(self.conn.options.request_timeout)))
            return sub

        self._reply_sub = await self._run("subscribing for replies", subscribe)
        try:
            await self.membership.claim()
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.conn.close_subscription(self._reply_sub, "the reply inbox")
            raise

    def _start(self, nursery: trio.Nursery) -> None:
        """Start keeping the lease and watching the connection in ``nursery``."""
        nursery.start_soon(self.membership.run)
        nursery.start_soon(self._watch_connection)
        nursery.start_soon(self._serve_topics)

    async def _close(self) -> None:
        """Leave the cluster; every step is bounded by ``close_timeout``."""
        self._closed = True
        with trio.move_on_after(self.conn.options.close_timeout):
            await self._outbox.wait_idle()
        await self.membership.leave()
        for pending in list(self._pending.values()):
            pending.fail(Unreachable(f"the transport of node {self.node_name!r} closed"))
        if self._reply_sub is not None:
            await self.conn.close_subscription(self._reply_sub, "the reply inbox")


async def _confirm(nc: Any, timeout: int) -> None:
    """Asyncio side: return once the server has processed every command sent
    so far (subscriptions included).

    nats-py's ``flush`` writes its PING straight to the socket while earlier
    commands (a SUB) may still wait in the client's pending buffer for its
    flusher task, so the PONG can come back before the server has seen them.
    Handing the pending buffer to the socket first keeps the order.
    """
    flush_pending = getattr(nc, "_flush_pending", None)
    if flush_pending is not None:
        await flush_pending(force_flush=True)
    await nc.flush(timeout=timeout)


@asynccontextmanager
async def open_transport(
    config: Config, options: Mapping[str, Any]
) -> AsyncIterator[NatsTransport]:
    """The ``nats`` transport factory: join the cluster as ``config.node_name``.

    :raises ConfigError: bad ``plugin_options["nats"]``, or the node name is
        held by another live process.
    :raises Unreachable: NATS cannot be reached.
    """
    try:
        async with open_connection(config, options) as conn:
            nodes = await conn.nodes()
            transport = NatsTransport(conn=conn, node_name=config.node_name, nodes=nodes)
            await transport._open()
            async with trio.open_nursery() as nursery:
                transport._start(nursery)
                try:
                    yield transport
                finally:
                    with trio.CancelScope(shield=True):
                        await transport._close()
                    nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The background nursery wraps whatever crosses it, the body's own
        # exception included: callers see the one real exception as it is.
        failure = single_failure(group)
        if failure is None:
            raise
        raise failure  # noqa: B904 - the group is only a wrapper
