"""An agent's durable mailbox: its at-least-once messages, kept in a
StateBackend log from the send until they are applied.

The log itself lives in the backend (``mailbox/<agent id>``); a
:class:`DurableLog` is what this process knows of it: which logged messages
are queued and not yet applied, and which appends are still on their way.
It decides how far the log may be trimmed: never past a message not yet
applied, nor past an append whose sequence number is not known yet (appends
can complete out of order).

Attempts. Before a batch with logged messages runs, how many times each of
them has been started is written to ``agent/<id>/attempts`` (one write per
such batch). A message that kills the whole process (out of memory, a
segfault, ``os._exit``) is counted too: the next start finds it among the
*suspects* still in flight, runs each suspect in a batch of its own (so only
the guilty one keeps counting), and dead-letters a message started
``max_delivery_attempts`` times instead of running it again.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs
import msgspec

from ..abc import StateBackend
from ._delivery import Delivery

__all__ = [
    "DurableLog",
    "attempts_key",
    "dead_letter_stream",
    "decode_attempts",
    "encode_attempts",
    "mailbox_stream",
]


def mailbox_stream(agent_id: str) -> str:
    """The StateBackend log holding an agent's at-least-once messages."""
    return f"mailbox/{agent_id}"


def dead_letter_stream(agent_id: str) -> str:
    """The StateBackend log of an agent's dead letters."""
    return f"deadletter/{agent_id}"


def attempts_key(agent_id: str) -> str:
    """The StateBackend key of the attempts of an agent's logged messages in flight."""
    return f"agent/{agent_id}/attempts"


_encode_attempts = msgspec.msgpack.Encoder().encode
_decode_attempts = msgspec.msgpack.Decoder(dict[int, int]).decode


def encode_attempts(attempts: dict[int, int]) -> bytes:
    return _encode_attempts(attempts)


def decode_attempts(data: bytes) -> dict[int, int]:
    """The attempts record (empty if it cannot be read: counting starts over)."""
    try:
        return _decode_attempts(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return {}


@attrs.define(eq=False)
class DurableLog:
    """What this process knows of one agent's durable mailbox."""

    stream: str
    #: Logged messages queued and not yet applied: seq -> instruction id.
    unacked: dict[int, str] = attrs.field(factory=dict)
    #: Appends still waiting for their seq, each with the highest seq seen when
    #: it started: its own seq will be larger, so trimming stays below it.
    appending: dict[object, int] = attrs.field(factory=dict)
    #: Highest seq this process has seen (appended or replayed).
    seen_upto: int = 0
    #: Highest seq up to which this process has read the log: every record at
    #: or below it is known here (queued, applied or dead-lettered). Records
    #: above it may have been logged by another process (see
    #: :meth:`AgentCell.trim_log`).
    read_upto: int = 0
    #: Logged messages that were in flight when the last incarnation ended
    #: (seq -> times started): each runs alone until applied or dead-lettered.
    suspects: dict[int, int] = attrs.field(factory=dict)

    async def append(self, backend: StateBackend, data: bytes) -> int:
        """Append ``data``; return its seq once it is durable."""
        token = object()
        self.appending[token] = self.seen_upto
        try:
            seq = await backend.append(self.stream, data)
        finally:
            del self.appending[token]
        self.saw(seq)
        return seq

    def saw(self, seq: int) -> None:
        if seq > self.seen_upto:
            self.seen_upto = seq

    def before_unapplied(self, seq: int) -> bool:
        """Whether every logged message up to ``seq`` is applied as far as
        this process knows (nothing unacked at or below it)."""
        return not self.unacked or seq < min(self.unacked)

    def trim_bound(self, upto: int) -> int:
        """``upto`` lowered so that no append still on its way is trimmed."""
        if self.appending:
            return min(upto, min(self.appending.values()))
        return upto

    def applied(self, deliveries: Iterable[Delivery]) -> int:
        """Forget the logged ones among ``deliveries`` (applied and
        committed); return the seq up to which the log may now be trimmed
        (0: nothing to trim)."""
        highest = 0
        unacked = self.unacked
        suspects = self.suspects
        for delivery in deliveries:
            seq = delivery.log_seq
            if seq is not None:
                unacked.pop(seq, None)
                if suspects:
                    suspects.pop(seq, None)
                if seq > highest:
                    highest = seq
        if not highest:
            return 0
        # With nothing unacked, everything this process has seen is applied.
        return self.trim_bound(min(unacked) - 1 if unacked else max(highest, self.seen_upto))
