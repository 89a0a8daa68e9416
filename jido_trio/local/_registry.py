"""In-memory registry."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from types import MappingProxyType
from typing import Any

import attrs
import trio

from .._exceptions import AgentAlreadyExists, AgentNotFound
from .._ref import AgentRef
from ..abc import Registry, RegistryEntry, RegistryEvent

__all__ = ["LocalRegistry", "register_nowait"]

#: Events a watcher may fall behind by before further events are dropped for it.
WATCH_BUFFER = 1024


@attrs.define(eq=False)
class LocalRegistry(Registry):
    """A dict of entries; watchers get events through bounded channels."""

    _entries: dict[str, RegistryEntry] = attrs.field(factory=dict, init=False)
    # One counter for every id: an id's epoch grows with each (re)registration,
    # even across unregister, without remembering ids that are gone.
    _epochs: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    _watchers: set[trio.MemorySendChannel[RegistryEvent]] = attrs.field(factory=set, init=False)

    def _emit(self, kind: Any, entry: RegistryEntry) -> None:
        if not self._watchers:
            return
        event = RegistryEvent(kind=kind, entry=entry)
        for channel in list(self._watchers):
            try:
                channel.send_nowait(event)
            except trio.WouldBlock:
                pass  # a watcher this far behind loses events rather than memory
            except trio.BrokenResourceError:
                self._watchers.discard(channel)

    async def register(
        self, ref: AgentRef, metadata: Mapping[str, Any] | None = None
    ) -> RegistryEntry:
        await trio.lowlevel.checkpoint()
        return self._register_nowait(ref, metadata)

    def _register_nowait(
        self, ref: AgentRef, metadata: Mapping[str, Any] | None = None
    ) -> RegistryEntry:
        if ref.node is None:
            raise ValueError("a registered ref must name its owning node")
        current = self._entries.get(ref.id)
        if current is not None and current.ref.node != ref.node:
            raise AgentAlreadyExists(f"agent {ref.id!r} is owned by node {current.ref.node!r}")
        epoch = next(self._epochs)
        entry = RegistryEntry(
            ref=ref,
            epoch=epoch,
            metadata=(
                metadata  # read-only: shared as it is
                if not ref.metadata and isinstance(metadata, MappingProxyType)
                else {**ref.metadata, **(metadata or {})}
            ),
            registered_at=time.time(),
        )
        self._entries[ref.id] = entry
        self._emit("registered", entry)
        return entry

    async def take_over(self, ref: AgentRef, *, epoch: int) -> RegistryEntry:
        await trio.lowlevel.checkpoint()
        if ref.node is None:
            raise ValueError("a registered ref must name its owning node")
        current = self._entries.get(ref.id)
        if current is None:
            raise AgentNotFound(f"no agent registered as {ref.id!r}")
        if current.epoch != epoch:
            raise AgentAlreadyExists(
                f"agent {ref.id!r} is at epoch {current.epoch}, not {epoch}: "
                f"node {current.ref.node!r} owns it"
            )
        entry = RegistryEntry(
            ref=attrs.evolve(current.ref, node=ref.node),
            epoch=next(self._epochs),
            metadata=current.metadata,
            registered_at=time.time(),
        )
        self._entries[ref.id] = entry
        self._emit("updated", entry)
        return entry

    async def unregister(self, agent_id: str, *, node: str | None = None) -> None:
        await trio.lowlevel.checkpoint()
        entry = self._entries.get(agent_id)
        if entry is None or (node is not None and entry.ref.node != node):
            return
        del self._entries[agent_id]
        self._emit("unregistered", entry)

    async def lookup(self, agent_id: str) -> RegistryEntry:
        await trio.lowlevel.checkpoint()
        try:
            return self._entries[agent_id]
        except KeyError:
            raise AgentNotFound(f"no agent registered as {agent_id!r}") from None

    def lookup_nowait(self, agent_id: str) -> RegistryEntry | None:
        """Synchronous lookup for the node's hot path; ``None`` if absent."""
        return self._entries.get(agent_id)

    async def select(
        self,
        *,
        type: str | None = None,
        node: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> list[RegistryEntry]:
        await trio.lowlevel.checkpoint()
        wanted = dict(metadata or {})
        return [
            e
            for e in self._entries.values()
            if (type is None or e.ref.type == type)
            and (node is None or e.ref.node == node)
            and all(k in e.metadata and e.metadata[k] == v for k, v in wanted.items())
        ]

    async def update_metadata(self, agent_id: str, metadata: Mapping[str, Any]) -> RegistryEntry:
        await trio.lowlevel.checkpoint()
        entry = self._entries.get(agent_id)
        if entry is None:
            raise AgentNotFound(f"no agent registered as {agent_id!r}")
        entry = attrs.evolve(entry, metadata={**entry.metadata, **metadata})
        self._entries[agent_id] = entry
        self._emit("updated", entry)
        return entry

    async def count(self) -> int:
        await trio.lowlevel.checkpoint()
        return len(self._entries)

    @asynccontextmanager
    async def watch(self) -> AsyncIterator[AsyncIterator[RegistryEvent]]:
        send, receive = trio.open_memory_channel[RegistryEvent](WATCH_BUFFER)
        self._watchers.add(send)
        try:
            async with receive:
                yield receive
        finally:
            self._watchers.discard(send)
            send.close()


def register_nowait(
    registry: object, ref: AgentRef
) -> Callable[[AgentRef, Mapping[str, Any] | None], RegistryEntry] | None:
    """A synchronous ``register`` of ``ref`` for the node's start path, or
    ``None`` when the caller must await ``registry.register`` instead: the
    registry is not a :class:`LocalRegistry`, or its ``register`` is
    overridden (a subclass that customises it sees every registration), or
    another node still holds the id (its unregistration may be on its way:
    awaiting gives it the chance to land first, as before)."""
    if not (
        isinstance(registry, LocalRegistry) and type(registry).register is LocalRegistry.register
    ):
        return None
    current = registry.lookup_nowait(ref.id)
    if current is not None and current.ref.node != ref.node:
        return None
    return registry._register_nowait
