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

A compare-and-set that loses to a write of the same node (a restart, a
metadata update) is retried at once, up to :data:`MAX_CAS_ATTEMPTS` rounds;
only an entry owned by another node is :class:`~jido_trio.AgentAlreadyExists`,
and an entry that kept changing without that is
:class:`~jido_trio.RegistryConflict`.

Unregistering writes a KV delete marker whose payload is the removed entry,
so watchers can say which entry went away. The KV helpers are those of
:mod:`jido_trio_nats._jetstream`, shared with the other engines.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Mapping
from contextlib import asynccontextmanager
from typing import Any
from typing import Literal
from typing import TypeVar

import attrs
import msgspec
import trio
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from nats.js.kv import KeyValue

from jido_trio import AgentAlreadyExists
from jido_trio import AgentNotFound
from jido_trio import AgentRef
from jido_trio import Config
from jido_trio import InvalidMessage
from jido_trio import RegistryConflict
from jido_trio.abc import Metadata
from jido_trio.abc import Registry
from jido_trio.abc import RegistryEntry
from jido_trio.abc import RegistryEvent
from jido_trio.abc import check_registered_ref
from jido_trio.abc import registry_matcher

from ._connection import NatsConnection
from ._connection import open_connection
from ._jetstream import is_deletion
from ._jetstream import kv_read
from ._jetstream import kv_write
from ._keys import decode_token_or_none
from ._keys import encode_token

__all__ = ["NatsRegistry", "open_registry"]

log = logging.getLogger("jido_trio_nats.registry")

T = TypeVar("T")

#: Events a watcher may fall behind by before further events are dropped for it.
WATCH_BUFFER = 1024
#: Compare-and-set rounds one call tries before it gives up under contention.
MAX_CAS_ATTEMPTS = 32

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

    async def _change(
        self,
        operation: str,
        agent_id: str,
        op: Callable[..., Awaitable[Outcome]],
        *args: Any,
    ) -> tuple[Literal["ok", "exists"], Any]:
        """Run the compare-and-set ``op`` on the entry of ``agent_id``: its
        outcome and detail when it changed the entry or found another owner.

        :raises AgentNotFound: there is no entry.
        :raises RegistryConflict: the entry kept changing under other writers.
        """
        outcome, detail = await self._run(
            f"{operation} of agent {agent_id!r}", op, encode_token(agent_id, "agent id"), *args
        )
        if outcome == "missing":
            raise AgentNotFound(f"no agent registered as {agent_id!r}")
        if outcome == "contended":
            raise RegistryConflict(agent_id, operation)
        return outcome, detail

    # ------------------------------------------------------------ Registry

    async def register(
        self, ref: AgentRef, metadata: Mapping[str, Any] | None = None
    ) -> RegistryEntry:
        node = check_registered_ref(ref)
        now = time.time()
        merged = {**ref.metadata, **(metadata or {})}
        stored = _Stored(
            id=ref.id,
            type=ref.type,
            node=node,
            ref_metadata=dict(ref.metadata),
            metadata=merged,
            registered_at=now,
        )
        outcome, detail = await self._change(
            "registration", ref.id, self._register_op, node, _encode(stored)
        )
        if outcome == "exists":
            raise AgentAlreadyExists(f"agent {ref.id!r} is owned by node {detail!r}", node=detail)
        return RegistryEntry(ref=ref, epoch=detail, metadata=merged, registered_at=now)

    async def take_over(self, ref: AgentRef, *, epoch: int) -> RegistryEntry:
        node = check_registered_ref(ref)
        outcome, detail = await self._change("take-over", ref.id, self._take_over_op, node, epoch)
        if outcome == "exists":
            owner, current = detail
            raise AgentAlreadyExists(
                f"agent {ref.id!r} is at epoch {current}, not {epoch}: node {owner!r} owns it"
            )
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
        items = await self.conn.list_bucket("listing the registry", self.kv)
        entries = []
        for item in items:
            stored = _decode(item.data, item.key)
            if stored is not None:
                entries.append(_entry(stored, item.revision))
        return entries

    async def select(
        self, *, type: str | None = None, node: str | None = None, metadata: Metadata | None = None
    ) -> list[RegistryEntry]:
        matches = registry_matcher(type=type, node=node, metadata=metadata)
        return [e for e in await self._entries() if matches(e.ref, e.metadata)]

    async def update_metadata(self, agent_id: str, metadata: Mapping[str, Any]) -> RegistryEntry:
        _encode(_Stored(id="", type="", node="", metadata=dict(metadata)))  # fail early
        _, (stored, revision) = await self._change(
            "metadata update", agent_id, self._update_op, dict(metadata)
        )
        return _entry(stored, revision)

    async def count(self) -> int:
        items = await self.conn.list_bucket("counting the registry", self.kv, headers_only=True)
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
            # The consumer lapses on its own if this fails.
            await self.conn.close_subscription(sub, "a registry watcher")


def _event(msg: Msg, pre: str) -> RegistryEvent | None:
    key = msg.subject[len(pre) :]
    revision = msg.metadata.sequence.stream
    if is_deletion(msg.headers):
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
