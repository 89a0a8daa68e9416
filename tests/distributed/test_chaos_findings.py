"""Reproductions of what the chaos test (tests/distributed/nats/test_nats_chaos.py)
found, on the in-process hub. Each is marked ``xfail(strict=True)`` until
fixed: a fix turns it into an unexpected pass, and the marker goes.
"""

from __future__ import annotations

import pytest
import trio

import jido_trio as jt
from tests._agents import Counter
from tests._polling import wait_until


def _hub_config(hub: str, name: str, **config: object) -> jt.Config:
    options = {"local": {"hub": hub}, "memory": {"hub": hub}}
    return jt.Config(node_name=name, plugin_options=options, **config)  # type: ignore[arg-type]


@pytest.mark.local_only
@pytest.mark.xfail(
    strict=True,
    reason="chaos finding: a caller's breaker opened while the agent's node was away "
    "refuses the agent's new incarnation for breaker_reset_timeout (30 s)",
)
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
