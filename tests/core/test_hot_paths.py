"""The fast paths of local tell and call (docs/performance.md): a schedule
point every N sends, reply deadlines without a cancel scope per call, and
synchronous commits on the in-memory backend."""

from __future__ import annotations

import functools
import time
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import jido_trio as jt
from jido_trio._core import Reply
from jido_trio._core import ReplyDeadlines
from jido_trio._scheduling import TELL_SCHEDULE_EVERY
from jido_trio.testing import agent_internals
from jido_trio.testing import pending_reply_deadlines
from tests._agents import Counter
from tests._agents import CounterState


class StepCounter(trio.abc.Instrument):
    """Counts how often each task is resumed by the scheduler."""

    def __init__(self) -> None:
        self.steps: dict[trio.lowlevel.Task, int] = {}

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task] = self.steps.get(task, 0) + 1


# ------------------------------------------------------------------ tell


async def test_local_tell_yields_once_every_n_sends() -> None:
    async with jt.open_node(name="n") as node:
        ref = await node.start_agent(Counter, "c")
        rounds = 5
        sent = trio.Event()
        task: list[trio.lowlevel.Task] = []

        async def sender() -> None:
            task.append(trio.lowlevel.current_task())
            for _ in range(rounds * TELL_SCHEDULE_EVERY):
                await node.send_instruction(ref, jt.Instruction("increment"))
            sent.set()

        counter = StepCounter()
        trio.lowlevel.add_instrument(counter)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender)
                await sent.wait()
        finally:
            trio.lowlevel.remove_instrument(counter)
        # Its first step, then one per TELL_SCHEDULE_EVERY sends: the sends
        # in between never gave the scheduler a turn.
        assert counter.steps[task[0]] == 1 + rounds
        assert await node.call(ref, jt.Instruction("get")) == rounds * TELL_SCHEDULE_EVERY


async def test_local_tell_lets_the_agent_apply_while_one_task_keeps_sending() -> None:
    async with jt.open_node(jt.Config(node_name="n", mailbox_size=10_000)) as node:
        ref = await node.start_agent(Counter, "c")
        seen_by_sender: list[int] = []
        for _ in range(4 * TELL_SCHEDULE_EVERY):
            await node.send_instruction(ref, jt.Instruction("increment"))
            seen_by_sender.append(agent_internals(node, "c").state.count)
        # The agent ran between the sender's schedule points, not only at the end.
        assert any(0 < seen < 4 * TELL_SCHEDULE_EVERY for seen in seen_by_sender)
        assert await node.call(ref, jt.Instruction("get")) == 4 * TELL_SCHEDULE_EVERY


async def test_local_tell_is_a_cancel_point_on_every_call() -> None:
    async with jt.open_node(name="n") as node:
        ref = await node.start_agent(Counter, "c")
        for attempt in range(3):  # whatever the schedule budget, cancelled sends raise
            with trio.CancelScope() as scope:
                scope.cancel()
                await node.send_instruction(ref, jt.Instruction("increment", id=f"x{attempt}"))
                pytest.fail("a cancelled send_instruction returned")  # pragma: no cover
            assert scope.cancelled_caught
            await node.send_instruction(ref, jt.Instruction("increment"))
        # Cancelled before anything was queued: only the three others were applied,
        # and the cancelled ids can be sent again.
        assert await node.call(ref, jt.Instruction("get")) == 3
        receipt = await node.send_instruction(ref, jt.Instruction("increment", id="x0"))
        assert receipt.status == "accepted"


async def test_local_tell_fast_path_keeps_every_refusal_and_envelope_field() -> None:
    async with jt.open_node(jt.Config(node_name="n", mailbox_size=2)) as node:
        ref = await node.start_agent(Counter, "c")
        with pytest.raises(ValueError, match="timeout"):
            await node.send_instruction(ref, jt.Instruction("increment"), timeout=-1)
        with pytest.raises(jt.ActionNotFound):
            await node.send_instruction(ref, jt.Instruction("nope"))
        with pytest.raises(jt.InvalidMessage, match="unexpected"):
            await node.send_instruction(ref, jt.Instruction("increment", {"bogus": 1}))
        with pytest.raises(TypeError):
            await node.send_instruction(ref, "increment")  # type: ignore[arg-type]
        first = await node.send_instruction(ref, jt.Instruction("increment", id="same"))
        again = await node.send_instruction(ref, jt.Instruction("increment", id="same"))
        assert (first.status, again.status) == ("accepted", "already_processed")
        assert first.instruction_id == again.instruction_id == "same"
        # A ref without a node resolves to the local agent on the fast path too.
        await node.send_instruction(
            jt.AgentRef(id="c", type="counter"), jt.Instruction("increment")
        )
        assert await node.call(jt.AgentRef(id="c", type="counter"), jt.Instruction("get")) == 2


async def test_local_tell_waits_for_room_when_the_mailbox_is_full(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with jt.open_node(jt.Config(node_name="n", mailbox_size=1)) as node:
        ref = await node.start_agent(Counter, "c")
        # The agent is busy for 3 s, so the mailbox (1 slot) fills up: the
        # next tell takes the slow path and waits for room, within its timeout.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(node.call, ref, jt.Instruction("slow", {"seconds": 3}))
            await trio.testing.wait_all_tasks_blocked()
            await node.send_instruction(ref, jt.Instruction("increment"))
            with pytest.raises(jt.MailboxFull):
                await node.send_instruction(ref, jt.Instruction("increment"), timeout=1)
            start = trio.current_time()
            await node.send_instruction(ref, jt.Instruction("increment"), timeout=10)
            assert trio.current_time() - start == pytest.approx(2, abs=0.1)
        assert await node.call(ref, jt.Instruction("get")) == 2


class Envelopes(jt.Agent):
    """Keeps the envelope of every message it handles."""

    type = "envelopes"
    seen: list[jt.Message | None] = []

    @jt.action("keep")
    async def keep(self, state: None) -> None:
        message = self.ctx.message
        assert message is self.ctx.message  # built once, then the same object
        self.seen.append(message)
        self.ctx.reply(message)


class Forwarder(jt.Agent):
    """Sends every ``forward`` on to the ref it is given, with ``ctx.send``."""

    type = "forwarder"

    @jt.action("forward")
    async def forward(self, state: None, to: jt.AgentRef, id: str) -> None:
        receipt = await self.ctx.send(to, jt.Instruction("keep", id=id))
        self.ctx.reply((self.ctx.message, receipt))


async def test_envelopes_built_on_the_fast_paths_carry_sender_and_trace() -> None:
    Envelopes.seen = []
    async with jt.open_node(name="n") as node:
        keeper = await node.start_agent(Envelopes, "e")
        forwarder = await node.start_agent(Forwarder, "f")
        cause, receipt = await node.call(
            forwarder, jt.Instruction("forward", {"to": keeper, "id": "k1"})
        )
        await node.call(keeper, jt.Instruction("keep", id="k2"))
        message = Envelopes.seen[0]
        assert message is not None
        assert (message.id, message.sender, message.recipient) == (
            receipt.message_id,
            forwarder,
            keeper,
        )
        assert (message.trace_id, message.causation_id) == (cause.trace_id, cause.id)
        assert message.version == 1
        assert jt.Message.from_bytes(message.to_bytes()) == message


async def test_local_envelopes_built_on_first_read_are_the_full_envelope() -> None:
    Envelopes.seen = []
    async with jt.open_node(name="n") as node:
        ref = await node.start_agent(Envelopes, "e")
        before = time.time()
        instruction = jt.Instruction("keep", id="i1")
        receipt = await node.send_instruction(ref, instruction)
        answered = await node.call(ref, jt.Instruction("keep", id="i2"))
        after = time.time()
        told, called = Envelopes.seen
        assert called is answered
        for message, instruction_id in ((told, "i1"), (called, "i2")):
            assert isinstance(message, jt.Message)
            assert message.recipient == ref and message.sender is None
            assert message.payload.id == instruction_id
            assert message.trace_id == message.id and message.causation_id is None
            assert before <= message.timestamp <= after
            assert message.metadata == {} and message.version == 1
            assert jt.Message.from_bytes(message.to_bytes()) == message
        assert told is not None and told.id == receipt.message_id
        assert told.payload == instruction


async def test_a_call_refused_on_the_local_path_is_dead_lettered_with_its_envelope() -> None:
    async with jt.open_node(name="n") as node:
        ref = await node.start_agent(Counter, "c")
        newer = jt.Instruction("increment", version=99, id="v99")
        with pytest.raises(jt.InvalidMessage, match="newer"):
            await node.call(ref, newer)
        (letter,) = await node.dead_letters(ref)
        assert letter.payload == newer and letter.recipient == ref
        assert letter.trace_id == letter.id


class BrokenLookup(Counter):
    """Its ``increment`` action cannot even be looked up on the instance."""

    type = "broken-lookup"

    @property
    def increment(self) -> Any:  # type: ignore[override]
        raise RuntimeError("lookup failed")


async def test_an_action_that_fails_before_it_runs_fails_its_call_like_any_action() -> None:
    async with jt.open_node(name="n") as node:
        ref = await node.start_agent(BrokenLookup, "b")
        with pytest.raises(jt.ActionError, match="lookup failed"):
            await node.call(ref, jt.Instruction("increment"))
        await node.send_instruction(ref, jt.Instruction("increment"))  # dead-lettered
        # Each failure is settled once (no redelivery loop up to the
        # supervisor's restart limit), and the agent keeps answering.
        assert await node.call(ref, jt.Instruction("get")) == 0
        with pytest.raises(jt.ActionError, match="lookup failed"):
            await node.call(ref, jt.Instruction("increment"))
        assert await node.call(ref, jt.Instruction("get")) == 0
        assert agent_internals(node, "b").restarts <= 3


def test_instruction_constructor_checks_its_fields() -> None:
    instruction = jt.Instruction("a", {"x": 1}, id="i", version=2)
    assert (instruction.action, dict(instruction.params), instruction.id) == ("a", {"x": 1}, "i")
    assert instruction == jt.Instruction("a", {"x": 1}, id="i", version=2)
    assert attrs.evolve(instruction, action="b").action == "b"
    assert jt.Instruction("a").id != jt.Instruction("a").id
    for bad in (
        lambda: jt.Instruction(1),  # type: ignore[arg-type]
        lambda: jt.Instruction("a", [1]),  # type: ignore[arg-type]
        lambda: jt.Instruction("a", id=""),
        lambda: jt.Instruction("a", version=0),
        lambda: jt.Instruction("a", version=True),
    ):
        with pytest.raises(TypeError):
            bad()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        instruction.action = "b"  # type: ignore[misc]
    params = {"x": 1}
    copied = jt.Instruction("a", params)
    params["x"] = 2
    assert copied.params["x"] == 1  # a read-only copy


# ------------------------------------------------------------------ call deadlines


async def test_call_deadlines_out_of_order(autojump_clock: trio.testing.MockClock) -> None:
    async with jt.open_node(name="n") as node:
        a = await node.start_agent(Counter, "a")
        b = await node.start_agent(Counter, "b")
        start = trio.current_time()
        ended: dict[str, float] = {}

        async def call(ref: jt.AgentRef, timeout: float) -> None:
            with pytest.raises(jt.CallTimeout):
                await node.call(ref, jt.Instruction("slow", {"seconds": 100}), timeout=timeout)
            ended[ref.id] = trio.current_time() - start

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, a, 10.0)
            await trio.sleep(1)
            # An earlier deadline than the one the watcher sleeps until.
            nursery.start_soon(call, b, 2.0)
        assert ended == {"a": pytest.approx(10.0), "b": pytest.approx(3.0)}


async def test_call_cancelled_from_outside_is_abandoned(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with jt.open_node(name="n") as node:
        ref = await node.start_agent(Counter, "c")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                functools.partial(
                    node.call, ref, jt.Instruction("slow", {"seconds": 5}), timeout=60
                )
            )
            await trio.sleep(0.1)
            with trio.move_on_after(1) as scope:
                await node.call(ref, jt.Instruction("increment", id="late"), timeout=60)
            assert scope.cancelled_caught
        # Queued, then abandoned by its caller: skipped, and free to be sent again.
        assert await node.call(ref, jt.Instruction("get")) == 0
        await node.call(ref, jt.Instruction("increment", id="late"))
        assert await node.call(ref, jt.Instruction("get")) == 1


async def test_deadline_watcher_forgets_answered_calls(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with jt.open_node(name="n") as node:
        ref = await node.start_agent(Counter, "c")
        for _ in range(100):
            assert await node.call(ref, jt.Instruction("get"), timeout=5) == 0
        # Answered slots are dropped as new ones come.
        assert pending_reply_deadlines(node) <= 1
        await trio.sleep(6)
        assert pending_reply_deadlines(node) == 0


async def test_circuit_open_does_not_leave_the_instruction_pending(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = jt.Config(node_name="n", breaker_failure_threshold=1, breaker_reset_timeout=10)
    async with jt.open_node(config) as node:
        ref = await node.start_agent(Counter, "c")
        with pytest.raises(jt.CallTimeout):
            await node.call(ref, jt.Instruction("slow", {"seconds": 3}), timeout=1)
        with pytest.raises(jt.CircuitOpen):
            await node.call(ref, jt.Instruction("increment", id="op"))
        await trio.sleep(10)
        # Refused by the breaker, never queued: the same id goes through later.
        await node.call(ref, jt.Instruction("increment", id="op"))
        assert await node.call(ref, jt.Instruction("get")) == 1


async def test_reply_deadlines_expire_in_deadline_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    deadlines = ReplyDeadlines()
    now = trio.current_time()
    replies = {t: Reply() for t in (5.0, 1.0, 3.0, 3.0, 8.0)}
    replies[3.0] = Reply()
    answered = Reply()
    for t, reply in replies.items():
        deadlines.add(now + t, reply)
    deadlines.add(now + 2.0, answered)
    answered.set("in time")
    expired_at: dict[float, float] = {}

    async def watch(t: float, reply: Reply) -> None:
        await reply.wait()
        expired_at[t] = trio.current_time() - now

    async with trio.open_nursery() as nursery:
        for t, reply in replies.items():
            nursery.start_soon(watch, t, reply)
    assert all(reply.expired and reply.abandoned for reply in replies.values())
    assert expired_at == {t: pytest.approx(t) for t in replies}
    assert not answered.expired and await answered.wait() == "in time"
    assert len(deadlines) == 0


async def test_reply_deadlines_compact_settled_entries() -> None:
    deadlines = ReplyDeadlines()
    now = trio.current_time()
    keep = Reply()
    deadlines.add(now + 1000, keep)
    # Earlier deadlines than the lane's tail go to the heap; settled ones pile
    # up there until a compaction drops them.
    for i in range(5 * ReplyDeadlines.COMPACT_AT):
        reply = Reply()
        deadlines.add(now + 999 - i * 1e-6, reply)
        reply.set(i)
    assert len(deadlines) <= 2 * ReplyDeadlines.COMPACT_AT
    assert not keep.done


async def test_reply_has_a_single_waiter() -> None:
    reply = Reply()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reply.wait)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(RuntimeError, match="single waiter"):
            await reply.wait()
        reply.set(1)
    assert await reply.wait() == 1


async def test_stop_agent_handles_what_was_sent_before_it() -> None:
    stopped_with: list[int] = []

    class Stopping(Counter):
        type = "stopping-counter"

        async def on_stop(self, state: CounterState, reason: str) -> None:
            stopped_with.append(state.count)

    async with jt.open_node(name="n") as node:
        ref = await node.start_agent(Stopping, "c")
        # More than one batch, sent without the sender yielding in between.
        for _ in range(300):
            await node.send_instruction(ref, jt.Instruction("increment"))
        await node.stop_agent(ref)
        assert stopped_with == [300]
        with pytest.raises(jt.AgentUnavailable):
            await node.send_instruction(ref, jt.Instruction("increment"))


def _all_tasks() -> int:
    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(walk(t) for n in task.child_nurseries for t in n.child_tasks)

    root = trio.lowlevel.current_root_task()
    assert root is not None
    return walk(root)


async def test_deadline_watcher_ends_with_the_node() -> None:
    before = _all_tasks()
    async with jt.open_node(name="n") as node:
        ref = await node.start_agent(Counter, "c")
        assert await node.call(ref, jt.Instruction("get"), timeout=600) == 0
        assert _all_tasks() > before
    await trio.testing.wait_all_tasks_blocked()
    # No task left behind sleeping until the call's (long past) deadline.
    assert _all_tasks() == before
