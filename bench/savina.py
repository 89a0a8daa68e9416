"""Savina actor benchmarks on jido_trio and on hand-written raw Trio actors.

The workloads of Savina (Imam & Sarkar, "Savina - An Actor Benchmark Suite",
AGERE 2014) written twice, the way a user of each would write them:

- jido_trio: agents that talk to each other with ``self.ctx.send(ref,
  jt.Instruction(...))`` inside their actions. Refs travel in params (a ping
  carries ``reply_to``, as Savina's messages carry their sender); a peer an
  agent keeps for the whole run is kept in its state by id, and its ref built
  with ``jt.AgentRef.new`` (an ``AgentRef`` in an agent's state cannot be
  persisted today: its metadata mapping does not encode). The last agent to
  finish publishes a ``savina.done`` signal with the result, which the driver
  receives from ``node.signals``.
- raw Trio: one task and one ``trio.open_memory_channel`` (of the capacity of
  an agent's default mailbox) per actor, ``await channel.send(...)`` and
  ``async for``; the last actor sets a ``trio.Event``.

One run is timed from the first message until the result is known. Actors are
created before the clock starts (and jido_trio's agents once per process,
reused by every run), except in ForkJoin creation, which times creation.
Every run checks its result (``savina_spec.check``) before its time counts.

Usage::

    python bench/savina.py                    # the Savina section alone, one short table
    python bench/savina.py --peers            # ... with triotp and pykka (their virtualenvs)
    python bench/savina.py --quick            # smoke run of the harness
    python bench/savina.py run pingpong --reps 5   # one benchmark, JSON (used by run.py)
    python bench/savina.py run pingpong --reps 2 --profile /tmp/pp.pstats   # cProfile, jido part
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import random
import sys
import time
from collections.abc import Awaitable
from collections.abc import Callable
from typing import Any

import attrs
import trio
import trio.testing
from savina_spec import BENCHMARKS
from savina_spec import COLOURS
from savina_spec import Done
from savina_spec import check
from savina_spec import complement
from savina_spec import compute
from savina_spec import sizes

import jido_trio as jt

perf = time.perf_counter

#: Capacity of a raw actor's channel: that of an agent's default mailbox.
MAILBOX = jt.Config().mailbox_size

#: Signal type the last agent of a jido_trio run publishes, with the result as data.
DONE = "savina.done"

I = jt.Instruction  # noqa: E741 - read as "instruction" in the many sends below


def peer(agent_id: str, agent: type[jt.Agent]) -> jt.AgentRef:
    """The ref of a local agent kept in state by id."""
    return jt.AgentRef.new(agent_id, agent.type)


# ---------------------------------------------------------------- jido_trio agents


@attrs.frozen
class CountState:
    count: int = 0


@attrs.frozen
class PingState:
    n: int = 0
    pongs: int = 0


class Ping(jt.Agent):
    """PingPong's ping: sends a ping, and another one per pong until ``n``."""

    type = "savina-ping"
    State = PingState

    @jt.action("start")
    async def start(self, state: PingState, pong: jt.AgentRef, n: int) -> PingState:
        await self.ctx.send(pong, I("ping", {"reply_to": self.ctx.ref}))
        return PingState(n, 0)

    @jt.action("pong")
    async def pong(self, state: PingState, reply_to: jt.AgentRef) -> PingState:
        pongs = state.pongs + 1
        if pongs == state.n:
            await self.ctx.emit(DONE, {"pongs": pongs})
            return PingState()
        await self.ctx.send(reply_to, I("ping", {"reply_to": self.ctx.ref}))
        return PingState(state.n, pongs)


class Pong(jt.Agent):
    """PingPong's pong: answers every ping."""

    type = "savina-pong"
    State = CountState

    @jt.action("ping")
    async def ping(self, state: CountState, reply_to: jt.AgentRef) -> CountState:
        await self.ctx.send(reply_to, I("pong", {"reply_to": self.ctx.ref}))
        return CountState(state.count + 1)

    @jt.action("take_count")
    async def take_count(self, state: CountState) -> CountState:
        self.ctx.reply(state.count)
        return CountState()


@attrs.frozen
class RingState:
    index: int = 0
    next_id: str = ""


class RingMember(jt.Agent):
    """ThreadRing: passes the token to the next member until its hops run out."""

    type = "savina-ring"
    State = RingState

    @jt.action("link")
    async def link(self, state: RingState, index: int, next_id: str) -> RingState:
        return RingState(index, next_id)

    @jt.action("token")
    async def token(self, state: RingState, hops: int) -> None:
        if hops == 0:
            await self.ctx.emit(DONE, {"at": state.index})
        else:
            await self.ctx.send(peer(state.next_id, RingMember), I("token", {"hops": hops - 1}))


class Counter(jt.Agent):
    """Counting's counter."""

    type = "savina-counter"
    State = CountState

    @jt.action("increment")
    async def increment(self, state: CountState) -> CountState:
        return CountState(state.count + 1)

    @jt.action("retrieve")
    async def retrieve(self, state: CountState, reply_to: jt.AgentRef) -> CountState:
        await self.ctx.send(reply_to, I("total", {"count": state.count}))
        return CountState()


class Producer(jt.Agent):
    """Counting's producer: ``n`` increments, then asks for the total."""

    type = "savina-producer"

    @jt.action("start")
    async def start(self, state: Any, counter: jt.AgentRef, n: int) -> None:
        send = self.ctx.send
        for _ in range(n):
            await send(counter, I("increment"))
        await send(counter, I("retrieve", {"reply_to": self.ctx.ref}))

    @jt.action("total")
    async def total(self, state: Any, count: int) -> None:
        await self.ctx.emit(DONE, {"count": count})


@attrs.frozen
class SinkState:
    expected: int = 0
    done: int = 0
    total: int = 0


class Sink(jt.Agent):
    """Collects one ``done`` per actor; publishes the result after the last."""

    type = "savina-sink"
    State = SinkState

    @jt.action("expect")
    async def expect(self, state: SinkState, n: int) -> SinkState:
        return SinkState(n)

    @jt.action("done")
    async def done(self, state: SinkState, value: int) -> SinkState:
        done, total = state.done + 1, state.total + value
        if done == state.expected:
            await self.ctx.emit(DONE, {"done": done, "total": total})
            return SinkState()
        return SinkState(state.expected, done, total)


class Sender(jt.Agent):
    """ForkJoin throughput's sender: ``messages`` rounds over every worker."""

    type = "savina-sender"

    @jt.action("start")
    async def start(self, state: Any, workers: list[jt.AgentRef], messages: int) -> None:
        send = self.ctx.send
        for _ in range(messages):
            for worker in workers:
                await send(worker, I("work"))


@attrs.frozen
class WorkerState:
    expected: int = 0
    sink_id: str = ""
    count: int = 0


class Worker(jt.Agent):
    """ForkJoin throughput's worker: computes per message, reports at ``expected``."""

    type = "savina-worker"
    State = WorkerState

    @jt.action("setup")
    async def setup(self, state: WorkerState, expected: int, sink_id: str) -> WorkerState:
        return WorkerState(expected, sink_id)

    @jt.action("work")
    async def work(self, state: WorkerState) -> WorkerState:
        compute()
        count = state.count + 1
        if count == state.expected:
            await self.ctx.send(peer(state.sink_id, Sink), I("done", {"value": count}))
            return WorkerState(state.expected, state.sink_id)
        return WorkerState(state.expected, state.sink_id, count)


class OneShot(jt.Agent):
    """ForkJoin creation's actor: handles one message and reports it."""

    type = "savina-oneshot"

    @jt.action("work")
    async def work(self, state: Any, sink: jt.AgentRef) -> None:
        compute()
        await self.ctx.send(sink, I("done", {"value": 1}))


@attrs.frozen
class BigState:
    index: int = 0
    actors: int = 0
    sink_id: str = ""
    left: int = 0
    pongs: int = 0
    pings: int = 0


def random_peer(index: int, actors: int) -> int:
    """A random actor other than ``index`` (Big's pings never go to oneself)."""
    other = random.randrange(actors - 1)
    return other + 1 if other >= index else other


class BigActor(jt.Agent):
    """Big: pings random peers one at a time, answers their pings with pongs."""

    type = "savina-big"
    State = BigState

    @jt.action("setup")
    async def setup(self, state: BigState, index: int, actors: int, sink_id: str) -> BigState:
        return BigState(index, actors, sink_id)

    async def _ping_someone(self, state: BigState) -> None:
        target = peer(f"big-{random_peer(state.index, state.actors)}", BigActor)
        await self.ctx.send(target, I("ping", {"reply_to": self.ctx.ref}))

    # New states are built directly, as in bench/cases.py: attrs.evolve would
    # add about a microsecond per message that the raw actors do not pay.

    @jt.action("start")
    async def start(self, state: BigState, pings: int) -> BigState:
        await self._ping_someone(state)
        return BigState(state.index, state.actors, state.sink_id, pings, 0, state.pings)

    @jt.action("ping")
    async def ping(self, state: BigState, reply_to: jt.AgentRef) -> BigState:
        await self.ctx.send(reply_to, I("pong"))
        s = state
        return BigState(s.index, s.actors, s.sink_id, s.left, s.pongs, s.pings + 1)

    @jt.action("pong")
    async def pong(self, state: BigState) -> BigState:
        s = state
        left, pongs = s.left - 1, s.pongs + 1
        if left == 0:
            await self.ctx.send(peer(s.sink_id, Sink), I("done", {"value": pongs}))
            return BigState(s.index, s.actors, s.sink_id, 0, 0, s.pings)
        await self._ping_someone(s)
        return BigState(s.index, s.actors, s.sink_id, left, pongs, s.pings)

    @jt.action("take_pings")
    async def take_pings(self, state: BigState) -> BigState:
        self.ctx.reply(state.pings)
        return BigState(state.index, state.actors, state.sink_id)


@attrs.frozen
class MallState:
    left: int = 0
    waiting_id: str = ""
    chameneos: int = 0
    exited: int = 0
    meetings: int = 0


class Mall(jt.Agent):
    """Chameneos' mall: pairs meeting requests until its meetings run out."""

    type = "savina-mall"
    State = MallState

    @jt.action("start")
    async def start(
        self, state: MallState, meetings: int, chameneos: list[jt.AgentRef]
    ) -> MallState:
        for i, chameneo in enumerate(chameneos):
            await self.ctx.send(chameneo, I("start", {"mall": self.ctx.ref, "colour": i % COLOURS}))
        return MallState(left=meetings, chameneos=len(chameneos))

    @jt.action("meet")
    async def meet(self, state: MallState, colour: int, sender: jt.AgentRef) -> MallState:
        s = state
        if s.left == 0:
            await self.ctx.send(sender, I("exit"))
            return s
        if not s.waiting_id:
            return MallState(s.left, sender.id, s.chameneos, s.exited, s.meetings)
        waiting = peer(s.waiting_id, Chameneo)
        await self.ctx.send(waiting, I("meet", {"colour": colour, "sender": sender}))
        return MallState(s.left - 1, "", s.chameneos, s.exited, s.meetings)

    @jt.action("exited")
    async def exited(self, state: MallState, meetings: int) -> MallState:
        s = state
        exited, total = s.exited + 1, s.meetings + meetings
        if exited == s.chameneos:
            await self.ctx.emit(DONE, {"exited": exited, "meetings": total})
            return MallState()
        return MallState(s.left, s.waiting_id, s.chameneos, exited, total)


@attrs.frozen
class ChameneoState:
    colour: int = 0
    meetings: int = 0
    mall_id: str = ""


class Chameneo(jt.Agent):
    """Chameneos' creature: asks the mall for a meeting after each one."""

    type = "savina-chameneo"
    State = ChameneoState

    async def _ask_mall(self, mall: jt.AgentRef, colour: int) -> None:
        await self.ctx.send(mall, I("meet", {"colour": colour, "sender": self.ctx.ref}))

    @jt.action("start")
    async def start(self, state: ChameneoState, mall: jt.AgentRef, colour: int) -> ChameneoState:
        await self._ask_mall(mall, colour)
        return ChameneoState(colour, 0, mall.id)

    @jt.action("meet")
    async def meet(self, state: ChameneoState, colour: int, sender: jt.AgentRef) -> ChameneoState:
        mine = complement(state.colour, colour)
        await self.ctx.send(sender, I("change", {"colour": mine}))
        await self._ask_mall(peer(state.mall_id, Mall), mine)
        return ChameneoState(mine, state.meetings + 1, state.mall_id)

    @jt.action("change")
    async def change(self, state: ChameneoState, colour: int) -> ChameneoState:
        await self._ask_mall(peer(state.mall_id, Mall), colour)
        return ChameneoState(colour, state.meetings + 1, state.mall_id)

    @jt.action("exit")
    async def exit(self, state: ChameneoState) -> ChameneoState:
        await self.ctx.send(peer(state.mall_id, Mall), I("exited", {"meetings": state.meetings}))
        return ChameneoState()


# ---------------------------------------------------------------- jido_trio runs


class JidoBench:
    """One benchmark's agents on one node: set up once, run many times."""

    def __init__(self, node: jt.Node, done: jt.Subscription, size: dict[str, int]) -> None:
        self.node = node
        self.done = done
        self.size = size

    async def prepare(self) -> None:
        """Start the agents (not timed)."""

    async def before(self) -> None:
        """Get the agents ready for one run (not timed)."""

    async def kickoff(self) -> None:
        """Send the run's first message(s)."""
        raise NotImplementedError

    async def collect(self, result: dict[str, Any]) -> dict[str, Any]:
        """Add what is read after the run (not timed) to the signalled result."""
        return result

    async def run(self) -> tuple[float, dict[str, Any]]:
        await self.before()
        gc.collect()
        t0 = perf()
        await self.kickoff()
        signal = await self.done.receive()
        elapsed = perf() - t0
        return elapsed, await self.collect(dict(signal.data))


class JidoPingPong(JidoBench):
    async def prepare(self) -> None:
        self.ping = await self.node.start_agent(Ping, "ping")
        self.pong = await self.node.start_agent(Pong, "pong")

    async def kickoff(self) -> None:
        await self.node.send_instruction(self.ping, I("start", {"pong": self.pong, **self.size}))

    async def collect(self, result: dict[str, Any]) -> dict[str, Any]:
        return {**result, "pings": await self.node.call(self.pong, I("take_count"))}


class JidoThreadRing(JidoBench):
    async def prepare(self) -> None:
        actors = self.size["actors"]
        ids = [f"ring-{i}" for i in range(actors)]
        self.ring = await self.node.start_agents(RingMember, ids)
        for i, ref in enumerate(self.ring):
            await self.node.call(ref, I("link", {"index": i, "next_id": ids[(i + 1) % actors]}))

    async def kickoff(self) -> None:
        await self.node.send_instruction(self.ring[0], I("token", {"hops": self.size["hops"]}))


class JidoCounting(JidoBench):
    async def prepare(self) -> None:
        self.producer = await self.node.start_agent(Producer, "producer")
        self.counter = await self.node.start_agent(Counter, "counter")

    async def kickoff(self) -> None:
        params = {"counter": self.counter, "n": self.size["n"]}
        await self.node.send_instruction(self.producer, I("start", params))


class JidoForkJoinThroughput(JidoBench):
    async def prepare(self) -> None:
        self.sink = await self.node.start_agent(Sink, "sink")
        self.sender = await self.node.start_agent(Sender, "sender")
        ids = [f"worker-{i}" for i in range(self.size["actors"])]
        self.workers = await self.node.start_agents(Worker, ids)
        for ref in self.workers:
            params = {"expected": self.size["messages"], "sink_id": self.sink.id}
            await self.node.call(ref, I("setup", params))

    async def before(self) -> None:
        await self.node.call(self.sink, I("expect", {"n": self.size["actors"]}))

    async def kickoff(self) -> None:
        params = {"workers": self.workers, "messages": self.size["messages"]}
        await self.node.send_instruction(self.sender, I("start", params))


class JidoForkJoinCreation(JidoBench):
    rep = 0

    async def prepare(self) -> None:
        self.sink = await self.node.start_agent(Sink, "sink")

    async def run(self) -> tuple[float, dict[str, Any]]:
        actors = self.size["actors"]
        await self.node.call(self.sink, I("expect", {"n": actors}))
        ids = [f"oneshot-{self.rep}-{i}" for i in range(actors)]
        self.rep += 1
        gc.collect()
        t0 = perf()
        refs = await self.node.start_agents(OneShot, ids)
        for ref in refs:
            await self.node.send_instruction(ref, I("work", {"sink": self.sink}))
        signal = await self.done.receive()
        elapsed = perf() - t0
        for ref in refs:  # they would stay idle; not timed
            await self.node.stop_agent(ref)
        return elapsed, dict(signal.data)


class JidoBig(JidoBench):
    async def prepare(self) -> None:
        self.sink = await self.node.start_agent(Sink, "sink")
        actors = self.size["actors"]
        self.actors = await self.node.start_agents(BigActor, [f"big-{i}" for i in range(actors)])
        for i, ref in enumerate(self.actors):
            params = {"index": i, "actors": actors, "sink_id": self.sink.id}
            await self.node.call(ref, I("setup", params))

    async def before(self) -> None:
        await self.node.call(self.sink, I("expect", {"n": self.size["actors"]}))

    async def kickoff(self) -> None:
        for ref in self.actors:
            await self.node.send_instruction(ref, I("start", {"pings": self.size["pings"]}))

    async def collect(self, result: dict[str, Any]) -> dict[str, Any]:
        pings = 0
        for ref in self.actors:
            pings += await self.node.call(ref, I("take_pings"))
        return {"done": result["done"], "pongs": result["total"], "pings": pings}


class JidoChameneos(JidoBench):
    async def prepare(self) -> None:
        self.mall = await self.node.start_agent(Mall, "mall")
        ids = [f"chameneo-{i}" for i in range(self.size["chameneos"])]
        self.chameneos = await self.node.start_agents(Chameneo, ids)

    async def kickoff(self) -> None:
        params = {"meetings": self.size["meetings"], "chameneos": self.chameneos}
        await self.node.send_instruction(self.mall, I("start", params))


JIDO: dict[str, type[JidoBench]] = {
    "pingpong": JidoPingPong,
    "threadring": JidoThreadRing,
    "counting": JidoCounting,
    "fjthroughput": JidoForkJoinThroughput,
    "fjcreate": JidoForkJoinCreation,
    "big": JidoBig,
    "chameneos": JidoChameneos,
}


# ---------------------------------------------------------------- raw Trio actors


class Actor:
    """A raw Trio actor: one task reading one memory channel."""

    def __init__(self) -> None:
        self.send, self.inbox = trio.open_memory_channel[Any](MAILBOX)

    async def run(self) -> None:
        raise NotImplementedError


class RawPing(Actor):
    def __init__(self, done: Done) -> None:
        super().__init__()
        self.done = done

    async def run(self) -> None:
        n = pongs = 0
        async for kind, arg in self.inbox:
            if kind == "start":  # arg: (pong, n)
                pong, n = arg
                pongs = 0
                await pong.send(("ping", self.send))
            else:  # "pong", arg: the pong's channel
                pongs += 1
                if pongs == n:
                    self.done.set(pongs=pongs)
                else:
                    await arg.send(("ping", self.send))


class RawPong(Actor):
    count = 0

    async def run(self) -> None:
        async for _, reply_to in self.inbox:
            self.count += 1
            await reply_to.send(("pong", self.send))


class RawRingMember(Actor):
    def __init__(self, index: int, done: Done) -> None:
        super().__init__()
        self.index = index
        self.done = done
        self.next: trio.MemorySendChannel[Any] | None = None

    async def run(self) -> None:
        assert self.next is not None
        async for hops in self.inbox:
            if hops == 0:
                self.done.set(at=self.index)
            else:
                await self.next.send(hops - 1)


class RawCounter(Actor):
    async def run(self) -> None:
        count = 0
        async for kind, reply_to in self.inbox:
            if kind == "increment":
                count += 1
            else:  # "retrieve"
                await reply_to.send(("total", count))
                count = 0


class RawProducer(Actor):
    def __init__(self, done: Done) -> None:
        super().__init__()
        self.done = done

    async def run(self) -> None:
        async for kind, arg in self.inbox:
            if kind == "start":  # arg: (counter, n)
                counter, n = arg
                for _ in range(n):
                    await counter.send(("increment", None))
                await counter.send(("retrieve", self.send))
            else:  # "total"
                self.done.set(count=arg)


class RawSink(Actor):
    def __init__(self, expected: int, done: Done) -> None:
        super().__init__()
        self.expected = expected
        self.done = done

    async def run(self) -> None:
        done = total = 0
        async for value in self.inbox:
            done += 1
            total += value
            if done == self.expected:
                self.done.set(done=done, total=total)


class RawSender(Actor):
    async def run(self) -> None:
        async for workers, messages in self.inbox:
            for _ in range(messages):
                for worker in workers:
                    await worker.send("work")


class RawWorker(Actor):
    def __init__(self, expected: int, sink: trio.MemorySendChannel[Any]) -> None:
        super().__init__()
        self.expected = expected
        self.sink = sink

    async def run(self) -> None:
        count = 0
        async for _ in self.inbox:
            compute()
            count += 1
            if count == self.expected:
                await self.sink.send(count)
                count = 0


class RawOneShot(Actor):
    async def run(self) -> None:
        async for sink in self.inbox:
            compute()
            await sink.send(1)
            return


class RawBigActor(Actor):
    def __init__(self, index: int, peers: list[Actor], sink: trio.MemorySendChannel[Any]) -> None:
        super().__init__()
        self.index = index
        self.peers = peers
        self.sink = sink
        self.pings = 0

    async def run(self) -> None:
        left = pongs = 0
        peers, index = self.peers, self.index
        async for kind, arg in self.inbox:
            if kind == "ping":
                self.pings += 1
                await arg.send(("pong", None))
                continue
            if kind == "start":
                left, pongs = arg, 0
            else:  # "pong"
                left -= 1
                pongs += 1
                if left == 0:
                    await self.sink.send(pongs)
                    continue
            target = peers[random_peer(index, len(peers))]
            await target.send.send(("ping", self.send))


class RawMall(Actor):
    def __init__(self, done: Done) -> None:
        super().__init__()
        self.done = done

    async def run(self) -> None:
        left = chameneos = exited = meetings = 0
        waiting: Any = None
        async for kind, arg in self.inbox:
            if kind == "meet":  # arg: (colour, sender)
                colour, sender = arg
                if left == 0:
                    await sender.send(("exit", None))
                elif waiting is None:
                    waiting = sender
                else:
                    await waiting.send(("meet", (colour, sender)))
                    left -= 1
                    waiting = None
            elif kind == "exited":
                exited += 1
                meetings += arg
                if exited == chameneos:
                    self.done.set(exited=exited, meetings=meetings)
            else:  # "start", arg: (meetings, chameneos)
                left, everyone = arg
                chameneos, exited, meetings = len(everyone), 0, 0
                for i, chameneo in enumerate(everyone):
                    await chameneo.send(("start", i % COLOURS))


class RawChameneo(Actor):
    def __init__(self, mall: trio.MemorySendChannel[Any]) -> None:
        super().__init__()
        self.mall = mall

    async def run(self) -> None:
        colour = meetings = 0
        mall, me = self.mall, self.send
        async for kind, arg in self.inbox:
            if kind == "meet":  # arg: (colour, sender)
                colour = complement(colour, arg[0])
                meetings += 1
                await arg[1].send(("change", colour))
            elif kind == "change":
                colour = arg
                meetings += 1
            elif kind == "start":
                colour, meetings = arg, 0
            else:  # "exit"
                await mall.send(("exited", meetings))
                continue
            await mall.send(("meet", (colour, me)))


async def raw_run(
    actors: list[Actor], done: Done, kickoff: Callable[[], Awaitable[None]]
) -> tuple[float, dict[str, Any]]:
    """Run ``actors`` (their tasks start before the clock), time ``kickoff``
    until ``done``, then cancel them."""
    async with trio.open_nursery() as nursery:
        for actor in actors:
            nursery.start_soon(actor.run)
        await trio.testing.wait_all_tasks_blocked()
        gc.collect()
        t0 = perf()
        await kickoff()
        await done.event.wait()
        elapsed = perf() - t0
        nursery.cancel_scope.cancel()
    return elapsed, done.result


async def raw_pingpong(size: dict[str, int]) -> tuple[float, dict[str, Any]]:
    done = Done(trio.Event())
    ping, pong = RawPing(done), RawPong()
    elapsed, result = await raw_run(
        [ping, pong], done, lambda: ping.send.send(("start", (pong.send, size["n"])))
    )
    return elapsed, {**result, "pings": pong.count}


async def raw_threadring(size: dict[str, int]) -> tuple[float, dict[str, Any]]:
    done = Done(trio.Event())
    ring = [RawRingMember(i, done) for i in range(size["actors"])]
    for i, member in enumerate(ring):
        member.next = ring[(i + 1) % len(ring)].send
    return await raw_run(ring, done, lambda: ring[0].send.send(size["hops"]))


async def raw_counting(size: dict[str, int]) -> tuple[float, dict[str, Any]]:
    done = Done(trio.Event())
    producer, counter = RawProducer(done), RawCounter()
    return await raw_run(
        [producer, counter],
        done,
        lambda: producer.send.send(("start", (counter.send, size["n"]))),
    )


async def raw_fjthroughput(size: dict[str, int]) -> tuple[float, dict[str, Any]]:
    done = Done(trio.Event())
    sink, sender = RawSink(size["actors"], done), RawSender()
    workers = [RawWorker(size["messages"], sink.send) for _ in range(size["actors"])]
    return await raw_run(
        [sink, sender, *workers],
        done,
        lambda: sender.send.send(([w.send for w in workers], size["messages"])),
    )


async def raw_fjcreate(size: dict[str, int]) -> tuple[float, dict[str, Any]]:
    done = Done(trio.Event())
    sink = RawSink(size["actors"], done)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sink.run)
        await trio.testing.wait_all_tasks_blocked()
        gc.collect()
        t0 = perf()
        for _ in range(size["actors"]):
            actor = RawOneShot()
            nursery.start_soon(actor.run)
            await actor.send.send(sink.send)
        await done.event.wait()
        elapsed = perf() - t0
        nursery.cancel_scope.cancel()
    return elapsed, done.result


async def raw_big(size: dict[str, int]) -> tuple[float, dict[str, Any]]:
    done = Done(trio.Event())
    sink = RawSink(size["actors"], done)
    everyone: list[Actor] = []
    actors = [RawBigActor(i, everyone, sink.send) for i in range(size["actors"])]
    everyone.extend(actors)

    async def kickoff() -> None:
        for actor in actors:
            await actor.send.send(("start", size["pings"]))

    elapsed, result = await raw_run([sink, *actors], done, kickoff)
    pings = sum(actor.pings for actor in actors)
    return elapsed, {"done": result["done"], "pongs": result["total"], "pings": pings}


async def raw_chameneos(size: dict[str, int]) -> tuple[float, dict[str, Any]]:
    done = Done(trio.Event())
    mall = RawMall(done)
    chameneos = [RawChameneo(mall.send) for _ in range(size["chameneos"])]
    start = ("start", (size["meetings"], [c.send for c in chameneos]))
    return await raw_run([mall, *chameneos], done, lambda: mall.send.send(start))


RAW: dict[str, Callable[[dict[str, int]], Awaitable[tuple[float, dict[str, Any]]]]] = {
    "pingpong": raw_pingpong,
    "threadring": raw_threadring,
    "counting": raw_counting,
    "fjthroughput": raw_fjthroughput,
    "fjcreate": raw_fjcreate,
    "big": raw_big,
    "chameneos": raw_chameneos,
}


# ---------------------------------------------------------------- one benchmark, one process


async def measure(
    name: str, size: dict[str, int], reps: int, profile: str | None
) -> dict[str, Any]:
    """A warm-up of each, then ``reps`` jido_trio and raw runs alternated;
    every run's result is checked. Returns the metrics (times in ms)."""
    prof = cProfile.Profile() if profile else None
    jido_ms: list[float] = []
    raw_ms: list[float] = []
    config = jt.Config(node_name="savina")
    async with jt.open_node(config) as node, node.signals.subscribe(DONE) as done:
        bench = JIDO[name](node, done, size)
        await bench.prepare()
        for rep in range(reps + 1):  # the first round is the warm-up
            if prof is not None and rep:
                prof.enable()
            elapsed, result = await bench.run()
            if prof is not None:
                prof.disable()
            check(name, size, result)
            if rep:
                jido_ms.append(elapsed * 1000)
            elapsed, result = await RAW[name](size)
            check(name, size, result)
            if rep:
                raw_ms.append(elapsed * 1000)
    if prof is not None and profile:
        prof.dump_stats(profile)
    return {
        f"s.{name}.jido": {"unit": "ms", "samples": jido_ms, "sizes": size},
        f"s.{name}.raw": {"unit": "ms", "samples": raw_ms, "sizes": size},
    }


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "run":
        # The Savina section of `nox -s bench` on its own, as one short table;
        # the peers only when asked (their figures do not move with jido_trio's).
        import run

        peers = "--peers" in args
        rest = [arg for arg in args if arg != "--peers"]
        return run.main(["--savina-only", *rest, *([] if peers else ["--skip-peers"])])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["run"])
    parser.add_argument("benchmark", choices=list(BENCHMARKS))
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="smoke-test sizes")
    parser.add_argument("--profile", help="write cProfile stats of the jido_trio runs here")
    ns = parser.parse_args(args)
    size = sizes(ns.quick)[ns.benchmark]
    metrics = trio.run(measure, ns.benchmark, size, ns.reps, ns.profile)
    versions = {"python": sys.version.split()[0], "trio": trio.__version__}
    print(json.dumps({"metrics": metrics, "versions": versions}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
