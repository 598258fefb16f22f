"""Build a large ledger quickly, for benchmarks and for trying ``tally audit`` at scale.

    python -m bench.make_log --data /tmp/big --entries 1000000

Every transfer is really signed by its payer and goes through the node's own writer (ledger
rules, log, Merkle tree, checkpoints), so the result is a log an auditor must accept; only
HTTP is skipped, and signatures are known good because this script made them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from pathlib import Path

from crypto.keys import SecretKey, read_key_file
from node.config import Config, LogSettings
from node.service import STEWARD_KEY, Node, init_data_dir
from node.writer import EventRequest
from protocol.messages import Admit, Transfer, sign_message


async def build(data: Path, entries: int, members: int, seed: int) -> None:
    rng = random.Random(seed)
    if not data.exists():
        await init_data_dir(data, name="Bench Co-op")
    node = Node(data, Config(log=LogSettings(public_entries=True)))
    await node.start()
    try:
        assert node.writer is not None
        steward = read_key_file(data / STEWARD_KEY)[1]
        ledger = node.ledger.ledger_id
        keys = [SecretKey(rng.randbytes(32)) for _ in range(members)]
        now = node.clock_ms()
        admits = [
            sign_message(Admit(ledger, os.urandom(16).hex(), now + 3600_000, f"m{i}", k.public,
                               10**9, 10**9), steward)
            for i, k in enumerate(keys)
            if f"m{i}" not in node.ledger.accounts
        ]
        for signed in admits:
            await node.writer.submit(signed, (frozenset({steward.public}), True))
        todo = entries - node.ledger.size
        started = time.monotonic()
        done = 0
        while done < todo:
            batch = []
            now = node.clock_ms()
            for _ in range(min(2000, todo - done)):
                a, b = rng.sample(range(members), 2)
                t = Transfer(ledger, rng.randbytes(16).hex(), f"m{a}", f"m{b}",
                             rng.randint(1, 500), None, now + 3600_000)
                batch.append(EventRequest(sign_message(t, keys[a]),
                                          (frozenset({keys[a].public}), True)))
            node.writer.submit_all(batch)
            for r in batch:
                await r.future
            done += len(batch)
            rate = done / (time.monotonic() - started)
            print(f"\r{done}/{todo} transfers, {rate:.0f}/s", end="", file=sys.stderr)
        print(file=sys.stderr)
        assert node.checkpointer is not None
        await node.checkpointer.wait_for(node.ledger.size, 30)
    finally:
        await node.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(build(args.data, args.entries, args.members, args.seed))


if __name__ == "__main__":
    main()
