"""The batch loop of an agent incarnation.

The loop drains the mailbox in batches of up to :data:`BATCH_LIMIT`
messages, runs each message's action, then *settles* the batch: commits the
new state together with the applied instruction ids (one compare-and-set),
and only then releases the replies of the batch's calls and trims the
applied at-least-once messages from the durable mailbox. A caller therefore
never sees an answer whose effect could still be lost.

What a failed or interrupted batch does:

- an action raises: what came before it is committed and answered; the
  failing message is settled (a caller gets :class:`~jido_trio.ActionError`,
  an at-least-once message is retried up to ``max_delivery_attempts`` times,
  then dead-lettered); the rest of the batch waits for the next incarnation,
  and the incarnation fails (its supervisor decides what happens next);
- the commit fails: the batch applied nothing. Its instruction ids are
  forgotten (a retry with the same id is applied), callers get
  :class:`~jido_trio.AgentUnavailable` with the cause, one-way messages
  (logged or not) are queued again with fresh reply state, and the
  incarnation fails: the next one reloads the last committed state and
  applies them once;
- cancelled for shutdown: what was applied is still committed, shielded, for
  at most the shutdown timeout; what was not reached stays queued.
"""

from __future__ import annotations

import logging
from types import MappingProxyType
from typing import TYPE_CHECKING
from typing import Any

import trio

from .._agent import ActionSpec
from .._exceptions import INFRASTRUCTURE_ERRORS
from .._exceptions import ActionError
from .._exceptions import ActionNotFound
from .._exceptions import AgentUnavailable
from .._exceptions import AlreadyProcessed
from .._exceptions import InfrastructureFailure
from .._exceptions import RetriedMessageFailure
from .._exceptions import describe
from .._scheduling import TELL_BUDGET
from ._delivery import Delivery
from ._effects import committed_effects
from ._effects import release_effects
from ._effects import release_nowait
from ._log import attempts_key
from ._log import encode_attempts
from ._store import CommitPlan

if TYPE_CHECKING:
    from ._cell import AgentCell

__all__ = ["BATCH_LIMIT", "action_error", "run_loop"]

log = logging.getLogger("jido_trio.agent")

#: Most messages handled between two state commits.
BATCH_LIMIT = 64

#: Seconds before an at-least-once send that had to wait for its recipient
#: (see :mod:`._effects`) is tried again, if no message wakes the agent first.
RELEASE_RETRY_DELAY = 1.0


def action_error(agent_id: str, action: str, exc: BaseException) -> ActionError:
    """The :class:`~jido_trio.ActionError` a caller sees when ``action`` raised ``exc``."""
    error = ActionError(f"action {action!r} of agent {agent_id!r} failed: {describe(exc)}")
    error.__cause__ = exc
    return error


def _persist_failed(cell: AgentCell, cause: BaseException) -> AgentUnavailable:
    error = AgentUnavailable(
        f"agent {cell.ref.id!r} could not persist its state: {describe(cause)}"
    )
    error.__cause__ = cause
    return error


async def run_loop(cell: AgentCell) -> None:
    """Handle the mailbox until a stop is requested (then drain what was
    queued before it) or a crash is injected; release what committed batches
    sent (see :mod:`._effects`) after each batch."""
    mailbox = cell.mailbox
    release_later = False
    while cell.injected is None:
        if cell.unreleased:
            # What the last batch sent: at once when it can (local at-most-
            # once sends), else awaiting each send in turn.
            if release_nowait(cell):
                release_later = not await release_effects(cell)
            elif TELL_BUDGET.count():
                await trio.lowlevel.cancel_shielded_checkpoint()
        durable = cell.durable_log
        # A suspect of a process crash runs alone: only it keeps counting.
        limit = 1 if durable is not None and durable.suspects else BATCH_LIMIT
        if cell.stop_requested:
            if cell.drain_before_stop <= 0:
                return
            batch = mailbox.take_batch(min(limit, cell.drain_before_stop))
            cell.drain_before_stop -= len(batch)
            if not batch:
                return
        else:
            batch = mailbox.take_batch(limit)
        if not batch:
            cell.forget_pending_if_idle()
            if release_later:
                # An at-least-once send waits for its recipient: try again in a
                # while, or as soon as a message comes.
                with trio.move_on_after(RELEASE_RETRY_DELAY):
                    await mailbox.wait()
            elif mailbox.prepare_wait():
                await trio.lowlevel.wait_task_rescheduled(mailbox.abort_wait)
            else:
                await trio.lowlevel.checkpoint()
            continue
        if durable is not None and durable.unacked:
            await _count_attempts(cell, batch)
        await _run_batch(cell, batch)
        if len(mailbox):
            # A batch may run without ever yielding (synchronous commit):
            # let the rest of the program run before the next one.
            await trio.lowlevel.checkpoint()


async def _count_attempts(cell: AgentCell, batch: list[Delivery]) -> None:
    """Count a start of each logged message of ``batch``, durably, before it
    runs (see :mod:`._log`): a message that takes the process down is counted
    too. A batch whose count cannot be written does not run."""
    logged = [delivery for delivery in batch if delivery.log_seq is not None]
    if not logged:
        return
    for delivery in logged:
        delivery.attempts += 1
    record = encode_attempts({d.log_seq: d.attempts for d in logged if d.log_seq is not None})
    kernel = cell.kernel
    key = attempts_key(cell.ref.id)
    try:
        if kernel.state_nowait is not None:
            kernel.state_nowait.write_nowait(key, record)
        else:
            await kernel.state.write(key, record)
    except BaseException as exc:
        for delivery in logged:
            delivery.attempts -= 1
        cell.mailbox.requeue_front(batch)
        if isinstance(exc, INFRASTRUCTURE_ERRORS):
            raise InfrastructureFailure(f"counting attempts of agent {cell.ref.id!r}", exc) from exc
        raise


async def _run_batch(cell: AgentCell, batch: list[Delivery]) -> None:
    applied: list[Delivery] = []
    dirty = False
    logged = False
    crash: Exception | None = None
    commit_error: Exception | None = None
    index = 0
    instance = cell.instance
    actions = cell.cls.actions
    store = cell.store  # made by the first mark if there is none yet
    # Ids marked before this batch: a failed commit forgets those marked since.
    marked_before = 0 if store is None else len(store.recent)
    try:
        for delivery in batch:
            instruction = delivery.instruction
            try:
                if (
                    instruction is None
                    or delivery.reply is not None
                    or (store is not None and instruction.id in store.seen)
                ):
                    spec = _admit(cell, delivery)
                else:  # a new one-way instruction: only the action to find
                    spec = actions.get(instruction.action) or _admit(cell, delivery)
                if spec is not None:
                    # The action runs here rather than in a helper coroutine:
                    # one frame less per message on the hottest path.
                    assert instruction is not None
                    # Always a read-only proxy of a dict (Instruction makes it so).
                    params: MappingProxyType[str, Any] = instruction.params  # type: ignore[assignment]
                    method = getattr(instance, spec.method)
                    effects = cell.effects
                    cell.effects_mark = 0 if effects is None else len(effects)
                    cell.handling = delivery
                    try:
                        # ``**`` on a read-only mapping proxy takes CPython's
                        # slow path; a dict copy is cheaper.
                        result = await (
                            method(cell.state, **params.copy()) if params else method(cell.state)
                        )
                    finally:
                        cell.handling = None
                    if result is not None:
                        cell.state = result
                    if store is None:
                        store = cell.ensure_store()
                    store.mark(instruction.id)
                    pending = cell.pending
                    if pending is not None:
                        pending.discard(instruction.id)
                    dirty = True
            except Exception as exc:
                crash = exc
                effects = cell.effects
                if effects:  # what the failed action sent is not sent
                    del effects[cell.effects_mark :]
                break
            applied.append(delivery)
            logged = logged or delivery.log_seq is not None
            index += 1
    finally:
        state_nowait = cell.kernel.state_nowait
        if crash is None and index == len(batch) and not logged and state_nowait is not None:
            # Everything applied, nothing logged, state reachable without
            # waiting: commit and answer here (no shielded scope needed).
            if dirty:
                try:
                    _plan_commit(cell).run_nowait(state_nowait)
                except Exception as exc:
                    commit_error = exc
            _requeue(cell, _release(cell, applied, commit_error, marked_before))
        else:
            # Shielded: what was applied must be made durable and answered
            # even while the agent is cancelled, but never for longer than
            # its shutdown timeout.
            with trio.move_on_after(cell.kernel.shutdown_timeout) as scope:
                scope.shield = True
                commit_error = await _settle(
                    cell, batch, applied, dirty, index, crash or cell.injected, marked_before
                )
            if scope.cancelled_caught and commit_error is None:
                commit_error = TimeoutError(f"committing agent {cell.ref.id!r} timed out")
    if commit_error is not None:
        if isinstance(commit_error, INFRASTRUCTURE_ERRORS):
            # The engine failed, not the agent: its supervisor restarts it
            # after a delay, without counting toward its intensity.
            raise InfrastructureFailure(f"committing agent {cell.ref.id!r}", commit_error)
        raise commit_error
    if crash is not None:
        interrupted = batch[index]
        instruction = interrupted.instruction
        if instruction is not None:
            # Where it crashed, for the one log line of its supervisor.
            crash.add_note(
                f"agent {cell.ref.id!r} crashed in action {instruction.action!r} "
                f"(instruction {instruction.id!r})"
            )
        if interrupted.log_seq is not None and interrupted.attempts > 1:
            # Its first crash counted; the runtime retries (or dead-lettered)
            # it anyway: no single message exhausts the intensity.
            raise RetriedMessageFailure(
                f"logged message {interrupted.log_seq} crashed agent {cell.ref.id!r} "
                f"again (attempt {interrupted.attempts})",
                crash,
            )
        raise crash


async def _commit(cell: AgentCell) -> None:
    """Commit the cell's state and marked ids, without waiting if the backend allows."""
    kernel = cell.kernel
    plan = _plan_commit(cell)
    if kernel.state_nowait is not None:
        plan.run_nowait(kernel.state_nowait)
    else:
        await plan.run(kernel.state)


def _plan_commit(cell: AgentCell) -> CommitPlan:
    """The commit of the batch: its state, and the at-least-once messages its
    actions sent (written into the record with it, see :mod:`._effects`)."""
    sends: list[bytes] | None = None
    effects = cell.effects
    if effects:
        for effect in effects:
            if effect.delivery == "at_least_once" and effect.signal is None:
                effect.durable = effect.envelope().to_bytes()
                if sends is None:
                    sends = []
                sends.append(effect.durable)
    return cell.ensure_store().plan_commit(cell.state, sends)


def _release(
    cell: AgentCell,
    applied: list[Delivery],
    commit_error: BaseException | None,
    marked_before: int,
) -> list[Delivery]:
    """Answer the callers of what a batch applied, once its commit is done.
    After a failed commit, undo what the batch marked and return its one-way
    messages, to be queued again."""
    if commit_error is None:
        for delivery in applied:
            reply = delivery.reply
            if reply is not None:
                reply.set(delivery.reply_value)
        committed_effects(cell)
        return []
    # Nothing of the batch is committed: none of its ids counts as applied,
    # or a retry with the same id would be refused while nothing applied it;
    # nothing it sent goes out (applying it again sends it again).
    cell.effects = None
    store = cell.store
    if store is not None:
        store.unmark_since(marked_before)
    again: list[Delivery] = []
    for delivery in applied:
        if delivery.reply is not None:
            # Its caller is told (and may retry with the same id).
            delivery.fail(_persist_failed(cell, commit_error))
        else:
            # Applied only in memory: the next incarnation reloads the last
            # committed state and applies it again (a logged one's seq stays
            # unacked, so the log replay counts on it being queued). It
            # starts afresh, as if never handled.
            delivery.replied = False
            delivery.reply_value = None
            again.append(delivery)
    _uncount(again)  # the engine failed them, not their actions
    return again


async def _settle(
    cell: AgentCell,
    batch: list[Delivery],
    applied: list[Delivery],
    dirty: bool,
    index: int,
    cause: BaseException | None,
    marked_before: int,
) -> Exception | None:
    """Settle a batch that did not simply apply everything: commit what was
    applied, trim the durable mailbox, answer, and settle the message that
    was interrupted (``batch[index]``) and those after it."""
    commit_error: Exception | None = None
    try:
        if dirty:
            await _commit(cell)
    except Exception as exc:
        commit_error = exc
    except BaseException as exc:
        # Cancelled: the commit outlived the shutdown timeout. Settled as a
        # failed commit, synchronously, so that nothing logged is left counted
        # as queued while it is not (the next incarnation's replay would skip
        # it); what the batch did not reach stays queued.
        _requeue(cell, [*_release(cell, applied, exc, marked_before), *batch[index:]])
        raise
    if commit_error is None:
        try:
            await _trim_applied(cell, applied)
        except Exception as exc:
            # Applied and committed: the callers get their answers. Trimming
            # is only housekeeping: a replay skips ids already applied, and
            # the next batch's trim takes these entries too.
            log.warning("agent %r could not trim its durable log: %s", cell.ref.id, exc)
    unsaved = _release(cell, applied, commit_error, marked_before)
    if index < len(batch):
        await _settle_unfinished(cell, batch[index], cause, batch[index + 1 :])
    _requeue(cell, unsaved)  # ahead of the rest of the batch
    return commit_error


async def _trim_applied(cell: AgentCell, applied: list[Delivery]) -> None:
    """Drop applied at-least-once messages from the durable mailbox."""
    durable = cell.durable_log
    if durable is None:
        return
    upto = durable.applied(applied)
    if upto > 0:
        await cell.trim_log(upto)


def _uncount(deliveries: list[Delivery]) -> None:
    """Take back the counted start of logged messages that did not fail."""
    for delivery in deliveries:
        if delivery.log_seq is not None and delivery.attempts:
            delivery.attempts -= 1


def _requeue(cell: AgentCell, deliveries: list[Delivery]) -> None:
    """Put deliveries back at the head of the mailbox, their ids pending again."""
    if deliveries:
        for delivery in deliveries:
            if delivery.instruction is not None:
                cell.add_pending(delivery.instruction.id)
        cell.mailbox.requeue_front(deliveries)


async def _settle_unfinished(
    cell: AgentCell, interrupted: Delivery, cause: BaseException | None, rest: list[Delivery]
) -> None:
    # Their starts were counted (_count_attempts) but they did not run, or
    # (cancelled for shutdown) not through any fault of theirs.
    _uncount(rest if cause is not None else [interrupted, *rest])
    if cause is None:
        # Cancelled for shutdown: nothing was applied; keep it for later.
        cell.mailbox.requeue_front([interrupted, *rest])
        return
    instruction = interrupted.instruction
    if instruction is None:
        interrupted.fail(AgentUnavailable(f"agent {cell.ref.id!r} crashed"))
    elif interrupted.log_seq is not None:
        if interrupted.attempts < cell.kernel.max_delivery_attempts:
            rest = [interrupted, *rest]  # at-least-once: deliver it again after the restart
        else:
            cell.discard_pending(instruction.id)
            try:
                # Kept as a dead letter before it leaves the mailbox log: a
                # crash in between leaves it in both (a duplicate dead letter
                # at worst), never in neither.
                await cell.store_dead_letter(
                    interrupted.message,
                    f"action failed {interrupted.attempts} times, last: {describe(cause)}",
                )
                await _trim_applied(cell, [interrupted])
            except BaseException:
                # Not kept as a dead letter, so still in the mailbox log: it
                # stays queued, to be dead-lettered on the next try.
                cell.add_pending(instruction.id)
                cell.mailbox.requeue_front([interrupted, *rest])
                raise
    else:
        cell.discard_pending(instruction.id)
        if interrupted.reply is None:
            cell.kernel.events.dead_letter(interrupted.message, f"action failed: {describe(cause)}")
        else:
            interrupted.fail(action_error(cell.ref.id, instruction.action, cause))
    cell.mailbox.requeue_front(rest)


def _admit(cell: AgentCell, delivery: Delivery) -> ActionSpec | None:
    """The action to run for ``delivery``; ``None`` when it is settled here
    instead (a query, an abandoned call, a duplicate, an unknown action).
    What the action returns is applied by :func:`_run_batch`."""
    if delivery.kind == "query":
        delivery.reply_value = cell.state
        return None
    instruction = delivery.instruction
    assert instruction is not None
    reply = delivery.reply
    if reply is not None and reply.abandoned:
        cell.discard_pending(instruction.id)
        return None
    if cell.applied_before(instruction.id):
        cell.discard_pending(instruction.id)
        delivery.fail(AlreadyProcessed(f"instruction {instruction.id} was already applied"))
        return None
    spec = cell.cls.actions.get(instruction.action)
    if spec is None:
        cell.discard_pending(instruction.id)
        error = ActionNotFound(f"agent type {cell.ref.type!r} has no action {instruction.action!r}")
        if reply is None:
            cell.kernel.events.dead_letter(delivery.message, str(error))
        delivery.fail(error)
    return spec
