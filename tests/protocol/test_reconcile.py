"""Reconciling a credit line: the two ledgers' statements agree once payments settle, say
"unsettled" (never "mismatch") while one is between them, and catch a lie."""

from __future__ import annotations

import hashlib
import os

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.codes import ResultCode
from protocol.federation import Decision, Fulfil, Line, PaymentOrder, Prepare, Quote, Statement
from protocol.messages import sign_message
from protocol.reconcile import compare, statement
from tests.protocol.test_lines import NOW, Side, two


def pay(src: Side, dst: Side, line: Line, payer: str, payee: str, amount_to: int,
        outcome: str = "post", settle_downstream: bool = True) -> None:
    """One payment across the line, settled on the source's ledger (and the payee's)."""
    side = line.side(src.node.public)
    assert side is not None
    order = sign_message(PaymentOrder(src.state.ledger_id, os.urandom(16).hex(), payer, payee,
                                      dst.node.public, amount_to, 10**9, NOW + 60_000),
                         src.members[payer])
    fulfilment = os.urandom(32)
    condition = hashlib.sha256(fulfilment).hexdigest()
    attempt = os.urandom(16).hex()
    quote = sign_message(Quote(attempt, order.msg.id, src.node.public, payee, amount_to,  # type: ignore[union-attr]
                               condition, NOW + 40_000), dst.node)
    send = line.needed(amount_to, side)
    prepare = sign_message(Prepare(attempt, line.id, src.node.public, dst.node.public, send,
                                   line.convert(send, side), condition, NOW + 30_000, order,
                                   quote), src.node)
    assert src.apply(prepare).code == ResultCode.ok
    assert dst.apply(prepare).code == ResultCode.ok
    if outcome == "post":
        fulfil = sign_message(Fulfil(attempt, fulfilment.hex()), dst.node)
        assert src.apply(fulfil, NOW + 10).code == ResultCode.ok
    else:
        void = sign_message(Decision(attempt, "void"), src.node)
        assert src.apply(void, NOW + 30_000).code == ResultCode.ok
    if settle_downstream:
        decision = sign_message(Decision(attempt, outcome), src.node)  # type: ignore[arg-type]
        assert dst.apply(decision, NOW + 30_001).code == ResultCode.ok


def statements(a: Side, b: Side, line: Line) -> tuple[Statement, Statement]:
    return (statement(a.state, line.id, NOW, 1), statement(b.state, line.id, NOW, 1))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 200), st.booleans()), max_size=12))
def test_settled_payments_both_ways_always_agree(payments: list[tuple[bool, int, bool]]) -> None:
    a, b, line = two()
    for a_pays, amount, posted in payments:
        src, dst, payer, payee = (a, b, "alice", "bob") if a_pays else (b, a, "bob", "alice")
        pay(src, dst, line, payer, payee, amount, "post" if posted else "void")
    ours, theirs = statements(a, b, line)
    assert compare(ours, theirs)[0] == "agree"
    assert compare(theirs, ours)[0] == "agree"
    # The sums are the peer accounts, seen from A: what A sent B, net, in each unit.
    assert ours.sum_a == a.state.accounts["~" + b.node.public.key_id].balance
    assert ours.sum_b == -b.state.accounts["~" + a.node.public.key_id].balance


def test_a_payment_between_the_two_ledgers_is_unsettled_not_a_mismatch() -> None:
    a, b, line = two()
    pay(a, b, line, "alice", "bob", 90)
    pay(a, b, line, "alice", "bob", 30, settle_downstream=False)  # B has not heard yet
    verdict, detail = compare(*statements(a, b, line))
    assert verdict == "unsettled" and "in flight" in detail


def test_a_lying_statement_is_a_mismatch() -> None:
    a, b, line = two()
    pay(a, b, line, "alice", "bob", 90)
    pay(b, a, line, "bob", "alice", 40)
    ours, theirs = statements(a, b, line)
    lie = Statement(theirs.line, theirs.version, theirs.node, theirs.as_of, theirs.size,
                    theirs.sum_a - 10, theirs.sum_b, theirs.in_flight)
    verdict, detail = compare(ours, lie)
    assert verdict == "mismatch" and str(ours.sum_a) in detail


def test_a_settlement_on_one_ledger_only_is_unsettled_at_first() -> None:
    a, b, line = two()
    pay(a, b, line, "alice", "bob", 90)
    ours = statement(a.state, line.id, NOW, 1, settled=1)
    theirs = statement(b.state, line.id, NOW, 1, settled=0)
    verdict, detail = compare(ours, theirs)
    assert verdict == "unsettled" and "settlement" in detail
