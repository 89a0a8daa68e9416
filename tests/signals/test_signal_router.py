"""Signal type patterns and the router, checked against a reference matcher."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from jido_trio.signals._router import RouteHandle
from jido_trio.signals._router import SignalRouter
from jido_trio.signals._router import pattern_matches
from jido_trio.signals._router import validate_pattern
from jido_trio.signals._signal import Signal


def reference_match(pattern: list[str], parts: list[str]) -> bool:
    """The definition, as plainly as possible: recursion over segment lists."""
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        # Zero segments, or one more segment and "**" still in force.
        return reference_match(rest, parts) or (bool(parts) and reference_match(pattern, parts[1:]))
    if not parts:
        return False
    return (head == "*" or head == parts[0]) and reference_match(rest, parts[1:])


def ref(pattern: str, signal_type: str) -> bool:
    return reference_match(pattern.split("."), signal_type.split("."))


patterns = st.lists(st.sampled_from(["a", "b", "c", "*", "**"]), min_size=1, max_size=6).map(
    ".".join
)
# Types may have empty segments ("a..b" is a valid CloudEvents type); never "".
signal_types = (
    st.lists(st.sampled_from(["a", "b", "c", "d", ""]), min_size=1, max_size=7)
    .map(".".join)
    .filter(bool)
)


# -- single patterns -------------------------------------------------------------


@given(patterns, signal_types)
@settings(max_examples=500)
def test_pattern_matches_reference(pattern: str, signal_type: str) -> None:
    assert pattern_matches(pattern, signal_type) == ref(pattern, signal_type)


@given(patterns, signal_types)
@settings(max_examples=500)
def test_single_route_matches_reference(pattern: str, signal_type: str) -> None:
    router: SignalRouter[str] = SignalRouter()
    router.add(pattern, "t")
    assert router.match(signal_type) == (["t"] if ref(pattern, signal_type) else [])


@pytest.mark.parametrize(
    ("pattern", "signal_type", "expected"),
    [
        ("order.created", "order.created", True),
        ("order.created", "order.updated", False),
        ("order.*", "order.created", True),
        ("order.*", "order", False),
        ("order.*", "order.line.added", False),
        ("order.**", "order", True),
        ("order.**", "order.created", True),
        ("order.**", "order.line.added", True),
        ("order.**", "orders.created", False),
        ("**", "anything.at.all", True),
        ("**.created", "created", True),
        ("**.created", "order.line.created", True),
        ("**.created", "order.created.late", False),
        ("a.**.z", "a.z", True),
        ("a.**.z", "a.b.c.z", True),
        ("a.**.z", "a.b.c", False),
        ("a.**.*", "a", False),
        ("a.**.*", "a.b", True),
        ("*.**", "a", True),
        ("**.**", "a.b", True),
        ("*", "a..b", False),
        ("a.*.b", "a..b", True),
        ("order.created", "order.created.", False),
    ],
)
def test_examples(pattern: str, signal_type: str, expected: bool) -> None:
    assert pattern_matches(pattern, signal_type) is expected
    assert ref(pattern, signal_type) is expected
    router: SignalRouter[int] = SignalRouter()
    router.add(pattern, 1)
    assert router.match(signal_type) == ([1] if expected else [])


@pytest.mark.parametrize(
    "pattern", ["", ".", "a.", ".a", "a..b", "a*", "**b", "a.*x.c", "a.***", "*a*"]
)
def test_invalid_patterns(pattern: str) -> None:
    with pytest.raises(ValueError, match="pattern"):
        validate_pattern(pattern)
    with pytest.raises(ValueError, match="pattern"):
        SignalRouter[int]().add(pattern, 1)
    with pytest.raises(ValueError, match="pattern"):
        pattern_matches(pattern, "a")


def test_type_errors() -> None:
    router: SignalRouter[int] = SignalRouter()
    with pytest.raises(TypeError):
        router.add(5, 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        router.add("a", 1, priority=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        router.add("a", 1, filter=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="signal type"):
        router.match("")
    with pytest.raises(TypeError):
        router.match(None)  # type: ignore[arg-type]
    assert validate_pattern("a.*.**") == "a.*.**"


# -- many routes ------------------------------------------------------------------

route_specs = st.lists(
    st.tuples(patterns, st.integers(-2, 2), st.booleans()), min_size=1, max_size=25
)


@given(route_specs, st.lists(signal_types, min_size=1, max_size=10), st.data())
@settings(max_examples=200)
def test_router_matches_reference(
    specs: list[tuple[str, int, bool]], types: list[str], data: st.DataObject
) -> None:
    """Targets, order, filters and removal all agree with the reference."""
    router: SignalRouter[int] = SignalRouter()
    live: dict[int, tuple[str, int, bool, RouteHandle]] = {}

    def odd_subject(signal: Signal) -> bool:
        return signal.subject == "odd"

    def check() -> None:
        for signal_type in types:
            # Query twice: the second answer comes from the cache.
            for _ in range(2):
                expected = sorted(
                    (i for i, (p, _, _, _) in live.items() if ref(p, signal_type)),
                    key=lambda i: (-live[i][1], i),
                )
                assert router.match(signal_type) == expected
                signal = Signal.new(signal_type, "/test", subject="even")
                assert router.match(signal) == [i for i in expected if not live[i][2]]
                signal = Signal.new(signal_type, "/test", subject="odd")
                assert router.match(signal) == expected

    for index, (pattern, priority, filtered) in enumerate(specs):
        handle = router.add(
            pattern, index, priority=priority, filter=odd_subject if filtered else None
        )
        assert (handle.pattern, handle.priority) == (pattern, priority)
        live[index] = (pattern, priority, filtered, handle)
    check()
    doomed = data.draw(st.lists(st.sampled_from(sorted(live)), unique=True))
    for index in doomed:
        assert router.remove(live.pop(index)[3]) is True
    assert len(router) == len(live)
    check()
    # Add some back: they go after everything that is already there.
    for index, (pattern, priority, _) in enumerate(specs[:3], start=len(specs)):
        live[index] = (pattern, priority, False, router.add(pattern, index, priority=priority))
    check()
    for entry in list(live.values()):
        assert router.remove(entry[3]) is True
        assert router.remove(entry[3]) is False
    live.clear()
    check()
    assert len(router) == 0
    assert router._root.is_empty()  # pruned back to nothing


# -- unit behaviour -------------------------------------------------------------------


def test_priority_then_insertion_order() -> None:
    router: SignalRouter[str] = SignalRouter()
    router.add("order.**", "audit", priority=-10)
    router.add("order.created", "first")
    router.add("order.*", "urgent", priority=5)
    router.add("**", "second")
    router.add("order.created", "also-urgent", priority=5)
    assert router.match("order.created") == ["urgent", "also-urgent", "first", "second", "audit"]
    assert router.match("order.line.added") == ["second", "audit"]
    assert router.match("user.created") == ["second"]


def test_filters_apply_to_signals_only() -> None:
    router: SignalRouter[str] = SignalRouter()
    router.add(
        "order.*", "big", filter=lambda s: isinstance(s.data, dict) and s.data["total"] > 100
    )
    router.add("order.*", "all")
    big = Signal.new("order.created", "/shop", {"total": 500})
    small = Signal.new("order.created", "/shop", {"total": 5})
    assert router.match(big) == ["big", "all"]
    assert router.match(small) == ["all"]
    assert router.match("order.created") == ["big", "all"]


def test_filter_errors_propagate() -> None:
    router: SignalRouter[str] = SignalRouter()

    def broken(signal: Signal) -> bool:
        raise RuntimeError("boom")

    router.add("a", "x", filter=broken)
    with pytest.raises(RuntimeError, match="boom"):
        router.match(Signal.new("a", "/s"))


def test_remove_and_handles() -> None:
    router: SignalRouter[str] = SignalRouter()
    first = router.add("a.*", "t")
    second = router.add("a.*", "t")
    assert first != second and first in router and len(router) == 2
    assert router.match("a.b") == ["t", "t"]
    assert router.remove(first) is True
    assert first not in router
    assert router.match("a.b") == ["t"]
    assert router.remove(first) is False
    other: SignalRouter[str] = SignalRouter()
    assert other.remove(second) is False
    assert router.match("a.b") == ["t"]
    router.clear()
    assert len(router) == 0 and router.match("a.b") == []
    assert router.remove(second) is False


def test_cache_sees_changes() -> None:
    router: SignalRouter[str] = SignalRouter()
    assert router.match("a.b") == []
    handle = router.add("a.b", "x")
    assert router.match("a.b") == ["x"]
    router.remove(handle)
    assert router.match("a.b") == []
    for i in range(3000):  # more types than the cache holds
        router.match(f"t{i}")
    router.add("**", "y")
    assert router.match("t0") == ["y"]


def test_literal_segments_are_opaque() -> None:
    router: SignalRouter[str] = SignalRouter()
    router.add("com.github.pull_request.opened", "pr")
    router.add("Microsoft.Storage.BlobCreated", "blob")
    assert router.match("com.github.pull_request.opened") == ["pr"]
    assert router.match("microsoft.storage.blobcreated") == []  # case-sensitive
    assert router.match("Microsoft.Storage.BlobCreated") == ["blob"]


def test_many_globstars_stay_fast() -> None:
    router: SignalRouter[int] = SignalRouter()
    for i in range(200):
        router.add("**." * (i % 8) + "a.**.b.**", i)
    deep = ".".join(["a", "b"] * 100)
    start = time.perf_counter()
    assert len(router.match(deep)) == 200
    assert pattern_matches("**.a.**.a.**.a.**.c", ".".join(["a"] * 200)) is False
    assert time.perf_counter() - start < 2.0


def test_many_routes() -> None:
    router: SignalRouter[int] = SignalRouter()
    handles = [router.add(f"svc{i}.event{j}", i * 10 + j) for i in range(100) for j in range(10)]
    router.add("svc7.*", -1, priority=1)
    assert router.match("svc7.event3") == [-1, 73]
    for handle in handles:
        router.remove(handle)
    assert router.match("svc7.event3") == [-1]
