"""Rich renderings of what the admin endpoint returns."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from ._protocol import AgentHealth
from ._protocol import AgentRow
from ._protocol import NodeInfo
from ._protocol import TreeNode

__all__ = ["HEALTH_STYLES", "STATUS_STYLES", "agents_table", "health_text", "supervision_tree"]

HEALTH_STYLES: Final = {
    "healthy": "green",
    "degraded": "yellow",
    "unreachable": "red",
    "not_found": "magenta",
}
STATUS_STYLES: Final = {
    "running": "green",
    "restarting": "yellow",
    "stopped": "dim",
    "failed": "bold red",
}


def _health(value: str) -> Text:
    return Text(value, style=HEALTH_STYLES.get(value, ""))


def agents_table(rows: Sequence[AgentRow], info: NodeInfo | None = None) -> Table:
    title = f"agents on node {info.node!r}" if info is not None else "agents"
    table = Table(title=f"{title} ({len(rows)})", title_justify="left")
    table.add_column("ID", no_wrap=True)
    table.add_column("TYPE")
    table.add_column("NODE")
    table.add_column("HEALTH")
    for row in rows:
        table.add_row(row.id, row.type, row.node or "-", _health(row.health))
    return table


def health_text(result: AgentHealth) -> Text:
    text = Text.assemble(result.id, ": ", _health(result.health))
    if result.type is not None:
        text.append(f"  (type {result.type}, node {result.node or '-'})", style="dim")
    return text


def _label(node: TreeNode) -> Text:
    label = Text(node.id, style="bold" if node.kind == "supervisor" else "")
    if node.kind == "supervisor":
        label.append(f" [{node.strategy}]", style="cyan")
    else:
        label.append(f" ({node.kind})", style="dim")
    label.append("  ")
    label.append(node.status, style=STATUS_STYLES.get(node.status, ""))
    label.append(f"  restarts={node.restarts}", style="yellow" if node.restarts else "dim")
    if node.last_failure:
        label.append(f"  last_failure={node.last_failure}", style="red")
    return label


def supervision_tree(root: TreeNode, info: NodeInfo | None = None) -> Tree:
    """The tree as a :class:`rich.tree.Tree`, supervisors in bold."""
    if info is not None:
        top = Tree(Text(f"node {info.node!r}", style="bold"))
        _add(top, root)
        return top
    tree = Tree(_label(root))
    for child in root.children:
        _add(tree, child)
    return tree


def _add(parent: Tree, node: TreeNode) -> None:
    branch = parent.add(_label(node))
    for child in node.children:
        _add(branch, child)
