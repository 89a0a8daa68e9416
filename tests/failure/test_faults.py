"""Fault injection on the in-process hub: drop, delay, duplicate, reorder, partition."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from collections.abc import Callable
from contextlib import AsyncExitStack
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

import jido_trio as jt
from jido_trio.local._hub import _hubs
from jido_trio.local._hub import open_hub
from jido_trio.local._transport import LocalTransport
from jido_trio.testing._conformance_transport import check_transport
from jido_trio.testing._faults import Faults
from jido_trio.testing._faults import faults
from jido_trio.testing._faults import frame_kind
from tests._agents import Counter
from tests._agents import CounterState

_hub_names = itertools.count()


def new_hub() -> str:
    return f"faults-{next(_hub_names)}"


def is_kind(*kinds: str) -> Callable[[bytes], bool]:
    return lambda frame: frame_kind(frame) in kinds


def not_ping(frame: bytes) -> bool:
    """Application traffic: leave the failure detector's heartbeats alone."""
    return frame_kind(frame) != "ping"


@asynccontextmanager
async def nodes(*names: str) -> AsyncIterator[tuple[Faults, list[jt.Node]]]:
    """Nodes ``names`` on a fresh hub, with that hub's fault plan."""
    hub = new_hub()
    options = {"local": {"hub": hub}, "memory": {"hub": hub}}
    async with AsyncExitStack() as stack:
        opened = [
            await stack.enter_async_context(
                jt.open_node(jt.Config(node_name=name, plugin_options=options))
            )
            for name in names
        ]
        yield faults(hub), opened


@asynccontextmanager
async def endpoints(
    *names: str,
) -> AsyncIterator[tuple[Faults, dict[str, LocalTransport], dict[str, list[bytes]]]]:
    """Bare transports on a fresh hub; each records the frames it receives, in order."""
    hub_name = new_hub()
    received: dict[str, list[bytes]] = {name: [] for name in names}

    def recorder(name: str) -> jt.abc.RequestHandler:
        async def handler(data: bytes) -> bytes:
            received[name].append(data)  # before any checkpoint: arrival order
            await trio.lowlevel.checkpoint()
            return b"re:" + data

        return handler

    async with open_hub(hub_name) as hub, trio.open_nursery() as nursery:
        transports = {name: LocalTransport(node_name=name, hub=hub) for name in names}
        for name, transport in transports.items():
            await nursery.start(transport.serve, recorder(name))
        yield faults(hub_name), transports, received
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- plan


async def test_faults_needs_a_joined_hub() -> None:
    with pytest.raises(LookupError, match="no hub named 'nobody'"):
        faults("nobody")
    async with nodes("a") as (plan, _):
        name = plan.hub.name
        assert faults(name) is plan
        assert _hubs[name].extensions["faults"] is plan
    with pytest.raises(LookupError):
        faults(name)


def intercepted(plan: Faults) -> bool:
    """Whether the hub's transports leave their fast path."""
    return plan.hub.interceptor is not None


def kinds(plan: Faults) -> list[str]:
    return [rule.kind for rule in plan.rules]


async def test_no_rule_means_no_interceptor() -> None:
    async with nodes("a", "b") as (plan, _):
        assert not intercepted(plan)
        with plan.delay(1.0) as rule:
            assert plan.hub.interceptor is plan
            assert list(plan.rules) == [rule]
        assert not intercepted(plan)
        assert kinds(plan) == []
        assert not rule.installed
        rule.remove()  # idempotent
        plan.drop(dest="a")
        plan.partition("a", "b")
        assert kinds(plan) == ["drop", "partition"]
        plan.heal()
        assert kinds(plan) == ["drop"]
        plan.clear()
        assert kinds(plan) == []
        assert not intercepted(plan)


async def test_invalid_rules_are_refused() -> None:
    async with nodes("a") as (plan, _):
        with pytest.raises(ValueError, match="probability"):
            plan.drop(1.5)
        with pytest.raises(ValueError, match="seconds"):
            plan.delay(-1)
        with pytest.raises(ValueError, match="window"):
            plan.reorder(1)
        with pytest.raises(ValueError, match="max_hold"):
            plan.reorder(max_hold=0)
        with pytest.raises(ValueError, match="copies"):
            plan.duplicate(copies=0)
        with pytest.raises(ValueError, match="limit"):
            plan.drop(limit=0)
        with pytest.raises(ValueError, match="both sides"):
            plan.partition(["a", "b"], "b")
        with pytest.raises(ValueError, match="source"):
            plan.drop(source=[])
        with pytest.raises(TypeError, match="match"):
            plan.drop(match=b"tell")  # type: ignore[arg-type]
        assert not plan.rules


# ---------------------------------------------------------------- drop


async def test_dropped_request_times_out_at_its_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with nodes("a", "b") as (plan, (a, b)):
        ref = await a.start_agent(Counter, "c")
        rule = plan.drop(source="b", dest="a", match=not_ping)
        start = trio.current_time()
        with pytest.raises(jt.CallTimeout):
            await b.send_instruction(ref, jt.Instruction("increment"), timeout=2)
        assert trio.current_time() - start == pytest.approx(2)
        start = trio.current_time()
        with pytest.raises(jt.CallTimeout):
            await b.call(ref, jt.Instruction("get"), timeout=0.5)
        assert trio.current_time() - start == pytest.approx(0.5)
        assert await b.check_agent_health(ref, timeout=1) is jt.Health.UNREACHABLE
        # The send is idempotent, so it was tried retry_attempts (3) times within
        # its deadline; the call and the health check once each.
        assert rule.hits == 3 + 1 + 1
        # The other direction and the owner itself are not affected.
        assert await a.call(ref, jt.Instruction("get")) == 0
        rule.remove()
        # Never delivered, so never applied.
        assert await a.call(ref, jt.Instruction("get")) == 0
        # Five failures in a row to the same agent opened b's breaker for it.
        with pytest.raises(jt.CircuitOpen):
            await b.call(ref, jt.Instruction("get"))


async def test_drop_with_probability_is_seeded(autojump_clock: trio.testing.MockClock) -> None:
    async def pattern(seed: int) -> list[bool]:
        async with endpoints("a", "b") as (plan, net, received):
            faults(plan.hub.name, seed=seed)
            rule = plan.drop(0.5)
            outcome = []
            for i in range(40):
                try:
                    await net["b"].request("a", b"%d" % i, timeout=1)
                except jt.CallTimeout:
                    outcome.append(False)
                else:
                    outcome.append(True)
            assert rule.hits == outcome.count(False)
            assert received["a"] == [b"%d" % i for i in range(40) if outcome[i]]
            return outcome

    first = await pattern(7)
    assert 0 < first.count(True) < 40
    assert await pattern(7) == first
    assert await pattern(8) != first


async def test_lost_reply_still_applies_and_a_retry_dedupes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with nodes("a", "b") as (plan, (a, b)):
        ref = await a.start_agent(Counter, "c")
        rule = plan.drop(reply=True, source="b", match=not_ping, limit=1)
        instruction = jt.Instruction("increment", {"by": 5})
        # The first reply is lost; the node retries with the same instruction id
        # and learns that the first attempt was applied.
        receipt = await b.send_instruction(ref, instruction, timeout=3)
        assert rule.exhausted and rule.hits == 1
        assert receipt.status == "already_processed"
        assert await b.call(ref, jt.Instruction("get")) == 5


async def test_drop_only_matching_frames(autojump_clock: trio.testing.MockClock) -> None:
    async with nodes("a", "b") as (plan, (a, b)):
        ref = await a.start_agent(Counter, "c")
        rule = plan.drop(match=is_kind("call"))
        assert (await b.send_instruction(ref, jt.Instruction("increment"))).status == "accepted"
        assert await b.query_agent(ref) == CounterState(count=1)
        with pytest.raises(jt.CallTimeout):
            await b.call(ref, jt.Instruction("get"), timeout=1)
        assert rule.hits == 1


async def test_dropped_one_way_messages_vanish() -> None:
    async with endpoints("a", "b") as (plan, net, received):
        with plan.drop(match=lambda frame: frame.startswith(b"odd")):
            for i in range(6):
                await net["b"].send("a", (b"odd" if i % 2 else b"even") + b"%d" % i)
        assert await net["b"].request("a", b"sync", timeout=1) == b"re:sync"
        assert received["a"] == [b"even0", b"even2", b"even4", b"sync"]


# ---------------------------------------------------------------- delay


async def test_delay_shifts_the_reply(autojump_clock: trio.testing.MockClock) -> None:
    async with nodes("a", "b") as (plan, (a, b)):
        ref = await a.start_agent(Counter, "c")
        with plan.delay(3, source="b", dest="a", match=not_ping) as rule:
            start = trio.current_time()
            assert await b.call(ref, jt.Instruction("get")) == 0
            assert trio.current_time() - start == pytest.approx(3)
            start = trio.current_time()
            assert await a.call(ref, jt.Instruction("get")) == 0  # local: not delayed
            assert trio.current_time() - start == pytest.approx(0)
        assert rule.hits == 1
        with plan.delay(1, match=not_ping), plan.delay(0.5, match=not_ping):  # they add up
            start = trio.current_time()
            assert await b.call(ref, jt.Instruction("get")) == 0
            assert trio.current_time() - start == pytest.approx(1.5)


async def test_delay_past_the_deadline(autojump_clock: trio.testing.MockClock) -> None:
    async with nodes("a", "b") as (plan, (a, b)):
        ref = await a.start_agent(Counter, "c")
        plan.delay(10, dest="a", match=not_ping)
        start = trio.current_time()
        with pytest.raises(jt.CallTimeout):
            await b.send_instruction(ref, jt.Instruction("increment"), timeout=2)
        assert trio.current_time() - start == pytest.approx(2)
        assert plan.in_flight == 3  # the attempt and its two retries
        # They are still on their way; they arrive at about 10s.
        await plan.settle()
        assert trio.current_time() - start == pytest.approx(10, abs=2)
        assert plan.in_flight == 0
        plan.clear()
        assert not intercepted(plan)
        # Across processes the owner compares the envelope's absolute deadline
        # with its wall clock and drops such late requests; under the MockClock
        # wall time stands still, so here only the relative budget counts.
        assert await b.call(ref, jt.Instruction("get")) in (0, 1)


async def test_late_request_is_still_delivered(autojump_clock: trio.testing.MockClock) -> None:
    async with endpoints("a", "b") as (plan, net, received):
        plan.delay(10)
        with pytest.raises(jt.CallTimeout):
            await net["b"].request("a", b"late", timeout=2)
        assert trio.current_time() == pytest.approx(2)
        assert received["a"] == []
        await plan.settle()
        assert trio.current_time() == pytest.approx(10)
        assert received["a"] == [b"late"]


async def test_delay_keeps_order_of_what_it_delays(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with endpoints("a", "b") as (plan, net, received):
        faults(plan.hub.name, seed=3)
        plan.delay(0.1, jitter=1.0)
        start = trio.current_time()
        sent = [b"%d" % i for i in range(40)]
        for frame in sent:
            await net["b"].send("a", frame)
        assert trio.current_time() - start == pytest.approx(0)  # send does not wait
        assert received["a"] == []
        await plan.settle()
        assert 0.1 < trio.current_time() - start < 1.1
        assert received["a"] == sent


async def test_undelayed_messages_overtake(autojump_clock: trio.testing.MockClock) -> None:
    async with endpoints("a", "b") as (plan, net, received):
        plan.delay(5, match=lambda frame: frame.startswith(b"slow"))
        await net["b"].send("a", b"slow 1")
        assert await net["b"].request("a", b"fast", timeout=1) == b"re:fast"
        assert trio.current_time() == pytest.approx(0)
        assert await net["b"].request("a", b"slow 2", timeout=10) == b"re:slow 2"
        assert trio.current_time() == pytest.approx(5)
        assert received["a"] == [b"fast", b"slow 1", b"slow 2"]


# ---------------------------------------------------------------- duplicate


async def test_duplicated_frames_reach_the_handler_twice() -> None:
    async with endpoints("a", "b") as (plan, net, received):
        rule = plan.duplicate(copies=2, match=lambda frame: frame == b"x")
        assert await net["b"].request("a", b"x", timeout=1) == b"re:x"
        await net["b"].send("a", b"y")
        await plan.settle()
        assert rule.hits == 1
        assert sorted(received["a"]) == [b"x", b"x", b"x", b"y"]
        assert received["a"][0] == b"x"


async def test_duplicated_instructions_are_applied_once() -> None:
    async with nodes("a", "b") as (plan, (a, b)):
        ref = await a.start_agent(Counter, "c")
        rule = plan.duplicate(source="b", dest="a", match=is_kind("tell", "call"))
        receipts = [
            await b.send_instruction(ref, jt.Instruction("append", {"item": f"i{i}"}))
            for i in range(10)
        ]
        # The requester gets the reply to the first delivery.
        assert {r.status for r in receipts} == {"accepted"}
        instruction = jt.Instruction("increment", {"by": 2})
        assert await b.call(ref, instruction) is None
        await plan.settle()
        assert rule.hits == 11
        state = await a.query_agent(ref)
        assert state.log == tuple(f"i{i}" for i in range(10))
        assert state.count == 2
        # And the same id sent again is recognised as such.
        again = await b.send_instruction(ref, instruction)
        assert again.status == "already_processed"


# ---------------------------------------------------------------- reorder


async def test_reorder_shuffles_raw_frames(autojump_clock: trio.testing.MockClock) -> None:
    async with endpoints("a", "b") as (plan, net, received):
        rule = plan.reorder(window=4, seed=1)
        sent = [b"%d" % i for i in range(12)]
        for frame in sent:
            await net["b"].send("a", frame)
        await plan.settle()
        got = received["a"]
        assert sorted(got) == sorted(sent)
        assert got != sent
        # Bounded: each window of 4 is released together, never mixed with the next.
        for k in range(0, 12, 4):
            assert sorted(got[k : k + 4]) == sorted(sent[k : k + 4])
            assert got[k : k + 4] != sent[k : k + 4]
        assert rule.hits == 12


async def test_reorder_is_seeded() -> None:
    async def arrival(seed: int) -> list[bytes]:
        async with endpoints("a", "b") as (plan, net, received):
            plan.reorder(window=8, seed=seed)
            for i in range(8):
                await net["b"].send("a", b"%d" % i)
            await plan.settle()
            return received["a"]

    assert await arrival(5) == await arrival(5)


async def test_reorder_holds_at_most_max_hold(autojump_clock: trio.testing.MockClock) -> None:
    async with endpoints("a", "b") as (plan, net, received):
        plan.reorder(window=10, max_hold=0.5)
        start = trio.current_time()
        await net["b"].send("a", b"0")
        await net["b"].send("a", b"1")
        assert received["a"] == []
        await plan.settle()
        assert trio.current_time() - start == pytest.approx(0.5)
        assert received["a"] == [b"1", b"0"]


async def test_reorder_of_concurrent_requests(autojump_clock: trio.testing.MockClock) -> None:
    async with endpoints("a", "b") as (plan, net, received):
        plan.reorder(window=3, seed=2)
        replies: dict[int, bytes] = {}

        async def ask(i: int) -> None:
            replies[i] = await net["b"].request("a", b"%d" % i, timeout=5)

        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(ask, i)
                await trio.testing.wait_all_tasks_blocked()
        assert trio.current_time() - start == pytest.approx(0)  # the window filled up
        assert replies == {i: b"re:%d" % i for i in range(3)}
        assert received["a"] != [b"0", b"1", b"2"]


async def test_removing_reorder_releases_held_frames(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with endpoints("a", "b") as (plan, net, received):
        with plan.reorder(window=5, max_hold=60):
            await net["b"].send("a", b"0")
            await net["b"].send("a", b"1")
        start = trio.current_time()
        await plan.settle()
        assert trio.current_time() - start == pytest.approx(0)
        assert sorted(received["a"]) == [b"0", b"1"]


# ---------------------------------------------------------------- partition


async def test_partition_and_heal(autojump_clock: trio.testing.MockClock) -> None:
    async with nodes("a", "b", "c") as (plan, (a, b, c)):
        ra, ra2 = await a.start_agent(Counter, "ra"), await a.start_agent(Counter, "ra2")
        rb, rb2 = await b.start_agent(Counter, "rb"), await b.start_agent(Counter, "rb2")
        rule = plan.partition("a", "b")
        start = trio.current_time()
        with pytest.raises(jt.Unreachable, match="partitioned"):
            await b.call(ra, jt.Instruction("get"))
        assert trio.current_time() == start  # fails fast, like a node that is down
        assert await a.check_agent_health(rb2) is jt.Health.UNREACHABLE
        assert await b.check_agent_health(ra2) is jt.Health.UNREACHABLE
        with pytest.raises(jt.Unreachable):
            await a.send_instruction(rb, jt.Instruction("increment"))
        members = {m.name: m.alive for m in await a.transport.members()}
        assert members == {"a": True, "b": False, "c": True}
        # A third node still reaches both sides.
        assert (await c.send_instruction(ra, jt.Instruction("increment"))).status == "accepted"
        assert (await c.send_instruction(rb, jt.Instruction("increment"))).status == "accepted"
        assert await c.call(ra, jt.Instruction("get")) == 1
        assert await c.call(rb, jt.Instruction("get")) == 1
        assert await c.check_agent_health(rb2) is jt.Health.HEALTHY
        assert rule.hits >= 4
        plan.heal()
        assert not intercepted(plan)
        assert await b.call(ra, jt.Instruction("get")) == 1
        assert (await a.send_instruction(rb, jt.Instruction("increment"))).status == "accepted"
        assert await a.call(rb, jt.Instruction("get")) == 2
        assert await a.check_agent_health(rb2) is jt.Health.HEALTHY
        assert all(m.alive for m in await a.transport.members())


async def test_silent_partition_times_out(autojump_clock: trio.testing.MockClock) -> None:
    async with nodes("a", "b") as (plan, (a, b)):
        ra = await a.start_agent(Counter, "ca")
        plan.partition("b", ["a"], fail_fast=False)
        start = trio.current_time()
        with pytest.raises(jt.CallTimeout):
            await b.call(ra, jt.Instruction("get"), timeout=3)
        assert trio.current_time() - start == pytest.approx(3)


async def test_partition_drops_one_way_and_in_flight_messages(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with endpoints("a", "b", "c") as (plan, net, received):
        plan.delay(1, source="c")
        await net["c"].send("a", b"in flight")
        with plan.partition("a", ["b", "c"]):
            await net["b"].send("a", b"cut")  # no error: one-way messages just vanish
            await net["a"].send("c", b"cut")
            await plan.settle()  # the delayed one arrives during the partition: lost
        assert await net["b"].request("a", b"after", timeout=1) == b"re:after"
        assert received == {"a": [b"after"], "b": [], "c": []}


async def test_partition_loses_a_reply_in_flight(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with nodes("a", "b") as (plan, (a, b)):
        ra = await a.start_agent(Counter, "ra")

        async def cut() -> None:
            await trio.sleep(1)
            plan.partition("a", "b")

        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cut)
            with pytest.raises(jt.Unreachable, match="partitioned"):
                await b.call(ra, jt.Instruction("slow", {"seconds": 2}), timeout=10)
        # The request was handled; its reply was lost when it was sent.
        assert trio.current_time() - start == pytest.approx(2)


# ---------------------------------------------------------------- nodes going away


async def test_node_leaving_fails_messages_in_flight(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Requests to a node that stops get Unreachable at once, whether they were
    still delayed by a fault or already being handled."""
    hub = new_hub()
    async with open_hub(hub) as joined, trio.open_nursery() as nursery:
        a = LocalTransport(node_name="a", hub=joined)
        b = LocalTransport(node_name="b", hub=joined)
        a_scope = trio.CancelScope()

        async def serve_a(task_status: trio.TaskStatus[None]) -> None:
            with a_scope:
                await a.serve(_never_replies, task_status=task_status)

        await nursery.start(serve_a)
        await nursery.start(b.serve, _never_replies)
        plan = faults(hub)
        plan.delay(5, match=lambda frame: frame == b"delayed")
        errors: list[str] = []

        async def ask(frame: bytes) -> None:
            try:
                await b.request("a", frame, timeout=30)
            except jt.Unreachable as exc:
                errors.append(str(exc))

        async def stop_a() -> None:
            await trio.sleep(1)
            a_scope.cancel()
            # Queued before a's serve loop sees the cancellation: drained on exit.
            await ask(b"queued")

        async with trio.open_nursery() as inner:
            inner.start_soon(ask, b"delayed")
            inner.start_soon(ask, b"handled")
            inner.start_soon(stop_a)
        assert trio.current_time() == pytest.approx(1)  # nobody waited for a timeout
        assert sorted(errors) == [
            "node 'a' stopped before handling the request",
            "node 'a' stopped before the message was delivered",
            "node 'a' stopped while handling the request",
        ]
        assert plan.in_flight == 0
        with pytest.raises(jt.Unreachable, match="not connected"):
            await b.request("a", b"gone", timeout=1)
        nursery.cancel_scope.cancel()


async def _never_replies(data: bytes) -> bytes:
    await trio.sleep_forever()
    raise AssertionError("unreachable")  # pragma: no cover


# ---------------------------------------------------------------- transport semantics


async def test_transport_conformance_with_faults_active(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Every message goes through the fault machinery (a delay), and the
    transport still keeps its contract: order, replies, errors, departures."""
    hub = new_hub()

    @asynccontextmanager
    async def endpoint(name: str) -> AsyncIterator[LocalTransport]:
        async with open_hub(hub) as joined:
            plan = faults(hub)
            if not plan.rules:
                plan.delay(0.01)
            yield LocalTransport(node_name=name, hub=joined)

    await check_transport(endpoint)
