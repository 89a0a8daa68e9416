"""The conformance suites reject engines with one cluster-breaking bug each.

Every engine here is a built-in one with a single bug injected (the bugs that
mutation testing of the suites, and a third-party engine written from the
docs, once got past them). Each test runs the whole suite, as a plugin author
would, and expects it to fail at the check that covers that bug.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs
import pytest

from jido_trio import AgentRef
from jido_trio.abc import RegistryEntry
from jido_trio.local import LocalRegistry
from jido_trio.testing.conformance import check_registry


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
