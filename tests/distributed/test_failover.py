"""Failover on the in-process hub: agents of a node that left the cluster
without stopping them (a crash) restart on a survivor.

A crashed node is simulated by what it leaves behind: registry entries that
name a node which is not a member any more, its committed state and its
durable at-least-once log in the shared StateBackend. (The same scenario with
real processes and real NATS servers is in tests/distributed/nats/test_nats_failover.py.)
"""

from __future__ import annotations

import pytest
import trio

import jido_trio as jt
from jido_trio._core import RESTART_KEY
from jido_trio._core import AgentStore
from jido_trio._failover import rank
from jido_trio.testing import open_cluster
from tests._agents import Counter
from tests._agents import CounterState

pytestmark = pytest.mark.slow


async def _ghost_agent(
    node: jt.Node, agent_id: str, *, count: int = 0, restart: str = "permanent"
) -> jt.AgentRef:
    """Leave behind what a crashed node "ghost" that ran ``agent_id`` would."""
    ref = jt.AgentRef(id=agent_id, type=Counter.type, node="ghost")
    store = AgentStore(agent_id=agent_id, window=100)
    await store.load(node.state, lambda raw: None)
    store.mark("applied-before-the-crash")
    await store.plan_commit(CounterState(count=count)).run(node.state)
    await node.registry.register(ref, {RESTART_KEY: restart, "zone": "eu"})
    return ref


def runs(node: jt.Node, agent_id: str) -> bool:
    return any(ref.id == agent_id for ref in node.agents())


async def _owner(node: jt.Node, agent_id: str) -> str | None:
    return (await node.lookup(agent_id)).node


async def test_orphans_restart_on_exactly_one_survivor_with_their_state(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster("n1", "n2", "n3") as cluster:
        n1 = cluster["n1"]
        ids = [f"g{i}" for i in range(12)]
        for i, agent_id in enumerate(ids):
            await _ghost_agent(n1, agent_id, count=i)
        await trio.sleep(10 * n1.config.health_check_interval)
        for i, agent_id in enumerate(ids):
            owner = await _owner(n1, agent_id)
            assert owner in ("n1", "n2", "n3")
            # The preferred survivor of the rendezvous ranking took it.
            assert owner == rank(agent_id, ["n1", "n2", "n3"])[0]
            runners = [node.name for node in cluster if runs(node, agent_id)]
            assert runners == [owner]
            ref = await n1.lookup(agent_id)
            assert await n1.call(ref, jt.Instruction("get")) == i
            entry = await n1.registry.lookup(agent_id)
            assert entry.metadata["zone"] == "eu"
        # Spread over the survivors, not piled on one.
        owners = {await _owner(n1, agent_id) for agent_id in ids}
        assert len(owners) >= 2


async def test_durable_log_is_replayed_and_deduplicated_on_the_new_owner(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster("n1", "n2") as cluster:
        n1 = cluster["n1"]
        ghost = await _ghost_agent(n1, "g", count=1)
        # Acknowledged to a sender before the crash, not applied yet:
        fresh = jt.Instruction("increment", {"by": 10}, id="fresh")
        # ...and one the ghost applied (its id is in the committed window):
        done = jt.Instruction("increment", {"by": 100}, id="applied-before-the-crash")
        for instruction in (fresh, done):
            message = jt.Message.new(None, ghost, instruction)
            await n1.state.append("mailbox/g", message.to_bytes())
        await trio.sleep(10)
        ref = await n1.lookup("g")
        assert ref.node in ("n1", "n2")
        assert await n1.call(ref, jt.Instruction("get")) == 11


async def test_stale_refs_follow_the_agent_to_its_new_owner(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster("n1", "n2") as cluster:
        stale = await _ghost_agent(cluster["n1"], "g", count=5)
        await trio.sleep(10)
        for node in cluster:
            receipt = await node.send_instruction(stale, jt.Instruction("increment"))
            assert receipt.status == "accepted"
        assert await cluster["n1"].call(stale, jt.Instruction("get")) == 7
        assert await cluster["n2"].query_agent(stale) == CounterState(count=7)


async def test_temporary_agents_are_forgotten_not_restarted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster("n1", "n2") as cluster:
        n1 = cluster["n1"]
        await _ghost_agent(n1, "t", restart="temporary")
        await trio.sleep(10)
        with pytest.raises(jt.AgentNotFound):
            await n1.lookup("t")
        assert not any(runs(node, "t") for node in cluster)


@pytest.mark.local_only
async def test_a_partitioned_member_keeps_its_agents(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster("n1", "n2") as cluster:
        ref = await cluster["n1"].start_agent(Counter, "c")
        cluster.faults.partition({"n1"}, {"n2"})
        await trio.sleep(10)
        # n2 cannot reach n1, but n1 is still a member: nobody takes over.
        assert cluster["n2"].agents() == []
        assert (await cluster["n2"].registry.lookup("c")).node == "n1"
        cluster.faults.heal()
        await trio.sleep(5)  # heartbeats see n1 again
        assert await cluster["n2"].call(ref, jt.Instruction("get")) == 0


async def test_failover_off_leaves_orphans_alone(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster("n1", "n2", failover=False) as cluster:
        await _ghost_agent(cluster["n1"], "g")
        await trio.sleep(10)
        assert (await cluster["n1"].registry.lookup("g")).node == "ghost"
        assert not any(runs(node, "g") for node in cluster)


async def test_a_node_restarted_under_its_name_adopts_its_previous_agents(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster("n1") as cluster:
        n1 = cluster["n1"]
        ref = jt.AgentRef(id="mine", type=Counter.type, node="n1")
        await n1.registry.register(ref, {RESTART_KEY: "permanent"})
        await trio.sleep(10)
        assert runs(n1, "mine")
        assert await n1.call(ref, jt.Instruction("get")) == 0


def test_rank_is_deterministic_and_spreads() -> None:
    members = ["a", "b", "c"]
    assert rank("x", members) == rank("x", list(reversed(members)))
    firsts = {rank(f"agent-{i}", members)[0] for i in range(50)}
    assert firsts == set(members)


class _FencingPlugin:
    """A transport whose membership lease is lost when the test says so."""

    def __init__(self) -> None:
        self.lost = trio.Event()

    @jt.hookimpl
    def jido_trio_add_backends(self, backends: object) -> None:
        from contextlib import asynccontextmanager

        from jido_trio.local import LocalTransport

        plugin = self

        class Fenceable(LocalTransport):
            async def wait_fenced(self) -> None:
                await plugin.lost.wait()

        @asynccontextmanager
        async def factory(config: jt.Config, options: object):  # type: ignore[no-untyped-def]
            from jido_trio.local._hub import open_hub

            async with open_hub("fence-hub") as hub:
                yield Fenceable(node_name=config.node_name, hub=hub)

        backends.add_transport("fenceable", factory)  # type: ignore[attr-defined]


async def test_a_fenced_node_stops_its_agents_and_raises_node_fenced(
    autojump_clock: trio.testing.MockClock,
) -> None:
    plugin = _FencingPlugin()
    stopped: list[str] = []

    class Watcher:
        @jt.hookimpl
        def jido_trio_agent_stopped(self, node: jt.Node, ref: jt.AgentRef, reason: str) -> None:
            stopped.append(ref.id)

    config = jt.Config(node_name="f1", transport="fenceable")
    with pytest.raises(jt.NodeFenced, match="lost its cluster membership"):
        async with jt.open_node(config, plugins=[plugin, Watcher()]) as node:
            await node.start_agent(Counter, "a1")
            await node.start_agent(Counter, "a2")
            plugin.lost.set()
            await trio.sleep_forever()
    assert sorted(stopped) == ["a1", "a2"]
