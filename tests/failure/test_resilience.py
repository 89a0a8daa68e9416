"""Circuit breakers, retries, failure detection and latency tracking under MockClock."""

from __future__ import annotations

import itertools
import math

import pytest
import tenacity
import trio
import trio.testing

import jido_trio as jt
from jido_trio._resilience import BreakerConfig
from jido_trio._resilience import BreakerRegistry
from jido_trio._resilience import CircuitBreaker
from jido_trio._resilience import FailureDetector
from jido_trio._resilience import LatencyTracker
from jido_trio._resilience import RetryPolicy
from jido_trio._resilience import retry_idempotent

EPS = 1e-9


class Boom(Exception):
    pass


async def fail() -> None:
    raise Boom("down")


async def succeed(value: int = 1) -> int:
    return value


def state_of(breaker: CircuitBreaker) -> str:
    # A function, not the property, so mypy does not narrow the state across awaits.
    return breaker.state


async def trip(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.failure_threshold):
        with pytest.raises(Boom):
            await breaker.call(fail)


# --------------------------------------------------------------------------- breaker


async def test_breaker_opens_after_consecutive_failures(
    autojump_clock: trio.testing.MockClock,
) -> None:
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout=10.0)
    assert state_of(breaker) == "closed"
    for _ in range(2):
        with pytest.raises(Boom):
            await breaker.call(fail)
    assert breaker.failures == 2
    assert await breaker.call(succeed, 7) == 7  # a success resets the count
    assert breaker.failures == 0
    for _ in range(2):
        with pytest.raises(Boom):
            await breaker.call(fail)
    assert state_of(breaker) == "closed"
    with pytest.raises(Boom):
        await breaker.call(fail)
    assert state_of(breaker) == "open"
    assert breaker.retry_after() == pytest.approx(10.0)


async def test_open_breaker_raises_fast_without_calling(
    autojump_clock: trio.testing.MockClock,
) -> None:
    breaker = CircuitBreaker(name="node-b", failure_threshold=1, reset_timeout=5.0)
    await trip(breaker)
    calls = 0

    async def protected() -> None:
        nonlocal calls
        calls += 1

    start = trio.current_time()
    with pytest.raises(jt.CircuitOpen, match="node-b"):
        await breaker.call(protected)
    with pytest.raises(jt.CircuitOpen):
        breaker.before_call()
    assert calls == 0
    assert trio.current_time() == start
    assert isinstance(jt.CircuitOpen("x"), jt.JidoError)


async def test_half_open_after_reset_timeout_and_success_closes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=5.0)
    await trip(breaker)
    await trio.sleep(5.0 - 0.01)
    assert state_of(breaker) == "open"
    await trio.sleep(0.01)
    assert state_of(breaker) == "half_open"  # lazily, from the clock
    assert breaker.retry_after() == 0.0
    assert await breaker.call(succeed, 3) == 3
    assert state_of(breaker) == "closed"
    assert breaker.failures == 0


async def test_half_open_failure_reopens_with_fresh_timer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=5.0)
    await trip(breaker)
    await trio.sleep(7.0)
    assert state_of(breaker) == "half_open"
    with pytest.raises(Boom):
        await breaker.call(fail)
    reopened = trio.current_time()
    assert state_of(breaker) == "open"
    await trio.sleep(4.9)
    assert state_of(breaker) == "open"
    with pytest.raises(jt.CircuitOpen):
        await breaker.call(succeed)
    await trio.sleep(reopened + 5.0 - trio.current_time())
    assert state_of(breaker) == "half_open"


async def test_half_open_limits_concurrent_trials(autojump_clock: trio.testing.MockClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=1.0, half_open_max_calls=2)
    await trip(breaker)
    await trio.sleep(1.0)
    release = trio.Event()
    started = 0
    refused_calls = 0

    async def slow_trial() -> str:
        nonlocal started
        started += 1
        await release.wait()
        return "ok"

    async def refused() -> None:
        nonlocal refused_calls
        refused_calls += 1

    results: list[str] = []

    async def run_trial() -> None:
        results.append(await breaker.call(slow_trial))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_trial)
        nursery.start_soon(run_trial)
        await trio.testing.wait_all_tasks_blocked()
        assert started == 2
        assert state_of(breaker) == "half_open"
        with pytest.raises(jt.CircuitOpen, match="half-open"):
            await breaker.call(refused)
        with pytest.raises(jt.CircuitOpen):
            breaker.before_call()
        assert refused_calls == 0
        release.set()
    assert results == ["ok", "ok"]
    assert state_of(breaker) == "closed"
    await breaker.call(refused)
    assert refused_calls == 1


async def test_cancelled_trial_frees_its_slot_and_is_no_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=1.0)
    await trip(breaker)
    await trio.sleep(1.0)
    with trio.move_on_after(2.0) as scope:
        await breaker.call(trio.sleep_forever)
    assert scope.cancelled_caught
    assert state_of(breaker) == "half_open"  # neither closed nor re-opened
    assert await breaker.call(succeed) == 1  # the slot is free again
    assert state_of(breaker) == "closed"


async def test_cancelled_call_is_no_failure_even_if_listed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    breaker = CircuitBreaker(failure_threshold=1)
    with trio.move_on_after(1.0):
        await breaker.call(trio.sleep_forever, failure_types=(BaseException,))
    assert state_of(breaker) == "closed"
    assert breaker.failures == 0


async def test_only_failure_types_count(autojump_clock: trio.testing.MockClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=1.0)
    with pytest.raises(Boom):
        await breaker.call(fail, failure_types=(OSError,))
    assert state_of(breaker) == "closed"
    with pytest.raises(Boom):
        await breaker.call(fail, failure_types=(Boom,))
    assert state_of(breaker) == "open"
    await trio.sleep(1.0)
    # In half-open, a neutral error frees the slot without a verdict.
    with pytest.raises(Boom):
        await breaker.call(fail, failure_types=(OSError,))
    assert state_of(breaker) == "half_open"
    assert await breaker.call(succeed) == 1
    assert state_of(breaker) == "closed"


async def test_stale_outcome_does_not_move_a_newer_state(
    autojump_clock: trio.testing.MockClock,
) -> None:
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=100.0)

    async def slow_success() -> int:
        await trio.sleep(10.0)
        return 5

    async with trio.open_nursery() as nursery:
        nursery.start_soon(breaker.call, slow_success)  # admitted while closed
        await trio.sleep(1.0)
        await trip(breaker)
        assert state_of(breaker) == "open"
    # The slow call succeeded after the breaker opened: it stays open.
    assert trio.current_time() == pytest.approx(10.0)
    assert state_of(breaker) == "open"


async def test_protected_call_holds_no_lock(autojump_clock: trio.testing.MockClock) -> None:
    registry = BreakerRegistry()
    a, b = registry.get("a"), registry.get("b")
    times: list[float] = []

    async def quick() -> None:
        times.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.call, trio.sleep, 100.0)
        nursery.start_soon(a.call, trio.sleep, 100.0)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        await b.call(quick)  # another breaker
        await a.call(quick)  # the same breaker, while two slow calls run in it
        assert times == [start, start]
        nursery.cancel_scope.cancel()
    assert state_of(a) == "closed"
    assert a.failures == 0


async def test_manual_protocol(autojump_clock: trio.testing.MockClock) -> None:
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=3.0)
    for _ in range(2):
        breaker.before_call()
        breaker.on_failure()
    assert state_of(breaker) == "open"
    breaker.on_failure()  # ignored while open: no fresh timer
    await trio.sleep(3.0)
    breaker.before_call()  # the one trial
    with pytest.raises(jt.CircuitOpen):
        breaker.before_call()
    breaker.on_release()  # e.g. cancelled
    breaker.before_call()
    breaker.on_success()
    assert state_of(breaker) == "closed"
    breaker.before_call()
    breaker.on_failure()
    breaker.before_call()
    breaker.on_success()
    assert breaker.failures == 0


async def test_zero_reset_timeout_goes_half_open_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=0.0)
    await trip(breaker)
    assert state_of(breaker) == "half_open"


def test_breaker_config_validation() -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        BreakerConfig(failure_threshold=0)
    with pytest.raises(ValueError, match="reset_timeout"):
        BreakerConfig(reset_timeout=-1)
    with pytest.raises(ValueError, match="half_open_max_calls"):
        CircuitBreaker(half_open_max_calls=0)
    assert BreakerConfig() == BreakerConfig(
        failure_threshold=5, reset_timeout=30.0, half_open_max_calls=1
    )


async def test_registry_builds_from_config_and_is_bounded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = BreakerConfig(failure_threshold=2, reset_timeout=4.0, half_open_max_calls=3)
    registry = BreakerRegistry(config=config, max_size=2)
    a = registry.get("a")
    assert registry.get("a") is a
    assert (a.name, a.failure_threshold, a.reset_timeout, a.half_open_max_calls) == (
        "a",
        2,
        4.0,
        3,
    )
    assert registry.peek("b") is None
    assert "b" not in registry
    registry.get("b")
    registry.get("a")  # a is now the most recently used
    registry.get("c")  # evicts b
    assert len(registry) == 2
    assert "b" not in registry
    assert registry.peek("a") is a
    registry.remove("a")
    registry.remove("missing")
    assert registry.peek("a") is None
    assert len(registry) == 1


# --------------------------------------------------------------------------- retry


class Flaky:
    """Fails ``failures`` times with ``exc``, then returns ``"done"``."""

    def __init__(self, failures: int, exc: type[BaseException] = Boom) -> None:
        self.failures = failures
        self.exc = exc
        self.times: list[float] = []
        self.raised: list[BaseException] = []

    async def __call__(self) -> str:
        self.times.append(trio.current_time())
        await trio.lowlevel.checkpoint()
        if len(self.times) <= self.failures:
            error = self.exc(f"attempt {len(self.times)}")
            self.raised.append(error)
            raise error
        return "done"


def deltas(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


async def test_retry_backoff_timing(autojump_clock: trio.testing.MockClock) -> None:
    flaky = Flaky(failures=4)
    policy = RetryPolicy(max_attempts=5, initial=0.1, maximum=0.3, jitter=0.05)
    result = await retry_idempotent(flaky, deadline=math.inf, policy=policy, retry_on=(Boom,))
    assert result == "done"
    assert len(flaky.times) == 5
    # initial * 2**n, capped at maximum, plus up to `jitter` seconds.
    for delta, base in zip(deltas(flaky.times), [0.1, 0.2, 0.3, 0.3], strict=True):
        assert base - EPS <= delta <= base + 0.05 + EPS


async def test_retry_without_jitter_is_exact(autojump_clock: trio.testing.MockClock) -> None:
    flaky = Flaky(failures=3)
    policy = RetryPolicy(max_attempts=4, initial=1.0, maximum=10.0, jitter=0.0, multiplier=3.0)
    assert await retry_idempotent(flaky, deadline=math.inf, policy=policy, retry_on=(Boom,))
    assert deltas(flaky.times) == pytest.approx([1.0, 3.0, 9.0])


async def test_retry_gives_up_after_max_attempts_with_last_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    flaky = Flaky(failures=100)
    with pytest.raises(Boom, match="attempt 3") as info:
        await retry_idempotent(flaky, deadline=math.inf, policy=RetryPolicy(), retry_on=(Boom,))
    assert len(flaky.times) == 3
    assert info.value is flaky.raised[-1]
    assert not isinstance(info.value, tenacity.RetryError)


async def test_retry_respects_the_deadline(autojump_clock: trio.testing.MockClock) -> None:
    flaky = Flaky(failures=100)
    start = trio.current_time()
    policy = RetryPolicy(max_attempts=10, initial=1.0, maximum=8.0, jitter=0.0)
    # Attempts at +0, +1, +3; the next sleep (4s) would end at +7, past the deadline.
    with pytest.raises(Boom, match="attempt 3"):
        await retry_idempotent(flaky, deadline=start + 5.0, policy=policy, retry_on=(Boom,))
    assert [t - start for t in flaky.times] == pytest.approx([0.0, 1.0, 3.0])
    assert trio.current_time() - start == pytest.approx(3.0)


async def test_retry_deadline_with_jitter_is_never_passed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    flaky = Flaky(failures=100)
    start = trio.current_time()
    policy = RetryPolicy(max_attempts=100, initial=0.05, maximum=0.4, jitter=0.05)
    with pytest.raises(Boom):
        await retry_idempotent(flaky, deadline=start + 2.0, policy=policy, retry_on=(Boom,))
    assert flaky.times[-1] < start + 2.0
    assert len(flaky.times) > 4


async def test_retry_first_attempt_runs_even_past_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    flaky = Flaky(failures=100)
    now = trio.current_time()
    with pytest.raises(Boom):
        await retry_idempotent(flaky, deadline=now - 1, policy=RetryPolicy(), retry_on=(Boom,))
    assert flaky.times == [now]


async def test_non_retryable_error_passes_through_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    flaky = Flaky(failures=100, exc=ValueError)
    start = trio.current_time()
    with pytest.raises(ValueError, match="attempt 1"):
        await retry_idempotent(flaky, deadline=math.inf, policy=RetryPolicy(), retry_on=(Boom,))
    assert flaky.times == [start]
    assert trio.current_time() == start


async def test_cancelled_is_never_retried(autojump_clock: trio.testing.MockClock) -> None:
    calls = 0

    async def hang() -> None:
        nonlocal calls
        calls += 1
        await trio.sleep_forever()

    with trio.move_on_after(1.0) as scope:
        await retry_idempotent(
            hang,
            deadline=math.inf,
            policy=RetryPolicy(max_attempts=10),
            retry_on=(BaseException,),
        )
    assert scope.cancelled_caught
    assert calls == 1
    assert trio.current_time() == pytest.approx(1.0)


async def test_cancelled_during_backoff_sleep(autojump_clock: trio.testing.MockClock) -> None:
    flaky = Flaky(failures=100)
    policy = RetryPolicy(max_attempts=10, initial=10.0, maximum=10.0, jitter=0.0)
    with trio.move_on_after(5.0) as scope:
        await retry_idempotent(flaky, deadline=math.inf, policy=policy, retry_on=(Boom,))
    assert scope.cancelled_caught
    assert len(flaky.times) == 1


async def test_retry_accepts_any_awaitable_returning_callable(
    autojump_clock: trio.testing.MockClock,
) -> None:
    flaky = Flaky(failures=1)
    result = await retry_idempotent(
        lambda: flaky(), deadline=math.inf, policy=RetryPolicy(), retry_on=(Boom,)
    )
    assert result == "done"
    assert len(flaky.times) == 2


async def test_concurrent_retries_do_not_share_state(
    autojump_clock: trio.testing.MockClock,
) -> None:
    flakies = [Flaky(failures=n) for n in range(4)]
    policy = RetryPolicy(max_attempts=5, jitter=0.0)
    results: list[str] = []

    async def one(flaky: Flaky) -> None:
        results.append(
            await retry_idempotent(flaky, deadline=math.inf, policy=policy, retry_on=(Boom,))
        )

    async with trio.open_nursery() as nursery:
        for flaky in flakies:
            nursery.start_soon(one, flaky)
    assert results == ["done"] * 4
    assert [len(f.times) for f in flakies] == [1, 2, 3, 4]


def test_retry_policy_validation() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="multiplier"):
        RetryPolicy(multiplier=0)
    with pytest.raises(ValueError, match="jitter"):
        RetryPolicy(jitter=-0.1)


# --------------------------------------------------------------------------- failure detector


class Cluster:
    """Fake nodes for the detector: each is "ok", "error" or "hang"."""

    def __init__(self, **behaviour: str) -> None:
        self.behaviour = behaviour
        self.pings: dict[str, list[float]] = {node: [] for node in behaviour}
        self.changes: list[tuple[float, str, bool]] = []

    async def ping(self, node: str) -> None:
        self.pings.setdefault(node, []).append(trio.current_time())
        mode = self.behaviour[node]
        if mode == "hang":
            await trio.sleep_forever()
        await trio.lowlevel.checkpoint()
        if mode == "error":
            raise ConnectionError(node)

    def on_change(self, node: str, reachable: bool) -> None:
        self.changes.append((trio.current_time(), node, reachable))

    def relative_changes(self, start: float) -> list[tuple[float, str, bool]]:
        return [(round(t - start, 6), node, up) for t, node, up in self.changes]

    def detector(self, interval: float = 1.0, threshold: int = 3) -> FailureDetector:
        detector = FailureDetector(interval, threshold, self.ping, self.on_change)
        for node in self.behaviour:
            detector.watch(node)
        return detector


async def test_detector_pings_every_interval(autojump_clock: trio.testing.MockClock) -> None:
    cluster = Cluster(a="ok", b="hang")
    detector = cluster.detector(interval=2.0)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        await nursery.start(detector.run)
        await trio.sleep(2.0 * 4 + 1.0)
        nursery.cancel_scope.cancel()
    expected = [start + 2.0 * k for k in range(5)]
    # A node that hangs does not delay the rounds of the others.
    assert cluster.pings["a"] == pytest.approx(expected)
    assert cluster.pings["b"] == pytest.approx(expected)


async def test_detector_threshold_then_recovery(autojump_clock: trio.testing.MockClock) -> None:
    cluster = Cluster(a="ok", b="error")
    detector = cluster.detector(interval=1.0, threshold=3)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        await nursery.start(detector.run)
        await trio.sleep(1.5)  # rounds at +0 and +1 missed
        assert detector.misses("b") == 2
        assert detector.is_reachable("b")
        assert cluster.changes == []
        await trio.sleep(1.0)  # third miss at +2
        assert not detector.is_reachable("b")
        await trio.sleep(5.0)  # more misses: still only one callback
        assert detector.misses("b") == 8
        assert cluster.relative_changes(start) == [(2.0, "b", False)]
        cluster.behaviour["b"] = "ok"
        await trio.sleep(1.0)  # round at +8 succeeds
        assert detector.is_reachable("b")
        assert detector.misses("b") == 0
        await trio.sleep(3.0)
        nursery.cancel_scope.cancel()
    assert cluster.relative_changes(start) == [(2.0, "b", False), (8.0, "b", True)]
    assert detector.is_reachable("a")
    assert detector.misses("a") == 0


async def test_detector_timeout_is_a_miss(autojump_clock: trio.testing.MockClock) -> None:
    cluster = Cluster(b="hang")
    detector = cluster.detector(interval=1.0, threshold=2)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        await nursery.start(detector.run)
        await trio.sleep(10.0)
        nursery.cancel_scope.cancel()
    # Pings at +0 and +1 each time out one interval later: unreachable at +2.
    assert cluster.relative_changes(start) == [(2.0, "b", False)]


async def test_detector_misses_must_be_consecutive(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cluster = Cluster(b="error")
    detector = cluster.detector(interval=1.0, threshold=3)
    async with trio.open_nursery() as nursery:
        await nursery.start(detector.run)
        for _ in range(5):
            await trio.sleep(2.0)  # two misses
            cluster.behaviour["b"] = "ok"
            await trio.sleep(1.0)  # one success
            cluster.behaviour["b"] = "error"
        nursery.cancel_scope.cancel()
    assert cluster.changes == []


async def test_detector_watch_and_unwatch(autojump_clock: trio.testing.MockClock) -> None:
    cluster = Cluster(a="error", b="hang")
    detector = cluster.detector(interval=1.0, threshold=1)
    start = trio.current_time()
    assert detector.is_reachable("unknown")
    assert detector.misses("unknown") == 0
    assert detector.watched == {"a", "b"}
    async with trio.open_nursery() as nursery:
        await nursery.start(detector.run)
        await trio.sleep(0.5)  # b's first ping is in flight
        detector.unwatch("b")
        detector.unwatch("never-watched")
        await trio.sleep(0.1)
        assert not detector.is_reachable("a")
        detector.unwatch("a")
        assert detector.is_reachable("a")  # unwatched counts as reachable
        cluster.behaviour["c"] = "error"
        detector.watch("c")  # pinged from the next round on
        detector.watch("c")
        await trio.sleep(3.0)
        nursery.cancel_scope.cancel()
    assert [node for _, node, _ in cluster.changes] == ["a", "c"]
    assert cluster.pings["b"] == pytest.approx([start])
    assert cluster.pings["c"][0] == pytest.approx(start + 1.0)


async def test_detector_record_feeds_external_evidence(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cluster = Cluster(a="ok")
    detector = cluster.detector(threshold=2)
    detector.record("a", False)
    detector.record("a", False)
    detector.record("other", False)  # not watched: ignored
    detector.record("a", True)
    assert [(node, up) for _, node, up in cluster.changes] == [("a", False), ("a", True)]
    assert detector.is_reachable("other")


async def test_detector_runs_once_at_a_time(autojump_clock: trio.testing.MockClock) -> None:
    detector = Cluster().detector()
    async with trio.open_nursery() as nursery:
        await nursery.start(detector.run)
        with pytest.raises(RuntimeError, match="already running"):
            await detector.run()
        nursery.cancel_scope.cancel()
    async with trio.open_nursery() as nursery:  # can run again once stopped
        await nursery.start(detector.run)
        nursery.cancel_scope.cancel()


def test_detector_validation() -> None:
    cluster = Cluster()
    with pytest.raises(ValueError, match="interval"):
        FailureDetector(0, 3, cluster.ping, cluster.on_change)
    with pytest.raises(ValueError, match="threshold"):
        FailureDetector(1.0, 0, cluster.ping, cluster.on_change)


# --------------------------------------------------------------------------- latency


def test_latency_tracker_ewma() -> None:
    tracker = LatencyTracker(alpha=0.5)
    assert tracker.average("a") is None
    assert not tracker.is_slow("a", 0.1)
    tracker.record("a", 1.0)
    assert tracker.average("a") == 1.0
    tracker.record("a", 0.0)
    assert tracker.average("a") == pytest.approx(0.5)
    tracker.record("a", 0.0)
    assert tracker.average("a") == pytest.approx(0.25)
    assert tracker.is_slow("a", 0.2)
    assert not tracker.is_slow("a", 0.25)
    tracker.forget("a")
    assert tracker.average("a") is None


def test_latency_tracker_is_bounded() -> None:
    tracker = LatencyTracker(max_keys=2)
    tracker.record("a", 1.0)
    tracker.record("b", 1.0)
    tracker.record("a", 1.0)
    tracker.record("c", 1.0)  # b is the least recently recorded
    assert len(tracker) == 2
    assert tracker.average("b") is None
    assert tracker.average("a") is not None
    with pytest.raises(ValueError, match="alpha"):
        LatencyTracker(alpha=0)
