"""Durable work queues: competing consumer agents, priorities, retries, dead letters.

A queue lives in the node's StateBackend, so it survives the queue being closed
and reopened, and with the SQLite backend the process too. Layout, per queue
name ``<q>``:

- ``workqueue/<q>/jobs/<job id>``: one record per unfinished job
  ``[1, id, payload, priority, seq, attempts, epoch, owner, error]``; written by
  ``put`` before it returns, rewritten when a delivery starts (``attempts`` and
  the consumer that ``owns`` it) and after a failed one, deleted on ack;
- ``workqueue/<q>/dead/<job id>``: the same record once dead-lettered;
- log ``workqueue/<q>/done``: ids of acknowledged jobs, the last
  ``dedupe_window`` of them kept, so a repeated ``put`` of a finished job is a
  no-op too.

A record in ``jobs`` and ``dead`` at once (a crash between the two writes of a
move) is resolved by ``epoch``, which every redrive increases: the higher one
wins, a tie goes to ``dead``. A job that is also in ``done`` is finished.

Every delivery is recorded with its consumer (``owner``) before it is made: a
delivery whose outcome is unknown (a visibility timeout, or the queue closing
under it) is retried on that same consumer, whose dedupe by instruction id
tells whether it already applied it.

On this backing, one :class:`WorkQueue` per queue name should be open at a
time: the open queue owns its records and keeps its schedule in memory.

Backings. :class:`WorkQueue` is a facade over a *backing*, the object that
stores the jobs and runs the dispatchers: the StateBackend one above (built
in, works on every state engine), or one a state engine offers. An engine
offers a backing by having two attributes (duck-typed, so that jido_trio never
imports an engine client):

- ``work_queue_backing``: the backing's name (the NATS engine: ``"jetstream"``);
- ``open_work_queue_backing(spec)``: an async context manager yielding a
  :class:`WorkQueueBacking` for the :class:`WorkQueueSpec` (the validated
  arguments of :func:`open_work_queue`, with the delivery helpers every
  backing shares), open for as long as the queue is.

:func:`open_work_queue` picks the engine's backing when there is one
(``backing="auto"``), runs the backing's :meth:`~WorkQueueBacking.serve` in
its nursery, and drains or cancels it on the way out, the same for every
backing.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from typing import Any, Literal, Protocol

import attrs
import trio

from ._exceptions import (
    AgentNotFound,
    AgentUnavailable,
    AlreadyProcessed,
    CallTimeout,
    CircuitOpen,
    ConfigError,
    InvalidMessage,
    JidoError,
    MailboxFull,
    StateConflict,
    Unreachable,
    describe,
)
from ._groups import single_failure
from ._ids import new_id
from ._message import Instruction, decode_value, encode_value
from ._node import Node
from ._ref import AgentRef

__all__ = [
    "DeadJob",
    "QueueStats",
    "WorkQueue",
    "WorkQueueBacking",
    "WorkQueueSpec",
    "open_work_queue",
]

log = logging.getLogger("jido_trio.workqueue")

_RECORD_FORMAT = 1

#: Failures that prove the job never reached the consumer, or that the
#: consumer cannot take work now: the job goes back to the queue at once with
#: no attempt counted, and that consumer's dispatcher pauses with backoff.
_CONSUMER_DOWN: tuple[type[JidoError], ...] = (
    AgentNotFound,
    AgentUnavailable,
    Unreachable,
    CircuitOpen,
    MailboxFull,
)

JobStatus = Literal["ready", "delayed", "in_flight"]


@attrs.frozen(kw_only=True)
class QueueStats:
    """A snapshot of a :class:`WorkQueue`.

    :param pending: jobs waiting for a delivery (``delayed`` included).
    :param delayed: pending jobs waiting out a retry backoff.
    :param in_flight: jobs handed to a consumer and not settled yet.
    :param done: jobs acknowledged since this queue was opened.
    :param dead: jobs in the dead-letter set now.
    :param retried: failed deliveries followed by a retry, since this queue
        was opened.
    """

    pending: int
    delayed: int
    in_flight: int
    done: int
    dead: int
    retried: int = 0


@attrs.frozen(kw_only=True)
class DeadJob:
    """A dead-lettered job, as :meth:`WorkQueue.dead_letters` lists it.

    :param id: the job id.
    :param payload: the job's payload.
    :param priority: the job's priority.
    :param attempts: deliveries that failed before it was set aside.
    :param error: the last failure, as ``"Type: text"``.
    """

    id: str
    payload: Any
    priority: int
    attempts: int
    error: str | None


@attrs.define(eq=False)
class _Job:
    id: str
    payload: Any
    priority: int
    seq: int
    attempts: int = 0
    epoch: int = 0
    #: The consumer the last delivery went to, while its outcome is unknown.
    owner: str | None = None
    error: str | None = None
    #: Consumer this job is offered to first (its outcome there is unknown).
    affinity: str | None = None
    status: JobStatus = "ready"

    @property
    def order(self) -> tuple[int, int, str]:
        return (-self.priority, self.seq, self.id)

    def to_bytes(self) -> bytes:
        return encode_value(
            [
                _RECORD_FORMAT,
                self.id,
                self.payload,
                self.priority,
                self.seq,
                self.attempts,
                self.epoch,
                self.owner,
                self.error,
            ]
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> _Job:
        fields = decode_value(data)
        if not isinstance(fields, list) or len(fields) < 9 or fields[0] != _RECORD_FORMAT:
            raise InvalidMessage("malformed work-queue record")
        _, job_id, payload, priority, seq, attempts, epoch, owner, error = fields[:9]
        return cls(
            id=job_id,
            payload=payload,
            priority=priority,
            seq=seq,
            attempts=attempts,
            epoch=epoch,
            owner=owner,
            error=error,
        )

    def dead(self) -> DeadJob:
        return DeadJob(
            id=self.id,
            payload=self.payload,
            priority=self.priority,
            attempts=self.attempts,
            error=self.error,
        )


def _positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


@attrs.frozen(kw_only=True)
class WorkQueueSpec:
    """What a work-queue backing runs: the validated arguments of
    :func:`open_work_queue`, and the delivery steps every backing shares (so
    that a job means the same on every backing).

    :param node: the node through which jobs are delivered.
    :param name: the queue name (no ``/``).
    :param consumers: the competing consumer agents (distinct).
    :param action: the consumers' action.
    :param max_attempts: failed deliveries before a job is dead-lettered.
    :param visibility_timeout: seconds one delivery may take (finite).
    :param backoff: ``(initial, maximum)`` seconds between attempts.
    :param concurrency_per_consumer: deliveries in flight at once per consumer.
    :param dedupe_window: acknowledged job ids remembered for idempotent puts.
    """

    node: Node
    name: str
    consumers: tuple[AgentRef, ...]
    action: str
    max_attempts: int
    visibility_timeout: float
    backoff: tuple[float, float]
    concurrency_per_consumer: int
    dedupe_window: int

    def instruction(self, job_id: str, payload: Any) -> Instruction:
        """The instruction a delivery of the job sends, with its dedupe id
        ``f"{name}/{job_id}"``."""
        return Instruction(
            self.action, {"job": payload, "job_id": job_id}, id=f"{self.name}/{job_id}"
        )

    async def deliver(self, consumer: AgentRef, job_id: str, payload: Any) -> None:
        """Deliver the job to ``consumer`` once, as a call bounded by the
        visibility timeout; returns when the consumer applied it, now or before.

        :raises JidoError: the delivery failed (see :func:`open_work_queue`
            for what each error means).
        """
        instruction = self.instruction(job_id, payload)
        timeout = self.visibility_timeout
        try:
            await self.node.call(consumer, instruction, timeout=timeout)
        except AlreadyProcessed:
            # Applied before, or an earlier delivery whose caller gave up is
            # still queued there. A strong query waits behind it; then the
            # consumer's answer is final.
            await self.node.query_agent(consumer, consistency="strong", timeout=timeout)
            with suppress(AlreadyProcessed):
                await self.node.call(consumer, instruction, timeout=timeout)

    @staticmethod
    def consumer_down(error: BaseException) -> bool:
        """Whether a delivery error proves the job never reached the consumer
        (or that it cannot take work now): the job goes back with no attempt
        counted."""
        return isinstance(error, _CONSUMER_DOWN)

    def retry_delay(self, attempts: int) -> float:
        """Seconds before the next attempt of a job that failed ``attempts`` times."""
        initial, maximum = self.backoff
        return min(initial * 2.0 ** min(attempts - 1, 1000), maximum)

    async def recover(
        self, consumer: AgentRef, pause: float, *, probe_first: bool, on_down: Callable[[], None]
    ) -> float:
        """Wait until ``consumer`` answers a strong query (which waits behind
        whatever it is busy with), pausing with backoff between probes and
        calling ``on_down`` after each failed probe; return the last pause."""
        initial, maximum = self.backoff
        while True:
            if not probe_first:
                pause = initial if pause == 0.0 else min(pause * 2.0, maximum)
                await trio.sleep(pause)
            probe_first = False
            try:
                await self.node.query_agent(
                    consumer, consistency="strong", timeout=self.visibility_timeout
                )
            except JidoError as exc:
                log.debug("work queue %r: consumer %r still down: %s", self.name, consumer.id, exc)
                on_down()
            else:
                return pause

    @staticmethod
    def describe(error: BaseException) -> str:
        """A failure as a dead letter records it: ``"Type: text"``."""
        return describe(error) or type(error).__name__

    @staticmethod
    def encode(value: Any) -> bytes:
        """Encode a payload (or a record) with the message codec.

        :raises InvalidMessage: it cannot be encoded.
        """
        return encode_value(value)

    @staticmethod
    def decode(data: bytes) -> Any:
        """Decode what :meth:`encode` made.

        :raises InvalidMessage: malformed data.
        """
        return decode_value(data)


class WorkQueueBacking(Protocol):
    """What stores a work queue's jobs and runs its dispatchers.

    :func:`open_work_queue` enters the backing's context manager (which loads
    whatever it needs), runs :meth:`serve` in its nursery, calls :meth:`drain`
    when the ``async with`` block ends normally, then :meth:`close`, cancels
    :meth:`serve` and exits the context manager (after which :meth:`put`,
    :meth:`redrive` and :meth:`purge_dead_letters` raise
    ``trio.ClosedResourceError``). Arguments arrive checked: a priority is an
    int, a job id a non-empty string, ``job_ids`` ``None`` or a list of ids.
    The public methods mean what :class:`WorkQueue` documents.
    """

    async def put(self, payload: Any, *, priority: int, id: str) -> str: ...

    def stats(self) -> QueueStats: ...

    async def join(self) -> None: ...

    async def dead_letters(self) -> list[DeadJob]: ...

    async def redrive(self, job_ids: list[str] | None) -> list[str]: ...

    async def purge_dead_letters(self, job_ids: list[str] | None) -> list[str]: ...

    async def serve(self) -> None:
        """Hand jobs out until cancelled (started as the body begins)."""

    async def drain(self) -> None:
        """Stop handing out jobs and wait for the deliveries in flight."""

    def close(self) -> None:
        """Stop handing out jobs (no waiting): the queue is about to be cancelled."""


def _job_ids(job_ids: Iterable[str] | None) -> list[str] | None:
    if job_ids is None:
        return None
    if isinstance(job_ids, str):
        raise TypeError("job_ids must be an iterable of ids, not one string")
    return list(dict.fromkeys(job_ids))


@attrs.define(eq=False)
class WorkQueue:
    """A durable queue of jobs handed out to competing consumer agents.

    Get one from :func:`open_work_queue`. Jobs are put with :meth:`put`, go
    out highest priority first and first-in first-out within a priority, one
    delivery at a time per job, to whichever consumer has a free slot. A job
    is acknowledged (deleted) when the consumer's action returns, retried with
    exponential backoff when it fails or outlasts the visibility timeout, and
    dead-lettered after ``max_attempts`` failed deliveries.

    :ivar spec: the queue's arguments (:class:`WorkQueueSpec`).
    :ivar backing: where the jobs live: ``"state"`` (the node's StateBackend)
        or the name of the backing the state engine offers (``"jetstream"``).
    """

    spec: WorkQueueSpec
    backing: str
    _impl: WorkQueueBacking

    @property
    def name(self) -> str:
        """The queue name."""
        return self.spec.name

    async def put(self, payload: Any, *, priority: int = 0, id: str | None = None) -> str:
        """Add a job and return its id once it is stored.

        :param payload: the job, handed to the consumer's action as ``job``;
            anything the message codec encodes (plain data, refs). The
            consumer sees it as it comes back from storage (tuples become
            lists), on the first delivery as after a restart.
        :param priority: higher goes first; equal priorities go in put order.
        :param id: the job id (generated when omitted). Putting an id the
            queue already holds (pending, in flight, dead-lettered, or
            acknowledged within the last ``dedupe_window`` jobs; on
            JetStream, put within the stream's duplicate window) changes
            nothing and returns the id.
        :raises InvalidMessage: the payload cannot be encoded.
        :raises trio.ClosedResourceError: the queue is closed.
        """
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise TypeError(f"priority must be an int, got {priority!r}")
        job_id = new_id() if id is None else id
        if not isinstance(job_id, str) or not job_id:
            raise TypeError("job id must be a non-empty string")
        return await self._impl.put(payload, priority=priority, id=job_id)

    def stats(self) -> QueueStats:
        """Counts of pending, delayed, in-flight, done, dead and retried jobs."""
        return self._impl.stats()

    async def join(self) -> None:
        """Wait until no job is pending or in flight (dead letters do not count).

        Bound the wait with ``trio.fail_after``: with no consumer able to take
        work, the queue never empties.

        :raises trio.ClosedResourceError: the queue closed with jobs left.
        """
        await self._impl.join()

    async def dead_letters(self) -> list[DeadJob]:
        """The dead-lettered jobs, oldest put first."""
        return await self._impl.dead_letters()

    async def redrive(self, job_ids: Iterable[str] | None = None) -> list[str]:
        """Put dead-lettered jobs back in the queue with a fresh attempt budget.

        :param job_ids: the jobs to redrive (unknown ids are skipped); all
            dead letters when omitted.
        :returns: the ids redriven, oldest put first.
        :raises trio.ClosedResourceError: the queue is closed.
        """
        return await self._impl.redrive(_job_ids(job_ids))

    async def purge_dead_letters(self, job_ids: Iterable[str] | None = None) -> list[str]:
        """Delete dead-lettered jobs for good (all of them when ``job_ids`` is omitted).

        :returns: the ids deleted, oldest put first.
        :raises trio.ClosedResourceError: the queue is closed.
        """
        return await self._impl.purge_dead_letters(_job_ids(job_ids))


@attrs.define(eq=False)
class _StateQueue:
    """The StateBackend backing (see the module docstring)."""

    spec: WorkQueueSpec
    _jobs: dict[str, _Job] = attrs.field(factory=dict, init=False)
    _dead: dict[str, _Job] = attrs.field(factory=dict, init=False)
    #: Recently acknowledged job ids -> their seq in the done log (0 while being written).
    _done_ids: dict[str, int] = attrs.field(factory=dict, init=False)
    #: Dead letters being redriven or purged right now.
    _moving: set[str] = attrs.field(factory=set, init=False)
    _ready: list[tuple[int, int, str]] = attrs.field(factory=list, init=False)
    _ready_for: dict[str, list[tuple[int, int, str]]] = attrs.field(factory=dict, init=False)
    _wakeup: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot, init=False)
    _settled: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot, init=False)
    _idle: trio.Event = attrs.field(factory=trio.Event, init=False)
    _nursery: trio.Nursery | None = attrs.field(default=None, init=False)
    _next_seq: int = attrs.field(default=1, init=False)
    _in_flight: int = attrs.field(default=0, init=False)
    _delayed: int = attrs.field(default=0, init=False)
    _done: int = attrs.field(default=0, init=False)
    _retried: int = attrs.field(default=0, init=False)
    _closing: bool = attrs.field(default=False, init=False)
    _closed: bool = attrs.field(default=False, init=False)

    @property
    def node(self) -> Node:
        return self.spec.node

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def consumers(self) -> tuple[AgentRef, ...]:
        return self.spec.consumers

    @property
    def max_attempts(self) -> int:
        return self.spec.max_attempts

    @property
    def visibility_timeout(self) -> float:
        return self.spec.visibility_timeout

    @property
    def backoff(self) -> tuple[float, float]:
        return self.spec.backoff

    @property
    def concurrency_per_consumer(self) -> int:
        return self.spec.concurrency_per_consumer

    @property
    def dedupe_window(self) -> int:
        return self.spec.dedupe_window

    # ------------------------------------------------------------ keys

    @property
    def _prefix(self) -> str:
        return f"workqueue/{self.name}/"

    def _job_key(self, job_id: str) -> str:
        return f"{self._prefix}jobs/{job_id}"

    def _dead_key(self, job_id: str) -> str:
        return f"{self._prefix}dead/{job_id}"

    @property
    def _done_stream(self) -> str:
        return f"{self._prefix}done"

    # ------------------------------------------------------------ public API

    async def put(self, payload: Any, *, priority: int, id: str) -> str:
        if self._closed:
            raise trio.ClosedResourceError(f"work queue {self.name!r} is closed")
        job_id = id
        if self._known(job_id):
            await trio.lowlevel.checkpoint()
            return job_id
        job = _Job(id=job_id, payload=payload, priority=priority, seq=self._next_seq)
        data = job.to_bytes()
        # What the consumer gets is what storage gives back, first time or not.
        job.payload = _Job.from_bytes(data).payload
        self._next_seq += 1
        try:
            await self.node.state.write(self._job_key(job_id), data, expected_version=0)
        except StateConflict:
            return job_id  # stored by a concurrent put of the same id
        self._add(job)
        return job_id

    def stats(self) -> QueueStats:
        """Counts of pending, delayed, in-flight, done, dead and retried jobs."""
        return QueueStats(
            pending=len(self._jobs) - self._in_flight,
            delayed=self._delayed,
            in_flight=self._in_flight,
            done=self._done,
            dead=len(self._dead),
            retried=self._retried,
        )

    async def join(self) -> None:
        """Wait until no job is pending or in flight (dead letters do not count).

        Bound the wait with ``trio.fail_after``: with no consumer able to take
        work, the queue never empties.

        :raises trio.ClosedResourceError: the queue closed with jobs left.
        """
        await trio.lowlevel.checkpoint()
        while self._jobs:
            if self._closed:
                raise trio.ClosedResourceError(f"work queue {self.name!r} closed with jobs left")
            await self._idle.wait()

    async def dead_letters(self) -> list[DeadJob]:
        """The dead-lettered jobs, oldest put first."""
        await trio.lowlevel.checkpoint()
        return [job.dead() for job in sorted(self._dead.values(), key=lambda j: j.order)]

    async def redrive(self, job_ids: list[str] | None) -> list[str]:

        async def revive(job: _Job) -> None:
            with self._settling():
                job.attempts = 0
                job.epoch += 1
                job.owner = job.affinity = job.error = None
                await self.node.state.write(self._job_key(job.id), job.to_bytes())
                await self.node.state.delete(self._dead_key(job.id))

        return [job.id for job in await self._take_dead(job_ids, revive, then=self._add)]

    async def purge_dead_letters(self, job_ids: list[str] | None) -> list[str]:

        async def forget(job: _Job) -> None:
            await self.node.state.delete(self._dead_key(job.id))

        return [job.id for job in await self._take_dead(job_ids, forget)]

    async def _take_dead(
        self,
        job_ids: Iterable[str] | None,
        store: Callable[[_Job], Awaitable[None]],
        *,
        then: Callable[[_Job], None] | None = None,
    ) -> list[_Job]:
        """Take dead letters out one by one, running ``store`` for each (then
        ``then``, before the next one); a job whose ``store`` fails goes back
        among the dead letters and the error propagates."""
        if self._closed:
            raise trio.ClosedResourceError(f"work queue {self.name!r} is closed")
        await trio.lowlevel.checkpoint()
        taken: list[_Job] = []
        for job in self._dead_selection(job_ids):
            if self._dead.get(job.id) is not job:
                continue  # taken by a concurrent redrive or purge
            del self._dead[job.id]
            self._moving.add(job.id)
            try:
                await store(job)
            except BaseException:
                self._dead[job.id] = job
                raise
            finally:
                self._moving.discard(job.id)
            if then is not None:
                then(job)
            taken.append(job)
        return taken

    # ------------------------------------------------------------ bookkeeping

    def _known(self, job_id: str) -> bool:
        return (
            job_id in self._jobs
            or job_id in self._dead
            or job_id in self._done_ids
            or job_id in self._moving
        )

    def _dead_selection(self, job_ids: Iterable[str] | None) -> list[_Job]:
        if job_ids is None:
            chosen = list(self._dead.values())
        else:
            if isinstance(job_ids, str):
                raise TypeError("job_ids must be an iterable of ids, not one string")
            chosen = [self._dead[i] for i in dict.fromkeys(job_ids) if i in self._dead]
        return sorted(chosen, key=lambda j: j.order)

    def _add(self, job: _Job) -> None:
        """Track a stored job and offer it to the consumers."""
        if not self._jobs and self._idle.is_set():
            self._idle = trio.Event()
        self._jobs[job.id] = job
        self._offer(job)

    def _offer(self, job: _Job) -> None:
        job.status = "ready"
        if job.affinity is not None and job.affinity in self._ready_for:
            heapq.heappush(self._ready_for[job.affinity], job.order)
            self._wakeup.unpark_all()  # only that consumer's dispatchers can take it
        else:
            job.affinity = None
            heapq.heappush(self._ready, job.order)
            self._wakeup.unpark()

    def _remove(self, job: _Job) -> None:
        del self._jobs[job.id]
        if not self._jobs:
            self._idle.set()

    def _release_affinity(self, consumer_id: str) -> None:
        """The consumer is down: its reserved jobs go to everyone."""
        reserved = self._ready_for[consumer_id]
        while reserved:
            job = self._jobs[heapq.heappop(reserved)[2]]
            job.affinity = None
            self._offer(job)

    def _pop_for(self, consumer_id: str) -> _Job | None:
        own = self._ready_for[consumer_id]
        shared = self._ready
        if own and (not shared or own[0] < shared[0]):
            return self._jobs[heapq.heappop(own)[2]]
        if shared:
            return self._jobs[heapq.heappop(shared)[2]]
        return None

    def _retry_delay(self, attempts: int) -> float:
        return self.spec.retry_delay(attempts)

    async def _persist(self, job: _Job) -> None:
        await self.node.state.write(self._job_key(job.id), job.to_bytes())

    # ------------------------------------------------------------ loading

    async def _load(self) -> None:
        state = self.node.state
        for entry in await state.read_log(self._done_stream):
            job_id = entry.data.decode()
            self._done_ids.pop(job_id, None)
            self._done_ids[job_id] = entry.seq
        while len(self._done_ids) > self.dedupe_window:
            del self._done_ids[next(iter(self._done_ids))]
        dead_prefix = self._dead_key("")
        for key in await state.keys(dead_prefix):
            found = await state.read(key)
            if found is not None:
                job = _Job.from_bytes(found.value)
                self._dead[job.id] = job
        seqs = [job.seq for job in self._dead.values()]
        loaded: list[_Job] = []
        for key in await state.keys(self._job_key("")):
            found = await state.read(key)
            if found is None:
                continue
            job = _Job.from_bytes(found.value)
            dead = self._dead.get(job.id)
            if job.id in self._done_ids or (dead is not None and dead.epoch >= job.epoch):
                await state.delete(key)  # an ack or a dead-lettering cut short
                continue
            if dead is not None:
                await state.delete(self._dead_key(job.id))  # a redrive cut short
                del self._dead[job.id]
            # Delivered when the queue closed: that consumer's dedupe tells
            # whether it applied it, so it goes there first.
            job.affinity = job.owner
            loaded.append(job)
            seqs.append(job.seq)
        self._next_seq = max(seqs, default=0) + 1
        self._idle.set()
        for job in sorted(loaded, key=lambda j: j.order):
            self._add(job)

    # ------------------------------------------------------------ dispatch

    async def _dispatcher(self, consumer: AgentRef) -> None:
        """One delivery slot of one consumer: take a job, deliver, settle, repeat."""
        pause = 0.0
        while True:
            job = await self._take(consumer.id)
            if job is None:
                return
            outcome = await self._run(consumer, job)
            if outcome == "ok":
                pause = 0.0
            else:
                pause = await self._recover(consumer, pause, probe_first=outcome == "timeout")

    async def _recover(self, consumer: AgentRef, pause: float, *, probe_first: bool) -> float:
        """Take no work for ``consumer`` until it answers a strong query (which
        waits behind whatever it is busy with); between probes, pause with
        backoff and give the jobs reserved for it to the other consumers."""
        return await self.spec.recover(
            consumer,
            pause,
            probe_first=probe_first,
            on_down=lambda: self._release_affinity(consumer.id),
        )

    async def _take(self, consumer_id: str) -> _Job | None:
        while not self._closing:
            job = self._pop_for(consumer_id)
            if job is not None:
                job.status = "in_flight"
                self._in_flight += 1
                return job
            await self._wakeup.park()
        return None

    async def _run(self, consumer: AgentRef, job: _Job) -> Literal["ok", "down", "timeout"]:
        """Deliver ``job`` once and settle it; say how the consumer fared."""
        try:
            job.attempts += 1
            job.owner = consumer.id
            # Stored before delivery: a restart knows who may have applied it,
            # and a job that brings the whole process down still uses up attempts.
            await self._persist(job)
            try:
                await self._deliver(consumer, job)
            except _CONSUMER_DOWN as exc:
                with self._settling():
                    await self._release(consumer, job, exc)
                return "down"
            except JidoError as exc:
                with self._settling():
                    await self._failed(consumer, job, exc)
                return "timeout" if isinstance(exc, CallTimeout) else "ok"
            with self._settling():
                await self._ack(job)
            return "ok"
        finally:
            self._in_flight -= 1
            self._settled.unpark_all()

    def _settling(self) -> trio.CancelScope:
        # Settling is a few storage writes: let them finish even while the
        # queue is being cancelled, so no finished job is delivered again.
        scope = trio.move_on_after(self.node.config.shutdown_timeout)
        scope.shield = True
        return scope

    async def _deliver(self, consumer: AgentRef, job: _Job) -> None:
        await self.spec.deliver(consumer, job.id, job.payload)

    async def _ack(self, job: _Job) -> None:
        self._done_ids[job.id] = 0
        seq = await self.node.state.append(self._done_stream, job.id.encode())
        if job.id in self._done_ids:
            self._done_ids[job.id] = seq
        await self.node.state.delete(self._job_key(job.id))
        self._remove(job)
        self._done += 1
        await self._trim_done()

    async def _trim_done(self) -> None:
        done = self._done_ids
        if len(done) <= self.dedupe_window + max(1, self.dedupe_window // 4):
            return
        upto = 0
        while len(done) > self.dedupe_window:
            oldest = next(iter(done))
            upto = max(upto, done.pop(oldest))
        if upto:
            await self.node.state.trim_log(self._done_stream, upto=upto)

    async def _release(self, consumer: AgentRef, job: _Job, exc: JidoError) -> None:
        log.info(
            "work queue %r: consumer %r cannot take job %r now: %s",
            self.name,
            consumer.id,
            job.id,
            describe(exc),
        )
        job.attempts -= 1
        # Still reserved for this consumer if an earlier delivery's outcome is
        # unknown: its recovery probe decides whether to give it to others.
        job.owner = job.affinity
        await self._persist(job)
        self._offer(job)

    async def _failed(self, consumer: AgentRef, job: _Job, exc: JidoError) -> None:
        job.error = describe(exc)
        # After a timeout the outcome is unknown: the job stays reserved for
        # this consumer, whose dedupe can tell, until it is found down.
        job.affinity = consumer.id if isinstance(exc, CallTimeout) else None
        job.owner = job.affinity
        if job.attempts >= self.max_attempts:
            await self._dead_letter(job)
            return
        await self._persist(job)
        delay = self._retry_delay(job.attempts)
        log.info(
            "work queue %r: job %r failed (attempt %d of %d), retry in %.3gs: %s",
            self.name,
            job.id,
            job.attempts,
            self.max_attempts,
            delay,
            job.error,
        )
        assert self._nursery is not None
        job.status = "delayed"
        self._delayed += 1
        self._retried += 1
        self._nursery.start_soon(self._retry_later, job, delay)

    async def _retry_later(self, job: _Job, delay: float) -> None:
        try:
            await trio.sleep(delay)
        finally:
            self._delayed -= 1
        self._offer(job)

    async def _dead_letter(self, job: _Job) -> None:
        log.warning(
            "work queue %r: job %r dead-lettered after %d attempts: %s",
            self.name,
            job.id,
            job.attempts,
            job.error,
        )
        job.owner = job.affinity = None
        await self.node.state.write(self._dead_key(job.id), job.to_bytes())
        await self.node.state.delete(self._job_key(job.id))
        self._dead[job.id] = job
        self._remove(job)

    async def _drain(self) -> None:
        """Stop handing out jobs and wait for the deliveries in flight."""
        self._closing = True
        self._wakeup.unpark_all()
        while self._in_flight:
            await self._settled.park()

    # ------------------------------------------------------------ backing protocol

    async def serve(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for ref in self.consumers:
                for _ in range(self.concurrency_per_consumer):
                    nursery.start_soon(self._dispatcher, ref)

    async def drain(self) -> None:
        await self._drain()

    def close(self) -> None:
        self._closing = True


@asynccontextmanager
async def _open_state_queue(spec: WorkQueueSpec) -> AsyncIterator[_StateQueue]:
    queue = _StateQueue(spec=spec)
    queue._ready_for = {ref.id: [] for ref in spec.consumers}
    await queue._load()
    try:
        yield queue
    finally:
        queue._closed = True
        queue._idle.set()  # wake join() callers: nothing moves any more


#: The backing that works on every state engine.
STATE_BACKING = "state"


def _backing_for(
    node: Node, backing: str
) -> tuple[str, Callable[[WorkQueueSpec], AbstractAsyncContextManager[WorkQueueBacking]]]:
    """The backing's name and its opener for ``backing`` ("auto", "state" or
    the name of the one the node's state engine offers)."""
    if not isinstance(backing, str):
        raise TypeError(f"backing must be a str, got {type(backing).__name__}")
    offered = getattr(node.state, "work_queue_backing", None)
    opener = getattr(node.state, "open_work_queue_backing", None)
    if not (isinstance(offered, str) and callable(opener)):
        offered = opener = None
    if backing == STATE_BACKING or (backing == "auto" and opener is None):
        return STATE_BACKING, _open_state_queue
    if opener is not None and backing in ("auto", offered):
        assert offered is not None
        return offered, opener
    offers = f"offers only {offered!r} and" if offered else "offers no work-queue backing but"
    raise ConfigError(
        f"work queue backing {backing!r}: the node's state engine {node.config.state!r} "
        f"{offers} {STATE_BACKING!r}"
    )


@asynccontextmanager
async def open_work_queue(
    node: Node,
    name: str,
    *,
    consumers: Sequence[AgentRef],
    action: str,
    max_attempts: int = 5,
    visibility_timeout: float = 30.0,
    backoff: tuple[float, float] = (0.1, 30.0),
    concurrency_per_consumer: int = 1,
    dedupe_window: int = 10_000,
    backing: str = "auto",
) -> AsyncIterator[WorkQueue]:
    """Open the durable work queue ``name`` on ``node``'s state engine and
    dispatch its jobs to ``consumers`` for the duration of an ``async with``.

    Jobs stored by an earlier opening are resumed, those that were in flight
    included. Each job is delivered as
    ``node.call(consumer, Instruction(action, {"job": payload, "job_id": id},
    id=f"{name}/{id}"), timeout=visibility_timeout)``, so a consumer that
    receives a job it already applied answers :class:`AlreadyProcessed` and
    the job counts as done.

    Outcomes of a delivery:

    - the action returns, or the consumer already applied it: **ack** (the job
      is deleted);
    - :class:`ActionError` or another :class:`JidoError`: a failed attempt,
      retried after ``min(initial * 2 ** (attempts - 1), maximum)`` seconds
      on any free consumer; dead-lettered after ``max_attempts``;
    - :class:`CallTimeout` (the visibility timeout passed): a failed attempt
      too, but its outcome is unknown, so the job stays reserved for the same
      consumer, whose dedupe can tell; that consumer takes no other work until
      it answers a strong query (which waits behind whatever it is stuck on),
      and if that query fails its reserved jobs go to the others;
    - :class:`AgentNotFound`, :class:`AgentUnavailable`, :class:`Unreachable`,
      :class:`CircuitOpen`, :class:`MailboxFull`: the consumer is down; the job
      goes back at once with no attempt counted, and that consumer takes no
      work until it answers again (probed with the same backoff).

    Processing is at least once and, as long as every job finishes on the
    consumer that last received it, exactly once. A job moved to another
    consumer while the first one may still apply it (that consumer stuck past
    two visibility timeouts, or unreachable) can run on both.

    :param node: the node whose StateBackend holds the queue and through which
        jobs are delivered (consumers may live on other nodes).
    :param name: the queue name (no ``/``).
    :param consumers: the competing consumer agents.
    :param action: the consumers' action; it takes ``job`` and ``job_id``.
    :param max_attempts: failed deliveries before a job is dead-lettered.
    :param visibility_timeout: seconds a delivery may take before it counts
        as failed and the job is offered again.
    :param backoff: ``(initial, maximum)`` seconds between attempts of a job,
        doubling each time; also the pause of a consumer found down.
    :param concurrency_per_consumer: jobs in flight at once per consumer.
    :param dedupe_window: acknowledged job ids remembered for idempotent puts.
    :param backing: where the jobs live: ``"state"`` for the node's
        StateBackend (any engine), the name of the backing the state engine
        offers (``"jetstream"`` with ``state="nats"``: a JetStream work-queue
        stream whose consumers compete across nodes), or ``"auto"`` (the
        default) for the engine's backing when it offers one, else
        ``"state"``.
    :raises ConfigError: the state engine does not offer ``backing``.

    Leaving the block normally stops handing out jobs and waits for the
    deliveries in flight; leaving it with an error or a cancellation cancels
    them (they are delivered again when the queue is next opened). Pending
    jobs stay stored either way.
    """
    if not isinstance(node, Node):
        raise TypeError(f"expected a Node, got {type(node).__name__}")
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"queue name must be a non-empty string without '/', got {name!r}")
    if not isinstance(action, str) or not action:
        raise ValueError("action must be a non-empty string")
    refs = tuple(consumers)
    if not refs:
        raise ValueError("a work queue needs at least one consumer")
    if not all(isinstance(ref, AgentRef) for ref in refs):
        raise TypeError("consumers must be AgentRefs")
    if len({ref.id for ref in refs}) != len(refs):
        raise ValueError("consumers must be distinct agents")
    if not (isinstance(backoff, tuple) and len(backoff) == 2):
        raise ValueError(f"backoff must be a pair (initial, maximum), got {backoff!r}")
    initial, maximum = (_positive("backoff", b) for b in backoff)
    if initial > maximum:
        raise ValueError(f"backoff initial {initial} exceeds maximum {maximum}")
    timeout = _positive("visibility_timeout", visibility_timeout)
    if math.isinf(timeout):
        raise ValueError("visibility_timeout must be finite")
    spec = WorkQueueSpec(
        node=node,
        name=name,
        consumers=refs,
        action=action,
        max_attempts=_positive_int("max_attempts", max_attempts),
        visibility_timeout=timeout,
        backoff=(initial, maximum),
        concurrency_per_consumer=_positive_int(
            "concurrency_per_consumer", concurrency_per_consumer
        ),
        dedupe_window=_positive_int("dedupe_window", dedupe_window),
    )
    chosen, opener = _backing_for(node, backing)
    body_error: BaseException | None = None
    async with opener(spec) as impl:
        queue = WorkQueue(spec=spec, backing=chosen, impl=impl)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(impl.serve)
                try:
                    yield queue
                except BaseException as exc:
                    body_error = exc
                else:
                    await impl.drain()
                finally:
                    impl.close()
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # A body cancelled because a dispatcher failed should see that failure.
            failure = single_failure(group, body_error)
            if failure is not None:
                raise failure from None
            raise
    if body_error is not None:
        raise body_error
