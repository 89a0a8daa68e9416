"""The agent server: one agent's mailbox loop, state persistence and lifecycle.

An :class:`AgentCell` lives from ``start_agent`` until the agent is gone for
good; its mailbox and dedupe window survive restarts, so messages sent while
the agent restarts wait for the next incarnation. Each incarnation (one run of
:meth:`AgentCell.serve` under a supervisor) loads the last committed state,
drains the mailbox in batches, and commits state plus processed instruction
ids once per batch before any reply of that batch is released.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

import attrs
import msgspec
import trio

from ._agent import ActionSpec, Agent, Context
from ._delivery import Delivery
from ._exceptions import (
    ActionError,
    ActionNotFound,
    AgentUnavailable,
    AlreadyProcessed,
    InvalidMessage,
    JidoError,
)
from ._health import Health
from ._mailbox import Mailbox
from ._message import Instruction, Message
from ._persistence import AgentStore, encode_state, state_key
from ._ref import AgentRef
from ._supervisor import Supervisor, describe
from .local._registry import register_nowait

if TYPE_CHECKING:
    from ._communication import Communication

__all__ = ["RESTART_KEY", "AgentCell", "InjectedCrash", "NowaitRegister"]

#: Registry metadata key holding the agent's restart type ("permanent", ...).
RESTART_KEY = "jido.restart"

log = logging.getLogger("jido_trio.agent")

#: Most messages handled between two state commits.
BATCH_LIMIT = 64

CellStatus = Literal["starting", "running", "restarting", "stopped"]

_decoders: dict[Any, msgspec.msgpack.Decoder[Any]] = {}

#: A registry's synchronous ``register(ref, metadata)`` (see ``register_nowait``).
NowaitRegister = Callable[[AgentRef, Mapping[str, Any] | None], None]

#: Registry metadata of agents without metadata of their own, by restart type.
_RESTART_METADATA: dict[str, Mapping[str, Any]] = {}


def state_decoder(state_type: Any) -> msgspec.msgpack.Decoder[Any]:
    decoder = _decoders.get(state_type)
    if decoder is None:
        decoder = _decoders[state_type] = msgspec.msgpack.Decoder(state_type)
    return decoder


class InjectedCrash(Exception):
    """Raised inside an agent by :func:`jido_trio.testing.crash_agent`."""


def action_error(agent_id: str, action: str, exc: BaseException) -> ActionError:
    error = ActionError(f"action {action!r} of agent {agent_id!r} failed: {describe(exc)}")
    error.__cause__ = exc
    return error


@attrs.define(eq=False)
class AgentCell:
    """Everything the node keeps for one agent id across its incarnations."""

    ref: AgentRef
    cls: type[Agent]
    # Back-references left out of the repr: with them, the repr of a node (or
    # of a pytest failure around one) lists every agent once per agent.
    comm: Communication = attrs.field(repr=False)
    mailbox: Mailbox[Delivery]
    restart: str
    shutdown_timeout: float
    initial_state: Any = None
    metadata: Any = None
    supervisor: Supervisor | None = attrs.field(default=None, repr=False)
    status: CellStatus = "starting"
    restarts: int = 0
    last_restart_at: float = -math.inf
    last_failure: str | None = None
    state: Any = None
    last_health: Health = Health.NOT_FOUND
    #: Ids accepted and still queued (see :attr:`pending`); made on first use.
    _pending: set[str] | None = None
    #: Key of this agent's circuit breaker (set by the first local call).
    breaker_key: str | None = None
    #: At-least-once messages in the durable log not yet applied: seq -> instruction id.
    unacked: dict[int, str] = attrs.field(factory=dict)
    #: Appends to the durable log still waiting for their sequence number, each
    #: with the highest seq this cell had seen when it started: its own seq
    #: will be larger, so trimming never goes past that floor while it is out.
    appending: dict[object, int] = attrs.field(factory=dict)
    #: Highest log seq this cell has seen (appended or replayed).
    log_seen: int = 0
    max_attempts: int = 3
    _instance: Agent | None = None
    #: See :attr:`store`; ``None`` until first needed.
    _store: AgentStore | None = attrs.field(default=None, repr=False)
    _scope: trio.CancelScope | None = None
    _injected: BaseException | None = None
    _crash_seen: trio.Event | None = None
    _stop_requested: bool = False
    #: Set by :meth:`start_now` for its incarnation's task: its context, or
    #: ``True`` when the agent instance and context are made only once the
    #: task runs (an agent that never wakes holds neither).
    _ready: Context | bool = False
    #: Messages still to handle before a requested stop: those queued before it.
    _drain_before_stop: int = 0

    @property
    def alive(self) -> bool:
        return self.status != "stopped"

    @property
    def log_stream(self) -> str:
        """StateBackend log holding this agent's at-least-once messages."""
        return f"mailbox/{self.ref.id}"

    @property
    def dead_letter_stream(self) -> str:
        """StateBackend log of this agent's dead-lettered at-least-once messages."""
        return f"deadletter/{self.ref.id}"

    @property
    def store(self) -> AgentStore:
        """Loads and commits the state and processed ids. Made on first use:
        an agent started without a stored record or given state has nothing
        to load, and holds no store until it applies something (or restarts)."""
        store = self._store
        if store is None:
            comm = self.comm
            store = self._store = AgentStore(
                backend=comm.state, agent_id=self.ref.id, window=comm.config.dedupe_window
            )
        return store

    @property
    def pending(self) -> set[str]:
        """Ids of instructions accepted and still queued (made on first use,
        dropped when empty and the mailbox is drained: idle agents hold none)."""
        pending = self._pending
        if pending is None:
            pending = self._pending = set()
        return pending

    def accept(self, instruction_id: str) -> bool:
        """Count ``instruction_id`` as queued, unless it was applied or is
        queued already (then ``False``): :meth:`seen`, then ``pending.add``."""
        pending = self._pending
        if pending is None:
            pending = self._pending = set()
        elif instruction_id in pending:
            return False
        store = self._store  # (applied_before, inlined: once per local tell)
        if store is not None and instruction_id in store.seen:
            return False
        pending.add(instruction_id)
        return True

    def applied_before(self, instruction_id: str) -> bool:
        """Whether ``instruction_id`` is in the dedupe window of applied ids
        (an agent without a store yet has applied nothing)."""
        store = self._store
        return store is not None and instruction_id in store.seen

    def _commits_nowait(self) -> bool:
        """Whether a batch is committed synchronously (see :meth:`_settle_nowait`)."""
        store = self._store
        if store is None:  # nothing applied yet: asks without making a store
            return self.comm.sync_state is not None
        return store.synchronous

    def seen(self, instruction_id: str) -> bool:
        """Applied, or accepted and still queued."""
        if self._pending is not None and instruction_id in self._pending:
            return True
        return self.applied_before(instruction_id)

    # ------------------------------------------------------------ lifecycle

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
        scope = trio.CancelScope() if cancel_scope is None else cancel_scope
        ready = self._ready
        if ready is not False:
            # Started (and announced) by start_now(); its supervisor spawns
            # this task only once something woke the agent (see
            # Supervisor.add_started_child). If nothing is there for it after
            # all, it waits outside its scope, like before it had a task:
            # whatever the supervisor does to it wakes it first (a stop
            # request, a crash injection, or a cancellation from outside).
            self._ready = False
            mailbox = self.mailbox
            if not self._stop_requested and self._injected is None and mailbox.prepare_wait():
                try:
                    await trio.lowlevel.wait_task_rescheduled(mailbox.abort_wait)
                except BaseException as exc:
                    if not isinstance(exc, Exception):  # cancelled from outside
                        self.comm.emit("jido_trio_agent_stopped", ref=self.ref, reason="shutdown")
                    raise
        with scope:
            if ready is False:
                ctx = await self._start_up()
                task_status.started()
                self.announce_started()
            elif ready is True:
                ctx = self._new_instance()
            else:
                ctx = ready
            self._scope = scope
            try:
                await self._loop(ctx)
            except BaseException as exc:
                if not isinstance(exc, Exception) and self._injected is None:
                    # Cancelled hard (shutdown timeout passed): the supervisor asked
                    # for this exit, so it reports nothing; say it here.
                    self.comm.emit("jido_trio_agent_stopped", ref=self.ref, reason="shutdown")
                raise
            finally:
                self._scope = None
        if self._injected is not None:
            error, self._injected = self._injected, None
            raise error
        if scope.cancelled_caught:
            return  # cancelled hard by the supervisor (reported above)
        instance = self._instance
        assert instance is not None
        reason = "shutdown" if self._stop_requested else "normal"
        with trio.move_on_after(self.shutdown_timeout) as cleanup:
            cleanup.shield = True
            try:
                await instance.on_stop(self.state, reason)
            except Exception:
                log.exception("on_stop of agent %r failed", self.ref.id)
        if self._stop_requested:
            # A stop the supervisor asked for is not reported by it (on_exit).
            self.comm.emit("jido_trio_agent_stopped", ref=self.ref, reason=reason)

    #: The supervisor's child function is the cell itself (no bound method kept
    #: per agent): ``cell(task_status=..., cancel_scope=...)`` is :meth:`serve`.
    __call__ = serve

    def _begin(self) -> None:
        self._stop_requested = False
        self._drain_before_stop = 0
        # A crash injected while the agent was restarting stays pending and
        # hits this incarnation as soon as it runs.

    def _new_instance(self) -> Context:
        """Make the agent instance and its context for this incarnation."""
        instance = self.cls()
        ctx = Context(self.comm, self.ref)
        instance._ctx = ctx
        self._instance = instance
        return ctx

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

    async def _start_up(self) -> Context:
        """Load (or make) the state, run ``on_start``, commit, replay the
        durable log, register: everything before ``task_status.started()``."""
        self._begin()
        ctx = self._new_instance()
        instance = self._instance
        assert instance is not None
        found, state = await self.store.load(self._decode_state)
        state = self._initial(found, state)
        started = await instance.on_start(state)
        if started is not None:
            state = started
        await self.store.commit(state)
        self.state = state
        await self._replay_log()
        await self.comm.registry.register(self.ref, self.registry_metadata())
        self._ready_to_run(state)
        return ctx

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

    def nowait_register(self) -> NowaitRegister | None:
        """The registry's synchronous ``register`` that :meth:`start_now`
        needs, or ``None`` when the start-up cannot be done synchronously.
        It can with state in the plain in-memory backend, a registry that
        registers without awaiting, no ``on_start`` override and nothing in
        the durable log."""
        sync = self.comm.sync_state
        if sync is None or self.cls.on_start is not Agent.on_start:
            return None
        register = register_nowait(self.comm.registry, self.ref)
        if register is None or sync._has_log(self.log_stream):
            return None
        return register

    def start_now(self, register: NowaitRegister) -> None:
        """:meth:`_start_up` without awaiting, with the ``register`` that
        :meth:`nowait_register` gave; the incarnation's task, once it has one,
        goes straight to its loop. The caller announces it
        (:meth:`announce_started`) and hands it to its supervisor.

        An agent class with the default ``__init__`` gets its instance (and
        context) only when it first runs: nothing of its code can run before.
        """
        self._begin()
        cls = self.cls
        if cls.__init__ is object.__init__ and cls.__new__ is object.__new__:
            self._instance = None
            self._ready = True
        else:
            self._ready = self._new_instance()
        found = False
        if self._store is not None or self.initial_state is not None or self._has_record():
            found, state = self.store.load_nowait(self._decode_state)
        if found or self.initial_state is not None:
            state = self._initial(found, state)
            self.store.commit_nowait(state)
        else:
            # A brand-new agent with the default state: nothing to persist yet
            # (no instruction applied; a restart or an eventual read without a
            # record gets the same State()). It must be storable all the same.
            state = self.cls.State()
            encode_state(state)
        self.state = state
        register(self.ref, self.registry_metadata())
        self._ready_to_run(state)

    def _has_record(self) -> bool:
        """Whether the (synchronous) backend holds a state record for this agent."""
        sync = self.comm.sync_state
        assert sync is not None
        return sync._read_nowait(state_key(self.ref.id)) is not None

    def announce_started(self) -> None:
        self.comm.emit("jido_trio_agent_started", ref=self.ref)
        self.comm.note_health(self)

    def request_stop(self) -> None:
        """Graceful stop: finish the current batch and the messages queued
        before this request (so a send followed by a stop from the same task
        is handled, as per-pair FIFO promises), run ``on_stop``, exit. Anything
        queued later is refused once the agent is gone."""
        if not self._stop_requested:
            self._stop_requested = True
            self._drain_before_stop = len(self.mailbox)
        self.mailbox.wake()

    def inject_crash(self, error: BaseException) -> trio.Event:
        """Make the running incarnation fail with ``error``; the returned event is
        set once the supervisor has seen the failure."""
        self._crash_seen = seen = trio.Event()
        self._injected = error
        if self._scope is not None:
            self._scope.cancel()
        else:
            self.mailbox.wake()
        return seen

    # ------------------------------------------------------------ supervisor callbacks

    def on_cancelled_dormant(self) -> None:
        """Started by :meth:`start_now`, never woken, and its supervisor was
        cancelled: what the waiting task's cancellation reports in :meth:`serve`."""
        self.mailbox.disarm()
        self._ready = False
        self.comm.emit("jido_trio_agent_stopped", ref=self.ref, reason="shutdown")

    def on_exit(self, error: BaseException | None, will_restart: bool) -> None:
        self.status = "restarting" if will_restart else self.status
        if error is not None:
            self.last_failure = describe(error)
        reason = "normal" if error is None else f"crash: {describe(error)}"
        self.comm.emit("jido_trio_agent_stopped", ref=self.ref, reason=reason)
        self.comm.note_health(self)
        if self._crash_seen is not None:
            self._crash_seen.set()
            self._crash_seen = None

    def on_restart(self, restarts: int) -> None:
        self.restarts = restarts
        self.last_restart_at = trio.current_time()
        self.comm.emit("jido_trio_agent_restarted", ref=self.ref, restarts=restarts)
        self.comm.note_health(self)

    def on_final(self, reason: str) -> None:
        """The agent will not run again: refuse and fail whatever waits for it."""
        if self.status == "stopped":
            return
        self.status = "stopped"
        error = AgentUnavailable(f"agent {self.ref.id!r} is stopped ({reason})")

        def drop(delivery: Delivery) -> None:
            if delivery.reply is not None:
                delivery.fail(error)
            else:
                self.comm.dead_letter(delivery.message, f"agent stopped ({reason})")

        self.mailbox.disarm()  # a dormant agent that is gone is not woken
        self.mailbox.close(error, drop)
        self.pending.clear()
        if self._crash_seen is not None:
            self._crash_seen.set()
            self._crash_seen = None
        self.comm.note_health(self)
        self.comm.agent_gone(self)
        if not self.comm.cells:
            # The node's last agent is gone: no local call can still be waiting.
            self.comm.deadlines.flush()

    # ------------------------------------------------------------ durable mailbox

    async def _replay_log(self) -> None:
        """Queue the logged at-least-once messages not yet applied (after a crash
        or in a new process), ahead of anything sent since."""

        replay: list[Delivery] = []
        applied_upto = 0
        for entry in await self.comm.state.read_log(self.log_stream):
            self.log_seen = max(self.log_seen, entry.seq)
            if entry.seq in self.unacked:
                continue  # still queued in this process's mailbox
            try:
                message = Message.from_bytes(entry.data)
            except InvalidMessage as exc:
                log.error("dropping unreadable logged message %s: %s", entry.seq, exc)
                continue
            instruction = message.payload
            if not isinstance(instruction, Instruction) or instruction.id in self.store.seen:
                if not self.unacked or entry.seq < min(self.unacked):
                    applied_upto = entry.seq
                continue
            try:
                instruction = self.cls.prepare(instruction)
            except JidoError as exc:
                await self.store_dead_letter(message, str(exc))
                if not self.unacked or entry.seq < min(self.unacked):
                    applied_upto = entry.seq
                continue
            self.unacked[entry.seq] = instruction.id
            self.pending.add(instruction.id)
            replay.append(Delivery("instruction", message, instruction, None, log_seq=entry.seq))
        if replay:
            self.mailbox.requeue_front(replay)
        applied_upto = self.trim_bound(applied_upto)
        if applied_upto > 0:
            await self.comm.state.trim_log(self.log_stream, upto=applied_upto)

    async def _ack(self, deliveries: list[Delivery]) -> None:
        """Drop applied at-least-once messages from the durable log."""
        highest = 0
        for delivery in deliveries:
            if delivery.log_seq is not None:
                self.unacked.pop(delivery.log_seq, None)
                highest = max(highest, delivery.log_seq)
        if highest:
            # With nothing unacked, everything this cell has seen is applied
            # (trim_bound holds back for appends still out).
            upto = self.trim_bound(
                min(self.unacked) - 1 if self.unacked else max(highest, self.log_seen)
            )
            if upto > 0:
                await self.comm.state.trim_log(self.log_stream, upto=upto)

    def trim_bound(self, upto: int) -> int:
        """``upto`` lowered so that no logged message still on its way into
        the mailbox is trimmed (appends can complete out of order)."""
        if self.appending:
            return min(upto, min(self.appending.values()))
        return upto

    async def store_dead_letter(self, message: Message, reason: str) -> None:
        """Keep ``message`` in this agent's dead-letter log and tell the observers."""
        try:
            data = message.to_bytes()
        except InvalidMessage:
            log.error("dead letter %s cannot be encoded; only reported", message.id)
        else:
            await self.comm.state.append(self.dead_letter_stream, data)
        self.comm.dead_letter(message, reason)

    async def _dead_letter_logged(self, delivery: Delivery, reason: str) -> None:
        assert delivery.log_seq is not None
        # Kept as a dead letter before it leaves the mailbox log: a crash in
        # between leaves it in both (a duplicate dead letter at worst), never
        # in neither.
        await self.store_dead_letter(delivery.message, reason)
        await self._ack([delivery])

    # ------------------------------------------------------------ the loop

    async def _loop(self, ctx: Context) -> None:
        mailbox = self.mailbox
        while self._injected is None:
            if self._stop_requested:
                if self._drain_before_stop <= 0:
                    return
                batch = mailbox.take_batch(min(BATCH_LIMIT, self._drain_before_stop))
                self._drain_before_stop -= len(batch)
                if not batch:
                    return
            else:
                batch = mailbox.take_batch(BATCH_LIMIT)
            if not batch:
                if self._pending is not None and not self._pending:
                    self._pending = None
                if mailbox.prepare_wait():
                    await trio.lowlevel.wait_task_rescheduled(mailbox.abort_wait)
                else:
                    await trio.lowlevel.checkpoint()
                continue
            await self._run_batch(batch, ctx)
            if len(mailbox):
                # A batch may run without ever yielding (synchronous commit):
                # let the rest of the program run before the next one.
                await trio.lowlevel.checkpoint()

    async def _run_batch(self, batch: list[Delivery], ctx: Context) -> None:
        applied: list[Delivery] = []
        dirty = False
        logged = False
        crash: Exception | None = None
        commit_error: Exception | None = None
        index = 0
        instance = self._instance
        actions = self.cls.actions
        store = self._store  # made by the first mark if there is none yet
        try:
            for delivery in batch:
                instruction = delivery.instruction
                try:
                    if (
                        instruction is None
                        or delivery.reply is not None
                        or (store is not None and instruction.id in store.seen)
                    ):
                        spec = self._admit(delivery)
                    else:  # a new one-way instruction: only the action to find
                        spec = actions.get(instruction.action) or self._admit(delivery)
                    if spec is not None:
                        # The action runs here rather than in a helper
                        # coroutine: one frame less per message on the
                        # hottest path.
                        assert instruction is not None
                        # Always a read-only proxy of a dict (Instruction makes it so).
                        params: MappingProxyType[str, Any] = instruction.params  # type: ignore[assignment]
                        method = getattr(instance, spec.method)
                        ctx._delivery = delivery
                        try:
                            # ``**`` on a read-only mapping proxy takes
                            # CPython's slow path; a dict copy is cheaper.
                            result = await (
                                method(self.state, **params.copy())
                                if params
                                else method(self.state)
                            )
                        finally:
                            ctx._delivery = None
                        if result is not None:
                            self.state = result
                        if store is None:
                            store = self.store
                        store.mark(instruction.id)
                        pending = self._pending
                        if pending is not None:
                            pending.discard(instruction.id)
                        dirty = True
                except Exception as exc:
                    crash = exc
                    break
                applied.append(delivery)
                logged = logged or delivery.log_seq is not None
                index += 1
        finally:
            if crash is None and index == len(batch) and not logged and self._commits_nowait():
                # Everything applied, nothing logged, state in memory: commit
                # and answer synchronously (no shielded scope needed).
                commit_error = self._settle_nowait(applied, dirty)
            else:
                # Shielded: what was applied must be made durable and answered
                # even while the agent is cancelled, but never for longer than
                # its shutdown timeout.
                with trio.move_on_after(self.shutdown_timeout) as scope:
                    scope.shield = True
                    commit_error = await self._settle(
                        batch, applied, dirty, index, crash or self._injected
                    )
                if scope.cancelled_caught and commit_error is None:
                    commit_error = TimeoutError(f"committing agent {self.ref.id!r} timed out")
        if commit_error is not None:
            raise commit_error
        if crash is not None:
            raise crash

    def _settle_nowait(self, applied: list[Delivery], dirty: bool) -> Exception | None:
        """:meth:`_settle` for a fully applied batch of unlogged messages, with
        a synchronous store: commit, then release the replies."""
        commit_error: Exception | None = None
        if dirty:
            try:
                self.store.commit_nowait(self.state)
            except Exception as exc:
                commit_error = exc
        if commit_error is None:
            for delivery in applied:
                reply = delivery.reply
                if reply is not None:
                    reply.set(delivery.reply_value)
        else:
            error = AgentUnavailable(f"agent {self.ref.id!r} could not persist its state")
            for delivery in applied:
                delivery.fail(error)
        return commit_error

    async def _settle(
        self,
        batch: list[Delivery],
        applied: list[Delivery],
        dirty: bool,
        index: int,
        cause: BaseException | None,
    ) -> Exception | None:
        commit_error: Exception | None = None
        committed = False
        try:
            if dirty:
                await self.store.commit(self.state)
            committed = True
        except Exception as exc:
            commit_error = exc
        except BaseException:
            # Cancelled: the commit outlived the shutdown timeout. Settled as a
            # failed commit, synchronously, so that nothing logged is left
            # counted as queued while it is not (the next incarnation's replay
            # would skip it); what the batch did not reach stays queued.
            self._requeue([*self._uncommitted(applied), *batch[index:]])
            raise
        if committed:
            try:
                await self._ack(applied)
            except Exception as exc:
                # Applied and committed: the callers get their answers. Trimming
                # is only housekeeping: a replay skips ids already applied, and
                # the next batch's trim takes these entries too.
                log.warning("agent %r could not trim its durable log: %s", self.ref.id, exc)
        unsaved: list[Delivery] = []
        if committed:
            for delivery in applied:
                delivery.resolve()
        else:
            unsaved = self._uncommitted(applied)
        if index < len(batch):
            await self._settle_unfinished(batch[index], cause, batch[index + 1 :])
        self._requeue(unsaved)  # ahead of the rest of the batch
        return commit_error

    def _uncommitted(self, applied: list[Delivery]) -> list[Delivery]:
        """Settle what a batch applied when its commit failed: callers of
        unlogged messages fail; logged ones are returned, to be queued again."""
        unsaved: list[Delivery] = []
        for delivery in applied:
            if delivery.log_seq is not None:
                # Logged, applied only in memory: the next incarnation reloads
                # the last committed state and must apply it again (its seq
                # stays in `unacked`, so the log replay counts on it being queued).
                unsaved.append(delivery)
            else:
                delivery.fail(
                    AgentUnavailable(f"agent {self.ref.id!r} could not persist its state")
                )
        return unsaved

    def _requeue(self, deliveries: list[Delivery]) -> None:
        """Put deliveries back at the head of the mailbox, their ids pending again."""
        if deliveries:
            for delivery in deliveries:
                if delivery.instruction is not None:
                    self.pending.add(delivery.instruction.id)
            self.mailbox.requeue_front(deliveries)

    async def _settle_unfinished(
        self, interrupted: Delivery, cause: BaseException | None, rest: list[Delivery]
    ) -> None:
        if cause is None:
            # Cancelled for shutdown: nothing was applied; keep it for later.
            self.mailbox.requeue_front([interrupted, *rest])
            return
        instruction = interrupted.instruction
        if instruction is None:
            interrupted.fail(AgentUnavailable(f"agent {self.ref.id!r} crashed"))
        elif interrupted.log_seq is not None:
            interrupted.attempts += 1
            if interrupted.attempts < self.max_attempts:
                rest = [interrupted, *rest]  # at-least-once: deliver it again after the restart
            else:
                self.pending.discard(instruction.id)
                try:
                    await self._dead_letter_logged(
                        interrupted,
                        f"action failed {interrupted.attempts} times, last: {describe(cause)}",
                    )
                except BaseException:
                    # Not kept as a dead letter, so still in the mailbox log:
                    # it stays queued, to be dead-lettered on the next try.
                    self.pending.add(instruction.id)
                    self.mailbox.requeue_front([interrupted, *rest])
                    raise
        else:
            self.pending.discard(instruction.id)
            if interrupted.reply is None:
                self.comm.dead_letter(interrupted.message, f"action failed: {describe(cause)}")
            else:
                interrupted.fail(action_error(self.ref.id, instruction.action, cause))
        self.mailbox.requeue_front(rest)

    def _admit(self, delivery: Delivery) -> ActionSpec | None:
        """The action to run for ``delivery``; ``None`` when it is settled
        here instead (a query, an abandoned call, a duplicate, an unknown
        action). What the action returns is applied by :meth:`_run_batch`."""
        if delivery.kind == "query":
            delivery.reply_value = self.state
            return None
        instruction = delivery.instruction
        assert instruction is not None
        reply = delivery.reply
        if reply is not None and reply.abandoned:
            self.pending.discard(instruction.id)
            return None
        if self.applied_before(instruction.id):
            self.pending.discard(instruction.id)
            delivery.fail(AlreadyProcessed(f"instruction {instruction.id} was already applied"))
            return None
        spec = self.cls.actions.get(instruction.action)
        if spec is None:
            self.pending.discard(instruction.id)
            error = ActionNotFound(
                f"agent type {self.ref.type!r} has no action {instruction.action!r}"
            )
            if reply is None:
                self.comm.dead_letter(delivery.message, str(error))
            delivery.fail(error)
        return spec
