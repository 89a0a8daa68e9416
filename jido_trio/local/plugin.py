"""The built-in plugin: registers the local implementations by name."""

from __future__ import annotations

from collections.abc import AsyncIterator
from collections.abc import Callable
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from contextlib import asynccontextmanager
from typing import Any
from typing import TypeVar

from .._config import Config
from ..hookspecs import hookimpl
from ._coordination import LocalCoordination
from ._hub import LocalHub
from ._hub import hub_name
from ._hub import open_hub
from ._registry import LocalRegistry
from ._sqlite import sqlite_factory
from ._state import MemoryStateBackend
from ._transport import LocalTransport

__all__ = ["jido_trio_add_backends"]


T = TypeVar("T")


def _hub_or_private(
    plugin: str, private: Callable[[Config], T], shared: Callable[[LocalHub, Config], T]
) -> Callable[[Config, Mapping[str, Any]], AbstractAsyncContextManager[T]]:
    """A factory that builds a private engine, or takes the one of the hub
    named in the plugin options (``{"hub": NAME}``)."""

    @asynccontextmanager
    async def factory(config: Config, options: Mapping[str, Any]) -> AsyncIterator[T]:
        name = hub_name(options, plugin)
        if name is None:
            yield private(config)
            return
        async with open_hub(name) as hub:
            yield shared(hub, config)

    return factory


_registry = _hub_or_private(
    "local", lambda config: LocalRegistry(), lambda hub, config: hub.registry
)
_coordination = _hub_or_private(
    "local", lambda config: LocalCoordination(), lambda hub, config: hub.coordination
)
_transport = _hub_or_private(
    "local",
    lambda config: LocalTransport(node_name=config.node_name),
    lambda hub, config: LocalTransport(node_name=config.node_name, hub=hub),
)
_memory = _hub_or_private(
    "memory", lambda config: MemoryStateBackend(), lambda hub, config: hub.state
)


@hookimpl(trylast=True)
def jido_trio_add_backends(backends: Any) -> None:
    """Register ``local`` registry/transport/coordination, ``memory`` state and
    ``sqlite`` state (``plugin_options={"sqlite": {"path": "state.db"}}``)."""
    backends.add_registry("local", _registry)
    backends.add_coordination("local", _coordination)
    backends.add_transport("local", _transport)
    backends.add_state("memory", _memory)
    backends.add_state("sqlite", sqlite_factory)
