"""Durable agent state: the state value and processed instruction ids, together.

Layout in the StateBackend, per agent:

- ``agent/<id>``: one record ``[2, state_bytes, recent_ids, chunks, next_chunk,
  owner_epoch, outbox]`` written with compare-and-set after every batch of
  applied instructions, so state, the ids that produced it and the
  at-least-once messages it sends (``outbox``, envelopes not yet acknowledged
  by their recipients; see :mod:`._effects`) change atomically;
- ``agent/<id>/ids/<epoch>.<n>``: sealed chunks of older processed ids, named by
  the record's ``chunks`` in order. A chunk is written before the record that
  stops listing its ids, and deleted only after a record no longer refers to
  it, so a crash between writes loses nothing.

At least ``window`` most recent ids are remembered (chunks are dropped whole).

Ownership. The first commit of an incarnation, right after it claimed the agent
in the registry (its ownership epoch), writes the record with that epoch: a
compare-and-set on the version it loaded, which *seals* the record against
every earlier owner. From then on an older incarnation (a loser, a paused
zombie) fails every compare-and-set of the record, so it can change nothing
the owner sees; the chunks it may still write carry its own epoch in their
key, and no record of the owner names them. (Records of format 1, without an
owner epoch and with chunks ``ids/<n>``, are read as they are.)

A commit is decided once, as a :class:`CommitPlan` (what to write, encoded),
and then run synchronously when the node's backend offers
:class:`~jido_trio.abc.SynchronousState` or awaited otherwise. A store
changes its own fields only once the record write has succeeded, so a failed
commit leaves it as it was before. Loading reads the record, then the id
chunks it names, either way.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from types import MappingProxyType
from typing import Any
from typing import cast

import attrs
import msgspec

from .._exceptions import InvalidMessage
from ..abc import Consistency
from ..abc import StateBackend
from ..abc import SynchronousState
from ..abc import Versioned

__all__ = ["CHUNK_SIZE", "AgentStore", "CommitPlan", "encode_state", "state_key"]

#: Ids per sealed chunk: small enough that the per-batch record stays cheap to
#: encode; one extra write per chunk is the price.
CHUNK_SIZE = 32
_RECORD_FORMAT = 2

_encode = msgspec.msgpack.Encoder().encode
_decode_any = msgspec.msgpack.Decoder().decode
_decode_ids = msgspec.msgpack.Decoder(list[str]).decode


#: What a store holds before it has applied an instruction: shared by every
#: such store, and immutable (a missed copy-on-write fails loudly rather than
#: leaking ids between agents). An idle agent then holds no dict or list here.
_NO_SEEN: dict[str, None] = cast("dict[str, None]", MappingProxyType({}))
_NO_RECENT: list[str] = cast("list[str]", ())
_NO_SENDS: list[bytes] = cast("list[bytes]", ())


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
    #: Names of the sealed id chunks the record refers to, oldest first.
    chunks: list[str] = attrs.field(default=_NO_RECENT)
    next_chunk: int = 0
    #: The ownership epoch this store writes with (set once the incarnation
    #: claimed the agent); the epoch the last written record carries.
    epoch: int = 0
    #: At-least-once messages committed with the state and not yet
    #: acknowledged by their recipients (encoded envelopes, oldest first).
    outbox: list[bytes] = attrs.field(default=_NO_SENDS)
    #: The record's key (see :func:`state_key`), made once: every commit writes it.
    key: str = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.key = state_key(self.agent_id)

    def _chunk_key(self, name: str) -> str:
        return f"{self.key}/ids/{name}"

    @property
    def _max_chunks(self) -> int:
        return max(1, math.ceil(self.window / CHUNK_SIZE))

    # ------------------------------------------------------------ loading

    def load_nowait(
        self, access: SynchronousState, decode_state: Callable[[bytes], Any]
    ) -> tuple[bool, Any]:
        """Read the record and the id chunks it names without waiting; return
        ``(found, state)`` and fill the dedupe window."""
        found = access.read_nowait(self.key)
        record = self._record(found)
        chunks = [access.read_nowait(key) for key in self._chunk_keys(record)]
        return self._adopt(found, record, chunks, decode_state)

    async def load(
        self, backend: StateBackend, decode_state: Callable[[bytes], Any]
    ) -> tuple[bool, Any]:
        """:meth:`load_nowait`, awaiting each read."""
        found = await backend.read(self.key, consistency="strong")
        record = self._record(found)
        chunks = [await backend.read(key) for key in self._chunk_keys(record)]
        return self._adopt(found, record, chunks, decode_state)

    def _record(self, found: Versioned | None) -> list[Any] | None:
        return None if found is None else self._decode_record(found.value)

    def _chunk_keys(self, record: list[Any] | None) -> list[str]:
        return [] if record is None else [self._chunk_key(name) for name in record[3]]

    def _adopt(
        self,
        found: Versioned | None,
        record: list[Any] | None,
        chunks: list[Versioned | None],
        decode_state: Callable[[bytes], Any],
    ) -> tuple[bool, Any]:
        """Take over a decoded record (``None``: no record) and the id chunks
        it names; return ``(found, state)``."""
        if found is None or record is None:
            self.version = 0
            self.chunks, self.next_chunk = _NO_RECENT, 0
            self.seen, self.recent = _NO_SEEN, _NO_RECENT
            self.outbox = _NO_SENDS
            return False, None
        _, state_bytes, recent, chunk_names, nxt, _owner, outbox = record
        self.outbox = list(outbox) if outbox else _NO_SENDS
        # Built aside and swapped in at once: senders consult `seen` while we await.
        seen: dict[str, None] = {}
        for chunk in chunks:
            if chunk is not None:
                seen.update(dict.fromkeys(_decode_ids(chunk.value)))
        seen.update(dict.fromkeys(recent))
        self.version = found.version
        self.chunks, self.next_chunk = list(chunk_names), nxt
        self.seen, self.recent = seen, list(recent)
        return True, decode_state(state_bytes)

    def _decode_record(self, value: bytes) -> list[Any]:
        """``[format, state_bytes, recent, chunk_names, next_chunk, owner_epoch]``
        (a record of format 1 converted)."""
        try:
            fields = _decode_any(value)
            fmt = fields[0]
            if fmt == 1:  # [1, state_bytes, recent, first_chunk, next_chunk]
                _, state_bytes, recent, first, nxt = fields
                chunks = [str(n) for n in range(first, nxt)]
                return [fmt, state_bytes, recent, chunks, nxt, 0, []]
            if fmt == _RECORD_FORMAT:
                _, state_bytes, recent, chunk_names, nxt, owner, outbox = fields
                if not all(isinstance(name, str) for name in chunk_names):
                    raise TypeError("chunk names must be strings")
                if not all(isinstance(held, bytes) for held in outbox):
                    raise TypeError("held messages must be bytes")
                return [fmt, state_bytes, recent, chunk_names, nxt, owner, outbox]
        except (msgspec.DecodeError, ValueError, TypeError, IndexError, KeyError) as exc:
            raise InvalidMessage(f"stored record {self.key!r} is malformed: {exc}") from exc
        raise InvalidMessage(f"stored record {self.key!r} has unknown format {fmt}")

    # ------------------------------------------------------------ committing

    def mark(self, instruction_id: str) -> None:
        """Record an applied instruction id (persisted by the next commit)."""
        if self.seen is _NO_SEEN:
            self.seen = {}
        if self.recent is _NO_RECENT:
            self.recent = []
        self.seen[instruction_id] = None
        self.recent.append(instruction_id)

    def unmark_since(self, marked_before: int) -> None:
        """Forget the ids marked since :attr:`recent` held ``marked_before``
        ids: a batch whose commit failed applied nothing, so its ids are not
        seen (a retry with the same id is applied)."""
        recent = self.recent
        for instruction_id in recent[marked_before:]:
            self.seen.pop(instruction_id, None)
        del recent[marked_before:]

    def plan_commit(self, state: Any, sends: list[bytes] | None = None) -> CommitPlan:
        """What persisting ``state`` with the ids marked so far writes: a
        sealed chunk of ids when there are enough, then the record with this
        store's :attr:`epoch` (compare-and-set on this store's version), and
        with ``sends`` (encoded at-least-once messages) added to its outbox.

        :raises InvalidMessage: ``state`` cannot be encoded.
        """
        state_bytes = encode_state(state)
        outbox = self.outbox
        if sends:
            outbox = [*outbox, *sends]
        recent, chunks, nxt = self.recent, self.chunks, self.next_chunk
        chunk: tuple[str, bytes] | None = None
        expired: list[str] = []
        if len(recent) >= CHUNK_SIZE:
            # Named by the writer's epoch: an older owner still writing can
            # never overwrite a chunk the owner's record refers to.
            name = f"{self.epoch}.{nxt}"
            chunk = (self._chunk_key(name), _encode(recent))
            chunks = [*chunks, name]
            nxt += 1
            recent = []
            if len(chunks) > self._max_chunks:
                cut = len(chunks) - self._max_chunks
                expired = [self._chunk_key(old) for old in chunks[:cut]]
                chunks = chunks[cut:]
        record = _encode([_RECORD_FORMAT, state_bytes, recent, chunks, nxt, self.epoch, outbox])
        return CommitPlan(self, chunk, record, recent, chunks, nxt, expired, outbox)

    def committed(self, plan: CommitPlan, version: int) -> None:
        """The record of ``plan`` was written as ``version``: take it over."""
        self.version = version
        self.recent, self.chunks, self.next_chunk = plan.recent, plan.chunks, plan.next
        self.outbox = plan.outbox
        if plan.expired:
            self._trim_seen()

    def released(self, data: bytes) -> None:
        """An at-least-once message of the outbox was acknowledged by its
        recipient: it leaves the record with the next commit."""
        outbox = self.outbox
        if data in outbox:
            kept = list(outbox)
            kept.remove(data)
            self.outbox = kept

    def _trim_seen(self) -> None:
        keep = len(self.chunks) * CHUNK_SIZE + len(self.recent)
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


class CommitPlan:
    """The writes of one commit, decided and encoded by
    :meth:`AgentStore.plan_commit`; run once, without waiting or awaited.

    :raises StateConflict: (from either run) another writer changed the record.
    """

    __slots__ = ("chunk", "chunks", "expired", "next", "outbox", "recent", "record", "store")

    def __init__(
        self,
        store: AgentStore,
        chunk: tuple[str, bytes] | None,
        record: bytes,
        recent: list[str],
        chunks: list[str],
        next: int,
        expired: list[str],
        outbox: list[bytes],
    ) -> None:
        self.store = store
        #: A sealed chunk of ids to write before the record: (key, ids).
        self.chunk = chunk
        self.record = record
        #: The store's fields once the record is written.
        self.recent = recent
        self.chunks = chunks
        self.next = next
        #: Keys of chunks no record refers to any more, deleted after.
        self.expired = expired
        self.outbox = outbox

    def run_nowait(self, access: SynchronousState) -> None:
        store = self.store
        if self.chunk is not None:
            access.write_nowait(*self.chunk)
        store.committed(
            self, access.write_nowait(store.key, self.record, expected_version=store.version)
        )
        for key in self.expired:
            access.delete_nowait(key)

    async def run(self, backend: StateBackend) -> None:
        store = self.store
        if self.chunk is not None:
            await backend.write(*self.chunk)
        store.committed(
            self, await backend.write(store.key, self.record, expected_version=store.version)
        )
        for key in self.expired:
            await backend.delete(key)
