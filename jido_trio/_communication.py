"""The Communication layer: the one place where a ref becomes a local mailbox
or a message to another node.

Everything the Node facade and agent contexts send goes through
:class:`Communication`. Local delivery never encodes anything; remote delivery
encodes the envelope, hands bytes to the Transport, and the owning node's
Communication decodes and delivers it locally (see :meth:`handle_remote`).
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import attrs
import trio

from . import _exceptions as errors
from ._agent_server import AgentCell, state_decoder
from ._delivery import Delivery, Reply, ReplyDeadlines
from ._exceptions import (
    ActionError,
    AgentNotFound,
    AgentUnavailable,
    AlreadyProcessed,
    CallTimeout,
    CircuitOpen,
    InvalidMessage,
    JidoError,
    MailboxFull,
    RemoteNotSupported,
    Unreachable,
)
from ._health import Health
from ._mailbox import MailboxClosed
from ._message import (
    EnvelopeParts,
    Instruction,
    Message,
    Receipt,
    build_envelope,
    decode_value,
    encode_value,
    envelope_parts,
)
from ._persistence import encode_state, synchronous_backend
from ._ref import AgentRef
from ._resilience import (
    BreakerConfig,
    BreakerRegistry,
    FailureDetector,
    LatencyTracker,
    RetryPolicy,
    retry_idempotent,
)
from ._scheduling import ScheduleBudget
from ._signal import Signal
from .abc import Consistency, Registry, StateBackend, Transport

if TYPE_CHECKING:
    from ._config import Config
    from .local._state import MemoryStateBackend

__all__ = ["Communication", "Delivery"]

log = logging.getLogger("jido_trio.communication")

Delivery_ = Literal["at_most_once", "at_least_once"]
_DELIVERY_MODES = ("at_most_once", "at_least_once")
_CONSISTENCY = ("strong", "eventual", "weak")

#: Envelope metadata key carrying the seconds a remote caller still waits.
TIMEOUT_KEY = "jido.timeout"
#: Envelope metadata key carrying the caller's deadline as Unix time.
DEADLINE_KEY = "jido.deadline"
#: Longest wait a remote request may ask for.
MAX_REMOTE_TIMEOUT = 3600.0

#: Stopped agents remembered (to answer AgentUnavailable rather than AgentNotFound).
TOMBSTONE_LIMIT = 100_000

EmitFn = Callable[..., None]


def _deadline(
    timeout: float | None, default: float, now: Callable[[], float] = trio.current_time
) -> float:
    t = default if timeout is None else timeout
    if isinstance(t, bool) or not isinstance(t, (int, float)) or t < 0 or math.isnan(t):
        raise ValueError(f"timeout must be a non-negative number, got {timeout!r}")
    return now() + t


#: A local ``send_instruction`` that finds room in the mailbox is a cancel
#: point on every call but a schedule point only once per this many such calls
#: (no task makes more in a row; like Erlang reductions); see docs/performance.md.
TELL_SCHEDULE_EVERY = 64

#: Counts local tells that took the hot path (see :meth:`Communication.tell_here`).
TELL_BUDGET = ScheduleBudget(TELL_SCHEDULE_EVERY)
_tell_schedule_point = TELL_BUDGET.schedule_point


@contextmanager
def _pending_until_queued(cell: AgentCell, instruction_id: str) -> Iterator[None]:
    """A send that fails before its message is queued takes its id out of
    the agent's pending set again (a closed mailbox raises its own error)."""
    try:
        yield
    except MailboxClosed as closed:
        cell.pending.discard(instruction_id)
        raise closed.error from None
    except BaseException:
        cell.pending.discard(instruction_id)
        raise


def _mailbox_full(cell: AgentCell) -> MailboxFull:
    return MailboxFull(f"mailbox of agent {cell.ref.id!r} stayed full until the deadline")


def _let_retry_in(cell: AgentCell, instruction_id: str) -> None:
    """The caller gave up on a call (deadline, cancellation): the agent will
    skip its queued copy, so the id is no longer pending, and a retry with
    the same id is queued rather than refused as a duplicate. Had the agent
    already begun the action, the retry reaches it after the action marked
    the id as applied, and is answered ``AlreadyProcessed``."""
    cell.pending.discard(instruction_id)


@attrs.define(eq=False)
class Communication:
    """Routes operations on refs to local cells or to other nodes."""

    node_name: str
    config: Config
    registry: Registry
    transport: Transport
    state: StateBackend
    emit: EmitFn
    spawn: Callable[[Callable[[], Awaitable[Any]]], None]
    cells: dict[str, AgentCell] = attrs.field(factory=dict)
    detector: FailureDetector | None = None
    publish: Callable[[Signal], Awaitable[int]] = attrs.field(default=None)
    on_agent_gone: Callable[[str], None] = attrs.field(default=lambda agent_id: None)
    handle_signal: Callable[[Message], Awaitable[None]] = attrs.field(default=None)
    _tombstones: OrderedDict[str, None] = attrs.field(factory=OrderedDict)
    breakers: BreakerRegistry = attrs.field(init=False)
    latency: LatencyTracker = attrs.field(factory=LatencyTracker, init=False)
    _retry: RetryPolicy = attrs.field(init=False)
    #: Deadlines of local calls waiting for a reply (no cancel scope per call).
    deadlines: ReplyDeadlines = attrs.field(factory=ReplyDeadlines, init=False)
    #: ``trio.current_time``, or the running clock's own method once the node
    #: runs (:meth:`use_clock`): the local call path reads the time 3 times.
    now: Callable[[], float] = attrs.field(default=trio.current_time, init=False)
    #: :attr:`state` when agents may start and commit through it synchronously
    #: (see ``synchronous_backend``), else ``None``; fixed for the node's life.
    sync_state: MemoryStateBackend | None = attrs.field(default=None, init=False)
    #: Agent ids whose registry entry a stopped agent is still removing (set
    #: when it is gone): a new agent with the id registers only after that.
    unregistering: dict[str, trio.Event] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        self.sync_state = synchronous_backend(self.state)
        self.breakers = BreakerRegistry(
            config=BreakerConfig(
                failure_threshold=self.config.breaker_failure_threshold,
                reset_timeout=self.config.breaker_reset_timeout,
            )
        )
        self._retry = RetryPolicy(max_attempts=self.config.retry_attempts)

    def use_clock(self) -> None:
        """Read the time from the current trio run's clock directly (the
        node's run: a Communication never outlives it)."""
        self.now = trio.lowlevel.current_clock().current_time

    @staticmethod
    def breaker_key(node: str | None, agent_id: str) -> str:
        return f"{node}/{agent_id}"

    # ------------------------------------------------------------ cells

    def add_cell(self, cell: AgentCell) -> None:
        self.cells[cell.ref.id] = cell
        self._tombstones.pop(cell.ref.id, None)

    def agent_gone(self, cell: AgentCell) -> None:
        """Called once an agent is stopped for good."""
        if self.cells.get(cell.ref.id) is cell:
            del self.cells[cell.ref.id]
        self._tombstones[cell.ref.id] = None
        self.on_agent_gone(cell.ref.id)
        while len(self._tombstones) > TOMBSTONE_LIMIT:
            self._tombstones.popitem(last=False)
        agent_id = cell.ref.id
        removed = self.unregistering[agent_id] = trio.Event()

        async def unregister() -> None:
            try:
                await self.registry.unregister(agent_id, node=self.node_name)
            finally:
                removed.set()
                if self.unregistering.get(agent_id) is removed:
                    del self.unregistering[agent_id]

        try:
            self.spawn(unregister)
        except trio.ClosedResourceError:
            # The node is closing: no agent starts any more, nobody waits.
            removed.set()
            del self.unregistering[agent_id]
            raise

    def dead_letter(self, message: Message, reason: str) -> None:
        log.warning("dead letter %s to %s: %s", message.id, message.recipient.id, reason)
        self.emit("jido_trio_message_dead_lettered", message=message, reason=reason)

    # ------------------------------------------------------------ resolution

    async def _resolve(self, ref: AgentRef) -> AgentCell | str:
        """Return the local cell for ``ref`` or the name of the node that owns it."""
        if not isinstance(ref, AgentRef):
            raise TypeError(f"expected an AgentRef, got {type(ref).__name__}")
        node = ref.node
        if node is None or node == self.node_name:
            cell = self.cells.get(ref.id)
            if cell is not None:
                return cell
            elsewhere = await self._registered_elsewhere(ref.id)
            if elsewhere is None:
                self._raise_missing(ref.id)
            return elsewhere
        return node

    async def _registered_elsewhere(self, agent_id: str) -> str | None:
        """The other node the registry names as owner of ``agent_id``, if any."""
        try:
            entry = await self.registry.lookup(agent_id)
        except AgentNotFound:
            return None
        if entry.node is None or entry.node == self.node_name:
            return None  # a stale entry of ours, about to be unregistered
        return entry.node

    async def _reresolve(self, agent_id: str, old: str) -> AgentCell | str | None:
        """Where ``agent_id`` lives now if the registry no longer names ``old``
        (it failed over): the local cell or the new node; ``None`` if unchanged."""
        try:
            entry = await self.registry.lookup(agent_id)
        except (AgentNotFound, Unreachable, CallTimeout):
            return None
        if entry.node is None or entry.node == old:
            return None
        if entry.node == self.node_name:
            return self.cells.get(agent_id)
        return entry.node

    def _raise_missing(self, agent_id: str) -> NoReturn:
        if agent_id in self._tombstones:
            raise AgentUnavailable(f"agent {agent_id!r} is stopped")
        raise AgentNotFound(f"no agent {agent_id!r} on node {self.node_name!r}")

    # ------------------------------------------------------------ operations

    async def _address(
        self,
        ref: AgentRef,
        instruction: Instruction,
        timeout: float | None,
        sender: AgentRef | None,
        trace_id: str | None,
        causation_id: str | None,
    ) -> tuple[AgentCell | str, Message, float]:
        """Validate, fix the deadline, find the owner and wrap the envelope."""
        if not isinstance(instruction, Instruction):
            raise TypeError(f"expected an Instruction, got {type(instruction).__name__}")
        deadline = _deadline(timeout, self.config.operation_timeout)
        target = await self._resolve(ref)
        message = Message.new(
            sender,
            ref if isinstance(target, str) else target.ref,
            instruction,
            trace_id=trace_id,
            causation_id=causation_id,
        )
        return target, message, deadline

    async def send_instruction(
        self,
        ref: AgentRef,
        instruction: Instruction,
        *,
        delivery: str = "at_most_once",
        sender: AgentRef | None = None,
        timeout: float | None = None,
        trace_id: str | None = None,
        causation_id: str | None = None,
    ) -> Receipt:
        if delivery not in _DELIVERY_MODES:
            raise ValueError(f"delivery must be one of {', '.join(_DELIVERY_MODES)}")
        if delivery == "at_most_once" and type(instruction) is Instruction:
            if timeout is not None:
                _deadline(timeout, 0.0)  # checked first, as on every path
            await trio.lowlevel.checkpoint_if_cancelled()
            receipt = self.tell_here(ref, instruction, sender, trace_id, causation_id)
            if receipt is not None:
                if TELL_BUDGET.count():
                    await trio.lowlevel.cancel_shielded_checkpoint()
                return receipt
        return await self.send_past_hot_path(
            ref, instruction, delivery, sender, timeout, trace_id, causation_id
        )

    async def send_past_hot_path(
        self,
        ref: AgentRef,
        instruction: Instruction,
        delivery: str,
        sender: AgentRef | None = None,
        timeout: float | None = None,
        trace_id: str | None = None,
        causation_id: str | None = None,
    ) -> Receipt:
        """:meth:`send_instruction` once :meth:`tell_here` said no (or was
        not asked): resolve, wrap, deliver locally or remotely."""
        target, message, deadline = await self._address(
            ref, instruction, timeout, sender, trace_id, causation_id
        )
        if isinstance(target, str):
            kind = "tell" if delivery == "at_most_once" else "tell_alo"
            # Safe to repeat: the instruction id makes a second delivery a no-op.
            try:
                status = await self._remote_idempotent(target, kind, message, deadline)
            except _MovedHere as moved:
                target = moved.cell
                message = attrs.evolve(message, recipient=target.ref)
            else:
                return Receipt._make(message.id, instruction.id, status)
        return await self.deliver_tell(
            target, message, instruction, deadline, durable=delivery == "at_least_once"
        )

    def _cell_here(self, ref: AgentRef) -> AgentCell | None:
        """The cell of ``ref`` if it lives on this node (no registry needed)."""
        if type(ref) is not AgentRef:
            return None
        node = ref.node
        if node is None or node == self.node_name:
            return self.cells.get(ref.id)
        return None

    def tell_here(
        self,
        ref: AgentRef,
        instruction: Instruction,
        sender: AgentRef | None = None,
        trace_id: str | None = None,
        causation_id: str | None = None,
    ) -> Receipt | None:
        """The hot path of an at-most-once tell, without awaiting: a valid,
        new instruction to an agent on this node whose mailbox has room is
        queued at once. ``None``: anything else, for :meth:`send_instruction`.

        The caller must have passed a cancel point just before, and count the
        tell in :data:`TELL_BUDGET` (a schedule point every so many).
        """
        # One function, not a chain of helpers (_cell_here is inlined): this
        # runs for every local tell.
        if type(instruction) is not Instruction or type(ref) is not AgentRef:
            return None
        node = ref.node
        if node is not None and node != self.node_name:
            return None
        cell = self.cells.get(ref.id)
        if cell is None:
            return None
        mailbox = cell.mailbox
        if not mailbox.has_room():
            return None
        try:
            prepared = cell.cls.prepare(instruction)
        except InvalidMessage:
            return None  # refused: send_instruction sets it aside and raises
        if not cell.accept(prepared.id):
            return None  # a duplicate: send_instruction answers "already_processed"
        # The envelope is built only if something reads it (see Delivery).
        parts = envelope_parts(sender, cell.ref, instruction, trace_id, causation_id)
        mailbox.put_nowait(Delivery("instruction", parts, prepared, None))
        return Receipt._make(parts[0], prepared.id, "accepted")

    def local_call(
        self,
        ref: AgentRef,
        instruction: Instruction,
        timeout: float | None,
        sender: AgentRef | None = None,
        trace_id: str | None = None,
        causation_id: str | None = None,
    ) -> Coroutine[Any, Any, Any] | None:
        """The coroutine of a call to an agent on this node (for the caller
        to await: no frame of its own in between), or ``None`` when ``ref``
        is not here."""
        if type(instruction) is not Instruction:
            return None
        cell = self._cell_here(ref)
        if cell is None:
            return None
        # What _address does, minus the registry (and the envelope is built
        # only if something reads it).
        deadline = _deadline(timeout, self.config.operation_timeout, self.now)
        parts = envelope_parts(sender, cell.ref, instruction, trace_id, causation_id)
        return self.deliver_call(cell, parts, instruction, deadline)

    async def deliver_tell(
        self,
        cell: AgentCell,
        message: Message,
        instruction: Instruction,
        deadline: float,
        *,
        durable: bool = False,
    ) -> Receipt:
        await trio.lowlevel.checkpoint_if_cancelled()
        instruction = self._prepare_nowait(cell, instruction) or await self._prepare(
            cell, message, instruction
        )
        # A durable send is only a duplicate of an applied instruction: one
        # merely queued (or whose log append is still out) may yet be lost,
        # so it is logged again and the agent skips the second copy.
        if instruction.id in cell.store.seen if durable else cell.seen(instruction.id):
            await trio.lowlevel.checkpoint()
            return Receipt(
                message_id=message.id, instruction_id=instruction.id, status="already_processed"
            )
        if not durable and cell.mailbox.has_room():
            # The hot path: no log, room in the mailbox, no cancel scope.
            cell.pending.add(instruction.id)
            cell.mailbox.put_nowait(Delivery("instruction", message, instruction, None))
            await _tell_schedule_point()
            return Receipt._make(message.id, instruction.id, "accepted")
        cell.pending.add(instruction.id)
        if durable:
            return await self._log_and_queue(cell, message, instruction, deadline)
        item = Delivery("instruction", message, instruction, None)
        if cell.mailbox.put_nowait(item) if not cell.mailbox.closed else False:
            # Room in the mailbox: no cancel scope needed, just a checkpoint.
            await trio.lowlevel.checkpoint()
        else:
            with _pending_until_queued(cell, instruction.id):
                with trio.move_on_at(deadline) as scope:
                    await cell.mailbox.put(item)
                if scope.cancelled_caught:
                    raise _mailbox_full(cell)
        return Receipt._make(message.id, instruction.id, "accepted")

    async def _log_and_queue(
        self, cell: AgentCell, message: Message, instruction: Instruction, deadline: float
    ) -> Receipt:
        """The at-least-once send, its id already pending: room first, then
        the log, then the mailbox. A send refused (``MailboxFull``, a stopped
        agent) is not in the log, so no later restart applies it behind the
        sender's back; one logged is queued at once."""
        mailbox = cell.mailbox
        with _pending_until_queued(cell, instruction.id):
            if not mailbox.has_room():
                with trio.move_on_at(deadline) as scope:
                    await mailbox.wait_for_room()
                if scope.cancelled_caught:
                    raise _mailbox_full(cell)
            # Logged before the receipt: from here on the agent applies it even
            # if it (or this process) crashes before handling it.
            token = object()
            cell.appending[token] = cell.log_seen
            try:
                seq = await self.state.append(cell.log_stream, message.to_bytes())
            finally:
                del cell.appending[token]
        cell.log_seen = max(cell.log_seen, seq)
        item = Delivery("instruction", message, instruction, None, log_seq=seq)
        try:
            mailbox.put_admitted(item)
        except MailboxClosed as closed:
            # Stopped during the append: it stays in the log, and the agent
            # applies it when its id is started again.
            cell.pending.discard(instruction.id)
            raise closed.error from None
        cell.unacked[seq] = instruction.id
        return Receipt._make(message.id, instruction.id, "accepted")

    async def call(
        self,
        ref: AgentRef,
        instruction: Instruction,
        *,
        timeout: float | None = None,
        sender: AgentRef | None = None,
        trace_id: str | None = None,
        causation_id: str | None = None,
    ) -> Any:
        local = self.local_call(ref, instruction, timeout, sender, trace_id, causation_id)
        if local is not None:
            return await local
        target, message, deadline = await self._address(
            ref, instruction, timeout, sender, trace_id, causation_id
        )
        if isinstance(target, str):
            try:
                return await self._remote(target, "call", message, deadline)
            except (Unreachable, AgentNotFound, CircuitOpen) as exc:
                # Each means the request reached no agent (no responder, a node
                # known dead, a node without it, a breaker refusing), so
                # redirecting cannot run the action twice; a timeout might
                # have, and is not redirected.
                if isinstance(exc, RemoteNotSupported):
                    raise
                moved = await self._reresolve(ref.id, target)
                if moved is None:
                    raise
                if isinstance(moved, str):
                    message = attrs.evolve(message, recipient=attrs.evolve(ref, node=moved))
                    return await self._remote(moved, "call", message, deadline)
                message = attrs.evolve(message, recipient=moved.ref)
                target = moved
        return await self.deliver_call(target, message, instruction, deadline)

    async def deliver_call(
        self,
        cell: AgentCell,
        message: Message | EnvelopeParts,
        instruction: Instruction,
        deadline: float,
    ) -> Any:
        await trio.lowlevel.checkpoint_if_cancelled()
        instruction = self._prepare_nowait(cell, instruction) or await self._prepare(
            cell, message, instruction
        )
        if cell.seen(instruction.id):
            await trio.lowlevel.checkpoint()
            raise AlreadyProcessed(f"instruction {instruction.id} was already applied")
        key = cell.breaker_key
        if key is None:
            key = cell.breaker_key = self.breaker_key(self.node_name, cell.ref.id)
        breaker = self.breakers.get(key)
        # breaker.call() inlined: one coroutine less per call.
        epoch = breaker.admit()
        if epoch is None:
            error = breaker.open_error()
            await trio.lowlevel.checkpoint()
            raise error
        reply = Reply()
        item = Delivery("instruction", message, instruction, reply)
        mailbox = cell.mailbox
        started = self.now()
        outcome: Literal["success", "failure", "release"] = "release"
        try:
            if started < deadline and mailbox.has_room():
                # The hot path (_enqueue_and_wait's, inlined: one coroutine
                # frame less to pass on suspend and resume).
                cell.pending.add(instruction.id)
                self._queue_for_reply(cell, item, reply, deadline)
                try:
                    await trio.lowlevel.wait_task_rescheduled(reply.abort_wait)
                finally:
                    if not reply.done:
                        reply.abandoned = True
                    if reply.abandoned:
                        _let_retry_in(cell, instruction.id)
                value = self._reply_value(cell, reply)
            else:
                cell.pending.add(instruction.id)
                value = await self._enqueue_and_wait(cell, item, deadline, started)
        except CallTimeout:
            outcome = "failure"
            raise
        else:
            outcome = "success"
        finally:
            breaker.report(epoch, outcome)
        self.latency.record(cell.ref.id, self.now() - started)
        return value

    def _queue_for_reply(
        self, cell: AgentCell, item: Delivery, reply: Reply, deadline: float
    ) -> None:
        """Queue a call or query (the mailbox has room) and make its reply
        ready to be waited on; the node's deadline heap, not a cancel scope
        of the caller, expires it."""
        cell.mailbox.put_nowait(item)
        self.deadlines.add(deadline, reply)
        reply.prepare_wait()  # the agent cannot have answered yet

    @staticmethod
    def _reply_value(cell: AgentCell, reply: Reply) -> Any:
        if reply.expired:
            raise CallTimeout(f"no reply from agent {cell.ref.id!r} before the deadline")
        return reply.result()

    async def _enqueue_and_wait(
        self, cell: AgentCell, item: Delivery, deadline: float, now: float | None = None
    ) -> Any:
        reply = item.reply
        assert reply is not None
        instruction_id = None if item.instruction is None else item.instruction.id
        if now is None:
            now = self.now()
        if now < deadline and cell.mailbox.has_room():
            # The hot path: queue at once, and let the node's deadline heap
            # (not a cancel scope of this call) expire the reply.
            try:
                await trio.lowlevel.checkpoint_if_cancelled()
            except BaseException:
                if instruction_id is not None:
                    cell.pending.discard(instruction_id)
                raise
            self._queue_for_reply(cell, item, reply, deadline)
            try:
                # reply.wait() inlined: one coroutine frame less to pass on
                # suspend and resume.
                await trio.lowlevel.wait_task_rescheduled(reply.abort_wait)
            finally:
                if not reply.done:
                    reply.abandoned = True
                if reply.abandoned and instruction_id is not None:
                    _let_retry_in(cell, instruction_id)
            return self._reply_value(cell, reply)
        try:
            with trio.move_on_at(deadline) as scope:
                await cell.mailbox.put(item)
                return await reply.wait()
        except MailboxClosed as closed:
            raise closed.error from None
        finally:
            if not reply.done:
                reply.abandoned = True
                if instruction_id is not None:
                    _let_retry_in(cell, instruction_id)
        if scope.cancelled_caught:
            raise CallTimeout(f"no reply from agent {cell.ref.id!r} before the deadline")
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _prepare_nowait(cell: AgentCell, instruction: Instruction) -> Instruction | None:
        """:meth:`_prepare` without awaiting; ``None`` when the instruction is
        refused (then :meth:`_prepare` sets it aside and raises)."""
        try:
            return cell.cls.prepare(instruction)
        except InvalidMessage:
            return None

    async def _prepare(
        self, cell: AgentCell, message: Message | EnvelopeParts, instruction: Instruction
    ) -> Instruction:
        try:
            return cell.cls.prepare(instruction)
        except InvalidMessage as exc:
            # Refused input is set aside where an operator can see it.
            if not isinstance(message, Message):
                message = build_envelope(message)
            await cell.store_dead_letter(message, str(exc))
            raise

    async def query(
        self,
        ref: AgentRef,
        query: str = "get_state",
        *,
        consistency: Consistency = "strong",
        timeout: float | None = None,
    ) -> Any:
        if consistency not in _CONSISTENCY:
            raise ValueError(f"consistency must be one of {', '.join(_CONSISTENCY)}")
        deadline = _deadline(timeout, self.config.operation_timeout)
        target = await self._resolve(ref)
        if isinstance(target, str):
            message = Message.new(None, ref, {"query": query, "consistency": consistency})
            try:
                if query == "get_state":
                    raw = await self._remote_idempotent(target, "query", message, deadline)
                else:
                    raw = await self._remote(target, "query", message, deadline)
            except _MovedHere as moved:
                target = moved.cell
            else:
                return _decode_remote_state(ref.type, raw)
        return await self.deliver_query(target, query, consistency, deadline)

    async def deliver_query(
        self, cell: AgentCell, query: str, consistency: Consistency, deadline: float
    ) -> Any:
        if query != "get_state":
            # Any other query is an action run as a call: always strong.
            return await self.deliver_call(
                cell, Message.new(None, cell.ref, None), Instruction(query), deadline
            )
        if consistency == "weak":
            await trio.lowlevel.checkpoint()
            if cell.status == "stopped":
                raise AgentUnavailable(f"agent {cell.ref.id!r} is stopped")
            return cell.state
        if consistency == "eventual":
            decoder = state_decoder(cell.cls.State)
            with trio.move_on_at(deadline) as scope:
                state = await cell.store.read_state(decoder.decode, "eventual")
                # No record yet: a new agent that has applied nothing holds State().
                return cell.cls.State() if state is None else state
            if scope.cancelled_caught:
                raise CallTimeout(f"state read of agent {cell.ref.id!r} timed out")
        message = Message.new(None, cell.ref, {"query": query})
        return await self._enqueue_and_wait(
            cell, Delivery("query", message, None, Reply()), deadline
        )

    async def health(self, ref: AgentRef, *, timeout: float | None = None) -> Health:
        deadline = _deadline(timeout, self.config.operation_timeout)
        try:
            target = await self._resolve(ref)
        except (AgentNotFound, AgentUnavailable):
            return Health.NOT_FOUND
        if isinstance(target, str):
            if self.detector is not None and not self.detector.is_reachable(target):
                await trio.lowlevel.checkpoint()
                return Health.UNREACHABLE
            message = Message.new(None, ref, None)
            try:
                value = await self._remote(target, "health", message, deadline)
            except (Unreachable, CallTimeout):
                return Health.UNREACHABLE
            except (AgentNotFound, AgentUnavailable):
                return Health.NOT_FOUND
            except JidoError:  # e.g. CircuitOpen: reachable in principle, but impaired
                return Health.DEGRADED
            health = Health(value)
            breaker = self.breakers.peek(self.breaker_key(target, ref.id))
            if health is Health.HEALTHY and breaker is not None and breaker.state != "closed":
                return Health.DEGRADED
            return health
        await trio.lowlevel.checkpoint()
        return self.local_health(target)

    def note_health(self, cell: AgentCell) -> None:
        """Fire ``jido_trio_health_changed`` if the agent's health moved."""
        new = self.local_health(cell)
        old = cell.last_health
        if new is not old:
            cell.last_health = new
            self.emit("jido_trio_health_changed", ref=cell.ref, old=old, new=new)

    def local_health(self, cell: AgentCell) -> Health:
        # Runs for every agent started: the cheap checks first, and no clock
        # read, key or lookup for what a brand-new agent cannot have yet.
        status = cell.status
        if status == "stopped":
            return Health.NOT_FOUND
        if status != "running":
            return Health.DEGRADED
        mailbox = cell.mailbox
        if len(mailbox) > mailbox.capacity * self.config.mailbox_high_water:
            return Health.DEGRADED
        restarted = cell.last_restart_at
        if restarted != -math.inf and self.now() - restarted < self.config.max_seconds:
            return Health.DEGRADED
        if self.latency and self.latency.is_slow(cell.ref.id, self.config.slow_call_threshold):
            return Health.DEGRADED
        if self.breakers:
            breaker = self.breakers.peek(self.breaker_key(self.node_name, cell.ref.id))
            if breaker is not None and breaker.state != "closed":
                return Health.DEGRADED
        return Health.HEALTHY

    async def lookup(self, agent_id: str) -> AgentRef:
        cell = self.cells.get(agent_id)
        if cell is not None:
            await trio.lowlevel.checkpoint()
            return cell.ref
        try:
            entry = await self.registry.lookup(agent_id)
        except AgentNotFound:
            self._raise_missing(agent_id)
        if entry.node is None or entry.node == self.node_name:
            self._raise_missing(agent_id)
        return entry.ref

    # ------------------------------------------------------------ failure detection

    async def ping(self, node: str) -> None:
        """One heartbeat to ``node`` (raises if it does not answer in time)."""
        message = Message.new(None, AgentRef(id="-", type="-", node=node), None)
        timeout = self.config.health_check_interval
        await self._request(node, "ping", message, trio.current_time() + timeout)

    # ------------------------------------------------------------ remote

    async def _remote_idempotent(
        self, node: str, kind: str, message: Message, deadline: float
    ) -> Any:
        if not self.transport.supports_remote:
            # RemoteNotSupported is permanent: retrying with backoff cannot help.
            return await self._remote(node, kind, message, deadline)
        attempts = 0

        async def attempt() -> Any:
            # Each attempt gets an equal share of what is left, so a request lost
            # on the way leaves time to try again; the last gets all the rest.
            nonlocal attempts, node, message
            attempts += 1
            left = max(1, self._retry.max_attempts - attempts + 1)
            now = trio.current_time()
            try:
                return await self._remote(node, kind, message, now + (deadline - now) / left)
            except (Unreachable, AgentNotFound, AgentUnavailable, CircuitOpen) as exc:
                # The agent may have moved (failover): ask the registry, and
                # send the next attempt to the new owner.
                moved = await self._reresolve(message.recipient.id, node)
                if moved is None:
                    raise
                if isinstance(moved, AgentCell):
                    raise _MovedHere(moved) from None
                node = moved
                message = attrs.evolve(
                    message, recipient=attrs.evolve(message.recipient, node=moved)
                )
                raise Unreachable(
                    f"agent {message.recipient.id!r} moved to node {moved!r}"
                ) from exc

        return await retry_idempotent(
            attempt, deadline=deadline, policy=self._retry, retry_on=(Unreachable, CallTimeout)
        )

    async def _remote(self, node: str, kind: str, message: Message, deadline: float) -> Any:
        if not self.transport.supports_remote:
            raise RemoteNotSupported(
                f"agent {message.recipient.id!r} is on node {node!r} and the "
                f"transport of node {self.node_name!r} is local-only"
            )
        if self.detector is not None and not self.detector.is_reachable(node):
            await trio.lowlevel.checkpoint()
            raise Unreachable(f"node {node!r} missed its heartbeats")
        breaker = self.breakers.get(self.breaker_key(node, message.recipient.id))
        return await breaker.call(
            self._request, node, kind, message, deadline, failure_types=(Unreachable, CallTimeout)
        )

    async def _request(self, node: str, kind: str, message: Message, deadline: float) -> Any:
        timeout = max(0.0, deadline - trio.current_time())
        # The time left travels in the envelope so the owner does not work for a
        # caller that has given up: relative (immune to clock skew) and absolute
        # (catches time spent in transit); the owner honours the earlier one.
        message = attrs.evolve(
            message,
            metadata={
                **message.metadata,
                TIMEOUT_KEY: timeout,
                DEADLINE_KEY: time.time() + timeout,
            },
        )
        frame = encode_value([kind, message.to_bytes()])
        data = await self.transport.request(node, frame, timeout=timeout)
        return _unpack_reply(decode_value(data), node)

    async def handle_remote(self, data: bytes) -> bytes:
        """Transport handler: run one request from another node and encode the outcome."""
        try:
            value = await self._handle_remote(data)
        except _RemoteActionError as exc:
            return encode_value(
                ["err", "ActionError", str(exc), exc.remote_type, exc.remote_message]
            )
        except JidoError as exc:
            return encode_value(["err", type(exc).__name__, str(exc), None, None])
        except Exception as exc:
            log.exception("remote request failed")
            return encode_value(["err", "JidoError", f"{type(exc).__name__}: {exc}", None, None])
        return encode_value(["ok", value])

    async def _handle_remote(self, data: bytes) -> Any:
        frame = decode_value(data)
        if (
            not isinstance(frame, list)
            or len(frame) != 2
            or not isinstance(frame[0], str)
            or not isinstance(frame[1], bytes)
        ):
            raise InvalidMessage("malformed request frame")
        kind, raw = frame
        message = Message.from_bytes(raw)
        if kind == "signal":
            await self.handle_signal(message)
            return None
        remaining = message.metadata.get(TIMEOUT_KEY)
        if isinstance(remaining, bool) or not isinstance(remaining, (int, float)):
            raise InvalidMessage(f"request without a numeric {TIMEOUT_KEY!r}")
        absolute = message.metadata.get(DEADLINE_KEY)
        if isinstance(absolute, (int, float)) and not isinstance(absolute, bool):
            remaining = min(remaining, absolute - time.time())
        if remaining <= 0:
            raise CallTimeout(f"the caller's deadline passed before node {self.node_name!r} got it")
        deadline = trio.current_time() + min(float(remaining), MAX_REMOTE_TIMEOUT)
        ref = message.recipient
        if kind == "ping":
            await trio.lowlevel.checkpoint()
            return "pong"
        if kind == "health":
            cell = self.cells.get(ref.id)
            if cell is None:
                raise AgentNotFound(f"no agent {ref.id!r} on node {self.node_name!r}")
            await trio.lowlevel.checkpoint()
            return self.local_health(cell).value
        cell = await self._local_cell(ref)
        if kind in ("tell", "tell_alo", "call"):
            instruction = message.payload
            if not isinstance(instruction, Instruction):
                raise InvalidMessage("instruction message without an Instruction payload")
            if kind != "call":
                receipt = await self.deliver_tell(
                    cell, message, instruction, deadline, durable=kind == "tell_alo"
                )
                return receipt.status
            try:
                return await self.deliver_call(cell, message, instruction, deadline)
            except ActionError as exc:
                cause = exc.__cause__
                if cause is None:
                    raise
                raise _RemoteActionError(str(exc), type(cause).__name__, str(cause)) from None
        if kind == "query":
            payload = message.payload
            if not isinstance(payload, dict):
                raise InvalidMessage("malformed query")
            state = await self.deliver_query(
                cell, str(payload.get("query")), payload.get("consistency", "strong"), deadline
            )
            return encode_state(state)
        raise InvalidMessage(f"unknown request kind {kind!r}")

    async def _local_cell(self, ref: AgentRef) -> AgentCell:
        await trio.lowlevel.checkpoint()
        cell = self.cells.get(ref.id)
        if cell is None:
            self._raise_missing(ref.id)
        return cell


#: Errors that cross nodes as themselves (their constructor takes one message).
_PORTABLE_ERRORS: dict[str, type[JidoError]] = {
    cls.__name__: cls
    for cls in (
        errors.AgentNotFound,
        errors.AgentUnavailable,
        errors.AgentAlreadyExists,
        errors.Unreachable,
        errors.RemoteNotSupported,
        errors.CallTimeout,
        errors.MailboxFull,
        errors.CircuitOpen,
        errors.ActionNotFound,
        errors.AlreadyProcessed,
        errors.InvalidMessage,
        errors.ConfigError,
    )
}


class _MovedHere(Exception):
    """The agent a remote operation was for now runs on this node."""

    def __init__(self, cell: AgentCell) -> None:
        super().__init__(cell.ref.id)
        self.cell = cell


class _RemoteActionError(JidoError):
    def __init__(self, message: str, remote_type: str, remote_message: str) -> None:
        super().__init__(message)
        self.remote_type = remote_type
        self.remote_message = remote_message


def _unpack_reply(reply: Any, node: str) -> Any:
    if isinstance(reply, list) and len(reply) == 2 and reply[0] == "ok":
        return reply[1]
    if isinstance(reply, list) and len(reply) == 5 and reply[0] == "err":
        _, type_name, text, remote_type, remote_message = reply
        where = f"{text} (on node {node!r})"
        if type_name == "ActionError":
            raise ActionError(
                where,
                remote_type=None if remote_type is None else str(remote_type),
                remote_message=None if remote_message is None else str(remote_message),
            )
        cls = _PORTABLE_ERRORS.get(str(type_name))
        if cls is not None:
            raise cls(where)
        raise JidoError(f"{type_name}: {where}")
    raise InvalidMessage(f"malformed reply from node {node!r}")


def _decode_remote_state(agent_type: str, raw: Any) -> Any:
    from ._agent import Agent

    if not isinstance(raw, bytes):
        raise InvalidMessage("malformed state reply")
    cls = Agent.types.get(agent_type)
    if cls is None:
        return decode_value(raw)
    return state_decoder(cls.State).decode(raw)
