"""In-memory registry."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator
from collections.abc import Mapping
from contextlib import asynccontextmanager
from types import MappingProxyType
from typing import Any

import attrs
import trio

from .._exceptions import AgentAlreadyExists
from .._exceptions import AgentNotFound
from .._ref import AgentRef
from ..abc import Metadata
from ..abc import Registry
from ..abc import RegistryEntry
from ..abc import RegistryEvent
from ..abc import SynchronousRegistry
from ..abc import check_registered_ref
from ..abc import registry_matcher

__all__ = ["LocalRegistry"]

#: Events a watcher may fall behind by before further events are dropped for it.
WATCH_BUFFER = 1024


@attrs.define(eq=False)
class LocalRegistry(Registry, SynchronousRegistry):
    """Entries in dicts; watchers get events through bounded channels.

    An entry is kept as its parts rather than as a :class:`RegistryEntry`:
    the ref (the agent's own object), its metadata (often one mapping shared
    by many agents) and an ``(epoch, registered_at)`` pair, which the garbage
    collector stops tracking. A node of 100k idle agents then holds no
    per-agent object here for the collector to walk; entries are built when
    asked for.
    """

    _refs: dict[str, AgentRef] = attrs.field(factory=dict, init=False)
    _metadata: dict[str, Mapping[str, Any]] = attrs.field(factory=dict, init=False)
    _stamps: dict[str, tuple[int, float]] = attrs.field(factory=dict, init=False)
    # One counter for every id: an id's epoch grows with each (re)registration,
    # even across unregister, without remembering ids that are gone.
    _epochs: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    _watchers: set[trio.MemorySendChannel[RegistryEvent]] = attrs.field(factory=set, init=False)

    def _entry(self, agent_id: str) -> RegistryEntry | None:
        ref = self._refs.get(agent_id)
        if ref is None:
            return None
        epoch, registered_at = self._stamps[agent_id]
        return RegistryEntry(
            ref=ref,
            epoch=epoch,
            metadata=self._metadata[agent_id],
            registered_at=registered_at,
        )

    def _store(self, entry: RegistryEntry) -> RegistryEntry:
        agent_id = entry.ref.id
        self._refs[agent_id] = entry.ref
        self._metadata[agent_id] = entry.metadata
        self._stamps[agent_id] = (entry.epoch, entry.registered_at)
        return entry

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
        check_registered_ref(ref)
        await trio.lowlevel.checkpoint()
        self.register_nowait(ref, metadata)
        entry = self._entry(ref.id)
        assert entry is not None
        return entry

    # ------------------------------------------------------------ SynchronousRegistry

    def synchronous_access(self) -> SynchronousRegistry | None:
        # A subclass that customises register sees every registration.
        return self if type(self).register is LocalRegistry.register else None

    def can_register_nowait(self, ref: AgentRef) -> bool:
        # Another node still holding the id: its unregistration may be on its
        # way, and awaiting register gives it the chance to land first.
        current = self._refs.get(ref.id)
        return current is None or current.node == ref.node

    def register_nowait(self, ref: AgentRef, metadata: Mapping[str, Any] | None = None) -> int:
        # Unchecked, like the state backend's *_nowait: for refs the node
        # made itself (register checks the others first).
        agent_id = ref.id
        current = self._refs.get(agent_id)
        if current is not None and current.node != ref.node:
            raise AgentAlreadyExists(
                f"agent {agent_id!r} is owned by node {current.node!r}", node=current.node
            )
        if not ref.metadata and isinstance(metadata, MappingProxyType):
            frozen: Mapping[str, Any] = metadata  # read-only: shared as it is
        else:
            frozen = MappingProxyType({**ref.metadata, **(metadata or {})})
        self._refs[agent_id] = ref
        self._metadata[agent_id] = frozen
        epoch = next(self._epochs)
        self._stamps[agent_id] = (epoch, time.time())
        if self._watchers:
            entry = self._entry(agent_id)
            assert entry is not None
            self._emit("registered", entry)
        return epoch

    def unregister_nowait(self, agent_id: str, *, node: str | None = None) -> None:
        entry = self._entry(agent_id)
        if entry is None or (node is not None and entry.ref.node != node):
            return
        del self._refs[agent_id], self._metadata[agent_id], self._stamps[agent_id]
        self._emit("unregistered", entry)

    async def take_over(self, ref: AgentRef, *, epoch: int) -> RegistryEntry:
        check_registered_ref(ref)
        await trio.lowlevel.checkpoint()
        current = self._entry(ref.id)
        if current is None:
            raise AgentNotFound(f"no agent registered as {ref.id!r}")
        if current.epoch != epoch:
            raise AgentAlreadyExists(
                f"agent {ref.id!r} is at epoch {current.epoch}, not {epoch}: "
                f"node {current.ref.node!r} owns it"
            )
        entry = self._store(
            RegistryEntry(
                ref=attrs.evolve(current.ref, node=ref.node),
                epoch=next(self._epochs),
                metadata=current.metadata,
                registered_at=time.time(),
            )
        )
        self._emit("updated", entry)
        return entry

    async def unregister(self, agent_id: str, *, node: str | None = None) -> None:
        await trio.lowlevel.checkpoint()
        self.unregister_nowait(agent_id, node=node)

    async def lookup(self, agent_id: str) -> RegistryEntry:
        await trio.lowlevel.checkpoint()
        entry = self._entry(agent_id)
        if entry is None:
            raise AgentNotFound(f"no agent registered as {agent_id!r}")
        return entry

    async def select(
        self, *, type: str | None = None, node: str | None = None, metadata: Metadata | None = None
    ) -> list[RegistryEntry]:
        await trio.lowlevel.checkpoint()
        matches = registry_matcher(type=type, node=node, metadata=metadata)
        found = []
        for agent_id, ref in self._refs.items():
            if matches(ref, self._metadata[agent_id]):
                entry = self._entry(agent_id)
                assert entry is not None
                found.append(entry)
        return found

    async def update_metadata(self, agent_id: str, metadata: Mapping[str, Any]) -> RegistryEntry:
        await trio.lowlevel.checkpoint()
        entry = self._entry(agent_id)
        if entry is None:
            raise AgentNotFound(f"no agent registered as {agent_id!r}")
        entry = self._store(attrs.evolve(entry, metadata={**entry.metadata, **metadata}))
        self._emit("updated", entry)
        return entry

    async def count(self) -> int:
        await trio.lowlevel.checkpoint()
        return len(self._refs)

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
