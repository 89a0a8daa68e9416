"""A jido_trio node process on NATS, for the multi-process tests (run as a script).

``python tests/distributed/nats/nats_node.py NAME NAMESPACE URLS [AGENT_ID ...]``: open
node NAME with all four engines on NATS (URLS comma-separated, namespace
NAMESPACE), start a ledger agent per AGENT_ID, print ``READY`` and serve
until SIGTERM (exit 0) or until the node is fenced (exit 3). The environment
variable ``JIDO_TEST_NATS_OPTIONS`` (a JSON object) overrides plugin options.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys

import attrs
import trio

import jido_trio as jt

FENCED_EXIT = 3
#: Environment variable with plugin options (JSON) for the node process.
OPTIONS_ENV = "JIDO_TEST_NATS_OPTIONS"


@attrs.frozen
class Ledger:
    count: int = 0
    total: int = 0


class NatsLedger(jt.Agent):
    """Counts and sums what it is given: exactly-once shows as count and total."""

    type = "nats-ledger"
    State = Ledger

    @jt.action("add")
    async def add(self, state: Ledger, n: int) -> Ledger:
        return Ledger(state.count + 1, state.total + n)

    @jt.action("get")
    async def get(self, state: Ledger) -> None:
        self.ctx.reply({"count": state.count, "total": state.total, "node": self.ctx.node_name})


def config(name: str, namespace: str, urls: list[str], **nats: object) -> jt.Config:
    return jt.Config(
        node_name=name,
        mode="datacenter",
        registry="nats",
        transport="nats",
        state="nats",
        coordination="nats",
        health_check_interval=0.5,
        operation_timeout=10.0,
        # Agents whose state writes fail while JetStream elects a new leader
        # crash and restart; the root's intensity must ride that out (see
        # docs/distributed.md) rather than end the node.
        max_restarts=100,
        max_seconds=10.0,
        plugin_options={
            "nats": {
                "servers": urls,
                "namespace": namespace,
                "storage": "memory",
                "replicas": min(3, len(urls)),
                **nats,
            }
        },
    )


async def main(name: str, namespace: str, urls: list[str], agent_ids: list[str]) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        overrides = json.loads(os.environ.get(OPTIONS_ENV, "{}"))
        async with jt.open_node(config(name, namespace, urls, **overrides)) as node:
            for agent_id in agent_ids:
                await node.start_agent(NatsLedger, agent_id)
            print("READY", flush=True)
            async for _ in signals:
                break


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format=f"[{sys.argv[1]}] %(name)s: %(message)s")
    try:
        trio.run(main, sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4:])
    except jt.NodeFenced as exc:
        print(f"FENCED {exc}", flush=True)
        sys.exit(FENCED_EXIT)
