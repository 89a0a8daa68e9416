"""The Communication layer: where a ref becomes a delivery to an agent of
this node or a request to another node.

- :mod:`._communication`: the local-or-remote decision for every operation;
- :mod:`._directory`: the agents of this node, and where the others are;
- :mod:`._client`: requests to other nodes (retries, breakers, failover);
- :mod:`._server`: requests from other nodes;
- :mod:`._wire`: the frames both exchange;
- :mod:`._health`: health policy, breakers and latency;
- :mod:`._events`: what the node does when an agent cell reports.
"""

from __future__ import annotations

from ._client import RemoteClient as RemoteClient
from ._client import ping as ping
from ._communication import Communication as Communication
from ._directory import Directory as Directory
from ._events import NodeCellEvents as NodeCellEvents
from ._health import HealthPolicy as HealthPolicy
from ._server import RemoteServer as RemoteServer
