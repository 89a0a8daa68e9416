"""A node process for the at-least-once crash test (run as a script).

``produce PATH N``: send instructions ``add(n=i)`` with ids ``op-i`` for
i in 0..N-1, at-least-once, one after the other, printing ``acked i`` after
each receipt. ``check PATH``: restart on the same SQLite file, let the agent
replay its log, print the agent's state as JSON.
"""

from __future__ import annotations

import json
import sys

import attrs
import trio

import jido_trio as jt


@attrs.frozen
class Ledger:
    count: int = 0
    total: int = 0
    highest: int = -1


class LedgerAgent(jt.Agent):
    type = "ledger"
    State = Ledger

    @jt.action("add")
    async def add(self, state: Ledger, n: int) -> Ledger:
        await trio.lowlevel.checkpoint()  # let messages pile up in the durable log
        return Ledger(state.count + 1, state.total + n, max(state.highest, n))

    @jt.action("get")
    async def get(self, state: Ledger) -> None:
        self.ctx.reply(attrs.asdict(state))


def config(path: str) -> jt.Config:
    return jt.Config(node_name="crashy", state="sqlite", plugin_options={"sqlite": {"path": path}})


async def produce(path: str, n: int) -> None:
    async with jt.open_node(config(path)) as node:
        ref = await node.start_agent(LedgerAgent, "ledger")
        for i in range(n):
            await node.send_instruction(
                ref, jt.Instruction("add", {"n": i}, id=f"op-{i}"), delivery="at_least_once"
            )
            print(f"acked {i}", flush=True)


async def check(path: str) -> None:
    async with jt.open_node(config(path)) as node:
        ref = await node.start_agent(LedgerAgent, "ledger")
        state = await node.call(ref, jt.Instruction("get"), timeout=30)
        pending = await node.state.read_log("mailbox/ledger")
        print(json.dumps({**state, "log_left": len(pending)}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "produce":
        trio.run(produce, sys.argv[2], int(sys.argv[3]))
    else:
        trio.run(check, sys.argv[2])
