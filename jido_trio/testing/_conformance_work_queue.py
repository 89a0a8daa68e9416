"""Conformance checks for :class:`jido_trio.abc.WorkQueueBacking`.

The checks play the dispatcher's part by hand: they put jobs, fetch them,
change ``attempts``, ``error``, ``reserved_for`` and ``consumer`` as the
dispatcher does, settle them, and reopen the queue to see what was stored.
"""

from __future__ import annotations

import functools
import itertools
import secrets
from collections.abc import AsyncIterator
from collections.abc import Callable
from collections.abc import Collection
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from .._ref import AgentRef
from ..abc import DeadJob
from ..abc import QueuedJob
from ..abc import WorkQueueBacking
from ..abc import WorkQueueCounts
from ..abc import WorkQueueSpec
from ._conformance_common import Check
from ._conformance_common import Suite
from ._conformance_common import check
from ._conformance_common import expect_checkpoint
from ._conformance_common import opened
from ._conformance_common import raises

__all__ = ["WORK_QUEUE_SUITE", "check_work_queue_backing"]

WORK_QUEUE_SUITE = Suite("WorkQueueBacking")
_check = WORK_QUEUE_SUITE.register


@attrs.frozen
class _Queue:
    """The queue one check runs on: its backing is opened (again) on demand."""

    factory: Callable[[WorkQueueSpec], Any]
    spec: WorkQueueSpec
    #: Longest wait for anything that must happen.
    timeout: float

    @property
    def delay(self) -> float:
        """Seconds a job released with a delay stays away (and a fetch that
        must find nothing waits half of it)."""
        return self.timeout / 20

    @asynccontextmanager
    async def open(self) -> AsyncIterator[WorkQueueBacking]:
        async with opened(self.factory(self.spec)) as backing:
            check(
                isinstance(backing, WorkQueueBacking),
                f"the factory made a {type(backing).__name__}, "
                "not a jido_trio.abc.WorkQueueBacking",
            )
            yield backing

    async def take(
        self, b: WorkQueueBacking, count: int, what: str, *, after: float = 0.0
    ) -> list[QueuedJob]:
        """Fetch until ``count`` jobs came (a fetch may return nothing to
        poll), within the timeout (plus ``after`` seconds)."""
        got: list[QueuedJob] = []
        with trio.move_on_after(self.timeout + after):
            while len(got) < count:
                jobs = await b.fetch(count - len(got))
                check(
                    len(jobs) <= count - len(got),
                    f"{what}: fetch({count - len(got)}) returned {len(jobs)} jobs",
                )
                for job in jobs:
                    check(isinstance(job, QueuedJob), f"{what}: fetch returned {job!r}")
                got.extend(jobs)
        check(
            len(got) == count,
            f"{what}: fetched {len(got)} of {count} jobs within {self.timeout + after}s "
            f"({[job.id for job in got]})",
        )
        return got

    async def take_one(
        self, b: WorkQueueBacking, what: str, *, after: float = 0.0, **expected: Any
    ) -> QueuedJob:
        """Fetch one job and require its fields to have the ``expected`` values."""
        [job] = await self.take(b, 1, f"fetching {what}", after=after)
        for field, value in expected.items():
            actual = getattr(job, field)
            check(actual == value, f"{what}: {field} is {actual!r}, expected {value!r}")
        return job

    async def nothing(self, b: WorkQueueBacking, what: str) -> None:
        """Require fetch to hand out nothing for half the delay."""
        with trio.move_on_after(self.delay / 2):
            while True:
                jobs = await b.fetch(1)
                check(not jobs, f"{what}: fetch handed out {[job.id for job in jobs]}")


async def _handed_out(
    q: _Queue,
    b: WorkQueueBacking,
    job_id: str = "j",
    payload: Any = "x",
    *,
    priority: int = 0,
    **changes: Any,
) -> QueuedJob:
    """Put a job, fetch it, and change its fields as a dispatcher would."""
    await b.put(job_id, payload, priority=priority)
    [job] = await q.take(b, 1, f"fetching job {job_id!r}")
    for field, value in changes.items():
        setattr(job, field, value)
    return job


async def _dead_letter(q: _Queue, b: WorkQueueBacking, job_id: str) -> None:
    """Put ``job_id``, fetch it and dead-letter it after three attempts."""
    job = await _handed_out(q, b, job_id, {"job": job_id}, attempts=3, error="ActionError: x")
    await b.dead_letter(job)


# ---------------------------------------------------------------- putting and fetching


@_check
async def _wq_empty(q: _Queue) -> None:
    """a fresh queue has no jobs, no dead letters, and fetch hands out nothing"""
    async with q.open() as b:
        counts = b.counts()
        check(
            counts == WorkQueueCounts(unfinished=0, delayed=0, dead=0),
            f"counts() of a fresh queue is {counts!r}",
        )
        check(await b.dead_letters() == [], "dead_letters() of a fresh queue is not []")
        with trio.move_on_after(q.timeout) as scope:
            await b.wait_empty()
        check(not scope.cancelled_caught, "wait_empty() of a fresh queue did not return")
        await q.nothing(b, "a fresh queue")


@_check
async def _wq_put_fetch(q: _Queue) -> None:
    """a put job is fetched once, its payload as the message codec gives it back"""
    ref = AgentRef.new("conformance-agent", "conformance", node="conformance")
    async with q.open() as b:
        await b.put("job-1", {"pair": (1, 2), "ref": ref, "text": "é"}, priority=3)
        check(b.counts().unfinished == 1, f"counts() after a put is {b.counts()!r}")
        await q.take_one(
            b,
            "the job fetched",
            id="job-1",
            payload={"pair": [1, 2], "ref": ref, "text": "é"},
            priority=3,
            attempts=0,
            error=None,
            reserved_for=None,
            consumer=None,
        )
        await q.nothing(b, "while the only job is handed out")
        check(b.counts().unfinished == 1, f"counts() of a handed out job is {b.counts()!r}")


@_check
async def _wq_priority_then_put_order(q: _Queue) -> None:
    """fetch hands out the highest priority first, then in put order"""
    plan = [("a", 0), ("b", 5), ("c", 0), ("d", -1), ("e", 5), ("f", 0)]
    async with q.open() as b:
        for job_id, priority in plan:
            await b.put(job_id, job_id, priority=priority)
        fetched = [(await q.take(b, 1, f"fetch #{i}"))[0] for i in range(len(plan))]
        order = [job.id for job in fetched]
        check(order == ["b", "e", "a", "c", "f", "d"], f"jobs fetched in the order {order}")
        for first, second in itertools.pairwise(fetched):
            if first.priority == second.priority:
                check(
                    first.seq < second.seq,
                    f"job {first.id!r} (seq {first.seq}) was put before {second.id!r} "
                    f"(seq {second.seq})",
                )


@_check
async def _wq_fetch_at_most(q: _Queue) -> None:
    """fetch(n) hands out at most n jobs, each once; fetch_nowait agrees"""
    async with q.open() as b:
        for i in range(5):
            await b.put(f"j{i}", i, priority=0)
        first: list[QueuedJob] = []
        with trio.move_on_after(q.timeout):
            while not first:
                first = await b.fetch(2)
        check(1 <= len(first) <= 2, f"fetch(2) returned {len(first)} jobs")
        now = b.fetch_nowait(1)
        check(len(now) <= 1, f"fetch_nowait(1) returned {len(now)} jobs")
        rest = await q.take(b, 5 - len(first) - len(now), "fetching the others")
        ids = [job.id for job in [*first, *now, *rest]]
        check(sorted(ids) == [f"j{i}" for i in range(5)], f"fetched {ids}")


@_check
async def _wq_put_idempotent(q: _Queue) -> None:
    """putting an id the queue holds, also concurrently, changes nothing"""
    async with q.open() as b:
        await b.put("same", 1, priority=0)
        await b.put("same", 2, priority=1)
        async with trio.open_nursery() as nursery:
            for n in range(3):
                nursery.start_soon(functools.partial(b.put, "same", 10 + n, priority=0))
        await q.take_one(b, "the job put first", payload=1, priority=0)
        await q.nothing(b, "after one job put five times")
        check(b.counts().unfinished == 1, f"counts() is {b.counts()!r}")


@_check
async def _wq_ack(q: _Queue) -> None:
    """ack finishes a job: not handed out again, not put again within the dedupe window"""
    async with q.open() as b:
        await b.ack(await _handed_out(q, b))
        check(b.counts().unfinished == 0, f"counts() after the ack is {b.counts()!r}")
        with trio.move_on_after(q.timeout) as scope:
            await b.wait_empty()
        check(not scope.cancelled_caught, "wait_empty() did not return after the last ack")
        await b.put("j", "again", priority=0)
        await q.nothing(b, "after putting an acknowledged id again")


# ---------------------------------------------------------------- releasing


@_check
async def _wq_release_keeps_the_record(q: _Queue) -> None:
    """a released job comes back with its attempts, error and reservation"""
    async with q.open() as b:
        job = await _handed_out(
            q, b, priority=2, attempts=2, error="ValueError: boom", reserved_for="consumer-1"
        )
        await b.release(job)
        await q.take_one(
            b,
            "the released job",
            id="j",
            payload="x",
            priority=2,
            attempts=2,
            error="ValueError: boom",
            reserved_for="consumer-1",
        )


@_check
async def _wq_release_with_a_delay(q: _Queue) -> None:
    """a job released with a delay is counted delayed and comes back after it"""
    async with q.open() as b:
        job = await _handed_out(q, b, attempts=1, error="ValueError: boom")
        released = trio.current_time()
        await b.release(job, delay=q.delay)
        counts = b.counts()
        check(
            counts.delayed == 1 and counts.unfinished == 1,
            f"counts() after a release with a delay is {counts!r}",
        )
        await q.nothing(b, f"within {q.delay}s of a release with that delay")
        await q.take_one(b, "the delayed job", after=q.delay, id="j", attempts=1)
        waited = trio.current_time() - released
        check(waited >= q.delay * 0.9, f"a job released with delay {q.delay} came back in {waited}")
        check(b.counts().delayed == 0, f"counts() once the delay is over is {b.counts()!r}")


@_check
async def _wq_delivery_in_flight_survives_reopen(q: _Queue) -> None:
    """a delivery cut short by closing comes back counted and reserved for its consumer"""
    async with q.open() as b:
        job = await _handed_out(q, b, attempts=1, consumer="consumer-1")
        with expect_checkpoint("record_delivery"):
            await b.record_delivery(job)
    async with q.open() as b:
        await q.take_one(
            b,
            "the job whose delivery was cut short",
            id="j",
            payload="x",
            attempts=1,
            reserved_for="consumer-1",
            consumer=None,
        )


@_check
async def _wq_jobs_survive_reopen(q: _Queue) -> None:
    """jobs put stay stored when the backing closes, in their order"""
    async with q.open() as b:
        for job_id, priority in [("low", -1), ("high", 1), ("mid", 0), ("mid-2", 0)]:
            await b.put(job_id, job_id, priority=priority)
    async with q.open() as b:
        check(b.counts().unfinished == 4, f"counts() after a reopen is {b.counts()!r}")
        order = [(await q.take(b, 1, f"fetch #{i}"))[0].id for i in range(4)]
        check(order == ["high", "mid", "mid-2", "low"], f"jobs fetched in the order {order}")


# ---------------------------------------------------------------- dead letters


@_check
async def _wq_dead_letter(q: _Queue) -> None:
    """a dead letter is listed with its attempts and error, and is not put again"""
    async with q.open() as b:
        job = await _handed_out(
            q, b, "p", {"n": 1}, priority=4, attempts=3, error="ActionError: boom"
        )
        await b.dead_letter(job)
        listed = await b.dead_letters()
        expected = DeadJob(
            id="p", payload={"n": 1}, priority=4, attempts=3, error="ActionError: boom"
        )
        check(listed == [expected], f"dead_letters() is {listed!r}, expected [{expected!r}]")
        counts = b.counts()
        check(counts.dead == 1 and counts.unfinished == 0, f"counts() after it is {counts!r}")
        with trio.move_on_after(q.timeout) as scope:
            await b.wait_empty()
        check(not scope.cancelled_caught, "wait_empty() waits for a dead letter")
        await b.put("p", {"n": 2}, priority=4)
        await q.nothing(b, "after putting a dead letter's id again")
        check(len(await b.dead_letters()) == 1, "putting a dead letter's id changed them")


@_check
async def _wq_redrive(q: _Queue) -> None:
    """redrive puts a dead letter back with no attempts, once"""
    async with q.open() as b:
        await _dead_letter(q, b, "p")
        check(await b.redrive("unknown") is False, "redrive of an unknown id is not False")
        check(await b.redrive("p") is True, "redrive of a dead letter is not True")
        check(await b.dead_letters() == [], "a redriven job is still a dead letter")
        job = await q.take_one(
            b,
            "the redriven job",
            id="p",
            payload={"job": "p"},
            attempts=0,
            error=None,
            reserved_for=None,
        )
        check(await b.redrive("p") is False, "redrive of a job that is no dead letter")
        await b.ack(job)
        check(b.counts().unfinished == 0, f"counts() is {b.counts()!r}")


@_check
async def _wq_purge(q: _Queue) -> None:
    """purge deletes a dead letter for good"""
    async with q.open() as b:
        await _dead_letter(q, b, "p")
        check(await b.purge("p") is True, "purge of a dead letter is not True")
        check(await b.dead_letters() == [], "a purged job is still a dead letter")
        check(b.counts().dead == 0, f"counts() after a purge is {b.counts()!r}")
        check(await b.purge("p") is False, "purge of a purged job is not False")
        check(await b.redrive("p") is False, "redrive of a purged job is not False")


@_check
async def _wq_dead_letters_survive_reopen(q: _Queue) -> None:
    """dead letters stay stored, listed in put order"""
    async with q.open() as b:
        for job_id in ("a", "b"):
            await b.put(job_id, job_id, priority=0)
        first, second = await q.take(b, 2, "fetching two jobs")
        for job in (second, first):
            job.attempts = 1
            await b.dead_letter(job)
    async with q.open() as b:
        ids = [dead.id for dead in await b.dead_letters()]
        check(ids == ["a", "b"], f"dead letters after a reopen: {ids}")
        check(b.counts().dead == 2, f"counts() after a reopen is {b.counts()!r}")
        check(await b.purge("a") is True, "purge after a reopen is not True")


@_check
async def _wq_one_move_per_dead_letter(q: _Queue) -> None:
    """concurrent redrives and a purge of one dead letter: exactly one of them moves it"""
    async with q.open() as b:
        await _dead_letter(q, b, "p")
        moved: list[bool] = []

        async def move(redrive: bool) -> None:
            moved.append(await (b.redrive("p") if redrive else b.purge("p")))

        async with trio.open_nursery() as nursery:
            for redrive in (True, True, False, True):
                nursery.start_soon(move, redrive)
        check(sorted(moved) == [False, False, False, True], f"the calls returned {moved}")


# ---------------------------------------------------------------- waiting and closing


@_check
async def _wq_wait_empty_waits(q: _Queue) -> None:
    """wait_empty waits while a job is unfinished and returns once it is acknowledged"""
    async with q.open() as b:
        job = await _handed_out(q, b)
        returned = trio.Event()

        async def waiter() -> None:
            await b.wait_empty()
            returned.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            with trio.move_on_after(q.delay / 2):
                await returned.wait()
            check(not returned.is_set(), "wait_empty() returned with a job handed out")
            await b.ack(job)
            with trio.move_on_after(q.timeout):
                await returned.wait()
            check(returned.is_set(), "wait_empty() did not return after the ack")


@_check
async def _wq_closed(q: _Queue) -> None:
    """after close, put, redrive, purge and a wait with jobs left raise ClosedResourceError"""
    failed = trio.Event()

    async def waiter(b: WorkQueueBacking) -> None:
        with raises(trio.ClosedResourceError, "wait_empty() while the backing closes"):
            await b.wait_empty()
        failed.set()

    async with trio.open_nursery() as nursery:
        async with q.open() as b:
            await b.put("left", 1, priority=0)
            nursery.start_soon(waiter, b)
        with trio.move_on_after(q.timeout):
            await failed.wait()
        nursery.cancel_scope.cancel()
    check(failed.is_set(), "wait_empty() did not raise ClosedResourceError as the backing closed")
    with raises(trio.ClosedResourceError, "put after close"):
        await b.put("new", 1, priority=0)
    with raises(trio.ClosedResourceError, "redrive after close"):
        await b.redrive("left")
    with raises(trio.ClosedResourceError, "purge after close"):
        await b.purge("left")
    with raises(trio.ClosedResourceError, "wait_empty() after close with a job left"):
        await b.wait_empty()


@_check
async def _wq_checkpoints(q: _Queue) -> None:
    """the methods that need no I/O are Trio checkpoints all the same"""
    async with q.open() as b:
        await b.put("j", "x", priority=0)
        with expect_checkpoint("put of an id the queue holds"):
            await b.put("j", "x", priority=0)
        with expect_checkpoint("dead_letters()"):
            await b.dead_letters()
        with expect_checkpoint("redrive of an unknown id"):
            await b.redrive("unknown")
        with expect_checkpoint("purge of an unknown id"):
            await b.purge("unknown")


async def check_work_queue_backing(
    factory: Callable[[WorkQueueSpec], Any], *, skip: Collection[str] = (), timeout: float = 10.0
) -> None:
    """Run every WorkQueueBacking check, each on a queue of its own.

    :param factory: called with a :class:`~jido_trio.abc.WorkQueueSpec`;
        returns an async context manager yielding the backing of queue
        ``spec.name`` (or the backing itself, or an awaitable of it), as
        :meth:`~jido_trio.abc.WorkQueueBackingProvider.open_work_queue_backing`
        does. Every check uses a name no other check uses (a random suffix),
        so one store serves them all; some checks close the backing and call
        the factory again for the same name, which must give back what was
        stored.
    :param skip: names of checks not to run (see :data:`WORK_QUEUE_BACKING_CHECKS`).
    :param timeout: longest wait for a job to come or a wait to end. A job
        released with a delay is released for a twentieth of it, and a fetch
        that must find nothing waits half of that.
    :raises AssertionError: naming the first check that failed and why.
    """
    consumer = AgentRef.new("conformance-consumer", "conformance", node="conformance")

    async def run_one(item: Check) -> None:
        spec = WorkQueueSpec.new(
            f"conformance-{item.name}-{secrets.token_hex(4)}",
            consumers=[consumer],
            action="work",
            max_attempts=5,
            visibility_timeout=30.0,
            backoff=(0.1, 30.0),
            concurrency_per_consumer=1,
            dedupe_window=10_000,
            settle_timeout=5.0,
        )
        await item.fn(_Queue(factory=factory, spec=spec, timeout=timeout))

    await WORK_QUEUE_SUITE.run(skip, run_one)
