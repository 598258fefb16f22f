"""Ledger rules for a payment through an intermediary: A pays C through B, on three ledgers.

B holds what A sends against the A–B line (into B's routing account) and forwards no more
than it received, expiring sooner, against the B–C line. Each line's upstream side decides.
"""

from __future__ import annotations

import copy
import hashlib
import os
from dataclasses import dataclass

from protocol.codes import ResultCode
from protocol.federation import (
    ROUTING_ACCOUNT,
    Decision,
    Fulfil,
    Line,
    PaymentOrder,
    Prepare,
    Quote,
    Reject,
    peer_handle,
)
from protocol.ledger import invariant_violations
from protocol.messages import Signed, sign_message
from tests.protocol.test_lines import CENT, HOUR, NOW, Side, agree_line, collective


@dataclass
class Path:
    a: Side
    b: Side
    c: Side
    ab: Line
    bc: Line


def three() -> Path:
    a = collective("Riverside Time Bank", HOUR, ["alice"])
    b = collective("Greenway Co-op", CENT, ["bea"])
    c = collective("Hilltop Bakery", CENT, ["cy"])
    ab = agree_line(a, b)  # rate 2 B-cents per A-minute
    bc = agree_line(b, c)  # B is "a" here: 2 C-units per B-cent
    return Path(a, b, c, ab, bc)


@dataclass
class Hop:
    first: Signed  # A -> B
    second: Signed  # B -> C
    fulfilment: bytes
    id: str


def two_hop(t: Path, amount: int = 100, expires: int = NOW + 30_000,
            margin: int = 8000, forward: int | None = None) -> Hop:
    a, b, c = t.a, t.b, t.c
    order = sign_message(PaymentOrder(a.state.ledger_id, os.urandom(16).hex(), "alice", "cy",
                                      c.node.public, amount, 10_000, NOW + 60_000),
                         a.members["alice"])
    fulfilment = os.urandom(32)
    condition = hashlib.sha256(fulfilment).hexdigest()
    attempt_id = os.urandom(16).hex()
    quote = sign_message(Quote(attempt_id, order.msg.id, a.node.public, "cy", amount,  # type: ignore[union-attr]
                               condition, NOW + 40_000), c.node)
    b_sends = t.bc.needed(amount, "a")
    a_sends = t.ab.needed(b_sends, "a")
    first = Prepare(attempt_id, t.ab.id, a.node.public, b.node.public, a_sends,
                    t.ab.convert(a_sends, "a"), condition, expires, order, quote,
                    (c.node.public,))
    out = forward if forward is not None else first.amount_to
    second = Prepare(attempt_id, t.bc.id, b.node.public, c.node.public, out,
                     t.bc.convert(out, "a"), condition, expires - margin, order, quote)
    return Hop(sign_message(first, a.node), sign_message(second, b.node), fulfilment,
               attempt_id)


def _all_clean(t: Path) -> None:
    for side in (t.a, t.b, t.c):
        assert invariant_violations(side.state) == [], side.name


def test_two_hop_payment_posts_on_three_ledgers_and_every_line_mirrors() -> None:
    t = three()
    h = two_hop(t, 100)  # cy gets 100; B sends 50 cents; A sends 25 minutes
    assert t.a.apply(h.first).code == ResultCode.ok
    assert t.b.apply(h.first).code == ResultCode.ok
    assert t.b.apply(h.second).code == ResultCode.ok
    assert t.c.apply(h.second).code == ResultCode.ok
    assert t.c.state.accounts["cy"].pending_credit >= 100
    routing = t.b.state.accounts[ROUTING_ACCOUNT]
    assert routing.pending_credit == routing.pending_debit == 50

    fulfil = sign_message(Fulfil(h.id, h.fulfilment.hex()), t.c.node)
    assert t.b.apply(fulfil, NOW + 100).code == ResultCode.ok  # B posts its downstream hold
    assert t.c.apply(sign_message(Decision(h.id, "post"), t.b.node), NOW + 150).code == \
        ResultCode.ok
    fulfil_up = sign_message(Fulfil(h.id, h.fulfilment.hex()), t.b.node)
    assert t.a.apply(fulfil_up, NOW + 200).code == ResultCode.ok
    assert t.b.apply(sign_message(Decision(h.id, "post"), t.a.node), NOW + 250).code == \
        ResultCode.ok

    assert t.a.state.accounts["alice"].balance == -25
    assert t.c.state.accounts["cy"].balance == 100
    assert t.b.state.accounts[ROUTING_ACCOUNT].balance == 0  # B forwarded, neither won nor lost
    # Each line's two peer accounts mirror each other at its rate.
    assert t.a.state.accounts[peer_handle(t.b.node.public)].balance == 25
    assert t.b.state.accounts[peer_handle(t.a.node.public)].balance == -50
    assert t.b.state.accounts[peer_handle(t.c.node.public)].balance == 50
    assert t.c.state.accounts[peer_handle(t.b.node.public)].balance == -100
    _all_clean(t)


def test_intermediary_forwards_no_more_than_it_received_and_expires_sooner() -> None:
    t = three()
    greedy = two_hop(t, 100, forward=51)  # B received 50 cents
    assert t.b.apply(greedy.first).code == ResultCode.ok
    before = t.b.state.accounts[peer_handle(t.c.node.public)].pending_credit
    assert t.b.apply(greedy.second).code == ResultCode.exceeds_max_pay
    late = two_hop(t, 100, margin=0)
    assert t.b.apply(late.first).code == ResultCode.ok
    assert t.b.apply(late.second).code == ResultCode.insufficient_time
    assert t.b.state.accounts[peer_handle(t.c.node.public)].pending_credit == before
    _all_clean(t)


def test_a_path_that_does_not_end_at_the_payee_or_loops_is_refused() -> None:
    t = three()
    h = two_hop(t)
    p = h.first.msg
    assert isinstance(p, Prepare)
    elsewhere = Prepare(p.id, p.line, p.from_node, p.to_node, p.amount_from, p.amount_to,
                        p.condition, p.expires_at, p.order, p.quote, ())
    assert t.b.apply(sign_message(elsewhere, t.a.node)).code == ResultCode.quote_mismatch
    looping = Prepare(p.id, p.line, p.from_node, p.to_node, p.amount_from, p.amount_to,
                      p.condition, p.expires_at, p.order, p.quote,
                      (t.a.node.public, t.c.node.public))
    assert t.b.apply(sign_message(looping, t.a.node)).code == ResultCode.invalid_field
    assert ROUTING_ACCOUNT not in t.b.state.accounts or \
        t.b.state.accounts[ROUTING_ACCOUNT].pending_credit == 0


def test_downstream_refusal_voids_both_of_the_intermediarys_holds() -> None:
    t = three()
    h = two_hop(t)
    for side, entry in ((t.a, h.first), (t.b, h.first), (t.b, h.second)):
        assert side.apply(entry).code == ResultCode.ok
    assert t.b.apply(sign_message(Reject(h.id, "account_closed", "no"), t.c.node)).code == \
        ResultCode.ok
    assert t.b.apply(sign_message(Reject(h.id, "account_closed", "no"), t.b.node)).code == \
        ResultCode.ok  # B refuses upstream: its inbound hold goes
    assert t.a.apply(sign_message(Reject(h.id, "account_closed", "no"), t.b.node)).code == \
        ResultCode.ok
    for side in (t.a, t.b):
        assert all(acc.pending_debit == acc.pending_credit == 0
                   for acc in side.state.accounts.values())
    assert t.a.state.accounts["alice"].balance == 0
    _all_clean(t)


def test_upstream_void_after_the_intermediary_paid_downstream_is_its_bounded_loss() -> None:
    t = three()
    h = two_hop(t)
    for side, entry in ((t.a, h.first), (t.b, h.first), (t.b, h.second), (t.c, h.second)):
        assert side.apply(entry).code == ResultCode.ok
    fulfil = sign_message(Fulfil(h.id, h.fulfilment.hex()), t.c.node)
    assert t.b.apply(fulfil, NOW + 100).code == ResultCode.ok
    # The fulfilment reaches A too late: A voids by its own clock, and tells B.
    assert t.a.apply(sign_message(Decision(h.id, "void"), t.a.node), NOW + 30_001).code == \
        ResultCode.ok
    assert t.b.apply(sign_message(Decision(h.id, "void"), t.a.node), NOW + 30_002).code == \
        ResultCode.ok
    assert t.a.state.accounts["alice"].balance == 0  # the payer was told it failed: unpaid
    # B paid C 50 cents and got nothing from A: its routing account shows the loss, which
    # no more than the forwarded amount.
    assert t.b.state.accounts[ROUTING_ACCOUNT].balance == -50
    assert t.b.state.accounts[peer_handle(t.a.node.public)].balance == 0
    _all_clean(t)


def test_a_second_prepare_of_one_attempt_from_another_node_is_refused() -> None:
    t = three()
    h = two_hop(t)
    assert t.b.apply(h.first).code == ResultCode.ok
    p = h.first.msg
    assert isinstance(p, Prepare)
    # C sends B a PREPARE with the same attempt id: it must not replace A's hold.
    other = Prepare(p.id, t.bc.id, t.c.node.public, t.b.node.public, 10, t.bc.convert(10, "b"),
                    p.condition,
                    p.expires_at, p.order, p.quote, ())
    before = t.b.state.holds[f"{p.id}/in"].amount
    assert t.b.apply(sign_message(other, t.c.node)).code == \
        ResultCode.exists_with_different_fields
    assert t.b.state.holds[f"{p.id}/in"].amount == before
    _all_clean(t)


def test_a_forward_refused_for_the_upstream_line_opens_no_routing_account() -> None:
    t = three()
    h = two_hop(t, amount=20_000)  # more than A may owe B: B refuses the PREPARE
    before = copy.deepcopy(t.b.state.accounts)
    assert t.b.apply(h.first).code == ResultCode.exceeds_line_limit
    assert t.b.state.accounts == before  # nothing changed, no ~routing account either
