"""Envelopes, instructions and receipts, and the byte codec they travel in.

The codec is msgpack through msgspec: it is the fastest maintained encoder for
Python, never executes code from its input (unlike pickle), and lets us tag our
own value types with msgpack extension codes so that refs and instructions
inside a payload come back as the same objects.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any
from typing import Literal
from typing import NamedTuple

import attrs
import msgspec

from ._exceptions import InvalidMessage
from ._ids import new_id
from ._ref import AgentRef

__all__ = [
    "ENVELOPE_VERSION",
    "MAX_MESSAGE_SIZE",
    "NO_ORIGIN",
    "Instruction",
    "Message",
    "Origin",
    "Receipt",
    "ReceiptStatus",
    "decode_value",
    "encode_value",
    "register_envelope_upcaster",
]

#: Version of the envelope layout written by this release.
ENVELOPE_VERSION = 1
#: Default largest encoded envelope accepted by :meth:`Message.from_bytes`.
MAX_MESSAGE_SIZE = 1 << 20

_EXT_REF = 1
_EXT_INSTRUCTION = 2

ReceiptStatus = Literal["accepted", "already_processed"]


def _id_or_new(value: str | None) -> str:
    if value is None:
        return new_id()
    if not isinstance(value, str) or not value:
        raise TypeError("instruction id must be a non-empty string")
    return value


def _params(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if value is None:
        return MappingProxyType({})
    if type(value) is dict:
        return MappingProxyType(value.copy())
    if not isinstance(value, Mapping):
        raise TypeError(f"instruction params must be a mapping, not {type(value).__name__}")
    return MappingProxyType(dict(value))


@attrs.frozen(init=False)
class Instruction:
    """A request for an agent to run one of its actions.

    :param action: the action name, as given to ``@action``.
    :param params: keyword arguments for the action (a read-only copy is kept).
    :param id: idempotency key; generated when omitted. An instruction id that
        reaches an agent twice is applied once.
    :param version: schema version of ``params``; ``None`` means "the
        receiving agent's current version". An older version is upcast by the
        agent class's upcasters; a newer one is refused with
        :class:`InvalidMessage`.

    ``generated_id`` tells whether the id was generated (no ``id`` given):
    an agent that sends such an instruction from an action gets it sent with
    an id derived from the message it handles instead, so that running the
    action again (after a crash) sends it again under the same id.
    """

    action: str
    params: Mapping[str, Any] = attrs.field(hash=False)
    id: str
    version: int | None
    generated_id: bool = attrs.field(default=False, init=False, eq=False, repr=False)

    # Written by hand rather than generated from converters and validators:
    # one is built for every message sent, and this is about 3x cheaper.
    def __init__(
        self,
        action: str,
        params: Mapping[str, Any] | None = None,
        *,
        id: str | None = None,
        version: int | None = None,
    ) -> None:
        if type(action) is not str and not isinstance(action, str):
            raise TypeError(f"instruction action must be a str, not {type(action).__name__}")
        if version is not None and (type(version) is not int or version < 1):
            raise TypeError("instruction version must be a positive int or None")
        _set_action(self, action)
        if params is None:
            _set_params(self, _EMPTY_PARAMS)
        elif type(params) is dict:
            _set_params(self, MappingProxyType(params.copy()))
        else:
            _set_params(self, _params(params))
        if id is None:
            _set_id(self, new_id())
            _set_generated(self, True)
        else:
            _set_id(self, _id_or_new(id))
            _set_generated(self, False)
        _set_version(self, version)


def slot_setter(cls: type, name: str) -> Callable[[Any, Any], None]:
    """Set one field of a slotted frozen attrs instance through its slot
    descriptor, skipping the class's refusing ``__setattr__``; for
    constructors on hot paths only."""
    setter: Callable[[Any, Any], None] = cls.__dict__[name].__set__
    return setter


_EMPTY_PARAMS: Mapping[str, Any] = MappingProxyType({})
_set_action = slot_setter(Instruction, "action")
_set_params = slot_setter(Instruction, "params")
_set_id = slot_setter(Instruction, "id")
_set_generated = slot_setter(Instruction, "generated_id")


def instruction_with_id(instruction: Instruction, instruction_id: str) -> Instruction:
    """``instruction`` under another id (the same params mapping, read-only
    already): an action's sends get ids derived from their cause."""
    derived: Instruction = _new_object(Instruction)
    _set_action(derived, instruction.action)
    _set_params(derived, instruction.params)
    _set_id(derived, instruction_id)
    _set_version(derived, instruction.version)
    _set_generated(derived, False)
    return derived


_set_version = slot_setter(Instruction, "version")


@attrs.frozen(kw_only=True)
class Receipt:
    """What ``send_instruction`` returns once the recipient has the message.

    :param message_id: id of the envelope that carried the instruction.
    :param instruction_id: the instruction's idempotency key.
    :param status: ``"accepted"`` for a new instruction, ``"already_processed"``
        when this instruction id was applied (or accepted) before.
    """

    message_id: str
    instruction_id: str
    status: ReceiptStatus


@attrs.frozen(kw_only=True)
class Message:
    """The versioned envelope around everything sent to an agent.

    Build one with :meth:`new`; encode with :meth:`to_bytes` and decode with
    :meth:`from_bytes`. ``payload`` may hold msgpack data (None, bool, int,
    float, str, bytes, list, dict, datetime) plus :class:`AgentRef` and
    :class:`Instruction` values, which survive the round trip as themselves.
    Tuples come back as lists.
    """

    id: str
    version: int = ENVELOPE_VERSION
    sender: AgentRef | None
    recipient: AgentRef
    payload: Any
    metadata: Mapping[str, Any] = attrs.field(factory=dict, hash=False)
    timestamp: float
    trace_id: str | None = None
    causation_id: str | None = None
    correlation_id: str | None = None

    @classmethod
    def new(
        cls,
        sender: AgentRef | None,
        recipient: AgentRef,
        payload: Any,
        *,
        metadata: Mapping[str, Any] | None = None,
        trace_id: str | None = None,
        causation_id: str | None = None,
        correlation_id: str | None = None,
    ) -> Message:
        """Wrap ``payload`` in a new envelope with a fresh time-sortable id.

        ``trace_id`` defaults to the new message's own id, so a chain of
        messages started here shares one trace.
        """
        message_id = new_id()
        return _build_message(
            message_id,
            sender,
            recipient,
            payload,
            {} if metadata is None else dict(metadata),
            _time(),
            message_id if trace_id is None else trace_id,
            causation_id,
            correlation_id,
        )

    def to_bytes(self) -> bytes:
        """Encode the envelope; raises :class:`InvalidMessage` if it holds
        values the codec cannot represent."""
        try:
            return _encoder.encode(
                (
                    self.version,
                    self.id,
                    _to_wire(self.sender),
                    _to_wire(self.recipient),
                    _to_wire(self.payload),
                    _to_wire(self.metadata),
                    self.timestamp,
                    self.trace_id,
                    self.causation_id,
                    self.correlation_id,
                )
            )
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            raise InvalidMessage(f"cannot encode message {self.id}: {exc}") from exc

    @classmethod
    def from_bytes(cls, data: bytes, *, max_size: int = MAX_MESSAGE_SIZE) -> Message:
        """Decode an envelope, upcasting older versions.

        :raises InvalidMessage: the input is not bytes, is larger than
            ``max_size``, is not a well-formed envelope, or has a version newer
            than this release understands.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidMessage(f"expected bytes, got {type(data).__name__}")
        if len(data) > max_size:
            raise InvalidMessage(f"message of {len(data)} bytes exceeds limit of {max_size}")
        try:
            raw = _decoder.decode(data)
        except InvalidMessage:
            raise
        except Exception as exc:  # msgspec raises several types for garbage
            raise InvalidMessage(f"malformed message: {exc}") from exc
        if not isinstance(raw, list) or not raw or type(raw[0]) is not int:
            raise InvalidMessage("malformed message: not a versioned envelope")
        version = raw[0]
        if version > ENVELOPE_VERSION:
            raise InvalidMessage(
                f"envelope version {version} is newer than supported {ENVELOPE_VERSION}"
            )
        while version < ENVELOPE_VERSION:
            upcast = _upcasters.get(version)
            if upcast is None:
                raise InvalidMessage(f"no upcaster from envelope version {version}")
            try:
                raw = upcast(raw)
            except Exception as exc:
                raise InvalidMessage(f"upcasting from version {version} failed: {exc}") from exc
            version += 1
        return _envelope_from_list(raw)


_new_object = object.__new__
_time = time.time
_receipt_message_id = slot_setter(Receipt, "message_id")
_receipt_instruction_id = slot_setter(Receipt, "instruction_id")
_receipt_status = slot_setter(Receipt, "status")


def make_receipt(message_id: str, instruction_id: str, status: ReceiptStatus) -> Receipt:
    """``Receipt(...)`` without attrs' keyword handling: one receipt is
    made for every tell."""
    receipt: Receipt = _new_object(Receipt)
    _receipt_message_id(receipt, message_id)
    _receipt_instruction_id(receipt, instruction_id)
    _receipt_status(receipt, status)
    return receipt


_msg_id = slot_setter(Message, "id")
_msg_version = slot_setter(Message, "version")
_msg_sender = slot_setter(Message, "sender")
_msg_recipient = slot_setter(Message, "recipient")
_msg_payload = slot_setter(Message, "payload")
_msg_metadata = slot_setter(Message, "metadata")
_msg_timestamp = slot_setter(Message, "timestamp")
_msg_trace_id = slot_setter(Message, "trace_id")
_msg_causation_id = slot_setter(Message, "causation_id")
_msg_correlation_id = slot_setter(Message, "correlation_id")


def _build_message(
    message_id: str,
    sender: AgentRef | None,
    recipient: AgentRef,
    payload: Any,
    metadata: Mapping[str, Any],
    timestamp: float,
    trace_id: str,
    causation_id: str | None,
    correlation_id: str | None,
) -> Message:
    # Field by field through the slots rather than through __init__: one
    # envelope is built for every message sent (twice as fast).
    message: Message = _new_object(Message)
    _msg_id(message, message_id)
    _msg_version(message, ENVELOPE_VERSION)
    _msg_sender(message, sender)
    _msg_recipient(message, recipient)
    _msg_payload(message, payload)
    _msg_metadata(message, metadata)
    _msg_timestamp(message, timestamp)
    _msg_trace_id(message, trace_id)
    _msg_causation_id(message, causation_id)
    _msg_correlation_id(message, correlation_id)
    return message


#: An envelope not built yet: (id, sender, recipient, payload, timestamp,
#: trace id, causation id), see :func:`envelope_parts`.
EnvelopeParts = tuple[str, "AgentRef | None", AgentRef, Any, float, str, "str | None"]


class Origin(NamedTuple):
    """Where a message comes from: the agent that sends it (``None``: from
    outside any agent) and the chain it continues, its trace id and the id of
    the message that caused it. ``message_id``: the id its envelope gets
    (``None``: a new one), for a message whose receipt was given before it
    was sent (one an action sends, released after its commit). ``chain``:
    for a call, the ids of the agents waiting for it, the sender last (a
    call to one of them could never be answered)."""

    sender: AgentRef | None = None
    trace_id: str | None = None
    causation_id: str | None = None
    message_id: str | None = None
    chain: tuple[str, ...] = ()


#: A message sent from outside any agent, starting a trace of its own.
NO_ORIGIN = Origin()


def envelope_parts(origin: Origin, recipient: AgentRef, payload: Any) -> EnvelopeParts:
    """What :meth:`Message.new` would fix now (the id, the time, the trace),
    for an envelope that may never be looked at: a local delivery builds its
    :class:`Message` only when something reads it (:func:`build_envelope`)."""
    sender, trace_id, causation_id, message_id, _ = origin
    if message_id is None:
        message_id = new_id()
    return (
        message_id,
        sender,
        recipient,
        payload,
        _time(),
        message_id if trace_id is None else trace_id,
        causation_id,
    )


def build_envelope(parts: EnvelopeParts) -> Message:
    """The :class:`Message` that :func:`envelope_parts` stood in for."""
    message_id, sender, recipient, payload, timestamp, trace_id, causation_id = parts
    return _build_message(
        message_id, sender, recipient, payload, {}, timestamp, trace_id, causation_id, None
    )


def _envelope_from_list(raw: list[Any]) -> Message:
    if len(raw) != 10:
        raise InvalidMessage(f"malformed message: {len(raw)} fields, expected 10")
    _, mid, sender, recipient, payload, metadata, ts, trace, cause, corr = raw
    if not isinstance(mid, str) or not mid:
        raise InvalidMessage("malformed message: id must be a non-empty string")
    if sender is not None and not isinstance(sender, AgentRef):
        raise InvalidMessage("malformed message: sender must be an agent ref or nil")
    if not isinstance(recipient, AgentRef):
        raise InvalidMessage("malformed message: recipient must be an agent ref")
    if not isinstance(metadata, dict):
        raise InvalidMessage("malformed message: metadata must be a map")
    if type(ts) is not float or not math.isfinite(ts):
        raise InvalidMessage("malformed message: timestamp must be a finite float")
    for name, value in (("trace_id", trace), ("causation_id", cause), ("correlation_id", corr)):
        if value is not None and not isinstance(value, str):
            raise InvalidMessage(f"malformed message: {name} must be a string or nil")
    return Message(
        id=mid,
        version=ENVELOPE_VERSION,
        sender=sender,
        recipient=recipient,
        payload=payload,
        metadata=metadata,
        timestamp=ts,
        trace_id=trace,
        causation_id=cause,
        correlation_id=corr,
    )


_upcasters: dict[int, Callable[[list[Any]], list[Any]]] = {}


def register_envelope_upcaster(
    from_version: int,
) -> Callable[[Callable[[list[Any]], list[Any]]], Callable[[list[Any]], list[Any]]]:
    """Register a function that turns a raw envelope of ``from_version`` into
    one of ``from_version + 1`` (raw = the decoded msgpack array)."""

    def register(fn: Callable[[list[Any]], list[Any]]) -> Callable[[list[Any]], list[Any]]:
        _upcasters[from_version] = fn
        return fn

    return register


_SCALARS = frozenset({str, int, float, bool, type(None), bytes})


def _to_wire(value: Any) -> Any:
    """Replace refs and instructions by extension values, recursively.

    msgspec would encode attrs classes as plain maps by itself; tagging them
    keeps their type through the round trip.
    """
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is dict:
        return {k: _to_wire(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [_to_wire(v) for v in value]
    if kind is AgentRef:
        return msgspec.msgpack.Ext(
            _EXT_REF,
            _encoder.encode((value.id, value.type, value.node, _to_wire(dict(value.metadata)))),
        )
    if kind is Instruction:
        return msgspec.msgpack.Ext(
            _EXT_INSTRUCTION,
            _encoder.encode((value.action, _to_wire(dict(value.params)), value.id, value.version)),
        )
    if isinstance(value, Mapping):
        return {k: _to_wire(v) for k, v in value.items()}
    return value


def _enc_hook(obj: Any) -> Any:
    raise TypeError(f"cannot encode objects of type {type(obj).__name__}")


def _ext_hook(code: int, data: memoryview) -> Any:
    if code == _EXT_REF:
        fields = _decoder.decode(data)
        if (
            not isinstance(fields, list)
            or len(fields) != 4
            or not isinstance(fields[0], str)
            or not fields[0]
            or not isinstance(fields[1], str)
            or not fields[1]
            or not (fields[2] is None or isinstance(fields[2], str))
            or not isinstance(fields[3], dict)
        ):
            raise InvalidMessage("malformed agent ref")
        return AgentRef(id=fields[0], type=fields[1], node=fields[2], metadata=fields[3])
    if code == _EXT_INSTRUCTION:
        fields = _decoder.decode(data)
        if (
            not isinstance(fields, list)
            or len(fields) not in (3, 4)
            or not isinstance(fields[0], str)
            or not isinstance(fields[1], dict)
            or not isinstance(fields[2], str)
            or not fields[2]
        ):
            raise InvalidMessage("malformed instruction")
        version = fields[3] if len(fields) == 4 else None
        if version is not None and (type(version) is not int or version < 1):
            raise InvalidMessage("malformed instruction version")
        return Instruction(fields[0], fields[1], id=fields[2], version=version)
    raise InvalidMessage(f"unknown msgpack extension code {code}")


_encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
_decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(ext_hook=_ext_hook)


def encode_value(value: Any) -> bytes:
    """Encode any payload-compatible value with the envelope codec."""
    try:
        return _encoder.encode(_to_wire(value))
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise InvalidMessage(f"cannot encode value: {exc}") from exc


def decode_value(data: bytes, *, max_size: int = MAX_MESSAGE_SIZE) -> Any:
    """Decode bytes written by :func:`encode_value`; raises :class:`InvalidMessage`."""
    if len(data) > max_size:
        raise InvalidMessage(f"value of {len(data)} bytes exceeds limit of {max_size}")
    try:
        return _decoder.decode(data)
    except InvalidMessage:
        raise
    except Exception as exc:
        raise InvalidMessage(f"malformed value: {exc}") from exc
