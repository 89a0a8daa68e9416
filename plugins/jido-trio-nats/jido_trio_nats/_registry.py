"""The ``nats`` registry: agent entries in the JetStream KV bucket ``<namespace>_registry``.

One key per agent (:func:`~jido_trio_nats._keys.encode_token` of its id), its
value a msgpack map of the entry. The entry's ownership epoch is the KV
revision (stream sequence) of the write that made it: every registration and
take-over is a new write, so epochs grow, across unregistrations too, and
every change is a compare-and-set on the revision read (``Nats-Expected-Last-
Subject-Sequence``), so of two nodes racing for one id exactly one wins.

Reads that decide ownership (:meth:`NatsRegistry.lookup` and every
read-modify-write) go to the stream leader (``STREAM.MSG.GET``, not a direct
get a follower may answer), so they see every write acknowledged before they
began. :meth:`~NatsRegistry.select` and :meth:`~NatsRegistry.count` list the
bucket through one short-lived consumer in a single asyncio call.

Unregistering writes a KV delete marker whose payload is the removed entry,
so watchers can say which entry went away. The helpers ``kv_read``,
``kv_write`` and ``kv_list`` are shared with the transport's membership bucket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Literal, TypeVar

import attrs
import msgspec
import nats.errors
import nats.js.errors
import trio
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.kv import KeyValue

from jido_trio import (
    AgentAlreadyExists,
    AgentNotFound,
    AgentRef,
    Config,
    InvalidMessage,
    Unreachable,
)
from jido_trio.abc import Registry, RegistryEntry, RegistryEvent

from ._connection import NatsConnection, open_connection
from ._keys import decode_token_or_none, encode_token

__all__ = ["NatsRegistry", "kv_list", "kv_read", "kv_write", "open_registry"]

log = logging.getLogger("jido_trio_nats.registry")

T = TypeVar("T")

#: Events a watcher may fall behind by before further events are dropped for it.
WATCH_BUFFER = 1024
#: Seconds a listing may go without a message before it is started again.
LIST_STALL = 1.0
#: Seconds an abandoned listing consumer lives on the server.
LIST_INACTIVE = 10.0
#: Compare-and-set rounds one call tries before it gives up under contention.
MAX_CAS_ATTEMPTS = 32

KV_OPERATION = "KV-Operation"
MARKER_REASON = "Nats-Marker-Reason"
EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"
#: JetStream error code for "no message found" (the key never existed or lapsed).
NO_MESSAGE = 10037
#: JetStream error codes for "the expected last subject sequence does not match".
WRONG_LAST_SEQUENCE = (10071, 10164)

#: What a failed bridge call may raise from nats-py / asyncio.
NATS_ERRORS: tuple[type[BaseException], ...] = (
    nats.errors.Error,
    OSError,
    asyncio.TimeoutError,
    asyncio.CancelledError,
)


# ---------------------------------------------------------------- KV helpers (asyncio side)


@attrs.frozen
class KvCurrent:
    """The last message of a key: ``revision`` 0 when the key never existed
    (or lapsed), ``data`` ``None`` when its last message is a delete marker."""

    revision: int
    data: bytes | None
    timestamp: float = 0.0


def _is_delete(headers: Mapping[str, str] | None) -> bool:
    if not headers:
        return False
    return headers.get(KV_OPERATION) in ("DEL", "PURGE") or MARKER_REASON in headers


async def kv_read(kv: KeyValue, key: str) -> KvCurrent:
    """Read the last message of ``key`` from the stream leader (asyncio side)."""
    try:
        msg = await kv._js.get_msg(kv._stream, subject=f"{kv._pre}{key}", direct=False)
    except nats.js.errors.NotFoundError as exc:
        if exc.err_code != NO_MESSAGE:
            raise  # the bucket's stream is gone, say: not "no such key"
        return KvCurrent(0, None)
    stamp = msg.time.timestamp() if msg.time is not None else 0.0
    revision = int(msg.seq or 0)
    if _is_delete(msg.headers):
        return KvCurrent(revision, None, stamp)
    return KvCurrent(revision, msg.data or b"", stamp)


async def kv_write(
    kv: KeyValue, key: str, value: bytes, *, last: int, delete: bool = False
) -> int | None:
    """Write ``value`` under ``key`` if its last revision is ``last`` (0: absent);
    return the new revision, or ``None`` when the key moved on (asyncio side).

    With ``delete`` the write is a KV delete marker carrying ``value``.
    """
    headers = {EXPECTED_LAST: str(last)}
    if delete:
        headers[KV_OPERATION] = "DEL"
    try:
        ack = await kv._js.publish(f"{kv._pre}{key}", value, headers=headers)
    except nats.js.errors.APIError as exc:
        if exc.err_code in WRONG_LAST_SEQUENCE:
            return None
        raise
    return int(ack.seq)


@attrs.frozen
class KvItem:
    """One live key of a listing."""

    key: str
    revision: int
    data: bytes
    timestamp: float


async def kv_list(
    kv: KeyValue, *, headers_only: bool = False, timeout: float = 5.0
) -> list[KvItem]:
    """Every live key of the bucket with its last value, through one ephemeral
    push consumer (``last_per_subject``, no acks), in one asyncio call.

    Writes made while the listing runs may or may not be included. NATS may
    drop pushed messages under load; a listing with a gap in its consumer
    sequence (or that stalls) is started again.

    :raises Unreachable: no complete listing within ``timeout`` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    attempts = 0
    while True:
        attempts += 1
        received = await _kv_list_once(kv, headers_only, deadline)
        if received is not None:
            break
        if loop.time() >= deadline:
            raise Unreachable(
                f"listing bucket {kv._name!r}: no complete answer within {timeout}s "
                f"({attempts} attempts)"
            )
        log.warning("listing bucket %r lost messages; listing it again", kv._name)
    items: dict[str, KvItem] = {}
    for msg in received:
        key = msg.subject[len(kv._pre) :]
        if _is_delete(msg.headers):
            items.pop(key, None)
            continue
        meta = msg.metadata
        items[key] = KvItem(
            key=key,
            revision=meta.sequence.stream,
            data=b"" if headers_only else msg.data,
            timestamp=meta.timestamp.timestamp(),
        )
    return list(items.values())


async def _kv_list_once(kv: KeyValue, headers_only: bool, deadline: float) -> list[Msg] | None:
    """One listing: the messages in delivery order, or ``None`` if some were lost."""
    js = kv._js
    nc = js._nc
    loop = asyncio.get_running_loop()
    inbox = nc.new_inbox()
    received: list[Msg] = []
    done: asyncio.Future[None] = loop.create_future()
    expected: list[int] = []  # set once the consumer is created

    async def on_msg(msg: Msg) -> None:
        try:
            received.append(msg)
            meta = msg.metadata
            if not done.done() and (
                meta.num_pending == 0 or (expected and len(received) >= expected[0])
            ):
                done.set_result(None)
        except Exception as exc:  # never raise into nats-py
            if not done.done():
                done.set_exception(exc)

    sub = await nc.subscribe(inbox, cb=on_msg)
    name: str | None = None
    try:
        info = await js.add_consumer(
            kv._stream,
            ConsumerConfig(
                deliver_subject=inbox,
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                ack_policy=AckPolicy.NONE,
                filter_subject=f"{kv._pre}>",
                headers_only=headers_only or None,
                mem_storage=True,
                num_replicas=1,
                inactive_threshold=LIST_INACTIVE,
            ),
            timeout=max(0.1, deadline - loop.time()),
        )
        name = info.name
        delivered = info.delivered.consumer_seq if info.delivered is not None else 0
        total = int(info.num_pending or 0) + int(delivered or 0)
        expected.append(total)
        if (total == 0 or len(received) >= total) and not done.done():
            done.set_result(None)
        seen = -1
        while not done.done():
            if len(received) == seen or loop.time() >= deadline:
                return None  # stalled: the message that would finish it was lost
            seen = len(received)
            wait = min(LIST_STALL, max(0.0, deadline - loop.time()))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(done), wait)
        done.result()
    finally:
        await sub.unsubscribe()
        if name is not None:
            # No reply wanted: the consumer goes away on its own if this is lost.
            await nc.publish(f"{js._prefix}.CONSUMER.DELETE.{kv._stream}.{name}")
    if any(m.metadata.sequence.consumer != i for i, m in enumerate(received, 1)):
        return None
    return received


# ---------------------------------------------------------------- stored entries


class _Stored(msgspec.Struct, kw_only=True, omit_defaults=True):
    """An entry as stored: ``epoch`` 0 means "the revision of this write"."""

    id: str
    type: str
    node: str
    ref_metadata: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    epoch: int = 0
    registered_at: float = 0.0
    #: What made this write: "registered", "updated" or "unregistered" (delete markers).
    kind: str = "registered"


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_Stored)


def _encode(stored: _Stored) -> bytes:
    try:
        return _encoder.encode(stored)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidMessage(f"registry metadata must be msgpack-encodable: {exc}") from exc


def _decode(data: bytes, key: str) -> _Stored | None:
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        log.warning("ignoring malformed registry entry %r: %s", key[:60], exc)
        return None


def _entry(stored: _Stored, revision: int) -> RegistryEntry:
    return RegistryEntry(
        ref=AgentRef(
            id=stored.id, type=stored.type, node=stored.node, metadata=stored.ref_metadata
        ),
        epoch=stored.epoch or revision,
        metadata=stored.metadata,
        registered_at=stored.registered_at,
    )


def _resolved(stored: _Stored, revision: int, **changes: Any) -> _Stored:
    """A copy of ``stored`` with its epoch made explicit and ``changes`` applied."""
    fields = {f: getattr(stored, f) for f in stored.__struct_fields__}
    fields["epoch"] = stored.epoch or revision
    fields.update(changes)
    return _Stored(**fields)


Outcome = tuple[Literal["ok", "exists", "missing", "contended"], Any]


# ---------------------------------------------------------------- the registry


@attrs.define(eq=False)
class NatsRegistry(Registry):
    """Agent entries in a JetStream KV bucket shared by every node."""

    conn: NatsConnection
    kv: KeyValue

    async def _run(
        self, what: str, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any
    ) -> T:
        return await self.conn.run(what, fn, *args, **kwargs)

    # ------------------------------------------------------------ asyncio side

    async def _register_op(self, key: str, node: str, value: bytes) -> Outcome:
        last = 0
        for _ in range(MAX_CAS_ATTEMPTS):
            revision = await kv_write(self.kv, key, value, last=last)
            if revision is not None:
                return "ok", revision
            current = await kv_read(self.kv, key)
            if current.data is not None:
                stored = _decode(current.data, key)
                if stored is not None and stored.node != node:
                    return "exists", stored.node
            last = current.revision
        return "contended", None

    async def _take_over_op(self, key: str, node: str, epoch: int) -> Outcome:
        for _ in range(MAX_CAS_ATTEMPTS):
            current = await kv_read(self.kv, key)
            stored = None if current.data is None else _decode(current.data, key)
            if stored is None:
                return "missing", None
            if (stored.epoch or current.revision) != epoch:
                return "exists", (stored.node, stored.epoch or current.revision)
            moved = _resolved(
                stored, current.revision, node=node, epoch=0, kind="updated",
                registered_at=time.time(),
            )  # fmt: skip
            revision = await kv_write(self.kv, key, _encode(moved), last=current.revision)
            if revision is not None:
                return "ok", (moved, revision)
        return "contended", None

    async def _unregister_op(self, key: str, node: str | None) -> None:
        for _ in range(MAX_CAS_ATTEMPTS):
            current = await kv_read(self.kv, key)
            if current.data is None:
                return
            stored = _decode(current.data, key)
            if node is not None and (stored is None or stored.node != node):
                return
            payload = (
                b"" if stored is None else _encode(
                    _resolved(stored, current.revision, kind="unregistered")
                )
            )  # fmt: skip
            if await kv_write(self.kv, key, payload, last=current.revision, delete=True):
                return
        log.warning("gave up unregistering %r: the entry kept changing", key[:60])

    async def _update_op(self, key: str, metadata: dict[str, Any]) -> Outcome:
        for _ in range(MAX_CAS_ATTEMPTS):
            current = await kv_read(self.kv, key)
            stored = None if current.data is None else _decode(current.data, key)
            if stored is None:
                return "missing", None
            updated = _resolved(
                stored, current.revision, metadata={**stored.metadata, **metadata},
                kind="updated",
            )  # fmt: skip
            revision = await kv_write(self.kv, key, _encode(updated), last=current.revision)
            if revision is not None:
                return "ok", (updated, revision)
        return "contended", None

    # ------------------------------------------------------------ Registry

    async def register(
        self, ref: AgentRef, metadata: Mapping[str, Any] | None = None
    ) -> RegistryEntry:
        if ref.node is None:
            await trio.lowlevel.checkpoint()
            raise ValueError("a registered ref must name its owning node")
        now = time.time()
        merged = {**ref.metadata, **(metadata or {})}
        stored = _Stored(
            id=ref.id,
            type=ref.type,
            node=ref.node,
            ref_metadata=dict(ref.metadata),
            metadata=merged,
            registered_at=now,
        )
        value = _encode(stored)
        outcome, detail = await self._run(
            f"registering agent {ref.id!r}",
            self._register_op,
            encode_token(ref.id, "agent id"),
            ref.node,
            value,
        )
        if outcome == "exists":
            raise AgentAlreadyExists(f"agent {ref.id!r} is owned by node {detail!r}")
        if outcome != "ok":
            raise AgentAlreadyExists(f"agent {ref.id!r}: registration kept losing races")
        return RegistryEntry(ref=ref, epoch=detail, metadata=merged, registered_at=now)

    async def take_over(self, ref: AgentRef, *, epoch: int) -> RegistryEntry:
        if ref.node is None:
            await trio.lowlevel.checkpoint()
            raise ValueError("a registered ref must name its owning node")
        outcome, detail = await self._run(
            f"taking over agent {ref.id!r}",
            self._take_over_op,
            encode_token(ref.id, "agent id"),
            ref.node,
            epoch,
        )
        if outcome == "missing":
            raise AgentNotFound(f"no agent registered as {ref.id!r}")
        if outcome == "exists":
            owner, current = detail
            raise AgentAlreadyExists(
                f"agent {ref.id!r} is at epoch {current}, not {epoch}: node {owner!r} owns it"
            )
        if outcome != "ok":
            raise AgentAlreadyExists(f"agent {ref.id!r}: take-over kept losing races")
        stored, revision = detail
        return _entry(stored, revision)

    async def unregister(self, agent_id: str, *, node: str | None = None) -> None:
        await self._run(
            f"unregistering agent {agent_id!r}",
            self._unregister_op,
            encode_token(agent_id, "agent id"),
            node,
        )

    async def lookup(self, agent_id: str) -> RegistryEntry:
        key = encode_token(agent_id, "agent id")
        current = await self._run(f"looking up agent {agent_id!r}", kv_read, self.kv, key)
        stored = None if current.data is None else _decode(current.data, key)
        if stored is None:
            raise AgentNotFound(f"no agent registered as {agent_id!r}")
        return _entry(stored, current.revision)

    async def _entries(self) -> list[RegistryEntry]:
        items = await self._run(
            "listing the registry", kv_list, self.kv, timeout=self.conn.options.request_timeout
        )
        entries = []
        for item in items:
            stored = _decode(item.data, item.key)
            if stored is not None:
                entries.append(_entry(stored, item.revision))
        return entries

    async def select(
        self,
        *,
        type: str | None = None,
        node: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> list[RegistryEntry]:
        wanted = dict(metadata or {})
        return [
            e
            for e in await self._entries()
            if (type is None or e.ref.type == type)
            and (node is None or e.ref.node == node)
            and all(k in e.metadata and e.metadata[k] == v for k, v in wanted.items())
        ]

    async def update_metadata(self, agent_id: str, metadata: Mapping[str, Any]) -> RegistryEntry:
        _encode(_Stored(id="", type="", node="", metadata=dict(metadata)))  # fail early
        outcome, detail = await self._run(
            f"updating agent {agent_id!r}",
            self._update_op,
            encode_token(agent_id, "agent id"),
            dict(metadata),
        )
        if outcome == "missing":
            raise AgentNotFound(f"no agent registered as {agent_id!r}")
        if outcome != "ok":
            raise AgentAlreadyExists(f"agent {agent_id!r}: metadata update kept losing races")
        stored, revision = detail
        return _entry(stored, revision)

    async def count(self) -> int:
        items = await self._run(
            "counting the registry",
            kv_list,
            self.kv,
            headers_only=True,
            timeout=self.conn.options.request_timeout,
        )
        return len(items)

    @asynccontextmanager
    async def watch(self) -> AsyncIterator[AsyncIterator[RegistryEvent]]:
        send, receive = trio.open_memory_channel[RegistryEvent](WATCH_BUFFER)
        dropped = 0
        pre = self.kv._pre

        async def on_msg(msg: Msg) -> None:
            # Runs on the asyncio side, in the trio thread: hands the event to
            # trio without a hop, and never raises into nats-py.
            nonlocal dropped
            try:
                event = _event(msg, pre)
                if event is None:
                    return
                send.send_nowait(event)
            except trio.WouldBlock:
                dropped += 1
                if dropped == 1 or dropped % 1000 == 0:
                    log.warning("a registry watcher fell behind: %d events dropped", dropped)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            except Exception:
                log.exception("registry watch event could not be delivered")

        async def subscribe() -> Any:
            return await self.kv._js.subscribe(
                f"{pre}>",
                stream=self.kv._stream,
                cb=on_msg,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.NEW,
                inactive_threshold=60.0,
            )

        sub = await self._run("watching the registry", subscribe)
        try:
            async with receive:
                yield receive
        finally:
            send.close()
            with (
                trio.CancelScope(shield=True),
                trio.move_on_after(self.conn.options.connect_timeout),
            ):
                try:
                    await self.conn.bridge.run(sub.unsubscribe)
                except Exception as exc:  # the consumer lapses on its own
                    log.debug("stopping a registry watcher: %r", exc)


def _event(msg: Msg, pre: str) -> RegistryEvent | None:
    key = msg.subject[len(pre) :]
    revision = msg.metadata.sequence.stream
    if _is_delete(msg.headers):
        stored = _decode(msg.data, key) if msg.data else None
        if stored is None:  # deleted by someone else: all we know is the id
            agent_id = decode_token_or_none(key, "the registry bucket")
            if agent_id is None:
                return None
            stored = _Stored(id=agent_id, type="", node="", epoch=revision)
        return RegistryEvent(kind="unregistered", entry=_entry(stored, revision))
    stored = _decode(msg.data, key)
    if stored is None:
        return None
    kind: Literal["registered", "updated"] = "updated" if stored.kind == "updated" else "registered"
    return RegistryEvent(kind=kind, entry=_entry(stored, revision))


@asynccontextmanager
async def open_registry(config: Config, options: Mapping[str, Any]) -> AsyncIterator[NatsRegistry]:
    """The ``nats`` registry factory: the node's shared connection and its bucket.

    :raises ConfigError: bad ``plugin_options["nats"]``.
    :raises Unreachable: NATS cannot be reached.
    """
    async with open_connection(config, options) as conn:
        kv = await conn.kv("registry")
        yield NatsRegistry(conn=conn, kv=kv)
