"""triotp measurements, run in triotp's own virtualenv: ``gen_server.call``
round trips per second, and the Savina workloads (``--savina NAME``).

triotp pins an old trio, so this script runs under a separate interpreter and
imports nothing from jido_trio and nothing from bench/ but ``savina_spec``
(plain Python: the Savina sizes and result checks). It prints one JSON object.

The Savina actors are gen_servers, addressed by registered name; they talk
with ``gen_server.cast``. A triotp mailbox is an unbuffered memory channel, so
a cast waits until its receiver takes it: Big, where two actors may ping each
other at the same moment, deadlocks (both wait in ``cast``), and is reported
as not expressible.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib import metadata
from typing import Any

import trio
import trio.testing
from savina_spec import COLOURS
from savina_spec import Done
from savina_spec import check
from savina_spec import complement
from savina_spec import compute
from savina_spec import sizes
from triotp import gen_server
from triotp import mailbox

#: Savina workloads triotp cannot run, and why.
NOT_EXPRESSIBLE = {
    "big": "triotp mailboxes are unbuffered: two actors pinging each other at once "
    "both wait in gen_server.cast forever (deadlocked when tried)",
}


# gen_server callbacks: this module is the server module of the call benchmark.
async def init(_arg):
    return 0


async def handle_call(message, _caller, state):
    return gen_server.Reply(payload=state), state


async def call_rates(rounds: int, reps: int, warmup: int) -> list[float]:
    mailbox._init()
    module = sys.modules[__name__]
    samples: list[float] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gen_server.start, module, None, "bench")
        await trio.testing.wait_all_tasks_blocked()
        for _ in range(warmup):
            await gen_server.call("bench", "get")
        for _ in range(reps):
            t0 = time.perf_counter()
            for _ in range(rounds):
                await gen_server.call("bench", "get")
            samples.append(rounds / (time.perf_counter() - t0))
        nursery.cancel_scope.cancel()
    return samples


# ---------------------------------------------------------------- Savina
#
# Each class is a gen_server callback module (gen_server only looks up
# ``init``, ``handle_cast`` and ``__name__``); its state is a plain object
# created by the driver, so the driver can read it after the run.

NO_REPLY = gen_server.NoReply()


class State:
    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)


class Server:
    @staticmethod
    async def init(state: State) -> State:
        return state


class Ping(Server):
    @staticmethod
    async def handle_cast(message: Any, state: State) -> tuple[Any, State]:
        kind, arg = message
        if kind == "start":  # arg: (pong, n)
            pong, state.n = arg
            state.pongs = 0
            await gen_server.cast(pong, ("ping", "ping"))
        else:  # "pong", arg: the pong's name
            state.pongs += 1
            if state.pongs == state.n:
                state.done.set(pongs=state.pongs)
            else:
                await gen_server.cast(arg, ("ping", "ping"))
        return NO_REPLY, state


class Pong(Server):
    @staticmethod
    async def handle_cast(message: Any, state: State) -> tuple[Any, State]:
        state.count += 1
        await gen_server.cast(message[1], ("pong", "pong"))
        return NO_REPLY, state


class RingMember(Server):
    @staticmethod
    async def handle_cast(hops: int, state: State) -> tuple[Any, State]:
        if hops == 0:
            state.done.set(at=state.index)
        else:
            await gen_server.cast(state.next, hops - 1)
        return NO_REPLY, state


class Counter(Server):
    @staticmethod
    async def handle_cast(message: Any, state: State) -> tuple[Any, State]:
        kind, reply_to = message
        if kind == "increment":
            state.count += 1
        else:  # "retrieve"
            await gen_server.cast(reply_to, ("total", state.count))
            state.count = 0
        return NO_REPLY, state


class Producer(Server):
    @staticmethod
    async def handle_cast(message: Any, state: State) -> tuple[Any, State]:
        kind, arg = message
        if kind == "start":  # arg: (counter, n)
            counter, n = arg
            for _ in range(n):
                await gen_server.cast(counter, ("increment", None))
            await gen_server.cast(counter, ("retrieve", "producer"))
        else:  # "total"
            state.done.set(count=arg)
        return NO_REPLY, state


class Sink(Server):
    @staticmethod
    async def handle_cast(value: int, state: State) -> tuple[Any, State]:
        state.arrived += 1
        state.total += value
        if state.arrived == state.expected:
            state.done.set(done=state.arrived, total=state.total)
        return NO_REPLY, state


class Sender(Server):
    @staticmethod
    async def handle_cast(message: Any, state: State) -> tuple[Any, State]:
        workers, messages = message
        for _ in range(messages):
            for worker in workers:
                await gen_server.cast(worker, "work")
        return NO_REPLY, state


class Worker(Server):
    @staticmethod
    async def handle_cast(message: Any, state: State) -> tuple[Any, State]:
        compute()
        state.count += 1
        if state.count == state.expected:
            await gen_server.cast("sink", state.count)
            state.count = 0
        return NO_REPLY, state


class OneShot:
    @staticmethod
    async def init(task_status: Any) -> None:
        task_status.started()  # registered: it can be sent to

    @staticmethod
    async def handle_cast(sink: str, state: None) -> tuple[Any, None]:
        compute()
        await gen_server.cast(sink, 1)
        return gen_server.Stop(), state


async def start_oneshot(name: str, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    await gen_server.start(OneShot, task_status, name)


class Mall(Server):
    @staticmethod
    async def handle_cast(message: Any, state: State) -> tuple[Any, State]:
        kind, arg = message
        if kind == "meet":  # arg: (colour, sender)
            colour, sender = arg
            if state.left == 0:
                await gen_server.cast(sender, ("exit", None))
            elif state.waiting is None:
                state.waiting = sender
            else:
                await gen_server.cast(state.waiting, ("meet", (colour, sender)))
                state.left -= 1
                state.waiting = None
        elif kind == "exited":
            state.exited += 1
            state.meetings += arg
            if state.exited == state.chameneos:
                state.done.set(exited=state.exited, meetings=state.meetings)
        else:  # "start", arg: (meetings, chameneos)
            state.left, everyone = arg
            state.chameneos = len(everyone)
            for i, chameneo in enumerate(everyone):
                await gen_server.cast(chameneo, ("start", i % COLOURS))
        return NO_REPLY, state


class Chameneo(Server):
    @staticmethod
    async def handle_cast(message: Any, state: State) -> tuple[Any, State]:
        kind, arg = message
        if kind == "meet":  # arg: (colour, sender)
            state.colour = complement(state.colour, arg[0])
            state.meetings += 1
            await gen_server.cast(arg[1], ("change", state.colour))
        elif kind == "change":
            state.colour = arg
            state.meetings += 1
        elif kind == "start":
            state.colour, state.meetings = arg, 0
        else:  # "exit"
            await gen_server.cast("mall", ("exited", state.meetings))
            return NO_REPLY, state
        await gen_server.cast("mall", ("meet", (state.colour, state.name)))
        return NO_REPLY, state


async def run_servers(servers: list[tuple[Any, State, str]], done: Done, kickoff: Any) -> float:
    """Start the gen_servers (before the clock), time ``kickoff`` until
    ``done``, then cancel them."""
    mailbox._init()
    async with trio.open_nursery() as nursery:
        for module, state, name in servers:
            nursery.start_soon(gen_server.start, module, state, name)
        await trio.testing.wait_all_tasks_blocked()
        t0 = time.perf_counter()
        await kickoff()
        await done.event.wait()
        elapsed = time.perf_counter() - t0
        nursery.cancel_scope.cancel()
    return elapsed


async def pingpong(size: dict[str, int]) -> tuple[float, dict[str, Any]]:
    done = Done(trio.Event())
    pong = State(count=0)
    servers = [(Ping, State(done=done, n=0, pongs=0), "ping"), (Pong, pong, "pong")]
    elapsed = await run_servers(
        servers, done, lambda: gen_server.cast("ping", ("start", ("pong", size["n"])))
    )
    return elapsed, {**done.result, "pings": pong.count}


async def threadring(size: dict[str, int]) -> tuple[float, dict[str, Any]]:
    done = Done(trio.Event())
    actors = size["actors"]
    servers = [
        (RingMember, State(index=i, next=f"ring-{(i + 1) % actors}", done=done), f"ring-{i}")
        for i in range(actors)
    ]
    elapsed = await run_servers(servers, done, lambda: gen_server.cast("ring-0", size["hops"]))
    return elapsed, done.result


async def counting(size: dict[str, int]) -> tuple[float, dict[str, Any]]:
    done = Done(trio.Event())
    servers = [
        (Producer, State(done=done), "producer"),
        (Counter, State(count=0), "counter"),
    ]
    start = ("start", ("counter", size["n"]))
    elapsed = await run_servers(servers, done, lambda: gen_server.cast("producer", start))
    return elapsed, done.result


async def fjthroughput(size: dict[str, int]) -> tuple[float, dict[str, Any]]:
    done = Done(trio.Event())
    workers = [f"worker-{i}" for i in range(size["actors"])]
    servers = [
        (Sink, State(expected=size["actors"], arrived=0, total=0, done=done), "sink"),
        (Sender, State(), "sender"),
        *((Worker, State(expected=size["messages"], count=0), name) for name in workers),
    ]
    start = (workers, size["messages"])
    elapsed = await run_servers(servers, done, lambda: gen_server.cast("sender", start))
    return elapsed, done.result


async def fjcreate(size: dict[str, int]) -> tuple[float, dict[str, Any]]:
    done = Done(trio.Event())
    mailbox._init()
    async with trio.open_nursery() as nursery:
        sink = State(expected=size["actors"], arrived=0, total=0, done=done)
        nursery.start_soon(gen_server.start, Sink, sink, "sink")
        await trio.testing.wait_all_tasks_blocked()
        t0 = time.perf_counter()
        for i in range(size["actors"]):
            name = f"oneshot-{i}"
            await nursery.start(start_oneshot, name)
            await gen_server.cast(name, "sink")
        await done.event.wait()
        elapsed = time.perf_counter() - t0
        nursery.cancel_scope.cancel()
    return elapsed, done.result


async def chameneos(size: dict[str, int]) -> tuple[float, dict[str, Any]]:
    done = Done(trio.Event())
    names = [f"chameneo-{i}" for i in range(size["chameneos"])]
    mall = State(left=0, waiting=None, chameneos=0, exited=0, meetings=0, done=done)
    servers = [
        (Mall, mall, "mall"),
        *((Chameneo, State(name=name, colour=0, meetings=0), name) for name in names),
    ]
    start = ("start", (size["meetings"], names))
    elapsed = await run_servers(servers, done, lambda: gen_server.cast("mall", start))
    return elapsed, done.result


SAVINA = {
    "pingpong": pingpong,
    "threadring": threadring,
    "counting": counting,
    "fjthroughput": fjthroughput,
    "fjcreate": fjcreate,
    "chameneos": chameneos,
}


async def savina(name: str, size: dict[str, int], reps: int) -> list[float]:
    """A warm-up, then ``reps`` runs, each checked; times in ms."""
    samples = []
    for rep in range(reps + 1):
        elapsed, result = await SAVINA[name](size)
        check(name, size, result)
        if rep:
            samples.append(elapsed * 1000)
    return samples


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--savina", help="run this Savina workload")
    parser.add_argument("--quick", action="store_true", help="(--savina) smoke-test sizes")
    args = parser.parse_args()
    versions = {
        "triotp": metadata.version("triotp"),
        "trio": metadata.version("trio"),
        "python": sys.version.split()[0],
    }
    if args.savina in NOT_EXPRESSIBLE:
        print(json.dumps({"unsupported": NOT_EXPRESSIBLE[args.savina], "versions": versions}))
        sys.exit(0)
    if args.savina:
        samples = trio.run(savina, args.savina, sizes(args.quick)[args.savina], args.reps)
    else:
        samples = trio.run(call_rates, args.rounds, args.reps, 1000)
    print(json.dumps({"samples": samples, "versions": versions}))
