"""Bounded soak: 20k at-least-once instructions across two nodes while agents
crash at random and the network duplicates, drops and delays messages. Every
instruction must be applied exactly once, counted by the agents' final state."""

from __future__ import annotations

import random

import pytest
import trio

import jido_trio as jt
from jido_trio.testing import crash_agent
from jido_trio.testing import faults
from jido_trio.testing import frame_kind
from tests._agents import Counter

pytestmark = pytest.mark.slow

TOTAL = 20_000
AGENTS = 8
SENDERS_PER_AGENT = 4


async def test_exactly_once_under_crashes_and_a_bad_network(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rng = random.Random(2026)
    hub = "soak"
    options = {"local": {"hub": hub}}
    config = dict(plugin_options=options, max_restarts=1_000_000, retry_attempts=2)
    async with (
        jt.open_node(jt.Config(node_name="client", **config)) as client,
        jt.open_node(jt.Config(node_name="server", **config)) as server,
    ):
        refs = [await server.start_agent(Counter, f"acc-{i}") for i in range(AGENTS)]
        plan = faults(hub, seed=11)

        def app(frame: bytes) -> bool:
            return frame_kind(frame) in ("tell_alo", "call")

        plan.duplicate(0.05, source="client", match=app)
        plan.drop(0.02, source="client", match=app)
        plan.drop(0.02, reply=True, source="client", match=app)
        plan.delay(0.01, jitter=0.05, probability=0.1, source="client", match=app)
        retried = 0

        async def sender(ref: jt.AgentRef, ids: range) -> None:
            nonlocal retried
            for i in ids:
                instruction = jt.Instruction("increment", id=f"{ref.id}/{i}")
                while True:  # the client's own retry: same id, so it is safe
                    try:
                        await client.send_instruction(
                            ref, instruction, delivery="at_least_once", timeout=1.0
                        )
                        break
                    except (jt.CallTimeout, jt.Unreachable, jt.CircuitOpen):
                        retried += 1
                        await trio.sleep(0.1)

        async def chaos(stop: trio.Event) -> None:
            crashes = 0
            while not stop.is_set() and crashes < 200:
                await trio.sleep(rng.uniform(0.001, 0.02))
                with trio.move_on_after(1):
                    await crash_agent(server, rng.choice(refs))
                    crashes += 1

        per_agent = TOTAL // AGENTS
        per_sender = per_agent // SENDERS_PER_AGENT
        stop = trio.Event()
        async with trio.open_nursery() as outer:
            outer.start_soon(chaos, stop)
            async with trio.open_nursery() as nursery:
                for ref in refs:
                    for s in range(SENDERS_PER_AGENT):
                        ids = range(s * per_sender, (s + 1) * per_sender)
                        nursery.start_soon(sender, ref, ids)
            stop.set()
        await plan.settle()
        plan.clear()
        counts = [await server.call(ref, jt.Instruction("get"), timeout=30) for ref in refs]
        assert counts == [per_agent] * AGENTS
        assert sum(counts) == TOTAL
        assert retried > 0  # the faults did bite
        restarts = sum(child.restarts for child in server.supervision_tree().children)
        assert restarts > 0
        for ref in refs:
            assert await server.state.read_log(f"mailbox/{ref.id}") == []
