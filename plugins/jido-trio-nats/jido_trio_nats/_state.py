"""The ``nats`` state backend: versioned values in a JetStream KV bucket, logs in a stream.

Layout (``<ns>`` is the namespace option):

- Values live in the KV bucket ``<ns>_state`` (history 1, direct get allowed),
  one subject per key: ``$KV.<ns>_state.<encode_token(key)>``. A value's
  version is its KV revision, i.e. the stream sequence of the message that
  holds it: sequences are never reused, so versions only grow per key, also
  across delete and re-create (the stream keeps its last sequence when it is
  emptied, and across restarts).
- Logs live in the stream ``<ns>_logs``, one subject per log:
  ``<ns>.log.<encode_token(stream)>``. A record's seq is its stream
  sequence: strictly growing per log, with gaps (other logs' records).

Every public method makes at most one trio -> asyncio hop (:meth:`Bridge.run`
of one coroutine that does all the NATS work of the call, several requests
included): a hop costs several asyncio steps, each a trio scheduling round.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from collections.abc import AsyncIterator
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from contextlib import asynccontextmanager
from typing import Any
from typing import ParamSpec
from typing import TypeVar

import attrs
import nats.js.errors
import trio
from nats.aio.msg import Msg

from jido_trio import Config
from jido_trio import ConfigError
from jido_trio import InvalidMessage
from jido_trio import StateConflict
from jido_trio.abc import Consistency
from jido_trio.abc import LogEntry
from jido_trio.abc import StateBackend
from jido_trio.abc import Versioned
from jido_trio.abc import WorkQueueBacking
from jido_trio.abc import WorkQueueBackingProvider
from jido_trio.abc import WorkQueueSpec
from jido_trio.abc import check_consistency
from jido_trio.abc import check_expected_version
from jido_trio.abc import check_log_limit
from jido_trio.abc import check_log_seq
from jido_trio.abc import check_state_key
from jido_trio.abc import check_state_value
from jido_trio.abc import single_failure

from ._connection import NatsConnection
from ._connection import open_connection
from ._jetstream import EXPECTED_LAST
from ._jetstream import is_deletion
from ._jetstream import listing_consumer
from ._jetstream import publish_if_last
from ._jetstream import read_last
from ._keys import MAX_SUBJECT_LENGTH
from ._keys import decode_token_or_none
from ._keys import encode_token

__all__ = ["NatsStateBackend", "open_state"]

P = ParamSpec("P")
T = TypeVar("T")

#: Bytes the compare-and-set header adds to a message at most
#: ("NATS/1.0\r\n" + "<name>: <20 digits>\r\n" + "\r\n").
_CAS_HEADER_BYTES = len(f"NATS/1.0\r\n{EXPECTED_LAST}: {2**64}\r\n\r\n")
#: Log records asked for per direct-get batch, and the byte budget of one batch.
_LOG_BATCH = 1024
_LOG_BATCH_BYTES = 8 * 1024 * 1024
#: A create (``expected_version=0``) over a deletion marker retries when other
#: writers change the key between its check and its publish; each retry means
#: another writer made progress, so a few are plenty.
_CREATE_ATTEMPTS = 8
#: JetStream sequences are unsigned 64-bit; larger ``after``/``upto`` mean "all".
_MAX_SEQ = 2**63


class _WrongLast(Exception):
    """A publish's expected last sequence did not match (asyncio side only)."""


# ---------------------------------------------------------------- weak cache


@attrs.define(eq=False)
class _Cache:
    """This node's last known ``(version, value)`` per key, LRU-bounded.

    ``value`` ``None`` means "known absent" (``version`` is then a deletion
    marker's sequence, or 0). A cached ``(n, bytes)`` is also a fact that
    never goes stale: the message at sequence ``n`` was a value of this key,
    which lets a compare-and-set on version ``n`` skip its pre-check.
    """

    max_entries: int
    max_bytes: int
    _entries: OrderedDict[str, tuple[int, bytes | None]] = attrs.field(
        factory=OrderedDict, init=False
    )
    _bytes: int = attrs.field(default=0, init=False)

    def get(self, key: str) -> tuple[int, bytes | None] | None:
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
        return found

    def value_version(self, key: str) -> int | None:
        found = self._entries.get(key)
        return None if found is None or found[1] is None else found[0]

    def marker_seq(self, key: str) -> int:
        found = self._entries.get(key)
        return found[0] if found is not None and found[1] is None else 0

    def offer(self, key: str, version: int, value: bytes | None) -> None:
        """Remember a value unless a newer one is known (results of concurrent
        calls arrive in any order); absence is only remembered by :meth:`set`."""
        if value is None:
            return
        found = self._entries.get(key)
        if found is None or found[1] is None or found[0] <= version:
            self.set(key, version, value)

    def set(self, key: str, version: int, value: bytes | None) -> None:
        old = self._entries.pop(key, None)
        if old is not None and old[1] is not None:
            self._bytes -= len(old[1])
        if value is not None and len(value) > self.max_bytes:
            return
        self._entries[key] = (version, value)
        self._bytes += 0 if value is None else len(value)
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            _, (_, dropped) = self._entries.popitem(last=False)
            if dropped is not None:
                self._bytes -= len(dropped)


# ---------------------------------------------------------------- the backend


@attrs.define(eq=False)
class NatsStateBackend(StateBackend, WorkQueueBackingProvider):
    """A :class:`~jido_trio.abc.StateBackend` on NATS JetStream.

    Build it with :func:`open_state` (or ``Config(state="nats")``).

    Consistency of :meth:`read`:

    - ``"strong"``: a ``STREAM.MSG.GET`` (``last_by_subj``) answered by the
      stream leader, which stores a message before acknowledging it: the read
      sees every write acknowledged before it began, from any node.
    - ``"eventual"``: a direct get, answered by any replica of the bucket
      (the nearest one); a replica that lags returns an older value, which
      converges. On one server (``replicas=1``) it is as fresh as strong.
    - ``"weak"``: this node's cache of the last value it read or wrote for the
      key, with no NATS request; on a cache miss, an eventual read.

    Writes: ``expected_version=None`` publishes unconditionally; ``n``
    publishes with ``Nats-Expected-Last-Subject-Sequence: n``, so the server
    does the compare-and-set atomically; ``0`` publishes with expected last
    sequence 0 (no message on the subject).

    Deletes purge the key's subject; with ``expected_version=n``, a purge of
    the subject's sequences ``<= n``, which removes nothing (a conflict) when
    a newer version exists. Unlike KV deletion markers, purges leave nothing
    behind, so the many short-lived keys of the runtime (finished jobs, old
    dedupe chunks) do not pile up in the bucket and slow down :meth:`keys`;
    the price is that purges are not copied to mirrors of the bucket. A
    deletion marker written by other KV clients (``nats kv del``) counts as
    an absent key everywhere: its sequence is no version, and a create over
    it publishes with the marker's sequence as expected last sequence, so of
    concurrent creators exactly one wins.

    Logs: :meth:`append` publishes to the log's subject and returns the
    stream sequence. :meth:`read_log` asks for batches of up to 1024 records
    with batched direct gets (one request each); on a replicated stream it
    first asks the leader for the log's last record and fetches from the
    leader whatever the answering replica did not have yet. :meth:`trim_log`
    purges the subject up to a sequence.

    Values and log records may be as large as the server's ``max_payload``
    (1 MiB by default); a compare-and-set write's header (about 70 bytes)
    counts towards that limit.

    :ivar cache_entries: keys the weak-read cache remembers at most.
    :ivar cache_bytes: value bytes the weak-read cache holds at most.
    """

    conn: NatsConnection
    kv_stream: str
    kv_prefix: str
    log_stream: str
    kv_direct: bool = True
    log_direct: bool = True
    log_replicas: int = 1
    cache_entries: int = 4096
    cache_bytes: int = 32 * 1024 * 1024
    _cache: _Cache = attrs.field(init=False)

    @_cache.default
    def _make_cache(self) -> _Cache:
        return _Cache(max_entries=self.cache_entries, max_bytes=self.cache_bytes)

    # ------------------------------------------------------------ plumbing

    @property
    def _api(self) -> str:
        prefix: str = getattr(self.conn.js, "_prefix", "$JS.API")
        return prefix

    @property
    def _timeout(self) -> float:
        return self.conn.options.request_timeout

    async def _run(
        self, what: str, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run ``fn`` on the asyncio side; nats-py failures become jido_trio errors."""
        self.conn.check_connected(what)
        return await self.conn.run(what, fn, *args, **kwargs)

    def _subject(self, prefix: str, name: str, what: str) -> str:
        check_state_key(name, what)
        subject = prefix + encode_token(name, f"state {what}")
        if len(subject) > MAX_SUBJECT_LENGTH:
            raise InvalidMessage(
                f"state {what} {name[:40]!r}... is too long for NATS "
                f"({len(subject)} > {MAX_SUBJECT_LENGTH} characters once encoded)"
            )
        return subject

    def _key_subject(self, key: str) -> str:
        return self._subject(self.kv_prefix, key, "key")

    def _log_subject(self, stream: str) -> str:
        return self._subject(self.conn.subject("log", ""), stream, "log stream name")

    def _check_size(self, data: bytes, header: int, what: str) -> None:
        limit = self.conn.nc.max_payload
        if len(data) + header > limit:
            raise InvalidMessage(
                f"{what} of {len(data)} bytes is larger than NATS allows "
                f"(max_payload {limit} bytes{f', less {header} header bytes' if header else ''})"
            )

    # ------------------------------------------------------------ asyncio side

    async def _aio_last(self, stream: str, subject: str, direct: bool) -> tuple[int, bytes | None]:
        """The subject's last message: ``(seq, data)``, ``data`` None for a
        deletion marker, ``(0, None)`` when the subject has no message."""
        current = await read_last(self.conn.js, stream, subject, direct=direct)
        return current.revision, current.data

    async def _aio_publish(self, subject: str, data: bytes, expected: int | None) -> int:
        seq = await publish_if_last(self.conn.js, subject, data, last=expected)
        if seq is None:
            raise _WrongLast
        return seq

    async def _aio_request(self, subject: str, body: Mapping[str, Any]) -> dict[str, Any]:
        msg = await self.conn.nc.request(subject, json.dumps(body).encode(), timeout=self._timeout)
        resp: dict[str, Any] = json.loads(msg.data)
        if "error" in resp:
            raise nats.js.errors.APIError.from_error(resp["error"])
        return resp

    async def _aio_purge(self, stream: str, subject: str, upto: int | None) -> int:
        """Purge the subject's messages (with ``seq <= upto``); return how many went."""
        body: dict[str, Any] = {"filter": subject}
        if upto is not None:
            body["seq"] = upto + 1  # purges up to, not including, "seq"
        resp = await self._aio_request(f"{self._api}.STREAM.PURGE.{stream}", body)
        return int(resp.get("purged", 0))

    async def _aio_actual(self, subject: str) -> int | None:
        """The key's current version for a StateConflict, ``None`` when absent."""
        seq, data = await self._aio_last(self.kv_stream, subject, False)
        return None if data is None else seq

    async def _aio_precheck(self, key: str, subject: str, expected: int) -> None:
        """Raise StateConflict unless the key's current value is at ``expected``.

        Needed before a compare-and-set on a version this node never saw as
        a value: the expected-last-sequence header would also match a
        deletion marker at that sequence. Once checked, the sequence is known
        to hold a value, and any later change moves the subject's last
        sequence past it, so the header check that follows is exact.
        """
        seq, data = await self._aio_last(self.kv_stream, subject, False)
        if data is None or seq != expected:
            raise StateConflict(key, expected, None if data is None else seq)

    async def _aio_write(
        self,
        key: str,
        subject: str,
        data: bytes,
        expected: int | None,
        known: int | None,
        marker: int,
    ) -> int:
        if expected is None:
            return await self._aio_publish(subject, data, None)
        if expected == 0:
            last = marker  # a deletion marker's sequence we saw, else "no message"
            for _ in range(_CREATE_ATTEMPTS):
                try:
                    return await self._aio_publish(subject, data, last)
                except _WrongLast:
                    pass
                seq, found = await self._aio_last(self.kv_stream, subject, False)
                if found is not None:
                    raise StateConflict(key, 0, seq)
                last = seq  # absent: a marker at seq (or no message, seq 0)
            raise StateConflict(key, 0, None)
        if known != expected:
            await self._aio_precheck(key, subject, expected)
        try:
            return await self._aio_publish(subject, data, expected)
        except _WrongLast:
            raise StateConflict(key, expected, await self._aio_actual(subject)) from None

    async def _aio_delete(
        self, key: str, subject: str, expected: int | None, known: int | None
    ) -> None:
        if expected is None:
            await self._aio_purge(self.kv_stream, subject, None)
            return
        if expected == 0:
            seq, data = await self._aio_last(self.kv_stream, subject, False)
            if data is not None:
                raise StateConflict(key, 0, seq)
            return
        if known != expected:
            await self._aio_precheck(key, subject, expected)
        # The subject's last message is at >= expected (sequence `expected`
        # held a value of this key); purging seqs <= expected removes it only
        # if no newer version was written meanwhile.
        if await self._aio_purge(self.kv_stream, subject, expected) == 0:
            raise StateConflict(key, expected, await self._aio_actual(subject))

    async def _aio_keys(self) -> list[str]:
        """Subjects of the live keys: an ephemeral consumer delivering each
        subject's last message, headers only (values are never transferred)."""
        nc, js = self.conn.nc, self.conn.js
        live: dict[str, bool] = {}
        received = 0
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        expected = -1

        async def on_msg(msg: Msg) -> None:
            nonlocal received
            if msg.headers and "Status" in msg.headers:
                return  # no heartbeats or flow control are asked for; ignore
            received += 1
            live[msg.subject] = not is_deletion(msg.headers)
            if not done.done() and (msg.metadata.num_pending == 0 or 0 <= expected <= received):
                done.set_result(None)

        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, cb=on_msg)
        try:
            info = await js.add_consumer(
                self.kv_stream,
                listing_consumer(inbox, self.kv_prefix + ">", headers_only=True),
            )
            try:
                # Messages the consumer had when created (a key written
                # meanwhile may or may not be listed, as with any scan).
                expected = int(info.num_pending or 0)
                if expected <= received and not done.done():
                    done.set_result(None)
                while not done.done():
                    before = received
                    try:
                        await asyncio.wait_for(asyncio.shield(done), self._timeout)
                    except TimeoutError:
                        if received == before:
                            raise  # no progress at all: the server is gone
            finally:
                await js.delete_consumer(self.kv_stream, info.name)
        finally:
            await sub.unsubscribe()
        return [subject for subject, alive in live.items() if alive]

    async def _aio_direct_batches(
        self, subject: str, start: int, limit: int | None
    ) -> list[LogEntry]:
        """Records of ``subject`` from ``start`` on, by batched direct gets
        (one request returns up to ``_LOG_BATCH`` records, then an EOB status)."""
        nc = self.conn.nc
        loop = asyncio.get_running_loop()
        entries: list[LogEntry] = []
        batch_end: asyncio.Future[Mapping[str, str]] = loop.create_future()

        async def on_msg(msg: Msg) -> None:
            headers = msg.headers or {}
            if "Status" in headers:
                if not batch_end.done():
                    batch_end.set_result(headers)
            else:
                entries.append(LogEntry(seq=int(headers["Nats-Sequence"]), data=bytes(msg.data)))

        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, cb=on_msg)
        try:
            while limit is None or len(entries) < limit:
                want = _LOG_BATCH if limit is None else min(_LOG_BATCH, limit - len(entries))
                had = len(entries)
                batch_end = loop.create_future()
                request = {
                    "seq": start,
                    "next_by_subj": subject,
                    "batch": want,
                    "max_bytes": _LOG_BATCH_BYTES,
                }
                await nc.publish(
                    f"{self._api}.DIRECT.GET.{self.log_stream}",
                    json.dumps(request).encode(),
                    reply=inbox,
                )
                status = await asyncio.wait_for(batch_end, self._timeout)
                code = status.get("Status")
                if code == "404":
                    break  # nothing (more) from start on
                if code != "204":
                    raise nats.js.errors.APIError(
                        code=int(code or 0), description=status.get("Description", "")
                    )
                if len(entries) == had or int(status.get("Nats-Num-Pending", "0")) == 0:
                    break
                start = entries[-1].seq + 1
        finally:
            await sub.unsubscribe()
        return entries

    async def _aio_read_log(self, subject: str, start: int, limit: int | None) -> list[LogEntry]:
        js = self.conn.js
        target = 0
        if self.log_replicas > 1 or not self.log_direct:
            # A direct get may be answered by a replica that lags behind; the
            # leader tells which record is the log's last right now, and the
            # leader serves whatever the replica did not have yet.
            last, _ = await self._aio_last(self.log_stream, subject, False)
            if last < start:
                return []
            target = last
        entries = await self._aio_direct_batches(subject, start, limit) if self.log_direct else []
        next_seq = entries[-1].seq + 1 if entries else start
        while next_seq <= target and (limit is None or len(entries) < limit):
            try:
                msg = await js.get_msg(self.log_stream, seq=next_seq, subject=subject, next=True)
            except nats.js.errors.NotFoundError:
                break
            entries.append(LogEntry(seq=int(msg.seq or 0), data=bytes(msg.data or b"")))
            next_seq = int(msg.seq or 0) + 1
        return entries

    # ------------------------------------------------------------ key-value

    async def read(self, key: str, *, consistency: Consistency = "strong") -> Versioned | None:
        """Return the value and version for ``key``, or ``None`` if absent.

        :raises TypeError: ``key`` is not a ``str``.
        :raises ValueError: an unknown consistency level, or a key with no UTF-8 form.
        :raises InvalidMessage: the key is too long for a NATS subject.
        :raises Unreachable: NATS cannot be reached.
        :raises EngineError: JetStream answered with an error (the bucket is gone, say).
        :raises CallTimeout: NATS did not answer within ``request_timeout``.
        """
        check_consistency(consistency)
        subject = self._key_subject(key)
        if consistency == "weak":
            cached = self._cache.get(key)
            if cached is not None:
                await trio.lowlevel.checkpoint()
                version, value = cached
                return None if value is None else Versioned(value=value, version=version)
        direct = consistency != "strong" and self.kv_direct
        seq, data = await self._run(
            f"reading state {key!r}", self._aio_last, self.kv_stream, subject, direct
        )
        if consistency == "strong":
            self._cache.set(key, seq, data)
        else:
            self._cache.offer(key, seq, data)
        return None if data is None else Versioned(value=data, version=seq)

    async def write(self, key: str, value: bytes, *, expected_version: int | None = None) -> int:
        """Store ``value`` and return its new version (its KV revision).

        Returns once the server stored it (on a quorum of replicas).

        :raises StateConflict: the current version is not ``expected_version``.
        :raises TypeError: ``key`` is not a ``str`` or ``value`` not bytes.
        :raises ValueError: a bad ``expected_version``, or a key with no UTF-8 form.
        :raises InvalidMessage: the value is larger than the server's
            ``max_payload``, or the key is too long for a NATS subject.
        :raises Unreachable: NATS cannot be reached.
        :raises EngineError: JetStream answered with an error.
        :raises CallTimeout: NATS did not answer within ``request_timeout``.
        """
        subject = self._key_subject(key)
        data = check_state_value(value)
        check_expected_version(expected_version)
        header = 0 if expected_version is None else _CAS_HEADER_BYTES
        self._check_size(data, header, f"state value for {key!r}")
        version = await self._run(
            f"writing state {key!r}",
            self._aio_write,
            key,
            subject,
            data,
            expected_version,
            self._cache.value_version(key),
            self._cache.marker_seq(key),
        )
        self._cache.offer(key, version, data)
        return version

    async def delete(self, key: str, *, expected_version: int | None = None) -> None:
        """Remove ``key`` (absent keys are fine unless a version is expected).

        :raises StateConflict: the current version is not ``expected_version``.
        :raises TypeError: ``key`` is not a ``str``.
        :raises ValueError: a bad ``expected_version``, or a key with no UTF-8 form.
        :raises InvalidMessage: the key is too long for a NATS subject.
        :raises Unreachable: NATS cannot be reached.
        :raises EngineError: JetStream answered with an error.
        :raises CallTimeout: NATS did not answer within ``request_timeout``.
        """
        subject = self._key_subject(key)
        check_expected_version(expected_version)
        await self._run(
            f"deleting state {key!r}",
            self._aio_delete,
            key,
            subject,
            expected_version,
            self._cache.value_version(key),
        )
        self._cache.set(key, 0, None)

    async def keys(self, prefix: str = "") -> list[str]:
        """All live keys that start with ``prefix``, sorted.

        One ephemeral consumer lists the bucket's keys (headers only), so the
        cost grows with the number of keys in the bucket, whatever the prefix.

        :raises TypeError: ``prefix`` is not a ``str``.
        :raises ValueError: ``prefix`` has no UTF-8 form.
        :raises Unreachable: NATS cannot be reached.
        :raises EngineError: JetStream answered with an error.
        :raises CallTimeout: NATS stopped answering within ``request_timeout``.
        """
        check_state_key(prefix, "key prefix")
        subjects = await self._run("listing state keys", self._aio_keys)
        cut = len(self.kv_prefix)
        found = (decode_token_or_none(s[cut:], "the state bucket") for s in subjects)
        return sorted(key for key in found if key is not None and key.startswith(prefix))

    # ------------------------------------------------------------ logs

    async def append(self, stream: str, data: bytes) -> int:
        """Append ``data`` to the log ``stream``; return its sequence number
        (a stream-wide JetStream sequence: growing, with gaps) once stored.

        :raises TypeError: ``stream`` is not a ``str`` or ``data`` not bytes.
        :raises ValueError: ``stream`` has no UTF-8 form.
        :raises InvalidMessage: the record is larger than the server's
            ``max_payload``, or the name is too long for a NATS subject.
        :raises Unreachable: NATS cannot be reached.
        :raises EngineError: JetStream answered with an error.
        :raises CallTimeout: NATS did not answer within ``request_timeout``.
        """
        subject = self._log_subject(stream)
        payload = check_state_value(data, "log records")
        self._check_size(payload, 0, f"log record for {stream!r}")
        return await self._run(
            f"appending to log {stream!r}", self._aio_publish, subject, payload, None
        )

    async def read_log(
        self, stream: str, *, after: int = 0, limit: int | None = None
    ) -> list[LogEntry]:
        """Records of ``stream`` with ``seq > after``, oldest first, at most ``limit``.

        Sees every record appended (acknowledged) before the call began.

        :raises TypeError: ``stream`` is not a ``str``, ``after`` not an
            ``int`` or ``limit`` neither ``None`` nor an ``int``.
        :raises ValueError: ``limit`` is negative, or ``stream`` has no UTF-8 form.
        :raises InvalidMessage: the name is too long for a NATS subject.
        :raises Unreachable: NATS cannot be reached.
        :raises EngineError: JetStream answered with an error.
        :raises CallTimeout: NATS did not answer within ``request_timeout``.
        """
        subject = self._log_subject(stream)
        start = max(check_log_seq("after", after), 0) + 1
        check_log_limit(limit)
        if limit == 0 or start > _MAX_SEQ:
            await trio.lowlevel.checkpoint()
            return []
        return await self._run(f"reading log {stream!r}", self._aio_read_log, subject, start, limit)

    async def trim_log(self, stream: str, *, upto: int) -> None:
        """Drop the records of ``stream`` with ``seq <= upto`` (a JetStream
        purge of the log's subject).

        :raises TypeError: ``stream`` is not a ``str`` or ``upto`` not an ``int``.
        :raises ValueError: ``stream`` has no UTF-8 form.
        :raises InvalidMessage: the name is too long for a NATS subject.
        :raises Unreachable: NATS cannot be reached.
        :raises EngineError: JetStream answered with an error.
        :raises CallTimeout: NATS did not answer within ``request_timeout``.
        """
        subject = self._log_subject(stream)
        upto = min(check_log_seq("upto", upto), _MAX_SEQ)
        if upto < 1:
            await trio.lowlevel.checkpoint()
            return
        await self._run(f"trimming log {stream!r}", self._aio_purge, self.log_stream, subject, upto)

    # ------------------------------------------------------------ setup

    @classmethod
    async def setup(cls, conn: NatsConnection) -> NatsStateBackend:
        """Create (or find) the bucket and the log stream and check their config.

        :raises ConfigError: an existing bucket keeps history (compare-and-set
            deletes need history 1) or denies purges.
        :raises Unreachable: NATS cannot be reached.
        """
        await conn.kv("state")
        log_stream = await conn.stream("logs", [conn.subject("log", ">")])
        bucket = conn.name("state")
        backend = cls(
            conn=conn,
            kv_stream=f"KV_{bucket}",
            kv_prefix=f"$KV.{bucket}.",
            log_stream=log_stream,
        )
        kv_info, log_info = await backend._run(
            "reading the state bucket's configuration", backend._aio_configs
        )
        if kv_info.max_msgs_per_subject != 1 or kv_info.deny_purge:
            raise ConfigError(
                f"NATS bucket {bucket!r} exists with history "
                f"{kv_info.max_msgs_per_subject} (deny_purge={kv_info.deny_purge}); "
                "the state backend needs history 1 and purges allowed: remove the bucket "
                "or use another namespace"
            )
        if log_info.deny_purge:
            raise ConfigError(f"NATS stream {log_stream!r} denies purges, which trim_log needs")
        backend.kv_direct = bool(kv_info.allow_direct)
        backend.log_direct = bool(log_info.allow_direct)
        backend.log_replicas = int(log_info.num_replicas or 1)
        return backend

    async def _aio_configs(self) -> tuple[Any, Any]:
        kv = await self.conn.js.stream_info(self.kv_stream)
        logs = await self.conn.js.stream_info(self.log_stream)
        return kv.config, logs.config

    # ------------------------------------------------------------ work queues

    #: The work-queue backing this engine offers to :func:`jido_trio.open_work_queue`.
    work_queue_backing = "jetstream"

    def open_work_queue_backing(
        self, spec: WorkQueueSpec
    ) -> AbstractAsyncContextManager[WorkQueueBacking]:
        """The ``jetstream`` backing of a work queue: a JetStream work-queue
        stream on this node's connection, shared with every node that opens
        the queue (see :mod:`jido_trio_nats._work_queue`).

        :param spec: the queue's arguments.
        :returns: an async context manager yielding the backing.
        """
        from ._work_queue import open_jetstream_queue

        return open_jetstream_queue(self.conn, spec)


@asynccontextmanager
async def open_state(config: Config, options: Mapping[str, Any]) -> AsyncIterator[NatsStateBackend]:
    """The ``nats`` state backend of a node, on its shared NATS connection.

    :param config: the node's configuration (its ``node_name`` picks the connection).
    :param options: ``plugin_options["nats"]`` (see :class:`~jido_trio_nats.NatsOptions`).
    :raises ConfigError: bad options, or a bucket with an incompatible configuration.
    :raises Unreachable: NATS cannot be reached.
    """
    try:
        async with open_connection(config, options) as conn:
            yield await NatsStateBackend.setup(conn)
    except BaseExceptionGroup as group:
        # The trio-asyncio loop under the connection runs nurseries, which wrap
        # whatever crosses them (our Unreachable, the body's own exception) in
        # exception groups: hand the one real exception on as it is.
        leaf = single_failure(group)
        if leaf is None:
            raise
        raise leaf from None
