"""The rules of jido_trio.abc every engine shares: argument checks, registry
matching, exception-group unwrapping."""

from __future__ import annotations

import math
from typing import Any

import pytest
import trio

import jido_trio as jt
from jido_trio.abc import check_consistency
from jido_trio.abc import check_expected_version
from jido_trio.abc import check_log_limit
from jido_trio.abc import check_log_seq
from jido_trio.abc import check_parties
from jido_trio.abc import check_registered_ref
from jido_trio.abc import check_state_key
from jido_trio.abc import check_state_value
from jido_trio.abc import check_ttl
from jido_trio.abc import registry_matcher
from jido_trio.abc import single_failure
from jido_trio.local import LocalCoordination
from jido_trio.local import LocalRegistry
from jido_trio.local import MemoryStateBackend


def test_checks_return_what_they_accept() -> None:
    assert check_state_key("k/é🙂") == "k/é🙂"
    assert check_state_value(bytearray(b"ab")) == b"ab"
    assert type(check_state_value(memoryview(b"ab"))) is bytes
    assert check_expected_version(None) is None
    assert check_expected_version(0) == 0
    assert check_consistency("weak") == "weak"
    assert check_log_seq("after", -(2**70)) == -(2**70)
    assert check_log_limit(None) is None and check_log_limit(0) == 0
    assert check_registered_ref(jt.AgentRef(id="a", type="t", node="n")) == "n"
    assert check_ttl(math.inf) == math.inf
    assert check_parties(1) == 1


@pytest.mark.parametrize(
    ("check", "error"),
    [
        (lambda: check_state_key(b"k"), TypeError),
        (lambda: check_state_key("\ud800"), ValueError),
        (lambda: check_state_value("text"), TypeError),
        (lambda: check_expected_version(-1), ValueError),
        (lambda: check_expected_version(1.0), ValueError),
        (lambda: check_expected_version(False), ValueError),
        (lambda: check_consistency("linearizable"), ValueError),
        (lambda: check_log_seq("upto", True), TypeError),
        (lambda: check_log_limit(-1), ValueError),
        (lambda: check_log_limit("1"), TypeError),
        (lambda: check_registered_ref(jt.AgentRef(id="a", type="t", node=None)), ValueError),
        (lambda: check_ttl(0), ValueError),
        (lambda: check_ttl(math.nan), ValueError),
        (lambda: check_parties(0), ValueError),
    ],
)
def test_checks_refuse_bad_arguments(check: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        check()


def test_registry_matcher() -> None:
    ref = jt.AgentRef(id="a", type="worker", node="n1")
    meta = {"zone": "eu", "none": None}
    assert registry_matcher()(ref, meta)
    assert registry_matcher(type="worker", node="n1", metadata={"zone": "eu"})(ref, meta)
    assert registry_matcher(metadata={"none": None})(ref, meta)
    assert not registry_matcher(metadata={"missing": None})(ref, meta)
    assert not registry_matcher(metadata={"zone": "us"})(ref, meta)
    assert not registry_matcher(type="other")(ref, meta)
    assert not registry_matcher(node="n2")(ref, meta)


async def test_the_memory_engines_check_like_the_others() -> None:
    """The public methods of the memory engines refuse what the SQLite and
    NATS engines refuse (the conformance suite covers every state method)."""
    state = MemoryStateBackend()
    with pytest.raises(ValueError):
        await state.read_log("s", limit=-1)  # it used to read nothing
    with pytest.raises(TypeError):
        await state.write("k", "text")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await state.read("k", consistency="sometimes")  # type: ignore[arg-type]
    assert await state.keys() == []
    # The synchronous path of the agent server takes trusted input unchecked.
    assert state.write_nowait("k", b"v") == 1
    with pytest.raises(ValueError, match="owning node"):
        await LocalRegistry().take_over(jt.AgentRef(id="a", type="t", node=None), epoch=1)
    coordination = LocalCoordination()
    with pytest.raises(ValueError, match="ttl"):
        async with coordination.lock("l", ttl=-1):
            pass
    with pytest.raises(ValueError, match="parties"):
        await coordination.barrier("b", 0)


def test_single_failure() -> None:
    boom = RuntimeError("boom")
    cancelled = _cancelled()
    nested = BaseExceptionGroup("outer", [cancelled, BaseExceptionGroup("inner", [boom])])
    assert single_failure(nested) is boom
    assert single_failure(nested, cancelled) is boom
    # A body that failed on its own keeps the group: neither error is hidden.
    assert single_failure(nested, ValueError("body")) is None
    assert single_failure(ExceptionGroup("two", [boom, KeyError("k")])) is None
    assert single_failure(BaseExceptionGroup("only cancelled", [cancelled])) is None


def _cancelled() -> trio.Cancelled:
    caught: list[trio.Cancelled] = []

    async def main() -> None:
        with trio.CancelScope() as scope:
            scope.cancel()
            try:
                await trio.lowlevel.checkpoint()
            except trio.Cancelled as exc:
                caught.append(exc)
                raise

    trio.run(main)
    return caught[0]
