"""A call that could never be answered is refused at once (issue 17, item 6):
an agent handles one message at a time, so A calling B while B, for that
call, calls A would wait until the deadline. The chain of waiting agents
travels with the call, across nodes too."""

from __future__ import annotations

import trio
import trio.testing

import jido_trio as jt
from tests.distributed.test_multinode import two_nodes


class Caller(jt.Agent):
    """``ask``: call ``to`` with ``then`` (the next hop); ``me``: call itself."""

    type = "cycle-caller"

    @jt.action("ask")
    async def ask(
        self, state: None, to: jt.AgentRef, then: dict[str, object] | None = None
    ) -> None:
        params = {} if then is None else then
        self.ctx.reply(await self.ctx.call(to, jt.Instruction("ask" if then else "hello", params)))

    @jt.action("hello")
    async def hello(self, state: None) -> None:
        self.ctx.reply(f"hello from {self.ctx.ref.id}")

    @jt.action("me")
    async def me(self, state: None) -> None:
        self.ctx.reply(await self.ctx.call(self.ctx.ref, jt.Instruction("hello")))

    @jt.action("catch")
    async def catch(self, state: None, to: jt.AgentRef) -> None:
        try:
            await self.ctx.call(to, jt.Instruction("hello"))
        except jt.CallCycle as exc:
            self.ctx.reply(f"refused: {exc}")


def cause_of(exc: jt.ActionError) -> BaseException | None:
    """The innermost cause of a failed call."""
    cause = exc.__cause__
    while isinstance(cause, jt.ActionError) and cause.__cause__ is not None:
        cause = cause.__cause__
    return cause


async def test_calling_itself_is_refused_at_once(autojump_clock: trio.testing.MockClock) -> None:
    async with jt.open_node(name="n") as node:
        a = await node.start_agent(Caller, "a")
        started = trio.current_time()
        try:
            await node.call(a, jt.Instruction("me"), timeout=30)
        except jt.ActionError as exc:
            assert isinstance(exc.__cause__, jt.CallCycle)
            assert "a -> a" in str(exc.__cause__)
        else:
            raise AssertionError("a call to itself was answered")
        assert trio.current_time() - started < 1


async def test_a_cycle_through_another_agent_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with jt.open_node(name="n") as node:
        a = await node.start_agent(Caller, "a")
        b = await node.start_agent(Caller, "b")
        started = trio.current_time()
        # a asks b, b asks a back: the innermost call is refused.
        back = {"to": a}
        try:
            await node.call(a, jt.Instruction("ask", {"to": b, "then": back}), timeout=30)
        except jt.ActionError as exc:
            cause = cause_of(exc)
            assert isinstance(cause, jt.CallCycle), cause
        else:
            raise AssertionError("a cycle of calls was answered")
        assert trio.current_time() - started < 1
        # Both agents are still serving, and a chain without a cycle works.
        c = await node.start_agent(Caller, "c")
        assert await node.call(a, jt.Instruction("ask", {"to": b, "then": {"to": c}})) == (
            "hello from c"
        )


async def test_the_action_can_handle_the_refusal() -> None:
    async with jt.open_node(name="n") as node:
        a = await node.start_agent(Caller, "a")
        reply = await node.call(a, jt.Instruction("catch", {"to": a}))
        assert reply.startswith("refused: agent 'a' cannot call 'a'")


async def test_a_cycle_across_nodes_is_refused() -> None:
    async with two_nodes() as (node_a, node_b):
        a = await node_a.start_agent(Caller, "a")
        b = await node_b.start_agent(Caller, "b")
        with trio.fail_after(5):
            try:
                await node_a.call(a, jt.Instruction("ask", {"to": b, "then": {"to": a}}))
            except jt.ActionError as exc:
                # What crosses back from node b is the error's type and text.
                assert "CallCycle: agent 'b' cannot call 'a': the calls a -> b -> a" in str(exc)
            else:
                raise AssertionError("a cycle of calls across nodes was answered")
