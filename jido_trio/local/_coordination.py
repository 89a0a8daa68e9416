"""In-process coordination: TTL locks with fencing tokens, election, barriers."""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import trio

from ..abc import Coordination, Lease

__all__ = ["LocalCoordination"]


@attrs.define(eq=False)
class _LockState:
    lease: Lease | None = None
    released: trio.Event = attrs.field(factory=trio.Event)


@attrs.define(eq=False)
class _Barrier:
    arrived: int = 0
    passed: trio.Event = attrs.field(factory=trio.Event)


@attrs.define(eq=False)
class LocalCoordination(Coordination):
    """Coordination among the tasks (and hub nodes) of one process.

    Times are ``trio.current_time()``, so tests drive TTLs with a MockClock.
    """

    _locks: dict[str, _LockState] = attrs.field(factory=dict, init=False)
    _barriers: dict[str, _Barrier] = attrs.field(factory=dict, init=False)
    _tokens: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    _holders: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1), init=False)

    async def _acquire(self, name: str, ttl: float, holder: str) -> Lease:
        if not ttl > 0:
            raise ValueError("ttl must be positive")
        while True:
            state = self._locks.setdefault(name, _LockState())
            now = trio.current_time()
            if state.lease is None or state.lease.expires_at <= now:
                state.lease = Lease(
                    name=name, holder=holder, token=next(self._tokens), expires_at=now + ttl
                )
                state.released = trio.Event()
                await trio.lowlevel.checkpoint()
                return state.lease
            # Wake on release or when the current lease lapses, whichever is first.
            with trio.move_on_at(state.lease.expires_at):
                await state.released.wait()

    def _release(self, lease: Lease) -> None:
        state = self._locks.get(lease.name)
        if state is not None and state.lease is not None and state.lease.token == lease.token:
            state.lease = None
            state.released.set()

    @asynccontextmanager
    async def lock(
        self, name: str, *, ttl: float, holder: str | None = None
    ) -> AsyncIterator[Lease]:
        lease = await self._acquire(name, ttl, holder or f"holder-{next(self._holders)}")
        try:
            yield lease
        finally:
            self._release(lease)

    @asynccontextmanager
    async def elect(self, group: str, *, candidate: str, ttl: float = 10.0) -> AsyncIterator[Lease]:
        # In one process a leader cannot vanish without leaving the block, so
        # its lease never needs renewing: hold it without expiry.
        lease = await self._acquire(f"election:{group}", math.inf, candidate)
        try:
            yield lease
        finally:
            self._release(lease)

    async def barrier(self, name: str, parties: int) -> None:
        if parties < 1:
            raise ValueError("parties must be at least 1")
        state = self._barriers.setdefault(name, _Barrier())
        state.arrived += 1
        if state.arrived >= parties:
            del self._barriers[name]
            state.passed.set()
            await trio.lowlevel.checkpoint()
            return
        await state.passed.wait()
