"""Cluster membership: one lease per node in the KV bucket ``<namespace>_nodes``.

A node's key is its name (:func:`~jido_trio_nats._keys.encode_token`), its
value ``msgpack {"node", "incarnation", "since"}``. Every write is a
compare-and-set on the key's last revision.

- *Joining* creates the key if it is free. A key left by an earlier process
  of the same name (one that crashed) is taken over once its revision has
  stayed the same for ``lease_ttl`` by this process's clock; a key that keeps
  changing belongs to a live process, and joining fails after ``lease_ttl``
  plus a margin.
- *Renewing* rewrites the key every ``heartbeat_interval`` (``lease_ttl /
  4``; every :data:`RETRY` seconds after a failure).
- *Declaring a node gone* is its peers' job, not the server's. Every node
  watches the bucket (one ordered consumer) and remembers when it first saw
  each key's current revision. A key whose revision has not changed for
  ``lease_ttl`` -- counted only while this node's own renewals succeed, so a
  JetStream leader election or this node's own outage never counts against
  the others -- is deleted with a compare-and-set on that revision. If the
  owner renewed in the meantime the delete fails and nothing happens; if it
  succeeds, the node is no longer a member and failover may start its agents
  elsewhere. The server cannot do this job: a leader elected after an outage
  expires every key the outage kept from being renewed.
- *Fencing*: a node stops (:meth:`Membership.wait_fenced` returns) at once
  when a renewal finds its key deleted (its peers declared it gone) or held
  by another incarnation, and when it could not renew for ``fence_after``
  seconds (longer than a leader election, so an election fences nobody).
  Ownership of each agent is fenced separately by the registry's epochs, so
  a node that runs on for a while after being declared gone cannot change
  what the new owner sees.
- *Leaving* deletes the key, so the peers see the node go at once.

Every write carries a ``Nats-TTL`` well beyond ``fence_after``: a backstop
that removes keys nobody is left to declare gone (deletion markers expire
after a minute). A bucket made elsewhere without per-message TTLs gets
writes without one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import attrs
import msgspec
import trio
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import DeliverPolicy
from nats.js.kv import KeyValue

from jido_trio import CallTimeout
from jido_trio import ConfigError
from jido_trio import JidoError
from jido_trio import Unreachable
from jido_trio.abc import NodeInfo

from ._connection import NatsConnection
from ._jetstream import KV_OPERATION
from ._jetstream import TTL
from ._jetstream import is_deletion
from ._jetstream import kv_read
from ._jetstream import publish_if_last
from ._keys import decode_token_or_none
from ._keys import encode_token

__all__ = ["RETRY", "Membership"]

log = logging.getLogger("jido_trio_nats.membership")

#: Seconds between attempts to renew after a failed one.
RETRY = 0.25
#: Seconds a deletion marker (a node that left or was declared gone) stays in the bucket.
MARKER_TTL = 60


class _Member(msgspec.Struct):
    node: str
    incarnation: str
    since: float


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_Member)


def _incarnation(data: bytes) -> str:
    """The incarnation in a member's value ("" if it cannot be read)."""
    try:
        return _decoder.decode(data).incarnation
    except (msgspec.DecodeError, msgspec.ValidationError):
        return ""


@attrs.define
class _Seen:
    """A peer's key as this node last saw it: its revision, and when (trio
    time) this node first saw that revision."""

    revision: int
    since: float


@attrs.define(eq=False)
class Membership:
    """This node's lease in the members bucket, and its watch over the others'."""

    conn: NatsConnection
    node_name: str
    bucket: KeyValue
    incarnation: str
    since: float
    #: Revision of this node's last successful write of its key.
    revision: int = 0
    #: Trio time just before that write was sent.
    renewed_at: float = -math.inf
    fence_reason: str | None = None
    _fenced: trio.Event = attrs.field(factory=trio.Event)
    _seen: dict[str, _Seen] = attrs.field(factory=dict)
    #: Start of the current unbroken run of successful renewals (``None``:
    #: the last one failed): only time after it counts against a peer.
    _steady_since: float | None = None
    _last_renewal: float = -math.inf
    _watch: Subscription | None = None
    #: Whether the bucket accepts ``Nats-TTL`` (known once joined).
    _ttl_allowed: bool = False

    # ------------------------------------------------------------ settings

    @property
    def _key(self) -> str:
        return encode_token(self.node_name, "node name")

    @property
    def _value(self) -> bytes:
        member = _Member(node=self.node_name, incarnation=self.incarnation, since=self.since)
        return _encoder.encode(member)

    @property
    def lease_ttl(self) -> float:
        return self.conn.options.lease_ttl

    @property
    def fence_after(self) -> float:
        """Seconds without a successful renewal before this node fences itself."""
        return max(self.conn.options.fence_after, self.lease_ttl)

    @property
    def _heartbeat(self) -> float:
        return self.conn.options.heartbeat_interval

    @property
    def _check_interval(self) -> float:
        """How often the peers' keys are checked for lapsed leases."""
        return min(0.5, self.lease_ttl / 8)

    @property
    def _ttl_header(self) -> str:
        return str(math.ceil(2 * self.fence_after))

    # ------------------------------------------------------------ asyncio side

    def _headers(self, *, delete: bool) -> dict[str, str]:
        headers = {KV_OPERATION: "DEL"} if delete else {}
        if self._ttl_allowed:
            headers[TTL] = str(MARKER_TTL) if delete else self._ttl_header
        return headers

    async def _write(self, last: int, *, delete: bool = False) -> int | None:
        """Write (or delete) this node's key if its last revision is ``last``."""
        subject = f"{self.bucket._pre}{self._key}"
        data = b"" if delete else self._value
        headers = self._headers(delete=delete)
        return await publish_if_last(self.conn.js, subject, data, last=last, headers=headers)

    async def _allows_ttl(self) -> bool:
        info = await self.conn.js.stream_info(self.bucket._stream)
        return bool(info.config.allow_msg_ttl)

    async def _try_claim(self, take_over: int) -> tuple[int | None, int]:
        """Create this node's key if it is free, or overwrite it if it is still
        at revision ``take_over`` (a lapsed lease of an earlier process):
        ``(our revision, 0)``, or ``(None, the holder's revision)``."""
        last = 0
        for _ in range(8):
            revision = await self._write(last)
            if revision is not None:
                return revision, 0
            current = await kv_read(self.bucket, self._key)
            if current.data is not None and current.revision != take_over:
                return None, current.revision
            last = current.revision
        return None, 0

    async def _renew_once(self) -> int | str:
        """Renew the lease: the new revision, or why it is no longer ours."""
        revision = await self._write(self.revision)
        if revision is not None:
            return revision
        # Perhaps our own earlier renewal landed but its ack was lost.
        current = await kv_read(self.bucket, self._key)
        if current.data is None:
            return "its peers declared it gone: it did not renew its lease for lease_ttl"
        try:
            holder = _decoder.decode(current.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            holder = None
        if holder is None or holder.incarnation != self.incarnation:
            return "another process holds its membership lease"
        revision = await self._write(current.revision)
        return "another process holds its membership lease" if revision is None else revision

    async def _declare_gone(self, key: str, revision: int) -> int | None:
        """Delete a peer's key if it is still at ``revision``; otherwise
        return its current revision (0 if it is gone already)."""
        subject = f"{self.bucket._pre}{key}"
        headers = self._headers(delete=True)
        if await publish_if_last(self.conn.js, subject, b"", last=revision, headers=headers):
            return None
        current = await kv_read(self.bucket, key)
        return current.revision if current.data is not None else 0

    async def _subscribe(self) -> Subscription:
        return await self.conn.js.subscribe(
            f"{self.bucket._pre}>",
            stream=self.bucket._stream,
            cb=self._on_change,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            headers_only=True,
            # A watch whose consumer went with its server starts again after
            # two missed heartbeats.
            idle_heartbeat=max(1.0, self.lease_ttl / 2),
        )

    async def _on_change(self, msg: Msg) -> None:
        """A key changed (asyncio side, in the trio thread; never raises)."""
        try:
            key = msg.subject[len(self.bucket._pre) :]
            if key == self._key:
                return
            if is_deletion(msg.headers):
                self._seen.pop(key, None)
                return
            revision = int(msg.metadata.sequence.stream)
            seen = self._seen.get(key)
            if seen is None or revision > seen.revision:
                self._seen[key] = _Seen(revision, trio.current_time())
        except Exception:
            log.exception("could not take a membership change")

    # ------------------------------------------------------------ trio side

    async def claim(self) -> None:
        """Join: take this node's key (see the module docstring). A bucket
        that does not answer yet (its stream is electing its first leader on
        a fresh cluster) is tried again for a while.

        :raises ConfigError: a live process holds the name.
        :raises Unreachable: NATS cannot be reached.
        :raises CallTimeout: NATS did not answer in time.
        """
        options = self.conn.options
        wait = self.lease_ttl + max(1.0, self.lease_ttl / 4)
        #: Until when a holder of the name is waited for (from the first answer).
        deadline: float | None = None
        give_up = trio.current_time() + max(wait, 3 * options.request_timeout)
        poll = min(0.25, self._heartbeat)
        held = _Seen(0, trio.current_time())
        checked = False
        while True:
            started = trio.current_time()
            lapsed = held.revision if started - held.since >= self.lease_ttl else -1
            try:
                if not checked:
                    self._ttl_allowed = await self.conn.run(
                        "reading the members bucket's configuration", self._allows_ttl
                    )
                    checked = True
                revision, holder = await self.conn.run(
                    f"joining as node {self.node_name!r}", self._try_claim, lapsed
                )
            except (Unreachable, CallTimeout) as exc:
                if started >= give_up:
                    raise
                log.info("node %r cannot join yet: %s", self.node_name, exc)
                await trio.sleep(poll)
                continue
            if revision is not None:
                if lapsed > 0:
                    log.warning(
                        "node %r took over the membership lease an earlier process left",
                        self.node_name,
                    )
                self.revision, self.renewed_at = revision, started
                self._renewed(trio.current_time())
                return
            if holder != held.revision:
                held = _Seen(holder, trio.current_time())
            if deadline is None:
                deadline = started + wait
            if started >= deadline:
                raise ConfigError(
                    f"node name {self.node_name!r} is in use: another process holds its "
                    f"membership lease in NATS (namespace {self.conn.namespace!r}) and it "
                    f"did not lapse within {wait:g}s"
                )
            await trio.sleep(min(poll, max(0.0, deadline - trio.current_time())))

    async def run(self) -> None:
        """Keep the lease and watch the peers' until cancelled or fenced."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_peers)
            await self._keep_lease()
            nursery.cancel_scope.cancel()

    async def wait_fenced(self) -> None:
        await self._fenced.wait()

    def _fence(self, reason: str) -> None:
        if not self._fenced.is_set():
            log.error("node %r lost its cluster membership: %s", self.node_name, reason)
            self.fence_reason = reason
            self._fenced.set()

    def _renewed(self, now: float) -> None:
        if self._steady_since is None or now - self._last_renewal > 2 * self._heartbeat:
            self._steady_since = now
        self._last_renewal = now

    def _steady(self, now: float) -> float | None:
        """Since when this node's renewals have succeeded without a break
        (``None`` if they are not succeeding right now)."""
        if self._steady_since is None or now - self._last_renewal > 2 * self._heartbeat:
            return None
        return self._steady_since

    async def _keep_lease(self) -> None:
        interval = self._heartbeat
        next_at = self.renewed_at + interval
        failing = False
        while True:
            with trio.move_on_at(self.renewed_at + self.fence_after):
                await trio.sleep_until(next_at)
                started = trio.current_time()
                try:
                    outcome = await self.conn.run(
                        f"renewing the lease of node {self.node_name!r}", self._renew_once
                    )
                except JidoError as exc:
                    self._steady_since = None
                    if not failing:
                        log.warning("node %r could not renew its lease: %s", self.node_name, exc)
                    failing = True
                    next_at = trio.current_time() + min(interval, RETRY)
                    continue
                if isinstance(outcome, str):
                    self._fence(outcome)
                    return
                if failing:
                    log.warning("node %r renewed its lease again", self.node_name)
                    failing = False
                self.revision, self.renewed_at = outcome, started
                self._renewed(trio.current_time())
                next_at = started + interval
                continue
            self._fence(f"its membership lease could not be renewed for {self.fence_after:g}s")
            return

    async def _watch_peers(self) -> None:
        """Declare gone every peer whose lease lapsed (see the module docstring)."""
        while True:
            await trio.sleep(self._check_interval)
            if self._watch is None:
                try:
                    self._watch = await self.conn.run(
                        "watching the cluster members", self._subscribe
                    )
                except JidoError as exc:
                    log.debug("cannot watch the cluster members yet: %s", exc)
                    continue
            now = trio.current_time()
            steady = self._steady(now)
            if steady is None:
                continue
            for key, seen in list(self._seen.items()):
                if now - max(seen.since, steady) < self.lease_ttl:
                    continue
                try:
                    current = await self.conn.run(
                        "declaring a node gone", self._declare_gone, key, seen.revision
                    )
                except JidoError as exc:
                    log.debug("could not declare %r gone: %s", key, exc)
                    break
                if current is None:
                    log.warning(
                        "node %r missed its lease renewals for %gs: declared it gone",
                        decode_token_or_none(key, "the members bucket") or key,
                        self.lease_ttl,
                    )
                    self._seen.pop(key, None)
                elif current == 0:
                    self._seen.pop(key, None)
                else:
                    # It renewed (the watch had not told us yet): watch it anew.
                    self._seen[key] = _Seen(current, trio.current_time())

    async def members(self) -> Sequence[NodeInfo]:
        """Every node that holds a lease right now (a listing of the bucket)."""
        items = await self.conn.list_bucket("listing the cluster members", self.bucket)
        names = ((decode_token_or_none(i.key, "the members bucket"), i) for i in items)
        return sorted(
            (
                NodeInfo(
                    name=name, alive=True, last_seen=i.timestamp, incarnation=_incarnation(i.data)
                )
                for name, i in names
                if name
            ),
            key=lambda m: m.name,
        )

    async def is_member(self, node: str) -> bool:
        """Whether ``node`` holds a lease (a read from the stream leader).

        :raises JidoError: NATS could not answer.
        """
        current = await self.conn.run(
            f"looking up node {node!r}", kv_read, self.bucket, encode_token(node, "node name")
        )
        return current.data is not None

    async def leave(self) -> None:
        """Delete this node's key (unless fenced), and stop watching; each
        step within ``close_timeout``, failures logged."""
        if self.revision and not self._fenced.is_set() and self.conn.connected:
            with trio.move_on_after(self.conn.options.close_timeout):
                try:
                    await self.conn.run(
                        "leaving the cluster", self._write, self.revision, delete=True
                    )
                except JidoError as exc:
                    log.debug("leaving: could not delete the membership key: %s", exc)
        watch, self._watch = self._watch, None
        if watch is not None:
            await self.conn.close_subscription(watch, "the members watch")
