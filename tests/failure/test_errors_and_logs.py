"""Errors say what happened and logs say it once (issue 17, item 7): crashes
are logged with the agent, action, instruction and exception; an escalation
names the children that failed; configuration mistakes are sentences; the
registry keeps an agent's metadata across restarts; ``stop_agent`` works from
any node."""

from __future__ import annotations

import logging

import pytest
import trio

import jido_trio as jt
from jido_trio.testing import crash_agent
from tests._agents import Counter
from tests.distributed.test_multinode import two_nodes


class Fragile(jt.Agent):
    type = "errors-fragile"

    @jt.action("explode")
    async def explode(self, state: None) -> None:
        raise RuntimeError("kaboom")

    @jt.action("ok")
    async def ok(self, state: None) -> None:
        self.ctx.reply("ok")


def crash_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "jido_trio.supervisor"]


async def test_a_crash_is_logged_once_with_agent_action_instruction_and_exception(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="jido_trio")
    async with jt.open_node(name="n") as node:
        ref = await node.start_agent(Fragile, "f")
        with pytest.raises(jt.ActionError):
            await node.call(ref, jt.Instruction("explode", id="call-1"))
        await node.send_instruction(ref, jt.Instruction("explode", id="tell-1"))
        assert await node.call(ref, jt.Instruction("ok")) == "ok"
    records = crash_records(caplog)
    assert [r.getMessage() for r in records] == [
        "agent 'f' crashed in action 'explode' (instruction 'call-1'): RuntimeError: kaboom",
        "agent 'f' crashed in action 'explode' (instruction 'tell-1'): RuntimeError: kaboom",
    ]
    assert all(r.levelno == logging.ERROR and r.exc_info is not None for r in records)
    assert all(isinstance(r.exc_info[1], RuntimeError) for r in records if r.exc_info)


async def test_an_escalation_names_the_children_that_failed_and_how(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = jt.Config(node_name="n", max_restarts=2, max_seconds=60)
    with pytest.raises(jt.SupervisorEscalation) as raised:
        async with jt.open_node(config) as node:
            fragile = await node.start_agent(Fragile, "f")
            other = await node.start_agent(Counter, "c")
            await crash_agent(node, other, ValueError("bad counter"))
            for n in range(3):
                await node.send_instruction(fragile, jt.Instruction("explode", id=f"e{n}"))
            await trio.sleep_forever()
    error = raised.value
    assert error.failures == (
        ("c", ("ValueError: bad counter",)),
        ("f", ("RuntimeError: kaboom", "RuntimeError: kaboom")),
    )
    assert str(error) == (
        "supervisor 'root' exceeded 2 restarts within 60s: 'c' failed once "
        "(ValueError: bad counter); 'f' failed 2 times (RuntimeError: kaboom)"
    )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"failover": "no"}, "failover must be true or false, got 'no'"),
        ({"mailbox_high_water": 5}, "mailbox_high_water must be a fraction of the mailbox"),
        ({"mailbox_high_water": 0}, "mailbox_high_water must be a fraction of the mailbox"),
        ({"mailbox_size": 0}, "mailbox_size must be a positive integer, got 0"),
        ({"node_name": ""}, "node_name must be a non-empty string"),
    ],
)
def test_configuration_mistakes_are_sentences(settings: dict[str, object], message: str) -> None:
    with pytest.raises(jt.ConfigError) as raised:
        jt.Config.from_mapping(settings)
    assert str(raised.value).startswith(message)
    with pytest.raises(jt.ConfigError):
        jt.Config(**settings)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            jt.Config(plugin_options={"local": {"hubb": "x"}}),
            "unknown plugin_options['local'] key(s) 'hubb'; known: hub",
        ),
        (
            jt.Config(plugin_options={"memory": {"size": 1}}),
            "unknown plugin_options['memory'] key(s) 'size'; known: hub",
        ),
        (
            jt.Config(state="sqlite", plugin_options={"sqlite": {"path": "x.db", "sync": "off"}}),
            "unknown plugin_options['sqlite'] key(s) 'sync'; known: busy_timeout, path, synchronous",
        ),
    ],
)
async def test_unknown_option_keys_of_built_in_engines_are_refused(
    config: jt.Config, message: str
) -> None:
    with pytest.raises(jt.ConfigError) as raised:
        async with jt.open_node(config):
            pass  # pragma: no cover - refused before
    assert str(raised.value) == message


async def test_registry_metadata_survives_restarts() -> None:
    async with jt.open_node(name="n") as node:
        ref = await node.start_agent(Counter, "c", metadata={"tier": 1})
        await node.registry.update_metadata("c", {"tier": 2, "zone": "b"})
        await crash_agent(node, ref)
        assert await node.call(ref, jt.Instruction("get")) == 0  # restarted
        entry = await node.registry.lookup("c")
        assert entry.metadata["tier"] == 2 and entry.metadata["zone"] == "b"
        assert entry.epoch > 1


async def test_stop_agent_stops_it_wherever_it_runs() -> None:
    async with two_nodes() as (a, b):
        ref = await a.start_agent(Counter, "c")
        await b.stop_agent(ref)
        with pytest.raises(jt.AgentUnavailable):
            await a.call(ref, jt.Instruction("get"))
        # From b, the entry is gone: the agent is unknown now.
        with pytest.raises(jt.AgentNotFound):
            await b.stop_agent("c")
        await a.stop_agent("c")  # stopped here already: nothing to do
        with pytest.raises(jt.AgentNotFound):
            await b.stop_agent("never-started")
