"""Coordination on JetStream KV: locks with fencing tokens, leader election, barriers.

Everything lives in the bucket ``<namespace>_locks``, one key per lock
(``lock/<name>``), election group (``elect/<group>``) and barrier
(``barrier/<name>``), names encoded by :func:`~jido_trio_nats._keys.encode_token`.

Leases (locks and elections):

- *Acquire* writes the holder's record only if the key is free: absent, a
  delete marker, or expired. The write carries
  ``Nats-Expected-Last-Subject-Sequence`` (the revision that was seen free),
  so of two contenders exactly one wins, and ``Nats-TTL`` (``ttl`` rounded up
  to whole seconds, the server's granularity), so the *server* drops the
  lease of a holder that died without releasing it.
- The *fencing token* is the revision of that write: a stream sequence, so
  strictly greater for every later holder of any key of the bucket.
- ``Lease.expires_at`` is ``trio.current_time() + ttl`` taken *before* the
  write was sent. A waiter that sees a record of revision ``R`` takes the
  lease over (a write expecting ``R``) once ``R`` has been the current
  revision for the record's ttl by the waiter's own clock: it saw ``R`` after
  it was written, so it never takes over before the holder's ``expires_at``.
  This gives sub-second ttls their exact meaning; the server TTL is the
  backstop for keys nobody is waiting on.
- *Release* writes a delete marker expecting the holder's own revision, so a
  holder whose lease lapsed never frees the next holder's lease. Markers
  expire after a minute, so lock names used once do not accumulate.
- *Waiters* share one ordered, headers-only consumer per service on the
  bucket (started on first contention): a release or a new record wakes the
  waiters of that key at once; they also re-read every second in case an
  event was missed. The whole wait is one asyncio coroutine (one trio hop).
- A caller cancelled while its acquiring write was in flight removes that
  write afterwards (found by a random nonce in the record); a caller
  cancelled after the write succeeded releases it.

Election is a lease renewed (a write expecting the last revision, with a
fresh TTL) every ``ttl / 3`` while the body runs. A leader that cannot renew
before its lease lapses, or finds the key taken by someone else, has lost
leadership: its body is cancelled and the ``async with`` raises
:class:`~jido_trio.StateConflict` (the key moved on without us) or :class:`~jido_trio.Unreachable`
(NATS could not be reached in time). Leaving the body resigns. The lease's
``expires_at`` is the end of the first term; each renewal extends it.

A barrier is a record ``{"gen", "arrived", "done"}`` updated by
compare-and-set. The arrival that brings ``arrived`` to ``parties`` marks the
generation done; the next arrival starts a new generation, so a barrier name
can be reused (as with the local engine, a waiter that is cancelled still
counts as arrived).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
import math
import secrets
from collections.abc import AsyncIterator
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Mapping
from contextlib import asynccontextmanager
from typing import Any

import attrs
import nats.errors
import trio
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import DeliverPolicy

from jido_trio import Config
from jido_trio import EngineError
from jido_trio import JidoError
from jido_trio import StateConflict
from jido_trio import Unreachable
from jido_trio.abc import Coordination
from jido_trio.abc import Lease
from jido_trio.abc import check_parties
from jido_trio.abc import check_ttl

from ._connection import NatsConnection
from ._connection import open_connection
from ._jetstream import KV_OPERATION
from ._jetstream import NATS_ERRORS
from ._jetstream import TTL
from ._jetstream import is_deletion
from ._jetstream import publish_if_last
from ._jetstream import raise_jido_error
from ._jetstream import read_last
from ._keys import encode_token

__all__ = ["NatsCoordination", "open_coordination"]

log = logging.getLogger("jido_trio_nats.coordination")

_BARRIER_GEN = "Jido-Barrier-Gen"
_BARRIER_DONE = "Jido-Barrier-Done"
#: Seconds a waiter waits for a watch event before it re-reads the key anyway.
_POLL = 1.0
#: Seconds a release's delete marker (and a finished barrier) stays in the bucket.
_MARKER_TTL = 60
#: Forget the remembered free revisions beyond this many keys.
_MAX_REMEMBERED = 4096


class _Taken(Exception):
    """A compare-and-set write lost: the key is not at the expected revision."""


def _ttl_header(ttl: float) -> str | None:
    """``Nats-TTL`` for a lease of ``ttl`` seconds: whole seconds, rounded up,
    so the server never drops a lease before its holder thinks it lapsed."""
    if not math.isfinite(ttl):
        return None
    return str(max(1, math.ceil(ttl)))


def _decode(data: bytes | None) -> dict[str, Any]:
    try:
        value = json.loads(data or b"")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


@attrs.define(eq=False)
class _Listener:
    """Watch events for one key, queued for one waiting coroutine (asyncio side)."""

    events: collections.deque[tuple[int, Mapping[str, str]]] = attrs.field(
        factory=collections.deque
    )
    wakeup: asyncio.Event = attrs.field(factory=asyncio.Event)

    def push(self, revision: int, headers: Mapping[str, str]) -> None:
        self.events.append((revision, headers))
        self.wakeup.set()

    async def next(self, timeout: float) -> tuple[int, Mapping[str, str]] | None:
        """The next event, or None after ``timeout`` seconds without one."""
        if not self.events:
            self.wakeup.clear()
            try:
                await asyncio.wait_for(self.wakeup.wait(), max(timeout, 0.0))
            except TimeoutError:
                return None
        return self.events.popleft() if self.events else None


@attrs.define(eq=False)
class _Term:
    """A leader's term: its current revision, lease expiry and renewal task."""

    revision: int
    expires: float
    scope: trio.CancelScope
    renewer: asyncio.Task[None] | None = None
    #: The renewal write in flight, if any (resigning waits for its outcome).
    renewal: asyncio.Future[int] | None = None
    lost: BaseException | None = None

    def lose(self, error: BaseException) -> None:
        if self.lost is None:
            self.lost = error
            self.scope.cancel()


@attrs.define(eq=False)
class NatsCoordination(Coordination):
    """Locks, leader election and barriers shared by every node of a NATS cluster.

    Open it with :func:`open_coordination` (the ``nats`` coordination factory).
    """

    conn: NatsConnection
    #: Whether the bucket answers direct gets (it does when this plugin made it).
    _direct: bool = True
    _bucket: str = attrs.field(init=False)
    _stream: str = attrs.field(init=False)
    _prefix: str = attrs.field(init=False)
    _holders: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    #: key -> a revision at which we last saw it free (a first write's guess).
    _free: dict[str, int] = attrs.field(factory=dict, init=False)
    _listeners: dict[str, set[_Listener]] = attrs.field(factory=dict, init=False)
    #: Starts (then holds) the watch subscription on the bucket, shared by all waiters.
    _watch: asyncio.Task[Subscription] | None = attrs.field(default=None, init=False)
    _renewers: set[asyncio.Task[None]] = attrs.field(factory=set, init=False)

    def __attrs_post_init__(self) -> None:
        self._bucket = self.conn.name("locks")
        self._stream = f"KV_{self._bucket}"
        self._prefix = f"$KV.{self._bucket}."

    # ------------------------------------------------------------ public API

    @asynccontextmanager
    async def lock(
        self, name: str, *, ttl: float, holder: str | None = None
    ) -> AsyncIterator[Lease]:
        check_ttl(ttl)
        key = "lock/" + encode_token(name, "lock name")
        holder = holder or f"{self.conn.node_name}#{next(self._holders)}"
        record = self._record(holder, ttl)
        revision, started = await self._take(key, record, ttl)
        try:
            yield Lease(name=name, holder=holder, token=revision, expires_at=started + ttl)
        finally:
            await self._shielded(self._release, key, revision, what=f"releasing lock {name!r}")

    @asynccontextmanager
    async def elect(self, group: str, *, candidate: str, ttl: float = 10.0) -> AsyncIterator[Lease]:
        check_ttl(ttl)
        key = "elect/" + encode_token(group, "election group")
        record = self._record(candidate, ttl)
        revision, started = await self._take(key, record, ttl)
        lease = Lease(name=group, holder=candidate, token=revision, expires_at=started + ttl)
        with trio.CancelScope() as scope:
            term = _Term(revision=revision, expires=started + ttl, scope=scope)
            term.renewer = self.conn.bridge.loop.create_task(
                self._renew(key, group, record, ttl, term)
            )
            self._renewers.add(term.renewer)
            try:
                yield lease
            finally:
                term.renewer.cancel()  # now, even if the resign below never runs
                await self._shielded(self._resign, key, term, what=f"resigning from {group!r}")
        if term.lost is not None:
            raise term.lost

    async def barrier(self, name: str, parties: int) -> None:
        check_parties(parties)
        key = "barrier/" + encode_token(name, "barrier name")
        await self.conn.run(f"barrier {name!r}", self._barrier, key, parties)

    # ------------------------------------------------------------ trio side

    def _record(self, holder: str, ttl: float) -> bytes:
        return json.dumps({"holder": holder, "ttl": ttl, "nonce": secrets.token_hex(8)}).encode()

    async def _take(self, key: str, record: bytes, ttl: float) -> tuple[int, float]:
        """Acquire ``key``: (revision of our write, trio time before it was sent).

        Like ``bridge.run``, but a trio cancellation never leaks the lease:
        a write that succeeded is released, one in flight is cleaned up.
        """
        task: asyncio.Task[tuple[int, float]] = self.conn.bridge.loop.create_task(
            self._acquire(key, record, ttl)
        )
        done = trio.Event()
        task.add_done_callback(lambda _task: done.set())
        waited = False
        try:
            await done.wait()
            waited = True
        finally:
            if not waited:
                if not task.done():
                    task.cancel()  # _acquire cleans up a write in flight
                elif not task.cancelled() and task.exception() is None:
                    self.conn.bridge.submit(self._release, key, task.result()[0])
        if task.cancelled():  # by the loop, as the connection closed
            raise Unreachable(f"acquiring {key!r}: the NATS connection closed")
        try:
            return task.result()
        except NATS_ERRORS as exc:
            raise_jido_error(exc, f"acquiring {key!r}")
        except Exception as exc:
            raise EngineError(
                f"acquiring {key!r}: the NATS client failed ({type(exc).__name__}: {exc})"
            ) from exc

    async def _shielded(self, fn: Callable[..., Awaitable[None]], *args: Any, what: str) -> None:
        """Run a release on the asyncio side even when the caller is cancelled;
        failures are logged (the server TTL ends the lease anyway)."""
        with trio.CancelScope(shield=True), trio.move_on_after(self.conn.options.request_timeout):
            try:
                await self.conn.run(what, fn, *args)
            except JidoError as exc:
                log.warning("%s (the lease lapses after its ttl)", exc)

    async def _aclose(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(self.conn.options.close_timeout):
            try:
                await self.conn.run("closing the coordination watcher", self._close)
            except JidoError as exc:
                log.debug("%s", exc)

    # ------------------------------------------------------------ asyncio side

    async def _publish(
        self,
        key: str,
        payload: bytes,
        expected: int,
        *,
        ttl: str | None,
        headers: Mapping[str, str] | None = None,
    ) -> int:
        """Write ``key`` if its last revision is ``expected``; its revision.

        :raises _Taken: the key is at another revision.
        """
        hdrs = dict(headers or {})
        if ttl is not None:
            hdrs[TTL] = ttl
        revision = await publish_if_last(
            self.conn.js, self._prefix + key, payload, last=expected, headers=hdrs
        )
        if revision is None:
            raise _Taken
        return revision

    async def _read(self, key: str) -> tuple[int, bytes | None]:
        """(last revision of ``key`` or 0, its value or None when it is free)."""
        current = await read_last(
            self.conn.js, self._stream, self._prefix + key, direct=self._direct
        )
        return current.revision, current.data

    async def _acquire(self, key: str, record: bytes, ttl: float) -> tuple[int, float]:
        loop = asyncio.get_running_loop()
        server_ttl = _ttl_header(ttl)
        #: A revision at which the key is (believed) free: try to write there.
        expected: int | None = self._free.pop(key, 0)
        #: The revision of the current holder's record, when and for how long it was seen.
        seen: tuple[int, float, float] | None = None
        listener: _Listener | None = None
        try:
            while True:
                if expected is not None:
                    started = loop.time()
                    attempt = asyncio.ensure_future(
                        self._publish(key, record, expected, ttl=server_ttl)
                    )
                    try:
                        # Shielded: if we are cancelled, _settle learns the outcome.
                        revision = await asyncio.shield(attempt)
                    except asyncio.CancelledError:
                        self.conn.bridge.submit(self._settle, key, attempt, record)
                        raise
                    except _Taken:
                        expected = None
                    else:
                        return revision, started
                if listener is None:
                    listener = await self._listen(key)
                last, value = await self._read(key)
                if value is None:
                    expected = last
                    continue
                if seen is None or seen[0] != last:
                    held_ttl = _decode(value).get("ttl", ttl)
                    if not isinstance(held_ttl, (int, float)) or not held_ttl > 0:
                        held_ttl = ttl
                    seen = (last, loop.time(), float(held_ttl))
                deadline = seen[1] + seen[2]
                while True:
                    now = loop.time()
                    if now >= deadline:
                        expected = last  # the holder's lease lapsed: take it over
                        break
                    event = await listener.next(min(deadline - now, _POLL))
                    if event is None:
                        if loop.time() >= deadline:
                            expected = last
                        break  # re-read (a missed event?) or take over
                    revision, headers = event
                    if revision <= last:
                        continue
                    if is_deletion(headers):
                        expected = revision
                    break
        finally:
            if listener is not None:
                self._unlisten(key, listener)

    async def _settle(self, key: str, attempt: asyncio.Future[int], record: bytes) -> None:
        """Undo the acquiring write of a caller that was cancelled while it was in flight."""
        try:
            revision = await attempt
        except _Taken:
            return
        except NATS_ERRORS:
            # No answer: the write may have landed all the same; find it by its nonce.
            await self._abandon(key, _decode(record).get("nonce"))
            return
        await self._release(key, revision)

    async def _abandon(self, key: str, nonce: object) -> None:
        """Release a write whose caller was cancelled before learning its revision."""
        last, value = await self._read(key)
        if value is not None and _decode(value).get("nonce") == nonce:
            await self._release(key, last)

    async def _release(self, key: str, revision: int) -> None:
        """Free ``key`` if it is still at our ``revision``."""
        try:
            marker = await self._publish(
                key, b"", revision, ttl=str(_MARKER_TTL), headers={KV_OPERATION: "DEL"}
            )
        except _Taken:
            return  # our lease lapsed; the key is someone else's now
        if len(self._free) >= _MAX_REMEMBERED:
            self._free.clear()
        self._free[key] = marker

    async def _renew(self, key: str, group: str, record: bytes, ttl: float, term: _Term) -> None:
        loop = asyncio.get_running_loop()
        server_ttl = _ttl_header(ttl)
        if server_ttl is None:
            return  # an infinite lease never lapses
        interval = ttl / 3
        try:
            while True:
                await asyncio.sleep(interval)
                started = loop.time()
                remaining = term.expires - started
                try:
                    if remaining <= 0:
                        raise TimeoutError
                    term.renewal = asyncio.ensure_future(
                        self._publish(key, record, term.revision, ttl=server_ttl)
                    )
                    revision = await asyncio.wait_for(asyncio.shield(term.renewal), remaining)
                except _Taken as exc:
                    # Someone took the lease over (ours lapsed unrenewed) or removed it.
                    conflict = StateConflict(f"leadership of {group!r}", term.revision, None)
                    conflict.__cause__ = exc
                    term.lose(conflict)
                    return
                except NATS_ERRORS as exc:
                    if loop.time() >= term.expires:
                        error = Unreachable(
                            f"leadership of {group!r} lapsed: could not renew it in time "
                            f"({type(exc).__name__}: {exc})"
                        )
                        error.__cause__ = exc
                        term.lose(error)
                        return
                    interval = min(ttl / 10, max(term.expires - loop.time(), 0.0))
                    continue
                term.revision = revision
                term.expires = started + ttl
                interval = ttl / 3
        finally:
            self._renewers.discard(asyncio.current_task())

    async def _resign(self, key: str, term: _Term) -> None:
        if term.renewer is not None:
            term.renewer.cancel()
            await asyncio.wait({term.renewer})
        renewal = term.renewal
        if renewal is not None:
            # A renewal that lands after we stopped waiting moves the lease on:
            # release the revision it wrote, not the one before it.
            await asyncio.wait({renewal})
            if not renewal.cancelled() and renewal.exception() is None:
                term.revision = max(term.revision, renewal.result())
        if term.lost is None:
            await self._release(key, term.revision)

    async def _barrier(self, key: str, parties: int) -> None:
        listener = await self._listen(key) if parties > 1 else None
        try:
            while True:  # arrive: compare-and-set the count
                last, value = await self._read(key)
                state = _decode(value) if value is not None else {}
                if not state or state.get("done"):
                    gen, arrived = secrets.token_hex(8), 1
                else:
                    gen, arrived = str(state.get("gen")), int(state.get("arrived", 0)) + 1
                done = arrived >= parties
                payload = json.dumps({"gen": gen, "arrived": arrived, "done": done}).encode()
                headers = {_BARRIER_GEN: gen}
                if done:
                    headers[_BARRIER_DONE] = "1"
                try:
                    revision = await self._publish(
                        key,
                        payload,
                        last,
                        ttl=str(_MARKER_TTL) if done else None,
                        headers=headers,
                    )
                except _Taken:
                    continue
                break
            if done or listener is None:
                return
            while True:  # wait until this generation is done (or a new one began)
                event = await listener.next(_POLL)
                if event is None:
                    _, value = await self._read(key)
                    state = _decode(value) if value is not None else {}
                    if not state or state.get("gen") != gen or state.get("done"):
                        return
                    continue
                seen, event_headers = event
                if seen <= revision:
                    continue
                if (
                    is_deletion(event_headers)
                    or event_headers.get(_BARRIER_GEN) != gen
                    or event_headers.get(_BARRIER_DONE)
                ):
                    return
        finally:
            if listener is not None:
                self._unlisten(key, listener)

    async def _listen(self, key: str) -> _Listener:
        """Register for watch events on ``key`` (starting the watcher if needed)."""
        watch = self._watch
        if watch is None:
            watch = self._watch = asyncio.ensure_future(self._subscribe())
        try:
            # Shielded: a cancelled waiter does not abort the start others share.
            await asyncio.shield(watch)
        except asyncio.CancelledError:
            raise
        except Exception:
            if self._watch is watch:
                self._watch = None  # the next waiter tries again
            raise
        listener = _Listener()
        self._listeners.setdefault(key, set()).add(listener)
        return listener

    async def _subscribe(self) -> Subscription:
        return await self.conn.js.subscribe(
            self._prefix + ">",
            stream=self._stream,
            cb=self._on_event,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.NEW,
            headers_only=True,
        )

    def _unlisten(self, key: str, listener: _Listener) -> None:
        listeners = self._listeners.get(key)
        if listeners is not None:
            listeners.discard(listener)
            if not listeners:
                del self._listeners[key]

    async def _on_event(self, msg: Msg) -> None:
        listeners = self._listeners.get(msg.subject[len(self._prefix) :])
        if not listeners:
            return
        try:
            revision = int(msg.metadata.sequence.stream)
        except (nats.errors.Error, ValueError, AttributeError):
            return
        headers = msg.headers or {}
        for listener in list(listeners):
            listener.push(revision, headers)

    async def _close(self) -> None:
        for task in list(self._renewers):
            task.cancel()
        watch, self._watch = self._watch, None
        if watch is None:
            return
        if not watch.done():
            watch.cancel()
            await asyncio.wait({watch})
        if not watch.cancelled() and watch.exception() is None:
            await watch.result().unsubscribe()


@asynccontextmanager
async def open_coordination(
    config: Config, options: Mapping[str, Any]
) -> AsyncIterator[NatsCoordination]:
    """The ``nats`` Coordination of a node, on the node's shared connection.

    :raises ConfigError: bad ``plugin_options["nats"]``.
    :raises Unreachable: NATS could not be reached.
    """
    async with open_connection(config, options) as conn:
        bucket = await conn.kv("locks")
        coordination = NatsCoordination(conn, direct=bool(getattr(bucket, "_direct", True)))
        try:
            yield coordination
        finally:
            await coordination._aclose()
