"""What an action sends commits with its state (issue 17, item 4): held while
the action runs, released after its batch's commit, never for an action that
raised or a batch whose commit failed, under ids derived from the cause."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio
import trio.testing

import jido_trio as jt
from tests._agents import Counter
from tests.failure.test_commit_failure import Plugin


@attrs.frozen
class Sent:
    count: int = 0


class Relay(jt.Agent):
    """Sends an increment to ``to``, then maybe fails."""

    type = "effects-relay"
    State = Sent

    @jt.action("relay")
    async def relay(self, state: Sent, to: jt.AgentRef, fail: bool = False) -> Sent:
        receipt = await self.ctx.send(to, jt.Instruction("increment"))
        assert receipt.status == "accepted"
        await self.ctx.emit("relay.sent", {"n": state.count})
        if fail:
            raise RuntimeError("after sending")
        return Sent(state.count + 1)

    @jt.action("relay_ids")
    async def relay_ids(self, state: Sent, to: jt.AgentRef) -> None:
        first = await self.ctx.send(to, jt.Instruction("increment"))
        second = await self.ctx.send(to, jt.Instruction("increment"))
        mine = await self.ctx.send(to, jt.Instruction("increment", id="chosen"))
        self.ctx.reply([first.instruction_id, second.instruction_id, mine.instruction_id])


async def test_an_action_that_raises_sends_nothing() -> None:
    async with jt.open_node(name="n") as node:
        target = await node.start_agent(Counter, "target")
        relay = await node.start_agent(Relay, "relay")
        heard: list[jt.Signal] = []
        async with node.signals.subscribe("relay.*") as sub:
            with pytest.raises(jt.ActionError):
                await node.call(relay, jt.Instruction("relay", {"to": target, "fail": True}))
            await node.call(relay, jt.Instruction("relay", {"to": target}))
            with trio.move_on_after(0.5):
                heard.append(await sub.receive())
                heard.append(await sub.receive())
        assert await node.call(target, jt.Instruction("get")) == 1
        assert [s.data for s in heard] == [{"n": 0}]


async def test_sends_get_ids_derived_from_their_cause() -> None:
    async with jt.open_node(name="n") as node:
        target = await node.start_agent(Counter, "target")
        relay = await node.start_agent(Relay, "relay")
        ids = await node.call(relay, jt.Instruction("relay_ids", {"to": target}, id="cause-1"))
        assert ids == ["cause-1/0", "cause-1/1", "chosen"]
        assert await node.call(target, jt.Instruction("get")) == 3


async def test_a_batch_whose_commit_failed_sends_nothing_until_applied_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    plugin = Plugin()
    config = jt.Config(node_name="n", state="failing-commits", max_restarts=10)
    async with jt.open_node(config, plugins=[plugin]) as node:
        target = await node.start_agent(Counter, "target")
        relay = await node.start_agent(Relay, "relay")
        plugin.backend.failures = 1
        await node.send_instruction(
            relay, jt.Instruction("relay", {"to": target}, id="r-1"), delivery="at_least_once"
        )
        await trio.sleep(5)  # the commit failed; the restarted relay applies it again
        assert await node.call(target, jt.Instruction("get")) == 1
        assert await node.query_agent(relay) == Sent(1)


class Forwarder(jt.Agent):
    type = "effects-forwarder"

    @jt.action("forward")
    async def forward(self, state: Any, to: jt.AgentRef) -> None:
        await self.ctx.send(to, jt.Instruction("increment"), delivery="at_least_once")


async def test_a_held_send_to_an_agent_that_does_not_exist_is_dead_lettered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with jt.open_node(name="n") as node:
        forwarder = await node.start_agent(Forwarder, "f")
        ghost = jt.AgentRef.new("ghost", "counter")
        await node.call(forwarder, jt.Instruction("forward", {"to": ghost}))
        await trio.sleep(10)
        [letter] = await node.dead_letters("ghost")
        assert letter.payload.action == "increment"
        assert await node.call(forwarder, jt.Instruction("forward", {"to": ghost}, id="x")) is None
