"""The Coordination protocol: locks, leader election and barriers."""

from __future__ import annotations

import abc
from contextlib import AbstractAsyncContextManager

import attrs

__all__ = ["Coordination", "Lease"]


@attrs.frozen(kw_only=True)
class Lease:
    """A held lock or leadership.

    :param name: the lock or election group.
    :param holder: who holds it.
    :param token: fencing token; strictly greater for every new holder, so a
        resource can refuse writes from a holder whose lease has expired.
    :param expires_at: ``trio.current_time()`` at which the lease lapses.
    """

    name: str
    holder: str
    token: int
    expires_at: float


class Coordination(abc.ABC):
    """Locks, leader election and barriers."""

    @abc.abstractmethod
    def lock(
        self, name: str, *, ttl: float, holder: str | None = None
    ) -> AbstractAsyncContextManager[Lease]:
        """Hold the lock ``name`` for the body of an ``async with``.

        Waits until the lock is free (use ``trio.fail_after`` to bound the
        wait); a waiter gets a released lock promptly, within ``ttl`` of the
        release.
        A holder that does not leave within ``ttl`` seconds loses the
        lease, and the next holder gets a larger fencing token.

        :raises ValueError: ``ttl`` is not positive.
        :raises Unreachable: the service cannot be reached right now.
        :raises EngineError: the service failed the operation.
        :raises CallTimeout: the service gave no answer in time.
        """

    @abc.abstractmethod
    def elect(
        self, group: str, *, candidate: str, ttl: float = 10.0
    ) -> AbstractAsyncContextManager[Lease]:
        """Wait to become leader of ``group``; leadership lasts for the body.

        The lease is renewed while the body runs; leaving it resigns. A
        leader that loses its lease before it leaves (it could not renew in
        time, or another candidate took the lease over) has its body
        cancelled, and the ``async with`` raises.

        :raises ValueError: ``ttl`` is not positive.
        :raises StateConflict: leadership was lost: the lease moved on to
            another candidate.
        :raises Unreachable: the service cannot be reached right now.
        :raises EngineError: the service failed the operation.
        :raises CallTimeout: the service gave no answer in time.
        """

    @abc.abstractmethod
    async def barrier(self, name: str, parties: int) -> None:
        """Wait until ``parties`` callers have reached the barrier ``name``.

        :raises ValueError: ``parties`` is less than 1.
        :raises Unreachable: the service cannot be reached right now.
        :raises EngineError: the service failed the operation.
        :raises CallTimeout: the service gave no answer in time.
        """
