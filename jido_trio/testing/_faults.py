"""Fault injection for nodes that talk through an in-process hub.

Nodes opened with ``plugin_options={"local": {"hub": NAME}}`` send each other
bytes through :class:`~jido_trio.local._transport.LocalTransport`. The
:class:`Faults` of that hub (from :func:`faults`) decides, on the sending side,
what happens to every such message: it may be dropped, delayed, duplicated,
reordered, or stopped by a partition. Each rule is a :class:`FaultRule` handle
that can be removed (``rule.remove()``, or ``with faults.drop(...):``).

What the rules see: the frames passed to ``Transport.send`` and
``Transport.request`` (the node-to-node requests of ``send_instruction``,
``call``, ``query_agent``, ``check_agent_health``...), filtered by sending node
(``source``), receiving node (``dest``) and a predicate on the frame bytes
(``match``; :func:`frame_kind` reads a request's kind). A reply travels back
with its request: only ``drop(reply=True)`` and partitions affect it.

What a caller sees (through ``transport.request``, so through every remote
operation of a node):

- a dropped request is never delivered: the caller gets
  :class:`~jido_trio.CallTimeout` when its deadline passes (a lost message
  looks like a slow node); with ``reply=True`` the request is handled (its
  effect happens) and the reply is lost, with the same outcome for the caller;
- a delayed request is handled ``seconds`` later, so its reply comes that much
  later (:class:`~jido_trio.CallTimeout` if that is past the deadline);
- a duplicated request is handled twice: once, then again after the first has
  been handled (like a retransmission); the caller gets the first reply;
- a reordered request is held until ``window`` messages are held (or
  ``max_hold`` seconds passed) and then released in another order;
- a partitioned request fails at once with :class:`~jido_trio.Unreachable`,
  like one to a node that is down (``fail_fast=False``: it is lost and the
  caller gets :class:`~jido_trio.CallTimeout` at its deadline). A partition
  that starts while a request is being handled loses its reply the same way.

One-way ``send`` never raises for a fault: a dropped or partitioned message
is silently discarded, a delayed or held one is delivered later (``send``
returns at once).

Randomness comes from ``random.Random``: give ``faults(hub, seed=...)`` (or
``seed=`` on a rule) and the same messages in the same order meet the same
fate. Delays use the Trio clock (``trio.sleep``), so ``MockClock`` drives them.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from collections.abc import Iterable
from types import TracebackType
from typing import Literal
from typing import TypedDict
from typing import Unpack

import attrs
import trio

from .._exceptions import InvalidMessage
from .._exceptions import Unreachable
from .._message import decode_value
from ..local._hub import LocalHub
from ..local._hub import _hubs
from ..local._transport import LocalTransport
from ..local._transport import _Request

__all__ = ["FaultRule", "Faults", "faults", "frame_kind"]

#: A predicate on the bytes of a frame.
Match = Callable[[bytes], bool]
Kind = Literal["drop", "delay", "duplicate", "reorder", "partition"]
Nodes = str | Iterable[str] | None


class Where(TypedDict, total=False):
    """Which messages a rule applies to, and its randomness: the keyword
    arguments every rule of :class:`Faults` takes (documented there)."""

    source: Nodes
    dest: Nodes
    match: Match | None
    limit: int | None
    seed: int | None


_EXTENSION = "faults"


def faults(hub: str, *, seed: int | None = None) -> Faults:
    """The fault plan of the in-process hub named ``hub``.

    The same object is returned for as long as the hub exists, which is while
    at least one node has joined it (``jt.open_node(jt.Config(...,
    plugin_options={"local": {"hub": hub}}))``); its rules end with the hub.

    :param hub: the hub name given in the nodes' ``local`` plugin options.
    :param seed: reseed the plan's random source: rules created afterwards
        make the same choices for the same messages.
    :raises LookupError: no node has joined a hub of that name.
    """
    found = _hubs.get(hub)
    if found is None:
        raise LookupError(
            f"no hub named {hub!r}: a hub exists while a node has joined it "
            f"(plugin_options={{'local': {{'hub': {hub!r}}}}})"
        )
    plan = found.extensions.get(_EXTENSION)
    if not isinstance(plan, Faults):
        plan = found.extensions[_EXTENSION] = Faults(found)
    if seed is not None:
        plan.seed(seed)
    return plan


def frame_kind(data: bytes) -> str | None:
    """The kind of a node-to-node request frame (``"tell"``, ``"tell_alo"``,
    ``"call"``, ``"query"``, ``"health"``...), or ``None`` for other bytes.

    For ``match=`` predicates, e.g. ``faults.drop(match=lambda f: frame_kind(f) == "call")``.
    """
    try:
        frame = decode_value(data)
    except InvalidMessage:
        return None
    if isinstance(frame, list) and frame and isinstance(frame[0], str):
        return frame[0]
    return None


def _nodes(value: Nodes, what: str) -> frozenset[str] | None:
    if value is None:
        return None
    names = frozenset([value] if isinstance(value, str) else value)
    if not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{what} must be a node name or a non-empty collection of names")
    return names


def _probability(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"probability must be between 0 and 1, got {value!r}")
    return float(value)


def _seconds(value: float, what: str, *, positive: bool = False) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
        or (positive and value == 0)
    ):
        raise ValueError(
            f"{what} must be a finite {'positive' if positive else 'non-negative'} number"
        )
    return float(value)


def _count(value: int | None, what: str, minimum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def _show(nodes: frozenset[str] | None) -> str:
    if nodes is None:
        return "*"
    return ",".join(sorted(nodes))


@attrs.define(eq=False, repr=False)
class FaultRule:
    """One installed fault; a handle to inspect and remove it.

    Use it as a context manager to remove it at the end of a block::

        with jido_trio.testing.faults("hub").drop(dest="b"):
            ...

    ``hits`` counts the messages it applied to (for a partition: the messages
    it stopped). A rule with a ``limit`` stops applying after ``limit`` hits
    but stays installed until removed.
    """

    kind: Kind
    source: frozenset[str] | None
    dest: frozenset[str] | None
    match: Match | None = None
    probability: float = 1.0
    limit: int | None = None
    seconds: float = 0.0
    jitter: float = 0.0
    copies: int = 1
    window: int = 2
    max_hold: float = 1.0
    reply: bool = False
    fail_fast: bool = True
    hits: int = 0
    installed: bool = True
    _faults: Faults | None = None
    _random: random.Random = attrs.field(factory=random.Random)

    @property
    def exhausted(self) -> bool:
        """Whether it reached its ``limit`` (it no longer applies)."""
        return self.limit is not None and self.hits >= self.limit

    def remove(self) -> None:
        """Uninstall the rule (idempotent). Messages a reorder rule holds are
        released at once; messages already delayed keep their delay."""
        if self.installed and self._faults is not None:
            self._faults._remove(self)
        self.installed = False

    def __enter__(self) -> FaultRule:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()

    def __repr__(self) -> str:
        if self.kind == "partition":
            what = (
                f"partition({_show(self.source)} | {_show(self.dest)}, fail_fast={self.fail_fast})"
            )
        else:
            detail = {
                "drop": "reply" if self.reply else "",
                "delay": f"{self.seconds}s" + (f"+{self.jitter}s" if self.jitter else ""),
                "duplicate": f"copies={self.copies}",
                "reorder": f"window={self.window}, max_hold={self.max_hold}s",
            }[self.kind]
            what = f"{self.kind}({detail}) {_show(self.source)} -> {_show(self.dest)}"
            if self.probability < 1:
                what += f" p={self.probability}"
            if self.match is not None:
                what += " match=..."
        limit = "" if self.limit is None else f"/{self.limit}"
        state = "" if self.installed else " removed"
        return f"<FaultRule {what} hits={self.hits}{limit}{state}>"

    # ------------------------------------------------------------ internals

    def _blocks(self, source: str, dest: str) -> bool:
        assert self.source is not None and self.dest is not None
        return (source in self.source and dest in self.dest) or (
            source in self.dest and dest in self.source
        )

    def _applies(self, source: str, dest: str, data: bytes, is_request: bool) -> bool:
        if self.limit is not None and self.hits >= self.limit:
            return False
        if self.source is not None and source not in self.source:
            return False
        if self.dest is not None and dest not in self.dest:
            return False
        if self.reply and not is_request:
            return False
        if self.match is not None and not self.match(data):
            return False
        if self.probability < 1 and self._random.random() >= self.probability:
            return False
        self.hits += 1
        return True

    def _delay(self) -> float:
        if self.jitter:
            return self.seconds + self._random.uniform(0, self.jitter)
        return self.seconds

    def _permute(self, entries: list[_Entry]) -> list[_Entry]:
        order = list(entries)
        self._random.shuffle(order)
        if all(a is b for a, b in zip(order, entries, strict=True)):
            order.reverse()  # never the order they were sent in
        return order


@attrs.define(eq=False)
class _Entry:
    """A message the faults deliver later (delayed, held or duplicated)."""

    request: _Request
    source: str
    dest: str
    delay: float = 0.0
    copies: int = 0
    release_at: float = 0.0


@attrs.define(eq=False)
class _Verdict:
    delay: float = 0.0
    copies: int = 0
    hold: FaultRule | None = None
    drop_reply: bool = False


@attrs.define(eq=False)
class _Held:
    deadline: float
    entries: list[_Entry] = attrs.field(factory=list)


@attrs.define(eq=False)
class _Link:
    """Messages the faults hold or delay from one node to another, in release
    order: release times only grow, so delayed messages keep their order
    among themselves (only reorder rules change it).
    """

    faults: Faults
    source: str
    dest: str
    peer: LocalTransport
    queue: deque[_Entry] = attrs.field(factory=deque)
    held: dict[FaultRule, _Held] = attrs.field(factory=dict)
    running: bool = False
    last_release: float = -math.inf
    wake: trio.Event = attrs.field(factory=trio.Event)

    def push(self, entry: _Entry, at: float) -> None:
        at = max(at, self.last_release)
        self.last_release = entry.release_at = at
        self.queue.append(entry)
        self._poke()

    def hold(self, rule: FaultRule, entry: _Entry) -> None:
        held = self.held.get(rule)
        if held is None:
            held = self.held[rule] = _Held(deadline=trio.current_time() + rule.max_hold)
        held.entries.append(entry)
        if len(held.entries) >= rule.window:
            self.release(rule)
        else:
            self._poke()

    def release(self, rule: FaultRule) -> None:
        held = self.held.pop(rule, None)
        if held is None:
            return
        now = trio.current_time()
        for entry in rule._permute(held.entries):
            self.push(entry, now + entry.delay)

    def _poke(self) -> None:
        if self.running:
            self.wake.set()
        elif self.peer._spawn(self._run):
            self.running = True
        else:
            self._abandon(f"node {self.dest!r} is not receiving")

    def _abandon(self, reason: str) -> None:
        entries = list(self.queue)
        for held in self.held.values():
            entries.extend(held.entries)
        self.queue.clear()
        self.held.clear()
        for entry in entries:
            entry.request.fail(reason)
            self.faults._settled()

    async def _run(self) -> None:
        try:
            while self.queue or self.held:
                now = trio.current_time()
                for rule in [r for r, h in self.held.items() if h.deadline <= now]:
                    self.release(rule)
                if self.queue and self.queue[0].release_at <= now:
                    await self.faults._deliver(self.peer, self.queue.popleft())
                    continue
                wake_at = min(
                    [h.deadline for h in self.held.values()]
                    + ([self.queue[0].release_at] if self.queue else [])
                )
                self.wake = trio.Event()
                with trio.move_on_at(wake_at):
                    await self.wake.wait()
        finally:
            self.running = False
            self._abandon(f"node {self.dest!r} stopped before the message was delivered")


@attrs.define(eq=False)
class Faults:
    """The faults applied to messages between the nodes of one hub.

    Obtain it with :func:`faults`; every method that adds a fault returns its
    :class:`FaultRule`. Filters common to the message rules:

    :param source: only messages sent by this node (or these nodes).
    :param dest: only messages sent to this node (or these nodes).
    :param match: only frames for which ``match(frame_bytes)`` is true.
    :param limit: apply to at most this many messages.
    :param seed: the rule's own random seed (default: drawn from the plan's
        random source, see :func:`faults`).

    While no rule is installed and nothing is in flight, the hub's transports
    take their normal path (one attribute test per message).
    """

    hub: LocalHub
    _rules: list[FaultRule] = attrs.field(factory=list)
    _links: dict[tuple[str, str], _Link] = attrs.field(factory=dict)
    _random: random.Random = attrs.field(factory=random.Random)
    _pending: int = 0
    _idle: trio.Event = attrs.field(factory=trio.Event)

    def __attrs_post_init__(self) -> None:
        self._idle.set()

    def seed(self, seed: int) -> None:
        """Reseed the random source that rules created from now on draw from."""
        self._random = random.Random(seed)

    @property
    def rules(self) -> tuple[FaultRule, ...]:
        """The installed rules, oldest first."""
        return tuple(self._rules)

    @property
    def in_flight(self) -> int:
        """Messages delayed, held or duplicated that are not yet handled (or lost)."""
        return self._pending

    # ------------------------------------------------------------ rules

    def drop(
        self,
        probability: float = 1.0,
        *,
        reply: bool = False,
        **where: Unpack[Where],
    ) -> FaultRule:
        """Lose matching messages with ``probability``.

        A lost one-way message is discarded (``send`` returns normally); a lost
        request is never handled and its caller gets
        :class:`~jido_trio.CallTimeout` at its deadline.

        :param reply: lose the reply instead (requests only): the request is
            handled (its effect happens) and the caller still gets
            :class:`~jido_trio.CallTimeout`.
        """
        return self._add(
            "drop",
            probability,
            where,
            reply=bool(reply),
        )

    def delay(
        self,
        seconds: float,
        *,
        jitter: float = 0.0,
        probability: float = 1.0,
        **where: Unpack[Where],
    ) -> FaultRule:
        """Deliver matching messages ``seconds`` (plus up to ``jitter``, uniform)
        later, on the Trio clock. Delays of several rules add up.

        A delay does not reorder what it delays: delayed messages on one link
        (``source`` -> ``dest``) arrive in the order they were sent, jitter or
        not. Messages it does not delay are not held back: they may overtake
        delayed ones (``send`` returns at once). A request's caller sees its reply
        that much later, or :class:`~jido_trio.CallTimeout` if that is past its
        deadline (the request is still handled when it arrives).
        """
        return self._add(
            "delay",
            probability,
            where,
            seconds=_seconds(seconds, "seconds"),
            jitter=_seconds(jitter, "jitter"),
        )

    def duplicate(
        self,
        probability: float = 1.0,
        *,
        copies: int = 1,
        **where: Unpack[Where],
    ) -> FaultRule:
        """Deliver matching messages ``1 + copies`` times.

        Each copy is delivered after the previous one has been handled (a
        retransmission after a lost acknowledgement), so later messages may
        overtake a copy. A requester gets the reply to the first delivery;
        the copies' replies are discarded. :meth:`settle` waits for copies.
        """
        copies_ = _count(copies, "copies", 1)
        assert copies_ is not None
        return self._add("duplicate", probability, where, copies=copies_)

    def reorder(
        self,
        window: int = 2,
        *,
        max_hold: float = 1.0,
        probability: float = 1.0,
        **where: Unpack[Where],
    ) -> FaultRule:
        """Hold matching messages (each with ``probability``) per link, and
        release them in a shuffled order, never the order they were sent in,
        once ``window`` are held or ``max_hold`` seconds after the first was
        held (whichever comes first: nothing is held longer than that).

        ``send`` returns at once; a held request's caller waits (within its
        deadline). Messages the rule does not hold are not held back by it.
        """
        window_ = _count(window, "window", 2)
        assert window_ is not None
        return self._add(
            "reorder",
            probability,
            where,
            window=window_,
            max_hold=_seconds(max_hold, "max_hold", positive=True),
        )

    def partition(self, side_a: Nodes, side_b: Nodes, *, fail_fast: bool = True) -> FaultRule:
        """Cut all traffic, both ways, between the nodes of ``side_a`` and those
        of ``side_b`` (each a node name or a collection of names); other pairs
        are not affected.

        One-way messages are discarded. With ``fail_fast`` (default) a request
        raises :class:`~jido_trio.Unreachable` at once, like one to a node that
        is down (``check_agent_health`` says UNREACHABLE); without it the
        request is lost and its caller gets :class:`~jido_trio.CallTimeout`
        at its deadline. Messages already in flight (delayed, held) are lost
        when they would be delivered, and a reply sent across the partition
        is lost the same way. ``members()`` shows the other side as not alive.
        Undo with :meth:`heal` or the rule's ``remove()``.
        """
        a = _nodes(side_a, "side_a")
        b = _nodes(side_b, "side_b")
        if a is None or b is None:
            raise ValueError("a partition needs a node (or nodes) on each side")
        if a & b:
            raise ValueError(f"nodes on both sides of a partition: {sorted(a & b)}")
        rule = FaultRule(kind="partition", source=a, dest=b, fail_fast=bool(fail_fast))
        return self._install(rule)

    def heal(self) -> None:
        """Remove every partition."""
        for rule in [r for r in self._rules if r.kind == "partition"]:
            rule.remove()

    def clear(self) -> None:
        """Remove every rule. Messages already delayed are still delivered at
        their time; held messages are released at once."""
        for rule in list(self._rules):
            rule.remove()

    async def settle(self) -> None:
        """Wait until every message the faults delayed, held or duplicated
        has been delivered and handled (or lost), copies included.

        Messages that went straight through are not waited for.
        """
        await trio.lowlevel.checkpoint()
        while self._pending:
            await self._idle.wait()

    def _add(
        self, kind: Kind, probability: float, where: Where, **options: float | int | bool
    ) -> FaultRule:
        unknown = set(where) - set(Where.__annotations__)
        if unknown:
            raise TypeError(f"unexpected argument(s): {', '.join(sorted(unknown))}")
        match = where.get("match")
        seed = where.get("seed")
        if match is not None and not callable(match):
            raise TypeError("match must be a callable taking the frame bytes")
        rule = FaultRule(
            kind=kind,
            source=_nodes(where.get("source"), "source"),
            dest=_nodes(where.get("dest"), "dest"),
            match=match,
            probability=_probability(probability),
            limit=_count(where.get("limit"), "limit", 1),
            random=random.Random(self._random.getrandbits(64) if seed is None else seed),
            **options,  # type: ignore[arg-type]
        )
        return self._install(rule)

    def _install(self, rule: FaultRule) -> FaultRule:
        rule._faults = self
        self._rules.append(rule)
        self._refresh()
        return rule

    def _remove(self, rule: FaultRule) -> None:
        if rule in self._rules:
            self._rules.remove(rule)
        if rule.kind == "reorder":
            for link in self._links.values():
                link.release(rule)
        self._refresh()

    def _refresh(self) -> None:
        active = bool(self._rules) or self._pending > 0
        self.hub.interceptor = self if active else None

    # ------------------------------------------------------------ accounting

    def _busy(self) -> None:
        if self._pending == 0:
            self._idle = trio.Event()
        self._pending += 1

    def _settled(self) -> None:
        self._pending -= 1
        if self._pending == 0:
            self._idle.set()
            self._refresh()

    # ------------------------------------------------------------ Interceptor

    def reachable(self, source: str, node: str) -> bool:
        return self._partition(source, node) is None

    def _partition(self, source: str, dest: str) -> FaultRule | None:
        for rule in self._rules:
            if rule.kind == "partition" and rule._blocks(source, dest):
                return rule
        return None

    @staticmethod
    def _cut(source: str, dest: str) -> str:
        return f"node {dest!r} is unreachable from node {source!r} (partitioned by fault injection)"

    def _verdict(self, source: str, dest: str, data: bytes, *, is_request: bool) -> _Verdict | None:
        """What happens to one message (``None``: it is lost)."""
        for rule in self._rules:
            if (
                rule.kind == "drop"
                and not rule.reply
                and rule._applies(source, dest, data, is_request)
            ):
                return None
        verdict = _Verdict()
        for rule in self._rules:
            kind = rule.kind
            if kind == "partition" or (kind == "drop" and not rule.reply):
                continue
            if kind == "reorder" and verdict.hold is not None:
                continue
            if not rule._applies(source, dest, data, is_request):
                continue
            if kind == "drop":
                verdict.drop_reply = True
            elif kind == "delay":
                verdict.delay += rule._delay()
            elif kind == "duplicate":
                verdict.copies += rule.copies
            else:
                verdict.hold = rule
        return verdict

    def _crossing(self, source: str, dest: str) -> FaultRule | None:
        """The partition a message from ``source`` to ``dest`` meets (counted as hit)."""
        cut = self._partition(source, dest)
        if cut is not None:
            cut.hits += 1
        return cut

    async def send(self, source: LocalTransport, node: str, request: _Request) -> None:
        peer = source._peer(node)
        name = source.node_name
        if self._crossing(name, node) is not None:
            await trio.lowlevel.checkpoint()
            return
        verdict = self._verdict(name, node, request.data, is_request=False)
        if verdict is None:
            await trio.lowlevel.checkpoint()
            return
        await self._transmit(peer, _Entry(request, name, node), verdict)

    async def request(self, source: LocalTransport, node: str, request: _Request) -> None:
        peer = source._peer(node)
        name = source.node_name
        cut = self._crossing(name, node)
        if cut is not None:
            if cut.fail_fast:
                await trio.lowlevel.checkpoint()
                raise Unreachable(self._cut(name, node))
            await trio.sleep_forever()  # lost: the caller's deadline ends it
        verdict = self._verdict(name, node, request.data, is_request=True)
        if verdict is None:
            await trio.sleep_forever()
            raise AssertionError("unreachable")  # pragma: no cover
        await self._transmit(peer, _Entry(request, name, node), verdict)
        await request.done.wait()
        if verdict.drop_reply:
            await trio.sleep_forever()
        await self.reply(source, node, request)

    async def reply(self, source: LocalTransport, node: str, request: _Request) -> None:
        if request.lost is not None:
            return  # no reply to lose
        name = source.node_name
        cut = self._crossing(node, name)
        if cut is not None:  # the reply meets a partition
            if cut.fail_fast:
                await trio.lowlevel.checkpoint()
                raise Unreachable(self._cut(name, node))
            await trio.sleep_forever()

    async def _transmit(self, peer: LocalTransport, entry: _Entry, verdict: _Verdict) -> None:
        entry.delay = verdict.delay
        entry.copies = verdict.copies
        key = (entry.source, entry.dest)
        link = self._links.get(key)
        if link is None or link.peer is not peer:
            link = self._links[key] = _Link(self, entry.source, entry.dest, peer)
        if verdict.hold is not None:
            self._busy()
            link.hold(verdict.hold, entry)
        elif entry.delay > 0:
            self._busy()
            link.push(entry, trio.current_time() + entry.delay)
        else:
            await peer._enqueue(entry.request)
            if entry.copies:
                self._busy()
                self._follow(peer, entry)
            return
        await trio.lowlevel.checkpoint()

    async def _deliver(self, peer: LocalTransport, entry: _Entry) -> None:
        """Deliver a message whose time has come (called by its link, which
        counted it as pending)."""
        request = entry.request
        cut = self._partition(entry.source, entry.dest)
        if cut is not None:  # partitioned while in flight: lost
            cut.hits += 1
            if cut.fail_fast:
                request.fail(self._cut(entry.source, entry.dest))
            self._settled()
            return
        delivered = False
        try:
            await peer._enqueue(request)
            delivered = True
        except Unreachable as exc:
            request.fail(str(exc))
        finally:
            if delivered:
                self._follow(peer, entry)
            else:
                request.fail(f"node {entry.dest!r} stopped before the message was delivered")
                self._settled()

    def _follow(self, peer: LocalTransport, entry: _Entry) -> None:
        """Once a pending message is handled: deliver its copies, then settle it."""
        if not peer._spawn(self._handled, peer, entry):
            self._settled()

    async def _handled(self, peer: LocalTransport, entry: _Entry) -> None:
        try:
            await entry.request.done.wait()
            if entry.request.lost is not None:
                return  # the original was never handled: nothing to repeat
            for _ in range(entry.copies):
                if self._partition(entry.source, entry.dest) is not None:
                    return
                copy = _Request(data=entry.request.data, wants_reply=False)
                try:
                    await peer._enqueue(copy)
                except Unreachable:
                    return
                await copy.done.wait()
        finally:
            self._settled()
