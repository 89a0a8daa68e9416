"""Envelopes, instructions, ids and the codec."""

from __future__ import annotations

import contextlib
import datetime
import pickle
import time
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import jido_trio as jt
from jido_trio._ids import id_time
from jido_trio._ids import new_id

texts = st.text(max_size=20)
refs = st.builds(
    jt.AgentRef,
    id=st.text(min_size=1, max_size=10),
    type=st.text(min_size=1, max_size=10),
    node=st.none() | st.text(min_size=1, max_size=10),
    metadata=st.dictionaries(texts, st.integers(-5, 5), max_size=3),
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | texts
    | st.binary(max_size=20)
    | st.datetimes(timezones=st.just(datetime.UTC))
)
plain = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=20,
)
instructions = st.builds(
    jt.Instruction,
    st.text(min_size=1, max_size=10),
    st.dictionaries(texts, plain, max_size=3),
    id=st.text(min_size=1, max_size=32),
    version=st.none() | st.integers(1, 1000),
)
payloads = st.recursive(
    scalars | refs | instructions,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=20,
)
optional_ids = st.none() | st.text(min_size=1, max_size=32)
messages = st.builds(
    jt.Message,
    id=st.text(min_size=1, max_size=32),
    version=st.just(1),
    sender=st.none() | refs,
    recipient=refs,
    payload=payloads,
    metadata=st.dictionaries(texts, plain, max_size=3),
    timestamp=st.floats(allow_nan=False, allow_infinity=False),
    trace_id=optional_ids,
    causation_id=optional_ids,
    correlation_id=optional_ids,
)


@settings(max_examples=300, deadline=None)
@given(messages)
def test_every_field_round_trips_exactly(message: jt.Message) -> None:
    decoded = jt.Message.from_bytes(message.to_bytes())
    assert decoded == message
    for field in ("id", "version", "sender", "recipient", "payload", "metadata", "timestamp"):
        assert getattr(decoded, field) == getattr(message, field)
    assert decoded.sender is None or decoded.sender.metadata == message.sender.metadata  # type: ignore[union-attr]
    assert decoded.recipient.metadata == message.recipient.metadata
    assert (decoded.trace_id, decoded.causation_id, decoded.correlation_id) == (
        message.trace_id,
        message.causation_id,
        message.correlation_id,
    )


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_is_invalid_message(data: bytes) -> None:
    with contextlib.suppress(jt.InvalidMessage):
        jt.Message.from_bytes(data)


@settings(max_examples=200, deadline=None)
@given(messages, st.data())
def test_mutated_envelopes_never_raise_anything_else(message: jt.Message, data: Any) -> None:
    raw = bytearray(message.to_bytes())
    index = data.draw(st.integers(0, len(raw) - 1))
    raw[index] = data.draw(st.integers(0, 255))
    try:
        decoded = jt.Message.from_bytes(bytes(raw))
    except jt.InvalidMessage:
        return
    assert isinstance(decoded.recipient, jt.AgentRef)


def test_new_sets_ids_time_and_trace() -> None:
    ref = jt.AgentRef.new("a", "t", node="n")
    message = jt.Message.new(None, ref, {"x": 1}, correlation_id="c")
    assert message.version == jt._message.ENVELOPE_VERSION
    assert message.trace_id == message.id
    assert message.correlation_id == "c"
    assert abs(id_time(message.id) - message.timestamp) < 1.0
    later = jt.Message.new(ref, ref, None, trace_id="t1", causation_id=message.id)
    assert later.id > message.id
    assert (later.trace_id, later.causation_id) == ("t1", message.id)


def test_ids_are_unique_and_time_sortable() -> None:
    before = time.time()
    ids = [new_id() for _ in range(50_000)]
    after = time.time()
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(len(i) == 32 and set(i) <= set("0123456789abcdef") for i in ids)
    assert before - 0.001 <= id_time(ids[0]) <= id_time(ids[-1]) <= after


def test_ids_roll_into_the_next_millisecond_when_one_is_used_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from jido_trio import _ids

    # Restored afterwards: later ids must not carry this test's future time.
    for name in ("_last_ms", "_last_value", "_last_limit", "_next_ms_ns"):
        monkeypatch.setattr(_ids, name, getattr(_ids, name))
    ms = time.time_ns() // 1_000_000 + 60_000  # a clock ahead of every id so far
    monkeypatch.setattr(_ids, "_time_ns", lambda: ms * 1_000_000)  # and standing still
    first = new_id()
    # Leave two ids in this millisecond's random range.
    monkeypatch.setattr(_ids, "_last_value", _ids._last_limit - 2)
    same_ms = [new_id(), new_id()]
    next_ms = [new_id(), new_id()]
    ids = [first, *same_ms, *next_ms]
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert [id_time(i) for i in ids] == [ms / 1000] * 3 + [(ms + 1) / 1000] * 2
    assert same_ms[-1].endswith("f" * 20)


def test_instruction_defaults_and_validation() -> None:
    a = jt.Instruction("go")
    b = jt.Instruction("go")
    assert a.id != b.id and a.params == {}
    c = jt.Instruction("go", {"x": 1}, id="fixed")
    assert c.id == "fixed" and c.params == {"x": 1}
    with pytest.raises(TypeError):
        c.params["x"] = 2  # type: ignore[index]
    with pytest.raises(TypeError):
        jt.Instruction("go", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        jt.Instruction(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        jt.Instruction("go", id="")


def test_size_limit_and_wrong_types() -> None:
    ref = jt.AgentRef.new("a", "t")
    big = jt.Message.new(None, ref, b"x" * 2000).to_bytes()
    with pytest.raises(jt.InvalidMessage, match="exceeds"):
        jt.Message.from_bytes(big, max_size=1000)
    assert jt.Message.from_bytes(big).payload == b"x" * 2000
    with pytest.raises(jt.InvalidMessage):
        jt.Message.from_bytes("not bytes")  # type: ignore[arg-type]
    with pytest.raises(jt.InvalidMessage):
        jt.Message.new(None, ref, object()).to_bytes()
    with pytest.raises(jt.InvalidMessage):
        jt.Message.new(None, ref, 2**70).to_bytes()


def test_structurally_wrong_envelopes() -> None:
    encode = msgspec.msgpack.encode
    ok = jt.Message.new(None, jt.AgentRef.new("a", "t"), 1)
    fields = msgspec.msgpack.decode(ok.to_bytes())
    cases = [
        encode({"not": "a list"}),
        encode([]),
        encode(["1", *fields[1:]]),
        encode(fields[:5]),
        encode([1, "", *fields[2:]]),
        encode([1, ok.id, None, "recipient-not-a-ref", *fields[4:]]),
        encode([*fields[:5], [], *fields[6:]]),
        encode([*fields[:6], "yesterday", *fields[7:]]),
        encode([*fields[:7], 42, *fields[8:]]),
        encode(msgspec.msgpack.Ext(99, b"")),
    ]
    for raw in cases:
        with pytest.raises(jt.InvalidMessage):
            jt.Message.from_bytes(raw)


def test_future_version_is_refused_and_old_versions_upcast() -> None:
    ok = jt.Message.new(None, jt.AgentRef.new("a", "t"), {"v": 0})
    fields = msgspec.msgpack.decode(ok.to_bytes())
    future = msgspec.msgpack.encode([2, *fields[1:]])
    with pytest.raises(jt.InvalidMessage, match="newer"):
        jt.Message.from_bytes(future)
    # Version 0 had no correlation_id; register how to bring it up to 1.
    old = msgspec.msgpack.encode([0, *fields[1:9]])
    with pytest.raises(jt.InvalidMessage, match="upcaster"):
        jt.Message.from_bytes(old)

    @jt.register_envelope_upcaster(0)
    def v0_to_v1(raw: list[Any]) -> list[Any]:
        return [1, *raw[1:], None]

    try:
        decoded = jt.Message.from_bytes(old)
        assert decoded.id == ok.id and decoded.correlation_id is None
        assert decoded.payload == {"v": 0}
    finally:
        jt._message._upcasters.pop(0)


def test_codec_does_not_use_pickle() -> None:
    message = jt.Message.new(None, jt.AgentRef.new("a", "t"), [1, "two"])
    data = message.to_bytes()
    assert not data.startswith(b"\x80")  # pickle protocol marker
    with pytest.raises(jt.InvalidMessage):
        jt.Message.from_bytes(pickle.dumps({"id": message.id, "payload": [1, "two"]}))


def test_receipt_and_health_values() -> None:
    receipt = jt.Receipt(message_id="m", instruction_id="i", status="accepted")
    assert receipt.status == "accepted"
    assert {h.name for h in jt.Health} == {"HEALTHY", "DEGRADED", "UNREACHABLE", "NOT_FOUND"}
