"""Effects that commit with state: a transactional outbox per agent.

What an action sends with ``ctx.send`` and publishes with ``ctx.emit`` is
*held* while the action runs and released, in order, only once the batch that
ran the action has committed its state. A batch whose commit fails, or an
action that raises, sends nothing; the messages are produced again when the
message that caused them is applied again.

An instruction sent without an id of its own (``Instruction.generated_id``)
gets one derived from the message being handled (``<cause id>/<n>``, the n-th
send of that action), so applying the cause again (a replay after a crash)
sends the same ids, which their recipients apply once.

At-least-once sends are also *durable*: they are written into the agent's
state record by the same commit (:mod:`._store`), so that a crash between the
commit and their release, even of the whole process, cannot lose them: the
next incarnation releases what the record still holds. They leave the record
with the first commit after their recipients acknowledged them. At-most-once
sends and signals are released from memory (lost, like any at-most-once
message, only if the process dies in between).
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING
from typing import Any

import trio

from .._exceptions import INFRASTRUCTURE_ERRORS
from .._exceptions import AgentNotFound
from .._exceptions import AgentUnavailable
from .._exceptions import InvalidMessage
from .._exceptions import JidoError
from .._exceptions import MailboxFull
from .._ids import new_id
from .._message import Instruction
from .._message import Message
from .._message import Origin
from .._message import Receipt
from .._message import build_envelope
from .._message import envelope_parts
from .._message import instruction_with_id
from .._message import make_receipt
from .._ref import AgentRef

if TYPE_CHECKING:
    from ._cell import AgentCell

__all__ = [
    "DELIVERY_MODES",
    "Effect",
    "committed_effects",
    "derived_id",
    "hold_send",
    "hold_signal",
    "release_effects",
    "release_nowait",
]

log = logging.getLogger("jido_trio.agent")

DELIVERY_MODES = ("at_most_once", "at_least_once")

#: Longest derived id kept readable (``<cause>/<n>``); longer ones are hashed.
DERIVED_ID_LENGTH = 64

#: What an at-least-once send waits out (it is sent again later): the
#: recipient's node or an engine away, the recipient's mailbox full.
_WAIT_AND_RETRY: tuple[type[Exception], ...] = (*INFRASTRUCTURE_ERRORS, MailboxFull)


class Effect:
    """One held message (``signal`` set: a signal to publish)."""

    __slots__ = ("delivery", "durable", "instruction", "missing_since", "origin", "ref", "signal")

    def __init__(
        self,
        ref: AgentRef | None,
        instruction: Instruction | None,
        delivery: str,
        origin: Origin,
        signal: Any = None,
    ) -> None:
        self.ref = ref
        self.instruction = instruction
        self.delivery = delivery
        self.origin = origin
        self.signal = signal
        #: The encoded envelope of an at-least-once send, once written into
        #: the state record (see :meth:`AgentStore.plan_commit`).
        self.durable: bytes | None = None
        #: When a release first found no such agent (it may be starting still).
        self.missing_since: float | None = None

    def envelope(self) -> Message:
        """The envelope the send goes out in (its id fixed by its origin)."""
        assert self.ref is not None and self.instruction is not None
        return build_envelope(envelope_parts(self.origin, self.ref, self.instruction))

    @classmethod
    def from_envelope(cls, data: bytes) -> Effect:
        """A durable send read back from the state record.

        :raises InvalidMessage: malformed.
        """
        message = Message.from_bytes(data)
        instruction = message.payload
        if not isinstance(instruction, Instruction):
            raise InvalidMessage("held message without an instruction")
        origin = Origin(message.sender, message.trace_id, message.causation_id, message.id)
        effect = cls(message.recipient, instruction, "at_least_once", origin)
        effect.durable = data
        return effect


def derived_id(cell: AgentCell) -> str:
    """The id the next effect of the running action gets from its cause:
    ``<id of the instruction being handled>/<n>`` for its n-th effect, or a
    hash of that when it would be longer than :data:`DERIVED_ID_LENGTH` (ids
    derived from derived ids, a message passed along a chain of agents, must
    not grow with the chain)."""
    handling = cell.handling
    assert handling is not None and handling.instruction is not None
    effects = cell.effects
    n = 0 if effects is None else len(effects) - cell.effects_mark
    derived = f"{handling.instruction.id}/{n}"
    if len(derived) <= DERIVED_ID_LENGTH:
        return derived
    return hashlib.blake2b(derived.encode(), digest_size=16).hexdigest()


def _derived(cell: AgentCell, instruction: Instruction) -> Instruction:
    """``instruction`` with the id its cause gives it (if it has none of its own)."""
    if not instruction.generated_id:
        return instruction
    return instruction_with_id(instruction, derived_id(cell))


def hold_send(cell: AgentCell, ref: AgentRef, instruction: Instruction, delivery: str) -> Receipt:
    """Hold what an action sends until its batch commits; the receipt says
    "accepted" (the message is released, and delivered, after the commit).

    :raises TypeError: ``ref`` or ``instruction`` is of the wrong type.
    :raises InvalidMessage: ``delivery`` is not a delivery mode.
    """
    if not isinstance(ref, AgentRef):
        raise TypeError(f"expected an AgentRef, got {type(ref).__name__}")
    if not isinstance(instruction, Instruction):
        raise TypeError(f"expected an Instruction, got {type(instruction).__name__}")
    if delivery not in DELIVERY_MODES:
        raise InvalidMessage(f"delivery must be one of {', '.join(DELIVERY_MODES)}")
    instruction = _derived(cell, instruction)
    message_id = new_id()
    handling = cell.handling
    assert handling is not None
    _hold(cell, Effect(ref, instruction, delivery, handling.origin_for(cell.ref, message_id)))
    return make_receipt(message_id, instruction.id, "accepted")


def hold_signal(cell: AgentCell, signal: Any) -> None:
    """Hold a signal an action publishes until its batch commits."""
    _hold(cell, Effect(None, None, "at_most_once", Origin(), signal))


def _hold(cell: AgentCell, effect: Effect) -> None:
    effects = cell.effects
    if effects is None:
        cell.effects = [effect]
    else:
        effects.append(effect)


def release_nowait(cell: AgentCell) -> bool:
    """Release, without waiting, the committed effects at the head of the
    line that can go at once: at-most-once sends queued straight into the
    mailbox of an agent of this node. Returns whether any are left (for
    :func:`release_effects`). The caller counts the release in the tell
    budget (:data:`~jido_trio._scheduling.TELL_BUDGET`), as one tell."""
    unreleased = cell.unreleased
    assert unreleased is not None
    tell_nowait = cell.kernel.messenger.tell_nowait
    done = 0
    for effect in unreleased:
        if effect.delivery != "at_most_once" or effect.signal is not None:
            break
        assert effect.ref is not None and effect.instruction is not None
        if tell_nowait(effect.ref, effect.instruction, effect.origin) is None:
            break
        done += 1
    if done == len(unreleased):
        cell.unreleased = None
        return False
    del unreleased[:done]
    return True


async def release_effects(cell: AgentCell) -> bool:
    """Send what committed batches held, in order, awaiting each send (after
    :func:`release_nowait` sent what it could). Returns ``False`` when an
    at-least-once send must wait (its recipient's node unreachable, its
    mailbox full): it stays first in line, to be released again later."""
    unreleased = cell.unreleased
    assert unreleased is not None
    messenger = cell.kernel.messenger
    while unreleased:
        effect = unreleased[0]
        try:
            if effect.signal is not None:
                await messenger.publish(effect.signal)
            else:
                assert effect.ref is not None and effect.instruction is not None
                await messenger.send_instruction(
                    effect.ref, effect.instruction, effect.delivery, None, effect.origin
                )
        except _WAIT_AND_RETRY as exc:
            if effect.durable is not None:
                log.warning(
                    "agent %r: sending %s again later: %s", cell.ref.id, effect.instruction, exc
                )
                return False
            _undeliverable(cell, effect, exc)
        except (AgentNotFound, AgentUnavailable) as exc:
            # Perhaps not started yet (a node starting its agents one after
            # another): a durable send keeps trying for an operation timeout.
            now = trio.current_time()
            if effect.missing_since is None:
                effect.missing_since = now
            if (
                effect.durable is not None
                and now - effect.missing_since < cell.kernel.operation_timeout
            ):
                return False
            _undeliverable(cell, effect, exc)
        except JidoError as exc:
            _undeliverable(cell, effect, exc)
        del unreleased[0]
        if effect.durable is not None and cell.store is not None:
            cell.store.released(effect.durable)
    cell.unreleased = None
    return True


def _undeliverable(cell: AgentCell, effect: Effect, exc: BaseException) -> None:
    if effect.signal is not None:
        log.warning("agent %r: signal %s not published: %s", cell.ref.id, effect.signal, exc)
        return
    cell.kernel.events.dead_letter(effect.envelope(), f"not delivered after the commit: {exc}")


def committed_effects(cell: AgentCell) -> None:
    """The batch holding ``cell.effects`` committed: line them up for release."""
    effects = cell.effects
    if effects:
        unreleased = cell.unreleased
        if unreleased is None:
            cell.unreleased = effects
        else:
            unreleased.extend(effects)
    cell.effects = None
