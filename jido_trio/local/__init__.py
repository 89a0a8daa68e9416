"""Default plugins that need no server: in-memory registry, transport,
coordination and state, plus the SQLite state backend.

Nodes in one process that name the same ``hub`` in
``plugin_options={"local": {"hub": "NAME"}}`` share one registry, one
coordination service and one transport fabric, so they can talk to each
other; without a hub a node is alone and a remote ref raises
:class:`~jido_trio.RemoteNotSupported`.
"""

from __future__ import annotations

from ._coordination import LocalCoordination as LocalCoordination
from ._hub import LocalHub as LocalHub
from ._registry import LocalRegistry as LocalRegistry
from ._state import MemoryStateBackend as MemoryStateBackend
from ._transport import LocalTransport as LocalTransport
