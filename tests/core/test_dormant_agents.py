"""Agents started on the synchronous start path hold no Trio task until they
first have work (docs/performance.md, "Idle agents hold no task"): whatever
would wake a waiting agent (a message, a stop, a crash, a sibling's restart,
the node's shutdown) gives a dormant one its task, and it then behaves as
before."""

from __future__ import annotations

import contextvars
import gc
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any
from typing import ClassVar

import attrs
import pytest
import trio
import trio.testing

import jido_trio as jt
from jido_trio.abc import RegistryEntry
from jido_trio.testing import agent_internals
from jido_trio.testing import crash_agent
from tests._agents import Counter
from tests._agents import CounterState
from tests.distributed.test_failover import _FencingPlugin


def agent_tasks() -> int:
    """The tasks of the run that run an agent (named ``agent:<id>``)."""

    def walk(task: trio.lowlevel.Task) -> int:
        own = 1 if task.name.startswith("agent:") else 0
        return own + sum(walk(t) for n in task.child_nurseries for t in n.child_tasks)

    root = trio.lowlevel.current_root_task()
    assert root is not None
    return walk(root)


class Stops:
    """Records ``on_stop`` calls and the lifecycle hooks."""

    def __init__(self) -> None:
        self.on_stop: list[tuple[str, str]] = []
        self.stopped: list[tuple[str, str]] = []
        self.restarted: list[str] = []
        self._changed = trio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_restarted(self, count: int) -> None:
        while len(self.restarted) < count:
            await self._changed.wait()

    @jt.hookimpl
    def jido_trio_agent_stopped(self, node: jt.Node, ref: jt.AgentRef, reason: str) -> None:
        self.stopped.append((ref.id, reason))

    @jt.hookimpl
    def jido_trio_agent_restarted(self, node: jt.Node, ref: jt.AgentRef, restarts: int) -> None:
        self.restarted.append(ref.id)
        self._notify()


_seen: contextvars.ContextVar[str] = contextvars.ContextVar("seen", default="unset")


class Polite(Counter):
    """A counter that records its ``on_stop``, and reads a context variable."""

    type = "polite-counter"
    stops: ClassVar[Stops | None] = None

    async def on_stop(self, state: CounterState, reason: str) -> None:
        assert self.stops is not None
        self.stops.on_stop.append((self.ctx.ref.id, reason))

    @jt.action("seen")
    async def seen(self, state: CounterState) -> None:
        self.ctx.reply((_seen.get(), jt.AgentRef.new("x", "y").node))


@pytest.fixture
def stops() -> Iterator[Stops]:
    Polite.stops = stops = Stops()
    yield stops
    Polite.stops = None


@pytest.mark.local_only  # the synchronous start path needs the in-process engines
async def test_idle_agents_hold_no_task_until_they_have_work() -> None:
    async with jt.open_node(name="n") as node:
        refs = await node.start_agents(Counter, [f"a{i}" for i in range(10_000)])
        one = await node.start_agent(Counter, "one")
        await trio.testing.wait_all_tasks_blocked()
        assert agent_tasks() == 0
        running = len(node.agents())  # (a failed assert shows the number, not 10k refs)
        assert running == 10_001
        # The first message gives the agent its task, which then waits for more.
        await node.send_instruction(refs[7], jt.Instruction("increment", {"by": 2}))
        assert await node.call(one, jt.Instruction("get")) == 0
        await trio.testing.wait_all_tasks_blocked()
        assert agent_tasks() == 2
        assert await node.call(refs[7], jt.Instruction("get")) == 2
        assert await node.query_agent(refs[8]) == CounterState()
        await trio.testing.wait_all_tasks_blocked()
        assert agent_tasks() == 3


@pytest.mark.local_only  # in-process engines: the objects counted live here
async def test_idle_agents_hold_no_state_store_and_no_registry_entry_object() -> None:
    async with jt.open_node(name="n") as node:
        gc.collect()
        entries_before = _instances(RegistryEntry)
        refs = await node.start_agents(Counter, [f"a{i}" for i in range(1000)])
        gc.collect()
        assert _instances(RegistryEntry) <= entries_before  # none per agent
        assert not any(agent_internals(node, ref.id).loaded for ref in refs)
        # The registry still answers with full entries, built when asked for.
        entry = await node.registry.lookup("a5")
        assert (entry.ref, entry.node) == (refs[5], "n")
        assert entry.metadata == {"jido.restart": "permanent"}
        later = await node.registry.lookup("a6")
        assert later.epoch > entry.epoch and later.registered_at >= entry.registered_at
        assert len(await node.registry.select(type="counter")) == 1000
        # The first instruction applied makes the store, and commits through it.
        await node.send_instruction(refs[3], jt.Instruction("increment", {"by": 4}))
        assert await node.call(refs[3], jt.Instruction("get")) == 4
        assert agent_internals(node, "a3").loaded
        assert await node.query_agent(refs[3], consistency="eventual") == CounterState(4)
        # Nothing was stored for the others: an eventual read gives the default.
        assert await node.query_agent(refs[4], consistency="eventual") == CounterState()


@pytest.mark.local_only
async def test_an_agent_with_a_stored_record_or_given_state_loads_it_at_start() -> None:
    async with jt.open_node(name="n") as node:
        ref = await node.start_agent(Counter, "kept")
        await node.call(ref, jt.Instruction("increment", {"by": 2}, id="once"))
        await node.stop_agent(ref)
        again = await node.start_agent(Counter, "kept")
        assert await node.call(again, jt.Instruction("get")) == 2
        with pytest.raises(jt.AlreadyProcessed):  # its dedupe window was loaded too
            await node.call(again, jt.Instruction("increment", {"by": 2}, id="once"))
        given = await node.start_agent(Counter, "given", state=CounterState(9))
        assert agent_internals(node, "given").loaded
        assert await node.query_agent(given, consistency="eventual") == CounterState(9)


def _instances(cls: type) -> int:
    return sum(1 for obj in gc.get_objects() if type(obj) is cls)


async def test_a_dormant_agent_answers_calls_tells_and_queries() -> None:
    async with jt.open_node(name="n") as node:
        [a, b] = await node.start_agents(Counter, ["a", "b"])
        c = await node.start_agent(Counter, "c", state=CounterState(count=5))
        assert await node.call(a, jt.Instruction("get")) == 0
        receipt = await node.send_instruction(b, jt.Instruction("increment", {"by": 3}))
        assert receipt.status == "accepted"
        assert await node.query_agent(b) == CounterState(count=3)
        assert await node.call(c, jt.Instruction("get")) == 5
        assert await node.check_agent_health(c) is jt.Health.HEALTHY
        with pytest.raises(jt.ActionError):
            await node.call(a, jt.Instruction("boom"))
        assert await node.call(a, jt.Instruction("get")) == 0


async def test_a_dormant_agent_stops_gracefully(stops: Stops) -> None:
    async with jt.open_node(name="n", plugins=[stops]) as node:
        [a, b] = await node.start_agents(Polite, ["a", "b"])
        await node.stop_agent(a)
        assert stops.on_stop == [("a", "shutdown")]
        assert stops.stopped == [("a", "shutdown")]
        with pytest.raises(jt.AgentUnavailable):
            await node.call(a, jt.Instruction("get"))
        # Sends queued before the stop are handled first.
        await node.send_instruction(b, jt.Instruction("increment"))
        await node.stop_agent(b)
        await node.start_agent(Polite, "b")
        assert await node.call(b, jt.Instruction("get")) == 1


async def test_a_dormant_agent_is_crashed_and_restarted(
    autojump_clock: trio.testing.MockClock, stops: Stops
) -> None:
    async with jt.open_node(name="n", plugins=[stops]) as node:
        [ref] = await node.start_agents(Polite, ["a"])
        await crash_agent(node, ref)
        await stops.wait_restarted(1)
        assert stops.restarted == ["a"]
        assert stops.stopped[0][0] == "a" and stops.stopped[0][1].startswith("crash")
        assert await node.call(ref, jt.Instruction("get")) == 0
        [child] = node.supervision_tree().children
        assert (child.id, child.status, child.restarts) == ("a", "running", 1)


async def test_dormant_agents_stop_at_node_shutdown(stops: Stops) -> None:
    async with jt.open_node(name="n", plugins=[stops]) as node:
        await node.start_agents(Polite, ["a", "b"])
        busy = await node.start_agent(Polite, "c")
        await node.call(busy, jt.Instruction("get"))
    # Reverse start order, each with its on_stop, as for agents with a task.
    assert stops.on_stop == [("c", "shutdown"), ("b", "shutdown"), ("a", "shutdown")]
    assert stops.stopped == [("c", "shutdown"), ("b", "shutdown"), ("a", "shutdown")]


async def test_one_for_all_restarts_dormant_siblings(
    autojump_clock: trio.testing.MockClock, stops: Stops
) -> None:
    async with jt.open_node(name="n", plugins=[stops]) as node:
        sup = await node.start_supervisor("team", strategy="one_for_all")
        refs = await node.start_agents(Polite, ["a", "b", "c"], supervisor=sup)
        await node.send_instruction(refs[0], jt.Instruction("increment", {"by": 4}))
        with pytest.raises(jt.ActionError):
            await node.call(refs[1], jt.Instruction("boom"))
        await stops.wait_restarted(3)
        # The dormant siblings were stopped gracefully and restarted with b.
        assert sorted(stops.on_stop) == [("a", "shutdown"), ("c", "shutdown")]
        assert [await node.call(r, jt.Instruction("get")) for r in refs] == [4, 0, 0]
        [team] = node.supervision_tree().children
        assert isinstance(team, jt.SupervisorInfo)
        assert [(c.id, c.status, c.restarts) for c in team.children] == [
            ("a", "running", 1),
            ("b", "running", 1),
            ("c", "running", 1),
        ]


@pytest.mark.local_only  # a transport whose lease the test takes away
async def test_dormant_agents_of_a_fenced_node_end_like_cancelled_ones(
    autojump_clock: trio.testing.MockClock, stops: Stops
) -> None:
    plugin = _FencingPlugin()
    config = jt.Config(node_name="f1", transport="fenceable")
    with pytest.raises(jt.NodeFenced):
        async with jt.open_node(config, plugins=[plugin, stops]) as node:
            await node.start_agents(Polite, ["a", "b"])
            awake = await node.start_agent(Polite, "c")
            await node.call(awake, jt.Instruction("get"))
            plugin.lost.set()
            await trio.sleep_forever()
    # Cancelled, not stopped gracefully: no on_stop, the "shutdown" hook for each.
    assert stops.on_stop == []
    assert sorted(stops.stopped) == [("a", "shutdown"), ("b", "shutdown"), ("c", "shutdown")]


@attrs.frozen
class Inbox:
    seen: tuple[str, ...] = ()


class Listener(jt.Agent):
    type = "dormant-listener"
    State = Inbox

    @jt.on_signal("order.*")
    async def on_order(self, state: Inbox, signal: jt.Signal) -> Inbox:
        return Inbox((*state.seen, signal.type))

    @jt.action("get")
    async def get(self, state: Inbox) -> None:
        self.ctx.reply(list(state.seen))


async def test_a_dormant_agent_receives_signals() -> None:
    async with jt.open_node(name="n") as node:
        refs = await node.start_agents(Listener, ["l1", "l2"])
        assert await node.publish(jt.Signal.new("order.created", "urn:test")) == 2
        for ref in refs:
            assert await node.call(ref, jt.Instruction("get")) == ["order.created"]


async def test_a_woken_agent_runs_in_its_nodes_context_not_the_senders(stops: Stops) -> None:
    hub = "dormant-hub"
    options: dict[str, Any] = {"local": {"hub": hub}, "memory": {"hub": hub}}
    async with (
        jt.open_node(jt.Config(node_name="a", plugin_options=options)) as a,
        jt.open_node(jt.Config(node_name="b", plugin_options=options)) as b,
    ):
        ref = await b.start_agent(Polite, "p")
        local = await a.start_agent(Polite, "q")
        token = _seen.set("the sender's")
        try:
            # Woken by a task of node "a" (and one of its context variables).
            assert tuple(await a.call(ref, jt.Instruction("seen"))) == ("unset", "b")
            assert tuple(await a.call(local, jt.Instruction("seen"))) == ("unset", "a")
        finally:
            _seen.reset(token)


def test_an_armed_mailbox_calls_its_activation_once_on_the_first_wake_up() -> None:
    from jido_trio._core import Mailbox

    calls: list[str] = []

    def record(what: str) -> Callable[[], None]:
        return lambda: calls.append(what)

    for wake in ("put", "requeue", "wake", "close"):
        box: Mailbox[int] = Mailbox(4)
        box.arm(record(wake))
        box.requeue_front([])  # nothing put back: nothing to wake for
        if wake == "put":
            assert box.put_nowait(1) and box.put_nowait(2)
        elif wake == "requeue":
            box.requeue_front([1, 2])
        elif wake == "wake":
            box.wake()
            box.wake()
        else:
            box.close(RuntimeError("gone"), lambda item: None)
        box.wake()
    assert calls == ["put", "requeue", "wake", "close"]
    # Disarmed, or taken back, a box wakes nothing.
    box = Mailbox(4)
    box.arm(record("late"))
    box.disarm()
    box.put_nowait(1)
    assert calls[-1] == "close"
    box.arm(record("again"))
    with pytest.raises(RuntimeError, match="one consumer"):
        box.arm(record("twice"))
