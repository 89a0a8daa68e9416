"""Context variables that tie code to the node (and agent) it runs under."""

from __future__ import annotations

from contextvars import ContextVar

__all__ = ["current_node_name"]

#: Name of the node whose ``open_node`` block (or task tree) the code runs in.
current_node_name: ContextVar[str | None] = ContextVar("jido_trio_node_name", default=None)
