"""Ceilings: what this machine does at most, measured in the same run as the node's figures.

Run in worker processes of the benchmark's pool (never in the node, never in the load
generator), each for a fixed time:

- Ed25519 verifications per second with PyNaCl (libsodium), over the very bytes a transfer
  signs (the RFC 8785 form of a transfer message), on one core and on every core at once;
- durable SQLite inserts per second: rows of a log entry's size, in batches, each batch one
  ``BEGIN IMMEDIATE … COMMIT`` in WAL mode with ``synchronous=FULL`` — the storage the node
  uses, without the node.

The bare aiohttp handler ceiling is a server (``bench.bare``) driven by the load generator.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import nacl.signing
from nacl.bindings import crypto_sign_open

from crypto.canonical import canonical_json
from protocol.messages import Transfer


def _verify_triples(n: int = 64) -> list[tuple[bytes, bytes, bytes]]:
    """(public key, signed bytes, signature) of ``n`` transfers, each by a key of its own."""
    out = []
    for i in range(n):
        sk = nacl.signing.SigningKey(os.urandom(32))
        msg = Transfer("ab" * 32, os.urandom(16).hex(), f"m{i}", f"m{i + 1}", 100 + i, None,
                       int(time.time() * 1000) + 3600_000)
        body = canonical_json(msg.to_json())
        out.append((bytes(sk.verify_key), body, sk.sign(body).signature))
    return out


def verify_rate(seconds: float, start_at: float = 0.0) -> float:
    """Verifications per second on this process's one thread, for ``seconds``.

    ``start_at`` (a time.time()) lines up workers measured together, so that each one's
    timed window is the same wall-clock interval."""
    triples = _verify_triples()
    while time.time() < start_at:
        time.sleep(0.001)
    done = 0
    t0 = time.perf_counter()
    stop = t0 + seconds
    while True:
        for pk, body, sig in triples:
            # libsodium's call itself, as the node's signature workers make it
            # (``node.sigworker.open_signed``): the fastest check PyNaCl offers.
            crypto_sign_open(sig + body, pk)
        done += len(triples)
        now = time.perf_counter()
        if now >= stop:
            return done / (now - t0)


def sqlite_rate(path: str, batch: int, seconds: float, row_bytes: int = 400) -> float:
    """Durable inserted rows per second, ``batch`` rows per committed transaction."""
    p = Path(path)
    for suffix in ("", "-wal", "-shm"):
        Path(str(p) + suffix).unlink(missing_ok=True)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE log (idx INTEGER PRIMARY KEY, entry BLOB NOT NULL)")
        payload = os.urandom(row_bytes)
        idx = 0
        t0 = time.perf_counter()
        stop = t0 + seconds
        while True:
            rows = [(idx + k, payload) for k in range(batch)]
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO log (idx, entry) VALUES (?, ?)", rows)
            db.execute("COMMIT")
            idx += batch
            now = time.perf_counter()
            if now >= stop:
                return idx / (now - t0)
    finally:
        db.close()
        for suffix in ("", "-wal", "-shm"):
            Path(str(p) + suffix).unlink(missing_ok=True)
