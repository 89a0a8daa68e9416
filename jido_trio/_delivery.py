"""What travels through a local mailbox: an envelope plus its reply slot."""

from __future__ import annotations

from typing import Any, Literal

import trio

from ._message import Instruction, Message

__all__ = ["Delivery", "Reply"]

_UNSET: Any = object()


class Reply:
    """One-shot slot a caller waits on for the answer to a call or query."""

    __slots__ = ("_error", "_event", "_value", "abandoned")

    def __init__(self) -> None:
        self._event = trio.Event()
        self._value: Any = _UNSET
        self._error: BaseException | None = None
        #: Set when the caller gave up (deadline passed): the agent skips it.
        self.abandoned = False

    @property
    def done(self) -> bool:
        return self._event.is_set()

    def set(self, value: Any) -> None:
        if not self._event.is_set():
            self._value = value
            self._event.set()

    def fail(self, error: BaseException) -> None:
        if not self._event.is_set():
            self._error = error
            self._event.set()

    async def wait(self) -> Any:
        await self._event.wait()
        if self._error is not None:
            raise self._error
        return self._value


class Delivery:
    """A message queued for an agent."""

    __slots__ = (
        "attempts",
        "instruction",
        "kind",
        "log_seq",
        "message",
        "replied",
        "reply",
        "reply_value",
    )

    def __init__(
        self,
        kind: Literal["instruction", "query"],
        message: Message,
        instruction: Instruction | None,
        reply: Reply | None,
        log_seq: int | None = None,
    ) -> None:
        self.kind = kind
        self.message = message
        self.instruction = instruction
        self.reply = reply
        self.replied = False
        self.reply_value: Any = None
        #: Sequence number in the agent's durable mailbox log (at-least-once only).
        self.log_seq = log_seq
        self.attempts = 0

    def resolve(self) -> None:
        if self.reply is not None:
            self.reply.set(self.reply_value)

    def fail(self, error: BaseException) -> None:
        if self.reply is not None:
            self.reply.fail(error)
