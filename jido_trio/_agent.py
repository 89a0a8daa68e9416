"""The Agent base class, the @action decorator and the context agents see."""

from __future__ import annotations

import builtins
import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import attrs

from ._exceptions import InvalidMessage

if TYPE_CHECKING:
    from ._communication import Communication
    from ._delivery import Delivery
    from ._message import Instruction, Message, Receipt
    from ._ref import AgentRef

__all__ = ["ActionSpec", "Agent", "Context", "action"]

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

_ACTION_ATTR = "__jido_action__"


def action(name: str) -> Callable[[F], F]:
    """Mark an ``async def`` method of an :class:`Agent` as the action ``name``.

    The method is called as ``await method(state, **params)`` and returns the
    new state, or ``None`` to keep the state unchanged. An exception raised by
    it crashes the agent (its supervisor decides what happens next); a caller
    waiting in ``call`` gets :class:`~jido_trio.ActionError`.
    """
    if not isinstance(name, str) or not name:
        raise TypeError("action name must be a non-empty string")

    def mark(fn: F) -> F:
        candidate: Any = fn  # iscoroutinefunction would narrow fn's own type
        if not inspect.iscoroutinefunction(candidate):
            raise TypeError(f"action {name!r} must be an async def")
        setattr(fn, _ACTION_ATTR, name)
        return fn

    return mark


@attrs.frozen(kw_only=True)
class ActionSpec:
    """What the runtime knows of one action: its name and accepted parameters."""

    name: str
    method: str
    required: frozenset[str]
    accepted: frozenset[str]
    any_keyword: bool

    @classmethod
    def from_function(cls, name: str, fn: Callable[..., Any]) -> ActionSpec:
        params = list(inspect.signature(fn).parameters.values())[2:]  # self, state
        required, accepted, any_kw = set(), set(), False
        for p in params:
            if p.kind is p.VAR_KEYWORD:
                any_kw = True
            elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                accepted.add(p.name)
                if p.default is p.empty:
                    required.add(p.name)
        return cls(
            name=name,
            method=fn.__name__,
            required=frozenset(required),
            accepted=frozenset(accepted),
            any_keyword=any_kw,
        )

    def check_params(self, params: Mapping[str, Any]) -> None:
        """Raise :class:`InvalidMessage` unless ``params`` fit the signature."""
        missing = self.required.difference(params)
        if missing:
            raise InvalidMessage(
                f"action {self.name!r} is missing parameter(s) {', '.join(sorted(missing))}"
            )
        if not self.any_keyword:
            extra = set(params).difference(self.accepted)
            if extra:
                raise InvalidMessage(
                    f"action {self.name!r} got unexpected parameter(s) {', '.join(sorted(extra))}"
                )


@attrs.frozen
class _NoState:
    """State of an agent class that declares none."""


class Agent:
    """Base class of agents.

    Subclasses set ``type`` (the agent type name) and ``State`` (a class whose
    no-argument call gives the initial state, typically a frozen attrs class
    that msgspec can encode), and mark their handlers with :func:`action`.
    State is persisted after every applied instruction, so keep it immutable
    and replace it (``attrs.evolve``) instead of mutating it.

    Override :meth:`on_start` and :meth:`on_stop` for set-up and clean-up.
    Inside a handler, :attr:`ctx` gives the current message, the agent's own
    ref, ``reply`` for calls and ``send``/``call`` to other agents.
    """

    type: ClassVar[str]
    State: ClassVar[Callable[[], Any]] = _NoState
    actions: ClassVar[Mapping[str, ActionSpec]] = {}
    #: Agent classes by type name (the last class defined with a name wins);
    #: used to decode the state of agents that live on other nodes.
    types: ClassVar[dict[str, builtins.type[Agent]]] = {}

    _ctx: Context

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        found: dict[str, ActionSpec] = {}
        for klass in reversed(cls.__mro__):
            for value in vars(klass).values():
                name = getattr(value, _ACTION_ATTR, None)
                if isinstance(name, str):
                    found[name] = ActionSpec.from_function(name, value)
        cls.actions = found
        declared = cls.__dict__.get("type")
        if declared is not None:
            if not isinstance(declared, str) or not declared:
                raise TypeError(f"{cls.__name__}.type must be a non-empty string")
            Agent.types[declared] = cls

    @property
    def ctx(self) -> Context:
        """The context of the message being handled (and of the agent)."""
        return self._ctx

    async def on_start(self, state: Any) -> Any:
        """Called once per (re)start with the loaded state; may return a new state."""
        return None

    async def on_stop(self, state: Any, reason: str) -> None:
        """Called when the agent stops gracefully (``reason`` is ``"normal"`` or
        ``"shutdown"``); runs shielded for at most the shutdown timeout."""
        return None


class Context:
    """What an agent sees of the world while it runs.

    ``ref`` is the agent's own ref; ``message`` is the envelope being handled
    (``None`` outside a handler); ``reply`` answers a ``call``; ``send`` and
    ``call`` talk to other agents with this agent as the sender, keeping the
    trace and causation chain.
    """

    __slots__ = ("_comm", "_delivery", "ref")

    def __init__(self, comm: Communication, ref: AgentRef) -> None:
        self._comm = comm
        self.ref = ref
        self._delivery: Delivery | None = None

    @property
    def message(self) -> Message | None:
        """The envelope being handled, or ``None`` outside a handler."""
        return None if self._delivery is None else self._delivery.message

    @property
    def node_name(self) -> str:
        """Name of the node the agent runs on."""
        return self._comm.node_name

    def reply(self, value: Any) -> None:
        """Answer the current ``call`` with ``value`` (ignored for one-way sends).

        :raises RuntimeError: outside a handler, or when already replied.
        """
        delivery = self._delivery
        if delivery is None:
            raise RuntimeError("ctx.reply() is only valid while handling a message")
        if delivery.replied:
            raise RuntimeError("this message was already replied to")
        delivery.replied = True
        delivery.reply_value = value

    def _chain(self) -> dict[str, Any]:
        message = self.message
        if message is None:
            return {}
        return {"trace_id": message.trace_id, "causation_id": message.id}

    async def send(
        self, ref: AgentRef, instruction: Instruction, *, delivery: str = "at_most_once"
    ) -> Receipt:
        """Send an instruction to another agent (see ``Node.send_instruction``)."""
        return await self._comm.send_instruction(
            ref, instruction, delivery=delivery, sender=self.ref, **self._chain()
        )

    async def call(
        self, ref: AgentRef, instruction: Instruction, *, timeout: float | None = None
    ) -> Any:
        """Call another agent and wait for its reply (see ``Node.call``)."""
        return await self._comm.call(
            ref, instruction, timeout=timeout, sender=self.ref, **self._chain()
        )
