"""Three collectives' nodes in a row, A–B–C, killed with SIGKILL at random moments while
members pay from one end to the other through the collective in between.

A (a time bank counting minutes) has a credit line with B (a co-op counting cents), and B
with C (a bakery counting cents); A and C have none, so every payment between them goes
through B, which holds what comes in against one line and forwards it on the other,
expiring a margin sooner. Client tasks stream payments A→C and C→A, and a few direct A→B;
the test kills each node at least once (4–5 kills, seeded) and restarts it on the same data
directory and port.

A payer is told one result per payment: done (a receipt) or a refusal code. When the request
itself fails (its node was killed mid-request) the payer does not pay again: the order is
unknown until, once things settle, ``GET /v1/payments/{order}`` says what became of it.

Afterwards, once every hold has expired and every decision was resent: every ledger sums to
zero and replays from empty to the same books; every hold is posted or voided, within its
bounds, and B's forwarded hold expires at least a margin before the one it forwards; on each
line the holds posted on one side are exactly those posted on the other, in pairs at the
line's rate, and the peer accounts are the sums of those pairs; B's routing account is
exactly minus its losses (a hold paid on downstream while its upstream voided), each no more
than it forwarded and each in B's log as a dispute; each payment its payer was told
succeeded is credited once to its payee, and none told failed is credited at all — unless
it is one of B's logged losses, which B paid out of its own pocket.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from crypto.keys import SecretKey
from node.client import TallyClient, TallyError
from protocol.federation import (
    ROUTING_ACCOUNT,
    Line,
    peer_handle,
)
from protocol.messages import Unit, parse_message
from tests.integration.conftest import TEST_CONFIG, NodeProcess
from tests.integration.test_federation_kill import (
    Books,
    Collective,
    Ledger,
    read_ledger,
    record_order_ids,
    resolve,
    start_collectives,
    wait_settled,
)
from tests.integration.test_federation_kill import (
    check_hold_bounds as check_line_hold_bounds,
)

SEED = 20261128
# (proposer, acceptor, proposer's limit, acceptor's limit, acceptor's units per proposer's)
LINES = [("A", "B", 3000, 4000, (3, 2)),  # B's cents per A's minute
         ("B", "C", 5000, 5000, (5, 4))]  # C's cents per B's cent
MEMBER_LIMIT = 4000
# a2 and c2 only receive, and may hold little: once they are full, payments to them are
# refused by the payee's collective (a REJECT, after the holds on the way were made).
SMALL_CREDIT = {"a2": 200, "c2": 300}
MARGIN_MS = 2000
MAX_HOLD_MS = 16_000
CONFIG = TEST_CONFIG + f"""
[federation]
margin_ms = {MARGIN_MS}
payment_timeout_ms = 6000
max_hold_ms = {MAX_HOLD_MS}
quote_ttl_ms = 10000
peer_timeout_ms = 2000
graph_refresh_ms = 2000
# As for members (TEST_CONFIG): the stream is meant to run into kills, not rate limits.
peer_rate_per_second = 1000000.0
peer_rate_burst = 1000000
"""
NODES = {"A": ("Riverside", Unit("HOUR", "hours", 60)),
         "B": ("Greenway", Unit("CREDIT", "credits", 100)),
         "C": ("Hilltop", Unit("CREDIT", "credits", 100))}
MEMBERS = {"A": ["a0", "a1", "a2"], "B": ["b0", "b1"], "C": ["c0", "c1", "c2"]}
# Who streams: two tasks pay A→C, two C→A, one A→B (next door).
TASKS = [("A", "C"), ("A", "C"), ("C", "A"), ("C", "A"), ("A", "B")]
SETTLE_S = 30.0


@dataclass(frozen=True)
class Order:
    id: str
    side: str  # the payer's collective
    to: str  # the payee's collective
    payer: str
    payee: str
    amount: int  # in the payee's unit


@pytest.fixture
async def collectives(tmp_path: Path) -> AsyncIterator[dict[str, Collective]]:
    async for out in start_collectives(tmp_path, NODES, CONFIG):
        yield out


async def setup_lines(c: dict[str, Collective]) -> dict[str, Line]:
    """Members on each side, then the two lines; returns them by name ("AB", "BC")."""
    admins = {s: TallyClient(c[s].url, c[s].steward, retries=0) for s in c}
    try:
        for side, admin in admins.items():
            for handle in MEMBERS[side]:
                key = SecretKey(os.urandom(32))
                c[side].keys[handle] = key
                receipt = await admin.admit(handle, key.public, [c[side].steward],
                                            MEMBER_LIMIT, SMALL_CREDIT.get(handle, MEMBER_LIMIT))
                assert receipt["result"] == "ok"
        lines: dict[str, Line] = {}
        for x, y, x_limit, y_limit, rate in LINES:
            proposed = await admins[x].propose_line(c[y].url, [c[x].steward], x_limit, y_limit,
                                                    *rate)
            await admins[y].accept_line(proposed["line"], [c[y].steward])
            for side in (x, y):
                found = [doc for doc in (await admins[side].lines())["lines"]
                         if doc["id"] == proposed["line"]]
                assert [doc["status"] for doc in found] == ["active"], (side, found)
            line = parse_message(found[0]["terms"], frozenset({"line"}))
            assert isinstance(line, Line)
            lines[x + y] = line
        return lines
    finally:
        for admin in admins.values():
            await admin.close()


async def payer_task(n: int, side: str, to: str, c: dict[str, Collective], books: Books,
                     orders: dict[str, Order], order_ids: dict[Any, str],
                     stop: asyncio.Event) -> None:
    rng = random.Random(SEED * 100 + n)
    clients = {h: TallyClient(c[side].url, k, retries=0, timeout=30)
               for h, k in c[side].keys.items()}
    try:
        while not stop.is_set():
            payer = rng.choice([m for m in MEMBERS[side] if m not in SMALL_CREDIT])
            payee = rng.choice(MEMBERS[to])
            if rng.random() < 0.05:
                payee = "nobody"  # a definite refusal from the payee's collective
            amount = rng.randint(10, 150) if to != "A" else rng.randint(5, 80)
            max_pay = 2 * amount + 2
            try:
                receipt = await clients[payer].pay_remote(payer, payee, c[to].node_key,
                                                          amount, max_pay, 60_000)
            except TallyError as exc:
                if asyncio.current_task() not in order_ids:
                    await asyncio.sleep(0.1)  # no order was made (the node's info unreachable)
                    continue
                order = _order(books, orders, order_ids, side, to, payer, payee, amount)
                if 400 <= exc.status < 500:
                    books.refused[order] = exc.code
                else:  # the node died mid-request (or failed): the answer is unknown
                    books.unknown.add(order)
                    await asyncio.sleep(0.1)
                continue
            order = _order(books, orders, order_ids, side, to, payer, payee, amount)
            assert receipt["order"] == order
            if receipt["result"] == "ok":
                books.done[order] = receipt
                hops = [c[s].name for s in (side, "B", to)] if to != "B" else \
                    [c[side].name, c[to].name]
                assert receipt["route"] == hops, receipt["route"]
            else:
                assert receipt["result"] == "pending", receipt
                books.unknown.add(order)
    finally:
        for client in clients.values():
            await client.close()


def _order(books: Books, orders: dict[str, Order], order_ids: dict[Any, str], side: str,
           to: str, payer: str, payee: str, amount: int) -> str:
    order = order_ids.pop(asyncio.current_task())
    books.told(order)
    orders[order] = Order(order, side, to, payer, payee, amount)
    return order


def node_log(proc: NodeProcess) -> str:
    """Everything the node wrote, over all its runs."""
    return "".join(p.read_text(errors="replace") for p in sorted(proc.logs.glob("node-*.*")))


async def test_payments_through_an_intermediary_survive_sigkill_of_any_node(
    collectives: dict[str, Collective], monkeypatch: pytest.MonkeyPatch,
) -> None:
    c = collectives
    rng = random.Random(SEED)
    lines = await setup_lines(c)

    order_ids = record_order_ids(monkeypatch)

    books = Books()
    orders: dict[str, Order] = {}
    stop = asyncio.Event()
    tasks = [asyncio.create_task(payer_task(n, side, to, c, books, orders, order_ids, stop))
             for n, (side, to) in enumerate(TASKS)]
    kills = rng.choice([4, 5])
    victims = ["A", "B", "C"] + [rng.choice("ABC") for _ in range(kills - 3)]
    rng.shuffle(victims)
    try:
        await asyncio.sleep(1.0)  # payments under way before the first kill
        for victim in victims:
            await asyncio.sleep(rng.uniform(0.5, 2.0))
            url = c[victim].url
            c[victim].proc.kill()
            await asyncio.sleep(rng.uniform(0.0, 0.5))
            assert await c[victim].proc.start() == url
        # After the last restart, payments go through again, through B too.
        done_at_restart = set(books.done)
        deadline = time.monotonic() + 20
        while not any(orders[o].to != "B" for o in set(books.done) - done_at_restart):
            assert time.monotonic() < deadline, "no payment succeeded after the last restart"
            assert not any(t.done() for t in tasks), [t for t in tasks if t.done()]
            await asyncio.sleep(0.1)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 40)
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    assert sum(x.proc.starts for x in c.values()) == 3 + kills
    assert set(books.done) | set(books.refused) | books.unknown == set(orders), \
        "a payment got no answer"
    assert books.refused, "nothing was refused: the test tested too little"
    assert {orders[o].to for o in books.done} >= {"A", "B", "C"}, "some direction never paid"
    assert books.unknown, "no request was cut off by a kill: the test tested nothing"
    assert set(books.refused.values()) <= {
        "exceeds_line_limit", "exceeds_credit_limit", "exceeds_debit_limit",
        "account_not_found", "no_route", "expired", "rejected", "insufficient_time",
        "unknown_peer", "quote_mismatch",
    }, books.refused

    # --- once every hold has expired and every decision was resent ------------------------
    await wait_settled(c)
    await resolve(c, books, orders)
    refused_orders = set(books.refused) | {o for o, r in books.resolved.items() if r != "ok"}
    paid_orders = {o for o in books.done if books.resolved.get(o, "ok") == "ok"}
    assert paid_orders.isdisjoint(refused_orders)
    assert paid_orders | refused_orders == set(orders)
    attempt_of = {o: books.done[o]["attempt"] for o in paid_orders}

    # Each payee's history (as their steward reads it): what was credited, by attempt.
    credited: dict[str, Counter[str]] = {}
    for side in c:
        async with TallyClient(c[side].url, c[side].steward, retries=2) as reader:
            for handle in MEMBERS[side]:
                postings = await reader.history(handle)
                credited[handle] = Counter(p["id"] for p in postings if p["amount"] > 0)
                assert sum(p["amount"] for p in postings) == \
                    (await reader.account(handle))["balance"]

    for collective in c.values():
        assert await collective.proc.stop() == 0, collective.proc.stderr_tail()

    # --- straight from the databases ----------------------------------------------------------
    ledgers = {side: read_ledger(c[side].proc) for side in c}
    for side, ledger in ledgers.items():
        # The log replays from empty to the books the node keeps.
        assert ledger.accounts == ledger.state.accounts, side
        assert ledger.holds == ledger.state.holds, side
        assert sum(a.balance for a in ledger.accounts.values()) == 0, side
        assert all(a.pending_debit == a.pending_credit == 0 for a in ledger.accounts.values())
        for hold in ledger.holds.values():
            assert hold.state in ("posted", "voided"), (side, hold)
        check_hold_bounds(side, ledger, c)

    # Mirrors: on each line, what the one side posted outbound the other posted inbound, at
    # the line's rate rounded down; each peer account is the sum of its pairs.
    for name, line in lines.items():
        one, two = name[0], name[1]
        for up, down in ((one, two), (two, one)):
            sent = posted(ledgers[up], line, "out")
            up_side = line.side(c[up].node_key)
            assert up_side is not None
            assert posted(ledgers[down], line, "in") == {
                k: line.convert(v, up_side) for k, v in sent.items()}, (name, up)
            assert sent, f"nothing crossed line {name} from {up}"
        for me, them in ((one, two), (two, one)):
            peer = ledgers[me].accounts[peer_handle(c[them].node_key)]
            assert peer.balance == sum(posted(ledgers[me], line, "out").values()) - \
                sum(posted(ledgers[me], line, "in").values()), (name, me)

    # B in between: it forwards all it received, a margin sooner; its routing account is
    # minus its losses, each logged as a dispute.
    b = ledgers["B"]
    transit = {k.split("/")[0] for k, h in b.holds.items()
               if k.endswith("/out") and h.debit == ROUTING_ACCOUNT}
    assert transit, "nothing went through B"
    losses: dict[str, int] = {}
    for attempt in transit:
        hold_in, hold_out = b.holds[f"{attempt}/in"], b.holds[f"{attempt}/out"]
        assert hold_in.credit == ROUTING_ACCOUNT
        assert hold_out.amount == hold_in.amount, attempt  # forwards all of it, no more
        assert hold_out.expires_at <= hold_in.expires_at - MARGIN_MS, attempt
        assert (hold_in.state, hold_out.state) != ("posted", "voided"), \
            f"B was paid upstream for {attempt} but did not pay downstream"
        if (hold_in.state, hold_out.state) == ("voided", "posted"):
            losses[attempt] = hold_out.amount
    # Every PREPARE B received that is not for one of its members, it forwarded (or refused).
    transit_in = {k.split("/")[0] for k, h in b.holds.items()
                  if k.endswith("/in") and h.credit == ROUTING_ACCOUNT}
    assert transit_in >= transit
    for attempt in transit_in - transit:
        assert b.holds[f"{attempt}/in"].state == "voided", attempt
    routing = b.accounts.get(ROUTING_ACCOUNT)
    assert routing is not None and routing.balance == -sum(losses.values()), losses
    b_log = node_log(c["B"].proc)
    for attempt in losses:
        assert f"DISPUTE loss on payment {attempt}" in b_log, attempt

    # Exactly the payments told (or found) done were posted, on every ledger on the way, as
    # receipted; and credited once to the payee.
    paid_attempts = set(attempt_of.values())
    for order_id in paid_orders:
        order, attempt = orders[order_id], attempt_of[order_id]
        way = [order.side, "B", order.to] if order.to != "B" else [order.side, order.to]
        for side in way:
            assert ledgers[side].order_of[attempt] == order_id, (side, order)
        payer_ledger, payee_ledger = ledgers[order.side], ledgers[order.to]
        assert payer_ledger.holds[f"{attempt}/out"].state == "posted", order
        assert payee_ledger.holds[f"{attempt}/in"].state == "posted", order
        if order.to != "B":
            assert b.holds[f"{attempt}/in"].state == b.holds[f"{attempt}/out"].state == "posted"
        receipt = books.done[order_id]
        if "amount_paid" in receipt:
            assert payer_ledger.holds[f"{attempt}/out"].amount == receipt["amount_paid"]
            assert payee_ledger.holds[f"{attempt}/in"].amount == receipt["amount_received"]
        assert payee_ledger.holds[f"{attempt}/in"].amount >= order.amount
        assert credited[order.payee][attempt] == 1, order
    # None told failed reached its payee — but for B's losses, which B paid out of pocket.
    loss_orders = {b.order_of[attempt] for attempt in losses}
    assert loss_orders <= refused_orders
    for attempt in losses:  # the payer kept its money; the payee got B's
        order = orders[b.order_of[attempt]]
        assert ledgers[order.side].holds[f"{attempt}/out"].state == "voided", order
        assert ledgers[order.to].holds[f"{attempt}/in"].state == "posted", order
        assert credited[order.payee][attempt] == 1, order
    for handle, ids in credited.items():
        assert set(ids) <= paid_attempts | set(losses), \
            f"{handle} was credited for a payment told failed"
    for order_id in refused_orders - loss_orders:
        order = orders[order_id]
        payee_ledger = ledgers[order.to]
        attempts = [k for k, o in payee_ledger.order_of.items() if o == order_id]
        assert all(payee_ledger.holds[f"{k}/in"].state == "voided" for k in attempts
                   if f"{k}/in" in payee_ledger.holds), order_id
        for ledger in ledgers.values():
            assert all(h.state == "voided" for k, h in ledger.holds.items()
                       if k.split("/")[0] in ledger.order_of
                       and ledger.order_of[k.split("/")[0]] == order_id), order_id


def posted(ledger: Ledger, line: Line, direction: str) -> dict[str, int]:
    """Attempt id -> amount of the holds this ledger posted on ``line`` in ``direction``."""
    return {k.split("/")[0]: h.amount for k, h in ledger.holds.items()
            if k.endswith("/" + direction) and h.line == line.id and h.state == "posted"}


def check_hold_bounds(side: str, ledger: Ledger, c: dict[str, Collective]) -> None:
    """The two-node test's check, with this test's longest hold."""
    check_line_hold_bounds(side, ledger, c, MAX_HOLD_MS)
