"""The SQLite state backend: group commit, persistence, options, and a real
SIGKILL of a real OS process."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Awaitable
from collections.abc import Callable
from contextlib import closing
from functools import partial
from pathlib import Path

import pytest
import trio

import jido_trio as jt
from jido_trio.abc import LogEntry
from jido_trio.local import SqliteStateBackend
from jido_trio.local import open_sqlite_state_backend
from jido_trio.local._sqlite import MAX_BATCH
from jido_trio.local._sqlite import _prefix_end
from tests._agents import Counter

WORKER = Path(__file__).with_name("sqlite_worker.py")


# ---------------------------------------------------------------- group commit


async def test_sequential_writes_commit_one_by_one(tmp_path: Path) -> None:
    async with open_sqlite_state_backend(tmp_path / "s.db") as b:
        for i in range(20):
            await b.write("k", b"%d" % i)
        assert b.transactions == 20
        assert b.operations == 20
        await b.read("k")
        assert b.transactions == 20, "a read-only batch is not a write transaction"


async def test_concurrent_writes_are_group_committed(tmp_path: Path) -> None:
    writers, rounds = 100, 10
    async with open_sqlite_state_backend(tmp_path / "s.db") as b:

        async def writer(i: int) -> None:
            for r in range(rounds):
                await b.write(f"k{i}", b"%d" % r)
                await b.append(f"log{i % 5}", b"%d:%d" % (i, r))

        async with trio.open_nursery() as nursery:
            for i in range(writers):
                nursery.start_soon(writer, i)
        operations = writers * rounds * 2
        assert b.operations == operations
        # One transaction per round of all writers, not one per write.
        assert b.transactions <= operations / 20, b.transactions
        assert len(await b.keys()) == writers
        logged = [len(await b.read_log(f"log{n}")) for n in range(5)]
        assert sum(logged) == writers * rounds


async def test_batches_are_bounded(tmp_path: Path) -> None:
    async with open_sqlite_state_backend(tmp_path / "s.db", synchronous="normal") as b:
        async with trio.open_nursery() as nursery:
            for i in range(MAX_BATCH * 2 + 10):
                nursery.start_soon(b.append, "log", b"%d" % i)
        assert b.transactions >= 3
        assert len(await b.read_log("log")) == MAX_BATCH * 2 + 10


async def test_a_lost_compare_and_set_fails_alone_in_its_batch(tmp_path: Path) -> None:
    async with open_sqlite_state_backend(tmp_path / "s.db") as b:
        outcomes: list[str] = []

        async def create(i: int) -> None:
            try:
                await b.write("only-once", b"%d" % i, expected_version=0)
            except jt.StateConflict:
                outcomes.append("conflict")
            else:
                outcomes.append("won")
            await b.write(f"mine/{i}", b"x")

        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(create, i)
        assert sorted(outcomes) == ["conflict"] * 49 + ["won"]
        assert len(await b.keys("mine/")) == 50
        assert b.transactions < 20


async def in_one_batch(b: SqliteStateBackend, *calls: Callable[[], Awaitable[None]]) -> None:
    """Write the key "before", then run ``calls`` so that all of them land in
    the writer's next batch: the thread limiter is held until they are queued."""
    async with trio.open_nursery() as nursery, b._limiter:
        nursery.start_soon(b.write, "before", b"v")
        await trio.testing.wait_all_tasks_blocked()
        for call in calls:
            nursery.start_soon(call)
        await trio.testing.wait_all_tasks_blocked()


async def test_an_operation_that_fails_on_its_own_fails_alone(tmp_path: Path) -> None:
    """An operation's own failure (here a value SQLite cannot bind) undoes
    that operation alone; the rest of its batch commits."""
    async with open_sqlite_state_backend(tmp_path / "s.db") as b:
        results: dict[str, object] = {}

        def unbindable(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO kv (key, value, version) VALUES ('half', x'', 1)")
            conn.execute("SELECT ?", (2**70,))  # OverflowError, not an sqlite3.Error

        async def put(key: str) -> None:
            results[key] = await b.write(key, b"v")

        async def bad() -> None:
            try:
                await b._submit(unbindable, writes=True)
            except OverflowError as exc:
                results["bad"] = exc

        await in_one_batch(b, partial(put, "good-1"), bad, partial(put, "good-2"))
        assert results["good-1"] == results["good-2"] == 1
        assert isinstance(results["bad"], OverflowError)
        assert await b.keys() == ["before", "good-1", "good-2"]
        assert b.transactions == 2


async def test_an_engine_failure_fails_its_whole_batch_only(tmp_path: Path) -> None:
    """Each waiter of a batch SQLite failed raises its own EngineError."""
    async with open_sqlite_state_backend(tmp_path / "s.db") as b:
        errors: list[BaseException] = []

        def broken(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO kv (key, value, version) VALUES ('half', x'', 1)")
            raise sqlite3.OperationalError("disk I/O error")

        async def write(key: str) -> None:
            try:
                await b.write(key, b"v")
            except jt.EngineError as exc:
                errors.append(exc)

        async def fail() -> None:
            try:
                await b._submit(broken, writes=True)
            except jt.EngineError as exc:
                errors.append(exc)

        await in_one_batch(b, partial(write, "a"), fail, partial(write, "b"))
        assert len(errors) == 3
        assert len({id(e) for e in errors}) == 3, "each waiter raises its own exception"
        assert all("disk I/O error" in str(e) for e in errors)
        assert all(isinstance(e.__cause__, sqlite3.OperationalError) for e in errors)
        assert await b.keys() == ["before"], "the failed batch was rolled back whole"
        assert await b.write("after", b"v") == 1


async def test_a_corrupt_file_raises_engine_error(tmp_path: Path) -> None:
    """A storage failure is the engine failing the operation (EngineError,
    SQLite's error as the cause), not the engine being out of reach."""
    path = tmp_path / "s.db"
    async with open_sqlite_state_backend(path) as b:
        for i in range(300):
            await b.write(f"key-{i:04d}", b"x" * 200)
    with path.open("r+b") as f:  # keep page 1 (header, schema); ruin the rest
        f.seek(2 * 4096)
        f.write(b"\xff" * (path.stat().st_size - 2 * 4096))
    async with open_sqlite_state_backend(path) as b:
        with pytest.raises(jt.EngineError, match="malformed") as raised:
            await b.keys()
        assert not isinstance(raised.value, jt.Unreachable)
        assert isinstance(raised.value.__cause__, sqlite3.DatabaseError)
        with pytest.raises(jt.EngineError):
            await b.read("key-0100")


# ---------------------------------------------------------------- persistence


async def test_everything_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with open_sqlite_state_backend(path) as b:
        v = await b.write("a", b"1")
        v = await b.write("a", b"2", expected_version=v)
        await b.write("b/c", b"\x00")
        await b.write("gone", b"x")
        await b.delete("gone")
        for i in range(5):
            await b.append("log", b"%d" % i)
        await b.trim_log("log", upto=2)
    async with open_sqlite_state_backend(path) as b:
        found = await b.read("a")
        assert found is not None and (found.value, found.version) == (b"2", v)
        assert await b.keys() == ["a", "b/c"]
        with pytest.raises(jt.StateConflict):
            await b.write("a", b"3", expected_version=v - 1)
        assert [e.seq for e in await b.read_log("log")] == [3, 4, 5]
        assert await b.append("log", b"next") == 6, "sequence numbers are never reused"


async def test_closing_drains_queued_operations(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    acknowledged: list[int] = []
    refused: list[int] = []

    async def write(b: SqliteStateBackend, i: int) -> None:
        try:
            await b.write(f"k/{i:03d}", b"v")
        except trio.ClosedResourceError:
            refused.append(i)
        else:
            acknowledged.append(i)

    async with trio.open_nursery() as nursery, open_sqlite_state_backend(path) as b:
        for i in range(100):
            nursery.start_soon(write, b, i)
        await trio.testing.wait_all_tasks_blocked()
        for i in range(100, 110):
            nursery.start_soon(write, b, i)  # these start after the close
    assert sorted(acknowledged) == list(range(100))
    assert sorted(refused) == list(range(100, 110))
    assert b._conn is None
    async with open_sqlite_state_backend(path) as b:
        assert await b.keys("k/") == [f"k/{i:03d}" for i in range(100)]


async def test_writes_are_served_while_the_surroundings_are_cancelled(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with trio.CancelScope() as outer:
        async with open_sqlite_state_backend(path) as b:
            outer.cancel()
            # Like an agent's final commit during a cancelled shutdown.
            with trio.CancelScope(shield=True), trio.fail_after(10):
                assert await b.write("k", b"v") == 1
    async with open_sqlite_state_backend(path) as b:
        found = await b.read("k")
        assert found is not None and found.value == b"v"


class Tally(jt.Agent):
    type = "tally"
    State = dict

    @jt.action("add")
    async def add(self, state: dict[str, int], n: int) -> dict[str, int]:
        return {"total": state.get("total", 0) + n}


async def test_agent_state_is_persisted_when_the_node_is_cancelled(tmp_path: Path) -> None:
    config = jt.Config(state="sqlite", plugin_options={"sqlite": {"path": str(tmp_path / "n.db")}})
    with trio.CancelScope() as outer:
        async with jt.open_node(config) as node:
            ref = await node.start_agent(Tally, "t")
            for n in range(1, 11):
                await node.send_instruction(ref, jt.Instruction("add", {"n": n}))
            outer.cancel()  # the node is cancelled with work in its mailbox
            await trio.sleep_forever()
    async with jt.open_node(config) as node:
        ref = await node.start_agent(Tally, "t")
        state = await node.query_agent(ref)
        # Everything the agent applied before it stopped was committed.
        assert 0 < state["total"] <= 55


async def test_file_is_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with open_sqlite_state_backend(path) as b:
        await b.write("k", b"v")
        assert b.synchronous == "full"
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_an_operation_cancelled_while_queued_never_runs(tmp_path: Path) -> None:
    async with open_sqlite_state_backend(tmp_path / "s.db") as b:
        # Holding the thread limiter, the writer cannot start its next batch.
        async with trio.open_nursery() as nursery, b._limiter:
            nursery.start_soon(b.write, "first", b"1")
            await trio.testing.wait_all_tasks_blocked()
            with trio.CancelScope() as scope:
                scope.cancel()
                await b.write("never", b"x")
            assert not b._queue
        assert await b.keys() == ["first"]
        assert await b.write("k", b"v") == 1


def test_prefix_upper_bounds() -> None:
    assert _prefix_end("") is None
    assert _prefix_end("ab") == "ac"
    assert _prefix_end("a\U0010ffff") == "b"
    assert _prefix_end("\U0010ffff") is None
    assert _prefix_end("a\ud7ff") == "a\ue000"


async def test_keys_with_extreme_code_points(tmp_path: Path) -> None:
    keys = ["a", "a\U0010ffff", "a\U0010ffffz", "b", "\ud7ff", "\ud7ffx", "\ue000", "\U0010ffff"]
    async with open_sqlite_state_backend(tmp_path / "s.db") as b:
        for key in keys:
            await b.write(key, b"")
        for prefix in ("", "a", "a\U0010ffff", "\ud7ff", "\U0010ffff", "b"):
            assert await b.keys(prefix) == sorted(k for k in keys if k.startswith(prefix))


async def test_log_positions_beyond_sqlite_integers(tmp_path: Path) -> None:
    async with open_sqlite_state_backend(tmp_path / "s.db") as b:
        await b.append("s", b"x")
        assert await b.read_log("s", after=-(2**70), limit=2**70) == [LogEntry(seq=1, data=b"x")]
        await b.trim_log("s", upto=2**70)
        assert await b.read_log("s") == []


# ---------------------------------------------------------------- configuration


async def test_node_with_sqlite_state(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    config = jt.Config(state="sqlite", plugin_options={"sqlite": {"path": str(path)}})
    async with jt.open_node(config) as node:
        assert isinstance(node.state, SqliteStateBackend)
        await node.state.write("k", b"v")
    async with open_sqlite_state_backend(path) as b:
        found = await b.read("k")
        assert found is not None and found.value == b"v"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "needs a database path"),
        ({"path": ""}, "must be a non-empty path"),
        (
            {"path": "x.db", "colour": "blue"},
            r"unknown plugin_options\['sqlite'\] key\(s\) 'colour'",
        ),
        ({"path": "x.db", "synchronous": "off"}, "'full' or 'normal'"),
        ({"path": "x.db", "busy_timeout": -1}, "busy_timeout"),
        ({"path": "/nonexistent-dir/x.db"}, "cannot open sqlite state database"),
    ],
)
async def test_bad_options_are_config_errors(options: dict[str, object], message: str) -> None:
    config = jt.Config(state="sqlite", plugin_options={"sqlite": options})
    with pytest.raises(jt.ConfigError, match=message):
        async with jt.open_node(config):
            pass  # pragma: no cover


async def test_missing_options_entirely() -> None:
    with pytest.raises(jt.ConfigError, match="needs a database path"):
        async with jt.open_node(jt.Config(state="sqlite")):
            pass  # pragma: no cover


# ---------------------------------------------------------------- SIGKILL


class Worker:
    """One run of tests/sqlite_worker.py; reads its output line by line.

    Its stderr goes to a file (so a chatty worker cannot fill a pipe and stall).
    """

    def __init__(self, process: trio.Process, stderr: Path) -> None:
        self.process = process
        self.stderr = stderr
        self.lines: list[str] = []
        self._buffer = b""

    @classmethod
    async def start(cls, stderr: Path, *args: str) -> Worker:
        with stderr.open("wb") as err:
            process = await trio.lowlevel.open_process(
                [sys.executable, str(WORKER), *args], stdout=subprocess.PIPE, stderr=err
            )
        return cls(process, stderr)

    def _errors(self) -> str:
        return self.stderr.read_text(errors="replace")[-3000:]

    async def read_until(self, predicate: Callable[[list[str]], bool]) -> None:
        assert self.process.stdout is not None
        while not predicate(self.lines):
            chunk = await self.process.stdout.receive_some()
            if not chunk:
                raise AssertionError(f"worker ended early: {self.lines[-3:]}\n{self._errors()}")
            self._add(chunk)

    def _add(self, chunk: bytes | bytearray) -> None:
        *complete, self._buffer = (self._buffer + chunk).split(b"\n")
        self.lines.extend(line.decode() for line in complete)

    async def kill(self) -> None:
        """SIGKILL this worker (by its pid) and collect what it printed before."""
        if self.process.returncode is None:
            os.kill(self.process.pid, signal.SIGKILL)
        code = await self.process.wait()
        assert code == -signal.SIGKILL, f"worker exited with {code}\n{self._errors()}"
        await self._drain()

    async def finish(self) -> None:
        await self._drain()
        code = await self.process.wait()
        assert code == 0, f"worker exited with {code}\n{self._errors()}"

    async def _drain(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        async with stdout:
            while chunk := await stdout.receive_some():
                self._add(chunk)

    def acks(self) -> list[int]:
        return [int(line.split()[1]) for line in self.lines if line.startswith("ack ")]

    def logged(self) -> list[tuple[int, str]]:
        found = []
        for line in self.lines:
            if line.startswith("log "):
                _, seq, data = line.split()
                found.append((int(seq), data))
        return found

    def sent(self) -> list[str]:
        return [line.split()[1] for line in self.lines if line.startswith("sent ")]

    def ready(self) -> int:
        return int(next(line for line in self.lines if line.startswith("ready ")).split()[1])


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
async def test_acknowledged_state_and_log_survive_sigkill(tmp_path: Path) -> None:
    path = str(tmp_path / "killed.db")
    acked: list[int] = []
    sent: list[str] = []
    logged: list[tuple[int, str]] = []
    with trio.fail_after(120):
        for round in range(3):
            worker = await Worker.start(tmp_path / f"run-{round}.err", "run", path, "1000000")
            try:
                await worker.read_until(
                    lambda lines: sum(x.startswith("ack") for x in lines) >= 150
                )
            finally:
                with trio.CancelScope(shield=True):
                    await worker.kill()  # mid-stream: it was still counting
            assert "done" not in worker.lines
            start = worker.ready()
            assert start >= max(acked, default=0), (
                f"round {round} resumed at {start}, acked {acked[-1:]}"
            )
            assert min(worker.acks()) > start
            acked += worker.acks()
            sent += worker.sent()
            logged += worker.logged()

        checker = await Worker.start(tmp_path / "check.err", "check", path)
        await checker.finish()
    persisted = json.loads(checker.lines[0])
    assert persisted["count"] >= max(acked)
    # Every increment is +1 and applied exactly once: those acknowledged by a
    # call and those accepted at-least-once (replayed from the durable mailbox
    # log after the kill) are all in the count.
    assert len(sent) == len(set(sent)) > 0
    assert persisted["count"] >= len(acked) + len(sent)
    log = [(seq, data) for seq, data in persisted["log"]]
    assert [seq for seq, _ in log] == sorted({seq for seq, _ in log}), "log seqs must grow"
    missing = set(logged) - set(log)
    assert not missing, f"{len(missing)} acknowledged log records lost: {sorted(missing)[:5]}"
    counts_in_log = {int(data.split(":")[1]) for _, data in log}
    assert max(counts_in_log) <= persisted["count"]
    assert len(acked) == len(set(acked)), "no count was acknowledged twice across restarts"


async def test_a_file_locked_by_another_process_is_unreachable(tmp_path: Path) -> None:
    """Past ``busy_timeout`` the caller gets Unreachable (the lock passes), not
    EngineError; the refused at-least-once send was not logged, so it is
    never applied."""
    path = tmp_path / "n.db"
    options = {"path": str(path), "busy_timeout": 0.05}
    config = jt.Config(node_name="n", state="sqlite", plugin_options={"sqlite": options})
    async with jt.open_node(config) as node:
        ref = await node.start_agent(Counter, "c")
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            with pytest.raises(jt.Unreachable, match="database is locked") as raised:
                await node.send_instruction(
                    ref, jt.Instruction("increment", {"by": 100}), delivery="at_least_once"
                )
            assert isinstance(raised.value.__cause__, sqlite3.OperationalError)
            assert not isinstance(raised.value, jt.EngineError)
        finally:
            other.execute("ROLLBACK")
            other.close()
        await node.send_instruction(ref, jt.Instruction("increment"), delivery="at_least_once")
        assert await node.call(ref, jt.Instruction("get")) == 1
