"""pykka measurements, run in pykka's own virtualenv: ``ActorRef.ask`` round
trips per second, and the Savina workloads (``--savina NAME``).

pykka actors are threads: every ask crosses two threads through a queue and a
future, every ``tell`` goes through a thread's queue. Imports nothing from
jido_trio and nothing from bench/ but ``savina_spec`` (plain Python: the
Savina sizes and result checks); prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

import pykka
from savina_spec import COLOURS
from savina_spec import Done
from savina_spec import check
from savina_spec import complement
from savina_spec import compute
from savina_spec import sizes


class Counter(pykka.ThreadingActor):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def on_receive(self, message: object) -> int:
        return self.count


def ask_rates(rounds: int, reps: int) -> list[float]:
    ref = Counter.start()
    try:
        for _ in range(1000):  # warm-up
            ref.ask("get")
        samples = []
        for _ in range(reps):
            t0 = time.perf_counter()
            for _ in range(rounds):
                ref.ask("get")
            samples.append(rounds / (time.perf_counter() - t0))
    finally:
        ref.stop()
    return samples


# ---------------------------------------------------------------- Savina


class Ping(pykka.ThreadingActor):
    def __init__(self, done: Done) -> None:
        super().__init__()
        self.done = done
        self.n = self.pongs = 0

    def on_receive(self, message: Any) -> None:
        kind, arg = message
        if kind == "start":  # arg: (pong, n)
            pong, self.n = arg
            self.pongs = 0
            pong.tell(("ping", self.actor_ref))
        else:  # "pong", arg: the pong's ref
            self.pongs += 1
            if self.pongs == self.n:
                self.done.set(pongs=self.pongs)
            else:
                arg.tell(("ping", self.actor_ref))


class Pong(pykka.ThreadingActor):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def on_receive(self, message: Any) -> int | None:
        kind, reply_to = message
        if kind == "count":  # asked after the run
            return self.count
        self.count += 1
        reply_to.tell(("pong", self.actor_ref))
        return None


class RingMember(pykka.ThreadingActor):
    def __init__(self, index: int, done: Done) -> None:
        super().__init__()
        self.index = index
        self.done = done
        self.next: Any = None

    def on_receive(self, message: Any) -> None:
        kind, arg = message
        if kind == "link":
            self.next = arg
        elif arg == 0:  # "token", arg: hops left
            self.done.set(at=self.index)
        else:
            self.next.tell(("token", arg - 1))


class CountingCounter(pykka.ThreadingActor):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def on_receive(self, message: Any) -> None:
        kind, reply_to = message
        if kind == "increment":
            self.count += 1
        else:  # "retrieve"
            reply_to.tell(("total", self.count))
            self.count = 0


class Producer(pykka.ThreadingActor):
    def __init__(self, done: Done) -> None:
        super().__init__()
        self.done = done

    def on_receive(self, message: Any) -> None:
        kind, arg = message
        if kind == "start":  # arg: (counter, n)
            counter, n = arg
            for _ in range(n):
                counter.tell(("increment", None))
            counter.tell(("retrieve", self.actor_ref))
        else:  # "total"
            self.done.set(count=arg)


class Sink(pykka.ThreadingActor):
    def __init__(self, expected: int, done: Done) -> None:
        super().__init__()
        self.expected = expected
        self.done = done
        self.arrived = self.total = 0

    def on_receive(self, value: Any) -> None:
        self.arrived += 1
        self.total += value
        if self.arrived == self.expected:
            self.done.set(done=self.arrived, total=self.total)


class Sender(pykka.ThreadingActor):
    def on_receive(self, message: Any) -> None:
        workers, messages = message
        for _ in range(messages):
            for worker in workers:
                worker.tell("work")


class Worker(pykka.ThreadingActor):
    def __init__(self, expected: int, sink: Any) -> None:
        super().__init__()
        self.expected = expected
        self.sink = sink
        self.count = 0

    def on_receive(self, message: Any) -> None:
        compute()
        self.count += 1
        if self.count == self.expected:
            self.sink.tell(self.count)
            self.count = 0


class OneShot(pykka.ThreadingActor):
    def on_receive(self, sink: Any) -> None:
        compute()
        sink.tell(1)
        self.stop()


def random_peer(index: int, actors: int) -> int:
    other = random.randrange(actors - 1)
    return other + 1 if other >= index else other


class BigActor(pykka.ThreadingActor):
    def __init__(self, index: int, peers: list[Any], sink: Any) -> None:
        super().__init__()
        self.index = index
        self.peers = peers
        self.sink = sink
        self.left = self.pongs = self.pings = 0

    def on_receive(self, message: Any) -> int | None:
        kind, arg = message
        if kind == "pings":  # asked after the run
            return self.pings
        if kind == "ping":
            self.pings += 1
            arg.tell(("pong", None))
            return None
        if kind == "start":
            self.left, self.pongs = arg, 0
        else:  # "pong"
            self.left -= 1
            self.pongs += 1
            if self.left == 0:
                self.sink.tell(self.pongs)
                return None
        target = self.peers[random_peer(self.index, len(self.peers))]
        target.tell(("ping", self.actor_ref))
        return None


class Mall(pykka.ThreadingActor):
    def __init__(self, done: Done) -> None:
        super().__init__()
        self.done = done
        self.left = self.chameneos = self.exited = self.meetings = 0
        self.waiting: Any = None

    def on_receive(self, message: Any) -> None:
        kind, arg = message
        if kind == "meet":  # arg: (colour, sender)
            colour, sender = arg
            if self.left == 0:
                sender.tell(("exit", None))
            elif self.waiting is None:
                self.waiting = sender
            else:
                self.waiting.tell(("meet", (colour, sender)))
                self.left -= 1
                self.waiting = None
        elif kind == "exited":
            self.exited += 1
            self.meetings += arg
            if self.exited == self.chameneos:
                self.done.set(exited=self.exited, meetings=self.meetings)
        else:  # "start", arg: (meetings, chameneos)
            self.left, everyone = arg
            self.chameneos, self.exited, self.meetings = len(everyone), 0, 0
            for i, chameneo in enumerate(everyone):
                chameneo.tell(("start", i % COLOURS))


class Chameneo(pykka.ThreadingActor):
    def __init__(self, mall: Any) -> None:
        super().__init__()
        self.mall = mall
        self.colour = self.meetings = 0

    def on_receive(self, message: Any) -> None:
        kind, arg = message
        if kind == "meet":  # arg: (colour, sender)
            self.colour = complement(self.colour, arg[0])
            self.meetings += 1
            arg[1].tell(("change", self.colour))
        elif kind == "change":
            self.colour = arg
            self.meetings += 1
        elif kind == "start":
            self.colour, self.meetings = arg, 0
        else:  # "exit"
            self.mall.tell(("exited", self.meetings))
            return
        self.mall.tell(("meet", (self.colour, self.actor_ref)))


def timed(
    done: Done, kickoff: Callable[[], None], collect: Callable[[], dict[str, Any]] = dict
) -> tuple[float, dict[str, Any]]:
    """Time ``kickoff`` until ``done``; then (not timed) add what ``collect``
    asks the actors to the result and stop every actor."""
    t0 = time.perf_counter()
    kickoff()
    done.event.wait()
    elapsed = time.perf_counter() - t0
    result = {**done.result, **collect()}
    pykka.ActorRegistry.stop_all()
    return elapsed, result


def pingpong(size: dict[str, int]) -> tuple[float, dict[str, Any]]:
    done = Done(threading.Event())
    ping, pong = Ping.start(done), Pong.start()
    return timed(
        done,
        lambda: ping.tell(("start", (pong, size["n"]))),
        lambda: {"pings": pong.ask(("count", None))},
    )


def threadring(size: dict[str, int]) -> tuple[float, dict[str, Any]]:
    done = Done(threading.Event())
    ring = [RingMember.start(i, done) for i in range(size["actors"])]
    for i, member in enumerate(ring):
        member.ask(("link", ring[(i + 1) % len(ring)]))
    return timed(done, lambda: ring[0].tell(("token", size["hops"])))


def counting(size: dict[str, int]) -> tuple[float, dict[str, Any]]:
    done = Done(threading.Event())
    producer, counter = Producer.start(done), CountingCounter.start()
    return timed(done, lambda: producer.tell(("start", (counter, size["n"]))))


def fjthroughput(size: dict[str, int]) -> tuple[float, dict[str, Any]]:
    done = Done(threading.Event())
    sink, sender = Sink.start(size["actors"], done), Sender.start()
    workers = [Worker.start(size["messages"], sink) for _ in range(size["actors"])]
    return timed(done, lambda: sender.tell((workers, size["messages"])))


def fjcreate(size: dict[str, int]) -> tuple[float, dict[str, Any]]:
    done = Done(threading.Event())
    sink = Sink.start(size["actors"], done)

    def kickoff() -> None:
        for _ in range(size["actors"]):
            OneShot.start().tell(sink)

    return timed(done, kickoff)


def big(size: dict[str, int]) -> tuple[float, dict[str, Any]]:
    done = Done(threading.Event())
    sink = Sink.start(size["actors"], done)
    peers: list[Any] = []
    actors = [BigActor.start(i, peers, sink) for i in range(size["actors"])]
    peers.extend(actors)

    def kickoff() -> None:
        for actor in actors:
            actor.tell(("start", size["pings"]))

    def collect() -> dict[str, Any]:
        return {"pings": sum(actor.ask(("pings", None)) for actor in actors)}

    elapsed, result = timed(done, kickoff, collect)
    return elapsed, {**result, "pongs": result["total"]}


def chameneos(size: dict[str, int]) -> tuple[float, dict[str, Any]]:
    done = Done(threading.Event())
    mall = Mall.start(done)
    everyone = [Chameneo.start(mall) for _ in range(size["chameneos"])]
    return timed(done, lambda: mall.tell(("start", (size["meetings"], everyone))))


SAVINA: dict[str, Callable[[dict[str, int]], tuple[float, dict[str, Any]]]] = {
    "pingpong": pingpong,
    "threadring": threadring,
    "counting": counting,
    "fjthroughput": fjthroughput,
    "fjcreate": fjcreate,
    "big": big,
    "chameneos": chameneos,
}


def savina(name: str, size: dict[str, int], reps: int) -> list[float]:
    """A warm-up, then ``reps`` runs, each checked; times in ms."""
    samples = []
    for rep in range(reps + 1):
        elapsed, result = SAVINA[name](size)
        check(name, size, result)
        if rep:
            samples.append(elapsed * 1000)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--savina", choices=list(SAVINA), help="run this Savina workload")
    parser.add_argument("--quick", action="store_true", help="(--savina) smoke-test sizes")
    args = parser.parse_args()
    if args.savina:
        samples = savina(args.savina, sizes(args.quick)[args.savina], args.reps)
    else:
        samples = ask_rates(args.rounds, args.reps)
    versions = {"pykka": metadata.version("pykka"), "python": sys.version.split()[0]}
    print(json.dumps({"samples": samples, "versions": versions}))


if __name__ == "__main__":
    main()
