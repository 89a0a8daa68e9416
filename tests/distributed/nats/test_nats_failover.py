"""Three jido_trio node processes on a 3-server NATS JetStream cluster.

Under at-least-once load from a driver node (this process), one node process
is SIGKILLed: its agents come back on the survivors with their state, and
every acknowledged instruction is applied exactly once. Then one NATS server
is killed, and the cluster keeps serving.

Killing the NATS server that leads the membership bucket (its stream has to
elect a new leader) fences no node and moves no agent: nobody can renew a
lease during the election, so it does not count against anyone's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
import trio

import jido_trio as jt
from jido_trio_nats import NatsOptions
from jido_trio_nats.testing import NatsServer
from jido_trio_nats.testing import start_nats_cluster

from .conftest import new_namespace
from .nats_node import OPTIONS_ENV
from .nats_node import config

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("nats_node.py")
ROOT = Path(__file__).parents[3]
PLACEMENT = {"n1": ["a0", "a1", "a2"], "n2": ["a3", "a4", "a5"], "n3": ["a6", "a7", "a8"]}
PER_AGENT = 60
#: SIGKILL n1 once this many instructions were acknowledged in all.
KILL_AT = 150
RETRYABLE = (jt.Unreachable, jt.CallTimeout, jt.AgentNotFound, jt.CircuitOpen, jt.MailboxFull)


@pytest.fixture(scope="module")
def nats_cluster() -> Iterator[list[NatsServer]]:
    with start_nats_cluster(3) as servers:
        yield servers


@attrs.define(eq=False)
class Worker:
    name: str
    process: subprocess.Popen[str]

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()  # SIGKILL, by the PID we started
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.process.stdout is not None:
            self.process.stdout.close()


def _start_worker(
    name: str,
    namespace: str,
    urls: list[str],
    agents: list[str],
    options: dict[str, object] | None = None,
) -> Worker:
    """Start a node process (``options``: plugin options it overrides)."""
    process = subprocess.Popen(
        [sys.executable, str(WORKER), name, namespace, ",".join(urls), *agents],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, OPTIONS_ENV: json.dumps(options or {})},
    )
    return Worker(name, process)


async def _wait_ready(worker: Worker) -> None:
    assert worker.process.stdout is not None
    with trio.fail_after(30):
        line = await trio.to_thread.run_sync(worker.process.stdout.readline)
    assert line.strip() == "READY", f"worker {worker.name} said {line!r}"


async def _send_until_acked(
    node: jt.Node, agent_id: str, instruction: jt.Instruction
) -> jt.Receipt:
    """What a careful client does: retry with the same id until a receipt."""
    while True:
        try:
            ref = await node.lookup(agent_id)
            return await node.send_instruction(
                ref, instruction, delivery="at_least_once", timeout=5.0
            )
        except RETRYABLE:
            await trio.sleep(0.2)


async def _ledger(node: jt.Node, agent_id: str) -> dict[str, object]:
    while True:
        try:
            ref = await node.lookup(agent_id)
            value = await node.call(ref, jt.Instruction("get"), timeout=5.0)
            assert isinstance(value, dict)
            return value
        except RETRYABLE:
            await trio.sleep(0.2)


async def _load(
    node: jt.Node, round_name: str, on_progress: trio.MemorySendChannel[int] | None = None
) -> None:
    acked = 0

    async def produce(agent_id: str) -> None:
        nonlocal acked
        for i in range(PER_AGENT):
            instruction = jt.Instruction("add", {"n": i}, id=f"{round_name}-{agent_id}-{i}")
            await _send_until_acked(node, agent_id, instruction)
            acked += 1
            if on_progress is not None:
                on_progress.send_nowait(acked)

    async with trio.open_nursery() as nursery:
        for agents in PLACEMENT.values():
            for agent_id in agents:
                nursery.start_soon(produce, agent_id)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL of a real process")
async def test_sigkill_a_node_then_a_nats_server_under_load(
    nats_cluster: list[NatsServer],
) -> None:
    namespace = new_namespace()
    urls = [server.url for server in nats_cluster]
    workers = {
        name: _start_worker(name, namespace, urls, agents) for name, agents in PLACEMENT.items()
    }
    try:
        for worker in workers.values():
            await _wait_ready(worker)
        driver_config = attrs.evolve(config("driver", namespace, urls), failover=False)
        async with jt.open_node(driver_config) as driver:
            # Cross-node calls: every agent answers the driver from its own node.
            with trio.fail_after(60):
                for owner, agents in PLACEMENT.items():
                    for agent_id in agents:
                        assert (await _ledger(driver, agent_id))["node"] == owner

            progress_send, progress = trio.open_memory_channel[int](10_000)

            async def kill_n1_midway() -> None:
                async for acked in progress:
                    if acked >= KILL_AT:
                        workers["n1"].kill()
                        return

            with trio.fail_after(120):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(kill_n1_midway)
                    await _load(driver, "r1", progress_send)
            assert workers["n1"].process.returncode is not None

            expected_total = sum(range(PER_AGENT))
            with trio.fail_after(60):
                for agents in PLACEMENT.values():
                    for agent_id in agents:
                        ledger = await _ledger(driver, agent_id)
                        assert ledger["count"] == PER_AGENT, (agent_id, ledger)
                        assert ledger["total"] == expected_total, (agent_id, ledger)
            for agent_id in PLACEMENT["n1"]:
                assert (await driver.lookup(agent_id)).node in ("n2", "n3")

            # One NATS server down: the JetStream cluster (R3) keeps serving. The
            # victim is not the JetStream meta leader: a meta election on a
            # loaded 2-core machine can outlast the test's membership lease
            # (the distributed guide says to size lease_ttl above it).
            victim = _not_meta_leader(nats_cluster)
            victim.kill()
            with trio.fail_after(120):
                await _load(driver, "r2")
            with trio.fail_after(60):
                for agents in PLACEMENT.values():
                    for agent_id in agents:
                        ledger = await _ledger(driver, agent_id)
                        assert ledger["count"] == 2 * PER_AGENT, (agent_id, ledger)
                        assert ledger["total"] == 2 * expected_total, (agent_id, ledger)
    finally:
        _restore(workers, nats_cluster)


def _restore(workers: dict[str, Worker], servers: list[NatsServer]) -> None:
    """Stop the node processes; start again the servers a test killed."""
    for worker in workers.values():
        worker.stop()
    stopped = [server for server in servers if not server.running]
    for server in stopped:
        server.start()
    for server in stopped:
        server.wait_ready()


def _not_meta_leader(servers: list[NatsServer]) -> NatsServer:
    url = f"http://127.0.0.1:{servers[0].monitor_port}/jsz"
    with urllib.request.urlopen(url, timeout=5) as response:
        leader = json.load(response).get("meta_cluster", {}).get("leader")
    return next(server for server in servers if server.name != leader)


def _stream_leader(servers: list[NatsServer], stream: str) -> NatsServer:
    """The server that leads ``stream`` (from the monitoring endpoint)."""
    url = f"http://127.0.0.1:{servers[0].monitor_port}/jsz?accounts=true&streams=true"
    with urllib.request.urlopen(url, timeout=5) as response:
        report = json.load(response)
    for account in report.get("account_details", []):
        for detail in account.get("stream_detail", []):
            if detail.get("name") == stream:
                leader = detail.get("cluster", {}).get("leader")
                return next(server for server in servers if server.name == leader)
    raise LookupError(f"no stream {stream!r} on {servers[0].name}")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL of a real process")
async def test_killing_the_membership_leader_server_fences_no_node(
    nats_cluster: list[NatsServer],
) -> None:
    namespace = new_namespace()
    urls = [server.url for server in nats_cluster]
    # File storage, replicated: the slowest leader elections.
    options = {"storage": "file", "replicas": 3}
    workers = {
        name: _start_worker(name, namespace, urls, agents, options=options)
        for name, agents in PLACEMENT.items()
    }
    try:
        for worker in workers.values():
            await _wait_ready(worker)
        driver_config = attrs.evolve(config("driver", namespace, urls, **options), failover=False)
        async with jt.open_node(driver_config) as driver:
            lease_ttl = NatsOptions().lease_ttl
            victim = _stream_leader(nats_cluster, f"KV_{namespace}_nodes")
            victim.kill()
            # An election, then several leases' worth of renewals.
            deadline = trio.current_time() + 20 + 3 * lease_ttl
            while trio.current_time() < deadline:
                for worker in workers.values():
                    assert worker.process.poll() is None, f"node {worker.name} exited"
                await trio.sleep(0.5)
            with trio.fail_after(60):
                for owner, agents in PLACEMENT.items():
                    for agent_id in agents:
                        assert (await _ledger(driver, agent_id))["node"] == owner
    finally:
        _restore(workers, nats_cluster)
