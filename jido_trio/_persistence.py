"""Durable agent state: the state value and processed instruction ids, together.

Layout in the StateBackend, per agent:

- ``agent/<id>``: one record ``[1, state_bytes, recent_ids, first_chunk, next_chunk]``
  written with compare-and-set after every batch of applied instructions, so
  state and the ids that produced it change atomically;
- ``agent/<id>/ids/<n>``: sealed chunks of older processed ids. A chunk is
  written before the record that stops listing its ids, and deleted only after
  a record no longer refers to it, so a crash between writes loses nothing.

At least ``window`` most recent ids are remembered (chunks are dropped whole).

With the built-in in-memory backend (not subclassed), :meth:`AgentStore.load_nowait`
and :meth:`AgentStore.commit_nowait` do the same work synchronously: a commit
then costs no scheduler round and needs no shielded cancel scope around it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from types import MappingProxyType
from typing import Any, cast

import attrs
import msgspec

from ._exceptions import InvalidMessage
from .abc import StateBackend, Versioned
from .local._state import MemoryStateBackend

__all__ = ["CHUNK_SIZE", "AgentStore"]

#: Ids per sealed chunk: small enough that the per-batch record stays cheap to
#: encode; one extra write per chunk is the price.
CHUNK_SIZE = 32
_RECORD_FORMAT = 1

_encode = msgspec.msgpack.Encoder().encode
_decode_any = msgspec.msgpack.Decoder().decode
_decode_ids = msgspec.msgpack.Decoder(list[str]).decode


#: What a store holds before it has applied an instruction: shared by every
#: such store, and immutable (a missed copy-on-write fails loudly rather than
#: leaking ids between agents). An idle agent then holds no dict or list here.
_NO_SEEN: dict[str, None] = cast("dict[str, None]", MappingProxyType({}))
_NO_RECENT: list[str] = cast("list[str]", ())


def state_key(agent_id: str) -> str:
    return f"agent/{agent_id}"


def encode_state(state: Any) -> bytes:
    """Encode an agent state value (attrs, dataclass, msgspec Struct or plain data)."""
    try:
        return _encode(state)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidMessage(
            f"agent state of type {type(state).__name__} cannot be encoded: {exc}"
        ) from exc


def synchronous_backend(backend: StateBackend) -> MemoryStateBackend | None:
    """``backend`` if the ``_*_nowait`` methods may stand in for its async
    ones (the built-in in-memory backend, not customised), else ``None``."""
    if isinstance(backend, MemoryStateBackend) and backend._nowait_ok():
        return backend
    return None


@attrs.define(eq=False)
class AgentStore:
    """Loads and commits one agent's state and its dedupe window."""

    backend: StateBackend = attrs.field(repr=False)  # shared by every agent
    agent_id: str
    window: int
    version: int = 0
    seen: dict[str, None] = attrs.field(default=_NO_SEEN)
    recent: list[str] = attrs.field(default=_NO_RECENT)
    first_chunk: int = 0
    next_chunk: int = 0
    #: The backend when it can be used synchronously (see the module docstring).
    _sync: MemoryStateBackend | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        self._sync = synchronous_backend(self.backend)

    @property
    def synchronous(self) -> bool:
        """Whether :meth:`load_nowait` and :meth:`commit_nowait` work."""
        return self._sync is not None

    @property
    def key(self) -> str:
        return state_key(self.agent_id)

    def _chunk_key(self, n: int) -> str:
        return f"{self.key}/ids/{n}"

    @property
    def _max_chunks(self) -> int:
        return max(1, math.ceil(self.window / CHUNK_SIZE))

    async def load(self, decode_state: Callable[[bytes], Any]) -> tuple[bool, Any]:
        """Read the record; return ``(found, state)``. Fills the dedupe window."""
        found = await self.backend.read(self.key, consistency="strong")
        if found is None:
            return self._adopt(0, None, [], decode_state)
        record = self._decode_record(found.value)
        chunks = [await self.backend.read(self._chunk_key(n)) for n in range(record[3], record[4])]
        return self._adopt(found.version, record, chunks, decode_state)

    def has_log(self, stream: str) -> bool:
        """Whether the durable log ``stream`` holds entries; only when :attr:`synchronous`."""
        sync = self._sync
        assert sync is not None
        return sync._has_log(stream)

    def load_nowait(self, decode_state: Callable[[bytes], Any]) -> tuple[bool, Any]:
        """:meth:`load` without awaiting; only when :attr:`synchronous`."""
        sync = self._sync
        assert sync is not None
        found = sync._read_nowait(self.key)
        if found is None:
            return self._adopt(0, None, [], decode_state)
        record = self._decode_record(found.value)
        chunks = [sync._read_nowait(self._chunk_key(n)) for n in range(record[3], record[4])]
        return self._adopt(found.version, record, chunks, decode_state)

    def _adopt(
        self,
        version: int,
        record: list[Any] | None,
        chunks: list[Versioned | None],
        decode_state: Callable[[bytes], Any],
    ) -> tuple[bool, Any]:
        """Take over a decoded record read by :meth:`load` or :meth:`load_nowait`
        (``None``: no record) and the id chunks it names; return ``(found, state)``."""
        if record is None:
            self.version = 0
            self.first_chunk = self.next_chunk = 0
            self.seen, self.recent = _NO_SEEN, _NO_RECENT
            return False, None
        _, state_bytes, recent, first, nxt = record
        # Built aside and swapped in at once: senders consult `seen` while we await.
        seen: dict[str, None] = {}
        for chunk in chunks:
            if chunk is not None:
                seen.update(dict.fromkeys(_decode_ids(chunk.value)))
        seen.update(dict.fromkeys(recent))
        self.version = version
        self.first_chunk, self.next_chunk = first, nxt
        self.seen, self.recent = seen, list(recent)
        return True, decode_state(state_bytes)

    def _decode_record(self, value: bytes) -> list[Any]:
        try:
            fmt, state_bytes, recent, first, nxt = _decode_any(value)
        except (msgspec.DecodeError, ValueError, TypeError) as exc:
            raise InvalidMessage(f"stored record {self.key!r} is malformed: {exc}") from exc
        if fmt != _RECORD_FORMAT:
            raise InvalidMessage(f"stored record {self.key!r} has unknown format {fmt}")
        return [fmt, state_bytes, recent, first, nxt]

    def mark(self, instruction_id: str) -> None:
        """Record an applied instruction id (persisted by the next :meth:`commit`)."""
        if self.seen is _NO_SEEN:
            self.seen = {}
        if self.recent is _NO_RECENT:
            self.recent = []
        self.seen[instruction_id] = None
        self.recent.append(instruction_id)

    async def commit(self, state: Any) -> None:
        """Persist ``state`` with the ids marked so far (compare-and-set).

        :raises StateConflict: another writer changed the record.
        """
        state_bytes = encode_state(state)
        expired: list[int] = []
        if len(self.recent) >= CHUNK_SIZE:
            sealed = self.next_chunk
            await self.backend.write(self._chunk_key(sealed), _encode(self.recent))
            self.next_chunk += 1
            self.recent = []
            while self.next_chunk - self.first_chunk > self._max_chunks:
                expired.append(self.first_chunk)
                self.first_chunk += 1
        record = _encode(
            [_RECORD_FORMAT, state_bytes, self.recent, self.first_chunk, self.next_chunk]
        )
        self.version = await self.backend.write(self.key, record, expected_version=self.version)
        for n in expired:
            await self.backend.delete(self._chunk_key(n))
        if expired:
            self._trim_seen()

    def commit_nowait(self, state: Any) -> None:
        """:meth:`commit` without awaiting; only when :attr:`synchronous`.

        :raises StateConflict: another writer changed the record.
        """
        sync = self._sync
        assert sync is not None
        state_bytes = encode_state(state)
        expired: list[int] = []
        if len(self.recent) >= CHUNK_SIZE:
            sync._write_nowait(self._chunk_key(self.next_chunk), _encode(self.recent))
            self.next_chunk += 1
            self.recent = []
            while self.next_chunk - self.first_chunk > self._max_chunks:
                expired.append(self.first_chunk)
                self.first_chunk += 1
        record = _encode(
            [_RECORD_FORMAT, state_bytes, self.recent, self.first_chunk, self.next_chunk]
        )
        self.version = sync._write_nowait(self.key, record, expected_version=self.version)
        for n in expired:
            sync._delete_nowait(self._chunk_key(n))
        if expired:
            self._trim_seen()

    def _trim_seen(self) -> None:
        keep = (self.next_chunk - self.first_chunk) * CHUNK_SIZE + len(self.recent)
        seen = self.seen
        excess = len(seen) - keep
        if excess > 0:
            # Oldest first (dicts keep insertion order), collected in one pass:
            # a fresh iter() per key would rescan the deleted slots each time.
            for key in list(itertools.islice(seen, excess)):
                del seen[key]

    async def read_state(self, decode_state: Callable[[bytes], Any], consistency: Any) -> Any:
        """Read the last committed state without touching this store's fields."""
        found = await self.backend.read(self.key, consistency=consistency)
        if found is None:
            return None
        state_bytes = _decode_any(found.value)[1]
        return decode_state(state_bytes)

    async def purge(self) -> None:
        """Delete the record and every chunk."""
        for key in await self.backend.keys(self.key + "/ids/"):
            await self.backend.delete(key)
        await self.backend.delete(self.key)
        self.version = 0
        self.seen = _NO_SEEN
        self.recent = _NO_RECENT
        self.first_chunk = self.next_chunk = 0
