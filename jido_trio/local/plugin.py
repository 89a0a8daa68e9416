"""The built-in plugin: registers the local implementations by name."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from .._config import Config
from ..hookspecs import hookimpl
from ._coordination import LocalCoordination
from ._hub import hub_name, open_hub
from ._registry import LocalRegistry
from ._sqlite import sqlite_factory
from ._state import MemoryStateBackend
from ._transport import LocalTransport

__all__ = ["jido_trio_add_backends"]


@asynccontextmanager
async def _registry(config: Config, options: Mapping[str, Any]) -> AsyncIterator[LocalRegistry]:
    name = hub_name(options)
    if name is None:
        yield LocalRegistry()
        return
    async with open_hub(name) as hub:
        yield hub.registry


@asynccontextmanager
async def _coordination(
    config: Config, options: Mapping[str, Any]
) -> AsyncIterator[LocalCoordination]:
    name = hub_name(options)
    if name is None:
        yield LocalCoordination()
        return
    async with open_hub(name) as hub:
        yield hub.coordination


@asynccontextmanager
async def _transport(config: Config, options: Mapping[str, Any]) -> AsyncIterator[LocalTransport]:
    name = hub_name(options)
    if name is None:
        yield LocalTransport(node_name=config.node_name)
        return
    async with open_hub(name) as hub:
        yield LocalTransport(node_name=config.node_name, hub=hub)


@asynccontextmanager
async def _memory(config: Config, options: Mapping[str, Any]) -> AsyncIterator[MemoryStateBackend]:
    name = hub_name(options)
    if name is None:
        yield MemoryStateBackend()
        return
    async with open_hub(name) as hub:
        yield hub.state


@hookimpl(trylast=True)
def jido_trio_add_backends(backends: Any) -> None:
    """Register ``local`` registry/transport/coordination, ``memory`` state and
    ``sqlite`` state (``plugin_options={"sqlite": {"path": "state.db"}}``)."""
    backends.add_registry("local", _registry)
    backends.add_coordination("local", _coordination)
    backends.add_transport("local", _transport)
    backends.add_state("memory", _memory)
    backends.add_state("sqlite", sqlite_factory)
