"""A quick, steadier check of the two local ratios, for working on the hot paths.

Alternates ``--rounds`` rounds of the measurements ``nox -s bench`` makes in
sections (a) and (b) -- the raw awaited channel, the local tell, raw
ping-pong, the local call, and the bare Trio actor that is the floor under
both (``FloorActor`` in ``cases.py``) -- each over ``--n`` messages in one
process, and keeps the *best* rate of each. On a noisy machine the best of
many short alternated runs moves much less from one try to the next than a
median does, so a change of a few percent shows. It ends with each target's
per-message budget and how much of it the floor leaves for the guarantees.
The published figures stay the medians of ``nox -s bench``.

Usage::

    python bench/quick_ratios.py [--rounds 15] [--n 5000]
"""

from __future__ import annotations

import argparse
import gc

import trio
from cases import Counter
from cases import floor_call
from cases import floor_tell
from cases import jido_call
from cases import jido_tell
from cases import raw_channel_awaited
from cases import raw_ping_pong

import jido_trio as jt

#: (kind, baseline, target ratio) as in ``nox -s bench``.
TARGETS = (("tell", "raw channel", 1.5), ("call", "raw ping-pong", 0.8))


async def main(rounds: int, n: int) -> None:
    best: dict[str, float] = {}

    def keep(name: str, rate: float) -> None:
        best[name] = max(best.get(name, 0.0), rate)

    async with jt.open_node(jt.Config(node_name="quick")) as node:
        ref = await node.start_agent(Counter, "target")
        await jido_tell(node, ref, n)  # warm-up
        await jido_call(node, ref, n)
        for _ in range(rounds):
            for name, measure in (
                ("raw channel", lambda: raw_channel_awaited(n, 1024)),
                ("tell", lambda: jido_tell(node, ref, n)),
                ("floor tell", lambda: floor_tell(n)),
                ("raw ping-pong", lambda: raw_ping_pong(n)),
                ("call", lambda: jido_call(node, ref, n)),
                ("floor call", lambda: floor_call(n)),
            ):
                gc.collect()
                keep(name, await measure())
    for name, rate in best.items():
        print(f"{name:>14}: {rate:>10,.0f}/s  ({1e6 / rate:6.2f} us each)")
    us = {name: 1e6 / rate for name, rate in best.items()}
    for kind, base, target in TARGETS:
        budget = us[base] / target
        print(
            f"{kind} / {base}: {best[kind] / best[base]:.2f}x (target {target}x = "
            f"{budget:.2f} us each); floor {best[f'floor {kind}'] / best[base]:.2f}x, "
            f"which leaves {budget - us[f'floor {kind}']:.2f} us for the guarantees "
            f"(they take {us[kind] - us[f'floor {kind}']:.2f} us)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--n", type=int, default=5000)
    args = parser.parse_args()
    trio.run(main, args.rounds, args.n)
