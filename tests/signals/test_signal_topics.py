"""Signals across nodes on a transport with topics (without NATS).

A fake transport adds topics to the in-process hub's transport: it delivers a
topic message in the publisher's task to every other node with a matching
pattern, once, so these tests are deterministic. The same logic runs on NATS
in tests/distributed/test_nats_signals.py.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator
from collections.abc import Collection
from collections.abc import Mapping
from contextlib import asynccontextmanager
from typing import Any
from typing import TypeVar

import attrs
import pytest
import trio

import jido_trio as jt
from jido_trio._message import decode_value
from jido_trio._message import encode_value
from jido_trio.abc import TopicHandler
from jido_trio.local._hub import open_hub
from jido_trio.local._transport import LocalTransport
from jido_trio.signals._bus import _prune
from jido_trio.signals._bus import pattern_topics
from jido_trio.signals._bus import signal_topic
from jido_trio.signals._router import pattern_matches
from jido_trio.testing import open_cluster
from tests._polling import wait_until

T = TypeVar("T")


def sig(type: str, data: Any = None) -> jt.Signal:
    return jt.Signal.new(type, "urn:test", data)


def topic_matches(pattern: str, topic: str) -> bool:
    """NATS subject matching: ``*`` one token, a trailing ``>`` one or more."""
    p, t = pattern.split("."), topic.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(t) > i
        if i >= len(t) or token not in ("*", t[i]):
            return False
    return len(p) == len(t)


# ---------------------------------------------------------------- mapping


@pytest.mark.parametrize(
    ("signal_type", "topic"),
    [
        ("order.created", "signal.order.created"),
        ("a.*.>", "signal.a.=2A.=3E"),
        ("a..b", "signal.a.=.b"),
        ("=", "signal.=3D"),
        ("x y", "signal.x=20y"),
        ("order.créé", "signal.order.cr=C3=A9=C3=A9"),
        ("com.example/v1_x-y", "signal.com.example/v1_x-y"),
    ],
)
def test_signal_topic_escapes_each_segment(signal_type: str, topic: str) -> None:
    assert signal_topic(signal_type) == topic


@pytest.mark.parametrize(
    ("pattern", "topics"),
    [
        ("order.created", ("signal.order.created",)),
        ("order.*", ("signal.order.*",)),
        ("*.created", ("signal.*.created",)),
        ("order.**", ("signal.order", "signal.order.>")),
        ("order.*.**", ("signal.order.*", "signal.order.*.>")),
        ("a.**.**", ("signal.a", "signal.a.>")),
        ("**", ("signal.>",)),
        ("a.**.b", ("signal.a.>",)),  # not exact: the router filters
        ("**.b", ("signal.>",)),
        ("café.*", ("signal.caf=C3=A9.*",)),
    ],
)
def test_pattern_topics(pattern: str, topics: tuple[str, ...]) -> None:
    assert pattern_topics(pattern) == topics


def test_pattern_topics_cover_what_the_router_matches() -> None:
    rng = random.Random(7)
    words = ["a", "b", "", "*x", ">", "é"]
    types = [".".join(rng.choice(words) for _ in range(rng.randint(1, 4))) for _ in range(300)]
    types = [t for t in types if t] + ["a", "b", "a.b", "a.b.c"]
    patterns = [
        ".".join(rng.choice(["a", "b", "*", "**"]) for _ in range(rng.randint(1, 4)))
        for _ in range(200)
    ]
    for pattern in patterns:
        topics = pattern_topics(pattern)
        mid_globstar = "**" in pattern.split(".")[:-1]
        for signal_type in types:
            routed = pattern_matches(pattern, signal_type)
            carried = any(topic_matches(t, signal_topic(signal_type)) for t in topics)
            if routed:
                assert carried, (pattern, signal_type)
            elif not mid_globstar:
                assert not carried, (pattern, signal_type)  # exact


def test_overlapping_topics_are_pruned() -> None:
    assert _prune(["signal.a.*", "signal.a.>", "signal.a.b", "signal.b", "signal.a"]) == {
        "signal.a.>",
        "signal.b",
        "signal.a",
    }
    assert _prune(["signal.>", "signal.x.*"]) == {"signal.>"}
    # Overlapping without either covering the other: both stay (the
    # transport delivers a message matching both once).
    assert _prune(["signal.a.*.x", "signal.a.y.*"]) == {"signal.a.*.x", "signal.a.y.*"}


# ---------------------------------------------------------------- fake transport


@attrs.define(eq=False)
class TopicTransport(LocalTransport):
    """The hub's transport plus topics, for tests."""

    supports_topics = True

    peers: dict[str, TopicTransport] = attrs.field(factory=dict)
    max_topic_length: int = 1024
    #: Deliver topic messages to the publisher too (to test the bus's own guard).
    echo: bool = False
    patterns: frozenset[str] = frozenset()
    handler: TopicHandler | None = None
    published: list[str] = attrs.field(factory=list)
    signal_sends: int = 0

    async def send(self, node: str, data: bytes) -> None:
        frame = decode_value(data)
        if isinstance(frame, list) and frame and frame[0] == "signal":
            self.signal_sends += 1
        await LocalTransport.send(self, node, data)

    async def publish_topic(self, topic: str, data: bytes) -> None:
        assert len(topic) <= self.max_topic_length
        assert all(t and t not in ("*", ">") for t in topic.split(".")), topic
        self.published.append(topic)
        await trio.lowlevel.checkpoint()
        for peer in list(self.peers.values()):
            if peer is self and not self.echo:
                continue
            handler = peer.handler
            if handler is not None and any(topic_matches(p, topic) for p in peer.patterns):
                await handler(topic, bytes(data))

    async def subscribe_topics(self, patterns: Collection[str], handler: TopicHandler) -> None:
        self.patterns = frozenset(patterns)
        self.handler = handler
        await trio.lowlevel.checkpoint()


class TopicsPlugin:
    """Registers the ``topics`` transport (nodes of one ``open_cluster`` hub)."""

    def __init__(self, **settings: Any) -> None:
        self.settings = settings

    @jt.hookimpl
    def jido_trio_add_backends(self, backends: Any) -> None:
        backends.add_transport("topics", self.open)

    @asynccontextmanager
    async def open(
        self, config: jt.Config, options: Mapping[str, Any]
    ) -> AsyncIterator[TopicTransport]:
        name = config.options_for("local")["hub"]
        async with open_hub(name) as hub:
            peers = hub.extensions.setdefault("topics", {})
            transport = TopicTransport(
                node_name=config.node_name, hub=hub, peers=peers, **self.settings
            )
            peers[config.node_name] = transport
            try:
                yield transport
            finally:
                del peers[config.node_name]


def cluster(*names: str, **settings: Any) -> Any:
    return open_cluster(*names, transport="topics", plugins=[TopicsPlugin(**settings)])


def transport_of(node: jt.Node) -> TopicTransport:
    assert isinstance(node.transport, TopicTransport)
    return node.transport


@attrs.frozen
class Seen:
    types: tuple[str, ...] = ()
    causes: tuple[str, ...] = ()


class Watcher(jt.Agent):
    type = "topic-watcher"
    State = Seen

    @jt.on_signal("orders.*")
    async def on_order(self, state: Seen, signal: jt.Signal) -> Seen:
        return Seen((*state.types, signal.type), (*state.causes, signal.causation_id or ""))


class Shipper(jt.Agent):
    type = "topic-shipper"

    @jt.action("ship")
    async def ship(self, state: Any, order: str) -> None:
        await self.ctx.emit("orders.shipped", {"order": order})
        message = self.ctx.message
        assert message is not None
        self.ctx.reply(message.id)


async def drain(sub: jt.Subscription) -> list[str]:
    got: list[str] = []
    while True:
        with trio.move_on_after(0.02) as scope:
            got.append((await sub.receive()).type)
        if scope.cancelled_caught:
            return got


# ---------------------------------------------------------------- bus on topics


TYPES = ["orders", "orders.created", "orders.paid", "orders.line.added", "users.created"]


async def test_each_node_gets_what_its_router_matches_once() -> None:
    async with cluster("a", "b", "c") as c:
        a, b, n3 = c["a"], c["b"], c["c"]
        async with (
            b.signals.subscribe("orders.*") as one,
            n3.signals.subscribe("orders.**") as many,
            n3.signals.subscribe("orders.created") as exact,
            n3.signals.subscribe("orders.*") as again,
            a.signals.subscribe("orders.**") as own,
        ):
            assert transport_of(b).patterns == {"signal.orders.*"}
            # "orders.*" and "orders.created" are covered by "orders.>".
            assert transport_of(n3).patterns == {"signal.orders", "signal.orders.>"}
            for t in TYPES:
                await a.publish(sig(t))
            assert transport_of(a).published == [signal_topic(t) for t in TYPES]
            assert transport_of(a).signal_sends == 0  # one publish, no fan-out
            for sub, pattern in [
                (one, "orders.*"),
                (many, "orders.**"),
                (exact, "orders.created"),
                (again, "orders.*"),
                (own, "orders.**"),  # local delivery only, never echoed back
            ]:
                assert await drain(sub) == [t for t in TYPES if pattern_matches(pattern, t)]


async def test_the_bus_ignores_its_own_signals_even_if_echoed() -> None:
    async with cluster("a", "b", echo=True) as c, c["a"].signals.subscribe("x.*") as sub:
        assert await c["a"].publish(sig("x.y")) == 1
        assert await drain(sub) == ["x.y"]


async def test_subscriptions_follow_routes() -> None:
    async with cluster("a", "b") as c:
        a, b = c["a"], c["b"]
        tb = transport_of(b)
        assert tb.patterns == frozenset()
        async with b.signals.subscribe("a.*.x") as first, b.signals.subscribe("a.y.*") as second:
            assert tb.patterns == {"signal.a.*.x", "signal.a.y.*"}
            await a.publish(sig("a.y.x"))  # both patterns: each subscriber once
            assert await drain(first) == ["a.y.x"]
            assert await drain(second) == ["a.y.x"]
        await b.signals.sync_topics()
        assert tb.patterns == frozenset() and b.signals.topics == frozenset()

        ref = await b.start_agent(Watcher, "w")
        await b.signals.sync_topics()
        assert tb.patterns == {"signal.orders.*"}
        await b.stop_agent(ref)
        await b.signals.sync_topics()
        assert tb.patterns == frozenset()

        async with b.signals.subscribe("audit.**", durable="auditor") as audit:
            assert tb.patterns == {"signal.audit", "signal.audit.>"}
            await a.publish(sig("audit.login"))
            with trio.fail_after(1):
                assert (await audit.receive()).type == "audit.login"
        # A durable subscription keeps logging after its reader has gone.
        await b.signals.sync_topics()
        assert tb.patterns == {"signal.audit", "signal.audit.>"}


async def test_agents_and_causation_across_nodes() -> None:
    async with cluster("a", "b") as c:
        a, b = c["a"], c["b"]
        watcher = await b.start_agent(Watcher, "w")
        await b.signals.sync_topics()
        shipper = await a.start_agent(Shipper, "s")
        message_id = await a.call(shipper, jt.Instruction("ship", {"order": "o-1"}))
        state = await wait_until(lambda: b.query_agent(watcher), lambda s: bool(s.types))
        assert state == Seen(("orders.shipped",), (message_id,))
        assert transport_of(a).published == ["signal.orders.shipped"]


async def test_types_too_long_for_a_topic_are_sent_to_each_member() -> None:
    async with cluster("a", "b", "c", max_topic_length=40) as c:
        long_type = "orders." + "x" * 40
        async with (
            c["b"].signals.subscribe("orders.*") as b_sub,
            c["c"].signals.subscribe("**") as c_sub,
        ):
            await c["a"].publish(sig(long_type))
            with trio.fail_after(2):
                assert (await b_sub.receive()).type == long_type
                assert (await c_sub.receive()).type == long_type
        assert transport_of(c["a"]).published == []
        assert transport_of(c["a"]).signal_sends == 2


async def test_malformed_topic_messages_are_dropped(caplog: pytest.LogCaptureFixture) -> None:
    async with cluster("a", "b") as c:
        a, bus = c["a"], c["b"].signals
        async with bus.subscribe("x.*") as sub, a.signals.subscribe("x.*") as own:
            caplog.set_level(logging.WARNING, "jido_trio.signals")
            await bus._on_topic("signal.x.y", b"\xc1 garbage")
            await bus._on_topic("signal.x.y", encode_value(["signal", b"not a message"]))
            await bus._on_topic("signal.x.y", encode_value({"not": "a frame"}))
            frames: list[bytes] = []

            async def capture(topic: str, data: bytes) -> None:
                frames.append(data)

            transport_of(c["b"]).handler = capture
            await a.publish(sig("x.z"))  # a's frame, captured on b
            assert len(frames) == 1 and await drain(sub) == []
            # Well-formed, but its type does not match the topic: dropped.
            await bus._on_topic("signal.x.other", frames[0])
            assert await drain(sub) == []
            await bus._on_topic("signal.x.z", frames[0])
            assert await drain(sub) == ["x.z"]
            # Back at its publisher: ignored (delivered there when published).
            await a.signals._on_topic("signal.x.z", frames[0])
            assert await drain(own) == ["x.z"]
        messages = [r.getMessage() for r in caplog.records]
        assert sum("malformed signal" in m for m in messages) == 3
        assert any("published on topic signal.x.other" in m for m in messages)


@pytest.mark.local_only
async def test_hub_without_topics_still_fans_out() -> None:
    async with open_cluster("a", "b") as c:
        assert not c["a"].transport.supports_topics
        async with c["b"].signals.subscribe("t.*") as sub:
            await c["a"].publish(sig("t.x"))
            with trio.fail_after(2):
                assert (await sub.receive()).type == "t.x"
        await c["b"].signals.sync_topics()  # a no-op without topics
        assert c["b"].signals.topics == frozenset()
