"""Which nats-py failure a caller of the NATS engines sees as which jido_trio error."""

from __future__ import annotations

import nats.errors
import nats.js.errors
import pytest

import jido_trio as jt
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
