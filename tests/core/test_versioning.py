"""Versioned params: upcasting older instructions, refusing newer ones."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

import jido_trio as jt


@attrs.frozen
class AccountState:
    cents: int = 0


class Account(jt.Agent):
    """Version 1 of "deposit" took {"euros": n}; version 2 takes {"cents": n}."""

    type = "account"
    State = AccountState

    @jt.action("deposit", version=2)
    async def deposit(self, state: AccountState, cents: int) -> AccountState:
        return AccountState(state.cents + cents)

    @jt.upcaster("deposit", from_version=1)
    @staticmethod
    def deposit_v1(params: dict[str, Any]) -> dict[str, Any]:
        return {"cents": params["euros"] * 100}

    @jt.action("get")
    async def get(self, state: AccountState) -> None:
        self.ctx.reply(state.cents)


async def test_old_versions_are_upcast_and_current_pass() -> None:
    async with jt.open_node(name="n") as node:
        ref = await node.start_agent(Account, "acc")
        await node.send_instruction(ref, jt.Instruction("deposit", {"euros": 2}, version=1))
        await node.send_instruction(ref, jt.Instruction("deposit", {"cents": 5}, version=2))
        await node.send_instruction(ref, jt.Instruction("deposit", {"cents": 5}))
        assert await node.call(ref, jt.Instruction("get")) == 210


async def test_newer_version_is_refused_dead_lettered_and_node_keeps_running() -> None:
    dead: list[str] = []

    class Observer:
        @jt.hookimpl
        def jido_trio_message_dead_lettered(
            self, node: jt.Node, message: jt.Message, reason: str
        ) -> None:
            dead.append(reason)

    async with jt.open_node(name="n", plugins=[Observer()]) as node:
        ref = await node.start_agent(Account, "acc")
        future = jt.Instruction("deposit", {"cents": 1, "currency": "EUR"}, version=3, id="f1")
        with pytest.raises(jt.InvalidMessage, match="newer"):
            await node.send_instruction(ref, future)
        with pytest.raises(jt.InvalidMessage, match="newer"):
            await node.call(ref, future)
        assert len(dead) == 2 and "newer" in dead[0]
        letters = await node.dead_letters(ref)
        assert [m.payload.id for m in letters] == ["f1", "f1"]
        # The node and the agent are unharmed.
        await node.send_instruction(ref, jt.Instruction("deposit", {"cents": 7}))
        assert await node.call(ref, jt.Instruction("get")) == 7
        assert await node.check_agent_health(ref) is jt.Health.HEALTHY


async def test_missing_upcaster_and_failing_upcaster() -> None:
    class Strict(jt.Agent):
        type = "strict"

        @jt.action("op", version=3)
        async def op(self, state: Any, x: int) -> None:
            return None

        @jt.upcaster("op", from_version=2)
        @staticmethod
        def op_v2(params: dict[str, Any]) -> dict[str, Any]:
            return {"x": int(params["x"])}

    async with jt.open_node(name="n") as node:
        ref = await node.start_agent(Strict, "s")
        with pytest.raises(jt.InvalidMessage, match="no upcaster"):
            await node.send_instruction(ref, jt.Instruction("op", {"x": 1}, version=1))
        with pytest.raises(jt.InvalidMessage, match="failed"):
            await node.send_instruction(ref, jt.Instruction("op", {"x": "one"}, version=2))
        receipt = await node.send_instruction(ref, jt.Instruction("op", {"x": "4"}, version=2))
        assert receipt.status == "accepted"


async def test_versions_cross_nodes() -> None:
    options = {"local": {"hub": "versions"}}
    async with (
        jt.open_node(jt.Config(node_name="a", plugin_options=options)) as a,
        jt.open_node(jt.Config(node_name="b", plugin_options=options)) as b,
    ):
        ref = await a.start_agent(Account, "acc")
        await b.send_instruction(ref, jt.Instruction("deposit", {"euros": 1}, version=1))
        with pytest.raises(jt.InvalidMessage):
            await b.send_instruction(ref, jt.Instruction("deposit", {"cents": 1}, version=9))
        assert await b.call(ref, jt.Instruction("get")) == 100


async def test_redrive_dead_letters() -> None:
    class Flaky(jt.Agent):
        type = "flaky"
        State = AccountState
        broken = True

        @jt.action("add")
        async def add(self, state: AccountState, n: int) -> AccountState:
            if Flaky.broken:
                raise RuntimeError("dependency down")
            return AccountState(state.cents + n)

        @jt.action("get")
        async def get(self, state: AccountState) -> None:
            self.ctx.reply(state.cents)

    config = jt.Config(node_name="n", max_delivery_attempts=2, max_restarts=10)
    async with jt.open_node(config) as node:
        ref = await node.start_agent(Flaky, "f")
        await node.send_instruction(
            ref, jt.Instruction("add", {"n": 5}, id="a1"), delivery="at_least_once"
        )
        assert await node.call(ref, jt.Instruction("get")) == 0
        assert [m.payload.id for m in await node.dead_letters(ref)] == ["a1"]
        Flaky.broken = False
        receipts = await node.redrive_dead_letters(ref)
        assert [r.status for r in receipts] == ["accepted"]
        assert await node.call(ref, jt.Instruction("get")) == 5
        assert await node.dead_letters(ref) == []


def test_bad_declarations() -> None:
    with pytest.raises(TypeError):
        jt.action("x", version=0)
    with pytest.raises(TypeError):
        jt.upcaster("x", from_version=0)
    with pytest.raises(TypeError):
        jt.Instruction("x", version=0)
