"""The pytest fixtures shipped for users' own tests (entry point pytest11)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio

import jido_trio as jt
from jido_trio.testing import Cluster
from tests._agents import Counter


async def test_jido_node_fixture(jido_node: jt.Node) -> None:
    ref = await jido_node.start_agent(Counter, "c")
    await jido_node.send_instruction(ref, jt.Instruction("increment"))
    assert await jido_node.call(ref, jt.Instruction("get")) == 1


async def test_jido_cluster_fixture(jido_cluster: Cluster) -> None:
    n1, _, n3 = jido_cluster
    ref = await n1.start_agent(Counter, "c")
    assert await n3.call(ref, jt.Instruction("increment")) is None
    assert await jido_cluster["n2"].call(ref, jt.Instruction("get")) == 1


async def test_cluster_faults_and_failover_by_hand(
    jido_open_cluster: Callable[..., Any], autojump_clock: trio.testing.MockClock
) -> None:
    async with jido_open_cluster("a", "b", operation_timeout=1.0) as cluster:
        ref = await cluster["a"].start_agent(Counter, "c")
        await cluster["b"].send_instruction(ref, jt.Instruction("increment", {"by": 3}))
        with cluster.faults.partition("a", "b"), pytest.raises(jt.Unreachable):
            await cluster["b"].call(ref, jt.Instruction("get"))
        # Shared state: the agent can move to another node and keep its state.
        await cluster["a"].stop_agent(ref)
        moved = await cluster["b"].start_agent(Counter, "c")
        assert moved.node == "b"
        assert await cluster["a"].call(moved, jt.Instruction("get")) == 3


def test_plugin_is_registered(pytestconfig: pytest.Config) -> None:
    assert pytestconfig.pluginmanager.has_plugin("jido_trio")
