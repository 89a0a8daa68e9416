"""Regression tests for what the chaos test (test_nats_chaos.py) found, on one
real nats-server."""

from __future__ import annotations

from typing import Any

import pytest

import jido_trio as jt
from tests._agents import Counter


def _config(name: str, options: dict[str, Any], **config: Any) -> jt.Config:
    return jt.Config(
        node_name=name,
        registry="nats",
        transport="nats",
        state="nats",
        coordination="nats",
        plugin_options={"nats": options},
        **config,
    )


async def test_callers_of_an_agent_whose_node_is_away_see_a_public_error(
    nats_options: dict[str, Any],
) -> None:
    """Issue 16, item 6: callers never see a private exception class. An
    agent whose node left (its entry kept for a survivor to take over, none
    does here) or is restarting is :class:`~jido_trio.Unreachable` itself."""
    async with jt.open_node(_config("caller", nats_options, failover=False)) as caller:
        async with jt.open_node(_config("owner", nats_options)) as owner:
            ref = await owner.start_agent(Counter, "c")
            await caller.send_instruction(ref, jt.Instruction("increment"))
        raised: list[BaseException] = []
        for operation in (
            caller.send_instruction(ref, jt.Instruction("increment"), timeout=1.0),
            caller.call(ref, jt.Instruction("get"), timeout=1.0),
        ):
            with pytest.raises(jt.Unreachable) as error:
                await operation
            raised.append(error.value)
        names = [f"{type(e).__module__}.{type(e).__qualname__}" for e in raised]
        assert all(getattr(jt, type(e).__name__, None) is type(e) for e in raised), names
