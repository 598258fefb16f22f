"""Two collectives' nodes, killed with SIGKILL at random moments while members pay across
their credit line: every payment ends the same way on both ledgers, and as its payer was told.

A (a time bank counting minutes) and B (a co-op counting cents) run as real node processes
and agree a credit line through the API (3 cents per 2 minutes). Client tasks stream
payments A→B and B→A with ``TallyClient.pay_remote``; the test kills one node or the other
3–4 times at seeded moments and restarts it on the same data directory and port.

A payer is told one result per payment: done (a receipt) or a refusal code. When the request
itself fails (its node was killed mid-request) the payer does not pay again: the order is
unknown until, once things settle, ``GET /v1/payments/{order}`` says what became of it.

Afterwards, once every hold has expired and every decision was resent: both ledgers sum to
zero; every hold on each is posted or voided, within its bounds; the holds posted on one
side are exactly those posted on the other, in pairs at the line's rate, and the peer
accounts are the sums of those pairs; each payment its payer was told succeeded is credited
once to its payee, and none told failed is credited at all; and each log replays from empty
to the same books.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import node.client as client_module
from crypto.canonical import parse_json
from crypto.keys import PublicKey, SecretKey, read_key_file
from node import storage
from node.client import TallyClient, TallyError
from node.service import init_data_dir
from protocol.codes import ResultCode
from protocol.federation import Decision, Fulfil, Line, Prepare, Reject, peer_handle
from protocol.ledger import Hold, LedgerState, Policy, apply, new_state
from protocol.messages import Unit, parse_log_entry
from tests.integration.conftest import TEST_CONFIG, NodeProcess

SEED = 20261127
RATE = (3, 2)  # B's cents per A's minute
A_LIMIT = 3000  # minutes B may owe A
B_LIMIT = 3000  # cents A may owe B (2000 minutes): the line fills up now and then
MEMBER_LIMIT = 4000
# a2 and b2 only receive, and may hold little: once they are full, payments to them are
# refused by the payee's collective (a REJECT, after the payer's side held the amount).
SMALL_CREDIT = {"a2": 200, "b2": 300}
MAX_HOLD_MS = 10_000
CONFIG = TEST_CONFIG + """
[federation]
margin_ms = 2000
payment_timeout_ms = 6000
max_hold_ms = 10000
quote_ttl_ms = 10000
peer_timeout_ms = 2000
# Per-peer rate limits, like the members' in TEST_CONFIG: the streams here are far faster.
peer_rate_per_second = 1000000.0
peer_rate_burst = 1000000
"""
MEMBERS = {"A": ["a0", "a1", "a2"], "B": ["b0", "b1", "b2"]}
# Who streams: two tasks pay A→B, two B→A.
TASKS = ["A", "A", "B", "B"]
SETTLE_S = 25.0


@dataclass
class Collective:
    name: str
    proc: NodeProcess
    steward: SecretKey
    node_key: PublicKey
    keys: dict[str, SecretKey] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.proc.url


@dataclass(frozen=True)
class Order:
    id: str
    side: str  # the payer's collective
    payer: str
    payee: str
    amount: int  # in the payee's unit


@dataclass
class Books:
    """What the payers sent and what they were told."""

    orders: dict[str, Order] = field(default_factory=dict)
    done: dict[str, dict[str, Any]] = field(default_factory=dict)  # order -> receipt
    refused: dict[str, str] = field(default_factory=dict)  # order -> code
    unknown: set[str] = field(default_factory=set)  # the request failed: ask later
    resolved: dict[str, str] = field(default_factory=dict)  # unknown order -> what it became

    def told(self, order: str) -> None:
        assert order not in self.done and order not in self.refused and order not in self.unknown


async def start_collectives(tmp_path: Path, nodes: dict[str, tuple[str, Unit]],
                            config: str) -> AsyncIterator[dict[str, Collective]]:
    """One node process per side, each with its own data directory and ``config``; every
    process is cleaned up when the caller is done (also the kill tests' survivors)."""
    procs: list[NodeProcess] = []
    try:
        out: dict[str, Collective] = {}
        for side, (name, unit) in nodes.items():
            data, logs = tmp_path / side, tmp_path / f"{side}-logs"
            data.mkdir(mode=0o700)
            logs.mkdir()
            (data / "config.toml").write_text(config)
            await init_data_dir(data, name=name, unit=unit)
            proc = NodeProcess(data, logs)
            procs.append(proc)
            await proc.start()
            _, steward = read_key_file(data / "steward.key")
            _, node_key = read_key_file(data / "node.key")
            out[side] = Collective(name, proc, steward, node_key.public)
        yield out
    finally:
        for proc in procs:
            proc.cleanup()


@pytest.fixture
async def collectives(tmp_path: Path) -> AsyncIterator[dict[str, Collective]]:
    nodes = {"A": ("Riverside", Unit("HOUR", "hours", 60)),
             "B": ("Greenway", Unit("CREDIT", "credits", 100))}
    async for out in start_collectives(tmp_path, nodes, CONFIG):
        yield out


async def setup_line(c: dict[str, Collective]) -> Line:
    a, b = c["A"], c["B"]
    async with TallyClient(a.url, a.steward, retries=0) as admin_a, \
            TallyClient(b.url, b.steward, retries=0) as admin_b:
        for side, admin in (("A", admin_a), ("B", admin_b)):
            for handle in MEMBERS[side]:
                key = SecretKey(os.urandom(32))
                c[side].keys[handle] = key
                receipt = await admin.admit(handle, key.public, [c[side].steward],
                                            MEMBER_LIMIT, SMALL_CREDIT.get(handle, MEMBER_LIMIT))
                assert receipt["result"] == "ok"
        proposed = await admin_a.propose_line(b.url, [a.steward], A_LIMIT, B_LIMIT, *RATE)
        await admin_b.accept_line(proposed["line"], [b.steward])
        at_a, at_b = (await admin_a.lines())["lines"], (await admin_b.lines())["lines"]
    assert [(x["id"], x["status"]) for x in at_a] == [(proposed["line"], "active")]
    assert [(x["id"], x["status"]) for x in at_b] == [(proposed["line"], "active")]
    assert at_a[0]["account"]["credit_limit"] == B_LIMIT * RATE[1] // RATE[0]
    assert at_b[0]["account"]["credit_limit"] == A_LIMIT * RATE[0] // RATE[1]
    from protocol.messages import parse_message

    line = parse_message(at_a[0]["terms"], frozenset({"line"}))
    assert isinstance(line, Line)
    return line


async def payer_task(n: int, side: str, c: dict[str, Collective], books: Books,
                     order_ids: dict[Any, str], stop: asyncio.Event) -> None:
    rng = random.Random(SEED * 100 + n)
    other = "B" if side == "A" else "A"
    clients = {h: TallyClient(c[side].url, k, retries=0, timeout=20)
               for h, k in c[side].keys.items()}
    try:
        while not stop.is_set():
            payer = rng.choice([m for m in MEMBERS[side] if m not in SMALL_CREDIT])
            payee = rng.choice(MEMBERS[other])
            if rng.random() < 0.05:
                payee = "nobody"  # a definite refusal from the payee's collective
            amount = rng.randint(10, 150) if side == "A" else rng.randint(5, 80)
            max_pay = 2 * amount + 2
            try:
                receipt = await clients[payer].pay_remote(payer, payee, c[other].node_key,
                                                          amount, max_pay, 60_000)
            except TallyError as exc:
                if asyncio.current_task() not in order_ids:
                    await asyncio.sleep(0.1)  # no order was made (the node's info unreachable)
                    continue
                order = _order(books, order_ids, side, payer, payee, amount)
                if 400 <= exc.status < 500:
                    books.refused[order] = exc.code
                else:  # the node died mid-request (or failed): the answer is unknown
                    books.unknown.add(order)
                    await asyncio.sleep(0.1)
                continue
            order = _order(books, order_ids, side, payer, payee, amount)
            assert receipt["order"] == order
            if receipt["result"] == "ok":
                books.done[order] = receipt
            else:
                assert receipt["result"] == "pending", receipt
                books.unknown.add(order)
    finally:
        for client in clients.values():
            await client.close()


def _order(books: Books, order_ids: dict[Any, str], side: str, payer: str, payee: str,
           amount: int) -> str:
    order = order_ids.pop(asyncio.current_task())
    books.told(order)
    books.orders[order] = Order(order, side, payer, payee, amount)
    return order


async def resolve(c: dict[str, Collective], books: Books,
                  orders: dict[str, Any] | None = None) -> None:
    """Ask the payer's node what became of each order whose answer was lost (``orders``:
    where each order's side, payer and payee are, if not in ``books``)."""
    clients: dict[tuple[str, str], TallyClient] = {}
    deadline = time.monotonic() + SETTLE_S
    try:
        for order_id in sorted(books.unknown):
            order = (orders if orders is not None else books.orders)[order_id]
            key = (order.side, order.payer)
            if key not in clients:
                clients[key] = TallyClient(c[order.side].url, c[order.side].keys[order.payer],
                                           retries=2, timeout=20)
            while True:
                try:
                    doc = await clients[key].payment(order_id)
                except TallyError as exc:
                    assert exc.code == "not_found", exc
                    books.resolved[order_id] = "not_found"  # it never started
                    break
                (attempt,) = [x for x in doc["attempts"] if x["role"] == "source"]
                assert attempt["payer"] == order.payer and attempt["payee"] == order.payee
                if attempt["result"] is not None and attempt["outbound"] in ("posted", "voided"):
                    books.resolved[order_id] = attempt["result"]["result"]
                    if attempt["result"]["result"] == "ok":
                        assert attempt["outbound"] == attempt["hold"] == "posted"
                        books.done[order_id] = {"attempt": attempt["attempt"]}
                    break
                assert time.monotonic() < deadline, f"order {order_id} never settled: {doc}"
                await asyncio.sleep(0.2)
    finally:
        for client in clients.values():
            await client.close()


async def wait_settled(c: dict[str, Collective]) -> None:
    """Until no account on either side has anything pending (every hold resolved)."""
    deadline = time.monotonic() + SETTLE_S
    readers = [TallyClient(x.url, x.steward, retries=2, timeout=20) for x in c.values()]
    try:
        while True:
            pending = [(a["handle"], a["pending_debit"], a["pending_credit"])
                       for r in readers for a in await r.accounts()
                       if a["pending_debit"] or a["pending_credit"]]
            if not pending:
                return
            assert time.monotonic() < deadline, f"holds never resolved: {pending}"
            await asyncio.sleep(0.25)
    finally:
        for r in readers:
            await r.close()


@dataclass
class Ledger:
    """One node's database, read after it stopped, and its log replayed from empty."""

    state: LedgerState
    accounts: dict[str, Any]
    holds: dict[str, Hold]
    entries: list[tuple[int, Any]]  # (node_time, signed) per index
    order_of: dict[str, str]  # attempt id -> order id, from the PREPARE entries


def read_ledger(proc: NodeProcess) -> Ledger:
    db = sqlite3.connect(f"file:{proc.data_dir / storage.DB_FILE}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT idx, entry FROM log ORDER BY idx").fetchall()
        account_rows = db.execute(f"SELECT {storage.ACCOUNT_COLUMNS} FROM accounts").fetchall()
        hold_rows = db.execute("SELECT key, doc, state FROM holds").fetchall()
    finally:
        db.close()
    assert [idx for idx, _ in rows] == list(range(len(rows))), "the log has a gap"
    raws = [bytes(entry) for _, entry in rows]
    state = new_state(parse_log_entry(parse_json(raws[0])).payload, raws[0])
    entries: list[tuple[int, Any]] = [(0, None)]
    order_of: dict[str, str] = {}
    for idx, raw in enumerate(raws[1:], start=1):
        entry = parse_log_entry(parse_json(raw))
        outcome = apply(state, entry.payload, entry.node_time, Policy(max_valid_window_ms=None))
        assert (outcome.code, outcome.index) == (ResultCode.ok, idx), (idx, outcome)
        entries.append((entry.node_time, entry.payload))
        msg = entry.payload.msg
        if isinstance(msg, Prepare):
            order_of[msg.id] = msg.order.msg.id
    holds = {}
    for key, doc, hold_state in hold_rows:
        hold = Hold(**json.loads(doc))
        assert hold.state == hold_state
        holds[key] = hold
    accounts = {row[0]: storage.account_from_row(row) for row in account_rows}
    return Ledger(state, accounts, holds, entries, order_of)


def record_order_ids(monkeypatch: pytest.MonkeyPatch) -> dict[Any, str]:
    """The client makes each order's id; remember it per task, for the orders whose answer
    is lost with the connection (pay_remote hands it back only in a receipt)."""
    order_ids: dict[Any, str] = {}
    original_new_id = client_module.new_id

    def recording_new_id() -> str:
        value = original_new_id()
        task = asyncio.current_task()
        if task is not None:
            order_ids[task] = value
        return value

    monkeypatch.setattr(client_module, "new_id", recording_new_id)
    return order_ids


async def test_payments_across_a_line_survive_sigkill_of_either_node(
    collectives: dict[str, Collective], monkeypatch: pytest.MonkeyPatch,
) -> None:
    c = collectives
    rng = random.Random(SEED)
    line = await setup_line(c)

    order_ids = record_order_ids(monkeypatch)

    books = Books()
    stop = asyncio.Event()
    tasks = [asyncio.create_task(payer_task(n, side, c, books, order_ids, stop))
             for n, side in enumerate(TASKS)]
    kills = rng.choice([3, 4])
    victims = ["A", "B"] + [rng.choice("AB") for _ in range(kills - 2)]
    rng.shuffle(victims)
    try:
        for victim in victims:
            await asyncio.sleep(rng.uniform(0.5, 2.0))
            url = c[victim].url
            c[victim].proc.kill()
            await asyncio.sleep(rng.uniform(0.0, 0.5))
            assert await c[victim].proc.start() == url
        # After the last restart, payments go through again.
        done_at_restart = len(books.done)
        deadline = time.monotonic() + 15
        while len(books.done) < done_at_restart + 3:
            assert time.monotonic() < deadline, "no payment succeeded after the last restart"
            assert not any(t.done() for t in tasks), [t for t in tasks if t.done()]
            await asyncio.sleep(0.1)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    assert c["A"].proc.starts + c["B"].proc.starts == 2 + kills
    answered = set(books.done) | set(books.refused) | books.unknown
    assert answered == set(books.orders), "a payment got no answer"
    assert books.done and books.refused, (len(books.done), books.refused)
    assert books.unknown, "no request was cut off by a kill: the test tested nothing"
    assert set(books.refused.values()) <= {
        "exceeds_line_limit", "exceeds_credit_limit", "exceeds_debit_limit",
        "account_not_found", "no_route", "expired", "rejected", "insufficient_time",
    }, books.refused

    # --- once every hold has expired and every decision was resent ------------------------
    await wait_settled(c)
    await resolve(c, books)
    refused_orders = set(books.refused) | {o for o, r in books.resolved.items() if r != "ok"}
    paid_orders = {o for o in books.done if books.resolved.get(o, "ok") == "ok"}
    assert paid_orders.isdisjoint(refused_orders)
    assert paid_orders | refused_orders == set(books.orders)
    attempt_of = {o: books.done[o]["attempt"] for o in paid_orders}

    # Each payee's history (as their steward reads it) credits each paid order once.
    credited: dict[str, Counter[str]] = {}
    async with TallyClient(c["A"].url, c["A"].steward, retries=2) as ra, \
            TallyClient(c["B"].url, c["B"].steward, retries=2) as rb:
        for side, reader in (("A", ra), ("B", rb)):
            for handle in MEMBERS[side]:
                postings = await reader.history(handle)
                credited[handle] = Counter(p["id"] for p in postings if p["amount"] > 0)
                assert sum(p["amount"] for p in postings) == \
                    (await reader.account(handle))["balance"]
    for order_id in paid_orders:
        order = books.orders[order_id]
        assert credited[order.payee][attempt_of[order_id]] == 1, order
    paid_attempts = set(attempt_of.values())
    for handle, ids in credited.items():
        assert set(ids) <= paid_attempts, f"{handle} was credited for a payment told failed"

    for x in c.values():
        assert await x.proc.stop() == 0, x.proc.stderr_tail()

    # --- straight from the databases ----------------------------------------------------------
    ledgers = {side: read_ledger(c[side].proc) for side in ("A", "B")}
    for side, ledger in ledgers.items():
        # The log replays from empty to the books the node keeps.
        assert ledger.accounts == ledger.state.accounts, side
        assert ledger.holds == ledger.state.holds, side
        assert sum(a.balance for a in ledger.accounts.values()) == 0, side
        assert all(a.pending_debit == a.pending_credit == 0 for a in ledger.accounts.values())
        for hold in ledger.holds.values():
            assert hold.state in ("posted", "voided"), (side, hold)
        check_hold_bounds(side, ledger, c)

    a, b = ledgers["A"], ledgers["B"]

    def posted(ledger: Ledger, direction: str) -> dict[str, int]:
        return {k.split("/")[0]: h.amount for k, h in ledger.holds.items()
                if k.endswith("/" + direction) and h.state == "posted"}

    # Mirrors: what A posted outbound, B posted inbound, at the line's rate rounded down;
    # and the other way. Each peer account is the sum of its pairs.
    a_out, a_in, b_out, b_in = posted(a, "out"), posted(a, "in"), posted(b, "out"), posted(b, "in")
    assert b_in == {k: line.convert(v, "a") for k, v in a_out.items()}
    assert a_in == {k: line.convert(v, "b") for k, v in b_out.items()}
    peer_a = a.accounts[peer_handle(c["B"].node_key)]
    peer_b = b.accounts[peer_handle(c["A"].node_key)]
    assert peer_a.balance == sum(a_out.values()) - sum(a_in.values())
    assert peer_b.balance == sum(b_out.values()) - sum(b_in.values())
    assert a_out or a_in  # payments did cross

    # Exactly the payments told (or found) done were posted, on both sides, as receipted.
    assert set(a_out) | set(b_out) == paid_attempts
    for order_id in paid_orders:
        order, attempt = books.orders[order_id], attempt_of[order_id]
        payer_ledger, payee_ledger = (a, b) if order.side == "A" else (b, a)
        assert payer_ledger.order_of[attempt] == payee_ledger.order_of[attempt] == order_id
        receipt = books.done[order_id]
        if "amount_paid" in receipt:
            assert payer_ledger.holds[f"{attempt}/out"].amount == receipt["amount_paid"]
            assert payee_ledger.holds[f"{attempt}/in"].amount == receipt["amount_received"]
        assert payee_ledger.holds[f"{attempt}/in"].amount >= order.amount
    for order_id in refused_orders:
        for ledger in (a, b):
            attempts = [k for k, o in ledger.order_of.items() if o == order_id]
            assert all(ledger.holds[f"{k}/{d}"].state == "voided"
                       for k in attempts for d in ("in", "out")
                       if f"{k}/{d}" in ledger.holds), order_id


def check_hold_bounds(side: str, ledger: Ledger, c: dict[str, Collective],
                      max_hold_ms: int = MAX_HOLD_MS) -> None:
    """Every hold lasted no longer than allowed, and was posted or voided by the rules: the
    upstream posts only a fulfilment that came before the expiry, and voids on its own only
    after it."""
    ours = c[side].node_key
    made: dict[str, int] = {}
    for node_time, signed in ledger.entries[1:]:
        msg = signed.msg
        if isinstance(msg, Prepare):
            key = f"{msg.id}/{'out' if msg.from_node == ours else 'in'}"
            made[key] = node_time
            assert msg.expires_at - node_time <= max_hold_ms, (side, key)
        elif isinstance(msg, Fulfil):
            hold = ledger.holds[f"{msg.id}/out"]
            assert node_time < hold.expires_at, (side, msg.id, "posted after the expiry")
        elif isinstance(msg, Decision) and signed.sigs[0].key == ours:
            hold = ledger.holds[f"{msg.id}/out"]
            assert msg.outcome == "void" and node_time >= hold.expires_at, (side, msg.id)
        elif isinstance(msg, Reject) and signed.sigs[0].key == ours:
            assert f"{msg.id}/in" in ledger.holds
    assert set(made) == set(ledger.holds), side
