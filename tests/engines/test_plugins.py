"""The plugin manager and every hook: each hook must be documented and observed here."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import trio

import jido_trio as jt
from jido_trio import hookspecs
from jido_trio._plugins import make_plugin_manager
from jido_trio.testing import crash_agent
from tests._agents import Counter

HOOKS = sorted(
    name for name, fn in vars(hookspecs).items() if name.startswith("jido_trio_") and callable(fn)
)


class Recorder:
    """Implements every observer hook and records the calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def names(self) -> set[str]:
        return {name for name, _ in self.calls}

    @jt.hookimpl
    def jido_trio_add_backends(self, backends: Any) -> None:
        self.calls.append(("jido_trio_add_backends", {"names": backends.names()}))

    @jt.hookimpl
    def jido_trio_node_started(self, node: jt.Node) -> None:
        self.calls.append(("jido_trio_node_started", {"node": node.name}))

    @jt.hookimpl
    def jido_trio_node_stopping(self, node: jt.Node) -> None:
        self.calls.append(("jido_trio_node_stopping", {"node": node.name}))

    @jt.hookimpl
    def jido_trio_agent_started(self, node: jt.Node, ref: jt.AgentRef) -> None:
        self.calls.append(("jido_trio_agent_started", {"id": ref.id}))

    @jt.hookimpl
    def jido_trio_agent_stopped(self, node: jt.Node, ref: jt.AgentRef, reason: str) -> None:
        self.calls.append(("jido_trio_agent_stopped", {"id": ref.id, "reason": reason}))

    @jt.hookimpl
    def jido_trio_agent_restarted(self, node: jt.Node, ref: jt.AgentRef, restarts: int) -> None:
        self.calls.append(("jido_trio_agent_restarted", {"id": ref.id, "restarts": restarts}))

    @jt.hookimpl
    def jido_trio_supervisor_event(
        self, node: jt.Node, supervisor_id: str, child_id: str, event: str, reason: str | None
    ) -> None:
        self.calls.append(
            (
                "jido_trio_supervisor_event",
                {"sup": supervisor_id, "child": child_id, "event": event},
            )
        )

    @jt.hookimpl
    def jido_trio_message_dead_lettered(
        self, node: jt.Node, message: jt.Message, reason: str
    ) -> None:
        self.calls.append(("jido_trio_message_dead_lettered", {"id": message.id, "reason": reason}))

    @jt.hookimpl
    def jido_trio_health_changed(
        self, node: jt.Node, ref: jt.AgentRef, old: jt.Health, new: jt.Health
    ) -> None:
        self.calls.append(("jido_trio_health_changed", {"id": ref.id, "old": old, "new": new}))


def test_every_hook_is_documented() -> None:
    assert HOOKS, "no hooks found"
    for name in HOOKS:
        fn = getattr(hookspecs, name)
        doc = inspect.getdoc(fn) or ""
        assert doc, f"{name} has no docstring"
        for param in inspect.signature(fn).parameters:
            assert f":param {param}:" in doc, f"{name} does not document {param}"


def test_recorder_covers_every_hook() -> None:
    implemented = {n for n in dir(Recorder) if n.startswith("jido_trio_")}
    assert implemented == set(HOOKS)


async def test_observer_hooks_fire() -> None:
    recorder = Recorder()
    async with jt.open_node(name="n", plugins=[recorder]) as node:
        ref = await node.start_agent(Counter, "c")
        await crash_agent(node, ref)
        assert await node.call(ref, jt.Instruction("get")) == 0
        temp = await node.start_agent(Counter, "t", restart="temporary")
        await node.send_instruction(temp, jt.Instruction("boom"))
        with trio.fail_after(1):
            while await node.check_agent_health(temp) is not jt.Health.NOT_FOUND:
                await trio.lowlevel.checkpoint()
    names = recorder.names()
    fired = {
        "jido_trio_add_backends",
        "jido_trio_node_started",
        "jido_trio_node_stopping",
        "jido_trio_agent_started",
        "jido_trio_agent_stopped",
        "jido_trio_agent_restarted",
        "jido_trio_supervisor_event",
        "jido_trio_message_dead_lettered",
        "jido_trio_health_changed",
    }
    assert fired <= names
    assert fired | {"jido_trio_add_backends"} == set(HOOKS)
    health = [
        (c["id"], c["old"], c["new"]) for n, c in recorder.calls if n == "jido_trio_health_changed"
    ]
    h = jt.Health
    assert [e for e in health if e[0] == "c"][:2] == [
        ("c", h.NOT_FOUND, h.HEALTHY),  # started
        ("c", h.HEALTHY, h.DEGRADED),  # crashed, restarting
    ]
    assert health[-1] == ("c", h.DEGRADED, h.NOT_FOUND)  # stopped with the node
    assert ("t", h.HEALTHY, h.NOT_FOUND) in health  # temporary: gone after its crash
    stops = [c for n, c in recorder.calls if n == "jido_trio_agent_stopped"]
    assert {"id": "c", "reason": "crash: InjectedCrash: injected crash of agent 'c'"} in stops
    assert any(c["id"] == "t" and c["reason"].startswith("crash: ValueError") for c in stops)
    restarted = [c for n, c in recorder.calls if n == "jido_trio_agent_restarted"]
    assert restarted == [{"id": "c", "restarts": 1}]
    dead = [c for n, c in recorder.calls if n == "jido_trio_message_dead_lettered"]
    assert len(dead) == 1 and "ValueError" in dead[0]["reason"]
    events = [
        (c["child"], c["event"]) for n, c in recorder.calls if n == "jido_trio_supervisor_event"
    ]
    assert ("c", "started") in events and ("c", "exited") in events and ("c", "restarted") in events
    order = [n for n, _ in recorder.calls]
    assert order.index("jido_trio_node_started") < order.index("jido_trio_node_stopping")


async def test_failing_observer_does_not_break_the_node(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        @jt.hookimpl
        def jido_trio_agent_started(self, node: jt.Node, ref: jt.AgentRef) -> None:
            raise RuntimeError("observer bug")

    async with jt.open_node(name="n", plugins=[Broken()]) as node:
        ref = await node.start_agent(Counter, "c")
        assert await node.call(ref, jt.Instruction("get")) == 0
    assert "observer bug" in caplog.text


async def test_per_node_plugin_replaces_a_default_by_name() -> None:
    from jido_trio.local import MemoryStateBackend

    class Counting(MemoryStateBackend):
        writes = 0

        async def write(
            self, key: str, value: bytes, *, expected_version: int | None = None
        ) -> int:
            Counting.writes += 1
            return await super().write(key, value, expected_version=expected_version)

    class Provider:
        @jt.hookimpl
        def jido_trio_add_backends(self, backends: Any) -> None:
            backends.add_state("memory", lambda config, options: Counting())
            backends.add_state("counting", lambda config, options: Counting())

    async with jt.open_node(jt.Config(state="counting"), plugins=[Provider()]) as node:
        ref = await node.start_agent(Counter, "c")
        await node.call(ref, jt.Instruction("increment"))
        assert isinstance(node.state, Counting)
    assert Counting.writes >= 2
    async with jt.open_node(plugins=[Provider()]) as node:
        assert isinstance(node.state, Counting)  # a third party wins over the default
    async with jt.open_node() as node:
        assert type(node.state) is MemoryStateBackend  # only for the node it was given to


def test_blocking_and_autoload_switches() -> None:
    pm = make_plugin_manager(environ={"JIDO_TRIO_BLOCK_PLUGINS": "local"})
    assert not pm.has_plugin("local")
    pm = make_plugin_manager(environ={"JIDO_TRIO_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert pm.has_plugin("local")


async def test_blocked_default_makes_names_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JIDO_TRIO_BLOCK_PLUGINS", "local")
    with pytest.raises(jt.ConfigError, match="unknown state implementation 'memory'"):
        async with jt.open_node():
            pass


async def test_bad_factory_registration_is_a_config_error() -> None:
    class Bad:
        @jt.hookimpl
        def jido_trio_add_backends(self, backends: Any) -> None:
            backends.add_state("", lambda c, o: None)

    with pytest.raises(jt.ConfigError):
        async with jt.open_node(plugins=[Bad()]):
            pass


def test_hookspecs_and_the_plugin_manager_do_not_import_each_other() -> None:
    """hookspecs names ``Backends``; both take it from a module of its own."""
    import ast
    from pathlib import Path

    def imported(module: object) -> set[str]:
        path = Path(getattr(module, "__file__", ""))
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                found.add(node.module or "")
                found.update(
                    f"{node.module or ''}.{alias.name}".lstrip(".") for alias in node.names
                )
        return found

    from jido_trio import _plugins

    assert not {"_plugins", "jido_trio._plugins"} & imported(hookspecs)
    assert hookspecs.Backends is _plugins.Backends
