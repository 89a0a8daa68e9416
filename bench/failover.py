"""Failover time on NATS: SIGKILL a node process, time until its agents answer elsewhere.

Starts its own 3-server JetStream cluster (127.0.0.1, stopped at the end),
two node processes that stay up (``n1``, ``n2``), and, for each kill, a third
node process that starts ``--agents`` agents, answers for them, and is
SIGKILLed. A driver node in this process (failover off) then calls every
one of those agents, again and again (a lookup and a ``call`` with a 1 s
timeout, 50 ms apart), and records for each the seconds from the kill until
it answered from a survivor. Every node runs with the default settings of
jido_trio and of the ``nats`` plugin, except ``replicas = 3`` and the
namespace. Prints one JSON object on stdout (progress on stderr): every
sample, and p50, p95 and max over all of them.

Usage::

    python bench/failover.py                 # 20 kills of a node owning 10 agents (~4 min)
    python bench/failover.py --kills 3       # a smoke run
    python bench/failover.py --lease-ttl 20  # any plugin option: --nats KEY=JSON ...

A node process is this script run with ``--serve``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from typing import Any

import attrs
import trio

import jido_trio as jt

SCRIPT = os.path.abspath(__file__)
#: Seconds a kill may take to fail over before the run gives up on it.
GIVE_UP = 90.0


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@attrs.frozen
class Tally:
    count: int = 0


class FailoverProbe(jt.Agent):
    """Answers ``where`` with the name of the node it runs on."""

    type = "bench-failover-probe"
    State = Tally

    @jt.action("where")
    async def where(self, state: Tally) -> Tally:
        self.ctx.reply(self.ctx.node_name)
        return Tally(state.count + 1)


def config(name: str, namespace: str, urls: list[str], nats: dict[str, Any]) -> jt.Config:
    """Defaults everywhere but the engines, the servers, the namespace and ``replicas``."""
    return jt.Config(
        node_name=name,
        mode="datacenter",
        registry="nats",
        transport="nats",
        state="nats",
        coordination="nats",
        plugin_options={"nats": {"servers": urls, "namespace": namespace, "replicas": 3, **nats}},
    )


# ---------------------------------------------------------------- a node process


async def serve(
    name: str, namespace: str, urls: list[str], nats: dict[str, Any], agents: int
) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with jt.open_node(config(name, namespace, urls, nats)) as node:
            for i in range(agents):
                await node.start_agent(FailoverProbe, f"{name}-{i}")
            print("READY", flush=True)
            async for _ in signals:
                break


# ---------------------------------------------------------------- the driver


@attrs.define(eq=False)
class Process:
    name: str
    popen: subprocess.Popen[str]

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()  # SIGKILL, by the PID we started
        self.popen.wait()

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def spawn(name: str, args: argparse.Namespace, urls: list[str], agents: int) -> Process:
    """Start a node process (this script with ``--serve``)."""
    popen = subprocess.Popen(
        [
            sys.executable,
            SCRIPT,
            "--serve",
            name,
            "--namespace",
            args.namespace,
            "--urls",
            ",".join(urls),
            "--agents",
            str(agents),
            "--nats-json",
            json.dumps(args.nats_options),
            *(["--verbose"] if args.verbose else []),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    return Process(name, popen)


async def start(name: str, args: argparse.Namespace, urls: list[str], agents: int) -> Process:
    """A node process that said it is ready."""
    process = spawn(name, args, urls, agents)
    popen = process.popen
    assert popen.stdout is not None
    with trio.fail_after(60):
        line = await trio.to_thread.run_sync(popen.stdout.readline)
    if line.strip() != "READY":
        process.kill()
        raise RuntimeError(f"node process {name} did not start: {line!r}")
    return process


async def answer(driver: jt.Node, agent_id: str) -> str:
    """The node the agent answers from, once it answers."""
    while True:
        try:
            ref = await driver.lookup(agent_id)
            where = await driver.call(ref, jt.Instruction("where"), timeout=1.0)
            return str(where)
        except jt.JidoError:
            await trio.sleep(0.05)


async def one_kill(driver: jt.Node, victim: Process, agents: int) -> list[float]:
    ids = [f"{victim.name}-{i}" for i in range(agents)]
    with trio.fail_after(30):
        for agent_id in ids:
            where = await answer(driver, agent_id)
            assert where == victim.name, (agent_id, where)
    victim.kill()
    killed = trio.current_time()
    log(f"{time.strftime('%H:%M:%S')} killed {victim.name}")
    times: list[float] = []

    async def wait_for(agent_id: str) -> None:
        while True:
            where = await answer(driver, agent_id)
            if where != victim.name:
                times.append(trio.current_time() - killed)
                return
            await trio.sleep(0.05)

    with trio.fail_after(GIVE_UP):
        async with trio.open_nursery() as nursery:
            for agent_id in ids:
                nursery.start_soon(wait_for, agent_id)
    return times


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


async def drive(args: argparse.Namespace, urls: list[str]) -> dict[str, Any]:
    survivors = [await start(name, args, urls, 0) for name in ("n1", "n2")]
    samples: list[float] = []
    per_kill: list[dict[str, float]] = []
    try:
        driver_config = attrs.evolve(
            config("driver", args.namespace, urls, args.nats_options), failover=False
        )
        async with jt.open_node(driver_config) as driver:
            for kill in range(args.kills):
                victim = await start(f"v{kill}", args, urls, args.agents)
                try:
                    times = await one_kill(driver, victim, args.agents)
                finally:
                    victim.kill()
                samples.extend(times)
                per_kill.append({"first": min(times), "last": max(times)})
                log(f"kill {kill + 1}/{args.kills}: {min(times):.2f}-{max(times):.2f} s")
    finally:
        for process in survivors:
            process.stop()
    return {
        "samples": samples,
        "per_kill": per_kill,
        "p50": statistics.median(samples),
        "p95": percentile(samples, 0.95),
        "max": max(samples),
    }


def nats_option(text: str) -> tuple[str, Any]:
    key, _, value = text.partition("=")
    return key, json.loads(value)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--agents", type=int, default=10, help="agents on each killed node")
    parser.add_argument(
        "--nats", type=nats_option, action="append", default=[], metavar="KEY=JSON",
        help="a plugin option for every node (default: the plugin's defaults)",
    )  # fmt: skip
    parser.add_argument("--lease-ttl", type=float, help="shorthand for --nats lease_ttl=...")
    parser.add_argument(
        "--verbose", action="store_true", help="node processes log warnings (failovers) too"
    )
    parser.add_argument("--serve", metavar="NAME", help=argparse.SUPPRESS)
    parser.add_argument("--namespace", default=f"failover{os.getpid()}", help=argparse.SUPPRESS)
    parser.add_argument("--urls", help=argparse.SUPPRESS)
    parser.add_argument("--nats-json", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.nats_options = {**json.loads(args.nats_json), **dict(args.nats)}
    if args.lease_ttl is not None:
        args.nats_options["lease_ttl"] = args.lease_ttl
    logging.basicConfig(
        level=logging.WARNING if args.verbose else logging.ERROR,
        stream=sys.stderr,
        format=f"%(asctime)s [{args.serve or 'driver'}] %(name)s: %(message)s",
    )
    if args.serve:
        trio.run(
            serve, args.serve, args.namespace, args.urls.split(","), args.nats_options, args.agents
        )
        return
    if args.kills < 1:
        parser.error("--kills must be at least 1")

    from jido_trio_nats.testing import start_nats_cluster

    started = time.monotonic()
    with start_nats_cluster(3) as servers:
        log(f"3-server cluster up after {time.monotonic() - started:.1f} s")
        result = trio.run(drive, args, [s.url for s in servers])
    result.update(
        {
            "kills": args.kills,
            "agents": args.agents,
            "nats_options": args.nats_options,
            "seconds": time.monotonic() - started,
            "metrics": {
                "failover_p50": {"samples": [result["p50"]], "unit": "s"},
                "failover_p95": {"samples": [result["p95"]], "unit": "s"},
                "failover_max": {"samples": [result["max"]], "unit": "s"},
            },
        }
    )
    log(
        f"failover over {len(result['samples'])} agents, {args.kills} kills: "
        f"p50 {result['p50']:.2f} s, p95 {result['p95']:.2f} s, max {result['max']:.2f} s"
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
