"""A node process for the poison-message test (run as a script).

``send PATH``: queue ten good at-least-once messages and, among them, one
that kills the process (``os._exit``) when its action runs, printing
``acked ITEM`` for each receipt (those after the poison may never be sent:
the process dies when the agent reaches it). ``run PATH``:
start again on the same SQLite file (the agent replays its durable mailbox),
print the agent's state and its dead letters as JSON. Both die in the middle
while the poison message is still run.
"""

from __future__ import annotations

import json
import os
import sys

import attrs
import trio

import jido_trio as jt


@attrs.frozen
class Seen:
    items: tuple[str, ...] = ()


class Eater(jt.Agent):
    type = "poison-eater"
    State = Seen

    @jt.action("eat")
    async def eat(self, state: Seen, item: str) -> Seen:
        if item == "poison":
            os._exit(17)  # the whole process dies: no exception to catch
        return Seen((*state.items, item))

    @jt.action("get")
    async def get(self, state: Seen) -> None:
        self.ctx.reply(list(state.items))


def config(path: str) -> jt.Config:
    return jt.Config(node_name="eater", state="sqlite", plugin_options={"sqlite": {"path": path}})


async def send(path: str) -> None:
    async with jt.open_node(config(path)) as node:
        ref = await node.start_agent(Eater, "eater")
        items = [f"good-{i}" for i in range(5)] + ["poison"] + [f"good-{i}" for i in range(5, 10)]
        for item in items:
            instruction = jt.Instruction("eat", {"item": item}, id=f"eat-{item}")
            await node.send_instruction(ref, instruction, delivery="at_least_once")
            print(f"acked {item}", flush=True)
        await node.call(ref, jt.Instruction("get"), timeout=30)


async def run(path: str) -> None:
    async with jt.open_node(config(path)) as node:
        ref = await node.start_agent(Eater, "eater")
        items = await node.call(ref, jt.Instruction("get"), timeout=30)
        letters = [letter.payload.params["item"] for letter in await node.dead_letters(ref)]
        print(json.dumps({"items": items, "dead": letters}), flush=True)


if __name__ == "__main__":
    trio.run(send if sys.argv[1] == "send" else run, sys.argv[2])
