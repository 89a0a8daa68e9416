"""The ``jetstream`` work-queue backing: a JetStream work-queue stream per queue.

:func:`jido_trio.open_work_queue` picks it on a node whose state engine is
``"nats"`` (``backing="auto"`` or ``"jetstream"``), through
:meth:`NatsStateBackend.open_work_queue_backing
<jido_trio_nats._state.NatsStateBackend.open_work_queue_backing>`, and runs
jido_trio's one dispatcher on it: this module only stores, hands out and
settles jobs (:class:`jido_trio.abc.WorkQueueBacking`). Every node that opens
queue ``<q>`` in a namespace ``<ns>`` shares it; their consumer agents compete
for its jobs. Layout (``<q>`` encoded as one subject token):

- stream ``<ns>_wq_<q>`` (retention ``WorkQueue``: a message is gone once
  acknowledged), subjects ``<ns>.wq.<q>.>``. A job is one message on
  ``<ns>.wq.<q>.p<N>`` (priority ``N >= 0``) or ``<ns>.wq.<q>.n<N>`` (priority
  ``-N``), body ``[1, job id, payload, epoch]`` in the message codec, header
  ``Nats-Msg-Id`` = the encoded job id (``<id>@<epoch>`` once redriven), so the
  server drops a repeated put within the stream's duplicate window.
- one durable pull consumer per priority, named like its subject token
  (``p3``, ``n1``), shared by every node: explicit acks, ``ack_wait`` = the
  visibility timeout, no delivery limit (attempts are counted here, see below).
  :meth:`~JetStreamQueue.fetch` asks only for as many jobs as the dispatcher
  has idle delivery slots, highest priority first, in one asyncio call (a
  no-wait pull request per priority), and the backing sends ``+WPI`` (in
  progress) for every job it holds every third of ``ack_wait``: a job goes to
  another node only when its node stops answering.
- KV bucket ``<ns>_workqueues``: ``<q>.fail.<id>`` the attempt record of a job
  whose last delivery failed (``[1, epoch, attempts, deliveries, error,
  owner]``), ``<q>.dead.<id>`` a dead letter (``[1, id, payload, priority,
  attempts, error, epoch, seq]``). Every node watches the dead letters.
- subject ``<ns>.wqbell.<q>``: each put rings it with its priority, waking
  idle nodes at once (they also poll every :data:`IDLE_POLL` seconds, for
  retries coming due and for jobs of nodes that went away).

Attempts: :meth:`~JetStreamQueue.release` writes the attempt record, then naks
the message (with the dispatcher's backoff as delay), so the redelivery
carries the attempts, error and reservation. The server counts deliveries, so
:meth:`~JetStreamQueue.record_delivery` stores nothing: a delivery the server
repeats with no record of its outcome (its node died, or its record was not
written) comes back with that delivery counted as a failed attempt, like a job
that brought a process down on the StateBackend backing. A dead letter is
written, then its message acknowledged (a dead letter whose message comes back
is acknowledged).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
from collections.abc import AsyncIterator
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
from contextlib import asynccontextmanager
from typing import Any
from typing import Literal
from typing import ParamSpec
from typing import TypeVar

import attrs
import nats.errors
import nats.js.errors
import trio
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy
from nats.js.api import ConsumerConfig
from nats.js.api import DeliverPolicy
from nats.js.api import RetentionPolicy
from nats.js.kv import KeyValue

from jido_trio import InvalidMessage
from jido_trio import JidoError
from jido_trio import Unreachable
from jido_trio.abc import DeadJob
from jido_trio.abc import QueuedJob
from jido_trio.abc import WorkQueueBacking
from jido_trio.abc import WorkQueueCounts
from jido_trio.abc import WorkQueueSpec
from jido_trio.abc import decode_value
from jido_trio.abc import encode_value

from ._connection import NatsConnection
from ._jetstream import KV_OPERATION
from ._jetstream import MSG_ID
from ._jetstream import publish_if_last
from ._jetstream import read_last
from ._keys import decode_token_or_none
from ._keys import encode_token

__all__ = ["BACKING_NAME", "JetStreamQueue", "open_jetstream_queue"]

log = logging.getLogger("jido_trio_nats.workqueue")

P = ParamSpec("P")
T = TypeVar("T")

#: The name :func:`jido_trio.open_work_queue` knows this backing by.
BACKING_NAME = "jetstream"
#: Seconds within which the server drops a repeated put of a job id.
DUPLICATE_WINDOW = 600.0
#: Longest wait of an idle fetch before it looks for jobs again (retries that
#: came due, jobs of a node that went away, puts whose bell it missed).
IDLE_POLL = 0.25
#: Longest KV subject of a job's records (the server limits protocol lines to 4 KiB).
MAX_KEY_SUBJECT = 2048
#: Jobs asked for in one pull request at most.
MAX_BATCH = 256
#: Encoded queue names longer than this become a hash in stream names.
_MAX_TOKEN = 64
_RECORD_FORMAT = 1


class _Lost(Exception):
    """A compare-and-set delete found the key changed (asyncio side only)."""


def _priority_token(priority: int) -> str:
    return f"p{priority}" if priority >= 0 else f"n{-priority}"


def _token_priority(token: str) -> int | None:
    if len(token) < 2 or token[0] not in "pn" or not token[1:].isdigit():
        return None
    value = int(token[1:])
    return value if token[0] == "p" else -value


def _msg_id(job_id: str, epoch: int) -> str:
    token = encode_token(job_id, "job id")
    return token if epoch == 0 else f"{token}@{epoch}"


@attrs.define(eq=False, kw_only=True)
class _Held(QueuedJob):
    """A job this node fetched and has not settled yet (its message is held
    with in-progress acks); ``seq`` is its stream sequence."""

    msg: Msg
    epoch: int
    #: Times the server delivered its message.
    deliveries: int
    #: An attempt record exists in KV (drop it once the job is settled).
    has_record: bool


@attrs.define(eq=False)
class _Op:
    """One settlement: ack, nak (with an attempt record) or dead-letter."""

    held: _Held
    kind: Literal["ack", "nak", "dead"]
    delay: float = 0.0
    record: bytes | None = None
    result: object = None
    done: bool = False


@attrs.define(eq=False)
class _Dead:
    job: DeadJob
    epoch: int
    seq: int
    revision: int

    @property
    def order(self) -> tuple[int, int, str]:
        return (-self.job.priority, self.seq, self.job.id)


@attrs.define(eq=False)
class _Pull:
    request: int
    want: int
    msgs: list[Msg]
    done: asyncio.Future[None]


@attrs.define(eq=False)
class JetStreamQueue(WorkQueueBacking):
    """The ``jetstream`` :class:`~jido_trio.abc.WorkQueueBacking` of one queue.

    Open it with :func:`open_jetstream_queue` (``open_work_queue`` does).

    :meth:`counts`: ``unfinished`` is the queue's unfinished jobs on every
    node (as last seen: refreshed by :meth:`wait_empty`, by fetches when idle,
    and by this node's puts and acknowledgements); ``delayed`` the jobs this
    node released with a delay; ``dead`` the queue's dead letters as this
    node's watch has seen them.
    """

    spec: WorkQueueSpec
    conn: NatsConnection
    token: str
    stream: str
    subject_prefix: str
    bell_subject: str
    kv_stream: str = ""
    kv_prefix: str = ""
    ack_wait: float = 30.0
    _kv: KeyValue | None = None
    _watcher: Any = None
    _inbox: str = ""
    _subs: list[Subscription] = attrs.field(factory=list)
    #: The pull request being answered (one at a time: jobs arrive on their
    #: own subjects, only a request's end names the request).
    _pull: _Pull | None = None
    _pull_ids: Iterator[int] = attrs.field(factory=lambda: itertools.count(1))
    _strays: list[Msg] = attrs.field(factory=list)
    _priorities: set[int] = attrs.field(factory=set)
    _consumers_made: set[int] = attrs.field(factory=set)
    #: Jobs handed out and not settled, by stream sequence.
    _held: dict[int, _Held] = attrs.field(factory=dict)
    #: Stream sequence -> when a job this node nak'ed with a delay comes due.
    _naked: dict[int, float] = attrs.field(factory=dict)
    _dead: dict[str, _Dead] = attrs.field(factory=dict)
    #: Highest KV revision known per dead-letter key (stale watch updates are ignored).
    _dead_revisions: dict[str, int] = attrs.field(factory=dict)
    _moving: set[str] = attrs.field(factory=set)
    _queued_ops: list[_Op] = attrs.field(factory=list)
    _settling_now: bool = False
    _round_done: trio.Event = attrs.field(factory=trio.Event)
    _bell: trio.Event = attrs.field(factory=trio.Event)
    #: When fetches began to find nothing (``None`` while they find jobs).
    _idle_since: float | None = None
    _stream_msgs: int = 0
    _closed: bool = False

    # ------------------------------------------------------------ names

    @property
    def name(self) -> str:
        return self.spec.name

    def _subject(self, priority: int) -> str:
        return self.subject_prefix + _priority_token(priority)

    def _fail_key(self, job_id: str) -> str:
        return f"{self.kv_prefix}{self.token}.fail.{encode_token(job_id, 'job id')}"

    def _dead_key(self, job_id: str) -> str:
        return f"{self.kv_prefix}{self.token}.dead.{encode_token(job_id, 'job id')}"

    # ------------------------------------------------------------ plumbing

    async def _run(
        self, what: str, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run ``fn`` on the asyncio side; nats-py failures become jido_trio errors."""
        what = f"work queue {self.name!r}: {what}"
        if not self.conn.connected:
            await trio.lowlevel.checkpoint()
        self.conn.check_connected(what)
        return await self.conn.run(what, fn, *args, **kwargs)

    def _settling(self) -> trio.CancelScope:
        scope = trio.move_on_after(self.spec.settle_timeout)
        scope.shield = True
        return scope

    @property
    def _timeout(self) -> float:
        return self.conn.options.request_timeout

    @property
    def _api(self) -> str:
        prefix: str = getattr(self.conn.js, "_prefix", "$JS.API")
        return prefix

    # ------------------------------------------------------------ setup

    async def _setup(self) -> None:
        conn = self.conn
        self.stream = await conn.stream(
            f"wq_{self.token}",
            [self.subject_prefix + ">"],
            retention=RetentionPolicy.WORK_QUEUE,
            duplicate_window=DUPLICATE_WINDOW,
        )
        self._kv = await conn.kv("workqueues")
        bucket = conn.name("workqueues")
        self.kv_stream = f"KV_{bucket}"
        self.kv_prefix = f"$KV.{bucket}."
        await self._run("subscribing", self._aio_subscribe)
        initial = await self._run("loading dead letters", self._aio_watch_dead)
        for entry in initial:
            self._on_dead_entry(entry)
        await self._discover()

    async def _aio_subscribe(self) -> None:
        nc = self.conn.nc
        self._inbox = nc.new_inbox()
        self._subs.append(await nc.subscribe(f"{self._inbox}.*", cb=self._on_pulled))
        self._subs.append(await nc.subscribe(self.bell_subject, cb=self._on_bell))
        await nc.flush(timeout=max(1, round(self._timeout)))

    async def _aio_watch_dead(self) -> list[Any]:
        """Start the dead-letter watch; return its initial entries."""
        assert self._kv is not None
        self._watcher = await self._kv.watch(f"{self.token}.dead.>")
        entries: list[Any] = []
        while True:
            entry = await self._watcher.updates(timeout=self._timeout)
            if entry is None:
                return entries
            entries.append(entry)

    async def _shutdown(self) -> None:
        """Give back every job still held (the queue is closing) and unsubscribe."""
        self._closed = True
        ops: list[_Op] = []
        for held in sorted(self._held.values(), key=lambda h: (-h.priority, h.seq)):
            if held.consumer is not None:
                # Cancelled in flight: counted, and offered to the same consumer first.
                held.reserved_for = held.consumer
            ops.append(self._release_op(held))
        strays, self._strays = self._strays, []
        if ops:
            try:
                await self._settle(ops)
            except JidoError as exc:
                log.warning("work queue %r: giving jobs back on close: %s", self.name, exc)
        if self.conn.connected and (self._subs or self._watcher is not None or strays):
            try:
                await self._run("closing", self._aio_close, strays)
            except JidoError as exc:
                log.debug("work queue %r: closing: %s", self.name, exc)

    async def _aio_close(self, strays: list[Msg]) -> None:
        for msg in strays:
            await msg.nak()
        for sub in self._subs:
            await sub.unsubscribe()
        self._subs.clear()
        if self._watcher is not None:
            await self._watcher.stop()
            self._watcher = None

    # ------------------------------------------------------------ asyncio callbacks

    async def _on_pulled(self, msg: Msg) -> None:
        """A message on the pull inbox: a job (on its own subject), or the end
        of a request (a status on ``<inbox>.<request>``)."""
        pull = self._pull
        headers = msg.headers or {}
        if not msg.reply and "Status" in headers:
            try:
                request = int(msg.subject.rsplit(".", 1)[1])
            except ValueError:
                return
            if pull is not None and pull.request == request and not pull.done.done():
                if headers["Status"] not in ("404", "408"):
                    # The consumer is gone (or overloaded): make it again next time.
                    self._consumers_made.clear()
                pull.done.set_result(None)
            return
        if pull is None or pull.done.done():
            self._strays.append(msg)  # a late answer: still ours to deliver
            return
        pull.msgs.append(msg)
        if len(pull.msgs) >= pull.want:
            pull.done.set_result(None)

    async def _on_bell(self, msg: Msg) -> None:
        try:
            priority = int(msg.data)
        except ValueError:
            return
        self._priorities.add(priority)
        self._bell.set()

    # ------------------------------------------------------------ public API

    async def put(self, job_id: str, payload: Any, *, priority: int) -> None:
        self._check_open()
        if len(self._dead_key(job_id)) > MAX_KEY_SUBJECT:
            raise InvalidMessage(
                f"work queue {self.name!r}: job id {job_id[:40]!r}... is too long for NATS"
            )
        if job_id in self._dead or job_id in self._moving:
            await trio.lowlevel.checkpoint()
            return
        data = encode_value([_RECORD_FORMAT, job_id, payload, 0])
        self._check_size(data)
        duplicate = await self._run(
            f"putting job {job_id!r}",
            self._aio_publish,
            self._subject(priority),
            data,
            _msg_id(job_id, 0),
            priority,
        )
        if not duplicate:
            self._added(priority)

    def _check_size(self, data: bytes) -> None:
        limit = self.conn.nc.max_payload - 256  # headers
        if len(data) > limit:
            raise InvalidMessage(
                f"work queue {self.name!r}: a job of {len(data)} bytes is larger "
                f"than NATS allows ({limit} bytes)"
            )

    async def _aio_publish(self, subject: str, data: bytes, msg_id: str, priority: int) -> bool:
        ack = await self.conn.js.publish(subject, data, headers={MSG_ID: msg_id})
        if ack.duplicate:
            return True
        await self.conn.nc.publish(self.bell_subject, str(priority).encode())
        return False

    def _added(self, priority: int) -> None:
        self._stream_msgs += 1
        self._priorities.add(priority)
        self._bell.set()

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError(f"work queue {self.name!r} is closed")

    def counts(self) -> WorkQueueCounts:
        now = trio.current_time()
        for seq in [seq for seq, due in self._naked.items() if due <= now]:
            del self._naked[seq]
        return WorkQueueCounts(
            unfinished=self._stream_msgs, delayed=len(self._naked), dead=len(self._dead)
        )

    async def wait_empty(self) -> None:
        await trio.lowlevel.checkpoint()
        pause = 0.005
        while True:
            count = await self._run("counting jobs", self._aio_count)
            self._stream_msgs = count
            if count == 0:
                self._naked.clear()  # nothing is waiting anywhere
                return
            if self._closed:
                raise trio.ClosedResourceError(f"work queue {self.name!r} closed with jobs left")
            await trio.sleep(pause)
            pause = min(pause * 2, 0.1)

    async def _aio_count(self) -> int:
        info = await self.conn.js.stream_info(self.stream)
        return int(info.state.messages)

    async def dead_letters(self) -> list[DeadJob]:
        await trio.lowlevel.checkpoint()
        return [dead.job for dead in sorted(self._dead.values(), key=lambda d: d.order)]

    async def redrive(self, job_id: str) -> bool:
        async def revive(dead: _Dead) -> int:
            job = dead.job
            epoch = dead.epoch + 1
            data = encode_value([_RECORD_FORMAT, job.id, job.payload, epoch])
            return await self._run(
                f"redriving job {job.id!r}",
                self._aio_redrive,
                self._subject(job.priority),
                data,
                _msg_id(job.id, epoch),
                job.priority,
                self._dead_key(job.id),
                dead.revision,
            )

        dead = await self._take_dead(job_id, revive)
        if dead is not None:
            self._added(dead.job.priority)
        return dead is not None

    async def _aio_redrive(
        self, subject: str, data: bytes, msg_id: str, priority: int, key: str, revision: int
    ) -> int:
        # Put first: a crash in between leaves the dead letter too, and a
        # second redrive of it is a duplicate the server drops (same msg id).
        await self._aio_publish(subject, data, msg_id, priority)
        return await self._aio_delete_dead(key, revision)

    async def purge(self, job_id: str) -> bool:
        async def forget(dead: _Dead) -> int:
            return await self._run(
                f"purging dead letter {dead.job.id!r}",
                self._aio_delete_dead,
                self._dead_key(dead.job.id),
                dead.revision,
            )

        return await self._take_dead(job_id, forget) is not None

    async def _aio_delete_dead(self, key: str, revision: int) -> int:
        """A KV delete marker on ``key`` if it is still at ``revision``; its revision."""
        seq = await publish_if_last(
            self.conn.js, key, b"", last=revision, headers={KV_OPERATION: "DEL"}
        )
        if seq is None:
            raise _Lost
        return seq

    async def _take_dead(
        self, job_id: str, store: Callable[[_Dead], Awaitable[int]]
    ) -> _Dead | None:
        """Take the dead letter ``job_id`` out and run ``store`` for it (put
        back among the dead letters if that fails); ``None`` if there is none,
        here or (a lost compare-and-set) on the server."""
        self._check_open()
        await trio.lowlevel.checkpoint()
        dead = self._dead.pop(job_id, None)
        if dead is None:
            return None
        self._moving.add(job_id)
        try:
            revision = await store(dead)
        except _Lost:
            return None  # another node redrove or purged it first
        except BaseException:
            self._dead.setdefault(job_id, dead)
            raise
        finally:
            self._moving.discard(job_id)
        key = self._dead_key(job_id)
        self._dead_revisions[key] = max(self._dead_revisions.get(key, 0), revision)
        return dead

    # ------------------------------------------------------------ dead-letter watch

    def _on_dead_entry(self, entry: Any) -> None:
        key = self.kv_prefix + str(entry.key)
        revision = int(entry.revision)
        if revision <= self._dead_revisions.get(key, 0):
            return  # older than what this node wrote or saw
        self._dead_revisions[key] = revision
        job_id = decode_token_or_none(str(entry.key).rsplit(".", 1)[1], f"work queue {self.name!r}")
        if job_id is None:
            return
        if entry.operation is not None or not entry.value:
            self._dead.pop(job_id, None)
            return
        try:
            fields = decode_value(bytes(entry.value))
            _, rid, payload, priority, attempts, error, epoch, seq = fields[:8]
            if rid != job_id or not (_counts(attempts, epoch, seq) and type(priority) is int):
                raise TypeError("bad dead letter fields")
            if error is not None and not isinstance(error, str):
                raise TypeError("bad dead letter error")
        except (InvalidMessage, TypeError, ValueError):
            log.warning("work queue %r: malformed dead letter %r ignored", self.name, job_id)
            return
        job = DeadJob(id=rid, payload=payload, priority=priority, attempts=attempts, error=error)
        self._dead[job_id] = _Dead(job=job, epoch=epoch, seq=seq, revision=revision)

    async def _watch_dead(self) -> None:
        while True:
            try:
                entry = await self._run("watching dead letters", self._aio_next_dead)
            except JidoError as exc:
                log.debug("work queue %r: dead-letter watch: %s", self.name, exc)
                await trio.sleep(self.spec.backoff[0])
                continue
            if entry is not None and hasattr(entry, "key"):
                self._on_dead_entry(entry)

    async def _aio_next_dead(self) -> Any:
        try:
            return await self._watcher.updates(timeout=60.0)
        except nats.errors.TimeoutError:
            return None

    # ------------------------------------------------------------ fetching

    async def _discover(self) -> None:
        """Learn the priorities that hold jobs, and how many jobs there are."""
        subjects, count = await self._run("listing priorities", self._aio_discover)
        self._stream_msgs = count
        found = set()
        for subject in subjects:
            priority = _token_priority(subject[len(self.subject_prefix) :])
            if priority is not None:
                found.add(priority)
        self._priorities = found

    async def _aio_discover(self) -> tuple[list[str], int]:
        info = await self.conn.js.stream_info(
            self.stream, subjects_filter=self.subject_prefix + ">"
        )
        return list(info.state.subjects or {}), int(info.state.messages)

    async def fetch(self, max_jobs: int) -> list[QueuedJob]:
        """Fetch up to ``max_jobs`` jobs (and any late arrivals); when there
        are none, wait for a put's bell, a nak'ed job coming due or
        :data:`IDLE_POLL`, and return nothing (the caller asks again).

        :raises Unreachable: NATS cannot be reached.
        """
        bell = self._bell = trio.Event()
        now = trio.current_time()
        if self._idle_since is not None and now - self._idle_since >= IDLE_POLL:
            await self._discover()
            self._idle_since = now
        pulled, jobs = await self._fetch(max_jobs)
        if pulled:
            self._idle_since = None
            return jobs
        if self._idle_since is None:
            self._idle_since = now
        wait = IDLE_POLL
        if self._naked:
            wait = min(wait, max(min(self._naked.values()) - now, 0.0) + 0.002)
        with trio.move_on_after(wait):
            await bell.wait()
        return []

    async def _fetch(self, want: int) -> tuple[int, list[QueuedJob]]:
        """Fetch up to ``want`` jobs (and any late arrivals): how many
        messages came, and the jobs among them to hand out."""
        results = await self._run("fetching jobs", self._aio_fetch, min(want, MAX_BATCH))
        jobs: list[QueuedJob] = []
        acks: list[_Op] = []
        for msg, record in results:
            held = self._receive(msg, record)
            if held is None:
                continue
            dead = self._dead.get(held.id)
            if dead is not None and dead.epoch >= held.epoch:
                acks.append(_Op(held, "ack"))  # dead-lettered, but its ack was lost
            else:
                jobs.append(held)
        if acks:
            with self._settling():
                await self._settle(acks)
        return len(results), jobs

    async def _aio_fetch(self, want: int) -> list[tuple[Msg, bytes | None]]:
        got: list[Msg] = self._strays
        self._strays = []
        try:
            for priority in sorted(self._priorities, reverse=True):
                if len(got) >= want:
                    break
                if priority not in self._consumers_made:
                    await self._aio_make_consumer(priority)
                got.extend(await self._aio_pull(priority, want - len(got)))
            redelivered = [msg for msg in got if _delivered(msg) > 1]
            records = await asyncio.gather(*(self._aio_record(msg) for msg in redelivered))
        except BaseException:
            # Cancelled or failed: the messages are still ours to hand out
            # (or to give back as the queue closes).
            self._strays[:0] = got
            raise
        by_msg = {id(msg): record for msg, record in zip(redelivered, records, strict=True)}
        return [(msg, by_msg.get(id(msg))) for msg in got]

    async def _aio_make_consumer(self, priority: int) -> None:
        token = _priority_token(priority)
        config = ConsumerConfig(
            name=token,
            durable_name=token,
            filter_subject=self._subject(priority),
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.spec.visibility_timeout,
            max_deliver=-1,
            max_ack_pending=-1,
            num_replicas=self.conn.options.replicas,
            mem_storage=self.conn.options.storage == "memory",
        )
        try:
            info = await self.conn.js.add_consumer(self.stream, config)
        except nats.js.errors.BadRequestError:
            # Made by another node with other settings: use it as it is.
            info = await self.conn.js.consumer_info(self.stream, token)
        ack_wait = info.config.ack_wait
        if ack_wait:
            self.ack_wait = min(self.ack_wait, float(ack_wait))
        self._consumers_made.add(priority)

    async def _aio_pull(self, priority: int, want: int) -> list[Msg]:
        loop = asyncio.get_running_loop()
        request = next(self._pull_ids)
        pull = _Pull(request=request, want=want, msgs=[], done=loop.create_future())
        self._pull = pull
        try:
            await self.conn.nc.publish(
                f"{self._api}.CONSUMER.MSG.NEXT.{self.stream}.{_priority_token(priority)}",
                json.dumps({"batch": want, "no_wait": True}).encode(),
                reply=f"{self._inbox}.{request}",
            )
            try:
                await asyncio.wait_for(asyncio.shield(pull.done), self._timeout)
            except TimeoutError:
                log.debug("work queue %r: pull request unanswered", self.name)
        except BaseException:
            self._strays.extend(pull.msgs)  # still ours to hand out
            raise
        finally:
            self._pull = None
            if not pull.done.done():
                pull.done.set_result(None)
        return pull.msgs

    async def _aio_record(self, msg: Msg) -> bytes | None:
        try:
            job_id = decode_value(bytes(msg.data))[1]
        except (InvalidMessage, TypeError, IndexError):
            return None
        if not isinstance(job_id, str):
            return None
        found = await read_last(self.conn.js, self.kv_stream, self._fail_key(job_id), direct=True)
        return found.data

    def _receive(self, msg: Msg, record: bytes | None) -> _Held | None:
        """Take a fetched message in: the job it holds, or ``None`` (dropped,
        or a repeated answer for a job already held)."""
        meta = msg.metadata
        seq = int(meta.sequence.stream)
        self._naked.pop(seq, None)
        try:
            fields = decode_value(bytes(msg.data))
            _, job_id, payload, epoch = fields[:4]
            if not isinstance(job_id, str) or not isinstance(epoch, int):
                raise TypeError("bad job fields")
        except (InvalidMessage, TypeError, ValueError):
            log.error("work queue %r: malformed job at seq %d dropped", self.name, seq)
            self.conn.bridge.submit(msg.ack)
            return None
        subject_priority = _token_priority(msg.subject[len(self.subject_prefix) :])
        held = _Held(
            msg=msg,
            id=job_id,
            payload=payload,
            priority=0 if subject_priority is None else subject_priority,
            seq=seq,
            epoch=epoch,
            deliveries=int(meta.num_delivered),
            attempts=int(meta.num_delivered) - 1,
            has_record=record is not None,
        )
        if record is not None:
            self._apply_record(held, record)
        if seq in self._held:
            # Already held (an answer the server repeated): keep the newer message.
            self._held[seq].msg = msg
            return None
        self._held[seq] = held
        return held

    def _apply_record(self, held: _Held, record: bytes) -> None:
        try:
            fields = decode_value(record)
            _, epoch, attempts, deliveries, error, owner = fields[:6]
            if not _counts(epoch, attempts, deliveries):
                raise TypeError("bad attempt record fields")
            if error is not None and not isinstance(error, str):
                raise TypeError("bad attempt record error")
        except (InvalidMessage, TypeError, ValueError):
            log.warning("work queue %r: malformed attempt record of %r ignored", self.name, held.id)
            return
        if epoch != held.epoch:
            return  # left over from before a redrive
        # Deliveries after the recorded one had no recorded outcome: each
        # counts as a failed attempt.
        held.attempts = attempts + max(held.deliveries - 1 - deliveries, 0)
        held.error = error
        held.reserved_for = owner if isinstance(owner, str) else None

    # ------------------------------------------------------------ heartbeats

    async def _heartbeat(self) -> None:
        """Tell the server every held job is still being worked on."""
        while True:
            await trio.sleep(max(self.ack_wait / 3, 0.05))
            # Late answers too: they are handed out by the next fetch.
            msgs = [held.msg for held in self._held.values()] + self._strays
            if not msgs:
                continue
            try:
                await self._run("extending jobs", self._aio_progress, msgs)
            except JidoError as exc:
                log.warning("work queue %r: in-progress acks: %s", self.name, exc)

    async def _aio_progress(self, msgs: Sequence[Msg]) -> None:
        for msg in msgs:
            await msg.in_progress()

    # ------------------------------------------------------------ outcomes

    async def record_delivery(self, job: QueuedJob) -> None:
        # The server counts deliveries, and a job cut short is given back
        # (reserved for its consumer) as the queue closes.
        await trio.lowlevel.checkpoint()

    async def ack(self, job: QueuedJob) -> None:
        await self._settle([_Op(self._held_job(job), "ack")])

    async def release(self, job: QueuedJob, *, delay: float = 0.0) -> None:
        held = self._held_job(job)
        op = self._release_op(held)
        op.delay = delay
        await self._settle([op])
        if op.result is None and delay > 0:
            self._naked[held.seq] = trio.current_time() + delay

    async def dead_letter(self, job: QueuedJob) -> None:
        await self._settle([self._dead_op(self._held_job(job))])

    def _held_job(self, job: QueuedJob) -> _Held:
        if not isinstance(job, _Held) or self._held.get(job.seq) is not job:
            raise ValueError(f"work queue {self.name!r}: job {job.id!r} is not held here")
        return job

    # ------------------------------------------------------------ settling

    def _record(self, held: _Held) -> bytes:
        return encode_value(
            [
                _RECORD_FORMAT,
                held.epoch,
                held.attempts,
                held.deliveries,
                held.error,
                held.reserved_for,
            ]
        )

    def _release_op(self, held: _Held) -> _Op:
        """Give the job back to the stream with its attempts so far recorded."""
        return _Op(held, "nak", record=self._record(held))

    def _dead_op(self, held: _Held) -> _Op:
        record = encode_value(
            [
                _RECORD_FORMAT,
                held.id,
                held.payload,
                held.priority,
                held.attempts,
                held.error,
                held.epoch,
                held.seq,
            ]
        )
        return _Op(held, "dead", record=record)

    async def _settle(self, ops: list[_Op]) -> None:
        """Run ``ops`` together with those of concurrent callers: one asyncio
        call per round (group commit)."""
        self._queued_ops.extend(ops)
        while not all(op.done for op in ops):
            if self._settling_now:
                await self._round_done.wait()
                continue
            self._settling_now = True
            batch, self._queued_ops = self._queued_ops, []
            failure: JidoError = Unreachable(f"work queue {self.name!r}: settling cancelled")
            for op in batch:
                op.result = failure
            try:
                results = await self._run("settling jobs", self._aio_settle, batch)
                for op, result in zip(batch, results, strict=True):
                    op.result = result
            except JidoError as exc:
                for op in batch:
                    op.result = exc
            finally:
                for op in batch:
                    op.done = True
                    self._settled_op(op)
                self._settling_now = False
                done, self._round_done = self._round_done, trio.Event()
                done.set()

    def _settled_op(self, op: _Op) -> None:
        held = op.held
        if self._held.get(held.seq) is held:
            del self._held[held.seq]
        result = op.result
        if isinstance(result, BaseException):
            # The server gives the job out again after its ack wait.
            log.warning(
                "work queue %r: settling job %r (%s) failed: %r",
                self.name,
                held.id,
                op.kind,
                result,
            )
            return
        if op.kind == "ack":
            self._stream_msgs = max(self._stream_msgs - 1, 0)
        elif op.kind == "dead":
            assert isinstance(result, int)
            key = self._dead_key(held.id)
            if result > self._dead_revisions.get(key, 0):
                self._dead_revisions[key] = result
                self._dead[held.id] = _Dead(
                    job=held.dead(),
                    epoch=held.epoch,
                    seq=held.seq,
                    revision=result,
                )
            self._stream_msgs = max(self._stream_msgs - 1, 0)

    async def _aio_settle(self, batch: list[_Op]) -> list[object]:
        return list(
            await asyncio.gather(
                *(self._aio_settle_one(op) for op in batch), return_exceptions=True
            )
        )

    async def _aio_settle_one(self, op: _Op) -> object:
        held = op.held
        js = self.conn.js
        if op.kind == "nak":
            assert op.record is not None
            await js.publish(self._fail_key(held.id), op.record)
            await held.msg.nak(delay=op.delay or None)
            return None
        revision: int | None = None
        if op.kind == "dead":
            assert op.record is not None
            ack = await js.publish(self._dead_key(held.id), op.record)
            revision = int(ack.seq)
        await held.msg.ack_sync(timeout=self._timeout)
        if held.has_record or op.kind == "dead":
            await js.purge_stream(self.kv_stream, subject=self._fail_key(held.id))
        return revision


def _delivered(msg: Msg) -> int:
    try:
        return int(msg.metadata.num_delivered)
    except Exception:
        return 1


def _counts(*values: object) -> bool:
    """Whether every value is an int >= 0 (fields of records read back from
    KV, which anyone with access may have written)."""
    return all(type(v) is int and v >= 0 for v in values)


def _stream_token(name: str) -> str:
    # Encoding never shortens a name: a longer one goes straight to the hash.
    token = name if len(name) > _MAX_TOKEN else encode_token(name)
    if len(token) > _MAX_TOKEN:
        token = "h" + hashlib.sha256(name.encode()).hexdigest()[:40]
    return token


@asynccontextmanager
async def open_jetstream_queue(
    conn: NatsConnection, spec: WorkQueueSpec
) -> AsyncIterator[JetStreamQueue]:
    """The JetStream backing of work queue ``spec.name`` on ``conn``, open
    for the block (creating the stream, the bucket and the consumers on first
    use); on exit it gives back the jobs it still holds.

    :raises Unreachable: NATS cannot be reached.
    """
    token = _stream_token(spec.name)
    queue = JetStreamQueue(
        spec=spec,
        conn=conn,
        token=token,
        stream=conn.name(f"wq_{token}"),
        subject_prefix=conn.subject("wq", token, ""),
        bell_subject=conn.subject("wqbell", token),
        ack_wait=spec.visibility_timeout,
    )
    try:
        await queue._setup()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(queue._heartbeat)
            nursery.start_soon(queue._watch_dead)
            try:
                yield queue
            finally:
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(spec.settle_timeout):
            await queue._shutdown()
