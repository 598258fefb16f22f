"""Reconciliation of a credit line: each side's signed statement, and what comparing shows.

Layer: protocol (pure). Both sides of a line log the same pair of amounts for every payment
across it (the PREPARE carries both; each hold keeps the other side's as ``peer_amount``),
so what has flowed over the line — net, from A to B, in A's unit and in B's — must be the
same in both ledgers once the same payments have settled on both.

Comparing two statements gives one of:

``agree``
    Same line version, same holds in flight, same sums: the books match.
``unsettled``
    The versions, the sets of holds in flight, or the numbers of settlements logged
    differ: a payment (or a change) is between the two ledgers — one side decided, the
    other has not heard yet. Nothing can be concluded from one comparison; ask again later.
    (The node escalates a difference that persists: see ``node.federation``.)
``mismatch``
    Same version and the same holds in flight, yet the sums differ. One ledger records
    payments the other does not, or records them otherwise: both signed statements are the
    evidence, raised at once to the stewards of both sides.
"""

from __future__ import annotations

from typing import Literal

from crypto.keys import PublicKey
from protocol.federation import Line, Statement
from protocol.ledger import LedgerState

Verdict = Literal["agree", "unsettled", "mismatch"]


def statement(state: LedgerState, line_id: str, now: int, size: int,
              settled: int = 0) -> Statement:
    """This ledger's statement of line ``line_id`` (which must be one of its lines);
    ``settled`` is how many settlements of it the ledger logged (the node counts them)."""
    line = state.lines[line_id].msg
    assert isinstance(line, Line)
    ours = state.genesis.node_key
    we_are_a = line.a.node_key == ours
    ours_sum = theirs_sum = 0  # what flowed from us to them, in our unit and in theirs
    in_flight = []
    for hold in state.holds.values():
        if hold.line != line_id:
            continue
        attempt, direction = hold.key.rsplit("/", 1)
        if hold.state == "held":
            in_flight.append(attempt)
        elif hold.state == "posted":
            sign = 1 if direction == "out" else -1
            ours_sum += sign * hold.amount
            theirs_sum += sign * hold.peer_amount
    sum_a, sum_b = (ours_sum, theirs_sum) if we_are_a else (-theirs_sum, -ours_sum)
    return Statement(line_id, line.version, ours, now, size, sum_a, sum_b,
                     tuple(sorted(set(in_flight))), settled)


def compare(ours: Statement, theirs: Statement) -> tuple[Verdict, str]:
    """What two statements of one line, by its two nodes, show (see the module's text)."""
    if ours.line != theirs.line:
        raise ValueError("statements of two different lines")
    if ours.version != theirs.version:
        return "unsettled", (f"line version {ours.version} here, {theirs.version} there: "
                             "a change is between the two ledgers")
    if ours.in_flight != theirs.in_flight:
        only_here = len(set(ours.in_flight) - set(theirs.in_flight))
        only_there = len(set(theirs.in_flight) - set(ours.in_flight))
        return "unsettled", (f"{only_here} payment(s) in flight only here, {only_there} only "
                             "there: ask again once they settle")
    if ours.settled != theirs.settled:
        return "unsettled", (f"{ours.settled} settlement(s) of the line logged here, "
                             f"{theirs.settled} there")
    if (ours.sum_a, ours.sum_b) != (theirs.sum_a, theirs.sum_b):
        return "mismatch", (f"with the same payments in flight, this ledger says "
                            f"{ours.sum_a}/{ours.sum_b} flowed from A to B (in A's/B's unit), "
                            f"the other says {theirs.sum_a}/{theirs.sum_b}")
    return "agree", "the two ledgers agree on this line"


def signer_ok(line: Line, st: Statement, signer: PublicKey) -> bool:
    """A statement is signed by the node it speaks for, one of the line's two."""
    return st.node == signer and signer in (line.a.node_key, line.b.node_key)
