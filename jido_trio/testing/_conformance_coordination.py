"""Conformance checks for :class:`jido_trio.abc.Coordination`.

Lease expiry is a matter of time, so these checks wait for it with
``trio.sleep`` and measure bounds with ``trio.current_time()``: an in-process
engine runs them under a Trio ``MockClock`` with autojump (pytest-trio: the
``autojump_clock`` fixture) in no real time; a networked engine runs them on
the real clock with a small ``ttl``.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Collection
from typing import Any

import trio

from ..abc import Coordination
from ..abc import Lease
from ._conformance_common import Check
from ._conformance_common import Suite
from ._conformance_common import check
from ._conformance_common import expect_checkpoint
from ._conformance_common import opened_engine

__all__ = ["COORDINATION_SUITE", "check_coordination"]

COORDINATION_SUITE = Suite("Coordination")
_check = COORDINATION_SUITE.register


def _lease(found: object, name: str, what: str) -> Lease:
    check(isinstance(found, Lease), f"{what}: expected a Lease, got {found!r}")
    assert isinstance(found, Lease)
    check(found.name == name, f"{what}: lease.name is {found.name!r}, expected {name!r}")
    check(
        isinstance(found.token, int) and not isinstance(found.token, bool),
        f"{what}: lease.token is {found.token!r}, expected an int",
    )
    check(
        isinstance(found.holder, str) and found.holder, f"{what}: lease.holder is {found.holder!r}"
    )
    return found


async def _acquired_within(c: Coordination, name: str, ttl: float, wait: float) -> Lease | None:
    """Try to take lock ``name`` for at most ``wait`` seconds; release at once."""
    with trio.move_on_after(wait):
        async with c.lock(name, ttl=ttl) as lease:
            return lease
    return None


@_check
async def _coordination_lock_lease(c: Coordination, ttl: float) -> None:
    """lock yields a lease naming the lock, the holder and a future expiry"""
    before = trio.current_time()
    async with c.lock("L", ttl=ttl, holder="me") as lease:
        _lease(lease, "L", "lock('L')")
        check(lease.holder == "me", f"lease.holder is {lease.holder!r}, expected 'me'")
        check(
            before < lease.expires_at <= trio.current_time() + ttl * 1.01,
            f"lease.expires_at is {lease.expires_at}, expected within ttl={ttl} of "
            f"now={trio.current_time()}",
        )
    async with c.lock("L", ttl=ttl) as anonymous:
        _lease(anonymous, "L", "lock('L') without a holder")


@_check
async def _coordination_mutual_exclusion(c: Coordination, ttl: float) -> None:
    """a held lock is not granted to anyone else until released"""
    long = ttl * 100
    async with c.lock("L", ttl=long):
        other = await _acquired_within(c, "L", long, ttl)
        check(other is None, f"lock 'L' was granted twice: {other!r}")
        unrelated = await _acquired_within(c, "M", long, ttl)
        check(unrelated is not None, "lock 'M' was not granted while only 'L' was held")
    after = await _acquired_within(c, "L", long, ttl)
    check(after is not None, "lock 'L' was not granted after its holder released it")


@_check
async def _coordination_waiter_woken(c: Coordination, ttl: float) -> None:
    """a waiter gets the lock within one ttl of its release (not at the lease's expiry)"""
    long = ttl * 100
    got: list[float] = []
    granted = trio.Event()

    async def waiter(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async with c.lock("L", ttl=long):
            got.append(trio.current_time())
            granted.set()

    async with trio.open_nursery() as nursery:
        async with c.lock("L", ttl=long):
            await nursery.start(waiter)
            await trio.sleep(ttl)
            check(not got, "a waiter got the lock while it was held")
            released = trio.current_time()
        with trio.move_on_after(ttl * 5):
            await granted.wait()
    check(bool(got), f"a waiter did not get the lock within {ttl * 5}s of its release")
    # The lease has ttl * 100 left: a waiter that only wakes when the lease
    # would expire, or polls slowly, misses this bound by far.
    check(
        got[0] - released <= ttl,
        f"the waiter got the lock {got[0] - released:.3f}s after its release, "
        f"expected within ttl={ttl}s",
    )


@_check
async def _coordination_fencing_tokens(c: Coordination, ttl: float) -> None:
    """every new holder of a lock gets a strictly greater fencing token"""
    tokens = []
    for i in range(5):
        async with c.lock("L", ttl=ttl, holder=f"h{i}") as lease:
            tokens.append(_lease(lease, "L", f"holder #{i}").token)
    check(tokens == sorted(set(tokens)), f"fencing tokens did not strictly grow: {tokens}")


@_check
async def _coordination_ttl_expiry(c: Coordination, ttl: float) -> None:
    """a holder that outstays its ttl loses the lease to the next, larger token"""
    async with c.lock("L", ttl=ttl, holder="slow") as first:
        second: list[Lease] = []
        taken = trio.Event()
        async with trio.open_nursery() as nursery:

            async def take_over() -> None:
                async with c.lock("L", ttl=ttl * 100, holder="next") as lease:
                    second.append(lease)
                    taken.set()
                    await trio.sleep(ttl * 10)  # still holding when 'slow' leaves

            nursery.start_soon(take_over)
            with trio.move_on_after(ttl * 5):
                await taken.wait()
            check(bool(second), f"the lock was not granted {ttl * 5}s after a ttl={ttl} lease")
            check(
                trio.current_time() >= first.expires_at,
                "the lock was granted to another holder before the first lease expired",
            )
            lease = _lease(second[0], "L", "lease after expiry")
            check(lease.token > first.token, f"token {lease.token} after expiry <= {first.token}")
            nursery.cancel_scope.cancel()


@_check
async def _coordination_expired_holder_exit(c: Coordination, ttl: float) -> None:
    """leaving the block of an expired lease does not release the next holder's lease"""
    events: list[str] = []
    next_holds = trio.Event()
    slow_left = trio.Event()
    async with trio.open_nursery() as nursery:

        async def slow() -> None:
            async with c.lock("L", ttl=ttl, holder="slow"):
                await next_holds.wait()
            slow_left.set()

        async def next_holder() -> None:
            async with c.lock("L", ttl=ttl * 100, holder="next"):
                next_holds.set()
                await slow_left.wait()
                events.append("next still holds")
                other = await _acquired_within(c, "L", ttl * 100, ttl)
                events.append("granted twice" if other is not None else "exclusive")

        nursery.start_soon(slow)
        await trio.sleep(ttl / 10)
        nursery.start_soon(next_holder)
        with trio.fail_after(ttl * 20):
            await slow_left.wait()
    check(
        events == ["next still holds", "exclusive"],
        f"after the expired holder left, the lock was no longer exclusive: {events}",
    )


@_check
async def _coordination_contention(c: Coordination, ttl: float) -> None:
    """many tasks contending for a lock never overlap and all get it, in token order"""
    inside = 0
    overlaps = 0
    tokens: list[int] = []

    async def worker() -> None:
        nonlocal inside, overlaps
        async with c.lock("L", ttl=ttl * 100) as lease:
            tokens.append(lease.token)
            inside += 1
            overlaps += inside > 1
            await trio.sleep(ttl / 10)
            inside -= 1

    with trio.fail_after(ttl * 100):
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(worker)
    check(overlaps == 0, f"{overlaps} times two tasks held the lock at once")
    check(len(tokens) == 20, f"only {len(tokens)} of 20 contenders got the lock")
    check(tokens == sorted(set(tokens)), f"tokens not strictly growing in grant order: {tokens}")


@_check
async def _coordination_cancelled_waiter(c: Coordination, ttl: float) -> None:
    """a waiter cancelled while waiting never gets the lock and blocks nobody"""
    long = ttl * 100
    async with c.lock("L", ttl=long):
        got = await _acquired_within(c, "L", long, ttl)
        check(got is None, "the lock was granted while held")
    after = await _acquired_within(c, "L", long, ttl)
    check(after is not None, "a cancelled waiter kept the lock from being granted")


@_check
async def _coordination_election(c: Coordination, ttl: float) -> None:
    """one leader per group, renewed while it leads; the next takes over when it resigns"""
    async with c.elect("G", candidate="alpha", ttl=ttl) as lease:
        _lease(lease, "G", "elect('G')")
        check(lease.holder == "alpha", f"leader lease holder is {lease.holder!r}, expected 'alpha'")
        first = lease.token
        rival: list[Lease] = []
        elected = trio.Event()
        async with trio.open_nursery() as nursery:

            async def candidate(
                task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
            ) -> None:
                task_status.started()
                async with c.elect("G", candidate="beta", ttl=ttl) as won:
                    rival.append(won)
                    elected.set()

            await nursery.start(candidate)
            await trio.sleep(ttl * 5)
            check(not rival, "a second leader was elected while the first still leads (renewal)")
            async with c.elect("H", candidate="beta", ttl=ttl) as other_group:
                check(other_group.holder == "beta", "another group's election was blocked")
            nursery.cancel_scope.cancel()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(candidate)
        with trio.move_on_after(ttl * 5):
            await elected.wait()
        check(bool(rival), "no new leader was elected after the first resigned")
        check(rival[0].holder == "beta", f"new leader is {rival[0].holder!r}, expected 'beta'")
        check(rival[0].token > first, f"new leader token {rival[0].token} <= previous {first}")


@_check
async def _coordination_barrier(c: Coordination, ttl: float) -> None:
    """a barrier holds its parties until the last arrives, then can be reused"""
    passed: list[int] = []
    all_passed = trio.Event()

    async def party(i: int) -> None:
        await c.barrier("B", 3)
        passed.append(i)
        if len(passed) == 3:
            all_passed.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(party, 0)
        nursery.start_soon(party, 1)
        await trio.sleep(ttl)
        check(not passed, f"the barrier let {passed} through before all 3 parties arrived")
        nursery.start_soon(party, 2)
        with trio.move_on_after(ttl * 5):
            await all_passed.wait()
        check(sorted(passed) == [0, 1, 2], f"after the third party only {passed} passed")
    passed.clear()
    with trio.fail_after(ttl * 5):
        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(party, i)
    check(sorted(passed) == [0, 1, 2], "the barrier could not be used a second time")
    with trio.fail_after(ttl), expect_checkpoint("Coordination.barrier"):
        await c.barrier("single", 1)


@_check
async def _coordination_barrier_names(c: Coordination, ttl: float) -> None:
    """barriers of different names are independent"""
    passed: list[str] = []
    changed = trio.Event()

    async def party(name: str) -> None:
        nonlocal changed
        await c.barrier(name, 2)
        passed.append(name)
        changed.set()
        changed = trio.Event()

    async def until(count: int) -> None:
        with trio.move_on_after(ttl * 5):
            while len(passed) < count:
                await changed.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(party, "B1")
        nursery.start_soon(party, "B2")
        await trio.sleep(ttl)
        check(not passed, f"one party at each of two barriers let {passed} through")
        nursery.start_soon(party, "B1")
        await until(2)
        check(passed == ["B1", "B1"], f"the second party of barrier B1 let {passed} through")
        nursery.start_soon(party, "B2")
        await until(4)
        check(sorted(passed) == ["B1", "B1", "B2", "B2"], f"two barriers' parties gave {passed}")


@_check
async def _coordination_checkpoints(c: Coordination, ttl: float) -> None:
    """entering lock and elect are Trio checkpoints"""
    with expect_checkpoint("entering Coordination.lock"):
        async with c.lock("L", ttl=ttl):
            pass
    with expect_checkpoint("entering Coordination.elect"):
        async with c.elect("G", candidate="x", ttl=ttl):
            pass


async def check_coordination(
    factory: Callable[[], Any], *, skip: Collection[str] = (), ttl: float = 1.0
) -> None:
    """Run every Coordination check, each against a fresh service from ``factory``.

    An in-process implementation may run it under an autojump ``MockClock``
    (pytest-trio's ``autojump_clock`` fixture): lease expiry is waited for with
    ``trio.sleep``, which then takes no real time. An implementation that waits
    on sockets or threads, or whose leases expire on a server's clock, must
    not: virtual time would jump while it waits and trip its own timeouts.
    Run it on the real clock with a small ``ttl`` (0.5 for the NATS plugin).

    :param factory: called with no arguments for each check; returns an async
        context manager yielding a fresh :class:`~jido_trio.abc.Coordination`
        (or the service itself, or an awaitable of it).
    :param skip: names of checks not to run (see :data:`COORDINATION_CHECKS`).
    :param ttl: the lease time-to-live the checks use; every wait is a
        multiple of it.
    :raises AssertionError: naming the first check that failed and why.
    """

    async def run_one(item: Check) -> None:
        async with opened_engine(factory, Coordination) as coordination:
            await item.fn(coordination, ttl)

    await COORDINATION_SUITE.run(skip, run_one)
