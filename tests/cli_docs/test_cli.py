"""The ``jido-trio`` command line: pure commands through typer's CliRunner, the
admin endpoint in-process, and ``node run`` as a real process stopped by a signal.

Every wait is bounded (``trio.fail_after`` or a subprocess ``timeout``).
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from collections.abc import Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import msgspec
import pytest
import trio
from typer.testing import CliRunner
from typer.testing import Result

import jido_trio as jt
from jido_trio.cli import app
from jido_trio.cli._admin import AdminServer
from jido_trio.cli._admin import AgentSpec
from jido_trio.cli._admin import CliOptions
from jido_trio.cli._admin import load_agent_class
from jido_trio.cli._admin import plan_node
from jido_trio.cli._app import find_bench
from jido_trio.cli._protocol import MAX_REQUEST
from jido_trio.cli._protocol import AdminAddress
from jido_trio.cli._protocol import FrameReader
from jido_trio.cli._protocol import encode_frame
from jido_trio.testing import crash_agent
from tests._agents import Counter

ROOT = Path(__file__).resolve().parents[2]
#: Plain output whatever the terminal or CI sets.
PLAIN_ENV = {"NO_COLOR": "1", "TERM": "dumb", "FORCE_COLOR": None, "COLUMNS": "200"}
runner = CliRunner(env=PLAIN_ENV)


def invoke(*args: str) -> Result:
    return runner.invoke(app, list(args), catch_exceptions=False)


async def invoke_in_thread(*args: str) -> Result:
    """Run a client command (it calls ``trio.run`` itself) next to this test's loop."""
    return await trio.to_thread.run_sync(functools.partial(invoke, *args))


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# ---------------------------------------------------------------- pure commands


def test_console_script_is_declared() -> None:
    (script,) = importlib.metadata.entry_points(group="console_scripts", name="jido-trio")
    assert script.value == "jido_trio.cli:main"


def test_help_lists_every_command() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("node", "agents", "health", "tree", "demo", "bench"):
        assert command in result.stdout


@pytest.mark.parametrize(
    "text",
    ["10.0.0.1:7411", "0.0.0.0:1", "example.com:80", "127.0.0.1", "127.0.0.1:x", "127.0.0.1:70000"],
)
def test_admin_address_must_be_loopback_host_port(text: str) -> None:
    with pytest.raises(ValueError):
        AdminAddress.parse(text)
    result = invoke("health", "a1", "--admin", text)
    assert result.exit_code == 2
    assert "--admin" in result.stderr


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [("127.0.0.1:0", "127.0.0.1", 0), ("[::1]:7411", "::1", 7411), ("localhost:9", "localhost", 9)],
)
def test_admin_address_parses(text: str, host: str, port: int) -> None:
    address = AdminAddress.parse(text)
    assert (address.host, address.port) == (host, port)
    assert AdminAddress.parse(str(address)) == address


@pytest.mark.parametrize("command", [["agents", "ls"], ["health", "a1"], ["tree"]])
def test_client_commands_exit_4_when_no_node_listens(command: list[str]) -> None:
    result = invoke(*command, "--admin", f"127.0.0.1:{free_port()}", "--timeout", "5")
    assert result.exit_code == 4
    assert "cannot reach admin endpoint" in result.stderr


def test_node_run_rejects_a_bad_config_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('node_name = "n1"\nno_such_key = 1\n')
    result = invoke("node", "run", "--config", str(bad))
    assert result.exit_code == 1
    assert "no_such_key" in result.stderr


def test_node_run_rejects_an_agent_class_it_cannot_load() -> None:
    result = invoke("node", "run", "--admin", "127.0.0.1:0", "--agent", "no_such_mod:X=a1")
    assert result.exit_code == 1
    assert "cannot load agent class 'no_such_mod:X'" in result.stderr
    result = invoke("node", "run", "--admin", "127.0.0.1:0", "--agent", "no-equals-sign")
    assert result.exit_code == 2


def test_cli_options_from_config() -> None:
    config = jt.Config(
        plugin_options={
            "cli": {
                "admin": "127.0.0.1:0",
                "agents": [
                    {"class": "tests._agents:Counter", "id": "c1"},
                    {"class": "tests._agents:Counter", "id": "c2", "restart": "transient"},
                ],
            }
        }
    )
    options = CliOptions.from_config(config)
    assert options.admin == AdminAddress("127.0.0.1", 0)
    assert [(a.id, a.restart) for a in options.agents] == [
        ("c1", "permanent"),
        ("c2", "transient"),
    ]
    plan = plan_node(config, agents=[AgentSpec.parse("tests._agents:Counter=c3")])
    assert [(spec.id, cls) for spec, cls in plan.agents] == [
        ("c1", Counter),
        ("c2", Counter),
        ("c3", Counter),
    ]
    assert plan_node(jt.Config()).admin == AdminAddress("127.0.0.1", 7411)


@pytest.mark.parametrize(
    "options",
    [
        {"admn": "127.0.0.1:1"},
        {"admin": 7411},
        {"admin": "10.1.2.3:7411"},
        {"agents": "tests._agents:Counter"},
        {"agents": [{"class": "tests._agents:Counter"}]},
        {"agents": [{"class": "tests._agents:Counter", "id": "c1", "restart": "sometimes"}]},
        {"agents": [{"class": "tests._agents:Counter", "id": "c1", "extra": 1}]},
    ],
)
def test_cli_options_errors_are_config_errors(options: dict[str, Any]) -> None:
    with pytest.raises(jt.ConfigError):
        CliOptions.from_config(jt.Config(plugin_options={"cli": options}))


@pytest.mark.parametrize(
    "path", ["tests._agents", "tests._agents:Nope", "tests._agents:CounterState", "no_such_mod:X"]
)
def test_load_agent_class_errors(path: str) -> None:
    with pytest.raises(jt.ConfigError):
        load_agent_class(path)


def test_bench_without_a_checkout_says_how_to_run_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pyproject.toml").write_text("")
    monkeypatch.chdir(tmp_path)
    result = invoke("bench")
    assert result.exit_code == 1
    assert "nox -s bench" in result.stderr


def test_bench_runs_the_checkouts_script_with_its_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "bench").mkdir()
    (tmp_path / "docs").mkdir()
    report = tmp_path / "ran.json"
    (tmp_path / "bench" / "run.py").write_text(
        "import json, os, sys\n"
        f"open({str(report)!r}, 'w').write(json.dumps([sys.argv[1:], os.getcwd()]))\n"
        "sys.exit(3)\n"
    )
    assert find_bench(tmp_path / "docs") == tmp_path / "bench" / "run.py"
    monkeypatch.chdir(tmp_path / "docs")
    result = invoke("bench", "--quick", "x")
    assert result.exit_code == 3
    args, cwd = json.loads(report.read_text())
    assert args == ["--quick", "x"]
    assert Path(cwd) == tmp_path


# ---------------------------------------------------------------- demo


def test_demo_short_run_proves_nothing_was_lost() -> None:
    result = invoke("demo", "--seconds", "0.6", "--agents", "20", "--senders", "5")
    assert result.exit_code == 0, result.output
    summary = result.stdout[result.stdout.index("SUMMARY") :]
    assert "FAILED" not in summary
    assert summary.count("[ok]") >= 8
    assert "RESULT: OK, nothing lost" in summary


def test_demo_exits_non_zero_when_a_check_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    from jido_trio.cli import _demo

    async def broken(*args: Any) -> bool:
        await trio.lowlevel.checkpoint()
        return False

    monkeypatch.setattr(_demo, "_idempotency", broken)
    result = invoke("demo", "--seconds", "0.3", "--agents", "4", "--senders", "2")
    assert result.exit_code == 1
    assert "[FAILED] duplicate instruction id applied once" in result.stdout
    assert "RESULT: FAILED" in result.stdout


def test_demo_default_run_finishes_in_under_15_seconds(tmp_path: Path) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-W", "error", "-m", "jido_trio.cli", "demo"],
        cwd=tmp_path,
        env=subprocess_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    took = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    assert "RESULT: OK, nothing lost" in result.stdout
    assert took < 15, f"the demo took {took:.1f} s"


# ---------------------------------------------------------------- admin endpoint, in-process


@asynccontextmanager
async def admin_for(node: Any) -> AsyncIterator[AdminAddress]:
    async with trio.open_nursery() as nursery:
        address = await nursery.start(AdminServer(node).serve, AdminAddress("127.0.0.1", 0))
        yield address
        nursery.cancel_scope.cancel()


class RawClient:
    """Speaks (or abuses) the admin protocol byte by byte."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.reader = FrameReader(stream, 64 * 1024 * 1024)

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send_body(self, body: bytes) -> None:
        await self.stream.send_all(struct.pack(">I", len(body)) + body)

    async def reply(self) -> dict[str, Any] | None:
        size = await self.reader.header()
        if size is None:
            return None
        reply = msgspec.msgpack.decode(await self.reader.body(size))
        assert isinstance(reply, dict)
        return reply

    async def ask(self, request: Any) -> dict[str, Any]:
        await self.send_raw(encode_frame(request))
        reply = await self.reply()
        assert reply is not None
        return reply


@asynccontextmanager
async def raw_client(address: AdminAddress) -> AsyncIterator[RawClient]:
    stream = await trio.open_tcp_stream(address.host, address.port)
    async with stream:
        yield RawClient(stream)


def error_code(reply: dict[str, Any]) -> str:
    assert reply["ok"] is False, reply
    code: str = reply["error"]["code"]
    return code


async def test_malformed_requests_get_error_replies_and_the_connection_goes_on() -> None:
    with trio.fail_after(10):
        async with jt.open_node(name="n1") as node, admin_for(node) as address:
            await node.start_agent(Counter, "c1")
            async with raw_client(address) as client:
                await client.send_body(b"\xc1 not msgpack")
                assert error_code(await client.reply() or {}) == "invalid_request"
                await client.send_body(b"")
                assert error_code(await client.reply() or {}) == "invalid_request"
                assert error_code(await client.ask([1, 2, 3])) == "invalid_request"
                assert error_code(await client.ask({"op": 5})) == "invalid_request"
                assert error_code(await client.ask({"id": "c1"})) == "invalid_request"
                assert error_code(await client.ask({"op": "health"})) == "invalid_request"
                assert error_code(await client.ask({"op": "shutdown"})) == "unknown_op"
                assert error_code(await client.ask({"op": "info", "v": 2})) == "unsupported_version"
                assert error_code(await client.ask({"op": "tree", "v": "1"})) == "invalid_request"
                deep = b"\x91" * 100_000 + b"\xc0"  # 100k nested one-element arrays
                await client.send_body(deep)
                assert error_code(await client.reply() or {}) == "invalid_request"
                # Still the same connection, still answering.
                reply = await client.ask({"op": "health", "id": "c1", "future_field": True})
                assert reply["ok"] is True
                assert reply["result"]["health"] == "healthy"


async def test_oversized_or_truncated_frames_close_only_that_connection() -> None:
    with trio.fail_after(10):
        async with jt.open_node(name="n1") as node, admin_for(node) as address:
            async with raw_client(address) as client:
                await client.send_raw(struct.pack(">I", MAX_REQUEST + 1))
                assert error_code(await client.reply() or {}) == "frame_too_large"
                assert await client.reply() is None  # closed by the node
            async with raw_client(address) as client:
                await client.send_raw(struct.pack(">I", 100) + b"only part of it")
            async with raw_client(address) as client:
                await client.send_raw(b"\x00\x00")  # half a header
            async with raw_client(address) as client:
                reply = await client.ask({"op": "ping"})
                assert reply["ok"] is True
                assert reply["result"]["node"] == "n1"


async def test_connections_over_the_limit_are_told_busy() -> None:
    with trio.fail_after(10):
        async with jt.open_node(name="n1") as node, trio.open_nursery() as nursery:
            server = AdminServer(node, max_connections=1)
            address = await nursery.start(server.serve, AdminAddress("127.0.0.1", 0))
            async with raw_client(address) as first:
                assert (await first.ask({"op": "ping"}))["ok"] is True
                async with raw_client(address) as second:
                    # Told at once, before it sends anything.
                    assert error_code(await second.reply() or {}) == "busy"
                    assert await second.reply() is None
                assert (await first.ask({"op": "ping"}))["ok"] is True
            nursery.cancel_scope.cancel()


async def test_failing_op_is_an_internal_error_reply() -> None:
    @attrs.define
    class BrokenNode:
        name: str = "broken"

        def supervision_tree(self) -> Any:
            raise RuntimeError("tree is on fire")

    with trio.fail_after(10):
        async with admin_for(BrokenNode()) as address, raw_client(address) as client:
            reply = await client.ask({"op": "tree"})
            assert error_code(reply) == "internal"
            assert "tree is on fire" in reply["error"]["message"]


async def test_client_commands_against_an_in_process_node() -> None:
    config = jt.Config(node_name="n1", max_seconds=30.0)  # stays degraded after a restart
    with trio.fail_after(20):
        async with jt.open_node(config) as node, admin_for(node) as address:
            pool = await node.start_supervisor("pool", strategy="one_for_all")
            await node.start_agent(Counter, "c1", supervisor=pool)
            await node.start_agent(Counter, "c2")
            admin = str(address)

            result = await invoke_in_thread("agents", "ls", "--admin", admin)
            assert result.exit_code == 0, result.output
            assert "agents on node 'n1' (2)" in result.stdout
            lines = {line.split()[1]: line for line in result.stdout.splitlines() if "│ c" in line}
            assert set(lines) == {"c1", "c2"}
            assert "counter" in lines["c1"] and "n1" in lines["c1"] and "healthy" in lines["c1"]

            result = await invoke_in_thread("health", "c1", "--admin", admin)
            assert (result.exit_code, result.stdout.split()[:2]) == (0, ["c1:", "healthy"])

            await crash_agent(node, "c1")
            result = await invoke_in_thread("health", "c1", "--admin", admin)
            assert (result.exit_code, result.stdout.split()[:2]) == (1, ["c1:", "degraded"])

            result = await invoke_in_thread("health", "ghost", "--admin", admin)
            assert (result.exit_code, result.stdout.split()[:2]) == (3, ["ghost:", "not_found"])

            result = await invoke_in_thread("tree", "--admin", admin)
            assert result.exit_code == 0, result.output
            tree = result.stdout
            assert "node 'n1'" in tree
            assert "root [one_for_one]  running" in tree
            assert "pool [one_for_all]  running" in tree
            (c1,) = [line for line in tree.splitlines() if "c1 (agent)" in line]
            assert "restarts=1" in c1 and "last_failure=InjectedCrash" in c1
            assert tree.index("pool [") < tree.index("c1 (agent)")  # c1 drawn under pool

            result = await invoke_in_thread("tree", "--admin", admin, "--json")
            root = json.loads(result.stdout)
            (pool_info,) = [c for c in root["children"] if c["id"] == "pool"]
            assert pool_info["children"][0]["id"] == "c1"
            assert pool_info["children"][0]["restarts"] == 1

            result = await invoke_in_thread("agents", "ls", "--admin", admin, "--json")
            assert [row["id"] for row in json.loads(result.stdout)] == ["c1", "c2"]

            await node.stop_agent("c2")
            result = await invoke_in_thread("health", "c2", "--admin", admin, "--json")
            assert result.exit_code == 3
            assert json.loads(result.stdout)["health"] == "not_found"


async def test_health_exit_code_2_for_an_unreachable_agent() -> None:
    @attrs.define
    class FarAwayNode:
        name: str = "n1"

        async def lookup(self, agent_id: str) -> jt.AgentRef:
            await trio.lowlevel.checkpoint()
            return jt.AgentRef(id=agent_id, type="counter", node="n2")

        async def check_agent_health(self, ref: jt.AgentRef) -> jt.Health:
            await trio.lowlevel.checkpoint()
            return jt.Health.UNREACHABLE

    with trio.fail_after(10):
        async with admin_for(FarAwayNode()) as address:
            result = await invoke_in_thread("health", "c9", "--admin", str(address))
            assert result.exit_code == 2
            assert result.stdout.split()[:2] == ["c9:", "unreachable"]
            assert "node n2" in result.stdout


async def test_no_agents_is_said_plainly() -> None:
    with trio.fail_after(10):
        async with jt.open_node(name="empty") as node, admin_for(node) as address:
            result = await invoke_in_thread("agents", "ls", "--admin", str(address))
            assert result.exit_code == 0
            assert result.stdout.strip() == "no agents on node 'empty'"


# ---------------------------------------------------------------- node run, a real process

AGENTS_MODULE = """
import attrs
import trio
import jido_trio as jt


@attrs.frozen
class Tally:
    n: int = 0


class Greeter(jt.Agent):
    type = "greeter"
    State = Tally

    @jt.action("hello")
    async def hello(self, state):
        self.ctx.reply("hello")


class Stubborn(jt.Agent):
    # Takes a minute to stop (within a long shutdown_timeout).

    type = "stubborn"

    async def on_stop(self, state, reason):
        await trio.sleep(60)
"""


def subprocess_env(path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "PYTHONPATH")}
    env.update(
        NO_COLOR="1",
        TERM="dumb",
        COLUMNS="200",
        PYTHONDONTWRITEBYTECODE="1",
        JIDO_TRIO_DISABLE_PLUGIN_AUTOLOAD="1",
        PYTHONPATH=os.pathsep.join([str(path), str(ROOT)]),
    )
    return env


@attrs.define(eq=False)
class NodeProcess:
    """A ``jido-trio node run`` child process; stdout read line by line, stderr to a file."""

    process: trio.Process
    stderr: Path
    lines: list[str] = attrs.field(factory=list)
    _buffer: bytes = b""
    _read: int = 0

    async def read_line(self) -> str:
        """The next line not read yet."""
        assert self.process.stdout is not None
        index, self._read = self._read, self._read + 1
        while len(self.lines) <= index:
            chunk = await self.process.stdout.receive_some()
            if not chunk:
                raise AssertionError(f"node ended early: {self.lines}\n{self.errors()}")
            *complete, self._buffer = (self._buffer + chunk).split(b"\n")
            self.lines.extend(line.decode() for line in complete)
        return self.lines[index]

    async def rest(self) -> list[str]:
        assert self.process.stdout is not None
        while chunk := await self.process.stdout.receive_some():
            self._buffer += chunk
        self.lines.extend(line.decode() for line in self._buffer.split(b"\n") if line)
        self._buffer = b""
        return self.lines

    def errors(self) -> str:
        return self.stderr.read_text(errors="replace")[-3000:]


@asynccontextmanager
async def node_process(
    tmp_path: Path, *args: str, shutdown_timeout: float = 5.0
) -> AsyncIterator[NodeProcess]:
    (tmp_path / "cli_test_agents.py").write_text(AGENTS_MODULE)
    config = tmp_path / "node.toml"
    config.write_text(
        f'node_name = "proc-node"\nshutdown_timeout = {shutdown_timeout}\n'
        "[plugin_options.cli]\n"
        'admin = "127.0.0.1:7411"\n'  # overridden by --admin below
        'agents = [{ class = "cli_test_agents:Greeter", id = "g1" }]\n'
    )
    stderr = tmp_path / "stderr.txt"
    command = [sys.executable, "-W", "error", "-m", "jido_trio.cli", "node", "run"]
    command += ["--config", str(config), *args]
    with stderr.open("wb") as err:
        process = await trio.lowlevel.open_process(
            command,
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=tmp_path,
            env=subprocess_env(tmp_path),
        )
    node = NodeProcess(process, stderr)
    try:
        yield node
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            if process.returncode is None:
                process.kill()  # only if a test failed before stopping it
            await process.wait()
        assert process.stdout is not None
        await process.stdout.aclose()


async def run_cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [sys.executable, "-W", "error", "-m", "jido_trio.cli", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=subprocess_env(ROOT),
    )


async def stop(node: NodeProcess, signum: signal.Signals) -> Sequence[str]:
    node.process.send_signal(signum)  # this child only
    with trio.fail_after(15):
        code = await node.process.wait()
        lines = await node.rest()
    assert code == 0, f"exit {code}\n{lines}\n{node.errors()}"
    assert node.errors() == ""
    return lines


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
async def test_node_run_serves_the_admin_commands_and_stops_on_sigterm(tmp_path: Path) -> None:
    async with node_process(
        tmp_path, "--admin", "127.0.0.1:0", "--agent", "cli_test_agents:Greeter=g2"
    ) as node:
        with trio.fail_after(20):
            first = await node.read_line()
        assert first.startswith("admin listening on 127.0.0.1:"), first
        admin = first.rsplit(" ", 1)[1]
        address = AdminAddress.parse(admin)
        assert address.port != 0

        with trio.fail_after(60):
            result = await invoke_in_thread("agents", "ls", "--admin", admin)
            assert result.exit_code == 0, result.output
            assert "agents on node 'proc-node' (2)" in result.stdout
            assert result.stdout.count("greeter") == 2

            result = await invoke_in_thread("tree", "--admin", admin)
            assert result.exit_code == 0, result.output
            assert "g1 (agent)  running  restarts=0" in result.stdout
            assert "g2 (agent)  running  restarts=0" in result.stdout

            # The real console script path, exit codes included.
            done = await run_cli("health", "g1", "--admin", admin)
            assert (done.returncode, done.stdout.split()[:2]) == (0, [b"g1:", b"healthy"])
            done = await run_cli("health", "nobody", "--admin", admin)
            assert (done.returncode, done.stdout.split()[:2]) == (3, [b"nobody:", b"not_found"])

            # Garbage on the admin port: an error reply, and the node lives on.
            async with raw_client(address) as client:
                await client.send_body(b"\xc1\xc1\xc1")
                assert error_code(await client.reply() or {}) == "invalid_request"
                await client.send_raw(struct.pack(">I", 0xFFFFFFFF))
                assert error_code(await client.reply() or {}) == "frame_too_large"
                assert await client.reply() is None
            result = await invoke_in_thread("health", "g2", "--admin", admin)
            assert result.exit_code == 0, result.output

        lines = await stop(node, signal.SIGTERM)
    assert lines[-2].startswith("received SIGTERM: stopping node 'proc-node'")
    assert lines[-1] == "node 'proc-node' stopped"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
async def test_node_run_stops_gracefully_on_sigint(tmp_path: Path) -> None:
    async with node_process(tmp_path, "--admin", "127.0.0.1:0") as node:
        with trio.fail_after(20):
            assert (await node.read_line()).startswith("admin listening on ")
        lines = await stop(node, signal.SIGINT)
    assert lines[-2].startswith("received SIGINT: stopping node 'proc-node'")
    assert lines[-1] == "node 'proc-node' stopped"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
async def test_a_second_signal_cuts_a_slow_shutdown_short(tmp_path: Path) -> None:
    args = ["--admin", "127.0.0.1:0", "--agent", "cli_test_agents:Stubborn=s1"]
    async with node_process(tmp_path, *args, shutdown_timeout=60) as node:
        with trio.fail_after(20):
            assert (await node.read_line()).startswith("admin listening on ")
            await node.read_line()
            node.process.send_signal(signal.SIGTERM)
            assert (await node.read_line()).startswith("received SIGTERM: stopping")
        node.process.send_signal(signal.SIGINT)
        with trio.fail_after(10):  # not the 60 s of the agent's on_stop
            code = await node.process.wait()
            lines = await node.rest()
    assert code == 1
    assert lines[-1] == "received SIGINT again: exiting without waiting for node 'proc-node'"


async def test_node_run_fails_cleanly_when_the_admin_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        async with node_process(tmp_path, "--admin", f"127.0.0.1:{port}") as node:
            with trio.fail_after(20):
                code = await node.process.wait()
                lines = await node.rest()
    assert code == 1
    assert lines == []
    assert "error: cannot run the node" in node.errors()
