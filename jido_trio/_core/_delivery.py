"""What travels through a local mailbox: an envelope plus its reply slot."""

from __future__ import annotations

from typing import Any
from typing import Literal

from .._message import EnvelopeParts
from .._message import Instruction
from .._message import Message
from .._message import Origin
from .._message import build_envelope
from .._ref import AgentRef
from ._reply import Reply

__all__ = ["Delivery"]


class Delivery:
    """A message queued for an agent.

    Its envelope may be given as :class:`EnvelopeParts` (a local send): the
    :class:`Message` is then built the first time :attr:`message` is read,
    which for most local messages is never.
    """

    __slots__ = (
        "_message",
        "attempts",
        "chain",
        "instruction",
        "kind",
        "log_seq",
        "replied",
        "reply",
        "reply_value",
    )

    def __init__(
        self,
        kind: Literal["instruction", "query"],
        message: Message | EnvelopeParts,
        instruction: Instruction | None,
        reply: Reply | None,
        log_seq: int | None = None,
    ) -> None:
        self.kind = kind
        self._message = message
        self.instruction = instruction
        self.reply = reply
        self.replied = False
        self.reply_value: Any = None
        #: Sequence number in the agent's durable mailbox log (at-least-once only).
        self.log_seq = log_seq
        self.attempts = 0
        #: For a call: the agents waiting for it in its chain of calls.
        self.chain: tuple[str, ...] = ()

    @property
    def message(self) -> Message:
        """The envelope (built now if it was deferred)."""
        message = self._message
        if type(message) is tuple:
            message = self._message = build_envelope(message)
        assert isinstance(message, Message)
        return message

    def origin_for(self, sender: AgentRef, message_id: str | None = None) -> Origin:
        """The origin of what ``sender`` sends while handling this delivery:
        the trace of its envelope, caused by it (without building the
        envelope); ``message_id``: the id the sent envelope gets."""
        message = self._message
        if type(message) is tuple:
            return Origin(sender, message[5], message[0], message_id, self.chain)
        assert isinstance(message, Message)
        return Origin(sender, message.trace_id, message.id, message_id, self.chain)

    def resolve(self) -> None:
        if self.reply is not None:
            self.reply.set(self.reply_value)

    def fail(self, error: BaseException) -> None:
        if self.reply is not None:
            self.reply.fail(error)
