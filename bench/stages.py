"""CPU per transfer of each stage of the node, in one process, without HTTP: for working on
the node's hot path (steadier than the end-to-end figures on a busy machine).

    python -m bench.stages [--transfers 20000] [--batch 1000]

Starts a node on a temporary data directory, admits members, signs transfers (in worker
processes), then times, per transfer: batch bodies read in the signature workers as the
batch handler reads them (``Node.read_transfers``: the event loop's CPU and the workers'),
strict parsing of batch bodies on the loop (``parse_json`` and ``parse_transfer_item``),
``Node.verify`` over a batch (wall time and process CPU), the writer's commit (submit a
batch, await every outcome), and the single-transfer path as ``POST /v1/transfers`` runs it
(``Node.read_transfers``, then the writer) from 64 concurrent tasks; then the WAL bytes a
commit of 16 transfers writes. Prints one line per stage.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from bench.procs import cpu_seconds
from bench.sign import Signer, member_key
from crypto.canonical import parse_json
from crypto.keys import read_key_file
from node import storage
from node.config import Config
from node.intake import parse_transfer_item
from node.server import settle_collector
from node.service import STEWARD_KEY, Node, init_data_dir
from node.writer import EventRequest
from protocol.messages import Admit, sign_message


def cpu() -> float:
    return time.process_time()


async def main_async(transfers: int, batch: int, members: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="tally-stages-"))
    data = work / "node"
    await init_data_dir(data, name="Stages")
    node = Node(data, Config())
    await node.start()
    settle_collector()  # as `tally node run` does once it serves
    try:
        assert node.writer is not None
        steward = read_key_file(data / STEWARD_KEY)[1]
        ledger = node.ledger.ledger_id
        now = node.clock_ms()
        admits = [sign_message(Admit(ledger, os.urandom(16).hex(), now + 3600_000, f"m{i}",
                                     member_key(7, i).public, 10**12, 10**12), steward)
                  for i in range(members)]
        reqs = [EventRequest(a, (frozenset({steward.public}), True)) for a in admits]
        node.writer.submit_all([*reqs])
        for r in reqs:
            await r.future
        with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
            signer = Signer(pool, os.cpu_count() or 1, ledger, 7, members)
            batch_bodies = signer.bodies(transfers, batch).split(b"\n")[:-1]
            singles = signer.bodies(transfers // 4).split(b"\n")[:-1]
            wal_bodies = signer.bodies(1600, 16).split(b"\n")[:-1]

        def line(name: str, seconds: float, n: int, extra: str = "") -> None:
            print(f"{name:28s} {seconds / n * 1e6:8.1f} µs/transfer {extra}", flush=True)

        # Parsed and checked in the signature workers (what the batch handler does): the
        # event loop's CPU, and the workers' (this process's descendants, from /proc).
        # (Starts every worker, and each one's first reading imports node.intake.)
        await asyncio.gather(*(node.read_transfers(body, batch)
                               for body in batch_bodies[: max(1, node.verifier.workers)]))
        c0, all0 = cpu(), cpu_seconds(os.getpid())
        for body in batch_bodies:
            await node.read_transfers(body, batch)
        loop_s = cpu() - c0
        line("read in workers (loop CPU)", loop_s, transfers,
             f"workers {(cpu_seconds(os.getpid()) - all0 - loop_s) / transfers * 1e6:.1f} "
             "µs/transfer")

        c0 = cpu()
        items = []
        for body in batch_bodies:
            doc = parse_json(body)
            items.append([parse_transfer_item(o, f"transfers[{i}]")
                          for i, o in enumerate(doc["transfers"])])
        line("parse (json + items)", cpu() - c0, transfers)

        c0, w0 = cpu(), time.perf_counter()
        checks = []
        for group in items:
            checks.append(await node.verify([it.signed for it in group]))
        line("verify (process CPU)", cpu() - c0, transfers,
             f"wall {(time.perf_counter() - w0) / transfers * 1e6:.1f} µs/transfer")
        assert all(c[1] for cs in checks for c in cs)

        c0, w0 = cpu(), time.perf_counter()
        for group, cs in zip(items, checks):
            rs = [EventRequest(it.signed, c, it.memo) for it, c in zip(group, cs)]
            node.writer.submit_all(rs)
            for r in rs:
                assert (await r.future).code.value == "ok"
        line("writer (process CPU)", cpu() - c0, transfers,
             f"wall {(time.perf_counter() - w0) / transfers * 1e6:.1f} µs/transfer")

        queue = list(singles)
        writer = node.writer
        c0, w0 = cpu(), time.perf_counter()

        async def worker() -> None:
            while queue:
                ((item, check),) = await node.read_transfers(queue.pop())  # type: ignore[misc]
                out = await writer.submit(item.signed, check, item.memo)
                assert out.code.value == "ok", out

        await asyncio.gather(*(worker() for _ in range(64)))
        line("single path, 64 tasks (CPU)", cpu() - c0, len(singles),
             f"wall {(time.perf_counter() - w0) / len(singles) * 1e6:.1f} µs/transfer")

        # WAL written per commit of 16 transfers (about figure 1's group commits), with
        # automatic checkpoints off so that the file only grows.
        assert node.db is not None
        await node.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        await node.db.execute("PRAGMA wal_autocheckpoint=0")
        wal = data / f"{storage.DB_FILE}-wal"
        size0, w0 = wal.stat().st_size, time.perf_counter()
        for body in wal_bodies:
            read = await node.read_transfers(body, 16)
            outcomes = await node.writer.submit_batch(
                [(item.signed, check, item.memo) for item, check in read])  # type: ignore[misc]
            assert all(o.code.value == "ok" for o in outcomes)
        n = len(wal_bodies)
        print(f"{'WAL per commit of 16':28s} {(wal.stat().st_size - size0) / n / 1024:8.1f} "
              f"KiB/commit wall {(time.perf_counter() - w0) / n * 1e3:.2f} ms/commit", flush=True)
    finally:
        await node.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transfers", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--members", type=int, default=256)
    args = parser.parse_args()
    asyncio.run(main_async(args.transfers, args.batch, args.members))


if __name__ == "__main__":
    main()
