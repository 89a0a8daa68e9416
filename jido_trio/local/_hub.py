"""Process-wide hubs that let nodes in one process share local engines."""

from __future__ import annotations

from collections.abc import AsyncIterator
from collections.abc import Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING
from typing import Any
from typing import Protocol

import attrs

from .._exceptions import ConfigError
from ..abc import check_option_keys

if TYPE_CHECKING:
    from ._coordination import LocalCoordination
    from ._registry import LocalRegistry
    from ._state import MemoryStateBackend
    from ._transport import LocalTransport
    from ._transport import _Request

__all__ = ["Interceptor", "LocalHub", "hub_name", "open_hub"]


class Interceptor(Protocol):
    """Takes over delivery of every message between the nodes of a hub while it
    is installed as :attr:`LocalHub.interceptor` (fault injection does this).

    ``request`` is called inside the requester's timeout scope and returns
    once ``request`` has its outcome (``done`` is set). ``reply`` is called
    for a request delivered before the interceptor was installed, once it is
    done, and may raise or wait (the reply is then lost).
    """

    async def send(self, source: LocalTransport, node: str, request: _Request) -> None: ...

    async def request(self, source: LocalTransport, node: str, request: _Request) -> None: ...

    async def reply(self, source: LocalTransport, node: str, request: _Request) -> None: ...

    def reachable(self, source: str, node: str) -> bool: ...


@attrs.define(eq=False)
class LocalHub:
    """Shared in-process engines for the nodes that join the same hub name."""

    name: str
    registry: LocalRegistry
    coordination: LocalCoordination
    state: MemoryStateBackend
    endpoints: dict[str, LocalTransport] = attrs.field(factory=dict)
    users: int = 0
    #: Set only while messages between nodes must be intercepted (faults are
    #: active): the transports' fast path is this one attribute being ``None``.
    interceptor: Interceptor | None = None
    #: Per-hub attachments of helpers that outlive a single call, by name (the
    #: fault plan of :func:`jido_trio.testing.faults` lives under ``"faults"``).
    extensions: dict[str, Any] = attrs.field(factory=dict)


_hubs: dict[str, LocalHub] = {}


def hub_name(options: Mapping[str, Any], plugin: str) -> str | None:
    """The hub named in the options of the ``plugin`` engines (``"local"``
    or ``"memory"``), or ``None``.

    :raises ConfigError: an option other than ``hub``, or a bad hub name.
    """
    check_option_keys(options, ("hub",), f"plugin_options[{plugin!r}]")
    name = options.get("hub")
    if name is not None and (not isinstance(name, str) or not name):
        raise ConfigError("plugin option 'hub' must be a non-empty string")
    return name


@asynccontextmanager
async def open_hub(name: str) -> AsyncIterator[LocalHub]:
    """Join the hub ``name`` (creating it) for the duration of the block."""
    from ._coordination import LocalCoordination
    from ._registry import LocalRegistry
    from ._state import MemoryStateBackend

    hub = _hubs.get(name)
    if hub is None:
        hub = _hubs[name] = LocalHub(
            name=name,
            registry=LocalRegistry(),
            coordination=LocalCoordination(),
            state=MemoryStateBackend(),
        )
    hub.users += 1
    try:
        yield hub
    finally:
        hub.users -= 1
        if hub.users == 0 and _hubs.get(name) is hub:
            del _hubs[name]
