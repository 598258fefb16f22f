"""Payments through collectives in between: three (and four) real nodes in one process.

A (a time bank, minutes) has a credit line with B (a co-op, cents), and B with C (a
bakery, cents); A has none with C. alice@A pays cy@C through B. The tests assert what the
members and stewards of each would see: the receipt and its route, balances on three
ledgers, each line's mirrored peer accounts, B's routing account back at zero, refusals
that move nothing anywhere, and a second route taken when the first is down.
"""

from __future__ import annotations

import asyncio
import json
import time
import traceback
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from crypto.canonical import canonical_json
from crypto.keys import PublicKey
from node.client import TallyClient, new_id, now_ms
from node.config import ApiSettings, Config, FederationSettings
from node.federation import PaymentRecord, canonical_body
from node.writer import on_loop
from protocol.federation import ROUTING_ACCOUNT, PaymentOrder, Reject, peer_handle
from protocol.ledger import invariant_violations
from protocol.messages import sign_message
from tests.node import test_federation as tf
from tests.node.test_federation import CENTS, MINUTES, Side, refused, settled

# Two hops need two margins of expiry, and a hold may last through both.
CONFIG = Config(
    api=ApiSettings(rate_per_key_per_second=1_000_000.0, rate_burst=1_000_000),
    federation=FederationSettings(margin_ms=1000, payment_timeout_ms=2500, quote_ttl_ms=8000,
                                  peer_timeout_ms=1000, max_hold_ms=8000),
)


@dataclass
class Net:
    a: Side
    b: Side
    c: Side
    sides: list[Side]


async def link(x: Side, y: Side, x_limit: int, y_limit: int, rate: tuple[int, int]) -> None:
    proposed = await x.client(x.steward).propose_line(y.url, [x.steward], x_limit, y_limit,
                                                      *rate)
    accepted = await y.client(y.steward).accept_line(proposed["line"], [y.steward])
    assert accepted["status"] == "active"


@pytest.fixture
async def net(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Net]:
    monkeypatch.setattr(tf, "CONFIG", CONFIG)  # start_side serves nodes with tf.CONFIG
    sides: list[Side] = []
    try:
        a = await tf.start_side(tmp_path, "Riverside", MINUTES, {"alice": (10_000, 10_000)},
                                sides)
        b = await tf.start_side(tmp_path, "Greenway", CENTS, {"bea": (10_000, 10_000)}, sides)
        c = await tf.start_side(tmp_path, "Hilltop", CENTS, {"cy": (10_000, 10_000)}, sides)
        await link(a, b, 3000, 6000, (2, 1))  # 2 of B's cents per minute of A's
        await link(b, c, 5000, 1000, (1, 1))  # B may owe C 1000 cents
        yield Net(a, b, c, sides)
    finally:
        for side in sides:
            await side.close()


def clean(*sides: Side) -> None:
    for s in sides:
        assert invariant_violations(s.node.ledger) == [], s.name


async def test_a_member_pays_through_a_collective_in_between(net: Net) -> None:
    a, b, c = net.a, net.b, net.c
    alice = a.member("alice")
    found = await alice.routes("Hill", 300)
    assert found["collective"]["name"] == "Hilltop" and found["direct"] is False
    assert [r["via"] for r in found["routes"]] == [["Greenway"]]
    assert found["routes"][0]["cost"] == 150  # 300 cents at C = 300 at B = 150 minutes

    receipt = await alice.pay_remote("alice", "cy", c.node_key.public, 300,
                                     found["routes"][0]["cost"])
    assert receipt["result"] == "ok"
    assert receipt["route"] == ["Riverside", "Greenway", "Hilltop"]
    assert (receipt["amount_paid"], receipt["amount_received"]) == (150, 300)
    await settled(a, b, c)

    assert a.account("alice")["balance"] == -150
    assert c.account("cy")["balance"] == 300
    # Each line's two peer accounts mirror each other at its rate; B neither won nor lost.
    assert a.account(peer_handle(b.node_key.public))["balance"] == 150
    assert b.account(peer_handle(a.node_key.public))["balance"] == -300
    assert b.account(peer_handle(c.node_key.public))["balance"] == 300
    assert c.account(peer_handle(b.node_key.public))["balance"] == -300
    assert b.account(ROUTING_ACCOUNT) == {"balance": 0, "pending_debit": 0, "pending_credit": 0}
    clean(a, b, c)
    # The payer's node and the payee's show the same order, each its own side of it.
    status = await alice.payment(receipt["order"])
    assert [x["result"]["result"] for x in status["attempts"]] == ["ok"]


async def test_what_a_node_stores_and_sends_of_a_payment_is_its_signed_messages_exactly(
        net: Net) -> None:
    """The records and request bodies are spliced from the messages' cached canonical bytes:
    they must read back as the very messages, and a body must be the canonical form."""
    a, b, c = net.a, net.b, net.c
    receipt = await a.member("alice").pay_remote("alice", "cy", c.node_key.public, 300, 150)
    assert receipt["result"] == "ok"
    await settled(a, b, c)
    db = b.node.reader
    assert db is not None
    async with db.execute("SELECT doc FROM payments") as cur:
        docs = [json.loads(row[0]) async for row in cur]
    assert [d["role"] for d in docs] == ["intermediary"]
    record = PaymentRecord.from_json(docs[0])
    assert json.loads(record.to_doc()) == record.to_json() == docs[0]
    assert record.forward is not None and record.answer is not None
    assert canonical_body(prepare=record.forward, attempt=record.payment.id,
                          path=[]) == canonical_json(
        {"prepare": record.forward.to_json(), "attempt": record.payment.id, "path": []})
    # A REJECT's detail may name a collective in any script: RFC 8785 keeps it as UTF-8.
    record.answer = sign_message(Reject(record.payment.id, "line_suspended",
                                        "la ligne avec Café Ñandú est suspendue"), b.node_key)
    assert json.loads(record.to_doc()) == record.to_json()
    pair = [record.prepare, record.forward]
    assert canonical_body(decisions=pair) == canonical_json(
        {"decisions": [s.to_json() for s in pair]})


async def test_each_line_gets_one_decision_per_payment(
        net: Net, monkeypatch: pytest.MonkeyPatch) -> None:
    """The upstream sends its DECISION until acknowledged, and no more: not a second copy
    because the ticker came by while it was in flight, nor because the intermediary's own
    upstream DECISION, handled meanwhile, stored the record over the acknowledgement."""
    a, b, c = net.a, net.b, net.c
    received: list[tuple[str, str]] = []
    for side in (b, c):
        original = side.fed.receive_decision

        async def counting(signed: Any, sender: Any, side: Side = side,
                           original: Any = original) -> Any:
            received.append((side.name, signed.msg.id))
            return await original(signed, sender)

        monkeypatch.setattr(side.fed, "receive_decision", counting)
    alice = a.member("alice")
    receipts = await asyncio.gather(*(
        alice.pay_remote("alice", "cy", c.node_key.public, 10, 5) for _ in range(8)))
    assert [r["result"] for r in receipts] == ["ok"] * 8
    await settled(a, b, c)
    await asyncio.sleep(1.2)  # two more rounds of the ticker, which resends what is unacked
    attempts = {r["attempt"] for r in receipts}
    assert sorted(received) == sorted((name, x) for x in attempts for name in (b.name, c.name))
    assert not b.fed.payments and not a.fed.payments  # every decision acknowledged, stored


async def test_a_payment_takes_no_hop_to_a_database_thread_on_any_node(
        net: Net, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every record a payment stores, and every record or quote it reads, is written or
    read on the event loop's thread (in the writer's transaction, or by a point read): a
    hop to aiosqlite's thread must win the GIL back from a busy loop, which under load cost
    more than the query itself."""
    a, b, c = net.a, net.b, net.c
    alice = a.member("alice")
    assert (await alice.pay_remote("alice", "cy", c.node_key.public, 10, 5))["result"] == "ok"
    await settled(a, b, c)
    hops: list[str] = []
    original = aiosqlite.Connection._execute

    async def counting(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        stack = traceback.extract_stack()
        if any(f.filename.endswith(("node/federation.py", "node/peerapi.py")) for f in stack):
            hops.append(next(f"{f.name} ({f.lineno})" for f in reversed(stack)
                             if f.filename.endswith(("federation.py", "peerapi.py"))))
        return await original(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counting)
    receipts = await asyncio.gather(*(
        alice.pay_remote("alice", "cy", c.node_key.public, 10, 5) for _ in range(6)))
    assert [r["result"] for r in receipts] == ["ok"] * 6
    await settled(a, b, c)
    await asyncio.sleep(0.6)  # the DECISIONs' acknowledgements, stored
    assert not a.fed.payments and not b.fed.payments
    assert hops == []


async def test_lines_learned_from_a_peer_are_checked_once_not_at_every_payment(
        net: Net, monkeypatch: pytest.MonkeyPatch) -> None:
    """A routes over the line B and C signed, learned from B: its two signatures are checked
    when A first routes over it, not again for every payment that takes the route."""
    a, c = net.a, net.c
    alice = a.member("alice")
    assert (await alice.pay_remote("alice", "cy", c.node_key.public, 10, 5))["result"] == "ok"
    (learned,) = a.fed.learned.values()
    checked: list[bytes] = []
    original = PublicKey.verify

    def counting(self: PublicKey, message: bytes, signature: bytes) -> bool:
        checked.append(message)
        return original(self, message, signature)

    monkeypatch.setattr(PublicKey, "verify", counting)
    for _ in range(3):
        receipt = await alice.pay_remote("alice", "cy", c.node_key.public, 10, 5)
        assert receipt["route"] == ["Riverside", "Greenway", "Hilltop"]
    assert checked and learned.signed_bytes not in checked  # others' messages, not the line


async def test_each_node_writes_a_payments_record_once_per_step(net: Net) -> None:
    """What each node stores of a payment, counted as rows written: the source its hold,
    its post and the acknowledgement; the intermediary its holds, its post, the upstream's
    DECISION and the acknowledgement; the destination its hold (fulfilled, with the record
    that came before it in the same transaction written once, not twice) and the DECISION."""
    a, b, c = net.a, net.b, net.c
    for side in (a, b, c):
        db = side.node.db
        assert db is not None
        on_loop(db, lambda conn: conn.executescript(
            "CREATE TEMP TABLE record_writes (id TEXT);"
            "CREATE TEMP TRIGGER counted AFTER INSERT ON main.payments "
            "BEGIN INSERT INTO record_writes VALUES (new.id); END;"))
    alice = a.member("alice")
    receipt = await alice.pay_remote("alice", "cy", c.node_key.public, 10, 5)
    assert receipt["result"] == "ok"
    await settled(a, b, c)
    deadline = time.monotonic() + 5
    while (a.fed.payments or b.fed.payments) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)  # the DECISIONs' acknowledgements, stored
    writes = [on_loop(s.node.db, lambda conn: conn.execute(  # type: ignore[arg-type]
        "SELECT COUNT(*) FROM record_writes WHERE id = ?", (receipt["attempt"],)).fetchone()[0])
        for s in (a, b, c)]
    assert writes == [3, 4, 2]


async def test_beyond_the_second_line_is_refused_and_nothing_moves_anywhere(net: Net) -> None:
    a, b, c = net.a, net.b, net.c
    before = [s.balances() for s in (a, b, c)]
    # B may owe C at most 1000 cents: 1200 cannot pass, though A's line has room for it.
    err = await refused(a.member("alice").pay_remote("alice", "cy", c.node_key.public, 1200,
                                                     600))
    assert err.code == "exceeds_line_limit" and err.status == 422
    assert "Hilltop" in err.detail
    await settled(a, b, c)
    assert [s.balances() for s in (a, b, c)] == [
        {**bal, **({ROUTING_ACCOUNT: (0, 0, 0)} if ROUTING_ACCOUNT in s.balances() else {})}
        for bal, s in zip(before, (a, b, c))
    ]
    clean(a, b, c)


async def test_an_unknown_collective_and_a_payee_missing_at_the_end(net: Net) -> None:
    a, c = net.a, net.c
    alice = a.member("alice")
    err = await refused(alice.routes("Nowhere"))
    assert err.code == "not_found" and "Hilltop" in err.detail
    err = await refused(alice.pay_remote("alice", "zed", c.node_key.public, 10, 10))
    assert err.code == "account_not_found"
    assert a.account("alice")["balance"] == 0


async def test_when_the_first_route_is_down_the_payment_goes_another_way(
        net: Net, tmp_path: Path) -> None:
    a, b, c = net.a, net.b, net.c
    d = await tf.start_side(tmp_path, "Dale", CENTS, {"dee": (10_000, 10_000)}, net.sides)
    await link(a, d, 3000, 6000, (2, 1))
    await link(d, c, 5000, 1000, (1, 1))
    await b.close()  # B is down: quotes through it cannot be had
    net.sides.remove(b)
    receipt = await a.member("alice").pay_remote("alice", "cy", c.node_key.public, 100, 50)
    assert receipt["route"] == ["Riverside", "Dale", "Hilltop"]
    await settled(a, c, d)
    assert c.account("cy")["balance"] == 100
    assert d.account(ROUTING_ACCOUNT)["balance"] == 0
    # The order was paid once: the payee's node fulfilled one attempt of it.
    status = await c.client(c.steward).payment(receipt["order"])
    assert [x["result"] for x in status["attempts"]].count(None) == len(status["attempts"])
    assert sum(1 for x in status["attempts"] if x["hold"] == "posted") == 1
    clean(a, c, d)


async def test_statements_agree_after_payments_and_a_lying_peer_is_caught(net: Net) -> None:
    a, b, c = net.a, net.b, net.c
    await a.member("alice").pay_remote("alice", "cy", c.node_key.public, 300, 150)
    await c.member("cy").pay_remote("cy", "alice", a.node_key.public, 40, 100)
    await settled(a, b, c)
    status = await a.client(a.steward).lines_status()
    assert [(r["peer"], r["verdict"]) for r in status["lines"]] == [("Greenway", "agree")]
    ours = status["lines"][0]["ours"]["msg"]
    # alice sent 150 minutes (300 cents at B); cy sent her 40 minutes (80 cents at B).
    assert (ours["sum_a"], ours["sum_b"], ours["in_flight"]) == (150 - 40, 300 - 80, [])
    at_b = {r["peer"]: r["verdict"] for r in (await b.client(b.steward).lines_status())["lines"]}
    assert at_b == {"Riverside": "agree", "Hilltop": "agree"}

    # B lies to A: it claims less has flowed. A answers with its own statement, and keeps
    # both as evidence of the mismatch.
    line_id = status["lines"][0]["line"]
    honest = (await b.fed.our_statement(line_id)).msg
    lie = sign_message(replace(honest, sum_a=honest.sum_a - 50), b.node_key)
    async with TallyClient(a.url, b.node_key, retries=0) as as_b:
        answer = await as_b._request("POST", "/v1/peer/statement",
                                     {"statement": lie.to_json()}, signed=True)
    assert answer[1]["statement"]["msg"]["sum_a"] == honest.sum_a
    assert a.fed.reconciled[line_id]["verdict"] == "mismatch"
    assert a.fed.reconciled[line_id]["theirs"] == lie.to_json()
    # The same lie told again (a later statement) is still a mismatch, not a new dispute.
    again = sign_message(replace(lie.msg, as_of=lie.msg.as_of + 1000), b.node_key)
    async with TallyClient(a.url, b.node_key, retries=0) as as_b:
        await as_b._request("POST", "/v1/peer/statement", {"statement": again.to_json()},
                            signed=True)
    assert a.fed.reconciled[line_id]["verdict"] == "mismatch"
    mismatches = [d for d in await a.client(a.steward).disputes()
                  if d["kind"] == "statement_mismatch"]
    assert len(mismatches) == 1
    # A statement signed by another key than the line's other node is refused.
    forged = sign_message(honest, c.node_key)
    async with TallyClient(a.url, c.node_key, retries=0) as as_c:
        err = await refused(as_c._request("POST", "/v1/peer/statement",
                                          {"statement": forged.to_json()}, signed=True))
    assert err.code == "unknown_peer"  # C has no line with A at all


async def test_an_intermediary_that_withholds_then_sends_late_carries_its_own_loss(
        net: Net, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, c = net.a, net.b, net.c
    real = b.fed._receive_transit

    async def withhold(signed, sender):  # type: ignore[no-untyped-def]
        await real(signed, sender)  # B forwards and gets C's fulfilment...
        return None  # ...but tells A only "pending", until A gives up at its expiry

    monkeypatch.setattr(b.fed, "_receive_transit", withhold)
    err = await refused(a.member("alice").pay_remote("alice", "cy", c.node_key.public, 100,
                                                     50))
    assert err.code == "expired"  # the payer is told it failed, and pays nothing
    await settled(a, b, c, timeout=10)
    assert a.account("alice")["balance"] == 0
    # B paid C (C fulfilled in time, and B posted): cy has the money, and B carries the
    # loss in its routing account, bounded by what it forwarded, with a dispute for its
    # stewards holding the signed evidence.
    assert c.account("cy")["balance"] == 100
    assert b.account(ROUTING_ACCOUNT)["balance"] == -100  # in B's cents
    assert b.account(peer_handle(a.node_key.public))["balance"] == 0
    [loss] = await b.client(b.steward).disputes()
    assert loss["kind"] == "loss" and loss["evidence"]["loss"] == 100
    assert loss["evidence"]["void"]["msg"]["outcome"] == "void"

    # B now sends its FULFIL, too late: A keeps it as evidence and moves nothing.
    record = b.fed.payments.get(loss["attempt"]) or await b.fed._load_record(loss["attempt"])
    assert record is not None and record.answer is not None
    a_record = await a.fed._load_record(loss["attempt"])
    assert a_record is not None
    await a.fed._outbound_answer(a_record, {"fulfil": record.answer.to_json()})
    [late] = await a.client(a.steward).disputes()
    assert late["kind"] == "late_fulfilment" and late["attempt"] == loss["attempt"]
    assert a.account("alice")["balance"] == 0
    # The payer, asking what became of the order, learns it failed for them — and that the
    # payee may have been paid on the way, before paying again.
    [attempt] = (await a.member("alice").payment(a_record.prepare.msg.order.msg.id))["attempts"]
    assert attempt["result"]["result"] == "expired"
    assert attempt["result"]["late_fulfilment"] is True
    assert "before paying again" in attempt["result"]["detail"]
    clean(a, b, c)


async def test_a_repeated_quote_request_gets_the_same_quote(net: Net) -> None:
    a, c = net.a, net.c
    order = sign_message(PaymentOrder(a.node.ledger.ledger_id, new_id(), "alice", "cy",
                                      c.node_key.public, 10, 10, now_ms() + 60_000),
                         a.members["alice"])
    body = {"order": order.to_json(), "attempt": new_id(), "path": [c.node_key.public.text]}
    first = await a.fed._peer_post(net.b.node_key.public.key_id, "/v1/peer/quote", body)
    again = await a.fed._peer_post(net.b.node_key.public.key_id, "/v1/peer/quote", body)
    assert first == again  # one fulfilment per attempt: the same condition both times
    other = sign_message(replace(order.msg, id=new_id()), a.members["alice"])
    err = await refused(a.fed._peer_post(net.b.node_key.public.key_id, "/v1/peer/quote",
                                         {**body, "order": other.to_json()}))
    assert err.code == "exists_with_different_fields"


async def test_a_peer_node_must_have_the_key_the_line_pinned(net: Net) -> None:
    a, b, c = net.a, net.b, net.c
    # Someone points A's record of B's address at C: A signs nothing for C as if it were B.
    async with TallyClient(c.url, a.node_key, expect_key_id=b.node_key.public.key_id) as fake:
        err = await refused(fake._request("GET", "/v1/peer/graph", signed=True))
    assert err.code == "wrong_node" and b.node_key.public.key_id in err.detail


async def test_no_new_payment_through_a_node_known_to_have_equivocated(
        net: Net, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, c = net.a, net.b, net.c
    assert b.node.gossip is not None
    # B holds (verified) evidence that A's node showed two histories of its log.
    monkeypatch.setattr(b.node.gossip, "suspended", lambda key: key == a.node_key.public)
    err = await refused(a.member("alice").pay_remote("alice", "cy", c.node_key.public, 10, 10))
    assert err.code == "line_suspended" and "equivocated" in err.detail
    assert a.account("alice")["balance"] == 0 and c.account("cy")["balance"] == 0
    # Nor does B forward to A: C's payment to alice through B is refused at B.
    err = await refused(c.member("cy").pay_remote("cy", "alice", a.node_key.public, 10, 10))
    assert err.code == "line_suspended"
    # C still pays B's members directly: only A is distrusted.
    receipt = await c.member("cy").pay_remote("cy", "bea", b.node_key.public, 5, 5)
    assert receipt["result"] == "ok"


async def test_a_difference_that_persists_through_statements_becomes_a_mismatch(
        net: Net, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = net.a, net.b
    line = a.fed.line_with(b.node_key.public)
    assert line is not None
    ours = await a.fed.our_statement(line.id)
    honest = (await b.fed.our_statement(line.id)).msg
    # B's ledger says one settlement of the line was logged; A's says none.
    theirs = sign_message(replace(honest, settled=1), b.node_key)
    clock = [a.fed.now()]
    monkeypatch.setattr(a.fed, "now", lambda: clock[0])
    interval = a.fed.cfg.statement_interval_ms
    verdicts = []
    for _ in range(5):
        verdicts.append((await a.fed._compared(ours, theirs, line))["verdict"])
        clock[0] += interval
    # Passing at first; after three rounds of the same difference, raised once, with both
    # statements as evidence.
    assert verdicts == ["unsettled", "unsettled", "unsettled", "mismatch", "mismatch"]
    disputes = [d for d in await a.client(a.steward).disputes()
                if d["kind"] == "statement_mismatch"]
    assert len(disputes) == 1 and disputes[0]["evidence"]["theirs"] == theirs.to_json()


async def test_a_collective_known_only_by_gossip_is_found_and_paid(
        net: Net, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, c = net.a, net.b, net.c
    assert a.node.gossip is not None and b.node.gossip is not None

    async def nothing() -> None:  # no asking line peers: what A knows comes from gossip
        return None

    monkeypatch.setattr(a.fed, "refresh_graph", nothing)
    a.fed.learned.clear()
    assert c.node.gossip is not None
    for _ in range(2):  # each signs a record naming its lines; B carries C's to A
        for side in (c, b, a):
            assert side.node.gossip is not None
            await side.node.gossip.round()
    found = await a.member("alice").routes("Hill", 300)
    assert found["collective"]["node_key"] == c.node_key.public.text
    assert [r["via"] for r in found["routes"]] == [["Greenway"]]
    receipt = await a.member("alice").pay_remote("alice", "cy", c.node_key.public, 300, 150)
    assert receipt["result"] == "ok"


async def test_a_peer_that_fails_is_a_refusal_here_not_our_own_fault(
        net: Net, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, c = net.a, net.b, net.c

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a fault inside B")

    monkeypatch.setattr(b.fed, "quote", broken)  # B answers 500 to every quote request
    err = await refused(a.member("alice").pay_remote("alice", "cy", c.node_key.public, 10, 10))
    assert err.status == 422 and err.code == "no_route" and "failed" in err.detail
    assert a.account("alice")["balance"] == 0
