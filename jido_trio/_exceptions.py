"""The one error hierarchy of jido_trio.

Every error the runtime raises on purpose derives from :class:`JidoError`::

    JidoError
    ├── AgentNotFound        (also LookupError)  the id was never registered
    ├── AgentUnavailable                         registered, not running, not coming back
    ├── AgentAlreadyExists                       start_agent with an id that is running
    ├── Unreachable                              the owning node cannot be reached
    │   └── RemoteNotSupported                   remote ref while the transport is local-only
    ├── CallTimeout          (also TimeoutError) no reply before the deadline
    ├── MailboxFull                              backpressure outlasted the deadline
    ├── CircuitOpen                              a breaker refuses calls for now
    ├── ActionNotFound       (also LookupError)  the agent has no such action
    ├── ActionError                              the action raised; cause kept
    ├── AlreadyProcessed                         a call re-used an applied instruction id
    ├── CallCycle                                a call would wait on an agent waiting for the caller
    ├── InvalidMessage       (also ValueError)   malformed, oversized or unknown-version input
    ├── ConfigError          (also ValueError)   bad configuration or unknown plugin name
    ├── StateConflict                            an optimistic (compare-and-set) write lost
    │   └── RegistryConflict                     a registry entry kept changing under concurrent writers
    ├── EngineError                              an engine failed an operation (storage I/O, KV error)
    ├── SupervisorEscalation                     a supervisor exceeded its restart intensity
    ├── SupervisorNotFound   (also LookupError)  no such supervisor on this node
    ├── SupervisorUnavailable (also RuntimeError) the supervisor is not running, takes no child
    ├── ChildNotFound        (also LookupError)  the supervisor has no child with this id
    ├── ChildAlreadyExists   (also ValueError)   a supervisor or child id that is taken
    ├── NodeClosing          (also RuntimeError) the node is shutting down and starts nothing
    └── NodeFenced                               the node lost its cluster membership lease

``Unreachable`` and ``EngineError`` split the failures of an engine (a state
backend, registry, coordination service or transport) in two: ``Unreachable``
means the engine cannot be reached right now (a lost connection, a file locked
by another process), which passes; ``EngineError`` means the engine was reached
and failed the operation (an I/O error, a corrupt file, an error answer from
its server), which retrying alone may not fix.

Errors that come from another node keep their cause: the local exception is
raised ``from`` the remote one, or carries the remote type name and text.
"""

from __future__ import annotations

__all__ = [
    "ActionError",
    "ActionNotFound",
    "AgentAlreadyExists",
    "AgentNotFound",
    "AgentUnavailable",
    "AlreadyProcessed",
    "CallCycle",
    "CallTimeout",
    "ChildAlreadyExists",
    "ChildNotFound",
    "CircuitOpen",
    "ConfigError",
    "EngineError",
    "InvalidMessage",
    "JidoError",
    "MailboxFull",
    "NodeClosing",
    "NodeFenced",
    "RegistryConflict",
    "RemoteNotSupported",
    "StateConflict",
    "SupervisorEscalation",
    "SupervisorNotFound",
    "SupervisorUnavailable",
    "Unreachable",
]


class JidoError(Exception):
    """Base class of every error raised by jido_trio."""


class AgentNotFound(JidoError, LookupError):
    """No agent with this id was ever registered (or it is unknown to every node)."""


class AgentUnavailable(JidoError):
    """The agent was registered but is not running and will not come back.

    Raised for agents that were stopped, that crashed with restart ``"temporary"``
    (or ``"transient"`` after a normal exit), or whose supervisor gave up.
    """


class AgentAlreadyExists(JidoError):
    """``start_agent`` was given an id that already names a live agent.

    :attr:`node` is the node that owns it, when known.
    """

    def __init__(self, message: str, *, node: str | None = None) -> None:
        super().__init__(message)
        self.node = node


class Unreachable(JidoError):
    """The node that owns the agent cannot be reached, or an engine cannot be
    reached right now (its server is away, its file is locked by another
    process): a condition that passes, so retrying later may succeed."""


class RemoteNotSupported(Unreachable):
    """The ref names another node but the configured transport is local-only."""


class CallTimeout(JidoError, TimeoutError):
    """A call got no reply before its deadline."""


class MailboxFull(JidoError):
    """The recipient's bounded mailbox stayed full until the operation's deadline."""


class CircuitOpen(JidoError):
    """A circuit breaker is open for this destination; the call was not attempted."""


class ActionNotFound(JidoError, LookupError):
    """The agent type has no action with this name."""


class ActionError(JidoError):
    """The action raised.

    Locally the original exception is ``__cause__``. When it was raised on
    another node, :attr:`remote_type` and :attr:`remote_message` describe it.
    """

    def __init__(
        self,
        message: str,
        *,
        remote_type: str | None = None,
        remote_message: str | None = None,
    ) -> None:
        super().__init__(message)
        self.remote_type = remote_type
        self.remote_message = remote_message


class AlreadyProcessed(JidoError):
    """A ``call`` carried an instruction id the agent has already applied.

    The action is not run a second time. ``send_instruction`` reports the same
    situation through ``Receipt.status == "already_processed"`` instead.
    """


class CallCycle(JidoError):
    """A call from inside an action would wait for an agent that is itself
    waiting, in the same chain of calls, for the caller (A calls B, and B,
    while A waits, calls A): it could never be answered, so it is refused at
    once instead of timing out. Send instead of calling (``ctx.send``), or
    reply and call later."""


class InvalidMessage(JidoError, ValueError):
    """Input that is malformed, too large, of an unknown future version, or
    whose parameters do not fit the action."""


class ConfigError(JidoError, ValueError):
    """Invalid configuration, including an unknown plugin or implementation name."""


class StateConflict(JidoError):
    """A compare-and-set write found another version than the one expected."""

    def __init__(self, key: str, expected: int | None, actual: int | None) -> None:
        super().__init__(f"state {key!r}: expected version {expected}, found {actual}")
        self.key = key
        self.expected = expected
        self.actual = actual


class RegistryConflict(StateConflict):
    """A registration, take-over or metadata update kept losing the
    compare-and-set on the agent's registry entry to concurrent writers.

    No other node owns the agent (that is :class:`AgentAlreadyExists`) and
    nothing was changed: trying again may succeed. Only registries shared by
    concurrent writers raise it (the NATS registry, after retrying
    internally); :attr:`key` is the agent id, :attr:`expected` and
    :attr:`actual` are ``None``.
    """

    def __init__(self, agent_id: str, operation: str) -> None:
        JidoError.__init__(
            self,
            f"registry entry of agent {agent_id!r}: {operation} kept losing to concurrent "
            "writers (no other node owns it); try again",
        )
        self.key = agent_id
        self.expected = None
        self.actual = None
        self.agent_id = agent_id
        self.operation = operation


class EngineError(JidoError):
    """An engine was reached and failed the operation: a storage I/O error, a
    full disk, a corrupt file, an error answer from its server (a JetStream KV
    error other than "cannot reach the server").

    Unlike :class:`Unreachable` (the engine cannot be reached now, which
    passes), retrying alone may not help. The engine's own exception is the
    cause (``__cause__``).
    """


class SupervisorEscalation(JidoError):
    """A supervisor exceeded its restart intensity and failed upward.

    Its parent handles this like any child failure; on the root supervisor it
    ends the node, and ``open_node`` raises it. ``failures``: for each child
    whose failures were counted within the window, the id and how it failed
    (one description per failure), also named in the message.
    """

    def __init__(
        self,
        supervisor_id: str,
        restarts: int,
        within: float,
        failures: tuple[tuple[str, tuple[str, ...]], ...] = (),
    ) -> None:
        message = f"supervisor {supervisor_id!r} exceeded {restarts} restarts within {within}s"
        if failures:
            message += ": " + "; ".join(
                f"{child_id!r} failed {_times(len(hows))} ({_summary(hows)})"
                for child_id, hows in failures
            )
        super().__init__(message)
        self.supervisor_id = supervisor_id
        self.restarts = restarts
        self.within = within
        self.failures = failures


def _times(count: int) -> str:
    return "once" if count == 1 else f"{count} times"


def _summary(hows: tuple[str, ...]) -> str:
    """Distinct failures in order, the last one first (the most telling)."""
    distinct = list(dict.fromkeys(reversed(hows)))
    shown = distinct[:3]
    more = f", and {len(distinct) - 3} other failures" if len(distinct) > 3 else ""
    return ", ".join(shown) + more


class SupervisorNotFound(JidoError, LookupError):
    """No supervisor with this id runs on this node (or the handle given
    belongs to another node)."""


class SupervisorUnavailable(JidoError, RuntimeError):
    """The supervisor is stopped, failed or shutting down: it starts no child."""


class ChildNotFound(JidoError, LookupError):
    """The supervisor has no child with this id."""


class ChildAlreadyExists(JidoError, ValueError):
    """A supervisor (or a supervisor's child) with this id exists already."""


class NodeClosing(JidoError, RuntimeError):
    """The node is shutting down: it starts no more agents or supervisors."""


class NodeFenced(JidoError):
    """This node lost its membership in the cluster (it could not renew its
    lease in time, e.g. cut off from NATS), so other nodes may own its agents
    now. The node stopped every agent at once and ``open_node`` raises this:
    restart the process to rejoin.
    """


class ChildRetired(Exception):
    """Internal, never raised to applications: a supervised child ended and
    must not run again under its supervisor (its agent is owned by another
    node now). The supervisor forgets it without counting a failure."""


class UncountedFailure(Exception):
    """Internal, never raised to applications: an incarnation ended in a way
    its supervisor restarts after a growing delay without counting it toward
    its restart intensity (see the subclasses)."""

    def __init__(self, what: str, cause: BaseException) -> None:
        super().__init__(f"{what}: {describe(cause)}")
        self.__cause__ = cause


class InfrastructureFailure(UncountedFailure):
    """An engine could not be reached or failed (a commit during a leader
    election, say), not the agent's own code: no outage of an engine stops a
    node."""


class RetriedMessageFailure(UncountedFailure):
    """An at-least-once message crashed the agent again: its first crash
    counted, the runtime retries it (and dead-letters it after
    ``max_delivery_attempts``), so no single message exhausts a supervisor's
    intensity."""


#: Failures of an engine rather than of an agent's own code (a timeout is one
#: too: an engine not answering, a commit that outlived the shutdown timeout).
INFRASTRUCTURE_ERRORS: tuple[type[Exception], ...] = (
    Unreachable,
    EngineError,
    CallTimeout,
    TimeoutError,
)


def describe(error: BaseException) -> str:
    """A one-line description of ``error``: its type, and its text if it has one."""
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
