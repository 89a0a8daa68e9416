"""pykka ``ActorRef.ask`` round trips per second (run in pykka's own virtualenv).

pykka actors are threads: every ask crosses two threads through a queue and a
future. Imports nothing from jido_trio or the rest of bench/; prints one JSON
object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib import metadata

import pykka


class Counter(pykka.ThreadingActor):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def on_receive(self, message: object) -> int:
        return self.count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    ref = Counter.start()
    try:
        for _ in range(1000):  # warm-up
            ref.ask("get")
        samples = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            for _ in range(args.rounds):
                ref.ask("get")
            samples.append(args.rounds / (time.perf_counter() - t0))
    finally:
        ref.stop()
    versions = {"pykka": metadata.version("pykka"), "python": sys.version.split()[0]}
    print(json.dumps({"samples": samples, "versions": versions}))


if __name__ == "__main__":
    main()
