"""Backend selection for the test suite: ``pytest --backend nats``.

By default every test runs on the local engines. With ``--backend nats`` the
core, supervision and failure-mode suites run unchanged against the NATS
plugin: every node a test opens (``jt.open_node`` and
``jido_trio.testing.open_cluster``) whose config names the local defaults is
switched to ``"nats"`` for all four engines, on a real ``nats-server`` started
for the session, in a namespace of the test's own (so the nodes of one test
share registry and state, as on a hub).

Tests that only make sense on the in-process engines (the hub's fault
injection, SQLite files, plugin loading) carry ``@pytest.mark.local_only``.
Virtual time still works: under this backend ``autojump_clock`` jumps only
after 20 ms of real idleness, so it does not skip over a round trip to NATS
in progress.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import AsyncIterator
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
import trio.testing

import jido_trio
import jido_trio._node
import jido_trio.testing._cluster

_namespaces = itertools.count()
_LOCAL_DEFAULTS = {
    "registry": "local",
    "transport": "local",
    "state": "memory",
    "coordination": "local",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backend",
        choices=("local", "nats"),
        default="local",
        help="engines for nodes opened with the local defaults (default: local)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "local_only: the test needs the in-process engines (skipped on --backend nats)"
    )
    config.addinivalue_line(
        "markers",
        "slow: soak, chaos and failover tests that take seconds each "
        '(a quick run deselects them: pytest -m "not slow")',
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--backend") != "nats":
        return
    skip = pytest.mark.skip(reason="needs the in-process engines (local_only)")
    for item in items:
        if item.get_closest_marker("local_only") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def _backend_server(request: pytest.FixtureRequest) -> Iterator[str | None]:
    if request.config.getoption("--backend") != "nats":
        yield None
        return
    from jido_trio_nats.testing import start_nats_server

    with start_nats_server() as server:
        yield server.url


@pytest.fixture(autouse=True)
def _backend(
    request: pytest.FixtureRequest, _backend_server: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if _backend_server is None:
        return
    namespace = f"b{os.getpid()}x{next(_namespaces)}"
    original = jido_trio._node.open_node

    def on_nats(config: jido_trio.Config) -> jido_trio.Config:
        if any(getattr(config, kind) != name for kind, name in _LOCAL_DEFAULTS.items()):
            return config  # the test chose its engines on purpose
        options = {k: v for k, v in config.plugin_options.items() if k not in ("local", "memory")}
        options["nats"] = {
            "servers": [_backend_server],
            "namespace": namespace,
            "storage": "memory",
            "lease_ttl": 3.0,
        }
        return attrs.evolve(
            config,
            registry="nats",
            transport="nats",
            state="nats",
            coordination="nats",
            plugin_options=options,
        )

    @contextlib.asynccontextmanager
    async def open_node(
        config: jido_trio.Config | None = None, *, name: str | None = None, plugins: Any = ()
    ) -> AsyncIterator[jido_trio.Node]:
        if config is None:
            config = jido_trio.Config() if name is None else jido_trio.Config(node_name=name)
        elif isinstance(config, jido_trio.Config) and name is not None:
            config = attrs.evolve(config, node_name=name)
            name = None
        if isinstance(config, jido_trio.Config):
            config = on_nats(config)
        async with original(config, name=name, plugins=plugins) as node:
            yield node

    monkeypatch.setattr(jido_trio, "open_node", open_node)
    monkeypatch.setattr(jido_trio._node, "open_node", open_node)
    monkeypatch.setattr(jido_trio.testing._cluster, "open_node", open_node)


@pytest.fixture
def autojump_clock(request: pytest.FixtureRequest) -> trio.testing.MockClock:
    """pytest-trio's fixture, except that on NATS time jumps only after 20 ms
    of real idleness (a round trip to the server is not idleness)."""
    if request.config.getoption("--backend") == "nats":
        return trio.testing.MockClock(autojump_threshold=0.02)
    return trio.testing.MockClock(autojump_threshold=0)
