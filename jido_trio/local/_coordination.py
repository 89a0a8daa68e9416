"""In-process coordination: TTL locks with fencing tokens, election, barriers."""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import trio

from ..abc import Coordination
from ..abc import Lease
from ..abc import check_parties
from ..abc import check_ttl

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

    _locks: dict[tuple[str, str], _LockState] = attrs.field(factory=dict, init=False)
    _barriers: dict[str, _Barrier] = attrs.field(factory=dict, init=False)
    _tokens: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    _holders: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1), init=False)

    async def _acquire(self, key: tuple[str, str], ttl: float, holder: str) -> Lease:
        """Take the lease ``key`` (kind, name); locks and elections are separate."""
        while True:
            state = self._locks.setdefault(key, _LockState())
            now = trio.current_time()
            if state.lease is None or state.lease.expires_at <= now:
                state.lease = Lease(
                    name=key[1], holder=holder, token=next(self._tokens), expires_at=now + ttl
                )
                state.released = trio.Event()
                await trio.lowlevel.checkpoint()
                return state.lease
            # Wake on release or when the current lease lapses, whichever is first.
            with trio.move_on_at(state.lease.expires_at):
                await state.released.wait()

    def _release(self, key: tuple[str, str], lease: Lease) -> None:
        state = self._locks.get(key)
        if state is not None and state.lease is not None and state.lease.token == lease.token:
            # Forget the lock (waiters wake up and start afresh), so lock names
            # used once do not accumulate.
            del self._locks[key]
            state.released.set()

    @asynccontextmanager
    async def lock(
        self, name: str, *, ttl: float, holder: str | None = None
    ) -> AsyncIterator[Lease]:
        key = ("lock", name)
        check_ttl(ttl)
        lease = await self._acquire(key, ttl, holder or f"holder-{next(self._holders)}")
        try:
            yield lease
        finally:
            self._release(key, lease)

    @asynccontextmanager
    async def elect(self, group: str, *, candidate: str, ttl: float = 10.0) -> AsyncIterator[Lease]:
        # In one process a leader cannot vanish without leaving the block, so
        # its lease never needs renewing: hold it without expiry.
        check_ttl(ttl)
        key = ("elect", group)
        lease = await self._acquire(key, math.inf, candidate)
        try:
            yield lease
        finally:
            self._release(key, lease)

    async def barrier(self, name: str, parties: int) -> None:
        check_parties(parties)
        state = self._barriers.setdefault(name, _Barrier())
        state.arrived += 1
        if state.arrived >= parties:
            del self._barriers[name]
            state.passed.set()
            await trio.lowlevel.checkpoint()
            return
        await state.passed.wait()
