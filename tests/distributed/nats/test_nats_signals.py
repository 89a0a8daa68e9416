"""Signals across nodes on a real nats-server: one publish per signal on
``<namespace>.topic.signal.<type tokens>``, NATS wildcards for the subscriptions."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from contextlib import asynccontextmanager
from typing import Any
from typing import TypeVar

import pytest
import trio

import jido_trio as jt
from jido_trio._message import decode_value
from jido_trio.signals._bus import signal_topic
from jido_trio.signals._router import pattern_matches
from jido_trio_nats._transport import _TOPIC_HEAD
from jido_trio_nats._transport import NatsTransport
from tests._polling import wait_until
from tests.signals.test_signal_topics import Shipper
from tests.signals.test_signal_topics import Watcher

T = TypeVar("T")


def sig(type: str, data: Any = None) -> jt.Signal:
    return jt.Signal.new(type, "urn:test", data)


@asynccontextmanager
async def nodes(options: dict[str, Any], *names: str) -> AsyncIterator[list[jt.Node]]:
    async with AsyncExitStack() as stack:
        opened: list[jt.Node] = []
        for name in names:
            config = jt.Config(
                node_name=name,
                mode="datacenter",
                registry="nats",
                transport="nats",
                state="nats",
                coordination="nats",
                failover=False,
                plugin_options={"nats": options},
            )
            opened.append(await stack.enter_async_context(jt.open_node(config)))
        yield opened


def transport_of(node: jt.Node) -> NatsTransport:
    assert isinstance(node.transport, NatsTransport)
    return node.transport


async def receive_types(sub: jt.Subscription, count: int) -> list[str]:
    with trio.fail_after(5):
        return sorted([(await sub.receive()).type for _ in range(count)])


async def assert_quiet(*subs: jt.Subscription, seconds: float = 0.3) -> None:
    """Nothing more arrives (no duplicates, nothing unmatched)."""
    async with trio.open_nursery() as nursery:
        for sub in subs:

            async def watch(sub: jt.Subscription = sub) -> None:
                with trio.move_on_after(seconds):
                    extra = await sub.receive()
                    pytest.fail(f"{sub.pattern!r} got an extra {extra.type!r}")

            nursery.start_soon(watch)


TYPES = [
    "orders",
    "orders.created",
    "orders.paid",
    "orders.line.added",
    "orders.*",  # a literal "*": escaped, not a wildcard
    "orders.with space",
    "users.created",
    "x.y.z",
]


async def test_wildcards_on_three_nodes(
    nats_options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    signal_sends: list[str] = []
    send = NatsTransport.send

    async def counting_send(self: NatsTransport, node: str, data: bytes) -> None:
        if decode_value(data)[0] == "signal":
            signal_sends.append(node)
        await send(self, node, data)

    monkeypatch.setattr(NatsTransport, "send", counting_send)
    async with (
        nodes(nats_options, "a", "b", "c") as (a, b, c),
        a.signals.subscribe("orders.**") as own,
        b.signals.subscribe("orders.*") as b_one,
        b.signals.subscribe("orders.**") as b_many,
        b.signals.subscribe("orders.created") as b_exact,
        c.signals.subscribe("**") as c_all,
        c.signals.subscribe("x.*.z") as c_left,  # overlaps the next one on "x.y.z"
        c.signals.subscribe("x.y.*") as c_right,
        c.signals.subscribe("*.**.added") as c_mid,  # "**" in the middle: router filters
    ):
        assert b.signals.topics == {"signal.orders", "signal.orders.>"}
        assert set(transport_of(b)._topics.subs) == b.signals.topics
        assert c.signals.topics == {"signal.>"}
        for t in TYPES:
            await a.publish(sig(t))
        subs = [
            (own, "orders.**"),  # the publisher's own: delivered locally, never echoed
            (b_one, "orders.*"),
            (b_many, "orders.**"),
            (b_exact, "orders.created"),
            (c_all, "**"),
            (c_left, "x.*.z"),
            (c_right, "x.y.*"),
            (c_mid, "*.**.added"),
        ]
        for sub, pattern in subs:
            expected = sorted(t for t in TYPES if pattern_matches(pattern, t))
            assert await receive_types(sub, len(expected)) == expected, pattern
        await assert_quiet(*(sub for sub, _ in subs))
        assert signal_sends == []  # published once per signal, never sent per member


async def test_overlapping_subjects_deliver_once(nats_options: dict[str, Any]) -> None:
    async with (
        nodes(nats_options, "a", "b") as (a, b),
        b.signals.subscribe("x.*.z") as left,
        b.signals.subscribe("x.y.*") as right,
    ):
        # Two NATS subscriptions both match "x.y.z": one delivery each.
        assert b.signals.topics == {"signal.x.*.z", "signal.x.y.*"}
        for _ in range(20):
            await a.publish(sig("x.y.z"))
        assert await receive_types(left, 20) == ["x.y.z"] * 20
        assert await receive_types(right, 20) == ["x.y.z"] * 20
        await assert_quiet(left, right)


async def test_agent_signals_and_causation_across_nodes(nats_options: dict[str, Any]) -> None:
    async with nodes(nats_options, "a", "b") as (a, b):
        watcher = await b.start_agent(Watcher, "watcher")
        await b.signals.sync_topics()  # agent routes follow in the background
        assert b.signals.topics == {"signal.orders.*"}
        await a.publish(sig("orders.paid"))
        await a.publish(sig("users.created"))
        shipper = await a.start_agent(Shipper, "shipper")
        message_id = await a.call(shipper, jt.Instruction("ship", {"order": "o-1"}))
        state = await wait_until(lambda: b.query_agent(watcher), lambda s: len(s.types) >= 2)
        assert sorted(state.types) == ["orders.paid", "orders.shipped"]
        causes = dict(zip(state.types, state.causes, strict=True))
        assert causes["orders.shipped"] == message_id  # the instruction that emitted it
        await b.stop_agent(watcher)
        await wait_until(b.signals.sync_topics, lambda _: b.signals.topics == frozenset())
        assert transport_of(b)._topics.subs == {}


async def test_unsubscribing_stops_delivery(nats_options: dict[str, Any]) -> None:
    async with nodes(nats_options, "a", "b") as (a, b), b.signals.subscribe("other.*") as other:
        async with b.signals.subscribe("orders.*") as orders:
            await a.publish(sig("orders.created"))
            assert await receive_types(orders, 1) == ["orders.created"]
        await b.signals.sync_topics()
        assert set(transport_of(b)._topics.subs) == {"signal.other.*"}
        # Count what reaches b's topic handler from now on.
        topics = transport_of(b)._topics
        seen: list[str] = []
        handler = topics.handler
        assert handler is not None

        async def counting(topic: str, data: bytes) -> None:
            seen.append(topic)
            await handler(topic, data)

        topics.handler = counting
        await a.publish(sig("orders.created"))
        await a.publish(sig("other.thing"))
        assert await receive_types(other, 1) == ["other.thing"]
        await assert_quiet(other)
        assert seen == ["signal.other.thing"]  # NATS no longer sends b the orders


async def test_durable_subscription_across_nodes(nats_options: dict[str, Any]) -> None:
    async with (
        nodes(nats_options, "a", "b") as (a, b),
        b.signals.subscribe("audit.*", durable="auditor") as audit,
    ):
        assert b.signals.topics == {"signal.audit.*"}
        await a.publish(sig("audit.login", 1))
        await a.publish(sig("audit.logout", 2))
        with trio.fail_after(5):
            assert [(await audit.receive()).data for _ in range(2)] == [1, 2]


async def test_untrusted_input_is_dropped(
    nats_options: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with nodes(nats_options, "a", "b") as (a, b), b.signals.subscribe("x.*") as sub:
        ta = transport_of(a)
        nc = ta.conn.nc
        subject = ta.topic_subject(signal_topic("x.y"))
        good = []

        async def capture(topic: str, data: bytes) -> None:
            good.append(data)

        # A real frame from a, to replay on the wrong subject below.
        handler = transport_of(b)._topics.handler
        transport_of(b)._topics.handler = capture
        await a.publish(sig("x.frame"))
        await wait_until(trio.lowlevel.checkpoint, lambda _: bool(good))
        transport_of(b)._topics.handler = handler

        async def send_raw() -> None:
            await nc.publish(subject, b"abc")  # shorter than the header
            await nc.publish(subject, _TOPIC_HEAD.pack(9, b"\0" * 8, 1) + b"x")  # version
            await nc.publish(subject, _TOPIC_HEAD.pack(1, b"\1" * 8, 1) + b"\xc1garbage")
            await nc.publish(subject, _TOPIC_HEAD.pack(1, b"\1" * 8, 2) + good[0])  # x.frame
            await nc.flush()

        await ta.conn.bridge.run(send_raw)
        with pytest.raises(jt.InvalidMessage):
            await ta.publish_topic("signal.x.y", b"x" * (1 << 20))
        with pytest.raises(ValueError, match="topic"):
            await ta.publish_topic("signal.*", b"")
        await a.publish(sig("x.after"))
        assert await receive_types(sub, 1) == ["x.after"]
        await assert_quiet(sub)
        messages = [r.getMessage() for r in caplog.records]
        assert any("dropped a topic message of 3 bytes" in m for m in messages)
        assert any("dropped a topic message of version 9" in m for m in messages)
        assert any("dropped a malformed signal" in m for m in messages)
        assert any("type 'x.frame' published on topic signal.x.y" in m for m in messages)


async def test_topics_cannot_reach_or_overhear_the_engines_subjects(
    nats_options: dict[str, Any],
) -> None:
    """A topic named like an engine's subject ("node.b", "wq.jobs.p1") stays a
    topic, and a subscription to every topic (">") hears no node traffic."""
    async with nodes(nats_options, "a", "b") as (a, b):
        ta, tb = transport_of(a), transport_of(b)
        heard: list[tuple[str, bytes]] = []

        async def capture(topic: str, data: bytes) -> None:
            heard.append((topic, data))

        await tb.subscribe_topics([">"], capture)
        raw: list[str] = []

        async def watch_namespace() -> Any:
            async def record(msg: Any) -> None:
                raw.append(msg.subject)

            return await ta.conn.nc.subscribe(ta.conn.subject(">"), cb=record)

        watch = await ta.conn.bridge.run(watch_namespace)
        try:
            shipper = await b.start_agent(Shipper, "shipper")
            await a.call(shipper, jt.Instruction("ship", {"order": "o-1"}))  # node traffic
            await ta.publish_topic("node.b", b"one")
            await ta.publish_topic("wq.jobs.p1", b"two")
            await wait_until(trio.lowlevel.checkpoint, lambda _: len(heard) >= 2)
        finally:
            await ta.conn.bridge.run(watch.unsubscribe)
        assert heard == [("node.b", b"one"), ("wq.jobs.p1", b"two")]
        ns = ta.conn.namespace
        assert f"{ns}.topic.node.b" in raw and f"{ns}.topic.wq.jobs.p1" in raw
        assert not any(s.startswith(f"{ns}.wq.") for s in raw)
        # The call went over the engines' own subjects, which ">" did not hear.
        assert any(s.startswith(f"{ns}.node.") for s in raw)


async def test_types_too_long_for_a_subject_are_sent_per_member(
    nats_options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    sends: list[str] = []
    send = NatsTransport.send

    async def counting_send(self: NatsTransport, node: str, data: bytes) -> None:
        if decode_value(data)[0] == "signal":
            sends.append(node)
        await send(self, node, data)

    monkeypatch.setattr(NatsTransport, "send", counting_send)
    long_type = "orders." + "x" * 1100
    async with (
        nodes(nats_options, "a", "b", "c") as (a, b, c),
        b.signals.subscribe("orders.*") as b_sub,
        c.signals.subscribe("users.*") as c_sub,
    ):
        await a.publish(sig(long_type))
        with trio.fail_after(5):
            assert (await b_sub.receive()).type == long_type
        await assert_quiet(b_sub, c_sub)
        assert sorted(sends) == ["b", "c"]
