"""Suspending a line by one side alone, and settling a line out of band, on two pure ledgers.

Builds on ``test_lines``'s two collectives (A in minutes, B in cents, 2 cents per minute) and
asserts what their stewards would see: which signatures each ledger asks for, refusals that
change nothing, holds in flight that still settle, and peer accounts that still mirror each
other after a settlement.
"""

from __future__ import annotations

import copy
import hashlib
import os
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.codes import ResultCode
from protocol.federation import (
    SETTLEMENT_ACCOUNT,
    Decision,
    Fulfil,
    Line,
    LineSettlement,
    PaymentOrder,
    Prepare,
    Quote,
    peer_handle,
)
from protocol.ledger import invariant_violations
from protocol.messages import sign_message
from tests.protocol.test_lines import (
    CENT,
    HOUR,
    NOW,
    Side,
    agree_line,
    attempt,
    collective,
    two,
)


def suspension(line: Line, version: int = 2, **changes: int) -> Line:
    return replace(line, version=version, status="suspended", valid_until=NOW + 90_000,
                   **changes)


def pay(a: Side, b: Side, line: Line, amount_from: int) -> None:
    """alice@A pays bob@B: ``amount_from`` minutes, posted on both ledgers."""
    t = attempt(a, b, line, line.convert(amount_from, "a"), amount_from=amount_from)
    p = t.prepare.msg
    assert isinstance(p, Prepare)
    assert a.apply(t.prepare).code == b.apply(t.prepare).code == ResultCode.ok
    assert a.apply(sign_message(Fulfil(p.id, t.fulfilment.hex()), b.node)).code == ResultCode.ok
    assert b.apply(sign_message(Decision(p.id, "post"), a.node)).code == ResultCode.ok


def peers(a: Side, b: Side) -> tuple[int, int]:
    """The peer accounts' balances: A's (minutes, > 0 when A owes B) and B's (cents)."""
    return (a.state.accounts[peer_handle(b.node.public)].balance,
            b.state.accounts[peer_handle(a.node.public)].balance)


# --- suspension by one side ---------------------------------------------------------------


def test_one_side_suspends_alone_and_both_ledgers_refuse_new_payments() -> None:
    a, b, line = two()
    stop = sign_message(suspension(line), a.node, a.steward)  # A's node and stewards only
    assert a.apply(stop).code == ResultCode.ok
    assert b.apply(stop).code == ResultCode.ok  # B's stewards are not asked: A's node suffices
    for side in (a, b):
        current = side.state.lines[line.id].msg
        assert isinstance(current, Line) and (current.version, current.status) == (2, "suspended")
        assert side.apply(attempt(a, b, line, 90).prepare).code == ResultCode.line_suspended
    assert a.apply(stop).code == ResultCode.exists


def test_the_suspending_side_needs_its_own_stewards() -> None:
    a, b, line = two()
    node_only = sign_message(suspension(line), a.node)
    assert a.apply(node_only).code == ResultCode.not_enough_steward_signatures
    # B's steward is no steward of A.
    assert a.apply(sign_message(suspension(line), a.node, b.steward)).code == \
        ResultCode.not_enough_steward_signatures
    current = a.state.lines[line.id].msg
    assert isinstance(current, Line) and current.status == "active"


def test_anything_more_than_a_suspension_still_needs_both_sides() -> None:
    a, b, line = two()
    # Suspending and lowering B's limit at once: A alone may not.
    bigger = sign_message(suspension(line, b_limit=10), a.node, a.steward)
    assert a.apply(bigger).code == ResultCode.bad_signature
    assert b.apply(bigger).code == ResultCode.bad_signature
    # Not newer than the version in force: that version was other terms.
    assert b.apply(sign_message(suspension(line, version=1), a.node, a.steward)).code == \
        ResultCode.exists_with_different_fields
    # Resuming alone is refused: resuming needs both sides again.
    stop = sign_message(suspension(line), b.node, b.steward)
    assert a.apply(stop).code == b.apply(stop).code == ResultCode.ok
    resume = replace(line, version=3, valid_until=NOW + 90_000)
    assert a.apply(sign_message(resume, a.node, a.steward)).code == ResultCode.bad_signature
    assert a.apply(sign_message(resume, a.node, b.node, a.steward)).code == ResultCode.ok
    # A third node's signature on a suspension counts for nothing.
    _, c, _ = two()
    assert b.apply(sign_message(suspension(line, version=9), c.node)).code in (
        ResultCode.bad_signature, ResultCode.not_enough_steward_signatures)


def test_holds_in_flight_when_a_line_is_suspended_still_settle() -> None:
    a, b, line = two()
    t = attempt(a, b, line, 90)
    p = t.prepare.msg
    assert isinstance(p, Prepare)
    assert a.apply(t.prepare).code == b.apply(t.prepare).code == ResultCode.ok
    stop = sign_message(suspension(line), b.node, b.steward)
    assert a.apply(stop).code == b.apply(stop).code == ResultCode.ok
    assert a.apply(sign_message(Fulfil(p.id, t.fulfilment.hex()), b.node)).code == ResultCode.ok
    assert b.apply(sign_message(Decision(p.id, "post"), a.node)).code == ResultCode.ok
    assert peers(a, b) == (45, -90)
    assert b.state.accounts["bob"].balance == 90
    for side in (a, b):
        assert invariant_violations(side.state) == []


# --- settlement out of band ----------------------------------------------------------------


def settlement(line: Line, paid_by: str, amount_a: int, amount_b: int, sequence: int = 1,
               valid_until: int = NOW + 60_000) -> LineSettlement:
    return LineSettlement(os.urandom(16).hex(), line.id, sequence, paid_by,  # type: ignore[arg-type]
                          amount_a, amount_b, "bank ref 2024-0017", valid_until)


def both(a: Side, b: Side, s: LineSettlement) -> tuple[ResultCode, ResultCode]:
    return (a.apply(sign_message(s, a.node, b.node, a.steward)).code,
            b.apply(sign_message(s, a.node, b.node, b.steward)).code)


def test_a_settlement_moves_both_peer_accounts_toward_zero_and_they_still_mirror() -> None:
    a, b, line = two()
    pay(a, b, line, 45)
    pay(a, b, line, 15)
    assert peers(a, b) == (60, -120)  # A owes B 60 minutes = 120 cents
    # A pays B 20 minutes' worth (40 cents) in euros, outside Tally.
    assert both(a, b, settlement(line, "a", 20, 40)) == (ResultCode.ok, ResultCode.ok)
    assert peers(a, b) == (40, -80)
    assert a.state.accounts[SETTLEMENT_ACCOUNT].balance == 20
    assert b.state.accounts[SETTLEMENT_ACCOUNT].balance == -40
    # Members' balances are untouched; every ledger still sums to zero.
    assert a.state.accounts["alice"].balance == -60
    assert b.state.accounts["bob"].balance == 120
    for side in (a, b):
        assert invariant_violations(side.state) == []
    # Settled in full: both peer accounts at zero.
    assert both(a, b, settlement(line, "a", 40, 80, sequence=2)) == (ResultCode.ok,) * 2
    assert peers(a, b) == (0, 0)


def test_a_settlement_may_not_pass_zero_or_go_the_wrong_way() -> None:
    a, b, line = two()
    assert both(a, b, settlement(line, "a", 1, 2)) == (ResultCode.exceeds_line_balance,) * 2
    pay(a, b, line, 30)
    before = copy.deepcopy((a.state.accounts, b.state.accounts))
    for s in (settlement(line, "a", 31, 62),  # past zero
              settlement(line, "b", 10, 20)):  # B owes nothing, so B paid nothing
        assert both(a, b, s) == (ResultCode.exceeds_line_balance,) * 2
    assert both(a, b, settlement(line, "a", 10, 25)) == (ResultCode.amount_mismatch,) * 2
    assert (a.state.accounts, b.state.accounts) == before


def test_a_settlement_needs_both_nodes_and_each_sides_stewards_and_is_unique() -> None:
    a, b, line = two()
    pay(a, b, line, 30)
    s = settlement(line, "a", 10, 20)
    assert a.apply(sign_message(s, a.node, a.steward)).code == ResultCode.bad_signature
    assert a.apply(sign_message(s, a.node, b.node)).code == \
        ResultCode.not_enough_steward_signatures
    late = settlement(line, "a", 10, 20, valid_until=NOW - 1)
    assert a.apply(sign_message(late, a.node, b.node, a.steward)).code == ResultCode.expired
    signed = sign_message(s, a.node, b.node, a.steward)
    assert a.apply(signed).code == ResultCode.ok
    assert a.apply(signed).code == ResultCode.exists
    other = settlement(line, "a", 5, 10)  # the same sequence number, other terms
    assert a.apply(sign_message(other, a.node, b.node, a.steward)).code == \
        ResultCode.exists_with_different_fields
    assert peers(a, b)[0] == 20


def reverse_prepare(a: Side, b: Side, line: Line, amount_from: int) -> Prepare:
    """bob@B pays alice@A ``amount_from`` cents: B's PREPARE, with A's quote."""
    order = sign_message(PaymentOrder(b.state.ledger_id, os.urandom(16).hex(), "bob", "alice",
                                      a.node.public, line.convert(amount_from, "b"), amount_from,
                                      NOW + 60_000), b.members["bob"])
    condition = hashlib.sha256(os.urandom(32)).hexdigest()
    attempt_id = os.urandom(16).hex()
    quote = sign_message(Quote(attempt_id, order.msg.id, b.node.public, "alice",  # type: ignore[union-attr]
                               line.convert(amount_from, "b"), condition, NOW + 40_000), a.node)
    return Prepare(attempt_id, line.id, b.node.public, a.node.public, amount_from,
                   line.convert(amount_from, "b"), condition, NOW + 30_000, order, quote)


def test_a_settlement_leaves_room_for_the_holds_in_flight() -> None:
    a = collective("Riverside Time Bank", HOUR, ["alice"])
    b = collective("Greenway Co-op", CENT, ["bob"])
    line = agree_line(a, b, a_limit=100)  # B may owe A at most 100 minutes
    pay(a, b, line, 30)  # A owes B 30 minutes
    # bob@B pays alice@A 80 minutes (160 cents), still in flight: if it posts, B owes A 50.
    back = sign_message(reverse_prepare(a, b, line, 160), b.node)
    assert a.apply(back).code == ResultCode.ok
    assert a.state.accounts[peer_handle(b.node.public)].pending_debit == 80
    # Settling all 30 would leave the hold 100 - 80 ... 0 - 80 = -80: fits; but settling
    # after a second hold of 40 would leave 0 - 120 < -100: refused.
    back2 = sign_message(reverse_prepare(a, b, line, 80), b.node)
    assert a.apply(back2).code == ResultCode.ok
    before = copy.deepcopy(a.state.accounts)
    s = settlement(line, "a", 30, 60)
    assert a.apply(sign_message(s, a.node, b.node, a.steward)).code == \
        ResultCode.exceeds_line_balance
    assert a.state.accounts == before
    ok = settlement(line, "a", 10, 20)
    assert a.apply(sign_message(ok, a.node, b.node, a.steward)).code == ResultCode.ok
    assert invariant_violations(a.state) == []


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["pay", "settle"]), st.integers(1, 80)),
                min_size=1, max_size=12))
def test_after_any_payments_and_settlements_the_peer_accounts_mirror(
    steps: list[tuple[str, int]],
) -> None:
    a, b, line = two()
    sequence = 0
    total_a = total_b = 0  # the pairs of amounts both ledgers logged
    for kind, amount in steps:
        if kind == "pay":
            if total_a + amount > line.b_limit // 2:
                continue
            pay(a, b, line, amount)
            total_a, total_b = total_a + amount, total_b + line.convert(amount, "a")
            continue
        sequence += 1
        s = settlement(line, "a", amount, line.convert(amount, "a"), sequence=sequence)
        codes = both(a, b, s)
        assert codes[0] == codes[1]  # the two ledgers agree on every settlement
        if amount > total_a:
            assert codes == (ResultCode.exceeds_line_balance,) * 2
            sequence -= 1
        else:
            assert codes == (ResultCode.ok,) * 2
            total_a, total_b = total_a - amount, total_b - line.convert(amount, "a")
    assert peers(a, b) == (total_a, -total_b)
    for side in (a, b):
        assert invariant_violations(side.state) == []
        assert sum(acc.balance for acc in side.state.accounts.values()) == 0
