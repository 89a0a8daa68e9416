"""At-least-once delivery when log appends are slow and finish out of order.

On a networked StateBackend (JetStream) an append gets its sequence number on
the server at once but its acknowledgement later; two sends to one agent can
see their appends complete in the other order. These tests pin down that an
acknowledged instruction survives that, using a memory backend whose append
returns late on command.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any
from typing import ClassVar

import attrs
import trio

import jido_trio as jt
from jido_trio.local import MemoryStateBackend


class SlowAckBackend(MemoryStateBackend):
    """Appends of data containing ``b"slow"`` are stored at once (their seq is
    fixed) but return only once :attr:`release` is set."""

    release: trio.Event

    async def append(self, stream: str, data: bytes) -> int:
        seq = await super().append(stream, data)
        if b"slow" in data:
            await self.release.wait()
        return seq


class SlowAckPlugin:
    def __init__(self) -> None:
        self.backend = SlowAckBackend()
        self.backend.release = trio.Event()

    @jt.hookimpl
    def jido_trio_add_backends(self, backends: Any) -> None:
        backend = self.backend

        def factory(config: jt.Config, options: Mapping[str, Any]) -> SlowAckBackend:
            return backend

        backends.add_state("slow-ack", factory)


@attrs.frozen
class Items:
    items: tuple[str, ...] = ()


class FlakyList(jt.Agent):
    """Crashes the first time it is given an item starting with "crash"."""

    type = "alo-race-list"
    State = Items
    crashed: ClassVar[set[str]] = set()

    @jt.action("add")
    async def add(self, state: Items, item: str) -> Items:
        if item.startswith("crash") and item not in FlakyList.crashed:
            FlakyList.crashed.add(item)
            raise RuntimeError(f"first try of {item}")
        return Items((*state.items, item))

    @jt.action("get")
    async def get(self, state: Items) -> None:
        self.ctx.reply(list(state.items))


async def test_an_append_acknowledged_late_is_not_trimmed_by_a_later_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    plugin = SlowAckPlugin()
    config = jt.Config(node_name="n", state="slow-ack", max_restarts=10)
    async with jt.open_node(config, plugins=[plugin]) as node:
        ref = await node.start_agent(FlakyList, "list")
        async with trio.open_nursery() as nursery:
            # A is logged first (seq 1) but its append returns late...
            nursery.start_soon(
                partial(node.send_instruction, delivery="at_least_once"),
                ref,
                jt.Instruction("add", {"item": "crash-slow-A"}),
            )
            await trio.sleep(0.1)
            # ...after B (seq 2) was logged, applied, committed and acknowledged.
            await node.send_instruction(
                ref, jt.Instruction("add", {"item": "B"}), delivery="at_least_once"
            )
            assert await node.call(ref, jt.Instruction("get")) == ["B"]
            plugin.backend.release.set()
        # A was acknowledged; it crashes the agent on its first try, and the
        # restarted agent must find it in the log.
        await trio.sleep(5)
        assert await node.call(ref, jt.Instruction("get")) == ["B", "crash-slow-A"]
        assert await node.state.read_log("mailbox/list") == []


async def test_a_resend_while_the_first_append_is_out_is_logged_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    plugin = SlowAckPlugin()
    config = jt.Config(node_name="n", state="slow-ack", operation_timeout=1.0)
    async with jt.open_node(config, plugins=[plugin]) as node:
        ref = await node.start_agent(FlakyList, "list")
        instruction = jt.Instruction("add", {"item": "slow-C"}, id="c-1")
        first_failed = trio.Event()

        async def first_try() -> None:
            # The sender gives up (as a remote caller would on a lost reply)...
            with trio.move_on_after(0.5):
                await node.send_instruction(ref, instruction, delivery="at_least_once")
            first_failed.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(first_try)
            await first_failed.wait()
            # ...and resends the same id: it must not be told "already
            # processed" on the strength of an append that never returned.
            plugin.backend.release.set()
            receipt = await node.send_instruction(ref, instruction, delivery="at_least_once")
            assert receipt.status == "accepted"
        await trio.sleep(1)
        assert await node.call(ref, jt.Instruction("get")) == ["slow-C"]  # once


class FailingCommitBackend(MemoryStateBackend):
    """Fails the next write of an agent's state record once :attr:`fail_next` is set."""

    fail_next = False

    async def write(self, key: str, value: bytes, *, expected_version: int | None = None) -> int:
        if self.fail_next and key == "agent/list":
            self.fail_next = False
            await trio.lowlevel.checkpoint()
            raise jt.Unreachable("state store briefly away")
        return await super().write(key, value, expected_version=expected_version)


async def test_a_logged_message_whose_commit_failed_is_applied_after_the_restart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = FailingCommitBackend()

    class Plugin:
        @jt.hookimpl
        def jido_trio_add_backends(self, backends: Any) -> None:
            backends.add_state("failing-commit", lambda config, options: backend)

    config = jt.Config(node_name="n", state="failing-commit", max_restarts=10)
    async with jt.open_node(config, plugins=[Plugin()]) as node:
        ref = await node.start_agent(FlakyList, "list")
        backend.fail_next = True
        receipt = await node.send_instruction(
            ref, jt.Instruction("add", {"item": "D"}), delivery="at_least_once"
        )
        assert receipt.status == "accepted"
        # The commit after applying D fails: the agent restarts, reloads the
        # state without D, and must apply D again from its durable log.
        await trio.sleep(5)
        assert await node.call(ref, jt.Instruction("get")) == ["D"]
        assert await node.state.read_log("mailbox/list") == []
