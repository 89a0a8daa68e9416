"""Helpers for testing code that uses jido_trio (and jido_trio itself)."""

from __future__ import annotations

from ._cluster import Cluster as Cluster
from ._cluster import open_cluster as open_cluster
from ._crash import crash_agent as crash_agent
from ._faults import FaultRule as FaultRule
from ._faults import Faults as Faults
from ._faults import faults as faults
from ._faults import frame_kind as frame_kind
from ._inspect import AgentInternals as AgentInternals
from ._inspect import agent_internals as agent_internals
from ._inspect import peer_reachable as peer_reachable
from ._inspect import pending_reply_deadlines as pending_reply_deadlines
