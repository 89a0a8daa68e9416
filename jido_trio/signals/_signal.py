"""Signals: CloudEvents 1.0 events as frozen values, with their wire forms.

A :class:`Signal` is one CloudEvent (spec 1.0.2). It converts to and from

* the structured JSON form (``application/cloudevents+json``, JSON event format
  1.0): :meth:`Signal.to_structured_json` / :meth:`Signal.from_structured_json`;
* the binary HTTP content mode (``ce-*`` headers, the data as the body):
  :meth:`Signal.to_binary_http` / :meth:`Signal.from_binary_http`;
* a plain dict for jido_trio's msgpack envelope:
  :meth:`Signal.to_message_payload` / :meth:`Signal.from_message_payload`.

Both wire forms are read and written the way the official ``cloudevents``
Python SDK (2.x, ``cloudevents.core``) reads and writes them; the tests run
the SDK against our output and our parser against the SDK's output. Anything
that is not a valid CloudEvent raises :class:`~jido_trio.InvalidMessage`.

jido_trio keeps its trace context and causation chain in three extension
attributes (names follow the spec's naming rule: ``[a-z0-9]``, at most 20):

* ``jidotraceid`` (:data:`TRACE_ID_EXTENSION`): the trace the signal belongs to;
* ``jidocausationid`` (:data:`CAUSATION_ID_EXTENSION`): id of the instruction
  or signal that caused this one;
* ``jidocorrelationid`` (:data:`CORRELATION_ID_EXTENSION`): the conversation id.

W3C trace context from the CloudEvents distributed-tracing extension
(``traceparent``, ``tracestate``) passes through as ordinary extensions.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable
from collections.abc import Mapping
from datetime import UTC
from datetime import datetime
from datetime import timedelta
from datetime import timezone
from types import MappingProxyType
from typing import Any
from typing import Final
from urllib.parse import quote
from urllib.parse import unquote_to_bytes

import attrs

from .._exceptions import InvalidMessage
from .._ids import new_id

__all__ = [
    "CAUSATION_ID_EXTENSION",
    "CORRELATION_ID_EXTENSION",
    "MAX_SIGNAL_SIZE",
    "SPECVERSION",
    "STRUCTURED_CONTENT_TYPE",
    "TRACE_ID_EXTENSION",
    "ExtensionValue",
    "Signal",
]

#: The only CloudEvents spec version this module reads and writes.
SPECVERSION: Final = "1.0"
#: Media type of the structured JSON form.
STRUCTURED_CONTENT_TYPE: Final = "application/cloudevents+json"
#: Largest encoded signal accepted or produced (structured JSON, or headers
#: plus body in binary mode), in bytes.
MAX_SIGNAL_SIZE: Final = 1 << 20

#: Extension attribute holding the jido trace id.
TRACE_ID_EXTENSION: Final = "jidotraceid"
#: Extension attribute holding the id of the instruction or signal that caused this one.
CAUSATION_ID_EXTENSION: Final = "jidocausationid"
#: Extension attribute holding the jido correlation (conversation) id.
CORRELATION_ID_EXTENSION: Final = "jidocorrelationid"

#: Value of an extension attribute: the CloudEvents ``String``, ``Boolean``
#: and ``Integer`` (signed 32-bit) types. Binary, URI and Timestamp values
#: travel as their canonical strings.
ExtensionValue = str | bool | int
#: What an HTTP body may be given as.
Body = bytes | bytearray | memoryview

_CONTEXT_ATTRIBUTES: Final = frozenset(
    {"specversion", "id", "source", "type", "subject", "time", "datacontenttype", "dataschema"}
)
_ATTRIBUTE_NAME = re.compile(r"[a-z0-9]+")
_INT32_MIN: Final = -(1 << 31)
_INT32_MAX: Final = (1 << 31) - 1

# CloudEvents ``String``: no C0/C1 control characters, no Unicode
# noncharacters, no unpaired surrogates (Python str holds no paired ones).
_BAD_STRING_CHARS = re.compile(
    "[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef"
    + "".join(f"{chr(plane << 16 | 0xFFFE)}{chr(plane << 16 | 0xFFFF)}" for plane in range(17))
    + "]"
)
_SURROGATE = re.compile("[\ud800-\udfff]")

# RFC 3986: the characters a URI reference may contain (percent-encoded
# octets checked separately), and the scheme.
_URI_CHARS = re.compile(r"(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})*")
_URI_SCHEME_PREFIX = re.compile(r"([^:/?#]*):")
_URI_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")

# RFC 2046 / RFC 9110 media type: token "/" token, then parameters.
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_MEDIA_TYPE = re.compile(rf"({_TOKEN})/({_TOKEN})[ \t]*(?:;.*)?", re.DOTALL)

# RFC 3339 date-time (T/Z case-insensitive per its ABNF).
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)

# HTTP binding 3.1.3.2: printable ASCII except space, '"' and '%' go as is.
_HEADER_SAFE: Final = "".join(c for c in map(chr, range(0x21, 0x7F)) if c not in ' "%')
_CE_PREFIX: Final = "ce-"
_CONTENT_TYPE: Final = "content-type"
_DEFAULT_DATA_CONTENT_TYPE: Final = "application/json"

_JSON_DUMPS_OPTIONS: Final[dict[str, Any]] = {
    "ensure_ascii": False,
    "allow_nan": False,
    "separators": (",", ":"),
}


def _invalid(message: str) -> InvalidMessage:
    return InvalidMessage(f"invalid CloudEvent: {message}")


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# -- attribute checks -------------------------------------------------------


def _check_string(name: str, value: object, *, required: bool = True) -> str:
    if not isinstance(value, str):
        raise _invalid(f"attribute {name!r} must be a string, not {type(value).__name__}")
    if not value:
        raise _invalid(f"attribute {name!r} must be a non-empty string")
    if value.isascii() and value.isprintable():
        return value  # the common case, and none of the forbidden characters
    bad = _BAD_STRING_CHARS.search(value)
    if bad is not None:
        raise _invalid(
            f"attribute {name!r} contains the character U+{ord(bad.group()):04X}, "
            "which CloudEvents strings must not contain"
        )
    return value


def _check_uri(name: str, value: object, *, absolute: bool) -> str:
    text = _check_string(name, value)
    kind = "URI" if absolute else "URI-reference"
    if _URI_CHARS.fullmatch(text) is None:
        raise _invalid(
            f"attribute {name!r} must be a {kind} (RFC 3986): {_describe(text)} has "
            "characters that must be percent-encoded"
        )
    if text.count("#") > 1:
        raise _invalid(f"attribute {name!r} must be a {kind} (RFC 3986): more than one '#'")
    prefix = _URI_SCHEME_PREFIX.match(text)
    if prefix is not None:
        if _URI_SCHEME.fullmatch(prefix.group(1)) is None:
            raise _invalid(
                f"attribute {name!r} must be a {kind} (RFC 3986): {_describe(text)} starts "
                "with an invalid scheme (a relative reference cannot have ':' in its "
                "first segment)"
            )
    elif absolute:
        raise _invalid(f"attribute {name!r} must be an absolute URI with a scheme")
    return text


def _check_media_type(value: object) -> str:
    text = _check_string("datacontenttype", value)
    if not text.isascii() or _MEDIA_TYPE.fullmatch(text) is None:
        raise _invalid(
            f"attribute 'datacontenttype' must be a media type like 'application/json' "
            f"(RFC 2046), got {_describe(text)}"
        )
    return text


def _check_extension_name(name: object) -> str:
    if not isinstance(name, str):
        raise _invalid(f"extension attribute names must be strings, not {type(name).__name__}")
    if _ATTRIBUTE_NAME.fullmatch(name) is None:
        raise _invalid(
            f"extension attribute name {name!r} must consist of lower-case ASCII "
            "letters and digits only"
        )
    if name in _CONTEXT_ATTRIBUTES or name == "data":
        raise _invalid(f"{name!r} is reserved and cannot be an extension attribute")
    return name


def _check_extension_value(name: str, value: object) -> ExtensionValue:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not _INT32_MIN <= value <= _INT32_MAX:
            raise _invalid(
                f"extension attribute {name!r}: integers must fit in 32 bits, got {value}"
            )
        return int(value)
    if isinstance(value, str):
        return _check_string(name, value)
    raise _invalid(
        f"extension attribute {name!r} must be a string, boolean or integer, "
        f"not {type(value).__name__}"
    )


def _extensions(value: Mapping[str, ExtensionValue] | None) -> Mapping[str, ExtensionValue]:
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, Mapping):
        raise _invalid(f"extensions must be a mapping, not {type(value).__name__}")
    checked: dict[str, ExtensionValue] = {}
    for name, item in value.items():
        checked[_check_extension_name(name)] = _check_extension_value(name, item)
    return MappingProxyType(checked)


# -- time ------------------------------------------------------------------


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _parse_rfc3339(text: str) -> datetime:
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise _invalid(
            f"attribute 'time' must be an RFC 3339 timestamp like "
            f"'2024-05-01T12:00:00Z', got {_describe(text)}"
        )
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = match.groups()
    if second == "60":
        raise _invalid("attribute 'time': leap seconds (':60') are not supported")
    if zulu is not None:
        tz = UTC
    else:
        if int(off_h) > 23 or int(off_m) > 59:
            raise _invalid(f"attribute 'time' has an invalid UTC offset: {_describe(text)}")
        offset = timedelta(hours=int(off_h), minutes=int(off_m))
        tz = timezone(-offset if sign == "-" else offset)
    # Digits beyond microseconds are truncated, as the SDK's parser does.
    micro = int(fraction[:6].ljust(6, "0")) if fraction else 0
    try:
        return datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tz
        )
    except ValueError as exc:
        raise _invalid(f"attribute 'time' is not a valid date-time: {exc}") from None


def _format_rfc3339(value: datetime) -> str:
    offset = value.utcoffset()
    if offset is not None and offset % timedelta(minutes=1):
        # RFC 3339 offsets are whole minutes (historical zones have seconds).
        try:
            value = value.astimezone(UTC)
        except OverflowError:
            raise _invalid("attribute 'time' cannot be written in UTC (out of range)") from None
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _time(value: datetime | str | None) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        return _parse_rfc3339(value)
    if not isinstance(value, datetime):
        raise _invalid(
            f"attribute 'time' must be a datetime or an RFC 3339 string, not {type(value).__name__}"
        )
    if value.utcoffset() is None:
        raise _invalid("attribute 'time' must be timezone-aware")
    return value


# -- data ------------------------------------------------------------------


def _json_value(value: Any, where: str) -> Any:
    # Exact type checks: subclasses (enums, str subclasses) would not survive
    # a round trip as themselves.
    kind = type(value)
    if value is None or kind is bool or kind is int:
        return value
    if kind is str:
        if not value.isascii() and _SURROGATE.search(value) is not None:
            raise _invalid(f"{where} contains an unpaired surrogate code point")
        return value
    if kind is float:
        if not math.isfinite(value):
            raise _invalid(f"{where} is {value!r}; JSON has no NaN or infinity")
        return value
    if kind is list or kind is tuple:
        return [_json_value(item, f"{where}[{index}]") for index, item in enumerate(value)]
    if kind is dict:
        result: dict[str, Any] = {}
        for key, item in value.items():
            if type(key) is not str:
                raise _invalid(f"{where} has a non-string key {_describe(key)}")
            if not key.isascii() and _SURROGATE.search(key) is not None:
                raise _invalid(f"{where} has a key with an unpaired surrogate code point")
            result[key] = _json_value(item, f"{where}[{key!r}]")
        return result
    raise _invalid(
        f"{where} must be JSON-compatible (None, bool, int, float, str, list, dict) "
        f"or bytes, not {kind.__name__}"
    )


def _data(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    try:
        return _json_value(value, "data")
    except RecursionError:
        raise _invalid("data is nested too deeply") from None


def _media_kind(content_type: str | None) -> str:
    """``"json"``, ``"text"`` or ``"binary"``: how data of this type is carried."""
    if content_type is None:
        return "json"
    main, _, params = content_type.partition(";")
    top, _, sub = main.strip().lower().partition("/")
    if top in ("application", "text") and (sub == "json" or sub.endswith("+json")):
        return "json"
    if top == "text" or sub == "xml" or sub.endswith("+xml") or "charset=" in params.lower():
        return "text"
    return "binary"


# -- JSON input --------------------------------------------------------------


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _value in pairs:
            if key in seen:
                raise _invalid(f"JSON object has the key {key!r} more than once")
            seen.add(key)
    return result


def _reject_constant(name: str) -> Any:
    raise _invalid(f"{name} is not valid JSON")


def _loads(data: bytes, what: str) -> Any:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _invalid(f"{what} is not UTF-8: {exc}") from None
    try:
        return _parse_json(text, what)
    except InvalidMessage:
        raise
    except ValueError as exc:  # JSONDecodeError, and the int digit limit
        raise _invalid(f"{what} is not valid JSON: {exc}") from None


def _parse_json(text: str, what: str) -> Any:
    """``text`` parsed as JSON, refusing duplicate keys, NaN and infinities.

    :raises InvalidMessage: refused, or nested too deeply.
    :raises ValueError: not JSON (the caller says what that means).
    """
    try:
        return json.loads(
            text, object_pairs_hook=_no_duplicate_keys, parse_constant=_reject_constant
        )
    except RecursionError:
        raise _invalid(f"{what} is nested too deeply") from None


def _dumps(value: Any) -> bytes:
    try:
        return json.dumps(value, **_JSON_DUMPS_OPTIONS).encode("utf-8")
    except (ValueError, RecursionError) as exc:
        raise _invalid(f"cannot encode as JSON: {exc}") from None


def _check_size(size: int, max_size: int, what: str) -> None:
    if size > max_size:
        raise _invalid(f"{what} is {size} bytes, more than the limit of {max_size}")


def _as_bytes(data: bytes | bytearray | memoryview | str, what: str) -> bytes:
    if isinstance(data, str):
        return data.encode("utf-8", "surrogatepass")
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    raise _invalid(f"{what} must be bytes, not {type(data).__name__}")


# -- the value ---------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Signal:
    """One CloudEvents 1.0 event.

    Build one with :meth:`new` (or the keyword constructor), change it with
    :func:`attrs.evolve`. Every attribute is checked against the spec when the
    value is made, so a ``Signal`` is always a valid CloudEvent; a bad one raises
    :class:`~jido_trio.InvalidMessage`.

    :param specversion: always ``"1.0"``.
    :param id: unique per ``source``; a time-sortable jido id when omitted.
    :param source: URI-reference of the context the event happened in
        (e.g. ``"/nodes/n1/agents/billing"``, ``"urn:jido:node:n1"``).
    :param type: event type, by convention dot-separated segments
        (``"order.created"``); routers match on those segments.
    :param subject: what the event is about, within ``source``; ``None`` if absent.
    :param time: when it happened, timezone-aware (an RFC 3339 string is also
        accepted); defaults to now in UTC. ``None`` means absent.
    :param datacontenttype: media type of ``data``; ``None`` means absent, which
        the JSON format reads as ``application/json``.
    :param dataschema: absolute URI of the schema ``data`` adheres to.
    :param data: a JSON-compatible value (``None``, bool, int, float, str, list,
        dict with str keys; tuples become lists) or ``bytes``. ``None`` means no data.
    :param extensions: extension attributes, name to str, bool or 32-bit int.
        Names are lower-case ASCII letters and digits and may not reuse a context
        attribute name or ``data``; the spec recommends at most 20 characters.
    """

    specversion: str = SPECVERSION
    id: str = attrs.field(factory=new_id)
    source: str
    type: str
    subject: str | None = None
    time: datetime | None = attrs.field(factory=_utc_now, converter=_time)
    datacontenttype: str | None = None
    dataschema: str | None = None
    extensions: Mapping[str, ExtensionValue] = attrs.field(
        factory=dict, converter=_extensions, hash=False
    )
    data: Any = attrs.field(default=None, converter=_data, hash=False)

    def __attrs_post_init__(self) -> None:
        if self.specversion != SPECVERSION:
            raise _invalid(
                f"unsupported specversion {_describe(self.specversion)}; only {SPECVERSION!r} is supported"
            )
        _check_string("id", self.id)
        _check_uri("source", self.source, absolute=False)
        _check_string("type", self.type)
        if self.subject is not None:
            _check_string("subject", self.subject)
        if self.datacontenttype is not None:
            _check_media_type(self.datacontenttype)
        if self.dataschema is not None:
            _check_uri("dataschema", self.dataschema, absolute=True)

    # -- construction -------------------------------------------------------

    @classmethod
    def new(
        cls,
        type: str,
        source: str,
        data: Any = None,
        *,
        id: str | None = None,
        subject: str | None = None,
        time: datetime | str | None = None,
        datacontenttype: str | None = None,
        dataschema: str | None = None,
        extensions: Mapping[str, ExtensionValue] | None = None,
        trace_id: str | None = None,
        causation_id: str | None = None,
        correlation_id: str | None = None,
    ) -> Signal:
        """Make a signal; ``id`` defaults to a new jido id and ``time`` to now (UTC).

        ``trace_id``, ``causation_id`` and ``correlation_id`` set the
        ``jidotraceid``, ``jidocausationid`` and ``jidocorrelationid``
        extensions (and win over the same names in ``extensions``).
        """
        merged: dict[str, ExtensionValue] = dict(extensions or {})
        for name, value in (
            (TRACE_ID_EXTENSION, trace_id),
            (CAUSATION_ID_EXTENSION, causation_id),
            (CORRELATION_ID_EXTENSION, correlation_id),
        ):
            if value is not None:
                merged[name] = value
        return cls(
            id=new_id() if id is None else id,
            source=source,
            type=type,
            subject=subject,
            time=_utc_now() if time is None else time,
            datacontenttype=datacontenttype,
            dataschema=dataschema,
            extensions=merged,
            data=data,
        )

    # -- jido extensions ------------------------------------------------------

    @property
    def trace_id(self) -> str | None:
        """The ``jidotraceid`` extension, or ``None``."""
        return _str_or_none(self.extensions.get(TRACE_ID_EXTENSION))

    @property
    def causation_id(self) -> str | None:
        """The ``jidocausationid`` extension, or ``None``."""
        return _str_or_none(self.extensions.get(CAUSATION_ID_EXTENSION))

    @property
    def correlation_id(self) -> str | None:
        """The ``jidocorrelationid`` extension, or ``None``."""
        return _str_or_none(self.extensions.get(CORRELATION_ID_EXTENSION))

    # -- structured JSON --------------------------------------------------------

    def to_structured_json(self, *, max_size: int = MAX_SIGNAL_SIZE) -> bytes:
        """Encode as a JSON event (media type ``application/cloudevents+json``).

        Bytes data goes in ``data_base64``, anything else in ``data``; ``time``
        is RFC 3339 with ``Z`` for UTC; absent attributes are left out.
        """
        body = _dumps(self._attributes(_format_rfc3339, base64_data=True))
        _check_size(len(body), max_size, "encoded signal")
        return body

    @classmethod
    def from_structured_json(
        cls, data: bytes | bytearray | memoryview | str, *, max_size: int = MAX_SIGNAL_SIZE
    ) -> Signal:
        """Decode a JSON event; raise :class:`~jido_trio.InvalidMessage` if it is not valid."""
        raw = _as_bytes(data, "structured event")
        _check_size(len(raw), max_size, "structured event")
        obj = _loads(raw, "structured event")
        if not isinstance(obj, dict):
            raise _invalid(f"a structured event must be a JSON object, not {type(obj).__name__}")
        if obj.get("data") is not None and obj.get("data_base64") is not None:
            raise _invalid("'data' and 'data_base64' must not both be present")
        encoded = obj.pop("data_base64", None)
        if encoded is not None:
            obj["data"] = _b64decode(encoded)
        return cls._from_attributes(obj, native_time=False, what="structured event")

    # -- binary HTTP ----------------------------------------------------------

    def to_binary_http(self, *, max_size: int = MAX_SIGNAL_SIZE) -> tuple[dict[str, str], bytes]:
        """Encode for the HTTP binary content mode: ``(headers, body)``.

        Attributes become lower-case ``ce-<name>`` headers, percent-encoded as the
        HTTP binding requires; ``datacontenttype`` becomes ``content-type``. With
        no ``datacontenttype`` the implied ``application/json`` is written out
        for non-bytes data (the spec's SHOULD for changing formats).

        The body is the data: bytes as they are; for JSON media types the JSON
        text; otherwise a string in UTF-8. JSON-structured data (list, dict,
        numbers...) under a non-JSON media type has no binary form and raises
        :class:`~jido_trio.InvalidMessage`.
        """
        headers: dict[str, str] = {}
        content_type = self.datacontenttype
        if content_type is None and self.data is not None and not isinstance(self.data, bytes):
            content_type = _DEFAULT_DATA_CONTENT_TYPE
        for name, value in self._attributes(_format_rfc3339, base64_data=False).items():
            if name in ("data", "datacontenttype"):
                continue
            headers[_CE_PREFIX + name] = quote(_canonical_string(value), safe=_HEADER_SAFE)
        if content_type is not None:
            headers[_CONTENT_TYPE] = content_type
        body = self._binary_body(content_type)
        size = len(body) + sum(len(key) + len(value) for key, value in headers.items())
        _check_size(size, max_size, "encoded signal")
        return headers, body

    @classmethod
    def from_binary_http(
        cls, headers: Mapping[str, str], body: Body, *, max_size: int = MAX_SIGNAL_SIZE
    ) -> Signal:
        """Decode an HTTP binary content mode message (header names in any case).

        Extension values come back as strings (headers carry no types). The body
        is read by ``content-type`` (``application/json`` when absent): JSON
        types are parsed, falling back to text and then bytes as the SDK does;
        ``text/*``, XML types and types with a ``charset`` give a string (bytes if
        it is not UTF-8); other types give bytes. An empty body means no data.
        """
        raw_body = _as_bytes(body, "body")
        items = getattr(headers, "items", None)
        if items is None:
            raise _invalid(f"headers must be a mapping, not {type(headers).__name__}")
        size = len(raw_body)
        attributes: dict[str, Any] = {}
        content_type: str | None = None
        seen: set[str] = set()
        for key, value in items():
            lower = key.lower() if isinstance(key, str) else ""
            if lower != _CONTENT_TYPE and not lower.startswith(_CE_PREFIX):
                continue  # not ours: other headers may repeat or be large
            if not isinstance(value, str):
                raise _invalid(f"header {key!r} must have a string value")
            size += len(key) + len(value)
            if lower in seen:
                raise _invalid(f"header {key!r} appears more than once")
            seen.add(lower)
            if lower == _CONTENT_TYPE:
                content_type = value.strip() or None
                continue
            name = lower[len(_CE_PREFIX) :]
            if name == "data":
                raise _invalid("'data' is reserved and cannot be an extension attribute")
            if name == "datacontenttype":
                raise _invalid(
                    "binary mode carries datacontenttype in 'content-type', "
                    "not in 'ce-datacontenttype'"
                )
            attributes[name] = _percent_decode(key, value)
        _check_size(size, max_size, "binary event")
        if not attributes:
            raise _invalid(
                "no 'ce-' headers: not a binary-mode CloudEvent (a structured one, "
                f"content-type {STRUCTURED_CONTENT_TYPE}, goes to from_structured_json)"
            )
        if content_type is not None:
            attributes["datacontenttype"] = content_type
        attributes["data"] = _read_body(raw_body, content_type)
        return cls._from_attributes(attributes, native_time=False, what="binary event")

    @classmethod
    def from_http(
        cls, headers: Mapping[str, str], body: Body, *, max_size: int = MAX_SIGNAL_SIZE
    ) -> Signal:
        """Decode an HTTP message in either content mode, as the SDK's ``from_http``.

        Any ``ce-`` header means binary mode; otherwise the body must be a
        structured event (``content-type`` ``application/cloudevents+json``, or
        absent). Batches (``application/cloudevents-batch+json``) are refused.
        """
        items = getattr(headers, "items", None)
        if items is None:
            raise _invalid(f"headers must be a mapping, not {type(headers).__name__}")
        content_type = ""
        for key, value in items():
            lower = key.lower() if isinstance(key, str) else ""
            if lower.startswith(_CE_PREFIX):
                return cls.from_binary_http(headers, body, max_size=max_size)
            if lower == _CONTENT_TYPE and isinstance(value, str):
                content_type = value.partition(";")[0].strip().lower()
        if content_type not in ("", STRUCTURED_CONTENT_TYPE):
            raise _invalid(
                f"content-type {content_type!r} is neither binary mode ('ce-' headers) "
                f"nor structured mode ({STRUCTURED_CONTENT_TYPE})"
            )
        return cls.from_structured_json(body, max_size=max_size)

    # -- msgpack envelope -----------------------------------------------------

    def to_message_payload(self) -> dict[str, Any]:
        """A plain dict for a jido :class:`~jido_trio.Message` payload.

        The structured attributes with extensions at the top level, ``time`` as
        an ISO 8601 string (offset and microseconds kept) and ``data`` as is
        (bytes stay bytes: msgpack carries them natively).
        """
        return self._attributes(datetime.isoformat, base64_data=False)

    @classmethod
    def from_message_payload(cls, payload: Mapping[str, Any]) -> Signal:
        """Rebuild a signal from :meth:`to_message_payload` output.

        ``time`` may be an ISO 8601 string or an aware datetime.
        """
        if not isinstance(payload, Mapping):
            raise _invalid(f"a signal payload must be a mapping, not {type(payload).__name__}")
        return cls._from_attributes(dict(payload), native_time=True, what="signal payload")

    # -- helpers ----------------------------------------------------------------

    def _attributes(
        self, format_time: Callable[[datetime], str], *, base64_data: bool
    ) -> dict[str, Any]:
        result: dict[str, Any] = {
            "specversion": self.specversion,
            "id": self.id,
            "source": self.source,
            "type": self.type,
        }
        if self.subject is not None:
            result["subject"] = self.subject
        if self.time is not None:
            result["time"] = format_time(self.time)
        if self.datacontenttype is not None:
            result["datacontenttype"] = self.datacontenttype
        if self.dataschema is not None:
            result["dataschema"] = self.dataschema
        result.update(self.extensions)
        if self.data is not None:
            if base64_data and isinstance(self.data, bytes):
                result["data_base64"] = base64.b64encode(self.data).decode("ascii")
            else:
                result["data"] = self.data
        return result

    def _binary_body(self, content_type: str | None) -> bytes:
        data = self.data
        if data is None:
            return b""
        if isinstance(data, bytes):
            return data
        if _media_kind(content_type) == "json":
            return _dumps(data)
        if isinstance(data, str):
            return data.encode("utf-8")
        raise _invalid(
            f"data of type {type(data).__name__} has no binary-mode form under "
            f"datacontenttype {content_type!r}; use a JSON media type, str or bytes data, "
            "or the structured form"
        )

    @classmethod
    def _from_attributes(
        cls, attributes: dict[str, Any], *, native_time: bool, what: str
    ) -> Signal:
        # JSON format 2.2: a null attribute is the same as an absent one.
        attributes = {key: value for key, value in attributes.items() if value is not None}
        for name in ("specversion", "id", "source", "type"):
            if name not in attributes:
                raise _invalid(f"{what} lacks the required attribute {name!r}")
        specversion = attributes.pop("specversion")
        if specversion != SPECVERSION:
            raise _invalid(
                f"unsupported specversion {_describe(specversion)}; only {SPECVERSION!r} is supported"
            )
        fields: dict[str, Any] = {"data": attributes.pop("data", None)}
        for name in ("id", "source", "type", "subject", "datacontenttype", "dataschema"):
            if name in attributes:
                fields[name] = _check_string(name, attributes.pop(name))
        raw_time = attributes.pop("time", None)
        if isinstance(raw_time, str):
            fields["time"] = _parse_iso(raw_time) if native_time else _parse_rfc3339(raw_time)
        elif raw_time is None or (native_time and isinstance(raw_time, datetime)):
            fields["time"] = raw_time
        else:
            raise _invalid(
                f"attribute 'time' must be an RFC 3339 string, not {type(raw_time).__name__}"
            )
        for name, value in attributes.items():
            if isinstance(value, float):
                raise _invalid(
                    f"extension attribute {name!r} must be a string, boolean or integer, "
                    f"not a fractional number"
                )
        return cls(extensions=attributes, **fields)


def _str_or_none(value: ExtensionValue | None) -> str | None:
    return value if isinstance(value, str) else None


def _canonical_string(value: Any) -> str:
    # The spec's canonical string encodings: Boolean is "true"/"false".
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _parse_iso(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return _parse_rfc3339(text)
    if value.utcoffset() is None:
        raise _invalid("attribute 'time' must be timezone-aware")
    return value


def _b64decode(value: object) -> bytes:
    if not isinstance(value, str):
        raise _invalid(f"'data_base64' must be a string, not {type(value).__name__}")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error) as exc:
        raise _invalid(f"'data_base64' is not valid base64: {exc}") from None


def _percent_decode(key: str, value: str) -> str:
    try:
        return unquote_to_bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid(f"header {key!r} is not percent-encoded UTF-8: {_describe(value)}") from None


def _read_body(body: bytes, content_type: str | None) -> Any:
    if not body:
        return None
    kind = _media_kind(content_type)
    if kind == "json":
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return body
        try:
            return _parse_json(text, "body")
        except InvalidMessage:
            raise
        except ValueError:
            # The SDK writes str data under a JSON media type unquoted, and
            # reads a body that is not JSON as text: so do we.
            return text
    if kind == "text":
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            return body
    return body
