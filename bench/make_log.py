"""Build a large ledger quickly, for benchmarks and for trying ``tally audit`` at scale.

    python -m bench.make_log --data /tmp/big --entries 1000000

Every transfer is really signed by its payer and goes through the node's own writer (ledger
rules, log, Merkle tree, checkpoints), so the result is a log an auditor must accept; only
HTTP is skipped, and signatures are known good because this script made them. Transfers are
signed in worker processes (``--workers``, default one per core; 0 signs in this process)
while the writer commits the previous chunk.

Members are ``m0 … m{members-1}``; ``member_keys(seed, members)`` gives their keys again.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

from crypto.keys import SecretKey, read_key_file
from node.config import Config, LogSettings
from node.service import STEWARD_KEY, Node, init_data_dir
from node.writer import EventRequest
from protocol.messages import Admit, Signature, Signed, Transfer, sign_message

CHUNK = 2000


def member_keys(seed: int, members: int) -> list[SecretKey]:
    rng = random.Random(seed)
    return [SecretKey(rng.randbytes(32)) for _ in range(members)]


def sign_chunk(ledger: str, seeds: list[bytes], seed: str, chunk: int, count: int,
               valid_until: int) -> list[tuple[str, int, int, int, str]]:
    """(id, payer, payee, amount, signature) for ``count`` transfers of chunk number ``chunk``."""
    rng = random.Random(f"{seed}/chunk/{chunk}")
    keys = [SecretKey(s) for s in seeds]
    out = []
    for _ in range(count):
        a, b = rng.sample(range(len(keys)), 2)
        t = Transfer(ledger, rng.randbytes(16).hex(), f"m{a}", f"m{b}", rng.randint(1, 500),
                     None, valid_until)
        out.append((t.id, a, b, t.amount, sign_message(t, keys[a]).sigs[0].sig))
    return out


async def build(data: Path, entries: int, members: int, seed: int, workers: int = 0) -> None:
    if not data.exists():
        await init_data_dir(data, name="Bench Co-op")
    node = Node(data, Config(log=LogSettings(public_entries=True)))
    await node.start()
    try:
        assert node.writer is not None
        steward = read_key_file(data / STEWARD_KEY)[1]
        ledger = node.ledger.ledger_id
        keys = member_keys(seed, members)
        seeds = [k.seed for k in keys]
        now = node.clock_ms()
        admits = [
            sign_message(Admit(ledger, os.urandom(16).hex(), now + 3600_000, f"m{i}", k.public,
                               10**9, 10**9), steward)
            for i, k in enumerate(keys)
            if f"m{i}" not in node.ledger.accounts
        ]
        requests = [EventRequest(a, (frozenset({steward.public}), True)) for a in admits]
        node.writer.submit_all([*requests])
        for r in requests:
            await r.future
        todo = max(0, entries - node.ledger.size)
        run = f"{seed}/{node.ledger.size}"  # a resumed build draws fresh transfer ids
        # valid_until is fixed for the whole build: within the node's window, and far enough
        # ahead that a long build does not outlive it.
        valid_until = now + 6 * 3600_000
        chunks = [(n, min(CHUNK, todo - n * CHUNK)) for n in range(-(-todo // CHUNK))]
        pool = ProcessPoolExecutor(workers) if workers > 0 else None
        pending: deque[Future[list[tuple[str, int, int, int, str]]]] = deque()
        started = time.monotonic()
        done = 0
        try:
            for k, (n, count) in enumerate(chunks):
                if pool is None:
                    signed = sign_chunk(ledger, seeds, run, n, count, valid_until)
                else:
                    while len(pending) < workers + 1 and k + len(pending) < len(chunks):
                        m, c = chunks[k + len(pending)]
                        pending.append(pool.submit(sign_chunk, ledger, seeds, run, m, c,
                                                   valid_until))
                    signed = pending.popleft().result()
                batch = []
                for tid, a, b, amount, sig in signed:
                    t = Transfer(ledger, tid, f"m{a}", f"m{b}", amount, None, valid_until)
                    batch.append(EventRequest(Signed(t, (Signature(keys[a].public, sig),)),
                                              (frozenset({keys[a].public}), True)))
                node.writer.submit_all([*batch])
                for r in batch:
                    outcome = await r.future
                    if outcome.code.value != "ok":
                        raise RuntimeError(f"a generated transfer was refused: {outcome}")
                done += len(batch)
                rate = done / (time.monotonic() - started)
                print(f"\r{done}/{todo} transfers, {rate:.0f}/s", end="", file=sys.stderr)
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
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
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="signing processes (0: sign in this process)")
    args = parser.parse_args()
    asyncio.run(build(args.data, args.entries, args.members, args.seed, args.workers))


if __name__ == "__main__":
    main()
