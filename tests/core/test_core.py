"""The core runtime through the public API (issue 2 and the seed note's tests)."""

from __future__ import annotations

import functools
import math

import attrs
import pytest
import trio

import jido_trio as jt
from jido_trio._core import CHUNK_SIZE
from jido_trio.testing import agent_internals
from jido_trio.testing import crash_agent
from jido_trio.testing import open_cluster
from tests._agents import Counter
from tests._agents import CounterState


async def test_design_example_round_trip() -> None:
    async with jt.open_node(name="n1") as node:
        ref = await node.start_agent(Counter, "counter-1")
        assert isinstance(ref, jt.AgentRef)
        assert (ref.id, ref.type, ref.node) == ("counter-1", "counter", "n1")
        receipt = await node.send_instruction(ref, jt.Instruction("increment", {"by": 2}))
        assert receipt.status == "accepted"
        assert await node.call(ref, jt.Instruction("get"), timeout=1.0) == 2
        assert await node.query_agent(ref, "get_state", consistency="strong") == CounterState(2)
        assert await node.check_agent_health(ref) is jt.Health.HEALTHY
        assert await node.lookup("counter-1") == ref
        await node.stop_agent(ref)
        assert await node.check_agent_health(ref) is jt.Health.NOT_FOUND


async def test_hundred_agents_instructed_concurrently() -> None:
    """Seed test 1: 100 agents started and instructed concurrently, all ok."""
    async with jt.open_node(name="n") as node:
        refs: list[jt.AgentRef] = []

        async def start(i: int) -> None:
            refs.append(await node.start_agent(Counter, f"agent_{i}"))

        async with trio.open_nursery() as nursery:
            for i in range(100):
                nursery.start_soon(start, i)
        assert len(refs) == 100
        receipts: list[jt.Receipt] = []

        async def instruct(ref: jt.AgentRef) -> None:
            receipts.append(await node.send_instruction(ref, jt.Instruction("increment")))

        async with trio.open_nursery() as nursery:
            for ref in refs:
                nursery.start_soon(instruct, ref)
        assert [r.status for r in receipts] == ["accepted"] * 100
        counts = [await node.call(r, jt.Instruction("get")) for r in refs]
        assert counts == [1] * 100


async def test_crashed_temporary_agent_is_unavailable() -> None:
    """Seed test 2: a crashed agent (restart "temporary") gives AgentUnavailable."""
    async with jt.open_node(name="n") as node:
        ref = await node.start_agent(Counter, "test_agent", restart="temporary")
        await crash_agent(node, ref)
        with pytest.raises(jt.AgentUnavailable):
            await node.send_instruction(ref, jt.Instruction("increment"))
        with pytest.raises(jt.AgentUnavailable):
            await node.call(ref, jt.Instruction("get"))
        with pytest.raises(jt.AgentUnavailable):
            await node.lookup("test_agent")
        assert await node.check_agent_health(ref) is jt.Health.NOT_FOUND


async def test_action_exception_crashes_temporary_agent() -> None:
    async with jt.open_node(name="n") as node:
        ref = await node.start_agent(Counter, "t", restart="temporary")
        with pytest.raises(jt.ActionError) as info:
            await node.call(ref, jt.Instruction("boom", {"text": "bad input"}))
        assert isinstance(info.value.__cause__, ValueError)
        assert str(info.value.__cause__) == "bad input"
        with trio.fail_after(1):
            while await node.check_agent_health(ref) is not jt.Health.NOT_FOUND:
                await trio.lowlevel.checkpoint()
        with pytest.raises(jt.AgentUnavailable):
            await node.send_instruction(ref, jt.Instruction("increment"))


async def test_ref_tracks_node_information() -> None:
    """Seed test 3: AgentRef.new tracks node information."""
    assert jt.AgentRef.new("agent_1", "task_agent").node is None
    async with jt.open_node(name="alpha"):
        ref = jt.AgentRef.new("agent_1", "task_agent")
        assert ref.node == "alpha"
        assert ref.is_local()
        assert not ref.is_remote()
        other = jt.AgentRef.new("agent_1", "task_agent", node="beta")
        assert other.is_remote()
        assert not other.is_local()
        async with jt.open_node(name="beta"):
            assert jt.AgentRef.new("x", "t").node == "beta"
            assert other.is_local()
        assert jt.AgentRef.new("x", "t").node == "alpha"


async def test_ref_is_a_value() -> None:
    a = jt.AgentRef.new("a", "t", node="n", metadata={"k": 1})
    b = jt.AgentRef.new("a", "t", node="n")
    assert a == b and hash(a) == hash(b)
    assert a.metadata == {"k": 1}
    with pytest.raises(TypeError):
        a.metadata["k"] = 2  # type: ignore[index]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        a.id = "b"  # type: ignore[misc]
    with pytest.raises(ValueError):
        jt.AgentRef.new("", "t")


@pytest.mark.local_only
async def test_remote_ref_with_local_only_transport() -> None:
    async with jt.open_node(name="n") as node:
        await node.start_agent(Counter, "c")
        remote = jt.AgentRef.new("d", "counter", node="elsewhere")
        with pytest.raises(jt.RemoteNotSupported):
            await node.send_instruction(remote, jt.Instruction("increment"))
        with pytest.raises(jt.RemoteNotSupported):
            await node.call(remote, jt.Instruction("get"))
        with pytest.raises(jt.RemoteNotSupported):
            await node.query_agent(remote)
        assert issubclass(jt.RemoteNotSupported, jt.Unreachable)
        assert await node.check_agent_health(remote) is jt.Health.UNREACHABLE
        # A ref that names another node reaches the agent when it runs here
        # (it moved here): agents are found by id, refs follow them.
        moved_here = jt.AgentRef.new("c", "counter", node="elsewhere")
        await node.send_instruction(moved_here, jt.Instruction("increment"))
        assert await node.call(moved_here, jt.Instruction("get")) == 1


async def test_unknown_agent_and_action() -> None:
    async with jt.open_node(name="n") as node:
        ghost = jt.AgentRef.new("ghost", "counter")
        with pytest.raises(jt.AgentNotFound):
            await node.send_instruction(ghost, jt.Instruction("increment"))
        with pytest.raises(LookupError):
            await node.lookup("ghost")
        assert await node.check_agent_health(ghost) is jt.Health.NOT_FOUND
        ref = await node.start_agent(Counter, "c")
        with pytest.raises(jt.ActionNotFound, match="increment"):
            await node.call(ref, jt.Instruction("nope"))
        with pytest.raises(jt.ActionNotFound):
            await node.send_instruction(ref, jt.Instruction("nope"))
        with pytest.raises(jt.InvalidMessage, match="unexpected"):
            await node.send_instruction(ref, jt.Instruction("increment", {"bogus": 1}))
        with pytest.raises(jt.InvalidMessage, match="missing"):
            await node.call(ref, jt.Instruction("append"))
        # The agent is unharmed by refused messages.
        assert await node.check_agent_health(ref) is jt.Health.HEALTHY


async def test_call_timeout(autojump_clock: trio.testing.MockClock) -> None:
    async with jt.open_node(name="n") as node:
        ref = await node.start_agent(Counter, "c")
        start = trio.current_time()
        with pytest.raises(jt.CallTimeout):
            await node.call(ref, jt.Instruction("slow", {"seconds": 10}), timeout=1.0)
        assert trio.current_time() - start == pytest.approx(1.0)
        assert isinstance(jt.CallTimeout("x"), TimeoutError)


async def test_default_deadline_is_operation_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with jt.open_node(jt.Config(node_name="n", operation_timeout=3.0)) as node:
        ref = await node.start_agent(Counter, "c")
        start = trio.current_time()
        with pytest.raises(jt.CallTimeout):
            await node.call(ref, jt.Instruction("slow", {"seconds": 10}))
        assert trio.current_time() - start == pytest.approx(3.0)


async def test_abandoned_call_is_not_applied(autojump_clock: trio.testing.MockClock) -> None:
    async with jt.open_node(name="n") as node:
        ref = await node.start_agent(Counter, "c")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                functools.partial(node.call, ref, jt.Instruction("slow", {"seconds": 5}), timeout=9)
            )
            await trio.sleep(0.1)
            with pytest.raises(jt.CallTimeout):
                await node.call(ref, jt.Instruction("increment"), timeout=1.0)
        # The caller gave up before the agent reached it, so it was skipped.
        assert (await node.query_agent(ref)).count == 0


@pytest.mark.parametrize("bulk", [False, True], ids=["start_agent", "start_agents"])
async def test_an_id_started_again_right_after_a_stop_stays_reachable(
    autojump_clock: trio.testing.MockClock, bulk: bool
) -> None:
    """The stopped agent's registry entry is removed in the background; the
    new agent with its id must not lose its own entry to that removal."""
    async with open_cluster("n1", "n2") as cluster:
        n1, n2 = cluster["n1"], cluster["n2"]
        for i in range(5):
            ref = await n1.start_agent(Counter, "a")
            await n1.stop_agent(ref)
            if bulk:
                [ref] = await n1.start_agents(Counter, ["a"])
            else:
                ref = await n1.start_agent(Counter, "a")
            await trio.sleep(1)  # every background job has run
            assert (await n1.registry.lookup("a")).node == "n1"
            seen_from_n2 = await n2.lookup("a")
            await n2.send_instruction(seen_from_n2, jt.Instruction("increment"))
            assert await n2.call(seen_from_n2, jt.Instruction("get")) == i + 1
            await n1.stop_agent(ref)


async def test_idempotent_instruction() -> None:
    async with jt.open_node(name="n") as node:
        ref = await node.start_agent(Counter, "c")
        instruction = jt.Instruction("increment", {"by": 5}, id="op-1")
        first = await node.send_instruction(ref, instruction)
        second = await node.send_instruction(ref, instruction)
        assert (first.status, second.status) == ("accepted", "already_processed")
        assert first.instruction_id == second.instruction_id == "op-1"
        assert first.message_id != second.message_id
        assert await node.call(ref, jt.Instruction("get")) == 5
        third = await node.send_instruction(ref, instruction)
        assert third.status == "already_processed"
        with pytest.raises(jt.AlreadyProcessed):
            await node.call(ref, instruction)
        assert await node.call(ref, jt.Instruction("get")) == 5


async def test_dedupe_window_is_bounded_and_survives_restart() -> None:
    config = jt.Config(node_name="n", dedupe_window=200)
    async with jt.open_node(config) as node:
        ref = await node.start_agent(Counter, "c")
        for i in range(1000):
            await node.send_instruction(ref, jt.Instruction("increment", id=f"op-{i}"))
        assert await node.call(ref, jt.Instruction("get")) == 1000
        await crash_agent(node, ref)
        # The most recent ids (at least the window) are still remembered after a restart.
        for i in range(800, 1000):
            receipt = await node.send_instruction(ref, jt.Instruction("increment", id=f"op-{i}"))
            assert receipt.status == "already_processed", i
        assert await node.call(ref, jt.Instruction("get")) == 1000
        # Memory stays bounded: far fewer than 1000 ids are kept.
        assert 200 <= agent_internals(node, "c").remembered_ids < 1000
        stored = await node.state.keys("agent/c/ids/")
        assert len(stored) <= math.ceil(200 / CHUNK_SIZE) + 1


async def test_fifo_per_sender() -> None:
    async with jt.open_node(jt.Config(node_name="n", mailbox_size=8)) as node:
        ref = await node.start_agent(Counter, "c")

        async def sender(name: str) -> None:
            for i in range(200):
                await node.send_instruction(ref, jt.Instruction("append", {"item": f"{name}{i}"}))

        async with trio.open_nursery() as nursery:
            for name in "abc":
                nursery.start_soon(sender, name)
        log = (await node.query_agent(ref)).log
        assert len(log) == 600
        for name in "abc":
            mine = [int(x[1:]) for x in log if x[0] == name]
            assert mine == list(range(200))


async def test_bounded_mailbox_backpressure(autojump_clock: trio.testing.MockClock) -> None:
    config = jt.Config(node_name="n", mailbox_size=4, operation_timeout=2.0)
    async with jt.open_node(config) as node:
        ref = await node.start_agent(Counter, "c")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                functools.partial(
                    node.call, ref, jt.Instruction("slow", {"seconds": 1.5}), timeout=9
                )
            )
            await trio.sleep(0.01)
            for _ in range(4):
                await node.send_instruction(ref, jt.Instruction("increment"))
            assert await node.check_agent_health(ref) is jt.Health.DEGRADED
            # A fifth message waits for room; the agent frees it once `slow` ends.
            start = trio.current_time()
            await node.send_instruction(ref, jt.Instruction("increment"))
            assert trio.current_time() - start == pytest.approx(1.49, abs=0.02)
        assert await node.call(ref, jt.Instruction("get")) == 5
        # If the agent stays busy past the deadline, the sender gets MailboxFull.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                functools.partial(node.call, ref, jt.Instruction("slow", {"seconds": 5}), timeout=9)
            )
            await trio.sleep(0.01)
            for _ in range(4):
                await node.send_instruction(ref, jt.Instruction("increment"))
            with pytest.raises(jt.MailboxFull):
                await node.send_instruction(ref, jt.Instruction("increment"))
        assert await node.call(ref, jt.Instruction("get")) == 9


async def test_query_consistency_levels() -> None:
    async with jt.open_node(name="n") as node:
        ref = await node.start_agent(Counter, "c", state=CounterState(count=10))
        for level in ("strong", "eventual", "weak"):
            assert await node.query_agent(ref, consistency=level) == CounterState(10)  # type: ignore[arg-type]
        await node.send_instruction(ref, jt.Instruction("increment"))
        # strong is ordered after the instruction sent before it
        assert (await node.query_agent(ref, consistency="strong")).count == 11
        assert (await node.query_agent(ref, consistency="eventual")).count == 11
        assert await node.query_agent(ref, "get") == 11
        with pytest.raises(ValueError):
            await node.query_agent(ref, consistency="linearizable")  # type: ignore[arg-type]


async def test_context_send_and_call_keep_causation() -> None:
    async with jt.open_node(name="n") as node:
        a = await node.start_agent(Counter, "a")
        b = await node.start_agent(Counter, "b")
        assert await node.call(a, jt.Instruction("forward", {"to": b, "by": 3})) == "accepted"
        assert await node.call(b, jt.Instruction("get")) == 3
        seen = await node.call(a, jt.Instruction("ask", {"to": b}))
        assert seen["sender"] == a
        assert seen["ref"] == b
        assert seen["node"] == "n"
        assert seen["causation_id"] is not None
        assert seen["trace_id"] is not None


async def test_start_agent_errors() -> None:
    async with jt.open_node(name="n") as node:
        await node.start_agent(Counter, "c")
        with pytest.raises(jt.AgentAlreadyExists):
            await node.start_agent(Counter, "c")
        with pytest.raises(TypeError):
            await node.start_agent(object, "x")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            await node.start_agent(Counter, "")
        with pytest.raises(jt.ConfigError):
            await node.start_agent(Counter, "y", restart="sometimes")  # type: ignore[arg-type]


async def test_unencodable_state_is_refused_at_start() -> None:
    class Bad(jt.Agent):
        type = "bad"
        State = object

    async with jt.open_node(name="n") as node:
        with pytest.raises(jt.InvalidMessage, match="cannot be encoded"):
            await node.start_agent(Bad, "bad")
        with pytest.raises(jt.AgentNotFound):
            await node.lookup("bad")


async def test_restart_resumes_persisted_state_and_stop_keeps_it() -> None:
    async with jt.open_node(name="n") as node:
        ref = await node.start_agent(Counter, "c")
        await node.send_instruction(ref, jt.Instruction("increment", {"by": 4}, id="x"))
        await crash_agent(node, ref)
        assert await node.call(ref, jt.Instruction("get")) == 4
        await node.stop_agent(ref)
        await node.stop_agent(ref)  # idempotent
        with pytest.raises(jt.AgentUnavailable):
            await node.call(ref, jt.Instruction("get"))
        again = await node.start_agent(Counter, "c")
        assert again == ref
        assert await node.call(ref, jt.Instruction("get")) == 4
        receipt = await node.send_instruction(ref, jt.Instruction("increment", id="x"))
        assert receipt.status == "already_processed"
        fresh = await node.start_agent(Counter, "d", state=CounterState(count=7))
        assert await node.call(fresh, jt.Instruction("get")) == 7


async def test_node_close_fails_waiting_callers_and_stops_agents() -> None:
    stopped: list[str] = []

    class Tracked(Counter):
        type = "tracked"

        async def on_stop(self, state: CounterState, reason: str) -> None:
            stopped.append(f"{self.ctx.ref.id}:{reason}")

    async with jt.open_node(name="n") as node:
        for i in range(3):
            await node.start_agent(Tracked, f"t{i}")
    assert stopped == ["t2:shutdown", "t1:shutdown", "t0:shutdown"]


async def test_open_node_propagates_body_exception_unwrapped() -> None:
    with pytest.raises(KeyError):
        async with jt.open_node(name="n") as node:
            await node.start_agent(Counter, "c")
            raise KeyError("mine")


@pytest.mark.local_only
async def test_many_nodes_in_one_run_are_isolated() -> None:
    async with jt.open_node(name="a") as a, jt.open_node(name="b") as b:
        ra = await a.start_agent(Counter, "same-id")
        rb = await b.start_agent(Counter, "same-id")
        await a.send_instruction(ra, jt.Instruction("increment", {"by": 1}))
        await b.send_instruction(rb, jt.Instruction("increment", {"by": 2}))
        assert await a.call(ra, jt.Instruction("get")) == 1
        assert await b.call(rb, jt.Instruction("get")) == 2
        assert ra.node == "a" and rb.node == "b"
        # Each node's agents run with their own node as the current node.
        seen = await b.call(rb, jt.Instruction("whoami"))
        assert seen["node"] == "b"


async def test_invalid_arguments_are_clear() -> None:
    async with jt.open_node(name="n") as node:
        ref = await node.start_agent(Counter, "c")
        with pytest.raises(TypeError):
            await node.send_instruction(ref, "increment")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            await node.send_instruction(ref, jt.Instruction("increment"), delivery="twice")
        with pytest.raises(ValueError):
            await node.call(ref, jt.Instruction("get"), timeout=-1)
        with pytest.raises(TypeError):
            await node.call("c", jt.Instruction("get"))  # type: ignore[arg-type]
    with pytest.raises(jt.ConfigError):
        async with jt.open_node({"node_name": "x"}):  # type: ignore[arg-type]
            pass
