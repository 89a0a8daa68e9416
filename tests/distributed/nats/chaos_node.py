"""A node process for the chaos test (run as a script), and the agent it runs.

``python tests/distributed/nats/chaos_node.py NAME NAMESPACE URLS SIDE_LOG_DIR
LEASE_TTL [AGENT_ID ...]``: open node NAME with all four engines on NATS (URLS
comma-separated), start a :class:`ChaosCounter` per AGENT_ID (skipping those
another live node owns already, as ``jido-trio node run`` does), print
``READY`` and serve until SIGTERM (exit 0) or until the node is fenced (exit
:data:`FENCED_EXIT`). A node that cannot open or start its agents because the
cluster is in trouble (a ``JidoError`` before ``READY``, e.g. a JetStream
election outlasting a request) exits with :data:`NOT_STARTED_EXIT`; any other
failure ends the process with a traceback and exit code 1.

Every application of an ``add`` action is appended to the process's *side
log*, ``SIDE_LOG_DIR/NAME-PID.jsonl``, before the action returns: one JSON
line with the agent id, the instruction id, ``ctx.epoch``, the node, the PID,
a per-process sequence number and ``time.monotonic_ns()`` (CLOCK_MONOTONIC,
one clock for every process of the machine). The line is written with one
``os.write`` on an ``O_APPEND`` file: it is in the kernel's page cache when the
action returns, so it survives a SIGKILL of the process.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

import attrs
import trio

import jido_trio as jt

try:
    from .nats_node import config as nats_node_config
except ImportError:  # run as a script: its folder is on sys.path
    from nats_node import config as nats_node_config  # type: ignore[no-redef]

FENCED_EXIT = 3
NOT_STARTED_EXIT = 4

#: How long a (re)started node keeps trying to start one of its agents while
#: the cluster is in trouble, before it leaves it to failover.
START_PATIENCE = 20.0


@attrs.frozen
class Tally:
    """Every application of ``add`` that was committed, in commit order:
    ``(instruction id, epoch, pid, side-log seq)``."""

    applied: tuple[tuple[str, int, int, int], ...] = ()


class SideLog:
    """The append-only file of this process's applications (see the module doc)."""

    def __init__(self, directory: Path, node_name: str) -> None:
        self.node_name = node_name
        self.pid = os.getpid()
        self.path = directory / f"{node_name}-{self.pid}.jsonl"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._seq = 0

    def record(self, agent_id: str, op: str, epoch: int) -> int:
        self._seq += 1
        line = json.dumps(
            {
                "agent": agent_id,
                "op": op,
                "epoch": epoch,
                "node": self.node_name,
                "pid": self.pid,
                "seq": self._seq,
                "t": time.monotonic_ns(),
            },
            separators=(",", ":"),
        )
        os.write(self._fd, line.encode() + b"\n")
        return self._seq


#: Set in the node process by ``main``; ``None`` where the module is only imported.
side_log: SideLog | None = None


class ChaosCounter(jt.Agent):
    """Applies ``add`` by appending the application to its state and to the side log."""

    type = "chaos-counter"
    State = Tally

    @jt.action("add")
    async def add(self, state: Tally, op: str) -> Tally:
        assert side_log is not None, "ChaosCounter runs only in chaos_node.py processes"
        epoch = self.ctx.epoch
        seq = side_log.record(self.ctx.ref.id, op, epoch)
        # Ignored for one-way sends; must not fail for one applied again
        # after a failed commit.
        self.ctx.reply(len(state.applied) + 1)
        return Tally(applied=(*state.applied, (op, epoch, side_log.pid, seq)))


def config(name: str, namespace: str, urls: list[str], lease_ttl: float) -> jt.Config:
    """The configuration of the other multi-process tests, with ``lease_ttl``."""
    return nats_node_config(name, namespace, urls, lease_ttl=lease_ttl)


async def _start(node: jt.Node, agent_id: str) -> None:
    """Start ``agent_id`` here unless a live node owns it; retry what the
    cluster's trouble refuses for a while, then leave it to failover."""
    deadline = trio.current_time() + START_PATIENCE
    while True:
        try:
            await node.start_agent(ChaosCounter, agent_id)
            return
        except jt.AgentAlreadyExists:
            return
        except jt.JidoError as exc:
            if trio.current_time() >= deadline:
                print(f"gave up starting {agent_id}: {exc!r}", file=sys.stderr, flush=True)
                return
            await trio.sleep(0.5)


async def main(
    name: str, namespace: str, urls: list[str], lease_ttl: float, agent_ids: list[str]
) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        ready = False
        try:
            async with jt.open_node(config(name, namespace, urls, lease_ttl)) as node:
                for agent_id in agent_ids:
                    await _start(node, agent_id)
                print("READY", flush=True)
                ready = True
                async for _ in signals:
                    break
        except jt.JidoError as exc:
            if ready or isinstance(exc, jt.NodeFenced):
                raise
            print(f"NOT STARTED {exc!r}", file=sys.stderr, flush=True)
            sys.exit(NOT_STARTED_EXIT)


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.WARNING,
        format=f"%(asctime)s [{sys.argv[1]} {os.getpid()}] %(name)s: %(message)s",
    )
    side_log = SideLog(Path(sys.argv[4]), sys.argv[1])
    try:
        trio.run(
            main, sys.argv[1], sys.argv[2], sys.argv[3].split(","), float(sys.argv[5]), sys.argv[6:]
        )
    except jt.NodeFenced as exc:
        print(f"FENCED {exc}", file=sys.stderr, flush=True)
        sys.exit(FENCED_EXIT)
