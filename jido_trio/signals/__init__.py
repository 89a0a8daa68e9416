"""Signals: CloudEvents published on a node's bus, routed by type pattern to
in-process subscribers, agents (``@on_signal``) and durable subscriptions,
and forwarded to the other nodes; sensors that publish them.

The same names are importable from :mod:`jido_trio`.
"""

from __future__ import annotations

from ._bus import SignalBus as SignalBus
from ._bus import Subscription as Subscription
from ._router import SignalRouter as SignalRouter
from ._sensors import health_sensor as health_sensor
from ._sensors import heartbeat_sensor as heartbeat_sensor
from ._signal import Signal as Signal

__all__ = [
    "Signal",
    "SignalBus",
    "SignalRouter",
    "Subscription",
    "health_sensor",
    "heartbeat_sensor",
]
