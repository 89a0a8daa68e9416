"""Network-aware health states of an agent."""

from __future__ import annotations

import enum

__all__ = ["Health"]


class Health(enum.Enum):
    """What :meth:`Node.check_agent_health` can say about an agent.

    - ``HEALTHY``: running and keeping up.
    - ``DEGRADED``: reachable but impaired: restarting, recently restarted, or
      its mailbox is above the high-water mark.
    - ``UNREACHABLE``: the node that owns it cannot be reached right now.
    - ``NOT_FOUND``: no such agent, or it stopped for good.
    """

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNREACHABLE = "unreachable"
    NOT_FOUND = "not_found"
