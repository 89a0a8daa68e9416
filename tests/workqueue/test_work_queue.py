"""Work queues: priorities, competing consumers, retries with backoff, visibility
timeout, dead letters, idempotent puts, durability, and a soak under crashes."""

from __future__ import annotations

import collections
import functools
import itertools
import random
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any
from typing import ClassVar

import attrs
import pytest
import trio
import trio.testing

import jido_trio as jt
from jido_trio import DeadJob
from jido_trio import QueueStats
from jido_trio import WorkQueue
from jido_trio import open_work_queue
from jido_trio.abc import WorkQueueBacking
from jido_trio.abc import WorkQueueBackingProvider
from jido_trio.abc import WorkQueueSpec
from jido_trio.local import MemoryStateBackend
from jido_trio.testing import crash_agent
from jido_trio.testing import faults
from jido_trio.testing import frame_kind
from jido_trio.workqueue import open_state_backing

_hubs = itertools.count()


@attrs.frozen
class WorkerState:
    #: Job numbers applied, in order; a job applied twice shows up twice.
    done: tuple[int, ...] = ()


class Worker(jt.Agent):
    """Applies ``{"n": int}`` jobs; ``sleep`` makes a job slow, ``poison`` makes it crash."""

    type = "wq-worker"
    State = WorkerState

    @jt.action("work")
    async def work(self, state: WorkerState, job: dict[str, Any], job_id: str) -> WorkerState:
        if job.get("poison"):
            raise ValueError(f"poison job {job_id}")
        if job.get("sleep"):
            await trio.sleep(job["sleep"])
        else:
            await trio.lowlevel.checkpoint()  # some I/O, where a crash can hit it
        return attrs.evolve(state, done=(*state.done, job["n"]))


def config(name: str = "n", **extra: Any) -> jt.Config:
    return jt.Config(node_name=name, max_restarts=1_000_000, **extra)


async def applied(node: jt.Node, refs: list[jt.AgentRef]) -> dict[str, tuple[int, ...]]:
    return {ref.id: (await node.query_agent(ref)).done for ref in refs}


def everything(done: dict[str, tuple[int, ...]]) -> list[int]:
    return sorted(n for numbers in done.values() for n in numbers)


# ---------------------------------------------------------------- ordering and sharing


async def test_priority_first_then_fifo(autojump_clock: trio.testing.MockClock) -> None:
    async with jt.open_node(config()) as node:
        ref = await node.start_agent(Worker, "w")
        async with open_work_queue(node, "q", consumers=[ref], action="work") as queue:
            # The gate keeps the only consumer busy while the rest is queued.
            await queue.put({"n": 0, "sleep": 1}, priority=100)
            for n, priority in [(1, 0), (2, 5), (3, 0), (4, 5), (5, -1), (6, 9), (7, 0)]:
                await queue.put({"n": n}, priority=priority)
            await queue.join()
            assert queue.stats() == QueueStats(pending=0, delayed=0, in_flight=0, done=8, dead=0)
        assert (await node.query_agent(ref)).done == (0, 6, 2, 4, 1, 3, 7, 5)


async def test_competing_consumers_share_the_load(autojump_clock: trio.testing.MockClock) -> None:
    async with jt.open_node(config()) as node:
        refs = [await node.start_agent(Worker, f"w{i}") for i in range(4)]
        async with open_work_queue(node, "q", consumers=refs, action="work") as queue:
            start = trio.current_time()
            for n in range(40):
                await queue.put({"n": n, "sleep": 1})
            await queue.join()
            # Four at a time: 40 one-second jobs take ten seconds.
            assert trio.current_time() - start == pytest.approx(10)
        done = await applied(node, refs)
        assert everything(done) == list(range(40))
        assert sorted(len(numbers) for numbers in done.values()) == [10, 10, 10, 10]


async def test_concurrency_per_consumer(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[int] = []
    peak = 0

    class Slow(jt.Agent):
        type = "wq-slow"

        @jt.action("work")
        async def work(self, state: Any, job: int, job_id: str) -> None:
            seen.append(job)

    async with jt.open_node(config()) as node:
        ref = await node.start_agent(Slow, "s")
        async with open_work_queue(
            node, "q", consumers=[ref], action="work", concurrency_per_consumer=3
        ) as queue:
            for n in range(30):
                await queue.put(n)
                peak = max(peak, queue.stats().in_flight)
            await queue.join()
        assert sorted(seen) == list(range(30))
        assert peak == 3


# ---------------------------------------------------------------- failures


async def test_retries_back_off_exponentially(autojump_clock: trio.testing.MockClock) -> None:
    attempts: list[float] = []

    class Flaky(jt.Agent):
        type = "wq-flaky"

        @jt.action("work")
        async def work(self, state: Any, job: str, job_id: str) -> None:
            attempts.append(trio.current_time())
            if len(attempts) < 5:
                raise RuntimeError(f"attempt {len(attempts)} fails")

    async with jt.open_node(config()) as node:
        ref = await node.start_agent(Flaky, "f")
        async with open_work_queue(
            node, "q", consumers=[ref], action="work", max_attempts=5, backoff=(1.0, 4.0)
        ) as queue:
            await queue.put("x", id="job")
            await trio.sleep(0.5)
            stats = queue.stats()
            assert (stats.pending, stats.delayed, stats.in_flight) == (1, 1, 0)
            await queue.join()
            assert queue.stats().done == 1
            assert await queue.dead_letters() == []
        first = attempts[0]
        # 1, 2, 4, then capped at 4.
        assert [t - first for t in attempts] == pytest.approx([0, 1, 3, 7, 11])


async def test_poison_job_is_dead_lettered_and_can_be_redriven(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with jt.open_node(config()) as node:
        refs = [await node.start_agent(Worker, f"w{i}") for i in range(2)]
        async with open_work_queue(
            node, "q", consumers=refs, action="work", max_attempts=3, backoff=(1.0, 10.0)
        ) as queue:
            start = trio.current_time()
            poison = await queue.put({"n": 99, "poison": True}, id="poison")
            for n in range(5):
                await queue.put({"n": n})
            await queue.join()  # dead letters do not keep the queue busy
            assert trio.current_time() - start == pytest.approx(3)  # 1 + 2
            assert queue.stats() == QueueStats(
                pending=0, delayed=0, in_flight=0, done=5, dead=1, retried=2
            )
            [dead] = await queue.dead_letters()
            assert dead == DeadJob(
                id="poison",
                payload={"n": 99, "poison": True},
                priority=0,
                attempts=3,
                error=dead.error,
            )
            assert dead.error is not None
            assert dead.error.startswith("ActionError:")
            assert "poison job poison" in dead.error
            # Putting a dead job again changes nothing.
            assert await queue.put({"n": 98}, id="poison") == poison
            assert queue.stats().pending == 0
            # Redrive with a fixed payload... the stored one is kept, so it dies again.
            assert await queue.redrive(["nope"]) == []
            assert await queue.redrive() == ["poison"]
            assert queue.stats().dead == 0
            await queue.join()
            assert [d.attempts for d in await queue.dead_letters()] == [3]
            assert await queue.purge_dead_letters() == ["poison"]
            assert await queue.dead_letters() == []
            assert await node.state.keys("workqueue/q/dead/") == []
        assert everything(await applied(node, refs)) == list(range(5))


async def test_redriven_job_runs_once_fixed(autojump_clock: trio.testing.MockClock) -> None:
    broken = True
    runs: list[str] = []

    class Fickle(jt.Agent):
        type = "wq-fickle"

        @jt.action("work")
        async def work(self, state: Any, job: str, job_id: str) -> None:
            if broken:
                raise ValueError("not today")
            runs.append(job)

    async with jt.open_node(config()) as node:
        ref = await node.start_agent(Fickle, "f")
        async with open_work_queue(
            node, "q", consumers=[ref], action="work", max_attempts=2, backoff=(0.5, 0.5)
        ) as queue:
            await queue.put("a", id="a")
            await queue.put("b", id="b")
            await queue.join()
            assert [d.id for d in await queue.dead_letters()] == ["a", "b"]
            broken = False
            assert await queue.redrive(["b"]) == ["b"]
            await queue.join()
            assert runs == ["b"]
            assert [d.id for d in await queue.dead_letters()] == ["a"]
            assert queue.stats().done == 1


async def test_concurrent_redrives_and_puts_move_a_dead_job_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    broken = True
    runs: list[str] = []

    class Fickle(jt.Agent):
        type = "wq-fickle"

        @jt.action("work")
        async def work(self, state: Any, job: str, job_id: str) -> None:
            if broken:
                raise ValueError("not today")
            runs.append(job)

    async with jt.open_node(config()) as node:
        ref = await node.start_agent(Fickle, "f")
        async with open_work_queue(
            node, "q", consumers=[ref], action="work", max_attempts=1
        ) as queue:
            await queue.put("a", id="a")
            await queue.join()
            broken = False
            moved: list[list[str]] = []

            async def redrive() -> None:
                moved.append(await queue.redrive())

            async def purge() -> None:
                moved.append(await queue.purge_dead_letters(["a"]))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(redrive)
                nursery.start_soon(redrive)
                nursery.start_soon(purge)
                nursery.start_soon(functools.partial(queue.put, "again", id="a"))
            assert sorted(moved) == [[], [], ["a"]]
            await queue.join()
            assert queue.stats().done + queue.stats().dead <= 1
        assert runs in ([], ["a"])  # redriven once, or purged


async def test_visibility_timeout_moves_a_stuck_job_to_another_consumer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    deliveries: list[tuple[str, float]] = []

    class Sticky(jt.Agent):
        type = "wq-sticky"
        State = WorkerState

        @jt.action("work")
        async def work(self, state: WorkerState, job: int, job_id: str) -> WorkerState:
            deliveries.append((self.ctx.ref.id, trio.current_time()))
            if len(deliveries) == 1:
                await trio.sleep(1000)  # the first delivery hangs
            return attrs.evolve(state, done=(*state.done, job))

    async with jt.open_node(config(shutdown_timeout=1)) as node:
        refs = [await node.start_agent(Sticky, f"s{i}") for i in range(2)]
        async with open_work_queue(
            node, "q", consumers=refs, action="work", visibility_timeout=5, backoff=(1, 1)
        ) as queue:
            start = trio.current_time()
            await queue.put(7)
            await queue.join()
            # Timed out at 5; the stuck consumer's probe also timed out at 10,
            # which released the job to the other consumer.
            assert trio.current_time() - start == pytest.approx(10)
        [(stuck, t0), (other, t1)] = deliveries
        assert stuck != other
        assert (t0 - start, t1 - start) == pytest.approx((0, 10))
        by_id = {ref.id: ref for ref in refs}
        assert (await node.query_agent(by_id[other])).done == (7,)
        assert (await node.query_agent(by_id[stuck], consistency="weak")).done == ()


async def test_slow_job_past_the_visibility_timeout_is_applied_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with jt.open_node(config()) as node:
        refs = [await node.start_agent(Worker, f"w{i}") for i in range(3)]
        async with open_work_queue(
            node, "q", consumers=refs, action="work", visibility_timeout=5, backoff=(1, 1)
        ) as queue:
            start = trio.current_time()
            await queue.put({"n": 1, "sleep": 8}, id="slow")
            await queue.join()
            # It finished at 8 on its first consumer; the redelivery went back
            # there (the outcome was unknown) and was answered AlreadyProcessed.
            assert trio.current_time() - start == pytest.approx(8)
            assert queue.stats().done == 1
        assert everything(await applied(node, refs)) == [1]


async def test_a_down_consumer_costs_no_attempts(autojump_clock: trio.testing.MockClock) -> None:
    async with jt.open_node(config()) as node:
        up = await node.start_agent(Worker, "up")
        down = await node.start_agent(Worker, "down")
        await node.stop_agent(down)
        never = jt.AgentRef.new("never-started", "wq-worker")
        async with open_work_queue(
            node, "q", consumers=[up, down, never], action="work", max_attempts=1
        ) as queue:
            for n in range(20):
                await queue.put({"n": n})
            await queue.join()
            assert queue.stats().dead == 0
        assert sorted((await node.query_agent(up)).done) == list(range(20))


async def test_jobs_wait_for_a_consumer_to_come_up(autojump_clock: trio.testing.MockClock) -> None:
    async with jt.open_node(config()) as node:
        ref = jt.AgentRef.new("late", "wq-worker")
        async with open_work_queue(
            node, "q", consumers=[ref], action="work", max_attempts=1, backoff=(1, 8)
        ) as queue:
            await queue.put({"n": 1})
            await trio.sleep(60)
            assert queue.stats().pending == 1
            await node.start_agent(Worker, "late")
            with trio.fail_after(8.5):  # the next probe, at most one pause away
                await queue.join()
        assert (await node.query_agent(ref)).done == (1,)


# ---------------------------------------------------------------- puts


async def test_put_is_idempotent(autojump_clock: trio.testing.MockClock) -> None:
    async with jt.open_node(config()) as node:
        ref = await node.start_agent(Worker, "w")
        async with open_work_queue(node, "q", consumers=[ref], action="work") as queue:
            assert await queue.put({"n": 1}, id="one") == "one"
            assert await queue.put({"n": 1}, id="one") == "one"
            async with trio.open_nursery() as nursery:
                for _ in range(5):
                    nursery.start_soon(functools.partial(queue.put, {"n": 2}, id="two"))
            await queue.join()
            assert queue.stats().done == 2
            # Acknowledged jobs are remembered too.
            assert await queue.put({"n": 1}, id="one") == "one"
            assert queue.stats().pending == 0
            generated = {await queue.put({"n": n}) for n in range(3, 6)}
            assert len(generated) == 3
            await queue.join()
        assert everything(await applied(node, [ref])) == [1, 2, 3, 4, 5]


async def test_done_window_is_bounded(autojump_clock: trio.testing.MockClock) -> None:
    async with jt.open_node(config()) as node:
        ref = await node.start_agent(Worker, "w")
        async with open_work_queue(
            node, "q", consumers=[ref], action="work", dedupe_window=10
        ) as queue:
            for n in range(40):
                await queue.put({"n": n}, id=f"j{n}")
            await queue.join()
            assert len(await node.state.read_log("workqueue/q/done")) <= 13
            # The most recent ids are still remembered...
            await queue.put({"n": 100}, id="j39")
            assert queue.stats().pending == 0
            # ...the oldest are not (the consumer's own dedupe still catches them).
            await queue.put({"n": 100}, id="j0")
            await queue.join()
        assert everything(await applied(node, [ref])) == list(range(40))


async def test_payload_is_what_storage_gives_back(autojump_clock: trio.testing.MockClock) -> None:
    got: list[Any] = []

    class Echo(jt.Agent):
        type = "wq-echo"

        @jt.action("work")
        async def work(self, state: Any, job: Any, job_id: str) -> None:
            got.append(job)

    async with jt.open_node(config()) as node:
        ref = await node.start_agent(Echo, "e")
        async with open_work_queue(node, "q", consumers=[ref], action="work") as queue:
            await queue.put({"pair": (1, 2), "ref": ref})
            with pytest.raises(jt.InvalidMessage):
                await queue.put(object())
            await queue.join()
        assert got == [{"pair": [1, 2], "ref": ref}]


# ---------------------------------------------------------------- backings


class QueueingState(MemoryStateBackend, WorkQueueBackingProvider):
    """Memory state that offers a work-queue backing of its own ("memq")."""

    work_queue_backing = "memq"
    opened: ClassVar[list[str]] = []

    def open_work_queue_backing(
        self, spec: WorkQueueSpec
    ) -> AbstractAsyncContextManager[WorkQueueBacking]:
        self.opened.append(spec.name)
        return open_state_backing(self, spec)


class QueueingStatePlugin:
    @jt.hookimpl
    def jido_trio_add_backends(self, backends: Any) -> None:
        backends.add_state("queueing", lambda config, options: QueueingState())


async def test_the_state_engine_offers_its_own_backing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with jt.open_node(config(state="queueing"), plugins=[QueueingStatePlugin()]) as node:
        ref = await node.start_agent(Worker, "w")
        chosen = {"auto": "memq", "memq": "memq", "state": "state"}
        for n, (asked, expected) in enumerate(chosen.items()):
            kwargs: dict[str, Any] = {"consumers": [ref], "action": "work", "backing": asked}
            async with open_work_queue(node, f"q-{asked}", **kwargs) as queue:
                assert queue.backing == expected
                await queue.put({"n": n})
                await queue.join()
        assert QueueingState.opened == ["q-auto", "q-memq"]
        with pytest.raises(jt.ConfigError, match="offers only 'memq' and 'state'"):
            async with open_work_queue(node, "q", consumers=[ref], action="work", backing="sqs"):
                pass  # pragma: no cover
        assert (await node.query_agent(ref)).done == (0, 1, 2)


# ---------------------------------------------------------------- lifecycle


async def test_arguments_are_checked(autojump_clock: trio.testing.MockClock) -> None:
    async with jt.open_node(config()) as node:
        ref = await node.start_agent(Worker, "w")
        bad: list[dict[str, Any]] = [
            {"consumers": []},
            {"consumers": [ref, ref]},
            {"max_attempts": 0},
            {"visibility_timeout": 0},
            {"visibility_timeout": float("inf")},
            {"backoff": (2, 1)},
            {"backoff": (0, 1)},
            {"backoff": 1},
            {"concurrency_per_consumer": 0},
            {"dedupe_window": True},
        ]
        for overrides in bad:
            kwargs: dict[str, Any] = {"consumers": [ref], "action": "work", **overrides}
            with pytest.raises(ValueError):
                async with open_work_queue(node, "q", **kwargs):
                    pass  # pragma: no cover
        for name in ("", "a/b"):
            with pytest.raises(ValueError):
                async with open_work_queue(node, name, consumers=[ref], action="work"):
                    pass  # pragma: no cover
        with pytest.raises(TypeError):
            async with open_work_queue(node, "q", consumers=["w"], action="work"):  # type: ignore[list-item]
                pass  # pragma: no cover
        async with open_work_queue(node, "q", consumers=[ref], action="work") as queue:
            with pytest.raises(TypeError):
                await queue.put(1, priority=1.5)  # type: ignore[arg-type]
            with pytest.raises(TypeError):
                await queue.put(1, id="")
            with pytest.raises(TypeError):
                await queue.redrive("abc")
        with pytest.raises(trio.ClosedResourceError):
            await queue.put(1)


async def test_body_errors_come_out_unwrapped(autojump_clock: trio.testing.MockClock) -> None:
    async with jt.open_node(config()) as node:
        ref = await node.start_agent(Worker, "w")
        with pytest.raises(KeyError, match="mine"):
            async with open_work_queue(node, "q", consumers=[ref], action="work"):
                raise KeyError("mine")


async def test_leaving_the_block_finishes_deliveries_in_flight(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with jt.open_node(config()) as node:
        ref = await node.start_agent(Worker, "w")
        async with open_work_queue(node, "q", consumers=[ref], action="work") as queue:
            for n in range(3):
                await queue.put({"n": n, "sleep": 1})
            await trio.sleep(0.5)
        assert queue.stats() == QueueStats(pending=2, delayed=0, in_flight=0, done=1, dead=0)
        with pytest.raises(trio.ClosedResourceError):
            await queue.join()
        assert (await node.query_agent(ref)).done == (0,)
        assert len(await node.state.keys("workqueue/q/jobs/")) == 2


async def test_join_fails_when_the_queue_closes_with_jobs_left(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outcomes: list[str] = []

    async def waiter(queue: WorkQueue) -> None:
        with pytest.raises(trio.ClosedResourceError):
            await queue.join()
        outcomes.append("closed")

    async with jt.open_node(config()) as node:
        absent = jt.AgentRef.new("absent", "wq-worker")
        async with (
            trio.open_nursery() as nursery,
            open_work_queue(node, "q", consumers=[absent], action="work") as queue,
        ):
            await queue.put({"n": 1})
            nursery.start_soon(waiter, queue)
            await trio.sleep(5)
        assert outcomes == ["closed"]
        assert queue.stats().pending == 1


async def test_reopen_resumes_on_shared_memory_state(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hub = f"wq-{next(_hubs)}"
    options = {"memory": {"hub": hub}}
    async with jt.open_node(config("keeper", plugin_options=options)):
        async with jt.open_node(config("first", plugin_options=options)) as node:
            refs = [await node.start_agent(Worker, f"w{i}") for i in range(2)]
            with trio.move_on_after(2.5):
                async with open_work_queue(node, "q", consumers=refs, action="work") as queue:
                    for n in range(10):
                        await queue.put({"n": n, "sleep": 1}, priority=-n)
                    await trio.sleep_forever()
            # Cancelled with one job in flight on each consumer; the agents
            # finish them as they stop, so those are applied but not acked.
            assert queue.stats().done == 4
            assert len(await node.state.keys("workqueue/q/jobs/")) == 6
        async with jt.open_node(config("second", plugin_options=options)) as node:
            refs = [await node.start_agent(Worker, f"w{i}") for i in range(2)]
            async with open_work_queue(node, "q", consumers=refs, action="work") as queue:
                assert queue.stats().pending == 6
                await queue.join()
                assert queue.stats().done == 6
            assert everything(await applied(node, refs)) == list(range(10))


async def test_durable_across_close_and_reopen_with_sqlite(tmp_path: Path) -> None:
    # Event-driven, on the real clock: the SQLite backend works in a thread.
    gate = trio.Event()
    entered = trio.Event()

    class Gated(jt.Agent):
        type = "wq-gated"
        State = WorkerState

        @jt.action("work")
        async def work(self, state: WorkerState, job: dict[str, Any], job_id: str) -> WorkerState:
            if job.get("poison"):
                raise ValueError("poison")
            if job["n"] == 5:
                entered.set()
                await gate.wait()
            return attrs.evolve(state, done=(*state.done, job["n"]))

    options = {"sqlite": {"path": str(tmp_path / "state.db")}}
    cfg = config(state="sqlite", plugin_options=options)
    async with jt.open_node(cfg) as node:
        refs = [await node.start_agent(Gated, f"g{i}") for i in range(2)]
        with trio.CancelScope() as scope:
            async with open_work_queue(
                node, "q", consumers=refs, action="work", max_attempts=1
            ) as queue:
                await queue.put({"n": -1, "poison": True}, id="poison", priority=10)
                for n in range(10):
                    await queue.put({"n": n}, id=f"job-{n}")
                await entered.wait()
                scope.cancel()  # close abruptly while job-5 is being applied
        # Let the stuck job finish: applied and committed by its consumer, not acked.
        gate.set()
        first = await applied(node, refs)
    assert 5 in everything(first)
    async with jt.open_node(cfg) as node:
        refs = [await node.start_agent(Gated, f"g{i}") for i in range(2)]
        async with open_work_queue(node, "q", consumers=refs, action="work") as queue:
            [dead] = await queue.dead_letters()
            assert (dead.id, dead.attempts) == ("poison", 1)
            assert await queue.put({"n": 5}, id="job-5") == "job-5"
            with trio.fail_after(10):
                await queue.join()
            assert queue.stats().dead == 1
        second = await applied(node, refs)
    # Every job exactly once across both runs (state is cumulative).
    assert everything(second) == list(range(10))


async def test_consumers_on_another_node_over_a_lossy_network(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hub = f"wq-{next(_hubs)}"
    options = {"local": {"hub": hub}}
    async with (
        jt.open_node(config("queue", plugin_options=options)) as here,
        jt.open_node(config("workers", plugin_options=options)) as there,
    ):
        refs = [await there.start_agent(Worker, f"w{i}") for i in range(4)]
        plan = faults(hub, seed=3)

        def calls(frame: bytes) -> bool:
            return frame_kind(frame) == "call"

        # Lost requests, lost replies (applied, but the queue cannot know) and
        # duplicates: every delivery whose outcome is unknown is retried on
        # the same consumer, whose dedupe answers.
        plan.drop(0.03, source="queue", match=calls)
        plan.drop(0.03, reply=True, source="queue", match=calls)
        plan.duplicate(0.03, source="queue", match=calls)
        async with open_work_queue(
            here,
            "q",
            consumers=refs,
            action="work",
            visibility_timeout=2,
            backoff=(0.1, 1),
            max_attempts=10,
            concurrency_per_consumer=2,
        ) as queue:
            for n in range(500):
                await queue.put({"n": n})
            await queue.join()
            stats = queue.stats()
        await plan.settle()
        plan.clear()
        assert stats.retried > 0  # the faults did bite
        assert stats.dead == 0
        done = await applied(there, refs)
        counts = collections.Counter(n for numbers in done.values() for n in numbers)
        assert sorted(counts) == list(range(500))
        assert set(counts.values()) == {1}


# ---------------------------------------------------------------- soak

SOAK_JOBS = 10_000
SOAK_CONSUMERS = 8
POISON_EVERY = 997


async def test_soak_exactly_once_under_random_crashes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rng = random.Random(8)
    poison = {n for n in range(SOAK_JOBS) if n % POISON_EVERY == POISON_EVERY - 1}
    async with jt.open_node(config(mailbox_size=64)) as node:
        refs = [await node.start_agent(Worker, f"w{i}") for i in range(SOAK_CONSUMERS)]
        crashes = 0
        producing = True
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
                    job: dict[str, Any] = {"n": n}
                    if n in poison:
                        job["poison"] = True
                    await queue.put(job, id=f"job-{n}", priority=n % 3)
                    if rng.random() < 0.05:  # a producer retrying its put
                        await queue.put(job, id=f"job-{n}")

            async def chaos(stop: trio.Event) -> None:
                nonlocal crashes
                while not stop.is_set():
                    for _ in range(rng.randrange(5, 50)):
                        stats = queue.stats()
                        if producing or stats.in_flight or stats.pending > stats.delayed:
                            await trio.lowlevel.checkpoint()
                        else:
                            # Only retries backing off: let the clock jump.
                            await trio.sleep(0.001)
                    await crash_agent(node, rng.choice(refs))
                    crashes += 1

            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(chaos, stop)
                async with trio.open_nursery() as producers:
                    step = SOAK_JOBS // 4
                    for start in range(0, SOAK_JOBS, step):
                        producers.start_soon(producer, range(start, start + step))
                producing = False
                await queue.join()
                stop.set()
            stats = queue.stats()
            dead = await queue.dead_letters()
        assert crashes > 20
        done = await applied(node, refs)
        counts = collections.Counter(n for numbers in done.values() for n in numbers)
        expected = set(range(SOAK_JOBS)) - poison
        assert set(counts) == expected
        assert [n for n, c in counts.items() if c != 1] == []
        assert sorted(d.id for d in dead) == sorted(f"job-{n}" for n in poison)
        assert all(d.attempts == 4 for d in dead)
        # Poison jobs account for 3 retries each; the rest are crashes hitting jobs.
        assert stats.retried > 3 * len(poison) + 10
        assert attrs.evolve(stats, retried=0) == QueueStats(
            pending=0, delayed=0, in_flight=0, done=len(expected), dead=len(poison)
        )
        assert all(len(numbers) > 0 for numbers in done.values())
        restarts = sum(child.restarts for child in node.supervision_tree().children)
        assert restarts >= crashes
        assert await node.state.keys("workqueue/soak/jobs/") == []


def test_public_types_are_frozen() -> None:
    stats = QueueStats(pending=1, delayed=0, in_flight=0, done=0, dead=0)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        stats.pending = 2  # type: ignore[misc]
    assert WorkQueue.__doc__
