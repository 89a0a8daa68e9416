"""The public face of work queues: :func:`open_work_queue` and :class:`WorkQueue`.

:func:`open_work_queue` checks its arguments, opens the backing (the built-in
``"state"`` one, or the one the node's state engine offers through
:class:`~jido_trio.abc.WorkQueueBackingProvider`), runs the
:class:`~jido_trio.workqueue._dispatcher.Dispatcher` in its nursery for the
body, and drains or cancels it on the way out, the same for every backing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from .._exceptions import ConfigError
from .._groups import single_failure
from .._ids import new_id
from .._node import Node
from .._ref import AgentRef
from ..abc import DeadJob
from ..abc import WorkQueueBacking
from ..abc import WorkQueueBackingProvider
from ..abc import WorkQueueSpec
from ._dispatcher import Dispatcher
from ._state_backing import open_state_backing

__all__ = ["STATE_BACKING", "QueueStats", "WorkQueue", "open_work_queue"]

#: The backing that works on every state engine.
STATE_BACKING = "state"


@attrs.frozen(kw_only=True)
class QueueStats:
    """A snapshot of a :class:`WorkQueue`.

    :param pending: jobs waiting for a delivery (``delayed`` included).
    :param delayed: pending jobs waiting out a retry backoff.
    :param in_flight: jobs handed to a consumer and not settled yet.
    :param done: jobs acknowledged since this queue was opened.
    :param dead: jobs in the dead-letter set now.
    :param retried: failed deliveries followed by a retry, since this queue
        was opened.
    """

    pending: int
    delayed: int
    in_flight: int
    done: int
    dead: int
    retried: int = 0


def _job_ids(job_ids: Iterable[str] | None) -> list[str] | None:
    if job_ids is None:
        return None
    if isinstance(job_ids, str):
        raise TypeError("job_ids must be an iterable of ids, not one string")
    return list(dict.fromkeys(job_ids))


@attrs.define(eq=False)
class WorkQueue:
    """A durable queue of jobs handed out to competing consumer agents.

    Get one from :func:`open_work_queue`. Jobs are put with :meth:`put`, go
    out highest priority first and first-in first-out within a priority, one
    delivery at a time per job, to whichever consumer has a free slot. A job
    is acknowledged (deleted) when the consumer's action returns, retried with
    exponential backoff when it fails or outlasts the visibility timeout, and
    dead-lettered after ``max_attempts`` failed deliveries.

    :ivar spec: the queue's arguments (:class:`~jido_trio.abc.WorkQueueSpec`).
    :ivar backing: where the jobs live: ``"state"`` (the node's StateBackend)
        or the name of the backing the state engine offers (``"jetstream"``).
    """

    spec: WorkQueueSpec
    backing: str
    _dispatcher: Dispatcher
    _closed: bool = False

    @property
    def name(self) -> str:
        """The queue name."""
        return self.spec.name

    @property
    def _backing(self) -> WorkQueueBacking:
        return self._dispatcher.backing

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError(f"work queue {self.name!r} is closed")

    async def put(self, payload: Any, *, priority: int = 0, id: str | None = None) -> str:
        """Add a job and return its id once it is stored.

        :param payload: the job, handed to the consumer's action as ``job``;
            anything the message codec encodes (plain data, refs). The
            consumer sees it as it comes back from storage (tuples become
            lists), on the first delivery as after a restart.
        :param priority: higher goes first; equal priorities go in put order.
        :param id: the job id (generated when omitted). Putting an id the
            queue already holds (pending, in flight, dead-lettered, or
            acknowledged within the last ``dedupe_window`` jobs; on
            JetStream, put within the stream's duplicate window) changes
            nothing and returns the id.
        :raises InvalidMessage: the payload cannot be encoded.
        :raises trio.ClosedResourceError: the queue is closed.
        """
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise TypeError(f"priority must be an int, got {priority!r}")
        job_id = new_id() if id is None else id
        if not isinstance(job_id, str) or not job_id:
            raise TypeError("job id must be a non-empty string")
        self._check_open()
        await self._backing.put(job_id, payload, priority=priority)
        return job_id

    def stats(self) -> QueueStats:
        """Counts of pending, delayed, in-flight, done, dead and retried jobs."""
        dispatcher = self._dispatcher
        counts = self._backing.counts()
        delayed = counts.delayed + dispatcher.delayed
        return QueueStats(
            pending=max(counts.unfinished - dispatcher.in_flight, delayed, 0),
            delayed=delayed,
            in_flight=dispatcher.in_flight,
            done=dispatcher.done,
            dead=counts.dead,
            retried=dispatcher.retried,
        )

    async def join(self) -> None:
        """Wait until no job is pending or in flight (dead letters do not count).

        Bound the wait with ``trio.fail_after``: with no consumer able to take
        work, the queue never empties.

        :raises trio.ClosedResourceError: the queue closed with jobs left.
        """
        await self._dispatcher.join()

    async def dead_letters(self) -> list[DeadJob]:
        """The dead-lettered jobs, oldest put first."""
        return await self._backing.dead_letters()

    async def redrive(self, job_ids: Iterable[str] | None = None) -> list[str]:
        """Put dead-lettered jobs back in the queue with a fresh attempt budget.

        :param job_ids: the jobs to redrive (unknown ids are skipped); all
            dead letters when omitted.
        :returns: the ids redriven, oldest put first.
        :raises trio.ClosedResourceError: the queue is closed.
        """
        return await self._move_dead_letters(job_ids, self._backing.redrive)

    async def purge_dead_letters(self, job_ids: Iterable[str] | None = None) -> list[str]:
        """Delete dead-lettered jobs for good (all of them when ``job_ids`` is omitted).

        :returns: the ids deleted, oldest put first.
        :raises trio.ClosedResourceError: the queue is closed.
        """
        return await self._move_dead_letters(job_ids, self._backing.purge)

    async def _move_dead_letters(
        self, job_ids: Iterable[str] | None, move: Callable[[str], Any]
    ) -> list[str]:
        """Run ``move`` on the chosen dead letters, oldest first; the ids it moved."""
        listed = _job_ids(job_ids)
        wanted = None if listed is None else set(listed)
        self._check_open()
        chosen = [
            dead.id
            for dead in await self._backing.dead_letters()
            if wanted is None or dead.id in wanted
        ]
        return [job_id for job_id in chosen if await move(job_id)]


def _backing_for(
    node: Node, backing: str
) -> tuple[str, Callable[[WorkQueueSpec], AbstractAsyncContextManager[WorkQueueBacking]]]:
    """The backing's name and its opener for ``backing`` ("auto", "state" or
    the name of the one the node's state engine offers)."""
    if not isinstance(backing, str):
        raise TypeError(f"backing must be a str, got {type(backing).__name__}")
    state = node.state
    provider = state if isinstance(state, WorkQueueBackingProvider) else None
    if backing == STATE_BACKING or (backing == "auto" and provider is None):
        return STATE_BACKING, lambda spec: open_state_backing(state, spec)
    if provider is not None and backing in ("auto", provider.work_queue_backing):
        return provider.work_queue_backing, provider.open_work_queue_backing
    offers = (
        f"offers only {provider.work_queue_backing!r} and"
        if provider is not None
        else "offers no work-queue backing but"
    )
    raise ConfigError(
        f"work queue backing {backing!r}: the node's state engine {node.config.state!r} "
        f"{offers} {STATE_BACKING!r}"
    )


@asynccontextmanager
async def open_work_queue(
    node: Node,
    name: str,
    *,
    consumers: Sequence[AgentRef],
    action: str,
    max_attempts: int = 5,
    visibility_timeout: float = 30.0,
    backoff: tuple[float, float] = (0.1, 30.0),
    concurrency_per_consumer: int = 1,
    dedupe_window: int = 10_000,
    backing: str = "auto",
) -> AsyncIterator[WorkQueue]:
    """Open the durable work queue ``name`` on ``node``'s state engine and
    dispatch its jobs to ``consumers`` for the duration of an ``async with``.

    Jobs stored by an earlier opening are resumed, those that were in flight
    included. Each job is delivered as
    ``node.call(consumer, Instruction(action, {"job": payload, "job_id": id},
    id=f"{name}/{id}"), timeout=visibility_timeout)``, so a consumer that
    receives a job it already applied answers :class:`AlreadyProcessed` and
    the job counts as done.

    Outcomes of a delivery:

    - the action returns, or the consumer already applied it: **ack** (the job
      is deleted);
    - :class:`ActionError` or another :class:`JidoError`: a failed attempt,
      retried after ``min(initial * 2 ** (attempts - 1), maximum)`` seconds
      on any free consumer; dead-lettered after ``max_attempts``;
    - :class:`CallTimeout` (the visibility timeout passed): a failed attempt
      too, but its outcome is unknown, so the job stays reserved for the same
      consumer, whose dedupe can tell; that consumer takes no other work until
      it answers a strong query (which waits behind whatever it is stuck on),
      and if that query fails its reserved jobs go to the others;
    - :class:`AgentNotFound`, :class:`AgentUnavailable`, :class:`Unreachable`,
      :class:`CircuitOpen`, :class:`MailboxFull`: the consumer is down; the job
      goes back at once with no attempt counted, and that consumer takes no
      work until it answers again (probed with the same backoff).

    Processing is at least once and, as long as every job finishes on the
    consumer that last received it, exactly once. A job moved to another
    consumer while the first one may still apply it (that consumer stuck past
    two visibility timeouts, or unreachable) can run on both.

    :param node: the node whose StateBackend holds the queue and through which
        jobs are delivered (consumers may live on other nodes).
    :param name: the queue name (no ``/``).
    :param consumers: the competing consumer agents.
    :param action: the consumers' action; it takes ``job`` and ``job_id``.
    :param max_attempts: failed deliveries before a job is dead-lettered.
    :param visibility_timeout: seconds a delivery may take before it counts
        as failed and the job is offered again.
    :param backoff: ``(initial, maximum)`` seconds between attempts of a job,
        doubling each time; also the pause of a consumer found down.
    :param concurrency_per_consumer: jobs in flight at once per consumer.
    :param dedupe_window: acknowledged job ids remembered for idempotent puts.
    :param backing: where the jobs live: ``"state"`` for the node's
        StateBackend (any engine), the name of the backing the state engine
        offers (``"jetstream"`` with ``state="nats"``: a JetStream work-queue
        stream whose consumers compete across nodes), or ``"auto"`` (the
        default) for the engine's backing when it offers one, else
        ``"state"``.
    :raises ConfigError: the state engine does not offer ``backing``.

    Leaving the block normally stops handing out jobs and waits for the
    deliveries in flight; leaving it with an error or a cancellation cancels
    them (they are delivered again when the queue is next opened). Pending
    jobs stay stored either way.
    """
    if not isinstance(node, Node):
        raise TypeError(f"expected a Node, got {type(node).__name__}")
    spec = WorkQueueSpec.new(
        name,
        consumers=consumers,
        action=action,
        max_attempts=max_attempts,
        visibility_timeout=visibility_timeout,
        backoff=backoff,
        concurrency_per_consumer=concurrency_per_consumer,
        dedupe_window=dedupe_window,
        settle_timeout=node.config.shutdown_timeout,
    )
    chosen, opener = _backing_for(node, backing)
    body_error: BaseException | None = None
    async with opener(spec) as impl:
        dispatcher = Dispatcher(node=node, spec=spec, backing=impl)
        queue = WorkQueue(spec=spec, backing=chosen, dispatcher=dispatcher)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(dispatcher.serve)
                try:
                    yield queue
                except BaseException as exc:
                    body_error = exc
                else:
                    await dispatcher.drain()
                finally:
                    queue._closed = True
                    dispatcher.close()
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # A body cancelled because a dispatcher failed sees that failure.
            raise (single_failure(group, body_error) or group) from None
    if body_error is not None:
        raise body_error
