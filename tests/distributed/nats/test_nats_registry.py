"""The ``nats`` registry against a real nats-server: conformance, then what
only a shared registry can show (several connections, one bucket)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from collections.abc import Callable
from contextlib import AsyncExitStack
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio

import jido_trio as jt
from jido_trio.testing.conformance import check_registry
from jido_trio_nats import _registry
from jido_trio_nats._jetstream import kv_read
from jido_trio_nats._registry import NatsRegistry
from jido_trio_nats._registry import open_registry


async def test_registry_conformance(fresh_options: Callable[[], dict[str, Any]]) -> None:
    await check_registry(lambda: open_registry(jt.Config(node_name="n1"), fresh_options()))


@asynccontextmanager
async def registries(options: dict[str, Any], *nodes: str) -> AsyncIterator[list[NatsRegistry]]:
    """One registry per node name, each on its own NATS connection, one bucket."""
    async with AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(open_registry(jt.Config(node_name=n), options))
            for n in nodes
        ]


async def test_take_over_race_between_connections(nats_options: dict[str, Any]) -> None:
    async with registries(nats_options, "n1", "n2", "n3") as (r1, r2, r3):
        with trio.fail_after(5):
            entry = await r1.register(jt.AgentRef(id="a", type="worker", node="n1"), {"k": 1})
            winners: list[str] = []

            async def race(registry: NatsRegistry, node: str) -> None:
                try:
                    await registry.take_over(
                        jt.AgentRef(id="a", type="worker", node=node), epoch=entry.epoch
                    )
                except jt.AgentAlreadyExists:
                    return
                winners.append(node)

            async with trio.open_nursery() as nursery:
                for _ in range(5):
                    nursery.start_soon(race, r2, "n2")
                    nursery.start_soon(race, r3, "n3")
            assert len(winners) == 1
            # Every connection sees the winner at once (reads go to the leader).
            for registry in (r1, r2, r3):
                found = await registry.lookup("a")
                assert found.node == winners[0]
                assert found.epoch > entry.epoch
                assert found.metadata["k"] == 1
            # The old owner cannot unregister or re-register what it lost.
            await r1.unregister("a", node="n1")
            assert (await r2.lookup("a")).node == winners[0]
            with pytest.raises(jt.AgentAlreadyExists):
                await r1.register(jt.AgentRef(id="a", type="worker", node="n1"))


async def test_take_over_loses_to_a_reregistration(nats_options: dict[str, Any]) -> None:
    async with registries(nats_options, "n1", "n2") as (r1, r2):
        with trio.fail_after(5):
            ref = jt.AgentRef(id="a", type="worker", node="n1")
            old = await r1.register(ref)
            again = await r1.register(ref)  # the owner restarted its agent meanwhile
            assert again.epoch > old.epoch
            with pytest.raises(jt.AgentAlreadyExists):
                await r2.take_over(ref.with_node("n2"), epoch=old.epoch)
            assert (await r2.lookup("a")).node == "n1"


async def test_writes_of_one_connection_seen_by_others(nats_options: dict[str, Any]) -> None:
    async with registries(nats_options, "n1", "n2") as (r1, r2):
        with trio.fail_after(5):
            async with r2.watch() as changes:
                for i in range(20):
                    await r1.register(jt.AgentRef(id=f"a{i}", type="worker", node="n1"))
                    assert (await r2.lookup(f"a{i}")).node == "n1"
                await r1.update_metadata("a0", {"zone": "x"})
                await r1.unregister("a1", node="n1")
                kinds = [((e := await changes.__anext__()).kind, e.entry.ref.id) for _ in range(22)]
            assert kinds[:20] == [("registered", f"a{i}") for i in range(20)]
            assert kinds[20:] == [("updated", "a0"), ("unregistered", "a1")]
            assert await r2.count() == 19
            assert [e.ref.id for e in await r2.select(metadata={"zone": "x"})] == ["a0"]
            with pytest.raises(jt.AgentNotFound):
                await r2.lookup("a1")


async def test_metadata_must_be_encodable(nats_options: dict[str, Any]) -> None:
    async with registries(nats_options, "n1") as (r1,):
        with trio.fail_after(5):
            with pytest.raises(jt.InvalidMessage):
                await r1.register(jt.AgentRef(id="a", type="w", node="n1"), {"bad": object()})
            assert await r1.count() == 0


async def test_a_missing_bucket_is_an_engine_error(nats_options: dict[str, Any]) -> None:
    async with registries(nats_options, "n1") as (r1,):
        await r1.register(jt.AgentRef(id="a", type="worker", node="n1"))
        await r1.conn.bridge.run(r1.conn.js.delete_stream, r1.kv._stream)
        with trio.fail_after(5), pytest.raises(jt.EngineError) as raised:
            await r1.lookup("a")
        assert not isinstance(raised.value, (jt.Unreachable, jt.AgentNotFound))


# ---------------------------------------------------------------- contention


@asynccontextmanager
async def contended(
    monkeypatch: pytest.MonkeyPatch, registry: NatsRegistry, rounds: int
) -> AsyncIterator[list[int]]:
    """Before each of the next ``rounds`` compare-and-set writes of the
    registry, another writer updates the entry (as an update_metadata of its
    own node does: same owner, same epoch), so that write loses its race."""
    real_write = _registry.kv_write
    bumps: list[int] = []

    async def bump_first(
        kv: Any, key: str, value: bytes, *, last: int, delete: bool = False
    ) -> Any:
        if len(bumps) < rounds:
            current = await kv_read(kv, key)
            if current.data is not None:
                stored = _registry._decode(current.data, key)
                assert stored is not None
                updated = _registry._resolved(stored, current.revision, kind="updated")
                bumped = await real_write(
                    kv, key, _registry._encode(updated), last=current.revision
                )
                assert bumped is not None
                bumps.append(bumped)
        return await real_write(kv, key, value, last=last, delete=delete)

    with monkeypatch.context() as patch:
        patch.setattr(_registry, "kv_write", bump_first)
        yield bumps


async def test_lost_races_on_an_own_entry_are_retried(
    nats_options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with registries(nats_options, "n1") as (r1,):
        ref = jt.AgentRef(id="a", type="worker", node="n1")
        first = await r1.register(ref)
        async with contended(monkeypatch, r1, rounds=3) as bumps:
            with trio.fail_after(5):
                again = await r1.register(ref)  # a restart of the agent on its node
                updated = await r1.update_metadata("a", {"k": 2})
        assert len(bumps) == 3
        assert again.epoch > max(bumps[:2]) > first.epoch
        assert updated.metadata["k"] == 2
        assert (await r1.lookup("a")).node == "n1"


async def test_contention_is_a_registry_conflict_not_agent_already_exists(
    nats_options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registration, take-over or update that keeps losing to writers of an
    entry no other node owns raises RegistryConflict (a StateConflict) and
    changes nothing; AgentAlreadyExists stays for another node's agent."""
    async with registries(nats_options, "n1") as (r1,):
        ref = jt.AgentRef(id="a", type="worker", node="n1")
        entry = await r1.register(ref, {"k": 1})
        attempts = [
            ("registration", lambda: r1.register(ref)),
            ("take-over", lambda: r1.take_over(attrs.evolve(ref, node="n2"), epoch=entry.epoch)),
            ("metadata update", lambda: r1.update_metadata("a", {"k": 2})),
        ]
        for operation, attempt in attempts:
            async with contended(monkeypatch, r1, rounds=_registry.MAX_CAS_ATTEMPTS):
                with trio.fail_after(10), pytest.raises(jt.RegistryConflict) as raised:
                    await attempt()
            assert not isinstance(raised.value, jt.AgentAlreadyExists)
            assert isinstance(raised.value, jt.StateConflict)
            assert raised.value.agent_id == "a" and raised.value.operation == operation
            found = await r1.lookup("a")
            assert (found.node, found.epoch, found.metadata["k"]) == ("n1", entry.epoch, 1)
        # Another node's agent is still AgentAlreadyExists.
        with pytest.raises(jt.AgentAlreadyExists):
            await r1.register(attrs.evolve(ref, node="n2"))
