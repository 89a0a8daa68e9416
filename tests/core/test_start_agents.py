"""Starting agents: the synchronous start path of start_agent, and the bulk
``node.start_agents`` (docs/performance.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import jido_trio as jt
from jido_trio._node import START_SCHEDULE_EVERY
from jido_trio.testing import crash_agent
from tests._agents import Counter
from tests._agents import CounterState


class HookLog:
    """A plugin recording the agent hooks, in order."""

    def __init__(self) -> None:
        self.hooks: list[tuple[Any, ...]] = []

    @jt.hookimpl
    def jido_trio_agent_started(self, node: jt.Node, ref: jt.AgentRef) -> None:
        self.hooks.append(("started", ref.id))

    @jt.hookimpl
    def jido_trio_health_changed(
        self, node: jt.Node, ref: jt.AgentRef, old: jt.Health, new: jt.Health
    ) -> None:
        self.hooks.append(("health", ref.id, new))

    @jt.hookimpl
    def jido_trio_supervisor_event(
        self, node: jt.Node, supervisor_id: str, child_id: str, event: str, reason: str | None
    ) -> None:
        self.hooks.append(("supervisor", child_id, event))


class Starting(Counter):
    """Has on_start, so it always takes the awaited start path."""

    type = "starting-counter"

    async def on_start(self, state: CounterState) -> CounterState:
        await trio.lowlevel.checkpoint()
        return attrs.evolve(state, count=state.count + 100)


async def test_start_agents_starts_all_in_order() -> None:
    log = HookLog()
    async with jt.open_node(name="n", plugins=[log]) as node:
        ids = [f"a{i}" for i in range(300)]
        refs = await node.start_agents(Counter, ids)
        assert [r.id for r in refs] == ids
        assert all(r.node == "n" and r.type == "counter" for r in refs)
        assert [c.id for c in node.supervision_tree().children] == ids
        for ref in refs[::50]:
            await node.send_instruction(ref, jt.Instruction("increment", {"by": 2}))
            assert await node.call(ref, jt.Instruction("get")) == 2
            assert await node.check_agent_health(ref) is jt.Health.HEALTHY
            assert await node.lookup(ref.id) == ref
        # The same hooks, in the same order, as start_agent one by one.
        assert log.hooks[:3] == [
            ("started", "a0"),
            ("health", "a0", jt.Health.HEALTHY),
            ("supervisor", "a0", "started"),
        ]
        assert sum(1 for h in log.hooks if h[0] == "started") == 300


async def test_start_agent_fires_the_same_hooks_on_both_paths() -> None:
    log = HookLog()
    async with jt.open_node(name="n", plugins=[log]) as node:
        await node.start_agent(Counter, "fast")
        await node.start_agent(Starting, "awaited")
    assert log.hooks[:6] == [
        ("started", "fast"),
        ("health", "fast", jt.Health.HEALTHY),
        ("supervisor", "fast", "started"),
        ("started", "awaited"),
        ("health", "awaited", jt.Health.HEALTHY),
        ("supervisor", "awaited", "started"),
    ]


async def test_start_agents_checks_every_id_first() -> None:
    async with jt.open_node(name="n") as node:
        await node.start_agent(Counter, "taken")
        with pytest.raises(ValueError, match="unique"):
            await node.start_agents(Counter, ["x", "y", "x"])
        with pytest.raises(jt.AgentAlreadyExists):
            await node.start_agents(Counter, ["x", "taken"])
        with pytest.raises(ValueError, match="non-empty"):
            await node.start_agents(Counter, ["x", ""])
        with pytest.raises(TypeError):
            await node.start_agents(object, ["x"])  # type: ignore[arg-type]
        assert [r.id for r in node.agents()] == ["taken"]
        assert await node.start_agents(Counter, []) == []


@pytest.mark.parametrize("bulk", [True, False], ids=["start_agents", "start_agent"])
async def test_start_yields_once_every_n_agents(bulk: bool) -> None:
    async with jt.open_node(name="n") as node:
        rounds = 3
        task: list[trio.lowlevel.Task] = []
        steps = 0

        class Steps(trio.abc.Instrument):
            def before_task_step(self, t: trio.lowlevel.Task) -> None:
                nonlocal steps
                if task and t is task[0]:
                    steps += 1

        async def starter() -> None:
            task.append(trio.lowlevel.current_task())
            ids = [f"a{i}" for i in range(rounds * START_SCHEDULE_EVERY)]
            if bulk:
                await node.start_agents(Counter, ids)
            else:
                for agent_id in ids:
                    await node.start_agent(Counter, agent_id)

        instrument = Steps()
        trio.lowlevel.add_instrument(instrument)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(starter)
        finally:
            trio.lowlevel.remove_instrument(instrument)
        # After its first step: one per START_SCHEDULE_EVERY agents.
        assert steps == rounds
        assert len(node.agents()) == rounds * START_SCHEDULE_EVERY


async def test_start_agents_is_a_cancel_point() -> None:
    async with jt.open_node(name="n") as node:
        with trio.CancelScope() as scope:
            scope.cancel()
            await node.start_agents(Counter, ["a", "b"])
        assert scope.cancelled_caught
        assert node.agents() == []
        with trio.CancelScope() as scope:
            scope.cancel()
            await node.start_agent(Counter, "a")
        assert scope.cancelled_caught
        assert node.agents() == []


async def test_start_agents_resumes_persisted_state_and_mixes_paths() -> None:
    async with jt.open_node(name="n") as node:
        ref = await node.start_agent(Counter, "old")
        await node.call(ref, jt.Instruction("increment", {"by": 7}))
        await node.stop_agent(ref)
        refs = await node.start_agents(Counter, ["new", "old"])
        assert [await node.call(r, jt.Instruction("get")) for r in refs] == [0, 7]
        # An agent class with on_start takes the awaited path, with the same result.
        started = await node.start_agents(Starting, ["s1", "s2"])
        assert [await node.call(r, jt.Instruction("get")) for r in started] == [100, 100]


async def test_start_agents_on_sqlite(tmp_path: Path) -> None:
    options = {"sqlite": {"path": str(tmp_path / "state.db")}}
    config = jt.Config(node_name="n", state="sqlite", plugin_options=options)
    async with jt.open_node(config) as node:
        refs = await node.start_agents(Counter, [f"a{i}" for i in range(5)])
        await node.call(refs[3], jt.Instruction("increment", {"by": 3}))
    async with jt.open_node(config) as node:
        refs = await node.start_agents(Counter, [f"a{i}" for i in range(5)])
        assert [await node.call(r, jt.Instruction("get")) for r in refs] == [0, 0, 0, 3, 0]


async def test_agent_started_synchronously_handles_stop_and_crash_before_it_runs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with jt.open_node(name="n") as node:
        # Stopped before its task ever ran: the stop is not lost.
        ref = await node.start_agent(Counter, "a")
        await node.stop_agent(ref)
        with pytest.raises(jt.AgentUnavailable):
            await node.call(ref, jt.Instruction("get"))
        # Crashed, then restarted the usual way, state kept.
        [ref] = await node.start_agents(Counter, ["b"])
        await node.send_instruction(ref, jt.Instruction("increment"))
        await crash_agent(node, ref)
        assert await node.call(ref, jt.Instruction("get")) == 1
        [child] = [c for c in node.supervision_tree().children if c.id == "b"]
        assert child.restarts == 1


async def test_eventual_read_of_an_agent_that_never_committed() -> None:
    async with jt.open_node(name="n") as node:
        [ref] = await node.start_agents(Counter, ["a"])
        assert await node.query_agent(ref, consistency="eventual") == CounterState()
