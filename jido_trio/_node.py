"""The Node facade and ``open_node``."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from contextlib import AsyncExitStack
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pluggy
import trio

from ._agent import Agent
from ._agent import Messenger
from ._comm import Communication
from ._comm import Directory
from ._comm import HealthPolicy
from ._comm import NodeCellEvents
from ._comm import RemoteClient
from ._comm import RemoteServer
from ._comm import ping
from ._comm._communication import deadline_after
from ._config import Config
from ._context import current_node_name
from ._core import AgentCell
from ._core import Delivery
from ._core import Kernel
from ._core import Mailbox
from ._core import dead_letter_stream
from ._exceptions import AgentAlreadyExists
from ._exceptions import AgentNotFound
from ._exceptions import ChildAlreadyExists
from ._exceptions import ChildNotFound
from ._exceptions import ConfigError
from ._exceptions import InvalidMessage
from ._exceptions import JidoError
from ._exceptions import NodeClosing
from ._exceptions import NodeFenced
from ._exceptions import SupervisorNotFound
from ._exceptions import Unreachable
from ._failover import Failover
from ._groups import single_failure
from ._health import Health
from ._message import NO_ORIGIN
from ._message import Instruction
from ._message import Message
from ._message import Receipt
from ._plugins import collect_backends
from ._plugins import make_plugin_manager
from ._ref import AgentRef
from ._resilience import FailureDetector
from ._resilience import RetryPolicy
from ._scheduling import ScheduleBudget
from ._supervisor import Backoff
from ._supervisor import ChildSpec
from ._supervisor import Restart
from ._supervisor import Strategy
from ._supervisor import Supervisor
from ._supervisor import SupervisorInfo
from .abc import Consistency
from .abc import Coordination
from .abc import Registry
from .abc import StateBackend
from .abc import Transport
from .signals import Signal
from .signals import SignalBus

__all__ = ["Node", "open_node"]

log = logging.getLogger("jido_trio.node")

ROOT_SUPERVISOR = "root"

#: ``start_agent``/``start_agents`` on the synchronous start path are a cancel
#: point for every agent but a schedule point only once per this many agents
#: started (no task starts more in a row; see docs/performance.md).
START_SCHEDULE_EVERY = 64

_start_budget = ScheduleBudget(START_SCHEDULE_EVERY)


@attrs.define(eq=False)
class Node:
    """A running node: the entry point for everything an application does.

    Get one from :func:`open_node`. Every operation takes a ref (or id) and
    goes through the node's Communication layer, whether the agent is local
    or on another node.
    """

    config: Config
    plugin_manager: pluggy.PluginManager
    registry: Registry
    transport: Transport
    state: StateBackend
    coordination: Coordination
    #: The node's signal bus: ``publish`` and ``subscribe`` (see :class:`SignalBus`).
    signals: SignalBus = attrs.field(init=False)
    _directory: Directory = attrs.field(init=False, repr=False)
    _health: HealthPolicy = attrs.field(init=False, repr=False)
    _comm: Communication = attrs.field(init=False, repr=False)
    _kernel: Kernel = attrs.field(init=False, repr=False)
    _server: RemoteServer = attrs.field(init=False, repr=False)
    #: Watches the other nodes (``None`` on a local-only transport).
    _detector: FailureDetector | None = attrs.field(init=False, repr=False)
    _root: Supervisor = attrs.field(init=False)
    _supervisors: dict[str, Supervisor] = attrs.field(factory=dict, init=False)
    _background: trio.MemorySendChannel[Callable[[], Awaitable[Any]]] = attrs.field(init=False)
    _background_receive: trio.MemoryReceiveChannel[Callable[[], Awaitable[Any]]] = attrs.field(
        init=False
    )
    _closing: bool = attrs.field(default=False, init=False)
    #: The child spec of the agents of a class and restart type (shared).
    _agent_specs: dict[tuple[type[Agent], str], ChildSpec] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        config = self.config
        name = config.node_name
        self._background, self._background_receive = trio.open_memory_channel[
            Callable[[], Awaitable[Any]]
        ](math.inf)
        spawn = self._background.send_nowait
        # Built bottom-up, each part given what it uses: the directory of
        # agents and the health policy, the client that reaches other nodes,
        # the Communication layer on top of them, the signal bus that sends
        # through it, then the kernel every agent cell shares and the server
        # that answers other nodes.
        self._directory = directory = Directory(name, self.registry, spawn)
        self._health = health = HealthPolicy(config, self._emit)
        transport = self.transport
        self._detector = detector = (
            FailureDetector(
                config.health_check_interval,
                config.failure_detection_threshold,
                self._ping,
                self._on_reachability,
            )
            if transport.supports_remote
            else None
        )
        client = RemoteClient(
            name,
            transport,
            directory,
            health,
            RetryPolicy(max_attempts=config.retry_attempts),
            detector,
        )
        self._comm = comm = Communication(name, config.operation_timeout, directory, health, client)
        self.signals = signals = SignalBus(
            node_name=name,
            transport=transport,
            state=self.state,
            operation_timeout=config.operation_timeout,
            send_instruction=comm.send_instruction,
            spawn=spawn,
        )
        events = NodeCellEvents(
            self._emit,
            health,
            directory,
            self.state,
            signals.unsubscribe_agent,
            spawn,
            comm.send_instruction,
        )
        self._kernel = Kernel(
            node_name=name,
            state=self.state,
            registry=self.registry,
            events=events,
            messenger=Messenger(
                name, comm.tell_nowait, comm.send_instruction, comm.call, signals.publish
            ),
            claim=self._claim,
            dedupe_window=config.dedupe_window,
            max_delivery_attempts=config.max_delivery_attempts,
            shutdown_timeout=config.shutdown_timeout,
            operation_timeout=config.operation_timeout,
        )
        self._server = RemoteServer(
            name,
            directory,
            health,
            comm,
            signals.handle_forwarded,
            {"adopt": self._serve_adopt, "migrate": self._serve_migrate, "stop": self._serve_stop},
        )
        self._root = self._new_supervisor(
            ROOT_SUPERVISOR, "one_for_one", config.max_restarts, config.max_seconds, None
        )

    async def _ping(self, node: str) -> None:
        await ping(self.transport, node, self.config.health_check_interval)

    @property
    def name(self) -> str:
        """This node's name."""
        return self.config.node_name

    # ------------------------------------------------------------ hooks

    def _emit(self, hook: str, **kwargs: Any) -> None:
        caller = getattr(self.plugin_manager.hook, hook)
        if not caller.get_hookimpls():
            return  # nobody listens: skip pluggy's call machinery
        try:
            caller(node=self, **kwargs)
        except Exception:
            log.exception("plugin hook %s failed", hook)

    def _on_supervisor_event(
        self, supervisor_id: str, child_id: str, event: str, reason: str | None
    ) -> None:
        self._emit(
            "jido_trio_supervisor_event",
            supervisor_id=supervisor_id,
            child_id=child_id,
            event=event,
            reason=reason,
        )

    def _new_supervisor(
        self,
        sup_id: str,
        strategy: Strategy,
        max_restarts: int,
        max_seconds: float,
        backoff: Backoff | None,
    ) -> Supervisor:
        return Supervisor(
            id=sup_id,
            strategy=strategy,
            max_restarts=max_restarts,
            max_seconds=max_seconds,
            backoff=backoff,
            on_event=self._on_supervisor_event,
            node_name=self.name,
        )

    def _supervisor(self, supervisor: Supervisor | str | None) -> Supervisor:
        if supervisor is None:
            return self._root
        if isinstance(supervisor, Supervisor):
            if self._supervisors.get(supervisor.id) is not supervisor:
                raise SupervisorNotFound(
                    f"supervisor {supervisor.id!r} does not belong to this node"
                )
            return supervisor
        try:
            return self._supervisors[supervisor]
        except KeyError:
            raise SupervisorNotFound(
                f"no supervisor {supervisor!r} on node {self.name!r}"
            ) from None

    # ------------------------------------------------------------ agents

    async def start_agent(
        self,
        cls: type[Agent],
        agent_id: str,
        *,
        state: Any = None,
        restart: Restart = "permanent",
        metadata: Mapping[str, Any] | None = None,
        supervisor: Supervisor | str | None = None,
    ) -> AgentRef:
        """Start an agent under ``supervisor`` (the node's root supervisor by
        default) and return its ref once it has loaded its state.

        The agent resumes the state persisted for ``agent_id`` unless ``state``
        is given.

        With the built-in in-memory state backend and local registry, an agent
        class without ``on_start`` and nothing in the agent's durable log, the
        start-up runs synchronously and the agent gets its task only once it
        first has work (a message, a stop...); the call is then a cancel point,
        and a schedule point only once every :data:`START_SCHEDULE_EVERY` such
        starts (no task makes more in a row; docs/performance.md). Otherwise it
        awaits the agent's start-up in its task. To start many agents of one
        class, :meth:`start_agents`.

        :raises AgentAlreadyExists: ``agent_id`` names a live agent.
        :raises InvalidMessage: ``agent_id`` is not a non-empty string, or the
            state (given or initial) cannot be encoded.
        :raises SupervisorNotFound: ``supervisor`` is not a supervisor of this node.
        :raises SupervisorUnavailable: ``supervisor`` is not running.
        :raises NodeClosing: the node is shutting down.
        :raises Unreachable, EngineError: the registry or state backend failed.
        :raises TypeError: ``cls`` is not an :class:`Agent` subclass with a ``type``.
        """
        self._check_agent_class(cls)
        self._check_new_agent_id(agent_id)
        parent = self._supervisor(supervisor)
        return await self._start_one(cls, agent_id, parent, state, restart, metadata)

    async def start_agents(
        self,
        cls: type[Agent],
        agent_ids: Iterable[str],
        *,
        restart: Restart = "permanent",
        metadata: Mapping[str, Any] | None = None,
        supervisor: Supervisor | str | None = None,
    ) -> list[AgentRef]:
        """Start one agent of class ``cls`` per id, in order, under
        ``supervisor``; return their refs once all of them run.

        The same as awaiting :meth:`start_agent` for each id (each agent
        resumes its persisted state, the same hooks fire, the same schedule
        points: a cancel point before each agent, a schedule point once every
        :data:`START_SCHEDULE_EVERY` agents on the synchronous start path),
        minus the per-call overhead.

        The ids are checked before any agent is started: duplicates, or an id
        of a live agent, raise at once and start nothing. If starting one
        fails or the call is cancelled, the agents started before it keep
        running.

        :raises AgentAlreadyExists: an id names a live agent.
        :raises InvalidMessage: an id is empty or given twice.
        :raises SupervisorNotFound: as for :meth:`start_agent`.
        :raises SupervisorUnavailable: as for :meth:`start_agent`.
        :raises NodeClosing: as for :meth:`start_agent`.
        :raises Unreachable: as for :meth:`start_agent`.
        :raises EngineError: as for :meth:`start_agent`.
        :raises TypeError: ``cls`` is not an :class:`Agent` subclass with a ``type``.
        """
        self._check_agent_class(cls)
        ids = list(agent_ids)
        if len(set(ids)) != len(ids):
            raise InvalidMessage("agent ids must be unique")
        for agent_id in ids:
            self._check_new_agent_id(agent_id)
        parent = self._supervisor(supervisor)
        refs: list[AgentRef] = []
        if not ids:
            await trio.lowlevel.checkpoint()
        for agent_id in ids:
            # Checked again: another task may have started it while this one yielded.
            self._check_new_agent_id(agent_id)
            refs.append(await self._start_one(cls, agent_id, parent, None, restart, metadata))
        return refs

    async def _start_one(
        self,
        cls: type[Agent],
        agent_id: str,
        parent: Supervisor,
        state: Any,
        restart: Restart,
        metadata: Mapping[str, Any] | None,
        *,
        release_claim: bool = True,
    ) -> AgentRef:
        """Start one agent whose class and id were checked: synchronously
        (dormant until it has work) when its cell and supervisor allow it,
        else awaiting its start-up in its task. A start that fails after its
        claim removes its registry entry again, unless ``release_claim`` is
        false (an agent taken over: its entry stays, for another try)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if agent_id in self._directory.unregistering:
            # A stopped agent with this id is still leaving the registry (in
            # the background): wait, or its removal could remove the entry of
            # the new one. Then check the id again.
            await self._directory.wait_unregistered(agent_id, self.config.operation_timeout)
            self._check_new_agent_id(agent_id)
        spec = self._agent_spec(cls, restart)
        ref = AgentRef(id=agent_id, type=cls.type, node=self.name, metadata=metadata)
        # Not Mailbox[Delivery](...): calling a subscripted generic is ~10x slower.
        mailbox: Mailbox[Delivery] = Mailbox(self.config.mailbox_size)
        cell = AgentCell(ref, cls, self._kernel, mailbox, restart, state, metadata, parent)
        if parent.can_add_nowait(agent_id) and cell.can_start_nowait():
            self._start_nowait(cell, spec, parent)
            if _start_budget.count():
                await trio.lowlevel.cancel_shielded_checkpoint()
        else:
            await self._start_awaiting(cell, spec, parent, release_claim)
        return cell.ref

    @staticmethod
    def _check_agent_class(cls: type[Agent]) -> None:
        if not (isinstance(cls, type) and issubclass(cls, Agent)):
            raise TypeError(f"expected an Agent subclass, got {cls!r}")
        if not isinstance(getattr(cls, "type", None), str):
            raise TypeError(f"{cls.__name__} has no 'type' name")

    def _check_new_agent_id(self, agent_id: str) -> None:
        if not isinstance(agent_id, str) or not agent_id:
            raise InvalidMessage("agent id must be a non-empty string")
        if self._closing:
            raise NodeClosing(f"node {self.name!r} is shutting down")
        existing = self._directory.cells.get(agent_id)
        if existing is not None and existing.alive:
            raise AgentAlreadyExists(
                f"agent {agent_id!r} is already running on node {self.name!r}", node=self.name
            )

    def _agent_spec(self, cls: type[Agent], restart: Restart) -> ChildSpec:
        """The child spec of the agents of ``cls`` with ``restart`` (one shared
        by all of them)."""
        spec = self._agent_specs.get((cls, restart))
        if spec is None:
            spec = ChildSpec(
                id=cls.type, start=cls, restart=restart, shutdown=self.config.shutdown_timeout
            )
            self._agent_specs[cls, restart] = spec
        return spec

    def _start_nowait(self, cell: AgentCell, spec: ChildSpec, parent: Supervisor) -> None:
        """Start the agent without awaiting (only after ``can_add_nowait`` and
        ``can_start_nowait``): its start-up runs here; it gets its task once
        it first has work."""
        agent_id = cell.ref.id
        self._directory.add(cell)
        try:
            cell.start_nowait()
        except BaseException:
            self._directory.discard(cell)
            raise
        cell.announce_started()
        # Dormant until it has work: its task is spawned by the first message,
        # stop or crash request its mailbox sees.
        cell.mailbox.arm(
            parent.add_started_child(
                spec, run=cell, kind="agent", observer=cell, self_scoped=True, child_id=agent_id
            )
        )
        if cell.cls.signal_routes:
            self._subscribe_routes(cell.cls, cell.ref)

    async def _start_awaiting(
        self, cell: AgentCell, spec: ChildSpec, parent: Supervisor, release_claim: bool
    ) -> None:
        agent_id = cell.ref.id
        self._directory.add(cell)
        try:
            await parent.add_child(
                spec, run=cell, kind="agent", observer=cell, self_scoped=True, child_id=agent_id
            )
        except BaseException:
            self._directory.discard(cell)
            if release_claim and cell.epoch:
                # Claimed, then failed to start: no entry is left behind.
                with (
                    trio.CancelScope(shield=True),
                    trio.move_on_after(self.config.operation_timeout),
                ):
                    try:
                        await self.registry.unregister(agent_id, node=self.name)
                    except JidoError as exc:
                        log.warning("could not release the claim on %r: %s", agent_id, exc)
            raise
        self._subscribe_routes(cell.cls, cell.ref)
        if cell.cls.signal_routes:
            # On a topic transport (NATS), signals from other nodes reach the
            # agent from the moment start_agent returns.
            await self.signals.sync_topics()

    def _subscribe_routes(self, cls: type[Agent], ref: AgentRef) -> None:
        for pattern, (action_name, priority) in cls.signal_routes.items():
            self.signals.subscribe_agent(ref, pattern, action_name, priority=priority)

    async def publish(self, signal: Signal) -> int:
        """Publish a signal on this node's bus (and forward it to the other nodes);
        see :meth:`SignalBus.publish`."""
        return await self.signals.publish(signal)

    async def start_sensor(
        self,
        sensor_id: str,
        sensor: Callable[..., Awaitable[Any]],
        *,
        supervisor: Supervisor | str | None = None,
        restart: Restart = "permanent",
    ) -> None:
        """Run a supervised signal source: ``await sensor(node, task_status=...)``
        (see :func:`jido_trio.heartbeat_sensor` and :func:`jido_trio.health_sensor`)."""

        async def run(*, task_status: trio.TaskStatus[None]) -> None:
            await sensor(self, task_status=task_status)

        spec = ChildSpec(id=sensor_id, start=run, restart=restart)
        await self._supervisor(supervisor).add_child(spec, run=run, kind="worker")

    async def stop_agent(self, ref: AgentRef | str, *, timeout: float | None = None) -> None:
        """Stop an agent gracefully, wherever it runs; it is not restarted and
        its id answers :class:`AgentUnavailable` afterwards (on the node it
        ran on; elsewhere, once its registry entry is gone,
        :class:`AgentNotFound`). Its persisted state is kept, so starting the
        id again resumes it. Stopping an agent stopped on this node does
        nothing.

        :raises AgentNotFound: no such agent (here, or in the registry).
        :raises Unreachable: its node cannot be reached, or it is being
            started or moved right now.
        :raises CallTimeout: its node did not stop it within ``timeout``
            (default ``Config.operation_timeout``).
        """
        agent_id = ref if isinstance(ref, str) else ref.id
        cell = self._directory.cells.get(agent_id)
        if cell is not None:
            await self._stop_here(cell)
            return
        if self._directory.stopped_here(agent_id):
            await trio.lowlevel.checkpoint()
            return
        if not self.transport.supports_remote:
            await trio.lowlevel.checkpoint()
            raise AgentNotFound(f"no agent {agent_id!r} on node {self.name!r}")
        deadline = deadline_after(timeout, self.config.operation_timeout)
        owner = await self._directory.owner_elsewhere(agent_id)
        message = Message.new(None, AgentRef(id=agent_id, type="-", node=owner), None)
        await self._comm.client.request(owner, "stop", message, deadline)

    async def _stop_here(self, cell: AgentCell) -> None:
        assert cell.supervisor is not None
        try:
            await cell.supervisor.stop_child(cell.ref.id)
        except ChildNotFound:
            cell.on_final("stopped")

    async def _serve_stop(self, message: Message, deadline: float) -> None:
        """Another node's ``stop_agent`` for an agent of this node."""
        agent_id = message.recipient.id
        cell = self._directory.cells.get(agent_id)
        if cell is not None:
            # Not bounded by the caller's deadline: a stop is bounded by the
            # shutdown timeout, and must not be cut half-way.
            await self._stop_here(cell)
            return
        if self._directory.stopped_here(agent_id):
            await trio.lowlevel.checkpoint()
            return
        self._directory.raise_missing(agent_id)

    async def migrate(
        self, ref: AgentRef | str, node_name: str, *, timeout: float | None = None
    ) -> AgentRef:
        """Move a running agent to the node ``node_name`` and return its new ref.

        The agent stops where it runs after the messages queued before the
        move (its state, dedupe window and unapplied at-least-once messages
        are committed and logged), its registry entry passes to ``node_name``,
        and that node starts it again from there. Whatever is sent to it
        meanwhile, through any ref, waits (within its deadline) or is sent on;
        a call queued behind the move gets :class:`Unreachable` and may be
        sent again. Works from any node.

        :raises AgentNotFound: no such agent.
        :raises AgentUnavailable: it is stopped for good.
        :raises Unreachable: ``node_name`` (or the agent's node) is not a live
            member, or the new node did not start it in time (its failover
            scan starts it later: the registry names it already).
        :raises InvalidMessage: ``node_name`` is not a non-empty string.
        """
        if not isinstance(node_name, str) or not node_name:
            raise InvalidMessage("node_name must be a non-empty string")
        agent_id = ref if isinstance(ref, str) else ref.id
        deadline = deadline_after(timeout, self.config.operation_timeout)
        cell = self._directory.cells.get(agent_id)
        if cell is not None:
            return await self._migrate_here(cell, node_name, deadline)
        owner = await self._directory.owner_elsewhere(agent_id)
        message = Message.new(None, AgentRef(id=agent_id, type="-", node=owner), node_name)
        moved = await self._comm.client.request(owner, "migrate", message, deadline)
        if not isinstance(moved, AgentRef):
            raise InvalidMessage(f"malformed migrate reply from node {owner!r}")
        return moved

    async def _migrate_here(self, cell: AgentCell, target: str, deadline: float) -> AgentRef:
        ref = cell.ref
        if target == self.name:
            await trio.lowlevel.checkpoint()
            return ref
        members = {m.name for m in await self.transport.members() if m.alive}
        if target not in members:
            raise Unreachable(f"node {target!r} is not a live member of the cluster")
        directory = self._directory
        if ref.id in directory.moving:
            raise Unreachable(f"agent {ref.id!r} is moving to node {directory.moving[ref.id]!r}")
        directory.moving[ref.id] = target
        try:
            with trio.fail_after(max(0.0, deadline - trio.current_time())):
                assert cell.supervisor is not None
                await cell.supervisor.stop_child(ref.id)
                entry = await self.registry.lookup(ref.id)
                await self.registry.take_over(
                    attrs.evolve(entry.ref, node=target), epoch=entry.epoch
                )
        except trio.TooSlowError:
            raise Unreachable(f"moving agent {ref.id!r} to node {target!r} timed out") from None
        finally:
            del directory.moving[ref.id]
        # The registry names the new node: from here on requests follow it there.
        adopt = Message.new(
            None,
            attrs.evolve(ref, node=target),
            # The entry's metadata: what update_metadata set moves along.
            {"restart": cell.restart, "metadata": dict(entry.metadata)},
        )
        moved = await self._comm.client.request(target, "adopt", adopt, deadline)
        if not isinstance(moved, AgentRef):
            raise InvalidMessage(f"malformed adopt reply from node {target!r}")
        return moved

    async def _claim(self, ref: AgentRef, metadata: Mapping[str, Any]) -> int:
        """Claim ``ref``'s agent for this node in the registry; return its epoch.

        An agent whose owner has left the cluster (it crashed, its lease
        lapsed, it handed its agents off) is taken over, as the failover scan
        would; one whose owner is a live member is not.

        :raises AgentAlreadyExists: a live node owns it (naming that node).
        """
        try:
            return (await self.registry.register(ref, metadata)).epoch
        except AgentAlreadyExists as exc:
            if not self.transport.supports_remote:
                raise
            owner = exc.node
            if owner is None:
                owner = (await self.registry.lookup(ref.id)).node
            members = {m.name for m in await self.transport.members() if m.alive}
            if owner in members or owner == self.name or owner is None:
                raise
            entry = await self.registry.lookup(ref.id)
            if entry.node != owner:
                raise  # it changed hands meanwhile: let the caller see who owns it now
            log.info("taking agent %r over from node %r, which left the cluster", ref.id, owner)
            await self.registry.take_over(ref, epoch=entry.epoch)
            return (await self.registry.register(ref, metadata)).epoch

    async def _serve_adopt(self, message: Message, deadline: float) -> AgentRef:
        """Another node handed an agent over (its entry names this node now):
        start it here."""
        ref = message.recipient
        payload = message.payload
        if not isinstance(payload, dict) or not isinstance(payload.get("metadata"), dict):
            raise InvalidMessage("malformed adopt request")
        cls = Agent.types.get(ref.type)
        if cls is None:
            raise ConfigError(f"agent type {ref.type!r} is not imported on node {self.name!r}")
        with trio.fail_after(max(0.0, deadline - trio.current_time())):
            return await self._adopt(
                cls, ref.id, str(payload.get("restart", "permanent")), payload["metadata"]
            )

    async def _serve_migrate(self, message: Message, deadline: float) -> AgentRef:
        target = message.payload
        if not isinstance(target, str):
            raise InvalidMessage("malformed migrate request")
        agent_id = message.recipient.id
        cell = self._directory.cells.get(agent_id)
        if cell is None:
            # Unreachable if the registry names this node: it is about to
            # run the agent (taken over, handed here), so ask again.
            await self._directory.owner_elsewhere(agent_id)
            self._directory.raise_missing(agent_id)
        return await self._migrate_here(cell, target, deadline)

    async def _adopt(
        self, cls: type[Agent], agent_id: str, restart: str, metadata: Mapping[str, Any]
    ) -> AgentRef:
        """Start an agent whose registry entry names this node already (taken
        over, handed over); the entry stays if the start fails (the failover
        scan tries again)."""
        cell = self._directory.cells.get(agent_id)
        if cell is not None and cell.alive:
            await trio.lowlevel.checkpoint()
            return cell.ref
        self._check_new_agent_id(agent_id)
        if restart not in ("permanent", "transient", "temporary"):
            restart = "permanent"
        return await self._start_one(
            cls,
            agent_id,
            self._root,
            None,
            restart,  # type: ignore[arg-type]
            {k: v for k, v in metadata.items() if not k.startswith("jido.")} or None,
            release_claim=False,
        )

    async def send_instruction(
        self,
        ref: AgentRef,
        instruction: Instruction,
        *,
        delivery: str = "at_most_once",
        timeout: float | None = None,
    ) -> Receipt:
        """Queue an instruction for the agent and return a receipt once it has it.

        ``delivery="at_most_once"`` (default) queues it in the agent's mailbox.
        ``delivery="at_least_once"`` first appends it to the agent's durable
        log in the StateBackend (SQLite survives the process); it is replayed
        after crashes and restarts until applied, deduplicated by instruction
        id, so its effect happens exactly once. A message whose action keeps
        crashing the agent is dead-lettered after ``max_delivery_attempts``.

        :raises AgentNotFound: unknown agent.
        :raises AgentUnavailable: the agent is stopped for good.
        :raises ActionNotFound: the agent type has no such action.
        :raises InvalidMessage: the parameters do not fit the action, or
            ``delivery`` or ``timeout`` is not valid.
        :raises MailboxFull: the mailbox stayed full until the deadline.
        :raises RemoteNotSupported: remote ref, local-only transport.
        :raises Unreachable: the owning node cannot be reached.
        :raises CallTimeout: the owning node did not answer before the deadline.
        :raises CircuitOpen: the breaker of the agent refuses requests for now.
        :raises EngineError: the durable mailbox (at-least-once) could not be written.
        :raises TypeError: ``ref`` is not an :class:`AgentRef` or
            ``instruction`` not an :class:`Instruction`.
        """
        return await self._comm.send_instruction(ref, instruction, delivery, timeout, NO_ORIGIN)

    async def call(
        self, ref: AgentRef, instruction: Instruction, *, timeout: float | None = None
    ) -> Any:
        """Run an action and return what it passed to ``ctx.reply`` (``None`` if nothing).

        :raises CallTimeout: no reply before ``timeout`` (default ``operation_timeout``).
        :raises ActionError: the action raised (the original is ``__cause__``).
        :raises ActionNotFound: the agent type has no such action.
        :raises AlreadyProcessed: this instruction id was applied before.
        :raises CircuitOpen: the breaker of calls to the agent is open.
        :raises AgentNotFound: as for :meth:`send_instruction`.
        :raises AgentUnavailable: as for :meth:`send_instruction`.
        :raises RemoteNotSupported: as for :meth:`send_instruction`.
        :raises Unreachable: as for :meth:`send_instruction`.
        :raises InvalidMessage: as for :meth:`send_instruction`.
        :raises TypeError: as for :meth:`send_instruction`.
        """
        return await self._comm.call(ref, instruction, timeout, NO_ORIGIN)

    async def query_agent(
        self,
        ref: AgentRef,
        query: str = "get_state",
        *,
        consistency: Consistency = "strong",
        timeout: float | None = None,
    ) -> Any:
        """Read an agent's state.

        ``"strong"`` asks the agent itself, after every message queued before
        the query; ``"eventual"`` reads the last committed state from the
        StateBackend; ``"weak"`` returns the owning node's in-memory copy
        without waiting for the mailbox. Another ``query`` name runs that
        action as a call (always strong).

        :raises CallTimeout: no answer before ``timeout`` (default ``operation_timeout``).
        :raises InvalidMessage: ``consistency`` or ``timeout`` is not valid.
        :raises AgentNotFound: as for :meth:`send_instruction`.
        :raises AgentUnavailable: as for :meth:`send_instruction`.
        :raises RemoteNotSupported: as for :meth:`send_instruction`.
        :raises Unreachable: as for :meth:`send_instruction`.
        :raises CircuitOpen: as for :meth:`send_instruction`.
        :raises EngineError: as for :meth:`send_instruction`.
        """
        return await self._comm.query(ref, query, consistency, timeout)

    async def check_agent_health(self, ref: AgentRef, *, timeout: float | None = None) -> Health:
        """Return the agent's :class:`Health`; never raises for the four outcomes."""
        return await self._comm.health(ref, timeout=timeout)

    async def lookup(self, agent_id: str) -> AgentRef:
        """Return the ref registered for ``agent_id`` (on any node of the registry).

        :raises AgentNotFound: never registered.
        :raises AgentUnavailable: it ran here and is stopped for good.
        """
        return await self._comm.lookup(agent_id)

    async def dead_letters(self, ref: AgentRef | str) -> list[Message]:
        """Messages set aside for an agent: at-least-once messages whose action
        kept failing, and instructions refused as invalid (e.g. an unknown
        newer params version). Oldest first."""
        agent_id = ref if isinstance(ref, str) else ref.id
        entries = await self.state.read_log(dead_letter_stream(agent_id))
        return [Message.from_bytes(entry.data) for entry in entries]

    async def redrive_dead_letters(self, ref: AgentRef) -> list[Receipt]:
        """Send every dead letter of ``ref`` again (at-least-once, same
        instruction ids) and clear them from the dead-letter log.

        :returns: the receipts, in the order the letters were stored.
        """
        stream = dead_letter_stream(ref.id)
        entries = await self.state.read_log(stream)
        receipts = []
        for entry in entries:
            message = Message.from_bytes(entry.data)
            if isinstance(message.payload, Instruction):
                receipts.append(
                    await self.send_instruction(ref, message.payload, delivery="at_least_once")
                )
            await self.state.trim_log(stream, upto=entry.seq)
        return receipts

    def agents(self) -> list[AgentRef]:
        """Refs of the agents this node runs (including restarting ones)."""
        return [c.ref for c in self._directory.cells.values() if c.alive]

    # ------------------------------------------------------------ supervisors

    async def start_supervisor(
        self,
        sup_id: str,
        *,
        strategy: Strategy = "one_for_one",
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        supervisor: Supervisor | str | None = None,
        restart: Restart = "permanent",
        backoff: Backoff | None = None,
        children: Iterable[ChildSpec] = (),
    ) -> Supervisor:
        """Start a supervisor under ``supervisor`` (the root by default).

        ``children`` are started in order (agent classes or functions); more
        can be added with ``start_agent(..., supervisor=sup)`` or
        :meth:`Supervisor.start_child`.

        :raises ChildAlreadyExists: a supervisor with this id runs on this node.
        :raises InvalidMessage: ``sup_id`` is not a non-empty string.
        :raises SupervisorNotFound: ``supervisor`` is not a supervisor of this node.
        :raises SupervisorUnavailable: ``supervisor`` is not running.
        :raises ConfigError: ``strategy``, the intensity or ``backoff`` is not valid.
        """
        if not isinstance(sup_id, str) or not sup_id:
            raise InvalidMessage("supervisor id must be a non-empty string")
        if sup_id in self._supervisors or sup_id == ROOT_SUPERVISOR:
            raise ChildAlreadyExists(f"supervisor {sup_id!r} already exists")
        parent = self._supervisor(supervisor)
        sup = self._new_supervisor(sup_id, strategy, max_restarts, max_seconds, backoff)
        spec = ChildSpec(id=sup_id, start=sup.run, restart=restart, shutdown=math.inf)
        self._supervisors[sup_id] = sup
        try:
            await parent.add_child(
                spec,
                run=sup.run,
                kind="supervisor",
                observer=_SupervisorEntry(self._supervisors, sup),
                supervisor=sup,
            )
        except BaseException:
            del self._supervisors[sup_id]
            raise
        try:
            for child in children:
                if isinstance(child.start, type) and issubclass(child.start, Agent):
                    await self.start_agent(
                        child.start,
                        child.id,
                        state=child.state,
                        restart=child.restart,
                        metadata=child.metadata,
                        supervisor=sup,
                    )
                else:
                    await sup.start_child(child)
        except BaseException:
            # As in OTP, a child that fails to start fails the supervisor's
            # start as a whole: the children already started stop with it.
            with trio.CancelScope(shield=True):
                await parent.stop_child(sup_id)
            raise
        return sup

    def supervision_tree(self) -> SupervisorInfo:
        """A frozen snapshot of the node's supervision tree, from the root."""
        return self._root.info()

    # ------------------------------------------------------------ lifecycle

    async def _run_background(self, done: trio.Event) -> None:
        try:
            async for job in self._background_receive:
                try:
                    await job()
                except Exception:
                    log.exception("background job failed")
        finally:
            done.set()

    def _on_reachability(self, peer: str, reachable: bool) -> None:
        old, new = (
            (Health.UNREACHABLE, Health.HEALTHY)
            if reachable
            else (Health.HEALTHY, Health.UNREACHABLE)
        )
        log.warning("node %r is %s", peer, "reachable again" if reachable else "unreachable")
        if reachable:
            self._health.node_returned(peer)

        async def announce() -> None:
            for entry in await self.registry.select(node=peer):
                self._emit("jido_trio_health_changed", ref=entry.ref, old=old, new=new)

        self._background.send_nowait(announce)

    async def _track_members(self, detector: FailureDetector) -> None:
        """Keep the failure detector watching exactly the other live members."""
        incarnations: dict[str, str] = {}
        while True:
            try:
                members = await self.transport.members()
            except JidoError as exc:
                # The membership service is briefly away (a NATS server
                # restarting): keep watching the peers we know.
                log.warning("cannot list cluster members: %s", exc)
                await trio.sleep(self.config.health_check_interval)
                continue
            current = {m.name for m in members} - {self.name}
            for member in members:
                # A new incarnation of a peer (it restarted, maybe faster than
                # its heartbeats could tell): what its previous one did to
                # callers' breakers is over.
                if member.incarnation and incarnations.get(member.name) != member.incarnation:
                    if member.name in incarnations:
                        self._health.node_returned(member.name)
                    incarnations[member.name] = member.incarnation
            for peer in current - detector.watched:
                detector.watch(peer)
                self._health.node_returned(peer)  # it may have left and come back
            for peer in detector.watched - current:
                detector.unwatch(peer)
            await trio.sleep(self.config.health_check_interval)

    async def _watch_fence(self) -> None:
        await self.transport.wait_fenced()
        log.error("node %r lost its cluster membership: stopping every agent", self.name)
        # Raised in the node's nursery: every agent task is cancelled at once
        # (no graceful stop), because another node may own these agents now.
        raise NodeFenced(
            f"node {self.name!r} lost its cluster membership lease; its agents were stopped"
        )

    def _failover(self) -> Failover:
        async def start(
            cls: type[Agent], agent_id: str, restart: str, metadata: Mapping[str, Any]
        ) -> AgentRef:
            return await self._adopt(cls, agent_id, restart, metadata)

        return Failover(
            node_name=self.name,
            registry=self.registry,
            transport=self.transport,
            interval=self.config.health_check_interval,
            is_local=self._directory.is_local,
            start=start,
        )

    async def _shutdown(self) -> None:
        self._closing = True
        self._emit("jido_trio_node_stopping")
        if self.transport.supports_remote and self.config.failover and await self._survivors():
            # A node that leaves hands its permanent and transient agents to
            # the survivors: they stop here (state committed, at-least-once
            # messages left in their durable mailboxes) and keep their
            # registry entries, which a survivor takes over once this node has
            # left the membership (see _failover). Temporary ones go with it.
            self._directory.handing_off = True
        self._root.request_shutdown()

    async def _survivors(self) -> bool:
        """Whether other live nodes are in the cluster (bounded: the node is closing)."""
        with trio.move_on_after(self.config.operation_timeout):
            try:
                members = await self.transport.members()
            except JidoError:
                return False
            return any(m.alive and m.name != self.name for m in members)
        return False


@attrs.define(eq=False)
class _SupervisorEntry:
    """Forgets a supervisor's id once it is gone for good (stopped, or not restarted)."""

    supervisors: dict[str, Supervisor]
    supervisor: Supervisor

    def request_stop(self) -> None:
        self.supervisor.request_shutdown()

    def on_cancelled_dormant(self) -> None:
        return None

    def on_exit(self, error: BaseException | None, will_restart: bool) -> None:
        return None

    def on_restart(self, restarts: int) -> None:
        return None

    def on_final(self, reason: str) -> None:
        if self.supervisors.get(self.supervisor.id) is self.supervisor:
            del self.supervisors[self.supervisor.id]


async def _enter(stack: AsyncExitStack, made: Any) -> Any:
    if isinstance(made, AbstractAsyncContextManager):
        return await stack.enter_async_context(made)
    return made


@asynccontextmanager
async def open_node(
    config: Config | None = None, *, name: str | None = None, plugins: Iterable[object] = ()
) -> AsyncIterator[Node]:
    """Open a node for the duration of an ``async with`` block.

    :param config: the configuration (local defaults when omitted).
    :param name: overrides ``config.node_name``.
    :param plugins: extra plugin objects registered for this node only.
    :raises ConfigError: invalid config or unknown implementation names.
    :raises SupervisorEscalation: the root supervisor gave up (the node ends).

    On exit every agent is stopped gracefully in reverse start order, then the
    engines are closed in reverse order of opening.
    """
    if config is None:
        config = Config() if name is None else Config(node_name=name)
    elif not isinstance(config, Config):
        raise ConfigError(f"config must be a jido_trio.Config, got {type(config).__name__}")
    elif name is not None:
        config = attrs.evolve(config, node_name=name)
    pm = make_plugin_manager(plugins)
    backends = collect_backends(pm)
    factories = (
        backends.state.get(config.state),
        backends.registry.get(config.registry),
        backends.coordination.get(config.coordination),
        backends.transport.get(config.transport),
    )
    names = (config.state, config.registry, config.coordination, config.transport)
    token = current_node_name.set(config.node_name)
    body_error: BaseException | None = None
    try:
        async with AsyncExitStack() as stack:
            state, registry, coordination, transport = [
                await _enter(stack, factory(config, config.options_for(n)))
                for factory, n in zip(factories, names, strict=True)
            ]
            node = Node(config, pm, registry, transport, state, coordination)
            node._kernel.use_clock()
            async with trio.open_nursery() as nursery:
                background_done = trio.Event()
                nursery.start_soon(node._run_background, background_done)
                await nursery.start(transport.serve, node._server.handle)
                detector = node._detector
                if detector is not None:
                    nursery.start_soon(node._track_members, detector)
                    await nursery.start(detector.run)
                root_done = trio.Event()

                async def run_root(task_status: trio.TaskStatus[Supervisor]) -> None:
                    try:
                        await node._root.run(task_status=task_status)
                    finally:
                        root_done.set()

                await nursery.start(run_root)
                if transport.supports_remote:
                    nursery.start_soon(node._watch_fence)
                    if config.failover:
                        await nursery.start(node._failover().run)
                await node.signals.load_durables()
                node._emit("jido_trio_node_started")
                try:
                    yield node
                except BaseException as exc:
                    body_error = exc
                finally:
                    with trio.CancelScope(shield=True):
                        await node._shutdown()
                        await root_done.wait()
                        node._root.finalize_all("shutdown")
                        # Let the last registry clean-ups run before the engines close.
                        node._background.close()
                        with trio.move_on_after(config.shutdown_timeout):
                            await background_done.wait()
                    nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # A body cancelled because the node failed (e.g. the root supervisor
        # escalated) should see that failure itself, not a group around it.
        failure = single_failure(group, body_error)
        if failure is not None:
            raise failure from None
        raise
    finally:
        current_node_name.reset(token)
    if body_error is not None:
        raise body_error


@attrs.frozen
class NodeInternals:
    """The parts of a running node that :mod:`jido_trio.testing` inspects and
    drives (crash injection, reply deadlines, reachability); not for
    applications."""

    directory: Directory
    kernel: Kernel
    detector: FailureDetector | None


def node_internals(node: Node) -> NodeInternals:
    """What :mod:`jido_trio.testing` may see of ``node``."""
    return NodeInternals(directory=node._directory, kernel=node._kernel, detector=node._detector)
