"""The four protocols between the runtime and its engines.

A plugin implements any of :class:`Registry`, :class:`Transport`,
:class:`StateBackend` and :class:`Coordination` and registers a factory for it
by name through the ``jido_trio_add_backends`` hook (see
:mod:`jido_trio.hookspecs`). Every method is ``async`` and is a Trio
checkpoint. Implementations that own resources (connections, threads, tasks)
are returned by their factory as async context managers; the node enters them
in order (state, registry, coordination, transport) and exits them in reverse.

Errors each method may raise are named in its docstring; implementations must
not raise anything else for the outcomes described there.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from types import MappingProxyType
from typing import Any, Literal

import attrs
import trio

from ._ref import AgentRef

__all__ = [
    "Consistency",
    "Coordination",
    "Lease",
    "LogEntry",
    "NodeInfo",
    "Registry",
    "RegistryEntry",
    "RegistryEvent",
    "RequestHandler",
    "StateBackend",
    "TopicHandler",
    "Transport",
    "Versioned",
]

Consistency = Literal["strong", "eventual", "weak"]
"""A read's consistency level; see :meth:`StateBackend.read`."""


def _frozen_map(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if isinstance(value, MappingProxyType):
        return value  # read-only already (shared by many entries, e.g. the restart type)
    return MappingProxyType({} if value is None else dict(value))


# ---------------------------------------------------------------- Registry


@attrs.frozen(kw_only=True)
class RegistryEntry:
    """One registered agent.

    :param ref: the agent's ref; ``ref.node`` is the owning node.
    :param epoch: ownership epoch, increased on every (re)registration, so a
        stale owner can be told from the current one.
    :param metadata: searchable metadata (see :meth:`Registry.select`).
    :param registered_at: Unix time of the registration.
    """

    ref: AgentRef
    epoch: int
    metadata: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_map, eq=False)
    registered_at: float

    @property
    def node(self) -> str | None:
        """The owning node's name."""
        return self.ref.node


@attrs.frozen(kw_only=True)
class RegistryEvent:
    """A change seen by :meth:`Registry.watch`.

    :param kind: ``"registered"``, ``"updated"`` or ``"unregistered"``.
    """

    kind: Literal["registered", "updated", "unregistered"]
    entry: RegistryEntry


class Registry(abc.ABC):
    """Where agent ids are mapped to their owning node."""

    @abc.abstractmethod
    async def register(
        self, ref: AgentRef, metadata: Mapping[str, Any] | None = None
    ) -> RegistryEntry:
        """Register ``ref`` (whose ``node`` must be set) as owner of ``ref.id``.

        Registering again from the same node (an agent restart) bumps the epoch.

        :raises AgentAlreadyExists: another node owns this id.
        :raises ValueError: ``ref.node`` is ``None``.
        """

    async def take_over(self, ref: AgentRef, *, epoch: int) -> RegistryEntry:
        """Move the entry of ``ref.id`` to ``ref.node`` if it is still at ``epoch``.

        Failover calls this for agents of a node that left the cluster. It is
        a compare-and-set on the stored entry: of several nodes trying at
        once, exactly one wins, and an owner that registered again meanwhile
        (a new epoch) keeps its agent. The entry keeps its metadata; the new
        epoch is larger.

        :raises AgentAlreadyExists: the entry is no longer at ``epoch``.
        :raises AgentNotFound: no such entry.
        :raises NotImplementedError: this registry cannot fail agents over
            (the default).
        """
        raise NotImplementedError(f"{type(self).__name__} does not support take_over")

    @abc.abstractmethod
    async def unregister(self, agent_id: str, *, node: str | None = None) -> None:
        """Remove the entry; with ``node``, only if that node still owns it.

        Unregistering an unknown id is not an error.
        """

    @abc.abstractmethod
    async def lookup(self, agent_id: str) -> RegistryEntry:
        """Return the entry for ``agent_id``.

        :raises AgentNotFound: no such entry.
        """

    @abc.abstractmethod
    async def select(
        self,
        *,
        type: str | None = None,
        node: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> list[RegistryEntry]:
        """Return the entries matching every given criterion.

        ``metadata`` matches entries whose metadata has each key with an equal value.
        """

    @abc.abstractmethod
    async def update_metadata(self, agent_id: str, metadata: Mapping[str, Any]) -> RegistryEntry:
        """Merge ``metadata`` into the entry's metadata.

        :raises AgentNotFound: no such entry.
        """

    @abc.abstractmethod
    async def count(self) -> int:
        """Number of registered agents."""

    @abc.abstractmethod
    def watch(self) -> AbstractAsyncContextManager[AsyncIterator[RegistryEvent]]:
        """Open a stream of changes from now on: ``async with reg.watch() as changes``.

        A watcher that falls far behind may miss events; it is never allowed to
        grow memory without bound.
        """


# ---------------------------------------------------------------- Transport

#: Handles one incoming request or one-way message: ``data`` in, reply out
#: (``None`` for one-way messages).
RequestHandler = Callable[[bytes], Awaitable[bytes | None]]

#: Handles one message received through :meth:`Transport.subscribe_topics`:
#: called with the topic it was published on and its data.
TopicHandler = Callable[[str, bytes], Awaitable[None]]


@attrs.frozen(kw_only=True)
class NodeInfo:
    """A cluster member as the transport sees it.

    :param name: the node name.
    :param alive: whether the node is currently considered reachable.
    :param last_seen: Unix time of the last sign of life.
    """

    name: str
    alive: bool
    last_seen: float


class Transport(abc.ABC):
    """Moves opaque bytes between nodes."""

    #: True when the transport can reach nodes other than this one.
    supports_remote: bool = False

    @abc.abstractmethod
    async def send(self, node: str, data: bytes) -> None:
        """Deliver ``data`` one-way to ``node``'s handler.

        :raises RemoteNotSupported: the transport is local-only.
        :raises Unreachable: the node is unknown or cannot be reached.
        """

    @abc.abstractmethod
    async def request(self, node: str, data: bytes, *, timeout: float) -> bytes:
        """Send ``data`` to ``node``'s handler and return its reply.

        :raises RemoteNotSupported: the transport is local-only.
        :raises Unreachable: the node is unknown or cannot be reached.
        :raises CallTimeout: no reply within ``timeout`` seconds.
        """

    @abc.abstractmethod
    async def serve(
        self,
        handler: RequestHandler,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Receive messages for this node and pass each to ``handler`` until
        cancelled; call ``task_status.started()`` once ready."""

    @abc.abstractmethod
    async def members(self) -> Sequence[NodeInfo]:
        """The nodes this transport knows of, this one included."""

    async def wait_fenced(self) -> None:
        """Return once this node has lost its cluster membership: its lease
        lapsed (it could not renew it in time) or another process holds it now.

        Other nodes may then own this node's agents, so the node stops them
        at once (see :class:`jido_trio.NodeFenced`). Transports without
        membership leases never return (the default).
        """
        await trio.sleep_forever()

    # -- optional capability: topics (publish/subscribe) ----------------------

    #: True when the transport implements :meth:`publish_topic` and
    #: :meth:`subscribe_topics`; the signal bus then publishes each signal once
    #: on a topic instead of sending it to every member.
    supports_topics: bool = False

    #: Longest topic (and topic pattern) every topic-capable transport accepts.
    max_topic_length: int = 1024

    async def publish_topic(self, topic: str, data: bytes) -> None:
        """Publish ``data`` one-way on ``topic``.

        A topic is one or more tokens joined by ``"."``, each token made of
        ``A-Z a-z 0-9 - _ = /``. A topic *pattern* may also have ``*`` tokens
        (exactly one token) and, as its last token only, ``>`` (one or more
        tokens): ``"signal.orders.*"``, ``"signal.>"``. Topics are scoped to
        the transport's cluster (on NATS, under its namespace).

        Every *other* node subscribed (:meth:`subscribe_topics`) to a pattern
        matching ``topic`` gets it once, even when several of its patterns
        match; the publishing node never gets its own messages back. Like
        :meth:`send`, delivery is at most once and may be lost silently.

        :param topic: where to publish.
        :param data: the message, opaque to the transport.
        :raises ValueError: ``topic`` is not a valid topic or is longer than
            :attr:`max_topic_length`.
        :raises InvalidMessage: ``data`` is larger than the transport carries.
        :raises Unreachable: the transport cannot publish right now.
        :raises NotImplementedError: the transport has no topics (the default;
            see :attr:`supports_topics`).
        """
        raise NotImplementedError(f"{type(self).__name__} does not support topics")

    async def subscribe_topics(self, patterns: Collection[str], handler: TopicHandler) -> None:
        """Make ``patterns`` this node's topic subscriptions, replacing the
        previous set, and pass every message they receive to ``handler``.

        Declarative: patterns in both sets stay subscribed without a gap,
        new ones are added before old ones go, and an empty collection ends
        every subscription. Returns once the change is in effect: a message
        published anywhere after that, on a topic matching a new pattern,
        reaches ``handler``. The transport calls ``handler`` from a task of its
        own, one message at a time in arrival order, until it closes; an
        exception from ``handler`` is logged and the message dropped.

        :param patterns: topic patterns (syntax in :meth:`publish_topic`).
        :param handler: called as ``await handler(topic, data)``; the latest
            call's handler receives every message from then on.
        :raises ValueError: a pattern is not valid or is longer than
            :attr:`max_topic_length`.
        :raises Unreachable: the change could not be confirmed (it may still
            take effect once the transport reconnects).
        :raises NotImplementedError: the transport has no topics (the default).
        """
        raise NotImplementedError(f"{type(self).__name__} does not support topics")


# ---------------------------------------------------------------- StateBackend


@attrs.frozen(kw_only=True)
class Versioned:
    """A stored value and its version (versions start at 1 and only grow)."""

    value: bytes
    version: int


@attrs.frozen(kw_only=True)
class LogEntry:
    """One record of an append-only log; ``seq`` starts at 1 and only grows."""

    seq: int
    data: bytes


class StateBackend(abc.ABC):
    """Versioned key-value state plus append-only logs."""

    @abc.abstractmethod
    async def read(self, key: str, *, consistency: Consistency = "strong") -> Versioned | None:
        """Return the value and version for ``key``, or ``None`` if absent.

        ``"strong"`` sees every write acknowledged before the call began;
        ``"eventual"`` may return an older value that converges; ``"weak"``
        may return any value this node has seen, even a stale cache.
        """

    @abc.abstractmethod
    async def write(self, key: str, value: bytes, *, expected_version: int | None = None) -> int:
        """Store ``value`` and return its new version.

        ``expected_version=None`` writes unconditionally; ``0`` requires the key
        to be absent; ``n`` requires the current version to be ``n``.
        Returns once the write is as durable as the backend promises.

        :raises StateConflict: the current version is not ``expected_version``.
        """

    @abc.abstractmethod
    async def delete(self, key: str, *, expected_version: int | None = None) -> None:
        """Remove ``key`` (absent keys are fine unless a version is expected).

        :raises StateConflict: the current version is not ``expected_version``.
        """

    @abc.abstractmethod
    async def keys(self, prefix: str = "") -> list[str]:
        """All keys that start with ``prefix``, sorted."""

    @abc.abstractmethod
    async def append(self, stream: str, data: bytes) -> int:
        """Append ``data`` to the log ``stream``; return its sequence number once durable."""

    @abc.abstractmethod
    async def read_log(
        self, stream: str, *, after: int = 0, limit: int | None = None
    ) -> list[LogEntry]:
        """Records of ``stream`` with ``seq > after``, oldest first, at most ``limit``."""

    @abc.abstractmethod
    async def trim_log(self, stream: str, *, upto: int) -> None:
        """Drop the records of ``stream`` with ``seq <= upto`` (sequence numbers stay)."""


# ---------------------------------------------------------------- Coordination


@attrs.frozen(kw_only=True)
class Lease:
    """A held lock or leadership.

    :param name: the lock or election group.
    :param holder: who holds it.
    :param token: fencing token; strictly greater for every new holder, so a
        resource can refuse writes from a holder whose lease has expired.
    :param expires_at: ``trio.current_time()`` at which the lease lapses.
    """

    name: str
    holder: str
    token: int
    expires_at: float


class Coordination(abc.ABC):
    """Locks, leader election and barriers."""

    @abc.abstractmethod
    def lock(
        self, name: str, *, ttl: float, holder: str | None = None
    ) -> AbstractAsyncContextManager[Lease]:
        """Hold the lock ``name`` for the body of an ``async with``.

        Waits until the lock is free (use ``trio.fail_after`` to bound the
        wait). A holder that does not leave within ``ttl`` seconds loses the
        lease, and the next holder gets a larger fencing token.
        """

    @abc.abstractmethod
    def elect(
        self, group: str, *, candidate: str, ttl: float = 10.0
    ) -> AbstractAsyncContextManager[Lease]:
        """Wait to become leader of ``group``; leadership lasts for the body.

        The lease is renewed while the body runs; leaving it resigns.
        """

    @abc.abstractmethod
    async def barrier(self, name: str, parties: int) -> None:
        """Wait until ``parties`` callers have reached the barrier ``name``."""
