"""Agent classes shared by the test modules."""

from __future__ import annotations

from typing import Any

import attrs
import trio

import jido_trio as jt


@attrs.frozen
class CounterState:
    count: int = 0
    log: tuple[str, ...] = ()


class Counter(jt.Agent):
    type = "counter"
    State = CounterState

    @jt.action("increment")
    async def increment(self, state: CounterState, by: int = 1) -> CounterState:
        return attrs.evolve(state, count=state.count + by)

    @jt.action("append")
    async def append(self, state: CounterState, item: str) -> CounterState:
        return attrs.evolve(state, log=(*state.log, item))

    @jt.action("get")
    async def get(self, state: CounterState) -> None:
        self.ctx.reply(state.count)

    @jt.action("boom")
    async def boom(self, state: CounterState, text: str = "kaboom") -> None:
        raise ValueError(text)

    @jt.action("slow")
    async def slow(self, state: CounterState, seconds: float) -> None:
        await trio.sleep(seconds)
        self.ctx.reply("done")

    @jt.action("whoami")
    async def whoami(self, state: CounterState) -> None:
        message = self.ctx.message
        assert message is not None
        self.ctx.reply(
            {
                "ref": self.ctx.ref,
                "node": self.ctx.node_name,
                "sender": message.sender,
                "trace_id": message.trace_id,
                "causation_id": message.causation_id,
            }
        )

    @jt.action("forward")
    async def forward(self, state: CounterState, to: jt.AgentRef, by: int = 1) -> None:
        receipt = await self.ctx.send(to, jt.Instruction("increment", {"by": by}))
        self.ctx.reply(receipt.status)

    @jt.action("ask")
    async def ask(self, state: CounterState, to: jt.AgentRef) -> None:
        self.ctx.reply(await self.ctx.call(to, jt.Instruction("whoami")))


def total(values: list[Any]) -> int:
    return sum(int(v) for v in values)
