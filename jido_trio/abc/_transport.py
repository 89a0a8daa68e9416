"""The Transport protocol: opaque bytes between nodes, membership, topics."""

from __future__ import annotations

import abc
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Collection
from collections.abc import Sequence

import attrs
import trio

__all__ = ["NodeInfo", "RequestHandler", "TopicHandler", "Transport"]

#: Handles one incoming request or one-way message: ``data`` in, reply out
#: (``None`` for one-way messages).
RequestHandler = Callable[[bytes], Awaitable[bytes | None]]

#: Handles one message received through :meth:`Transport.subscribe_topics`:
#: called with the topic it was published on and its data.
TopicHandler = Callable[[str, bytes], Awaitable[None]]


@attrs.frozen(kw_only=True)
class NodeInfo:
    """A cluster member as the transport sees it.

    :param name: the node name.
    :param alive: whether the node is currently considered reachable.
    :param last_seen: Unix time of the last sign of life.
    :param incarnation: what tells this membership of the node from an
        earlier or later one under the same name: it changes when the node
        leaves and joins again (a restart). Empty when the transport cannot
        tell. Callers use it to forget what they learnt of the node's previous
        incarnation (an open circuit breaker, say).
    """

    name: str
    alive: bool
    last_seen: float
    incarnation: str = ""


class Transport(abc.ABC):
    """Moves opaque bytes between nodes."""

    #: True when the transport can reach nodes other than this one.
    supports_remote: bool = False

    @abc.abstractmethod
    async def send(self, node: str, data: bytes) -> None:
        """Deliver ``data`` one-way to ``node``'s handler.

        :raises RemoteNotSupported: the transport is local-only.
        :raises Unreachable: the node is unknown or cannot be reached.
        :raises InvalidMessage: ``data`` is larger than the transport carries.
        """

    @abc.abstractmethod
    async def request(self, node: str, data: bytes, *, timeout: float) -> bytes:
        """Send ``data`` to ``node``'s handler and return its reply.

        :raises RemoteNotSupported: the transport is local-only.
        :raises Unreachable: the node is unknown or cannot be reached.
        :raises CallTimeout: no reply within ``timeout`` seconds.
        :raises InvalidMessage: ``data`` is larger than the transport carries.
        """

    @abc.abstractmethod
    async def serve(
        self,
        handler: RequestHandler,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Receive messages for this node and pass each to ``handler`` until
        cancelled; call ``task_status.started()`` once ready.

        :raises Unreachable: the transport cannot start serving (no connection).
        :raises EngineError: the transport's engine refused to serve.
        """

    @abc.abstractmethod
    async def members(self) -> Sequence[NodeInfo]:
        """The nodes this transport knows of, this one included.

        A node that left, or that this one cannot reach (a partition, a node
        that stopped renewing its membership), is listed as not ``alive`` or
        not at all, once the transport has noticed.

        :raises Unreachable: the membership cannot be read right now.
        :raises EngineError: the transport's engine failed to list it.
        :raises CallTimeout: the engine gave no answer in time.
        """

    async def wait_fenced(self) -> None:
        """Return once this node has lost its cluster membership: its lease
        lapsed (it could not renew it in time) or another process holds it now.

        Other nodes may then own this node's agents, so the node stops them
        at once (see :class:`jido_trio.NodeFenced`). Transports without
        membership leases never return (the default).
        """
        await trio.sleep_forever()

    # -- optional capability: topics (publish/subscribe) ----------------------

    #: True when the transport implements :meth:`publish_topic` and
    #: :meth:`subscribe_topics`; the signal bus then publishes each signal once
    #: on a topic instead of sending it to every member.
    supports_topics: bool = False

    #: Longest topic (and topic pattern) every topic-capable transport accepts.
    max_topic_length: int = 1024

    async def publish_topic(self, topic: str, data: bytes) -> None:
        """Publish ``data`` one-way on ``topic``.

        A topic is one or more tokens joined by ``"."``, each token made of
        ``A-Z a-z 0-9 - _ = /``. A topic *pattern* may also have ``*`` tokens
        (exactly one token) and, as its last token only, ``>`` (one or more
        tokens): ``"signal.orders.*"``, ``"signal.>"``. Topics are scoped to
        the transport's cluster (on NATS, under its namespace).

        Every *other* node subscribed (:meth:`subscribe_topics`) to a pattern
        matching ``topic`` gets it once, even when several of its patterns
        match; the publishing node never gets its own messages back. Like
        :meth:`send`, delivery is at most once and may be lost silently.

        :param topic: where to publish.
        :param data: the message, opaque to the transport.
        :raises ValueError: ``topic`` is not a valid topic or is longer than
            :attr:`max_topic_length`.
        :raises InvalidMessage: ``data`` is larger than the transport carries.
        :raises Unreachable: the transport cannot publish right now.
        :raises NotImplementedError: the transport has no topics (the default;
            see :attr:`supports_topics`).
        """
        raise NotImplementedError(f"{type(self).__name__} does not support topics")

    async def subscribe_topics(self, patterns: Collection[str], handler: TopicHandler) -> None:
        """Make ``patterns`` this node's topic subscriptions, replacing the
        previous set, and pass every message they receive to ``handler``.

        Declarative: patterns in both sets stay subscribed without a gap,
        new ones are added before old ones go, and an empty collection ends
        every subscription. Returns once the change is in effect: a message
        published anywhere after that, on a topic matching a new pattern,
        reaches ``handler``. The transport calls ``handler`` from a task of its
        own, one message at a time in arrival order, until it closes; an
        exception from ``handler`` is logged and the message dropped.

        :param patterns: topic patterns (syntax in :meth:`publish_topic`).
        :param handler: called as ``await handler(topic, data)``; the latest
            call's handler receives every message from then on.
        :raises ValueError: a pattern is not valid or is longer than
            :attr:`max_topic_length`.
        :raises Unreachable: the change could not be confirmed (it may still
            take effect once the transport reconnects).
        :raises NotImplementedError: the transport has no topics (the default).
        """
        raise NotImplementedError(f"{type(self).__name__} does not support topics")
