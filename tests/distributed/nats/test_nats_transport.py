"""The ``nats`` transport against a real nats-server: conformance, membership
leases and fencing, limits, and two nodes talking through NATS."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import attrs
import msgspec
import pytest
import trio

import jido_trio as jt
from jido_trio.testing.conformance import check_transport
from jido_trio_nats._jetstream import kv_read
from jido_trio_nats._jetstream import kv_write
from jido_trio_nats._transport import MAX_PAYLOAD
from jido_trio_nats._transport import NatsTransport
from jido_trio_nats._transport import open_transport
from jido_trio_nats.testing import NatsServer
from jido_trio_nats.testing import start_nats_server
from tests._polling import wait_until


def transport(name: str, options: dict[str, Any]) -> Any:
    return open_transport(jt.Config(node_name=name), options)


async def echo(data: bytes) -> bytes:
    await trio.lowlevel.checkpoint()
    return data


async def names(t: NatsTransport) -> set[str]:
    return {m.name for m in await t.members() if m.alive}


async def test_transport_conformance(nats_options: dict[str, Any]) -> None:
    await check_transport(lambda name: transport(name, nats_options), settle=3.0)


async def test_members_and_leaving(nats_options: dict[str, Any]) -> None:
    with trio.fail_after(5):
        async with transport("a", nats_options) as a:
            async with transport("b", nats_options) as b:
                assert await names(a) == {"a", "b"} == await names(b)
                before = time.time()
                members = {m.name: m for m in await a.members()}
                assert members["b"].last_seen <= before + 1
                await trio.sleep(a.conn.options.heartbeat_interval * 1.5)
                renewed = {m.name: m for m in await a.members()}
                assert renewed["b"].last_seen > members["b"].last_seen
            # A node that leaves deletes its lease: gone at once, no polling.
            assert await names(a) == {"a"}


async def test_errors_of_the_body_pass_through(nats_options: dict[str, Any]) -> None:
    with pytest.raises(KeyError):
        async with transport("a", nats_options):
            raise KeyError("mine")


async def test_unknown_node_is_unreachable_at_once(nats_options: dict[str, Any]) -> None:
    async with transport("a", nats_options) as a:
        start = trio.current_time()
        with trio.fail_after(2), pytest.raises(jt.Unreachable):
            await a.request("nobody", b"x", timeout=5)
        assert trio.current_time() - start < 0.5
        await a.send("nobody", b"x")  # one-way: NATS cannot tell, so no error


async def test_request_waits_briefly_for_a_member_to_serve(nats_options: dict[str, Any]) -> None:
    async with (
        transport("a", nats_options) as a,
        transport("b", nats_options) as b,
        trio.open_nursery() as nursery,
    ):

        async def serve_late() -> None:
            await trio.sleep(0.05)
            await nursery.start(b.serve, echo)

        nursery.start_soon(serve_late)
        with trio.fail_after(2):
            assert await a.request("b", b"x", timeout=2) == b"x"
        with pytest.raises(RuntimeError, match="already"):
            await b.serve(echo)
        nursery.cancel_scope.cancel()


async def test_oversize_is_invalid(nats_options: dict[str, Any]) -> None:
    async with transport("a", nats_options) as a, trio.open_nursery() as nursery:
        await nursery.start(a.serve, echo)
        big = bytes(MAX_PAYLOAD + 1)
        with trio.fail_after(5):
            with pytest.raises(jt.InvalidMessage, match="exceed"):
                await a.request("a", big, timeout=1)
            with pytest.raises(jt.InvalidMessage, match="exceed"):
                await a.send("a", big)
            almost = bytes(MAX_PAYLOAD - 1024)
            assert await a.request("a", almost, timeout=5) == almost
        nursery.cancel_scope.cancel()


def other_process(options: dict[str, Any]) -> dict[str, Any]:
    """Options for a second process of a node: other options, so its own connection
    (one process shares one connection per node name and options)."""
    return {**options, "connect_timeout": 1.5}


async def test_same_name_waits_then_fails(nats_options: dict[str, Any]) -> None:
    options = {**nats_options, "lease_ttl": 1.0}
    async with transport("a", options):
        start = trio.current_time()
        with trio.fail_after(4), pytest.raises(jt.ConfigError, match="in use"):
            async with transport("a", other_process(options)):
                pass  # pragma: no cover
        assert trio.current_time() - start >= 1.0  # waited for the lease to lapse


async def test_same_name_claims_once_the_holder_leaves(nats_options: dict[str, Any]) -> None:
    options = {**nats_options, "lease_ttl": 2.0}
    claimed = trio.Event()

    async def second() -> None:
        async with transport("a", other_process(options)) as again:
            claimed.set()
            assert await names(again) == {"a"}

    with trio.fail_after(4):
        async with trio.open_nursery() as nursery:
            async with transport("a", options):
                nursery.start_soon(second)
                await trio.sleep(0.3)
                assert not claimed.is_set()
            start = trio.current_time()
            await claimed.wait()
            assert trio.current_time() - start < 1.0


_MEMBER_SCRIPT = """
import json, sys, trio
import jido_trio as jt
from jido_trio_nats._transport import open_transport

async def main():
    async with open_transport(jt.Config(node_name=sys.argv[1]), json.loads(sys.argv[2])):
        await trio.sleep_forever()

trio.run(main)
"""


async def test_killed_process_lapses_after_lease_ttl(nats_options: dict[str, Any]) -> None:
    options = {**nats_options, "lease_ttl": 1.5}
    ttl = options["lease_ttl"]
    async with transport("watcher", options) as watcher:

        async def joined() -> bool:
            return "doomed" in await names(watcher)

        async def gone() -> bool:
            return not await joined()

        process = await trio.lowlevel.open_process(
            [sys.executable, "-c", _MEMBER_SCRIPT, "doomed", json.dumps(options)],
            stdin=subprocess.DEVNULL,
        )
        try:
            with trio.fail_after(10):
                await wait_until(joined)
        finally:
            process.kill()  # SIGKILL: no chance to leave the cluster
            killed = trio.current_time()
            with trio.CancelScope(shield=True):
                await process.wait()
        with trio.fail_after(ttl + 2):
            await wait_until(gone)
        lapsed = trio.current_time() - killed
        # It lasted until its last renewal plus lease_ttl (renewals every ttl/4).
        assert ttl * 0.7 <= lapsed <= ttl + 1.5, lapsed
        # Its name is free again.
        with trio.fail_after(2):
            async with transport("doomed", options):
                pass


async def test_fenced_when_nats_is_gone() -> None:
    with start_nats_server() as server:
        options = {
            "servers": [server.url],
            "namespace": "fence",
            "storage": "memory",
            "lease_ttl": 1.0,
            "fence_after": 1.5,
            "connect_timeout": 0.5,
            "request_timeout": 0.5,
        }
        async with transport("a", options) as a:
            with trio.move_on_after(0.6):
                await a.wait_fenced()
                pytest.fail("fenced while NATS was up")
            await trio.to_thread.run_sync(_kill, server)
            stopped = trio.current_time()
            with trio.fail_after(3):
                await a.wait_fenced()
            waited = trio.current_time() - stopped
            # Within fence_after of its last renewal (renewals every lease_ttl / 4).
            assert waited <= options["fence_after"] + 0.3
            assert a.fence_reason is not None and "renewed" in a.fence_reason
            with trio.fail_after(1), pytest.raises(jt.Unreachable):
                await a.request("a", b"x", timeout=1)


def _kill(server: NatsServer) -> None:
    server.kill()


async def test_fenced_when_another_process_takes_the_name(nats_options: dict[str, Any]) -> None:
    async with transport("a", nats_options) as a:
        key = "a"
        current = await a.conn.bridge.run(kv_read, a.nodes, key)
        intruder = msgspec.msgpack.encode({"node": "a", "incarnation": "other", "since": 0.0})
        assert await a.conn.bridge.run(kv_write, a.nodes, key, intruder, last=current.revision)
        with trio.fail_after(a.conn.options.heartbeat_interval + 1):
            await a.wait_fenced()
        assert a.fence_reason is not None and "another process" in a.fence_reason


# ---------------------------------------------------------------- two nodes


@attrs.frozen
class Tally:
    count: int = 0


class Tallier(jt.Agent):
    type = "tallier"
    State = Tally

    @jt.action("add")
    async def add(self, state: Tally, by: int = 1) -> Tally:
        return attrs.evolve(state, count=state.count + by)

    @jt.action("get")
    async def get(self, state: Tally) -> None:
        self.ctx.reply({"count": state.count, "node": self.ctx.node_name})


@pytest.mark.parametrize("state", ["memory", "nats"])
async def test_two_nodes_through_nats(nats_options: dict[str, Any], state: str) -> None:
    if state == "nats":
        pytest.importorskip("jido_trio_nats._state")

    def config(name: str) -> jt.Config:
        return jt.Config(
            node_name=name,
            registry="nats",
            transport="nats",
            state=state,
            coordination="local",
            plugin_options={"nats": nats_options},
        )

    with trio.fail_after(10):
        async with jt.open_node(config("n1")) as n1, jt.open_node(config("n2")) as n2:
            ref = await n1.start_agent(Tallier, "t1")
            found = await n2.lookup("t1")
            assert found.node == "n1"
            for _ in range(3):
                await n2.send_instruction(found, jt.Instruction("add", {"by": 2}))
            reply = await n2.call(found, jt.Instruction("get"), timeout=5)
            assert reply == {"count": 6, "node": "n1"}
            assert await n2.check_agent_health(found) == jt.Health.HEALTHY
            assert {m.name for m in await n2.transport.members()} == {"n1", "n2"}
            await n1.stop_agent(ref)
