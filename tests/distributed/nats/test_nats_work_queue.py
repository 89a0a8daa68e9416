"""Work queues on the ``jetstream`` backing, on a real nats-server (real clock).

Every test gets a namespace of its own (``nats_options``), so a fresh stream,
bucket and consumers; every wait is bounded with ``trio.fail_after``.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio

import jido_trio as jt
from jido_trio import DeadJob
from jido_trio import QueueStats
from jido_trio import open_work_queue
from jido_trio.abc import encode_value
from jido_trio.testing import crash_agent
from jido_trio.testing.conformance import check_work_queue_backing
from jido_trio_nats._state import open_state
from jido_trio_nats._work_queue import JetStreamQueue
from tests._polling import wait_until
from tests.workqueue.test_work_queue import Worker
from tests.workqueue.test_work_queue import WorkerState
from tests.workqueue.test_work_queue import applied
from tests.workqueue.test_work_queue import everything

log = logging.getLogger(__name__)


def config(name: str, options: dict[str, Any], **extra: Any) -> jt.Config:
    return jt.Config(
        node_name=name,
        state="nats",
        max_restarts=1_000_000,
        plugin_options={"nats": options},
        **extra,
    )


@asynccontextmanager
async def nats_node(name: str, options: dict[str, Any], **extra: Any) -> AsyncIterator[jt.Node]:
    async with jt.open_node(config(name, options, **extra)) as node:
        yield node


def backing(queue: jt.WorkQueue) -> JetStreamQueue:
    impl = queue._dispatcher.backing
    assert isinstance(impl, JetStreamQueue)
    return impl


async def stream_messages(queue: jt.WorkQueue) -> int:
    impl = backing(queue)
    return await impl.conn.bridge.run(impl._aio_count)


# ---------------------------------------------------------------- selection


async def test_backing_is_chosen_by_the_state_engine(nats_options: dict[str, Any]) -> None:
    async with nats_node("n1", nats_options) as node:
        ref = await node.start_agent(Worker, "w")
        async with open_work_queue(node, "auto", consumers=[ref], action="work") as queue:
            assert queue.backing == "jetstream"
            assert queue.name == "auto"
        async with open_work_queue(
            node, "explicit", consumers=[ref], action="work", backing="jetstream"
        ) as queue:
            assert queue.backing == "jetstream"
        # The StateBackend backing works on NATS state too.
        async with open_work_queue(
            node, "kv", consumers=[ref], action="work", backing="state"
        ) as queue:
            assert queue.backing == "state"
            await queue.put({"n": 1})
            with trio.fail_after(10):
                await queue.join()
        with pytest.raises(jt.ConfigError, match="jetstream"):
            async with open_work_queue(node, "q", consumers=[ref], action="work", backing="sqs"):
                pass  # pragma: no cover
    async with jt.open_node(name="local") as node:
        ref = await node.start_agent(Worker, "w")
        async with open_work_queue(node, "q", consumers=[ref], action="work") as queue:
            assert queue.backing == "state"
        with pytest.raises(jt.ConfigError, match="no work-queue backing"):
            async with open_work_queue(
                node, "q", consumers=[ref], action="work", backing="jetstream"
            ):
                pass  # pragma: no cover


async def test_jetstream_backing_conformance(nats_options: dict[str, Any]) -> None:
    async with open_state(config("conformance", nats_options), nats_options) as state:
        await check_work_queue_backing(state.open_work_queue_backing)


# ---------------------------------------------------------------- basics


async def test_put_ack_and_idempotent_puts(nats_options: dict[str, Any]) -> None:
    async with nats_node("n1", nats_options) as node:
        refs = [await node.start_agent(Worker, f"w{i}") for i in range(3)]
        async with open_work_queue(
            node, "basic", consumers=refs, action="work", concurrency_per_consumer=2
        ) as queue:
            for n in range(30):
                assert await queue.put({"n": n}, id=f"job-{n}") == f"job-{n}"
            assert await queue.put({"n": 0}, id="job-0") == "job-0"  # a retried put
            generated = await queue.put({"n": 30})
            assert generated and generated != "job-0"
            with trio.fail_after(20):
                await queue.join()
            assert queue.stats() == QueueStats(pending=0, delayed=0, in_flight=0, done=31, dead=0)
            assert await stream_messages(queue) == 0
            # Acknowledged jobs are remembered within the duplicate window.
            await queue.put({"n": 5}, id="job-5")
            with trio.fail_after(10):
                await queue.join()
            assert queue.stats().done == 31
            with pytest.raises(jt.InvalidMessage):
                await queue.put(object())
            with pytest.raises(TypeError):
                await queue.put(1, priority=1.5)  # type: ignore[arg-type]
        with pytest.raises(trio.ClosedResourceError):
            await queue.put({"n": 99})
        done = await applied(node, refs)
        assert everything(done) == list(range(31))
        assert sum(1 for numbers in done.values() if numbers) >= 2  # shared


async def test_payload_is_what_storage_gives_back(nats_options: dict[str, Any]) -> None:
    got: list[Any] = []

    class Echo(jt.Agent):
        type = "nats-wq-echo"

        @jt.action("work")
        async def work(self, state: Any, job: Any, job_id: str) -> None:
            got.append((job, job_id))

    async with nats_node("n1", nats_options) as node:
        ref = await node.start_agent(Echo, "e")
        async with open_work_queue(node, "echo", consumers=[ref], action="work") as queue:
            await queue.put({"pair": (1, 2), "ref": ref}, id="one")
            with trio.fail_after(10):
                await queue.join()
        assert got == [({"pair": [1, 2], "ref": ref}, "one")]


async def test_priority_first_then_fifo(nats_options: dict[str, Any]) -> None:
    async with nats_node("n1", nats_options) as node:
        ref = await node.start_agent(Worker, "w")
        async with open_work_queue(node, "prio", consumers=[ref], action="work") as queue:
            # The gate keeps the only consumer busy while the rest is queued.
            await queue.put({"n": 0, "sleep": 0.5}, priority=100)
            await wait_until(lambda: queue.stats().in_flight > 0)
            for n, priority in [(1, 0), (2, 5), (3, 0), (4, 5), (5, -1), (6, 9), (7, 0)]:
                await queue.put({"n": n}, priority=priority)
            with trio.fail_after(20):
                await queue.join()
            assert queue.stats().done == 8
        assert (await node.query_agent(ref)).done == (0, 6, 2, 4, 1, 3, 7, 5)


# ---------------------------------------------------------------- failures


async def test_retries_back_off_then_dead_letter_redrive_purge(
    nats_options: dict[str, Any],
) -> None:
    broken = True
    attempts: list[float] = []

    class Fickle(jt.Agent):
        type = "nats-wq-fickle"
        State = WorkerState

        @jt.action("work")
        async def work(self, state: WorkerState, job: int, job_id: str) -> WorkerState:
            if job_id.startswith("bad"):
                attempts.append(time.monotonic())
                if broken:
                    raise ValueError("not today")
            return attrs.evolve(state, done=(*state.done, job))

    async with nats_node("n1", nats_options) as node:
        pool = await node.start_supervisor("pool", max_restarts=100, max_seconds=1.0)
        refs = [await node.start_agent(Fickle, f"f{i}", supervisor=pool) for i in range(2)]
        async with open_work_queue(
            node, "retry", consumers=refs, action="work", max_attempts=3, backoff=(0.2, 0.4)
        ) as queue:
            await queue.put(99, id="bad")
            for n in range(5):
                await queue.put(n, id=f"good-{n}")
            with trio.fail_after(20):
                await queue.join()  # dead letters do not keep the queue busy
            stats = queue.stats()
            assert (stats.done, stats.dead, stats.retried, stats.pending) == (5, 1, 2, 0)
            gaps = [b - a for a, b in itertools.pairwise(attempts)]
            assert len(gaps) == 2
            assert gaps[0] >= 0.2 * 0.9 and gaps[1] >= 0.4 * 0.9, gaps  # 0.2, then 0.4
            [dead] = await queue.dead_letters()
            assert dead == DeadJob(id="bad", payload=99, priority=0, attempts=3, error=dead.error)
            assert dead.error is not None
            assert dead.error.startswith("ActionError:")
            assert "not today" in dead.error
            # Putting a dead job again changes nothing.
            assert await queue.put(1000, id="bad") == "bad"
            assert queue.stats().dead == 1
            assert await stream_messages(queue) == 0
            # Redriven while still broken: it dies again, with a fresh budget.
            assert await queue.redrive(["nope"]) == []
            assert await queue.redrive() == ["bad"]
            assert queue.stats().dead == 0
            with trio.fail_after(20):
                await queue.join()
            assert [d.attempts for d in await queue.dead_letters()] == [3]
            assert len(attempts) == 6
            # Fixed: a redrive runs it once.
            broken = False
            assert await queue.redrive(["bad"]) == ["bad"]
            with trio.fail_after(20):
                await queue.join()
            assert await queue.dead_letters() == []
            assert queue.stats().done == 6
            # Purging forgets a dead letter for good.
            broken = True
            await queue.put(7, id="bad-2")
            attempts.clear()
        async with open_work_queue(
            node, "retry", consumers=refs, action="work", max_attempts=1
        ) as queue:
            with trio.fail_after(20):
                await queue.join()
            await wait_until(lambda: queue.stats().dead == 1)  # once its record is written
            assert [d.id for d in await queue.dead_letters()] == ["bad-2"]
            assert await queue.purge_dead_letters(["bad-2"]) == ["bad-2"]
            assert await queue.dead_letters() == []
            assert await queue.purge_dead_letters() == []
        done = everything(await applied(node, refs))
        assert done == [0, 1, 2, 3, 4, 99]


async def test_dead_letters_are_shared_by_every_node(nats_options: dict[str, Any]) -> None:
    async with (
        nats_node("a", nats_options) as a,
        nats_node("b", nats_options) as b,
    ):
        ref_a = await a.start_agent(Worker, "wa")
        ref_b = await b.start_agent(Worker, "wb")
        async with (
            open_work_queue(a, "shared", consumers=[ref_a], action="work", max_attempts=1) as qa,
            open_work_queue(b, "shared", consumers=[ref_b], action="work", max_attempts=1) as qb,
        ):
            await qa.put({"n": 1, "poison": True}, id="poison")
            with trio.fail_after(20):
                await qa.join()
            await wait_until(lambda: qa.stats().dead == qb.stats().dead == 1)
            assert [d.id for d in await qb.dead_letters()] == ["poison"]
            assert await qb.put({"n": 2}, id="poison") == "poison"  # dead: no-op
            assert await qb.purge_dead_letters() == ["poison"]
            await wait_until(lambda: qa.stats().dead == 0)
            assert await qa.redrive() == []


async def test_a_down_consumer_costs_no_attempts(nats_options: dict[str, Any]) -> None:
    async with nats_node("n1", nats_options) as node:
        up = await node.start_agent(Worker, "up")
        never = jt.AgentRef.new("never-started", "nats-wq-worker")
        async with open_work_queue(
            node,
            "down",
            consumers=[up, never],
            action="work",
            max_attempts=1,
            backoff=(0.05, 0.2),
        ) as queue:
            for n in range(20):
                await queue.put({"n": n})
            with trio.fail_after(20):
                await queue.join()
            assert queue.stats().dead == 0
        assert sorted((await node.query_agent(up)).done) == list(range(20))


# ---------------------------------------------------------------- visibility timeout


async def test_a_stuck_consumer_loses_its_job_to_another(nats_options: dict[str, Any]) -> None:
    deliveries: list[str] = []

    class Sticky(jt.Agent):
        type = "nats-wq-sticky"
        State = WorkerState

        @jt.action("work")
        async def work(self, state: WorkerState, job: int, job_id: str) -> WorkerState:
            deliveries.append(self.ctx.ref.id)
            if len(deliveries) == 1:
                await trio.sleep(1000)  # the first delivery hangs
            return attrs.evolve(state, done=(*state.done, job))

    async with nats_node("n1", nats_options, shutdown_timeout=0.5) as node:
        refs = [await node.start_agent(Sticky, f"s{i}") for i in range(2)]
        async with open_work_queue(
            node,
            "stuck",
            consumers=refs,
            action="work",
            visibility_timeout=0.5,
            backoff=(0.1, 0.1),
        ) as queue:
            start = time.monotonic()
            await queue.put(7)
            with trio.fail_after(20):
                await queue.join()
            # Timed out at 0.5; the stuck consumer's probe timed out at 1.0,
            # which gave the job back, and the other consumer took it.
            assert time.monotonic() - start >= 1.0
            assert queue.stats().retried == 1
        [stuck, other] = deliveries
        assert stuck != other
        by_id = {ref.id: ref for ref in refs}
        assert (await node.query_agent(by_id[other])).done == (7,)


async def test_slow_job_past_the_visibility_timeout_is_applied_once(
    nats_options: dict[str, Any],
) -> None:
    async with nats_node("n1", nats_options) as node:
        refs = [await node.start_agent(Worker, f"w{i}") for i in range(3)]
        async with open_work_queue(
            node,
            "slow",
            consumers=refs,
            action="work",
            visibility_timeout=0.5,
            backoff=(0.1, 0.1),
        ) as queue:
            await queue.put({"n": 1, "sleep": 0.8}, id="slow")
            with trio.fail_after(20):
                await queue.join()
            # Timed out at 0.5 and reserved for its consumer, whose probe was
            # answered once the job finished (at 0.8): the redelivery went
            # there and was answered AlreadyProcessed.
            assert queue.stats().done == 1
            assert queue.stats().retried == 1
        assert everything(await applied(node, refs)) == [1]


async def test_a_job_held_by_a_node_that_died_comes_back(nats_options: dict[str, Any]) -> None:
    """A node took a job and stopped answering (no ack, no nak, no in-progress):
    after the visibility timeout the server gives it to another node, and the
    silent delivery counts as a failed attempt."""
    async with nats_node("n1", nats_options) as node:
        ref = await node.start_agent(Worker, "w")
        async with open_work_queue(
            node, "died", consumers=[ref], action="work", visibility_timeout=0.5
        ) as queue:
            await queue.put({"n": 0}, id="warm-up")  # makes the priority's consumer
            with trio.fail_after(10):
                await queue.join()
            impl = backing(queue)
        conn = impl.conn

        async def steal(job_id: str, n: int) -> None:
            """Put a job and take it with a bare pull, as a node that dies would."""
            data = encode_value([1, job_id, {"n": n}, 0])
            await conn.bridge.run(impl._aio_publish, impl._subject(0), data, job_id, 0)

            async def pull() -> None:
                sub = await conn.js.pull_subscribe_bind("p0", impl.stream)
                [msg] = await sub.fetch(1, timeout=5)
                assert msg.metadata.num_delivered == 1
                await sub.unsubscribe()

            await conn.bridge.run(pull)

        await steal("stolen-1", 1)
        async with open_work_queue(
            node,
            "died",
            consumers=[ref],
            action="work",
            visibility_timeout=0.5,
            max_attempts=2,
        ) as queue:
            start = time.monotonic()
            with trio.fail_after(20):
                await queue.join()
            assert time.monotonic() - start >= 0.4
            assert queue.stats().done == 1
        await steal("stolen-2", 2)
        async with open_work_queue(
            node,
            "died",
            consumers=[ref],
            action="work",
            visibility_timeout=0.5,
            max_attempts=1,
        ) as queue:
            with trio.fail_after(20):
                await queue.join()
            [dead] = await queue.dead_letters()
            assert (dead.id, dead.attempts) == ("stolen-2", 1)
            assert dead.error is not None
            assert "outcome unknown" in dead.error
        assert (await node.query_agent(ref)).done == (0, 1)


async def test_closing_gives_jobs_back(nats_options: dict[str, Any]) -> None:
    async with nats_node("n1", nats_options) as node:
        refs = [await node.start_agent(Worker, f"w{i}") for i in range(2)]
        with trio.move_on_after(0.8):
            async with open_work_queue(node, "close", consumers=refs, action="work") as queue:
                for n in range(10):
                    await queue.put({"n": n, "sleep": 0.5}, priority=-n)
                await trio.sleep_forever()
        # Cancelled with a job in flight on each consumer: they were given
        # back, reserved for the consumer that may have applied them.
        assert queue.stats().in_flight == 0
        with pytest.raises(trio.ClosedResourceError):
            await queue.join()
        async with open_work_queue(node, "close", consumers=refs, action="work") as queue:
            with trio.fail_after(20):
                await queue.join()
        assert everything(await applied(node, refs)) == list(range(10))


# ---------------------------------------------------------------- several nodes


async def test_two_nodes_compete_for_one_queue(nats_options: dict[str, Any]) -> None:
    jobs = 600
    async with (
        nats_node("a", nats_options) as a,
        nats_node("b", nats_options) as b,
    ):
        refs_a = [await a.start_agent(Worker, f"a{i}") for i in range(3)]
        refs_b = [await b.start_agent(Worker, f"b{i}") for i in range(3)]
        async with (
            open_work_queue(
                a, "compete", consumers=refs_a, action="work", concurrency_per_consumer=2
            ) as qa,
            open_work_queue(
                b, "compete", consumers=refs_b, action="work", concurrency_per_consumer=2
            ) as qb,
        ):

            async def produce(queue: jt.WorkQueue, numbers: range) -> None:
                for n in numbers:
                    await queue.put({"n": n}, id=f"job-{n}", priority=n % 2)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(produce, qa, range(0, jobs, 2))
                nursery.start_soon(produce, qb, range(1, jobs, 2))
                nursery.start_soon(produce, qb, range(0, 20))  # duplicates of a's puts
            with trio.fail_after(60):
                await qa.join()
                await qb.join()
            done_a, done_b = qa.stats().done, qb.stats().done
        assert done_a + done_b == jobs
        assert done_a > 0 and done_b > 0
        done = {**await applied(a, refs_a), **await applied(b, refs_b)}
        counts = collections.Counter(n for numbers in done.values() for n in numbers)
        assert sorted(counts) == list(range(jobs))
        assert set(counts.values()) == {1}


# ---------------------------------------------------------------- soak

# 10k jobs take 40-60 s on NATS on a 2-core machine (the 10k soak of the issue
# runs on the local backing in tests/workqueue/test_work_queue.py); 3k keeps CI short.
SOAK_JOBS = int(os.environ.get("JIDO_TRIO_NATS_SOAK_JOBS", "3000"))
SOAK_CONSUMERS = 8
POISON_EVERY = 997


async def test_soak_exactly_once_under_random_crashes(nats_options: dict[str, Any]) -> None:
    rng = random.Random(8)
    poison = {n for n in range(SOAK_JOBS) if n % POISON_EVERY == POISON_EVERY - 1}
    started = time.monotonic()
    async with nats_node("soak", nats_options, mailbox_size=64) as node:
        refs = [await node.start_agent(Worker, f"w{i}") for i in range(SOAK_CONSUMERS)]
        crashes = 0
        async with open_work_queue(
            node,
            "soak",
            consumers=refs,
            action="work",
            max_attempts=4,
            backoff=(0.01, 0.1),
            concurrency_per_consumer=4,
        ) as queue:

            async def producer(numbers: range) -> None:
                for n in numbers:
                    # A little work each, where a crash can hit it.
                    job: dict[str, Any] = {"n": n, "sleep": 0.002}
                    if n in poison:
                        job["poison"] = True
                    await queue.put(job, id=f"job-{n}", priority=n % 3)
                    if rng.random() < 0.05:  # a producer retrying its put
                        await queue.put(job, id=f"job-{n}")

            impl = backing(queue)
            by_id = {ref.id: ref for ref in refs}

            async def chaos() -> None:
                nonlocal crashes
                while True:
                    await trio.sleep(rng.uniform(0.01, 0.05))
                    # Mostly a consumer with a job in flight, so crashes hit jobs.
                    busy = sorted({h.consumer for h in impl._held.values() if h.consumer})
                    victim = by_id[rng.choice(busy)] if busy else rng.choice(refs)
                    await crash_agent(node, victim)
                    crashes += 1

            with trio.fail_after(240):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(chaos)
                    async with trio.open_nursery() as producers:
                        step = SOAK_JOBS // 4
                        for start in range(0, SOAK_JOBS, step):
                            producers.start_soon(producer, range(start, start + step))
                    put_time = time.monotonic() - started
                    await queue.join()
                    nursery.cancel_scope.cancel()
            stats = queue.stats()
            dead = await queue.dead_letters()
        elapsed = time.monotonic() - started
        log.warning(
            "soak: %d jobs over %d consumers, %d crashes, puts %.1fs, total %.1fs, %r",
            SOAK_JOBS,
            SOAK_CONSUMERS,
            crashes,
            put_time,
            elapsed,
            stats,
        )
        assert crashes > 20
        done = await applied(node, refs)
        counts = collections.Counter(n for numbers in done.values() for n in numbers)
        expected = set(range(SOAK_JOBS)) - poison
        assert set(counts) == expected
        assert [n for n, c in counts.items() if c != 1] == []
        assert sorted(d.id for d in dead) == sorted(f"job-{n}" for n in poison)
        assert all(d.attempts == 4 for d in dead)
        # Poison jobs account for 3 retries each; the rest are crashes hitting jobs.
        assert stats.retried > 3 * len(poison)
        assert attrs.evolve(stats, retried=0) == QueueStats(
            pending=0, delayed=0, in_flight=0, done=len(expected), dead=len(poison)
        )
        assert all(len(numbers) > 0 for numbers in done.values())


async def test_malformed_records_in_the_bucket_are_ignored(
    nats_options: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Records anyone with access to the bucket may write: dead letters and
    attempt records of the wrong shape are ignored with a warning, and the
    queue goes on serving."""
    caplog.set_level(logging.WARNING)
    async with nats_node("n1", nats_options) as node:
        ref = await node.start_agent(Worker, "w")
        async with open_work_queue(node, "strict", consumers=[ref], action="work") as queue:
            impl = backing(queue)
            bad_dead_letters = {
                "priority": [1, "priority", {}, "high", 1, None, 0, 0],
                "attempts": [1, "attempts", {}, 0, -1, None, 0, 0],
                "epoch": [1, "epoch", {}, 0, 1, None, "0", 0],
                "error": [1, "error", {}, 0, 1, 42, 0, 0],
                "renamed": [1, "someone-else", {}, 0, 1, None, 0, 0],
            }

            async def plant() -> None:
                for job_id, record in bad_dead_letters.items():
                    await impl.conn.js.publish(impl._dead_key(job_id), encode_value(record))
                await impl.conn.js.publish(f"{impl.kv_prefix}{impl.token}.dead.x=zz", b"")

            await impl.conn.bridge.run(plant)
            await queue.put({"n": 1}, id="good")
            with trio.fail_after(20):
                await queue.join()
            assert await queue.dead_letters() == []
            assert queue.stats().dead == 0
            # An attempt record with counts of the wrong type changes nothing.
            held = _held(impl, "good")
            impl._apply_record(held, encode_value([1, 0, "x", 0, None, None]))
            assert (held.attempts, held.error) == (0, None)
            await queue.put({"n": 2}, id="good-2")
            with trio.fail_after(20):
                await queue.join()
        assert everything(await applied(node, [ref])) == [1, 2]
    assert caplog.text.count("malformed dead letter") >= len(bad_dead_letters)
    assert "malformed attempt record of 'good'" in caplog.text
    assert "not an encoded name" in caplog.text


def _held(impl: JetStreamQueue, job_id: str) -> Any:
    from jido_trio_nats._work_queue import _Held

    return _Held(
        msg=None,  # type: ignore[arg-type]
        id=job_id,
        payload=None,
        priority=0,
        seq=1,
        epoch=0,
        deliveries=1,
        attempts=0,
        error=None,
        reserved_for=None,
        has_record=True,
    )
