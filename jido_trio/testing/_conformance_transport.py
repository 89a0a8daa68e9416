"""Conformance checks for :class:`jido_trio.abc.Transport`."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Collection
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from .._exceptions import CallTimeout
from .._exceptions import RemoteNotSupported
from .._exceptions import Unreachable
from ..abc import NodeInfo
from ..abc import RequestHandler
from ..abc import Transport
from ._conformance_common import Check
from ._conformance_common import Suite
from ._conformance_common import check
from ._conformance_common import expect_checkpoint
from ._conformance_common import opened
from ._conformance_common import opened_block
from ._conformance_common import raises

__all__ = ["TRANSPORT_SUITE", "check_transport"]

TRANSPORT_SUITE = Suite("Transport")
_check = TRANSPORT_SUITE.register


async def _echo(data: bytes) -> bytes:
    await trio.lowlevel.checkpoint()
    return b"echo:" + data


@attrs.define(eq=False)
class _Net:
    """The endpoints of one check: ``open(name, handler)`` starts a serving node."""

    factory: Callable[[str], Any]
    prefix: str
    timeout: float
    settle: float
    partition: Callable[[str, str], Any] | None = None

    def name(self, short: str) -> str:
        return f"{self.prefix}-{short}"

    @asynccontextmanager
    async def node(self, short: str, handler: RequestHandler = _echo) -> AsyncIterator[Transport]:
        async with opened(self.factory(self.name(short))) as transport:
            check(
                isinstance(transport, Transport),
                f"the factory made a {type(transport).__name__}, not a jido_trio.abc.Transport",
            )
            async with trio.open_nursery() as nursery:
                with trio.move_on_after(self.timeout) as scope:
                    await nursery.start(_serve, transport, handler)
                check(
                    not scope.cancelled_caught,
                    f"serve() did not call task_status.started() within {self.timeout}s",
                )
                yield transport
                nursery.cancel_scope.cancel()


async def _serve(
    transport: Transport,
    handler: RequestHandler,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    await transport.serve(handler, task_status=task_status)


async def _eventually(condition: Callable[[], Awaitable[bool]], within: float) -> bool:
    """Poll ``condition`` for up to ``within`` seconds (a state of another system)."""
    with trio.move_on_after(within):
        for _ in range(100):
            if await condition():
                return True
            await trio.sleep(within / 100)
    return await condition()


@_check
async def _transport_request_reply(net: _Net) -> None:
    """request returns the handler's reply, bytes exactly (empty, NUL, 64 KiB)"""
    async with net.node("a"), net.node("b") as b:
        for payload in (b"hello", b"", b"\x00\xff\x00", bytes(range(256)) * 256):
            with trio.fail_after(net.timeout):
                reply = await b.request(net.name("a"), payload, timeout=net.timeout)
            check(isinstance(reply, bytes), f"request returned {type(reply).__name__}, not bytes")
            check(
                reply == b"echo:" + payload,
                f"request of {len(payload)} bytes got a different reply ({len(reply)} bytes)",
            )


@_check
async def _transport_empty_reply(net: _Net) -> None:
    """a handler returning None or b'' gives the requester b''"""

    async def handler(data: bytes) -> bytes | None:
        await trio.lowlevel.checkpoint()
        return None if data == b"none" else b""

    async with net.node("a", handler), net.node("b") as b:
        for payload in (b"none", b"empty"):
            with trio.fail_after(net.timeout):
                reply = await b.request(net.name("a"), payload, timeout=net.timeout)
            check(reply == b"", f"handler reply for {payload!r} came back as {reply!r}, not b''")


@_check
async def _transport_send_one_way(net: _Net) -> None:
    """send delivers one-way messages to the handler, in the order sent"""
    received: list[bytes] = []
    count = 200
    all_in = trio.Event()

    async def handler(data: bytes) -> None:
        received.append(data)  # before any checkpoint: order of invocation
        if len(received) == count:
            all_in.set()
        await trio.lowlevel.checkpoint()

    async with net.node("a", handler), net.node("b") as b:
        for i in range(count):
            await b.send(net.name("a"), b"%d" % i)
        with trio.move_on_after(net.timeout):
            await all_in.wait()
    got = [int(d) for d in received]
    check(len(got) == count, f"{count} one-way messages sent, {len(got)} arrived")
    check(got == list(range(count)), f"one-way messages arrived out of order: {got[:20]}...")


@_check
async def _transport_concurrent_handlers(net: _Net) -> None:
    """the handler runs for several requests at once (a slow one blocks nobody)"""
    inside = 0
    both_in = trio.Event()

    async def handler(data: bytes) -> bytes:
        nonlocal inside
        inside += 1
        if inside == 2:
            both_in.set()
        with trio.move_on_after(net.timeout):
            await both_in.wait()
        return b"together" if both_in.is_set() else b"alone"

    async with net.node("a", handler), net.node("b") as b:
        replies: list[bytes] = []

        async def ask() -> None:
            replies.append(await b.request(net.name("a"), b"x", timeout=net.timeout * 2))

        with trio.fail_after(net.timeout * 3):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask)
                nursery.start_soon(ask)
    check(replies == [b"together"] * 2, f"two requests were handled one after the other: {replies}")


@_check
async def _transport_many_requests(net: _Net) -> None:
    """many concurrent requests each get their own reply"""
    async with net.node("a"), net.node("b") as b:
        wrong: list[int] = []

        async def ask(i: int) -> None:
            reply = await b.request(net.name("a"), b"%d" % i, timeout=net.timeout)
            if reply != b"echo:%d" % i:
                wrong.append(i)

        with trio.fail_after(net.timeout * 2):
            async with trio.open_nursery() as nursery:
                for i in range(200):
                    nursery.start_soon(ask, i)
    check(not wrong, f"{len(wrong)} of 200 concurrent requests got another request's reply")


@_check
async def _transport_nested_requests(net: _Net) -> None:
    """a handler may itself request another node (and its caller) while serving"""
    endpoints: dict[str, Transport] = {}

    async def a_handler(data: bytes) -> bytes:
        if data == b"ping":
            return b"pong"
        inner = await endpoints["a"].request(net.name("b"), b"inner", timeout=net.timeout)
        return b"a(" + inner + b")"

    async def b_handler(data: bytes) -> bytes:
        if data == b"inner":
            back = await endpoints["b"].request(net.name("a"), b"ping", timeout=net.timeout)
            return b"b(" + back + b")"
        return b"?"

    async with net.node("a", a_handler) as a, net.node("b", b_handler) as b:
        endpoints.update(a=a, b=b)
        with trio.fail_after(net.timeout * 3):
            reply = await b.request(net.name("a"), b"outer", timeout=net.timeout * 2)
    check(reply == b"a(b(pong))", f"nested request chain returned {reply!r}")


@_check
async def _transport_unknown_node(net: _Net) -> None:
    """a request to a node that does not exist raises Unreachable"""
    async with net.node("a") as a:
        with trio.fail_after(net.timeout * 2), raises(Unreachable, "request to an unknown node"):
            await a.request(net.name("nobody"), b"x", timeout=net.timeout)
        # A transport that can tell raises Unreachable; one that cannot drops it.
        with trio.fail_after(net.timeout * 2), contextlib.suppress(Unreachable):
            await a.send(net.name("nobody"), b"x")


@_check
async def _transport_request_timeout(net: _Net) -> None:
    """a request nobody answers raises CallTimeout, not before its timeout"""
    release = trio.Event()

    async def handler(data: bytes) -> bytes:
        await release.wait()
        return b"late"

    timeout = net.timeout / 10
    async with net.node("a", handler), net.node("b") as b:
        start = trio.current_time()
        with trio.fail_after(net.timeout * 2), raises(CallTimeout, "request to a silent handler"):
            await b.request(net.name("a"), b"x", timeout=timeout)
        elapsed = trio.current_time() - start
        check(
            elapsed >= timeout * 0.9,
            f"CallTimeout after {elapsed:.3f}s, before the {timeout:.3f}s timeout",
        )
        release.set()
        with trio.fail_after(net.timeout):
            reply = await b.request(net.name("a"), b"y", timeout=net.timeout)
        check(reply == b"late", "the node stopped answering after a request timed out")


@_check
async def _transport_handler_error(net: _Net) -> None:
    """a handler that raises fails that request only; the node keeps serving"""

    async def handler(data: bytes) -> bytes:
        await trio.lowlevel.checkpoint()
        if data == b"boom":
            raise RuntimeError("handler failed")
        return b"fine"

    async with net.node("a", handler), net.node("b") as b:
        with (
            trio.fail_after(net.timeout * 2),
            raises((Unreachable, CallTimeout), "request whose handler raised"),
        ):
            await b.request(net.name("a"), b"boom", timeout=net.timeout / 2)
        with trio.fail_after(net.timeout):
            await b.send(net.name("a"), b"boom")
            reply = await b.request(net.name("a"), b"ok", timeout=net.timeout)
        check(reply == b"fine", "the node stopped serving after its handler raised")


@_check
async def _transport_members(net: _Net) -> None:
    """members lists this node and its live peers"""
    async with net.node("a") as a, net.node("b") as b:

        async def both_alive() -> bool:
            seen = {m.name: m for m in await a.members()}
            return all(net.name(n) in seen and seen[net.name(n)].alive for n in "ab")

        await _eventually(both_alive, net.settle)
        members = await a.members()
        for m in members:
            check(isinstance(m, NodeInfo), f"members() returned {m!r}, not a NodeInfo")
        alive = {m.name for m in members if m.alive}
        check(
            {net.name("a"), net.name("b")} <= alive,
            f"members() of a shows alive {sorted(alive)}; expected both a and b",
        )
        own = {m.name for m in await b.members() if m.alive}
        check(net.name("b") in own, f"members() of b does not list b itself: {sorted(own)}")


@_check
async def _transport_node_leaves(net: _Net) -> None:
    """a node that stops serving becomes Unreachable, and can come back (with
    another incarnation, if the transport tells incarnations)"""

    async def incarnation_of_b() -> str:
        return next((m.incarnation for m in await a.members() if m.name == net.name("b")), "")

    async with net.node("a") as a:
        async with net.node("b") as b:
            with trio.fail_after(net.timeout):
                await a.request(net.name("b"), b"x", timeout=net.timeout)
            before = await incarnation_of_b()
            del b
        outcomes: list[str] = []

        async def b_unreachable() -> bool:
            try:
                await a.request(net.name("b"), b"x", timeout=net.timeout / 10)
            except Unreachable:
                return True
            except CallTimeout:
                outcomes.append("CallTimeout")
                return False
            outcomes.append("a reply")
            return False

        check(
            await _eventually(b_unreachable, net.settle),
            f"requests to a node that left got {outcomes[-1:]} for {net.settle}s, "
            "expected Unreachable",
        )

        async def b_gone() -> bool:
            return not any(m.name == net.name("b") and m.alive for m in await a.members())

        check(
            await _eventually(b_gone, net.settle),
            f"members() still shows the departed node alive {net.settle}s after it left",
        )
        async with net.node("b"):
            with trio.fail_after(net.timeout):
                reply = await a.request(net.name("b"), b"again", timeout=net.timeout)
            check(reply == b"echo:again", "a node that came back under its name is not reachable")
            if before:
                # NodeInfo.incarnation tells the new membership from the old
                # one (callers forget what they learnt of the old one).
                after = await incarnation_of_b()
                check(
                    after != before,
                    f"a node that left and came back kept its incarnation {before!r}",
                )


@_check
async def _transport_members_partitioned(net: _Net) -> None:
    """a peer cut off by a partition is not alive in members(), and alive again once healed

    Runs only when check_transport is given ``partition=``.
    """
    assert net.partition is not None
    async with net.node("a") as a, net.node("b"):
        b_name = net.name("b")

        async def b_alive() -> bool:
            return any(m.name == b_name and m.alive for m in await a.members())

        check(await _eventually(b_alive, net.settle), "members() of a never showed b alive")
        async with opened_block(net.partition(net.name("a"), b_name)):

            async def b_cut_off() -> bool:
                return not await b_alive()

            check(
                await _eventually(b_cut_off, net.settle),
                f"members() still shows b alive {net.settle}s after a partition cut it off",
            )
            with (
                trio.fail_after(net.timeout * 2),
                raises((Unreachable, CallTimeout), "request across a partition"),
            ):
                await a.request(b_name, b"x", timeout=net.timeout / 10)
        check(
            await _eventually(b_alive, net.settle),
            f"members() does not show b alive {net.settle}s after the partition healed",
        )


@_check
async def _transport_checkpoints(net: _Net) -> None:
    """send, request and members are Trio checkpoints"""
    async with net.node("a"), net.node("b") as b:
        with expect_checkpoint("Transport.send"):
            await b.send(net.name("a"), b"x")
        with expect_checkpoint("Transport.request"):
            await b.request(net.name("a"), b"x", timeout=net.timeout)
        with expect_checkpoint("Transport.members"):
            await b.members()


async def _local_only(transport: Transport, net: _Net) -> None:
    check(not transport.supports_remote, "not local-only")
    with raises(RemoteNotSupported, "send to another node on a local-only transport"):
        await transport.send(net.name("other"), b"x")
    with raises(RemoteNotSupported, "request to another node on a local-only transport"):
        await transport.request(net.name("other"), b"x", timeout=net.timeout)
    members = await transport.members()
    names = [m.name for m in members]
    check(names == [net.name("only")], f"members() of a local-only transport is {names}")


#: Check names run when the transport reports ``supports_remote = False``.
LOCAL_ONLY_CHECK = "local_only"
#: The check that runs only with ``partition=``.
PARTITION_CHECK = "members_partitioned"


async def check_transport(
    factory: Callable[[str], Any],
    *,
    skip: Collection[str] = (),
    timeout: float = 5.0,
    settle: float = 5.0,
    partition: Callable[[str, str], Any] | None = None,
) -> None:
    """Run every Transport check on endpoints from ``factory``.

    :param factory: ``factory(node_name)`` returns an async context manager
        yielding a :class:`~jido_trio.abc.Transport` for the node
        ``node_name`` (or the transport itself, or an awaitable of it). All
        endpoints a factory makes must be able to reach each other (one hub,
        one server, one cluster). Each check uses node names of its own.
    :param skip: names of checks not to run (see :data:`TRANSPORT_CHECKS`).
    :param timeout: seconds an exchange may take before the check fails (a
        tenth of it is used as a short request timeout).
    :param settle: seconds a departed node may take to be seen as gone.
    :param partition: optional fault injection: ``partition(node_a, node_b)``
        returns a context manager (sync or async) that cuts all traffic
        between the two endpoints for its block. With it, the check
        ``members_partitioned`` requires ``members()`` to show a cut-off
        peer as not alive (or not at all) within ``settle``; without it that
        check passes without running.
    :raises AssertionError: naming the first check that failed and why.

    A transport whose ``supports_remote`` is false is only checked to raise
    :class:`~jido_trio.RemoteNotSupported` for other nodes.
    """
    run_id = uuid.uuid4().hex[:8]
    probe = _Net(factory=factory, prefix=f"t{run_id}-probe", timeout=timeout, settle=settle)
    async with opened(factory(probe.name("only"))) as transport:
        check(
            isinstance(transport, Transport),
            f"the factory made a {type(transport).__name__}, not a jido_trio.abc.Transport",
        )
        remote = transport.supports_remote
        if not remote:
            try:
                await _local_only(transport, probe)
            except Exception as exc:
                raise AssertionError(
                    f"Transport conformance check {LOCAL_ONLY_CHECK!r} failed: {exc}"
                ) from exc
            return

    async def run_one(item: Check) -> None:
        net = _Net(
            factory=factory,
            prefix=f"t{run_id}-{item.name}",
            timeout=timeout,
            settle=settle,
            partition=partition,
        )
        await item.fn(net)

    if partition is None:
        skip = {*skip, PARTITION_CHECK}
    await TRANSPORT_SUITE.run(skip, run_one)
