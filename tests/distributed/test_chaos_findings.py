"""Regression tests for what the chaos test (tests/distributed/nats/test_nats_chaos.py)
found, reproduced on the in-process hub."""

from __future__ import annotations

import attrs
import pytest
import trio

import jido_trio as jt
from jido_trio._core import RESTART_KEY
from jido_trio.testing import open_cluster
from tests._agents import Counter
from tests._polling import wait_until


def _hub_config(hub: str, name: str, **config: object) -> jt.Config:
    options = {"local": {"hub": hub}, "memory": {"hub": hub}}
    return jt.Config(node_name=name, plugin_options=options, **config)  # type: ignore[arg-type]


@pytest.mark.local_only
async def test_an_agent_back_on_a_restarted_node_is_not_refused_by_an_old_breaker(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A node restarted under its name (a rolling restart, a supervisor
    restarting a killed process) adopts its agents again. A caller that tried
    to reach one of them while the node was away has an open breaker for it;
    once the agent runs again, that caller must reach it about as soon as
    everybody else, not ``breaker_reset_timeout`` (30 s by default) later."""
    hub = "breaker-after-restart"
    async with jt.open_node(_hub_config(hub, "caller", failover=False)) as caller:
        async with jt.open_node(_hub_config(hub, "n1")) as n1:
            ref = await n1.start_agent(Counter, "c")
            await caller.send_instruction(ref, jt.Instruction("increment"))
        # n1 left (its entry stays for whoever takes the agent over): the
        # caller's sends fail until it is back, and open the caller's breaker.
        with pytest.raises(jt.CircuitOpen):
            for _ in range(caller.config.breaker_failure_threshold):
                with pytest.raises(jt.Unreachable):
                    await caller.send_instruction(ref, jt.Instruction("increment"), timeout=0.5)
        async with jt.open_node(_hub_config(hub, "n1")) as again:
            # The new n1 adopts its agent from the registry.
            await wait_until(again.agents, timeout=5, interval=0.1)
            assert await again.call(ref, jt.Instruction("get")) == 1
            started = trio.current_time()
            with trio.fail_after(5):  # the breaker's reset timeout is 30 s
                while True:
                    try:
                        await caller.send_instruction(ref, jt.Instruction("increment"))
                        break
                    except jt.CircuitOpen:
                        await trio.sleep(0.5)
            assert trio.current_time() - started < 5


@pytest.mark.local_only
async def test_an_at_least_once_message_a_zombie_acknowledges_is_applied(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A paused owner (here: n1, whose agent n2 took over in the registry
    while n1 went on running it) that accepts an at-least-once message after
    the new owner replayed the durable mailbox must either refuse it or see it
    applied by the new owner; acknowledging it and leaving it unapplied loses
    an acknowledged instruction."""
    async with open_cluster("n1", "n2") as cluster:
        n1, n2 = cluster["n1"], cluster["n2"]
        ref = await n1.start_agent(Counter, "c")
        await n1.send_instruction(ref, jt.Instruction("increment", id="before"))
        assert await n1.call(ref, jt.Instruction("get")) == 1
        # n2 claims the agent at its epoch (as after n1's lease lapsed) and
        # adopts it; n1, paused meanwhile, still runs its incarnation.
        entry = await n2.registry.lookup("c")
        await n2.registry.take_over(attrs.evolve(entry.ref, node="n2"), epoch=entry.epoch)
        await wait_until(n2.agents, timeout=5, interval=0.1)
        assert await n2.call(ref, jt.Instruction("get")) == 1
        acknowledged = 1
        try:
            receipt = await n1.send_instruction(
                ref, jt.Instruction("increment", id="to-zombie"), delivery="at_least_once"
            )
        except jt.JidoError:
            pass  # refused: fine, the sender retries elsewhere
        else:
            assert receipt.status == "accepted"
            acknowledged += 1
        for i in range(3):
            await n2.send_instruction(
                ref, jt.Instruction("increment", id=f"after-{i}"), delivery="at_least_once"
            )
        await trio.sleep(5)
        assert await n2.call(ref, jt.Instruction("get")) == acknowledged + 3


@pytest.mark.local_only
async def test_migrating_an_agent_its_node_is_about_to_adopt_is_not_agent_not_found(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Issue 16, item 6: no AgentNotFound for an agent being taken over. Right
    after a node restarted under its name (a rolling restart), the registry
    names it for its agents before its failover scan has adopted them; a
    ``migrate`` then must wait for the adoption or raise ``Unreachable``."""
    async with open_cluster("n1", "n2") as cluster:
        n1 = cluster["n1"]
        # What a node leaves behind when it leaves and comes back: an entry
        # that names it for an agent it does not run yet.
        ref = jt.AgentRef(id="c", type=Counter.type, node="n2")
        await n1.registry.register(ref, {RESTART_KEY: "permanent"})
        try:
            moved = await n1.migrate("c", "n1")
        except jt.Unreachable:
            pass
        else:
            assert moved.node == "n1"
