"""Distributed mode for jido_trio on NATS JetStream.

Install ``jido-trio-nats`` and select ``"nats"`` for any of the four engines::

    config = jt.Config(
        mode="datacenter",
        registry="nats", transport="nats", state="nats", coordination="nats",
        plugin_options={"nats": {"servers": ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"]}},
    )

See :class:`NatsOptions` for every option and the "Going distributed" guide.
nats-py and trio-asyncio are imported only when a node uses an engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from typing import Any

from ._options import NatsOptions as NatsOptions
from ._options import TlsOptions as TlsOptions

if TYPE_CHECKING:
    from ._connection import NatsConnection as NatsConnection
    from ._connection import open_connection as open_connection

__all__ = ["NatsConnection", "NatsOptions", "TlsOptions", "open_connection"]


def __getattr__(name: str) -> Any:
    if name in ("NatsConnection", "open_connection"):
        from . import _connection

        return getattr(_connection, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
