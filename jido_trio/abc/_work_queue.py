"""The work-queue backing: the optional capability that stores a work queue's jobs.

:func:`jido_trio.open_work_queue` runs one dispatcher for every backing: it
takes jobs from the backing, delivers them to the consumer agents, counts
attempts, times retries, dead-letters jobs and recovers consumers. A backing
only stores jobs and hands them out: :meth:`~WorkQueueBacking.put`,
:meth:`~WorkQueueBacking.fetch`, and one call per outcome of a delivery
(:meth:`~WorkQueueBacking.ack`, :meth:`~WorkQueueBacking.release`,
:meth:`~WorkQueueBacking.dead_letter`).

Every StateBackend can hold a work queue through the built-in backing
(:func:`jido_trio.workqueue.open_state_backing`, named ``"state"``). A state
engine with a native queue offers its own by also subclassing
:class:`WorkQueueBackingProvider`; the NATS engine offers ``"jetstream"``.
``jido_trio.testing.conformance.check_work_queue_backing`` checks a backing.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any
from typing import ClassVar

import attrs

from .._message import decode_value as decode_value
from .._message import encode_value as encode_value
from .._ref import AgentRef


@attrs.frozen(kw_only=True)
class DeadJob:
    """A dead-lettered job, as :meth:`WorkQueue.dead_letters
    <jido_trio.WorkQueue.dead_letters>` lists it.

    :param id: the job id.
    :param payload: the job's payload.
    :param priority: the job's priority.
    :param attempts: deliveries that failed before it was set aside.
    :param error: the last failure, as ``"Type: text"``.
    """

    id: str
    payload: Any
    priority: int
    attempts: int
    error: str | None


def _positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


@attrs.frozen(kw_only=True)
class WorkQueueSpec:
    """The checked arguments of :func:`jido_trio.open_work_queue`: what a
    backing is opened for. Build it with :meth:`new`.

    :param name: the queue name (non-empty, no ``/``).
    :param consumers: the competing consumer agents (distinct).
    :param action: the consumers' action.
    :param max_attempts: failed deliveries before a job is dead-lettered.
    :param visibility_timeout: seconds one delivery may take (finite).
    :param backoff: ``(initial, maximum)`` seconds between attempts.
    :param concurrency_per_consumer: deliveries in flight at once per consumer.
    :param dedupe_window: acknowledged job ids a backing remembers, so that
        putting one again is a no-op.
    :param settle_timeout: seconds a backing may spend settling a job (an
        ack, release or dead-lettering) while the queue is being cancelled:
        the node's ``shutdown_timeout``.
    """

    name: str
    consumers: tuple[AgentRef, ...]
    action: str
    max_attempts: int
    visibility_timeout: float
    backoff: tuple[float, float]
    concurrency_per_consumer: int
    dedupe_window: int
    settle_timeout: float

    @classmethod
    def new(
        cls,
        name: str,
        *,
        consumers: Sequence[AgentRef],
        action: str,
        max_attempts: int,
        visibility_timeout: float,
        backoff: tuple[float, float],
        concurrency_per_consumer: int,
        dedupe_window: int,
        settle_timeout: float,
    ) -> WorkQueueSpec:
        """Check the arguments (see :func:`jido_trio.open_work_queue` for
        what they mean and its defaults) and build the spec.

        :raises ValueError: an argument out of range.
        :raises TypeError: a consumer that is not an :class:`~jido_trio.AgentRef`.
        """
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"queue name must be a non-empty string without '/', got {name!r}")
        if not isinstance(action, str) or not action:
            raise ValueError("action must be a non-empty string")
        refs = tuple(consumers)
        if not refs:
            raise ValueError("a work queue needs at least one consumer")
        if not all(isinstance(ref, AgentRef) for ref in refs):
            raise TypeError("consumers must be AgentRefs")
        if len({ref.id for ref in refs}) != len(refs):
            raise ValueError("consumers must be distinct agents")
        if not (isinstance(backoff, tuple) and len(backoff) == 2):
            raise ValueError(f"backoff must be a pair (initial, maximum), got {backoff!r}")
        initial, maximum = (_positive("backoff", b) for b in backoff)
        if initial > maximum:
            raise ValueError(f"backoff initial {initial} exceeds maximum {maximum}")
        timeout = _positive("visibility_timeout", visibility_timeout)
        if math.isinf(timeout):
            raise ValueError("visibility_timeout must be finite")
        return cls(
            name=name,
            consumers=refs,
            action=action,
            max_attempts=_positive_int("max_attempts", max_attempts),
            visibility_timeout=timeout,
            backoff=(initial, maximum),
            concurrency_per_consumer=_positive_int(
                "concurrency_per_consumer", concurrency_per_consumer
            ),
            dedupe_window=_positive_int("dedupe_window", dedupe_window),
            settle_timeout=_positive("settle_timeout", settle_timeout),
        )


@attrs.define(eq=False, kw_only=True)
class QueuedJob:
    """A job a backing handed out with :meth:`WorkQueueBacking.fetch`, held
    by this node until it is settled (acked, released or dead-lettered).

    The dispatcher changes ``attempts``, ``error``, ``reserved_for`` and
    ``consumer``; a backing stores them when it is told to (a backing may
    subclass this class to keep its own handle on the job, such as a message
    to acknowledge).

    :param id: the job id.
    :param payload: the payload, as storage gives it back (decoded with
        :func:`decode_value`).
    :param priority: higher goes first.
    :param seq: its place among the queue's jobs of the same priority:
        smaller goes first (put order). Unique within the queue.
    :param attempts: failed deliveries so far (the one in flight included,
        once :meth:`WorkQueueBacking.record_delivery` stored it).
    :param error: the last failure, as ``"Type: text"``.
    :param reserved_for: the id of the consumer the job goes to first: an
        earlier delivery to it has an unknown outcome, which only its dedupe
        can tell.
    :param consumer: the id of the consumer of the delivery in flight, if any.
    """

    id: str
    payload: Any
    priority: int
    seq: int
    attempts: int = 0
    error: str | None = None
    reserved_for: str | None = None
    consumer: str | None = None

    def dead(self) -> DeadJob:
        """The job as a dead letter."""
        return DeadJob(**attrs.asdict(self, recurse=False, filter=_DEAD_JOB_FIELDS))


#: The fields a dead letter keeps of its job.
_DEAD_JOB_FIELDS = attrs.filters.include(*attrs.fields_dict(DeadJob))


@attrs.frozen(kw_only=True)
class WorkQueueCounts:
    """What a backing knows of its queue, for :meth:`WorkQueue.stats
    <jido_trio.WorkQueue.stats>`.

    :param unfinished: jobs neither acknowledged nor dead-lettered (pending,
        delayed, or handed out), as last seen by this node.
    :param delayed: jobs released with a delay that is not over yet.
    :param dead: dead letters, as last seen by this node.
    """

    unfinished: int
    delayed: int
    dead: int


class WorkQueueBacking(abc.ABC):
    """Stores one work queue's jobs and hands them out; a dispatcher
    (:func:`jido_trio.open_work_queue`) decides what happens to each.

    A backing is opened for a :class:`WorkQueueSpec` as an async context
    manager (see :class:`WorkQueueBackingProvider`), which loads what the
    queue already holds. On exit it gives back the jobs it still has handed
    out: those with a ``consumer`` reserved for that consumer (their delivery
    was cut short), the others as they were, with their attempts. After exit,
    :meth:`put`, :meth:`redrive` and :meth:`purge` raise
    ``trio.ClosedResourceError``.

    Arguments arrive checked: a job id is a non-empty string, a priority an
    int, a delay a number >= 0, and a job one that :meth:`fetch` returned and
    that is not settled yet. Every async method is a Trio checkpoint.

    An engine failure is a :class:`~jido_trio.JidoError`
    (:class:`~jido_trio.Unreachable` when the engine cannot be reached). From
    :meth:`fetch` the dispatcher logs one and fetches again after a backoff;
    from :meth:`put`, :meth:`redrive` and :meth:`purge` it reaches the caller;
    from a settlement (:meth:`record_delivery`, :meth:`ack`, :meth:`release`,
    :meth:`dead_letter`) it fails the queue. A backing whose engine hands an
    unsettled job out again by itself (JetStream does, after its ack wait) may
    log a failed settlement and return instead.
    """

    @abc.abstractmethod
    async def put(self, job_id: str, payload: Any, *, priority: int) -> None:
        """Store a new job, durably, before returning. Putting an id the
        queue holds (unfinished, dead-lettered, or acknowledged within the
        backing's dedupe window, ``spec.dedupe_window`` jobs or a time)
        changes nothing.

        :raises InvalidMessage: the payload cannot be encoded (or is too
            large for the engine).
        :raises trio.ClosedResourceError: the backing is closed.
        """

    @abc.abstractmethod
    async def fetch(self, max_jobs: int) -> list[QueuedJob]:
        """Hand out up to ``max_jobs`` (>= 1) jobs whose delay is over,
        highest priority first and by ``seq`` within a priority; wait until
        there is one. A backing may return an empty list after a while (to
        poll); the caller asks again. A job handed out is not handed out
        again (here or to another node) until it is settled, or its holder
        stops answering for longer than ``spec.visibility_timeout``.
        """

    def fetch_nowait(self, max_jobs: int) -> list[QueuedJob]:
        """What :meth:`fetch` would hand out at once, without waiting or
        doing I/O; ``[]`` when that is nothing. The dispatcher tries it
        before it waits for :meth:`fetch`. The default returns ``[]``:
        override it when the backing keeps its ready jobs in memory.
        """
        return []

    @abc.abstractmethod
    async def record_delivery(self, job: QueuedJob) -> None:
        """A delivery of ``job`` to ``job.consumer`` is about to start, with
        ``job.attempts`` counting it: store what a restart needs to resume
        it (the attempt, and the consumer that may apply it). A backing whose
        engine counts deliveries itself may store nothing."""

    @abc.abstractmethod
    async def ack(self, job: QueuedJob) -> None:
        """The job is done: delete it, and remember its id for the dedupe
        window of :meth:`put`."""

    @abc.abstractmethod
    async def release(self, job: QueuedJob, *, delay: float = 0.0) -> None:
        """Give the job back, with its ``attempts``, ``error`` and
        ``reserved_for`` stored: :meth:`fetch` hands it out again (on any
        node sharing the queue) once ``delay`` seconds have passed."""

    @abc.abstractmethod
    async def dead_letter(self, job: QueuedJob) -> None:
        """Set the job aside as a dead letter, with its attempts and error."""

    @abc.abstractmethod
    def counts(self) -> WorkQueueCounts:
        """The queue's counts as this node last saw them (no I/O)."""

    @abc.abstractmethod
    async def wait_empty(self) -> None:
        """Wait until the queue has no unfinished job (dead letters do not
        count), on any node sharing it.

        :raises trio.ClosedResourceError: the backing closed with jobs left.
        """

    @abc.abstractmethod
    async def dead_letters(self) -> list[DeadJob]:
        """The dead letters, highest priority first, then oldest put first."""

    @abc.abstractmethod
    async def redrive(self, job_id: str) -> bool:
        """Put the dead letter ``job_id`` back with no attempts and no error;
        ``False`` if it is not a dead letter (any more: two concurrent calls
        redrive it once).

        :raises trio.ClosedResourceError: the backing is closed.
        """

    @abc.abstractmethod
    async def purge(self, job_id: str) -> bool:
        """Delete the dead letter ``job_id`` for good; ``False`` if it is not
        a dead letter.

        :raises trio.ClosedResourceError: the backing is closed.
        """


class WorkQueueBackingProvider(abc.ABC):
    """An optional capability of a :class:`~jido_trio.abc.StateBackend`: a
    work-queue backing on the engine's own queueing.

    A state engine offers one by subclassing this class next to
    ``StateBackend``; :func:`jido_trio.open_work_queue` finds it with
    ``isinstance(node.state, WorkQueueBackingProvider)`` and uses it when
    asked for :attr:`work_queue_backing` by name, or for ``"auto"``.
    """

    #: The backing's name, as ``open_work_queue(..., backing=...)`` takes it
    #: (not ``"state"`` or ``"auto"``, which the runtime uses).
    work_queue_backing: ClassVar[str]

    @abc.abstractmethod
    def open_work_queue_backing(
        self, spec: WorkQueueSpec
    ) -> AbstractAsyncContextManager[WorkQueueBacking]:
        """An async context manager that opens the backing of queue
        ``spec.name`` (creating it on first use) and closes it on exit.

        :raises Unreachable: the engine cannot be reached.
        """
