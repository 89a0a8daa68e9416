"""The ``jido-trio`` command line.

Commands (``jido-trio --help`` for details):

- ``node run [--config FILE] [--admin HOST:PORT] [--agent MODULE:CLASS=ID ...]``:
  run a node until SIGINT/SIGTERM, with a read-only admin endpoint on loopback;
- ``agents ls``, ``health AGENT_ID``, ``tree``: ask that endpoint (``--admin``);
- ``demo``: the demo job with a live view and a checked summary;
- ``bench``: the benchmarks of a source checkout.

The admin protocol is described in :mod:`jido_trio.cli._protocol`.
"""

from __future__ import annotations

from ._app import app as app
from ._app import main as main
