"""Closing a node on NATS is bounded in time and raises only JidoErrors.

A node whose NATS servers are paused or gone fences itself and its process
exits with ``NodeFenced`` (the node processes of these tests exit 3 then)
within a bounded time; asyncio tasks on the node's trio-asyncio loop that
miss a cancellation or fail while being cancelled neither hang nor escape
the engines' exit; a request to a node that holds its lease but does not
serve fails with :class:`~jido_trio.Unreachable` itself, no private subclass.

The scenarios that could hang run in child processes with a deadline, so a
regression fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import trio

import jido_trio as jt
from jido_trio_nats._connection import open_connection
from jido_trio_nats._transport import NO_RESPONDERS_GRACE
from jido_trio_nats._transport import NatsTransport
from jido_trio_nats._transport import open_transport
from jido_trio_nats.testing import NatsServer
from jido_trio_nats.testing import start_nats_cluster
from jido_trio_nats.testing import start_nats_server

from .conftest import new_namespace
from .nats_node import FENCED_EXIT
from .test_nats_failover import Worker
from .test_nats_failover import _start_worker
from .test_nats_failover import _wait_ready

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

#: Plugin options of the node processes: fence fast, and close fast.
FAST = {"lease_ttl": 1.0, "fence_after": 2.0, "connect_timeout": 0.5, "request_timeout": 0.5}
#: Seconds a fenced node process may take from losing NATS to exiting: the
#: fence itself, then closing (each engine step bounded by connect_timeout).
EXIT_BOUND = 20.0


@contextmanager
def _paused(servers: list[NatsServer]) -> Iterator[None]:
    """SIGSTOP the servers (ours, by PID) for the block."""
    for server in servers:
        os.kill(server.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for server in servers:
            os.kill(server.pid, signal.SIGCONT)


async def _exits_fenced(worker: Worker) -> float:
    """Seconds until the node process exits; it must exit as fenced."""
    started = trio.current_time()
    with trio.fail_after(EXIT_BOUND):
        code = await trio.to_thread.run_sync(worker.process.wait)
    assert worker.process.stdout is not None
    said = worker.process.stdout.read()
    assert code == FENCED_EXIT, f"exit {code}: {said!r}"
    assert "FENCED" in said
    return trio.current_time() - started


async def _fenced_after(servers: list[NatsServer], fault: str) -> None:
    namespace = new_namespace()
    worker = _start_worker("n1", namespace, [s.url for s in servers], ["a0", "a1"], options=FAST)
    try:
        await _wait_ready(worker)
        if fault == "pause":
            with _paused(servers):
                await _exits_fenced(worker)
        else:
            for server in servers:
                server.kill()
            await _exits_fenced(worker)
    finally:
        worker.stop()


@pytest.mark.parametrize("fault", ["pause", "kill"])
async def test_a_node_cut_off_from_its_server_exits_fenced(fault: str) -> None:
    with start_nats_server() as server:
        await _fenced_after([server], fault)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["pause", "kill"])
async def test_a_node_cut_off_from_its_cluster_exits_fenced(fault: str) -> None:
    with start_nats_cluster(3) as servers:
        await _fenced_after(servers, fault)


# ---------------------------------------------------------------- the loop's asyncio tasks

#: Opens a node's connection, leaves an asyncio task of the given kind on its
#: loop, closes the connection and prints how long closing took.
_LEFT_BEHIND = """
import asyncio, json, sys, time
import trio
import jido_trio as jt
from jido_trio_nats._connection import open_connection

KIND = sys.argv[2]

async def deaf():
    # Misses the one cancellation it gets, as nats-py's reconnection loop
    # does when asyncio.wait_for (Python 3.11) returns the result of a connect
    # that finished at the moment the cancellation arrived.
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        pass
    while True:
        await asyncio.sleep(0.01)

async def immortal():
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass

async def main():
    options = json.loads(sys.argv[1])
    async with open_connection(jt.Config(node_name="n1"), options) as conn:
        conn.bridge.loop.create_task({"deaf": deaf, "immortal": immortal}[KIND]())
        await trio.sleep(0.1)
        started = time.monotonic()
    print("CLOSED", time.monotonic() - started, flush=True)

trio.run(main)
"""


@pytest.mark.parametrize("kind", ["deaf", "immortal"])
def test_closing_is_bounded_when_an_asyncio_task_ignores_cancellation(
    nats_options: dict[str, Any], kind: str
) -> None:
    options = {**nats_options, "connect_timeout": 0.5}
    try:
        done = subprocess.run(
            [sys.executable, "-c", _LEFT_BEHIND, json.dumps(options), kind],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("closing the connection hung on an asyncio task that ignores cancellation")
    assert done.returncode == 0, done.stderr[-2000:]
    said, seconds = done.stdout.split()
    assert said == "CLOSED"
    # The client's close, then at most close_timeout of cancelling the rest.
    assert float(seconds) < 2 * options["connect_timeout"] + 1.0


async def test_a_background_task_failing_as_it_is_cancelled_does_not_escape(
    nats_options: dict[str, Any],
) -> None:
    async def fails_when_cancelled() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise ConnectionResetError("the socket went away as the task stopped") from None

    with trio.fail_after(10):
        async with open_connection(jt.Config(node_name="n1"), nats_options) as conn:
            conn.bridge.loop.create_task(fails_when_cancelled())
            await trio.sleep(0.1)


async def test_an_error_asyncio_reports_does_not_end_the_node(
    nats_options: dict[str, Any],
) -> None:
    async def fails() -> None:
        raise ConnectionResetError("a task nats-py started and never awaited")

    with trio.fail_after(10):
        async with jt.open_node(
            jt.Config(
                node_name="n1",
                registry="nats",
                transport="nats",
                state="nats",
                coordination="nats",
                plugin_options={"nats": nats_options},
            )
        ) as node:
            transport = node.transport
            assert isinstance(transport, NatsTransport)
            transport.conn.bridge.loop.create_task(fails())  # its exception never retrieved
            await trio.sleep(0.1)
            gc.collect()  # asyncio reports the lost exception to the loop
            await trio.sleep(0.1)
            assert [m.name for m in await transport.members()] == ["n1"]


async def test_a_member_that_does_not_serve_is_plainly_unreachable(
    nats_options: dict[str, Any],
) -> None:
    async with (
        open_transport(jt.Config(node_name="a"), nats_options),
        open_transport(jt.Config(node_name="b"), nats_options) as b,
    ):
        # "a" holds its lease but serves nothing: retried for the grace, then...
        started = trio.current_time()
        with pytest.raises(jt.Unreachable) as caught:
            await b.request("a", b"x", timeout=5)
        assert trio.current_time() - started >= NO_RESPONDERS_GRACE / 2
        # ...the public class itself, as for a node that is not a member.
        assert type(caught.value) is jt.Unreachable
        with pytest.raises(jt.Unreachable) as gone:
            await b.request("nobody", b"x", timeout=5)
        assert type(gone.value) is jt.Unreachable
