"""Ledger rules for credit lines and payments across them, on two pure ledgers.

Each test builds two collectives' ledgers (A, a time bank in minutes; B, a co-op in cents),
agrees a line, and runs the log entries a payment makes on each side, asserting what the
members of each would see: balances, pending amounts, refusals that change nothing, and
mirrored peer accounts.
"""

from __future__ import annotations

import copy
import hashlib
import os
from dataclasses import dataclass, replace

import pytest

from crypto.keys import SecretKey
from protocol.codes import ResultCode
from protocol.federation import (
    Decision,
    Fulfil,
    Line,
    Party,
    PaymentOrder,
    Prepare,
    Quote,
    Reject,
    peer_handle,
)
from protocol.ledger import LedgerState, Outcome, apply, invariant_violations, new_state
from protocol.lines import SIGNATURES, SignatureMemo
from protocol.messages import Admit, Genesis, LogEntry, Signature, Signed, Unit, sign_message

NOW = 1_800_000_000_000
HOUR = Unit("HOUR", "hours", 60)
CENT = Unit("CREDIT", "credits", 100)


@dataclass
class Side:
    name: str
    node: SecretKey
    steward: SecretKey
    state: LedgerState
    members: dict[str, SecretKey]

    def apply(self, signed: Signed, now: int = NOW) -> Outcome:
        return apply(self.state, signed, now)

    @property
    def party(self) -> Party:
        return Party(self.node.public, self.state.ledger_id, self.name, self.state.genesis.unit)


def collective(name: str, unit: Unit, members: list[str]) -> Side:
    node, steward = SecretKey(os.urandom(32)), SecretKey(os.urandom(32))
    g = sign_message(Genesis(name, unit, node.public, (steward.public,), 1, NOW), node, steward)
    state = new_state(g, LogEntry(NOW, g).encode())
    side = Side(name, node, steward, state, {})
    for handle in members:
        key = SecretKey(os.urandom(32))
        side.members[handle] = key
        admit = Admit(state.ledger_id, os.urandom(16).hex(), NOW + 1000, handle, key.public,
                      10_000, 10_000)
        assert side.apply(sign_message(admit, steward)).code == ResultCode.ok
    return side


def agree_line(a: Side, b: Side, a_limit: int = 3000, b_limit: int = 5000) -> Line:
    # Rate: 1 minute of A's time bank = 2 cents... i.e. 1 hour = 1.20 credits: 2/1.
    line = Line(os.urandom(16).hex(), 1, a.party, b.party, a_limit, b_limit, 2, 1, "active",
                NOW + 60_000)
    assert a.apply(sign_message(line, a.node, b.node, a.steward)).code == ResultCode.ok
    assert b.apply(sign_message(line, a.node, b.node, b.steward)).code == ResultCode.ok
    return line


@dataclass
class Attempt:
    order: Signed
    quote: Signed
    prepare: Signed
    fulfilment: bytes


def attempt(a: Side, b: Side, line: Line, amount_to: int, expires: int = NOW + 30_000,
            amount_from: int | None = None) -> Attempt:
    """alice@A pays bob@B ``amount_to`` cents: the order, B's quote, A's PREPARE."""
    order = PaymentOrder(a.state.ledger_id, os.urandom(16).hex(), "alice", "bob", b.node.public,
                         amount_to, 10_000, NOW + 60_000)
    signed_order = sign_message(order, a.members["alice"])
    fulfilment = os.urandom(32)
    condition = hashlib.sha256(fulfilment).hexdigest()
    attempt_id = os.urandom(16).hex()
    quote = sign_message(Quote(attempt_id, order.id, a.node.public, "bob", amount_to, condition,
                               NOW + 40_000), b.node)
    send = amount_from if amount_from is not None else line.needed(amount_to, "a")
    prepare = Prepare(attempt_id, line.id, a.node.public, b.node.public, send,
                      line.convert(send, "a"), condition, expires, signed_order, quote)
    return Attempt(signed_order, quote, sign_message(prepare, a.node), fulfilment)


def two() -> tuple[Side, Side, Line]:
    a = collective("Riverside Time Bank", HOUR, ["alice", "ann"])
    b = collective("Greenway Co-op", CENT, ["bob", "bea"])
    return a, b, agree_line(a, b)


def test_a_payment_across_a_line_posts_on_both_ledgers_and_mirrors() -> None:
    a, b, line = two()
    t = attempt(a, b, line, 90)  # 90 cents = 45 minutes
    assert a.apply(t.prepare).code == ResultCode.ok
    assert a.state.accounts["alice"].pending_debit == 45
    assert b.apply(t.prepare).code == ResultCode.ok
    assert b.state.accounts["bob"].pending_credit == 90
    assert b.state.accounts["bob"].balance == 0  # pending until A decides

    fulfil = sign_message(Fulfil(t.prepare.msg.id, t.fulfilment.hex()), b.node)  # type: ignore[union-attr]
    assert a.apply(fulfil, NOW + 100).code == ResultCode.ok
    assert a.state.accounts["alice"].balance == -45
    post = sign_message(Decision(t.prepare.msg.id, "post"), a.node)  # type: ignore[union-attr]
    assert b.apply(post, NOW + 200).code == ResultCode.ok
    assert b.state.accounts["bob"].balance == 90

    peer_on_a = a.state.accounts[peer_handle(b.node.public)]
    peer_on_b = b.state.accounts[peer_handle(a.node.public)]
    assert peer_on_a.balance == 45 and peer_on_b.balance == -90  # mirrored at the rate
    for side in (a, b):
        assert invariant_violations(side.state) == []
        assert all(acc.pending_debit == acc.pending_credit == 0
                   for acc in side.state.accounts.values())


def test_many_small_payments_keep_the_mirrored_accounts_in_step() -> None:
    a, b, line = two()
    sent = received = 0
    for amount_from in [1, 3, 7, 1, 2, 5, 11, 1, 1, 13]:
        t = attempt(a, b, line, line.convert(amount_from, "a"), amount_from=amount_from)
        p = t.prepare.msg
        assert isinstance(p, Prepare)
        for side in (a, b):
            assert side.apply(t.prepare).code == ResultCode.ok
        assert a.apply(sign_message(Fulfil(p.id, t.fulfilment.hex()), b.node)).code == ResultCode.ok
        assert b.apply(sign_message(Decision(p.id, "post"), a.node)).code == ResultCode.ok
        sent += p.amount_from
        received += p.amount_to
    assert a.state.accounts[peer_handle(b.node.public)].balance == sent
    assert b.state.accounts[peer_handle(a.node.public)].balance == -received
    assert received == sum(line.convert(x, "a") for x in [1, 3, 7, 1, 2, 5, 11, 1, 1, 13])


def test_forged_fulfilment_is_refused_and_moves_nothing() -> None:
    a, b, line = two()
    t = attempt(a, b, line, 90)
    a.apply(t.prepare)
    before = copy.deepcopy(a.state.accounts)
    forged = sign_message(Fulfil(t.prepare.msg.id, os.urandom(32).hex()), b.node)  # type: ignore[union-attr]
    assert a.apply(forged).code == ResultCode.condition_mismatch
    assert a.state.accounts == before


def test_fulfilment_after_the_expiry_is_refused_and_the_source_voids() -> None:
    a, b, line = two()
    t = attempt(a, b, line, 90, expires=NOW + 5_000)
    a.apply(t.prepare)
    p = t.prepare.msg
    assert isinstance(p, Prepare)
    late = sign_message(Fulfil(p.id, t.fulfilment.hex()), b.node)
    assert a.apply(late, NOW + 5_000).code == ResultCode.too_late
    early_void = sign_message(Decision(p.id, "void"), a.node)
    assert a.apply(early_void, NOW + 4_999).code == ResultCode.not_expired
    assert a.apply(early_void, NOW + 5_000).code == ResultCode.ok
    assert a.state.accounts["alice"].pending_debit == 0
    assert a.state.accounts["alice"].balance == 0


def test_prepare_beyond_the_line_is_refused_on_both_sides() -> None:
    a, b, line = two()  # B lets A owe 5000 cents; A may owe B 5000 * 1/2 = 2500 minutes
    t = attempt(a, b, line, 6000)
    before_a, before_b = copy.deepcopy(a.state.accounts), copy.deepcopy(b.state.accounts)
    assert a.apply(t.prepare).code == ResultCode.exceeds_line_limit
    assert b.apply(t.prepare).code == ResultCode.exceeds_line_limit
    assert (a.state.accounts, b.state.accounts) == (before_a, before_b)


def test_prepare_signed_by_another_key_or_with_a_wrong_rate_is_refused() -> None:
    a, b, line = two()
    t = attempt(a, b, line, 90)
    intruder = SecretKey(os.urandom(32))
    p = t.prepare.msg
    assert isinstance(p, Prepare)
    forged = Signed(p, (sign_message(p, intruder).sigs[0],))
    assert b.apply(forged).code == ResultCode.bad_signature
    wrong = sign_message(Prepare(p.id, p.line, p.from_node, p.to_node, p.amount_from,
                                 p.amount_to + 1, p.condition, p.expires_at, p.order, p.quote),
                         a.node)
    assert b.apply(wrong).code == ResultCode.amount_mismatch


def test_an_embedded_quote_verified_before_does_not_vouch_for_a_forged_copy() -> None:
    """The quote inside a PREPARE is verified once per node (a memo by its exact bytes and
    signatures); a copy with a forged signature or changed terms is verified afresh and
    refused, however often the genuine one was seen."""
    a, b, line = two()
    t = attempt(a, b, line, 90)
    p = t.prepare.msg
    assert isinstance(p, Prepare)
    assert SIGNATURES.check(t.quote) == (frozenset({b.node.public}), True)
    intruder = SecretKey(os.urandom(32))
    q = t.quote.msg
    assert isinstance(q, Quote)
    forged_sig = Signed(q, (Signature(b.node.public, sign_message(q, intruder).sigs[0].sig),))
    richer = Signed(replace(q, amount=q.amount + 1), t.quote.sigs)  # the same signature
    for quote in (forged_sig, richer):
        assert SIGNATURES.check(quote) == (frozenset(), False)
        prepare = sign_message(replace(p, quote=quote), a.node)
        assert b.apply(prepare).code == ResultCode.bad_signature
    assert b.state.holds == {}
    assert b.apply(t.prepare).code == ResultCode.ok  # the genuine one, remembered, still holds


def test_the_signature_memo_keeps_a_bounded_number_of_answers() -> None:
    memo = SignatureMemo(size=2)
    a, b, line = two()
    quotes = [attempt(a, b, line, 10 + i).quote for i in range(3)]
    for quote in quotes:
        assert memo.check(quote) == (frozenset({b.node.public}), True)
    assert memo.get(quotes[0]) is None  # the oldest went first
    assert memo.get(quotes[2]) == (frozenset({b.node.public}), True)


def test_a_replayed_message_answers_exists_and_changes_nothing() -> None:
    a, b, line = two()
    t = attempt(a, b, line, 90)
    assert b.apply(t.prepare).code == ResultCode.ok
    before = copy.deepcopy(b.state.accounts)
    assert b.apply(t.prepare).code == ResultCode.exists
    assert b.state.accounts == before


def test_destination_refusal_voids_the_payees_pending_credit() -> None:
    a, b, line = two()
    t = attempt(a, b, line, 90)
    p = t.prepare.msg
    assert isinstance(p, Prepare)
    a.apply(t.prepare)
    b.apply(t.prepare)
    reject = sign_message(Reject(p.id, "account_closed", "bob left"), b.node)
    assert b.apply(reject).code == ResultCode.ok
    assert a.apply(reject).code == ResultCode.ok
    assert b.state.accounts["bob"].pending_credit == 0
    assert a.state.accounts["alice"].pending_debit == 0
    # The upstream cannot then post what it voided.
    assert b.apply(sign_message(Decision(p.id, "post"), a.node)).code == ResultCode.hold_resolved


@pytest.mark.parametrize("who", ["steward_missing", "node_missing"])
def test_a_line_needs_both_nodes_and_our_stewards(who: str) -> None:
    a = collective("A", HOUR, [])
    b = collective("B", CENT, [])
    line = Line(os.urandom(16).hex(), 1, a.party, b.party, 100, 100, 1, 1, "active", NOW + 1000)
    keys = [a.node, b.node] if who == "steward_missing" else [a.node, a.steward]
    code = a.apply(sign_message(line, *keys)).code
    assert code == (ResultCode.not_enough_steward_signatures if who == "steward_missing"
                    else ResultCode.bad_signature)
    assert a.state.lines == {}


def test_a_suspended_line_refuses_new_payments() -> None:
    a, b, line = two()
    suspended = Line(line.id, 2, line.a, line.b, line.a_limit, line.b_limit, line.rate_num,
                     line.rate_den, "suspended", NOW + 60_000)
    assert a.apply(sign_message(suspended, a.node, b.node, a.steward)).code == ResultCode.ok
    assert a.apply(attempt(a, b, line, 90).prepare).code == ResultCode.line_suspended
