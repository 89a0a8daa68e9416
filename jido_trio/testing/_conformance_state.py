"""Conformance checks for :class:`jido_trio.abc.StateBackend`."""

from __future__ import annotations

import random
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Collection
from typing import Any
from typing import cast

import trio

from .._exceptions import StateConflict
from ..abc import Consistency
from ..abc import LogEntry
from ..abc import StateBackend
from ..abc import Versioned
from ._conformance_common import Check
from ._conformance_common import Suite
from ._conformance_common import check
from ._conformance_common import expect_checkpoint
from ._conformance_common import opened_engine
from ._conformance_common import raises

__all__ = ["STATE_SUITE", "check_state_backend"]

STATE_SUITE = Suite("StateBackend")
_check = STATE_SUITE.register

_LEVELS: tuple[Consistency, ...] = ("strong", "eventual", "weak")


async def _strong(b: StateBackend, key: str) -> Versioned | None:
    return await b.read(key, consistency="strong")


def _versioned(found: object, what: str) -> Versioned:
    check(isinstance(found, Versioned), f"{what}: expected a Versioned, got {found!r}")
    assert isinstance(found, Versioned)
    check(
        isinstance(found.value, bytes), f"{what}: value is {type(found.value).__name__}, not bytes"
    )
    check(
        isinstance(found.version, int) and not isinstance(found.version, bool),
        f"{what}: version is {found.version!r}, not an int",
    )
    return found


def _version(value: object, what: str) -> int:
    check(
        isinstance(value, int) and not isinstance(value, bool) and value >= 1,
        f"{what}: expected a version (int >= 1), got {value!r}",
    )
    assert isinstance(value, int)
    return value


def _conflict(exc: list[BaseException], key: str, expected: int, what: str) -> None:
    error = exc[0]
    assert isinstance(error, StateConflict)
    check(error.key == key, f"{what}: StateConflict.key is {error.key!r}, expected {key!r}")
    check(
        error.expected == expected,
        f"{what}: StateConflict.expected is {error.expected!r}, expected {expected!r}",
    )


# ---------------------------------------------------------------- key-value


@_check
async def _state_empty(b: StateBackend, timeout: float) -> None:
    """a fresh backend holds no keys and no log records"""
    check(await b.keys() == [], f"keys() of a fresh backend is {await b.keys()!r}, expected []")
    for level in _LEVELS:
        found = await b.read("missing", consistency=level)
        check(found is None, f"read of an absent key ({level}) returned {found!r}, expected None")
    check(await b.read_log("missing") == [], "read_log of an absent stream is not []")


@_check
async def _state_write_read(b: StateBackend, timeout: float) -> None:
    """write returns a version that a strong read returns with the value"""
    version = _version(await b.write("k", b"v1"), "write('k')")
    found = _versioned(await _strong(b, "k"), "read('k') after write")
    check(found.value == b"v1", f"read('k') returned value {found.value!r}, expected b'v1'")
    check(
        found.version == version, f"read('k') has version {found.version}, write returned {version}"
    )
    for level in _LEVELS[1:]:
        seen = await b.read("k", consistency=level)
        check(
            seen is None or (_versioned(seen, f"read({level})").value == b"v1"),
            f"read('k', consistency={level!r}) returned {seen!r}: neither absent nor a written value",
        )
    default = _versioned(await b.read("k"), "read('k') with the default consistency")
    check(default == found, f"read('k') by default returned {default!r}, strong read {found!r}")


async def _converged(
    b: StateBackend, key: str, level: Consistency, want: bytes | None, timeout: float
) -> Versioned | None:
    """Read ``key`` at ``level`` until it returns ``want`` (a value, or ``None``
    for absent), for up to ``timeout`` seconds; the last read."""
    found = await b.read(key, consistency=level)
    with trio.move_on_after(timeout):
        while (None if found is None else found.value) != want:
            await trio.sleep(timeout / 50)
            found = await b.read(key, consistency=level)
    return found


@_check
async def _state_relaxed_reads_converge(b: StateBackend, timeout: float) -> None:
    """eventual and weak reads see this node's writes and deletes within the timeout"""
    for level in _LEVELS[1:]:
        key = f"relaxed/{level}"
        for i, want in enumerate((b"first", b"second", None)):
            if want is None:
                await b.delete(key)
            else:
                await b.write(key, want)
            found = await _converged(b, key, level, want, timeout)
            got = None if found is None else _versioned(found, f"read({level})").value
            check(
                got == want,
                f"read({key!r}, consistency={level!r}) still returned {got!r} {timeout}s after "
                f"{'deleting it' if want is None else f'writing {want!r}'} (step {i})",
            )


@_check
async def _state_copies_buffers(b: StateBackend, timeout: float) -> None:
    """a bytearray written or appended is copied: changing it afterwards changes nothing stored"""
    # Typed bytes, but bytes-like values are accepted (check_state_value copies them).
    buffer = bytearray(b"before")
    await b.write("k", cast(bytes, buffer))
    await b.append("s", cast(bytes, buffer))
    view = bytearray(b"viewed")
    await b.write("v", cast(bytes, memoryview(view)))
    buffer[:] = b"AFTER!"
    view[:] = b"CHANGE"
    found = _versioned(await _strong(b, "k"), "read of a value written from a bytearray")
    check(found.value == b"before", f"the stored value follows the caller's buffer: {found!r}")
    found = _versioned(await _strong(b, "v"), "read of a value written from a memoryview")
    check(found.value == b"viewed", f"the stored value follows the caller's buffer: {found!r}")
    log = _entries(await b.read_log("s"), "read_log of a record appended from a bytearray")
    check(
        [e.data for e in log] == [b"before"],
        f"the stored log record follows the caller's buffer: {log!r}",
    )


@_check
async def _state_versions_grow(b: StateBackend, timeout: float) -> None:
    """every unconditional write of a key returns a strictly greater version"""
    last = 0
    for i in range(6):
        version = _version(await b.write("k", b"%d" % i), f"write #{i}")
        check(version > last, f"write #{i} returned version {version}, not greater than {last}")
        last = version
    found = _versioned(await _strong(b, "k"), "read after 6 writes")
    check(found.value == b"5" and found.version == last, f"read returned {found!r}")
    other = _version(await b.write("other", b"x"), "write('other')")
    again = _versioned(await _strong(b, "k"), "read('k') after writing another key")
    check(again.version == last, f"writing 'other' (version {other}) changed 'k' to {again!r}")


@_check
async def _state_compare_and_set(b: StateBackend, timeout: float) -> None:
    """expected_version: 0 means absent, n means current version n, else StateConflict"""
    with raises(StateConflict, "write(absent, expected_version=3)") as exc:
        await b.write("k", b"x", expected_version=3)
    _conflict(exc, "k", 3, "write(absent, expected_version=3)")
    check(await _strong(b, "k") is None, "a conflicting write created the key")
    v1 = _version(await b.write("k", b"a", expected_version=0), "write(absent, expected_version=0)")
    with raises(StateConflict, "write(existing, expected_version=0)") as exc:
        await b.write("k", b"x", expected_version=0)
    _conflict(exc, "k", 0, "write(existing, expected_version=0)")
    v2 = _version(await b.write("k", b"b", expected_version=v1), "write(expected_version=current)")
    check(v2 > v1, f"compare-and-set returned version {v2}, not greater than {v1}")
    with raises(StateConflict, "write with a stale expected_version") as exc:
        await b.write("k", b"stale", expected_version=v1)
    _conflict(exc, "k", v1, "write with a stale expected_version")
    with raises(StateConflict, "write with a future expected_version"):
        await b.write("k", b"future", expected_version=v2 + 1)
    found = _versioned(await _strong(b, "k"), "read after conflicts")
    check(
        found.value == b"b" and found.version == v2,
        f"conflicting writes changed the value: read {found!r}, expected b'b' at version {v2}",
    )
    v3 = _version(await b.write("k", b"c"), "unconditional write after compare-and-set")
    check(v3 > v2, f"unconditional write returned version {v3}, not greater than {v2}")


@_check
async def _state_delete(b: StateBackend, timeout: float) -> None:
    """delete removes a key; absent keys are fine; expected_version is checked"""
    await b.delete("never-written")
    await b.delete("never-written", expected_version=0)
    with raises(StateConflict, "delete(absent, expected_version=1)") as exc:
        await b.delete("never-written", expected_version=1)
    _conflict(exc, "never-written", 1, "delete(absent, expected_version=1)")
    version = _version(await b.write("k", b"v"), "write('k')")
    with raises(StateConflict, "delete with a wrong expected_version") as exc:
        await b.delete("k", expected_version=version + 1)
    _conflict(exc, "k", version + 1, "delete with a wrong expected_version")
    with raises(StateConflict, "delete(existing, expected_version=0)"):
        await b.delete("k", expected_version=0)
    check(await _strong(b, "k") is not None, "a conflicting delete removed the key")
    await b.delete("k", expected_version=version)
    check(await _strong(b, "k") is None, "read after delete did not return None")
    check("k" not in await b.keys(), "keys() still lists a deleted key")
    await b.delete("k")  # deleting again is fine
    again = _version(await b.write("k", b"w", expected_version=0), "re-create with expected 0")
    found = _versioned(await _strong(b, "k"), "read after re-create")
    check(found.value == b"w" and found.version == again, f"read after re-create: {found!r}")
    await b.write("j", b"1")
    await b.delete("j")
    check(await _strong(b, "j") is None, "unconditional delete did not remove the key")


@_check
async def _state_keys_prefix(b: StateBackend, timeout: float) -> None:
    """keys(prefix) lists exactly the keys starting with prefix, sorted"""
    names = ["a", "a/", "a/b", "a/c/d", "ab", "b", "b/a", "é", "é/ü", "日本/x", "z z", "🙂/1"]
    for i, key in enumerate(reversed(names)):
        await b.write(key, b"%d" % i)
    cases = ["", "a", "a/", "a/c", "a/c/d", "ab", "abc", "b/", "é", "日本", "🙂", "z ", "zz"]
    for prefix in cases:
        got = await b.keys(prefix)
        want = sorted(k for k in names if k.startswith(prefix))
        check(got == want, f"keys({prefix!r}) returned {got!r}, expected {want!r}")
    check(await b.keys() == sorted(names), "keys() without a prefix is not every key, sorted")
    await b.delete("a/b")
    check(await b.keys("a/") == ["a/", "a/c/d"], f"keys('a/') after delete: {await b.keys('a/')!r}")


@_check
async def _state_binary_values(b: StateBackend, timeout: float) -> None:
    """values are arbitrary bytes, stored and returned exactly (empty, NUL, 64 KiB)"""
    values = {
        "empty": b"",
        "nul": b"\x00",
        "bytes": bytes(range(256)),
        "utf8-invalid": b"\xff\xfe\x00\xc3(",
        "large": random.Random(7).randbytes(64 * 1024),
    }
    for key, value in values.items():
        await b.write(key, value)
    for key, value in values.items():
        found = _versioned(await _strong(b, key), f"read({key!r})")
        check(
            found.value == value,
            f"value of {key!r} came back changed ({len(found.value)} bytes, wrote {len(value)})",
        )


def _wrong(value: object) -> Any:
    """An argument of the wrong type (hidden from type checkers)."""
    return value


@_check
async def _state_bad_arguments(b: StateBackend, timeout: float) -> None:
    """bad arguments raise TypeError or ValueError (jido_trio.abc's checks) and store nothing"""
    cases: list[tuple[type[Exception], str, Callable[[], Awaitable[object]]]] = [
        (TypeError, "read(key=1)", lambda: b.read(_wrong(1))),
        (ValueError, "read(consistency='always')", lambda: b.read("k", consistency=_wrong("x"))),
        (TypeError, "write(key=None)", lambda: b.write(_wrong(None), b"v")),
        (TypeError, "write(value='text')", lambda: b.write("k", _wrong("text"))),
        (ValueError, "write(key with a lone surrogate)", lambda: b.write("k\udc00", b"v")),
        (ValueError, "write(expected_version=-1)", lambda: b.write("k", b"v", expected_version=-1)),
        (
            ValueError,
            "write(expected_version=True)",
            lambda: b.write("k", b"", expected_version=True),
        ),
        (ValueError, "delete(expected_version=-1)", lambda: b.delete("k", expected_version=-1)),
        (TypeError, "keys(prefix=None)", lambda: b.keys(_wrong(None))),
        (TypeError, "append(stream=None)", lambda: b.append(_wrong(None), b"r")),
        (TypeError, "append(data='text')", lambda: b.append("s", _wrong("text"))),
        (TypeError, "read_log(after='0')", lambda: b.read_log("s", after=_wrong("0"))),
        (TypeError, "read_log(limit=1.5)", lambda: b.read_log("s", limit=_wrong(1.5))),
        (ValueError, "read_log(limit=-1)", lambda: b.read_log("s", limit=-1)),
        (TypeError, "trim_log(upto=None)", lambda: b.trim_log("s", upto=_wrong(None))),
    ]
    for error, what, call in cases:
        with raises(error, what):
            await call()
    check(await b.keys() == [], f"refused writes stored keys: {await b.keys()!r}")
    check(await b.read_log("s") == [], "a refused append stored a record")


# ---------------------------------------------------------------- logs


def _entries(found: object, what: str) -> list[LogEntry]:
    check(isinstance(found, list), f"{what}: expected a list, got {type(found).__name__}")
    assert isinstance(found, list)
    for entry in found:
        check(isinstance(entry, LogEntry), f"{what}: expected LogEntry items, got {entry!r}")
        check(isinstance(entry.data, bytes), f"{what}: entry data is not bytes: {entry!r}")
    return found


@_check
async def _state_log_append_read(b: StateBackend, timeout: float) -> None:
    """append returns growing sequence numbers; read_log returns them in order"""
    datas = [b"first", b"", b"\x00\xff", b"fourth", b"fifth"]
    seqs: list[int] = []
    for data in datas:
        seq = await b.append("s", data)
        check(
            isinstance(seq, int) and not isinstance(seq, bool) and seq >= 1,
            f"append returned {seq!r}, expected an int >= 1",
        )
        check(not seqs or seq > seqs[-1], f"append returned {seq} after {seqs[-1] if seqs else 0}")
        seqs.append(seq)
    log = _entries(await b.read_log("s"), "read_log('s')")
    want = [LogEntry(seq=s, data=d) for s, d in zip(seqs, datas, strict=True)]
    check(log == want, f"read_log('s') returned {log!r}, expected {want!r}")
    after = _entries(await b.read_log("s", after=seqs[1]), "read_log(after=)")
    check(after == want[2:], f"read_log(after={seqs[1]}) returned {after!r}")
    limited = _entries(await b.read_log("s", after=seqs[0], limit=2), "read_log(limit=2)")
    check(limited == want[1:3], f"read_log(after={seqs[0]}, limit=2) returned {limited!r}")
    check(await b.read_log("s", limit=0) == [], "read_log(limit=0) is not []")
    check(await b.read_log("s", after=seqs[-1]) == [], "read_log(after=last) is not []")


@_check
async def _state_log_streams_independent(b: StateBackend, timeout: float) -> None:
    """streams have their own records, and are not keys"""
    await b.append("x", b"x1")
    await b.append("y", b"y1")
    await b.append("x", b"x2")
    xs = [e.data for e in _entries(await b.read_log("x"), "read_log('x')")]
    ys = [e.data for e in _entries(await b.read_log("y"), "read_log('y')")]
    check(xs == [b"x1", b"x2"], f"stream 'x' holds {xs!r}")
    check(ys == [b"y1"], f"stream 'y' holds {ys!r}")
    check(await b.keys() == [], f"appending to logs created keys: {await b.keys()!r}")
    check(await _strong(b, "x") is None, "read('x') sees the log stream 'x'")
    await b.write("x", b"value")
    xs = [e.data for e in await b.read_log("x")]
    check(xs == [b"x1", b"x2"], f"writing key 'x' changed stream 'x' to {xs!r}")
    await b.delete("x")
    check(len(await b.read_log("x")) == 2, "deleting key 'x' changed stream 'x'")


@_check
async def _state_log_trim(b: StateBackend, timeout: float) -> None:
    """trim_log drops records up to a seq; numbering continues, never reused"""
    await b.trim_log("absent", upto=10)
    seqs = [await b.append("s", b"%d" % i) for i in range(6)]
    await b.trim_log("s", upto=seqs[2])
    log = await b.read_log("s")
    check(
        [e.seq for e in log] == seqs[3:],
        f"after trim_log(upto={seqs[2]}) read_log has seqs {[e.seq for e in log]}, expected {seqs[3:]}",
    )
    check([e.data for e in log] == [b"3", b"4", b"5"], f"trim changed record data: {log!r}")
    await b.trim_log("s", upto=seqs[1])  # already trimmed: nothing happens
    check(len(await b.read_log("s")) == 3, "trimming an already trimmed range changed the log")
    await b.trim_log("s", upto=seqs[-1] + 100)
    check(await b.read_log("s") == [], "trim_log past the end left records")
    seq = await b.append("s", b"after")
    check(
        seq > seqs[-1],
        f"append after trimming everything returned {seq}, reusing numbers <= {seqs[-1]}",
    )
    log = await b.read_log("s")
    check(log == [LogEntry(seq=seq, data=b"after")], f"read_log after trim and append: {log!r}")


# ---------------------------------------------------------------- concurrency


@_check
async def _state_concurrent_writes(b: StateBackend, timeout: float) -> None:
    """writes from many tasks at once all land, versions growing per key"""
    tasks, rounds = 40, 5
    versions: dict[int, list[int]] = {i: [] for i in range(tasks)}

    async def writer(i: int) -> None:
        for r in range(rounds):
            versions[i].append(await b.write(f"w/{i:03d}", b"%d:%d" % (i, r)))

    async with trio.open_nursery() as nursery:
        for i in range(tasks):
            nursery.start_soon(writer, i)
    check(len(await b.keys("w/")) == tasks, f"expected {tasks} keys, got {len(await b.keys('w/'))}")
    for i in range(tasks):
        seen = versions[i]
        check(seen == sorted(set(seen)), f"versions of key w/{i:03d} did not grow: {seen}")
        found = _versioned(await _strong(b, f"w/{i:03d}"), f"read w/{i:03d}")
        check(
            found.value == b"%d:%d" % (i, rounds - 1) and found.version == seen[-1],
            f"key w/{i:03d} holds {found!r}, expected the last write at version {seen[-1]}",
        )


@_check
async def _state_concurrent_compare_and_set(b: StateBackend, timeout: float) -> None:
    """compare-and-set is atomic: concurrent read-modify-write loops lose no update"""
    tasks, increments = 16, 5
    conflicts = 0

    async def incrementer() -> None:
        nonlocal conflicts
        for _ in range(increments):
            while True:
                found = await _strong(b, "counter")
                current = 0 if found is None else int(found.value)
                expected = 0 if found is None else found.version
                try:
                    await b.write("counter", b"%d" % (current + 1), expected_version=expected)
                except StateConflict:
                    conflicts += 1
                    continue
                break

    async with trio.open_nursery() as nursery:
        for _ in range(tasks):
            nursery.start_soon(incrementer)
    found = _versioned(await _strong(b, "counter"), "read counter")
    check(
        int(found.value) == tasks * increments,
        f"{tasks} tasks x {increments} compare-and-set increments gave {int(found.value)} "
        f"({conflicts} conflicts retried): an update was lost",
    )


@_check
async def _state_concurrent_appends(b: StateBackend, timeout: float) -> None:
    """appends from many tasks get distinct sequence numbers and all survive"""
    tasks, rounds = 20, 10
    got: dict[int, bytes] = {}

    async def appender(i: int) -> None:
        for r in range(rounds):
            data = b"%d:%d" % (i, r)
            seq = await b.append("log", data)
            check(seq not in got, f"sequence number {seq} returned twice")
            got[seq] = data

    async with trio.open_nursery() as nursery:
        for i in range(tasks):
            nursery.start_soon(appender, i)
    log = _entries(await b.read_log("log"), "read_log")
    check(len(log) == tasks * rounds, f"expected {tasks * rounds} records, read {len(log)}")
    seqs = [e.seq for e in log]
    check(seqs == sorted(set(seqs)), "read_log is not ordered by strictly growing seq")
    check({e.seq: e.data for e in log} == got, "read_log records differ from what append returned")
    for i in range(tasks):
        mine = [e.data for e in log if e.data.startswith(b"%d:" % i)]
        check(mine == [b"%d:%d" % (i, r) for r in range(rounds)], f"task {i}'s appends reordered")


# ---------------------------------------------------------------- trio manners


@_check
async def _state_checkpoints(b: StateBackend, timeout: float) -> None:
    """every method is a Trio checkpoint"""
    calls: list[tuple[str, Callable[[], Any]]] = [
        ("write", lambda: b.write("k", b"v")),
        ("read", lambda: b.read("k")),
        ("read of an absent key", lambda: b.read("absent")),
        ("keys", lambda: b.keys()),
        ("append", lambda: b.append("s", b"d")),
        ("read_log", lambda: b.read_log("s")),
        ("trim_log", lambda: b.trim_log("s", upto=1)),
        ("delete", lambda: b.delete("k")),
        ("delete of an absent key", lambda: b.delete("k")),
    ]
    for what, call in calls:
        with expect_checkpoint(f"StateBackend.{what}"):
            await call()


@_check
async def _state_cancellation(b: StateBackend, timeout: float) -> None:
    """a cancelled operation happens wholly or not at all; the backend stays usable"""
    with trio.CancelScope() as scope:
        scope.cancel()
        await b.write("pre-cancelled", b"v")
    found = await _strong(b, "pre-cancelled")
    check(found is None or found.value == b"v", f"pre-cancelled write left {found!r}")

    async def writer(i: int) -> None:
        await b.write(f"c/{i}", b"%d" % i)
        await b.append("c", b"%d" % i)

    for delay in range(4):
        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(writer, delay * 100 + i)
            for _ in range(delay):
                await trio.lowlevel.checkpoint()
            nursery.cancel_scope.cancel()
    for key in await b.keys("c/"):
        found = _versioned(await _strong(b, key), f"read({key!r})")
        check(found.value == key[2:].encode(), f"cancelled write left {key!r} = {found.value!r}")
    for entry in await b.read_log("c"):
        check(
            await _strong(b, f"c/{int(entry.data)}") is not None, f"log record {entry} has no key"
        )
    version = _version(await b.write("after", b"ok"), "write after cancellations")
    found = _versioned(await _strong(b, "after"), "read after cancellations")
    check(found.value == b"ok" and found.version == version, "backend unusable after cancellation")
    seq = await b.append("c", b"last")
    check(
        (await b.read_log("c"))[-1] == LogEntry(seq=seq, data=b"last"), "log unusable after cancel"
    )


# ---------------------------------------------------------------- model


@_check
async def _state_random_model(b: StateBackend, timeout: float) -> None:
    """a long random mix of operations agrees with a reference model"""
    rng = random.Random(20240601)
    model: dict[str, Versioned] = {}
    logs: dict[str, list[LogEntry]] = {}
    last_seq: dict[str, int] = {}
    keys = ["k0", "k1", "k1/a", "k1/b", "k2"]
    streams = ["s0", "s1"]
    for step in range(400):
        op = rng.choice(["write", "cas", "delete", "read", "keys", "append", "read_log", "trim"])
        key = rng.choice(keys)
        stream = rng.choice(streams)
        where = f"step {step} ({op})"
        current = model.get(key)
        actual = 0 if current is None else current.version
        if op == "write":
            value = rng.randbytes(rng.randrange(0, 16))
            version = _version(await b.write(key, value), where)
            check(version > actual, f"{where}: version {version} not greater than {actual}")
            model[key] = Versioned(value=value, version=version)
        elif op == "cas":
            expected = rng.choice([actual, actual, 0, actual + 1, max(actual - 1, 0)])
            value = rng.randbytes(4)
            if expected == actual:
                version = _version(await b.write(key, value, expected_version=expected), where)
                model[key] = Versioned(value=value, version=version)
            else:
                with raises(StateConflict, f"{where}: expected {expected}, actual {actual}"):
                    await b.write(key, value, expected_version=expected)
        elif op == "delete":
            expected_or_none = rng.choice([None, actual, actual + 1])
            if expected_or_none is None or expected_or_none == actual:
                await b.delete(key, expected_version=expected_or_none)
                model.pop(key, None)
            else:
                with raises(
                    StateConflict, f"{where}: expected {expected_or_none}, actual {actual}"
                ):
                    await b.delete(key, expected_version=expected_or_none)
        elif op == "read":
            found = await _strong(b, key)
            check(found == current, f"{where}: read({key!r}) returned {found!r}, model {current!r}")
        elif op == "keys":
            prefix = rng.choice(["", "k", "k1", "k1/", "k2", "x"])
            want = sorted(k for k in model if k.startswith(prefix))
            got = await b.keys(prefix)
            check(got == want, f"{where}: keys({prefix!r}) returned {got!r}, model {want!r}")
        elif op == "append":
            data = rng.randbytes(rng.randrange(0, 8))
            seq = await b.append(stream, data)
            check(seq > last_seq.get(stream, 0), f"{where}: append returned {seq}")
            last_seq[stream] = seq
            logs.setdefault(stream, []).append(LogEntry(seq=seq, data=data))
        elif op == "read_log":
            entries = logs.get(stream, [])
            after = rng.choice([0, *(e.seq for e in entries)])
            limit = rng.choice([None, 0, 1, 3])
            want_log = [e for e in entries if e.seq > after]
            if limit is not None:
                want_log = want_log[:limit]
            got_log = await b.read_log(stream, after=after, limit=limit)
            check(
                got_log == want_log,
                f"{where}: read_log({stream!r}, after={after}, limit={limit}) returned "
                f"{got_log!r}, model {want_log!r}",
            )
        else:
            entries = logs.get(stream, [])
            upto = rng.choice([0, *(e.seq for e in entries)])
            await b.trim_log(stream, upto=upto)
            logs[stream] = [e for e in entries if e.seq > upto]


async def check_state_backend(
    factory: Callable[[], Any], *, skip: Collection[str] = (), timeout: float = 5.0
) -> None:
    """Run every StateBackend check, each against a fresh backend from ``factory``.

    :param factory: called with no arguments for each check; returns an async
        context manager yielding an empty :class:`~jido_trio.abc.StateBackend`
        (or the backend itself, or an awaitable of it).
    :param skip: names of checks not to run (see :data:`STATE_BACKEND_CHECKS`).
    :param timeout: seconds an ``"eventual"`` or ``"weak"`` read may take to
        see this node's own write (they are polled, with ``trio.sleep``).
    :raises AssertionError: naming the first check that failed and why.
    """

    async def run_one(item: Check) -> None:
        async with opened_engine(factory, StateBackend) as backend:
            await item.fn(backend, timeout)

    await STATE_SUITE.run(skip, run_one)
