"""One owner per agent: an incarnation claims the agent in the registry before
it reads or writes anything of it, and its first commit seals the state record
against every earlier owner (issue 16, findings 1 and 2).

On the in-process hub the nodes share a registry and (``shared_state``) one
state backend, memory or SQLite, as NATS nodes share theirs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

import jido_trio as jt
from jido_trio._core import RESTART_KEY
from jido_trio._core import AgentStore
from jido_trio._core import state_key
from jido_trio.testing import agent_internals
from jido_trio.testing import crash_agent
from jido_trio.testing import open_cluster
from tests._agents import Counter
from tests._agents import CounterState


@pytest.fixture(params=["memory", "sqlite"])
def state_options(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, object]:
    if request.param == "memory":
        return {}
    return {"state": "sqlite", "plugin_options": {"sqlite": {"path": str(tmp_path / "s.db")}}}


@pytest.mark.local_only
async def test_a_second_start_elsewhere_leaves_the_live_owner_untouched(
    state_options: dict[str, object],
) -> None:
    async with open_cluster("n1", "n2", **state_options) as cluster:
        n1, n2 = cluster["n1"], cluster["n2"]
        ref = await n1.start_agent(Counter, "c")
        await n1.call(ref, jt.Instruction("increment", {"by": 5}))
        stored_before = await n1.state.read(state_key("c"))
        with pytest.raises(jt.AgentAlreadyExists, match="n1") as raised:
            await n2.start_agent(Counter, "c", state=CounterState(count=100))
        assert raised.value.node == "n1"
        # Nothing of the agent was read or written by the loser.
        assert await n1.state.read(state_key("c")) == stored_before
        assert (await n2.registry.lookup("c")).node == "n1"
        assert n2.agents() == []
        # The owner goes on writing: no version conflict, no crash.
        for _ in range(3):
            await n1.call(ref, jt.Instruction("increment"))
        assert await n1.call(ref, jt.Instruction("get")) == 8
        assert agent_internals(n1, "c").restarts == 0
        assert await n2.call(ref, jt.Instruction("get")) == 8


@pytest.mark.local_only
async def test_concurrent_starts_on_three_nodes_give_one_owner(
    state_options: dict[str, object],
) -> None:
    async with open_cluster("n1", "n2", "n3", **state_options) as cluster:
        outcomes: dict[str, object] = {}

        async def start(node: jt.Node) -> None:
            try:
                outcomes[node.name] = await node.start_agent(Counter, "c")
            except jt.AgentAlreadyExists as exc:
                outcomes[node.name] = exc

        async with trio.open_nursery() as nursery:
            for node in cluster:
                nursery.start_soon(start, node)
        owners = [name for name, outcome in outcomes.items() if isinstance(outcome, jt.AgentRef)]
        assert len(owners) == 1
        owner = cluster[owners[0]]
        ref = await owner.lookup("c")
        for node in cluster:
            await node.send_instruction(ref, jt.Instruction("increment"))
        assert await owner.call(ref, jt.Instruction("get")) == 3


@pytest.mark.local_only
async def test_a_stale_incarnation_can_change_nothing_the_owner_sees() -> None:
    """A writer still holding the record's old version (a paused zombie) loses
    every compare-and-set once the owner has committed, and its id chunks do
    not overwrite the owner's."""
    async with open_cluster("n1", "n2") as cluster:
        n1, n2 = cluster["n1"], cluster["n2"]
        ref = await n1.start_agent(Counter, "c")
        await n1.call(ref, jt.Instruction("increment"))
        # The zombie: a store that loaded the record as it is now, with an old epoch.
        zombie = AgentStore(agent_id="c", window=100, epoch=1)
        await zombie.load(n1.state, lambda raw: None)
        # The agent moves: stopped on n1, started (claimed, sealed) on n2.
        await n1.stop_agent(ref)
        moved = await n2.start_agent(Counter, "c")
        for i in range(40):  # enough to seal an id chunk
            await n2.call(moved, jt.Instruction("increment", id=f"owner-{i}"))
        for i in range(40):
            zombie.mark(f"zombie-{i}")
        with pytest.raises(jt.StateConflict):
            await zombie.plan_commit(CounterState(count=-1)).run(n2.state)
        owner_chunks = await n2.state.keys("agent/c/ids/")
        assert owner_chunks  # the owner sealed ids into chunks of its own epoch
        assert await n2.call(moved, jt.Instruction("get")) == 41
        # Reloaded from the store: the owner's ids are all there.
        await crash_agent(n2, moved)
        assert await n2.call(moved, jt.Instruction("get")) == 41
        with pytest.raises(jt.AlreadyProcessed):
            await n2.call(moved, jt.Instruction("increment", id="owner-3"))


async def test_a_restart_claims_a_new_epoch_and_ctx_shows_it() -> None:
    class Epochs(jt.Agent):
        type = "epochs"

        @jt.action("epoch")
        async def epoch(self, state: object) -> None:
            self.ctx.reply(self.ctx.epoch)

    async with jt.open_node(name="n") as node:
        ref = await node.start_agent(Epochs, "e")
        first = await node.call(ref, jt.Instruction("epoch"))
        assert first == (await node.registry.lookup("e")).epoch
        await crash_agent(node, ref)
        second = await node.call(ref, jt.Instruction("epoch"))
        assert second > first
        assert second == (await node.registry.lookup("e")).epoch


@pytest.mark.local_only
async def test_refs_follow_an_agent_started_again_on_another_node() -> None:
    """Issue 16, finding 5: after a stop on n1 and a start on n2, the old ref
    (naming n1) reaches the agent on n2 from every node, for every operation."""
    async with open_cluster("n1", "n2", "n3") as cluster:
        n1, n2 = cluster["n1"], cluster["n2"]
        old = await n1.start_agent(Counter, "c")
        await n1.call(old, jt.Instruction("increment"))
        await n1.stop_agent(old)
        new = await n2.start_agent(Counter, "c")
        assert new.node == "n2" and old.node == "n1"
        count = 1
        for node in cluster:
            await node.send_instruction(old, jt.Instruction("increment"))
            assert await node.call(old, jt.Instruction("increment")) is None
            count += 2
            assert await node.query_agent(old) == CounterState(count=count)
            assert await node.check_agent_health(old) is jt.Health.HEALTHY
            assert (await node.lookup("c")).node == "n2"
        assert await n1.call(old, jt.Instruction("get")) == count


@pytest.mark.local_only
async def test_an_agent_registered_to_a_node_but_not_running_yet_is_not_not_found(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Issue 16, finding 5: while a node takes an agent over (the registry
    names it, its incarnation is not running yet), callers wait within their
    deadline or see Unreachable, never AgentNotFound."""
    async with open_cluster("n1", "n2") as cluster:
        n1, n2 = cluster["n1"], cluster["n2"]
        ref = jt.AgentRef(id="adopted", type=Counter.type, node="n1")
        await n1.registry.register(ref, {RESTART_KEY: "permanent"})
        for node in (n1, n2):
            with pytest.raises(jt.Unreachable):
                await node.call(ref, jt.Instruction("get"), timeout=0.5)
            with pytest.raises(jt.Unreachable):
                await node.send_instruction(ref, jt.Instruction("increment"), timeout=0.5)
        # n1's failover scan starts an agent the registry names it for.
        await trio.sleep(5)
        receipt = await n2.send_instruction(ref, jt.Instruction("increment"))
        assert receipt.status == "accepted"
        assert await n2.call(ref, jt.Instruction("get")) == 1


def _hub_config(hub: str, name: str, **config: object) -> jt.Config:
    options = {"local": {"hub": hub}, "memory": {"hub": hub}}
    return jt.Config(node_name=name, plugin_options=options, **config)  # type: ignore[arg-type]


@pytest.mark.local_only
async def test_a_node_that_leaves_hands_its_agents_to_the_survivors(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Issue 16, finding 4: leaving gracefully hands the permanent and
    transient agents over with their state and unapplied at-least-once
    messages; temporary ones go with the node."""
    hub = "handoff"
    async with (
        jt.open_node(_hub_config(hub, "n2")) as n2,
        jt.open_node(_hub_config(hub, "n3")) as n3,
    ):
        async with jt.open_node(_hub_config(hub, "n1")) as n1:
            refs = {
                restart: await n1.start_agent(Counter, f"c-{restart}", restart=restart)
                for restart in ("permanent", "transient", "temporary")
            }
            for i, ref in enumerate(refs.values()):
                await n1.call(ref, jt.Instruction("increment", {"by": i + 1}))
            # At-least-once messages still queued when n1 leaves.
            for ref in refs.values():
                await n2.send_instruction(
                    ref, jt.Instruction("increment", {"by": 10}), delivery="at_least_once"
                )
        # n1 is gone; a survivor took the permanent and transient agents over.
        await trio.sleep(5)
        for restart, expected in (("permanent", 11), ("transient", 12)):
            agent_id = f"c-{restart}"
            owner = (await n2.lookup(agent_id)).node
            assert owner in ("n2", "n3")
            for node in (n2, n3):
                assert await node.call(refs[restart], jt.Instruction("get")) == expected
        with pytest.raises(jt.AgentNotFound):
            await n2.lookup("c-temporary")
        assert n3.agents() or n2.agents()


@pytest.mark.local_only
async def test_migrate_moves_a_live_agent_with_its_state_and_ids(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster("n1", "n2", "n3") as cluster:
        n1, n2, n3 = cluster["n1"], cluster["n2"], cluster["n3"]
        ref = await n1.start_agent(Counter, "c")
        await n1.call(ref, jt.Instruction("increment", id="before-1"))
        await n1.send_instruction(
            ref, jt.Instruction("increment", id="before-2"), delivery="at_least_once"
        )
        moved = await n3.migrate(ref, "n2")  # asked from a third node
        assert moved.node == "n2" and moved.id == "c"
        assert (await n1.lookup("c")).node == "n2"
        assert [r.id for r in n2.agents()] == ["c"] and n1.agents() == []
        # State, dedupe ids and the at-least-once message came along.
        for node in cluster:
            assert await node.call(ref, jt.Instruction("get")) == 2
            with pytest.raises(jt.AlreadyProcessed):
                await node.call(ref, jt.Instruction("increment", id="before-1"))
            assert await node.check_agent_health(ref) is jt.Health.HEALTHY
        assert (
            await n2.send_instruction(ref, jt.Instruction("increment", id="before-2"))
        ).status == "already_processed"
        # Back again, from its own node this time.
        again = await n2.migrate(moved, "n1")
        assert again.node == "n1"
        assert await n3.call(ref, jt.Instruction("get")) == 2
        with pytest.raises(jt.Unreachable):
            await n1.migrate(ref, "nowhere")


@pytest.mark.local_only
async def test_an_incarnation_that_lost_its_agent_retires_without_harm(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A zombie (its agent taken over while it still ran it) fails its next
    commit, and its restart finds the agent owned by a live node: it is
    forgotten here, its node stays up, and nothing it applied stuck."""
    async with open_cluster("n1", "n2", max_restarts=1) as cluster:
        n1, n2 = cluster["n1"], cluster["n2"]
        ref = await n1.start_agent(Counter, "c")
        await n1.call(ref, jt.Instruction("increment"))
        entry = await n1.registry.lookup("c")
        await n2.registry.take_over(
            jt.AgentRef(id="c", type="counter", node="n2"), epoch=entry.epoch
        )
        moved = await n2.start_agent(Counter, "c")  # claims and seals the record
        # The zombie still runs on n1: what it applies fails to commit.
        await n1.send_instruction(
            jt.AgentRef(id="c", type="counter", node="n1"), jt.Instruction("increment", {"by": 100})
        )
        await trio.sleep(5)
        assert n1.agents() == []
        assert [c.id for c in n1.supervision_tree().children] == []
        assert await n1.call(ref, jt.Instruction("get")) == 1  # follows it to n2
        assert await n2.call(moved, jt.Instruction("get")) == 1
