"""The StateBackend protocol: versioned key-value state plus append-only logs."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Literal

import attrs

if TYPE_CHECKING:
    from ._synchronous import SynchronousState

__all__ = ["Consistency", "LogEntry", "StateBackend", "Versioned"]

Consistency = Literal["strong", "eventual", "weak"]
"""A read's consistency level; see :meth:`StateBackend.read`."""


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

    def synchronous_access(self) -> SynchronousState | None:
        """The same storage, accessed without waiting, if this backend offers
        it (see :class:`~jido_trio.abc.SynchronousState`); ``None`` (the
        default) otherwise. Asked once per node."""
        return None

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
