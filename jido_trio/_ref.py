"""Logical agent references: what callers hold instead of tasks or channels."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs

from ._context import current_node_name

__all__ = ["AgentRef"]


def _freeze(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if value is None:
        return _EMPTY
    if isinstance(value, MappingProxyType):
        return value
    return MappingProxyType(dict(value))


_EMPTY: Mapping[str, Any] = MappingProxyType({})


@attrs.frozen(kw_only=True)
class AgentRef:
    """A location-transparent reference to an agent.

    A ref names an agent by ``id`` and ``type`` and records which ``node`` owns
    it (``None`` lets the registry resolve it). It never holds a task, a channel
    or anything else that would stop it from being sent to another process.

    :param id: the agent id, unique within a cluster.
    :param type: the agent type name (``Agent.type``).
    :param node: name of the owning node, or ``None`` for "resolve on use".
    :param metadata: free-form, read-only mapping carried with the ref.
    """

    id: str
    type: str
    node: str | None = None
    metadata: Mapping[str, Any] = attrs.field(default=None, converter=_freeze, eq=False)

    @classmethod
    def new(
        cls,
        id: str,
        type: str,
        *,
        node: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> AgentRef:
        """Build a ref; without ``node`` it takes the name of the current node.

        The current node is the one whose ``open_node`` block (or agent) the
        caller runs in; outside any node the ref's node stays ``None``.
        """
        if not isinstance(id, str) or not id:
            raise ValueError("agent id must be a non-empty string")
        if not isinstance(type, str) or not type:
            raise ValueError("agent type must be a non-empty string")
        if node is None:
            node = current_node_name.get()
        return cls(id=id, type=type, node=node, metadata=_freeze(metadata))

    def is_local(self) -> bool:
        """True when the ref's node is the node of the current context."""
        here = current_node_name.get()
        return here is not None and self.node == here

    def is_remote(self) -> bool:
        """True when the ref names a node other than the current one."""
        here = current_node_name.get()
        return self.node is not None and self.node != here

    def with_node(self, node: str | None) -> AgentRef:
        """Return a copy that names another owning node."""
        return attrs.evolve(self, node=node)
