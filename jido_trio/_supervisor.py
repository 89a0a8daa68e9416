"""Supervisors: trees of Trio nurseries with Erlang/OTP restart semantics.

A supervisor owns a nursery; each child runs there inside its own cancel
scope. When a child exits, the supervisor applies the child's restart type
(``permanent`` always, ``transient`` after a failure, ``temporary`` never) and
its strategy (``one_for_one``, ``one_for_all``, ``rest_for_one``). More than
``max_restarts`` restarts within ``max_seconds`` make the supervisor stop its
children in reverse order and fail with :class:`SupervisorEscalation`, which
its parent handles like any other child failure.
"""

from __future__ import annotations

import contextvars
import logging
import math
import random
from collections import deque
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any
from typing import Literal
from typing import Protocol

import attrs
import trio

from ._context import current_node_name
from ._exceptions import ChildAlreadyExists
from ._exceptions import ChildNotFound
from ._exceptions import ChildRetired
from ._exceptions import ConfigError
from ._exceptions import InfrastructureFailure
from ._exceptions import SupervisorEscalation
from ._exceptions import SupervisorUnavailable
from ._exceptions import UncountedFailure
from ._exceptions import describe

__all__ = [
    "Backoff",
    "ChildInfo",
    "ChildObserver",
    "ChildSpec",
    "Restart",
    "Status",
    "Strategy",
    "Supervisor",
    "SupervisorInfo",
]

log = logging.getLogger("jido_trio.supervisor")

Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]
Restart = Literal["permanent", "transient", "temporary"]
Status = Literal["running", "restarting", "stopped", "failed"]
_STRATEGIES = ("one_for_one", "one_for_all", "rest_for_one")
_RESTARTS = ("permanent", "transient", "temporary")


def _restart(_i: Any, _a: Any, value: Any) -> None:
    if value not in _RESTARTS:
        raise ConfigError(f"restart must be one of {', '.join(_RESTARTS)}; got {value!r}")


@attrs.frozen(kw_only=True)
class ChildSpec:
    """How a supervisor starts and stops one child.

    :param id: child id, unique under its supervisor.
    :param start: an :class:`~jido_trio.Agent` subclass, or an async function
        called as ``await start(*args, task_status=task_status)`` that calls
        ``task_status.started()`` once ready and then runs until done.
    :param args: positional arguments for a function child.
    :param restart: ``"permanent"``, ``"transient"`` or ``"temporary"``.
    :param shutdown: seconds the child gets to stop gracefully before it is
        cancelled hard. An agent first finishes the message it is handling and
        runs ``on_stop``; a function child is cancelled at once (cancellation
        is its stop signal) and the supervisor waits this long for it to
        finish. Trio cannot interrupt a *shielded* clean-up, so a function
        child that shields its ``finally`` must bound it itself (e.g. with
        ``trio.move_on_after``); the supervisor waits for it to end.
    :param state: initial state, for an agent class child.
    :param metadata: registry metadata, for an agent class child.
    """

    id: str
    start: Any
    args: tuple[Any, ...] = ()
    restart: Restart = attrs.field(default="permanent", validator=_restart)
    shutdown: float = 5.0
    state: Any = None
    metadata: Any = None


@attrs.frozen(kw_only=True)
class Backoff:
    """Delay before a restart: ``initial * multiplier**(n-1)`` for the n-th restart
    within the intensity window, capped at ``maximum``, plus up to ``jitter``
    (a fraction) of random extra delay."""

    initial: float = 0.1
    maximum: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.1

    def delay(self, attempt: int) -> float:
        base = min(self.maximum, self.initial * self.multiplier ** max(0, attempt - 1))
        return base * (1.0 + random.uniform(0.0, self.jitter))


#: Delays before restarting a child whose failure is not counted (an engine
#: failed it, a retried message crashed it again; UncountedFailure): 0.1 s,
#: doubling up to 5 s, while it keeps failing.
INFRASTRUCTURE_BACKOFF = Backoff(initial=0.1, maximum=5.0, multiplier=2.0, jitter=0.2)


@attrs.frozen(kw_only=True)
class ChildInfo:
    """Snapshot of a worker child (an agent or a function)."""

    id: str
    kind: Literal["agent", "worker"]
    status: Status
    restarts: int
    last_failure: str | None


@attrs.frozen(kw_only=True)
class SupervisorInfo:
    """Snapshot of a supervisor and, recursively, its children."""

    id: str
    strategy: Strategy
    status: Status
    restarts: int
    children: tuple[SupervisorInfo | ChildInfo, ...]
    last_failure: str | None = None
    kind: Literal["supervisor"] = "supervisor"


class ChildObserver(Protocol):
    """Callbacks a child's owner (the node, for agents) receives."""

    def request_stop(self) -> None:
        """Stop gracefully: the supervisor then waits up to ``spec.shutdown``
        for the child's task to end before it cancels it."""
        ...

    def on_cancelled_dormant(self) -> None:
        """A dormant child (see :meth:`Supervisor.add_started_child`) ended
        with its supervisor's nursery, cancelled from outside, before anything
        woke it: it never had a task, so this says what its task's
        cancellation would have said."""
        ...

    def on_exit(self, error: BaseException | None, will_restart: bool) -> None: ...

    def on_restart(self, restarts: int) -> None: ...

    def on_final(self, reason: str) -> None: ...


class _StartedProxy:
    __slots__ = ("_inner", "started_called")

    def __init__(self, inner: trio.TaskStatus[Any]) -> None:
        self._inner = inner
        self.started_called = False

    def started(self, value: Any = None) -> None:
        self.started_called = True
        self._inner.started(value)


class _AlreadyStarted:
    """``task_status`` of a child spawned by :meth:`Supervisor.add_started_child`."""

    def started(self, value: Any = None) -> None:
        return None


_ALREADY_STARTED: Any = _AlreadyStarted()
#: The (shared, never reset) proxy of every child spawned already started.
_PRESTARTED = _StartedProxy(_ALREADY_STARTED)
_PRESTARTED.started_called = True


def _task_name(child: _Child) -> str:
    return f"{child.kind}:{child.id}"


@attrs.define(eq=False)
class _Child:
    #: The child's id: ``spec.id``, unless its owner gave another (the agents
    #: of one class share one spec).
    id: str
    #: How it is started and stopped.
    spec: ChildSpec
    run: Callable[..., Awaitable[Any]]
    kind: Literal["agent", "worker", "supervisor"]
    #: Stops the child gracefully (:meth:`ChildObserver.request_stop`); without
    #: one, the supervisor cancels the child to stop it.
    observer: ChildObserver | None = attrs.field(default=None, repr=False)
    supervisor: Supervisor | None = None
    status: Status = "stopped"
    restarts: int = 0
    last_failure: str | None = None
    incarnation: int = 0
    stopping: bool = False
    #: ``run`` enters :attr:`scope` itself (``cancel_scope=`` keyword): one
    #: cancel scope per agent instead of two.
    self_scoped: bool = False
    #: How the current incarnation ended (set before it is marked finished).
    exit_error: BaseException | None = None
    #: The current incarnation's task has ended.
    finished: bool = False
    #: The current incarnation is started but has no task yet: it gets one
    #: when something calls the child (see :meth:`Supervisor.add_started_child`).
    dormant: bool = False
    #: Restarts in a row after uncounted failures (see
    #: :class:`~jido_trio._exceptions.UncountedFailure`): sets the delay.
    infrastructure_failures: int = 0
    #: The supervisor that activates a dormant child.
    owner: Supervisor | None = attrs.field(default=None, repr=False)
    #: The current incarnation's cancel scope (made on first use: a dormant
    #: child holds none).
    _scope: trio.CancelScope | None = None
    #: Made only when someone waits for the end (most children never need one).
    _done: trio.Event | None = None

    @property
    def scope(self) -> trio.CancelScope:
        scope = self._scope
        if scope is None:
            scope = self._scope = trio.CancelScope()
        return scope

    def __call__(self) -> None:
        """Activate the child if it is dormant: the callback a dormant child's
        owner arms (e.g. on the agent's mailbox)."""
        if self.dormant and self.owner is not None:
            self.owner._activate(self)

    def new_incarnation(self) -> int:
        self.incarnation += 1
        self.stopping = False
        self.dormant = False
        self._scope = None  # a scope can be entered once
        self.finished = False
        self._done = None
        self.exit_error = None
        return self.incarnation

    def mark_finished(self, incarnation: int) -> None:
        if incarnation == self.incarnation:
            self.finished = True
            if self._done is not None:
                self._done.set()

    async def wait_finished(self) -> None:
        """Wait until the current incarnation's task has ended (a checkpoint)."""
        if self.finished:
            await trio.lowlevel.checkpoint()
            return
        if self._done is None:
            self._done = trio.Event()
        await self._done.wait()


EventCallback = Callable[[str, str, str, str | None], None]


@attrs.define(eq=False)
class Supervisor:
    """A supervisor. Get one from ``node.start_supervisor``; use it as the
    ``supervisor=`` argument of ``start_agent`` and ``start_supervisor``, or
    add children with :meth:`start_child`."""

    id: str
    strategy: Strategy = "one_for_one"
    max_restarts: int = 3
    max_seconds: float = 5.0
    backoff: Backoff | None = None
    on_event: EventCallback | None = None
    node_name: str | None = None
    # By id, in start order (dicts keep insertion order): O(1) lookups at any size.
    _children: dict[str, _Child] = attrs.field(factory=dict, init=False, repr=False)
    #: Children asked to stop by a :meth:`stop_child` that was cancelled
    #: before they ended: forgotten when their exit comes in.
    _forget_on_exit: dict[str, _Child] = attrs.field(factory=dict, init=False, repr=False)
    _nursery: trio.Nursery | None = attrs.field(default=None, init=False)
    _lock: trio.Lock = attrs.field(factory=trio.Lock, init=False)
    #: The restarts counted within ``max_seconds``: when, whose failure, what failure.
    _restart_times: deque[tuple[float, str, str]] = attrs.field(factory=deque, init=False)
    _exits: Any = attrs.field(default=None, init=False)
    _shutdown_requested: trio.Event = attrs.field(factory=trio.Event, init=False)
    #: The context dormant children's tasks start in (a copy of the
    #: supervisor's own, like a restarted child's), not the waker's.
    _context: contextvars.Context | None = attrs.field(default=None, init=False)
    status: Status = attrs.field(default="stopped", init=False)

    def __attrs_post_init__(self) -> None:
        if self.strategy not in _STRATEGIES:
            raise ConfigError(
                f"strategy must be one of {', '.join(_STRATEGIES)}; got {self.strategy!r}"
            )
        if self.max_restarts < 0 or self.max_seconds <= 0:
            raise ConfigError("max_restarts must be >= 0 and max_seconds > 0")

    # ------------------------------------------------------------ public

    @property
    def child_ids(self) -> list[str]:
        """Ids of the current children, in start order."""
        return list(self._children)

    def info(self, restarts: int = 0, last_failure: str | None = None) -> SupervisorInfo:
        """A snapshot of this supervisor's subtree."""
        children: list[SupervisorInfo | ChildInfo] = []
        for c in self._children.values():
            if c.supervisor is not None:
                sub = c.supervisor.info(c.restarts, c.last_failure)
                if c.status == "restarting":
                    sub = attrs.evolve(sub, status="restarting")
                children.append(sub)
            else:
                kind: Literal["agent", "worker"] = "agent" if c.kind == "agent" else "worker"
                children.append(
                    ChildInfo(
                        id=c.id,
                        kind=kind,
                        status=c.status,
                        restarts=c.restarts,
                        last_failure=c.last_failure,
                    )
                )
        return SupervisorInfo(
            id=self.id,
            strategy=self.strategy,
            status=self.status,
            restarts=restarts,
            children=tuple(children),
            last_failure=last_failure,
        )

    async def start_child(self, spec: ChildSpec) -> None:
        """Start a function child under this supervisor (agents and
        supervisors go through the node). Raises what its start raised."""
        await self.add_child(spec, run=spec.start, kind="worker")

    async def stop_child(self, child_id: str) -> None:
        """Stop a child gracefully and forget it.

        :raises ChildNotFound: no child with this id.
        """
        async with self._lock:
            child = self._find(child_id)
            try:
                await self._stop(child)
            except BaseException:
                # The caller gave up before the child ended. It was asked to
                # stop, so it is forgotten once it has ended (never left
                # "running" with nothing behind it), still within its
                # shutdown deadline.
                if child.finished:
                    self._forget(child)
                else:
                    self._forget_on_exit[child.id] = child
                    if self._nursery is not None:
                        self._nursery.start_soon(self._enforce_shutdown, child, child.incarnation)
                raise
            self._forget(child)

    def _forget(self, child: _Child) -> None:
        """Drop a stopped child for good."""
        if self._forget_on_exit.get(child.id) is child:
            del self._forget_on_exit[child.id]
        if self._children.get(child.id) is child:
            child.status = "stopped"
            del self._children[child.id]
            self._finalize(child, "stopped")

    async def _enforce_shutdown(self, child: _Child, incarnation: int) -> None:
        with trio.move_on_after(child.spec.shutdown):
            await child.wait_finished()
        if not child.finished and child.incarnation == incarnation:
            child.scope.cancel()

    def request_shutdown(self) -> None:
        """Ask the supervisor to stop its children (in reverse order) and exit."""
        self._shutdown_requested.set()
        if self._exits is not None:
            self._exits[0].send_nowait(None)

    # ------------------------------------------------------------ internals

    def _check_accepting(self) -> None:
        if self._nursery is None or self.status != "running" or self._shutdown_requested.is_set():
            raise SupervisorUnavailable(f"supervisor {self.id!r} is not running")

    def _notify(self, callback: Callable[..., None], *args: Any) -> None:
        # An observer must not be able to break the supervisor's loop.
        try:
            callback(*args)
        except Exception:
            log.exception("supervisor %r: child observer failed", self.id)

    def _find(self, child_id: str) -> _Child:
        child = self._children.get(child_id)
        if child is not None:
            return child
        raise ChildNotFound(f"supervisor {self.id!r} has no child {child_id!r}")

    def _emit(self, child: _Child, event: str, reason: str | None = None) -> None:
        if self.on_event is not None:
            try:
                self.on_event(self.id, child.id, event, reason)
            except Exception:
                log.exception("supervisor event callback failed")

    async def add_child(
        self,
        spec: ChildSpec,
        *,
        run: Callable[..., Awaitable[Any]],
        kind: Literal["agent", "worker", "supervisor"],
        observer: ChildObserver | None = None,
        supervisor: Supervisor | None = None,
        self_scoped: bool = False,
        child_id: str | None = None,
    ) -> None:
        """Add and start a child; on failure to start, forget it and re-raise.

        ``observer`` hears of the child's exits and is asked to stop it
        gracefully; without one, the supervisor cancels the child to stop it.
        ``self_scoped``: ``run`` takes a ``cancel_scope=`` keyword and runs its
        whole body inside that scope (the supervisor cancels it to stop the
        child hard). ``child_id`` is ``spec.id`` unless given (the agents of
        one class share one spec).
        """
        if child_id is None:
            child_id = spec.id
        self._check_accepting()
        async with self._lock:
            self._check_accepting()
            if child_id in self._children:
                raise ChildAlreadyExists(f"supervisor {self.id!r} already has a child {child_id!r}")
            child = _Child(child_id, spec, run, kind, observer, supervisor, self_scoped=self_scoped)
            self._children[child.id] = child
            try:
                await self._start(child)
            except BaseException:
                del self._children[child.id]
                raise

    def can_add_nowait(self, child_id: str) -> bool:
        """Whether :meth:`add_started_child` may add ``child_id`` now: the
        supervisor runs, accepts children, has no child of that id and nobody
        holds its lock (a restart or stop in progress)."""
        return (
            self._nursery is not None
            and self.status == "running"
            and not self._shutdown_requested.is_set()
            and not self._lock.locked()
            and child_id not in self._children
        )

    def add_started_child(
        self,
        spec: ChildSpec,
        *,
        run: Callable[..., Awaitable[Any]],
        kind: Literal["agent", "worker", "supervisor"],
        observer: ChildObserver,
        self_scoped: bool = False,
        child_id: str | None = None,
    ) -> Callable[[], None]:
        """Add a child that is ready already (its owner did the start-up work
        synchronously) and leave it *dormant*: it runs (its task is spawned in
        this supervisor's nursery) only once the returned callback is called,
        by whatever first has work for it. Only after :meth:`can_add_nowait`
        said so.

        The owner arms the callback where work arrives (an agent's mailbox)
        and makes :meth:`ChildObserver.request_stop` call it too: stopping
        the child, or restarting its siblings, activates it like any other
        work. A dormant child still present when the supervisor's nursery is
        cancelled from outside never gets a task; its observer hears
        :meth:`ChildObserver.on_cancelled_dormant` instead.

        ``run`` is then called like any child's, with a ``task_status`` whose
        ``started()`` does nothing; later incarnations (restarts) start the
        usual way. ``child_id`` is as for :meth:`add_child`.
        """
        if child_id is None:
            child_id = spec.id
        assert self._nursery is not None and child_id not in self._children
        # Its first incarnation, started already (what new_incarnation and
        # _start would set), and dormant.
        child = _Child(
            id=child_id,
            spec=spec,
            run=run,
            kind=kind,
            observer=observer,
            self_scoped=self_scoped,
            owner=self,
            incarnation=1,
            dormant=True,
            status="running",
        )
        self._children[child_id] = child
        self._emit(child, "started")
        return child

    def _activate(self, child: _Child) -> None:
        """Spawn a dormant child's task (sync; from whichever task woke it)."""
        nursery = self._nursery
        if nursery is None or self._children.get(child.id) is not child:
            # Its supervisor is leaving (cancelled): it stays dormant, and
            # ends with the nursery (_end_dormant).
            return
        child.dormant = False
        context = self._context
        assert context is not None
        context.run(self._spawn_started, nursery, child)

    def _spawn_started(self, nursery: trio.Nursery, child: _Child) -> None:
        nursery.start_soon(
            self._run_child, child, child.incarnation, _ALREADY_STARTED, name=_task_name(child)
        )

    def _end_dormant(self) -> None:
        """End the children still dormant when the nursery has closed (it was
        cancelled from outside): as their tasks' cancellation would have."""
        for child in reversed(list(self._children.values())):
            if child.dormant:
                child.dormant = False
                if child.observer is not None:
                    self._notify(child.observer.on_cancelled_dormant)
                child.mark_finished(child.incarnation)

    async def _start(self, child: _Child) -> None:
        assert self._nursery is not None
        incarnation = child.new_incarnation()
        await self._nursery.start(self._run_child, child, incarnation, name=_task_name(child))
        child.status = "running"
        self._emit(child, "started")

    async def _run_child(
        self, child: _Child, incarnation: int, task_status: trio.TaskStatus[None]
    ) -> None:
        if self.node_name is not None and current_node_name.get() != self.node_name:
            # A child started from another node's task still belongs to this node.
            current_node_name.set(self.node_name)
        proxy = _PRESTARTED if task_status is _ALREADY_STARTED else _StartedProxy(task_status)
        error: BaseException | None = None
        try:
            try:
                if child.self_scoped:
                    await child.run(*child.spec.args, task_status=proxy, cancel_scope=child.scope)
                else:
                    with child.scope:
                        await child.run(*child.spec.args, task_status=proxy)
            except Exception as exc:
                if not proxy.started_called:
                    raise
                error = exc
            if not proxy.started_called:
                # Stopped (or returned) before it was ready: report as a failed start.
                raise RuntimeError(f"child {child.id!r} exited before it was started")
            child.exit_error = error
        finally:
            child.mark_finished(incarnation)
        self._exits[0].send_nowait((child, incarnation, error))

    async def run(
        self, *, task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the supervisor: start the children it holds (all of them again
        after a restart of the supervisor itself), then watch them.

        Temporary children do not survive a restart of their supervisor. If a
        child fails to start, the children started before it are stopped in
        reverse order and ``run`` raises that child's error (its parent counts
        this as a failed restart).
        """
        send, receive = trio.open_memory_channel[Any](math.inf)
        self._exits = (send, receive)
        self._shutdown_requested = trio.Event()
        self._restart_times.clear()
        self._context = contextvars.copy_context()
        failure: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                try:
                    self.status = "running"
                    async with self._lock:
                        failure = await self._start_all()
                    if failure is None:
                        task_status.started(self)
                        failure = await self._watch(receive)
                    nursery.cancel_scope.cancel()
                finally:
                    # Done, or cancelled from outside: from here on no dormant
                    # child gets a task (the nursery closes once the running
                    # ones have ended); those still dormant end below.
                    self._nursery = None
        finally:
            self._nursery = None
            self._exits = None
            self._end_dormant()
        if failure is not None:
            self.status = "failed"
            raise failure
        self.status = "stopped"

    async def _start_all(self) -> Exception | None:
        kept: dict[str, _Child] = {}
        for child in self._children.values():
            if child.spec.restart == "temporary":
                self._finalize(child, "stopped")
            else:
                kept[child.id] = child
        self._children = kept
        for child in list(self._children.values()):
            try:
                await self._start(child)
            except Exception as exc:
                child.last_failure = describe(exc)
                self._emit(child, "exited", describe(exc))
                await self._stop_all()
                return exc
        return None

    async def _watch(self, receive: trio.MemoryReceiveChannel[Any]) -> BaseException | None:
        async for item in receive:
            if item is None:
                if self._shutdown_requested.is_set():
                    async with self._lock:
                        await self._stop_all()
                    return None
                continue
            child, incarnation, error = item
            async with self._lock:
                escalation = await self._on_exit(child, incarnation, error)
            if escalation is not None:
                return escalation
        return None  # pragma: no cover - the channel is never closed while we read it

    async def _on_exit(
        self, child: _Child, incarnation: int, error: BaseException | None
    ) -> SupervisorEscalation | None:
        if self._forget_on_exit.get(child.id) is child:
            self._forget(child)
            return None
        if (
            child.stopping
            or child.incarnation != incarnation
            or self._children.get(child.id) is not child
        ):
            return None
        if isinstance(error, ChildRetired):
            # It lives on elsewhere: forgotten here, no failure counted.
            self._report_exit(child, None, False)
            child.status = "stopped"
            del self._children[child.id]
            self._finalize(child, str(error) or "retired")
            return None
        wanted = child.spec.restart == "permanent" or (
            child.spec.restart == "transient" and error is not None
        )
        # No restarts once a shutdown was asked for: the child stays down.
        restart = wanted and not self._shutdown_requested.is_set()
        self._report_exit(child, error, restart)
        if not wanted:
            child.status = "failed" if error is not None else "stopped"
            del self._children[child.id]
            self._finalize(child, "crash" if error is not None else "normal")
            return None
        if not restart:
            child.status = "failed" if error is not None else "stopped"
            return None
        child.status = "restarting"
        if isinstance(error, UncountedFailure):
            # An engine failed it, or a message the runtime retries anyway:
            # only it restarts, after a growing delay, uncounted.
            self._restart_later(child)
            return None
        if self.strategy == "one_for_one":
            group = [child]
        elif self.strategy == "one_for_all":
            group = list(self._children.values())
        else:
            members = list(self._children.values())
            group = members[members.index(child) :]
        for other in reversed(group):
            if other is not child and other.status == "running":
                await self._stop(other, will_restart=other.spec.restart != "temporary")
                other.status = "restarting"
        for member in list(group):
            if member is not child and member.spec.restart == "temporary":
                del self._children[member.id]
                group.remove(member)
                self._finalize(member, "stopped")
        return await self._restart_group(group, (child.id, _how(error)))

    def _over_intensity(self, culprit: tuple[str, str]) -> bool:
        """Count a restart caused by a failure (``culprit``: whose, what)."""
        now = trio.current_time()
        self._restart_times.append((now, *culprit))
        while self._restart_times and self._restart_times[0][0] < now - self.max_seconds:
            self._restart_times.popleft()
        return len(self._restart_times) > self.max_restarts

    def _escalation(self) -> SupervisorEscalation:
        """The error that says which children failed within the window, and how."""
        failures: dict[str, list[str]] = {}
        for _, child_id, how in self._restart_times:
            failures.setdefault(child_id, []).append(how)
        return SupervisorEscalation(
            self.id,
            self.max_restarts,
            self.max_seconds,
            tuple((child_id, tuple(hows)) for child_id, hows in failures.items()),
        )

    def _restart_later(self, child: _Child) -> None:
        """Restart ``child`` after the infrastructure backoff, in a task of
        its own: the supervisor goes on handling its other children meanwhile
        (an outage fails many at once)."""
        child.infrastructure_failures += 1
        delay = INFRASTRUCTURE_BACKOFF.delay(child.infrastructure_failures)
        if self._nursery is not None:
            self._nursery.start_soon(self._restart_after, child, delay)

    async def _restart_after(self, child: _Child, delay: float) -> None:
        with trio.move_on_after(delay):
            await self._shutdown_requested.wait()
        async with self._lock:
            if (
                self._shutdown_requested.is_set()
                or self._children.get(child.id) is not child
                or child.status != "restarting"
                or child.stopping
            ):
                return  # stopped, replaced or shut down meanwhile: not restarted
            child.restarts += 1
            try:
                await self._start(child)
            except ChildRetired as exc:
                child.status = "stopped"
                del self._children[child.id]
                self._finalize(child, str(exc) or "retired")
                return
            except UncountedFailure as exc:
                child.last_failure = describe(exc)
                self._emit(child, "exited", describe(exc))
                self._restart_later(child)
                return
            except Exception as exc:
                # Its own failure this time: handled like any exit of the
                # child (counted, and escalated if over the intensity).
                child.status = "running"
                if self._exits is not None:
                    self._exits[0].send_nowait((child, child.incarnation, exc))
                return
        child.infrastructure_failures = 0
        self._emit(child, "restarted")
        if child.observer is not None:
            self._notify(child.observer.on_restart, child.restarts)

    async def _restart_group(
        self, group: Sequence[_Child], culprit: tuple[str, str]
    ) -> SupervisorEscalation | None:
        """Restart ``group`` (after ``culprit``'s failure, see
        :meth:`_over_intensity`), or stop everything and escalate."""
        pending = list(group)
        while pending:
            delay: float | None = None
            if self._over_intensity(culprit):
                escalation = self._escalation()
                await self._stop_all()
                return escalation
            if self.backoff is not None:
                delay = self.backoff.delay(len(self._restart_times))
            if delay is not None:
                # Wait out the delay, unless a shutdown comes first: then the
                # pending children stay down and the watch loop stops the rest.
                # Without the lock, so that the supervisor can be managed
                # meanwhile (a crash-looping child stopped, another started).
                self._lock.release()
                try:
                    with trio.move_on_after(delay):
                        await self._shutdown_requested.wait()
                finally:
                    with trio.CancelScope(shield=True):
                        await self._lock.acquire()
                if self._shutdown_requested.is_set():
                    return None
                # Stopped (or replaced) while the lock was free: not restarted.
                pending = [c for c in pending if self._children.get(c.id) is c]
            for child in list(pending):
                child.restarts += 1
                try:
                    await self._start(child)
                except ChildRetired as exc:
                    pending.remove(child)
                    child.status = "stopped"
                    del self._children[child.id]
                    self._finalize(child, str(exc) or "retired")
                    continue
                except UncountedFailure as exc:
                    # A start that an engine failed waits and tries again,
                    # uncounted.
                    child.last_failure = describe(exc)
                    child.status = "restarting"
                    self._emit(child, "exited", describe(exc))
                    pending.remove(child)
                    self._restart_later(child)
                    continue
                except Exception as exc:
                    child.last_failure = describe(exc)
                    child.status = "restarting"
                    self._emit(child, "exited", describe(exc))
                    _log_crash(self.id, child.id, exc, will_restart=True)
                    culprit = (child.id, f"restart failed: {describe(exc)}")
                    break
                pending.remove(child)
                self._emit(child, "restarted")
                if child.observer is not None:
                    self._notify(child.observer.on_restart, child.restarts)
        return None

    async def _stop(self, child: _Child, *, will_restart: bool = False) -> None:
        if child.status != "running" or child.finished:
            # Not running (already exited, or waiting for a restart that will
            # not happen now): nothing to stop, but it must not come back.
            if child.status == "running" and not child.stopping:
                # It ended on its own and its exit report is still queued; that
                # report will be ignored (the child is being stopped), so tell
                # its observers now: a crash is never silently lost.
                self._report_exit(child, child.exit_error, will_restart)
            child.stopping = True
            if child.status in ("running", "restarting"):
                child.status = "stopped"
            return
        child.stopping = True
        if child.observer is not None:
            child.observer.request_stop()
            if child.dormant:
                # Its owner's stop request woke nothing: give it its task now
                # so that it stops the way a running child does.
                self._activate(child)
        else:
            child.scope.cancel()
        with trio.move_on_after(child.spec.shutdown):
            await child.wait_finished()
        if not child.finished:
            child.scope.cancel()
            await child.wait_finished()
        child.status = "stopped"
        if child.exit_error is not None:
            # It failed while stopping (e.g. the last message it handled raised).
            child.last_failure = describe(child.exit_error)
        self._emit(
            child,
            "exited",
            "shutdown" if child.exit_error is None else describe(child.exit_error),
        )

    def _report_exit(self, child: _Child, error: BaseException | None, will_restart: bool) -> None:
        if error is not None:
            child.last_failure = describe(error)
            _log_crash(self.id, child.id, error, will_restart)
        self._emit(child, "exited", "normal" if error is None else describe(error))
        if child.observer is not None:
            self._notify(child.observer.on_exit, error, will_restart)

    async def _stop_all(self) -> None:
        for child in reversed(list(self._children.values())):
            await self._stop(child)

    def _finalize(self, child: _Child, reason: str) -> None:
        if child.supervisor is not None:
            for grandchild in list(child.supervisor._children.values()):
                child.supervisor._finalize(grandchild, reason)
        if child.observer is not None:
            self._notify(child.observer.on_final, reason)

    def finalize_all(self, reason: str) -> None:
        """Tell every descendant that it is gone for good (the tree is closing)."""
        for child in list(self._children.values()):
            self._finalize(child, reason)


def _log_crash(supervisor_id: str, child_id: str, error: BaseException, will_restart: bool) -> None:
    """Log a child's failure, once: where it happened (for an agent: the
    action and the instruction, from the note its batch added), how, and
    what comes next."""
    inner = error.__cause__ if isinstance(error, UncountedFailure) else error
    where = next(
        (note for note in getattr(inner, "__notes__", ()) if " crashed in action " in note),
        f"child {child_id!r} of supervisor {supervisor_id!r} failed",
    )
    then = "" if will_restart else "; not restarted"
    if isinstance(error, InfrastructureFailure):
        # An engine failed: expected during an election, no traceback.
        log.warning("%s: %s%s", where, describe(error), then)
        return
    log.error("%s: %s%s", where, describe(error), then, exc_info=inner)


def _how(error: BaseException | None) -> str:
    """How a child ended, in one short line (a supervisor that escalated
    carries its own children's failures: not repeated at every level)."""
    if error is None:
        return "exited normally"
    if isinstance(error, SupervisorEscalation):
        return f"escalated: over {error.restarts} restarts within {error.within}s"
    return describe(error)
