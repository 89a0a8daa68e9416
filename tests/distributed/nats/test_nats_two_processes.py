"""The DESIGN.md §4 API between two node processes over one NATS server.

A node process (tests/distributed/nats/nats_node.py) owns a ledger agent; this process
opens a second node on the same server and namespace and uses every public
operation on the agent through NATS.
"""

from __future__ import annotations

import sys

import attrs
import pytest

import jido_trio as jt
from jido_trio_nats.testing import NatsServer

from .conftest import new_namespace
from .nats_node import Ledger
from .nats_node import config
from .test_nats_failover import _start_worker
from .test_nats_failover import _wait_ready


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX process control")
async def test_the_public_api_across_two_processes(nats_server: NatsServer) -> None:
    namespace = new_namespace()
    urls = [nats_server.url]
    worker = _start_worker("owner", namespace, urls, ["ledger-1"])
    try:
        await _wait_ready(worker)
        client_config = attrs.evolve(config("client", namespace, urls), failover=False)
        async with jt.open_node(client_config) as client:
            ref = await client.lookup("ledger-1")
            assert ref == jt.AgentRef(id="ledger-1", type="nats-ledger", node="owner")
            assert ref.is_remote()

            instruction = jt.Instruction("add", {"n": 5})
            receipt = await client.send_instruction(ref, instruction)
            assert receipt.status == "accepted"
            again = await client.send_instruction(ref, instruction)  # same id
            assert again.status == "already_processed"
            durable = await client.send_instruction(
                ref, jt.Instruction("add", {"n": 7}), delivery="at_least_once"
            )
            assert durable.status == "accepted"

            reply = await client.call(ref, jt.Instruction("get"), timeout=5.0)
            assert reply == {"count": 2, "total": 12, "node": "owner"}
            # This process imported the agent class, so state comes back typed.
            assert await client.query_agent(ref) == Ledger(count=2, total=12)
            assert await client.query_agent(ref, consistency="eventual") == Ledger(2, 12)
            assert await client.check_agent_health(ref) is jt.Health.HEALTHY

            with pytest.raises(jt.ActionNotFound):
                await client.call(ref, jt.Instruction("no-such-action"))
            with pytest.raises(jt.AgentNotFound):
                await client.lookup("nobody")
            missing = jt.AgentRef(id="nobody", type="nats-ledger", node="owner")
            assert await client.check_agent_health(missing) is jt.Health.NOT_FOUND
            with pytest.raises(jt.CallTimeout):
                await client.call(ref, jt.Instruction("get"), timeout=0.0)

            # The owner leaves gracefully: its agents unregister, nothing fails over.
            worker.stop()
            assert await client.check_agent_health(ref) in (
                jt.Health.NOT_FOUND,
                jt.Health.UNREACHABLE,
            )
    finally:
        worker.stop()
