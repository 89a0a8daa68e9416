"""The ``nats`` StateBackend on real nats-server processes (real clock, real I/O)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any

import pytest
import trio

import jido_trio
from jido_trio import InvalidMessage
from jido_trio import StateConflict
from jido_trio import Unreachable
from jido_trio.abc import LogEntry
from jido_trio.abc import Versioned
from jido_trio.testing.conformance import check_state_backend
from jido_trio_nats._state import NatsStateBackend
from jido_trio_nats._state import open_state
from jido_trio_nats.testing import NatsServer
from jido_trio_nats.testing import free_port
from jido_trio_nats.testing import start_nats_cluster
from jido_trio_nats.testing import start_nats_server
from tests._polling import wait_until

# Keys that are not valid NATS subject tokens or KV keys as they are.
ODD_KEYS = [
    "",
    " ",
    "with space",
    "a.b",
    "a..b",
    ".",
    "*",
    ">",
    "a.*.>",
    "$KV.x",
    "=",
    "=3D",
    "=XX",
    "tab\there",
    "new\nline",
    "\x00nul",
    "日本語/キー",
    "🙂",
    "é",
    "a/b/c",
    "-_/",
    "a" * 300,
]


def config(node_name: str) -> jido_trio.Config:
    return jido_trio.Config(node_name=node_name)


@pytest.fixture
async def backend(nats_options: dict[str, Any]) -> AsyncIterator[NatsStateBackend]:
    async with open_state(config("n1"), nats_options) as b:
        yield b


@pytest.fixture
async def two(nats_options: dict[str, Any]) -> AsyncIterator[tuple[NatsStateBackend, ...]]:
    """Two nodes (two connections) on one namespace."""
    async with (
        open_state(config("a"), nats_options) as a,
        open_state(config("b"), nats_options) as b,
    ):
        assert a.conn is not b.conn
        yield a, b


@pytest.fixture
def own_server(tmp_path: Any) -> Iterator[NatsServer]:
    """A server of this test's own, with its files in ``tmp_path`` (survive a restart)."""
    with start_nats_server(store_dir=tmp_path) as server:
        yield server


async def foreign_delete(backend: NatsStateBackend, key: str) -> int:
    """Delete ``key`` as ``nats kv del`` does (a deletion marker); return the marker's seq."""
    from jido_trio_nats._keys import encode_token

    async def publish() -> int:
        ack = await backend.conn.js.publish(
            backend.kv_prefix + encode_token(key), b"", headers={"KV-Operation": "DEL"}
        )
        return int(ack.seq)

    return await backend.conn.bridge.run(publish)


# ---------------------------------------------------------------- conformance


async def test_conformance(fresh_options: Callable[[], dict[str, Any]]) -> None:
    await check_state_backend(lambda: open_state(config("conformance"), fresh_options()))


async def test_conformance_on_a_cluster(tmp_path: Any) -> None:
    """Replicated bucket and stream: strong reads go to the leader, log reads
    check the leader's last record."""
    n = itertools.count()
    with start_nats_cluster(3, store_dir=tmp_path) as servers:
        urls = [s.url for s in servers]

        def options(i: int) -> dict[str, Any]:
            return {"servers": [urls[i % 3]], "namespace": f"cl{next(n)}", "replicas": 3}

        await check_state_backend(lambda: open_state(config("c"), options(0)))

        # Writes through one server, reads through the others.
        shared = {"namespace": "shared", "replicas": 3}
        async with (
            open_state(config("a"), {**shared, "servers": [urls[0]]}) as a,
            open_state(config("b"), {**shared, "servers": [urls[1]]}) as b,
        ):
            assert b.log_replicas == 3
            for i in range(50):
                version = await a.write("k", b"%d" % i)
                assert await b.read("k") == Versioned(value=b"%d" % i, version=version)
                seq = await a.append("log", b"%d" % i)
                log = await b.read_log("log", after=seq - 1)
                assert log == [LogEntry(seq=seq, data=b"%d" % i)]
            assert len(await b.read_log("log")) == 50


# ---------------------------------------------------------------- consistency


async def test_consistency_levels(two: tuple[NatsStateBackend, NatsStateBackend]) -> None:
    a, b = two
    v1 = await a.write("k", b"1")
    # strong: another node's acknowledged write is seen at once
    assert await b.read("k", consistency="strong") == Versioned(value=b"1", version=v1)
    v2 = await b.write("k", b"2")
    assert await a.read("k") == Versioned(value=b"2", version=v2)
    # eventual: a direct get; on one server as fresh as strong
    assert await a.read("k", consistency="eventual") == Versioned(value=b"2", version=v2)
    # weak: this node's cache, no request: stale until a read refreshes it
    v3 = await b.write("k", b"3")
    assert await a.read("k", consistency="weak") == Versioned(value=b"2", version=v2)
    assert await a.read("k") == Versioned(value=b"3", version=v3)
    assert await a.read("k", consistency="weak") == Versioned(value=b"3", version=v3)
    # weak on a key this node never saw falls back to an eventual read
    await b.write("other", b"o")
    found = await a.read("other", consistency="weak")
    assert found is not None and found.value == b"o"
    # own writes and deletes are in the cache
    v4 = await a.write("k", b"4")
    assert await a.read("k", consistency="weak") == Versioned(value=b"4", version=v4)
    await a.delete("k")
    assert await a.read("k", consistency="weak") is None
    with pytest.raises(ValueError, match="consistency"):
        await a.read("k", consistency="linearizable")  # type: ignore[arg-type]


async def test_two_nodes_see_each_other(two: tuple[NatsStateBackend, NatsStateBackend]) -> None:
    a, b = two
    v1 = await a.write("shared", b"from a")
    found = await b.read("shared")
    assert found == Versioned(value=b"from a", version=v1)
    # b's compare-and-set on the version it read; a's stale one then loses
    v2 = await b.write("shared", b"from b", expected_version=v1)
    with pytest.raises(StateConflict) as info:
        await a.write("shared", b"stale", expected_version=v1)
    assert (info.value.expected, info.value.actual) == (v1, v2)
    assert await a.read("shared") == Versioned(value=b"from b", version=v2)
    await b.write("only-b", b"x")
    assert await a.keys() == await b.keys() == ["only-b", "shared"]
    # logs
    s1 = await a.append("log", b"a1")
    s2 = await b.append("log", b"b1")
    assert await a.read_log("log") == await b.read_log("log")
    assert [e.data for e in await a.read_log("log")] == [b"a1", b"b1"]
    await b.trim_log("log", upto=s1)
    assert await a.read_log("log") == [LogEntry(seq=s2, data=b"b1")]
    await a.delete("shared", expected_version=v2)
    assert await b.read("shared") is None


# ---------------------------------------------------------------- keys


async def test_odd_keys(backend: NatsStateBackend) -> None:
    for i, key in enumerate(ODD_KEYS):
        await backend.write(key, b"%d" % i)
    for i, key in enumerate(ODD_KEYS):
        for level in ("strong", "eventual"):
            found = await backend.read(key, consistency=level)
            assert found is not None and found.value == b"%d" % i, (key, level)
    assert await backend.keys() == sorted(ODD_KEYS)
    for prefix in ("a", "a.", "=", "日本", " ", "\x00"):
        assert await backend.keys(prefix) == sorted(k for k in ODD_KEYS if k.startswith(prefix))
    for key in ODD_KEYS[::2]:
        await backend.delete(key)
    assert await backend.keys() == sorted(ODD_KEYS[1::2])
    # the same names as log streams
    for key in ODD_KEYS:
        seq = await backend.append(key, key.encode())
        assert await backend.read_log(key) == [LogEntry(seq=seq, data=key.encode())]


async def test_too_long_key(backend: NatsStateBackend) -> None:
    key = "日" * 1000  # 9000 characters once encoded
    with pytest.raises(InvalidMessage, match="too long"):
        await backend.write(key, b"v")
    with pytest.raises(InvalidMessage, match="too long"):
        await backend.read(key)
    with pytest.raises(InvalidMessage, match="too long"):
        await backend.append(key, b"v")
    assert await backend.write("still-usable", b"v") >= 1


async def test_many_keys(backend: NatsStateBackend) -> None:
    async def writer(start: int) -> None:
        for i in range(start, 3000, 30):
            await backend.write(f"k/{i:04d}", b"v" * 100)

    async with trio.open_nursery() as nursery:
        for start in range(30):
            nursery.start_soon(writer, start)
    await backend.write("other", b"x")
    keys = await backend.keys("k/")
    assert keys == [f"k/{i:04d}" for i in range(3000)]
    assert await backend.keys("k/29") == [f"k/29{i:02d}" for i in range(100)]


# ---------------------------------------------------------------- compare-and-set


async def test_compare_and_set(two: tuple[NatsStateBackend, NatsStateBackend]) -> None:
    a, b = two
    v1 = await a.write("k", b"1")
    v2 = await a.write("k", b"2", expected_version=v1)
    with pytest.raises(StateConflict) as info:
        await a.write("k", b"x", expected_version=v1)
    assert (info.value.key, info.value.expected, info.value.actual) == ("k", v1, v2)
    with pytest.raises(StateConflict) as info:
        await a.write("k", b"x", expected_version=0)
    assert info.value.actual == v2
    # another key's version: never a version of "k"
    other = await a.write("other", b"o")
    with pytest.raises(StateConflict):
        await a.write("k", b"x", expected_version=other)
    with pytest.raises(StateConflict):
        await a.delete("k", expected_version=other)
    # b never read "k" (cold cache): its compare-and-set checks first
    v3 = await b.write("k", b"3", expected_version=v2)
    with pytest.raises(StateConflict) as info:
        await b.delete("k", expected_version=v2)
    assert info.value.actual == v3
    with pytest.raises(StateConflict):
        await a.delete("k", expected_version=v2)  # a's cache knows v2: server-side check
    await a.delete("k", expected_version=v3)
    assert await b.read("k") is None
    with pytest.raises(StateConflict) as info:
        await b.write("k", b"x", expected_version=v3)
    assert info.value.actual is None


async def test_delete_then_create(backend: NatsStateBackend) -> None:
    versions = []
    for _ in range(3):
        versions.append(await backend.write("k", b"v", expected_version=0))
        await backend.delete("k")
        assert await backend.read("k") is None
        assert await backend.read("k", consistency="eventual") is None
    assert versions == sorted(set(versions))


async def test_deletion_marker_counts_as_absent(
    two: tuple[NatsStateBackend, NatsStateBackend],
) -> None:
    a, b = two
    v1 = await a.write("k", b"1")
    marker = await foreign_delete(a, "k")
    assert marker > v1
    for level in ("strong", "eventual"):
        assert await b.read("k", consistency=level) is None
    assert await a.keys() == []
    # a marker's sequence is no version of the key
    with pytest.raises(StateConflict) as info:
        await a.write("k", b"x", expected_version=marker)
    assert info.value.actual is None
    with pytest.raises(StateConflict):
        await b.delete("k", expected_version=marker)
    await a.delete("k", expected_version=0)
    v2 = await b.write("k", b"2", expected_version=0)
    assert v2 > marker
    assert await a.read("k") == Versioned(value=b"2", version=v2)
    with pytest.raises(StateConflict):
        await a.write("k", b"x", expected_version=0)


async def test_concurrent_creators_over_a_marker(
    two: tuple[NatsStateBackend, NatsStateBackend],
) -> None:
    """Of several nodes creating a deleted key at once, exactly one wins."""
    for round_ in range(10):
        key = f"race/{round_}"
        await two[0].write(key, b"old")
        await foreign_delete(two[0], key)
        winners: list[bytes] = []

        async def create(
            backend: NatsStateBackend, key: str, name: bytes, winners: list[bytes]
        ) -> None:
            try:
                await backend.write(key, name, expected_version=0)
            except StateConflict:
                pass
            else:
                winners.append(name)

        async with trio.open_nursery() as nursery:
            for i in range(6):
                nursery.start_soon(create, two[i % 2], key, b"creator %d" % i, winners)
        assert len(winners) == 1
        found = await two[1].read(key)
        assert found is not None and found.value == winners[0]


# ---------------------------------------------------------------- logs


async def test_long_log(backend: NatsStateBackend) -> None:
    appended: dict[int, bytes] = {}

    async def appender(task: int) -> None:
        for i in range(100):
            data = b"%d:%d" % (task, i)
            appended[await backend.append("big", data)] = data
            if i % 10 == 0:
                await backend.append("other", data)  # gaps in big's numbering

    async with trio.open_nursery() as nursery:
        for task in range(25):
            nursery.start_soon(appender, task)
    log = await backend.read_log("big")
    assert log == [LogEntry(seq=seq, data=appended[seq]) for seq in sorted(appended)]
    assert len(log) == 2500
    # pages of 700 add up to the whole log
    pages: list[LogEntry] = []
    while page := await backend.read_log("big", after=pages[-1].seq if pages else 0, limit=700):
        assert len(page) <= 700
        pages += page
    assert pages == log
    assert await backend.read_log("big", after=log[999].seq, limit=1100) == log[1000:2100]
    assert await backend.read_log("big", after=log[-1].seq) == []
    await backend.trim_log("big", upto=log[1499].seq)
    assert await backend.read_log("big") == log[1500:]
    assert await backend.read_log("big", limit=5) == log[1500:1505]
    assert len(await backend.read_log("other")) == 250


async def test_log_of_large_records(backend: NatsStateBackend) -> None:
    """Records bigger than one batch's byte budget in total: several batches."""
    records = [bytes([i]) * (900 * 1024) for i in range(20)]
    seqs = [await backend.append("large", data) for data in records]
    log = await backend.read_log("large")
    assert [e.seq for e in log] == seqs
    assert [e.data for e in log] == records


async def test_log_read_through_the_leader(backend: NatsStateBackend) -> None:
    """The path for replicas that lag (and streams without direct get)."""
    seqs = [await backend.append("s", b"%d" % i) for i in range(20)]
    backend.log_direct = False
    log = await backend.read_log("s")
    assert [e.seq for e in log] == seqs
    assert await backend.read_log("s", after=seqs[4], limit=3) == log[5:8]
    assert await backend.read_log("absent") == []


async def test_size_limits(backend: NatsStateBackend) -> None:
    limit = backend.conn.nc.max_payload
    assert await backend.write("max", b"x" * limit) >= 1
    found = await backend.read("max")
    assert found is not None and len(found.value) == limit
    with pytest.raises(InvalidMessage, match="max_payload"):
        await backend.write("big", b"x" * (limit + 1))
    with pytest.raises(InvalidMessage, match="header"):
        await backend.write("max", b"x" * limit, expected_version=found.version)
    with pytest.raises(InvalidMessage, match="max_payload"):
        await backend.append("log", b"x" * (limit + 1))
    assert await backend.append("log", b"x" * limit) >= 1
    assert backend.conn.connected  # refused before sending: the connection lives on
    assert await backend.read("big") is None


# ---------------------------------------------------------------- failures


async def test_unreachable_when_the_server_stops(own_server: NatsServer) -> None:
    options = {
        "servers": [own_server.url],
        "namespace": "down",
        "connect_timeout": 0.5,
        "reconnect_time_wait": 0.1,
    }
    async with open_state(config("down"), options) as backend:
        version = await backend.write("k", b"v")
        seq = await backend.append("log", b"r")
        own_server.stop()
        await wait_until(lambda: not backend.conn.connected)
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: backend.read("k"),
            lambda: backend.read("k", consistency="eventual"),
            lambda: backend.read("never-read", consistency="weak"),
            lambda: backend.write("k", b"w"),
            lambda: backend.write("k", b"w", expected_version=version),
            lambda: backend.delete("k"),
            lambda: backend.keys(),
            lambda: backend.append("log", b"r"),
            lambda: backend.read_log("log"),
            lambda: backend.trim_log("log", upto=seq),
        ]
        for call in calls:
            with pytest.raises(Unreachable):
                await call()
        # a weak read answers from this node's cache
        assert await backend.read("k", consistency="weak") == Versioned(value=b"v", version=version)
        # back again (file storage: the data survived)
        own_server.start()
        own_server.wait_ready()
        await wait_until(lambda: backend.conn.connected)
        assert await backend.read("k") == Versioned(value=b"v", version=version)
        assert await backend.write("k", b"w", expected_version=version) > version
        assert await backend.read_log("log") == [LogEntry(seq=seq, data=b"r")]


async def test_unreachable_when_no_server() -> None:
    options = {"servers": [f"nats://127.0.0.1:{free_port()}"], "connect_timeout": 0.2}
    with pytest.raises(Unreachable):
        async with open_state(config("nobody"), options):
            pass


async def test_body_exception_is_not_wrapped(nats_options: dict[str, Any]) -> None:
    """The trio-asyncio loop's nurseries would wrap it in exception groups."""
    with pytest.raises(KeyError, match="mine"):
        async with open_state(config("body"), nats_options):
            raise KeyError("mine")


# ---------------------------------------------------------------- engine errors


async def test_an_error_answer_from_jetstream_is_an_engine_error(
    backend: NatsStateBackend,
) -> None:
    """NATS answered (with "stream not found"): the engine failed the read,
    which is EngineError, not Unreachable (NATS is right there)."""
    import nats.js.errors

    await backend.write("k", b"v")
    await backend.conn.bridge.run(backend.conn.js.delete_stream, backend.kv_stream)
    with pytest.raises(jido_trio.EngineError, match="reading state 'k'") as raised:
        await backend.read("k")
    assert not isinstance(raised.value, Unreachable)
    assert isinstance(raised.value.__cause__, nats.js.errors.NotFoundError)
    assert backend.conn.connected
