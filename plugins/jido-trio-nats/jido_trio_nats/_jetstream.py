"""What the engines of this plugin know of JetStream and nats-py, in one place.

- The headers and error codes of compare-and-set writes and of KV deletion
  markers.
- Which nats-py failures mean what to a jido_trio caller
  (:func:`jido_error`): no answer in time is :class:`~jido_trio.CallTimeout`,
  NATS out of reach (no connection, no JetStream responder) is
  :class:`~jido_trio.Unreachable`, and an error answer from the server (a
  bucket or stream gone, storage limits, a refused request) is
  :class:`~jido_trio.EngineError`.
- The KV helpers the engines share, all on the asyncio side (run them
  through :meth:`~jido_trio_nats._bridge.Bridge.run`): reading a subject's
  last message, compare-and-set publishes, listing a bucket.

A KV bucket ``B`` is the stream ``KV_B``; its key ``k`` is the subject
``$KV.B.k``, and a key's revision is the stream sequence of its last message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import NoReturn

import attrs
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy
from nats.js.api import ConsumerConfig
from nats.js.api import DeliverPolicy
from nats.js.kv import KeyValue

from jido_trio import CallTimeout
from jido_trio import EngineError
from jido_trio import JidoError
from jido_trio import Unreachable

__all__ = [
    "CONNECTION_ERRORS",
    "EXPECTED_LAST",
    "KV_OPERATION",
    "MARKER_REASON",
    "MSG_ID",
    "NATS_ERRORS",
    "NO_MESSAGE",
    "TIMEOUT_ERRORS",
    "TTL",
    "WRONG_LAST_SEQUENCE",
    "KvCurrent",
    "KvItem",
    "is_deletion",
    "jido_error",
    "kv_list",
    "kv_read",
    "kv_write",
    "listing_consumer",
    "publish_if_last",
    "raise_jido_error",
    "read_last",
]

log = logging.getLogger("jido_trio_nats")

# ---------------------------------------------------------------- headers and codes

#: Compare-and-set: publish only if the subject's last sequence is this one
#: (0: the subject has no message).
EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"
#: ``DEL`` or ``PURGE`` on a KV deletion marker.
KV_OPERATION = "KV-Operation"
#: On a marker the server placed itself (an expired key, say).
MARKER_REASON = "Nats-Marker-Reason"
#: Per-message time to live, in whole seconds (``"5"``) or with a unit.
TTL = "Nats-TTL"
#: Publish deduplication id: a repeat within the stream's window is dropped.
MSG_ID = "Nats-Msg-Id"
#: JetStream error code for "no message found" (the subject has none).
NO_MESSAGE = 10037
#: JetStream error codes for "the subject's last sequence is not the expected one".
WRONG_LAST_SEQUENCE = frozenset({10071, 10164})

# ---------------------------------------------------------------- failures

#: nats-py errors that mean "NATS cannot be reached right now".
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionDrainingError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.NoServersError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    # Nobody answered a JetStream request or a publish to a stream: JetStream
    # is off, or a stream is between leaders.
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    ConnectionError,
    OSError,
)
#: nats-py errors that mean "no answer in time".
TIMEOUT_ERRORS: tuple[type[BaseException], ...] = (nats.errors.TimeoutError, TimeoutError)
#: Everything a nats-py call may raise that means "NATS failed us".
NATS_ERRORS: tuple[type[BaseException], ...] = (
    nats.errors.Error,
    *CONNECTION_ERRORS,
    *TIMEOUT_ERRORS,
)


def jido_error(exc: BaseException, what: str) -> JidoError:
    """The jido_trio error for a nats-py failure while doing ``what``, with
    ``exc`` as its cause: :class:`CallTimeout` when NATS did not answer in
    time, :class:`Unreachable` when it cannot be reached right now,
    :class:`EngineError` when the server answered with an error."""
    error: JidoError
    if isinstance(exc, TIMEOUT_ERRORS):  # before OSError: nats' TimeoutError is one
        error = CallTimeout(f"{what}: NATS did not answer in time")
    elif isinstance(exc, CONNECTION_ERRORS):
        error = Unreachable(f"{what}: NATS is unreachable ({type(exc).__name__}: {exc})")
    else:
        error = EngineError(f"{what}: NATS failed the operation ({type(exc).__name__}: {exc})")
    error.__cause__ = exc
    return error


def raise_jido_error(exc: BaseException, what: str) -> NoReturn:
    """Raise :func:`jido_error` of ``exc``."""
    raise jido_error(exc, what) from exc


def is_deletion(headers: Mapping[str, str] | None) -> bool:
    """Whether a KV message with these headers is a deletion marker (``nats
    kv del`` / ``purge``, or one the server placed), not a value."""
    if not headers:
        return False
    return headers.get(KV_OPERATION) in ("DEL", "PURGE") or MARKER_REASON in headers


# ---------------------------------------------------------------- reads and writes


@attrs.frozen
class KvCurrent:
    """The last message of a subject: ``revision`` 0 when it has none,
    ``data`` ``None`` when that message is a deletion marker."""

    revision: int
    data: bytes | None
    timestamp: float = 0.0


async def read_last(
    js: JetStreamContext, stream: str, subject: str, *, direct: bool = False
) -> KvCurrent:
    """The last message of ``subject`` in ``stream`` (asyncio side).

    ``direct=False`` asks the stream leader, which sees every write
    acknowledged before; ``direct=True`` asks any replica (the stream must
    allow direct gets), which may lag.
    """
    try:
        msg = await js.get_msg(stream, subject=subject, direct=direct)
    except nats.js.errors.NotFoundError as exc:
        # A direct get's 404 carries no code; the leader says which "not found".
        if exc.err_code not in (None, NO_MESSAGE):
            raise  # the stream itself is gone, say: not "no such key"
        return KvCurrent(0, None)
    stamp = msg.time.timestamp() if msg.time is not None else 0.0
    revision = int(msg.seq or 0)
    if is_deletion(msg.headers):
        return KvCurrent(revision, None, stamp)
    return KvCurrent(revision, bytes(msg.data or b""), stamp)


async def publish_if_last(
    js: JetStreamContext,
    subject: str,
    data: bytes,
    *,
    last: int | None,
    headers: Mapping[str, str] | None = None,
) -> int | None:
    """Publish ``data`` if the subject's last sequence is ``last`` (0: it has
    none; ``None``: unconditionally); return its sequence, or ``None`` when
    the subject had moved on (asyncio side)."""
    sent = dict(headers or {})
    if last is not None:
        sent[EXPECTED_LAST] = str(last)
    try:
        ack = await js.publish(subject, data, headers=sent or None)
    except nats.js.errors.APIError as exc:
        if last is not None and exc.err_code in WRONG_LAST_SEQUENCE:
            return None
        raise
    return int(ack.seq)


async def kv_read(kv: KeyValue, key: str) -> KvCurrent:
    """Read the last message of ``key`` from the bucket's stream leader (asyncio side)."""
    return await read_last(kv._js, kv._stream, f"{kv._pre}{key}")


async def kv_write(
    kv: KeyValue, key: str, value: bytes, *, last: int, delete: bool = False
) -> int | None:
    """Write ``value`` under ``key`` if its last revision is ``last`` (0: absent);
    return the new revision, or ``None`` when the key moved on (asyncio side).

    With ``delete`` the write is a KV deletion marker carrying ``value``.
    """
    headers = {KV_OPERATION: "DEL"} if delete else None
    return await publish_if_last(kv._js, f"{kv._pre}{key}", value, last=last, headers=headers)


# ---------------------------------------------------------------- listing a bucket

#: Seconds a listing may go without a message before it is started again.
LIST_STALL = 1.0
#: Seconds an abandoned listing consumer lives on the server.
LIST_INACTIVE = 10.0


def listing_consumer(inbox: str, subjects: str, *, headers_only: bool) -> ConsumerConfig:
    """An ephemeral push consumer to ``inbox`` that delivers the last message
    of each subject matching ``subjects`` once, unacknowledged; the server
    removes it :data:`LIST_INACTIVE` seconds after its last use if its
    creator cannot delete it."""
    return ConsumerConfig(
        deliver_subject=inbox,
        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        ack_policy=AckPolicy.NONE,
        filter_subject=subjects,
        headers_only=headers_only or None,
        mem_storage=True,
        num_replicas=1,
        inactive_threshold=LIST_INACTIVE,
    )


@attrs.frozen
class KvItem:
    """One live key of a listing."""

    key: str
    revision: int
    data: bytes
    timestamp: float


async def kv_list(
    kv: KeyValue, *, headers_only: bool = False, timeout: float = 5.0
) -> list[KvItem]:
    """Every live key of the bucket with its last value, through one ephemeral
    push consumer (``last_per_subject``, no acks), in one asyncio call.

    Writes made while the listing runs may or may not be included. NATS may
    drop pushed messages under load; a listing with a gap in its consumer
    sequence (or that stalls) is started again.

    :raises Unreachable: no complete listing within ``timeout`` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    attempts = 0
    while True:
        attempts += 1
        received = await _kv_list_once(kv, headers_only, deadline)
        if received is not None:
            break
        if loop.time() >= deadline:
            raise Unreachable(
                f"listing bucket {kv._name!r}: no complete answer within {timeout}s "
                f"({attempts} attempts)"
            )
        log.warning("listing bucket %r lost messages; listing it again", kv._name)
    items: dict[str, KvItem] = {}
    for msg in received:
        key = msg.subject[len(kv._pre) :]
        if is_deletion(msg.headers):
            items.pop(key, None)
            continue
        meta = msg.metadata
        items[key] = KvItem(
            key=key,
            revision=meta.sequence.stream,
            data=b"" if headers_only else msg.data,
            timestamp=meta.timestamp.timestamp(),
        )
    return list(items.values())


async def _kv_list_once(kv: KeyValue, headers_only: bool, deadline: float) -> list[Msg] | None:
    """One listing: the messages in delivery order, or ``None`` if some were lost."""
    js = kv._js
    nc = js._nc
    loop = asyncio.get_running_loop()
    inbox = nc.new_inbox()
    received: list[Msg] = []
    done: asyncio.Future[None] = loop.create_future()
    expected: list[int] = []  # set once the consumer is created

    async def on_msg(msg: Msg) -> None:
        try:
            received.append(msg)
            meta = msg.metadata
            if not done.done() and (
                meta.num_pending == 0 or (expected and len(received) >= expected[0])
            ):
                done.set_result(None)
        except Exception as exc:  # never raise into nats-py
            if not done.done():
                done.set_exception(exc)

    sub = await nc.subscribe(inbox, cb=on_msg)
    name: str | None = None
    try:
        info = await js.add_consumer(
            kv._stream,
            listing_consumer(inbox, f"{kv._pre}>", headers_only=headers_only),
            timeout=max(0.1, deadline - loop.time()),
        )
        name = info.name
        delivered = info.delivered.consumer_seq if info.delivered is not None else 0
        total = int(info.num_pending or 0) + int(delivered or 0)
        expected.append(total)
        if (total == 0 or len(received) >= total) and not done.done():
            done.set_result(None)
        seen = -1
        while not done.done():
            if len(received) == seen or loop.time() >= deadline:
                return None  # stalled: the message that would finish it was lost
            seen = len(received)
            wait = min(LIST_STALL, max(0.0, deadline - loop.time()))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(done), wait)
        done.result()
    finally:
        await sub.unsubscribe()
        if name is not None:
            # No reply wanted: the consumer goes away on its own if this is lost.
            await nc.publish(f"{js._prefix}.CONSUMER.DELETE.{kv._stream}.{name}")
    if any(m.metadata.sequence.consumer != i for i, m in enumerate(received, 1)):
        return None
    return received
