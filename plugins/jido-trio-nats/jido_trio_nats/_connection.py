"""One NATS connection per node, shared by the node's four engines.

The four factories of a node (state, registry, coordination, transport) each
call :func:`open_connection`; the first opens the trio-asyncio loop and the
client, the others share it, and it closes when the first one exits (the node
exits its engines in reverse order of opening, so that one exits last).

Closing never hangs and never raises: every step (each subscription, the
client, the asyncio tasks left on the loop) gets ``close_timeout`` seconds,
and what fails is logged. The client stops reconnecting before it is closed,
so a reconnection loop that misses its cancellation still ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Mapping
from contextlib import asynccontextmanager
from typing import Any
from typing import ParamSpec
from typing import TypeVar

import attrs
import nats
import nats.errors
import nats.js.errors
import trio
from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig
from nats.js.api import StorageType
from nats.js.api import StreamConfig
from nats.js.kv import KeyValue

from jido_trio import Config
from jido_trio import EngineError
from jido_trio import JidoError
from jido_trio import Unreachable

from ._bridge import Bridge
from ._bridge import open_bridge
from ._jetstream import NATS_ERRORS
from ._jetstream import KvItem
from ._jetstream import kv_list
from ._jetstream import raise_jido_error
from ._options import NatsOptions

__all__ = ["NatsConnection", "open_connection"]

P = ParamSpec("P")
T = TypeVar("T")

log = logging.getLogger("jido_trio_nats")


@attrs.define(eq=False)
class NatsConnection:
    """A node's client connection, its JetStream context and its buckets."""

    options: NatsOptions
    node_name: str
    bridge: Bridge
    nc: Client
    js: JetStreamContext
    _buckets: dict[str, KeyValue] = attrs.field(factory=dict)
    _streams: set[str] = attrs.field(factory=set)
    _setup_lock: trio.Lock = attrs.field(factory=trio.Lock)

    async def run(
        self,
        what: str,
        fn: Callable[P, Awaitable[T]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run ``fn`` on the asyncio side; nats-py failures become
        :class:`Unreachable`, :class:`EngineError` or :class:`CallTimeout`
        naming ``what`` (see :func:`~jido_trio_nats._jetstream.jido_error`),
        and anything else nats-py raises :class:`EngineError`: no raw client
        exception reaches a caller."""
        try:
            return await self.bridge.run(fn, *args, **kwargs)
        except JidoError:
            raise
        except NATS_ERRORS as exc:
            raise_jido_error(exc, what)
        except Exception as exc:
            log.debug("%s: unexpected failure", what, exc_info=True)
            raise EngineError(
                f"{what}: the NATS client failed ({type(exc).__name__}: {exc})"
            ) from exc

    async def close_subscription(self, subs: Subscription | list[Subscription], what: str) -> None:
        """Unsubscribe ``subs`` within ``close_timeout`` (shielded from
        cancellation); a failure is logged, not raised: the server drops the
        interest with the connection anyway."""
        subs = subs if isinstance(subs, list) else [subs]
        if not subs:
            return

        async def unsubscribe_all() -> None:
            for sub in subs:
                await sub.unsubscribe()

        with trio.CancelScope(shield=True), trio.move_on_after(self.options.close_timeout):
            try:
                await self.run(f"closing {what}", unsubscribe_all)
            except JidoError as exc:
                log.debug("closing %s: %s", what, exc)

    async def list_bucket(
        self, what: str, kv: KeyValue, *, headers_only: bool = False
    ) -> list[KvItem]:
        """Every live key of the bucket ``kv`` (see
        :func:`~jido_trio_nats._jetstream.kv_list`), within ``request_timeout``.

        :raises Unreachable: no complete listing in time, or NATS cannot be reached.
        :raises EngineError: JetStream answered with an error.
        """
        return await self.run(
            what, kv_list, kv, headers_only=headers_only, timeout=self.options.request_timeout
        )

    def check_connected(self, what: str) -> None:
        """Fail fast while disconnected (nats-py would buffer the request and
        time out only after ``request_timeout``).

        :raises Unreachable: not connected right now.
        """
        if not self.connected:
            raise Unreachable(f"{what}: not connected to NATS")

    @property
    def namespace(self) -> str:
        return self.options.namespace

    def subject(self, *tokens: str) -> str:
        """A subject under this namespace: ``<namespace>.<token>...``."""
        return ".".join((self.namespace, *tokens))

    def name(self, kind: str) -> str:
        """A bucket or stream name under this namespace."""
        return f"{self.namespace}_{kind}"

    @property
    def storage(self) -> StorageType:
        return StorageType.MEMORY if self.options.storage == "memory" else StorageType.FILE

    async def kv(self, kind: str, *, ttl: float | None = None, history: int = 1) -> KeyValue:
        """The bucket ``<namespace>_<kind>``, created on first use (idempotent
        across nodes: the same config from every node).

        :raises Unreachable: NATS (or JetStream: nats-server needs ``-js``)
            cannot be reached.
        :raises EngineError: JetStream refused to create or find the bucket.
        :raises CallTimeout: JetStream did not answer in time.
        """
        bucket = self._buckets.get(kind)
        if bucket is not None:
            await trio.lowlevel.checkpoint()
            return bucket
        async with self._setup_lock:
            bucket = self._buckets.get(kind)
            if bucket is None:
                config = KeyValueConfig(
                    bucket=self.name(kind),
                    history=history,
                    ttl=ttl,
                    storage=self.storage,
                    replicas=self.options.replicas,
                    direct=True,
                )
                made = await self.run(
                    f"creating bucket {self.name(kind)!r} (is JetStream enabled? "
                    "nats-server needs -js)",
                    _unless_exists,
                    self.js.create_key_value,
                    config,
                )
                # None: made by an older version with another config: use it as it is.
                if made is None:
                    made = await self._existing(self.js.key_value, self.name(kind))
                await self._wait_for_leader(f"KV_{self.name(kind)}")
                self._buckets[kind] = made
                return made
            return bucket

    async def nodes(self) -> KeyValue:
        """The membership bucket: one key per live node (see
        :mod:`jido_trio_nats._membership`). The server does not expire its
        keys by age: peers decide when a lease lapsed."""
        return await self.kv("nodes")

    async def stream(self, kind: str, subjects: list[str], **config: Any) -> str:
        """The stream ``<namespace>_<kind>``, created on first use; returns its name.

        :raises Unreachable: NATS (or JetStream) cannot be reached.
        :raises EngineError: JetStream refused to create or find the stream.
        :raises CallTimeout: JetStream did not answer in time.
        """
        name = self.name(kind)
        if name in self._streams:
            await trio.lowlevel.checkpoint()
            return name
        async with self._setup_lock:
            if name not in self._streams:
                stream_config = StreamConfig(
                    name=name,
                    subjects=subjects,
                    storage=self.storage,
                    num_replicas=self.options.replicas,
                    allow_direct=True,
                    **config,
                )
                made = await self.run(
                    f"creating stream {name!r}", _unless_exists, self.js.add_stream, stream_config
                )
                if made is None:
                    await self._existing(self.js.stream_info, name)
                await self._wait_for_leader(name)
                self._streams.add(name)
        return name

    async def _existing(self, get: Callable[[str], Awaitable[T]], name: str) -> T:
        """``get(name)`` of a bucket or stream whose creation was refused as
        existing. On a cluster, one another node is creating this very moment
        may not be found for a moment yet: retried until ``request_timeout``."""
        limit = self.options.request_timeout

        async def poll() -> T:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + limit
            while True:
                try:
                    return await get(name)
                except nats.js.errors.NotFoundError:
                    if loop.time() > deadline:
                        raise
                    await asyncio.sleep(0.05)

        return await self.run(f"opening {name!r}", poll)

    async def _wait_for_leader(self, stream: str) -> None:
        """Wait until a new replicated stream has elected its leader: until
        then, writes to it get no answer.

        A stream that several nodes create at the same moment on a fresh
        cluster is "not found" for a moment after its creation was
        acknowledged (the server asked has not applied the assignment yet):
        that is waited out like a missing leader.

        :raises Unreachable: the stream was still not found after ``3 * request_timeout``.
        """
        js = self.js
        # A fresh cluster elects the leaders of every new stream at once: on
        # a loaded machine that takes longer than one request.
        limit = 3 * self.options.request_timeout

        async def poll() -> None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + limit
            while True:
                try:
                    info = await js.stream_info(stream)
                except nats.js.errors.NotFoundError as exc:
                    if loop.time() > deadline:
                        raise Unreachable(
                            f"stream {stream!r} was created but not found within {limit:g}s"
                        ) from exc
                else:
                    if info.cluster is None or info.cluster.leader or loop.time() > deadline:
                        return
                await asyncio.sleep(0.05)

        await self.run(f"waiting for stream {stream!r}", poll)

    @property
    def connected(self) -> bool:
        return bool(self.nc.is_connected)


async def _unless_exists(create: Callable[[Any], Awaitable[T]], config: Any) -> T | None:
    """``await create(config)``, or ``None`` when JetStream refuses it because
    the bucket or stream exists with another configuration (asyncio side)."""
    try:
        return await create(config)
    except nats.js.errors.BadRequestError:
        return None


@attrs.define(eq=False)
class _Shared:
    connection: NatsConnection
    users: int = 1


_shared: dict[tuple[str, NatsOptions], _Shared] = {}


class _Client(Client):
    """nats-py's client, refusing to send its CONNECT (and credentials) in
    plaintext when TLS is required.

    nats-py upgrades a connection to TLS only when the server's INFO asks for
    it, even for a ``tls://`` URL with a TLS context: a misconfigured server,
    or anyone in the middle answering for it, would otherwise get the
    password or token in clear. With ``tls_handshake_first`` no byte is sent
    before TLS anyway.
    """

    require_tls = False

    def _connect_command(self) -> bytes:
        if self.require_tls and not _uses_tls(self._transport):
            raise nats.errors.Error(
                "nats: TLS is configured but the server did not start TLS; credentials not sent"
            )
        command: bytes = super()._connect_command()
        return command


def _uses_tls(transport: Any) -> bool:
    writer = getattr(transport, "_io_writer", None)
    return writer is not None and writer.get_extra_info("ssl_object") is not None


async def _connect(
    options: NatsOptions, client_name: str, seen: list[Exception] | None = None
) -> Client:
    async def error_cb(exc: Exception) -> None:
        if seen is not None:
            seen.append(exc)
        log.warning("NATS client %s: %r", client_name, exc)

    async def disconnected_cb() -> None:
        log.info("NATS client %s disconnected", client_name)

    async def reconnected_cb() -> None:
        log.warning("NATS client %s reconnected", client_name)

    client = _Client()
    client.require_tls = options.requires_tls
    await client.connect(
        **options.connect_kwargs(client_name),
        error_cb=error_cb,
        disconnected_cb=disconnected_cb,
        reconnected_cb=reconnected_cb,
    )
    return client


def _reasons(seen: list[Exception]) -> str:
    """The distinct errors the client reported, in order: the server's reason
    (e.g. 'Authorization Violation') is often followed by a reset socket, and
    the user needs the first."""
    distinct = list(dict.fromkeys(str(exc) or repr(exc) for exc in seen))
    return f" (errors: {'; '.join(distinct[:4])})" if distinct else ""


@asynccontextmanager
async def open_connection(
    config: Config, options: Mapping[str, Any]
) -> AsyncIterator[NatsConnection]:
    """The node's shared connection (opened by the first engine that asks).

    :raises ConfigError: bad ``plugin_options["nats"]``.
    :raises Unreachable: no server could be reached within the connect timeout.
    """
    opts = NatsOptions.from_mapping(options)
    key = (config.node_name, opts)
    shared = _shared.get(key)
    if shared is not None:
        shared.users += 1
        try:
            await trio.lowlevel.checkpoint()
            yield shared.connection
        finally:
            shared.users -= 1
        return
    async with open_bridge(close_timeout=opts.close_timeout) as bridge:
        # The client's own retry loop runs forever with max_reconnect_attempts=-1;
        # the first connection gets a bounded number of rounds instead.
        first = attrs.evolve(opts, max_reconnect_attempts=2)
        seen: list[Exception] = []
        where = ", ".join(opts.servers)
        try:
            with trio.fail_after(opts.connect_timeout * 3 * len(opts.servers) + 1):
                nc = await bridge.run(_connect, first, config.node_name, seen)
        except trio.TooSlowError:
            raise Unreachable(f"cannot connect to NATS at {where}{_reasons(seen)}") from None
        except Unreachable:
            raise
        except Exception as exc:
            # The server's reason (e.g. 'Authorization Violation') reached only
            # the error callback; the exception itself just says "no servers".
            raise Unreachable(
                f"cannot connect to NATS at {where}: {exc!r}{_reasons(seen)}"
            ) from exc
        nc.options["max_reconnect_attempts"] = opts.max_reconnect_attempts
        js = nc.jetstream(timeout=opts.request_timeout)
        connection = NatsConnection(
            options=opts, node_name=config.node_name, bridge=bridge, nc=nc, js=js
        )
        _shared[key] = _Shared(connection)
        try:
            yield connection
        finally:
            del _shared[key]
            await _close_client(connection)


async def _close_client(connection: NatsConnection) -> None:
    """Close the client within ``close_timeout``, shielded; failures are logged.

    Reconnecting is switched off first: a reconnection loop that misses the
    cancellation ``close`` sends it (see :mod:`jido_trio_nats._bridge`) then
    gives up after one more attempt per server instead of running forever.
    """
    nc = connection.nc
    nc.options["allow_reconnect"] = False
    nc.options["max_reconnect_attempts"] = 1
    with trio.CancelScope(shield=True), trio.move_on_after(connection.options.close_timeout):
        try:
            await connection.run("closing the NATS client", nc.close)
        except JidoError as exc:  # closing a broken connection: nothing to save
            log.debug("closing NATS client: %s", exc)
