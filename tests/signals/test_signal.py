"""Signals as CloudEvents 1.0, checked against the official SDK (cloudevents 2.x).

The SDK's current API lives in ``cloudevents.core`` (``bindings.http`` and
``formats.json``); the 1.x API is kept as ``cloudevents.v1`` and is checked too.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
from typing import Any

import attrs
import pytest
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from cloudevents.v1 import conversion as ce_legacy_conversion
from cloudevents.v1 import http as ce_legacy
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from jido_trio._exceptions import InvalidMessage
from jido_trio._message import decode_value
from jido_trio._message import encode_value
from jido_trio.signals._signal import CAUSATION_ID_EXTENSION
from jido_trio.signals._signal import CORRELATION_ID_EXTENSION
from jido_trio.signals._signal import MAX_SIGNAL_SIZE
from jido_trio.signals._signal import TRACE_ID_EXTENSION
from jido_trio.signals._signal import Signal

UTC = dt.UTC
T0 = dt.datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)

# -- strategies ----------------------------------------------------------------

# CloudEvents strings: no control characters, noncharacters or surrogates.
ce_text = st.text(
    alphabet=st.characters(exclude_categories=("Cc", "Cs", "Cn")), min_size=1, max_size=12
)
ascii_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=12
)
uri_chars = "abcxyz019-._~:/?@!$&'()*+,;="
sources = st.one_of(
    st.text(alphabet=uri_chars.replace(":", ""), min_size=1, max_size=10).map(lambda s: "/" + s),
    st.text(alphabet=uri_chars, max_size=10).map(lambda s: "urn:jido:" + s),
    st.text(alphabet=uri_chars, max_size=10).map(lambda s: "https://example.com/" + s),
    st.just("1-555-123-4567"),
    st.just("/caf%C3%A9#frag"),
)
schemas = st.none() | st.sampled_from(["https://example.com/s.json", "urn:schema:x#/a"])
types = st.lists(st.text(alphabet="abcz09_-", min_size=1, max_size=5), min_size=1, max_size=4).map(
    ".".join
)
offsets = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(
    lambda m: dt.timezone(dt.timedelta(minutes=m))
)
times = st.none() | st.datetimes(
    min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(9000, 1, 1), timezones=offsets
)
_RESERVED = {"specversion", "id", "source", "type", "subject", "time", "datacontenttype"}
_RESERVED |= {"dataschema", "data"}
ext_names = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=20
).filter(lambda n: n not in _RESERVED)
ext_values = st.one_of(ce_text, st.booleans(), st.integers(-(2**31), 2**31 - 1))
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
)
json_values = st.recursive(
    json_scalars,
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4)
    ),
    max_leaves=15,
)
json_types = st.sampled_from(
    [None, "application/json", "application/vnd.jido+json", "text/json; charset=utf-8"]
)
text_types = st.sampled_from(["text/plain", "text/xml; charset=utf-8", "application/atom+xml"])
binary_types = st.sampled_from(["application/octet-stream", "image/png", "application/protobuf"])


@st.composite
def typed_data(draw: st.DrawFn) -> tuple[str | None, Any]:
    """A datacontenttype and data that agree, so every form carries them exactly."""
    kind = draw(st.sampled_from(["json", "text", "binary", "none"]))
    if kind == "json":
        return draw(json_types), draw(json_values.filter(lambda v: v is not None))
    if kind == "text":
        return draw(text_types), draw(st.text(min_size=1, max_size=20))
    if kind == "binary":
        return draw(binary_types), draw(st.binary(min_size=1, max_size=20))
    return draw(st.none() | json_types | binary_types), None


@st.composite
def signals(draw: st.DrawFn, *, ext_values: st.SearchStrategy[Any] = ext_values) -> Signal:
    content_type, data = draw(typed_data())
    return Signal(
        id=draw(ce_text),
        source=draw(sources),
        type=draw(types),
        subject=draw(st.none() | ce_text),
        time=draw(times),
        datacontenttype=content_type,
        dataschema=draw(schemas),
        extensions=draw(st.dictionaries(ext_names, ext_values, max_size=3)),
        data=data,
    )


def expected_attributes(signal: Signal, *, binary: bool = False) -> dict[str, Any]:
    """The attributes the SDK should see for ``signal`` (strings in binary mode)."""
    attrs_: dict[str, Any] = {
        "specversion": "1.0",
        "id": signal.id,
        "source": signal.source,
        "type": signal.type,
    }
    for name in ("subject", "time", "datacontenttype", "dataschema"):
        value = getattr(signal, name)
        if value is not None:
            attrs_[name] = value
    for name, value in signal.extensions.items():
        if binary and isinstance(value, bool):
            value = "true" if value else "false"
        attrs_[name] = str(value) if binary else value
    implied = signal.datacontenttype is None and signal.data is not None
    if binary and implied and not isinstance(signal.data, bytes):
        attrs_["datacontenttype"] = "application/json"
    return attrs_


def sdk_attributes(event: Any) -> dict[str, Any]:
    # The SDK adds a time when none is given; ours may have none.
    return dict(event.get_attributes())


# -- construction ----------------------------------------------------------------


def test_new_defaults() -> None:
    before = dt.datetime.now(UTC)
    signal = Signal.new("order.created", "/shop", {"id": 7})
    assert signal.specversion == "1.0"
    assert len(signal.id) == 32
    assert signal.time is not None and signal.time >= before
    assert signal.time.utcoffset() == dt.timedelta(0)
    assert signal.data == {"id": 7}
    assert dict(signal.extensions) == {}
    assert Signal.new("a", "/s").id > signal.id  # time-sortable ids


def test_new_trace_extensions() -> None:
    signal = Signal.new(
        "a.b",
        "/s",
        extensions={"jidotraceid": "old", "other": 1},
        trace_id="t1",
        causation_id="c1",
        correlation_id="k1",
    )
    assert signal.trace_id == "t1"
    assert signal.causation_id == "c1"
    assert signal.correlation_id == "k1"
    assert dict(signal.extensions) == {
        "jidotraceid": "t1",
        "other": 1,
        "jidocausationid": "c1",
        "jidocorrelationid": "k1",
    }
    for name in (TRACE_ID_EXTENSION, CAUSATION_ID_EXTENSION, CORRELATION_ID_EXTENSION):
        assert name.isalnum() and name.islower() and len(name) <= 20
    assert Signal.new("a", "/s").trace_id is None


def test_value_semantics() -> None:
    signal = Signal.new("a", "/s", [1, (2, 3)], time=T0, id="x")
    assert signal.data == [1, [2, 3]]  # tuples become lists, as after any round trip
    assert signal == Signal.new("a", "/s", [1, [2, 3]], time=T0, id="x")
    assert hash(signal) == hash(attrs.evolve(signal, data={"other": 1}))
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        signal.type = "b"  # type: ignore[misc]
    with pytest.raises(TypeError):
        signal.extensions["x"] = 1  # type: ignore[index]
    assert attrs.evolve(signal, type="b").type == "b"
    assert Signal.new("a", "/s", bytearray(b"xy")).data == b"xy"
    assert Signal.new("a", "/s", time="2024-05-01T12:30:15.123456Z").time == T0


def test_time_may_be_absent() -> None:
    signal = Signal(source="/s", type="a", time=None)
    assert signal.time is None
    assert "time" not in json.loads(signal.to_structured_json())
    assert Signal.from_structured_json(signal.to_structured_json()) == signal


# -- interop with the SDK: our output, their parser ----------------------------------


@given(signals())
@settings(max_examples=200)
def test_sdk_reads_our_structured_json(signal: Signal) -> None:
    body = signal.to_structured_json()
    message = ce_http.HTTPMessage({"content-type": "application/cloudevents+json"}, body)
    for event in (
        ce_http.from_http_event(message),
        ce_http.from_structured(message, JSONFormat(), CloudEvent),
    ):
        attributes = sdk_attributes(event)
        if signal.time is None:
            attributes.pop("time")
        assert attributes == expected_attributes(signal)
        assert event.get_data() == signal.data


@given(signals())
@settings(max_examples=200)
def test_sdk_reads_our_binary_http(signal: Signal) -> None:
    headers, body = signal.to_binary_http()
    event = ce_http.from_http_event(ce_http.HTTPMessage(headers, body))
    attributes = sdk_attributes(event)
    if signal.time is None:
        attributes.pop("time")
    assert attributes == expected_attributes(signal, binary=True)
    expected: Any = signal.data
    if isinstance(expected, bytes):
        # The SDK guesses text for any body that decodes as UTF-8.
        with contextlib.suppress(UnicodeDecodeError):
            expected = expected.decode("utf-8")
    assert event.get_data() == expected


def test_sdk_reads_binary_example() -> None:
    signal = Signal.new(
        "order.created",
        "/shop/eu",
        {"total": 12.5, "items": ["é", 2]},
        subject='order "7" 100%',
        time=dt.datetime(2024, 5, 1, 14, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        extensions={"flag": True, "count": -3},
    )
    headers, body = signal.to_binary_http()
    assert headers["ce-subject"] == "order%20%227%22%20100%25"
    assert headers["ce-time"] == "2024-05-01T14:00:00+02:00"
    assert headers["ce-flag"] == "true"
    assert headers["ce-count"] == "-3"
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == signal.data
    event = ce_http.from_binary_event(ce_http.HTTPMessage(headers, body))
    assert event.get_subject() == signal.subject
    assert event.get_time() == signal.time
    assert event.get_data() == signal.data


# -- interop with the SDK: their output, our parser ----------------------------------


@st.composite
def sdk_events(draw: st.DrawFn, *, binary: bool) -> CloudEvent:
    attributes: dict[str, Any] = {
        "type": draw(types),
        "source": draw(sources),
        "id": draw(ce_text),
        "time": draw(times.filter(lambda t: t is not None)),
    }
    for name, strategy in (("subject", ce_text), ("dataschema", schemas)):
        value = draw(st.none() | strategy)
        if value is not None:
            attributes[name] = value
    values = ce_text if binary else ext_values
    attributes.update(draw(st.dictionaries(ext_names, values, max_size=3)))
    kind = draw(st.sampled_from(["json", "text", "binary", "none"]))
    data: Any = None
    content_type: str | None = None
    if kind == "json":
        content_type = draw(json_types)
        # The SDK's binary writer serialises only dicts as JSON.
        data = draw(st.dictionaries(st.text(max_size=6), json_values, max_size=4))
    elif kind == "text":
        content_type = draw(text_types)
        data = draw(st.text(min_size=1, max_size=20))
    elif kind == "binary":
        content_type = draw(binary_types)
        data = draw(st.binary(min_size=1, max_size=20))
    if content_type is not None:
        attributes["datacontenttype"] = content_type
    return CloudEvent(attributes, data)


def assert_same(signal: Signal, event: CloudEvent, *, binary: bool = False) -> None:
    attributes = event.get_attributes()
    assert signal.specversion == attributes["specversion"]
    assert signal.id == event.get_id()
    assert signal.source == event.get_source()
    assert signal.type == event.get_type()
    assert signal.subject == event.get_subject()
    assert signal.time == event.get_time()
    assert signal.dataschema == event.get_dataschema()
    content_type = event.get_datacontenttype()
    assert signal.datacontenttype == content_type
    core = {"specversion", "id", "source", "type", "subject", "time", "datacontenttype"}
    core.add("dataschema")
    assert dict(signal.extensions) == {k: v for k, v in attributes.items() if k not in core}
    assert signal.data == event.get_data()
    assert type(signal.data) is type(event.get_data())


@given(sdk_events(binary=False))
@settings(max_examples=200)
def test_we_read_sdk_structured_json(event: CloudEvent) -> None:
    message = ce_http.to_structured_event(event)
    assert message.headers == {"content-type": "application/cloudevents+json"}
    assert_same(Signal.from_structured_json(message.body), event)


@given(sdk_events(binary=True))
@settings(max_examples=200)
def test_we_read_sdk_binary_http(event: CloudEvent) -> None:
    message = ce_http.to_binary_event(event)
    shuffled = {
        key.upper() if i % 2 else key.title(): v
        for i, (key, v) in enumerate(message.headers.items())
    }
    for headers in (message.headers, shuffled):
        assert_same(Signal.from_binary_http(headers, message.body), event, binary=True)


def test_sdk_binary_quirks() -> None:
    # The SDK's binary writer puts str data under a JSON (or no) media type
    # in the body unquoted, and writes booleans as Python does: we read both as
    # the SDK does (text fallback; extension values are strings in binary mode).
    event = CloudEvent({"type": "t", "source": "/s", "flag": True}, "hello")
    message = ce_http.to_binary_event(event)
    assert message.body == b"hello"
    signal = Signal.from_binary_http(message.headers, message.body)
    assert signal.data == "hello"
    assert signal.extensions == {"flag": "True"}
    assert ce_http.from_binary_event(message).get_data() == "hello"


def test_sdk_structured_example_with_nulls() -> None:
    body = json.dumps(
        {
            "specversion": "1.0",
            "type": "com.example.someevent",
            "source": "/mycontext",
            "subject": None,
            "id": "C234-1234-1234",
            "time": "2018-04-05T17:31:00Z",
            "comexampleextension1": "value",
            "comexampleothervalue": 5,
            "unsetextension": None,
            "datacontenttype": "application/json",
            "data": {"appinfoA": "abc", "appinfoB": 123, "appinfoC": True},
        }
    ).encode()
    signal = Signal.from_structured_json(body)
    assert signal.subject is None
    assert signal.time == dt.datetime(2018, 4, 5, 17, 31, tzinfo=UTC)
    assert signal.extensions == {"comexampleextension1": "value", "comexampleothervalue": 5}
    assert signal.data == {"appinfoA": "abc", "appinfoB": 123, "appinfoC": True}


def test_nanosecond_times_truncate_like_the_sdk() -> None:
    body = b'{"specversion":"1.0","id":"1","source":"/s","type":"t","time":"2024-05-01T12:30:15.123456789+00:00"}'
    ours = Signal.from_structured_json(body)
    theirs = ce_http.from_structured_event(ce_http.HTTPMessage({}, body))
    assert ours.time == theirs.get_time() == T0
    assert Signal.from_structured_json(body.replace(b"T", b"t")).time == T0


# -- the 1.x SDK API (cloudevents.v1) ---------------------------------------------


def test_legacy_sdk_reads_ours() -> None:
    signal = Signal.new(
        "order.created",
        "/shop",
        {"a": [1, 2]},
        subject="o1",
        time=T0,
        extensions={"tenant": "acme", "n": 3},
    )
    event = ce_legacy.from_http({}, signal.to_structured_json())
    assert event["id"] == signal.id and event["type"] == signal.type
    assert event["time"] == "2024-05-01T12:30:15.123456Z"
    assert event["tenant"] == "acme" and event["n"] == 3
    assert event.get_data() == {"a": [1, 2]}
    headers, body = signal.to_binary_http()
    event = ce_legacy.from_http(headers, body)
    assert event["subject"] == "o1" and event["tenant"] == "acme" and event["n"] == "3"
    assert event.get_data() == {"a": [1, 2]}
    raw = Signal.new("t", "/s", b"\xff\x00", datacontenttype="application/octet-stream")
    assert ce_legacy.from_http({}, raw.to_structured_json()).get_data() == b"\xff\x00"


def test_we_read_legacy_sdk() -> None:
    event = ce_legacy.CloudEvent(
        {"type": "order.created", "source": "/shop", "subject": "o1", "tenant": "acme"},
        {"a": [1, 2]},
    )
    _, structured_body = ce_legacy_conversion.to_structured(event)
    binary_headers, binary_body = ce_legacy_conversion.to_binary(event)
    for signal in (
        Signal.from_structured_json(structured_body),
        Signal.from_binary_http(binary_headers, binary_body),
    ):
        assert signal.id == event["id"] and signal.subject == "o1"
        assert signal.time == dt.datetime.fromisoformat(event["time"])
        assert signal.extensions == {"tenant": "acme"}
        assert signal.data == {"a": [1, 2]}
    binary = ce_legacy.CloudEvent({"type": "t", "source": "/s"}, b"\xff\x00")
    assert (
        Signal.from_structured_json(ce_legacy_conversion.to_structured(binary)[1]).data
        == b"\xff\x00"
    )


# -- round trips -----------------------------------------------------------------


@given(signals())
@settings(max_examples=200)
def test_structured_json_round_trip(signal: Signal) -> None:
    again = Signal.from_structured_json(signal.to_structured_json())
    assert again == signal
    assert type(again.data) is type(signal.data)
    assert again.time == signal.time
    if signal.time is not None:
        assert again.time is not None and again.time.utcoffset() == signal.time.utcoffset()


@given(signals(ext_values=ce_text))
@settings(max_examples=200)
def test_binary_http_round_trip(signal: Signal) -> None:
    headers, body = signal.to_binary_http()
    assert all(value.isascii() and value.isprintable() for value in headers.values())
    again = Signal.from_binary_http(headers, body)
    expected = signal
    if signal.datacontenttype is None and signal.data is not None:
        expected = attrs.evolve(signal, datacontenttype="application/json")
    assert again == expected
    assert type(again.data) is type(signal.data)


@given(signals())
@settings(max_examples=200)
def test_message_payload_round_trip(signal: Signal) -> None:
    payload = signal.to_message_payload()
    assert Signal.from_message_payload(payload) == signal
    wired = decode_value(encode_value(payload))
    again = Signal.from_message_payload(wired)
    assert again == signal
    assert type(again.data) is type(signal.data)
    if signal.time is not None:
        assert again.time is not None and again.time.utcoffset() == signal.time.utcoffset()


def test_message_payload_shape() -> None:
    signal = Signal.new("a", "/s", b"\x00", time=T0, id="i", trace_id="t")
    assert signal.to_message_payload() == {
        "specversion": "1.0",
        "id": "i",
        "source": "/s",
        "type": "a",
        "time": "2024-05-01T12:30:15.123456+00:00",
        "jidotraceid": "t",
        "data": b"\x00",
    }
    payload = signal.to_message_payload() | {"time": T0}
    assert Signal.from_message_payload(payload) == signal


def test_time_offsets() -> None:
    plus_0530 = dt.timezone(dt.timedelta(hours=5, minutes=30))
    signal = Signal.new("a", "/s", time=dt.datetime(2024, 1, 1, 10, 0, tzinfo=plus_0530))
    assert json.loads(signal.to_structured_json())["time"] == "2024-01-01T10:00:00+05:30"
    # RFC 3339 offsets are whole minutes: other offsets are written in UTC.
    odd = dt.timezone(dt.timedelta(minutes=19, seconds=32))
    signal = Signal.new("a", "/s", time=dt.datetime(1930, 1, 1, 0, 19, 32, tzinfo=odd))
    assert json.loads(signal.to_structured_json())["time"] == "1930-01-01T00:00:00Z"
    assert Signal.from_structured_json(signal.to_structured_json()) == signal
    assert Signal.from_message_payload(signal.to_message_payload()) == signal


def test_binary_body_by_content_type() -> None:
    def body_of(data: Any, content_type: str | None) -> bytes:
        return Signal.new("a", "/s", data, datacontenttype=content_type).to_binary_http()[1]

    assert body_of("hi", "application/json") == b'"hi"'
    assert body_of("hi", None) == b'"hi"'
    assert body_of("hi", "text/plain") == b"hi"
    assert body_of("hi", "application/octet-stream") == b"hi"
    assert body_of(b"\x01", None) == b"\x01"
    assert body_of(None, "text/plain") == b""
    headers, _ = Signal.new("a", "/s", b"\x01").to_binary_http()
    assert "content-type" not in headers
    with pytest.raises(InvalidMessage, match="no binary-mode form"):
        body_of({"a": 1}, "text/plain")

    def read(body: bytes, content_type: str | None) -> Any:
        headers = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        return Signal.from_binary_http(headers, body).data

    assert read(b"", "application/json") is None
    assert read(b"[1]", None) == [1]
    assert read(b"[1]", "APPLICATION/JSON") == [1]
    assert read(b"[1]", "text/plain") == "[1]"
    assert read(b"[1]", "application/octet-stream") == b"[1]"
    assert read(b"\xff", "application/json") == b"\xff"
    assert read(b"\xff", "text/plain") == b"\xff"
    assert read(b"oops", "application/json") == "oops"


# -- invalid input -------------------------------------------------------------------

GOOD = {"specversion": "1.0", "id": "1", "source": "/s", "type": "t"}


def structured(**changes: Any) -> bytes:
    obj = GOOD | changes
    return json.dumps({k: v for k, v in obj.items() if v is not ...}).encode()


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (structured(id=...), "lacks the required attribute 'id'"),
        (structured(source=...), "lacks the required attribute 'source'"),
        (structured(type=None), "lacks the required attribute 'type'"),
        (structured(specversion=...), "lacks the required attribute 'specversion'"),
        (structured(specversion="0.3"), "unsupported specversion '0.3'"),
        (structured(specversion=1.0), "unsupported specversion 1.0"),
        (structured(id=""), "'id' must be a non-empty string"),
        (structured(id=7), "'id' must be a string, not int"),
        (structured(type=["a"]), "'type' must be a string, not list"),
        (structured(subject=""), "'subject' must be a non-empty string"),
        (structured(subject="a\nb"), "U\\+000A"),
        (structured(subject="\ufffe"), "U\\+FFFE"),
        (structured(source="a b"), "'source' must be a URI-reference"),
        (structured(source="1a:b"), "invalid scheme"),
        (structured(source="/a#b#c"), "more than one '#'"),
        (structured(dataschema="/relative"), "absolute URI"),
        (structured(datacontenttype="json"), "must be a media type"),
        (structured(time="2024-05-01 12:00:00Z"), "RFC 3339"),
        (structured(time="2024-05-01T12:00:00"), "RFC 3339"),
        (structured(time="2024-02-30T12:00:00Z"), "not a valid date-time"),
        (structured(time="2016-12-31T23:59:60Z"), "leap seconds"),
        (structured(time="2024-05-01T12:00:00+24:00"), "invalid UTC offset"),
        (structured(time=1714564800), "must be an RFC 3339 string, not int"),
        (structured(Tenant="x"), "lower-case ASCII letters and digits"),
        (structured(ten_ant="x"), "lower-case ASCII letters and digits"),
        (structured(ext=1.5), "not a fractional number"),
        (structured(ext=[1]), "string, boolean or integer, not list"),
        (structured(ext=2**31), "fit in 32 bits"),
        (structured(ext=""), "'ext' must be a non-empty string"),
        (structured(data=1, data_base64="AA=="), "must not both be present"),
        (structured(data_base64="A"), "not valid base64"),
        (structured(data_base64="A!=="), "not valid base64"),
        (structured(data_base64=5), "'data_base64' must be a string"),
        (
            b'{"specversion": "1.0", "id": "1", "id": "2", "source": "/s", "type": "t"}',
            "more than once",
        ),
        (b'{"specversion": "1.0"', "not valid JSON"),
        (b"[1, 2]", "must be a JSON object, not list"),
        (b"", "not valid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (structured()[:-1] + b',"data": NaN}', "NaN is not valid JSON"),
        (structured()[:-1] + b',"data": 1e999}', "JSON has no NaN or infinity"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply|not valid JSON"),
    ],
)
def test_invalid_structured(body: bytes, match: str) -> None:
    with pytest.raises(InvalidMessage, match=match) as info:
        Signal.from_structured_json(body)
    assert str(info.value).startswith("invalid CloudEvent: ")
    assert isinstance(info.value, ValueError)


def test_oversize() -> None:
    big = structured(data="x" * MAX_SIGNAL_SIZE)
    with pytest.raises(InvalidMessage, match="more than the limit"):
        Signal.from_structured_json(big)
    signal = Signal.new("a", "/s", "x" * MAX_SIGNAL_SIZE)
    with pytest.raises(InvalidMessage, match="more than the limit"):
        signal.to_structured_json()
    with pytest.raises(InvalidMessage, match="more than the limit"):
        signal.to_binary_http()
    headers = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t"}
    with pytest.raises(InvalidMessage, match="more than the limit"):
        Signal.from_binary_http(headers, b"x" * (MAX_SIGNAL_SIZE + 1))
    assert (
        Signal.from_structured_json(big, max_size=2 * MAX_SIGNAL_SIZE).data == "x" * MAX_SIGNAL_SIZE
    )
    small = Signal.new("a", "/s", "x" * 100)
    with pytest.raises(InvalidMessage, match="more than the limit of 50"):
        small.to_structured_json(max_size=50)


BINARY = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t"}


@pytest.mark.parametrize(
    ("headers", "match"),
    [
        ({}, "no 'ce-' headers"),
        ({"content-type": "application/json"}, "no 'ce-' headers"),
        (BINARY | {"ce-specversion": "0.3"}, "unsupported specversion"),
        ({k: v for k, v in BINARY.items() if k != "ce-source"}, "required attribute 'source'"),
        (BINARY | {"CE-ID": "2"}, "appears more than once"),
        (BINARY | {"ce-datacontenttype": "text/plain"}, "content-type"),
        (BINARY | {"ce-x-y": "1"}, "lower-case ASCII letters and digits"),
        (BINARY | {"ce-data": "1"}, "'data' is reserved"),
        (BINARY | {"ce-subject": "%FF"}, "not percent-encoded UTF-8"),
        (BINARY | {"ce-subject": "a%0Ab"}, "U\\+000A"),
        (BINARY | {"ce-time": "yesterday"}, "RFC 3339"),
        (BINARY | {"content-type": "nonsense"}, "media type"),
    ],
)
def test_invalid_binary(headers: dict[str, str], match: str) -> None:
    with pytest.raises(InvalidMessage, match=match):
        Signal.from_binary_http(headers, b"")


def test_binary_header_names_are_case_insensitive() -> None:
    headers = {k.upper(): v for k, v in BINARY.items()} | {"Content-Type": "text/plain"}
    signal = Signal.from_binary_http(headers | {"Ce-Tenant": "a%20b"}, b"hi")
    assert (signal.id, signal.type, signal.datacontenttype) == ("1", "t", "text/plain")
    assert signal.extensions == {"tenant": "a b"}
    assert signal.data == "hi"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"source": ""}, "'source' must be a non-empty string"),
        ({"type": ""}, "'type' must be a non-empty string"),
        ({"specversion": "0.3"}, "unsupported specversion"),
        ({"time": dt.datetime(2024, 1, 1)}, "timezone-aware"),
        ({"time": 0}, "datetime or an RFC 3339 string"),
        ({"extensions": {"Bad": 1}}, "lower-case"),
        ({"extensions": {"time": "x"}}, "'time' is reserved"),
        ({"extensions": {"data": "x"}}, "'data' is reserved"),
        ({"extensions": {"x": None}}, "not NoneType"),
        ({"extensions": {"x": 1.0}}, "not float"),
        ({"extensions": {"x": -(2**31) - 1}}, "32 bits"),
        ({"extensions": ["x"]}, "must be a mapping"),
        ({"data": {1: "a"}}, "non-string key"),
        ({"data": {"a": {1, 2}}}, r"data\['a'\] must be JSON-compatible .* not set"),
        ({"data": [float("nan")]}, r"data\[0\] is nan"),
        ({"data": "\ud800"}, "unpaired surrogate"),
        ({"data": dt.datetime.now(UTC)}, "not datetime"),
    ],
)
def test_invalid_construction(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidMessage, match=match):
        Signal(**({"source": "/s", "type": "t"} | kwargs))


def test_deep_data_is_refused() -> None:
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(InvalidMessage, match="nested too deeply"):
        Signal.new("a", "/s", deep)


def test_payload_errors() -> None:
    with pytest.raises(InvalidMessage, match="must be a mapping"):
        Signal.from_message_payload(["x"])  # type: ignore[arg-type]
    with pytest.raises(InvalidMessage, match="required attribute 'type'"):
        Signal.from_message_payload({"specversion": "1.0", "id": "1", "source": "/s"})
    with pytest.raises(InvalidMessage, match="timezone-aware"):
        Signal.from_message_payload(GOOD | {"time": "2024-01-01T00:00:00"})
    with pytest.raises(InvalidMessage, match="timezone-aware"):
        Signal.from_message_payload(GOOD | {"time": dt.datetime(2024, 1, 1)})


def test_data_base64_matches_sdk_encoding() -> None:
    signal = Signal.new("a", "/s", bytes(range(256)))
    obj = json.loads(signal.to_structured_json())
    assert "data" not in obj
    assert base64.b64decode(obj["data_base64"]) == bytes(range(256))


class MultiHeaders:
    """Headers as some frameworks give them: items() may repeat a name."""

    def __init__(self, *pairs: tuple[str, str]) -> None:
        self.pairs = pairs

    def items(self) -> tuple[tuple[str, str], ...]:
        return self.pairs


def test_other_headers_are_ignored() -> None:
    headers = MultiHeaders(
        *BINARY.items(), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("Cookie", "x" * 2_000_000)
    )
    signal = Signal.from_binary_http(headers, b"")  # type: ignore[arg-type]
    assert signal.id == "1"
    with pytest.raises(InvalidMessage, match="appears more than once"):
        Signal.from_binary_http(MultiHeaders(*BINARY.items(), ("ce-id", "2")), b"")  # type: ignore[arg-type]
    with pytest.raises(InvalidMessage, match="must be a mapping"):
        Signal.from_binary_http(["ce-id"], b"")  # type: ignore[arg-type]


def test_from_http_detects_the_mode() -> None:
    signal = Signal.new("order.created", "/shop", {"a": 1}, time=T0)
    headers, body = signal.to_binary_http()
    assert Signal.from_http(headers, body) == attrs.evolve(
        signal, datacontenttype="application/json"
    )
    structured = signal.to_structured_json()
    assert Signal.from_http({"Content-Type": "application/cloudevents+json"}, structured) == signal
    assert Signal.from_http({}, structured) == signal
    message = ce_http.to_structured_event(CloudEvent({"type": "t", "source": "/s"}, {"x": 1}))
    assert Signal.from_http(message.headers, message.body).data == {"x": 1}
    message = ce_http.to_binary_event(CloudEvent({"type": "t", "source": "/s"}, {"x": 1}))
    assert Signal.from_http(message.headers, message.body).data == {"x": 1}
    with pytest.raises(InvalidMessage, match="neither binary mode"):
        Signal.from_http({"content-type": "application/cloudevents-batch+json"}, b"[]")
    with pytest.raises(InvalidMessage, match="from_structured_json"):
        Signal.from_binary_http({"content-type": "application/cloudevents+json"}, structured)
