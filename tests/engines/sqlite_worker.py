"""A jido_trio node on a SQLite state file, run as a separate OS process.

Used by tests/test_sqlite.py to prove that what was acknowledged survives
SIGKILL. Usage::

    python sqlite_worker.py run PATH LIMIT     # count up; print acknowledgements
    python sqlite_worker.py check PATH         # print the persisted state as JSON

``run`` prints ``ready <count>`` once the counter agent has resumed its
persisted state, then, from a few concurrent tasks, ``ack <count>`` after each
``call`` returned (the agent commits its state before a call returns),
``log <seq> <data>`` after each append to the log ``events`` returned, and
``sent <instruction id>`` after each ``delivery="at_least_once"`` increment was
accepted (it is in the agent's durable mailbox log by then).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import attrs
import trio

import jido_trio as jt

#: Upper bound on the whole run, so an orphaned worker always ends.
RUN_LIMIT_SECONDS = 60.0
TASKS = 4


@attrs.frozen
class CounterState:
    count: int = 0


class Counter(jt.Agent):
    type = "counter"
    State = CounterState

    @jt.action("increment")
    async def increment(self, state: CounterState) -> CounterState:
        new = attrs.evolve(state, count=state.count + 1)
        self.ctx.reply(new.count)
        return new

    @jt.action("get")
    async def get(self, state: CounterState) -> None:
        self.ctx.reply(state.count)


def emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def config(path: str) -> jt.Config:
    return jt.Config(node_name="worker", state="sqlite", plugin_options={"sqlite": {"path": path}})


async def run(path: str, limit: int) -> None:
    async with jt.open_node(config(path)) as node:
        ref = await node.start_agent(Counter, "counter-1")
        emit(f"ready {await node.call(ref, jt.Instruction('get'))}")
        remaining = limit

        async def client(n: int) -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                count = await node.call(ref, jt.Instruction("increment"))
                emit(f"ack {count}")
                data = f"{n}:{count}"
                seq = await node.state.append("events", data.encode())
                emit(f"log {seq} {data}")

        async def sender() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                receipt = await node.send_instruction(
                    ref, jt.Instruction("increment"), delivery="at_least_once"
                )
                emit(f"sent {receipt.instruction_id}")

        async with trio.open_nursery() as nursery:
            for n in range(TASKS):
                nursery.start_soon(client, n)
            nursery.start_soon(sender)
        emit("done")


async def check(path: str) -> None:
    async with jt.open_node(config(path)) as node:
        ref = await node.start_agent(Counter, "counter-1")
        await node.call(ref, jt.Instruction("get"))  # after the replayed mailbox
        state: Any = await node.query_agent(ref)
        log = await node.state.read_log("events")
        emit(json.dumps({"count": state.count, "log": [[e.seq, e.data.decode()] for e in log]}))


async def main(argv: list[str]) -> None:
    with trio.fail_after(RUN_LIMIT_SECONDS):
        if argv[0] == "run":
            await run(argv[1], int(argv[2]))
        elif argv[0] == "check":
            await check(argv[1])
        else:
            raise SystemExit(f"unknown command {argv[0]!r}")


if __name__ == "__main__":
    trio.run(main, sys.argv[1:])
