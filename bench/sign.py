"""Signing transfers before the timed phase, in worker processes (one per core).

Members are numbered ``m0 … m{n-1}`` with keys made from fixed seeds; transfer ``i`` is paid
by member ``i mod n`` (so every payer key takes an equal share, and no one key meets a rate
limit first) to another member chosen so that payer and payee always differ.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import Executor

from crypto.canonical import canonical_json
from crypto.keys import SecretKey
from node.client import transfer_body


def member_seed(run_seed: int, i: int) -> bytes:
    return hashlib.sha256(f"tally-bench/{run_seed}/member/{i}".encode()).digest()


def member_key(run_seed: int, i: int) -> SecretKey:
    return SecretKey(member_seed(run_seed, i))


def pair(i: int, members: int) -> tuple[int, int]:
    payer = i % members
    payee = (payer + 1 + (i // members) % (members - 1)) % members
    return payer, payee


def sign_bodies(ledger_id: str, run_seed: int, members: int, start: int, count: int,
                per_body: int) -> bytes:
    """Request bodies, one per line: a single transfer (``per_body == 1``, for
    /v1/transfers) or ``{"transfers": [...]}`` with ``per_body`` of them (the batch route)."""
    keys = [member_key(run_seed, i) for i in range(members)]
    items = []
    for i in range(start, start + count):
        a, b = pair(i, members)
        items.append(transfer_body(keys[a], ledger_id, f"m{a}", f"m{b}", 1 + (i * 7919) % 100))
    if per_body == 1:
        lines = [canonical_json(item) for item in items]
    else:
        lines = [canonical_json({"transfers": items[k : k + per_body]})
                 for k in range(0, len(items), per_body)]
    return b"\n".join(lines) + b"\n"


class Signer:
    """Hands out fresh transfer numbers so that no two bodies carry the same transfer."""

    def __init__(self, pool: Executor, workers: int, ledger_id: str, run_seed: int,
                 members: int) -> None:
        self.pool = pool
        self.workers = workers
        self.ledger_id = ledger_id
        self.run_seed = run_seed
        self.members = members
        self.next = 0

    def bodies(self, transfers: int, per_body: int = 1) -> bytes:
        """Sign ``transfers`` transfers (rounded up to whole bodies) across the pool."""
        bodies = -(-transfers // per_body)
        per_worker = -(-bodies // self.workers)
        jobs = []
        for w in range(self.workers):
            n = min(per_worker, bodies - w * per_worker)
            if n <= 0:
                break
            jobs.append(self.pool.submit(sign_bodies, self.ledger_id, self.run_seed,
                                         self.members, self.next, n * per_body, per_body))
            self.next += n * per_body
        return b"".join(j.result() for j in jobs)
