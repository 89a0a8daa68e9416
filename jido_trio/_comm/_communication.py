"""The Communication layer's entry point: the one place where a ref becomes
a delivery to an agent of this node or a request to another node.

Every operation (tell, call, query, health) has one synchronous attempt for
an agent of this node and one general path: resolve the ref (directory,
registry), then deliver here (:mod:`jido_trio._core`) or send to the owning
node (:class:`~._client.RemoteClient`). The node facade, agents' contexts,
the signal bus and work queues all send through it, so ``ctx.send`` to a
local agent takes the same fast path as ``node.send_instruction``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any
from typing import Literal

import attrs
import trio

from .._core import AgentCell
from .._core import Delivery
from .._core import Reply
from .._core import state_decoder
from .._core._inbound import call_abandoned
from .._core._inbound import prepare
from .._core._inbound import prepare_nowait
from .._core._inbound import queue_and_wait
from .._core._inbound import queue_call_nowait
from .._core._inbound import reply_value
from .._core._inbound import tell
from .._core._inbound import tell_nowait
from .._core._inbound import wait_queued_reply
from .._exceptions import AgentNotFound
from .._exceptions import AgentUnavailable
from .._exceptions import AlreadyProcessed
from .._exceptions import CallTimeout
from .._exceptions import InvalidMessage
from .._exceptions import JidoError
from .._exceptions import Unreachable
from .._health import Health
from .._message import NO_ORIGIN
from .._message import EnvelopeParts
from .._message import Instruction
from .._message import Message
from .._message import Origin
from .._message import Receipt
from .._message import build_envelope
from .._message import envelope_parts
from .._message import make_receipt
from .._ref import AgentRef
from .._scheduling import TELL_BUDGET
from ..abc import Consistency
from ._client import MovedHere
from ._client import RemoteClient
from ._directory import Directory
from ._health import HealthPolicy
from ._wire import CHAIN_KEY
from ._wire import decode_state_reply

__all__ = ["Communication"]

_DELIVERY_MODES = ("at_most_once", "at_least_once")
_CONSISTENCY = ("strong", "eventual", "weak")


def deadline_after(
    timeout: float | None, default: float, now: Callable[[], float] = trio.current_time
) -> float:
    """The deadline ``timeout`` seconds from now (``default`` when ``None``).

    :raises InvalidMessage: ``timeout`` is not a non-negative number.
    """
    t = default if timeout is None else timeout
    if isinstance(t, bool) or not isinstance(t, (int, float)) or t < 0 or math.isnan(t):
        raise InvalidMessage(f"timeout must be a non-negative number, got {timeout!r}")
    return now() + t


@attrs.define(eq=False)
class Communication:
    """Routes operations on refs to agents of this node or to other nodes.

    :param operation_timeout: the deadline of an operation given no timeout.
    """

    node_name: str
    operation_timeout: float
    directory: Directory = attrs.field(repr=False)
    health_policy: HealthPolicy = attrs.field(repr=False)
    client: RemoteClient = attrs.field(repr=False)

    # ------------------------------------------------------------ tell

    def tell_nowait(
        self, ref: AgentRef, instruction: Instruction, origin: Origin = NO_ORIGIN
    ) -> Receipt | None:
        """Queue an at-most-once instruction for an agent of this node at
        once, if it is valid, new and the mailbox has room; ``None`` for
        anything else (then :meth:`send_instruction` does it).

        The caller must have passed a cancel point just before, and count the
        tell in :data:`~jido_trio._scheduling.TELL_BUDGET`.
        """
        if type(instruction) is not Instruction or type(ref) is not AgentRef:
            return None
        node = ref.node
        if node is not None and node != self.node_name:
            return None
        cell = self.directory.cells.get(ref.id)
        if cell is None:
            return None
        return tell_nowait(cell, instruction, origin)

    async def send_instruction(
        self,
        ref: AgentRef,
        instruction: Instruction,
        delivery: str,
        timeout: float | None,
        origin: Origin,
    ) -> Receipt:
        """Queue ``instruction`` for the agent of ``ref``, wherever it runs;
        see :meth:`jido_trio.Node.send_instruction`."""
        if delivery == "at_most_once":
            if timeout is not None:
                deadline_after(timeout, 0.0)  # checked first, as on every path
            await trio.lowlevel.checkpoint_if_cancelled()
            receipt = self.tell_nowait(ref, instruction, origin)
            if receipt is not None:
                if TELL_BUDGET.count():
                    await trio.lowlevel.cancel_shielded_checkpoint()
                return receipt
        elif delivery != "at_least_once":
            raise InvalidMessage(f"delivery must be one of {', '.join(_DELIVERY_MODES)}")
        target, message, deadline = await self._address(ref, instruction, timeout, origin)
        if isinstance(target, str):
            kind = "tell" if delivery == "at_most_once" else "tell_alo"
            # Safe to repeat: the instruction id makes a second delivery a no-op.
            try:
                status = await self.client.request_idempotent(target, kind, message, deadline)
            except MovedHere as moved:
                target = moved.cell
                message = attrs.evolve(message, recipient=target.ref)
            else:
                return make_receipt(message.id, instruction.id, status)
        return await tell(
            target, message, instruction, deadline, durable=delivery == "at_least_once"
        )

    async def _address(
        self,
        ref: AgentRef,
        instruction: Instruction,
        timeout: float | None,
        origin: Origin,
    ) -> tuple[AgentCell | str, Message, float]:
        """Validate, fix the deadline, find the owner and wrap the envelope."""
        if not isinstance(instruction, Instruction):
            raise TypeError(f"expected an Instruction, got {type(instruction).__name__}")
        deadline = deadline_after(timeout, self.operation_timeout)
        target = await self.directory.resolve(ref)
        message = build_envelope(
            envelope_parts(origin, ref if isinstance(target, str) else target.ref, instruction)
        )
        return target, message, deadline

    # ------------------------------------------------------------ call

    async def call(
        self, ref: AgentRef, instruction: Instruction, timeout: float | None, origin: Origin
    ) -> Any:
        """Run an action of the agent of ``ref``, wherever it runs, and return
        its reply; see :meth:`jido_trio.Node.call`."""
        if type(instruction) is Instruction and type(ref) is AgentRef:
            cell = self.directory.local_cell(ref)
            if cell is not None:
                # Ours: no registry, and the envelope built only if read.
                deadline = deadline_after(timeout, self.operation_timeout, cell.kernel.now)
                parts = envelope_parts(origin, cell.ref, instruction)
                return await self.deliver_call(cell, parts, instruction, deadline, origin.chain)
        target, message, deadline = await self._address(ref, instruction, timeout, origin)
        if isinstance(target, str):
            if origin.chain:
                message = attrs.evolve(
                    message, metadata={**message.metadata, CHAIN_KEY: list(origin.chain)}
                )
            try:
                return await self.client.request_following(target, "call", message, deadline)
            except MovedHere as moved:
                target = moved.cell
                message = attrs.evolve(message, recipient=target.ref)
        return await self.deliver_call(target, message, instruction, deadline, origin.chain)

    async def deliver_call(
        self,
        cell: AgentCell,
        message: Message | EnvelopeParts,
        instruction: Instruction,
        deadline: float,
        chain: tuple[str, ...] = (),
    ) -> Any:
        """Run an action of an agent of this node and return its reply,
        through the breaker of calls to it; ``chain``: the agents waiting for
        it (see :class:`~jido_trio.CallCycle`)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        instruction = prepare_nowait(cell, instruction) or await prepare(cell, message, instruction)
        if cell.seen(instruction.id):
            await trio.lowlevel.checkpoint()
            raise AlreadyProcessed(f"instruction {instruction.id} was already applied")
        health = self.health_policy
        breaker = health.breakers.get(health.local_breaker_key(cell))
        epoch = breaker.admit()
        if epoch is None:
            error = breaker.open_error()
            await trio.lowlevel.checkpoint()
            raise error
        reply = Reply()
        item = Delivery("instruction", message, instruction, reply)
        if chain:
            item.chain = chain
        now = cell.kernel.now
        started = now()
        outcome: Literal["success", "failure", "release"] = "release"
        try:
            if queue_call_nowait(cell, item, reply, deadline, started):
                # wait_queued_reply, inlined: one coroutine frame less to pass
                # on suspend and resume, for every local call.
                try:
                    await trio.lowlevel.wait_task_rescheduled(reply.abort_wait)
                finally:
                    if not reply.done:
                        reply.abandoned = True
                    if reply.abandoned:
                        call_abandoned(cell, instruction.id)
                value = reply_value(cell, reply)
            else:
                value = await queue_and_wait(cell, item, deadline)
        except CallTimeout:
            outcome = "failure"
            raise
        else:
            outcome = "success"
        finally:
            breaker.report(epoch, outcome)
        health.latency.record(cell.ref.id, now() - started)
        return value

    # ------------------------------------------------------------ query

    async def query(
        self, ref: AgentRef, query: str, consistency: Consistency, timeout: float | None
    ) -> Any:
        """Read the state of the agent of ``ref``, wherever it runs; see
        :meth:`jido_trio.Node.query_agent`."""
        if consistency not in _CONSISTENCY:
            raise InvalidMessage(f"consistency must be one of {', '.join(_CONSISTENCY)}")
        deadline = deadline_after(timeout, self.operation_timeout)
        target = await self.directory.resolve(ref)
        if isinstance(target, str):
            message = Message.new(None, ref, {"query": query, "consistency": consistency})
            try:
                if query == "get_state":
                    raw = await self.client.request_idempotent(target, "query", message, deadline)
                else:
                    raw = await self.client.request_following(target, "query", message, deadline)
            except MovedHere as moved:
                target = moved.cell
            else:
                return decode_state_reply(ref.type, raw)
        return await self.deliver_query(target, query, consistency, deadline)

    async def deliver_query(
        self, cell: AgentCell, query: str, consistency: Consistency, deadline: float
    ) -> Any:
        """Read the state of an agent of this node (another ``query`` name
        runs that action as a call: always strong)."""
        if query != "get_state":
            return await self.deliver_call(
                cell, Message.new(None, cell.ref, None), Instruction(query), deadline
            )
        if consistency == "weak":
            await trio.lowlevel.checkpoint()
            if cell.status == "stopped":
                raise AgentUnavailable(f"agent {cell.ref.id!r} is stopped")
            return cell.state
        if consistency == "eventual":
            decoder = state_decoder(cell.cls.State)
            with trio.move_on_at(deadline) as scope:
                state = await cell.ensure_store().read_state(
                    cell.kernel.state, decoder.decode, "eventual"
                )
                # No record yet: a new agent that has applied nothing holds State().
                return cell.cls.State() if state is None else state
            if scope.cancelled_caught:
                raise CallTimeout(f"state read of agent {cell.ref.id!r} timed out")
        await trio.lowlevel.checkpoint_if_cancelled()
        reply = Reply()
        parts = envelope_parts(NO_ORIGIN, cell.ref, {"query": query})
        item = Delivery("query", parts, None, reply)
        if queue_call_nowait(cell, item, reply, deadline, cell.kernel.now()):
            return await wait_queued_reply(cell, reply, None)
        return await queue_and_wait(cell, item, deadline)

    # ------------------------------------------------------------ health, lookup

    async def health(self, ref: AgentRef, *, timeout: float | None = None) -> Health:
        """The agent's health, wherever it runs; never raises for the four outcomes."""
        deadline = deadline_after(timeout, self.operation_timeout)
        try:
            target = await self.directory.resolve(ref)
        except (AgentNotFound, AgentUnavailable):
            return Health.NOT_FOUND
        if isinstance(target, str):
            if not self.client.is_reachable(target):
                await trio.lowlevel.checkpoint()
                return Health.UNREACHABLE
            message = Message.new(None, ref, None)
            try:
                value = await self.client.request_following(target, "health", message, deadline)
            except MovedHere as moved:
                await trio.lowlevel.checkpoint()
                return self.health_policy.local_health(moved.cell)
            except (Unreachable, CallTimeout):
                return Health.UNREACHABLE
            except (AgentNotFound, AgentUnavailable):
                return Health.NOT_FOUND
            except JidoError:  # e.g. CircuitOpen: reachable in principle, but impaired
                return Health.DEGRADED
            return self.health_policy.remote_health(target, ref.id, value)
        await trio.lowlevel.checkpoint()
        return self.health_policy.local_health(target)

    async def lookup(self, agent_id: str) -> AgentRef:
        """The ref registered for ``agent_id``; see :meth:`jido_trio.Node.lookup`."""
        return await self.directory.lookup(agent_id)
