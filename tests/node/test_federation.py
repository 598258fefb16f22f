"""Two collectives' nodes in one process, a credit line between them, and payments across it.

Each test serves two real nodes (``node.server.serve`` on loopback ports): A, a time bank
counting minutes, and B, a co-op counting cents, whose line converts at 3 cents per 2
minutes. Members pay across the line through the HTTP API and the tests assert what they
and their stewards would see: receipts, refusal codes, balances and pending amounts on both
ledgers, and the mirrored peer accounts.

The hostile-peer tests speak the node-to-node protocol by hand: requests signed with
``crypto.httpsig.sign_request`` and the node key from A's data directory, with messages a
well-behaved node would never send.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from crypto.canonical import canonical_json, parse_json
from crypto.httpsig import sign_request
from crypto.keys import SecretKey, b64url, read_key_file
from node import storage
from node.client import TallyClient, TallyError, new_id
from node.config import ApiSettings, Config, FederationSettings
from node.federation import Federation
from node.server import Served, serve
from node.service import Node, init_data_dir
from protocol.federation import (
    Decision,
    Fulfil,
    Line,
    PaymentOrder,
    Prepare,
    Quote,
    peer_handle,
)
from protocol.ledger import invariant_violations
from protocol.messages import Signed, Unit, parse_message, parse_signed, sign_message

# A payment the credit line has no room for (the line's own code, or the peer account's).
LINE_FULL = ("exceeds_line_limit", "exceeds_credit_limit", "exceeds_debit_limit")
MINUTES = Unit("HOUR", "hours", 60)
CENTS = Unit("CREDIT", "credits", 100)
RATE = (3, 2)  # B's cents per A's minute: 3/2, so conversions round
A_LIMIT = 3000  # B may owe A up to 3000 minutes
B_LIMIT = 600  # A may owe B up to 600 cents (= 400 minutes)

# Short delays, so that expiry and timeouts play out within a test. A peer's clock may be off
# by a quarter of the margin (rounded up to one second).
FEDERATION = FederationSettings(
    margin_ms=1000, payment_timeout_ms=2500, quote_ttl_ms=5000, peer_timeout_ms=1000,
    max_hold_ms=5000,
)
CONFIG = Config(
    api=ApiSettings(rate_per_key_per_second=1_000_000.0, rate_burst=1_000_000),
    federation=FEDERATION,
)


@dataclass
class Side:
    name: str
    served: Served
    steward: SecretKey
    node_key: SecretKey
    members: dict[str, SecretKey]
    clients: list[TallyClient] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.served.url

    @property
    def node(self) -> Node:
        return self.served.node

    @property
    def fed(self) -> Federation:
        assert self.node.federation is not None
        return self.node.federation

    def client(self, key: SecretKey | None = None) -> TallyClient:
        c = TallyClient(self.url, key, retries=0, timeout=20)
        self.clients.append(c)
        return c

    def member(self, handle: str) -> TallyClient:
        return self.client(self.members[handle])

    def account(self, handle: str) -> dict[str, Any]:
        """What the ledger holds for ``handle`` now (the API serves the same numbers)."""
        a = self.node.ledger.accounts[handle]
        return {"balance": a.balance, "pending_debit": a.pending_debit,
                "pending_credit": a.pending_credit}

    def balances(self) -> dict[str, tuple[int, int, int]]:
        return {h: (a.balance, a.pending_debit, a.pending_credit)
                for h, a in self.node.ledger.accounts.items()}

    def held(self) -> list[str]:
        return [k for k, h in self.node.ledger.holds.items() if h.state == "held"]

    async def close(self) -> None:
        for c in self.clients:
            await c.close()
        await self.served.close()


@dataclass
class Pair:
    a: Side
    b: Side
    line: Line | None = None

    @property
    def peer_at_a(self) -> str:
        return peer_handle(self.b.node_key.public)

    @property
    def peer_at_b(self) -> str:
        return peer_handle(self.a.node_key.public)


async def start_side(root: Path, name: str, unit: Unit, members: dict[str, tuple[int, int]],
                     sides: list[Side]) -> Side:
    data = root / name
    await init_data_dir(data, name=name, unit=unit)
    _, steward = read_key_file(data / "steward.key")
    _, node_key = read_key_file(data / "node.key")
    served = await serve(Node(data, CONFIG), "127.0.0.1", 0)
    side = Side(name, served, steward, node_key, {})
    sides.append(side)
    admin = side.client()
    for handle, (debit, credit) in members.items():
        key = SecretKey(os.urandom(32))
        side.members[handle] = key
        receipt = await admin.admit(handle, key.public, [steward], debit, credit)
        assert receipt["result"] == "ok"
    return side


async def agree_line(pair: Pair) -> Line:
    a, b = pair.a, pair.b
    proposed = await a.client(a.steward).propose_line(b.url, [a.steward], A_LIMIT, B_LIMIT,
                                                      *RATE)
    assert proposed["status"] == "proposed"
    accepted = await b.client(b.steward).accept_line(proposed["line"], [b.steward])
    assert accepted["status"] == "active"
    line = a.fed.line_with(b.node_key.public)
    assert line is not None and line.id == proposed["line"]
    pair.line = line
    return line


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    """A and B, each with two members, and no credit line yet."""
    sides: list[Side] = []
    try:
        a = await start_side(tmp_path, "Riverside", MINUTES,
                             {"alice": (10_000, 10_000), "ann": (10_000, 10_000)}, sides)
        b = await start_side(tmp_path, "Greenway", CENTS,
                             {"bob": (10_000, 10_000), "bea": (10_000, 50)}, sides)
        yield Pair(a, b)
    finally:
        for side in sides:
            await side.close()


@pytest.fixture
async def linked(pair: Pair) -> Pair:
    await agree_line(pair)
    return pair


async def settled(*sides: Side, timeout: float = 5.0) -> None:
    """Wait until no hold is pending on any side (decisions travel after the payer's answer)."""
    deadline = time.monotonic() + timeout
    while any(s.held() for s in sides):
        assert time.monotonic() < deadline, [s.held() for s in sides]
        await asyncio.sleep(0.02)


def cost(amount_to: int) -> int:
    """Minutes A's payer spends so that bob receives at least ``amount_to`` cents."""
    num, den = RATE
    return -(-amount_to * den // num)


def converted(minutes: int) -> int:
    num, den = RATE
    return minutes * num // den


async def refused(call: Any) -> TallyError:
    with pytest.raises(TallyError) as info:
        await call
    return info.value


# --- lines ---------------------------------------------------------------------------------


async def test_a_line_agreed_shows_on_both_sides_with_each_sides_limits(pair: Pair) -> None:
    a, b = pair.a, pair.b
    before = await a.client(a.steward).lines()
    assert before == {"lines": [], "proposals": [], "settlements": []}
    proposed = await a.client(a.steward).propose_line(b.url, [a.steward], A_LIMIT, B_LIMIT,
                                                      *RATE)
    listing = await b.client(b.steward).lines()
    assert listing["lines"] == []
    assert [p["id"] for p in listing["proposals"]] == [proposed["line"]]
    await b.client(b.steward).accept_line(proposed["line"], [b.steward])

    at_a = (await a.client(a.steward).lines())["lines"]
    at_b = (await b.client(b.steward).lines())["lines"]
    assert len(at_a) == len(at_b) == 1
    la, lb = at_a[0], at_b[0]
    assert la["id"] == lb["id"] == proposed["line"]
    assert la["status"] == lb["status"] == "active"
    assert (la["terms"], la["version"]) == (lb["terms"], lb["version"]) == (la["terms"], 1)
    assert la["peer"]["node_key"] == b.node_key.public.text
    assert lb["peer"]["node_key"] == a.node_key.public.text
    assert la["peer_url"] == b.url and lb["peer_url"] == a.url
    # A lets B owe it 3000 minutes, and may owe B 600 cents = 400 minutes; B the mirror.
    assert (la["account"]["handle"], la["account"]["debit_limit"],
            la["account"]["credit_limit"]) == (pair.peer_at_a, A_LIMIT, 400)
    assert (lb["account"]["handle"], lb["account"]["debit_limit"],
            lb["account"]["credit_limit"]) == (pair.peer_at_b, B_LIMIT, 4500)
    # Members see the peer accounts too, at zero.
    accounts = {x["handle"]: x for x in await a.member("alice").accounts()}
    assert accounts[pair.peer_at_a]["balance"] == 0

    # A second line between the same two collectives is refused when it is proposed, not a
    # week later at accept: by the proposer's own node, with what to do instead ...
    err = await refused(b.client(b.steward).propose_line(a.url, [b.steward], 100, 100))
    assert err.code == "line_exists" and "tally peer change" in err.detail, err
    assert (await b.client(b.steward).lines())["proposals"] == []
    # ... and by the other node, should a proposer's node not check.
    b.fed._refuse_second_line = lambda line: None  # type: ignore[method-assign]
    err = await refused(b.client(b.steward).propose_line(a.url, [b.steward], 100, 100))
    assert err.code == "line_exists", err
    assert (await a.client(a.steward).lines())["proposals"] == []
    assert (await b.client(b.steward).lines())["proposals"] == []  # none left waiting
    assert [x["id"] for x in (await a.client(a.steward).lines())["lines"]] == [la["id"]]


async def test_accepting_a_line_needs_the_accepting_stewards(pair: Pair) -> None:
    a, b = pair.a, pair.b
    await a.client(a.steward).propose_line(b.url, [a.steward], A_LIMIT, B_LIMIT)
    listing = await b.client(b.steward).lines()
    terms = parse_message(listing["proposals"][0]["terms"], frozenset({"line"}))
    # Signed by A's steward (who is no steward of B) instead of B's.
    body = {"line": sign_message(terms, a.steward).to_json(), "url": "", "action": "accept"}
    err = await refused(b.client()._request("POST", "/v1/lines", body, idempotent=False))
    assert (err.code, err.status) == ("not_enough_steward_signatures", 422)
    assert (await b.client(b.steward).lines())["lines"] == []
    assert a.fed.line_with(b.node_key.public) is None


# --- payments ------------------------------------------------------------------------------


async def test_a_payment_across_the_line_gives_a_receipt_the_payer_can_check(
    linked: Pair,
) -> None:
    a, b = linked.a, linked.b
    alice = a.member("alice")
    receipt = await alice.pay_remote("alice", "bob", b.node_key.public, 100, 100)
    assert receipt["result"] == "ok"
    # The receipt: the destination's signed quote and the fulfilment that hashes to it.
    quote = parse_signed(receipt["quote"], frozenset({"quote"}))
    good, all_good = quote.verified_signers()
    assert all_good and good == {b.node_key.public}
    assert isinstance(quote.msg, Quote)
    assert quote.msg.order == receipt["order"] and quote.msg.id == receipt["attempt"]
    assert quote.msg.payee == "bob" and quote.msg.amount == 100
    assert hashlib.sha256(bytes.fromhex(receipt["fulfilment"])).hexdigest() == \
        quote.msg.condition
    assert receipt["amount_paid"] == cost(100) == 67
    assert receipt["amount_received"] == converted(67) == 100

    await settled(a, b)
    assert a.account("alice") == {"balance": -67, "pending_debit": 0, "pending_credit": 0}
    assert a.account(linked.peer_at_a)["balance"] == 67
    bob = b.member("bob")
    assert (await bob.account("bob"))["balance"] == 100
    assert b.account(linked.peer_at_b)["balance"] == -100
    history = await bob.history("bob")
    assert [(p["id"], p["amount"]) for p in history] == [(receipt["attempt"], 100)]
    assert "alice@Riverside" in history[0]["counterparty"]
    assert [(p["id"], p["amount"]) for p in await alice.history("alice")] == \
        [(receipt["attempt"], -67)]

    status = await alice.payment(receipt["order"])
    assert [(x["attempt"], x["role"], x["hold"], x["result"]["result"])
            for x in status["attempts"]] == [(receipt["attempt"], "source", "posted", "ok")]


async def test_many_small_payments_convert_each_rounded_down_and_the_peer_accounts_mirror(
    linked: Pair,
) -> None:
    a, b = linked.a, linked.b
    alice, ann = a.member("alice"), a.member("ann")
    bob = b.member("bob")
    receipts = []
    for amount in range(1, 16):
        payer = (alice, "alice") if amount % 2 else (ann, "ann")
        receipts.append(await payer[0].pay_remote(payer[1], "bob", b.node_key.public, amount,
                                                  amount))
    # And the other way: bob pays alice minutes, spending cents.
    back = [await bob.pay_remote("bob", "alice", a.node_key.public, m, 10 * m) for m in (1, 2, 5)]
    await settled(a, b)

    paid = [r["amount_paid"] for r in receipts]
    assert paid == [cost(x) for x in range(1, 16)]
    got = [converted(p) for p in paid]
    assert all(g >= x for g, x in zip(got, range(1, 16)))
    assert [r["amount_received"] for r in receipts] == got
    # Per payment, rounded down: not the same as converting the total.
    assert sum(got) != converted(sum(paid))
    back_paid = [r["amount_paid"] for r in back]  # cents bob spent: 3/2 per minute, rounded up
    assert back_paid == [2, 3, 8]
    back_got = [p * 2 // 3 for p in back_paid]  # minutes alice receives, rounded down
    assert back_got == [1, 2, 5]

    assert a.account(linked.peer_at_a)["balance"] == sum(paid) - sum(back_got)
    assert b.account(linked.peer_at_b)["balance"] == -sum(got) + sum(back_paid)
    assert (await bob.account("bob"))["balance"] == sum(got) - sum(back_paid)
    alice_spent = sum(p for i, p in enumerate(paid) if i % 2 == 0)
    assert a.account("alice")["balance"] == -alice_spent + sum(back_got)
    credits = {p["id"]: p["amount"] for p in await bob.history("bob") if p["amount"] > 0}
    assert credits == {r["attempt"]: g for r, g in zip(receipts, got)}
    for side in (a, b):
        assert sum(x.balance for x in side.node.ledger.accounts.values()) == 0


async def test_a_payment_beyond_the_line_is_refused_and_moves_nothing(linked: Pair) -> None:
    a, b = linked.a, linked.b
    before_a, before_b = a.balances(), b.balances()
    # 700 cents cost 467 minutes; A may owe B only 400. Alice's own limits allow it.
    err = await refused(a.member("alice").pay_remote("alice", "bob", b.node_key.public, 700, 700))
    assert err.code in LINE_FULL and err.status == 422
    await asyncio.sleep(0.2)
    assert (a.balances(), b.balances()) == (before_a, before_b)
    assert a.held() == b.held() == []
    # Just within the line, it goes through.
    ok = await a.member("alice").pay_remote("alice", "bob", b.node_key.public, 600, 600)
    assert ok["amount_paid"] == 400
    await settled(a, b)
    assert a.account(linked.peer_at_a)["balance"] == 400
    err = await refused(a.member("ann").pay_remote("ann", "bob", b.node_key.public, 2, 2))
    assert err.code in LINE_FULL


async def test_a_payee_over_their_limit_is_refused_by_their_collective_and_nothing_moves(
    linked: Pair,
) -> None:
    a, b = linked.a, linked.b
    before_a, before_b = a.balances(), b.balances()
    # bea may hold at most 50 cents: A holds alice's minutes, B refuses with a REJECT.
    alice = a.member("alice")
    err = await refused(alice.pay_remote("alice", "bea", b.node_key.public, 60, 60))
    assert err.code == "exceeds_credit_limit"
    await settled(a, b)
    assert (a.balances(), b.balances()) == (before_a, before_b)
    voided = [h for h in a.node.ledger.holds.values()]
    assert [h.state for h in voided] == ["voided"]
    assert await alice.history("alice") == []


@pytest.mark.parametrize("case", ["unknown_payee", "no_line", "expired", "max_pay"])
async def test_payments_that_cannot_be_made_are_refused_with_their_code_and_hold_nothing(
    linked: Pair, case: str,
) -> None:
    a, b = linked.a, linked.b
    alice = a.member("alice")
    node_key = b.node_key.public
    payee, amount, max_pay, valid_for = "bob", 100, 100, 60_000
    expected = {"unknown_payee": "account_not_found", "no_line": "no_route",
                "expired": "expired", "max_pay": "exceeds_max_pay"}[case]
    if case == "unknown_payee":
        payee = "nobody"
    elif case == "no_line":
        node_key = SecretKey(os.urandom(32)).public
    elif case == "expired":
        valid_for = -1000
    else:
        max_pay = 66  # it costs 67
    before_a, before_b = a.balances(), b.balances()
    err = await refused(alice.pay_remote("alice", payee, node_key, amount, max_pay, valid_for))
    assert (err.code, err.status) == (expected, 422)
    assert a.node.ledger.holds == {} and b.node.ledger.holds == {}
    assert (a.balances(), b.balances()) == (before_a, before_b)


async def test_a_suspended_line_carries_no_new_payments(linked: Pair) -> None:
    a, b = linked.a, linked.b
    line = linked.line
    assert line is not None
    await a.member("alice").pay_remote("alice", "bob", b.node_key.public, 30, 30)
    # Version 2 of the same terms, suspended: proposed by A's stewards, accepted by B's.
    await a.client(a.steward).change_line(line.id, [a.steward], status="suspended")
    accepted = await b.client(b.steward).accept_line(line.id, [b.steward])
    assert (accepted["version"], accepted["status"]) == (2, "suspended")
    for side in (a, b):
        listed = (await side.client(side.steward).lines())["lines"]
        assert [(x["id"], x["version"], x["status"]) for x in listed] == \
            [(line.id, 2, "suspended")]
    await settled(a, b)
    before_a, before_b = a.balances(), b.balances()
    err = await refused(a.member("alice").pay_remote("alice", "bob", b.node_key.public, 30, 30))
    assert err.code == "line_suspended"
    err = await refused(b.member("bob").pay_remote("bob", "alice", a.node_key.public, 5, 50))
    assert err.code == "line_suspended"
    assert (a.balances(), b.balances()) == (before_a, before_b)
    # The balance from before the suspension stays.
    assert a.account(linked.peer_at_a)["balance"] == cost(30)
    # Version 3, active again (proposed by B this time): payments go through.
    await b.client(b.steward).change_line(line.id, [b.steward], status="active")
    await a.client(a.steward).accept_line(line.id, [a.steward])
    assert a.fed.line_with(b.node_key.public).status == "active"  # type: ignore[union-attr]
    receipt = await a.member("alice").pay_remote("alice", "bob", b.node_key.public, 30, 30)
    assert receipt["result"] == "ok"
    await settled(a, b)
    assert a.account(linked.peer_at_a)["balance"] == 2 * cost(30)


async def test_the_source_voids_at_expiry_when_the_destination_never_answers(
    linked: Pair, monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = linked.a, linked.b
    original = a.fed._peer_post
    stopped: list[bool] = []

    async def stop_b_before_prepare(key_id: str, path: str, body: dict[str, Any]) -> Any:
        if path == "/v1/peer/prepare" and not stopped:
            # A has logged its hold and is about to send PREPARE: B goes away for good.
            assert [h.state for h in a.node.ledger.holds.values()] == ["held"]
            stopped.append(True)
            await b.served.close()
        return await original(key_id, path, body)

    a.fed._peer_post = stop_b_before_prepare  # type: ignore[method-assign]
    alice = a.member("alice")
    order_ids = capture_order_ids(monkeypatch)
    started = time.monotonic()
    err = await refused(alice.pay_remote("alice", "bob", b.node_key.public, 100, 100))
    elapsed = time.monotonic() - started
    assert stopped
    assert (err.code, err.status) == ("expired", 422)
    # Not before the hold's expiry (the payment timeout), and not much after.
    assert FEDERATION.payment_timeout_ms / 1000 - 0.3 <= elapsed < 6
    assert a.account("alice") == {"balance": 0, "pending_debit": 0, "pending_credit": 0}
    assert a.account(linked.peer_at_a) == {"balance": 0, "pending_debit": 0,
                                           "pending_credit": 0}
    assert [h.state for h in a.node.ledger.holds.values()] == ["voided"]
    (order_id,) = order_ids
    status = await alice.payment(order_id)
    assert [(x["hold"], x["result"]["result"]) for x in status["attempts"]] == \
        [("voided", "expired")]
    # Alice can spend the released amount elsewhere at once.
    assert (await alice.account("alice"))["pending_debit"] == 0


def capture_order_ids(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The order ids the client makes (to ask GET /v1/payments/{order} after a refusal)."""
    import node.client as client_module

    ids: list[str] = []
    original = client_module.new_id

    def recording() -> str:
        ids.append(original())
        return ids[-1]

    monkeypatch.setattr(client_module, "new_id", recording)
    return ids


# --- hostile peers --------------------------------------------------------------------------


@dataclass
class Hostile:
    """A's node key in the hands of a test: signed requests to B as A would send them."""

    pair: Pair
    session: aiohttp.ClientSession

    async def send(self, path: str, body: Any, *, key: SecretKey | None = None,
                   recipient: str | None = None, created: int | None = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
        b = self.pair.b
        data = canonical_json(body)
        if headers is None:
            headers = sign_request(
                key or self.pair.a.node_key, method="POST", path=path, query="", body=data,
                recipient_key_id=recipient or b.node_key.public.key_id,
                created=int(time.time()) if created is None else created,
                nonce=b64url(os.urandom(16)),
            )
            headers["Content-Type"] = "application/json"
        async with self.session.post(b.url + path, data=data, headers=headers) as resp:
            return resp.status, await resp.json(), headers

    def order(self, amount: int, payee: str = "bob") -> Signed:
        a, b = self.pair.a, self.pair.b
        msg = PaymentOrder(a.node.ledger.ledger_id, new_id(), "alice", payee,
                           b.node_key.public, amount, 10 * amount,
                           int(time.time() * 1000) + 60_000)
        return sign_message(msg, a.members["alice"])

    async def quote(self, order: Signed) -> Signed:
        status, doc, _ = await self.send("/v1/peer/quote", {"order": order.to_json(),
                                                             "attempt": new_id()})
        assert status == 200, doc
        return parse_signed(doc["quote"], frozenset({"quote"}))

    def prepare(self, order: Signed, quote: Signed, amount_from: int | None = None,
                *, signer: SecretKey | None = None, from_node: Any = None) -> Signed:
        a, b, line = self.pair.a, self.pair.b, self.pair.line
        assert line is not None and isinstance(quote.msg, Quote)
        assert isinstance(order.msg, PaymentOrder)
        sent = cost(order.msg.amount) if amount_from is None else amount_from
        msg = Prepare(quote.msg.id, line.id, from_node or a.node_key.public, b.node_key.public,
                      sent, converted(sent), quote.msg.condition,
                      int(time.time() * 1000) + 2000, order, quote)
        return sign_message(msg, signer or a.node_key)

    async def send_prepare(self, prepare: Signed) -> tuple[int, Any]:
        status, doc, _ = await self.send("/v1/peer/prepare", {"prepare": prepare.to_json()})
        return status, doc


@pytest.fixture
async def hostile(linked: Pair) -> AsyncIterator[Hostile]:
    async with aiohttp.ClientSession() as session:
        yield Hostile(linked, session)


def answer(doc: Any, b: Side) -> Signed:
    """The FULFIL or REJECT in a PREPARE's answer, checked to be signed by B's node."""
    (kind,) = doc.keys()
    signed = parse_signed(doc[kind], frozenset({kind}))
    good, all_good = signed.verified_signers()
    assert all_good and good == {b.node_key.public}
    return signed


async def test_a_forged_fulfilment_is_refused_and_the_payer_is_not_charged(linked: Pair) -> None:
    a, b = linked.a, linked.b

    async def forge(signed: Signed, sender: Any) -> Signed:
        # B turns hostile: it claims the payment with a fulfilment that fits no condition.
        return sign_message(Fulfil(signed.msg.id, os.urandom(32).hex()),  # type: ignore[union-attr]
                            b.node_key)

    b.fed.receive_prepare = forge  # type: ignore[method-assign]
    alice = a.member("alice")
    err = await refused(alice.pay_remote("alice", "bob", b.node_key.public, 100, 100))
    assert err.code == "expired"
    assert a.account("alice") == {"balance": 0, "pending_debit": 0, "pending_credit": 0}
    assert a.account(linked.peer_at_a)["balance"] == 0
    assert [h.state for h in a.node.ledger.holds.values()] == ["voided"]
    assert await alice.history("alice") == []
    assert b.node.ledger.holds == {}


async def test_a_fulfilment_the_ledger_finds_too_late_leaves_a_voided_record(
    linked: Pair, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The post and the record saying "posted" are committed together only if the ledger
    posts: when its clock (at the commit) finds the FULFIL too late, though the driver's
    found it in time, the record says voided, and the payer is told so."""
    a, b = linked.a, linked.b
    writer = a.node.writer
    assert writer is not None
    clock = writer.clock_ms
    original = a.fed._outbound_answer

    async def late_by_the_ledgers_clock(record: Any, answer: Any) -> None:
        # From here on the ledger's clock is past every expiry; the driver's is not.
        monkeypatch.setattr(writer, "clock_ms", lambda: clock() + 600_000)
        await original(record, answer)

    monkeypatch.setattr(a.fed, "_outbound_answer", late_by_the_ledgers_clock)
    err = await refused(a.member("alice").pay_remote("alice", "bob", b.node_key.public, 100,
                                                     100))
    assert err.code == "expired" and "valid fulfilment came after the expiry" in err.detail
    (hold,) = a.node.ledger.holds.values()
    assert hold.state == "voided"
    stored = await a.fed._load_record(hold.key.split("/")[0])
    assert stored is not None and stored.payment.hold == "voided"
    assert a.account("alice") == {"balance": 0, "pending_debit": 0, "pending_credit": 0}
    await settled(a, b)
    assert b.account("bob") == {"balance": 0, "pending_debit": 0, "pending_credit": 0}


async def test_a_record_is_not_stored_with_an_entry_the_ledger_refuses(linked: Pair) -> None:
    a, b = linked.a, linked.b
    receipt = await a.member("alice").pay_remote("alice", "bob", b.node_key.public, 100, 100)
    await settled(a, b)
    deadline = time.monotonic() + 10  # finished once B acknowledged the DECISION (batched)
    while True:
        stored = await a.fed._load_record(receipt["attempt"])
        if (stored is not None and stored.payment.finished) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    assert stored is not None and stored.payment.finished
    # A FULFIL for a hold A does not have: refused; the record given to store with it is not.
    fulfil = sign_message(Fulfil(new_id(), os.urandom(32).hex()), b.node_key)
    claim = copy.copy(stored)
    claim.payment = replace(stored.payment, id=fulfil.msg.id)  # type: ignore[union-attr]
    outcome = await a.fed._log_and_store(fulfil, claim, claim, f"{claim.payment.id}/out",
                                         "posted")
    assert outcome.code.value == "hold_not_found"
    assert await a.fed._load_record(claim.payment.id) is None


async def test_a_prepare_beyond_the_line_is_refused_with_a_signed_reject(
    hostile: Hostile,
) -> None:
    b = hostile.pair.b
    before = b.balances()
    # 700 cents: B lets A owe it 600.
    order = hostile.order(700)
    status, doc = await hostile.send_prepare(hostile.prepare(order, await hostile.quote(order)))
    if status == 200:
        reject = answer(doc, b)
        assert reject.msg.type == "reject"
        assert reject.msg.code in LINE_FULL  # type: ignore[union-attr]
    else:
        assert 400 <= status < 500 and doc["code"] in LINE_FULL
    assert b.balances() == before and b.held() == []


async def test_a_replayed_peer_request_is_refused(hostile: Hostile) -> None:
    b = hostile.pair.b
    body = {"order": hostile.order(10).to_json(), "attempt": new_id()}
    status, doc, headers = await hostile.send("/v1/peer/quote", body)
    assert status == 200 and "quote" in doc
    quotes = await count_quotes(b)
    status, doc, _ = await hostile.send("/v1/peer/quote", body, headers=headers)
    assert (status, doc["code"]) == (401, "replayed_request")
    assert await count_quotes(b) == quotes


async def test_a_peer_request_and_its_nonce_are_stored_in_one_commit(
        hostile: Hostile, monkeypatch: pytest.MonkeyPatch) -> None:
    """The destination stores the nonce of a quote request with the quote itself, in one
    transaction, rather than committing the nonce first and then the quote: and still
    answers only once both are durable, and refuses the same request again."""
    b = hostile.pair.b
    writer = b.node.writer
    assert writer is not None
    batches: list[list[str]] = []
    original = writer._commit

    async def recording(batch: list[Any]) -> Any:
        batches.append([type(r).__name__ for r in batch])
        return await original(batch)

    monkeypatch.setattr(writer, "_commit", recording)
    body = {"order": hostile.order(10).to_json(), "attempt": new_id()}
    status, doc, headers = await hostile.send("/v1/peer/quote", body)
    assert status == 200 and "quote" in doc
    together = [x for x in batches if "NonceRequest" in x]
    assert together == [["NonceRequest", "SqlRequest"]]  # the nonce, then the quote
    assert await count_quotes(b) == 1
    status, doc, _ = await hostile.send("/v1/peer/quote", body, headers=headers)
    assert (status, doc["code"]) == (401, "replayed_request")
    # A refusal after the nonce is taken (a body that is not a quote request) uses it up.
    status, doc, headers = await hostile.send("/v1/peer/quote", {"order": 1})
    assert (status, doc["code"]) == (400, "invalid_field")
    status, doc, _ = await hostile.send("/v1/peer/quote", {"order": 1}, headers=headers)
    assert (status, doc["code"]) == (401, "replayed_request")


async def test_a_peers_signed_answer_is_in_canonical_form(hostile: Hostile) -> None:
    """A quote comes back as the RFC 8785 form of its JSON (written from the signed
    message's bytes, not encoded afresh), and reads back as the signed quote."""
    b = hostile.pair.b
    path = "/v1/peer/quote"
    data = canonical_json({"order": hostile.order(10).to_json(), "attempt": new_id()})
    headers = sign_request(hostile.pair.a.node_key, method="POST", path=path, query="",
                           body=data, recipient_key_id=b.node_key.public.key_id,
                           created=int(time.time()), nonce=b64url(os.urandom(16)))
    headers["Content-Type"] = "application/json"
    async with hostile.session.post(b.url + path, data=data, headers=headers) as resp:
        assert resp.status == 200 and resp.content_type == "application/json"
        raw = await resp.read()
    quote = parse_signed(parse_json(raw)["quote"], frozenset({"quote"}))  # type: ignore[index]
    assert raw == canonical_json({"quote": quote.to_json()})
    assert quote.verified_signers() == (frozenset({b.node_key.public}), True)


async def count_quotes(side: Side) -> int:
    assert side.node.reader is not None
    async with side.node.reader.execute("SELECT count(*) FROM quotes") as cur:
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def test_a_request_signed_for_another_node_is_refused(hostile: Hostile) -> None:
    a, b = hostile.pair.a, hostile.pair.b
    body = {"order": hostile.order(10).to_json(), "attempt": new_id()}
    status, doc, _ = await hostile.send("/v1/peer/quote", body,
                                        recipient=a.node_key.public.key_id)
    assert (status, doc["code"]) == (401, "wrong_recipient")
    assert await count_quotes(b) == 0


async def test_a_request_from_a_node_without_a_line_is_refused(hostile: Hostile) -> None:
    b = hostile.pair.b
    stranger = SecretKey(os.urandom(32))
    body = {"order": hostile.order(10).to_json(), "attempt": new_id()}
    status, doc, _ = await hostile.send("/v1/peer/quote", body, key=stranger)
    assert (status, doc["code"]) == (422, "unknown_peer")
    # Its PREPARE fares no better, even carrying a quote B really made for A.
    order = hostile.order(10)
    prepare = hostile.prepare(order, await hostile.quote(order), signer=stranger,
                              from_node=stranger.public)
    status, doc, _ = await hostile.send("/v1/peer/prepare", {"prepare": prepare.to_json()},
                                        key=stranger)
    assert (status, doc["code"]) == (422, "unknown_peer")
    assert b.held() == [] and await count_quotes(b) == 1


@pytest.mark.parametrize("offset", [-600, 600])
async def test_a_peer_whose_clock_is_off_is_refused(hostile: Hostile, offset: int) -> None:
    body = {"order": hostile.order(10).to_json(), "attempt": new_id()}
    status, doc, _ = await hostile.send("/v1/peer/quote", body,
                                        created=int(time.time()) + offset)
    assert (status, doc["code"]) == (422, "clock_skew")
    assert await count_quotes(hostile.pair.b) == 0


async def test_a_prepare_not_signed_by_its_sending_node_is_refused(hostile: Hostile) -> None:
    a, b = hostile.pair.a, hostile.pair.b
    rogue = SecretKey(os.urandom(32))
    before = b.balances()
    # Sent by A's node, naming A as the sender, but signed by some other key.
    order = hostile.order(10)
    status, doc = await hostile.send_prepare(hostile.prepare(order, await hostile.quote(order),
                                                             signer=rogue))
    if status == 200:
        reject = answer(doc, b)
        assert reject.msg.type == "reject"
        assert reject.msg.code == "bad_signature"  # type: ignore[union-attr]
    else:
        assert 400 <= status < 500, doc
    # Sent by A's node, naming (and signed by) another node as the sender.
    order = hostile.order(10)
    status, doc = await hostile.send_prepare(hostile.prepare(
        order, await hostile.quote(order), signer=rogue, from_node=rogue.public))
    assert (status, doc["code"]) == (422, "not_a_party")
    assert b.balances() == before and b.held() == []
    assert a.held() == []


async def test_the_destination_fulfils_at_most_one_attempt_per_order(hostile: Hostile) -> None:
    b = hostile.pair.b
    order = hostile.order(100)
    q1, q2 = await hostile.quote(order), await hostile.quote(order)
    status, doc = await hostile.send_prepare(hostile.prepare(order, q1))
    assert status == 200 and answer(doc, b).msg.type == "fulfil"
    status, doc = await hostile.send_prepare(hostile.prepare(order, q2))
    assert status == 200
    second = answer(doc, b)
    assert second.msg.type == "reject" and second.msg.code == "exists"  # type: ignore[union-attr]
    status, doc, _ = await hostile.send("/v1/peer/quote", {"order": order.to_json(),
                                                           "attempt": new_id()})
    assert (status, doc["code"]) == (422, "exists")
    assert b.account("bob")["pending_credit"] == 100
    # The upstream's decision posts the one fulfilled attempt: bob is credited once.
    decision = sign_message(Decision(q1.msg.id, "post"), hostile.pair.a.node_key)  # type: ignore[union-attr]
    status, doc, _ = await hostile.send("/v1/peer/decision", {"decision": decision.to_json()})
    assert status == 200, doc
    assert b.account("bob") == {"balance": 100, "pending_debit": 0, "pending_credit": 0}


async def test_concurrent_attempts_of_one_order_are_not_both_fulfilled(hostile: Hostile) -> None:
    b = hostile.pair.b
    order = hostile.order(20)
    quotes = [await hostile.quote(order) for _ in range(4)]
    answers = await asyncio.gather(*(hostile.send_prepare(hostile.prepare(order, q))
                                     for q in quotes))
    kinds = sorted(answer(doc, b).msg.type for status, doc in answers if status == 200)
    assert kinds.count("fulfil") == 1, answers
    assert b.account("bob")["pending_credit"] == converted(cost(20)) == 21


async def test_a_void_for_an_attempt_never_prepared_here_is_acknowledged(
    hostile: Hostile,
) -> None:
    b = hostile.pair.b
    before = b.balances()
    # A voided at expiry a PREPARE that never reached B: B follows (nothing is held), so A
    # can stop resending; a "post" for it is refused.
    attempt = new_id()
    void = sign_message(Decision(attempt, "void"), hostile.pair.a.node_key)
    status, doc, _ = await hostile.send("/v1/peer/decision", {"decision": void.to_json()})
    assert (status, doc) == (200, {"id": attempt, "ack": "void"})
    post = sign_message(Decision(new_id(), "post"), hostile.pair.a.node_key)
    status, doc, _ = await hostile.send("/v1/peer/decision", {"decision": post.to_json()})
    assert (status, doc["code"]) == (422, "hold_not_found")
    assert b.balances() == before and b.node.ledger.holds == {}


async def test_several_decisions_in_one_request_are_each_answered_on_their_own(
    hostile: Hostile,
) -> None:
    b = hostile.pair.b
    before = b.balances()
    void = sign_message(Decision(new_id(), "void"), hostile.pair.a.node_key)
    post = sign_message(Decision(new_id(), "post"), hostile.pair.a.node_key)
    status, doc, _ = await hostile.send("/v1/peer/decisions", {
        "decisions": [void.to_json(), post.to_json()]})
    assert status == 200
    assert doc["acks"][0] == {"id": void.msg.id, "ack": "void"}  # type: ignore[union-attr]
    assert (doc["acks"][1]["id"], doc["acks"][1]["code"]) == (
        post.msg.id, "hold_not_found")  # type: ignore[union-attr]
    for bad in ([], [void.to_json(), void.to_json()], [void.to_json()] * 201):
        status, doc, _ = await hostile.send("/v1/peer/decisions", {"decisions": bad})
        assert (status, doc["code"]) == (400, "invalid_field"), bad[:1]
    assert b.balances() == before and b.node.ledger.holds == {}


async def test_decisions_for_one_peer_go_together_or_one_by_one_to_a_node_that_wants_that(
    linked: Pair, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The DECISIONs gathered for a peer go in one request; a peer without the route for
    several (an older node: 404) gets them one by one. Every one is acknowledged."""
    a, b = linked.a, linked.b
    gate = asyncio.Event()
    sent: list[tuple[str, int]] = []
    flush, post = a.fed._flush_decisions, a.fed._peer_post

    async def held_until_the_gate_opens(peer: str) -> None:
        await gate.wait()  # every payment below has its DECISION queued by then
        await flush(peer)

    async def counting(key_id: str, path: str, body: Any) -> Any:
        if path.startswith("/v1/peer/decision"):
            sent.append((path, body.count(b'"type":"decision"')))
            if path.endswith("s") and older:
                raise TallyError("not_found", "no such route", 404)
        return await post(key_id, path, body)

    monkeypatch.setattr(a.fed, "_flush_decisions", held_until_the_gate_opens)
    monkeypatch.setattr(a.fed, "_peer_post", counting)
    alice = a.member("alice")
    for older in (False, True):
        receipts = await asyncio.gather(*(
            alice.pay_remote("alice", "bob", b.node_key.public, 10, 10) for _ in range(5)))
        assert [r["result"] for r in receipts] == ["ok"] * 5  # before any DECISION left
        gate.set()
        await settled(a, b)
        gate.clear()
        deadline = time.monotonic() + 5
        while a.fed.payments:  # every acknowledgement stored
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        if not older:
            assert sent == [("/v1/peer/decisions", 5)]
        else:
            assert sent == [("/v1/peer/decisions", 5)] + [("/v1/peer/decision", 1)] * 5
        sent.clear()
    assert b.account("bob")["balance"] == 100


# --- a node that stops between two writes -----------------------------------------------------


async def restart(side: Side) -> None:
    """Stop the side's node and start it again on the same data directory and port."""
    port = int(side.url.rsplit(":", 1)[1])
    data = side.node.data_dir
    await side.served.close()
    side.served = await serve(Node(data, CONFIG), "127.0.0.1", port)


async def test_a_source_stopped_after_logging_the_fulfilment_resumes_it_as_paid(
    linked: Pair, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The FULFIL entry is in A's log but the payment's state was not stored: after a
    restart past the expiry, A must not void what its books posted (and tell B to void)."""
    a, b = linked.a, linked.b
    original = a.fed._log_and_store
    stopped: list[str] = []

    async def stop_before_storing_the_post(signed: Signed, record: Any, after: Any,
                                           *args: Any, **kwargs: Any) -> Any:
        # The post and the record that says so are queued together; at the edge of a
        # batch the post may be committed alone: the node stops right then.
        if isinstance(signed.msg, Fulfil) and record.payment.role.value == "source" \
                and not stopped:
            stopped.append(record.payment.id)
            await a.fed._log(signed)
            record.done.set()
            raise RuntimeError("the node stops here")
        return await original(signed, record, after, *args, **kwargs)

    monkeypatch.setattr(a.fed, "_log_and_store", stop_before_storing_the_post)
    order_ids = capture_order_ids(monkeypatch)
    await a.member("alice").pay_remote("alice", "bob", b.node_key.public, 100, 100)
    (attempt,) = stopped
    assert a.node.ledger.holds[f"{attempt}/out"].state == "posted"
    assert b.account("bob")["pending_credit"] == 100  # B awaits A's decision
    expires = a.node.ledger.holds[f"{attempt}/out"].expires_at
    await a.served.close()
    await asyncio.sleep(max(0.0, (expires - time.time() * 1000) / 1000) + 0.3)
    await restart(a)

    await settled(a, b)
    deadline = time.monotonic() + 5
    while b.account("bob")["pending_credit"]:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert a.account("alice")["balance"] == -67
    assert b.account("bob") == {"balance": 100, "pending_debit": 0, "pending_credit": 0}
    assert (a.account(linked.peer_at_a)["balance"], b.account(linked.peer_at_b)["balance"]) \
        == (67, -100)
    status = await a.member("alice").payment(order_ids[0])
    assert [(x["hold"], x["result"]["result"]) for x in status["attempts"]] == [("posted", "ok")]


async def test_the_payments_in_flight_are_the_holds_still_held_also_when_reloaded(
    linked: Pair, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The risk limits count the holds still held, from an index beside every hold ever
    made: it follows each hold as it is made and voided, and a restart rebuilds it from the
    stored holds."""
    a, b = linked.a, linked.b
    original = a.fed._peer_post

    async def b_unreachable(key_id: str, path: str, body: Any) -> Any:
        if path == "/v1/peer/prepare":
            raise TallyError("unreachable", "B is away for this test")
        return await original(key_id, path, body)

    monkeypatch.setattr(a.fed, "_peer_post", b_unreachable)
    paying = asyncio.create_task(
        a.member("alice").pay_remote("alice", "bob", b.node_key.public, 100, 100))
    deadline = time.monotonic() + 5
    while not a.held():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    (key,) = a.held()
    assert list(a.node.ledger.open_holds) == [key]
    assert a.node.reader is not None
    reloaded = await storage.load_state(a.node.reader)  # what a restart would start from
    assert list(reloaded.open_holds) == [key] and invariant_violations(reloaded) == []
    err = await refused(paying)  # B never answers: A voids at the expiry
    assert err.code == "expired"
    assert a.node.ledger.open_holds == {} and a.node.ledger.holds[key].state == "voided"
    assert invariant_violations(a.node.ledger) == []
    reloaded = await storage.load_state(a.node.reader)
    assert reloaded.open_holds == {} and invariant_violations(reloaded) == []


async def test_a_source_stopped_before_holding_resumes_the_payment_on_both_books(
    linked: Pair, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stored the payment but stopped before its hold was logged: after a restart it must
    not send a PREPARE (and let B credit bob) with nothing held on its own books."""
    a, b = linked.a, linked.b
    original = a.fed._store_and_log
    stopped: list[str] = []

    async def stop_before_the_hold(record: Any, signed: Signed, **kwargs: Any) -> Any:
        # The record and the hold are queued together; at the edge of a batch the record
        # may be committed alone: the node stops right then.
        if isinstance(signed.msg, Prepare) and not stopped:
            stopped.append(signed.msg.id)
            await a.fed._store(record)
            raise RuntimeError("the node stops here")
        return await original(record, signed, **kwargs)

    monkeypatch.setattr(a.fed, "_store_and_log", stop_before_the_hold)
    order_ids = capture_order_ids(monkeypatch)
    err = await refused(a.member("alice").pay_remote("alice", "bob", b.node_key.public, 100, 100))
    assert err.status == 500  # the payer does not know: it must ask, not pay again
    assert a.node.ledger.holds == {}
    await restart(a)

    deadline = time.monotonic() + 5
    while True:
        status = await a.member("alice").payment(order_ids[0])
        (attempt,) = status["attempts"]
        if attempt["result"] is not None:
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    await settled(a, b)
    await asyncio.sleep(0.6)  # a decision, if any, is delivered within a tick
    assert b.held() == []
    paid = attempt["result"]["result"] == "ok"
    assert a.account("alice")["balance"] == (-67 if paid else 0)
    assert b.account("bob") == {"balance": 100 if paid else 0, "pending_debit": 0,
                                "pending_credit": 0}
    assert (a.account(linked.peer_at_a)["balance"], b.account(linked.peer_at_b)["balance"]) \
        == ((67, -100) if paid else (0, 0))


async def test_a_peer_that_takes_and_never_pays_costs_at_most_the_line_granted(
    hostile: Hostile,
) -> None:
    """A's node turns hostile: it sends PREPARE after PREPARE to pay bob, takes every
    fulfilment, and never decides or settles anything. However it goes on, what B's members
    were credited on A's account, held or posted (B's loss should A never pay) stays within
    the line B granted A; past it B refuses, with a signed REJECT or a 4xx, then and
    later."""
    b = hostile.pair.b
    peer = peer_handle(hostile.pair.a.node_key.public)

    def exposure() -> int:  # what A owes B or may come to owe it, in B's cents
        account = b.account(peer)
        return -account["balance"] + account["pending_debit"]

    refusals = []
    for _ in range(8):  # 8 × 150 cents: twice what B lets A owe
        order = hostile.order(150)
        status, doc = await hostile.send_prepare(hostile.prepare(order, await hostile.quote(order)))
        if status == 200 and "fulfil" in doc:
            answer(doc, b)
        else:
            refusals.append(doc.get("code") if status != 200 else answer(doc, b).msg.code)  # type: ignore[union-attr]
        assert exposure() <= B_LIMIT, b.account(peer)
    assert refusals and set(refusals) <= set(LINE_FULL), refusals
    assert b.account("bob")["balance"] + b.account("bob")["pending_credit"] <= B_LIMIT

    # Past every expiry, A still deciding nothing: B's fulfilled holds stay in force (only
    # the upstream decides), so the line stays full and the loss cannot grow.
    await asyncio.sleep(2.5)
    order = hostile.order(150)
    status, doc = await hostile.send_prepare(hostile.prepare(order, await hostile.quote(order)))
    code = doc.get("code") if status != 200 else answer(doc, b).msg.code  # type: ignore[union-attr]
    assert code in LINE_FULL, doc
    assert exposure() <= B_LIMIT


async def test_a_crash_keeps_the_local_postings_that_waited_behind_a_payment(
    linked: Pair, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """alice's local transfers' postings wait in memory (``node.writer.HeldPostings``) while
    her payment across the line posts at once, at a later log index. After a crash (nothing
    written at the stop) A's history of alice still holds all three and sums to her
    balance."""
    a, b = linked.a, linked.b
    for amount in (5, 7):
        assert (await a.member("alice").pay("alice", "ann", amount))["result"] == "ok"
    await a.member("alice").pay_remote("alice", "bob", b.node_key.public, 100, 100)

    async def no_flush(self: Node) -> None:
        pass

    monkeypatch.setattr(Node, "_flush_held", no_flush)
    await restart(a)
    monkeypatch.undo()
    history = await a.member("alice").history("alice")
    assert len(history) == 3
    assert sum(p["amount"] for p in history) == a.account("alice")["balance"] == -5 - 7 - 67
    assert [p["amount"] for p in await a.member("ann").history("ann")] == [7, 5]
