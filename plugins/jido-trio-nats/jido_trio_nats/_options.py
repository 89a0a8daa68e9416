"""``plugin_options["nats"]``: parsed and checked once, shared by the four engines."""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from typing import Literal

import attrs

from jido_trio import ConfigError
from jido_trio.abc import check_option_keys

__all__ = ["NatsOptions", "TlsOptions"]

_DEFAULT_SERVERS = ("nats://127.0.0.1:4222",)
_NAMESPACE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


@attrs.frozen(kw_only=True)
class TlsOptions:
    """TLS for the client connection (``plugin_options["nats"]["tls"]``).

    :param ca_file: CA bundle that signed the servers' certificates.
    :param cert_file: client certificate, for servers that verify clients.
    :param key_file: the client certificate's private key.
    :param hostname: name to verify in the server certificate (default: the URL's host).
    :param handshake_first: start TLS before the NATS INFO exchange
        (servers configured with ``handshake_first``).
    """

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    hostname: str | None = None
    handshake_first: bool = False

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_file)
        if self.cert_file is not None:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


@attrs.frozen(kw_only=True)
class NatsOptions:
    """Options of the ``nats`` plugin, from ``Config.plugin_options["nats"]``.

    Connection:

    :param servers: server URLs (``nats://`` or ``tls://``); the client picks
        one and fails over to the others (and to servers the cluster announces).
    :param user: user name (with ``password``).
    :param password: password for ``user``.
    :param token: authentication token.
    :param creds: path of a ``.creds`` file (JWT + nkey seed), for operator mode.
    :param nkeys_seed: path of an nkey seed file.
    :param tls: :class:`TlsOptions` as a mapping; ``tls://`` URLs need at least ``{}``.
        With ``tls`` set or any ``tls://`` URL, a server that does not start TLS
        is refused before any credentials are sent.
    :param connect_timeout: seconds to wait for each connection attempt.
    :param reconnect_time_wait: seconds between reconnection attempts to one server.
    :param max_reconnect_attempts: attempts per server before the client gives
        up for good (``-1``: never).
    :param ping_interval: seconds between the client's pings to its server; a
        server that misses three in a row (one that is paused or cut off) is
        left for another one.

    Layout and durability:

    :param namespace: prefix of every bucket, stream and subject, so several
        clusters (or test runs) can share one NATS deployment.
    :param storage: ``"file"`` (survives a server restart) or ``"memory"``.
    :param replicas: JetStream replicas of every bucket and stream (1 to 5;
        3 on a 3-server cluster tolerates the loss of one server).

    Liveness:

    :param lease_ttl: seconds a node may go without renewing its membership
        lease (it renews every ``lease_ttl / 4``) while its peers' renewals
        succeed; then they declare it gone and fail its agents over. Time in
        which the peers cannot renew either (a JetStream leader election, an
        outage) does not count.
    :param fence_after: seconds a node goes on without a successful renewal
        before it stops its agents on its own (``open_node`` raises
        ``NodeFenced``); at least ``lease_ttl``. Longer than a JetStream
        leader election, so an election fences nobody. A node also fences
        itself as soon as it finds its lease gone (its peers declared it
        gone) or held by another process. Either way the registry's
        ownership epochs keep it from changing state another node owns now.
    :param request_timeout: seconds for one JetStream API request.
    """

    servers: tuple[str, ...] = _DEFAULT_SERVERS
    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds: str | None = None
    nkeys_seed: str | None = None
    tls: TlsOptions | None = None
    connect_timeout: float = 2.0
    reconnect_time_wait: float = 0.5
    max_reconnect_attempts: int = -1
    ping_interval: float = 1.0
    namespace: str = "jido"
    storage: Literal["file", "memory"] = "file"
    replicas: int = 1
    lease_ttl: float = 5.0
    fence_after: float = 30.0
    request_timeout: float = 5.0

    @property
    def heartbeat_interval(self) -> float:
        """How often the membership lease is renewed."""
        return self.lease_ttl / 4

    @property
    def close_timeout(self) -> float:
        """Seconds each step of closing the engines may take (``connect_timeout``)."""
        return self.connect_timeout

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> NatsOptions:
        """Check and convert ``plugin_options["nats"]``.

        :raises ConfigError: an unknown key or a value of the wrong kind.
        """
        check_option_keys(options, (a.name for a in attrs.fields(cls)), "plugin_options['nats']")
        values = dict(options)
        servers = values.get("servers", _DEFAULT_SERVERS)
        if isinstance(servers, str):
            servers = (servers,)
        if not servers or not all(isinstance(s, str) and s for s in servers):
            raise ConfigError("plugin_options['nats']['servers'] must be a list of URLs")
        values["servers"] = tuple(servers)
        for key in ("user", "password", "token", "creds", "nkeys_seed"):
            if values.get(key) is not None and not isinstance(values[key], str):
                raise ConfigError(f"plugin_options['nats'][{key!r}] must be a string")
        for key in ("creds", "nkeys_seed"):
            if values.get(key) is not None and not Path(values[key]).is_file():
                raise ConfigError(f"plugin_options['nats'][{key!r}]: no file {values[key]!r}")
        tls = values.get("tls")
        if tls is not None:
            tls_keys = (a.name for a in attrs.fields(TlsOptions))
            check_option_keys(tls, tls_keys, "plugin_options['nats']['tls']")
            values["tls"] = TlsOptions(**tls)
            if values["tls"].key_file is not None and values["tls"].cert_file is None:
                raise ConfigError("plugin_options['nats']['tls']['key_file'] needs 'cert_file'")
        namespace = values.get("namespace", "jido")
        if not isinstance(namespace, str) or not _NAMESPACE.match(namespace):
            raise ConfigError(
                "plugin_options['nats']['namespace'] must be 1-32 letters, digits, '_' or '-'"
            )
        if values.get("storage", "file") not in ("file", "memory"):
            raise ConfigError("plugin_options['nats']['storage'] must be 'file' or 'memory'")
        replicas = values.get("replicas", 1)
        if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= 5:
            raise ConfigError("plugin_options['nats']['replicas'] must be an integer from 1 to 5")
        for key in (
            "connect_timeout",
            "reconnect_time_wait",
            "ping_interval",
            "lease_ttl",
            "fence_after",
            "request_timeout",
        ):
            value = values.get(key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0
            ):
                raise ConfigError(f"plugin_options['nats'][{key!r}] must be a positive number")
        attempts = values.get("max_reconnect_attempts")
        if attempts is not None and (isinstance(attempts, bool) or not isinstance(attempts, int)):
            raise ConfigError("plugin_options['nats']['max_reconnect_attempts'] must be an integer")
        return cls(**values)

    @property
    def requires_tls(self) -> bool:
        """Whether every connection must be TLS: ``tls`` is set or a server
        URL is ``tls://``. The client then refuses a server that does not
        start TLS, before sending any credentials."""
        return self.tls is not None or any(s.startswith("tls://") for s in self.servers)

    def connect_kwargs(self, client_name: str) -> dict[str, Any]:
        """Keyword arguments for ``nats.aio.client.Client.connect``."""
        kwargs: dict[str, Any] = {
            "servers": list(self.servers),
            "name": client_name,
            "connect_timeout": self.connect_timeout,
            "reconnect_time_wait": self.reconnect_time_wait,
            "max_reconnect_attempts": self.max_reconnect_attempts,
            "ping_interval": self.ping_interval,
            "max_outstanding_pings": 2,
            "allow_reconnect": True,
        }
        for key in ("user", "password", "token"):
            value = getattr(self, key)
            if value is not None:
                kwargs[key] = value
        if self.creds is not None:
            kwargs["user_credentials"] = self.creds
        if self.nkeys_seed is not None:
            kwargs["nkeys_seed"] = self.nkeys_seed
        if self.tls is not None:
            kwargs["tls"] = self.tls.context()
            if self.tls.hostname is not None:
                kwargs["tls_hostname"] = self.tls.hostname
            if self.tls.handshake_first:
                kwargs["tls_handshake_first"] = True
        return kwargs
