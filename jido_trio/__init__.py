"""jido_trio: a Trio-native, distribution-ready agent runtime.

Agents are addressed by logical :class:`AgentRef` values, every message is a
versioned :class:`Message` envelope, all communication goes through one layer,
and every failure is an explicit :class:`JidoError`. Start with
:func:`open_node`.

Layout (docs/architecture.md), top down; a layer imports nothing above it:

- ``_node.py``: the Node facade and ``open_node``;
- ``signals/``, ``workqueue/``, ``_supervisor.py``, ``_failover.py``: capabilities
  built on the layers below;
- ``_comm/``: Communication, where a ref becomes a local delivery or a request
  to another node (directory, remote client and server, wire format, health);
- ``_core/``: the local kernel (agent cells, mailboxes, batch loop, state
  store, durable mailbox, local delivery);
- ``abc/``: the engine protocols; ``local/``: the default engines;
- value types and the programming model: ``_agent.py``, ``_message.py``,
  ``_ref.py``, ``_exceptions.py``, ``_config.py``.

This module only re-exports the public names.
"""

from __future__ import annotations

import logging

from ._agent import Agent as Agent
from ._agent import Context as Context
from ._agent import action as action
from ._agent import on_signal as on_signal
from ._agent import upcaster as upcaster
from ._config import Config as Config
from ._exceptions import ActionError as ActionError
from ._exceptions import ActionNotFound as ActionNotFound
from ._exceptions import AgentAlreadyExists as AgentAlreadyExists
from ._exceptions import AgentNotFound as AgentNotFound
from ._exceptions import AgentUnavailable as AgentUnavailable
from ._exceptions import AlreadyProcessed as AlreadyProcessed
from ._exceptions import CallCycle as CallCycle
from ._exceptions import CallTimeout as CallTimeout
from ._exceptions import ChildAlreadyExists as ChildAlreadyExists
from ._exceptions import ChildNotFound as ChildNotFound
from ._exceptions import CircuitOpen as CircuitOpen
from ._exceptions import ConfigError as ConfigError
from ._exceptions import EngineError as EngineError
from ._exceptions import InvalidMessage as InvalidMessage
from ._exceptions import JidoError as JidoError
from ._exceptions import MailboxFull as MailboxFull
from ._exceptions import NodeClosing as NodeClosing
from ._exceptions import NodeFenced as NodeFenced
from ._exceptions import RegistryConflict as RegistryConflict
from ._exceptions import RemoteNotSupported as RemoteNotSupported
from ._exceptions import StateConflict as StateConflict
from ._exceptions import SupervisorEscalation as SupervisorEscalation
from ._exceptions import SupervisorNotFound as SupervisorNotFound
from ._exceptions import SupervisorUnavailable as SupervisorUnavailable
from ._exceptions import Unreachable as Unreachable
from ._health import Health as Health
from ._message import Instruction as Instruction
from ._message import Message as Message
from ._message import Receipt as Receipt
from ._message import register_envelope_upcaster as register_envelope_upcaster
from ._node import Node as Node
from ._node import open_node as open_node
from ._ref import AgentRef as AgentRef
from ._supervisor import Backoff as Backoff
from ._supervisor import ChildInfo as ChildInfo
from ._supervisor import ChildSpec as ChildSpec
from ._supervisor import Supervisor as Supervisor
from ._supervisor import SupervisorInfo as SupervisorInfo
from .hookspecs import hookimpl as hookimpl
from .signals import Signal as Signal
from .signals import SignalBus as SignalBus
from .signals import SignalRouter as SignalRouter
from .signals import Subscription as Subscription
from .signals import health_sensor as health_sensor
from .signals import heartbeat_sensor as heartbeat_sensor
from .workqueue import DeadJob as DeadJob
from .workqueue import QueueStats as QueueStats
from .workqueue import WorkQueue as WorkQueue
from .workqueue import open_work_queue as open_work_queue

__version__ = "0.1.0"

# A library logs, the application decides where to: without its own logging
# configuration nothing of jido_trio reaches stderr (the convention of the
# logging HOWTO; ``jido-trio run --log-level`` configures it).
logging.getLogger("jido_trio").addHandler(logging.NullHandler())
