"""The conformance suites against the implementations shipped in jido_trio."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

import jido_trio as jt
from jido_trio.abc import StateBackend
from jido_trio.local import LocalCoordination
from jido_trio.local import LocalRegistry
from jido_trio.local import MemoryStateBackend
from jido_trio.local import open_sqlite_state_backend
from jido_trio.testing import faults
from jido_trio.testing.conformance import COORDINATION_CHECKS
from jido_trio.testing.conformance import REGISTRY_CHECKS
from jido_trio.testing.conformance import STATE_BACKEND_CHECKS
from jido_trio.testing.conformance import TRANSPORT_CHECKS
from jido_trio.testing.conformance import check_coordination
from jido_trio.testing.conformance import check_registry
from jido_trio.testing.conformance import check_state_backend
from jido_trio.testing.conformance import check_transport
from jido_trio.testing.conformance import plugin_factory


def sqlite_files(tmp_path: Path, **options: Any) -> Callable[[], Any]:
    counter = itertools.count()
    return lambda: open_sqlite_state_backend(tmp_path / f"state-{next(counter)}.db", **options)


# ---------------------------------------------------------------- state


async def test_memory_state_backend() -> None:
    await check_state_backend(MemoryStateBackend)


async def test_memory_state_backend_by_plugin_name() -> None:
    await check_state_backend(plugin_factory("state", "memory"))


async def test_sqlite_state_backend(tmp_path: Path) -> None:
    await check_state_backend(sqlite_files(tmp_path))


async def test_sqlite_state_backend_synchronous_normal(tmp_path: Path) -> None:
    await check_state_backend(sqlite_files(tmp_path, synchronous="normal"))


async def test_sqlite_state_backend_by_plugin_name(tmp_path: Path) -> None:
    counter = itertools.count()

    def factory() -> Any:
        path = tmp_path / f"plugin-{next(counter)}.db"
        return plugin_factory("state", "sqlite", options={"path": str(path)})()

    await check_state_backend(factory)


# ---------------------------------------------------------------- registry


async def test_local_registry() -> None:
    await check_registry(LocalRegistry)


async def test_local_registry_by_plugin_name() -> None:
    await check_registry(plugin_factory("registry", "local"))


# ---------------------------------------------------------------- coordination


async def test_local_coordination(autojump_clock: trio.testing.MockClock) -> None:
    await check_coordination(LocalCoordination)


async def test_local_coordination_other_ttl(autojump_clock: trio.testing.MockClock) -> None:
    await check_coordination(plugin_factory("coordination", "local"), ttl=30.0)


# ---------------------------------------------------------------- transport


async def test_local_transport_on_a_hub(autojump_clock: trio.testing.MockClock) -> None:
    await check_transport(plugin_factory("transport", "local", options={"hub": "conformance"}))


async def test_local_transport_partitioned_by_fault_injection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With ``partition=`` the suite also checks what members() shows across a cut."""
    hub = "conformance-partition"
    await check_transport(
        plugin_factory("transport", "local", options={"hub": hub}),
        partition=lambda a, b: faults(hub).partition(a, b),
    )


async def test_local_transport_without_hub_is_local_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    await check_transport(plugin_factory("transport", "local"))


# ---------------------------------------------------------------- the suites catch bugs


class ForgetfulBackend(MemoryStateBackend):
    """Ignores compare-and-set: the classic lost-update bug."""

    async def write(self, key: str, value: bytes, *, expected_version: int | None = None) -> int:
        return await super().write(key, value)


class UncheckpointedBackend(MemoryStateBackend):
    async def read(self, key: str, *, consistency: Any = "strong") -> Any:
        return self._data.get(key)


class LeakyRegistry(LocalRegistry):
    async def unregister(self, agent_id: str, *, node: str | None = None) -> None:
        await trio.lowlevel.checkpoint()  # forgets to remove the entry


class NotAStateBackend:
    pass


async def test_suite_reports_the_failing_check() -> None:
    with pytest.raises(AssertionError, match=r"check 'compare_and_set' failed .*StateConflict"):
        await check_state_backend(ForgetfulBackend)
    with pytest.raises(AssertionError, match=r"StateBackend.read is not a Trio checkpoint"):
        await check_state_backend(
            UncheckpointedBackend, skip=[n for n in STATE_BACKEND_CHECKS if n != "checkpoints"]
        )
    with pytest.raises(AssertionError, match=r"check 'unregister' failed"):
        await check_registry(LeakyRegistry, skip=["epochs"])
    with pytest.raises(AssertionError, match=r"not a jido_trio.abc.StateBackend"):
        await check_state_backend(NotAStateBackend)


async def test_unexpected_exceptions_become_assertion_errors() -> None:
    class Broken(MemoryStateBackend):
        async def keys(self, prefix: str = "") -> list[str]:
            raise RuntimeError("disk on fire")

    with pytest.raises(AssertionError, match=r"unexpected RuntimeError: disk on fire"):
        await check_state_backend(Broken)


async def test_skip_names_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown StateBackend check"):
        await check_state_backend(MemoryStateBackend, skip=["no_such_check"])
    # Skipping everything runs nothing, even against a useless factory.
    await check_state_backend(NotAStateBackend, skip=STATE_BACKEND_CHECKS)


async def test_factories_may_return_awaitables_or_context_managers() -> None:
    opened: list[str] = []

    async def make() -> StateBackend:
        await trio.lowlevel.checkpoint()
        opened.append("awaitable")
        return MemoryStateBackend()

    @asynccontextmanager
    async def managed() -> AsyncIterator[StateBackend]:
        opened.append("enter")
        yield MemoryStateBackend()
        opened.append("exit")

    await check_state_backend(make, skip=STATE_BACKEND_CHECKS[1:])
    await check_state_backend(managed, skip=STATE_BACKEND_CHECKS[1:])
    assert opened == ["awaitable", "enter", "exit"]


def test_check_names_are_listed() -> None:
    for names in (STATE_BACKEND_CHECKS, REGISTRY_CHECKS, TRANSPORT_CHECKS, COORDINATION_CHECKS):
        assert len(names) == len(set(names)) > 5


def test_plugin_factory_rejects_unknown_names() -> None:
    with pytest.raises(jt.ConfigError, match=r"available: .*memory"):
        plugin_factory("state", "no-such-state")
    with pytest.raises(jt.ConfigError, match="kind must be one of"):
        plugin_factory("storage", "memory")
