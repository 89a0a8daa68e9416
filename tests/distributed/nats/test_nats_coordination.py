"""The NATS Coordination engine on a real nats-server.

Leases expire on the server's clock, so these tests run on the real clock
with a small ttl (no MockClock); every wait is bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest
import trio

import jido_trio as jt
from jido_trio.abc import Lease
from jido_trio.testing.conformance import check_coordination

pytest.importorskip("jido_trio_nats")

from jido_trio_nats._coordination import NatsCoordination
from jido_trio_nats._coordination import open_coordination

#: Lease ttl of the conformance run: every wait of the suite is a multiple of it.
TTL = 0.5

Opener = Callable[..., AbstractAsyncContextManager[NatsCoordination]]


@pytest.fixture
def open_coord(nats_options: dict[str, Any]) -> Opener:
    """Open a Coordination as node ``node`` (its own connection) in this test's namespace."""

    def make(node: str = "n1", **extra: Any) -> AbstractAsyncContextManager[NatsCoordination]:
        config = jt.Config(node_name=node, coordination="nats")
        return open_coordination(config, {**nats_options, **extra})

    return make


async def test_conformance(fresh_options: Callable[[], dict[str, Any]]) -> None:
    def factory() -> AbstractAsyncContextManager[NatsCoordination]:
        return open_coordination(jt.Config(node_name="conformance"), fresh_options())

    with trio.fail_after(60):
        await check_coordination(factory, ttl=TTL)


async def test_two_nodes_contend_for_one_lock(open_coord: Opener) -> None:
    async with open_coord("n1") as c1, open_coord("n2") as c2:
        assert c1.conn is not c2.conn
        inside = 0
        overlaps = 0
        tokens: list[int] = []

        async def worker(c: NatsCoordination) -> None:
            nonlocal inside, overlaps
            async with c.lock("shared", ttl=30) as lease:
                tokens.append(lease.token)
                inside += 1
                overlaps += inside > 1
                await trio.sleep(0.01)
                inside -= 1

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for i in range(10):
                    nursery.start_soon(worker, c1 if i % 2 else c2)
        assert overlaps == 0
        assert len(tokens) == 10
        assert tokens == sorted(set(tokens))

        # A waiter on n2 is woken promptly by a release on n1.
        got = trio.Event()
        async with trio.open_nursery() as nursery:
            async with c1.lock("shared", ttl=30) as first:

                async def wait_on_n2() -> None:
                    async with c2.lock("shared", ttl=30) as second:
                        assert second.token > first.token
                        got.set()

                nursery.start_soon(wait_on_n2)
                await trio.sleep(0.3)
                assert not got.is_set()
                released = trio.current_time()
            with trio.fail_after(5):
                await got.wait()
            assert trio.current_time() - released < 0.5


async def test_lapsed_lease_taken_by_other_node(open_coord: Opener) -> None:
    async with open_coord("n1") as c1, open_coord("n2") as c2:
        async with c1.lock("L", ttl=0.5, holder="slow") as first:
            with trio.fail_after(5):
                async with c2.lock("L", ttl=30, holder="next") as second:
                    assert trio.current_time() >= first.expires_at
                    assert second.token > first.token
                    # The lapsed holder leaves while the next one holds: no release.
        with trio.fail_after(5):
            async with c2.lock("L", ttl=30) as third:
                assert third.token > second.token


_HOLDER = textwrap.dedent(
    """
    import json, sys, trio
    import jido_trio as jt
    from jido_trio_nats._coordination import open_coordination

    async def main():
        options = json.loads(sys.argv[1])
        async with open_coordination(jt.Config(node_name="doomed"), options) as c:
            lock = c.lock("crash", ttl=float(sys.argv[2]), holder="doomed")
            lease = await lock.__aenter__()
            print(lease.token, flush=True)
            await trio.sleep_forever()

    trio.run(main)
    """
)


@asynccontextmanager
async def _killed_holder(options: dict[str, Any], ttl: float) -> AsyncIterator[int]:
    """Start a process that takes lock ``crash``, SIGKILL it; yields its token."""
    async with trio.open_nursery() as nursery:
        command = [sys.executable, "-c", _HOLDER, json.dumps(options), str(ttl)]
        run = partial(trio.run_process, command, stdout=subprocess.PIPE, check=False)
        proc: trio.Process = await nursery.start(run)
        try:
            assert proc.stdout is not None
            line = b""
            with trio.fail_after(20):
                while not line.endswith(b"\n"):
                    chunk = await proc.stdout.receive_some()
                    assert chunk, "the holder process exited early"
                    line += chunk
            proc.kill()  # SIGKILL: no release, the connection just drops
            with trio.fail_after(5):
                await proc.wait()
            yield int(line)
        finally:
            if proc.returncode is None:
                proc.kill()


async def test_killed_holder_is_replaced_after_ttl(
    open_coord: Opener, nats_options: dict[str, Any]
) -> None:
    async with _killed_holder(nats_options, ttl=1.0) as dead_token, open_coord("n2") as c:
        killed = trio.current_time()
        with trio.fail_after(5):
            async with c.lock("crash", ttl=30) as lease:
                pass
        assert lease.token > dead_token
        # Not before the dead holder's lease could have lapsed, not long after it.
        assert trio.current_time() - killed < 3


async def test_killed_holder_lapses_on_the_server(
    open_coord: Opener, nats_options: dict[str, Any]
) -> None:
    """Nobody waits while the holder dies: the server itself drops its lease."""
    async with _killed_holder(nats_options, ttl=1.0) as dead_token:
        await trio.sleep(2.5)
        async with open_coord("n2") as c:
            with trio.fail_after(0.5):  # free at once: no ttl to wait out
                async with c.lock("crash", ttl=30) as lease:
                    assert lease.token > dead_token


async def test_election_failover_between_nodes(open_coord: Opener) -> None:
    async with open_coord("n1") as c1, open_coord("n2") as c2:
        elected: list[Lease] = []
        beta_leads = trio.Event()

        async def beta(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            task_status.started()
            async with c2.elect("G", candidate="beta", ttl=0.5) as lease:
                elected.append(lease)
                beta_leads.set()
                await trio.sleep_forever()

        async with trio.open_nursery() as nursery:
            async with c1.elect("G", candidate="alpha", ttl=0.5) as alpha:
                await nursery.start(beta)
                await trio.sleep(1.5)  # three ttls: alpha keeps renewing
                assert not elected
            with trio.fail_after(2):
                await beta_leads.wait()
            assert elected[0].holder == "beta"
            assert elected[0].token > alpha.token
            nursery.cancel_scope.cancel()


async def test_leader_that_loses_its_lease_is_cancelled(open_coord: Opener) -> None:
    async with open_coord("n1") as c:
        reached_end = False
        with trio.fail_after(5), pytest.raises(jt.StateConflict):
            async with c.elect("G", candidate="alpha", ttl=0.6):
                # Someone removes the leader's key behind its back.
                await c.conn.bridge.run(c.conn.js.publish, f"$KV.{c.conn.name('locks')}.elect/G")
                await trio.sleep(3)
                reached_end = True
        assert not reached_end
        with trio.fail_after(2):
            async with c.elect("G", candidate="beta", ttl=0.6) as lease:
                assert lease.holder == "beta"


async def test_barrier_across_nodes(open_coord: Opener) -> None:
    async with open_coord("n1") as c1, open_coord("n2") as c2:
        for _round in range(2):  # reusable
            passed: list[str] = []

            async def party(c: NatsCoordination, who: str, passed: list[str]) -> None:
                await c.barrier("B", 3)
                passed.append(who)

            with trio.fail_after(5):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(party, c1, "a", passed)
                    nursery.start_soon(party, c2, "b", passed)
                    await trio.sleep(0.3)
                    assert not passed
                    nursery.start_soon(party, c2, "c", passed)
            assert sorted(passed) == ["a", "b", "c"]


async def test_cancelled_acquire_leaks_no_lease(open_coord: Opener) -> None:
    async with open_coord("n1") as c:
        # Cancel at many points of the acquire, including mid-write.
        for delay in (0, 0.0002, 0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.006):
            with trio.move_on_after(delay):
                async with c.lock("L", ttl=30):
                    await trio.sleep_forever()
            with trio.fail_after(2):
                async with c.lock("L", ttl=30):
                    pass


async def test_unreachable_server(nats_options: dict[str, Any]) -> None:
    from jido_trio_nats.testing import start_nats_server

    with start_nats_server() as server:
        options = {**nats_options, "servers": [server.url], "request_timeout": 0.5}
        async with open_coordination(jt.Config(node_name="n1"), options) as c:
            async with c.lock("L", ttl=5):
                pass
            server.stop()
            with trio.fail_after(5), pytest.raises((jt.Unreachable, jt.CallTimeout)):
                async with c.lock("L", ttl=5):
                    pass
            with trio.fail_after(5), pytest.raises((jt.Unreachable, jt.CallTimeout)):
                await c.barrier("B", 2)


async def test_selected_by_name_in_a_node(nats_options: dict[str, Any]) -> None:
    config = jt.Config(node_name="n1", coordination="nats", plugin_options={"nats": nats_options})
    async with jt.open_node(config) as node:
        assert isinstance(node.coordination, NatsCoordination)
        with trio.fail_after(5):
            async with node.coordination.lock("L", ttl=5) as lease:
                assert lease.holder.startswith("n1")
