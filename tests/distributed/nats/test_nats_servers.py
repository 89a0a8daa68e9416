"""The nats-server processes of :mod:`jido_trio_nats.testing`.

A port picked as free may be taken by another process before the server
binds it (other test sessions share the machine): the helpers start the
server again on other ports instead of failing.
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Iterator

import pytest

from jido_trio_nats import testing


@pytest.fixture
def taken_port(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A port another socket listens on, the first one the helpers pick."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = int(holder.getsockname()[1])
        ports = itertools.chain([port], iter(testing.free_port, None))
        monkeypatch.setattr(testing, "free_port", lambda: next(ports))
        yield port


def test_a_server_whose_port_was_taken_starts_on_another(taken_port: int) -> None:
    with testing.start_nats_server() as server:
        assert server.running
        assert taken_port not in (server.port, server.monitor_port)


def test_a_cluster_whose_route_port_was_taken_starts_on_others(taken_port: int) -> None:
    with testing.start_nats_cluster(3) as servers:
        assert all(server.running for server in servers)
        assert taken_port not in {server.cluster_port for server in servers}
