"""An example third-party jido_trio plugin.

It registers a state backend named ``"example"`` (the in-memory backend,
counting every operation) through ``jido_trio_add_backends``, and implements
the observe-only hooks by recording events in :data:`EVENTS`. jido_trio finds it
through the ``jido_trio`` entry-point group (see this package's pyproject.toml).

Select it with ``jt.Config(state="example")``. It takes no options
(``plugin_options["example"]``), and says so for any it is given.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import TYPE_CHECKING
from typing import Any

import jido_trio
from jido_trio.local import MemoryStateBackend

if TYPE_CHECKING:
    # The argument of jido_trio_add_backends; its class is not public API yet.
    from jido_trio.hookspecs import Backends

__all__ = [
    "EVENTS",
    "CountingStateBackend",
    "jido_trio_add_backends",
    "jido_trio_agent_restarted",
    "jido_trio_agent_started",
    "jido_trio_agent_stopped",
    "jido_trio_health_changed",
    "jido_trio_message_dead_lettered",
    "jido_trio_node_started",
    "jido_trio_node_stopping",
]

#: The most recent events seen by the observer hooks: ``(hook, node, detail)``.
#: Bounded, since every node of the process reports here.
EVENTS: collections.deque[tuple[str, str, str]] = collections.deque(maxlen=1000)


class CountingStateBackend(MemoryStateBackend):
    """The in-memory backend, counting calls per method in :attr:`counts`."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    async def read(self, key: str, *, consistency: Any = "strong") -> Any:
        self.counts["read"] += 1
        return await super().read(key, consistency=consistency)

    async def write(self, key: str, value: bytes, *, expected_version: int | None = None) -> int:
        self.counts["write"] += 1
        return await super().write(key, value, expected_version=expected_version)

    async def delete(self, key: str, *, expected_version: int | None = None) -> None:
        self.counts["delete"] += 1
        await super().delete(key, expected_version=expected_version)

    async def keys(self, prefix: str = "") -> list[str]:
        self.counts["keys"] += 1
        return await super().keys(prefix)

    async def append(self, stream: str, data: bytes) -> int:
        self.counts["append"] += 1
        return await super().append(stream, data)

    async def read_log(self, stream: str, *, after: int = 0, limit: int | None = None) -> Any:
        self.counts["read_log"] += 1
        return await super().read_log(stream, after=after, limit=limit)

    async def trim_log(self, stream: str, *, upto: int) -> None:
        self.counts["trim_log"] += 1
        await super().trim_log(stream, upto=upto)


def _example_state(config: jido_trio.Config, options: Mapping[str, Any]) -> CountingStateBackend:
    """Factory: ``(config, options)`` in, the implementation out. It owns no
    resources, so it returns the backend itself rather than a context manager."""
    if options:
        raise jido_trio.ConfigError(
            f"state 'example' takes no options, got: {', '.join(sorted(options))}"
        )
    return CountingStateBackend()


@jido_trio.hookimpl
def jido_trio_add_backends(backends: Backends) -> None:
    """Register the ``"example"`` state backend."""
    backends.add_state("example", _example_state)


# Observe-only hooks: they look, never do I/O, and never raise.


@jido_trio.hookimpl
def jido_trio_node_started(node: jido_trio.Node) -> None:
    EVENTS.append(("node_started", node.name, ""))


@jido_trio.hookimpl
def jido_trio_node_stopping(node: jido_trio.Node) -> None:
    EVENTS.append(("node_stopping", node.name, ""))


@jido_trio.hookimpl
def jido_trio_agent_started(node: jido_trio.Node, ref: jido_trio.AgentRef) -> None:
    EVENTS.append(("agent_started", node.name, ref.id))


@jido_trio.hookimpl
def jido_trio_agent_stopped(node: jido_trio.Node, ref: jido_trio.AgentRef, reason: str) -> None:
    EVENTS.append(("agent_stopped", node.name, f"{ref.id}: {reason}"))


@jido_trio.hookimpl
def jido_trio_agent_restarted(node: jido_trio.Node, ref: jido_trio.AgentRef, restarts: int) -> None:
    EVENTS.append(("agent_restarted", node.name, f"{ref.id}: {restarts}"))


@jido_trio.hookimpl
def jido_trio_message_dead_lettered(
    node: jido_trio.Node, message: jido_trio.Message, reason: str
) -> None:
    EVENTS.append(("message_dead_lettered", node.name, reason))


@jido_trio.hookimpl
def jido_trio_health_changed(
    node: jido_trio.Node, ref: jido_trio.AgentRef, old: jido_trio.Health, new: jido_trio.Health
) -> None:
    EVENTS.append(("health_changed", node.name, f"{ref.id}: {old.name} -> {new.name}"))
