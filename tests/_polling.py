"""The one polling helper of the test suite, for state that changes with no
event to wait on (connection state, stats, what another node has seen)."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable
from collections.abc import Callable
from typing import Any
from typing import TypeVar

import trio

__all__ = ["wait_until"]

T = TypeVar("T")


async def wait_until(
    probe: Callable[[], T | Awaitable[T]],
    ok: Callable[[T], Any] = bool,
    *,
    timeout: float = 10.0,
    interval: float = 0.01,
) -> T:
    """Call ``probe()`` (sync or async) until ``ok`` accepts its value, and
    return that value; ``trio.TooSlowError`` after ``timeout`` seconds."""
    with trio.fail_after(timeout):
        while True:
            value = probe()
            if inspect.isawaitable(value):
                value = await value
            if ok(value):  # type: ignore[arg-type]
                return value  # type: ignore[return-value]
            await trio.sleep(interval)
