"""At-least-once delivery: logged before the receipt, replayed until applied, once."""

from __future__ import annotations

import functools
import itertools
import random
from typing import Any

import pytest
import trio
import trio.lowlevel

import jido_trio as jt
from jido_trio.testing import crash_agent
from tests._agents import Counter

_hubs = itertools.count()


def shared_state_config(name: str, hub: str, **extra: Any) -> jt.Config:
    return jt.Config(node_name=name, plugin_options={"memory": {"hub": hub}}, **extra)


async def test_message_is_logged_before_the_receipt(autojump_clock: trio.testing.MockClock) -> None:
    async with jt.open_node(name="n") as node:
        ref = await node.start_agent(Counter, "c")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                functools.partial(node.call, ref, jt.Instruction("slow", {"seconds": 1}), timeout=5)
            )
            await trio.sleep(0.1)
            receipt = await node.send_instruction(
                ref, jt.Instruction("increment", id="durable-1"), delivery="at_least_once"
            )
            assert receipt.status == "accepted"
            logged = await node.state.read_log("mailbox/c")
            assert len(logged) == 1
            assert jt.Message.from_bytes(logged[0].data).payload.id == "durable-1"
        assert await node.call(ref, jt.Instruction("get")) == 1
        # Applied, so the log no longer holds it.
        assert await node.state.read_log("mailbox/c") == []
        again = await node.send_instruction(
            ref, jt.Instruction("increment", id="durable-1"), delivery="at_least_once"
        )
        assert again.status == "already_processed"


async def test_an_at_least_once_send_waits_for_room_before_it_is_logged(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A full mailbox: the send waits for room, and only a send that got
    room is logged. One refused with MailboxFull is in no log, so no later
    restart applies it behind the sender's back (and out of order)."""
    async with jt.open_node(jt.Config(node_name="n", mailbox_size=1)) as node:
        ref = await node.start_agent(Counter, "c")
        await node.send_instruction(ref, jt.Instruction("slow", {"seconds": 10}))
        await trio.sleep(0.1)  # running it
        await node.send_instruction(ref, jt.Instruction("slow", {"seconds": 10}))  # queued: full
        refused = jt.Instruction("increment", {"by": 100}, id="refused")
        with pytest.raises(jt.MailboxFull):
            await node.send_instruction(ref, refused, delivery="at_least_once", timeout=1)
        assert await node.state.read_log("mailbox/c") == []
        # This one gets room when the first slow message is done (t=10).
        receipt = await node.send_instruction(
            ref, jt.Instruction("increment", id="waited"), delivery="at_least_once", timeout=30
        )
        assert receipt.status == "accepted"
        assert trio.current_time() == pytest.approx(10, abs=0.2)
        assert len(await node.state.read_log("mailbox/c")) == 1
        assert await node.call(ref, jt.Instruction("get"), timeout=60) == 1
        await crash_agent(node, ref)
        await trio.sleep(1)
        assert await node.call(ref, jt.Instruction("get")) == 1  # not 101


async def test_replayed_after_restart_on_the_same_state(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hub = f"alo-{next(_hubs)}"
    async with jt.open_node(shared_state_config("keeper", hub)):
        async with jt.open_node(shared_state_config("first", hub)) as node:
            ref = await node.start_agent(Counter, "c")
            # Park the agent so the messages stay queued, then close the node.
            with trio.move_on_after(0.05):
                await node.call(ref, jt.Instruction("slow", {"seconds": 10}), timeout=10)
            for i in range(5):
                await node.send_instruction(
                    ref, jt.Instruction("increment", id=f"m{i}"), delivery="at_least_once"
                )
        async with jt.open_node(shared_state_config("second", hub)) as node:
            ref = await node.start_agent(Counter, "c")
            assert await node.call(ref, jt.Instruction("get")) == 5
            assert await node.state.read_log("mailbox/c") == []
            for i in range(5):
                receipt = await node.send_instruction(
                    ref, jt.Instruction("increment", id=f"m{i}"), delivery="at_least_once"
                )
                assert receipt.status == "already_processed"


async def test_exactly_once_under_random_crashes() -> None:
    random.seed(7)
    config = jt.Config(node_name="n", max_restarts=10_000, mailbox_size=256)
    async with jt.open_node(config) as node:
        refs = [await node.start_agent(Counter, f"c{i}") for i in range(8)]
        sent = {r.id: 0 for r in refs}

        async def producer(ref: jt.AgentRef) -> None:
            for i in range(500):
                instruction = jt.Instruction("increment", id=f"{ref.id}-{i}")
                await node.send_instruction(ref, instruction, delivery="at_least_once")
                sent[ref.id] += 1
                if random.random() < 0.3:
                    # A duplicate delivery of the same instruction id.
                    await node.send_instruction(ref, instruction, delivery="at_least_once")

        async def chaos() -> None:
            for _ in range(60):
                await trio.lowlevel.checkpoint()
                victim = random.choice(refs)
                with trio.move_on_after(1):
                    await crash_agent(node, victim)

        async with trio.open_nursery() as nursery:
            for ref in refs:
                nursery.start_soon(producer, ref)
            nursery.start_soon(chaos)
        for ref in refs:
            assert await node.call(ref, jt.Instruction("get")) == sent[ref.id] == 500
            assert await node.state.read_log(f"mailbox/{ref.id}") == []
        tree = node.supervision_tree()
        assert sum(child.restarts for child in tree.children) > 0


async def test_poison_message_is_dead_lettered(autojump_clock: trio.testing.MockClock) -> None:
    dead: list[tuple[str, str]] = []

    class Observer:
        @jt.hookimpl
        def jido_trio_message_dead_lettered(
            self, node: jt.Node, message: jt.Message, reason: str
        ) -> None:
            dead.append((message.payload.action, reason))

    config = jt.Config(node_name="n", max_delivery_attempts=3, max_restarts=5)
    async with jt.open_node(config, plugins=[Observer()]) as node:
        ref = await node.start_agent(Counter, "c")
        await node.send_instruction(ref, jt.Instruction("boom"), delivery="at_least_once")
        await node.send_instruction(ref, jt.Instruction("increment"), delivery="at_least_once")
        # Queued behind both: answered once the poison message is set aside.
        assert await node.call(ref, jt.Instruction("get")) == 1
        assert dead == [("boom", "action failed 3 times, last: ValueError: kaboom")]
        stored = await node.state.read_log("deadletter/c")
        assert [jt.Message.from_bytes(e.data).payload.action for e in stored] == ["boom"]
        assert await node.state.read_log("mailbox/c") == []
        [child] = node.supervision_tree().children
        assert child.restarts == 3


async def test_at_least_once_across_nodes() -> None:
    hub = f"alo-{next(_hubs)}"
    options = {"local": {"hub": hub}}
    async with (
        jt.open_node(jt.Config(node_name="a", plugin_options=options)) as a,
        jt.open_node(jt.Config(node_name="b", plugin_options=options)) as b,
    ):
        ref = await a.start_agent(Counter, "c")
        receipt = await b.send_instruction(
            ref, jt.Instruction("increment", id="x"), delivery="at_least_once"
        )
        assert receipt.status == "accepted"
        again = await b.send_instruction(
            ref, jt.Instruction("increment", id="x"), delivery="at_least_once"
        )
        assert again.status == "already_processed"
        assert await b.call(ref, jt.Instruction("get")) == 1


def test_delivery_mode_is_validated() -> None:
    with pytest.raises(jt.ConfigError):
        jt.Config(max_delivery_attempts=0)
