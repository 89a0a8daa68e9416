"""The agent cell: everything a node keeps for one agent id across its
incarnations, and each incarnation's lifecycle.

A cell lives from ``start_agent`` until the agent is gone for good; its
mailbox and dedupe window survive restarts, so messages sent while the agent
restarts wait for the next incarnation. Each incarnation (one run of
:meth:`AgentCell.serve` under a supervisor) loads the last committed state,
replays its durable mailbox, then runs the batch loop (:mod:`._batch`).

An incarnation starts in one of two ways, with the same result:

- awaited, in its task (:meth:`AgentCell.serve`): claim the agent in the
  registry (its ownership epoch), load, ``on_start``, commit (which seals the
  state record against earlier owners, see :mod:`._store`), replay the durable
  mailbox. Nothing of the agent is read or written before the claim, so a
  start that loses to a live owner elsewhere leaves no trace;
- synchronously, in the caller's task (:meth:`AgentCell.start_nowait`), when
  the node's engines offer synchronous access (:mod:`jido_trio.abc`), the
  class has no ``on_start`` and the durable mailbox is empty. The agent is
  then *dormant*: its supervisor spawns its task only once it first has work.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING
from typing import Any
from typing import Literal
from typing import Protocol

import attrs
import msgspec
import trio

from .._agent import Agent
from .._agent import Context
from .._agent import attach_context
from .._exceptions import INFRASTRUCTURE_ERRORS
from .._exceptions import AgentAlreadyExists
from .._exceptions import AgentNotFound
from .._exceptions import AgentUnavailable
from .._exceptions import ChildRetired
from .._exceptions import InfrastructureFailure
from .._exceptions import InvalidMessage
from .._exceptions import JidoError
from .._exceptions import describe
from .._health import Health
from .._message import Instruction
from .._message import Message
from .._message import Receipt
from .._ref import AgentRef
from ._delivery import Delivery
from ._effects import Effect
from ._effects import derived_id
from ._effects import hold_send
from ._effects import hold_signal
from ._log import DurableLog
from ._log import attempts_key
from ._log import dead_letter_stream
from ._log import decode_attempts
from ._log import mailbox_stream
from ._mailbox import Mailbox
from ._store import AgentStore
from ._store import encode_state
from ._store import state_key

if TYPE_CHECKING:
    from ._kernel import Kernel

__all__ = ["RESTART_KEY", "AgentCell", "InjectedCrash", "state_decoder"]

#: Registry metadata key holding the agent's restart type ("permanent", ...).
RESTART_KEY = "jido.restart"

log = logging.getLogger("jido_trio.agent")

CellStatus = Literal["starting", "running", "restarting", "stopped"]

_decoders: dict[Any, msgspec.msgpack.Decoder[Any]] = {}

#: Registry metadata of agents without metadata of their own, by restart type.
_RESTART_METADATA: dict[str, Mapping[str, Any]] = {}


def state_decoder(state_type: Any) -> msgspec.msgpack.Decoder[Any]:
    """The (cached) decoder of an agent class's ``State``."""
    decoder = _decoders.get(state_type)
    if decoder is None:
        decoder = _decoders[state_type] = msgspec.msgpack.Decoder(state_type)
    return decoder


class InjectedCrash(Exception):
    """Raised inside an agent by :func:`jido_trio.testing.crash_agent`."""


class ChildStopper(Protocol):
    """The part of the cell's supervisor that stops it for good."""

    async def stop_child(self, child_id: str) -> None: ...


@attrs.define(eq=False)
class AgentCell:
    """Everything the node keeps for one agent id across its incarnations."""

    ref: AgentRef
    cls: type[Agent]
    # Left out of the repr: with it, the repr of a node (or of a pytest
    # failure around one) lists every engine once per agent.
    kernel: Kernel = attrs.field(repr=False)
    mailbox: Mailbox[Delivery]
    restart: str
    initial_state: Any = None
    metadata: Any = None
    supervisor: ChildStopper | None = attrs.field(default=None, repr=False)
    status: CellStatus = "starting"
    #: The ownership epoch the running incarnation claimed (0 before its claim).
    epoch: int = 0
    restarts: int = 0
    last_restart_at: float = -math.inf
    last_failure: str | None = None
    state: Any = None
    last_health: Health = Health.NOT_FOUND
    #: Ids of instructions accepted and still queued (made on first use,
    #: dropped when empty and the mailbox is drained: idle agents hold none).
    pending: set[str] | None = None
    #: Key of this agent's circuit breaker (set by the first local call).
    breaker_key: str | None = None
    #: The committed state record and dedupe window (:meth:`ensure_store`).
    store: AgentStore | None = attrs.field(default=None, repr=False)
    #: What this process knows of the durable mailbox (:meth:`ensure_log`).
    durable_log: DurableLog | None = attrs.field(default=None, repr=False)
    #: The running incarnation's agent instance and context.
    instance: Agent | None = attrs.field(default=None, repr=False)
    context: Context | None = attrs.field(default=None, repr=False)
    #: The delivery whose action runs now (what the context answers for).
    handling: Delivery | None = attrs.field(default=None, repr=False)
    #: What the running batch's actions sent and published, held until its
    #: commit (see :mod:`._effects`); ``effects_mark``: how many the running
    #: action found held when it began.
    effects: list[Effect] | None = attrs.field(default=None, repr=False)
    effects_mark: int = 0
    #: Committed effects not yet released (sent), oldest first.
    unreleased: list[Effect] | None = attrs.field(default=None, repr=False)
    _scope: trio.CancelScope | None = None
    #: A crash :meth:`inject_crash` asked for, until the incarnation raises it.
    injected: BaseException | None = None
    _crash_seen: trio.Event | None = None
    stop_requested: bool = False
    #: Set by :meth:`start_nowait` for its incarnation's task: it goes
    #: straight to its loop (the instance and context are made then if
    #: they were not made at start).
    _started_nowait: bool = False
    #: Messages still to handle before a requested stop: those queued before it.
    drain_before_stop: int = 0

    @property
    def alive(self) -> bool:
        return self.status != "stopped"

    @property
    def has_task(self) -> bool:
        """Whether the current incarnation has a task (a dormant agent has none)."""
        return not self._started_nowait and self.status != "stopped"

    def ensure_store(self) -> AgentStore:
        """:attr:`store`, made now if needed: an agent started without a
        stored record or given state has nothing to load, and holds no store
        until it applies something (or restarts). It writes with the
        incarnation's epoch."""
        store = self.store
        if store is None:
            store = self.store = AgentStore(
                agent_id=self.ref.id, window=self.kernel.dedupe_window, epoch=self.epoch
            )
        return store

    def ensure_log(self) -> DurableLog:
        """:attr:`durable_log`, made now if needed (an agent that never had an
        at-least-once message holds none)."""
        durable = self.durable_log
        if durable is None:
            durable = self.durable_log = DurableLog(mailbox_stream(self.ref.id))
        return durable

    def add_pending(self, instruction_id: str) -> None:
        pending = self.pending
        if pending is None:
            pending = self.pending = set()
        pending.add(instruction_id)

    def discard_pending(self, instruction_id: str) -> None:
        if self.pending is not None:
            self.pending.discard(instruction_id)

    def forget_pending_if_idle(self) -> None:
        """Drop the (empty) pending set of a drained mailbox."""
        if self.pending is not None and not self.pending:
            self.pending = None

    def accept(self, instruction_id: str) -> bool:
        """Count ``instruction_id`` as queued, unless it was applied or is
        queued already (then ``False``): :meth:`seen`, then ``pending.add``."""
        pending = self.pending
        if pending is None:
            pending = self.pending = set()
        elif instruction_id in pending:
            return False
        store = self.store  # (applied_before, inlined: once per local tell)
        if store is not None and instruction_id in store.seen:
            return False
        pending.add(instruction_id)
        return True

    def applied_before(self, instruction_id: str) -> bool:
        """Whether ``instruction_id`` is in the dedupe window of applied ids
        (an agent without a store yet has applied nothing)."""
        store = self.store
        return store is not None and instruction_id in store.seen

    def seen(self, instruction_id: str) -> bool:
        """Applied, or accepted and still queued."""
        pending = self.pending
        if pending is not None and instruction_id in pending:
            return True
        return self.applied_before(instruction_id)

    # ------------------------------------------------------------ starting

    def can_start_nowait(self) -> bool:
        """Whether :meth:`start_nowait` can start this agent: the node's state
        and registry offer synchronous access, the class has no ``on_start``
        and the durable mailbox is empty."""
        kernel = self.kernel
        state = kernel.state_nowait
        registry = kernel.registry_nowait
        return (
            state is not None
            and registry is not None
            and self.cls.on_start is Agent.on_start
            and registry.can_register_nowait(self.ref)
            and not state.has_log_entries_nowait(mailbox_stream(self.ref.id))
        )

    def start_nowait(self) -> None:
        """Start an incarnation without awaiting (only after
        :meth:`can_start_nowait`); its task, once it has one, goes straight
        to its loop. The caller announces it (:meth:`announce_started`) and
        hands it to its supervisor.

        An agent class with the default ``__init__`` gets its instance (and
        context) only when it first runs: nothing of its code can run before.
        """
        kernel = self.kernel
        state_nowait = kernel.state_nowait
        registry_nowait = kernel.registry_nowait
        assert state_nowait is not None and registry_nowait is not None
        self._begin()
        cls = self.cls
        if not (cls.__init__ is object.__init__ and cls.__new__ is object.__new__):
            self._new_instance()
        # Claimed first, as on the awaited path (all of this runs without
        # yielding, so no other task sees the claim before the state).
        self._claimed(registry_nowait.register_nowait(self.ref, self.registry_metadata()))
        try:
            found = False
            state: Any = None
            if (
                self.store is not None
                or self.initial_state is not None
                or state_nowait.read_nowait(state_key(self.ref.id)) is not None
            ):
                found, state = self.ensure_store().load_nowait(state_nowait, self._decode_state)
            if found or self.initial_state is not None:
                state = self._initial(found, state)
                self.ensure_store().plan_commit(state).run_nowait(state_nowait)
            else:
                # A brand-new agent with the default state: nothing to persist
                # yet (no instruction applied; a restart or an eventual read
                # without a record gets the same State()). It must be storable
                # all the same.
                state = cls.State()
                encode_state(state)
        except BaseException:
            registry_nowait.unregister_nowait(self.ref.id, node=self.ref.node)
            raise
        self.state = state
        self._ready_to_run(state)
        self._started_nowait = True

    async def _start_up(self) -> None:
        """Load (or make) the state, run ``on_start``, commit, replay the
        durable mailbox, register: everything before ``task_status.started()``."""
        kernel = self.kernel
        self._begin()
        instance = self._new_instance()
        if self.status == "restarting":
            await self._keep_registry_metadata()
        # The claim comes first: an agent another node owns raises
        # AgentAlreadyExists here, before anything of it is read or written.
        self._claimed(await kernel.claim(self.ref, self.registry_metadata()))
        store = self.ensure_store()
        found, state = await store.load(kernel.state, self._decode_state)
        state = self._initial(found, state)
        started = await instance.on_start(state)
        if started is not None:
            state = started
        # Seals the record: every earlier owner's compare-and-set fails from now on.
        await store.plan_commit(state).run(kernel.state)
        self.state = state
        self._resend_outbox()
        await self._replay_log()
        self._ready_to_run(state)

    async def _start_up_or_retire(self) -> None:
        """:meth:`_start_up`; on a restart, what keeps it from running here
        tells its supervisor whether to retry (an engine failed) or to forget
        it (another node owns the agent now). A first start raises the error
        itself, to ``start_agent``'s caller."""
        restarting = self.status == "restarting"
        try:
            await self._start_up()
        except AgentAlreadyExists as exc:
            if not restarting:
                raise
            raise ChildRetired(f"moved to node {exc.node!r}") from exc
        except INFRASTRUCTURE_ERRORS as exc:
            if not restarting:
                raise
            raise InfrastructureFailure(f"restarting agent {self.ref.id!r}", exc) from exc

    def hold_send(self, ref: AgentRef, instruction: Instruction, delivery: str) -> Receipt:
        """Hold what the running action sends until its batch commits."""
        return hold_send(self, ref, instruction, delivery)

    def hold_signal(self, signal: Any) -> None:
        """Hold a signal the running action publishes until its batch commits."""
        hold_signal(self, signal)

    def derived_id(self) -> str:
        """An id derived from the message being handled, for its next effect."""
        return derived_id(self)

    def _claimed(self, epoch: int) -> None:
        """This incarnation owns the agent as of ``epoch``: its writes carry it."""
        self.epoch = epoch
        if self.store is not None:
            self.store.epoch = epoch

    def _resend_outbox(self) -> None:
        """Line up for release the at-least-once messages the record holds:
        committed, and perhaps not acknowledged before the last incarnation
        ended (their recipients apply each id once)."""
        store = self.store
        if store is None or not store.outbox:
            return
        effects = []
        for data in store.outbox:
            try:
                effects.append(Effect.from_envelope(data))
            except InvalidMessage as exc:
                log.error("agent %r: dropping an unreadable held message: %s", self.ref.id, exc)
                store.released(data)
        self.unreleased = effects

    def _begin(self) -> None:
        self.stop_requested = False
        self.drain_before_stop = 0
        # A crash injected while the agent was restarting stays pending and
        # hits this incarnation as soon as it runs.

    def _new_instance(self) -> Agent:
        """Make the agent instance and its context for this incarnation."""
        instance = self.cls()
        kernel = self.kernel
        context = Context(kernel.messenger, self)
        attach_context(instance, context)
        self.instance = instance
        self.context = context
        return instance

    def _decode_state(self, data: bytes) -> Any:
        state_type = self.cls.State
        try:
            return state_decoder(state_type).decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise InvalidMessage(
                f"stored state of agent {self.ref.id!r} does not fit "
                f"{getattr(state_type, '__name__', state_type)!r}: {exc}"
            ) from exc

    def _initial(self, found: bool, state: Any) -> Any:
        if self.initial_state is not None:
            state = self.initial_state
            self.initial_state = None  # restarts resume the persisted state
        elif not found:
            state = self.cls.State()
        return state

    def _ready_to_run(self, state: Any) -> None:
        self.state = state
        if self.status == "restarting":
            # Counted from now, not from when the supervisor reports the
            # restart, so health does not flicker to HEALTHY in between.
            self.last_restart_at = trio.current_time()
        self.status = "running"

    async def _keep_registry_metadata(self) -> None:
        """Before a restart registers again: keep what ``update_metadata``
        set in this node's entry meanwhile (registering replaces it)."""
        try:
            entry = await self.kernel.registry.lookup(self.ref.id)
        except AgentNotFound:
            return
        if entry.node == self.ref.node:
            self.metadata = {
                k: v for k, v in entry.metadata.items() if not k.startswith("jido.")
            } or None

    def registry_metadata(self) -> Mapping[str, Any]:
        """The registry entry's metadata: the agent's own, plus its restart
        type, so failover restarts the agent on another node the same way
        (one shared read-only mapping per restart type for agents without
        metadata of their own)."""
        if not self.metadata:
            shared = _RESTART_METADATA.get(self.restart)
            if shared is None:
                shared = _RESTART_METADATA[self.restart] = MappingProxyType(
                    {RESTART_KEY: self.restart}
                )
            return shared
        return {**self.metadata, RESTART_KEY: self.restart}

    def announce_started(self) -> None:
        events = self.kernel.events
        events.agent_started(self)
        events.health_may_have_changed(self)

    # ------------------------------------------------------------ an incarnation

    async def serve(
        self,
        *,
        task_status: trio.TaskStatus[None],
        cancel_scope: trio.CancelScope | None = None,
    ) -> None:
        """One incarnation of the agent (the supervisor's child function).

        Everything runs inside ``cancel_scope``: the supervisor's scope for
        this child, which it cancels to stop the agent hard and
        :meth:`inject_crash` cancels to interrupt it (one scope per agent).
        """
        from ._batch import run_loop

        scope = trio.CancelScope() if cancel_scope is None else cancel_scope
        started_nowait = self._started_nowait
        if started_nowait:
            # Started (and announced) by start_nowait(); its supervisor spawns
            # this task only once something woke the agent (see
            # Supervisor.add_started_child). If nothing is there for it after
            # all, it waits outside its scope, like before it had a task:
            # whatever the supervisor does to it wakes it first (a stop
            # request, a crash injection, or a cancellation from outside).
            self._started_nowait = False
            mailbox = self.mailbox
            if not self.stop_requested and self.injected is None and mailbox.prepare_wait():
                try:
                    await trio.lowlevel.wait_task_rescheduled(mailbox.abort_wait)
                except BaseException as exc:
                    if not isinstance(exc, Exception):  # cancelled from outside
                        self.kernel.events.agent_stopped(self, "shutdown")
                    raise
        with scope:
            if not started_nowait:
                await self._start_up_or_retire()
                task_status.started()
                self.announce_started()
            elif self.instance is None:
                self._new_instance()
            self._scope = scope
            try:
                await run_loop(self)
            except BaseException as exc:
                if not isinstance(exc, Exception) and self.injected is None:
                    # Cancelled hard (shutdown timeout passed): the supervisor asked
                    # for this exit, so it reports nothing; say it here.
                    self.kernel.events.agent_stopped(self, "shutdown")
                raise
            finally:
                self._scope = None
        if self.injected is not None:
            error, self.injected = self.injected, None
            raise error
        if scope.cancelled_caught:
            return  # cancelled hard by the supervisor (reported above)
        instance = self.instance
        assert instance is not None
        reason = "shutdown" if self.stop_requested else "normal"
        with trio.move_on_after(self.kernel.shutdown_timeout) as cleanup:
            cleanup.shield = True
            try:
                await instance.on_stop(self.state, reason)
            except Exception:
                log.exception("on_stop of agent %r failed", self.ref.id)
        if self.stop_requested:
            # A stop the supervisor asked for is not reported by it (on_exit).
            self.kernel.events.agent_stopped(self, reason)

    #: The supervisor's child function is the cell itself (no bound method kept
    #: per agent): ``cell(task_status=..., cancel_scope=...)`` is :meth:`serve`.
    __call__ = serve

    def request_stop(self) -> None:
        """Graceful stop: finish the current batch and the messages queued
        before this request (so a send followed by a stop from the same task
        is handled, as per-pair FIFO promises), run ``on_stop``, exit. Anything
        queued later is refused once the agent is gone."""
        if not self.stop_requested:
            self.stop_requested = True
            self.drain_before_stop = len(self.mailbox)
        self.mailbox.wake()

    def inject_crash(self, error: BaseException) -> trio.Event:
        """Make the running incarnation fail with ``error``; the returned event is
        set once the supervisor has seen the failure."""
        self._crash_seen = seen = trio.Event()
        self.injected = error
        if self._scope is not None:
            self._scope.cancel()
        else:
            self.mailbox.wake()
        return seen

    # ------------------------------------------------------------ supervisor callbacks

    def on_cancelled_dormant(self) -> None:
        """Started by :meth:`start_nowait`, never woken, and its supervisor was
        cancelled: what the waiting task's cancellation reports in :meth:`serve`."""
        self.mailbox.disarm()
        self._started_nowait = False
        self.kernel.events.agent_stopped(self, "shutdown")

    def on_exit(self, error: BaseException | None, will_restart: bool) -> None:
        self.status = "restarting" if will_restart else self.status
        if error is not None:
            self.last_failure = describe(error)
        events = self.kernel.events
        events.agent_stopped(self, "normal" if error is None else f"crash: {describe(error)}")
        events.health_may_have_changed(self)
        self._crash_noticed()

    def on_restart(self, restarts: int) -> None:
        self.restarts = restarts
        self.last_restart_at = trio.current_time()
        events = self.kernel.events
        events.agent_restarted(self)
        events.health_may_have_changed(self)

    def on_final(self, reason: str) -> None:
        """The agent will not run again: refuse new messages, and hand what
        was still queued to the node (:meth:`CellEvents.agent_gone`)."""
        if self.status == "stopped":
            return
        self.status = "stopped"
        leftover: list[Delivery] = []

        def keep(delivery: Delivery) -> None:
            # A logged message stays in the durable mailbox: whoever runs the
            # agent next (here, or where it moved) applies it.
            if delivery.log_seq is None:
                leftover.append(delivery)

        self.mailbox.disarm()  # a dormant agent that is gone is not woken
        self.mailbox.close(AgentUnavailable(f"agent {self.ref.id!r} is stopped ({reason})"), keep)
        self.pending = None
        self._crash_noticed()
        events = self.kernel.events
        events.health_may_have_changed(self)
        events.agent_gone(self, reason, leftover)

    def _crash_noticed(self) -> None:
        if self._crash_seen is not None:
            self._crash_seen.set()
            self._crash_seen = None

    # ------------------------------------------------------------ durable mailbox

    async def _replay_log(self) -> None:
        """Queue the logged at-least-once messages not yet applied (after a crash
        or in a new process), ahead of anything sent since."""
        durable = self.ensure_log()
        applied_upto = durable.trim_bound(await self._queue_logged(after=0))
        if applied_upto > 0:
            await self.kernel.state.trim_log(durable.stream, upto=applied_upto)

    async def trim_log(self, upto: int) -> None:
        """Drop the durable mailbox's records up to ``upto`` (every message of
        this process at or below it is applied), but never one this process
        has not read: another process that still believed it ran the agent
        (paused, or cut off past its lease) may have logged a message after
        this incarnation read the log, and acknowledged it to its sender.
        Such a message is queued here rather than trimmed unapplied."""
        durable = self.ensure_log()
        if upto > durable.read_upto:
            await self._queue_logged(after=durable.read_upto)
            if durable.unacked:
                upto = min(upto, min(durable.unacked) - 1)
        if upto > 0:
            await self.kernel.state.trim_log(durable.stream, upto=upto)

    async def _queue_logged(self, *, after: int) -> int:
        """Read the durable mailbox past ``after`` and queue the messages this
        process neither has queued nor applied, ahead of anything sent since;
        return the seq up to which the records read are all applied (0: none)."""
        backend = self.kernel.state
        durable = self.ensure_log()
        seen = self.ensure_store().seen
        replay: list[Delivery] = []
        applied_upto = 0
        # An append of this process still on its way may already be in the log
        # (its seq is above this bound): the append queues it, not the read.
        readable = durable.trim_bound(2**63)
        found = await backend.read(attempts_key(self.ref.id))
        started = {} if found is None else decode_attempts(found.value)
        most = self.kernel.max_delivery_attempts
        for entry in await backend.read_log(durable.stream, after=after):
            if entry.seq > readable:
                break
            durable.saw(entry.seq)
            durable.read_upto = entry.seq
            if entry.seq in durable.unacked:
                continue  # still queued in this process's mailbox
            try:
                message = Message.from_bytes(entry.data)
            except InvalidMessage as exc:
                log.error("dropping unreadable logged message %s: %s", entry.seq, exc)
                continue
            instruction = message.payload
            if not isinstance(instruction, Instruction) or instruction.id in seen:
                if durable.before_unapplied(entry.seq):
                    applied_upto = entry.seq
                continue
            try:
                instruction = self.cls.prepare(instruction)
            except JidoError as exc:
                await self.store_dead_letter(message, str(exc))
                if durable.before_unapplied(entry.seq):
                    applied_upto = entry.seq
                continue
            attempts = started.get(entry.seq, 0)
            if attempts >= most:
                # Started that many times and never finished: it took the
                # whole process down each time (a crash of the agent alone is
                # dead-lettered by the batch that saw it).
                await self.store_dead_letter(
                    message, f"started {attempts} times and never finished (the process died)"
                )
                if durable.before_unapplied(entry.seq):
                    applied_upto = entry.seq
                continue
            durable.unacked[entry.seq] = instruction.id
            self.add_pending(instruction.id)
            delivery = Delivery("instruction", message, instruction, None, log_seq=entry.seq)
            delivery.attempts = attempts
            if attempts:
                durable.suspects[entry.seq] = attempts
            replay.append(delivery)
        if replay:
            self.mailbox.requeue_front(replay)
        return applied_upto

    async def store_dead_letter(self, message: Message, reason: str) -> None:
        """Keep ``message`` in this agent's dead-letter log and tell the observers."""
        try:
            data = message.to_bytes()
        except InvalidMessage:
            log.error("dead letter %s cannot be encoded; only reported", message.id)
        else:
            await self.kernel.state.append(dead_letter_stream(self.ref.id), data)
        self.kernel.events.message_dead_lettered(message, reason)
