"""In-memory state backend: versions, compare-and-set, append-only logs."""

from __future__ import annotations

import bisect

import attrs
import trio

from .._exceptions import StateConflict
from .._message import slot_setter
from ..abc import Consistency
from ..abc import LogEntry
from ..abc import StateBackend
from ..abc import SynchronousState
from ..abc import Versioned
from ..abc import check_consistency
from ..abc import check_expected_version
from ..abc import check_log_limit
from ..abc import check_log_seq
from ..abc import check_state_key
from ..abc import check_state_value

__all__ = ["MemoryStateBackend"]

_new_object = object.__new__
_set_value = slot_setter(Versioned, "value")
_set_version = slot_setter(Versioned, "version")


def _versioned(value: bytes, version: int) -> Versioned:
    """A :class:`Versioned` of a copy of ``value``, built without attrs'
    keyword handling: an agent's commit writes one per batch."""
    versioned: Versioned = _new_object(Versioned)
    _set_value(versioned, bytes(value))
    _set_version(versioned, version)
    return versioned


def _seq(entry: LogEntry) -> int:
    return entry.seq


@attrs.define(eq=False)
class _Log:
    entries: list[LogEntry] = attrs.field(factory=list)
    last_seq: int = 0


@attrs.define(eq=False)
class MemoryStateBackend(StateBackend, SynchronousState):
    """State kept in this process only; lost when it exits.

    All three consistency levels read the single copy, so every read is strong.

    The async methods check their arguments (see :mod:`jido_trio.abc`) like
    every other engine. It offers :class:`~jido_trio.abc.SynchronousState`
    (the runtime then loads and commits agents' state without a scheduler
    round): those methods take keys and values the runtime made itself,
    unchecked, and are offered only while the class's async methods are not
    overridden, so a subclass that customises them sees every operation.
    """

    _data: dict[str, Versioned] = attrs.field(factory=dict, init=False)
    _logs: dict[str, _Log] = attrs.field(factory=dict, init=False)

    async def read(self, key: str, *, consistency: Consistency = "strong") -> Versioned | None:
        check_state_key(key)
        check_consistency(consistency)
        await trio.lowlevel.checkpoint()
        return self._data.get(key)

    def _check(self, key: str, expected_version: int | None) -> int:
        current = self._data.get(key)
        actual = 0 if current is None else current.version
        if expected_version is not None and expected_version != actual:
            raise StateConflict(key, expected_version, actual or None)
        return actual

    async def write(self, key: str, value: bytes, *, expected_version: int | None = None) -> int:
        check_state_key(key)
        check_state_value(value)
        check_expected_version(expected_version)
        await trio.lowlevel.checkpoint()
        return self.write_nowait(key, value, expected_version=expected_version)

    async def delete(self, key: str, *, expected_version: int | None = None) -> None:
        check_state_key(key)
        check_expected_version(expected_version)
        await trio.lowlevel.checkpoint()
        self.delete_nowait(key, expected_version=expected_version)

    # ------------------------------------------------------------ SynchronousState

    def synchronous_access(self) -> SynchronousState | None:
        cls = type(self)
        customised = (
            cls.read is not MemoryStateBackend.read
            or cls.write is not MemoryStateBackend.write
            or cls.delete is not MemoryStateBackend.delete
            or cls.read_log is not MemoryStateBackend.read_log
        )
        return None if customised else self

    def read_nowait(self, key: str) -> Versioned | None:
        return self._data.get(key)

    def write_nowait(self, key: str, value: bytes, *, expected_version: int | None = None) -> int:
        version = self._check(key, expected_version) + 1
        self._data[key] = _versioned(value, version)
        return version

    def delete_nowait(self, key: str, *, expected_version: int | None = None) -> None:
        self._check(key, expected_version)
        self._data.pop(key, None)

    def has_log_entries_nowait(self, stream: str) -> bool:
        log = self._logs.get(stream)
        return log is not None and bool(log.entries)

    async def keys(self, prefix: str = "") -> list[str]:
        check_state_key(prefix, "key prefix")
        await trio.lowlevel.checkpoint()
        return sorted(k for k in self._data if k.startswith(prefix))

    async def append(self, stream: str, data: bytes) -> int:
        check_state_key(stream, "log stream name")
        record = check_state_value(data, "log records")
        await trio.lowlevel.checkpoint()
        log = self._logs.setdefault(stream, _Log())
        log.last_seq += 1
        log.entries.append(LogEntry(seq=log.last_seq, data=record))
        return log.last_seq

    async def read_log(
        self, stream: str, *, after: int = 0, limit: int | None = None
    ) -> list[LogEntry]:
        check_state_key(stream, "log stream name")
        check_log_seq("after", after)
        check_log_limit(limit)
        await trio.lowlevel.checkpoint()
        log = self._logs.get(stream)
        if log is None:
            return []
        start = bisect.bisect_right(log.entries, after, key=_seq)
        end = len(log.entries) if limit is None else start + limit
        return log.entries[start:end]

    async def trim_log(self, stream: str, *, upto: int) -> None:
        check_state_key(stream, "log stream name")
        check_log_seq("upto", upto)
        await trio.lowlevel.checkpoint()
        log = self._logs.get(stream)
        if log is not None:
            del log.entries[: bisect.bisect_right(log.entries, upto, key=_seq)]
