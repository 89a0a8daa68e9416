"""Two nodes in one Trio run, talking through a shared in-process hub.

The local plugin connects every node whose config names the same hub:
``plugin_options={"local": {"hub": "demo"}}`` shares the registry, coordination,
memory state and the transport between them. The application code is the same
as it would be with nodes in different processes or machines.

    python examples/multi_node.py
"""

from __future__ import annotations

import attrs
import trio

import jido_trio as jt


@attrs.frozen
class Account:
    balance: int = 0


class Wallet(jt.Agent):
    type = "wallet"
    State = Account

    @jt.action("deposit")
    async def deposit(self, state: Account, amount: int) -> Account:
        return attrs.evolve(state, balance=state.balance + amount)

    @jt.action("withdraw")
    async def withdraw(self, state: Account, amount: int) -> Account:
        if amount > state.balance:
            raise ValueError(f"insufficient funds: {state.balance} < {amount}")
        self.ctx.reply(state.balance - amount)
        return attrs.evolve(state, balance=state.balance - amount)


async def main() -> None:
    config = jt.Config(plugin_options={"local": {"hub": "demo"}})
    async with (
        jt.open_node(config, name="alpha") as alpha,
        jt.open_node(config, name="beta") as beta,
    ):
        await alpha.start_agent(Wallet, "wallet-42")

        # beta finds the agent through the shared registry; the ref says where it lives.
        ref = await beta.lookup("wallet-42")
        print(f"beta looked up {ref.id!r}: owned by node {ref.node!r}")

        # Same API as for a local agent: the Communication layer encodes the envelope
        # and hands bytes to the transport.
        receipt = await beta.send_instruction(ref, jt.Instruction("deposit", {"amount": 100}))
        print("deposit from beta:", receipt.status)
        left = await beta.call(ref, jt.Instruction("withdraw", {"amount": 30}))
        print("withdraw 30 from beta ->", left)

        # An action's exception crosses the node boundary as ActionError with the
        # remote type and text (the original traceback stays on the owning node).
        try:
            await beta.call(ref, jt.Instruction("withdraw", {"amount": 1_000}))
        except jt.ActionError as exc:
            print(f"remote failure: {exc.remote_type}: {exc.remote_message}")

        # Idempotency holds across nodes: the instruction id travels with it.
        instruction = jt.Instruction("deposit", {"amount": 5}, id="transfer-7")
        for sender in (beta, alpha):
            print(
                f"deposit 'transfer-7' via {sender.name}:",
                (await sender.send_instruction(ref, instruction)).status,
            )

        for level in ("strong", "eventual", "weak"):
            state = await beta.query_agent(ref, consistency=level)
            print(f"query_agent from beta, {level:8} ->", state)
        # DEGRADED: the failed withdraw crashed the agent ("let it crash") and its
        # supervisor restarted it less than Config.max_seconds ago.
        print("health from beta:", await beta.check_agent_health(ref))

    # Without a hub, a node is alone: a ref owned by another node cannot be reached.
    async with jt.open_node(name="loner") as loner:
        far = jt.AgentRef.new("wallet-42", "wallet", node="alpha")
        try:
            await loner.send_instruction(far, jt.Instruction("deposit", {"amount": 1}))
        except jt.RemoteNotSupported as exc:
            print("without a hub:", type(exc).__name__)
        print("health without a hub:", await loner.check_agent_health(far))


if __name__ == "__main__":
    trio.run(main)
