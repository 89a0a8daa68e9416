"""SQLite state backend: durable across process restarts, with group commit.

Design:

- One ``sqlite3`` connection in WAL mode, used only from worker threads
  (never from the Trio thread) and only by one thread at a time: every
  database call goes through ``trio.to_thread.run_sync`` with a
  :class:`trio.CapacityLimiter` of 1, issued by a single writer task.
- **Group commit.** Callers put operations on a queue and wait. The writer
  task takes everything queued (up to :data:`MAX_BATCH` operations), runs it
  in the thread as one ``BEGIN IMMEDIATE ... COMMIT`` transaction (one fsync
  for the whole batch) and then wakes every waiter with its own result. While a
  batch is being committed the next one accumulates, so N concurrent writers
  cost about one commit per round instead of N.
- Reads go through the same queue, so they are ordered after every write
  acknowledged before they were issued: all three consistency levels are
  strong (there is one file and one connection).
- A write or append returns only after its transaction has committed. A
  compare-and-set that loses raises :class:`~jido_trio.StateConflict` for that
  operation only; the rest of its batch commits. A failure of SQLite itself
  fails the whole batch, the engine's error as its cause: with
  :class:`~jido_trio.Unreachable` when the file is locked by another process
  past ``busy_timeout`` (that passes), with :class:`~jido_trio.EngineError`
  for anything else (an I/O error, a full disk, a corrupt file).

Durability. WAL with ``synchronous=FULL`` (the default) fsyncs the WAL on every
commit, so an acknowledged write survives a crash of the process *and* of the
machine (power loss). Surviving ``SIGKILL`` of the process alone would only need
WAL + commit (``synchronous=NORMAL``: the committed frames are in the OS page
cache, which outlives the process); pass ``{"synchronous": "normal"}`` to trade
machine-crash durability for throughput. Group commit is what keeps ``FULL``
affordable: one fsync per batch, not per write.

Cancellation. A caller cancelled while its operation is still queued removes
it (nothing happens); once the writer has taken it, it runs to completion and
the result is dropped (like a write whose acknowledgement was lost).
"""

from __future__ import annotations

import os
import sqlite3
from collections import deque
from collections.abc import AsyncIterator
from collections.abc import Callable
from collections.abc import Mapping
from contextlib import asynccontextmanager
from typing import Any
from typing import Literal

import attrs
import trio

from .._config import Config
from .._exceptions import ConfigError
from .._exceptions import EngineError
from .._exceptions import JidoError
from .._exceptions import StateConflict
from .._exceptions import Unreachable
from ..abc import Consistency
from ..abc import LogEntry
from ..abc import StateBackend
from ..abc import Versioned
from ..abc import check_consistency
from ..abc import check_expected_version
from ..abc import check_log_limit
from ..abc import check_log_seq
from ..abc import check_option_keys
from ..abc import check_state_key
from ..abc import check_state_value

__all__ = ["MAX_BATCH", "SqliteStateBackend", "open_sqlite_state_backend", "sqlite_factory"]

#: Operations committed together in one transaction at most.
MAX_BATCH = 1024

Synchronous = Literal["full", "normal"]
_SYNCHRONOUS = ("full", "normal")
_OPTIONS = frozenset({"path", "synchronous", "busy_timeout"})

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS kv (
        key TEXT PRIMARY KEY,
        value BLOB NOT NULL,
        version INTEGER NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS log_head (
        stream TEXT PRIMARY KEY,
        last_seq INTEGER NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS log (
        stream TEXT NOT NULL,
        seq INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (stream, seq)
    ) WITHOUT ROWID""",
)

_Fn = Callable[[sqlite3.Connection], Any]


@attrs.define(eq=False)
class _Op:
    """One queued operation and, once done, its outcome."""

    fn: _Fn
    writes: bool
    taken: bool = False
    result: Any = None
    error: BaseException | None = None
    done: trio.Event = attrs.field(factory=trio.Event)


def _prefix_end(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix``
    (in code point order, which is SQLite's BINARY order on UTF-8), or ``None``."""
    chars = list(prefix)
    while chars:
        code = ord(chars.pop()) + 1
        if 0xD800 <= code <= 0xDFFF:
            code = 0xE000  # surrogates cannot be stored as UTF-8
        if code <= 0x10FFFF:
            return "".join(chars) + chr(code)
    return None


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
#: SQLite's primary result codes for "another connection holds the file".
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6


def _int64(name: str, value: int) -> int:
    """``value`` clamped to SQLite's integer range (every larger value orders alike)."""
    return min(max(check_log_seq(name, value), _INT64_MIN), _INT64_MAX)


def _is_locked(exc: Exception) -> bool:
    """Whether SQLite failed because another connection holds the file."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)


def _engine_error(exc: Exception) -> JidoError:
    """What one waiter raises (each its own) when its whole transaction
    failed: :class:`Unreachable` while another process holds the file (past
    ``busy_timeout``; that passes), :class:`EngineError` for anything else
    (an I/O error, a full disk, a corrupt file); the engine's error as cause."""
    error: JidoError
    if _is_locked(exc):
        error = Unreachable(f"the sqlite state file is locked by another process: {exc}")
    else:
        error = EngineError(f"the sqlite state backend failed: {exc}")
    error.__cause__ = exc
    return error


# ---------------------------------------------------------------- in the thread


def _current_version(conn: sqlite3.Connection, key: str) -> int:
    row = conn.execute("SELECT version FROM kv WHERE key = ?", (key,)).fetchone()
    return 0 if row is None else int(row[0])


def _cas(conn: sqlite3.Connection, key: str, expected_version: int | None) -> int:
    actual = _current_version(conn, key)
    if expected_version is not None and expected_version != actual:
        raise StateConflict(key, expected_version, actual or None)
    return actual


@attrs.define(eq=False)
class SqliteStateBackend(StateBackend):
    """A :class:`~jido_trio.abc.StateBackend` in one SQLite file.

    Build it with :func:`open_sqlite_state_backend` (or the ``"sqlite"`` state
    plugin: ``Config(state="sqlite", plugin_options={"sqlite": {"path": ...}})``).

    :ivar transactions: write transactions committed so far (one per batch).
    :ivar operations: operations executed so far (reads included).
    """

    path: str
    synchronous: Synchronous = "full"
    busy_timeout: float = 5.0
    transactions: int = attrs.field(default=0, init=False)
    operations: int = attrs.field(default=0, init=False)
    _conn: sqlite3.Connection | None = attrs.field(default=None, init=False)
    _queue: deque[_Op] = attrs.field(factory=deque, init=False)
    _lot: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot, init=False)
    _limiter: trio.CapacityLimiter = attrs.field(
        factory=lambda: trio.CapacityLimiter(1), init=False
    )
    _closed: bool = attrs.field(default=False, init=False)

    # ------------------------------------------------------------ lifetime

    def _connect(self) -> None:
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout,
            isolation_level=None,  # we issue BEGIN/COMMIT ourselves
            check_same_thread=False,  # used by one worker thread at a time
        )
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal" and self.path != ":memory:":
                raise sqlite3.OperationalError(f"cannot switch {self.path} to WAL (got {mode})")
            conn.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            if conn.in_transaction:
                conn.rollback()
            conn.close()

    async def _writer(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run queued operations in batches until closed with an empty queue.

        Shielded from cancellation: callers that persist state while their node
        is being cancelled (shielded themselves, as agents' final commits are)
        must still be served. It stops only when the backend is closed, after
        committing everything queued.
        """
        with trio.CancelScope(shield=True):
            task_status.started()
            while True:
                while not self._queue:
                    if self._closed:
                        return
                    await self._lot.park()
                batch: list[_Op] = []
                while self._queue and len(batch) < MAX_BATCH:
                    op = self._queue.popleft()
                    op.taken = True
                    batch.append(op)
                # Not cancellable (abandon_on_cancel=False): a batch always
                # finishes and every waiter learns its outcome.
                try:
                    await trio.to_thread.run_sync(self._run_batch, batch, limiter=self._limiter)
                except Exception as exc:  # the engine failed the whole transaction
                    for op in batch:
                        op.error = _engine_error(exc)
                for op in batch:
                    op.done.set()

    def _run_batch(self, batch: list[_Op]) -> None:
        conn = self._conn
        assert conn is not None
        writes = any(op.writes for op in batch)
        try:
            if writes:
                conn.execute("BEGIN IMMEDIATE")
            for op in batch:
                if op.writes:
                    conn.execute("SAVEPOINT op")
                try:
                    op.result = op.fn(conn)
                except sqlite3.Error:
                    raise  # the engine failed: the whole batch fails
                except Exception as exc:
                    # This operation's own failure (a lost compare-and-set, a
                    # value SQLite cannot bind): undo it alone.
                    op.error = exc
                    if op.writes:
                        conn.execute("ROLLBACK TO op")
                if op.writes:
                    conn.execute("RELEASE op")
            if writes:
                conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.rollback()
            for op in batch:
                op.error = op.result = None
            raise
        self.operations += len(batch)
        if writes:
            self.transactions += 1

    async def _submit(self, fn: _Fn, *, writes: bool) -> Any:
        if self._closed:
            raise trio.ClosedResourceError("the sqlite state backend is closed")
        op = _Op(fn=fn, writes=writes)
        self._queue.append(op)
        self._lot.unpark()
        try:
            await op.done.wait()
        except BaseException:
            if not op.taken:
                self._queue.remove(op)
            raise
        if op.error is not None:
            raise op.error
        return op.result

    # ------------------------------------------------------------ key-value

    async def read(self, key: str, *, consistency: Consistency = "strong") -> Versioned | None:
        check_state_key(key)
        check_consistency(consistency)

        def run(conn: sqlite3.Connection) -> Versioned | None:
            row = conn.execute("SELECT value, version FROM kv WHERE key = ?", (key,)).fetchone()
            return None if row is None else Versioned(value=bytes(row[0]), version=int(row[1]))

        result: Versioned | None = await self._submit(run, writes=False)
        return result

    async def write(self, key: str, value: bytes, *, expected_version: int | None = None) -> int:
        check_state_key(key)
        data = check_state_value(value)
        check_expected_version(expected_version)

        def run(conn: sqlite3.Connection) -> int:
            version = _cas(conn, key, expected_version) + 1
            conn.execute(
                "INSERT INTO kv (key, value, version) VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value, version = excluded.version",
                (key, data, version),
            )
            return version

        version: int = await self._submit(run, writes=True)
        return version

    async def delete(self, key: str, *, expected_version: int | None = None) -> None:
        check_state_key(key)
        check_expected_version(expected_version)

        def run(conn: sqlite3.Connection) -> None:
            _cas(conn, key, expected_version)
            conn.execute("DELETE FROM kv WHERE key = ?", (key,))

        await self._submit(run, writes=True)

    async def keys(self, prefix: str = "") -> list[str]:
        check_state_key(prefix, "key prefix")
        end = _prefix_end(prefix)

        def run(conn: sqlite3.Connection) -> list[str]:
            if end is None:
                rows = conn.execute("SELECT key FROM kv WHERE key >= ? ORDER BY key", (prefix,))
            else:
                rows = conn.execute(
                    "SELECT key FROM kv WHERE key >= ? AND key < ? ORDER BY key", (prefix, end)
                )
            return [str(row[0]) for row in rows]

        found: list[str] = await self._submit(run, writes=False)
        return found

    # ------------------------------------------------------------ logs

    async def append(self, stream: str, data: bytes) -> int:
        check_state_key(stream, "log stream name")
        payload = check_state_value(data, "log records")

        def run(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT last_seq FROM log_head WHERE stream = ?", (stream,)
            ).fetchone()
            seq = 1 if row is None else int(row[0]) + 1
            conn.execute(
                "INSERT INTO log_head (stream, last_seq) VALUES (?, ?) "
                "ON CONFLICT (stream) DO UPDATE SET last_seq = excluded.last_seq",
                (stream, seq),
            )
            conn.execute(
                "INSERT INTO log (stream, seq, data) VALUES (?, ?, ?)", (stream, seq, payload)
            )
            return seq

        seq: int = await self._submit(run, writes=True)
        return seq

    async def read_log(
        self, stream: str, *, after: int = 0, limit: int | None = None
    ) -> list[LogEntry]:
        check_state_key(stream, "log stream name")
        after = _int64("after", after)
        limit = check_log_limit(limit)
        if limit is not None:
            limit = min(limit, _INT64_MAX)

        def run(conn: sqlite3.Connection) -> list[LogEntry]:
            rows = conn.execute(
                "SELECT seq, data FROM log WHERE stream = ? AND seq > ? ORDER BY seq LIMIT ?",
                (stream, after, -1 if limit is None else limit),
            )
            return [LogEntry(seq=int(seq), data=bytes(data)) for seq, data in rows]

        entries: list[LogEntry] = await self._submit(run, writes=False)
        return entries

    async def trim_log(self, stream: str, *, upto: int) -> None:
        check_state_key(stream, "log stream name")
        upto = _int64("upto", upto)

        def run(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM log WHERE stream = ? AND seq <= ?", (stream, upto))

        await self._submit(run, writes=True)


@asynccontextmanager
async def open_sqlite_state_backend(
    path: str | os.PathLike[str],
    *,
    synchronous: Synchronous = "full",
    busy_timeout: float = 5.0,
) -> AsyncIterator[SqliteStateBackend]:
    """Open (creating if needed) the SQLite state file ``path`` for a block.

    On exit, operations already queued are committed, then the writer task
    stops and the connection is closed (in the worker thread).

    :param path: the database file (``":memory:"`` for a throwaway database).
    :param synchronous: ``"full"`` (fsync every commit; survives power loss)
        or ``"normal"`` (survives the process being killed, not the machine).
    :param busy_timeout: seconds to wait for another process holding the file.
    :raises ConfigError: the file cannot be opened as a WAL database.
    """
    if synchronous not in _SYNCHRONOUS:
        raise ConfigError(
            f"sqlite option 'synchronous' must be 'full' or 'normal', got {synchronous!r}"
        )
    backend = SqliteStateBackend(
        path=os.fspath(path), synchronous=synchronous, busy_timeout=busy_timeout
    )
    limiter = backend._limiter
    try:
        await trio.to_thread.run_sync(backend._connect, limiter=limiter)
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot open sqlite state database {backend.path!r}: {exc}") from exc
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(backend._writer)
            try:
                yield backend
            finally:
                # The writer commits what is queued, then returns; the nursery
                # waits for it.
                backend._closed = True
                backend._lot.unpark_all()
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(backend._disconnect, limiter=limiter)


def sqlite_factory(config: Config, options: Mapping[str, Any]) -> Any:
    """The ``"sqlite"`` state plugin factory: validates ``options`` and returns
    :func:`open_sqlite_state_backend` for them.

    :raises ConfigError: ``path`` missing or an option is invalid/unknown.
    """
    check_option_keys(options, _OPTIONS, "plugin_options['sqlite']")
    path = options.get("path")
    if path is None:
        raise ConfigError(
            "state 'sqlite' needs a database path: plugin_options={'sqlite': {'path': 'state.db'}}"
        )
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise ConfigError(f"sqlite option 'path' must be a non-empty path, got {path!r}")
    synchronous = options.get("synchronous", "full")
    if synchronous not in _SYNCHRONOUS:
        raise ConfigError(
            f"sqlite option 'synchronous' must be 'full' or 'normal', got {synchronous!r}"
        )
    busy_timeout = options.get("busy_timeout", 5.0)
    if (
        isinstance(busy_timeout, bool)
        or not isinstance(busy_timeout, (int, float))
        or busy_timeout < 0
    ):
        raise ConfigError(
            f"sqlite option 'busy_timeout' must be a number >= 0, got {busy_timeout!r}"
        )
    return open_sqlite_state_backend(
        path, synchronous=synchronous, busy_timeout=float(busy_timeout)
    )
