"""Conformance checks for :class:`jido_trio.abc.Registry`."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from collections.abc import Callable
from collections.abc import Collection
from collections.abc import Iterable
from typing import Any

import trio

from .._exceptions import AgentAlreadyExists
from .._exceptions import AgentNotFound
from .._ref import AgentRef
from ..abc import Registry
from ..abc import RegistryEntry
from ..abc import RegistryEvent
from ._conformance_common import Check
from ._conformance_common import Suite
from ._conformance_common import check
from ._conformance_common import expect_checkpoint
from ._conformance_common import opened_engine
from ._conformance_common import raises

__all__ = ["REGISTRY_SUITE", "check_registry"]

REGISTRY_SUITE = Suite("Registry")
_check = REGISTRY_SUITE.register


def _ref(agent_id: str, type: str = "worker", node: str | None = "n1") -> AgentRef:
    return AgentRef(id=agent_id, type=type, node=node)


def _entry(found: object, ref: AgentRef, what: str) -> RegistryEntry:
    check(isinstance(found, RegistryEntry), f"{what}: expected a RegistryEntry, got {found!r}")
    assert isinstance(found, RegistryEntry)
    check(found.ref == ref, f"{what}: entry.ref is {found.ref!r}, expected {ref!r}")
    check(found.node == ref.node, f"{what}: entry.node is {found.node!r}, expected {ref.node!r}")
    check(
        isinstance(found.epoch, int) and not isinstance(found.epoch, bool) and found.epoch >= 1,
        f"{what}: entry.epoch is {found.epoch!r}, expected an int >= 1",
    )
    check(
        isinstance(found.registered_at, (int, float)),
        f"{what}: entry.registered_at is {found.registered_at!r}, expected a number",
    )
    now = time.time()
    check(
        abs(found.registered_at - now) <= CLOCK_SKEW,
        f"{what}: entry.registered_at is {found.registered_at!r}, not the Unix time of the "
        f"registration (now is {now:.0f}; up to {CLOCK_SKEW:.0f}s of clock skew is allowed)",
    )
    return found


#: How far ``registered_at`` may be from this process's ``time.time()``: the
#: clocks of a registry server and of its clients may disagree by that much.
CLOCK_SKEW = 300.0

#: Metadata whose values a registry that re-encodes them (through JSON
#: numbers, a float-only codec, a string form) would change: an int beyond
#: 2**53, a float that needs all 17 digits, a bool that is not an int.
EXACT_METADATA: dict[str, Any] = {
    "big": 2**60,
    "negative": -(2**60) - 1,
    "float": 0.30000000000000004,
    "whole_float": 2.0,
    "flag": True,
    "zero": 0,
    "none": None,
    "text": "é 日本",
    "list": [1, 2.5, "x", False],
    "nested": {"n": 2**60, "f": 0.1},
}


def _same_value(got: object, want: object) -> bool:
    """Equal and of the same type, all the way down (``2**60 == float(2**60)``
    and ``True == 1``, so ``==`` alone would miss a changed encoding)."""
    if type(got) is not type(want):
        return False
    if isinstance(want, dict):
        assert isinstance(got, dict)
        return got.keys() == want.keys() and all(_same_value(got[k], v) for k, v in want.items())
    if isinstance(want, list):
        assert isinstance(got, list)
        return len(got) == len(want) and all(map(_same_value, got, want))
    if isinstance(want, float):
        return repr(got) == repr(want)
    return got == want


def _exact_metadata(found: RegistryEntry, what: str) -> None:
    changed = {
        k: found.metadata.get(k, "<missing>")
        for k, v in EXACT_METADATA.items()
        if k not in found.metadata or not _same_value(found.metadata[k], v)
    }
    check(
        not changed,
        f"{what}: metadata values came back changed: {changed!r} "
        f"(wrote { ({k: EXACT_METADATA[k] for k in changed})!r})",
    )


def _ids(entries: Iterable[RegistryEntry]) -> list[str]:
    return sorted(e.ref.id for e in entries)


async def _next(changes: AsyncIterator[RegistryEvent], timeout: float, what: str) -> RegistryEvent:
    with trio.move_on_after(timeout):
        event = await changes.__anext__()
        check(isinstance(event, RegistryEvent), f"{what}: watch yielded {event!r}")
        return event
    raise AssertionError(f"{what}: no watch event within {timeout}s")


@_check
async def _registry_empty(r: Registry, timeout: float) -> None:
    """a fresh registry is empty; lookup of an unknown id raises AgentNotFound"""
    check(await r.count() == 0, f"count() of a fresh registry is {await r.count()}")
    check(await r.select() == [], f"select() of a fresh registry is {await r.select()!r}")
    with raises(AgentNotFound, "lookup of an unknown id") as exc:
        await r.lookup("nobody")
    check(isinstance(exc[0], LookupError), "AgentNotFound must also be a LookupError")
    with raises(AgentNotFound, "update_metadata of an unknown id"):
        await r.update_metadata("nobody", {"a": 1})


@_check
async def _registry_register_lookup(r: Registry, timeout: float) -> None:
    """register returns the entry that lookup returns, with its metadata"""
    ref = _ref("a1")
    entry = _entry(await r.register(ref, {"zone": "x", "n": 3}), ref, "register")
    check(
        entry.metadata.get("zone") == "x" and entry.metadata.get("n") == 3,
        f"register dropped metadata: {dict(entry.metadata)!r}",
    )
    found = _entry(await r.lookup("a1"), ref, "lookup")
    check(found.epoch == entry.epoch, f"lookup epoch {found.epoch} != registered {entry.epoch}")
    check(
        dict(found.metadata) == dict(entry.metadata),
        f"lookup metadata {dict(found.metadata)!r} != registered {dict(entry.metadata)!r}",
    )
    plain = _entry(await r.register(_ref("a2")), _ref("a2"), "register without metadata")
    check(plain.ref.id == "a2", "second registration returned the wrong entry")
    check(await r.count() == 2, f"count() after 2 registrations is {await r.count()}")


@_check
async def _registry_requires_node(r: Registry, timeout: float) -> None:
    """registering a ref without a node raises ValueError"""
    with raises(ValueError, "register(ref with node=None)"):
        await r.register(_ref("a", node=None))
    check(await r.count() == 0, "a refused registration was counted")


@_check
async def _registry_epochs(r: Registry, timeout: float) -> None:
    """re-registration and take-over after unregister increase the epoch"""
    ref = _ref("a")
    first = _entry(await r.register(ref), ref, "register")
    again = _entry(await r.register(ref), ref, "re-register from the same node")
    check(again.epoch > first.epoch, f"re-register epoch {again.epoch} <= {first.epoch}")
    check(await r.count() == 1, "re-registering the same id counted twice")
    await r.unregister("a")
    moved = _ref("a", node="n2")
    taken = _entry(await r.register(moved), moved, "register from another node after unregister")
    check(
        taken.epoch > again.epoch,
        f"new owner got epoch {taken.epoch}, not above the old owner's {again.epoch}",
    )


@_check
async def _registry_ownership(r: Registry, timeout: float) -> None:
    """another node cannot take a registered id (AgentAlreadyExists)"""
    ref = _ref("a", node="n1")
    entry = await r.register(ref)
    with raises(AgentAlreadyExists, "register of an id owned by another node"):
        await r.register(_ref("a", node="n2"))
    found = _entry(await r.lookup("a"), ref, "lookup after a refused take-over")
    check(found.epoch == entry.epoch, "a refused take-over changed the epoch")


@_check
async def _registry_take_over(r: Registry, timeout: float) -> None:
    """take_over moves an entry at the given epoch only, keeping its metadata"""
    ref = _ref("a", node="n1")
    entry = await r.register(ref, {"zone": "x"})
    try:
        moved = await r.take_over(_ref("a", node="n2"), epoch=entry.epoch)
    except NotImplementedError:
        return  # optional: this registry does not support failover
    check(moved.node == "n2", f"take_over left the entry on node {moved.node!r}")
    check(moved.epoch > entry.epoch, "take_over did not grow the epoch")
    check(moved.metadata.get("zone") == "x", "take_over lost the entry's metadata")
    found = await r.lookup("a")
    check(found.node == "n2" and found.epoch == moved.epoch, "lookup does not show the take-over")
    with raises(AgentAlreadyExists, "take_over at a stale epoch"):
        await r.take_over(_ref("a", node="n3"), epoch=entry.epoch)
    with raises(AgentAlreadyExists, "take_over at an epoch above the current one"):
        await r.take_over(_ref("a", node="n3"), epoch=moved.epoch + 1)
    found = await r.lookup("a")
    check(
        found.node == "n2" and found.epoch == moved.epoch,
        f"a refused take_over changed the entry to node {found.node!r}, epoch {found.epoch}",
    )
    with raises(AgentNotFound, "take_over of an unknown id"):
        await r.take_over(_ref("nobody", node="n3"), epoch=1)
    won = 0
    async with trio.open_nursery() as nursery:

        async def race(node: str) -> None:
            nonlocal won
            try:
                await r.take_over(_ref("a", node=node), epoch=moved.epoch)
                won += 1
            except AgentAlreadyExists:
                pass

        for i in range(5):
            nursery.start_soon(race, f"r{i}")
    check(won == 1, f"{won} of 5 concurrent take_overs at one epoch won, expected exactly 1")


@_check
async def _registry_take_over_watched(r: Registry, timeout: float) -> None:
    """take_over is seen by watchers as an "updated" event naming the new owner"""
    entry = await r.register(_ref("a", node="n1"), {"zone": "x"})
    async with r.watch() as changes:
        try:
            moved = await r.take_over(_ref("a", node="n2"), epoch=entry.epoch)
        except NotImplementedError:
            return  # optional: this registry does not support failover
        event = await _next(changes, timeout, "watcher of a take_over")
    check(
        (event.kind, event.entry.ref.id, event.entry.node, event.entry.epoch)
        == ("updated", "a", "n2", moved.epoch),
        f"take_over was watched as {event.kind!r} of {event.entry.ref.id!r} on node "
        f"{event.entry.node!r} at epoch {event.entry.epoch}, expected 'updated' of 'a' on "
        f"'n2' at epoch {moved.epoch}",
    )


@_check
async def _registry_metadata_exact(r: Registry, timeout: float) -> None:
    """metadata values come back unchanged, types included (big ints, 17-digit floats)"""
    ref = _ref("a", node="n1")
    _exact_metadata(await r.register(ref, EXACT_METADATA), "register")
    _exact_metadata(await r.lookup("a"), "lookup")
    selected = await r.select(metadata={"big": 2**60})
    check(len(selected) == 1, f"select(metadata={{'big': 2**60}}) found {_ids(selected)}")
    _exact_metadata(selected[0], "select")
    entry = await r.update_metadata("a", {"other": 1})
    _exact_metadata(entry, "update_metadata of another key")
    try:
        moved = await r.take_over(_ref("a", node="n2"), epoch=entry.epoch)
    except NotImplementedError:
        return  # optional: this registry does not support failover
    _exact_metadata(moved, "take_over")
    _exact_metadata(await r.lookup("a"), "lookup after take_over")


@_check
async def _registry_unregister(r: Registry, timeout: float) -> None:
    """unregister removes; unknown ids are fine; node= only removes its own"""
    await r.unregister("nobody")
    await r.unregister("nobody", node="n1")
    await r.register(_ref("a", node="n1"))
    await r.register(_ref("b", node="n1"))
    await r.unregister("a", node="n2")
    _entry(await r.lookup("a"), _ref("a", node="n1"), "lookup after unregister by a non-owner")
    await r.unregister("a", node="n1")
    with raises(AgentNotFound, "lookup after unregister"):
        await r.lookup("a")
    await r.unregister("b")
    with raises(AgentNotFound, "lookup after unregister without node"):
        await r.lookup("b")
    check(await r.count() == 0, f"count() after unregistering everything is {await r.count()}")
    check(await r.select() == [], "select() lists unregistered entries")


@_check
async def _registry_register_replaces_metadata(r: Registry, timeout: float) -> None:
    """a registration sets the metadata anew: nothing of an earlier registration remains"""
    ref = _ref("a", node="n1")
    await r.register(ref, {"zone": "x", "old": 1})
    await r.unregister("a")
    again = _entry(await r.register(ref, {"zone": "y"}), ref, "register after unregister")
    for what, found in (("register", again), ("lookup", await r.lookup("a"))):
        check(
            dict(found.metadata) == {"zone": "y"},
            f"{what} after unregister and register again has metadata "
            f"{dict(found.metadata)!r}, expected {{'zone': 'y'}}",
        )
    check(await r.select(metadata={"old": 1}) == [], "select matches metadata of a past entry")
    moved = _ref("a", node="n2")
    await r.unregister("a")
    other = _entry(await r.register(moved), moved, "register from another node after unregister")
    check(
        dict(other.metadata) == {},
        f"a new owner's registration without metadata has {dict(other.metadata)!r}",
    )
    restarted = _entry(await r.register(moved, {"tier": 2}), moved, "register again (restart)")
    check(
        dict(restarted.metadata) == {"tier": 2},
        f"registering again from the owning node gave metadata {dict(restarted.metadata)!r}, "
        "expected {'tier': 2}",
    )


@_check
async def _registry_select(r: Registry, timeout: float) -> None:
    """select filters by type, node and metadata values, all criteria together"""
    rows: list[tuple[str, str, str, dict[str, Any]]] = [
        ("a", "worker", "n1", {"zone": "x", "tier": 1}),
        ("b", "worker", "n2", {"zone": "y", "tier": 1}),
        ("c", "cache", "n1", {"zone": "x", "tier": 2, "opt": None}),
        ("d", "cache", "n2", {}),
        ("e", "worker", "n1", {"zone": "x", "tier": "1"}),
    ]
    for agent_id, type, node, metadata in rows:
        await r.register(_ref(agent_id, type=type, node=node), metadata)
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({}, ["a", "b", "c", "d", "e"]),
        ({"type": "worker"}, ["a", "b", "e"]),
        ({"type": "nothing"}, []),
        ({"node": "n2"}, ["b", "d"]),
        ({"type": "cache", "node": "n1"}, ["c"]),
        ({"metadata": {"zone": "x"}}, ["a", "c", "e"]),
        ({"metadata": {"zone": "x", "tier": 1}}, ["a"]),
        ({"metadata": {"tier": "1"}}, ["e"]),
        ({"metadata": {"opt": None}}, ["c"]),
        ({"metadata": {"missing": 1}}, []),
        ({"type": "worker", "node": "n1", "metadata": {"zone": "x"}}, ["a", "e"]),
        ({"metadata": {}}, ["a", "b", "c", "d", "e"]),
    ]
    for criteria, want in cases:
        found = await r.select(**criteria)
        for entry in found:
            check(isinstance(entry, RegistryEntry), f"select({criteria}) returned {entry!r}")
        check(
            _ids(found) == want, f"select(**{criteria!r}) returned {_ids(found)}, expected {want}"
        )


@_check
async def _registry_update_metadata(r: Registry, timeout: float) -> None:
    """update_metadata merges into the metadata and keeps the epoch"""
    ref = _ref("a")
    entry = await r.register(ref, {"zone": "x", "tier": 1})
    updated = _entry(await r.update_metadata("a", {"tier": 2, "new": True}), ref, "update_metadata")
    want = {"zone": "x", "tier": 2, "new": True}
    check(
        {k: updated.metadata.get(k) for k in want} == want,
        f"update_metadata returned metadata {dict(updated.metadata)!r}, expected {want!r}",
    )
    check(updated.epoch == entry.epoch, "update_metadata changed the epoch")
    found = await r.lookup("a")
    check(
        {k: found.metadata.get(k) for k in want} == want,
        f"lookup after update_metadata has metadata {dict(found.metadata)!r}",
    )
    check(_ids(await r.select(metadata={"tier": 2})) == ["a"], "select misses updated metadata")
    check(await r.select(metadata={"tier": 1}) == [], "select still matches replaced metadata")


@_check
async def _registry_watch(r: Registry, timeout: float) -> None:
    """watch streams registered/updated/unregistered events from now on, in order"""
    await r.register(_ref("before"))
    async with r.watch() as changes, r.watch() as second:
        await r.register(_ref("a"), {"k": 1})
        await r.update_metadata("a", {"k": 2})
        await r.unregister("a")
        await r.register(_ref("b"))
        want = [("registered", "a"), ("updated", "a"), ("unregistered", "a"), ("registered", "b")]
        for name, stream in (("first", changes), ("second", second)):
            got = []
            for i in range(len(want)):
                event = await _next(stream, timeout, f"{name} watcher, event {i}")
                got.append((event.kind, event.entry.ref.id))
            check(got == want, f"{name} watcher saw {got}, expected {want}")
    async with r.watch() as changes:
        await r.register(_ref("c"), {"v": "x"})
        event = await _next(changes, timeout, "watcher opened after others closed")
        check(
            (event.kind, event.entry.ref.id) == ("registered", "c")
            and event.entry.metadata.get("v") == "x",
            f"watch event {event!r} does not describe the registration of 'c'",
        )
    await r.register(_ref("d"))  # no watcher left: still fine
    check(await r.count() == 4, f"count() is {await r.count()}, expected 4")


@_check
async def _registry_slow_watcher(r: Registry, timeout: float) -> None:
    """a watcher that never reads does not block registrations"""
    async with r.watch():
        with trio.move_on_after(timeout * 10) as scope:
            for i in range(3000):
                await r.register(_ref(f"a{i}"))
        check(
            not scope.cancelled_caught, "registrations blocked behind a watcher that does not read"
        )
    check(await r.count() == 3000, f"count() is {await r.count()}, expected 3000")


@_check
async def _registry_concurrency(r: Registry, timeout: float) -> None:
    """concurrent registrations all land; a race for one id has exactly one winner"""

    async def register(ref: AgentRef, outcomes: list[str]) -> None:
        try:
            await r.register(ref)
        except AgentAlreadyExists:
            outcomes.append("refused")
        else:
            outcomes.append(ref.node or "")

    outcomes: list[str] = []
    async with trio.open_nursery() as nursery:
        for i in range(100):
            nursery.start_soon(register, _ref(f"a{i}", node=f"n{i % 3}"), outcomes)
    check(await r.count() == 100, f"count() after 100 concurrent registrations: {await r.count()}")
    race: list[str] = []
    async with trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(register, _ref("contested", node=f"n{i}"), race)
    winners = [o for o in race if o != "refused"]
    check(len(winners) == 1, f"10 nodes raced for one id and {len(winners)} won: {race}")
    owner = await r.lookup("contested")
    check(owner.node == winners[0], f"lookup names {owner.node!r}, the winner was {winners[0]!r}")


@_check
async def _registry_checkpoints(r: Registry, timeout: float) -> None:
    """every async method is a Trio checkpoint"""
    calls: list[tuple[str, Callable[[], Any]]] = [
        ("register", lambda: r.register(_ref("a"))),
        ("lookup", lambda: r.lookup("a")),
        ("select", lambda: r.select(type="worker")),
        ("update_metadata", lambda: r.update_metadata("a", {"x": 1})),
        ("count", lambda: r.count()),
        ("unregister", lambda: r.unregister("a")),
        ("unregister of an unknown id", lambda: r.unregister("a")),
    ]
    for what, call in calls:
        with expect_checkpoint(f"Registry.{what}"):
            await call()


async def check_registry(
    factory: Callable[[], Any], *, skip: Collection[str] = (), timeout: float = 5.0
) -> None:
    """Run every Registry check, each against a fresh registry from ``factory``.

    :param factory: called with no arguments for each check; returns an async
        context manager yielding an empty :class:`~jido_trio.abc.Registry` (or
        the registry itself, or an awaitable of it).
    :param skip: names of checks not to run (see :data:`REGISTRY_CHECKS`).
    :param timeout: seconds to wait for a watch event before failing.
    :raises AssertionError: naming the first check that failed and why.
    """

    async def run_one(item: Check) -> None:
        async with opened_engine(factory, Registry) as registry:
            await item.fn(registry, timeout)

    await REGISTRY_SUITE.run(skip, run_one)
