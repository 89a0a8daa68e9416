"""triotp ``gen_server.call`` round trips per second (run in triotp's own virtualenv).

triotp pins an old trio, so this script runs under a separate interpreter and
imports nothing from jido_trio or the rest of bench/. It prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib import metadata

import trio
import trio.testing
from triotp import gen_server, mailbox


# gen_server callbacks: this module is the server module.
async def init(_arg):
    return 0


async def handle_call(message, _caller, state):
    return gen_server.Reply(payload=state), state


async def main(rounds: int, reps: int, warmup: int) -> list[float]:
    mailbox._init()
    module = sys.modules[__name__]
    samples: list[float] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gen_server.start, module, None, "bench")
        await trio.testing.wait_all_tasks_blocked()
        for _ in range(warmup):
            await gen_server.call("bench", "get")
        for _ in range(reps):
            t0 = time.perf_counter()
            for _ in range(rounds):
                await gen_server.call("bench", "get")
            samples.append(rounds / (time.perf_counter() - t0))
        nursery.cancel_scope.cancel()
    return samples


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    samples = trio.run(main, args.rounds, args.reps, 1000)
    print(
        json.dumps(
            {
                "samples": samples,
                "versions": {
                    "triotp": metadata.version("triotp"),
                    "trio": metadata.version("trio"),
                    "python": sys.version.split()[0],
                },
            }
        )
    )
