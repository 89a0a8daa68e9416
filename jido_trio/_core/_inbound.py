"""Delivering to an agent of this node: queueing tells, calls and queries.

Each operation has one synchronous attempt that queues at once when it can
(trio's ``send_nowait``) and one general path that awaits what the attempt
could not do: room in a full mailbox, the append of an at-least-once message
to the durable mailbox, the dead letter of an instruction refused as invalid.
The Communication layer decides that an operation is local and calls these;
whoever sends (the node, an agent's context, a request from another node)
reaches an agent of this node through them.

Envelopes of local messages are built lazily: the sync attempts take
:data:`~jido_trio._message.EnvelopeParts` and a :class:`Message` is built
only if something reads it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import trio

from .._exceptions import CallTimeout
from .._exceptions import InvalidMessage
from .._exceptions import MailboxFull
from .._message import EnvelopeParts
from .._message import Instruction
from .._message import Message
from .._message import Origin
from .._message import Receipt
from .._message import build_envelope
from .._message import envelope_parts
from .._message import make_receipt
from .._scheduling import TELL_BUDGET
from ._cell import AgentCell
from ._delivery import Delivery
from ._mailbox import MailboxClosed
from ._reply import Reply

__all__ = [
    "call_abandoned",
    "prepare",
    "prepare_nowait",
    "queue_and_wait",
    "queue_call_nowait",
    "reply_value",
    "tell",
    "tell_nowait",
    "wait_queued_reply",
]


@contextmanager
def _pending_until_queued(cell: AgentCell, instruction_id: str) -> Iterator[None]:
    """A send that fails before its message is queued takes its id out of
    the agent's pending set again (a closed mailbox raises its own error)."""
    try:
        yield
    except MailboxClosed as closed:
        cell.discard_pending(instruction_id)
        raise closed.error from None
    except BaseException:
        cell.discard_pending(instruction_id)
        raise


def _mailbox_full(cell: AgentCell) -> MailboxFull:
    return MailboxFull(f"mailbox of agent {cell.ref.id!r} stayed full until the deadline")


def call_abandoned(cell: AgentCell, instruction_id: str) -> None:
    """The caller gave up on a call (deadline, cancellation): the agent will
    skip its queued copy, so the id is no longer pending, and a retry with
    the same id is queued rather than refused as a duplicate. Had the agent
    already begun the action, the retry reaches it after the action marked
    the id as applied, and is answered ``AlreadyProcessed``."""
    cell.discard_pending(instruction_id)


def prepare_nowait(cell: AgentCell, instruction: Instruction) -> Instruction | None:
    """The instruction checked (and upcast) for the agent's class; ``None``
    when it is refused (then :func:`prepare` sets it aside and raises)."""
    try:
        return cell.cls.prepare(instruction)
    except InvalidMessage:
        return None


async def prepare(
    cell: AgentCell, message: Message | EnvelopeParts, instruction: Instruction
) -> Instruction:
    """:func:`prepare_nowait`, or set a refused instruction aside where an
    operator can see it (a dead letter) and raise.

    :raises ActionNotFound: the agent's class has no such action.
    :raises InvalidMessage: the params do not fit the action.
    """
    try:
        return cell.cls.prepare(instruction)
    except InvalidMessage as exc:
        if not isinstance(message, Message):
            message = build_envelope(message)
        await cell.store_dead_letter(message, str(exc))
        raise


# ---------------------------------------------------------------- tell


def tell_nowait(cell: AgentCell, instruction: Instruction, origin: Origin) -> Receipt | None:
    """Queue a one-way instruction at once: a valid, new instruction for an
    agent whose mailbox has room. ``None``: anything else, for :func:`tell`.

    The caller passes a cancel point just before, and a schedule point every
    so many tells (see :class:`~jido_trio._scheduling.ScheduleBudget`).
    """
    mailbox = cell.mailbox
    if not mailbox.has_room():
        return None
    try:
        prepared = cell.cls.prepare(instruction)
    except InvalidMessage:
        return None  # refused: tell() sets it aside and raises
    if not cell.accept(prepared.id):
        return None  # a duplicate: tell() answers "already_processed"
    # The envelope is built only if something reads it (see Delivery).
    parts = envelope_parts(origin, cell.ref, instruction)
    mailbox.put_nowait(Delivery("instruction", parts, prepared, None))
    return make_receipt(parts[0], prepared.id, "accepted")


async def tell(
    cell: AgentCell,
    message: Message | EnvelopeParts,
    instruction: Instruction,
    deadline: float,
    *,
    durable: bool = False,
) -> Receipt:
    """Queue a one-way instruction, waiting up to ``deadline`` for room;
    ``durable``: append it to the durable mailbox first (at-least-once).

    :raises MailboxFull: no room before the deadline.
    :raises AgentUnavailable: the agent stopped for good.
    :raises ActionNotFound, InvalidMessage: as for :func:`prepare`.
    """
    await trio.lowlevel.checkpoint_if_cancelled()
    instruction = prepare_nowait(cell, instruction) or await prepare(cell, message, instruction)
    message_id = message.id if isinstance(message, Message) else message[0]
    # A durable send is only a duplicate of an applied instruction: one merely
    # queued (or whose log append is still out) may yet be lost, so it is
    # logged again and the agent skips the second copy.
    if cell.applied_before(instruction.id) if durable else cell.seen(instruction.id):
        await trio.lowlevel.checkpoint()
        return make_receipt(message_id, instruction.id, "already_processed")
    cell.add_pending(instruction.id)
    if durable:
        if not isinstance(message, Message):
            message = build_envelope(message)
        return await _log_and_queue(cell, message, instruction, deadline)
    item = Delivery("instruction", message, instruction, None)
    if not cell.mailbox.closed and cell.mailbox.put_nowait(item):
        if TELL_BUDGET.count():
            await trio.lowlevel.cancel_shielded_checkpoint()
    else:
        with _pending_until_queued(cell, instruction.id):
            with trio.move_on_at(deadline) as scope:
                await cell.mailbox.put(item)
            if scope.cancelled_caught:
                raise _mailbox_full(cell)
    return make_receipt(message_id, instruction.id, "accepted")


async def _log_and_queue(
    cell: AgentCell, message: Message, instruction: Instruction, deadline: float
) -> Receipt:
    """The at-least-once send, its id already pending: room first, then the
    log, then the mailbox. A send refused (``MailboxFull``, a stopped agent)
    is not in the log, so no later restart applies it behind the sender's
    back; one logged is queued at once."""
    mailbox = cell.mailbox
    durable = cell.ensure_log()
    with _pending_until_queued(cell, instruction.id):
        if not mailbox.has_room():
            with trio.move_on_at(deadline) as scope:
                await mailbox.wait_for_room()
            if scope.cancelled_caught:
                raise _mailbox_full(cell)
        # Logged before the receipt: from here on the agent applies it even
        # if it (or this process) crashes before handling it.
        seq = await durable.append(cell.kernel.state, message.to_bytes())
    item = Delivery("instruction", message, instruction, None, log_seq=seq)
    try:
        mailbox.put_admitted(item)
    except MailboxClosed as closed:
        # Stopped during the append: it stays in the log, and the agent
        # applies it when its id is started again.
        cell.discard_pending(instruction.id)
        raise closed.error from None
    durable.unacked[seq] = instruction.id
    return make_receipt(message.id, instruction.id, "accepted")


# ---------------------------------------------------------------- call and query


def queue_call_nowait(
    cell: AgentCell, item: Delivery, reply: Reply, deadline: float, now: float
) -> bool:
    """Queue a call or query whose reply the caller will wait on, if the
    deadline has not passed and the mailbox has room (``False``: use
    :func:`queue_and_wait`). The node's deadline heap, not a cancel scope of
    the caller, expires the reply; the caller must then ``await
    trio.lowlevel.wait_task_rescheduled(reply.abort_wait)`` at once."""
    mailbox = cell.mailbox
    if now >= deadline or not mailbox.has_room():
        return False
    instruction = item.instruction
    if instruction is not None:
        cell.add_pending(instruction.id)
    mailbox.put_nowait(item)
    cell.kernel.deadlines.add(deadline, reply)
    reply.prepare_wait()  # the agent cannot have answered yet
    return True


def reply_value(cell: AgentCell, reply: Reply) -> Any:
    """What the caller of a settled reply gets.

    :raises CallTimeout: the deadline passed first.
    """
    if reply.expired:
        raise CallTimeout(f"no reply from agent {cell.ref.id!r} before the deadline")
    return reply.result()


async def queue_and_wait(cell: AgentCell, item: Delivery, deadline: float) -> Any:
    """Queue a call or query, waiting for room, then wait for its reply; all
    bounded by ``deadline``.

    :raises MailboxFull: no room before the deadline (overload: the agent is
        busy, not failing).
    :raises CallTimeout: queued, but no reply before the deadline.
    :raises AgentUnavailable: the agent stopped for good.
    """
    reply = item.reply
    assert reply is not None
    instruction_id = None if item.instruction is None else item.instruction.id
    if instruction_id is not None:
        cell.add_pending(instruction_id)
    queued = False
    try:
        with trio.move_on_at(deadline) as scope:
            await cell.mailbox.put(item)
            queued = True
            return await reply.wait()
    except MailboxClosed as closed:
        raise closed.error from None
    finally:
        if not reply.done:
            reply.abandoned = True
            if instruction_id is not None:
                call_abandoned(cell, instruction_id)
    if scope.cancelled_caught:
        if not queued:
            raise _mailbox_full(cell)
        raise CallTimeout(f"no reply from agent {cell.ref.id!r} before the deadline")
    raise AssertionError("unreachable")  # pragma: no cover


async def wait_queued_reply(cell: AgentCell, reply: Reply, instruction_id: str | None) -> Any:
    """Wait for the reply of a call or query that :func:`queue_call_nowait`
    queued; a caller that gives up (cancelled, or its deadline expired the
    reply) lets a retry of the same instruction id in.

    :raises CallTimeout: the deadline passed first.
    """
    try:
        await trio.lowlevel.wait_task_rescheduled(reply.abort_wait)
    finally:
        if not reply.done:
            reply.abandoned = True
        if reply.abandoned and instruction_id is not None:
            call_abandoned(cell, instruction_id)
    return reply_value(cell, reply)
