"""The quick start: one node, one counter agent, every basic operation.

python examples/counter.py
"""

from __future__ import annotations

import attrs
import trio

import jido_trio as jt


@attrs.frozen
class CounterState:
    count: int = 0


class Counter(jt.Agent):
    type = "counter"  # agent type name
    State = CounterState  # initial state = State()

    @jt.action("increment")
    async def increment(self, state: CounterState, by: int = 1) -> CounterState:
        return attrs.evolve(state, count=state.count + by)  # the new state

    @jt.action("get")
    async def get(self, state: CounterState) -> None:
        self.ctx.reply(state.count)  # answer a call; returning None keeps the state


async def main() -> None:
    async with jt.open_node(name="n1") as node:  # no Config: local defaults
        ref = await node.start_agent(Counter, "counter-1")
        print("started:", ref)

        receipt = await node.send_instruction(ref, jt.Instruction("increment", {"by": 2}))
        print("receipt:", receipt.status)

        value = await node.call(ref, jt.Instruction("get"), timeout=1.0)
        print("call get ->", value)

        state = await node.query_agent(ref, "get_state", consistency="strong")
        print("query_agent ->", state)

        print("health ->", await node.check_agent_health(ref))
        print("lookup ->", await node.lookup("counter-1") == ref)

        await node.stop_agent(ref)
        print("after stop_agent ->", await node.check_agent_health(ref))


if __name__ == "__main__":
    trio.run(main)
