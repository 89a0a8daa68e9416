"""``python -m jido_trio.cli``: the same as the ``jido-trio`` command."""

from __future__ import annotations

from . import main

if __name__ == "__main__":
    main()
