"""A node killed with SIGKILL at random moments loses nothing it acknowledged and applies
nothing twice.

Members stream signed transfers (single and in batches, from several tasks at once) to a
real node process while the test kills it and starts it again on the same data directory.
Each client retries an unanswered transfer with the same signed bytes until it gets a
definite answer. Afterwards the books, read through the API and straight from the
database, must hold exactly the acknowledged transfers, once each, and the log must
replay from empty to the same balances and hash to the same Merkle root.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from crypto import merkle
from crypto.canonical import canonical_json, parse_json
from crypto.keys import SecretKey, read_key_file
from node import storage
from node.client import TallyClient, transfer_body
from protocol.codes import ResultCode
from protocol.ledger import Policy, apply, new_state
from protocol.messages import LogEntry, Transfer, parse_log_entry
from tests.integration.conftest import NodeProcess

SEED = 20261126
MEMBERS = [f"m{i}" for i in range(6)]
LIMIT = 500  # debit and credit: small enough that some transfers are refused
SENDERS = 4
GIVE_UP_S = 30.0  # a transfer with no definite answer by then fails the test

ACCEPTED = {ResultCode.ok.value, ResultCode.exists.value}
REFUSALS = {
    ResultCode.account_not_found.value,
    ResultCode.exceeds_debit_limit.value,
    ResultCode.exceeds_credit_limit.value,
}


@dataclass(frozen=True)
class Sent:
    id: str
    payer: str
    payee: str
    amount: int


@dataclass
class Books:
    """What the clients sent and what they were told."""

    sent: dict[str, Sent] = field(default_factory=dict)
    acked: dict[str, int] = field(default_factory=dict)  # id -> log index in the receipt
    refused: dict[str, str] = field(default_factory=dict)  # id -> result code
    retries: int = 0  # requests sent again after no definite answer

    def answer(self, transfer: Sent, result: dict[str, Any]) -> None:
        code = result["result"]
        assert transfer.id not in self.acked and transfer.id not in self.refused
        if code in ACCEPTED:
            assert result["id"] == transfer.id
            assert isinstance(result["index"], int) and result["index"] > 0
            self.acked[transfer.id] = result["index"]
        else:
            assert code in REFUSALS, f"unexpected answer {result}"
            self.refused[transfer.id] = code


async def post_until_answered(
    session: aiohttp.ClientSession, url: str, data: bytes, books: Books
) -> tuple[int, Any]:
    """POST the same bytes until the node gives a definite answer (not a fault, not busy)."""
    deadline = time.monotonic() + GIVE_UP_S
    first = True
    while True:
        assert time.monotonic() < deadline, f"no definite answer from {url} in {GIVE_UP_S}s"
        if not first:
            books.retries += 1
            await asyncio.sleep(0.05)
        first = False
        try:
            async with session.post(
                url, data=data, headers={"Content-Type": "application/json"}
            ) as resp:
                status, raw = resp.status, await resp.read()
        except (TimeoutError, aiohttp.ClientError, ConnectionError):
            continue
        if status in (429, 503) or status >= 500:
            continue
        return status, json.loads(raw)


async def sender(
    n: int,
    base: str,
    ledger_id: str,
    keys: dict[str, SecretKey],
    books: Books,
    stop: asyncio.Event,
) -> None:
    rng = random.Random(SEED * 100 + n)
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while not stop.is_set():
            count = rng.choice([1, 1, 1, rng.randint(2, 12)])
            bodies = []
            for _ in range(count):
                payer = rng.choice(MEMBERS)
                payee = rng.choice([m for m in MEMBERS if m != payer])
                if rng.random() < 0.05:  # someone never admitted: a definite refusal
                    payee = "nobody"
                memo = f"kill test {n}" if rng.random() < 0.3 else None
                body = transfer_body(
                    keys[payer], ledger_id, payer, payee, rng.randint(1, 150), memo,
                    transfer_id=rng.getrandbits(128).to_bytes(16, "big").hex(),
                )
                msg = body["transfer"]["msg"]
                books.sent[msg["id"]] = Sent(msg["id"], payer, payee, msg["amount"])
                bodies.append(body)
            if count == 1:
                status, doc = await post_until_answered(
                    session, base + "/v1/transfers", canonical_json(bodies[0]), books
                )
                t = books.sent[bodies[0]["transfer"]["msg"]["id"]]
                if status in (200, 201):
                    assert (status == 201) == (doc["result"] == "ok"), doc
                    books.answer(t, doc)
                else:
                    assert status == 422, doc
                    books.answer(t, {"result": doc["code"], "id": t.id})
            else:
                status, doc = await post_until_answered(
                    session, base + "/v1/transfers/batch",
                    canonical_json({"transfers": bodies}), books,
                )
                assert status == 200, doc
                assert len(doc["results"]) == count
                for body, result in zip(bodies, doc["results"]):
                    books.answer(books.sent[body["transfer"]["msg"]["id"]], result)
                assert doc["accepted"] == sum(r["result"] in ACCEPTED for r in doc["results"])


async def test_sigkill_loses_nothing_acknowledged_and_applies_nothing_twice(
    node_process: NodeProcess,
) -> None:
    rng = random.Random(SEED)
    url = await node_process.start()
    _, steward = read_key_file(node_process.data_dir / "steward.key")
    keys = {m: SecretKey(os.urandom(32)) for m in MEMBERS}
    async with TallyClient(url, steward, retries=0) as admin:
        for m in MEMBERS:
            receipt = await admin.admit(m, keys[m].public, [steward], LIMIT, LIMIT)
            assert receipt["result"] == "ok"
        ledger_id = (await admin.info()).ledger_id

    books = Books()
    stop = asyncio.Event()
    senders = [
        asyncio.create_task(sender(n, url, ledger_id, keys, books, stop)) for n in range(SENDERS)
    ]
    acked_before_kill = []
    try:
        for _ in range(rng.choice([3, 4])):
            await asyncio.sleep(rng.uniform(0.3, 1.5))
            acked_before_kill.append(len(books.acked))
            node_process.kill()
            await asyncio.sleep(rng.uniform(0.0, 0.3))
            assert await node_process.start() == url
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*senders), GIVE_UP_S + 5)
    finally:
        stop.set()
        for task in senders:
            task.cancel()
        await asyncio.gather(*senders, return_exceptions=True)

    # The run did what it claims: transfers were acknowledged between every two kills and
    # after the last restart, and some requests were cut off and sent again.
    progress = acked_before_kill + [len(books.acked)]
    assert all(a < b for a, b in zip(progress, progress[1:])), progress
    assert progress[0] > 0
    assert books.retries > 0
    assert set(books.acked) | set(books.refused) == set(books.sent), "a transfer got no answer"
    assert books.refused, "no transfer was refused: the limits were never reached"

    expected = {m: 0 for m in MEMBERS}
    for tid in books.acked:
        t = books.sent[tid]
        expected[t.payer] -= t.amount
        expected[t.payee] += t.amount

    # --- through the API, as a member or steward would see it ------------------------------
    async with TallyClient(url, steward, retries=3, timeout=20) as reader:
        gate = asyncio.Semaphore(16)

        async def check_event(tid: str) -> None:
            async with gate:
                event = await reader.event(tid)
            t = books.sent[tid]
            assert event["result"] == "ok" and event["type"] == "transfer"
            assert event["index"] == books.acked[tid], tid
            assert (event["payer"], event["payee"], event["amount"]) == (t.payer, t.payee, t.amount)

        await asyncio.gather(*(check_event(tid) for tid in books.acked))

        accounts = {a["handle"]: a for a in await reader.accounts()}
        assert set(accounts) == set(MEMBERS)
        assert sum(a["balance"] for a in accounts.values()) == 0
        for m in MEMBERS:
            a = accounts[m]
            assert a["balance"] == expected[m], m
            assert -a["debit_limit"] <= a["balance"] <= a["credit_limit"], a
            postings = await reader.history(m)
            ids = Counter(p["id"] for p in postings)
            assert all(c == 1 for c in ids.values()), f"{m}: an id posted twice"
            mine = {
                tid: (-t.amount if t.payer == m else t.amount)
                for tid, t in ((i, books.sent[i]) for i in books.acked)
                if m in (t.payer, t.payee)
            }
            assert {p["id"]: p["amount"] for p in postings} == mine, m
            assert all(p["index"] == books.acked[p["id"]] for p in postings)
            assert sum(p["amount"] for p in postings) == a["balance"], m

    assert await node_process.stop() == 0, node_process.stderr_tail()

    # --- straight from the database ----------------------------------------------------------
    db = sqlite3.connect(f"file:{node_process.data_dir / storage.DB_FILE}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT idx, entry FROM log ORDER BY idx").fetchall()
        account_rows = db.execute(f"SELECT {storage.ACCOUNT_COLUMNS} FROM accounts").fetchall()
        event_rows = db.execute("SELECT id, idx FROM events").fetchall()
        stored = dict(db.execute("SELECT idx, hash FROM tree_hashes").fetchall())
    finally:
        db.close()

    size = len(rows)
    assert [idx for idx, _ in rows] == list(range(size)), "the log has a gap"
    entries = [bytes(entry) for _, entry in rows]

    # Replaying the log from empty gives every balance in the accounts table.
    state = new_state(parse_log_entry(parse_json(entries[0])).payload, entries[0])
    logged: dict[str, int] = {}
    for idx, raw in enumerate(entries[1:], start=1):
        entry: LogEntry = parse_log_entry(parse_json(raw))
        assert entry.encode() == raw, f"entry {idx} is not stored in canonical form"
        outcome = apply(state, entry.payload, entry.node_time, Policy(max_valid_window_ms=None))
        assert (outcome.code, outcome.index) == (ResultCode.ok, idx), (idx, outcome)
        msg = entry.payload.msg
        if isinstance(msg, Transfer):
            assert msg.id not in logged
            logged[msg.id] = idx
    assert logged == books.acked, "the log holds other transfers than those acknowledged"
    tables = {row[0]: storage.account_from_row(row) for row in account_rows}
    assert tables == state.accounts
    assert {h: a.balance for h, a in tables.items()} == expected
    assert dict(event_rows) == {tid: seen.index for tid, seen in state.seen.items()}

    # The stored Merkle hashes are exactly those of the log: same root, nothing extra.
    reference = merkle.MerkleTree()
    for raw in entries:
        reference.append(raw)
    indexes = merkle.tree_hash_indexes(size)
    assert merkle.tree_hash(size, [bytes(stored[i]) for i in indexes]) == reference.root()
    assert sorted(stored) == list(range(merkle.stored_hash_count(size)))
