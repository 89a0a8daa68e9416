"""The one dispatcher of every work queue, whatever its backing.

It takes jobs from a :class:`~jido_trio.abc.WorkQueueBacking`, delivers them
to the consumer agents (``concurrency_per_consumer`` delivery slots each),
and settles each delivery through the backing: ack, release with a backoff,
or dead-letter. The backing only stores jobs; every decision is made here:

- a slot takes the best job it may: one reserved for its consumer when that
  one is ahead of the best shared one, else the best shared one; a fetcher
  task asks the backing for as many jobs as slots wait for;
- every delivery is stored with its consumer before it is made
  (:meth:`~jido_trio.abc.WorkQueueBacking.record_delivery`);
- a delivery that times out has an unknown outcome: the job stays on this
  node, reserved for that consumer, whose dedupe can tell; a consumer that
  timed out or was found down takes no work until it answers a strong query,
  and the jobs reserved for it go back to the backing once a probe fails;
- a delivery that proves the consumer down costs no attempt;
- a failed delivery is released with a backoff, or dead-lettered after
  ``max_attempts``, as is a job the backing hands out with its attempts used
  up and nobody to ask about the last one.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Iterator
from contextlib import suppress
from typing import Literal

import attrs
import trio

from .._exceptions import AgentNotFound
from .._exceptions import AgentUnavailable
from .._exceptions import AlreadyProcessed
from .._exceptions import CallTimeout
from .._exceptions import CircuitOpen
from .._exceptions import JidoError
from .._exceptions import MailboxFull
from .._exceptions import Unreachable
from .._exceptions import describe
from .._message import Instruction
from .._node import Node
from .._ref import AgentRef
from ..abc import QueuedJob
from ..abc import WorkQueueBacking
from ..abc import WorkQueueSpec

__all__ = ["Dispatcher"]

log = logging.getLogger("jido_trio.workqueue")

#: Failures that prove the job never reached the consumer, or that the
#: consumer cannot take work now: the job goes back at once with no attempt
#: counted, and that consumer's slots pause with backoff.
CONSUMER_DOWN: tuple[type[JidoError], ...] = (
    AgentNotFound,
    AgentUnavailable,
    Unreachable,
    CircuitOpen,
    MailboxFull,
)

#: The error of a job handed out with its attempts used up, the last one's
#: outcome recorded nowhere (its node stopped in the middle of it).
UNKNOWN_OUTCOME = "delivery outcome unknown (its node stopped before recording it)"

#: Jobs asked of the backing in one fetch at most.
MAX_FETCH = 256

Outcome = Literal["ok", "down", "timeout"]
_Entry = tuple[int, int, int, QueuedJob]


@attrs.define(eq=False)
class Dispatcher:
    """Runs the deliveries of one open work queue (see the module docstring)."""

    node: Node
    spec: WorkQueueSpec
    backing: WorkQueueBacking
    #: Jobs any consumer may take, best first.
    _ready: list[_Entry] = attrs.field(factory=list, init=False)
    #: Jobs reserved for one consumer, per consumer id.
    _ready_for: dict[str, list[_Entry]] = attrs.field(init=False)
    #: Consumers whose last probe failed: jobs are not reserved for them.
    _down: set[str] = attrs.field(factory=set, init=False)
    _ties: Iterator[int] = attrs.field(factory=itertools.count, init=False)
    _wakeup: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot, init=False)
    _settled: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot, init=False)
    #: Set when a slot starts waiting for a job (the fetcher may have work).
    _need: trio.Event = attrs.field(factory=trio.Event, init=False)
    _fetching: trio.CancelScope = attrs.field(factory=trio.CancelScope, init=False)
    _nursery: trio.Nursery | None = attrs.field(default=None, init=False)
    _parked: int = attrs.field(default=0, init=False)
    _closing: bool = attrs.field(default=False, init=False)
    # Counts for WorkQueue.stats(); the backing counts the rest.
    #: Deliveries in flight.
    in_flight: int = attrs.field(default=0, init=False)
    #: Jobs waiting out a backoff here (reserved for a consumer).
    delayed: int = attrs.field(default=0, init=False)
    #: Jobs acknowledged since the queue was opened.
    done: int = attrs.field(default=0, init=False)
    #: Failed deliveries followed by a retry since the queue was opened.
    retried: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        self._ready_for = {ref.id: [] for ref in self.spec.consumers}

    @property
    def name(self) -> str:
        return self.spec.name

    # ------------------------------------------------------------ lifecycle

    async def serve(self) -> None:
        """Run the fetcher and every delivery slot until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._fetch_jobs)
            for ref in self.spec.consumers:
                for _ in range(self.spec.concurrency_per_consumer):
                    nursery.start_soon(self._slot, ref)

    def close(self) -> None:
        """Stop taking jobs (no waiting): the queue is about to be cancelled."""
        self._closing = True
        self._fetching.cancel()
        self._wakeup.unpark_all()

    async def drain(self) -> None:
        """Stop taking jobs and wait for the deliveries in flight."""
        self.close()
        while self.in_flight:
            await self._settled.park()

    async def join(self) -> None:
        """Wait until the queue has no unfinished job and no delivery here
        is still settling."""
        await self.backing.wait_empty()
        while self.in_flight:
            await self._settled.park()

    # ------------------------------------------------------------ taking jobs

    async def _fetch_jobs(self) -> None:
        """Keep the waiting slots supplied with jobs from the backing."""
        failures = 0
        with self._fetching:
            while True:
                need = self._need = trio.Event()
                want = self._parked - len(self._ready)
                if want <= 0:
                    await need.wait()
                    continue
                try:
                    jobs = await self.backing.fetch(min(want, MAX_FETCH))
                except JidoError as exc:
                    failures += 1
                    pause = self._retry_delay(failures)
                    log.warning(
                        "work queue %r: fetching jobs (retry in %.3gs): %s", self.name, pause, exc
                    )
                    await trio.sleep(pause)
                    continue
                failures = 0
                for job in jobs:
                    self._received(job)

    def _received(self, job: QueuedJob) -> None:
        if self._admitted(job):
            self._offer(job)

    def _admitted(self, job: QueuedJob) -> bool:
        """Whether a job the backing handed out is to be delivered (else it
        is being dead-lettered)."""
        if job.reserved_for is not None and (
            job.reserved_for not in self._ready_for or job.reserved_for in self._down
        ):
            job.reserved_for = None  # nobody here to ask about the last delivery
        if job.attempts >= self.spec.max_attempts and job.reserved_for is None:
            job.error = job.error or UNKNOWN_OUTCOME
            self._spawn(self._dead_letter, job)
            return False
        return True

    def _offer(self, job: QueuedJob) -> None:
        if job.reserved_for in self._down:
            job.reserved_for = None
        entry = (-job.priority, job.seq, next(self._ties), job)
        if job.reserved_for is not None:
            heapq.heappush(self._ready_for[job.reserved_for], entry)
            self._wakeup.unpark_all()  # only that consumer's slots can take it
        else:
            heapq.heappush(self._ready, entry)
            self._wakeup.unpark()

    def _pop_for(self, consumer_id: str) -> QueuedJob | None:
        own = self._ready_for[consumer_id]
        shared = self._ready
        if own and (not shared or own[0] < shared[0]):
            return heapq.heappop(own)[3]
        if shared:
            return heapq.heappop(shared)[3]
        return None

    async def _take(self, consumer_id: str) -> QueuedJob | None:
        while not self._closing:
            job = self._pop_for(consumer_id)
            while job is None:
                # The synchronous attempt: a job the backing has at hand
                # (one reserved for another consumer goes to that one).
                fetched = self.backing.fetch_nowait(1)
                if not fetched:
                    break
                job = fetched[0]
                if not self._admitted(job):
                    job = None
                elif job.reserved_for not in (None, consumer_id):
                    self._offer(job)
                    job = None
            if job is not None:
                self.in_flight += 1
                return job
            self._parked += 1
            self._need.set()
            try:
                await self._wakeup.park()
            finally:
                self._parked -= 1
        return None

    # ------------------------------------------------------------ delivering

    async def _slot(self, consumer: AgentRef) -> None:
        """One delivery slot of one consumer: take a job, deliver, settle, repeat."""
        pause = 0.0
        while True:
            job = await self._take(consumer.id)
            if job is None:
                return
            outcome = await self._run(consumer, job)
            if outcome == "ok":
                pause = 0.0
                continue
            try:
                pause = await self._recover(consumer, pause, probe_first=outcome == "timeout")
            finally:
                self._down.discard(consumer.id)

    async def _run(self, consumer: AgentRef, job: QueuedJob) -> Outcome:
        """Deliver ``job`` once and settle it; say how the consumer fared."""
        try:
            job.attempts += 1
            job.consumer = consumer.id
            # Stored before delivery: a restart knows who may have applied
            # it, and a job that brings the whole process down still uses up
            # attempts.
            await self.backing.record_delivery(job)
            try:
                await self._deliver(consumer, job)
            except JidoError as exc:
                job.consumer = None
                if isinstance(exc, CONSUMER_DOWN):
                    with self._settling():
                        await self._consumer_down(consumer, job, exc)
                    return "down"
                with self._settling():
                    await self._failed(consumer, job, exc)
                return "timeout" if isinstance(exc, CallTimeout) else "ok"
            job.consumer = None
            with self._settling():
                await self.backing.ack(job)
            self.done += 1
            return "ok"
        finally:
            self.in_flight -= 1
            self._settled.unpark_all()

    async def _deliver(self, consumer: AgentRef, job: QueuedJob) -> None:
        """Deliver the job once, as a call bounded by the visibility timeout;
        return when the consumer applied it, now or before."""
        instruction = Instruction(
            self.spec.action,
            {"job": job.payload, "job_id": job.id},
            id=f"{self.name}/{job.id}",
        )
        timeout = self.spec.visibility_timeout
        try:
            await self.node.call(consumer, instruction, timeout=timeout)
        except AlreadyProcessed:
            # Applied before, or an earlier delivery whose caller gave up is
            # still queued there. A strong query waits behind it; then the
            # consumer's answer is final.
            await self.node.query_agent(consumer, consistency="strong", timeout=timeout)
            with suppress(AlreadyProcessed):
                await self.node.call(consumer, instruction, timeout=timeout)

    def _settling(self) -> trio.CancelScope:
        # Settling is a few storage writes: let them finish even while the
        # queue is being cancelled, so no finished job is delivered again.
        scope = trio.move_on_after(self.spec.settle_timeout)
        scope.shield = True
        return scope

    async def _consumer_down(self, consumer: AgentRef, job: QueuedJob, exc: JidoError) -> None:
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
        await self.backing.release(job)

    async def _failed(self, consumer: AgentRef, job: QueuedJob, exc: JidoError) -> None:
        job.error = describe(exc)
        timeout = isinstance(exc, CallTimeout)
        # After a timeout the outcome is unknown: the job stays here, reserved
        # for this consumer, whose dedupe can tell, until it is found down.
        job.reserved_for = consumer.id if timeout else None
        if job.attempts >= self.spec.max_attempts:
            await self._dead_letter(job)
            return
        delay = self._retry_delay(job.attempts)
        log.info(
            "work queue %r: job %r failed (attempt %d of %d), retry in %.3gs: %s",
            self.name,
            job.id,
            job.attempts,
            self.spec.max_attempts,
            delay,
            job.error,
        )
        self.retried += 1
        if timeout:
            self.delayed += 1
            assert self._nursery is not None
            self._nursery.start_soon(self._retry_later, job, delay)
        else:
            await self.backing.release(job, delay=delay)

    async def _retry_later(self, job: QueuedJob, delay: float) -> None:
        try:
            await trio.sleep(delay)
        finally:
            self.delayed -= 1
        self._offer(job)

    async def _dead_letter(self, job: QueuedJob) -> None:
        log.warning(
            "work queue %r: job %r dead-lettered after %d attempts: %s",
            self.name,
            job.id,
            job.attempts,
            job.error,
        )
        job.reserved_for = None
        await self.backing.dead_letter(job)

    def _retry_delay(self, attempts: int) -> float:
        """Seconds before the next attempt of a job that failed ``attempts`` times."""
        initial, maximum = self.spec.backoff
        return min(initial * 2.0 ** min(attempts - 1, 1000), maximum)

    # ------------------------------------------------------------ consumers down

    async def _recover(self, consumer: AgentRef, pause: float, *, probe_first: bool) -> float:
        """Take no work for ``consumer`` until it answers a strong query (which
        waits behind whatever it is busy with), pausing with backoff between
        probes; after each failed probe, give the jobs reserved for it back.
        Return the last pause."""
        initial, maximum = self.spec.backoff
        while True:
            if not probe_first:
                pause = initial if pause == 0.0 else min(pause * 2.0, maximum)
                await trio.sleep(pause)
            probe_first = False
            try:
                await self.node.query_agent(
                    consumer, consistency="strong", timeout=self.spec.visibility_timeout
                )
            except JidoError as exc:
                log.debug("work queue %r: consumer %r still down: %s", self.name, consumer.id, exc)
                self._down.add(consumer.id)
                self._release_reserved(consumer.id)
            else:
                return pause

    def _release_reserved(self, consumer_id: str) -> None:
        """The consumer is down: the jobs reserved for it go back to the backing."""
        reserved = self._ready_for[consumer_id]
        while reserved:
            job = heapq.heappop(reserved)[3]
            job.reserved_for = None
            self._spawn(self.backing.release, job)

    def _spawn(self, settle: Callable[[QueuedJob], Awaitable[None]], job: QueuedJob) -> None:
        """Settle ``job`` in the background (``settle(job)``), shielded like a
        settlement in a delivery. A failure leaves the job where it is stored:
        the backing hands it out again (at the latest when the queue is next
        opened)."""

        async def run() -> None:
            try:
                with self._settling():
                    await settle(job)
            except JidoError as exc:
                log.warning("work queue %r: settling job %r: %s", self.name, job.id, exc)

        assert self._nursery is not None
        self._nursery.start_soon(run)
