"""Heartbeats, UNREACHABLE, retries of idempotent remote operations (issue 5)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

import jido_trio as jt
from jido_trio.testing import faults
from jido_trio.testing import frame_kind
from jido_trio.testing import peer_reachable
from tests._agents import Counter

_hubs = itertools.count()


class HealthLog:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, jt.Health, jt.Health]] = []

    @jt.hookimpl
    def jido_trio_health_changed(
        self, node: jt.Node, ref: jt.AgentRef, old: jt.Health, new: jt.Health
    ) -> None:
        self.events.append((node.name, ref.id, old, new))


@asynccontextmanager
async def cluster(
    *names: str, plugins: list[Any] | None = None, **config: Any
) -> AsyncIterator[tuple[str, list[jt.Node]]]:
    hub = f"fd-{next(_hubs)}"
    async with trio.open_nursery() as nursery:
        nodes: list[jt.Node] = []
        done = trio.Event()

        async def run(name: str, task_status: trio.TaskStatus[jt.Node]) -> None:
            options = {"local": {"hub": hub}}
            cfg = jt.Config(node_name=name, plugin_options=options, **config)
            async with jt.open_node(cfg, plugins=plugins or []) as node:
                task_status.started(node)
                await done.wait()

        for name in names:
            nodes.append(await nursery.start(run, name))
        try:
            yield hub, nodes
        finally:
            done.set()


async def test_partition_is_detected_by_heartbeats(autojump_clock: trio.testing.MockClock) -> None:
    log = HealthLog()
    async with cluster(
        "a", "b", "c", plugins=[log], health_check_interval=1.0, failure_detection_threshold=3
    ) as (hub, (a, b, c)):
        ref = await b.start_agent(Counter, "on-b")
        await trio.sleep(1.5)  # every node has seen the others
        assert await a.check_agent_health(ref) is jt.Health.HEALTHY
        plan = faults(hub)
        plan.partition("a", "b")
        await trio.sleep(0.5)
        # Not yet declared: fewer than three missed heartbeats.
        assert peer_reachable(a, "b")
        await trio.sleep(3)
        assert not peer_reachable(a, "b")
        # Now answered at once, without waiting for a timeout.
        start = trio.current_time()
        assert await a.check_agent_health(ref) is jt.Health.UNREACHABLE
        with pytest.raises(jt.Unreachable):
            await a.call(ref, jt.Instruction("get"), timeout=30)
        assert trio.current_time() - start < 1.0
        # A third node is on both sides of nothing: it still reaches b.
        assert await c.check_agent_health(ref) is jt.Health.HEALTHY
        assert ("a", "on-b", jt.Health.HEALTHY, jt.Health.UNREACHABLE) in log.events
        plan.heal()
        await trio.sleep(1.5)
        assert await a.check_agent_health(ref) is jt.Health.HEALTHY
        assert await a.call(ref, jt.Instruction("get")) == 0
        assert ("a", "on-b", jt.Health.UNREACHABLE, jt.Health.HEALTHY) in log.events


async def test_idempotent_sends_are_retried_calls_are_not(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with cluster("a", "b", retry_attempts=3) as (hub, (a, b)):
        ref = await b.start_agent(Counter, "c")
        plan = faults(hub)

        def is_tell(frame: bytes) -> bool:
            return frame_kind(frame) == "tell"

        def is_call(frame: bytes) -> bool:
            return frame_kind(frame) == "call"

        # The first attempt is lost on the way: the send is retried and applied once.
        rule = plan.drop(source="a", dest="b", match=is_tell, limit=1)
        receipt = await a.send_instruction(ref, jt.Instruction("increment"), timeout=10)
        assert receipt.status == "accepted"
        assert rule.hits == 1
        assert await a.call(ref, jt.Instruction("get")) == 1
        # A call whose request is lost is not repeated behind the caller's back.
        lost = plan.drop(source="a", dest="b", match=is_call, limit=1)
        with pytest.raises(jt.CallTimeout):
            await a.call(ref, jt.Instruction("increment"), timeout=2)
        assert lost.hits == 1
        assert await a.call(ref, jt.Instruction("get")) == 1


async def test_duplicated_and_reordered_deliveries_keep_exactly_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with cluster("a", "b") as (hub, (a, b)):
        ref = await b.start_agent(Counter, "c")
        plan = faults(hub, seed=3)
        plan.duplicate(0.5, source="a", dest="b", copies=2)
        plan.delay(0.2, jitter=0.5, source="a", dest="b")
        for i in range(200):
            await a.send_instruction(
                ref, jt.Instruction("increment", id=f"i{i}"), delivery="at_least_once"
            )
        await plan.settle()
        plan.clear()
        assert await a.call(ref, jt.Instruction("get")) == 200
