"""Optional capabilities: synchronous access to state and registry.

An engine whose operations complete without waiting (the built-in in-memory
state backend and local registry) may offer them synchronously as well. The
runtime then starts an agent without a scheduler round and leaves it dormant
(no task) until it first has work, and commits a batch of applied messages
without awaiting or a shielded cancel scope around the commit. Engines that do
I/O do not offer these; nothing else changes for them.

A backend offers a capability through :meth:`StateBackend.synchronous_access` and
:meth:`Registry.synchronous_access`, which return ``None`` by default. An engine
must return ``None`` whenever the synchronous methods would not do exactly
what its async methods do, for example in a subclass that overrides them (a
test's fault injection must see every operation).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any

from .._ref import AgentRef
from ._state import Versioned

__all__ = ["SynchronousRegistry", "SynchronousState"]


class SynchronousState(abc.ABC):
    """The operations of a :class:`~jido_trio.abc.StateBackend` that the
    runtime needs to load and commit an agent's state, done without waiting.

    Each has the semantics of the async method of the same name (without
    ``_nowait``). Arguments come from the runtime itself, already valid.
    """

    @abc.abstractmethod
    def read_nowait(self, key: str) -> Versioned | None:
        """:meth:`StateBackend.read` with strong consistency."""

    @abc.abstractmethod
    def write_nowait(self, key: str, value: bytes, *, expected_version: int | None = None) -> int:
        """:meth:`StateBackend.write`.

        :raises StateConflict: the current version is not ``expected_version``.
        """

    @abc.abstractmethod
    def delete_nowait(self, key: str, *, expected_version: int | None = None) -> None:
        """:meth:`StateBackend.delete`.

        :raises StateConflict: the current version is not ``expected_version``.
        """

    @abc.abstractmethod
    def has_log_entries_nowait(self, stream: str) -> bool:
        """Whether the log ``stream`` holds records (an agent with a durable
        mailbox to replay is started the awaited way)."""


class SynchronousRegistry(abc.ABC):
    """Registration of an agent by a :class:`~jido_trio.abc.Registry`, done
    without waiting."""

    @abc.abstractmethod
    def can_register_nowait(self, ref: AgentRef) -> bool:
        """Whether :meth:`register_nowait` would register ``ref`` now. ``False``
        when the registry must be awaited instead, e.g. because another node
        still holds the id (its removal may be on its way)."""

    @abc.abstractmethod
    def register_nowait(self, ref: AgentRef, metadata: Mapping[str, Any] | None = None) -> int:
        """:meth:`Registry.register` (only after :meth:`can_register_nowait`);
        returns the new entry's epoch.

        :raises AgentAlreadyExists: another node owns this id.
        """

    @abc.abstractmethod
    def unregister_nowait(self, agent_id: str, *, node: str | None = None) -> None:
        """:meth:`Registry.unregister`."""
