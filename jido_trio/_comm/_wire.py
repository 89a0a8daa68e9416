"""The wire format between nodes: request frames, replies and portable errors.

A request is ``[kind, envelope_bytes]`` encoded with the envelope codec; the
envelope's metadata carries the time the caller still waits
(:data:`TIMEOUT_KEY`, relative, immune to clock skew) and its deadline as
Unix time (:data:`DEADLINE_KEY`, catches time spent in transit). A reply is
``["ok", value]`` or ``["err", type_name, text, remote_type, remote_text]``;
errors of the :data:`PORTABLE_ERRORS` types are raised again as themselves on
the caller's side, with the node that raised them in their text.
"""

from __future__ import annotations

import time
from typing import Any
from typing import Literal

import attrs

from .. import _exceptions as errors
from .._agent import Agent
from .._core import state_decoder
from .._exceptions import ActionError
from .._exceptions import InvalidMessage
from .._exceptions import JidoError
from .._message import Message
from .._message import decode_value
from .._message import encode_value

__all__ = [
    "CHAIN_KEY",
    "DEADLINE_KEY",
    "MAX_REMOTE_TIMEOUT",
    "PORTABLE_ERRORS",
    "TIMEOUT_KEY",
    "RemoteActionError",
    "RequestKind",
    "decode_reply",
    "decode_request",
    "decode_state_reply",
    "encode_error",
    "encode_ok",
    "encode_one_way",
    "encode_request",
    "remaining_time",
]

#: Envelope metadata key carrying the seconds a remote caller still waits.
TIMEOUT_KEY = "jido.timeout"
#: Envelope metadata key carrying the caller's deadline as Unix time.
DEADLINE_KEY = "jido.deadline"
#: Longest wait a remote request may ask for.
MAX_REMOTE_TIMEOUT = 3600.0
#: Envelope metadata key carrying a call's chain (the ids of the agents
#: waiting for it; see jido_trio.CallCycle).
CHAIN_KEY = "jido.chain"
#: Longest chain of calls a request may carry.
MAX_CHAIN = 256

RequestKind = Literal[
    "tell", "tell_alo", "call", "query", "health", "ping", "signal", "adopt", "migrate", "stop"
]

#: Errors that cross nodes as themselves (their constructor takes one message).
PORTABLE_ERRORS: dict[str, type[JidoError]] = {
    cls.__name__: cls
    for cls in (
        errors.AgentNotFound,
        errors.AgentUnavailable,
        errors.AgentAlreadyExists,
        errors.Unreachable,
        errors.RemoteNotSupported,
        errors.CallTimeout,
        errors.MailboxFull,
        errors.CircuitOpen,
        errors.ActionNotFound,
        errors.AlreadyProcessed,
        errors.CallCycle,
        errors.InvalidMessage,
        errors.ConfigError,
        errors.EngineError,
    )
}


class RemoteActionError(JidoError):
    """An action failed on the serving node: what crosses back is its type and text."""

    def __init__(self, message: str, remote_type: str, remote_message: str) -> None:
        super().__init__(message)
        self.remote_type = remote_type
        self.remote_message = remote_message


def encode_request(kind: str, message: Message, timeout: float) -> bytes:
    """A request frame for ``message``, its caller waiting ``timeout`` seconds more."""
    stamped = attrs.evolve(
        message,
        metadata={**message.metadata, TIMEOUT_KEY: timeout, DEADLINE_KEY: time.time() + timeout},
    )
    return encode_value([kind, stamped.to_bytes()])


def encode_one_way(kind: str, message: Message) -> bytes:
    """A one-way frame (``Transport.send``): no caller waits, so no time left."""
    return encode_value([kind, message.to_bytes()])


def decode_request(data: bytes) -> tuple[str, Message]:
    """The kind and envelope of a request frame.

    :raises InvalidMessage: malformed.
    """
    frame = decode_value(data)
    if (
        not isinstance(frame, list)
        or len(frame) != 2
        or not isinstance(frame[0], str)
        or not isinstance(frame[1], bytes)
    ):
        raise InvalidMessage("malformed request frame")
    kind, raw = frame
    return kind, Message.from_bytes(raw)


#: Part of the time a caller still waits that a served request keeps in
#: reserve, so that its answer (MailboxFull, CallTimeout) reaches the caller
#: before the caller gives up on it (which would look like a lost request).
REPLY_MARGIN = 0.1
#: Most time kept in reserve, in seconds.
MAX_REPLY_MARGIN = 0.25


def remaining_time(message: Message) -> float:
    """Seconds the caller of a request still waits (the earlier of its
    relative and absolute deadlines; negative once passed), less a margin for
    the answer's way back (see :data:`REPLY_MARGIN`).

    :raises InvalidMessage: the request carries no numeric time left.
    """
    remaining = message.metadata.get(TIMEOUT_KEY)
    if isinstance(remaining, bool) or not isinstance(remaining, (int, float)):
        raise InvalidMessage(f"request without a numeric {TIMEOUT_KEY!r}")
    absolute = message.metadata.get(DEADLINE_KEY)
    if isinstance(absolute, (int, float)) and not isinstance(absolute, bool):
        remaining = min(remaining, absolute - time.time())
    remaining -= min(MAX_REPLY_MARGIN, max(0.0, remaining) * REPLY_MARGIN)
    return min(float(remaining), MAX_REMOTE_TIMEOUT)


def call_chain(message: Message) -> tuple[str, ...]:
    """The chain of calls a call request carries (see :data:`CHAIN_KEY`).

    :raises InvalidMessage: malformed.
    """
    chain = message.metadata.get(CHAIN_KEY, ())
    if (
        not isinstance(chain, list | tuple)
        or len(chain) > MAX_CHAIN
        or not all(isinstance(agent_id, str) for agent_id in chain)
    ):
        raise InvalidMessage(f"malformed {CHAIN_KEY!r}")
    return tuple(chain)


def encode_ok(value: Any) -> bytes:
    return encode_value(["ok", value])


def encode_error(exc: Exception) -> bytes:
    """The reply for a request that failed with ``exc``."""
    if isinstance(exc, RemoteActionError):
        return encode_value(["err", "ActionError", str(exc), exc.remote_type, exc.remote_message])
    if isinstance(exc, JidoError):
        return encode_value(["err", type(exc).__name__, str(exc), None, None])
    return encode_value(["err", "JidoError", f"{type(exc).__name__}: {exc}", None, None])


def decode_reply(data: bytes, node: str) -> Any:
    """The value of a reply from ``node``, or raise the error it carries.

    :raises InvalidMessage: malformed.
    """
    reply = decode_value(data)
    if isinstance(reply, list) and len(reply) == 2 and reply[0] == "ok":
        return reply[1]
    if isinstance(reply, list) and len(reply) == 5 and reply[0] == "err":
        _, type_name, text, remote_type, remote_message = reply
        where = f"{text} (on node {node!r})"
        if type_name == "ActionError":
            raise ActionError(
                where,
                remote_type=None if remote_type is None else str(remote_type),
                remote_message=None if remote_message is None else str(remote_message),
            )
        cls = PORTABLE_ERRORS.get(str(type_name))
        if cls is not None:
            raise cls(where)
        raise JidoError(f"{type_name}: {where}")
    raise InvalidMessage(f"malformed reply from node {node!r}")


def decode_state_reply(agent_type: str, raw: Any) -> Any:
    """An agent's state as a remote ``query`` returned it (its class's
    ``State`` when the type is known here, plain data otherwise)."""
    if not isinstance(raw, bytes):
        raise InvalidMessage("malformed state reply")
    cls = Agent.types.get(agent_type)
    if cls is None:
        return decode_value(raw)
    return state_decoder(cls.State).decode(raw)
