"""The Agent base class, the @action decorator and the context agents see."""

from __future__ import annotations

import builtins
import inspect
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Mapping
from typing import TYPE_CHECKING
from typing import Any
from typing import ClassVar
from typing import Protocol
from typing import TypeVar
from urllib.parse import quote

import attrs
import trio

from ._exceptions import ActionNotFound
from ._exceptions import CallCycle
from ._exceptions import InvalidMessage
from ._message import Origin

if TYPE_CHECKING:
    from ._core import Delivery
    from ._message import Instruction
    from ._message import Message
    from ._message import Receipt
    from ._ref import AgentRef
    from .signals import Signal

__all__ = [
    "ActionSpec",
    "Agent",
    "Context",
    "Handler",
    "Messenger",
    "action",
    "attach_context",
]

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

_ACTION_ATTR = "__jido_action__"
_UPCASTER_ATTR = "__jido_upcaster__"
_SIGNAL_ATTR = "__jido_signal__"


def on_signal(pattern: str, *, priority: int = 0) -> Callable[[F], F]:
    """Subscribe an ``async def`` method of an :class:`Agent` to the signals whose
    type matches ``pattern`` (``*`` one segment, ``**`` any number).

    The method is called as ``await method(state, signal)`` like an action
    (the action name is ``"signal:" + pattern``), so its return value is the new
    state; every agent of the class is subscribed on the node it runs on, and
    a signal delivered twice (same id) is applied once.
    """
    from .signals._router import validate_pattern

    validate_pattern(pattern)

    def mark(fn: F) -> F:
        candidate: Any = fn
        if not inspect.iscoroutinefunction(candidate):
            raise TypeError(f"signal handler for {pattern!r} must be an async def")
        setattr(fn, _SIGNAL_ATTR, (pattern, priority))
        setattr(fn, _ACTION_ATTR, (f"signal:{pattern}", 1))
        return fn

    return mark


Upcaster = Callable[[dict[str, Any]], Mapping[str, Any]]
U = TypeVar("U", bound=Upcaster)


def upcaster(action_name: str, from_version: int) -> Callable[[U], U]:
    """Mark a function of an :class:`Agent` class as the upcaster of the params
    of ``action_name`` from ``from_version`` to ``from_version + 1``.

    It is called as ``fn(params)`` (a plain dict, no ``self``) and returns the
    params of the next version; chains of upcasters bring any older version up
    to the action's current one.
    """
    if type(from_version) is not int or from_version < 1:
        raise TypeError("from_version must be a positive int")

    def mark(fn: U) -> U:
        target: Any = fn
        if isinstance(target, staticmethod):
            target = target.__func__
        setattr(target, _UPCASTER_ATTR, (action_name, from_version))
        return fn

    return mark


def action(name: str, *, version: int = 1) -> Callable[[F], F]:
    """Mark an ``async def`` method of an :class:`Agent` as the action ``name``.

    The method is called as ``await method(state, **params)`` and returns the
    new state, or ``None`` to keep the state unchanged. An exception raised by
    it crashes the agent (its supervisor decides what happens next); a caller
    waiting in ``call`` gets :class:`~jido_trio.ActionError`.

    ``version`` is the schema version of the action's params (see
    :func:`upcaster`).
    """
    if not isinstance(name, str) or not name:
        raise TypeError("action name must be a non-empty string")
    if type(version) is not int or version < 1:
        raise TypeError("action version must be a positive int")

    def mark(fn: F) -> F:
        candidate: Any = fn  # iscoroutinefunction would narrow fn's own type
        if not inspect.iscoroutinefunction(candidate):
            raise TypeError(f"action {name!r} must be an async def")
        setattr(fn, _ACTION_ATTR, (name, version))
        return fn

    return mark


@attrs.frozen(kw_only=True)
class ActionSpec:
    """What the runtime knows of one action: its name and accepted parameters."""

    name: str
    method: str
    version: int
    required: frozenset[str]
    accepted: frozenset[str]
    any_keyword: bool

    @classmethod
    def from_function(cls, name: str, version: int, fn: Callable[..., Any]) -> ActionSpec:
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
            version=version,
            required=frozenset(required),
            accepted=frozenset(accepted),
            any_keyword=any_kw,
        )

    def check_params(self, params: Mapping[str, Any]) -> None:
        """Raise :class:`InvalidMessage` unless ``params`` fit the signature."""
        keys = params.keys()
        if self.required <= keys and (self.any_keyword or keys <= self.accepted):
            return  # the common case, without building sets
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
    upcasters: ClassVar[Mapping[tuple[str, int], Upcaster]] = {}
    #: Signal pattern -> (action name, priority), from ``@on_signal`` methods.
    signal_routes: ClassVar[Mapping[str, tuple[str, int]]] = {}
    #: Agent classes by type name (the last class defined with a name wins);
    #: used to decode the state of agents that live on other nodes.
    types: ClassVar[dict[str, builtins.type[Agent]]] = {}

    _ctx: Context

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        found: dict[str, ActionSpec] = {}
        upcasters: dict[tuple[str, int], Upcaster] = {}
        signals: dict[str, tuple[str, int]] = {}
        for klass in reversed(cls.__mro__):
            for value in vars(klass).values():
                marked = getattr(value, _ACTION_ATTR, None)
                if isinstance(marked, tuple):
                    found[marked[0]] = ActionSpec.from_function(marked[0], marked[1], value)
                subscribed = getattr(value, _SIGNAL_ATTR, None)
                if isinstance(subscribed, tuple):
                    signals[subscribed[0]] = (f"signal:{subscribed[0]}", subscribed[1])
                fn = value.__func__ if isinstance(value, staticmethod) else value
                key = getattr(fn, _UPCASTER_ATTR, None)
                if isinstance(key, tuple):
                    upcasters[key] = fn
        cls.actions = found
        cls.upcasters = upcasters
        cls.signal_routes = signals
        declared = cls.__dict__.get("type")
        if declared is not None:
            if not isinstance(declared, str) or not declared:
                raise TypeError(f"{cls.__name__}.type must be a non-empty string")
            Agent.types[declared] = cls

    @classmethod
    def prepare(cls, instruction: Instruction) -> Instruction:
        """Check an instruction against this class: the action exists, its
        params version is known (older versions are upcast) and its params fit.

        :raises ActionNotFound: no such action.
        :raises InvalidMessage: newer version, missing upcaster, or bad params.
        """
        spec = cls.actions.get(instruction.action)
        if spec is None:
            raise ActionNotFound(
                f"agent type {getattr(cls, 'type', cls.__name__)!r} has no action "
                f"{instruction.action!r}; it has: {', '.join(sorted(cls.actions)) or 'none'}"
            )
        version = instruction.version
        if version is not None and version != spec.version:
            if version > spec.version:
                raise InvalidMessage(
                    f"action {spec.name!r} params version {version} is newer than "
                    f"supported version {spec.version}"
                )
            params = dict(instruction.params)
            while version < spec.version:
                upcast = cls.upcasters.get((spec.name, version))
                if upcast is None:
                    raise InvalidMessage(
                        f"no upcaster for action {spec.name!r} from version {version}"
                    )
                try:
                    params = dict(upcast(params))
                except Exception as exc:
                    raise InvalidMessage(
                        f"upcasting action {spec.name!r} from version {version} failed: {exc}"
                    ) from exc
                version += 1
            instruction = attrs.evolve(instruction, params=params, version=version)
        spec.check_params(instruction.params)
        return instruction

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


def attach_context(agent: Agent, context: Context) -> None:
    """Give an agent instance the context its actions see as ``self.ctx``."""
    agent._ctx = context


@attrs.frozen
class Messenger:
    """How an agent's :class:`Context` reaches the rest of its node: the
    Communication layer's sends and the node's signal bus (one per node)."""

    node_name: str
    #: ``(ref, instruction, origin)`` -> a receipt if the instruction was
    #: queued at once for an agent of this node, else ``None``.
    tell_nowait: Callable[[AgentRef, Instruction, Origin], Receipt | None]
    #: ``(ref, instruction, delivery, timeout, origin)`` -> receipt.
    send_instruction: Callable[
        [AgentRef, Instruction, str, float | None, Origin], Awaitable[Receipt]
    ]
    #: ``(ref, instruction, timeout, origin)`` -> the reply.
    call: Callable[[AgentRef, Instruction, float | None, Origin], Awaitable[Any]]
    #: Publishes a signal on the node's bus; returns the local deliveries.
    publish: Callable[[Signal], Awaitable[int]]


class Handler(Protocol):
    """What a :class:`Context` reads of the agent it belongs to."""

    ref: AgentRef
    #: The delivery whose action runs now, ``None`` between actions.
    handling: Delivery | None
    #: The ownership epoch of the running incarnation.
    epoch: int

    def hold_send(self, ref: AgentRef, instruction: Instruction, delivery: str) -> Receipt:
        """Hold what the running action sends until its batch commits."""
        ...

    def hold_signal(self, signal: Signal) -> None:
        """Hold a signal the running action publishes until its batch commits."""
        ...

    def derived_id(self) -> str:
        """An id derived from the message being handled, for its next effect."""
        ...


class Context:
    """What an agent sees of the world while it runs.

    ``ref`` is the agent's own ref; ``message`` is the envelope being handled
    (``None`` outside a handler); ``reply`` answers a ``call``; ``send`` and
    ``call`` talk to other agents with this agent as the sender, keeping the
    trace and causation chain.
    """

    __slots__ = ("_agent", "_messenger", "ref")

    def __init__(self, messenger: Messenger, agent: Handler) -> None:
        self._messenger = messenger
        self._agent = agent
        self.ref = agent.ref

    @property
    def message(self) -> Message | None:
        """The envelope being handled, or ``None`` outside a handler."""
        delivery = self._agent.handling
        return None if delivery is None else delivery.message

    @property
    def node_name(self) -> str:
        """Name of the node the agent runs on."""
        return self._messenger.node_name

    @property
    def epoch(self) -> int:
        """The ownership epoch of this incarnation: the registry's epoch when
        it claimed the agent, larger for every later (re)start or move of the
        agent (within one registry). Pass it along with effects outside
        jido_trio as a fencing token: a store that refuses writes carrying an
        epoch smaller than one it has seen never takes a write from an
        incarnation that lost the agent."""
        return self._agent.epoch

    def reply(self, value: Any) -> None:
        """Answer the current ``call`` with ``value`` (ignored for one-way sends).

        :raises RuntimeError: outside a handler, or when already replied.
        """
        delivery = self._agent.handling
        if delivery is None:
            raise RuntimeError("ctx.reply() is only valid while handling a message")
        if delivery.replied:
            raise RuntimeError("this message was already replied to")
        delivery.replied = True
        delivery.reply_value = value

    def _origin(self) -> Origin:
        """The origin of what this agent sends now: it, continuing the trace
        of the message it handles."""
        delivery = self._agent.handling
        if delivery is None:
            return Origin(self.ref)
        return delivery.origin_for(self.ref)

    async def emit(self, type: str, data: Any = None, **attributes: Any) -> Signal:
        """Publish a signal from this agent and return it.

        Its ``source`` is ``jido://NODE/AGENT``; the trace and causation
        extensions link it to the message being handled, so the chain
        instruction -> signal -> instruction stays visible.

        Inside an action the signal is published once the action's state is
        committed (see :meth:`send`); without an ``id`` of its own it gets
        one derived from the message being handled.
        """
        from .signals._signal import Signal

        origin = self._origin()
        agent = self._agent
        handling = agent.handling
        if handling is not None and "id" not in attributes:
            attributes["id"] = agent.derived_id()
        signal = Signal.new(
            type,
            f"jido://{quote(self.node_name, safe='')}/{quote(self.ref.id, safe='')}",
            data,
            trace_id=origin.trace_id,
            causation_id=origin.causation_id,
            **attributes,
        )
        if handling is not None:
            await trio.lowlevel.checkpoint_if_cancelled()
            agent.hold_signal(signal)
        else:
            await self._messenger.publish(signal)
        return signal

    async def send(
        self, ref: AgentRef, instruction: Instruction, *, delivery: str = "at_most_once"
    ) -> Receipt:
        """Send an instruction to another agent (see ``Node.send_instruction``).

        Inside an action the message is *held* until the action's state is
        committed with the rest of its batch, then sent: an action that
        raises, or whose commit fails, sends nothing (and sends it again when
        its message is applied again). The receipt then says ``"accepted"``
        for the held message; errors of its delivery (an unknown agent, say)
        dead-letter it rather than fail the action. An instruction without an
        ``id`` of its own is sent with one derived from the message being
        handled, so that a replay sends the same id, applied once. With
        ``delivery="at_least_once"`` the held message is committed with the
        state and survives even the process (the bank-transfer pattern in
        the docs). Outside an action (``on_start``, ``on_stop``) it is sent
        at once.
        """
        agent = self._agent
        if agent.handling is not None:
            await trio.lowlevel.checkpoint_if_cancelled()
            return agent.hold_send(ref, instruction, delivery)
        return await self._messenger.send_instruction(
            ref, instruction, delivery, None, self._origin()
        )

    async def call(
        self, ref: AgentRef, instruction: Instruction, *, timeout: float | None = None
    ) -> Any:
        """Call another agent and wait for its reply (see ``Node.call``).

        Unlike :meth:`send`, a call cannot wait for the commit (its reply is
        needed now): it goes out at once, inside an action too.

        :raises CallCycle: ``ref`` is this agent, or an agent waiting (in
            this chain of calls) for this one: the call could never be
            answered, since an agent handles one message at a time.
        """
        origin = self._origin()
        chain = (*origin.chain, self.ref.id)
        if ref.id in chain:
            raise CallCycle(
                f"agent {self.ref.id!r} cannot call {ref.id!r}: the calls "
                f"{' -> '.join((*chain, ref.id))} would wait for each other "
                "forever (send instead, or reply first)"
            )
        return await self._messenger.call(ref, instruction, timeout, origin._replace(chain=chain))
