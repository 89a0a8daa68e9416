"""The package's layers, checked from its imports (docs/architecture.md).

Every ``import`` and ``from ... import`` of every module counts, including
those inside functions and ``TYPE_CHECKING`` blocks: a layer that needs a
name from above it for its types needs a narrower interface instead.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "jido_trio"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> Iterator[str]:
    """Absolute names of the modules ``path`` imports (``from x import y``
    gives ``x`` and ``x.y``: y may be a module)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            yield target
            for alias in node.names:
                yield f"{target}.{alias.name}"


def _modules(under: str) -> list[Path]:
    return sorted((PACKAGE / under).rglob("*.py")) if under else sorted(PACKAGE.rglob("*.py"))


def _violations(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in paths:
        for name in _imports(path):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                found.append(f"{_module_name(path)} imports {name}")
    return sorted(set(found))


#: What sits above each layer: a layer imports nothing of what is above it.
ABOVE_CORE = (
    "jido_trio._comm",
    "jido_trio._node",
    "jido_trio._failover",
    "jido_trio._supervisor",
    "jido_trio._plugins",
    "jido_trio.hookspecs",
    "jido_trio.signals",
    "jido_trio.workqueue",
    "jido_trio.local",
    "jido_trio.testing",
    "jido_trio.cli",
)
ABOVE_COMM = (
    "jido_trio._node",
    "jido_trio._failover",
    "jido_trio._plugins",
    "jido_trio.signals",
    "jido_trio.workqueue",
    "jido_trio.local",
    "jido_trio.testing",
    "jido_trio.cli",
)
ABOVE_ABC = (
    "jido_trio._core",
    "jido_trio._comm",
    "jido_trio._node",
    "jido_trio._agent",
    "jido_trio._supervisor",
    "jido_trio.signals",
    "jido_trio.workqueue",
    "jido_trio.local",
    "jido_trio.testing",
    "jido_trio.cli",
)


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [("_core", ABOVE_CORE), ("_comm", ABOVE_COMM), ("abc", ABOVE_ABC)],
)
def test_a_layer_imports_nothing_above_it(layer: str, forbidden: tuple[str, ...]) -> None:
    assert _violations(_modules(layer), forbidden) == []


def test_only_the_local_engines_and_testing_import_private_engine_modules() -> None:
    outside = [
        path
        for path in _modules("")
        if not path.is_relative_to(PACKAGE / "local")
        and not path.is_relative_to(PACKAGE / "testing")
    ]
    private = [f"jido_trio.local.{p.stem}" for p in (PACKAGE / "local").glob("_*.py")]
    private.remove("jido_trio.local.__init__")
    assert _violations(outside, tuple(private)) == []


def test_engine_clients_are_imported_by_engines_only() -> None:
    outside = [path for path in _modules("") if not path.is_relative_to(PACKAGE / "local")]
    assert _violations(outside, ("sqlite3", "nats", "trio_asyncio")) == []


def test_hookspecs_and_plugin_loading_do_not_import_each_other() -> None:
    hookspecs = _violations([PACKAGE / "hookspecs.py"], ("jido_trio._plugins",))
    plugins = _violations([PACKAGE / "_plugins.py"], ("jido_trio.hookspecs",))
    assert hookspecs == [] or plugins == []
