"""Hook specifications: how plugins extend and observe jido_trio.

Mark implementations with :data:`jido_trio.hookimpl`. Hooks never do I/O: a
provider hook hands over *factories* (the async work happens later on the
objects they build, inside the node's nursery); an observer hook only looks.
An exception raised by an observer is logged and does not disturb the node.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

from ._backends import Backends as Backends

if TYPE_CHECKING:
    from ._health import Health
    from ._message import Message
    from ._node import Node
    from ._ref import AgentRef

__all__ = ["PROJECT_NAME", "Backends", "hookimpl", "hookspec"]

PROJECT_NAME = "jido_trio"


hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Marker for plugin hook implementations: ``@jido_trio.hookimpl``, or
``@jido_trio.hookimpl(trylast=True)`` and the other pluggy options."""


@hookspec
def jido_trio_add_backends(backends: Backends) -> None:
    """Register implementation factories by name.

    Call ``backends.add_registry(name, factory)``, ``add_transport``,
    ``add_state`` and ``add_coordination``. A factory is called as
    ``factory(config, options)`` where ``options`` is
    ``config.plugin_options.get(name, {})``, and returns the implementation, or
    an async context manager yielding it when it owns resources.

    :param backends: the collection to add factories to.
    """


@hookspec
def jido_trio_node_started(node: Node) -> None:
    """Observe a node that has finished starting and accepts work.

    :param node: the node.
    """


@hookspec
def jido_trio_node_stopping(node: Node) -> None:
    """Observe a node that begins to shut down (its agents are still running).

    :param node: the node.
    """


@hookspec
def jido_trio_agent_started(node: Node, ref: AgentRef) -> None:
    """Observe an agent that started (the first time or after a restart).

    :param node: the node that runs it.
    :param ref: the agent's ref.
    """


@hookspec
def jido_trio_agent_stopped(node: Node, ref: AgentRef, reason: str) -> None:
    """Observe an agent task that ended.

    :param node: the node that ran it.
    :param ref: the agent's ref.
    :param reason: ``"normal"``, ``"shutdown"`` or ``"crash: <Type>: <text>"``.
    """


@hookspec
def jido_trio_agent_restarted(node: Node, ref: AgentRef, restarts: int) -> None:
    """Observe an agent restarted by its supervisor.

    :param node: the node that runs it.
    :param ref: the agent's ref (same id as before the restart).
    :param restarts: how many times this agent has been restarted so far.
    """


@hookspec
def jido_trio_supervisor_event(
    node: Node, supervisor_id: str, child_id: str, event: str, reason: str | None
) -> None:
    """Observe a supervisor's child being started, exiting or restarted.

    Fires for every kind of child: agents, functions and supervisors.

    :param node: the node the supervisor belongs to.
    :param supervisor_id: the supervisor.
    :param child_id: the child.
    :param event: ``"started"``, ``"exited"`` or ``"restarted"``.
    :param reason: for ``"exited"``: ``"normal"``, ``"shutdown"`` or the
        failure as ``"Type: text"``; otherwise ``None``.
    """


@hookspec
def jido_trio_message_dead_lettered(node: Node, message: Message, reason: str) -> None:
    """Observe a message that could not be delivered or processed and was set aside.

    :param node: the node that gave up on it.
    :param message: the envelope.
    :param reason: why, in words.
    """


@hookspec
def jido_trio_health_changed(node: Node, ref: AgentRef, old: Health, new: Health) -> None:
    """Observe an agent whose health changed.

    :param node: the node that noticed.
    :param ref: the agent's ref.
    :param old: the previous health.
    :param new: the new health.
    """
