"""A batch whose commit fails: its at-least-once messages are delivered again.

The agent applies a batch in memory, then commits state and processed ids.
When that commit fails (the StateBackend is briefly away), the agent crashes
and reloads its last committed state, so the logged messages of that batch
must be applied again by the next incarnation, not only by the next process.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import jido_trio as jt
from jido_trio.local import MemoryStateBackend


class FailingCommits(MemoryStateBackend):
    """Writes of agent state records (commits) fail while :attr:`failures`
    is above zero."""

    failures: int = 0
    #: The next :attr:`hangs` writes of agent records first hang this long.
    hangs: int = 0
    hang_seconds: float = 10.0

    async def write(self, key: str, value: bytes, *, expected_version: int | None = None) -> int:
        record = key.startswith("agent/") and key.count("/") == 1  # agent/<id>: a commit
        if record and self.failures > 0:
            await trio.lowlevel.checkpoint()
            self.failures -= 1
            raise jt.Unreachable("the state backend is away")
        if record and self.hangs > 0:
            self.hangs -= 1
            await trio.sleep(self.hang_seconds)
        return await super().write(key, value, expected_version=expected_version)


class FailingTrims(FailingCommits):
    """Trims of durable logs fail while :attr:`trim_failures` is above zero,
    dead-letter appends while :attr:`dead_letter_failures` is."""

    trim_failures: int = 0
    dead_letter_failures: int = 0

    async def append(self, stream: str, data: bytes) -> int:
        if stream.startswith("deadletter/") and self.dead_letter_failures > 0:
            await trio.lowlevel.checkpoint()
            self.dead_letter_failures -= 1
            raise jt.Unreachable("the state backend is away")
        return await super().append(stream, data)

    async def trim_log(self, stream: str, *, upto: int) -> None:
        if self.trim_failures > 0:
            await trio.lowlevel.checkpoint()
            self.trim_failures -= 1
            raise jt.Unreachable("the state backend is away")
        await super().trim_log(stream, upto=upto)


class Plugin:
    def __init__(self) -> None:
        self.backend = FailingTrims()

    @jt.hookimpl
    def jido_trio_add_backends(self, backends: Any) -> None:
        backend = self.backend

        def factory(config: jt.Config, options: Mapping[str, Any]) -> FailingTrims:
            return backend

        backends.add_state("failing-commits", factory)


@attrs.frozen
class Items:
    items: tuple[str, ...] = ()


class List(jt.Agent):
    type = "commit-failure-list"
    State = Items

    @jt.action("add")
    async def add(self, state: Items, item: str) -> Items:
        return Items((*state.items, item))

    @jt.action("get")
    async def get(self, state: Items) -> None:
        self.ctx.reply(list(state.items))


async def test_logged_messages_of_a_batch_whose_commit_failed_are_applied_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    plugin = Plugin()
    config = jt.Config(node_name="n", state="failing-commits", max_restarts=10)
    async with jt.open_node(config, plugins=[plugin]) as node:
        ref = await node.start_agent(List, "list")
        plugin.backend.failures = 1
        for item in ("a", "b", "c"):
            await node.send_instruction(
                ref, jt.Instruction("add", {"item": item}), delivery="at_least_once"
            )
        # The batch's commit failed, the agent restarted from its last
        # committed state and applied the three again, once each, in order.
        assert await node.call(ref, jt.Instruction("get")) == ["a", "b", "c"]
        [child] = node.supervision_tree().children
        assert child.restarts == 1
        await trio.sleep(1)
        assert await node.state.read_log("mailbox/list") == []


async def test_a_failed_trim_after_a_good_commit_does_not_fail_the_batch(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Committed is applied: the callers get their answers and the agent
    goes on; the log entries the trim missed go with the next trim."""
    plugin = Plugin()
    config = jt.Config(node_name="n", state="failing-commits")
    async with jt.open_node(config, plugins=[plugin]) as node:
        ref = await node.start_agent(List, "list")
        plugin.backend.trim_failures = 1
        await node.send_instruction(
            ref, jt.Instruction("add", {"item": "a"}), delivery="at_least_once"
        )
        assert await node.call(ref, jt.Instruction("add", {"item": "b"})) is None
        assert await node.call(ref, jt.Instruction("get")) == ["a", "b"]
        [child] = node.supervision_tree().children
        assert child.restarts == 0
        assert "could not trim its durable log" in caplog.text
        await node.send_instruction(
            ref, jt.Instruction("add", {"item": "c"}), delivery="at_least_once"
        )
        assert await node.call(ref, jt.Instruction("get")) == ["a", "b", "c"]
        assert await node.state.read_log("mailbox/list") == []


async def test_a_dead_letter_that_cannot_be_stored_stays_in_the_mailbox_log(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Storing the dead letter fails: the message must still be somewhere,
    so it stays in the mailbox log and is dead-lettered on a later try."""
    plugin = Plugin()
    config = jt.Config(
        node_name="n", state="failing-commits", max_delivery_attempts=2, max_restarts=100
    )
    async with jt.open_node(config, plugins=[plugin]) as node:
        ref = await node.start_agent(Poison, "p")
        plugin.backend.dead_letter_failures = 1
        await node.send_instruction(
            ref, jt.Instruction("explode", id="poison-1"), delivery="at_least_once"
        )
        await trio.sleep(5)
        letters = await node.dead_letters(ref)
        assert [letter.payload.id for letter in letters] == ["poison-1"]
        assert await node.state.read_log("mailbox/p") == []
        assert await node.call(ref, jt.Instruction("get")) == []


class Poison(List):
    type = "commit-failure-poison"

    @jt.action("explode")
    async def explode(self, state: Items) -> None:
        raise RuntimeError("poison")


async def test_a_commit_past_the_shutdown_timeout_leaves_nothing_stranded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The batch's commit hangs past ``shutdown_timeout``: the agent restarts,
    and its logged message is applied by the next incarnation (it was neither
    lost nor left counted as queued while it was not)."""
    plugin = Plugin()
    config = jt.Config(node_name="n", state="failing-commits", shutdown_timeout=1.0)
    async with jt.open_node(config, plugins=[plugin]) as node:
        ref = await node.start_agent(List, "list")
        plugin.backend.hangs = 1
        await node.send_instruction(
            ref, jt.Instruction("add", {"item": "a"}), delivery="at_least_once"
        )
        await trio.sleep(5)
        [child] = node.supervision_tree().children
        assert child.restarts == 1
        assert await node.call(ref, jt.Instruction("get")) == ["a"]
        await node.send_instruction(
            ref, jt.Instruction("add", {"item": "b"}), delivery="at_least_once"
        )
        assert await node.call(ref, jt.Instruction("get")) == ["a", "b"]
        assert await node.state.read_log("mailbox/list") == []


class Replier(List):
    """Replies to every ``add`` (a call or a one-way send alike)."""

    type = "commit-failure-replier"

    @jt.action("add_and_reply")
    async def add_and_reply(self, state: Items, item: str) -> Items:
        self.ctx.reply(len(state.items) + 1)
        return Items((*state.items, item))


async def test_a_call_whose_commit_failed_can_be_retried_with_its_id(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Issue 16, finding 3: the failed batch's ids are not left as seen: the
    caller's retry with the same id is applied (once), not AlreadyProcessed."""
    plugin = Plugin()
    config = jt.Config(node_name="n", state="failing-commits", max_restarts=10)
    async with jt.open_node(config, plugins=[plugin]) as node:
        ref = await node.start_agent(List, "list")
        plugin.backend.failures = 1
        instruction = jt.Instruction("add", {"item": "a"}, id="call-1")
        with pytest.raises(jt.AgentUnavailable, match="could not persist"):
            await node.call(ref, instruction)
        assert await node.call(ref, instruction) is None
        with pytest.raises(jt.AlreadyProcessed):
            await node.call(ref, instruction)
        assert await node.call(ref, jt.Instruction("get")) == ["a"]


async def test_a_logged_message_applied_again_after_a_failed_commit_may_reply_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Issue 16, finding 3: a requeued message starts with fresh reply state,
    so an action that replies does not crash as "already replied"."""
    plugin = Plugin()
    config = jt.Config(node_name="n", state="failing-commits", max_restarts=10)
    async with jt.open_node(config, plugins=[plugin]) as node:
        ref = await node.start_agent(Replier, "r")
        plugin.backend.failures = 1
        await node.send_instruction(
            ref, jt.Instruction("add_and_reply", {"item": "a"}), delivery="at_least_once"
        )
        await trio.sleep(1)  # the batch fails to commit; the agent restarts
        assert await node.call(ref, jt.Instruction("get")) == ["a"]
        assert await node.dead_letters(ref) == []
        [child] = node.supervision_tree().children
        assert child.restarts == 1


async def test_plain_sends_of_a_batch_whose_commit_failed_are_applied_not_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Issue 16, finding 3: an accepted at-most-once send is applied (or
    dead-lettered), never silently dropped while its node lives."""
    plugin = Plugin()
    config = jt.Config(node_name="n", state="failing-commits", max_restarts=10)
    async with jt.open_node(config, plugins=[plugin]) as node:
        ref = await node.start_agent(List, "list")
        plugin.backend.failures = 1
        for item in ("a", "b", "c"):
            receipt = await node.send_instruction(ref, jt.Instruction("add", {"item": item}))
            assert receipt.status == "accepted"
        await trio.sleep(1)  # the batch fails to commit; the agent restarts
        assert await node.call(ref, jt.Instruction("get")) == ["a", "b", "c"]
        [child] = node.supervision_tree().children
        assert child.restarts == 1
        assert await node.dead_letters(ref) == []


async def test_an_engine_outage_does_not_count_toward_restart_intensity(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Issue 16 (item 3) and 17 (item 2): commits failing while the engine is
    away (a leader election) restart the agent after a growing delay, never
    exhausting any supervisor's intensity: the node stays up, nothing is lost."""
    plugin = Plugin()
    config = jt.Config(node_name="n", state="failing-commits", max_restarts=1, max_seconds=60)
    async with jt.open_node(config, plugins=[plugin]) as node:
        ref = await node.start_agent(List, "list")
        plugin.backend.failures = 8  # the batch commit and several restarts' seals
        for item in ("a", "b"):
            await node.send_instruction(
                ref, jt.Instruction("add", {"item": item}), delivery="at_least_once"
            )
        await trio.sleep(30)
        assert await node.call(ref, jt.Instruction("get")) == ["a", "b"]
        [child] = node.supervision_tree().children
        assert child.status == "running" and child.restarts >= 2
