"""Default plugins that need no server: in-memory registry, transport,
coordination and state, plus the SQLite state backend.

Nodes in one process that name the same ``hub`` in
``plugin_options={"local": {"hub": "NAME"}}`` share one registry, one
coordination service and one transport fabric, so they can talk to each
other; without a hub a node is alone and a remote ref raises
:class:`~jido_trio.RemoteNotSupported`.

State ``"sqlite"`` keeps agent state and logs in one SQLite file that
survives the process: ``Config(state="sqlite", plugin_options={"sqlite":
{"path": "state.db"}})``; options ``synchronous`` (``"full"``, the default, or
``"normal"``) and ``busy_timeout`` (seconds). See
:class:`SqliteStateBackend`.
"""

from __future__ import annotations

from ._coordination import LocalCoordination as LocalCoordination
from ._hub import LocalHub as LocalHub
from ._registry import LocalRegistry as LocalRegistry
from ._sqlite import SqliteStateBackend as SqliteStateBackend
from ._sqlite import open_sqlite_state_backend as open_sqlite_state_backend
from ._state import MemoryStateBackend as MemoryStateBackend
from ._transport import LocalTransport as LocalTransport
