"""In-process measurements: jido_trio and the raw trio baselines it is compared with.

Each sub-command runs one family of measurements in this (fresh) process and
prints one JSON object on its last line of stdout: ``{"metrics": {name:
{"unit": ..., "samples": [...], ...}}}``. :mod:`bench.run` starts one process
per family, so every family gets a clean heap and every memory figure its own
process. Inside a family, the jido_trio measurement and its baselines are
*interleaved* repetition by repetition, so machine noise hits both alike.

Usage (normally through ``nox -s bench``)::

    python bench/cases.py throughput --n 50000 --reps 5
    python bench/cases.py roundtrip --n 20000 --reps 5
    python bench/cases.py spawn --kind jido --n 100000
    python bench/cases.py spawn --kind jido --bulk --n 100000   # node.start_agents
    python bench/cases.py restart --n 300 --reps 5
    python bench/cases.py durable --n 4000 --senders 64 --agents 8 --reps 3
    python bench/cases.py throughput --profile /tmp/tell.pstats   # cProfile the jido part
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import math
import os
import sqlite3
import sys
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator
from collections.abc import Awaitable
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio
import trio.testing

import jido_trio as jt
from jido_trio.testing import crash_agent

perf = time.perf_counter


# ---------------------------------------------------------------- the agent


@attrs.frozen
class CounterState:
    count: int = 0


class Counter(jt.Agent):
    """The smallest useful agent: a state change per tell, a reply per call."""

    type = "bench-counter"
    State = CounterState

    @jt.action("increment")
    async def increment(self, state: CounterState, by: int = 1) -> CounterState:
        # A new state built directly: the agent's own work stays about as small
        # as the raw consumer's ``got += 1`` (attrs.evolve would add ~1 us).
        return CounterState(count=state.count + by)

    @jt.action("get")
    async def get(self, state: CounterState) -> None:
        self.ctx.reply(state.count)


GET = "get"


def _instr(action: str, params: dict[str, Any] | None = None) -> jt.Instruction:
    return jt.Instruction(action, params)


# ---------------------------------------------------------------- helpers


class Profiler:
    """Optional cProfile around the jido_trio part of a family only."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.prof = cProfile.Profile() if path else None

    def __enter__(self) -> Profiler:
        if self.prof is not None:
            self.prof.enable()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.prof is not None:
            self.prof.disable()

    def dump(self) -> None:
        if self.prof is not None and self.path:
            self.prof.dump_stats(self.path)


def metric(unit: str, samples: list[float], **extra: Any) -> dict[str, Any]:
    return {"unit": unit, "samples": samples, **extra}


def vm_rss() -> int:
    """Resident set size of this process in bytes (Linux /proc, else getrusage peak)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def settle() -> None:
    gc.collect()


# ---------------------------------------------------------------- the floor


class _FloorReply:
    __slots__ = ("task", "value")

    def __init__(self) -> None:
        self.task: Any = None
        self.value: Any = None


def _no_abort(_: object) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED


class FloorActor:
    """The smallest actor one can write on Trio's low-level API, as a floor
    under (a) and (b): a deque for a mailbox, one parked task woken with
    ``reschedule``, an ``async def`` action looked up and called per message,
    and for a call a reply slot the caller parks on. None of what an agent
    must have (ids, envelope, receipt, dedupe, params check, deadline,
    breaker, commit, supervision): its ratios bound what any runtime whose
    messages are handled by their own task can reach on Trio."""

    def __init__(self) -> None:
        self.mailbox: deque[tuple[str, dict[str, Any], _FloorReply | None]] = deque()
        self.parked: Any = None
        self.count = 0

    async def increment(self, by: int = 1) -> None:
        self.count += by

    async def get(self) -> int:
        return self.count

    def put(self, action: str, params: dict[str, Any], reply: _FloorReply | None) -> None:
        self.mailbox.append((action, params, reply))
        task = self.parked
        if task is not None:
            self.parked = None
            trio.lowlevel.reschedule(task)

    async def call(self, action: str) -> Any:
        await trio.lowlevel.checkpoint_if_cancelled()
        reply = _FloorReply()
        reply.task = trio.lowlevel.current_task()
        self.put(action, {}, reply)
        await trio.lowlevel.wait_task_rescheduled(_no_abort)
        return reply.value

    async def run(self) -> None:
        mailbox = self.mailbox
        while True:
            while mailbox:
                action, params, reply = mailbox.popleft()
                if not action:
                    return
                value = await getattr(self, action)(**params)
                if reply is not None:
                    reply.value = value
                    trio.lowlevel.reschedule(reply.task)
            self.parked = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(_no_abort)


@asynccontextmanager
async def running_floor_actor() -> AsyncIterator[FloorActor]:
    """A :class:`FloorActor` with its task running, stopped on leaving."""
    actor = FloorActor()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(actor.run)
        await trio.lowlevel.checkpoint()
        yield actor
        actor.put("", {}, None)


async def floor_tell(n: int) -> float:
    """:class:`FloorActor`, told n times by one sender with a cancel point per
    send and a schedule point per 64 (as the local tell), then called once:
    messages/s."""
    async with running_floor_actor() as actor:
        t0 = perf()
        for i in range(n):
            await trio.lowlevel.checkpoint_if_cancelled()
            actor.put("increment", {"by": 1}, None)
            if i % 64 == 63:
                await trio.lowlevel.checkpoint()
        count = await actor.call("get")
        elapsed = perf() - t0
    assert count == n, (count, n)
    return n / elapsed


async def floor_call(n: int) -> float:
    """:class:`FloorActor` called n times one after another: round trips/s."""
    async with running_floor_actor() as actor:
        t0 = perf()
        for _ in range(n):
            await actor.call("get")
        elapsed = perf() - t0
    return n / elapsed


# ---------------------------------------------------------------- (a) throughput


async def raw_channel_awaited(n: int, capacity: int) -> float:
    """Producer ``await send.send(i)``, consumer ``async for``: messages/s."""
    send, receive = trio.open_memory_channel[int](capacity)

    async def producer() -> None:
        async with send:
            for i in range(n):
                await send.send(i)

    async def consumer() -> None:
        got = 0
        async with receive:
            async for _ in receive:
                got += 1
        assert got == n

    t0 = perf()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer)
        nursery.start_soon(producer)
    return n / (perf() - t0)


async def raw_channel_nowait(n: int, capacity: int) -> float:
    """Same channel, ``send_nowait``/``receive_nowait`` with an awaited fallback
    only when full/empty (batching): messages/s."""
    send, receive = trio.open_memory_channel[int](capacity)

    async def producer() -> None:
        async with send:
            for i in range(n):
                try:
                    send.send_nowait(i)
                except trio.WouldBlock:
                    await send.send(i)

    async def consumer() -> None:
        got = 0
        async with receive:
            while True:
                try:
                    receive.receive_nowait()
                except trio.WouldBlock:
                    try:
                        await receive.receive()
                    except trio.EndOfChannel:
                        break
                except trio.EndOfChannel:
                    break
                got += 1
        assert got == n

    t0 = perf()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer)
        nursery.start_soon(producer)
    return n / (perf() - t0)


async def jido_tell(node: jt.Node, ref: jt.AgentRef, n: int) -> float:
    """``send_instruction`` n times from one sender, then one ``call`` that
    (per-pair FIFO) answers after all n were applied: instructions/s."""
    before = await node.call(ref, _instr(GET))
    t0 = perf()
    for _ in range(n):
        await node.send_instruction(ref, jt.Instruction("increment", {"by": 1}))
    after = await node.call(ref, _instr(GET))
    elapsed = perf() - t0
    assert after - before == n, (before, after, n)
    return n / elapsed


async def family_throughput(args: argparse.Namespace) -> dict[str, Any]:
    n, reps, cap = args.n, args.reps, args.capacity
    prof = Profiler(args.profile)
    raw_await: list[float] = []
    raw_nowait: list[float] = []
    tell: list[float] = []
    floor: list[float] = []
    async with jt.open_node(jt.Config(node_name="bench-a", mailbox_size=cap)) as node:
        ref = await node.start_agent(Counter, "tell-target")
        # warm-up (imports, caches, first allocations)
        await raw_channel_awaited(n // 10, cap)
        await raw_channel_nowait(n // 10, cap)
        await jido_tell(node, ref, n // 10)
        await floor_tell(n // 10)
        for _ in range(reps):
            settle()
            raw_await.append(await raw_channel_awaited(n, cap))
            settle()
            raw_nowait.append(await raw_channel_nowait(n * 10, cap))
            settle()
            with prof:
                tell.append(await jido_tell(node, ref, n))
            settle()
            floor.append(await floor_tell(n))
    prof.dump()
    return {
        "a.raw_channel_await": metric("msg/s", raw_await, n=n, capacity=cap),
        "a.raw_channel_nowait": metric("msg/s", raw_nowait, n=n * 10, capacity=cap),
        "a.jido_tell": metric("msg/s", tell, n=n, mailbox_size=cap),
        "a.floor_tell": metric("msg/s", floor, n=n),
    }


# ---------------------------------------------------------------- (b) round trips


async def raw_ping_pong(n: int) -> float:
    """Two tasks, two unbuffered channels, request then reply: round trips/s."""
    req_send, req_recv = trio.open_memory_channel[int](0)
    rep_send, rep_recv = trio.open_memory_channel[int](0)

    async def server() -> None:
        async with req_recv, rep_send:
            async for x in req_recv:
                await rep_send.send(x)

    t0 = perf()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        async with req_send, rep_recv:
            for i in range(n):
                await req_send.send(i)
                await rep_recv.receive()
    return n / (perf() - t0)


async def jido_call(node: jt.Node, ref: jt.AgentRef, n: int) -> float:
    t0 = perf()
    for _ in range(n):
        await node.call(ref, jt.Instruction("get"))
    return n / (perf() - t0)


async def family_roundtrip(args: argparse.Namespace) -> dict[str, Any]:
    n, reps = args.n, args.reps
    prof = Profiler(args.profile)
    raw: list[float] = []
    call: list[float] = []
    floor: list[float] = []
    async with jt.open_node(jt.Config(node_name="bench-b")) as node:
        ref = await node.start_agent(Counter, "call-target")
        await raw_ping_pong(n // 10)
        await jido_call(node, ref, n // 10)
        await floor_call(n // 10)
        for _ in range(reps):
            settle()
            raw.append(await raw_ping_pong(n))
            settle()
            with prof:
                call.append(await jido_call(node, ref, n))
            settle()
            floor.append(await floor_call(n))
    prof.dump()
    return {
        "b.raw_ping_pong": metric("rt/s", raw, n=n),
        "b.jido_call": metric("rt/s", call, n=n),
        "b.floor_call": metric("rt/s", floor, n=n),
    }


# ---------------------------------------------------------------- (c) spawn + memory


async def spawn_bare(n: int) -> dict[str, Any]:
    """n tasks, each blocked in ``async for`` on its own memory channel."""

    async def idle(receive: trio.MemoryReceiveChannel[Any]) -> None:
        async for _ in receive:
            pass

    handles: list[trio.MemorySendChannel[Any]] = []
    settle()
    rss0 = vm_rss()
    async with trio.open_nursery() as nursery:
        t0 = perf()
        for _ in range(n):
            send, receive = trio.open_memory_channel[Any](0)
            handles.append(send)
            nursery.start_soon(idle, receive)
        await trio.testing.wait_all_tasks_blocked()
        elapsed = perf() - t0
        settle()
        rss1 = vm_rss()
        nursery.cancel_scope.cancel()
    return {"n": n, "seconds": elapsed, "rss_delta": rss1 - rss0}


#: start_agents() is given this many ids at a time, so a capped run can stop early.
BULK_CHUNK = 4096


async def spawn_jido(
    n: int, cap: float, per_supervisor: int | None, bulk: bool = False
) -> dict[str, Any]:
    """Up to n idle agents started one after another with ``start_agent`` (each
    call returns once its agent runs), or with ``start_agents`` (``bulk``, the
    documented fast path, in chunks of BULK_CHUNK ids), then the RSS they hold.

    ``per_supervisor=None`` starts them all under the node's root supervisor
    (the default a user gets); otherwise under ``ceil(n / per_supervisor)``
    supervisors of that many agents each. Stops early after ``cap`` seconds
    and reports how many were started.
    """
    async with jt.open_node(jt.Config(node_name="bench-c")) as node:
        await node.start_agent(Counter, "warm-up")
        settle()
        rss0 = vm_rss()
        started = 0
        t0 = perf()
        supervisor: Any = None
        if bulk:
            while started < n and perf() - t0 <= cap:
                ids = [f"idle-{i}" for i in range(started, min(n, started + BULK_CHUNK))]
                await node.start_agents(Counter, ids)
                started += len(ids)
        else:
            for i in range(n):
                if per_supervisor is not None and i % per_supervisor == 0:
                    supervisor = await node.start_supervisor(f"shard-{i // per_supervisor}")
                await node.start_agent(Counter, f"idle-{i}", supervisor=supervisor)
                started += 1
                if started % 256 == 0 and perf() - t0 > cap:
                    break
        await trio.testing.wait_all_tasks_blocked()
        elapsed = perf() - t0
        settle()
        rss1 = vm_rss()
        kind = "jido_bulk" if bulk else "jido" if per_supervisor is None else "jido_sharded"
        result = {"n": started, "target": n, "seconds": elapsed, "rss_delta": rss1 - rss0}
        # Tearing 100k agents down is not what is measured here: leave at once.
        print(json.dumps(_spawn_metrics(kind, result)), flush=True)
        os._exit(0)
    raise AssertionError("unreachable")  # pragma: no cover


def _spawn_metrics(kind: str, r: dict[str, Any]) -> dict[str, Any]:
    n, target = r["n"], r.get("target", r["n"])
    return {
        "metrics": {
            f"c.{kind}_spawn_rate": metric("/s", [n / r["seconds"]], n=n, target=target),
            f"c.{kind}_spawn_seconds": metric("s", [r["seconds"]], n=n, target=target),
            f"c.{kind}_rss_per_idle": metric("B", [r["rss_delta"] / n], n=n, target=target),
        },
        "versions": {"python": sys.version.split()[0], "trio": trio.__version__},
    }


async def family_spawn(args: argparse.Namespace) -> dict[str, Any]:
    if args.kind == "bare":
        return _spawn_metrics("bare", await spawn_bare(args.n))["metrics"]
    await spawn_jido(args.n, args.cap, args.per_supervisor or None, args.bulk)  # prints, exits
    raise AssertionError("unreachable")  # pragma: no cover


# ---------------------------------------------------------------- (d) restart latency


async def raw_restart(n: int) -> list[float]:
    """Orientation floor: a hand-written 'supervisor' loop that re-enters a
    serving task after its cancel scope is cancelled; latency = cancel until
    the fresh incarnation answers a ping."""
    req_send, req_recv = trio.open_memory_channel[int](0)
    rep_send, rep_recv = trio.open_memory_channel[int](0)
    current: list[trio.CancelScope] = []

    async def serve() -> None:
        async for x in req_recv:
            await rep_send.send(x)

    async def supervisor(task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        while True:
            with trio.CancelScope() as scope:
                current[:] = [scope]
                await serve()

    latencies: list[float] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor)
        await trio.testing.wait_all_tasks_blocked()
        for i in range(n):
            t0 = perf()
            current[0].cancel()
            await req_send.send(i)
            await rep_recv.receive()
            latencies.append(perf() - t0)
        nursery.cancel_scope.cancel()
    return latencies


async def jido_restart(node: jt.Node, ref: jt.AgentRef, n: int) -> list[float]:
    latencies: list[float] = []
    for _ in range(n):
        t0 = perf()
        await crash_agent(node, ref)
        await node.call(ref, jt.Instruction("get"))
        latencies.append(perf() - t0)
    return latencies


async def family_restart(args: argparse.Namespace) -> dict[str, Any]:
    n, reps = args.n, args.reps
    raw: list[list[float]] = []
    jido: list[list[float]] = []
    config = jt.Config(node_name="bench-d")
    async with jt.open_node(config) as node:
        # A restart intensity that never trips: only latency is measured here.
        sup = await node.start_supervisor("bench", max_restarts=10**9, max_seconds=1.0)
        ref = await node.start_agent(Counter, "restart-target", supervisor=sup)
        await jido_restart(node, ref, 10)
        for _ in range(reps):
            settle()
            raw.append(await raw_restart(n))
            settle()
            jido.append(await jido_restart(node, ref, n))
    return {
        "d.raw_restart": _latency_metric(raw),
        "d.jido_restart": _latency_metric(jido),
    }


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


def _latency_metric(reps: list[list[float]]) -> dict[str, Any]:
    # One sample per repetition: that repetition's median and p99, in ms.
    return metric(
        "ms",
        [_quantile(r, 0.5) * 1000 for r in reps],
        p99=[_quantile(r, 0.99) * 1000 for r in reps],
        n=len(reps[0]) if reps else 0,
    )


# ---------------------------------------------------------------- (e) at-least-once on SQLite


async def jido_many_senders(
    node: jt.Node, refs: list[jt.AgentRef], n: int, senders: int, delivery: str
) -> float:
    """``senders`` concurrent tasks send n instructions in total (sender s to
    agent s % len(refs)); time until every one is accepted *and* applied."""
    per_sender = n // senders
    before = [await node.call(ref, _instr(GET)) for ref in refs]

    async def sender(index: int) -> None:
        ref = refs[index % len(refs)]
        for _ in range(per_sender):
            await node.send_instruction(
                ref, jt.Instruction("increment", {"by": 1}), delivery=delivery
            )

    t0 = perf()
    async with trio.open_nursery() as nursery:
        for s in range(senders):
            nursery.start_soon(sender, s)
    after = [await node.call(ref, _instr(GET)) for ref in refs]
    elapsed = perf() - t0
    assert sum(after) - sum(before) == per_sender * senders
    return per_sender * senders / elapsed


def raw_sqlite_commit_per_message(path: Path, n: int, synchronous: str, cap: float = 3.0) -> float:
    """Baseline: one INSERT + COMMIT per message, WAL, same synchronous level,
    one connection, no trio, no threads. At most n messages or ``cap`` seconds
    (an fsync per message can be very slow on a busy disk)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
        conn.execute("CREATE TABLE log (seq INTEGER PRIMARY KEY, data BLOB NOT NULL)")
        payload = b"x" * 200
        t0 = perf()
        done = 0
        while done < n and (done % 64 or perf() - t0 < cap):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO log (data) VALUES (?)", (payload,))
            conn.execute("COMMIT")
            done += 1
        return done / (perf() - t0)
    finally:
        conn.close()


async def family_durable(args: argparse.Namespace) -> dict[str, Any]:
    n, reps, senders, agents = args.n, args.reps, args.senders, args.agents
    results: dict[str, list[float]] = {
        "alo_full": [],
        "alo_normal": [],
        "amo_memory": [],
        "raw_full": [],
    }

    async def on_node(config: jt.Config, delivery: str, key: str) -> None:
        async with jt.open_node(config) as node:
            refs = [await node.start_agent(Counter, f"durable-{i}") for i in range(agents)]
            await jido_many_senders(node, refs, senders * 4, senders, delivery)  # warm-up
            settle()
            results[key].append(await jido_many_senders(node, refs, n, senders, delivery))

    with tempfile.TemporaryDirectory(prefix="jido-bench-") as tmp:
        for rep in range(reps):
            for sync in ("full", "normal"):
                path = Path(tmp) / f"alo-{sync}-{rep}.db"
                options = {"sqlite": {"path": str(path), "synchronous": sync}}
                config = jt.Config(node_name="bench-e", state="sqlite", plugin_options=options)
                await on_node(config, "at_least_once", f"alo_{sync}")
            await on_node(jt.Config(node_name="bench-e"), "at_most_once", "amo_memory")
            results["raw_full"].append(
                raw_sqlite_commit_per_message(Path(tmp) / f"raw-{rep}.db", min(n, 2000), "full")
            )
    shape = {"n": n, "senders": senders, "agents": agents}
    return {
        "e.jido_alo_sqlite_full": metric("msg/s", results["alo_full"], **shape),
        "e.jido_alo_sqlite_normal": metric("msg/s", results["alo_normal"], **shape),
        "e.jido_amo_memory": metric("msg/s", results["amo_memory"], **shape),
        "e.raw_sqlite_commit_full": metric("msg/s", results["raw_full"], n=min(n, 2000)),
    }


# ---------------------------------------------------------------- main

FAMILIES: dict[str, Callable[[argparse.Namespace], Awaitable[dict[str, Any]]]] = {
    "throughput": family_throughput,
    "roundtrip": family_roundtrip,
    "spawn": family_spawn,
    "restart": family_restart,
    "durable": family_durable,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("family", choices=sorted(FAMILIES))
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--capacity", type=int, default=1024, help="(a) channel/mailbox size")
    parser.add_argument("--kind", choices=("jido", "bare"), default="jido", help="(c)")
    parser.add_argument("--cap", type=float, default=60.0, help="(c) seconds at most")
    parser.add_argument(
        "--per-supervisor", type=int, default=0, help="(c) agents per supervisor; 0: all on root"
    )
    parser.add_argument(
        "--bulk", action="store_true", help="(c) start the agents with node.start_agents"
    )
    parser.add_argument("--senders", type=int, default=64, help="(e)")
    parser.add_argument("--agents", type=int, default=8, help="(e)")
    parser.add_argument("--profile", help="write cProfile stats of the jido_trio part here")
    args = parser.parse_args(argv)
    metrics = trio.run(FAMILIES[args.family], args)
    versions = {"python": sys.version.split()[0], "trio": trio.__version__}
    print(json.dumps({"metrics": metrics, "versions": versions}), flush=True)


if __name__ == "__main__":
    main()
