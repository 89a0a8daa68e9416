"""The conformance suites reject engines with one cluster-breaking bug each.

Every engine here is a built-in one with a single bug injected (the bugs that
mutation testing of the suites, and a third-party engine written from the
docs, once got past them). Each test runs the whole suite, as a plugin author
would, and expects it to fail at the check that covers that bug.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from contextlib import asynccontextmanager
from types import MappingProxyType
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from jido_trio import AgentRef
from jido_trio.abc import Consistency
from jido_trio.abc import Lease
from jido_trio.abc import NodeInfo
from jido_trio.abc import RegistryEntry
from jido_trio.abc import Versioned
from jido_trio.local import LocalCoordination
from jido_trio.local import LocalRegistry
from jido_trio.local import MemoryStateBackend
from jido_trio.local._hub import open_hub
from jido_trio.local._transport import LocalTransport
from jido_trio.testing import faults
from jido_trio.testing.conformance import check_coordination
from jido_trio.testing.conformance import check_registry
from jido_trio.testing.conformance import check_state_backend
from jido_trio.testing.conformance import check_transport
from jido_trio.testing.conformance import plugin_factory


def fails_at(check: str) -> Any:
    """``pytest.raises`` for a suite that fails at the check named ``check``."""
    return pytest.raises(
        AssertionError, match=rf"conformance check {re.escape(repr(check))} failed"
    )


# ---------------------------------------------------------------- registry


class FutureEpochRegistry(LocalRegistry):
    """take_over accepts an epoch above the current one (it checks ``<`` only)."""

    async def take_over(self, ref: AgentRef, *, epoch: int) -> RegistryEntry:
        current = self._entry(ref.id)
        if current is not None and epoch > current.epoch:
            epoch = current.epoch
        return await super().take_over(ref, epoch=epoch)


class UnwatchedTakeOverRegistry(LocalRegistry):
    """take_over tells no watcher: failover moves agents nobody hears of."""

    async def take_over(self, ref: AgentRef, *, epoch: int) -> RegistryEntry:
        watchers, self._watchers = self._watchers, set()
        try:
            return await super().take_over(ref, epoch=epoch)
        finally:
            self._watchers = watchers | self._watchers


@attrs.define(eq=False)
class StickyMetadataRegistry(LocalRegistry):
    """A registration merges into what an earlier one of the same id left."""

    _remembered: dict[str, dict[str, Any]] = attrs.field(factory=dict, init=False)

    async def register(
        self, ref: AgentRef, metadata: Mapping[str, Any] | None = None
    ) -> RegistryEntry:
        merged = {**self._remembered.get(ref.id, {}), **(metadata or {})}
        self._remembered[ref.id] = merged
        return await super().register(ref, merged)


class ZeroTimeRegistry(LocalRegistry):
    """Every entry says it was registered at 0 (the Unix epoch)."""

    def _entry(self, agent_id: str) -> RegistryEntry | None:
        entry = super()._entry(agent_id)
        return None if entry is None else attrs.evolve(entry, registered_at=0.0)


def _lossy(value: Any) -> Any:
    """What a float-only codec (JSON numbers in Lua, a double column) makes of a value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    return float(f"{value:.15g}")


class ReencodingRegistry(LocalRegistry):
    """take_over rewrites the metadata through a lossy codec: ``2**60`` turns
    into a float and ``0.30000000000000004`` into ``0.3``."""

    async def take_over(self, ref: AgentRef, *, epoch: int) -> RegistryEntry:
        entry = await super().take_over(ref, epoch=epoch)
        metadata = MappingProxyType({k: _lossy(v) for k, v in entry.metadata.items()})
        self._metadata[ref.id] = metadata
        return attrs.evolve(entry, metadata=metadata)


@pytest.mark.parametrize(
    ("registry", "check"),
    [
        (FutureEpochRegistry, "take_over"),
        (UnwatchedTakeOverRegistry, "take_over_watched"),
        (StickyMetadataRegistry, "register_replaces_metadata"),
        (ZeroTimeRegistry, "register_lookup"),
        (ReencodingRegistry, "metadata_exact"),
    ],
)
async def test_registry_suite_rejects(registry: type[LocalRegistry], check: str) -> None:
    with fails_at(check):
        await check_registry(registry, timeout=1.0)


async def test_registry_suite_says_what_changed() -> None:
    with pytest.raises(
        AssertionError, match=r"take_over: metadata values came back changed.*'big'"
    ):
        await check_registry(ReencodingRegistry, timeout=1.0)
    with pytest.raises(AssertionError, match=r"registered_at is 0.0, not the Unix time"):
        await check_registry(ZeroTimeRegistry, timeout=1.0)


# ---------------------------------------------------------------- state


@attrs.define(eq=False)
class AliasingBackend(MemoryStateBackend):
    """Keeps the caller's buffer instead of a copy, and reads it back as bytes:
    the caller reusing its buffer rewrites the stored value."""

    _held: dict[str, Any] = attrs.field(factory=dict, init=False)

    async def write(self, key: str, value: bytes, *, expected_version: int | None = None) -> int:
        version = await super().write(key, value, expected_version=expected_version)
        self._held[key] = value
        return version

    async def delete(self, key: str, *, expected_version: int | None = None) -> None:
        await super().delete(key, expected_version=expected_version)
        self._held.pop(key, None)

    async def read(self, key: str, *, consistency: Consistency = "strong") -> Versioned | None:
        found = await super().read(key, consistency=consistency)
        if found is None:
            return None
        return Versioned(value=bytes(self._held[key]), version=found.version)


class BlindRelaxedReadsBackend(MemoryStateBackend):
    """Eventual and weak reads never find anything (a cache that is never filled)."""

    async def read(self, key: str, *, consistency: Consistency = "strong") -> Versioned | None:
        found = await super().read(key, consistency=consistency)
        return found if consistency == "strong" else None


@pytest.mark.parametrize(
    ("backend", "check"),
    [
        (AliasingBackend, "copies_buffers"),
        (BlindRelaxedReadsBackend, "relaxed_reads_converge"),
    ],
)
async def test_state_suite_rejects(
    backend: type[MemoryStateBackend], check: str, autojump_clock: trio.testing.MockClock
) -> None:
    with fails_at(check):
        await check_state_backend(backend)


async def test_relaxed_reads_may_lag_within_the_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An engine whose eventual reads lag a second behind its writes passes."""

    @attrs.define(eq=False)
    class LaggingBackend(MemoryStateBackend):
        _changed: dict[str, float] = attrs.field(factory=dict, init=False)

        async def write(
            self, key: str, value: bytes, *, expected_version: int | None = None
        ) -> int:
            self._changed[key] = trio.current_time()
            return await super().write(key, value, expected_version=expected_version)

        async def read(self, key: str, *, consistency: Consistency = "strong") -> Versioned | None:
            found = await super().read(key, consistency=consistency)
            if consistency != "strong" and trio.current_time() < self._changed.get(key, 0) + 1:
                return None
            return found

    await check_state_backend(LaggingBackend, timeout=3.0)
    with fails_at("relaxed_reads_converge"):
        await check_state_backend(LaggingBackend, timeout=0.5)


# ---------------------------------------------------------------- coordination


class NamelessBarrierCoordination(LocalCoordination):
    """Every barrier is the same barrier, whatever its name."""

    async def barrier(self, name: str, parties: int) -> None:
        await super().barrier("the barrier", parties)


class LateWakingCoordination(LocalCoordination):
    """A waiter learns of a release only 4 s later (a slow poll)."""

    async def _acquire(self, key: tuple[str, str], ttl: float, holder: str) -> Lease:
        state = self._locks.get(key)
        if state is not None and state.lease is not None:
            with trio.move_on_at(state.lease.expires_at) as lapsed:
                await state.released.wait()
            if not lapsed.cancelled_caught:
                await trio.sleep(4.0)
        return await super()._acquire(key, ttl, holder)


@pytest.mark.parametrize(
    ("coordination", "check"),
    [
        (NamelessBarrierCoordination, "barrier_names"),
        (LateWakingCoordination, "waiter_woken"),
    ],
)
async def test_coordination_suite_rejects(
    coordination: type[LocalCoordination], check: str, autojump_clock: trio.testing.MockClock
) -> None:
    with fails_at(check):
        await check_coordination(coordination)


# ---------------------------------------------------------------- transport


class AlwaysAliveTransport(LocalTransport):
    """members() reports every connected node alive, even across a partition."""

    async def members(self) -> Sequence[NodeInfo]:
        return [attrs.evolve(m, alive=True) for m in await super().members()]


class RememberingTransport(LocalTransport):
    """members() lists, as alive, every node that ever joined the hub (a
    membership record nobody removes or lets expire)."""

    async def serve(self, handler: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        assert self.hub is not None
        self.hub.extensions.setdefault("joined", set()).add(self.node_name)
        await super().serve(handler, task_status=task_status)

    async def members(self) -> Sequence[NodeInfo]:
        await trio.lowlevel.checkpoint()
        assert self.hub is not None
        joined = sorted(self.hub.extensions.get("joined", ()))
        return [NodeInfo(name=n, alive=True, last_seen=time.time()) for n in joined]


def hub_endpoints(cls: type[LocalTransport], hub: str) -> Callable[[str], Any]:
    @asynccontextmanager
    async def endpoint(name: str) -> AsyncIterator[LocalTransport]:
        async with open_hub(hub) as joined:
            yield cls(node_name=name, hub=joined)

    return endpoint


async def test_transport_suite_rejects_members_always_alive(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hub = "catches-always-alive"
    with fails_at("members_partitioned"):
        await check_transport(
            hub_endpoints(AlwaysAliveTransport, hub),
            partition=lambda a, b: faults(hub).partition(a, b),
        )


async def test_transport_suite_rejects_departed_members_alive(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with fails_at("node_leaves"):
        await check_transport(hub_endpoints(RememberingTransport, "catches-remembering"))


async def test_the_built_in_engines_pass_the_same_runs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The broken engines above differ from these by their bug alone."""
    hub = "catches-sound"
    await check_registry(LocalRegistry, timeout=1.0)
    await check_state_backend(MemoryStateBackend)
    await check_coordination(LocalCoordination)
    await check_transport(
        hub_endpoints(LocalTransport, hub), partition=lambda a, b: faults(hub).partition(a, b)
    )
    await check_transport(plugin_factory("transport", "local", options={"hub": "catches-plugin"}))
