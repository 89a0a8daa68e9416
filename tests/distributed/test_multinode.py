"""Several nodes in one process talking through the in-process hub."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

import jido_trio as jt
from tests._agents import Counter
from tests._agents import CounterState

_hubs = itertools.count()


@asynccontextmanager
async def two_nodes() -> AsyncIterator[tuple[jt.Node, jt.Node]]:
    hub = f"hub-{next(_hubs)}"
    options = {"local": {"hub": hub}, "memory": {"hub": hub}}
    async with (
        jt.open_node(jt.Config(node_name="a", plugin_options=options)) as a,
        jt.open_node(jt.Config(node_name="b", plugin_options=options)) as b,
    ):
        yield a, b


async def test_location_transparent_operations() -> None:
    async with two_nodes() as (a, b):
        ref = await a.start_agent(Counter, "c1")
        assert ref.node == "a"
        receipt = await b.send_instruction(ref, jt.Instruction("increment", {"by": 3}))
        assert receipt.status == "accepted"
        assert await b.call(ref, jt.Instruction("get")) == 3
        assert await b.query_agent(ref) == CounterState(count=3)
        assert await b.query_agent(ref, consistency="eventual") == CounterState(count=3)
        assert await b.check_agent_health(ref) is jt.Health.HEALTHY
        found = await b.lookup("c1")
        assert found == ref and found.node == "a"
        # A ref without a node is resolved through the shared registry.
        loose = jt.AgentRef(id="c1", type="counter")
        assert await b.call(loose, jt.Instruction("get")) == 3


async def test_idempotency_across_nodes() -> None:
    async with two_nodes() as (a, b):
        ref = await a.start_agent(Counter, "c1")
        instruction = jt.Instruction("increment", id="once")
        assert (await b.send_instruction(ref, instruction)).status == "accepted"
        assert (await b.send_instruction(ref, instruction)).status == "already_processed"
        assert (await a.send_instruction(ref, instruction)).status == "already_processed"
        with pytest.raises(jt.AlreadyProcessed):
            await b.call(ref, instruction)
        assert await b.call(ref, jt.Instruction("get")) == 1


async def test_remote_errors_keep_their_kind() -> None:
    async with two_nodes() as (a, b):
        ref = await a.start_agent(Counter, "c1")
        with pytest.raises(jt.ActionError) as info:
            await b.call(ref, jt.Instruction("boom", {"text": "remote bad"}))
        assert info.value.remote_type == "ValueError"
        assert info.value.remote_message == "remote bad"
        with pytest.raises(jt.ActionNotFound):
            await b.call(ref, jt.Instruction("missing"))
        with pytest.raises(jt.InvalidMessage):
            await b.send_instruction(ref, jt.Instruction("increment", {"nope": 1}))
        ghost = jt.AgentRef(id="ghost", type="counter", node="a")
        with pytest.raises(jt.AgentNotFound):
            await b.send_instruction(ghost, jt.Instruction("increment"))
        assert await b.check_agent_health(ghost) is jt.Health.NOT_FOUND
        unknown_node = jt.AgentRef(id="x", type="counter", node="zeta")
        with pytest.raises(jt.Unreachable) as unreachable:
            await b.call(unknown_node, jt.Instruction("get"))
        assert not isinstance(unreachable.value, jt.RemoteNotSupported)
        assert await b.check_agent_health(unknown_node) is jt.Health.UNREACHABLE


async def test_remote_call_timeout(autojump_clock: trio.testing.MockClock) -> None:
    async with two_nodes() as (a, b):
        ref = await a.start_agent(Counter, "c1")
        with pytest.raises(jt.CallTimeout):
            await b.call(ref, jt.Instruction("slow", {"seconds": 30}), timeout=2)


async def test_agents_call_across_nodes_with_causation() -> None:
    async with two_nodes() as (a, b):
        x = await a.start_agent(Counter, "x")
        y = await b.start_agent(Counter, "y")
        seen = await a.call(x, jt.Instruction("ask", {"to": y}))
        assert seen["node"] == "b"
        assert seen["sender"] == x
        assert seen["causation_id"] is not None
        assert await a.call(x, jt.Instruction("forward", {"to": y, "by": 2})) == "accepted"
        assert await a.call(y, jt.Instruction("get")) == 2


async def test_node_that_left_is_unreachable() -> None:
    hub = f"hub-{next(_hubs)}"
    options = {"local": {"hub": hub}}
    async with jt.open_node(jt.Config(node_name="stay", plugin_options=options)) as stay:
        async with jt.open_node(jt.Config(node_name="leave", plugin_options=options)) as leave:
            ref = await leave.start_agent(Counter, "c")
            assert await stay.call(ref, jt.Instruction("get")) == 0
        with pytest.raises(jt.Unreachable):
            await stay.call(ref, jt.Instruction("get"))
        assert await stay.check_agent_health(ref) is jt.Health.UNREACHABLE
        # Its agents keep their entries for a survivor to take over (a node
        # that leaves hands its permanent agents on: tests/distributed/test_ownership.py).
        assert (await stay.lookup("c")).node in ("leave", "stay")


async def test_same_id_cannot_run_on_two_nodes() -> None:
    async with two_nodes() as (a, b):
        await a.start_agent(Counter, "only")
        with pytest.raises(jt.AgentAlreadyExists):
            await b.start_agent(Counter, "only")
        assert [r.id for r in b.agents()] == []


async def test_malformed_remote_input_is_refused() -> None:
    async with two_nodes() as (a, b):
        ref = await a.start_agent(Counter, "c1")
        for garbage in (b"", b"\xc1", b"\x93\xa4tell\xc4\x00\x00"):
            reply = await b.transport.request("a", garbage, timeout=1)
            assert b"InvalidMessage" in reply
        assert await b.call(ref, jt.Instruction("get")) == 0
