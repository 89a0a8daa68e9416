"""Which nats-py failure a caller of the NATS engines sees as which jido_trio error."""

from __future__ import annotations

import asyncio
from typing import Any

import nats.errors
import nats.js.errors
import pytest

import jido_trio as jt
from jido_trio_nats._connection import open_connection
from jido_trio_nats._jetstream import jido_error


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (nats.errors.TimeoutError(), jt.CallTimeout),
        (TimeoutError(), jt.CallTimeout),
        (nats.errors.ConnectionClosedError(), jt.Unreachable),
        (nats.errors.NoServersError(), jt.Unreachable),
        (nats.errors.NoRespondersError(), jt.Unreachable),
        (nats.js.errors.ServiceUnavailableError(code=503), jt.Unreachable),
        (ConnectionResetError(), jt.Unreachable),
        (nats.js.errors.NotFoundError(code=404, err_code=10059), jt.EngineError),
        (nats.js.errors.ServerError(code=500, err_code=10023), jt.EngineError),
        (nats.js.errors.BadRequestError(code=400), jt.EngineError),
        (nats.errors.MaxPayloadError(), jt.EngineError),
    ],
)
def test_failures_map_to_one_error_each(failure: BaseException, expected: type) -> None:
    error = jido_error(failure, "doing it")
    assert type(error) is expected
    assert error.__cause__ is failure
    assert str(error).startswith("doing it: ")
    assert not (isinstance(error, jt.EngineError) and isinstance(error, jt.Unreachable))


async def test_an_unexpected_client_failure_is_an_engine_error(
    nats_options: dict[str, Any],
) -> None:
    async def breaks() -> None:
        raise ValueError("nats-py tripped over itself")

    async def cancelled_by_the_client() -> None:
        raise asyncio.CancelledError  # as when nats-py cancels a request of its own

    async with open_connection(jt.Config(node_name="n1"), nats_options) as conn:
        with pytest.raises(jt.EngineError, match=r"doing it: .*ValueError") as caught:
            await conn.run("doing it", breaks)
        assert isinstance(caught.value.__cause__, ValueError)
        with pytest.raises(jt.Unreachable):
            await conn.run("doing it", cancelled_by_the_client)
