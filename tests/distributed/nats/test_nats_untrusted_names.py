"""Names on a real nats-server: too long ones are refused before they reach
the server, and keys this plugin cannot have written (anyone with access to
the buckets may write some) are skipped instead of crashing a node."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio

import jido_trio as jt
from jido_trio_nats._keys import MAX_TOKEN_LENGTH
from jido_trio_nats._state import NatsStateBackend
from jido_trio_nats._transport import NatsTransport
from tests._agents import Counter

from .test_nats_signals import nodes

#: Bytes NATS KV accepts as a key, that encode_token never makes.
FOREIGN_KEYS = ("x=zz", "a=", "=FF", "=41", "=e9")


async def test_names_too_long_for_a_subject_are_refused_before_the_server(
    nats_options: dict[str, Any],
) -> None:
    """The server would close the whole connection on such a subject."""
    long_id = "." * (MAX_TOKEN_LENGTH // 3 + 1)  # each "." is "=2E" once encoded
    async with nodes(nats_options, "a") as (node,):
        transport = node.transport
        assert isinstance(transport, NatsTransport)
        with pytest.raises(jt.InvalidMessage, match="too long for NATS"):
            await node.start_agent(Counter, long_id)
        with pytest.raises(jt.InvalidMessage, match=r"lock name .* too long for NATS"):
            async with node.coordination.lock(long_id, ttl=5):
                pass  # pragma: no cover
        with pytest.raises(jt.InvalidMessage, match=r"node name .* too long for NATS"):
            await transport.send(long_id, b"hello")
        # The connection stayed up: everything else still works.
        assert transport.conn.connected
        ref = await node.start_agent(Counter, "c")
        await node.send_instruction(ref, jt.Instruction("increment"))
        assert await node.call(ref, jt.Instruction("get")) == 1


async def test_foreign_keys_in_the_buckets_are_skipped(
    nats_options: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with nodes({**nats_options, "lease_ttl": 2.0}, "a") as (a,):
        transport, state = a.transport, a.state
        assert isinstance(transport, NatsTransport)
        assert isinstance(state, NatsStateBackend)

        async def plant() -> None:
            for key in FOREIGN_KEYS:
                await transport.nodes.put(key, b"")
                await state.conn.js.publish(state.kv_prefix + key, b"x")

        await transport.conn.bridge.run(plant)
        assert [m.name for m in await transport.members()] == ["a"]
        await state.write("real", b"v")
        assert "real" in await state.keys()
        assert not set(FOREIGN_KEYS) & set(await state.keys())
        # Several membership checks later the node still serves.
        await trio.sleep(3 * a.config.health_check_interval)
        ref = await a.start_agent(Counter, "c")
        assert await a.call(ref, jt.Instruction("get")) == 0
    assert "not an encoded name" in caplog.text
