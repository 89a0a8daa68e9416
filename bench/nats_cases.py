"""NATS measurements: jido_trio on the ``nats`` engines against raw nats-py.

Starts its own ``nats-server`` (JetStream, 127.0.0.1, stopped at the end),
then runs ``--rounds`` rounds. Each round measures the raw baselines -- nats-py
on plain asyncio, in a child process (``--raw``) so no trio or trio-asyncio is
involved -- and the jido_trio figures -- two nodes in this trio process, all
four engines ``"nats"`` -- one after the other, alternating which goes first,
so machine noise hits both alike. Prints one JSON object on stdout (progress
on stderr): every sample, the medians, and the ratios of medians
(``jido / raw``) with the per-round ratios.

=================================  ==========================================
``raw.request_reply_seq``          one requester, sequential ``nc.request``
``raw.request_reply_conc``         the same from 50 concurrent requesters
``raw.publish``                    ``nc.publish`` n small messages, one flush
``raw.js_publish``                 ``js.publish`` awaited (acked), 50 concurrent
``bridge.request_reply_seq``       ``raw.request_reply_seq`` from trio, each
                                   request through ``aio_as_trio`` on a
                                   trio-asyncio loop (the bridge's floor)
``jido.remote_call_seq``           node B ``call`` to an agent on node A
``jido.remote_call_conc``          the same from 50 concurrent callers
``jido.remote_tell_alo``           50 tasks ``send_instruction(...,
                                   delivery="at_least_once")`` to 8 agents on
                                   A, until every one was applied
``jido.remote_tell``               the same, ``at_most_once``
=================================  ==========================================

Every loop stops after its message count or its time cap, whichever comes
first; the sample is what was done divided by the time it took.

What the ratios compare: a remote ``call`` is one NATS request/reply, so
``remote_call_* / raw_request_*`` is the cost of jido_trio on top of it
(trio-asyncio hops, envelopes, agent mailbox). A remote ``send_instruction``
also waits for its receipt (a request/reply per message), and an
``at_least_once`` one is first appended to the agent's JetStream log, so
``remote_tell_alo / raw_js_publish`` compares it with acked JetStream publishes
at the same concurrency, and ``remote_tell / raw_publish`` with the ceiling of
fire-and-forget publishing (nobody subscribed), not with a like-for-like raw
equivalent.

Usage::

    python bench/nats_cases.py               # full: ~50-65 s on 2 cores
    python bench/nats_cases.py --quick       # smoke test: ~15 s
    python bench/nats_cases.py --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable
from collections.abc import Callable
from typing import Any

perf = time.perf_counter
T_START = perf()  # the time budget counts from here, imports included

CONCURRENCY = 50
AGENTS = 8
SMALL = b"x" * 16
SCRIPT = os.path.abspath(__file__)

#: (metric, unit) in report order.
METRICS = {
    "raw.request_reply_seq": "rt/s",
    "raw.request_reply_conc": "rt/s",
    "raw.publish": "msg/s",
    "raw.js_publish": "msg/s",
    "bridge.request_reply_seq": "rt/s",
    "jido.remote_call_seq": "rt/s",
    "jido.remote_call_conc": "rt/s",
    "jido.remote_tell_alo": "msg/s",
    "jido.remote_tell": "msg/s",
}

#: DESIGN.md section 7, for orientation only (ratios never use these).
DESIGN_FIGURES = {
    "raw.request_reply_seq": 2_400,
    "request_reply_via_trio_asyncio": 1_200,
    "raw.publish": "105000-126000",
}

#: ratio name: (jido metric, raw baseline)
RATIOS = {
    "remote_call_seq / raw_request_seq": ("jido.remote_call_seq", "raw.request_reply_seq"),
    "remote_call_conc / raw_request_conc": ("jido.remote_call_conc", "raw.request_reply_conc"),
    "remote_tell_alo / raw_js_publish": ("jido.remote_tell_alo", "raw.js_publish"),
    "remote_tell / raw_publish": ("jido.remote_tell", "raw.publish"),
    # not asked for, but it splits the call overhead: bridge vs jido_trio itself
    "bridge_request_seq / raw_request_seq": ("bridge.request_reply_seq", "raw.request_reply_seq"),
    "remote_call_seq / bridge_request_seq": ("jido.remote_call_seq", "bridge.request_reply_seq"),
}


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def sizes(quick: bool) -> dict[str, Any]:
    """Message counts per measurement, the time cap of each loop and the
    budget after which no further round starts (s)."""
    if quick:
        return {
            "request_seq": 500,
            "request_conc": 3_000,
            "publish": 30_000,
            "js_publish": 2_000,
            "bridge_seq": 300,
            "call_seq": 300,
            "call_conc": 600,
            "tell_alo": 300,
            "tell": 500,
            "cap": 0.3,
            "budget": 16.0,
        }
    return {
        "request_seq": 3_000,
        "request_conc": 15_000,
        "publish": 200_000,
        "js_publish": 12_000,
        "bridge_seq": 2_000,
        "call_seq": 2_000,
        "call_conc": 6_000,
        "tell_alo": 5_000,
        "tell": 6_000,
        "cap": 2.0,
        "budget": 65.0,
    }


async def bounded(
    n: int, cap: float, workers: int, step: Callable[[int], Awaitable[None]], gather: Any
) -> tuple[int, float]:
    """Run ``step(worker)`` n times in total from ``workers`` concurrent loops,
    stopping early after ``cap`` seconds; return (steps done, seconds).

    ``gather`` runs the loops concurrently (``asyncio.gather`` or a trio nursery
    helper) so one helper serves both event loops.
    """
    done = 0
    issued = 0
    t0 = perf()
    deadline = t0 + cap

    async def loop(worker: int) -> None:
        nonlocal done, issued
        while issued < n and perf() < deadline:
            issued += 1
            await step(worker)
            done += 1

    await gather([loop(w) for w in range(workers)])
    return done, perf() - t0


# ---------------------------------------------------------------- raw (asyncio child)


async def _asyncio_gather(coros: list[Awaitable[None]]) -> None:
    await asyncio.gather(*coros)


async def raw_round(url: str, size: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The four baselines, nats-py on plain asyncio; {metric: {"value", "n", ...}}."""
    import nats
    import nats.errors
    from nats.js.api import StorageType

    cap = size["cap"]
    responder = await nats.connect(url, name="raw-responder")
    requester = await nats.connect(url, name="raw-requester")
    out: dict[str, dict[str, Any]] = {}
    try:
        subject = f"bench.raw.{secrets.token_hex(4)}"

        async def echo(msg: Any) -> None:
            await msg.respond(msg.data)

        await responder.subscribe(subject, cb=echo)
        await responder.flush()
        for _ in range(100):  # until the server routes to the responder (bounded)
            try:
                await requester.request(subject, SMALL, timeout=1.0)
                break
            except nats.errors.NoRespondersError:
                await asyncio.sleep(0.02)

        async def request(_: int) -> None:
            await requester.request(subject, SMALL, timeout=10.0)

        await bounded(100, cap, 1, request, _asyncio_gather)  # warm-up
        done, secs = await bounded(size["request_seq"], cap, 1, request, _asyncio_gather)
        out["raw.request_reply_seq"] = {"value": done / secs, "n": done}
        done, secs = await bounded(size["request_conc"], cap, CONCURRENCY, request, _asyncio_gather)
        out["raw.request_reply_conc"] = {"value": done / secs, "n": done}

        # Plain publish: n small messages, then one flush (nobody subscribed).
        pub_subject = f"bench.pub.{secrets.token_hex(4)}"
        n, done = size["publish"], 0
        t0 = perf()
        deadline = t0 + cap
        while done < n and (done % 256 or perf() < deadline):
            await requester.publish(pub_subject, SMALL)
            done += 1
        await requester.flush(timeout=10 + cap)
        out["raw.publish"] = {"value": done / (perf() - t0), "n": done}

        # JetStream publish, every one awaited for its ack, 50 at a time.
        js = requester.jetstream()
        stream = f"BENCH_{secrets.token_hex(4)}"
        js_subject = f"bench.js.{stream}"
        await js.add_stream(
            name=stream, subjects=[js_subject], storage=StorageType.MEMORY, num_replicas=1
        )

        async def js_publish(_: int) -> None:
            await js.publish(js_subject, SMALL)

        await bounded(200, cap, CONCURRENCY, js_publish, _asyncio_gather)  # warm-up
        done, secs = await bounded(
            size["js_publish"], cap, CONCURRENCY, js_publish, _asyncio_gather
        )
        out["raw.js_publish"] = {"value": done / secs, "n": done, "concurrency": CONCURRENCY}
        await js.delete_stream(stream)
    finally:
        await requester.close()
        await responder.close()
    return out


def raw_main(url: str, size: dict[str, Any]) -> None:
    result = asyncio.run(raw_round(url, size))
    print(json.dumps(result), flush=True)


# ---------------------------------------------------------------- jido (trio parent)


def run_jido(
    url: str, size: dict[str, Any], rounds: int, quick: bool, t_start: float
) -> dict[str, list[dict[str, Any]]]:
    import attrs
    import trio
    import trio_asyncio

    import jido_trio as jt
    import jido_trio_nats.plugin

    @attrs.frozen
    class CounterState:
        count: int = 0

    class Counter(jt.Agent):
        type = "bench-nats-counter"
        State = CounterState

        @jt.action("increment")
        async def increment(self, state: CounterState, by: int = 1) -> CounterState:
            return attrs.evolve(state, count=state.count + by)

        @jt.action("get")
        async def get(self, state: CounterState) -> None:
            self.ctx.reply(state.count)

    namespace = f"bench{secrets.token_hex(4)}"
    cap = size["cap"]

    def config(name: str) -> jt.Config:
        return jt.Config(
            node_name=name,
            mode="datacenter",
            registry="nats",
            transport="nats",
            state="nats",
            coordination="nats",
            operation_timeout=15.0,
            plugin_options={
                "nats": {
                    "servers": [url],
                    "namespace": namespace,
                    "storage": "memory",
                    "replicas": 1,
                }
            },
        )

    async def trio_gather(coros: list[Awaitable[None]]) -> None:
        async with trio.open_nursery() as nursery:
            for coro in coros:

                async def wrap(c: Awaitable[None] = coro) -> None:
                    await c

                nursery.start_soon(wrap)

    def get() -> jt.Instruction:
        return jt.Instruction("get")  # a fresh instruction id every time

    async def remote_call(b: jt.Node, ref: jt.AgentRef, n: int, workers: int) -> tuple[int, float]:
        async def step(_: int) -> None:
            await b.call(ref, get())

        return await bounded(n, cap, workers, step, trio_gather)

    async def remote_tell(
        b: jt.Node, refs: list[jt.AgentRef], n: int, delivery: str
    ) -> tuple[int, float]:
        """50 senders, sender s to agent s % 8; timed until the final ``call``
        to every agent (FIFO per sender node and agent) saw all of them applied."""
        before = [await b.call(ref, get()) for ref in refs]

        async def step(worker: int) -> None:
            await b.send_instruction(
                refs[worker % len(refs)],
                jt.Instruction("increment", {"by": 1}),
                delivery=delivery,
            )

        t0 = perf()
        done, _ = await bounded(n, cap, CONCURRENCY, step, trio_gather)
        after = [await b.call(ref, get()) for ref in refs]
        elapsed = perf() - t0
        applied = sum(after) - sum(before)
        if applied != done:
            raise AssertionError(f"{delivery}: {done} sent, {applied} applied")
        return done, elapsed

    async def raw_child() -> dict[str, dict[str, Any]]:
        cmd = [sys.executable, SCRIPT, "--raw", url]
        if quick:
            cmd.append("--quick")
        with trio.fail_after(60 + 20 * cap):
            proc = await trio.run_process(cmd, capture_stdout=True, check=True)
        lines = [line for line in proc.stdout.decode().splitlines() if line.strip()]
        return json.loads(lines[-1])  # type: ignore[no-any-return]

    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in METRICS}

    async def bridge_seq(n: int) -> tuple[int, float]:
        """nats-py request/reply from trio: one ``aio_as_trio`` hop per request."""
        import nats
        import nats.errors

        async def connect() -> tuple[Any, Any, str]:
            responder = await nats.connect(url, name="bridge-responder")
            requester = await nats.connect(url, name="bridge-requester")
            subject = f"bench.bridge.{secrets.token_hex(4)}"

            async def echo(msg: Any) -> None:
                await msg.respond(msg.data)

            await responder.subscribe(subject, cb=echo)
            await responder.flush()
            return responder, requester, subject

        async def close(*clients: Any) -> None:
            for client in clients:
                await client.close()

        async with trio_asyncio.open_loop():
            responder, requester, subject = await trio_asyncio.aio_as_trio(connect)()
            request = trio_asyncio.aio_as_trio(requester.request)
            try:
                for _ in range(100):  # until the server routes to the responder (bounded)
                    try:
                        await request(subject, SMALL, timeout=1.0)
                        break
                    except nats.errors.NoRespondersError:
                        await trio.sleep(0.02)

                async def step(_: int) -> None:
                    await request(subject, SMALL, timeout=10.0)

                await bounded(50, cap, 1, step, trio_gather)  # warm-up
                return await bounded(n, cap, 1, step, trio_gather)
            finally:
                await trio_asyncio.aio_as_trio(close)(requester, responder)

    async def jido_round(a_refs: Any, b: jt.Node) -> None:
        call_ref, tell_refs = a_refs
        steps: list[tuple[str, Callable[[], Awaitable[tuple[int, float]]]]] = [
            ("bridge.request_reply_seq", lambda: bridge_seq(size["bridge_seq"])),
            ("jido.remote_call_seq", lambda: remote_call(b, call_ref, size["call_seq"], 1)),
            (
                "jido.remote_call_conc",
                lambda: remote_call(b, call_ref, size["call_conc"], CONCURRENCY),
            ),
            (
                "jido.remote_tell_alo",
                lambda: remote_tell(b, tell_refs, size["tell_alo"], "at_least_once"),
            ),
            ("jido.remote_tell", lambda: remote_tell(b, tell_refs, size["tell"], "at_most_once")),
        ]
        for name, measure in steps:
            done, secs = await measure()
            samples[name].append({"value": done / secs, "n": done})
            log(f"  {name}: {done / secs:,.0f} {METRICS[name]} (n={done})")

    async def main() -> None:
        plugins = [jido_trio_nats.plugin]
        t_open = perf()
        async with (
            jt.open_node(config("bench-a"), plugins=plugins) as a,
            jt.open_node(config("bench-b"), plugins=plugins) as b,
        ):
            await a.start_agent(Counter, "call-target")
            for i in range(AGENTS):
                await a.start_agent(Counter, f"tell-{i}")
            call_ref = await b.lookup("call-target")
            tell_refs = [await b.lookup(f"tell-{i}") for i in range(AGENTS)]
            assert call_ref.node == "bench-a", call_ref
            log(f"nodes up and agents started in {perf() - t_open:.1f} s")
            # warm-up: connections, subscriptions, streams, caches
            await remote_call(b, call_ref, 50, 1)
            await remote_tell(b, tell_refs, 200, "at_least_once")
            await remote_tell(b, tell_refs, 200, "at_most_once")
            longest = 0.0
            for r in range(rounds):
                spent = perf() - t_start
                if r and spent + longest > size["budget"]:
                    log(
                        f"round {r + 1}: skipped, {spent:.0f} s spent of a {size['budget']} s budget"
                    )
                    break
                log(f"round {r + 1}/{rounds}")
                t_round = perf()

                async def raw_step() -> None:
                    for name, value in (await raw_child()).items():
                        samples[name].append(value)
                        log(f"  {name}: {value['value']:,.0f} {METRICS[name]} (n={value['n']})")

                async def jido_step() -> None:
                    await jido_round((call_ref, tell_refs), b)

                # Alternate which side goes first, so a drift hits both alike.
                for step in [raw_step, jido_step] if r % 2 == 0 else [jido_step, raw_step]:
                    await step()
                longest = max(longest, perf() - t_round)
            t_close = perf()
        log(f"nodes closed in {perf() - t_close:.1f} s")

    trio.run(main)
    return samples


# ---------------------------------------------------------------- report


def report(samples: dict[str, list[dict[str, Any]]], size: dict[str, Any]) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    for name, unit in METRICS.items():
        values = [s["value"] for s in samples[name]]
        extra = {k: v for k, v in samples[name][0].items() if k not in ("value", "n")}
        metrics[name] = {
            "unit": unit,
            "samples": values,
            "median": statistics.median(values),
            "n": [s["n"] for s in samples[name]],
            **extra,
        }
    ratios: dict[str, Any] = {}
    for label, (mine, base) in RATIOS.items():
        m, b = metrics[mine], metrics[base]
        ratios[label] = {
            "ratio": m["median"] / b["median"],
            "per_round": [x / y for x, y in zip(m["samples"], b["samples"], strict=True)],
        }
    return {"metrics": metrics, "ratios": ratios}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (< 20 s)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--raw", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    size = sizes(args.quick)
    if args.raw:
        raw_main(args.raw, size)
        return
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    from jido_trio_nats.testing import start_nats_server

    load_before = list(os.getloadavg())
    t0 = T_START
    with start_nats_server() as server:
        log(f"nats-server on {server.url} (up {perf() - t0:.1f} s after start)")
        samples = run_jido(server.url, size, args.rounds, args.quick, t0)
    result = report(samples, size)
    result.update(
        {
            "rounds": len(samples["jido.remote_call_seq"]),
            "rounds_asked": args.rounds,
            "loadavg": {"before": load_before, "after": list(os.getloadavg())},
            "quick": args.quick,
            "sizes": size,
            "concurrency": CONCURRENCY,
            "agents": AGENTS,
            "design_figures": DESIGN_FIGURES,
            "seconds": perf() - t0,
            "versions": {
                "python": sys.version.split()[0],
                **{name: _dist_version(name) for name in ("trio", "trio-asyncio", "nats-py")},
            },
        }
    )
    for label, value in result["ratios"].items():
        log(f"{label}: {value['ratio']:.3f}")
    log(f"total {result['seconds']:.1f} s")
    print(json.dumps(result), flush=True)


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
