"""Every checkpoint a node served stays true after it is killed with SIGKILL and restarted.

Members stream transfers to a real node process while a watcher fetches /log/checkpoint over
and over, keeping every distinct signed checkpoint it was served. The node is killed at
seeded random moments and started again on the same data directory. Afterwards each
checkpoint ever served must be consistent with the final one (an RFC 6962 consistency proof
from the node, checked here), and the final checkpoint's root must be the Merkle root of
every entry in the node's database.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import random
import sqlite3
import time

import aiohttp
import pytest

from crypto import merkle
from crypto.canonical import canonical_json
from crypto.checkpoint import Checkpoint, parse_checkpoint
from crypto.keys import SecretKey, read_key_file
from crypto.note import Verifier, open_note, parse_verifier_key
from node import storage
from node.client import TallyClient, transfer_body
from tests.integration.conftest import NodeProcess

SEED = 7331
MEMBERS = [f"m{i}" for i in range(4)]
KILLS = 3
DELAY_MS = 200
NETWORK_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)


async def stream_transfers(
    url: str, ledger_id: str, keys: dict[str, SecretKey], n: int, stop: asyncio.Event
) -> int:
    """POST small batches until told to stop, through kills; returns how many were accepted."""
    rng = random.Random(SEED * 10 + n)
    accepted = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session:
        while not stop.is_set():
            bodies = []
            for _ in range(rng.randint(1, 8)):
                payer, payee = rng.sample(MEMBERS, 2)
                bodies.append(transfer_body(keys[payer], ledger_id, payer, payee,
                                            rng.randint(1, 20)))
            try:
                async with session.post(
                    url + "/v1/transfers/batch", data=canonical_json({"transfers": bodies}),
                    headers={"Content-Type": "application/json"},
                ) as resp:
                    if resp.status == 200:
                        accepted += (await resp.json())["accepted"]
            except NETWORK_ERRORS:
                await asyncio.sleep(0.02)
    return accepted


async def watch_checkpoints(url: str, seen: list[bytes], stop: asyncio.Event) -> None:
    """GET /log/checkpoint as fast as it answers; keep each distinct note in order served."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while not stop.is_set():
            try:
                async with session.get(url + "/log/checkpoint") as resp:
                    if resp.status == 200:
                        note = await resp.read()
                        if not seen or seen[-1] != note:
                            seen.append(note)
            except NETWORK_ERRORS:
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.005)


def opened(note: bytes, verifier: Verifier) -> Checkpoint:
    return parse_checkpoint(open_note(note, [verifier]).text)


@pytest.mark.timeout(90)
async def test_checkpoints_served_before_sigkills_stay_consistent(
    node_process: NodeProcess,
) -> None:
    began = time.monotonic()
    rng = random.Random(SEED)
    config = node_process.data_dir / "config.toml"
    config.write_text(config.read_text() + f"\n[log]\ncheckpoint_delay_ms = {DELAY_MS}\n")
    url = await node_process.start()
    _, steward = read_key_file(node_process.data_dir / "steward.key")
    keys = {m: SecretKey(os.urandom(32)) for m in MEMBERS}
    async with TallyClient(url, steward, retries=0) as admin:
        for m in MEMBERS:
            assert (await admin.admit(m, keys[m].public, [steward], 10**6, 10**6))["result"] == "ok"
        ledger_id = (await admin.info()).ledger_id
        verifier = parse_verifier_key((await admin.get_text("/log/vkey")).strip())

    seen: list[bytes] = []
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch_checkpoints(url, seen, stop))
    senders = [asyncio.create_task(stream_transfers(url, ledger_id, keys, n, stop))
               for n in range(2)]
    seen_before_kill = []
    try:
        for _ in range(KILLS):
            await asyncio.sleep(rng.uniform(0.6, 1.6))
            seen_before_kill.append(len(seen))
            node_process.kill()
            await asyncio.sleep(rng.uniform(0.0, 0.2))
            assert await node_process.start() == url
        await asyncio.sleep(1.0)
    finally:
        stop.set()
        accepted = sum(await asyncio.gather(*senders))
        await watcher

    # The run did what it claims: new checkpoints were served between kills and after.
    progress = seen_before_kill + [len(seen)]
    assert progress[0] > 0 and all(a < b for a, b in itertools.pairwise(progress)), progress
    assert accepted > 0

    # Quiet now: the node covers its whole log with a checkpoint within about the delay.
    deadline = time.monotonic() + 10
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(url + "/v1/health") as resp:
                log_size = (await resp.json())["log_size"]
            async with session.get(url + "/log/checkpoint") as resp:
                final_note = await resp.read()
            final = opened(final_note, verifier)
            if final.size == log_size:
                break
            assert time.monotonic() < deadline, (final.size, log_size)
            await asyncio.sleep(0.05)

        # Every checkpoint ever served is a prefix of the final log.
        last_size = 0
        checked = 0
        for note in seen:
            cp = opened(note, verifier)
            assert cp.origin == final.origin
            assert cp.size >= last_size, "a restarted node served a smaller checkpoint"
            last_size = cp.size
            assert cp.size <= final.size
            if cp.size == final.size:
                assert cp.root == final.root, "two checkpoints of one size differ"
                continue
            async with session.get(
                f"{url}/v1/log/consistency?old={cp.size}&new={final.size}"
            ) as resp:
                assert resp.status == 200, await resp.text()
                proof = [base64.b64decode(h) for h in (await resp.json())["proof"]]
            assert merkle.verify_consistency(cp.size, final.size, cp.root, final.root, proof), (
                f"checkpoint of {cp.size} served earlier is not a prefix of the final log"
            )
            checked += 1
    assert checked >= KILLS
    assert await node_process.stop() == 0, node_process.stderr_tail()

    # The final root is the Merkle root of every entry the node kept.
    db = sqlite3.connect(f"file:{node_process.data_dir / storage.DB_FILE}?mode=ro", uri=True)
    try:
        entries = [bytes(e) for (e,) in db.execute("SELECT entry FROM log ORDER BY idx")]
    finally:
        db.close()
    assert len(entries) == final.size
    assert merkle.MerkleTree([merkle.leaf_hash(e) for e in entries]).root() == final.root
    assert time.monotonic() - began < 40
