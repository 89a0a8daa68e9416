"""Chaos: three node processes on a three-server JetStream cluster, under load,
while nodes and servers are killed, paused and restarted (issue 16, item 8).

What runs
    Three NATS servers (``start_nats_cluster``), three node processes
    (``chaos_node.py``: n1, n2, n3) and a driver node in this process.
    :data:`AGENTS` :class:`~.chaos_node.ChaosCounter` agents are spread over the
    three nodes. One producer per agent sends instructions with client-chosen
    ids (``<kind>-<agent>-<n>``), each retried with the same id and the ref
    looked up once at the start (refs must follow moved agents) until it is
    acknowledged, for at most :data:`ACK_BOUND` seconds:

    - ``durable``: ``send_instruction(delivery="at_least_once")``; acknowledged
      by a receipt ("accepted" or "already_processed");
    - ``plain``: ``send_instruction()`` (at most once); acknowledged by a
      receipt, which only promises the message is queued: it is lost if the
      process holding it dies;
    - ``call``: acknowledged by the reply, or by ``AlreadyProcessed`` (the id
      was applied before). A call is retried only after errors that leave open
      whether it was applied (a timeout, an unreachable or unavailable agent,
      a breaker, a full mailbox): the same id makes the retry safe. An
      ``ActionError`` (the action ran and failed) is never retried.

The faults (one of each, the order, victims and timings drawn from the seed)
    ``kill-node``: SIGKILL a node process, restart it after a while (before or
    after its lease lapsed); ``pause-node``: SIGSTOP a node for longer than its
    membership lease, then SIGCONT: it must fence itself (exit code
    :data:`~.chaos_node.FENCED_EXIT` within :data:`EXIT_BOUND`) and is started
    again; ``kill-nats``: SIGKILL one NATS server, start it again; and
    ``restart-node``: SIGTERM a node (a graceful stop that hands its agents
    off, exit code 0), start it again. A restarted node starts its original
    agents where no live node owns them, and the driver migrates a few agents
    to it (``node.migrate``). A node process that exits on its own (a fence
    while a server is down) is started again, and noted.

The checks, at the end (after every acknowledged instruction was seen applied,
or a deadline passed, and the states stopped changing)
    Each agent's state lists the applications of ``add`` that were committed,
    in commit order, as ``(instruction id, epoch, pid, seq)``; the action wrote
    the same application to its process's side log before it returned
    (``chaos_node.SideLog``: agent, id, ``ctx.epoch``, node, pid, seq, CLOCK_MONOTONIC
    time; one ``O_APPEND`` write, which survives SIGKILL). An application whose
    commit failed is in the side log but not in the state (it was undone and
    applied again, under the same or a later epoch), so "committed" means:
    named by ``(pid, seq)`` in the final state.

    1. Nothing acknowledged is lost: every acknowledged ``durable`` and
       ``call`` id is in its agent's final state (a dead letter counts as a
       loss: infrastructure failures must not dead-letter). An acknowledged
       ``plain`` id is applied or dead-lettered unless a process that held the
       agent (its last application before the receipt, or one within 10 s
       after) died abnormally after the receipt.
    2. Nothing is applied twice: no id appears twice in a final state, and
       every id in it was sent.
    3. Never two owners applying at once: for each agent, the epochs of the
       committed applications never decrease in commit order, commit order
       agrees with application time, every committed application is in the
       side log with the same epoch, and no committed application with epoch
       E happened (side-log time) after any application of the agent, committed
       or not, with an epoch greater than E: once a newer owner applied
       anything, an older one commits nothing.
    4. Fault handling keeps its promises: a paused node fences itself and its
       process exits (code 3) within :data:`EXIT_BOUND` of SIGCONT; a SIGTERM
       ends a node with code 0 within :data:`EXIT_BOUND`; no node process dies
       of an uncaught exception; no caller sees an exception outside
       ``JidoError`` or ``AgentNotFound`` for these always-registered agents;
       no operation outlives its own timeout; every instruction is
       acknowledged within :data:`ACK_BOUND`.

Run it (about 2 minutes): ``pytest -m slow tests/distributed/nats/test_nats_chaos.py``;
``JIDO_CHAOS_SEED=<n>`` picks the schedule (default 1), ``JIDO_CHAOS_LEASE_TTL``
the membership lease (default 6 s), ``JIDO_CHAOS_REPORT=<file>`` writes a JSON
summary. ``tests/distributed/nats/chaos_tally.py`` runs it for many seeds and
tallies the outcomes.
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from typing import TextIO

import attrs
import pytest
import trio

import jido_trio as jt
from jido_trio_nats.testing import NatsServer
from jido_trio_nats.testing import start_nats_cluster

from .chaos_node import FENCED_EXIT
from .chaos_node import NOT_STARTED_EXIT
from .chaos_node import ChaosCounter  # noqa: F401 (registered: states come back typed)
from .chaos_node import Tally
from .chaos_node import config
from .conftest import new_namespace

SEED = int(os.environ.get("JIDO_CHAOS_SEED", "1"))
LEASE_TTL = float(os.environ.get("JIDO_CHAOS_LEASE_TTL", "6"))
REPORT = os.environ.get("JIDO_CHAOS_REPORT")

WORKER = Path(__file__).with_name("chaos_node.py")
ROOT = Path(__file__).parents[3]
NODES = ("n1", "n2", "n3")
AGENTS = 18
#: How often each kind of operation is drawn.
KINDS = {"durable": 6, "plain": 2, "call": 2}
#: Seconds between two operations of one producer.
PAUSE = 0.25
#: Seconds each attempt of an operation may take (its ``timeout``).
ATTEMPT_TIMEOUT = 5.0
#: Seconds within which every operation must be acknowledged.
ACK_BOUND = 60.0
#: Acknowledgements slower than this many seconds are reported.
SLOW_ACK = 10.0
#: Seconds a node process may take to exit after SIGCONT (fenced) or SIGTERM.
EXIT_BOUND = 20.0
#: Seconds a node process may take to print READY.
READY_BOUND = 60.0
#: Seconds of load before the first fault and after the last one.
WARM_UP = 4.0
COOL_DOWN = 5.0
#: Seconds the acknowledged instructions get to show up in the states at the end.
CONVERGE_BOUND = 60.0
#: Seconds for the whole test.
TOTAL_BOUND = 280.0


def now_ns() -> int:
    """CLOCK_MONOTONIC, the clock of the side logs (trio's clock has an offset)."""
    return time.monotonic_ns()


# ---------------------------------------------------------------- the schedule


@attrs.frozen
class Fault:
    #: "kill-node", "pause-node", "kill-nats" or "restart-node".
    kind: str
    #: A node name, or a server name for "kill-nats".
    target: str
    #: Seconds of load before the fault.
    after: float
    #: kill-node: seconds dead before the restart; pause-node: seconds stopped;
    #: kill-nats: seconds down.
    hold: float
    #: Agents the driver migrates to a restarted node.
    migrate: tuple[str, ...]


@attrs.frozen
class Plan:
    seed: int
    placement: dict[str, tuple[str, ...]]
    faults: tuple[Fault, ...]

    @classmethod
    def from_seed(cls, seed: int, lease_ttl: float) -> Plan:
        rng = random.Random(seed)
        agents = [f"a{i:02d}" for i in range(AGENTS)]
        rng.shuffle(agents)
        placement = {name: tuple(sorted(agents[i :: len(NODES)])) for i, name in enumerate(NODES)}
        kinds = ["kill-node", "pause-node", "kill-nats", "restart-node"]
        rng.shuffle(kinds)
        faults = []
        for kind in kinds:
            after = round(rng.uniform(2.0, 5.0), 2)
            migrate = tuple(sorted(rng.sample(agents, rng.randint(0, 2))))
            if kind == "kill-nats":
                target, hold, migrate = rng.choice(["s1", "s2", "s3"]), rng.uniform(2.0, 6.0), ()
            elif kind == "kill-node":
                # Restarted before its lease lapsed (it waits for it, and may
                # adopt its own agents first) or after (survivors took them).
                target, hold = rng.choice(NODES), rng.uniform(0.5, lease_ttl + 2.0)
            elif kind == "pause-node":
                target, hold = rng.choice(NODES), lease_ttl + rng.uniform(1.0, 3.0)
            else:
                target, hold = rng.choice(NODES), 0.0
            faults.append(Fault(kind, target, after, round(hold, 2), migrate))
        return cls(seed, placement, tuple(faults))


# ---------------------------------------------------------------- what happened


@attrs.define
class Findings:
    """What the run saw: violations fail the test, notes are reported."""

    started_ns: int = attrs.field(factory=now_ns)
    violations: list[str] = attrs.field(factory=list)
    notes: list[str] = attrs.field(factory=list)
    #: (seconds since start, what happened).
    timeline: list[tuple[float, str]] = attrs.field(factory=list)
    errors: collections.Counter[str] = attrs.field(factory=collections.Counter)
    _unexpected: dict[str, list[Any]] = attrs.field(factory=dict)

    def at(self) -> float:
        return round((now_ns() - self.started_ns) / 1e9, 2)

    def event(self, what: str) -> None:
        self.timeline.append((self.at(), what))

    def violation(self, what: str) -> None:
        self.event(f"VIOLATION {what}")
        self.violations.append(what)

    def note(self, what: str) -> None:
        self.event(f"note: {what}")
        self.notes.append(what)

    def unexpected(self, why: str, exc: BaseException, example: str) -> None:
        """A caller saw ``exc``, which it never should: one violation per
        kind, counted, with the first example."""
        key = f"{why}: {_name(exc)}"
        if key not in self._unexpected:
            self.event(f"VIOLATION {key}: {example}: {exc}")
            self._unexpected[key] = [0, f"{example}: {exc}"]
        self._unexpected[key][0] += 1

    def close_unexpected(self) -> None:
        for key, (count, example) in self._unexpected.items():
            self.violations.append(f"{key} ({count} times; first: {example})")
        self._unexpected.clear()


@attrs.define(eq=False)
class Incarnation:
    """One run of a node process."""

    pid: int
    started_ns: int
    ready: trio.Event = attrs.field(factory=trio.Event)
    exited: trio.Event = attrs.field(factory=trio.Event)
    ended_ns: int | None = None
    returncode: int | None = None
    #: The fault that ends it ("kill", "pause", "restart"), if any.
    expected: str | None = None

    @property
    def died(self) -> bool:
        """Ended abnormally: killed, fenced or crashed (not a graceful stop)."""
        return self.returncode is not None and self.returncode != 0


@attrs.define(eq=False)
class NodeProcess:
    """A chaos_node.py process, started again whenever it exits (after a
    fault's hold, when a fault ended it)."""

    name: str
    argv: list[str]
    log_path: Path
    findings: Findings
    process: subprocess.Popen[str] | None = None
    incarnations: list[Incarnation] = attrs.field(factory=list)
    #: Set by a fault that ended the process; the restart waits for it.
    hold: trio.Event | None = None
    #: Set (and replaced) whenever an incarnation becomes ready.
    _readied: trio.Event = attrs.field(factory=trio.Event)

    @property
    def current(self) -> Incarnation | None:
        return self.incarnations[-1] if self.incarnations else None

    def start(self, agent_ids: Iterable[str]) -> Incarnation:
        with self.log_path.open("a") as log:
            self.process = subprocess.Popen(
                [*self.argv, *agent_ids],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        incarnation = Incarnation(self.process.pid, now_ns())
        self.incarnations.append(incarnation)
        self.findings.event(f"{self.name} started (pid {incarnation.pid})")
        return incarnation

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the process this object started, if it still runs."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, sig)

    async def supervise(self, agent_ids: tuple[str, ...]) -> None:
        """Run the process for good: start it, see it ready, restart it when it exits."""
        while True:
            incarnation = self.start(agent_ids)
            process = self.process
            assert process is not None and process.stdout is not None
            await self._wait_ready(process, process.stdout, incarnation)
            await trio.to_thread.run_sync(process.wait, abandon_on_cancel=True)
            incarnation.ended_ns, incarnation.returncode = now_ns(), process.returncode
            process.stdout.close()
            incarnation.exited.set()
            code = process.returncode
            self.findings.event(f"{self.name} exited (pid {process.pid}, code {code})")
            if incarnation.expected is None:
                if code == FENCED_EXIT:
                    self.findings.note(f"{self.name} (pid {process.pid}) fenced itself unprompted")
                elif code == NOT_STARTED_EXIT:
                    self.findings.note(
                        f"{self.name} (pid {process.pid}) could not start: "
                        + self.log_tail(1).strip(" |")
                    )
                else:
                    self.findings.violation(
                        f"{self.name} (pid {process.pid}) died unprompted with code {code}:\n"
                        + self.log_tail()
                    )
            if self.hold is not None:
                await self.hold.wait()
            else:
                await trio.sleep(0.5)

    async def _wait_ready(
        self, process: subprocess.Popen[str], stdout: TextIO, incarnation: Incarnation
    ) -> None:
        with trio.move_on_after(READY_BOUND):
            line = await trio.to_thread.run_sync(stdout.readline, abandon_on_cancel=True)
            if line.strip() == "READY":
                incarnation.ready.set()
                self._readied.set()
                self._readied = trio.Event()
                self.findings.event(f"{self.name} ready (pid {process.pid})")
            return  # or it exited first
        self.findings.violation(f"{self.name} (pid {process.pid}) not ready in {READY_BOUND}s")
        incarnation.expected = "kill"
        self.signal(signal.SIGKILL)

    async def restarted(self, before: Incarnation) -> None:
        """Let a process a fault ended start again; return once it is ready."""
        assert self.hold is not None
        self.hold.set()
        self.hold = None
        await self.ready_after(before)

    async def ready_after(self, before: Incarnation | None) -> Incarnation:
        """The first ready incarnation other than ``before``."""
        while True:
            readied = self._readied
            current = self.current
            if current is not None and current is not before and current.ready.is_set():
                return current
            await readied.wait()

    async def wait_exit(self, incarnation: Incarnation, what: str) -> None:
        with trio.move_on_after(EXIT_BOUND):
            await incarnation.exited.wait()
            return
        self.findings.violation(
            f"{self.name} (pid {incarnation.pid}) did not exit within {EXIT_BOUND}s of {what}:\n"
            + self.log_tail()
        )
        self.signal(signal.SIGKILL)
        await incarnation.exited.wait()

    def log_tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(f"    | {line}" for line in text[-lines:])


@attrs.frozen
class Ack:
    agent: str
    op: str
    kind: str
    status: str
    sent_ns: int
    acked_ns: int


# ---------------------------------------------------------------- the driver


@attrs.define(eq=False)
class Driver:
    """The load: one producer per agent, through a driver node of this
    process that is opened again (under a new name) if it is fenced."""

    namespace: str
    urls: list[str]
    findings: Findings
    refs: dict[str, jt.AgentRef] = attrs.field(factory=dict)
    acks: dict[str, Ack] = attrs.field(factory=dict)
    sent: set[str] = attrs.field(factory=set)
    node: jt.Node | None = None
    available: trio.Event = attrs.field(factory=trio.Event)
    closing: trio.Event = attrs.field(factory=trio.Event)
    #: Operations acknowledged only after :data:`SLOW_ACK` seconds, with the
    #: errors their attempts saw.
    slow: list[tuple[float, str, list[list[Any]]]] = attrs.field(factory=list)

    async def run_node(self) -> None:
        generation = 0
        while not self.closing.is_set():
            name = "driver" if generation == 0 else f"driver-{generation}"
            generation += 1
            node_config = attrs.evolve(
                config(name, self.namespace, self.urls, LEASE_TTL), failover=False
            )
            try:
                async with jt.open_node(node_config) as node:
                    self.node = node
                    self.available.set()
                    await self.closing.wait()
            except jt.NodeFenced as exc:
                self.findings.note(f"the driver node {name} was fenced: {exc}")
            except jt.JidoError as exc:
                # Opening while JetStream elects a leader may time out: again.
                self.findings.note(f"the driver node {name} failed: {_name(exc)}: {exc}")
                await trio.sleep(1.0)
            finally:
                self.node = None
                if self.available.is_set():
                    self.available = trio.Event()

    async def get(self) -> jt.Node:
        while self.node is None:
            await self.available.wait()
        return self.node

    async def lookup_all(self, agent_ids: Iterable[str]) -> None:
        for agent_id in agent_ids:
            node = await self.get()
            with trio.fail_after(30):
                while True:
                    try:
                        self.refs[agent_id] = await node.lookup(agent_id)
                        break
                    except jt.JidoError:
                        await trio.sleep(0.2)

    async def produce(self, agent_id: str, rng: random.Random, stop: trio.Event) -> None:
        kinds, weights = list(KINDS), list(KINDS.values())
        n = 0
        while not stop.is_set():
            kind = rng.choices(kinds, weights)[0]
            op = f"{kind[0]}-{agent_id}-{n}"
            n += 1
            await self.until_acked(agent_id, op, kind)
            await trio.sleep(PAUSE)

    async def until_acked(self, agent_id: str, op: str, kind: str) -> None:
        ref = self.refs[agent_id]  # never looked up again: refs follow agents
        instruction = jt.Instruction("add", {"op": op}, id=op)
        self.sent.add(op)
        sent_ns = now_ns()
        deadline = trio.current_time() + ACK_BOUND
        trail: list[list[Any]] = []  # [error, times, first at, last at]
        while trio.current_time() < deadline:
            node = await self.get()
            status: str | None = None
            with trio.move_on_after(ATTEMPT_TIMEOUT + 5.0) as guard:
                try:
                    status = await _attempt(node, ref, instruction, kind)
                except (jt.ActionError, jt.ActionNotFound, jt.InvalidMessage) as exc:
                    self.findings.violation(f"{kind} {op}: {_name(exc)}: {exc}")
                    return
                except Exception as exc:
                    name = _name(exc)
                    self.findings.errors[f"{kind}: {name}"] += 1
                    at = self.findings.at()
                    if trail and trail[-1][0] == name:
                        trail[-1][1:] = [trail[-1][1] + 1, trail[-1][2], at]
                    else:
                        trail.append([name, 1, at, at])
                    why = _unexpected(exc)
                    if why is not None:
                        self.findings.unexpected(why, exc, f"{kind} {op}")
            if guard.cancelled_caught:
                self.findings.violation(
                    f"{kind} {op}: an attempt outlived its {ATTEMPT_TIMEOUT}s timeout by 5s"
                )
            if status is not None:
                acked_ns = now_ns()
                self.acks[op] = Ack(agent_id, op, kind, status, sent_ns, acked_ns)
                waited = round((acked_ns - sent_ns) / 1e9, 2)
                if waited > SLOW_ACK:
                    self.slow.append((waited, f"{op} acked at {self.findings.at()}s", trail))
                return
            await trio.sleep(min(1.0, 0.2 * trail[-1][1]))
        self.findings.violation(
            f"{kind} {op} to {agent_id} not acknowledged in {ACK_BOUND}s: {trail}"
        )

    async def migrate(self, agent_ids: Iterable[str], target: str) -> None:
        for agent_id in agent_ids:
            node = await self.get()
            try:
                with trio.fail_after(30):
                    moved = await node.migrate(agent_id, target, timeout=15.0)
                self.findings.event(f"migrated {agent_id} to {moved.node}")
            except trio.TooSlowError:
                self.findings.violation(f"migrating {agent_id} to {target} outlived its timeout")
            except Exception as exc:
                why = _unexpected(exc)
                if why is None:
                    self.findings.note(f"migrating {agent_id} to {target}: {_name(exc)}: {exc}")
                else:
                    self.findings.unexpected(why, exc, f"migrate {agent_id} to {target}")

    async def final_states(self) -> dict[str, Tally]:
        """Every agent's state once every acknowledged durable and call id is
        in it (or :data:`CONVERGE_BOUND` passed) and it stopped changing."""
        expected: dict[str, set[str]] = collections.defaultdict(set)
        for ack in self.acks.values():
            if ack.kind != "plain":
                expected[ack.agent].add(ack.op)
        states: dict[str, Tally] = {}
        deadline = trio.current_time() + CONVERGE_BOUND
        for agent_id in self.refs:
            while True:
                states[agent_id] = state = await self._query(agent_id, deadline)
                done = expected[agent_id] <= {entry[0] for entry in state.applied}
                if done or trio.current_time() >= deadline:
                    break
                await trio.sleep(0.5)
        for _ in range(5):  # settled: two reads in a row see the same states
            await trio.sleep(1.0)
            again = {a: await self._query(a, trio.current_time() + 30) for a in self.refs}
            if again == states:
                break
            states = again
        return states

    async def _query(self, agent_id: str, deadline: float) -> Tally:
        while True:
            node = await self.get()
            try:
                state = await node.query_agent(self.refs[agent_id], timeout=ATTEMPT_TIMEOUT)
                assert isinstance(state, Tally), state
                return state
            except jt.JidoError:
                if trio.current_time() >= deadline + 30:
                    raise
                await trio.sleep(0.5)

    async def dead_letters(self) -> dict[str, set[str]]:
        node = await self.get()
        found: dict[str, set[str]] = {}
        for agent_id in self.refs:
            letters = await node.dead_letters(agent_id)
            found[agent_id] = {
                m.payload.id for m in letters if isinstance(m.payload, jt.Instruction)
            }
        return found


async def _attempt(node: jt.Node, ref: jt.AgentRef, instruction: jt.Instruction, kind: str) -> str:
    if kind == "call":
        try:
            await node.call(ref, instruction, timeout=ATTEMPT_TIMEOUT)
        except jt.AlreadyProcessed:
            return "already_processed"
        return "replied"
    delivery = "at_least_once" if kind == "durable" else "at_most_once"
    receipt = await node.send_instruction(
        ref, instruction, delivery=delivery, timeout=ATTEMPT_TIMEOUT
    )
    return receipt.status


def _unexpected(exc: BaseException) -> str | None:
    """Why a caller should never see ``exc`` here, or ``None``."""
    if not isinstance(exc, jt.JidoError):
        return "not a JidoError"
    if getattr(jt, type(exc).__name__, None) is not type(exc):
        return "a private exception class"
    if isinstance(exc, jt.AgentNotFound):
        return "AgentNotFound for an agent registered all along"
    return None


def _name(exc: BaseException) -> str:
    cls = type(exc)
    if cls.__module__.split(".")[0] == "jido_trio":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


# ---------------------------------------------------------------- the faults


@attrs.define(eq=False)
class Chaos:
    plan: Plan
    nodes: dict[str, NodeProcess]
    servers: dict[str, NatsServer]
    driver: Driver
    findings: Findings
    #: When each fault began, and when the load stopped.
    began: list[tuple[Fault, int]] = attrs.field(factory=list)
    load_stopped: int = 0

    async def run(self) -> None:
        for fault in self.plan.faults:
            await trio.sleep(fault.after)
            self.began.append((fault, now_ns()))
            self.findings.event(f"fault {fault.kind} {fault.target} hold {fault.hold}s")
            if fault.kind == "kill-nats":
                await self.kill_nats(self.servers[fault.target], fault.hold)
                continue
            node = self.nodes[fault.target]
            # A node that fenced itself meanwhile is back before the next fault.
            before = await node.ready_after(None)
            node.hold = trio.Event()
            if fault.kind == "kill-node":
                before.expected = "kill"
                node.signal(signal.SIGKILL)
                await before.exited.wait()
                await trio.sleep(fault.hold)
            elif fault.kind == "pause-node":
                await self.pause(node, before, fault.hold)
            else:
                before.expected = "restart"
                node.signal(signal.SIGTERM)
                await node.wait_exit(before, "SIGTERM")
                if before.returncode != 0:
                    self.findings.violation(
                        f"{node.name} (pid {before.pid}) ended with code {before.returncode} "
                        "after SIGTERM, not 0:\n" + node.log_tail()
                    )
            await node.restarted(before)
            await self.driver.migrate(fault.migrate, node.name)

    async def pause(self, node: NodeProcess, before: Incarnation, hold: float) -> None:
        before.expected = "pause"
        node.signal(signal.SIGSTOP)
        self.findings.event(f"{node.name} stopped (pid {before.pid})")
        await trio.sleep(hold)
        node.signal(signal.SIGCONT)
        self.findings.event(f"{node.name} continued (pid {before.pid})")
        await node.wait_exit(before, "SIGCONT after a pause past its lease")
        if before.returncode != FENCED_EXIT:
            self.findings.violation(
                f"{node.name} (pid {before.pid}) paused past its lease ended with code "
                f"{before.returncode}, not {FENCED_EXIT} (fenced):\n" + node.log_tail()
            )

    async def kill_nats(self, server: NatsServer, hold: float) -> None:
        server.kill()  # SIGKILL by the PID start_nats_cluster started
        self.findings.event(f"nats {server.name} killed")
        await trio.sleep(hold)
        server.start()
        await trio.to_thread.run_sync(server.wait_ready)
        self.findings.event(f"nats {server.name} ready again")


# ---------------------------------------------------------------- the checks


def check(
    findings: Findings,
    acks: dict[str, Ack],
    sent: set[str],
    states: dict[str, Tally],
    dead: dict[str, set[str]],
    side: list[dict[str, Any]],
    incarnations: list[Incarnation],
) -> dict[str, int]:
    """Add a violation for every broken promise (see the module doc); return counts."""
    records = {(r["pid"], r["seq"]): r for r in side}
    by_agent: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for record in side:
        by_agent[record["agent"]].append(record)
    deaths = {i.pid: i.ended_ns for i in incarnations if i.died and i.ended_ns is not None}
    codes = {i.pid: i.returncode for i in incarnations}
    acked_by_agent: dict[str, list[Ack]] = collections.defaultdict(list)
    for ack in acks.values():
        acked_by_agent[ack.agent].append(ack)
    counts: collections.Counter[str] = collections.Counter()

    for agent_id, state in sorted(states.items()):
        applied = [entry[0] for entry in state.applied]
        applied_set = set(applied)
        counts["applied"] += len(applied)
        twice = sorted(op for op, n in collections.Counter(applied).items() if n > 1)
        if twice:
            findings.violation(f"{agent_id}: applied more than once: {twice[:10]}")
        unknown = sorted(applied_set - sent)
        if unknown:
            findings.violation(f"{agent_id}: applied but never sent: {unknown[:10]}")

        history = sorted(by_agent[agent_id], key=lambda r: r["t"])
        counts["applications"] += len(history)
        for ack in acked_by_agent[agent_id]:
            counts[f"acked {ack.kind}"] += 1
            if ack.op in applied_set:
                continue
            if ack.kind != "plain":
                letter = " (dead-lettered)" if ack.op in dead[agent_id] else ""
                # Where it got to: applied (and undone) where, by whom.
                where = [
                    f"{r['node']} pid {r['pid']} (exit {codes.get(r['pid'])}) at epoch "
                    f"{r['epoch']}, {(r['t'] - ack.acked_ns) / 1e9:+.2f}s from the ack"
                    for r in history
                    if r["op"] == ack.op
                ]
                findings.violation(
                    f"{agent_id}: acknowledged {ack.kind} {ack.op} ({ack.status}) lost{letter}; "
                    f"applied uncommitted by: {where or 'nobody'}"
                )
            elif ack.op in dead[agent_id]:
                counts["plain dead-lettered"] += 1
            elif _holder_died(ack, history, deaths):
                counts["plain lost with its process"] += 1
            else:
                findings.violation(
                    f"{agent_id}: plain send {ack.op} accepted, then lost while its node lived"
                )

        # Never two owners: see the module doc, check 3.
        newest_before: list[int] = []  # the largest epoch applied before each record
        newest = 0
        for record in history:
            newest_before.append(newest)
            newest = max(newest, record["epoch"])
        position = {(r["pid"], r["seq"]): i for i, r in enumerate(history)}
        last_epoch, last_t = 0, 0
        for op, epoch, pid, seq in state.applied:
            record = records.get((pid, seq))
            if record is None or record["agent"] != agent_id or record["op"] != op:
                findings.violation(f"{agent_id}: committed {op} (pid {pid} seq {seq}) not logged")
                continue
            if record["epoch"] != epoch:
                findings.violation(
                    f"{agent_id}: {op} logged at epoch {record['epoch']}, kept {epoch}"
                )
            if epoch < last_epoch:
                findings.violation(
                    f"{agent_id}: {op} committed at epoch {epoch} after {last_epoch}"
                )
            if record["t"] < last_t:
                findings.violation(f"{agent_id}: {op} committed out of application order")
            last_epoch, last_t = epoch, record["t"]
            if newest_before[position[(pid, seq)]] > epoch:
                newer = next(r for r in history if r["epoch"] > epoch and r["t"] < record["t"])
                findings.violation(
                    f"{agent_id}: {op} applied at epoch {epoch} on {record['node']} was "
                    f"committed although {newer['node']} had applied {newer['op']} at epoch "
                    f"{newer['epoch']} before it"
                )
        counts["epochs"] += len({entry[1] for entry in state.applied})
    counts["applied again after a failed commit"] = counts["applications"] - counts["applied"]
    return dict(counts)


def fault_windows(chaos: Chaos, acks: dict[str, Ack]) -> list[str]:
    """For each fault, the longest wait for an acknowledgement of the
    operations sent from its start to the next fault's (or the load's end):
    how long an agent could be unavailable to a retrying client."""
    bounds = [t for _, t in chaos.began[1:]] + [chaos.load_stopped]
    lines = []
    for (fault, start), end in zip(chaos.began, bounds, strict=True):
        waits = sorted(
            (a.acked_ns - a.sent_ns) / 1e9 for a in acks.values() if start <= a.sent_ns < end
        )
        if waits:
            p95 = waits[int(0.95 * (len(waits) - 1))]
            lines.append(
                f"{fault.kind} {fault.target}: {len(waits)} ops, longest wait "
                f"{waits[-1]:.1f}s, p95 {p95:.2f}s, {sum(w > 5 for w in waits)} over 5s"
            )
    return lines


def _holder_died(ack: Ack, history: list[dict[str, Any]], deaths: dict[int, int]) -> bool:
    """Whether a process that held the agent when ``ack`` was received (its
    last application before, or one within 10 s after) died after it."""
    holders = set()
    before = [r for r in history if r["t"] <= ack.acked_ns]
    if before:
        holders.add(before[-1]["pid"])
    holders |= {r["pid"] for r in history if ack.acked_ns < r["t"] <= ack.acked_ns + 10**10}
    return any(deaths.get(pid, -1) >= ack.acked_ns for pid in holders)


def read_side_logs(directory: Path) -> list[dict[str, Any]]:
    records = []
    for path in sorted(directory.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            if line:  # a SIGKILL cannot cut a line: each is one write
                records.append(json.loads(line))
    return records


# ---------------------------------------------------------------- the test


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals to real processes")
async def test_chaos_under_load(tmp_path: Path) -> None:
    plan = Plan.from_seed(SEED, LEASE_TTL)
    findings = Findings()
    findings.event(f"seed {SEED}, lease_ttl {LEASE_TTL}s, faults {plan.faults}")
    side_dir = tmp_path / "side"
    side_dir.mkdir()
    namespace = new_namespace()
    summary: dict[str, Any] = {"seed": SEED, "lease_ttl": LEASE_TTL}
    states: dict[str, Tally] = {}
    try:
        with start_nats_cluster(3, store_dir=tmp_path / "nats") as server_list:
            servers = {server.name: server for server in server_list}
            urls = [server.url for server in server_list]
            driver = Driver(namespace, urls, findings)
            nodes = {
                name: NodeProcess(
                    name,
                    [
                        sys.executable,
                        str(WORKER),
                        name,
                        namespace,
                        ",".join(urls),
                        str(side_dir),
                        str(LEASE_TTL),
                    ],
                    tmp_path / f"{name}.log",
                    findings,
                )
                for name in NODES
            }
            chaos = Chaos(plan, nodes, servers, driver, findings)
            try:
                with trio.fail_after(TOTAL_BOUND):
                    async with trio.open_nursery() as nursery:
                        for name, node in nodes.items():
                            nursery.start_soon(node.supervise, plan.placement[name])
                        nursery.start_soon(driver.run_node)
                        for node in nodes.values():
                            await node.ready_after(None)
                        await driver.lookup_all(
                            a for names in plan.placement.values() for a in names
                        )
                        await _load_through(driver, chaos, plan)
                        states = await driver.final_states()
                        dead = await driver.dead_letters()
                        last = {}
                        for name, node in nodes.items():
                            last[name] = await node.ready_after(None)
                            node.hold = trio.Event()  # no restarts from here on
                            last[name].expected = "restart"
                            node.signal(signal.SIGTERM)
                        for name, node in nodes.items():
                            await node.wait_exit(last[name], "SIGTERM at the end")
                        driver.closing.set()
                        nursery.cancel_scope.cancel()
            finally:
                for node in nodes.values():
                    node.signal(signal.SIGKILL)
                    if node.process is not None:
                        node.process.wait()
        incarnations = [i for node in nodes.values() for i in node.incarnations]
        summary["counts"] = check(
            findings,
            driver.acks,
            driver.sent,
            states,
            dead,
            read_side_logs(side_dir),
            incarnations,
        )
        summary["slow_acks"] = sorted(driver.slow, reverse=True)[:8]
        summary["windows"] = fault_windows(chaos, driver.acks)
        await trio.Path(tmp_path / "acks.jsonl").write_text(
            "".join(json.dumps(attrs.asdict(ack)) + "\n" for ack in driver.acks.values())
        )
    finally:
        findings.close_unexpected()
        summary.update(
            seconds=findings.at(),
            violations=findings.violations,
            notes=findings.notes,
            errors=dict(findings.errors),
            timeline=findings.timeline,
            artifacts=str(tmp_path),
        )
        if REPORT:
            await trio.Path(REPORT).write_text(json.dumps(summary, indent=1, default=str))
        print(
            json.dumps({k: summary[k] for k in summary if k != "timeline"}, indent=1, default=str)
        )
    assert not findings.violations, "\n".join(
        [
            f"seed {SEED}: {len(findings.violations)} violation(s); artifacts in {tmp_path}",
            *findings.violations[:30],
        ]
    )


async def _load_through(driver: Driver, chaos: Chaos, plan: Plan) -> None:
    """Run the producers through the warm-up, the faults and the cool-down."""
    stop = trio.Event()
    async with trio.open_nursery() as producers:
        for i, agent_id in enumerate(sorted(driver.refs)):
            rng = random.Random(f"{plan.seed}-{agent_id}")
            producers.start_soon(driver.produce, agent_id, rng, stop)
            if i % 6 == 5:
                await trio.sleep(0.05)  # staggered, not all at once
        await trio.sleep(WARM_UP)
        await chaos.run()
        await trio.sleep(COOL_DOWN)
        stop.set()
    chaos.load_stopped = now_ns()


def test_the_checks_catch_each_broken_promise() -> None:
    """The checks of the chaos test, on made-up histories: a clean one passes,
    and each kind of broken promise is reported."""
    second = 10**9

    def record(op: str, epoch: int, pid: int, seq: int, t: int) -> dict[str, Any]:
        return {"agent": "a", "op": op, "epoch": epoch, "node": f"p{pid}", "pid": pid,
                "seq": seq, "t": t * second}  # fmt: skip

    def ack(op: str, kind: str = "durable", at: int = 0) -> Ack:
        return Ack("a", op, kind, "accepted", at * second, at * second)

    def run(
        applied: list[tuple[str, int, int, int]],
        side: list[dict[str, Any]],
        acks: list[Ack],
        *,
        died: dict[int, int] | None = None,
    ) -> list[str]:
        findings = Findings()
        incarnations = [
            Incarnation(pid, 0, ended_ns=t * second, returncode=-9)
            for pid, t in (died or {}).items()
        ]
        check(
            findings,
            {a.op: a for a in acks},
            {a.op for a in acks} | {r["op"] for r in side},
            {"a": Tally(applied=tuple(applied))},
            {"a": set()},
            side,
            incarnations,
        )
        return findings.violations

    # Clean: x and y by epoch 1; z applied at epoch 1 but not committed (its
    # commit failed), then by epoch 2.
    side = [record("x", 1, 7, 1, 1), record("y", 1, 7, 2, 2), record("z", 1, 7, 3, 3)]
    side.append(record("z", 2, 8, 1, 5))
    applied = [("x", 1, 7, 1), ("y", 1, 7, 2), ("z", 2, 8, 1)]
    acks = [ack("x"), ack("y"), ack("z", "call")]
    assert run(applied, side, acks) == []
    # An acknowledged instruction missing from the state.
    assert "acknowledged durable y (accepted) lost" in run(applied[::2], side, acks)[0]
    # Applied twice.
    twice = [*applied, ("y", 2, 8, 2)]
    assert "more than once" in run(twice, [*side, record("y", 2, 8, 2, 6)], acks)[0]
    # An older owner committed after a newer one had applied something.
    zombie = [*side, record("w", 1, 7, 4, 6)]
    found = run([*applied, ("w", 1, 7, 4)], zombie, [*acks, ack("w")])
    assert any("epoch 1 after 2" in v for v in found)
    assert any("although p8 had applied z at epoch 2 before it" in v for v in found)
    # A plain send lost: fine if the process holding the agent died after it
    # was accepted, not otherwise.
    lost = [*acks, ack("v", "plain", at=4)]
    assert run(applied, side, lost, died={7: 5}) == []
    assert "lost while its node lived" in run(applied, side, lost)[0]
