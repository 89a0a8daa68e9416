"""Supervision trees (issue 3): strategies, restart types, intensity and
escalation, backoff, graceful shutdown, identity stability, introspection.

Everything time-based runs under trio's ``MockClock(autojump_threshold=0)``
(the ``autojump_clock`` fixture of pytest-trio): sleeps and timeouts jump the
clock instead of waiting. Tests wait for *events* (hooks and the child log),
never for wall-clock time.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import jido_trio as jt
from jido_trio.testing import crash_agent
from jido_trio.testing._crash import InjectedCrash

STRATEGIES = ("one_for_one", "one_for_all", "rest_for_one")
RESTARTS = ("permanent", "transient", "temporary")

# --------------------------------------------------------------------- fixtures


class Boom(Exception):
    """A function child crashing."""


class StartFailed(Exception):
    """A function child failing before it is ready."""


@attrs.frozen
class SupEvent:
    supervisor: str
    child: str
    event: str
    reason: str | None
    at: float


class Recorder:
    """Shared log of what children did, and a plugin recording the hooks.

    ``log`` holds ``("start", id)`` / ``("stop", id)`` (and a few other marks)
    in the order they happened; ``wait_for`` blocks until a predicate over the
    recordings holds, waking on every new recording (no polling, no time).
    """

    def __init__(self) -> None:
        self.log: list[tuple[Any, ...]] = []
        self.events: list[SupEvent] = []
        self.hooks: list[tuple[Any, ...]] = []
        self.stop_reasons: list[tuple[str, str, int]] = []
        self.commands: dict[str, str] = {}
        self.fail_starts: dict[str, int] = {}
        self.cleanup: dict[str, float] = {}
        self.on_stop_delay: dict[str, float] = {}
        self.gate = trio.Event()
        self._changed = trio.Event()

    # recording

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def record(self, *entry: Any) -> None:
        self.log.append(entry)
        self._notify()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 600.0) -> None:
        with trio.fail_after(timeout):
            while not predicate():
                await self._changed.wait()

    def count(self, supervisor: str, child: str, event: str) -> int:
        return sum(
            1 for e in self.events if (e.supervisor, e.child, e.event) == (supervisor, child, event)
        )

    def has(self, supervisor: str, child: str, event: str, times: int = 1) -> bool:
        return self.count(supervisor, child, event) >= times

    def exits(self) -> list[tuple[str, str, str | None]]:
        return [(e.supervisor, e.child, e.reason) for e in self.events if e.event == "exited"]

    # driving function children

    def command(self, name: str, what: str) -> None:
        self.commands[name] = what
        self._notify()

    async def next_command(self, name: str) -> str:
        await self.wait_for(lambda: name in self.commands, timeout=float("inf"))
        return self.commands.pop(name)

    # hooks

    @jt.hookimpl
    def jido_trio_supervisor_event(
        self, node: jt.Node, supervisor_id: str, child_id: str, event: str, reason: str | None
    ) -> None:
        self.events.append(SupEvent(supervisor_id, child_id, event, reason, trio.current_time()))
        self._notify()

    @jt.hookimpl
    def jido_trio_agent_started(self, node: jt.Node, ref: jt.AgentRef) -> None:
        self.hooks.append(("agent_started", ref.id))
        self._notify()

    @jt.hookimpl
    def jido_trio_agent_stopped(self, node: jt.Node, ref: jt.AgentRef, reason: str) -> None:
        self.hooks.append(("agent_stopped", ref.id, reason))
        self._notify()

    @jt.hookimpl
    def jido_trio_agent_restarted(self, node: jt.Node, ref: jt.AgentRef, restarts: int) -> None:
        self.hooks.append(("agent_restarted", ref.id, restarts))
        self._notify()


REC: Recorder = Recorder()


@pytest.fixture
def rec() -> Iterator[Recorder]:
    global REC
    REC = Recorder()
    yield REC


@attrs.frozen
class CounterState:
    count: int = 0
    items: tuple[int, ...] = ()


class Tracked(jt.Agent):
    """An agent that writes its starts and graceful stops to the recorder."""

    type = "supervised-counter"
    State = CounterState

    async def on_start(self, state: CounterState) -> None:
        REC.record("start", self.ctx.ref.id)

    async def on_stop(self, state: CounterState, reason: str) -> None:
        agent_id = self.ctx.ref.id
        delay = REC.on_stop_delay.get(agent_id)
        if delay is not None:
            REC.record("on_stop_begin", agent_id)
            await trio.sleep(delay)
        REC.stop_reasons.append((agent_id, reason, state.count))
        REC.record("stop", agent_id)

    @jt.action("inc")
    async def inc(self, state: CounterState, by: int = 1) -> CounterState:
        return attrs.evolve(state, count=state.count + by)

    @jt.action("push")
    async def push(self, state: CounterState, value: int) -> CounterState:
        return attrs.evolve(state, items=(*state.items, value))

    @jt.action("get")
    async def get(self, state: CounterState) -> None:
        self.ctx.reply(state.count)

    @jt.action("items")
    async def list_items(self, state: CounterState) -> None:
        self.ctx.reply(list(state.items))

    @jt.action("block")
    async def block(self, state: CounterState) -> None:
        REC.record("blocked", self.ctx.ref.id)
        await REC.gate.wait()
        self.ctx.reply("released")

    @jt.action("hang")
    async def hang(self, state: CounterState) -> None:
        REC.record("hang", self.ctx.ref.id)
        try:
            await trio.sleep_forever()
        finally:
            REC.record("hang_cancelled", self.ctx.ref.id)

    @jt.action("boom")
    async def boom(self, state: CounterState) -> None:
        raise ValueError("boom")


async def tracked_worker(
    name: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """A function child: logs its start and stop, then obeys ``REC.command``."""
    rec = REC
    if rec.fail_starts.get(name, 0) > 0:
        rec.fail_starts[name] -= 1
        rec.record("start_failed", name)
        raise StartFailed(f"worker {name} cannot start")
    rec.record("start", name)
    try:
        task_status.started()
        if await rec.next_command(name) == "crash":
            raise Boom(f"worker {name} crashed")
        # "exit": return normally
    finally:
        rec.record("stop", name)
        cleanup = rec.cleanup.get(name)
        if cleanup is not None:
            with trio.CancelScope(shield=True):
                await trio.sleep(cleanup)
            rec.record("cleaned", name)


def agent_spec(name: str, restart: str = "permanent") -> jt.ChildSpec:
    return jt.ChildSpec(id=name, start=Tracked, restart=restart)  # type: ignore[arg-type]


def worker_spec(name: str, restart: str = "permanent", shutdown: float = 5.0) -> jt.ChildSpec:
    return jt.ChildSpec(
        id=name,
        start=tracked_worker,
        args=(name,),
        restart=restart,  # type: ignore[arg-type]
        shutdown=shutdown,
    )


def spec(kind: str, name: str, restart: str = "permanent") -> jt.ChildSpec:
    return agent_spec(name, restart) if kind == "agent" else worker_spec(name, restart)


def find(info: jt.SupervisorInfo, child_id: str) -> jt.SupervisorInfo | jt.ChildInfo:
    """The snapshot of ``child_id`` anywhere below ``info``."""
    for child in info.children:
        if child.id == child_id:
            return child
        if isinstance(child, jt.SupervisorInfo):
            try:
                return find(child, child_id)
            except KeyError:
                pass
    raise KeyError(child_id)


def sup_info(node: jt.Node, sup_id: str) -> jt.SupervisorInfo:
    found = find(node.supervision_tree(), sup_id)
    assert isinstance(found, jt.SupervisorInfo)
    return found


def child_info(node: jt.Node, child_id: str) -> jt.ChildInfo:
    found = find(node.supervision_tree(), child_id)
    assert isinstance(found, jt.ChildInfo)
    return found


def ref(agent_id: str) -> jt.AgentRef:
    return jt.AgentRef.new(agent_id, Tracked.type)


async def get(node: jt.Node, agent_id: str) -> Any:
    return await node.call(ref(agent_id), jt.Instruction("get"))


def starts(*ids: str) -> list[tuple[Any, ...]]:
    return [("start", i) for i in ids]


def stops(*ids: str) -> list[tuple[Any, ...]]:
    return [("stop", i) for i in ids]


def task_count() -> int:
    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(walk(t) for n in task.child_nurseries for t in n.child_tasks)

    root = trio.lowlevel.current_root_task()
    assert root is not None
    return walk(root)


# --------------------------------------------------------------------- strategies x restart types


def expected_restart_log(kind: str, strategy: str, restarted: bool) -> list[tuple[Any, ...]]:
    """What a, b, c log when b ends: b's own stop (a function's ``finally``; a
    crashed agent runs no ``on_stop``), the siblings the strategy stops (in
    reverse order, gracefully), then the group restarted in start order."""
    own = stops("b") if kind == "worker" else []
    if not restarted:
        return own
    if strategy == "one_for_one":
        return [*own, *starts("b")]
    if strategy == "one_for_all":
        return [*own, *stops("c", "a"), *starts("a", "b", "c")]
    return [*own, *stops("c"), *starts("b", "c")]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("restart", RESTARTS)
@pytest.mark.parametrize(
    ("kind", "outcome"), [("agent", "crash"), ("worker", "crash"), ("worker", "normal")]
)
async def test_strategy_and_restart_type(
    autojump_clock: trio.testing.MockClock,
    rec: Recorder,
    strategy: str,
    restart: str,
    kind: str,
    outcome: str,
) -> None:
    async with jt.open_node(name="n", plugins=[rec]) as node:
        await node.start_supervisor(
            "s",
            strategy=strategy,  # type: ignore[arg-type]
            children=[spec(kind, "a"), spec(kind, "b", restart), spec(kind, "c")],
        )
        assert rec.log == starts("a", "b", "c")
        rec.log.clear()

        if kind == "agent":
            await crash_agent(node, ref("b"))
        else:
            rec.command("b", "crash" if outcome == "crash" else "exit")

        restarted = restart == "permanent" or (restart == "transient" and outcome == "crash")
        group = {
            "one_for_one": ["b"],
            "one_for_all": ["a", "b", "c"],
            "rest_for_one": ["b", "c"],
        }[strategy]
        if restarted:
            await rec.wait_for(lambda: all(rec.has("s", c, "restarted") for c in group))
        else:
            await rec.wait_for(lambda: rec.has("s", "b", "exited"))

        assert rec.log == expected_restart_log(kind, strategy, restarted)
        tree = sup_info(node, "s")
        assert tree.status == "running"
        assert [c.id for c in tree.children] == (["a", "b", "c"] if restarted else ["a", "c"])
        for child in tree.children:
            assert isinstance(child, jt.ChildInfo)
            assert child.kind == kind
            assert child.status == "running"
            assert child.restarts == (1 if restarted and child.id in group else 0)
        if restarted:
            b = child_info(node, "b")
            if outcome == "crash":
                expected = "InjectedCrash" if kind == "agent" else "Boom: worker b crashed"
                assert b.last_failure is not None and b.last_failure.startswith(expected)
            else:
                assert b.last_failure is None
        [exit_b] = [e for e in rec.events if (e.child, e.event) == ("b", "exited")]
        assert exit_b.reason is not None
        assert (exit_b.reason == "normal") == (outcome == "normal")

        if kind == "agent":
            # the siblings were untouched or restarted, and all answer
            for name in ("a", "c"):
                assert await get(node, name) == 0
            if restarted:
                assert await get(node, "b") == 0
            else:
                with pytest.raises(jt.AgentUnavailable):
                    await get(node, "b")
                assert await node.check_agent_health(ref("b")) == jt.Health.NOT_FOUND


async def test_siblings_stopped_by_the_strategy_stop_gracefully(
    autojump_clock: trio.testing.MockClock, rec: Recorder
) -> None:
    async with jt.open_node(name="n", plugins=[rec]) as node:
        sup = await node.start_supervisor("s", strategy="one_for_all")
        for name in ("a", "b", "c"):
            await node.start_agent(Tracked, name, supervisor=sup)
        await node.send_instruction(ref("a"), jt.Instruction("inc", {"by": 5}))
        assert await get(node, "a") == 5
        await crash_agent(node, ref("b"))
        await rec.wait_for(lambda: rec.has("s", "c", "restarted"))
        # a and c ran on_stop("shutdown") with their current state; the
        # crashed b ran none
        assert rec.stop_reasons == [("c", "shutdown", 0), ("a", "shutdown", 5)]
        assert await get(node, "a") == 5
        assert [(s, c, r) for s, c, r in rec.exits() if r == "shutdown"] == [
            ("s", "c", "shutdown"),
            ("s", "a", "shutdown"),
        ]


async def test_simultaneous_crashes_in_one_group_are_all_reported(
    autojump_clock: trio.testing.MockClock, rec: Recorder
) -> None:
    async with jt.open_node(name="n", plugins=[rec]) as node:
        await node.start_supervisor(
            "s", strategy="one_for_all", children=[agent_spec("a"), agent_spec("b")]
        )
        with trio.fail_after(60):  # each crash_agent returns: no crash is lost
            async with trio.open_nursery() as nursery:
                nursery.start_soon(crash_agent, node, ref("a"))
                nursery.start_soon(crash_agent, node, ref("b"))
        await rec.wait_for(
            lambda: rec.has("s", "a", "restarted") and rec.has("s", "b", "restarted")
        )
        for name in ("a", "b"):
            crash = f"InjectedCrash: injected crash of agent {name!r}"
            assert [r for s, c, r in rec.exits() if c == name] == [crash]
            assert ("agent_stopped", name, f"crash: {crash}") in rec.hooks
            info = child_info(node, name)
            assert (info.status, info.restarts, info.last_failure) == ("running", 1, crash)
            assert await get(node, name) == 0


async def test_temporary_children_of_a_restarted_supervisor_are_gone_for_good(
    autojump_clock: trio.testing.MockClock, rec: Recorder
) -> None:
    async with jt.open_node(name="n", plugins=[rec]) as node:
        outer = await node.start_supervisor("outer")
        inner = await node.start_supervisor("inner", max_restarts=0, supervisor=outer)
        await node.start_agent(Tracked, "tmp", restart="temporary", supervisor=inner)
        await node.start_agent(Tracked, "perm", supervisor=inner)
        await crash_agent(node, ref("perm"))  # inner escalates; outer restarts it
        await rec.wait_for(lambda: rec.has("outer", "inner", "restarted"))
        assert await get(node, "perm") == 0
        assert [c.id for c in sup_info(node, "inner").children] == ["perm"]
        with pytest.raises(jt.AgentUnavailable):
            await get(node, "tmp")
        assert await node.check_agent_health(ref("tmp")) == jt.Health.NOT_FOUND
        assert ref("tmp") not in node.agents()
        # the id is free again
        await node.start_agent(Tracked, "tmp", restart="temporary", supervisor=inner)
        assert await get(node, "tmp") == 0


# --------------------------------------------------------------------- ordering and node shutdown


async def test_children_start_in_order_and_the_node_stops_them_in_reverse(
    autojump_clock: trio.testing.MockClock, rec: Recorder
) -> None:
    before = task_count()
    async with jt.open_node(name="n", plugins=[rec]) as node:
        s1 = await node.start_supervisor("s1", children=[agent_spec("a"), worker_spec("b")])
        await node.start_supervisor(
            "s2", supervisor=s1, children=[worker_spec("c"), agent_spec("d")]
        )
        await s1.start_child(worker_spec("e"))
        await node.start_agent(Tracked, "f")  # no supervisor: under the root
        assert rec.log == starts("a", "b", "c", "d", "e", "f")
        assert [c.id for c in node.supervision_tree().children] == ["s1", "f"]
        assert task_count() > before
        rec.log.clear()
    assert rec.log == stops("f", "e", "d", "c", "b", "a")
    assert {reason for _, reason, _ in rec.stop_reasons} == {"shutdown"}
    assert task_count() == before  # no task leaked
    tree = node.supervision_tree()
    assert tree.status == "stopped"
    assert all(c.status == "stopped" for c in sup_info(node, "s1").children)


async def test_stop_child_stops_a_subtree_in_reverse_order(
    autojump_clock: trio.testing.MockClock, rec: Recorder
) -> None:
    async with jt.open_node(name="n", plugins=[rec]) as node:
        s1 = await node.start_supervisor("s1", children=[worker_spec("a")])
        s2 = await node.start_supervisor(
            "s2", supervisor=s1, children=[agent_spec("b"), worker_spec("c"), agent_spec("d")]
        )
        rec.log.clear()
        await s1.stop_child("s2")
        assert rec.log == stops("d", "c", "b")
        assert [c.id for c in sup_info(node, "s1").children] == ["a"]
        with pytest.raises(jt.AgentUnavailable):
            await get(node, "b")
        with pytest.raises(jt.SupervisorUnavailable, match="not running"):
            await s2.start_child(worker_spec("late"))
        with pytest.raises(jt.ChildNotFound):
            await s1.stop_child("s2")
        assert rec.exits()[-1] == ("s1", "s2", "shutdown")


async def test_dynamic_children(autojump_clock: trio.testing.MockClock, rec: Recorder) -> None:
    async with jt.open_node(name="n", plugins=[rec]) as node:
        sup = await node.start_supervisor("s")
        await sup.start_child(worker_spec("w1"))
        await node.start_agent(Tracked, "a1", supervisor=sup)
        await sup.start_child(worker_spec("w2"))
        assert [c.id for c in sup_info(node, "s").children] == ["w1", "a1", "w2"]
        assert [c.kind for c in sup_info(node, "s").children] == ["worker", "agent", "worker"]

        with pytest.raises(jt.ChildAlreadyExists, match="already has a child"):
            await sup.start_child(worker_spec("w1"))
        with pytest.raises(jt.ChildNotFound):
            await sup.stop_child("nope")

        # a child that fails before it is ready: start_child raises its error
        rec.fail_starts["bad"] = 1
        with pytest.raises(StartFailed):
            await sup.start_child(worker_spec("bad"))

        # a function that returns without calling task_status.started()
        async def never_ready(*, task_status: trio.TaskStatus[None]) -> None:
            await trio.lowlevel.checkpoint()

        with pytest.raises(RuntimeError, match="before it was started"):
            await sup.start_child(jt.ChildSpec(id="lazy", start=never_ready))
        assert [c.id for c in sup_info(node, "s").children] == ["w1", "a1", "w2"]

        rec.log.clear()
        await sup.stop_child("a1")
        await sup.stop_child("w1")
        assert rec.log == stops("a1", "w1")
        assert [c.id for c in sup_info(node, "s").children] == ["w2"]
        with pytest.raises(jt.AgentUnavailable):
            await get(node, "a1")


def test_invalid_specs_are_config_errors() -> None:
    with pytest.raises(jt.ConfigError):
        jt.ChildSpec(id="x", start=tracked_worker, restart="sometimes")  # type: ignore[arg-type]


async def test_invalid_supervisor_options_are_config_errors(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with jt.open_node(name="n") as node:
        with pytest.raises(jt.ConfigError):
            await node.start_supervisor("s", strategy="one_for_some")  # type: ignore[arg-type]
        with pytest.raises(jt.ConfigError):
            await node.start_supervisor("s", max_restarts=-1)
        with pytest.raises(jt.ConfigError):
            await node.start_supervisor("s", max_seconds=0)
        assert node.supervision_tree().children == ()


async def test_start_child_is_refused_while_the_supervisor_shuts_down(
    autojump_clock: trio.testing.MockClock, rec: Recorder
) -> None:
    async with jt.open_node(name="n", plugins=[rec]) as node:
        outer = await node.start_supervisor("outer")
        inner = await node.start_supervisor("inner", supervisor=outer)
        await node.start_agent(Tracked, "slow", supervisor=inner)
        rec.on_stop_delay["slow"] = 1.0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(outer.stop_child, "inner")
            await rec.wait_for(lambda: ("on_stop_begin", "slow") in rec.log)
            with pytest.raises(RuntimeError, match="not running"):
                await inner.start_child(worker_spec("late"))
        assert ("start", "late") not in rec.log
        assert rec.log[-1] == ("stop", "slow")


# --------------------------------------------------------------------- intensity and escalation


async def test_escalation_across_three_levels_ends_the_node(
    autojump_clock: trio.testing.MockClock, rec: Recorder
) -> None:
    config = jt.Config(node_name="n", max_restarts=1, max_seconds=60.0)
    before = task_count()
    with pytest.raises(jt.SupervisorEscalation) as raised:
        async with jt.open_node(config, plugins=[rec]) as node:
            sup1 = await node.start_supervisor("sup1", max_restarts=0)
            sup2 = await node.start_supervisor("sup2", max_restarts=0, supervisor=sup1)
            sup3 = await node.start_supervisor("sup3", max_restarts=0, supervisor=sup2)
            await node.start_agent(Tracked, "w", supervisor=sup3)
            await node.send_instruction(ref("w"), jt.Instruction("inc", {"by": 7}))

            # sup3 gives up at once, so does sup2, so does sup1; the root
            # (1 restart allowed) restarts sup1 and with it the whole subtree
            await crash_agent(node, ref("w"))
            await rec.wait_for(lambda: rec.has("root", "sup1", "restarted"))
            assert [x for x in rec.exits() if x[2] is not None and "Escalation" in x[2]] == [
                (
                    "sup2",
                    "sup3",
                    "SupervisorEscalation: supervisor 'sup3' exceeded 0 restarts within 5.0s:"
                    " 'w' failed once (InjectedCrash: injected crash of agent 'w')",
                ),
                (
                    "sup1",
                    "sup2",
                    "SupervisorEscalation: supervisor 'sup2' exceeded 0 restarts within 5.0s:"
                    " 'sup3' failed once (escalated: over 0 restarts within 5.0s)",
                ),
                (
                    "root",
                    "sup1",
                    "SupervisorEscalation: supervisor 'sup1' exceeded 0 restarts within 5.0s:"
                    " 'sup2' failed once (escalated: over 0 restarts within 5.0s)",
                ),
            ]
            tree = node.supervision_tree()
            assert tree.status == "running"
            s1 = find(tree, "sup1")
            assert isinstance(s1, jt.SupervisorInfo)
            assert (s1.status, s1.restarts) == ("running", 1)
            assert s1.last_failure is not None and "'sup1'" in s1.last_failure
            s2, s3 = find(tree, "sup2"), find(tree, "sup3")
            assert "'sup2'" in (s2.last_failure or "") and "'sup3'" in (s3.last_failure or "")
            assert child_info(node, "w").status == "running"
            assert await get(node, "w") == 7  # same id, persisted state

            # the second escalation is one too many for the root: the node ends
            await crash_agent(node, ref("w"))
            await trio.sleep_forever()
    error = raised.value
    assert (error.supervisor_id, error.restarts, error.within) == ("root", 1, 60.0)
    assert node.supervision_tree().status == "failed"
    assert task_count() == before
    with pytest.raises(jt.JidoError):
        await get(node, "w")


async def test_open_node_raises_supervisor_escalation_itself(
    autojump_clock: trio.testing.MockClock, rec: Recorder
) -> None:
    config = jt.Config(node_name="n", max_restarts=1)
    with pytest.raises(jt.SupervisorEscalation):
        async with jt.open_node(config, plugins=[rec]) as node:
            await node.start_agent(Tracked, "w")
            await crash_agent(node, ref("w"))
            await get(node, "w")
            await crash_agent(node, ref("w"))
            await trio.sleep_forever()


async def test_the_parent_applies_its_own_strategy_to_an_escalation(
    autojump_clock: trio.testing.MockClock, rec: Recorder
) -> None:
    async with jt.open_node(name="n", plugins=[rec]) as node:
        parent = await node.start_supervisor(
            "parent", strategy="one_for_all", children=[worker_spec("x")]
        )
        await node.start_supervisor(
            "child", max_restarts=0, supervisor=parent, children=[worker_spec("y")]
        )
        await parent.start_child(worker_spec("z"))
        assert rec.log == starts("x", "y", "z")
        rec.log.clear()
        rec.command("y", "crash")
        await rec.wait_for(lambda: rec.has("parent", "z", "restarted"))
        assert rec.log == [*stops("y", "z", "x"), *starts("x", "y", "z")]
        tree = sup_info(node, "parent")
        assert [(c.id, c.restarts) for c in tree.children] == [("x", 1), ("child", 1), ("z", 1)]


async def test_a_temporary_supervisor_that_gives_up_is_not_restarted(
    autojump_clock: trio.testing.MockClock, rec: Recorder
) -> None:
    async with jt.open_node(name="n", plugins=[rec]) as node:
        sup = await node.start_supervisor(
            "tmp", restart="temporary", max_restarts=0, children=[agent_spec("a")]
        )
        await sup.start_child(worker_spec("w"))
        await crash_agent(node, ref("a"))
        await rec.wait_for(lambda: rec.has("root", "tmp", "exited"))
        assert node.supervision_tree().children == ()
        assert rec.log[-1] == ("stop", "w")
        with pytest.raises(jt.AgentUnavailable):
            await get(node, "a")


async def test_restarts_spaced_beyond_the_window_never_escalate(
    autojump_clock: trio.testing.MockClock, rec: Recorder
) -> None:
    async with jt.open_node(name="n", plugins=[rec]) as node:
        sup = await node.start_supervisor("s", max_restarts=2, max_seconds=10.0)
        await sup.start_child(worker_spec("w"))
        for n in range(1, 11):
            await trio.sleep(10.5)
            rec.command("w", "crash")
            await rec.wait_for(lambda: rec.has("s", "w", "restarted", n))  # noqa: B023
        assert not rec.has("root", "s", "exited")
        assert child_info(node, "w").restarts == 10
        assert sup_info(node, "s").restarts == 0


async def test_the_intensity_window_slides(
    autojump_clock: trio.testing.MockClock, rec: Recorder
) -> None:
    async with jt.open_node(name="n", plugins=[rec]) as node:
        sup = await node.start_supervisor("s", max_restarts=2, max_seconds=10.0)
        await sup.start_child(worker_spec("w"))
        t0 = trio.current_time()
        for n, at in enumerate([0.0, 6.0, 12.0], start=1):
            # at most 2 restarts in any 10 s: the first one has left the window
            # when the third comes, so nothing escalates
            await trio.sleep_until(t0 + at)
            rec.command("w", "crash")
            await rec.wait_for(lambda: rec.has("s", "w", "restarted", n))  # noqa: B023
        assert not rec.has("root", "s", "exited")
        await trio.sleep_until(t0 + 13.0)  # 6, 12, 13: three within 10 s
        rec.command("w", "crash")
        await rec.wait_for(lambda: rec.has("root", "s", "restarted"))
        assert rec.exits()[-2:] == [
            ("s", "w", "Boom: worker w crashed"),
            (
                "root",
                "s",
                # The escalation names the child that failed and how.
                "SupervisorEscalation: supervisor 's' exceeded 2 restarts within 10.0s:"
                " 'w' failed 3 times (Boom: worker w crashed)",
            ),
        ]
        assert sup_info(node, "s").restarts == 1
        assert child_info(node, "w").status == "running"


async def test_a_child_failing_to_start_during_a_supervisor_restart(
    autojump_clock: trio.testing.MockClock, rec: Recorder
) -> None:
    async with jt.open_node(name="n", plugins=[rec]) as node:
        parent = await node.start_supervisor("parent", max_restarts=5)
        await node.start_supervisor(
            "s", max_restarts=0, supervisor=parent, children=[agent_spec("a"), worker_spec("f")]
        )
        rec.log.clear()
        rec.fail_starts["f"] = 1
        await crash_agent(node, ref("a"))
        await rec.wait_for(lambda: rec.has("parent", "s", "restarted"))
        assert rec.log == [
            *stops("f"),  # s gives up: stops its children
            *starts("a"),  # parent restarts s: a starts, f fails ...
            ("start_failed", "f"),
            *stops("a"),  # ... so s stops a gracefully and fails
            *starts("a", "f"),  # the parent tries again
        ]
        s = find(node.supervision_tree(), "s")
        assert (s.status, s.restarts) == ("running", 2)
        assert s.last_failure == "StartFailed: worker f cannot start"


# --------------------------------------------------------------------- backoff


async def test_backoff_delays_restarts(
    autojump_clock: trio.testing.MockClock, rec: Recorder
) -> None:
    backoff = jt.Backoff(initial=1.0, multiplier=2.0, maximum=3.0, jitter=0.0)
    async with jt.open_node(name="n", plugins=[rec]) as node:
        sup = await node.start_supervisor("s", max_restarts=10, max_seconds=100.0, backoff=backoff)
        await sup.start_child(worker_spec("w"))
        delays = []
        for n in range(1, 5):
            crashed_at = trio.current_time()
            rec.command("w", "crash")
            await rec.wait_for(lambda: rec.has("s", "w", "exited", n))  # noqa: B023
            assert child_info(node, "w").status == "restarting"
            await rec.wait_for(lambda: rec.has("s", "w", "restarted", n))  # noqa: B023
            delays.append(trio.current_time() - crashed_at)
        assert delays == pytest.approx([1.0, 2.0, 3.0, 3.0], abs=0.01)


async def test_backoff_jitter_stays_within_bounds(
    autojump_clock: trio.testing.MockClock, rec: Recorder
) -> None:
    backoff = jt.Backoff(initial=2.0, multiplier=1.0, maximum=2.0, jitter=0.5)
    assert all(2.0 <= backoff.delay(n) <= 3.0 for n in range(1, 50))
    async with jt.open_node(name="n", plugins=[rec]) as node:
        sup = await node.start_supervisor("s", max_restarts=10, max_seconds=100.0, backoff=backoff)
        await sup.start_child(worker_spec("w"))
        for n in range(1, 4):
            crashed_at = trio.current_time()
            rec.command("w", "crash")
            await rec.wait_for(lambda: rec.has("s", "w", "restarted", n))  # noqa: B023
            assert 2.0 <= trio.current_time() - crashed_at <= 3.0


async def test_messages_sent_while_an_agent_restarts_are_processed_after_it(
    autojump_clock: trio.testing.MockClock, rec: Recorder
) -> None:
    backoff = jt.Backoff(initial=5.0, jitter=0.0)
    async with jt.open_node(name="n", plugins=[rec]) as node:
        sup = await node.start_supervisor("s", backoff=backoff)
        agent = await node.start_agent(Tracked, "a", supervisor=sup)
        await node.send_instruction(agent, jt.Instruction("push", {"value": 0}))
        await crash_agent(node, agent)
        crashed_at = trio.current_time()
        assert child_info(node, "a").status == "restarting"
        assert await node.check_agent_health(agent) == jt.Health.DEGRADED
        for value in range(1, 6):
            receipt = await node.send_instruction(agent, jt.Instruction("push", {"value": value}))
            assert receipt.status == "accepted"
        assert trio.current_time() == crashed_at  # queued, not waiting for the restart
        assert await node.call(agent, jt.Instruction("items"), timeout=30.0) == [0, 1, 2, 3, 4, 5]
        assert trio.current_time() - crashed_at == 5.0


async def test_closing_the_node_does_not_wait_for_a_backoff(
    autojump_clock: trio.testing.MockClock, rec: Recorder
) -> None:
    backoff = jt.Backoff(initial=1000.0, jitter=0.0)
    before = task_count()
    async with jt.open_node(name="n", plugins=[rec]) as node:
        sup = await node.start_supervisor("s", backoff=backoff)
        await node.start_agent(Tracked, "a", supervisor=sup)
        await sup.start_child(worker_spec("w"))
        rec.command("w", "crash")
        await rec.wait_for(lambda: rec.has("s", "w", "exited"))
        closing_at = trio.current_time()
    assert trio.current_time() - closing_at < 1.0
    assert ("start", "w") not in rec.log[2:]  # not restarted during shutdown
    assert rec.log[-1] == ("stop", "a")
    assert task_count() == before
    assert [(c.id, c.status) for c in sup_info(node, "s").children] == [
        ("a", "stopped"),
        ("w", "stopped"),
    ]


# --------------------------------------------------------------------- graceful shutdown


@pytest.mark.local_only  # exact virtual-time ordering of the shutdown
async def test_on_stop_runs_with_the_last_state_when_the_node_closes(
    autojump_clock: trio.testing.MockClock, rec: Recorder
) -> None:
    async with jt.open_node(name="n", plugins=[rec]) as node:
        agent = await node.start_agent(Tracked, "a")
        for _ in range(3):
            await node.send_instruction(agent, jt.Instruction("inc"))
    assert rec.stop_reasons == [("a", "shutdown", 3)]


async def test_stop_agent_runs_on_stop_and_makes_the_agent_unavailable(
    autojump_clock: trio.testing.MockClock, rec: Recorder
) -> None:
    async with jt.open_node(name="n", plugins=[rec]) as node:
        agent = await node.start_agent(Tracked, "a")
        await node.send_instruction(agent, jt.Instruction("inc"))
        await node.stop_agent(agent)
        assert rec.stop_reasons == [("a", "shutdown", 1)]
        assert rec.exits() == [("root", "a", "shutdown")]
        with pytest.raises(jt.AgentUnavailable):
            await get(node, "a")
        assert node.supervision_tree().children == ()


async def test_an_agent_stuck_in_an_action_is_cancelled_after_its_shutdown_timeout(
    autojump_clock: trio.testing.MockClock, rec: Recorder
) -> None:
    config = jt.Config(node_name="n", shutdown_timeout=2.0)
    async with jt.open_node(config, plugins=[rec]) as node:
        stuck = await node.start_agent(Tracked, "stuck")
        await node.start_agent(Tracked, "fine")
        await node.send_instruction(stuck, jt.Instruction("hang"))
        await rec.wait_for(lambda: ("hang", "stuck") in rec.log)
        closing_at = trio.current_time()
    assert trio.current_time() - closing_at == pytest.approx(2.0)
    # "fine" (started last) stopped first and gracefully; "stuck" was cancelled hard
    assert rec.log[-2:] == [("stop", "fine"), ("hang_cancelled", "stuck")]


async def test_agent_stopped_hook_fires_for_an_agent_cancelled_at_shutdown(
    autojump_clock: trio.testing.MockClock, rec: Recorder
) -> None:
    config = jt.Config(node_name="n", shutdown_timeout=2.0)
    async with jt.open_node(config, plugins=[rec]) as node:
        stuck = await node.start_agent(Tracked, "stuck")
        await node.send_instruction(stuck, jt.Instruction("hang"))
        await rec.wait_for(lambda: ("hang", "stuck") in rec.log)
    assert rec.hooks[-1] == ("agent_stopped", "stuck", "shutdown")


async def test_stop_agent_on_a_stuck_agent_returns_after_the_timeout(
    autojump_clock: trio.testing.MockClock, rec: Recorder
) -> None:
    config = jt.Config(node_name="n", shutdown_timeout=3.0)
    async with jt.open_node(config, plugins=[rec]) as node:
        stuck = await node.start_agent(Tracked, "stuck")
        await node.send_instruction(stuck, jt.Instruction("hang"))
        await rec.wait_for(lambda: ("hang", "stuck") in rec.log)
        t0 = trio.current_time()
        await node.stop_agent(stuck)
        assert trio.current_time() - t0 == pytest.approx(3.0)
        assert ("hang_cancelled", "stuck") in rec.log
        with pytest.raises(jt.AgentUnavailable):
            await get(node, "stuck")


@pytest.mark.local_only  # exact virtual-time ordering of the shutdown
async def test_a_slow_on_stop_is_cut_at_the_shutdown_timeout(
    autojump_clock: trio.testing.MockClock, rec: Recorder
) -> None:
    config = jt.Config(node_name="n", shutdown_timeout=2.0)
    async with jt.open_node(config, plugins=[rec]) as node:
        await node.start_agent(Tracked, "slow")
        rec.on_stop_delay["slow"] = 100.0
        closing_at = trio.current_time()
    assert trio.current_time() - closing_at == pytest.approx(2.0)
    assert ("on_stop_begin", "slow") in rec.log


async def test_a_function_child_finishes_its_shielded_cleanup(
    autojump_clock: trio.testing.MockClock, rec: Recorder
) -> None:
    async with jt.open_node(name="n", plugins=[rec]) as node:
        sup = await node.start_supervisor("s")
        await sup.start_child(worker_spec("w", shutdown=5.0))
        rec.cleanup["w"] = 1.5
        t0 = trio.current_time()
        await sup.stop_child("w")
        assert trio.current_time() - t0 == 1.5
        assert rec.log[-2:] == [("stop", "w"), ("cleaned", "w")]


# --------------------------------------------------------------------- identity stability


async def test_a_crashed_agent_keeps_its_ref_state_and_processed_ids(
    autojump_clock: trio.testing.MockClock, rec: Recorder
) -> None:
    async with jt.open_node(name="n", plugins=[rec]) as node:
        agent = await node.start_agent(Tracked, "acct")
        applied = jt.Instruction("inc", {"by": 10})
        assert (await node.send_instruction(agent, applied)).status == "accepted"
        await node.send_instruction(agent, jt.Instruction("inc", {"by": 1}))
        assert await node.call(agent, jt.Instruction("get")) == 11

        await crash_agent(node, agent)
        # the same ref answers, from the persisted state
        assert await node.call(agent, jt.Instruction("get")) == 11
        assert await node.lookup("acct") == agent
        assert node.agents() == [agent]
        assert await node.query_agent(agent) == CounterState(count=11)
        assert await node.query_agent(agent, consistency="eventual") == CounterState(count=11)
        # the instruction applied before the crash is not applied again
        receipt = await node.send_instruction(agent, applied)
        assert receipt.status == "already_processed"
        with pytest.raises(jt.AlreadyProcessed):
            await node.call(agent, applied)
        assert await node.call(agent, jt.Instruction("get")) == 11
        assert child_info(node, "acct").restarts == 1
        assert await node.check_agent_health(agent) == jt.Health.DEGRADED  # restarted recently
        await trio.sleep(node.config.max_seconds + 1)
        assert await node.check_agent_health(agent) == jt.Health.HEALTHY


async def test_crash_agent_while_the_agent_restarts(
    autojump_clock: trio.testing.MockClock, rec: Recorder
) -> None:
    async with jt.open_node(name="n", plugins=[rec]) as node:
        sup = await node.start_supervisor("s", backoff=jt.Backoff(initial=1.0, jitter=0.0))
        agent = await node.start_agent(Tracked, "a", supervisor=sup)
        await crash_agent(node, agent)
        with trio.fail_after(60):
            await crash_agent(node, agent)  # the agent is still down (backoff)
        assert await node.call(agent, jt.Instruction("get"), timeout=60) == 0
        assert child_info(node, "a").restarts == 2


async def test_a_temporary_agent_is_not_restarted(
    autojump_clock: trio.testing.MockClock, rec: Recorder
) -> None:
    async with jt.open_node(name="n", plugins=[rec]) as node:
        agent = await node.start_agent(Tracked, "once", restart="temporary")
        await crash_agent(node, agent)
        with pytest.raises(jt.AgentUnavailable):
            await node.call(agent, jt.Instruction("get"))
        with pytest.raises(jt.AgentUnavailable):
            await node.send_instruction(agent, jt.Instruction("inc"))
        assert await node.check_agent_health(agent) == jt.Health.NOT_FOUND
        assert node.agents() == []
        assert node.supervision_tree().children == ()
        assert rec.log.count(("start", "once")) == 1


async def test_a_transient_agent_is_restarted_after_a_crash(
    autojump_clock: trio.testing.MockClock, rec: Recorder
) -> None:
    async with jt.open_node(name="n", plugins=[rec]) as node:
        agent = await node.start_agent(Tracked, "t", restart="transient")
        await node.send_instruction(agent, jt.Instruction("inc"))
        with pytest.raises(jt.ActionError):
            await node.call(agent, jt.Instruction("boom"))
        assert await node.call(agent, jt.Instruction("get")) == 1
        assert child_info(node, "t").last_failure == "ValueError: boom"


async def test_a_restart_during_an_in_flight_call_fails_the_call(
    autojump_clock: trio.testing.MockClock, rec: Recorder
) -> None:
    async with jt.open_node(name="n", plugins=[rec]) as node:
        agent = await node.start_agent(Tracked, "a")
        outcome: dict[str, Any] = {}

        async def caller(name: str, instruction: jt.Instruction) -> None:
            try:
                outcome[name] = await node.call(agent, instruction, timeout=60.0)
            except jt.JidoError as exc:
                outcome[name] = exc

        async with trio.open_nursery() as nursery:
            nursery.start_soon(caller, "in_flight", jt.Instruction("block"))
            await rec.wait_for(lambda: ("blocked", "a") in rec.log)
            nursery.start_soon(caller, "queued", jt.Instruction("get"))
            await trio.testing.wait_all_tasks_blocked()
            t0 = trio.current_time()
            await crash_agent(node, agent)
        assert trio.current_time() == t0  # an error, not a hang until the timeout
        error = outcome["in_flight"]
        assert isinstance(error, jt.ActionError)
        assert isinstance(error.__cause__, InjectedCrash)
        assert outcome["queued"] == 0  # answered by the restarted agent


async def test_an_action_that_raises_fails_the_call_and_restarts_the_agent(
    autojump_clock: trio.testing.MockClock, rec: Recorder
) -> None:
    async with jt.open_node(name="n", plugins=[rec]) as node:
        agent = await node.start_agent(Tracked, "a")
        with pytest.raises(jt.ActionError) as raised:
            await node.call(agent, jt.Instruction("boom"))
        assert isinstance(raised.value.__cause__, ValueError)
        assert await node.call(agent, jt.Instruction("get")) == 0
        assert child_info(node, "a").restarts == 1


# --------------------------------------------------------------------- introspection and hooks


async def test_supervision_tree_snapshot(
    autojump_clock: trio.testing.MockClock, rec: Recorder
) -> None:
    async with jt.open_node(name="n", plugins=[rec]) as node:
        s1 = await node.start_supervisor(
            "s1",
            strategy="one_for_all",
            max_restarts=5,
            backoff=jt.Backoff(initial=10.0, jitter=0.0),
            children=[agent_spec("a")],
        )
        await node.start_supervisor(
            "s2", strategy="rest_for_one", max_restarts=0, supervisor=s1,
            children=[worker_spec("w")],
        )  # fmt: skip
        first = node.supervision_tree()
        assert first == jt.SupervisorInfo(
            id="root",
            strategy="one_for_one",
            status="running",
            restarts=0,
            children=(
                jt.SupervisorInfo(
                    id="s1",
                    strategy="one_for_all",
                    status="running",
                    restarts=0,
                    children=(
                        jt.ChildInfo(
                            id="a", kind="agent", status="running", restarts=0, last_failure=None
                        ),
                        jt.SupervisorInfo(
                            id="s2",
                            strategy="rest_for_one",
                            status="running",
                            restarts=0,
                            children=(
                                jt.ChildInfo(
                                    id="w",
                                    kind="worker",
                                    status="running",
                                    restarts=0,
                                    last_failure=None,
                                ),
                            ),
                        ),
                    ),
                ),
            ),
        )
        assert first.kind == "supervisor"
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            first.status = "failed"  # type: ignore[misc]

        # s2 gives up; s1 waits 10 s before restarting a and s2
        rec.command("w", "crash")
        await rec.wait_for(lambda: rec.has("s1", "a", "exited"))  # stopped by one_for_all
        during = sup_info(node, "s1")
        a, s2 = during.children
        assert isinstance(s2, jt.SupervisorInfo)
        assert (a.status, s2.status) == ("restarting", "restarting")
        assert s2.last_failure == (
            "SupervisorEscalation: supervisor 's2' exceeded 0 restarts within 5.0s:"
            " 'w' failed once (Boom: worker w crashed)"
        )
        assert s2.children[0].last_failure == "Boom: worker w crashed"

        await rec.wait_for(lambda: rec.has("s1", "s2", "restarted"))
        after = sup_info(node, "s1")
        assert [(c.id, c.status, c.restarts) for c in after.children] == [
            ("a", "running", 1),
            ("s2", "running", 1),
        ]
        # snapshots are values: the first one did not change
        assert find(first, "s2").restarts == 0
    assert node.supervision_tree().status == "stopped"


async def test_hooks_fire_on_start_exit_and_restart(
    autojump_clock: trio.testing.MockClock, rec: Recorder
) -> None:
    async with jt.open_node(name="n", plugins=[rec]) as node:
        sup = await node.start_supervisor("s", children=[agent_spec("a"), worker_spec("w")])
        await crash_agent(node, ref("a"))
        await rec.wait_for(lambda: rec.has("s", "a", "restarted"))
        await crash_agent(node, ref("a"))
        await rec.wait_for(lambda: rec.has("s", "a", "restarted", 2))
        rec.command("w", "crash")
        await rec.wait_for(lambda: rec.has("s", "w", "restarted"))
        await sup.stop_child("w")
    crash = "InjectedCrash: injected crash of agent 'a'"
    assert [(e.supervisor, e.child, e.event, e.reason) for e in rec.events] == [
        ("root", "s", "started", None),
        ("s", "a", "started", None),
        ("s", "w", "started", None),
        ("s", "a", "exited", crash),
        ("s", "a", "started", None),
        ("s", "a", "restarted", None),
        ("s", "a", "exited", crash),
        ("s", "a", "started", None),
        ("s", "a", "restarted", None),
        ("s", "w", "exited", "Boom: worker w crashed"),
        ("s", "w", "started", None),
        ("s", "w", "restarted", None),
        ("s", "w", "exited", "shutdown"),
        # the node closes: children in reverse order, then the supervisor
        ("s", "a", "exited", "shutdown"),
        ("root", "s", "exited", "shutdown"),
    ]
    assert rec.hooks == [
        ("agent_started", "a"),
        ("agent_stopped", "a", f"crash: {crash}"),
        ("agent_started", "a"),
        ("agent_restarted", "a", 1),
        ("agent_stopped", "a", f"crash: {crash}"),
        ("agent_started", "a"),
        ("agent_restarted", "a", 2),
        ("agent_stopped", "a", "shutdown"),
    ]


async def test_agent_stopped_hook_fires_on_graceful_stop(
    autojump_clock: trio.testing.MockClock, rec: Recorder
) -> None:
    async with jt.open_node(name="n", plugins=[rec]) as node:
        agent = await node.start_agent(Tracked, "a")
        await node.stop_agent(agent)
        assert rec.hooks == [("agent_started", "a"), ("agent_stopped", "a", "shutdown")]
        await node.start_agent(Tracked, "b", restart="temporary")
    # closing the node stops the remaining agents the same way
    assert rec.hooks[2:] == [("agent_started", "b"), ("agent_stopped", "b", "shutdown")]


async def test_a_stopped_supervisor_id_can_be_used_again() -> None:
    async with jt.open_node(name="n") as node:
        parent = await node.start_supervisor("parent")
        await node.start_supervisor("workers", supervisor=parent)
        await parent.stop_child("workers")
        again = await node.start_supervisor("workers")
        assert again.id == "workers"
        with pytest.raises(jt.ChildAlreadyExists, match="already exists"):
            await node.start_supervisor("workers")


class Plain(jt.Agent):
    type = "plain"


async def test_crash_agent_on_a_stopped_agent_is_unavailable() -> None:
    async with jt.open_node(name="n") as node:
        ref = await node.start_agent(Plain, "gone")
        await node.stop_agent(ref)
        with pytest.raises(jt.AgentUnavailable):
            await crash_agent(node, ref)
        with pytest.raises(jt.AgentNotFound):
            await crash_agent(node, "never")


class FailsToStart(jt.Agent):
    type = "fails-to-start"

    async def on_start(self, state: Any) -> None:
        raise ValueError("cannot start")


async def test_a_child_that_fails_to_start_fails_the_supervisor_start_as_a_whole(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """As in OTP: no half-built supervisor is left behind, and the same id
    can be started again."""
    async with jt.open_node(name="n") as node:
        with pytest.raises(ValueError, match="cannot start"):
            await node.start_supervisor(
                "s", children=[agent_spec("good"), jt.ChildSpec(id="bad", start=FailsToStart)]
            )
        assert node.supervision_tree().children == ()
        with pytest.raises(jt.AgentUnavailable):
            await node.lookup("good")
        sup = await node.start_supervisor("s", children=[agent_spec("good")])
        assert [child.id for child in sup.info().children] == ["good"]


class SlowToStop(jt.Agent):
    type = "slow-to-stop"

    @jt.action("ping")
    async def ping(self, state: Any) -> None:
        self.ctx.reply("pong")

    async def on_stop(self, state: Any, reason: str) -> None:
        await trio.sleep(REC.on_stop_delay.get(self.ctx.ref.id, 2))


@pytest.mark.parametrize("clean_up", [2.0, 100.0], ids=["within-deadline", "past-deadline"])
async def test_a_cancelled_stop_agent_still_stops_the_agent(
    autojump_clock: trio.testing.MockClock, rec: Recorder, clean_up: float
) -> None:
    """The caller of stop_agent gave up while the agent cleaned up: the agent
    still ends (by its shutdown deadline at the latest) and is gone, not
    left "running" with nothing behind it."""
    config = jt.Config(node_name="n", shutdown_timeout=5.0)
    async with jt.open_node(config) as node:
        ref = await node.start_agent(SlowToStop, "a")
        rec.on_stop_delay["a"] = clean_up
        assert await node.call(ref, jt.Instruction("ping")) == "pong"
        with trio.move_on_after(1) as scope:
            await node.stop_agent(ref)
        assert scope.cancelled_caught
        await trio.sleep(10)
        assert node.supervision_tree().children == ()
        with pytest.raises(jt.AgentUnavailable):
            await node.send_instruction(ref, jt.Instruction("ping"))
        again = await node.start_agent(SlowToStop, "a")
        assert await node.call(again, jt.Instruction("ping")) == "pong"


class FlakyStart(jt.Agent):
    type = "flaky-start"
    broken = False

    async def on_start(self, state: Any) -> None:
        if FlakyStart.broken:
            raise ConnectionError("db down")

    @jt.action("ping")
    async def ping(self, state: Any) -> None:
        self.ctx.reply("pong")


async def test_a_supervisor_in_backoff_can_still_be_managed(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child that keeps failing to start, restarted with a backoff slow
    enough never to exceed the intensity: stopping it, or starting another
    child, does not wait for the restart loop (it used to hold the lock)."""
    async with jt.open_node(name="n") as node:
        sup = await node.start_supervisor(
            "s", max_restarts=3, max_seconds=5, backoff=jt.Backoff(initial=1.0, maximum=5.0)
        )
        looping = await node.start_agent(FlakyStart, "looping", supervisor=sup)
        monkeypatch.setattr(FlakyStart, "broken", True)
        await crash_agent(node, looping)
        await trio.sleep(30)  # restarting, failing, backing off, over and over
        with trio.fail_after(1):
            await node.stop_agent(looping)
        monkeypatch.setattr(FlakyStart, "broken", False)
        with trio.fail_after(1):
            other = await node.start_agent(FlakyStart, "other", supervisor=sup)
        assert await node.call(other, jt.Instruction("ping")) == "pong"
        await trio.sleep(30)
        assert [child.id for child in sup.info().children] == ["other"]
