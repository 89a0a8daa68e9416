"""The signal bus: patterns, priorities, backpressure, agents, nodes, replay, sensors."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

import jido_trio as jt
from jido_trio.testing import crash_agent
from jido_trio.testing import open_cluster

_n = itertools.count()


def sig(type: str, data: Any = None, **kw: Any) -> jt.Signal:
    return jt.Signal.new(type, "urn:test", data, **kw)


@attrs.frozen
class InboxState:
    types: tuple[str, ...] = ()
    causes: tuple[str, ...] = ()


class Listener(jt.Agent):
    type = "listener"
    State = InboxState

    @jt.on_signal("order.*")
    async def on_order(self, state: InboxState, signal: jt.Signal) -> InboxState:
        return InboxState(
            types=(*state.types, signal.type), causes=(*state.causes, signal.causation_id or "")
        )

    @jt.action("get")
    async def get(self, state: InboxState) -> None:
        self.ctx.reply(list(state.types))


class Emitter(jt.Agent):
    type = "emitter"

    @jt.action("ship")
    async def ship(self, state: Any, order: str) -> None:
        signal = await self.ctx.emit("order.shipped", {"order": order})
        message = self.ctx.message
        assert message is not None
        self.ctx.reply({"signal": signal.id, "message": message.id})


async def test_patterns_priorities_and_filters() -> None:
    async with jt.open_node(name="n") as node:
        bus = node.signals
        async with (
            bus.subscribe("order.*") as one,
            bus.subscribe("order.**") as many,
            bus.subscribe("**", filter=lambda s: s.data == "vip") as vip,
        ):
            assert await node.publish(sig("order.created", "x")) == 2
            assert await node.publish(sig("order.item.added", "vip")) == 2
            assert await node.publish(sig("user.created")) == 0
            assert (await one.receive()).type == "order.created"
            assert [(await many.receive()).type for _ in range(2)] == [
                "order.created",
                "order.item.added",
            ]
            assert (await vip.receive()).type == "order.item.added"
        with pytest.raises(ValueError):
            async with bus.subscribe("a..b"):
                pass


async def test_bounded_subscribers_drop_or_hold_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with jt.open_node(jt.Config(node_name="n", operation_timeout=2.0)) as node:
        async with node.signals.subscribe("t", buffer=2, overflow="drop") as dropping:
            for i in range(5):
                await node.publish(sig("t", i))
            assert dropping.dropped == 3
            assert [(await dropping.receive()).data for _ in range(2)] == [0, 1]
        async with node.signals.subscribe("t", buffer=1) as holding:
            await node.publish(sig("t", 1))
            start = trio.current_time()
            assert await node.publish(sig("t", 2)) == 0  # held back for the deadline
            assert trio.current_time() - start == pytest.approx(2.0)
            assert holding.dropped == 1


async def test_agents_receive_signals_as_instructions_once() -> None:
    async with jt.open_node(name="n") as node:
        ref = await node.start_agent(Listener, "l")
        emitter = await node.start_agent(Emitter, "e")
        once = sig("order.created")
        await node.publish(once)
        await node.publish(once)  # the same signal again: applied once
        await node.publish(sig("user.created"))
        ids = await node.call(emitter, jt.Instruction("ship", {"order": "o-1"}))
        assert await node.call(ref, jt.Instruction("get")) == ["order.created", "order.shipped"]
        state = await node.query_agent(ref)
        # The causation chain: the instruction to "ship" caused the signal.
        assert state.causes[-1] == ids["message"]
        await crash_agent(node, ref)
        await node.publish(sig("order.paid"))
        assert (await node.call(ref, jt.Instruction("get")))[-1] == "order.paid"
        await node.stop_agent(ref)
        assert await node.publish(sig("order.lost")) == 0


class TwoHandlers(Listener):
    type = "two-handlers"

    @jt.on_signal("order.created")
    async def on_created(self, state: InboxState, signal: jt.Signal) -> InboxState:
        return InboxState(types=(*state.types, "created:" + signal.type), causes=state.causes)


async def test_every_matching_handler_of_an_agent_runs_once() -> None:
    async with jt.open_node(name="n") as node:
        ref = await node.start_agent(TwoHandlers, "two")
        once = sig("order.created")
        assert await node.publish(once) == 2
        await node.publish(once)  # again: each handler still applies it once
        assert sorted(await node.call(ref, jt.Instruction("get"))) == [
            "created:order.created",
            "order.created",
        ]


async def test_a_filter_that_raises_skips_only_its_own_subscriber(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with jt.open_node(name="n") as node:
        bus = node.signals
        async with (
            bus.subscribe("order.*", filter=lambda s: s.data["total"] > 100) as picky,
            bus.subscribe("order.*") as plain,
        ):
            assert await node.publish(sig("order.created", None)) == 1  # not a TypeError
            assert (await plain.receive()).type == "order.created"
            assert await node.publish(sig("order.paid", {"total": 500})) == 2
            assert (await picky.receive()).type == "order.paid"
        assert "raised TypeError" in caplog.text


async def test_signals_cross_nodes() -> None:
    async with open_cluster("a", "b") as cluster:
        listener = await cluster["b"].start_agent(Listener, "l")
        async with cluster["b"].signals.subscribe("order.**") as sub:
            await cluster["a"].publish(sig("order.created", {"n": 1}))
            received = await sub.receive()
        assert received.data == {"n": 1}
        assert await cluster["a"].call(listener, jt.Instruction("get")) == ["order.created"]


async def test_durable_subscription_replays_after_restart(tmp_path: Path) -> None:
    config = jt.Config(
        node_name="n", state="sqlite", plugin_options={"sqlite": {"path": str(tmp_path / "s.db")}}
    )
    async with jt.open_node(config) as node:
        async with node.signals.subscribe("audit.*", durable="auditor") as sub:
            for i in range(5):
                await node.publish(sig("audit.event", i))
            assert [(await sub.receive()).data for _ in range(2)] == [0, 1]
        for i in range(5, 8):  # nobody listening: still kept for "auditor"
            await node.publish(sig("audit.event", i))
        await node.publish(sig("other.event", 99))
    async with (
        jt.open_node(config) as node,  # a new node on the same file
        node.signals.subscribe("audit.*", durable="auditor") as sub,
    ):
        # 1 again: its reader left before coming back for more (at least once).
        assert [(await sub.receive()).data for _ in range(7)] == [1, 2, 3, 4, 5, 6, 7]
        await node.publish(sig("audit.event", 8))
        assert (await sub.receive()).data == 8


async def test_sensors(autojump_clock: trio.testing.MockClock) -> None:
    async with jt.open_node(jt.Config(node_name="n", max_seconds=0.5)) as node:
        async with (
            node.signals.subscribe("jido.sensor.heartbeat") as beats,
            node.signals.subscribe("jido.health.changed") as health,
        ):
            await node.start_sensor("heartbeat", jt.heartbeat_sensor(1.0))
            await node.start_sensor("health", jt.health_sensor(0.1))
            ref = await node.start_agent(Listener, "l")
            start = trio.current_time()
            first = await beats.receive()
            second = await beats.receive()
            assert (first.data["beat"], second.data["beat"]) == (1, 2)
            assert trio.current_time() - start == pytest.approx(2.0, abs=0.1)
            change = await health.receive()
            assert change.subject == "l" and change.data["new"] == "healthy"
            await crash_agent(node, ref)
            seen = [(await health.receive()).data["new"] for _ in range(2)]
            assert seen == ["degraded", "healthy"]
        tree = node.supervision_tree()
        assert {c.id for c in tree.children} >= {"heartbeat", "health", "l"}
