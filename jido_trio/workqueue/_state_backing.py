"""The ``"state"`` work-queue backing: a queue's jobs in any StateBackend.

Layout, per queue name ``<q>``:

- ``workqueue/<q>/jobs/<job id>``: one record per unfinished job
  ``[1, id, payload, priority, seq, attempts, epoch, owner, error]``; written by
  ``put`` before it returns, rewritten when a delivery starts (``attempts`` and
  the consumer that ``owns`` it) and when the job is released, deleted on ack;
- ``workqueue/<q>/dead/<job id>``: the same record once dead-lettered;
- log ``workqueue/<q>/done``: ids of acknowledged jobs, the last
  ``dedupe_window`` of them kept, so a repeated ``put`` of a finished job is a
  no-op too.

A record in ``jobs`` and ``dead`` at once (a crash between the two writes of a
move) is resolved by ``epoch``, which every redrive increases: the higher one
wins, a tie goes to ``dead``. A job that is also in ``done`` is finished. A job
loaded with an ``owner`` is reserved for that consumer (its last delivery's
outcome is unknown).

One backing per queue name should be open at a time: the open backing owns
its records and keeps their order and delays in memory.
"""

from __future__ import annotations

import heapq
from collections.abc import AsyncIterator
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from .._exceptions import InvalidMessage
from .._exceptions import StateConflict
from ..abc import DeadJob
from ..abc import QueuedJob
from ..abc import StateBackend
from ..abc import WorkQueueBacking
from ..abc import WorkQueueCounts
from ..abc import WorkQueueSpec
from ..abc import decode_value
from ..abc import encode_value

__all__ = ["StateBacking", "open_state_backing"]

_RECORD_FORMAT = 1


@attrs.define(eq=False, kw_only=True)
class _StoredJob(QueuedJob):
    #: Increased by every redrive: tells a stale record from a current one.
    epoch: int = 0

    @property
    def order(self) -> tuple[int, int, str]:
        return (-self.priority, self.seq, self.id)

    def to_bytes(self) -> bytes:
        # While a delivery is in flight its consumer may apply the job.
        owner = self.consumer if self.consumer is not None else self.reserved_for
        return encode_value(
            [
                _RECORD_FORMAT,
                self.id,
                self.payload,
                self.priority,
                self.seq,
                self.attempts,
                self.epoch,
                owner,
                self.error,
            ]
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> _StoredJob:
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
            reserved_for=owner,
            error=error,
        )


@attrs.define(eq=False)
class StateBacking(WorkQueueBacking):
    """The ``"state"`` backing of one queue (see the module docstring).

    Open it with :func:`open_state_backing`.
    """

    state: StateBackend
    spec: WorkQueueSpec
    _jobs: dict[str, _StoredJob] = attrs.field(factory=dict, init=False)
    _dead: dict[str, _StoredJob] = attrs.field(factory=dict, init=False)
    #: Recently acknowledged job ids -> their seq in the done log (0 while being written).
    _done_ids: dict[str, int] = attrs.field(factory=dict, init=False)
    #: Dead letters being redriven or purged right now.
    _moving: set[str] = attrs.field(factory=set, init=False)
    #: Jobs to hand out, best first.
    _ready: list[tuple[int, int, str]] = attrs.field(factory=list, init=False)
    #: Released jobs waiting out their delay: ``(due, order...)``.
    _delayed: list[tuple[float, int, int, str]] = attrs.field(factory=list, init=False)
    #: Set when a job becomes ready (a fetch waiting for one goes on).
    _arrived: trio.Event = attrs.field(factory=trio.Event, init=False)
    _idle: trio.Event = attrs.field(factory=trio.Event, init=False)
    _next_seq: int = attrs.field(default=1, init=False)
    _closed: bool = attrs.field(default=False, init=False)

    @property
    def name(self) -> str:
        return self.spec.name

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

    # ------------------------------------------------------------ putting and fetching

    async def put(self, job_id: str, payload: Any, *, priority: int) -> None:
        self._check_open()
        if self._known(job_id):
            await trio.lowlevel.checkpoint()
            return
        job = _StoredJob(id=job_id, payload=payload, priority=priority, seq=self._next_seq)
        data = job.to_bytes()
        # What the consumer gets is what storage gives back, first time or not.
        job.payload = _StoredJob.from_bytes(data).payload
        self._next_seq += 1
        try:
            await self.state.write(self._job_key(job_id), data, expected_version=0)
        except StateConflict:
            return  # stored by a concurrent put of the same id
        self._add(job)

    async def fetch(self, max_jobs: int) -> list[QueuedJob]:
        await trio.lowlevel.checkpoint()
        while True:
            jobs = self.fetch_nowait(max_jobs)
            if jobs:
                return jobs
            self._check_open()
            arrived = self._arrived = trio.Event()
            if not self._delayed:
                await arrived.wait()
                continue
            with trio.move_on_at(self._delayed[0][0]):
                await arrived.wait()

    def fetch_nowait(self, max_jobs: int) -> list[QueuedJob]:
        if self._delayed:
            self._promote_due()
        ready = self._ready
        if not ready:
            return []
        return [self._jobs[heapq.heappop(ready)[2]] for _ in range(min(max_jobs, len(ready)))]

    def _promote_due(self) -> None:
        now = trio.current_time()
        while self._delayed and self._delayed[0][0] <= now:
            job_id = heapq.heappop(self._delayed)[3]
            job = self._jobs.get(job_id)
            if job is not None:
                heapq.heappush(self._ready, job.order)

    def _make_ready(self, job: _StoredJob, delay: float = 0.0) -> None:
        if delay > 0:
            heapq.heappush(self._delayed, (trio.current_time() + delay, *job.order))
        else:
            heapq.heappush(self._ready, job.order)
        self._arrived.set()

    # ------------------------------------------------------------ settling

    async def record_delivery(self, job: QueuedJob) -> None:
        await self._persist(job)

    async def ack(self, job: QueuedJob) -> None:
        self._done_ids[job.id] = 0
        seq = await self.state.append(self._done_stream, job.id.encode())
        if job.id in self._done_ids:
            self._done_ids[job.id] = seq
        await self.state.delete(self._job_key(job.id))
        self._remove(job.id)
        await self._trim_done()

    async def _trim_done(self) -> None:
        done = self._done_ids
        window = self.spec.dedupe_window
        if len(done) <= window + max(1, window // 4):
            return
        upto = 0
        while len(done) > window:
            oldest = next(iter(done))
            upto = max(upto, done.pop(oldest))
        if upto:
            await self.state.trim_log(self._done_stream, upto=upto)

    async def release(self, job: QueuedJob, *, delay: float = 0.0) -> None:
        stored = self._stored(job)
        await self._persist(stored)
        self._make_ready(stored, delay)

    async def dead_letter(self, job: QueuedJob) -> None:
        stored = self._stored(job)
        await self.state.write(self._dead_key(job.id), stored.to_bytes())
        await self.state.delete(self._job_key(job.id))
        self._dead[job.id] = stored
        self._remove(job.id)

    async def _persist(self, job: QueuedJob) -> None:
        await self.state.write(self._job_key(job.id), self._stored(job).to_bytes())

    def _stored(self, job: QueuedJob) -> _StoredJob:
        stored = self._jobs.get(job.id)
        if stored is not job:
            raise ValueError(f"work queue {self.name!r}: job {job.id!r} is not handed out here")
        return stored

    # ------------------------------------------------------------ counts

    def counts(self) -> WorkQueueCounts:
        if self._delayed:
            self._promote_due()
        return WorkQueueCounts(
            unfinished=len(self._jobs), delayed=len(self._delayed), dead=len(self._dead)
        )

    async def wait_empty(self) -> None:
        await trio.lowlevel.checkpoint()
        while self._jobs:
            if self._closed:
                raise trio.ClosedResourceError(f"work queue {self.name!r} closed with jobs left")
            await self._idle.wait()

    # ------------------------------------------------------------ dead letters

    async def dead_letters(self) -> list[DeadJob]:
        await trio.lowlevel.checkpoint()
        return [job.dead() for job in sorted(self._dead.values(), key=lambda j: j.order)]

    async def redrive(self, job_id: str) -> bool:
        async def revive(job: _StoredJob) -> None:
            job.attempts = 0
            job.epoch += 1
            job.reserved_for = job.error = None
            await self.state.write(self._job_key(job.id), job.to_bytes())
            await self.state.delete(self._dead_key(job.id))

        job = await self._take_dead(job_id, revive)
        if job is not None:
            self._add(job)
        return job is not None

    async def purge(self, job_id: str) -> bool:
        async def forget(job: _StoredJob) -> None:
            await self.state.delete(self._dead_key(job.id))

        return await self._take_dead(job_id, forget) is not None

    async def _take_dead(
        self, job_id: str, store: Callable[[_StoredJob], Any]
    ) -> _StoredJob | None:
        """Take the dead letter ``job_id`` out and run ``store`` for it (put
        back among the dead letters if that fails); ``None`` if there is none."""
        self._check_open()
        await trio.lowlevel.checkpoint()
        job = self._dead.pop(job_id, None)
        if job is None:
            return None
        self._moving.add(job_id)
        try:
            # A few writes: finish them even if the caller is cancelled.
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + self.spec.settle_timeout
                await store(job)
        except BaseException:
            self._dead[job_id] = job
            raise
        finally:
            self._moving.discard(job_id)
        return job

    # ------------------------------------------------------------ bookkeeping

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError(f"work queue {self.name!r} is closed")

    def _known(self, job_id: str) -> bool:
        return (
            job_id in self._jobs
            or job_id in self._dead
            or job_id in self._done_ids
            or job_id in self._moving
        )

    def _add(self, job: _StoredJob) -> None:
        """Track a stored job and make it ready."""
        if not self._jobs and self._idle.is_set():
            self._idle = trio.Event()
        self._jobs[job.id] = job
        self._make_ready(job)

    def _remove(self, job_id: str) -> None:
        del self._jobs[job_id]
        if not self._jobs:
            self._idle.set()

    # ------------------------------------------------------------ loading

    async def _load(self) -> None:
        state = self.state
        for entry in await state.read_log(self._done_stream):
            job_id = entry.data.decode()
            self._done_ids.pop(job_id, None)
            self._done_ids[job_id] = entry.seq
        while len(self._done_ids) > self.spec.dedupe_window:
            del self._done_ids[next(iter(self._done_ids))]
        for key in await state.keys(self._dead_key("")):
            found = await state.read(key)
            if found is not None:
                job = _StoredJob.from_bytes(found.value)
                job.reserved_for = None
                self._dead[job.id] = job
        seqs = [job.seq for job in self._dead.values()]
        loaded: list[_StoredJob] = []
        for key in await state.keys(self._job_key("")):
            found = await state.read(key)
            if found is None:
                continue
            job = _StoredJob.from_bytes(found.value)
            dead = self._dead.get(job.id)
            if job.id in self._done_ids or (dead is not None and dead.epoch >= job.epoch):
                await state.delete(key)  # an ack or a dead-lettering cut short
                continue
            if dead is not None:
                await state.delete(self._dead_key(job.id))  # a redrive cut short
                del self._dead[job.id]
            # Its owner, if any, was delivered it when the queue closed: that
            # consumer's dedupe tells whether it applied it (reserved_for).
            loaded.append(job)
            seqs.append(job.seq)
        self._next_seq = max(seqs, default=0) + 1
        self._idle.set()
        for job in sorted(loaded, key=lambda j: j.order):
            self._add(job)

    @classmethod
    @asynccontextmanager
    async def open(cls, state: StateBackend, spec: WorkQueueSpec) -> AsyncIterator[StateBacking]:
        """Load the queue from ``state``, yield the backing, close it on exit."""
        backing = cls(state=state, spec=spec)
        await backing._load()
        try:
            yield backing
        finally:
            backing._closed = True
            backing._idle.set()  # wake wait_empty() callers: nothing moves any more
            backing._arrived.set()


def open_state_backing(
    state: StateBackend, spec: WorkQueueSpec
) -> AbstractAsyncContextManager[StateBacking]:
    """Open the ``"state"`` work-queue backing of queue ``spec.name`` in
    ``state`` for an ``async with`` block: the backing
    :func:`jido_trio.open_work_queue` uses with ``backing="state"``, or with
    ``"auto"`` when the state engine offers none of its own. It works on every
    StateBackend; keep one open per queue name.

    :param state: where the jobs live.
    :param spec: the queue's arguments (``dedupe_window`` and
        ``settle_timeout`` are the ones it uses).
    :raises InvalidMessage: a stored record is malformed.
    """
    return StateBacking.open(state, spec)
