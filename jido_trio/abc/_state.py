"""The StateBackend protocol: versioned key-value state plus append-only logs."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING
from typing import Literal

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
    """Versioned key-value state plus append-only logs.

    Every method checks its arguments first, with the checks of
    :mod:`jido_trio.abc` (:func:`~jido_trio.abc.check_state_key` and the
    others), so all engines refuse the same bad arguments alike.
    """

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
        may return any value this node has seen, even a stale cache. Both
        relaxed levels see this node's own writes and deletes within a
        bounded time (the conformance suite's ``timeout``).

        :raises TypeError: ``key`` is not a ``str``.
        :raises ValueError: an unknown consistency level, or a key with no UTF-8 form.
        :raises Unreachable: the engine cannot be reached right now.
        :raises EngineError: the engine failed the read.
        :raises CallTimeout: the engine gave no answer in time.
        """

    @abc.abstractmethod
    async def write(self, key: str, value: bytes, *, expected_version: int | None = None) -> int:
        """Store ``value`` and return its new version.

        A ``bytearray`` or ``memoryview`` value is copied
        (:func:`~jido_trio.abc.check_state_value`): the caller may reuse it.

        ``expected_version=None`` writes unconditionally; ``0`` requires the key
        to be absent; ``n`` requires the current version to be ``n``.
        Returns once the write is as durable as the backend promises.

        :raises StateConflict: the current version is not ``expected_version``.
        :raises TypeError: ``key`` is not a ``str`` or ``value`` not bytes.
        :raises ValueError: ``expected_version`` is neither ``None`` nor an
            ``int >= 0``, or the key has no UTF-8 form.
        :raises Unreachable: the engine cannot be reached right now (the
            write may still have happened if it was sent).
        :raises EngineError: the engine failed the write.
        :raises CallTimeout: the engine gave no answer in time.
        """

    @abc.abstractmethod
    async def delete(self, key: str, *, expected_version: int | None = None) -> None:
        """Remove ``key`` (absent keys are fine unless a version is expected).

        :raises StateConflict: the current version is not ``expected_version``.
        :raises TypeError: ``key`` is not a ``str``.
        :raises ValueError: ``expected_version`` is neither ``None`` nor an
            ``int >= 0``, or the key has no UTF-8 form.
        :raises Unreachable: the engine cannot be reached right now.
        :raises EngineError: the engine failed the delete.
        :raises CallTimeout: the engine gave no answer in time.
        """

    @abc.abstractmethod
    async def keys(self, prefix: str = "") -> list[str]:
        """All keys that start with ``prefix``, sorted.

        :raises TypeError: ``prefix`` is not a ``str``.
        :raises ValueError: ``prefix`` has no UTF-8 form.
        :raises Unreachable: the engine cannot be reached right now.
        :raises EngineError: the engine failed the listing.
        :raises CallTimeout: the engine gave no answer in time.
        """

    @abc.abstractmethod
    async def append(self, stream: str, data: bytes) -> int:
        """Append ``data`` to the log ``stream``; return its sequence number once durable.

        :raises TypeError: ``stream`` is not a ``str`` or ``data`` not bytes.
        :raises ValueError: ``stream`` has no UTF-8 form.
        :raises Unreachable: the engine cannot be reached right now.
        :raises EngineError: the engine failed the append.
        :raises CallTimeout: the engine gave no answer in time.
        """

    @abc.abstractmethod
    async def read_log(
        self, stream: str, *, after: int = 0, limit: int | None = None
    ) -> list[LogEntry]:
        """Records of ``stream`` with ``seq > after``, oldest first, at most ``limit``.

        :raises TypeError: ``stream`` is not a ``str``, ``after`` not an
            ``int`` or ``limit`` neither ``None`` nor an ``int``.
        :raises ValueError: ``limit`` is negative, or ``stream`` has no UTF-8 form.
        :raises Unreachable: the engine cannot be reached right now.
        :raises EngineError: the engine failed the read.
        :raises CallTimeout: the engine gave no answer in time.
        """

    @abc.abstractmethod
    async def trim_log(self, stream: str, *, upto: int) -> None:
        """Drop the records of ``stream`` with ``seq <= upto`` (sequence numbers stay).

        :raises TypeError: ``stream`` is not a ``str`` or ``upto`` not an ``int``.
        :raises ValueError: ``stream`` has no UTF-8 form.
        :raises Unreachable: the engine cannot be reached right now.
        :raises EngineError: the engine failed the trim.
        :raises CallTimeout: the engine gave no answer in time.
        """
