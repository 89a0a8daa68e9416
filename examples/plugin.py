"""Plugins: observe a node through hooks, and provide an implementation by name.

A plugin is any object (a module, a class instance) with functions marked
``@jido_trio.hookimpl``. Pass it to ``open_node(plugins=[...])`` for one node, or
ship it in a package with an entry point in the ``jido_trio`` group to load it
everywhere.

    python examples/plugin.py
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import trio

import jido_trio as jt
from jido_trio.local import MemoryStateBackend
from jido_trio.testing import crash_agent


class AuditLog:
    """An observer plugin: hooks only look, never do I/O, and must be quick."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    @jt.hookimpl
    def jido_trio_node_started(self, node: jt.Node) -> None:
        self.lines.append(f"node {node.name} started")

    @jt.hookimpl
    def jido_trio_agent_started(self, ref: jt.AgentRef) -> None:
        self.lines.append(f"agent {ref.id} started")

    @jt.hookimpl
    def jido_trio_agent_stopped(self, ref: jt.AgentRef, reason: str) -> None:
        self.lines.append(f"agent {ref.id} stopped: {reason}")

    @jt.hookimpl
    def jido_trio_agent_restarted(self, ref: jt.AgentRef, restarts: int) -> None:
        self.lines.append(f"agent {ref.id} restarted (#{restarts})")

    @jt.hookimpl
    def jido_trio_node_stopping(self, node: jt.Node) -> None:
        self.lines.append(f"node {node.name} stopping")


class CountingState(MemoryStateBackend):
    """A StateBackend that counts writes (a real plugin would talk to an engine)."""

    writes = 0

    async def write(self, key: str, value: bytes, *, expected_version: int | None = None) -> int:
        CountingState.writes += 1
        return await super().write(key, value, expected_version=expected_version)


class CountingPlugin:
    """A provider plugin: registers a factory under a name that Config can select."""

    @jt.hookimpl
    def jido_trio_add_backends(self, backends: Any) -> None:
        def factory(config: jt.Config, options: Mapping[str, Any]) -> CountingState:
            print(f"building 'counting' state for {config.node_name} with {dict(options)}")
            return CountingState()

        backends.add_state("counting", factory)


@attrs.frozen
class Tally:
    n: int = 0


class Clicker(jt.Agent):
    type = "clicker"
    State = Tally

    @jt.action("click")
    async def click(self, state: Tally) -> Tally:
        return Tally(state.n + 1)


async def main() -> None:
    audit = AuditLog()
    config = jt.Config(state="counting", plugin_options={"counting": {"verbose": True}})
    async with jt.open_node(config, name="plugged", plugins=[audit, CountingPlugin()]) as node:
        ref = await node.start_agent(Clicker, "clicker-1")
        for _ in range(3):
            await node.send_instruction(ref, jt.Instruction("click"))
        await crash_agent(node, ref)
        print("state after a crash:", await node.query_agent(ref))
    print(f"the 'counting' backend saw {CountingState.writes} writes")
    print("audit log:")
    for line in audit.lines:
        print("  " + line)

    # A name no plugin registered is a clear ConfigError listing the known ones.
    try:
        async with jt.open_node(jt.Config(state="nope")):
            pass
    except jt.ConfigError as exc:
        print("ConfigError:", exc)


if __name__ == "__main__":
    trio.run(main)
