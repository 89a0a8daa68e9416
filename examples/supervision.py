"""Supervision trees: strategies, restart types, intensity and escalation, shutdown.

python examples/supervision.py
"""

from __future__ import annotations

import attrs
import trio
import trio.testing

import jido_trio as jt
from jido_trio.testing import crash_agent


@attrs.frozen
class Jobs:
    done: int = 0


class Worker(jt.Agent):
    type = "worker"
    State = Jobs

    @jt.action("work")
    async def work(self, state: Jobs) -> Jobs:
        self.ctx.reply(state.done + 1)
        return attrs.evolve(state, done=state.done + 1)

    async def on_stop(self, state: Jobs, reason: str) -> None:
        # Runs on a graceful stop (stop_agent, node shutdown), shielded, within
        # the shutdown timeout; not after a crash.
        print(f"  on_stop {self.ctx.ref.id}: {reason}, {state.done} jobs done")


async def heartbeat(*, task_status: trio.TaskStatus[None]) -> None:
    """A plain function child: ready once it calls task_status.started()."""
    task_status.started()
    beats = 0
    while True:
        await trio.sleep(1)
        beats += 1


def show(info: jt.SupervisorInfo | jt.ChildInfo, depth: int = 0) -> None:
    pad = "  " * depth
    if isinstance(info, jt.SupervisorInfo):
        failure = f" last_failure={info.last_failure!r}" if info.last_failure else ""
        print(f"{pad}{info.id} [{info.strategy}] {info.status} restarts={info.restarts}{failure}")
        for child in info.children:
            show(child, depth + 1)
    else:
        failure = f" last_failure={info.last_failure!r}" if info.last_failure else ""
        print(f"{pad}{info.id} ({info.kind}) {info.status} restarts={info.restarts}{failure}")


async def main() -> None:
    with trio.fail_after(10):
        async with jt.open_node(name="sup-demo") as node:
            # one_for_all: the children depend on each other; one fails, all restart.
            db = await node.start_supervisor("db", strategy="one_for_all")
            replicas = [await node.start_agent(Worker, f"db-{i}", supervisor=db) for i in range(2)]
            await db.start_child(jt.ChildSpec(id="heartbeat", start=heartbeat))

            # rest_for_one: a pipeline; a stage that fails restarts the stages after it.
            pipeline = await node.start_supervisor(
                "pipeline", strategy="rest_for_one", backoff=jt.Backoff(initial=0.01)
            )
            stages = [
                await node.start_agent(Worker, name, supervisor=pipeline)
                for name in ("fetch", "parse", "store")
            ]
            # A temporary child is never restarted.
            oneshot = await node.start_agent(
                Worker, "oneshot", restart="temporary", supervisor=pipeline
            )

            for ref in [*replicas, *stages]:
                await node.call(ref, jt.Instruction("work"))

            print("crash db-1: one_for_all stops the other children of 'db', restarts all")
            await crash_agent(node, replicas[1])
            # A call waits in the mailbox until the agent is back, then answers
            # from the persisted state: the job count survived the crash.
            done = await node.call(replicas[1], jt.Instruction("work"))
            print(f"db-1 answers again with the same id: {done} jobs done")

            print("crash parse: rest_for_one restarts parse and store; oneshot is dropped")
            await crash_agent(node, stages[1])
            for ref in stages[1:]:  # calls wait while the stages restart (after a backoff)
                await node.call(ref, jt.Instruction("work"))
            print("oneshot after the restart:", await node.check_agent_health(oneshot))

            # Restart intensity: more than max_restarts within max_seconds escalates.
            fragile = await node.start_supervisor("fragile", max_restarts=1, max_seconds=5.0)
            flaky = await node.start_agent(Worker, "flaky", supervisor=fragile)
            for attempt in (1, 2):
                await node.call(flaky, jt.Instruction("work"))  # wait until it runs
                await crash_agent(node, flaky)
                print(f"crash flaky #{attempt}")
            await node.call(flaky, jt.Instruction("work"))
            await trio.testing.wait_all_tasks_blocked()  # let the supervisors settle
            print("'fragile' gave up after 2 crashes in 5 s; root restarted it:")
            show(node.supervision_tree())

            print("leaving open_node: graceful shutdown in reverse start order")
        print("node closed, no task left behind")


if __name__ == "__main__":
    trio.run(main)
