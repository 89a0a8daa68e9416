"""Sensors: supervised signal sources (start them with ``node.start_sensor``)."""

from __future__ import annotations

from collections.abc import Awaitable
from collections.abc import Callable
from typing import TYPE_CHECKING
from typing import Any
from urllib.parse import quote

import trio

from .._health import Health
from ._signal import Signal

if TYPE_CHECKING:
    from .._node import Node

__all__ = ["health_sensor", "heartbeat_sensor"]

Sensor = Callable[..., Awaitable[Any]]


def heartbeat_sensor(interval: float, *, type: str = "jido.sensor.heartbeat") -> Sensor:
    """A sensor that publishes ``type`` every ``interval`` seconds with
    ``data={"node": NAME, "beat": n}``."""
    if interval <= 0:
        raise ValueError("interval must be positive")

    async def run(node: Node, *, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        beat = 0
        while True:
            await trio.sleep(interval)
            beat += 1
            await node.publish(
                Signal.new(
                    type,
                    f"jido://{quote(node.name, safe='')}/sensors/heartbeat",
                    {"node": node.name, "beat": beat},
                )
            )

    return run


def health_sensor(interval: float, *, type: str = "jido.health.changed") -> Sensor:
    """A sensor that checks the health of the node's agents every ``interval``
    seconds and publishes ``type`` for each change, with ``subject`` = agent id
    and ``data={"agent": id, "old": ..., "new": ...}``."""
    if interval <= 0:
        raise ValueError("interval must be positive")

    async def run(node: Node, *, task_status: trio.TaskStatus[None]) -> None:
        seen: dict[str, Health] = {}
        task_status.started()
        while True:
            current = {ref.id: (ref, await node.check_agent_health(ref)) for ref in node.agents()}
            for agent_id, (_ref, health) in current.items():
                old = seen.get(agent_id, Health.NOT_FOUND)
                if health is not old:
                    await node.publish(
                        Signal.new(
                            type,
                            f"jido://{quote(node.name, safe='')}/sensors/health",
                            {"agent": agent_id, "old": old.value, "new": health.value},
                            subject=agent_id,
                        )
                    )
            for agent_id in set(seen) - set(current):
                await node.publish(
                    Signal.new(
                        type,
                        f"jido://{quote(node.name, safe='')}/sensors/health",
                        {"agent": agent_id, "old": seen[agent_id].value, "new": "not_found"},
                        subject=agent_id,
                    )
                )
            seen = {agent_id: health for agent_id, (_, health) in current.items()}
            await trio.sleep(interval)

    return run
