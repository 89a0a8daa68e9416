"""Explicit failure modes through the public API: breakers, slow agents, deadlines."""

from __future__ import annotations

import functools

import attrs
import pytest
import trio

import jido_trio as jt
from jido_trio.testing import open_cluster
from tests._agents import Counter
from tests._agents import CounterState


async def test_breaker_opens_after_repeated_timeouts_and_recovers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = jt.Config(
        node_name="n", breaker_failure_threshold=3, breaker_reset_timeout=10.0, max_seconds=1.0
    )
    async with jt.open_node(config) as node:
        ref = await node.start_agent(Counter, "c")
        for _ in range(3):
            with pytest.raises(jt.CallTimeout):
                await node.call(ref, jt.Instruction("slow", {"seconds": 2}), timeout=0.5)
        # Open: refused at once, without waiting for any deadline.
        start = trio.current_time()
        with pytest.raises(jt.CircuitOpen):
            await node.call(ref, jt.Instruction("get"), timeout=5)
        assert trio.current_time() == start
        assert await node.check_agent_health(ref) is jt.Health.DEGRADED
        # One-way sends are not calls: the agent still takes them.
        await node.send_instruction(ref, jt.Instruction("increment"))
        await trio.sleep(10)
        # Half-open: one trial call goes through; its success closes the breaker.
        assert await node.call(ref, jt.Instruction("get")) == 1
        assert await node.call(ref, jt.Instruction("get")) == 1
        assert await node.check_agent_health(ref) is jt.Health.HEALTHY


async def test_failed_trial_call_reopens_the_breaker(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = jt.Config(node_name="n", breaker_failure_threshold=1, breaker_reset_timeout=5.0)
    async with jt.open_node(config) as node:
        ref = await node.start_agent(Counter, "c")
        with pytest.raises(jt.CallTimeout):
            await node.call(ref, jt.Instruction("slow", {"seconds": 3}), timeout=0.5)
        await trio.sleep(5)
        with pytest.raises(jt.CallTimeout):
            await node.call(ref, jt.Instruction("slow", {"seconds": 3}), timeout=0.5)
        with pytest.raises(jt.CircuitOpen):
            await node.call(ref, jt.Instruction("get"))


async def test_action_errors_do_not_trip_the_breaker() -> None:
    config = jt.Config(node_name="n", breaker_failure_threshold=1, max_restarts=100)
    async with jt.open_node(config) as node:
        ref = await node.start_agent(Counter, "c")
        for _ in range(3):
            with pytest.raises(jt.ActionError):
                await node.call(ref, jt.Instruction("boom"))
        assert await node.call(ref, jt.Instruction("get")) == 0


async def test_slow_responses_degrade_health(autojump_clock: trio.testing.MockClock) -> None:
    config = jt.Config(node_name="n", slow_call_threshold=0.5, max_seconds=0.1)
    async with jt.open_node(config) as node:
        ref = await node.start_agent(Counter, "c")
        assert await node.check_agent_health(ref) is jt.Health.HEALTHY
        await node.call(ref, jt.Instruction("slow", {"seconds": 2}), timeout=5)
        assert await node.check_agent_health(ref) is jt.Health.DEGRADED
        for _ in range(20):
            await node.call(ref, jt.Instruction("get"))
        assert await node.check_agent_health(ref) is jt.Health.HEALTHY


async def test_recent_restart_degrades_then_heals(autojump_clock: trio.testing.MockClock) -> None:
    from jido_trio.testing import crash_agent

    config = jt.Config(node_name="n", max_seconds=5.0)
    async with jt.open_node(config) as node:
        ref = await node.start_agent(Counter, "c")
        await crash_agent(node, ref)
        assert await node.call(ref, jt.Instruction("get")) == 0
        assert await node.check_agent_health(ref) is jt.Health.DEGRADED
        await trio.sleep(5.1)
        assert await node.check_agent_health(ref) is jt.Health.HEALTHY


async def test_every_operation_has_a_deadline(autojump_clock: trio.testing.MockClock) -> None:
    async with jt.open_node(
        jt.Config(node_name="n", operation_timeout=2.0, mailbox_size=1)
    ) as node:
        ref = await node.start_agent(Counter, "c")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                functools.partial(
                    node.call, ref, jt.Instruction("slow", {"seconds": 60}), timeout=99
                )
            )
            await trio.sleep(0.01)
            await node.send_instruction(ref, jt.Instruction("increment"))  # fills the mailbox
            start = trio.current_time()
            with pytest.raises(jt.MailboxFull):
                await node.send_instruction(ref, jt.Instruction("increment"))
            assert trio.current_time() - start == pytest.approx(2.0)
            start = trio.current_time()
            # A query that cannot even be queued is overload: MailboxFull.
            with pytest.raises(jt.MailboxFull):
                await node.query_agent(ref)
            assert trio.current_time() - start == pytest.approx(2.0)
            nursery.cancel_scope.cancel()


class SlowCounter(Counter):
    type = "slow-counter"

    @jt.action("slow_increment")
    async def slow_increment(self, state: CounterState, seconds: float) -> CounterState:
        await trio.sleep(seconds)
        self.ctx.reply(state.count + 1)
        return attrs.evolve(state, count=state.count + 1)


@pytest.mark.parametrize("give_up", ["deadline", "cancelled"])
async def test_a_call_given_up_while_queued_can_be_retried_with_its_id(
    autojump_clock: trio.testing.MockClock, give_up: str
) -> None:
    """The caller gave up (deadline or cancellation) while its call waited
    behind a slow message: the agent skips that copy, so a retry with the
    same id is applied, once."""
    async with jt.open_node(name="n") as node:
        ref = await node.start_agent(Counter, "c")
        await node.send_instruction(ref, jt.Instruction("slow", {"seconds": 5}))
        instruction = jt.Instruction("increment", id="inc-1")
        if give_up == "deadline":
            with pytest.raises(jt.CallTimeout):
                await node.call(ref, instruction, timeout=1)
        else:
            with trio.move_on_after(1) as scope:
                await node.call(ref, instruction, timeout=10)
            assert scope.cancelled_caught
        await node.call(ref, instruction, timeout=10)
        with pytest.raises(jt.AlreadyProcessed):
            await node.call(ref, instruction)  # now it really was applied
        assert await node.call(ref, jt.Instruction("get")) == 1


async def test_a_retry_of_a_call_already_running_is_answered_already_processed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Given up while the agent was running it: the first copy is applied,
    and the retry says so instead of applying it twice."""
    async with jt.open_node(name="n") as node:
        ref = await node.start_agent(SlowCounter, "c")
        instruction = jt.Instruction("slow_increment", {"seconds": 5}, id="inc-1")
        with pytest.raises(jt.CallTimeout):
            await node.call(ref, instruction, timeout=1)
        with pytest.raises(jt.AlreadyProcessed):
            await node.call(ref, instruction, timeout=10)
        assert await node.call(ref, jt.Instruction("get")) == 1


class Busy(Counter):
    type = "overloaded-counter"

    @jt.action("work")
    async def work(self, state: CounterState) -> CounterState:
        await trio.sleep(0.05)
        return attrs.evolve(state, count=state.count + 1)


async def test_overload_is_not_failure(autojump_clock: trio.testing.MockClock) -> None:
    """Issue 17, finding 2: 60 remote callers of an agent with a 50 ms action
    and a mailbox of 4 wait for room within their deadline; none sees
    CircuitOpen, and calls, queries and health from that node are fine after."""
    async with open_cluster("n1", "n2", mailbox_size=4) as cluster:
        n1, n2 = cluster["n1"], cluster["n2"]
        ref = await n1.start_agent(Busy, "busy")
        outcomes: list[str] = []

        async def caller(i: int) -> None:
            try:
                await n2.call(ref, jt.Instruction("work", id=f"w-{i}"), timeout=10)
                outcomes.append("ok")
            except jt.JidoError as exc:
                outcomes.append(type(exc).__name__)

        async with trio.open_nursery() as nursery:
            for i in range(60):
                nursery.start_soon(caller, i)
        assert "CircuitOpen" not in outcomes
        assert outcomes.count("ok") == 60, outcomes
        assert await n2.call(ref, jt.Instruction("get")) == 60
        assert await n2.query_agent(ref) == CounterState(count=60)
        # Impaired (its calls were slow), never UNREACHABLE.
        assert await n2.check_agent_health(ref) in (jt.Health.HEALTHY, jt.Health.DEGRADED)
        # 60 remote senders at once, default deadlines: each waits for room.
        sent: list[str] = []

        async def sender(i: int) -> None:
            try:
                await n2.send_instruction(ref, jt.Instruction("work", id=f"t-{i}"))
                sent.append("ok")
            except jt.JidoError as exc:
                sent.append(type(exc).__name__)

        async with trio.open_nursery() as nursery:
            for i in range(60):
                nursery.start_soon(sender, i)
        assert sent.count("ok") == 60, sent
        assert await n2.call(ref, jt.Instruction("get")) == 120
        assert await n2.check_agent_health(ref) in (jt.Health.HEALTHY, jt.Health.DEGRADED)
