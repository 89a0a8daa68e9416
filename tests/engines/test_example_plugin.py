"""The example third-party plugin (plugins/jido-trio-example), installed as a
distribution: picked up through its entry point, selected by name, blockable.

It must be installed (the nox "tests" session runs
``pip install -e plugins/jido-trio-example``); a missing install fails loudly.
"""

from __future__ import annotations

import importlib.metadata

import attrs
import pytest

import jido_trio as jt
import jido_trio_example
from jido_trio.testing import crash_agent
from jido_trio.testing.conformance import check_state_backend
from jido_trio.testing.conformance import plugin_factory


@attrs.frozen
class CounterState:
    count: int = 0


class Counter(jt.Agent):
    type = "example-counter"
    State = CounterState

    @jt.action("increment")
    async def increment(self, state: CounterState) -> CounterState:
        return attrs.evolve(state, count=state.count + 1)

    @jt.action("get")
    async def get(self, state: CounterState) -> None:
        self.ctx.reply(state.count)


def test_entry_point_is_declared() -> None:
    (entry,) = [
        e for e in importlib.metadata.entry_points(group="jido_trio") if e.name == "example"
    ]
    assert entry.value == "jido_trio_example"


async def test_selected_by_name_through_the_entry_point() -> None:
    async with jt.open_node(jt.Config(state="example"), name="ex-1") as node:
        assert isinstance(node.state, jido_trio_example.CountingStateBackend)
        assert node.plugin_manager.get_plugin("example") is jido_trio_example
        ref = await node.start_agent(Counter, "c1")
        await node.send_instruction(ref, jt.Instruction("increment"))
        assert await node.call(ref, jt.Instruction("get")) == 1
        assert node.state.counts["write"] >= 1, "agent state went through the plugin"
        assert node.state.counts["read"] >= 1
        await crash_agent(node, ref)
        assert await node.call(ref, jt.Instruction("get")) == 1, "restarted from its state"
    events = [e for e in jido_trio_example.EVENTS if e[1] == "ex-1"]
    kinds = [kind for kind, _, _ in events]
    assert kinds[0] == "node_started"
    assert ("agent_started", "ex-1", "c1") in events
    assert any(k == "agent_stopped" and d.startswith("c1: crash: ") for k, _, d in events)
    assert ("agent_restarted", "ex-1", "c1: 1") in events
    assert ("health_changed", "ex-1", "c1: NOT_FOUND -> HEALTHY") in events
    assert "node_stopping" in kinds


async def test_other_nodes_keep_their_defaults() -> None:
    async with jt.open_node() as node:
        assert not isinstance(node.state, jido_trio_example.CountingStateBackend)


async def test_options_are_validated() -> None:
    config = jt.Config(state="example", plugin_options={"example": {"colour": "red"}})
    with pytest.raises(jt.ConfigError, match="takes no options, got: colour"):
        async with jt.open_node(config):
            pass  # pragma: no cover


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("JIDO_TRIO_BLOCK_PLUGINS", "example"),
        ("JIDO_TRIO_BLOCK_PLUGINS", "something-else, example"),
        ("JIDO_TRIO_DISABLE_PLUGIN_AUTOLOAD", "1"),
    ],
)
async def test_blocked_or_not_autoloaded(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(
        jt.ConfigError,
        # (other installed plugins, e.g. "nats", may be listed too)
        match=r"unknown state implementation 'example'; available: memory(, nats)?, sqlite$",
    ):
        async with jt.open_node(jt.Config(state="example")):
            pass  # pragma: no cover
    # Explicitly given plugins still work when autoloading is off.
    if variable == "JIDO_TRIO_DISABLE_PLUGIN_AUTOLOAD":
        async with jt.open_node(jt.Config(state="example"), plugins=[jido_trio_example]) as node:
            assert isinstance(node.state, jido_trio_example.CountingStateBackend)


async def test_example_backend_passes_the_conformance_suite() -> None:
    await check_state_backend(plugin_factory("state", "example"))
