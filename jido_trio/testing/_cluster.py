"""Several nodes in one process, joined by a fresh in-process hub."""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator
from collections.abc import Iterable
from collections.abc import Mapping
from contextlib import AsyncExitStack
from contextlib import asynccontextmanager
from typing import Any

import attrs

from .._config import Config
from .._node import Node
from .._node import open_node
from ._faults import Faults
from ._faults import faults

__all__ = ["Cluster", "open_cluster"]

_hub_numbers = itertools.count()


@attrs.define(eq=False)
class Cluster:
    """Nodes opened by :func:`open_cluster`, by name, plus their hub's faults."""

    hub: str
    nodes: dict[str, Node]

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

    def __iter__(self) -> Any:
        return iter(self.nodes.values())

    @property
    def faults(self) -> Faults:
        """The fault plan of this cluster's hub (see :func:`faults`)."""
        return faults(self.hub)


@asynccontextmanager
async def open_cluster(
    *names: str,
    shared_state: bool = True,
    plugins: Iterable[object] = (),
    **config: Any,
) -> AsyncIterator[Cluster]:
    """Open nodes ``names`` (default ``"n1", "n2", "n3"``) on a fresh hub.

    They share one registry, coordination and transport fabric and, with
    ``shared_state``, one in-memory StateBackend (so an agent can be started
    again on another node and resume its state). Extra keyword arguments are
    :class:`~jido_trio.Config` fields for every node. Nodes close in reverse
    order on exit.
    """
    if not names:
        names = ("n1", "n2", "n3")
    if len(set(names)) != len(names):
        raise ValueError("node names must be unique")
    hub = f"cluster-{os.getpid()}-{next(_hub_numbers)}"
    options: dict[str, Mapping[str, Any]] = dict(config.pop("plugin_options", {}) or {})
    options["local"] = {**options.get("local", {}), "hub": hub}
    if shared_state:
        options["memory"] = {**options.get("memory", {}), "hub": hub}
    async with AsyncExitStack() as stack:
        nodes: dict[str, Node] = {}
        for name in names:
            node_config = Config(node_name=name, plugin_options=options, **config)
            nodes[name] = await stack.enter_async_context(
                open_node(node_config, plugins=list(plugins))
            )
        yield Cluster(hub=hub, nodes=nodes)
