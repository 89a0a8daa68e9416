"""The Registry protocol: where agent ids are mapped to their owning node."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from types import MappingProxyType
from typing import TYPE_CHECKING
from typing import Any
from typing import Literal

import attrs

from .._ref import AgentRef

if TYPE_CHECKING:
    from ._synchronous import SynchronousRegistry

#: Registry metadata: searchable fields of an entry.
Metadata = Mapping[str, Any]

__all__ = ["Metadata", "Registry", "RegistryEntry", "RegistryEvent"]


def _frozen_map(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if isinstance(value, MappingProxyType):
        return value  # read-only already (shared by many entries, e.g. the restart type)
    return MappingProxyType({} if value is None else dict(value))


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

    def synchronous_access(self) -> SynchronousRegistry | None:
        """Registration without waiting, if this registry offers it (see
        :class:`~jido_trio.abc.SynchronousRegistry`); ``None`` (the default)
        otherwise. Asked once per node."""
        return None

    @abc.abstractmethod
    async def register(
        self, ref: AgentRef, metadata: Mapping[str, Any] | None = None
    ) -> RegistryEntry:
        """Register ``ref`` (whose ``node`` must be set) as owner of ``ref.id``.

        Registering again from the same node (an agent restart) bumps the epoch.
        The entry's metadata is set anew (``ref.metadata`` merged with
        ``metadata``): nothing of an earlier registration of the id remains.
        Metadata values come back as they were given, types included (an
        ``int`` beyond 2**53 stays an ``int``, a ``float`` keeps every digit).

        :raises AgentAlreadyExists: another node owns this id.
        :raises RegistryConflict: the entry kept changing under concurrent
            writers, though no other node owns it (nothing was changed).
        :raises ValueError: ``ref.node`` is ``None``.
        :raises Unreachable: the registry cannot be reached right now.
        :raises EngineError: the registry failed the operation.
        :raises CallTimeout: the registry gave no answer in time.
        """

    async def take_over(self, ref: AgentRef, *, epoch: int) -> RegistryEntry:
        """Move the entry of ``ref.id`` to ``ref.node`` if it is still at ``epoch``.

        Failover calls this for agents of a node that left the cluster. It is
        a compare-and-set on the stored entry: of several nodes trying at
        once, exactly one wins, and an owner that registered again meanwhile
        (a new epoch) keeps its agent. The entry keeps its metadata, values
        unchanged; the new epoch is larger. Watchers see an ``"updated"``
        event for the moved entry.

        :raises AgentAlreadyExists: the entry is no longer at ``epoch``.
        :raises AgentNotFound: no such entry.
        :raises RegistryConflict: the entry kept changing under concurrent
            writers while staying at ``epoch`` (nothing was changed).
        :raises ValueError: ``ref.node`` is ``None``.
        :raises NotImplementedError: this registry cannot fail agents over
            (the default).
        :raises Unreachable: the registry cannot be reached right now.
        :raises EngineError: the registry failed the operation.
        :raises CallTimeout: the registry gave no answer in time.
        """
        raise NotImplementedError(f"{type(self).__name__} does not support take_over")

    @abc.abstractmethod
    async def unregister(self, agent_id: str, *, node: str | None = None) -> None:
        """Remove the entry; with ``node``, only if that node still owns it.

        Unregistering an unknown id is not an error.

        :raises Unreachable: the registry cannot be reached right now.
        :raises EngineError: the registry failed the operation.
        :raises CallTimeout: the registry gave no answer in time.
        """

    @abc.abstractmethod
    async def lookup(self, agent_id: str) -> RegistryEntry:
        """Return the entry for ``agent_id``.

        :raises AgentNotFound: no such entry.
        :raises Unreachable: the registry cannot be reached right now.
        :raises EngineError: the registry failed the operation.
        :raises CallTimeout: the registry gave no answer in time.
        """

    @abc.abstractmethod
    async def select(
        self, *, type: str | None = None, node: str | None = None, metadata: Metadata | None = None
    ) -> list[RegistryEntry]:
        """Return the entries matching every given criterion.

        ``metadata`` matches entries whose metadata has each key with an equal
        value; :func:`~jido_trio.abc.registry_matcher` is that test.

        :raises Unreachable: the registry cannot be reached right now.
        :raises EngineError: the registry failed the operation.
        :raises CallTimeout: the registry gave no answer in time.
        """

    @abc.abstractmethod
    async def update_metadata(self, agent_id: str, metadata: Mapping[str, Any]) -> RegistryEntry:
        """Merge ``metadata`` into the entry's metadata.

        :raises AgentNotFound: no such entry.
        :raises RegistryConflict: the entry kept changing under concurrent
            writers (nothing was changed).
        :raises Unreachable: the registry cannot be reached right now.
        :raises EngineError: the registry failed the operation.
        :raises CallTimeout: the registry gave no answer in time.
        """

    @abc.abstractmethod
    async def count(self) -> int:
        """Number of registered agents.

        :raises Unreachable: the registry cannot be reached right now.
        :raises EngineError: the registry failed the operation.
        :raises CallTimeout: the registry gave no answer in time.
        """

    @abc.abstractmethod
    def watch(self) -> AbstractAsyncContextManager[AsyncIterator[RegistryEvent]]:
        """Open a stream of changes from now on: ``async with reg.watch() as changes``.

        A watcher that falls far behind may miss events; it is never allowed to
        grow memory without bound.

        :raises Unreachable: the registry cannot be reached right now (on entry).
        :raises EngineError: the registry failed to start the watch.
        :raises CallTimeout: the registry gave no answer in time.
        """
