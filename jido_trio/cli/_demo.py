"""``jido-trio demo``: the README's demo job with a live view.

The same job as ``examples/demo.py`` (which is not part of the installed
package): counter agents under two supervisors take a stream of instructions
from many concurrent senders while a chaos task crashes agents, both with
:func:`jido_trio.testing.crash_agent` and through an action that raises. A live
view shows agents, throughput, crashes and restarts; the run ends with a summary
that reads every agent's state back and checks that nothing was lost and
nothing was applied twice.
"""

from __future__ import annotations

import random
import time
from collections import Counter as Tally
from collections import deque
from collections.abc import Iterator
from typing import Final

import attrs
import trio
from rich.console import Console
from rich.console import Group
from rich.console import RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .._agent import Agent
from .._agent import action
from .._config import Config
from .._exceptions import ActionError
from .._health import Health
from .._message import Instruction
from .._node import Node
from .._node import open_node
from .._ref import AgentRef
from .._supervisor import ChildInfo
from .._supervisor import SupervisorInfo
from ..hookspecs import hookimpl
from ..testing import crash_agent
from ._render import HEALTH_STYLES
from ._render import STATUS_STYLES

__all__ = ["DemoCounter", "DemoSettings", "Totals", "run_demo"]

SUPERVISORS: Final = ("pool-a", "pool-b")
#: A crashed agent restarted within this many seconds is reported DEGRADED
#: (it is the restart-intensity window, ``Config.max_seconds``).
RECOVERY_WINDOW: Final = 1.0
REFRESH: Final = 0.125


@attrs.frozen
class Totals:
    """A counter's state: the sum of what it was asked to add, and how often."""

    total: int = 0
    applied: int = 0


class DemoCounter(Agent):
    type = "jido-trio-demo-counter"
    State = Totals

    @action("add")
    async def add(self, state: Totals, n: int) -> Totals:
        return attrs.evolve(state, total=state.total + n, applied=state.applied + 1)

    @action("explode")
    async def explode(self, state: Totals) -> None:
        raise RuntimeError("the action failed on purpose")

    @action("get")
    async def get(self, state: Totals) -> None:
        self.ctx.reply(state.total)


@attrs.frozen(kw_only=True)
class DemoSettings:
    seconds: float = 4.0
    agents: int = 200
    senders: int = 50
    seed: int = 2024
    chaos_interval: float = 0.5


@attrs.define(eq=False)
class _Stats:
    """What the live view shows; updated by the tasks and the observer plugin."""

    started: float = attrs.field(factory=time.perf_counter)
    phase: str = "starting"
    load_started: float | None = None
    load_seconds: float = 0.0
    accepted: int = 0
    crashes: int = 0
    explosions: int = 0
    restarts: int = 0
    dead_letters: int = 0
    health: Tally[str] = attrs.field(factory=Tally)
    events: deque[Text] = attrs.field(factory=lambda: deque(maxlen=7))
    samples: deque[tuple[float, int]] = attrs.field(factory=lambda: deque(maxlen=5))

    def event(self, text: Text | str) -> None:
        stamp = Text(f"{time.perf_counter() - self.started:5.1f}s ", style="dim")
        self.events.append(stamp + (text if isinstance(text, Text) else Text(text)))

    def sample(self) -> None:
        self.samples.append((time.perf_counter(), self.accepted))

    def rate_now(self) -> float:
        if len(self.samples) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self.samples[0], self.samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


class _Observer:
    """A plugin that only observes: it feeds the live view through the hooks."""

    def __init__(self, stats: _Stats) -> None:
        self.stats = stats

    @hookimpl
    def jido_trio_agent_restarted(self, ref: AgentRef, restarts: int) -> None:
        self.stats.restarts += 1
        self.stats.event(Text.assemble("restarted ", (ref.id, "bold"), f" (restart #{restarts})"))

    @hookimpl
    def jido_trio_message_dead_lettered(self, reason: str) -> None:
        self.stats.dead_letters += 1
        self.stats.event(Text(f"dead letter: {reason}", style="red"))


def _children(info: SupervisorInfo) -> Iterator[ChildInfo]:
    for child in info.children:
        if isinstance(child, SupervisorInfo):
            yield from _children(child)
        else:
            yield child


def _pool_infos(node: Node) -> list[SupervisorInfo]:
    return [c for c in node.supervision_tree().children if isinstance(c, SupervisorInfo)]


def _view(node: Node, stats: _Stats, settings: DemoSettings) -> RenderableType:
    elapsed = time.perf_counter() - stats.started
    header = Text.assemble(
        ("jido_trio demo", "bold"),
        f"  node {node.name!r}  local defaults  ",
        ("phase: ", "dim"),
        (stats.phase, "bold cyan"),
        f"  {elapsed:4.1f} s",
    )
    pools = _pool_infos(node)
    statuses = Tally(child.status for pool in pools for child in _children(pool))
    load_time = (
        stats.load_seconds
        if stats.load_seconds
        else (time.perf_counter() - stats.load_started if stats.load_started else 0.0)
    )
    average = stats.accepted / load_time if load_time > 0 else 0.0
    metrics = Table.grid(padding=(0, 2))
    metrics.add_column(style="dim")
    metrics.add_column(justify="right")
    metrics.add_row(
        "agents",
        Text.assemble(
            (f"{statuses['running']} running", STATUS_STYLES["running"]),
            "  ",
            (f"{statuses['restarting']} restarting", STATUS_STYLES["restarting"]),
        ),
    )
    metrics.add_row(
        "health",
        Text("  ").join(
            Text(f"{stats.health[h.value]} {h.value}", style=HEALTH_STYLES[h.value])
            for h in (Health.HEALTHY, Health.DEGRADED)
        ),
    )
    metrics.add_row("instructions accepted", f"{stats.accepted:,}")
    rate_now = stats.rate_now() if stats.phase == "load" else 0.0
    metrics.add_row("throughput", f"{rate_now:,.0f}/s now, {average:,.0f}/s average")
    metrics.add_row(
        "crashes injected", f"{stats.crashes} crash_agent + {stats.explosions} failing action"
    )
    metrics.add_row("restarts (supervisors)", str(stats.restarts))
    metrics.add_row("dead letters", str(stats.dead_letters))
    table = Table(title="supervisors", title_justify="left", expand=False)
    table.add_column("supervisor")
    table.add_column("strategy")
    table.add_column("agents", justify="right")
    table.add_column("running", justify="right")
    table.add_column("restarting", justify="right")
    table.add_column("restarts", justify="right")
    for pool in pools:
        children = list(_children(pool))
        table.add_row(
            pool.id,
            pool.strategy,
            str(len(children)),
            str(sum(c.status == "running" for c in children)),
            str(sum(c.status == "restarting" for c in children)),
            str(sum(c.restarts for c in children)),
        )
    events = Group(*stats.events) if stats.events else Text("(none yet)", style="dim")
    return Panel(
        Group(metrics, Text(), table, Text("recent events", style="bold"), events),
        title=header,
        title_align="left",
        subtitle=f"{settings.agents} agents, {settings.senders} senders, {settings.seconds:g} s of load",
    )


async def run_demo(settings: DemoSettings, console: Console) -> bool:
    """Run the demo, render it on ``console`` and return whether every check passed."""
    stats = _Stats()
    config = Config(node_name="demo", max_seconds=RECOVERY_WINDOW)
    rng = random.Random(settings.seed)
    expected: Tally[str] = Tally()  # agent id -> sum of accepted "add" amounts
    accepted: Tally[str] = Tally()  # agent id -> number of accepted "add" instructions
    checks: dict[str, bool] = {}
    victims: list[AgentRef] = []
    async with open_node(config, plugins=[_Observer(stats)]) as node:
        live = Live(
            _view(node, stats, settings), console=console, auto_refresh=False, transient=False
        )
        with live:

            async def refresher(task_status: trio.TaskStatus[None]) -> None:
                task_status.started()
                while True:
                    stats.sample()
                    stats.health = Tally(
                        [(await node.check_agent_health(ref)).value for ref in node.agents()]
                    )
                    live.update(_view(node, stats, settings), refresh=True)
                    await trio.sleep(REFRESH)

            async with trio.open_nursery() as ui:
                await ui.start(refresher)
                refs = await _start(node, settings, stats)
                await _load(node, refs, settings, stats, rng, expected, accepted, victims)
                checks["restarted agents healthy again"] = await _recover(node, victims, stats)
                checks["duplicate instruction id applied once"] = await _idempotency(
                    node, refs[1], expected, accepted, stats
                )
                stats.phase = "summary"
                await _summary_checks(node, refs, stats, expected, accepted, checks)
                stats.phase = "done"
                ui.cancel_scope.cancel()
            live.update(_view(node, stats, settings), refresh=True)
    return _print_summary(console, stats, expected, accepted, checks)


async def _start(node: Node, settings: DemoSettings, stats: _Stats) -> list[AgentRef]:
    stats.phase = "start"
    supervisors = [
        await node.start_supervisor(name, strategy="one_for_one", max_restarts=100)
        for name in SUPERVISORS
    ]
    refs = []
    for i in range(settings.agents):
        sup = supervisors[i % len(supervisors)]
        refs.append(await node.start_agent(DemoCounter, f"counter-{i:03d}", supervisor=sup))
    stats.event(f"started {len(refs)} agents under {len(supervisors)} supervisors")
    return refs


async def _load(
    node: Node,
    refs: list[AgentRef],
    settings: DemoSettings,
    stats: _Stats,
    rng: random.Random,
    expected: Tally[str],
    accepted: Tally[str],
    victims: list[AgentRef],
) -> None:
    stats.phase = "load"
    rounds = max(1, min(int(settings.seconds / settings.chaos_interval), len(refs) // 2))
    targets = rng.sample(refs, rounds)
    deadline = trio.current_time() + settings.seconds
    seeds = [rng.randrange(2**32) for _ in range(settings.senders)]

    async def sender(seed: int) -> None:
        local = random.Random(seed)
        while trio.current_time() < deadline:
            ref, n = local.choice(refs), local.randint(1, 9)
            receipt = await node.send_instruction(ref, Instruction("add", {"n": n}))
            if receipt.status == "accepted":
                expected[ref.id] += n
                accepted[ref.id] += 1
                stats.accepted += 1

    async def chaos() -> None:
        for k, ref in enumerate(targets):
            await trio.sleep_until(
                deadline - settings.seconds + (k + 0.5) * settings.chaos_interval
            )
            if trio.current_time() >= deadline:
                return
            victims.append(ref)
            if k % 3 == 2:
                stats.explosions += 1
                try:
                    await node.call(ref, Instruction("explode"))
                except ActionError as exc:
                    stats.event(
                        Text.assemble(
                            ("chaos", "red"), f": call({ref.id}, 'explode') -> {exc.__cause__!r}"
                        )
                    )
                continue
            stats.crashes += 1
            stats.event(Text.assemble(("chaos", "red"), f": crash_agent({ref.id})"))
            await crash_agent(node, ref)
            # Sent while the agent restarts: it waits in the mailbox.
            receipt = await node.send_instruction(ref, Instruction("add", {"n": 100}))
            if receipt.status == "accepted":
                expected[ref.id] += 100
                accepted[ref.id] += 1
                stats.accepted += 1
            stats.event(f"+100 sent to {ref.id} while it restarts: {receipt.status}")

    stats.load_started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(chaos)
        for seed in seeds:
            nursery.start_soon(sender, seed)
    stats.load_seconds = time.perf_counter() - stats.load_started


async def _recover(node: Node, victims: list[AgentRef], stats: _Stats) -> bool:
    """Wait until every crashed agent is healthy again (bounded)."""
    stats.phase = "recovery"
    with trio.move_on_after(RECOVERY_WINDOW + 5.0):
        while True:
            healths = [await node.check_agent_health(ref) for ref in victims]
            if all(h is Health.HEALTHY for h in healths):
                stats.event(f"all {len(victims)} crashed agents are healthy again")
                return True
            await trio.sleep(0.1)
    return False


async def _idempotency(
    node: Node, ref: AgentRef, expected: Tally[str], accepted: Tally[str], stats: _Stats
) -> bool:
    stats.phase = "idempotency"
    dup = Instruction("add", {"n": 7}, id="demo-payment-0001")
    first = await node.send_instruction(ref, dup)
    second = await node.send_instruction(ref, dup)
    if first.status == "accepted":
        expected[ref.id] += 7
        accepted[ref.id] += 1
        stats.accepted += 1
    stats.event(f"same instruction id twice -> {first.status}, then {second.status}")
    return (first.status, second.status) == ("accepted", "already_processed")


async def _summary_checks(
    node: Node,
    refs: list[AgentRef],
    stats: _Stats,
    expected: Tally[str],
    accepted: Tally[str],
    checks: dict[str, bool],
) -> None:
    strong = {ref.id: await node.query_agent(ref, consistency="strong") for ref in refs}
    eventual = {ref.id: await node.query_agent(ref, consistency="eventual") for ref in refs}
    wrong = [
        agent_id
        for agent_id, state in strong.items()
        if (state.total, state.applied) != (expected[agent_id], accepted[agent_id])
    ]
    tree_restarts = sum(child.restarts for pool in _pool_infos(node) for child in _children(pool))
    injected = stats.crashes + stats.explosions
    checks["expected total == sum of agent states"] = sum(s.total for s in strong.values()) == sum(
        expected.values()
    )
    checks["every accepted instruction applied exactly once"] = sum(
        s.applied for s in strong.values()
    ) == sum(accepted.values())
    checks["every agent matches its expectation"] = not wrong
    checks["eventual reads agree with strong reads"] = eventual == strong
    checks[f"{injected} crashes -> {injected} restarts in the tree"] = (
        tree_restarts == injected == stats.restarts
    )
    checks["no dead letters"] = stats.dead_letters == 0
    stats.event(f"read back {len(strong)} agents; {len(wrong)} off their expectation")


def _print_summary(
    console: Console,
    stats: _Stats,
    expected: Tally[str],
    accepted: Tally[str],
    checks: dict[str, bool],
) -> bool:
    console.print()
    console.print(Text("SUMMARY", style="bold"))
    rate = stats.accepted / stats.load_seconds if stats.load_seconds else 0.0
    console.print(
        f"   instructions accepted: {sum(accepted.values()):,} "
        f"({rate:,.0f}/s under load); expected total: {sum(expected.values()):,}",
        markup=False,
    )
    console.print(
        f"   crashes injected: {stats.crashes + stats.explosions}; "
        f"restarts: {stats.restarts}; dead letters: {stats.dead_letters}",
        markup=False,
    )
    for name, ok in checks.items():
        console.print(
            Text.assemble("   [", ("ok", "green") if ok else ("FAILED", "bold red"), "] ", name)
        )
    passed = bool(checks) and all(checks.values())
    took = time.perf_counter() - stats.started
    console.print(
        Text.assemble(
            "RESULT: ",
            ("OK, nothing lost", "bold green") if passed else ("FAILED", "bold red"),
            f" ({took:.1f} s)",
        )
    )
    return passed
