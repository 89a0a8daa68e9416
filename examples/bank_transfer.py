"""Money moves between accounts, and the total never changes, whatever crashes.

python examples/bank_transfer.py            # a run on a temporary SQLite file
python examples/bank_transfer.py load WHERE N [SEED]   # send N transfers (used by the crash tests)
python examples/bank_transfer.py settle WHERE N [SEED] # send them all again, print the balances

WHERE is an SQLite file, or ``nats://HOST:PORT/NAMESPACE`` for all four
engines on NATS JetStream (the plugin jido-trio-nats): the same code, the
same guarantee.

A transfer is an at-least-once instruction to the paying account, with an id
the client chose. Its action debits the account and sends the credit to the
other account with ``ctx.send(..., delivery="at_least_once")``: that message is
*held* until the debit is committed, committed with it, and only then sent
(see "One owner per agent" and ``Context.send`` in the docs). So a credit
never goes out for a debit that did not commit, and a committed debit's credit
is never lost, even if the process is killed between the two: the next start
sends it again, under an id derived from the transfer's, which the receiving
account applies once. Sending every transfer again by its id (``settle``)
applies each exactly once.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
from pathlib import Path

import attrs
import trio

import jido_trio as jt

ACCOUNTS = 10
OPENING = 1_000


@attrs.frozen
class Balance:
    amount: int = OPENING


class Account(jt.Agent):
    type = "bank-account"
    State = Balance

    @jt.action("transfer")
    async def transfer(self, state: Balance, to: str, amount: int) -> Balance | None:
        if amount > state.amount or to == self.ctx.ref.id:
            return None  # refused: nothing moves
        credit = jt.Instruction("credit", {"amount": amount})  # its id: derived from this one
        await self.ctx.send(jt.AgentRef.new(to, Account.type), credit, delivery="at_least_once")
        return Balance(state.amount - amount)

    @jt.action("credit")
    async def credit(self, state: Balance, amount: int) -> Balance:
        return Balance(state.amount + amount)

    @jt.action("balance")
    async def balance(self, state: Balance) -> None:
        self.ctx.reply(state.amount)


def config(where: str) -> jt.Config:
    """The bank's node: on the SQLite file ``where``, or on NATS when
    ``where`` is ``nats://HOST:PORT/NAMESPACE``."""
    if where.startswith("nats://"):
        server, _, namespace = where.removeprefix("nats://").partition("/")
        return jt.Config(
            node_name="bank",
            registry="nats",
            transport="nats",
            state="nats",
            coordination="nats",
            # Commits that fail during a JetStream election restart the
            # agent without counting; this rides out the rest.
            max_restarts=100,
            plugin_options={
                "nats": {
                    "servers": [f"nats://{server}"],
                    "namespace": namespace or "bank",
                    # A bank node started again under the same name waits for
                    # its killed predecessor's lease to lapse: keep it short.
                    "lease_ttl": 3.0,
                }
            },
        )
    return jt.Config(
        node_name="bank",
        state="sqlite",
        plugin_options={"sqlite": {"path": where}},
        max_restarts=100,
    )


def transfers(n: int, seed: int) -> list[tuple[str, str, str, int]]:
    """The same ``n`` transfers (id, from, to, amount) for a seed, every time."""
    rng = random.Random(seed)
    return [
        (
            f"tx-{i}",
            f"acct-{rng.randrange(ACCOUNTS)}",
            f"acct-{rng.randrange(ACCOUNTS)}",
            rng.randint(1, 150),
        )
        for i in range(n)
    ]


async def open_accounts(node: jt.Node) -> dict[str, jt.AgentRef]:
    ids = [f"acct-{i}" for i in range(ACCOUNTS)]
    return dict(zip(ids, await node.start_agents(Account, ids), strict=True))


async def send_transfers(node: jt.Node, refs: dict[str, jt.AgentRef], n: int, seed: int) -> None:
    for transfer_id, payer, payee, amount in transfers(n, seed):
        instruction = jt.Instruction("transfer", {"to": payee, "amount": amount}, id=transfer_id)
        await node.send_instruction(refs[payer], instruction, delivery="at_least_once")
        print(f"acked {transfer_id}", flush=True)


async def balances(node: jt.Node, refs: dict[str, jt.AgentRef]) -> dict[str, int]:
    return {
        agent_id: await node.call(ref, jt.Instruction("balance")) for agent_id, ref in refs.items()
    }


async def settle(where: str, n: int, seed: int) -> dict[str, int]:
    """Start again on ``where``, send every transfer again by id, and wait until
    every credit has arrived (the total is whole again)."""
    async with jt.open_node(config(where)) as node:
        refs = await open_accounts(node)
        await send_transfers(node, refs, n, seed)
        with trio.fail_after(30):
            while True:
                found = await balances(node, refs)
                if sum(found.values()) == ACCOUNTS * OPENING:
                    return found
                await trio.sleep(0.05)  # credits committed before the restart still arriving


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "bank.db")
        async with jt.open_node(config(path)) as node:
            refs = await open_accounts(node)
            await send_transfers(node, refs, 200, seed=1)
        found = await settle(path, 200, seed=1)  # a new process would do the same
        assert sum(found.values()) == ACCOUNTS * OPENING, found
        print("RESULT: OK, total", sum(found.values()))


async def load(where: str, n: int, seed: int) -> None:
    """Send ``n`` transfers on ``where``, printing each acknowledgement (the
    crash tests kill this process somewhere in the middle)."""
    async with jt.open_node(config(where)) as node:
        await send_transfers(node, await open_accounts(node), n, seed)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("load", "settle"):
        command, where, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
        seed = int(sys.argv[4]) if len(sys.argv) > 4 else 0
        if command == "load":
            trio.run(load, where, count, seed)
        else:
            print(json.dumps(trio.run(settle, where, count, seed)), flush=True)
    else:
        trio.run(main)
