"""jido_trio demo: many agents doing real work, crashes, recovery, and a summary.

Runs on the local defaults (in-memory registry, transport, coordination and state;
no server) and needs nothing but the jido_trio package::

    python examples/demo.py

What it shows:

1. two supervisors with 100 counter agents each (200 agents);
2. 5,000 instructions sent concurrently by 50 tasks (a Trio nursery) while a chaos
   task crashes agents: three with ``jido_trio.testing.crash_agent`` and two through
   an action that raises;
3. recovery: the crashed agents keep their ids and their persisted state, the
   supervision tree counts the restarts, health goes degraded -> healthy, and
   instructions sent while an agent restarts wait in its mailbox;
4. idempotency: the same instruction id sent twice is applied once;
5. a temporary agent that crashes is gone for good (``AgentUnavailable``);
6. the four health states;
7. a SUMMARY that checks that nothing was lost and nothing was applied twice:
   the expected total equals the sum of every agent's state read back with
   ``node.query_agent``. The exit status is 1 if any check fails.
"""

from __future__ import annotations

import random
import sys
import time
from collections import Counter as Tally
from typing import Any

import attrs
import trio

import jido_trio as jt
from jido_trio.testing import crash_agent

AGENTS = 200
SUPERVISORS = ("pool-a", "pool-b")
INSTRUCTIONS = 5_000
SENDERS = 50
SEED = 2024
#: The node reports an agent DEGRADED for ``Config.max_seconds`` after a restart
#: (the restart-intensity window); a short one keeps the demo short.
RECOVERY_WINDOW = 1.0


@attrs.frozen
class Totals:
    """A counter agent's state: the sum of what it was asked to add, and how often."""

    total: int = 0
    applied: int = 0


class Counter(jt.Agent):
    type = "counter"
    State = Totals

    @jt.action("add")
    async def add(self, state: Totals, n: int) -> Totals:
        return attrs.evolve(state, total=state.total + n, applied=state.applied + 1)

    @jt.action("explode")
    async def explode(self, state: Totals) -> None:
        raise RuntimeError("the action failed on purpose")

    @jt.action("get")
    async def get(self, state: Totals) -> None:
        self.ctx.reply(state.total)


class Observer:
    """A plugin that only observes: counts lifecycle events through the hooks."""

    def __init__(self) -> None:
        self.events: Tally[str] = Tally()

    @jt.hookimpl
    def jido_trio_agent_restarted(self, ref: jt.AgentRef, restarts: int) -> None:
        self.events["agent restarted"] += 1

    @jt.hookimpl
    def jido_trio_message_dead_lettered(self, message: jt.Message, reason: str) -> None:
        self.events["dead letters"] += 1


def section(title: str) -> None:
    print(f"\n== {title}")


def child_status(info: jt.SupervisorInfo, child_id: str) -> str:
    for child in info.children:
        if isinstance(child, jt.SupervisorInfo):
            found = child_status(child, child_id)
            if found:
                return found
        elif child.id == child_id:
            return child.status
    return ""


def tree_lines(info: jt.SupervisorInfo | jt.ChildInfo, depth: int = 0) -> list[str]:
    """Supervisors in full; agents only when they have restarted."""
    pad = "   " + "  " * depth
    if isinstance(info, jt.ChildInfo):
        if info.restarts == 0:
            return []
        return [
            f"{pad}{info.id}: {info.status}, restarts={info.restarts}, last={info.last_failure}"
        ]
    agents = sum(isinstance(c, jt.ChildInfo) for c in info.children)
    lines = [f"{pad}{info.id} [{info.strategy}] {info.status}, {agents} agents"]
    for child in info.children:
        lines.extend(tree_lines(child, depth + 1))
    return lines


async def main() -> int:
    observer = Observer()
    config = jt.Config(node_name="demo", max_seconds=RECOVERY_WINDOW)
    rng = random.Random(SEED)
    expected: Tally[str] = Tally()  # agent id -> sum of accepted "add" amounts
    accepted: Tally[str] = Tally()  # agent id -> number of accepted "add" instructions
    checks: dict[str, bool] = {}
    started = time.perf_counter()

    async with jt.open_node(config, plugins=[observer]) as node:
        print(
            f"jido_trio demo: node {node.name!r} on local defaults "
            f"(registry={config.registry}, transport={config.transport}, state={config.state})"
        )

        section(f"1. start {AGENTS} agents under {len(SUPERVISORS)} supervisors")
        supervisors = [
            await node.start_supervisor(name, strategy="one_for_one", max_restarts=10)
            for name in SUPERVISORS
        ]
        refs: list[jt.AgentRef] = []
        for i in range(AGENTS):
            sup = supervisors[i % len(supervisors)]
            refs.append(await node.start_agent(Counter, f"counter-{i:03d}", supervisor=sup))
        first = refs[0]
        print(
            f"   {len(node.agents())} agents running; a ref is a plain value: "
            f"AgentRef(id={first.id!r}, type={first.type!r}, node={first.node!r})"
        )

        section(f"2. {INSTRUCTIONS:,} instructions from {SENDERS} concurrent senders, with chaos")
        plan = [(rng.choice(refs), rng.randint(1, 9)) for _ in range(INSTRUCTIONS)]
        victims = rng.sample(refs, 6)  # distinct agents to crash
        crashed, exploded, temp_victim = victims[:3], victims[3:5], victims[5]
        progress = trio.Event()
        sent = 0

        async def sender(work: list[tuple[jt.AgentRef, int]]) -> None:
            nonlocal sent
            for ref, n in work:
                receipt = await node.send_instruction(ref, jt.Instruction("add", {"n": n}))
                if receipt.status == "accepted":
                    expected[ref.id] += n
                    accepted[ref.id] += 1
                sent += 1
                if sent == INSTRUCTIONS // 5:
                    progress.set()

        async def chaos() -> None:
            await progress.wait()  # strike while the load is running
            with trio.fail_after(5):
                for ref in crashed:
                    await crash_agent(node, ref)
                    status = child_status(node.supervision_tree(), ref.id)
                    # Sent while the agent restarts: it waits in the mailbox.
                    receipt = await node.send_instruction(ref, jt.Instruction("add", {"n": 100}))
                    expected[ref.id] += 100
                    accepted[ref.id] += 1
                    print(
                        f"   chaos: crash_agent({ref.id}) -> {status}; "
                        f"sent +100 meanwhile: {receipt.status}"
                    )
                for ref in exploded:
                    try:
                        await node.call(ref, jt.Instruction("explode"))
                    except jt.ActionError as exc:
                        print(
                            f"   chaos: call({ref.id}, 'explode') -> ActionError: {exc.__cause__!r}"
                        )

        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(chaos)
            for k in range(SENDERS):
                nursery.start_soon(sender, plan[k::SENDERS])
        elapsed = time.perf_counter() - t0
        print(f"   {sent:,} instructions accepted in {elapsed:.2f} s ({sent / elapsed:,.0f}/s)")

        section("3. recovery: same ids, persisted state, restart counts")
        ref = crashed[0]
        health = await node.check_agent_health(ref)
        value = await node.call(ref, jt.Instruction("get"))
        print(
            f"   {ref.id}: same id, health={health.value}, "
            f"total={value} (expected {expected[ref.id]}, reloaded from persisted state)"
        )
        for line in tree_lines(node.supervision_tree()):
            print(line)
        await trio.sleep(RECOVERY_WINDOW)
        healths = Tally([(await node.check_agent_health(r)).value for r in crashed + exploded])
        print(f"   {RECOVERY_WINDOW:.0f} s later the 5 restarted agents are: {dict(healths)}")
        checks["restarted agents healthy again"] = healths == Tally({"healthy": 5})

        section("4. idempotency: one instruction id, delivered twice")
        dup = jt.Instruction("add", {"n": 7}, id="demo-payment-0001")
        first = await node.send_instruction(refs[1], dup)
        second = await node.send_instruction(refs[1], dup)
        expected[refs[1].id] += 7
        accepted[refs[1].id] += 1
        print(f"   first receipt: {first.status}; second receipt: {second.status}")
        checks["duplicate refused"] = (first.status, second.status) == (
            "accepted",
            "already_processed",
        )

        section("5. a temporary agent is not restarted")
        temp = await node.start_agent(Counter, "scratchpad", restart="temporary")
        await crash_agent(node, temp)
        try:
            await node.send_instruction(temp, jt.Instruction("add", {"n": 1}))
            print("   unexpected: the temporary agent still answers")
            checks["temporary agent gone"] = False
        except jt.AgentUnavailable as exc:
            print(f"   after its crash: AgentUnavailable: {exc}")
            checks["temporary agent gone"] = True

        section("6. health states")
        elsewhere = jt.AgentRef.new(temp_victim.id, "counter", node="another-node")
        states = {
            "running agent": await node.check_agent_health(refs[2]),
            "remote ref, local-only transport": await node.check_agent_health(elsewhere),
            "crashed temporary agent": await node.check_agent_health(temp),
            "unknown id": await node.check_agent_health(jt.AgentRef.new("nobody", "counter")),
        }
        for what, state in states.items():
            print(f"   {what:34} -> {state.name}")

        section("SUMMARY")
        want_total = sum(expected.values())
        want_applied = sum(accepted.values())
        got: dict[str, Any] = {}
        for ref in refs:
            got[ref.id] = await node.query_agent(ref, consistency="strong")
        eventual = [await node.query_agent(ref, consistency="eventual") for ref in refs]
        got_total = sum(s.total for s in got.values())
        got_applied = sum(s.applied for s in got.values())
        wrong = [i for i, s in got.items() if (s.total, s.applied) != (expected[i], accepted[i])]
        restarts = sum(
            c.restarts
            for sup in node.supervision_tree().children
            if isinstance(sup, jt.SupervisorInfo)
            for c in sup.children
        )
        checks["expected total == sum of agent states"] = got_total == want_total
        checks["every instruction applied exactly once"] = got_applied == want_applied
        checks["every agent matches its expectation"] = not wrong
        checks["eventual reads agree with strong reads"] = eventual == list(got.values())
        checks["5 restarts in the tree"] = restarts == 5
        checks["no dead letters"] = observer.events["dead letters"] == 0
        print(
            f"   agents: {len(refs)} under {len(SUPERVISORS)} supervisors; "
            f"restarts in tree: {restarts}; hook events: {dict(observer.events)}"
        )
        print(
            f"   instructions accepted: {want_applied:,}; applied (sum of states): {got_applied:,}"
        )
        print(f"   expected total: {want_total:,}; sum of agent states: {got_total:,}")
        if wrong:
            print(f"   agents off their expectation: {', '.join(wrong[:10])}")
        for name, ok in checks.items():
            print(f"   [{'ok' if ok else 'FAILED'}] {name}")

    passed = all(checks.values())
    took = time.perf_counter() - started
    print(f"RESULT: {'OK, nothing lost' if passed else 'FAILED'} ({took:.1f} s)")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(trio.run(main))
