"""Resilience building blocks: circuit breakers, retries, failure detection, latency.

Everything here reads time from :func:`trio.current_time`, so a
:class:`trio.testing.MockClock` drives it in tests, and nothing here holds a
lock: state changes are plain synchronous code between two awaits, which trio
makes atomic for free.

- :class:`CircuitBreaker` and :class:`BreakerRegistry` (configured by
  :class:`BreakerConfig`): fail fast with :class:`~jido_trio.CircuitOpen` while a
  destination keeps failing, probe it again after a cool-down.
- :func:`retry_idempotent` (configured by :class:`RetryPolicy`): exponential
  backoff with jitter on top of tenacity, bounded by attempts *and* a trio
  deadline. Only for operations that are safe to repeat.
- :class:`FailureDetector`: heartbeat pings per node; a node is unreachable
  after ``threshold`` consecutive misses and reachable again on the next reply.
- :class:`LatencyTracker`: exponentially weighted moving average of response
  times per key, to call a destination slow.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Awaitable
from collections.abc import Callable
from typing import Literal
from typing import TypeVar
from typing import TypeVarTuple

import attrs
import tenacity
import trio

from ._exceptions import CircuitOpen

__all__ = [
    "BreakerConfig",
    "BreakerRegistry",
    "BreakerState",
    "CircuitBreaker",
    "FailureDetector",
    "LatencyTracker",
    "RetryPolicy",
    "retry_idempotent",
]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

BreakerState = Literal["closed", "open", "half_open"]
"""What :attr:`CircuitBreaker.state` reports."""

_Outcome = Literal["success", "failure", "release"]


def _positive(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


def _non_negative(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


def _at_least_one(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be >= 1, got {value!r}")


# --------------------------------------------------------------------------- breaker


@attrs.frozen(kw_only=True)
class BreakerConfig:
    """Thresholds shared by the breakers of a :class:`BreakerRegistry`.

    :param failure_threshold: consecutive failures that open a closed breaker.
    :param reset_timeout: seconds an open breaker refuses every call before it
        turns half-open.
    :param half_open_max_calls: trial calls let through at once while half-open.
    """

    failure_threshold: int = attrs.field(default=5, validator=_at_least_one)
    reset_timeout: float = attrs.field(default=30.0, validator=_non_negative)
    half_open_max_calls: int = attrs.field(default=1, validator=_at_least_one)


@attrs.define(eq=False, kw_only=True)
class CircuitBreaker:
    """A circuit breaker for one destination (a node or an agent).

    States, as reported by :attr:`state`:

    - ``"closed"``: calls go through; ``failure_threshold`` *consecutive*
      failures open the breaker (a success resets the count).
    - ``"open"``: every call is refused at once with
      :class:`~jido_trio.CircuitOpen`, without being attempted, until
      ``reset_timeout`` seconds have passed since the breaker opened.
    - ``"half_open"``: up to ``half_open_max_calls`` trial calls are let through
      at once; others are refused with ``CircuitOpen``. The first trial to
      succeed closes the breaker; the first trial to fail re-opens it with a
      fresh ``reset_timeout``. A trial that ends without a verdict (cancelled,
      or an error not in ``failure_types``) frees its slot for another trial.

    The open → half-open transition is computed lazily from
    :func:`trio.current_time`; no background task is needed.

    Prefer :meth:`call`, which attributes every outcome to the state in which
    its call was admitted, so a slow call admitted while closed cannot close or
    re-open a breaker that has moved on since. :meth:`before_call` /
    :meth:`on_success` / :meth:`on_failure` / :meth:`on_release` are for code
    that cannot be wrapped in one awaitable; they attribute an outcome to the
    *current* state, and each ``before_call`` that returned must be followed by
    exactly one of the other three (``on_release`` on cancellation, or a
    half-open slot stays taken).

    The breaker holds no lock: the protected call runs outside of it, so slow
    calls never block other calls, through this breaker or another.
    """

    name: str = ""
    failure_threshold: int = attrs.field(default=5, validator=_at_least_one)
    reset_timeout: float = attrs.field(default=30.0, validator=_non_negative)
    half_open_max_calls: int = attrs.field(default=1, validator=_at_least_one)

    # "closed", "open" or "half_open"; "open" may already be half-open by the clock.
    _state: BreakerState = attrs.field(default="closed", init=False)
    _failures: int = attrs.field(default=0, init=False)
    _opened_at: float = attrs.field(default=-math.inf, init=False)
    _trials: int = attrs.field(default=0, init=False)
    # Bumped on every transition; outcomes of calls admitted under an older
    # epoch are stale and ignored by call().
    _epoch: int = attrs.field(default=0, init=False)

    @classmethod
    def from_config(cls, config: BreakerConfig, *, name: str = "") -> CircuitBreaker:
        """A closed breaker with the thresholds of ``config``."""
        return cls(
            name=name,
            failure_threshold=config.failure_threshold,
            reset_timeout=config.reset_timeout,
            half_open_max_calls=config.half_open_max_calls,
        )

    @property
    def state(self) -> BreakerState:
        """``"closed"``, ``"open"`` or ``"half_open"``, as of ``trio.current_time()``."""
        if self._state == "open" and trio.current_time() >= self._opened_at + self.reset_timeout:
            return "half_open"
        return self._state

    @property
    def failures(self) -> int:
        """Consecutive failures counted while closed (0 in the other states)."""
        return self._failures

    def retry_after(self) -> float:
        """Seconds until an open breaker turns half-open; 0.0 when it is not open."""
        if self._state != "open":
            return 0.0
        return max(0.0, self._opened_at + self.reset_timeout - trio.current_time())

    # -- manual protocol ------------------------------------------------------------

    def before_call(self) -> None:
        """Admit one call or raise :class:`~jido_trio.CircuitOpen` at once.

        Report its outcome with exactly one of :meth:`on_success`,
        :meth:`on_failure` or :meth:`on_release`.
        """
        if self._admit() is None:
            raise self._open_error()

    def on_success(self) -> None:
        """The admitted call succeeded: reset the failure count, or close if half-open."""
        self._settle(self._epoch, "success")

    def on_failure(self) -> None:
        """The admitted call failed: count it while closed, re-open if half-open."""
        self._settle(self._epoch, "failure")

    def on_release(self) -> None:
        """The admitted call ended without a verdict (e.g. cancelled): free its slot."""
        self._settle(self._epoch, "release")

    # -- wrapped call -----------------------------------------------------------------

    async def call(
        self,
        fn: Callable[[*Ts], Awaitable[T]],
        *args: *Ts,
        failure_types: tuple[type[BaseException], ...] = (Exception,),
    ) -> T:
        """Run ``await fn(*args)`` through the breaker and return its result.

        Raises :class:`~jido_trio.CircuitOpen` without calling ``fn`` when the
        breaker refuses the call (after a checkpoint, like every trio async
        function). An ``Exception`` that is an instance of ``failure_types``
        counts as a failure; any other exception, and cancellation (never a
        failure, whatever ``failure_types`` says), count as neither success
        nor failure. Every exception propagates unchanged.
        """
        epoch = self._admit()
        if epoch is None:
            error = self._open_error()
            await trio.lowlevel.checkpoint()
            raise error
        outcome: _Outcome = "release"
        try:
            result = await fn(*args)
        except Exception as exc:
            if isinstance(exc, failure_types):
                outcome = "failure"
            raise
        else:
            outcome = "success"
            return result
        finally:
            self._settle(epoch, outcome)

    def admit(self) -> int | None:
        """The synchronous half of :meth:`call`: admit one call and return the
        epoch it is admitted under, or ``None`` when the breaker refuses it.
        Report the outcome with exactly one :meth:`report` for that epoch."""
        return self._admit()

    def report(self, epoch: int, outcome: Literal["success", "failure", "release"]) -> None:
        """The outcome of a call admitted by :meth:`admit` under ``epoch``
        (ignored if the breaker has moved on since, as in :meth:`call`)."""
        self._settle(epoch, outcome)

    def open_error(self) -> CircuitOpen:
        """The :class:`~jido_trio.CircuitOpen` a refused call raises."""
        return self._open_error()

    # -- internals ----------------------------------------------------------------------

    def _transition(self, state: BreakerState) -> None:
        self._state = state
        self._epoch += 1
        self._failures = 0
        self._trials = 0
        if state == "open":
            self._opened_at = trio.current_time()

    def _admit(self) -> int | None:
        """Return the epoch the call is admitted under, or None to refuse it."""
        state = self.state
        if state == "closed":
            return self._epoch
        if state == "open":
            return None
        if self._state == "open":  # the clock says half-open: make it so
            self._transition("half_open")
        if self._trials >= self.half_open_max_calls:
            return None
        self._trials += 1
        return self._epoch

    def _settle(self, epoch: int, outcome: _Outcome) -> None:
        if epoch != self._epoch:
            return  # admitted before the last transition: says nothing now
        if self._state == "closed":
            if outcome == "success":
                if self._failures:  # attrs' validating __setattr__ is slow; skip a no-op
                    self._failures = 0
            elif outcome == "failure":
                self._failures += 1
                if self._failures >= self.failure_threshold:
                    self._transition("open")
        elif self._state == "half_open":
            if outcome == "success":
                self._transition("closed")
            elif outcome == "failure":
                self._transition("open")
            elif self._trials > 0:
                self._trials -= 1
        # "open": nothing was admitted in this epoch; ignore manual reports.

    def _open_error(self) -> CircuitOpen:
        what = f"circuit breaker {self.name!r}" if self.name else "circuit breaker"
        if self.state == "half_open":
            return CircuitOpen(f"{what} is half-open and its trial calls are in flight")
        return CircuitOpen(f"{what} is open; next trial in {self.retry_after():.3f}s")


@attrs.define(eq=False, kw_only=True)
class BreakerRegistry:
    """Circuit breakers by destination key, created on first use.

    Bounded: beyond ``max_size`` keys the least recently used breaker is
    dropped (a call already running through it still reports to it).

    :param config: thresholds of every breaker created here.
    :param max_size: most breakers kept.
    """

    config: BreakerConfig = attrs.field(factory=BreakerConfig)
    max_size: int = attrs.field(default=10_000, validator=_at_least_one)
    _breakers: OrderedDict[str, CircuitBreaker] = attrs.field(factory=OrderedDict, init=False)

    def get(self, key: str) -> CircuitBreaker:
        """The breaker for ``key``, created closed if there is none yet."""
        breaker = self._breakers.get(key)
        if breaker is None:
            breaker = CircuitBreaker.from_config(self.config, name=key)
            self._breakers[key] = breaker
            while len(self._breakers) > self.max_size:
                self._breakers.popitem(last=False)
        else:
            self._breakers.move_to_end(key)
        return breaker

    def peek(self, key: str) -> CircuitBreaker | None:
        """The breaker for ``key`` if there is one; creates nothing (for health checks)."""
        return self._breakers.get(key)

    def remove(self, key: str) -> None:
        """Forget the breaker for ``key`` (no error if there is none)."""
        self._breakers.pop(key, None)

    def remove_prefix(self, prefix: str) -> None:
        """Forget every breaker whose key starts with ``prefix``."""
        for key in [key for key in self._breakers if key.startswith(prefix)]:
            del self._breakers[key]

    def __contains__(self, key: object) -> bool:
        return key in self._breakers

    def __len__(self) -> int:
        return len(self._breakers)


# --------------------------------------------------------------------------- retry


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """Exponential backoff with jitter for :func:`retry_idempotent`.

    The sleep before attempt ``n + 1`` (after ``n`` failed attempts) is
    ``min(maximum, initial * multiplier ** (n - 1)) + uniform(0, jitter)``.

    :param max_attempts: attempts in total, the first one included.
    :param initial: base sleep after the first failure, in seconds.
    :param maximum: cap of the exponential part of a sleep, in seconds.
    :param jitter: up to this many random seconds added to each sleep.
    :param multiplier: growth factor of the sleep per attempt.
    """

    max_attempts: int = attrs.field(default=3, validator=_at_least_one)
    initial: float = attrs.field(default=0.05, validator=_non_negative)
    maximum: float = attrs.field(default=1.0, validator=_non_negative)
    jitter: float = attrs.field(default=0.05, validator=_non_negative)
    multiplier: float = attrs.field(default=2.0, validator=_positive)


class _StopAtTrioDeadline(tenacity.stop.stop_base):
    """Stop when the upcoming sleep would reach the deadline (trio's clock)."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return trio.current_time() + retry_state.upcoming_sleep >= self.deadline


async def retry_idempotent(
    fn: Callable[[], Awaitable[T]],
    *,
    deadline: float,
    policy: RetryPolicy,
    retry_on: tuple[type[BaseException], ...],
) -> T:
    """Call ``await fn()`` until it succeeds, retrying failures in ``retry_on``.

    Only for idempotent operations: a retried attempt may repeat an effect
    that the failed one already had.

    - Attempts are separated by the backoff of ``policy`` (slept with
      :func:`trio.sleep`, so a MockClock drives it).
    - It stops after ``policy.max_attempts`` attempts, or earlier when the
      next sleep would end at or after ``deadline`` (a :func:`trio.current_time`
      value; ``math.inf`` for none); then the last exception is re-raised as it
      is (never wrapped in ``tenacity.RetryError``).
    - An exception that is not an instance of ``retry_on`` propagates at once;
      ``trio.Cancelled`` and other non-``Exception`` errors are never retried.
    - The first attempt is always made, and an attempt in progress is not
      interrupted at ``deadline``: bound the attempts themselves with a cancel
      scope (e.g. ``trio.fail_at(deadline)``) around this call or inside ``fn``.
    """

    def retryable(exc: BaseException) -> bool:
        return isinstance(exc, Exception) and isinstance(exc, retry_on)

    async def attempt() -> T:
        # A coroutine function, whatever kind of callable ``fn`` is, so tenacity awaits it.
        return await fn()

    # A fresh AsyncRetrying per call: tenacity keeps per-run state on the object.
    retrying = tenacity.AsyncRetrying(
        sleep=trio.sleep,
        stop=tenacity.stop_after_attempt(policy.max_attempts) | _StopAtTrioDeadline(deadline),
        wait=(
            tenacity.wait_exponential(
                multiplier=policy.initial, max=policy.maximum, exp_base=policy.multiplier
            )
            + tenacity.wait_random(0, policy.jitter)
        ),
        retry=tenacity.retry_if_exception(retryable),
        reraise=True,
    )
    result: T = await retrying(attempt)
    return result


# --------------------------------------------------------------------------- failure detector


@attrs.define(eq=False)
class _Watch:
    misses: int = 0
    reachable: bool = True


@attrs.define(eq=False)
class FailureDetector:
    """Heartbeat-based failure detection of other nodes.

    While :meth:`run` runs, a round starts every ``interval`` seconds (the
    first one at once): each watched node is pinged concurrently with
    ``await ping(node)``. A ping that raises an ``Exception`` or does not
    return within ``interval`` is a miss. After ``threshold`` consecutive
    misses the node becomes unreachable and ``on_change(node, False)`` is
    called once; its next successful ping makes it reachable again and calls
    ``on_change(node, True)``.

    Timing: a node that stops answering at time t is reported unreachable
    after at most ``threshold`` rounds (between ``(threshold - 1) * interval``
    and ``(threshold + 1) * interval`` after t, depending on where t falls in
    a round and whether pings fail fast or time out).

    :param interval: seconds between rounds, also each ping's time limit.
    :param threshold: consecutive misses that make a node unreachable.
    :param ping: ``async (node) -> None``; returns when the node answered.
    :param on_change: ``(node, reachable) -> None``, called synchronously from
        :meth:`run` (or :meth:`record`); what it raises propagates, so it should
        not raise.
    """

    interval: float = attrs.field(validator=_positive)
    threshold: int = attrs.field(validator=_at_least_one)
    ping: Callable[[str], Awaitable[None]]
    on_change: Callable[[str, bool], None]
    _watched: dict[str, _Watch] = attrs.field(factory=dict, init=False)
    _running: bool = attrs.field(default=False, init=False)

    def watch(self, node: str) -> None:
        """Start pinging ``node`` from the next round (no-op if already watched)."""
        self._watched.setdefault(node, _Watch())

    def unwatch(self, node: str) -> None:
        """Stop pinging ``node`` and forget its misses (no-op if not watched).

        No ``on_change`` is called for it afterwards, not even for a ping that
        is still in flight.
        """
        self._watched.pop(node, None)

    @property
    def watched(self) -> frozenset[str]:
        """The nodes being watched."""
        return frozenset(self._watched)

    def is_reachable(self, node: str) -> bool:
        """False only for a watched node that has missed ``threshold`` pings in a row."""
        watch = self._watched.get(node)
        return watch is None or watch.reachable

    def misses(self, node: str) -> int:
        """Consecutive missed pings of ``node`` (0 when not watched)."""
        watch = self._watched.get(node)
        return 0 if watch is None else watch.misses

    def record(self, node: str, ok: bool) -> None:
        """Count one ping outcome for a watched ``node`` (ignored when not watched).

        :meth:`run` calls this for every ping; other evidence (a transport
        request that failed or succeeded) may be fed in the same way.
        """
        watch = self._watched.get(node)
        if watch is not None:
            self._record(node, watch, ok)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Ping every watched node every ``interval`` seconds, until cancelled.

        Use as ``await nursery.start(detector.run)``; it reports started at
        once, before the first round. Only one ``run`` at a time per detector.
        """
        if self._running:
            raise RuntimeError("FailureDetector.run is already running")
        self._running = True
        try:
            task_status.started()
            next_round = trio.current_time()
            while True:
                round_deadline = next_round + self.interval
                watches = list(self._watched.items())
                if watches:
                    async with trio.open_nursery() as nursery:
                        for node, watch in watches:
                            nursery.start_soon(self._ping_one, node, watch, round_deadline)
                next_round = round_deadline
                await trio.sleep_until(next_round)
        finally:
            self._running = False

    async def _ping_one(self, node: str, watch: _Watch, deadline: float) -> None:
        ok = False
        with trio.move_on_at(deadline):
            try:
                await self.ping(node)
            except Exception:
                pass
            else:
                ok = True
        if self._watched.get(node) is watch:  # still watched, and not re-watched since
            self._record(node, watch, ok)

    def _record(self, node: str, watch: _Watch, ok: bool) -> None:
        if ok:
            watch.misses = 0
            if not watch.reachable:
                watch.reachable = True
                self.on_change(node, True)
        else:
            watch.misses += 1
            if watch.reachable and watch.misses >= self.threshold:
                watch.reachable = False
                self.on_change(node, False)


# --------------------------------------------------------------------------- latency


@attrs.define(eq=False, kw_only=True)
class LatencyTracker:
    """Exponentially weighted moving average of response times, per key.

    ``average = alpha * sample + (1 - alpha) * average``; the first sample of
    a key is its average. Bounded: beyond ``max_keys`` the least recently
    recorded key is forgotten.

    :param alpha: weight of the newest sample, in (0, 1].
    :param max_keys: most keys kept.
    """

    alpha: float = attrs.field(default=0.2)
    max_keys: int = attrs.field(default=10_000, validator=_at_least_one)
    _averages: OrderedDict[str, float] = attrs.field(factory=OrderedDict, init=False)

    @alpha.validator
    def _check_alpha(self, _attribute: attrs.Attribute[float], value: float) -> None:
        if not 0 < value <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {value!r}")

    def record(self, key: str, seconds: float) -> None:
        """Add one response time of ``key``, in seconds."""
        averages = self._averages
        previous = averages.get(key)
        if previous is None:
            averages[key] = seconds
            while len(averages) > self.max_keys:
                averages.popitem(last=False)
        else:
            averages[key] = self.alpha * seconds + (1 - self.alpha) * previous
            averages.move_to_end(key)

    def average(self, key: str) -> float | None:
        """The current average of ``key``, or None if nothing was recorded."""
        return self._averages.get(key)

    def is_slow(self, key: str, threshold: float) -> bool:
        """Whether the average of ``key`` is above ``threshold`` seconds (False if unknown)."""
        average = self._averages.get(key)
        return average is not None and average > threshold

    def forget(self, key: str) -> None:
        """Drop what was recorded for ``key``."""
        self._averages.pop(key, None)

    def __len__(self) -> int:
        return len(self._averages)
