"""The work-queue backing conformance suite against the built-in ``"state"``
backing (memory and SQLite state), and against backings it must reject."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio.testing

from jido_trio.abc import QueuedJob
from jido_trio.abc import WorkQueueSpec
from jido_trio.local import MemoryStateBackend
from jido_trio.local import open_sqlite_state_backend
from jido_trio.testing.conformance import WORK_QUEUE_BACKING_CHECKS
from jido_trio.testing.conformance import check_work_queue_backing
from jido_trio.workqueue import open_state_backing
from jido_trio.workqueue._state_backing import StateBacking


async def test_state_backing_on_memory_state() -> None:
    await check_work_queue_backing(functools.partial(open_state_backing, MemoryStateBackend()))


async def test_state_backing_on_memory_state_in_virtual_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    start = trio.current_time()
    await check_work_queue_backing(
        functools.partial(open_state_backing, MemoryStateBackend()), timeout=1200.0
    )
    assert trio.current_time() - start >= 60.0  # the delays ran on the mock clock


async def test_state_backing_on_sqlite_state(tmp_path: Path) -> None:
    async with open_sqlite_state_backend(tmp_path / "queues.db") as state:
        await check_work_queue_backing(functools.partial(open_state_backing, state))


async def test_checks_are_listed_and_skippable() -> None:
    assert len(WORK_QUEUE_BACKING_CHECKS) >= 15
    assert len(set(WORK_QUEUE_BACKING_CHECKS)) == len(WORK_QUEUE_BACKING_CHECKS)
    factory = functools.partial(open_state_backing, MemoryStateBackend())
    await check_work_queue_backing(factory, skip=WORK_QUEUE_BACKING_CHECKS)
    with pytest.raises(ValueError, match="unknown WorkQueueBacking check"):
        await check_work_queue_backing(factory, skip=["no-such-check"])


# ---------------------------------------------------------------- broken backings


class _ForgetsReservations(StateBacking):
    async def release(self, job: QueuedJob, *, delay: float = 0.0) -> None:
        job.reserved_for = None
        await super().release(job, delay=delay)


class _IgnoresDelays(StateBacking):
    async def release(self, job: QueuedJob, *, delay: float = 0.0) -> None:
        await super().release(job)


class _RedrivesTwice(StateBacking):
    async def redrive(self, job_id: str) -> bool:
        await super().redrive(job_id)
        return True


def _broken(cls: type[StateBacking]) -> Callable[[WorkQueueSpec], Any]:
    """A factory of ``cls`` backings, all in one memory state."""
    return functools.partial(cls.open, MemoryStateBackend())


@pytest.mark.parametrize(
    ("cls", "failing"),
    [
        (_ForgetsReservations, "release_keeps_the_record"),
        (_IgnoresDelays, "release_with_a_delay"),
        (_RedrivesTwice, "redrive"),
    ],
)
async def test_the_suite_rejects_broken_backings(
    cls: type[StateBacking], failing: str, autojump_clock: trio.testing.MockClock
) -> None:
    with pytest.raises(AssertionError, match=f"check {failing!r} failed"):
        await check_work_queue_backing(_broken(cls))
