"""Durable agent state: the state value and processed instruction ids, together.

Layout in the StateBackend, per agent:

- ``agent/<id>``: one record ``[1, state_bytes, recent_ids, first_chunk, next_chunk]``
  written with compare-and-set after every batch of applied instructions, so
  state and the ids that produced it change atomically;
- ``agent/<id>/ids/<n>``: sealed chunks of older processed ids. A chunk is
  written before the record that stops listing its ids, and deleted only after
  a record no longer refers to it, so a crash between writes loses nothing.

At least ``window`` most recent ids are remembered (chunks are dropped whole).

Loading and committing are storage plans (:mod:`._plan`): written once, run
synchronously when the node's backend offers
:class:`~jido_trio.abc.SynchronousState`, awaited otherwise. A store changes
its own fields only once the record write has succeeded, so a failed commit
leaves it as it was before.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from types import MappingProxyType
from typing import Any, cast

import attrs
import msgspec

from .._exceptions import InvalidMessage
from ..abc import Consistency, StateBackend, Versioned
from ._plan import Plan

__all__ = ["CHUNK_SIZE", "AgentStore", "encode_state", "state_key"]

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
    """The StateBackend key of an agent's state record."""
    return f"agent/{agent_id}"


def encode_state(state: Any) -> bytes:
    """Encode an agent state value (attrs, dataclass, msgspec Struct or plain data)."""
    try:
        return _encode(state)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidMessage(
            f"agent state of type {type(state).__name__} cannot be encoded: {exc}"
        ) from exc


@attrs.define(eq=False)
class AgentStore:
    """One agent's committed state record and its dedupe window."""

    agent_id: str
    window: int
    version: int = 0
    seen: dict[str, None] = attrs.field(default=_NO_SEEN)
    recent: list[str] = attrs.field(default=_NO_RECENT)
    first_chunk: int = 0
    next_chunk: int = 0

    @property
    def key(self) -> str:
        return state_key(self.agent_id)

    def _chunk_key(self, n: int) -> str:
        return f"{self.key}/ids/{n}"

    @property
    def _max_chunks(self) -> int:
        return max(1, math.ceil(self.window / CHUNK_SIZE))

    def load(self, decode_state: Callable[[bytes], Any]) -> Plan[tuple[bool, Any]]:
        """Plan: read the record and the id chunks it names; return
        ``(found, state)`` and fill the dedupe window."""
        found = yield ("read", self.key)
        if found is None:
            return self._adopt(0, None, [], decode_state)
        record = self._decode_record(found.value)
        chunks: list[Versioned | None] = []
        for n in range(record[3], record[4]):
            chunks.append((yield ("read", self._chunk_key(n))))
        return self._adopt(found.version, record, chunks, decode_state)

    def _adopt(
        self,
        version: int,
        record: list[Any] | None,
        chunks: list[Versioned | None],
        decode_state: Callable[[bytes], Any],
    ) -> tuple[bool, Any]:
        """Take over a decoded record (``None``: no record) and the id chunks
        it names; return ``(found, state)``."""
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

    def commit(self, state: Any) -> Plan[None]:
        """Plan: persist ``state`` with the ids marked so far (compare-and-set
        on the record); the store takes the new version once it is written.

        :raises StateConflict: another writer changed the record.
        :raises InvalidMessage: ``state`` cannot be encoded.
        """
        state_bytes = encode_state(state)
        recent, first, nxt = self.recent, self.first_chunk, self.next_chunk
        expired: list[int] = []
        if len(recent) >= CHUNK_SIZE:
            yield ("write", self._chunk_key(nxt), _encode(recent), None)
            nxt += 1
            recent = []
            while nxt - first > self._max_chunks:
                expired.append(first)
                first += 1
        record = _encode([_RECORD_FORMAT, state_bytes, recent, first, nxt])
        self.version = yield ("write", self.key, record, self.version)
        self.recent, self.first_chunk, self.next_chunk = recent, first, nxt
        if expired:
            self._trim_seen()
            for n in expired:
                yield ("delete", self._chunk_key(n))

    def _trim_seen(self) -> None:
        keep = (self.next_chunk - self.first_chunk) * CHUNK_SIZE + len(self.recent)
        seen = self.seen
        excess = len(seen) - keep
        if excess > 0:
            # Oldest first (dicts keep insertion order), collected in one pass:
            # a fresh iter() per key would rescan the deleted slots each time.
            for key in list(itertools.islice(seen, excess)):
                del seen[key]

    async def read_state(
        self, backend: StateBackend, decode_state: Callable[[bytes], Any], consistency: Consistency
    ) -> Any:
        """Read the last committed state without touching this store's fields
        (``None``: no record yet)."""
        found = await backend.read(self.key, consistency=consistency)
        if found is None:
            return None
        state_bytes = self._decode_record(found.value)[1]
        return decode_state(state_bytes)
