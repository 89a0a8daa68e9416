"""The ``nats`` plugin: registers NATS engines for all four protocols.

Found through the ``jido_trio`` entry point ``nats``; select each engine
with ``"nats"`` in :class:`jido_trio.Config` and pass options as
``plugin_options={"nats": {...}}`` (see :class:`jido_trio_nats.NatsOptions`).
The engine modules (and nats-py) are imported only when a node selects one.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

import jido_trio as jt

__all__ = ["jido_trio_add_backends"]


def _registry(config: jt.Config, options: Mapping[str, Any]) -> AbstractAsyncContextManager[Any]:
    from ._registry import open_registry

    return open_registry(config, options)


def _transport(config: jt.Config, options: Mapping[str, Any]) -> AbstractAsyncContextManager[Any]:
    from ._transport import open_transport

    return open_transport(config, options)


def _state(config: jt.Config, options: Mapping[str, Any]) -> AbstractAsyncContextManager[Any]:
    from ._state import open_state

    return open_state(config, options)


def _coordination(
    config: jt.Config, options: Mapping[str, Any]
) -> AbstractAsyncContextManager[Any]:
    from ._coordination import open_coordination

    return open_coordination(config, options)


@jt.hookimpl
def jido_trio_add_backends(backends: Any) -> None:
    """Register ``nats`` for the registry, transport, state and coordination."""
    backends.add_registry("nats", _registry)
    backends.add_transport("nats", _transport)
    backends.add_state("nats", _state)
    backends.add_coordination("nats", _coordination)
