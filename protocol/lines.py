"""Ledger rules for credit lines and holds: what each federation log entry does to the books.

Layer: protocol (pure). ``protocol.ledger.apply`` hands federation entries here; the node's
writer and ``tally audit`` therefore apply them with the same code. The table of entries and
their effects is in ``protocol.federation``'s docstring.

Every rule refuses without changing anything, or changes the state and returns ``ok`` with
the accounts it touched. Holds are keyed ``<attempt id>/out`` when this node is upstream on
the line (it sent the PREPARE) and ``<attempt id>/in`` when it is downstream.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from crypto.keys import PublicKey
from protocol.codes import ResultCode
from protocol.federation import (
    MAX_AMOUNT,
    ROUTING_ACCOUNT,
    SETTLEMENT_ACCOUNT,
    Decision,
    Fulfil,
    Line,
    LineSettlement,
    PaymentOrder,
    Prepare,
    Quote,
    Reject,
    peer_handle,
)
from protocol.ledger import (
    Account,
    Hold,
    LedgerState,
    Outcome,
    SigCheck,
    _record,
    digest,
)
from protocol.messages import Signed
from protocol.units import format_amount


def _refuse(code: ResultCode, detail: str) -> Outcome:
    return Outcome(code, detail=detail)


def _retry(state: LedgerState, key: str, signed: Signed) -> Outcome | None:
    seen = state.seen.get(key)
    if seen is None:
        return None
    if seen.digest == digest(signed):
        return Outcome(ResultCode.exists, seen.index, key=key)
    return _refuse(ResultCode.exists_with_different_fields, f"{key} was applied with other content")


def event_key(signed: Signed) -> str:
    """The key under which ``seen`` remembers a federation entry (unique per entry)."""
    msg = signed.msg
    if isinstance(msg, Line):
        return f"line/{msg.id}/{msg.version}"
    if isinstance(msg, Prepare):
        return f"prepare/{msg.id}/{msg.from_node.key_id}"
    if isinstance(msg, LineSettlement):
        return f"line_settlement/{msg.line}/{msg.sequence}"
    signer = signed.sigs[0].key.key_id if signed.sigs else ""
    return f"{msg.type}/{getattr(msg, 'id', '')}/{signer}"


def line_for_peer(state: LedgerState, peer: PublicKey) -> Line | None:
    """The line in force with the collective whose node key is ``peer``, if any (at most one:
    a second is refused, ``line_exists``)."""
    for signed in state.lines.values():
        line = signed.msg
        assert isinstance(line, Line)
        if peer in (line.a.node_key, line.b.node_key):
            return line
    return None


def _check_limits(
    state: LedgerState, account: Account, debit: int = 0, credit: int = 0
) -> Outcome | None:
    unit = state.genesis.unit
    over_debit = debit and account.balance - account.pending_debit - debit < -account.debit_limit
    over_credit = credit and account.balance + account.pending_credit + credit > (
        account.credit_limit)
    if account.kind == "peer" and (over_debit or over_credit):
        line = line_for_peer(state, account.key) if account.key else None
        name = line.other(state.genesis.node_key).name if line else account.handle
        room = (account.debit_limit + account.balance - account.pending_debit if over_debit
                else account.credit_limit - account.balance - account.pending_credit)
        return _refuse(ResultCode.exceeds_line_limit,
                       f"the credit line with {name} has room for "
                       f"{format_amount(max(room, 0), unit)} more now")
    if over_debit:
        return _refuse(ResultCode.exceeds_debit_limit,
                       f"{account.handle!r} may go at most "
                       f"{format_amount(account.debit_limit, unit)} below zero")
    if over_credit:
        return _refuse(ResultCode.exceeds_credit_limit,
                       f"{account.handle!r} may hold at most "
                       f"{format_amount(account.credit_limit, unit)}")
    return None


# --- lines ----------------------------------------------------------------------------------


def apply_line(state: LedgerState, signed: Signed, now: int, sigcheck: SigCheck) -> Outcome:
    line = signed.msg
    assert isinstance(line, Line)
    key = event_key(signed)
    if (retry := _retry(state, key, signed)) is not None:
        return retry
    ours = state.genesis.node_key
    side = line.side(ours)
    if side is None:
        return _refuse(ResultCode.not_a_party, "this line does not name this collective")
    me = line.a if side == "a" else line.b
    other = line.other(ours)
    if me.ledger != state.ledger_id:
        return _refuse(ResultCode.ledger_mismatch, "the line names another ledger for us")
    if me.unit != state.genesis.unit:
        return _refuse(ResultCode.invalid_field, "the line states our unit wrongly")
    if other.node_key == ours:
        return _refuse(ResultCode.not_a_party, "a line joins two different collectives")
    good, all_good = sigcheck
    suspender = _suspended_by(state, line, sigcheck)
    if suspender is not None:
        # One side suspends alone: on its own ledger its stewards sign; on the other side's,
        # the suspending node's signature suffices (stopping new payments is always safe).
        if suspender == ours and len(good & state.stewards) < state.threshold:
            return _refuse(ResultCode.not_enough_steward_signatures,
                           f"suspending a line needs the signatures of {state.threshold} "
                           "steward(s) here")
    elif not all_good or ours not in good or other.node_key not in good:
        return _refuse(ResultCode.bad_signature, "a line is signed by both collectives' nodes")
    elif len(good & state.stewards) < state.threshold:
        return _refuse(ResultCode.not_enough_steward_signatures,
                       f"a line needs the signatures of {state.threshold} steward(s) here")
    if line.valid_until < now:
        return _refuse(ResultCode.expired, "this line proposal has expired; propose again")
    current = state.lines.get(line.id)
    if current is None:
        if line_for_peer(state, other.node_key) is not None:
            return _refuse(ResultCode.line_exists,
                           "there is already a line with that collective: change its version")
    else:
        old = current.msg
        assert isinstance(old, Line)
        if line.version <= old.version:
            return _refuse(ResultCode.stale_version,
                           f"line version {line.version} is not newer than {old.version}")
        if (old.a, old.b, old.rate_num, old.rate_den) != (line.a, line.b, line.rate_num,
                                                         line.rate_den):
            return _refuse(ResultCode.invalid_field,
                           "a new version may change limits and status, not parties or rate")
    handle = peer_handle(other.node_key)
    debit_limit = line.a_limit if side == "a" else line.b_limit
    other_side: Literal["a", "b"] = "b" if side == "a" else "a"
    credit_limit = line.convert(line.b_limit if side == "a" else line.a_limit, other_side)
    account = state.accounts.get(handle)
    if account is not None and (
        account.balance - account.pending_debit < -debit_limit
        or account.balance + account.pending_credit > credit_limit
    ):
        return _refuse(ResultCode.limit_below_balance,
                       "the line is already used beyond the new limits")
    if account is None:
        state.accounts[handle] = Account(handle, "peer", other.node_key, debit_limit,
                                         credit_limit)
    else:
        account.debit_limit, account.credit_limit = debit_limit, credit_limit
    state.lines[line.id] = signed
    return _record(state, key, digest(signed), (handle,))


def is_suspension_of(old: Line, line: Line) -> bool:
    """``line`` is a newer version of ``old`` whose only change is active -> suspended."""
    return (old.status == "active" and line.status == "suspended"
            and line.version > old.version
            and (old.id, old.a, old.b, old.a_limit, old.b_limit, old.rate_num, old.rate_den)
            == (line.id, line.a, line.b, line.a_limit, line.b_limit, line.rate_num,
                line.rate_den))


def _suspended_by(state: LedgerState, line: Line, sigcheck: SigCheck) -> PublicKey | None:
    """The node key of the party that alone signed a suspension of the line in force, if
    ``line`` is one; None otherwise (then both parties must sign)."""
    current = state.lines.get(line.id)
    good, all_good = sigcheck
    if current is None or not all_good:
        return None
    old = current.msg
    assert isinstance(old, Line)
    if not is_suspension_of(old, line):
        return None
    nodes = good & {line.a.node_key, line.b.node_key}
    return next(iter(nodes)) if len(nodes) == 1 else None


# --- settlements out of band ------------------------------------------------------------------


def settlement_effect(state: LedgerState, s: LineSettlement) -> tuple[str, int]:
    """The peer account a settlement moves on this ledger, and by how much (signed)."""
    line = state.lines[s.line].msg
    assert isinstance(line, Line)
    ours = state.genesis.node_key
    side = line.side(ours)
    amount = s.amount_a if side == "a" else s.amount_b
    # The peer account is above zero when we owe the peer: our payment out of band lowers it.
    return peer_handle(line.other(ours).node_key), -amount if s.paid_by == side else amount


def settlement_refusal(state: LedgerState, s: LineSettlement) -> Outcome | None:
    """Why this ledger would refuse the settlement's amounts now, or None. (The driver asks
    before it proposes or accepts one, so that both ledgers are likely to log it.)"""
    line_signed = state.lines.get(s.line)
    if line_signed is None:
        return _refuse(ResultCode.line_not_found, f"no credit line {s.line}")
    line = line_signed.msg
    assert isinstance(line, Line)
    if s.amount_b != line.convert(s.amount_a, "a") and s.amount_a != line.convert(
            s.amount_b, "b"):
        return _refuse(ResultCode.amount_mismatch,
                       "neither amount is the other at the line's rate, rounded down")
    handle, delta = settlement_effect(state, s)
    peer = state.accounts[handle]
    unit = state.genesis.unit
    after = peer.balance + delta
    we_owe = peer.balance > 0
    if peer.balance == 0 or (delta < 0) != we_owe or (after < 0 if we_owe else after > 0):
        owed = ("nothing is owed on the line" if peer.balance == 0 else
                f"{format_amount(abs(peer.balance), unit)} is owed on the line, by "
                + ("us" if we_owe else "them"))
        return _refuse(ResultCode.exceeds_line_balance,
                       f"a settlement moves the line toward zero, never past it: {owed}")
    if after - peer.pending_debit < -peer.debit_limit or (
            after + peer.pending_credit > peer.credit_limit):
        return _refuse(ResultCode.exceeds_line_balance,
                       "payments in flight on the line need more room than the settlement "
                       "leaves; settle less, or when they have settled")
    return None


def apply_line_settlement(
    state: LedgerState, signed: Signed, now: int, sigcheck: SigCheck
) -> Outcome:
    s = signed.msg
    assert isinstance(s, LineSettlement)
    key = event_key(signed)
    if (retry := _retry(state, key, signed)) is not None:
        return retry
    line_signed = state.lines.get(s.line)
    if line_signed is None:
        return _refuse(ResultCode.line_not_found, f"no credit line {s.line}")
    line = line_signed.msg
    assert isinstance(line, Line)
    ours = state.genesis.node_key
    other = line.other(ours).node_key
    good, all_good = sigcheck
    if not all_good or ours not in good or other not in good:
        return _refuse(ResultCode.bad_signature,
                       "a settlement is signed by both collectives' nodes")
    if len(good & state.stewards) < state.threshold:
        return _refuse(ResultCode.not_enough_steward_signatures,
                       f"a settlement needs the signatures of {state.threshold} steward(s) here")
    if s.valid_until < now:
        return _refuse(ResultCode.expired, "this settlement proposal has expired; propose again")
    refusal = settlement_refusal(state, s)
    if refusal is not None:
        return refusal
    handle, delta = settlement_effect(state, s)
    peer = state.accounts[handle]
    internal = state.accounts.get(SETTLEMENT_ACCOUNT)
    if internal is None:
        internal = state.accounts[SETTLEMENT_ACCOUNT] = Account(
            SETTLEMENT_ACCOUNT, "internal", None, MAX_AMOUNT, MAX_AMOUNT)
    peer.balance += delta
    internal.balance -= delta
    return _record(state, key, digest(signed), (handle, SETTLEMENT_ACCOUNT))


# --- holds ------------------------------------------------------------------------------------


class SignatureMemo:
    """``Signed.verified_signers()``, remembered by the exact signed bytes and signatures.

    A PREPARE carries the payer's order and the destination's quote: a node on the path
    meets them in the quote round, in the PREPARE, and in each hold it logs for it. The
    answer for the same bytes and signatures never changes, so it is computed once: the
    key is the SHA-256 of the signed bytes with every signature as written (another byte
    or another signature is another key, verified afresh). Bounded: the oldest answers go
    first. ``remember`` is for answers known otherwise: a message this node just signed, or
    one a worker verified.
    """

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._known: dict[tuple[bytes, tuple[tuple[bytes, str], ...]], SigCheck] = {}

    def get(self, signed: Signed) -> SigCheck | None:
        return self._known.get(signed.identity)

    def check(self, signed: Signed) -> SigCheck:
        known = self.get(signed)
        if known is None:
            known = signed.verified_signers()
            self.remember(signed, known)
        return known

    def remember(self, signed: Signed, check: SigCheck) -> None:
        if len(self._known) >= self.size:
            del self._known[next(iter(self._known))]
        self._known[signed.identity] = check


# The embedded orders and quotes of the PREPAREs this process applies (and the node's own
# checks of the messages it logs): a verification result is the same for every node.
SIGNATURES = SignatureMemo()


def _verify(signed: Signed, key: PublicKey) -> bool:
    good, all_good = SIGNATURES.check(signed)
    return all_good and key in good and len(signed.sigs) == 1


def apply_prepare(state: LedgerState, signed: Signed, now: int, sigcheck: SigCheck) -> Outcome:
    p = signed.msg
    assert isinstance(p, Prepare)
    key = event_key(signed)
    if (retry := _retry(state, key, signed)) is not None:
        return retry
    ours = state.genesis.node_key
    good, all_good = sigcheck
    if not all_good or p.from_node not in good or len(signed.sigs) != 1:
        return _refuse(ResultCode.bad_signature, "a PREPARE is signed by its sending node")
    line_signed = state.lines.get(p.line)
    if line_signed is None:
        return _refuse(ResultCode.line_not_found, f"no credit line {p.line}")
    line = line_signed.msg
    assert isinstance(line, Line)
    if {p.from_node, p.to_node} != {line.a.node_key, line.b.node_key} or ours not in (
        p.from_node, p.to_node
    ):
        return _refuse(ResultCode.not_a_party, "the PREPARE is not for this line and node")
    if line.status != "active":
        return _refuse(ResultCode.line_suspended, "the credit line is suspended")
    from_side = line.side(p.from_node)
    assert from_side is not None
    if p.amount_to != line.convert(p.amount_from, from_side):
        return _refuse(ResultCode.amount_mismatch,
                       f"{p.amount_from} converts to {line.convert(p.amount_from, from_side)} "
                       "at the line's rate, rounded down")
    order, quote = p.order.msg, p.quote.msg
    assert isinstance(order, PaymentOrder) and isinstance(quote, Quote)
    if not _verify(p.quote, order.payee_node):
        return _refuse(ResultCode.bad_signature, "the quote is not signed by the payee's node")
    if (quote.order, quote.id, quote.condition) != (order.id, p.id, p.condition):
        return _refuse(ResultCode.quote_mismatch, "the PREPARE does not match its quote")
    if p.expires_at > min(quote.expires_at, order.valid_until):
        return _refuse(ResultCode.quote_mismatch, "the PREPARE outlives its quote or order")
    if quote.amount < order.amount:
        return _refuse(ResultCode.quote_mismatch, "the quote is for less than the order")

    hold_key = f"{p.id}/out" if p.from_node == ours else f"{p.id}/in"
    if hold_key in state.holds:
        return _refuse(ResultCode.exists_with_different_fields,
                       f"attempt {p.id} is already held here by another PREPARE")
    if (p.path[-1] if p.path else p.to_node) != order.payee_node:
        return _refuse(ResultCode.quote_mismatch, "the path does not end at the payee's node")
    if ours in p.path or p.from_node in p.path:
        return _refuse(ResultCode.invalid_field, "the path goes through a node twice")

    if p.from_node == ours:
        if f"{p.id}/in" in state.holds:
            return _hold_forward(state, signed, p, key)
        return _hold_out(state, signed, p, order, key, now)
    if order.payee_node == ours:
        return _hold_in(state, signed, p, quote, key, now)
    return _hold_transit(state, signed, p, order, key, now)


def _hold_out(
    state: LedgerState, signed: Signed, p: Prepare, order: PaymentOrder, key: str, now: int
) -> Outcome:
    """We are the source: the payer's amount is held against the line."""
    if order.ledger != state.ledger_id:
        return _refuse(ResultCode.ledger_mismatch, "the order was signed for another ledger")
    payer = state.accounts.get(order.payer)
    if payer is None or payer.kind != "member":
        return _refuse(ResultCode.account_not_found, f"payer {order.payer!r} does not exist")
    if payer.key is None or not _verify(p.order, payer.key):
        return _refuse(ResultCode.bad_signature, "the order is not signed by the payer's key")
    if order.valid_until < now:
        return _refuse(ResultCode.expired, "the payment order has expired")
    if p.amount_from > order.max_pay:
        return _refuse(ResultCode.exceeds_max_pay,
                       f"it costs {p.amount_from}; the payer allowed at most {order.max_pay}")
    if not p.path and p.amount_to < order.amount:
        # Through intermediaries the destination checks this, in its unit.
        return _refuse(ResultCode.quote_mismatch, "the PREPARE delivers less than the order")
    if payer.status != "open":
        return _refuse(ResultCode.account_closed, f"{payer.handle!r} is closed")
    return _hold(state, signed, key, payer, state.accounts[peer_handle(p.to_node)],
                 _label(state, p, order.payee))


def _hold_in(
    state: LedgerState, signed: Signed, p: Prepare, quote: Quote, key: str, now: int
) -> Outcome:
    """We are the destination: the payee's credit is held, pending the upstream's decision."""
    if not _verify(p.quote, state.genesis.node_key):
        return _refuse(ResultCode.bad_signature, "that quote was not made by this node")
    if p.expires_at <= now:
        return _refuse(ResultCode.expired, "the PREPARE expired before it arrived")
    if p.amount_to < quote.amount:
        return _refuse(ResultCode.quote_mismatch, "the PREPARE delivers less than quoted")
    payee = state.accounts.get(quote.payee)
    if payee is None or payee.kind != "member":
        return _refuse(ResultCode.account_not_found, f"no member {quote.payee!r} here")
    if payee.status != "open":
        return _refuse(ResultCode.account_closed, f"{payee.handle!r} is closed")
    order = p.order.msg
    assert isinstance(order, PaymentOrder)
    return _hold(state, signed, key, state.accounts[peer_handle(p.from_node)], payee,
                 _label(state, p, order.payer))


def _hold(state: LedgerState, signed: Signed, key: str, debit: Account, credit: Account,
          counterparty: str) -> Outcome:
    """Hold the PREPARE's amount, in our unit, from ``debit`` to ``credit`` if both stay
    within their limits: ``<id>/out`` when we sent it, ``<id>/in`` when we received it."""
    p = signed.msg
    assert isinstance(p, Prepare)
    outbound = p.from_node == state.genesis.node_key
    amount, peer_amount = (p.amount_from, p.amount_to) if outbound else (
        p.amount_to, p.amount_from)
    refusal = _check_limits(state, debit, debit=amount) or _check_limits(
        state, credit, credit=amount)
    if refusal:
        return refusal
    for account in (debit, credit):
        state.accounts.setdefault(account.handle, account)
    debit.pending_debit += amount
    credit.pending_credit += amount
    hold_key = f"{p.id}/{'out' if outbound else 'in'}"
    state.holds[hold_key] = state.open_holds[hold_key] = Hold(
        hold_key, p.line, debit.handle, credit.handle, amount, p.condition, p.expires_at,
        counterparty, peer_amount=peer_amount)
    return _record(state, key, digest(signed), (debit.handle, credit.handle))


def _routing_account(state: LedgerState) -> Account:
    """The routing account, or a new one that ``_hold`` adds to the books only if the hold
    is made (a refusal changes nothing, not even by opening an account)."""
    return state.accounts.get(ROUTING_ACCOUNT) or Account(
        ROUTING_ACCOUNT, "internal", None, MAX_AMOUNT, MAX_AMOUNT)


def _hold_transit(
    state: LedgerState, signed: Signed, p: Prepare, order: PaymentOrder, key: str, now: int
) -> Outcome:
    """We forward it: what the upstream peer sends is held against its line, to be paid on
    downstream from our routing account."""
    if p.expires_at <= now:
        return _refuse(ResultCode.expired, "the PREPARE expired before it arrived")
    if not p.path:
        return _refuse(ResultCode.no_route, "the payee is not a member here and no path follows")
    line = line_for_peer(state, p.path[0])
    if line is None:
        return _refuse(ResultCode.no_route, "no credit line with the next collective on the path")
    if line.status != "active":
        return _refuse(ResultCode.line_suspended,
                       f"the credit line with {line.other(state.genesis.node_key).name} "
                       "is suspended")
    return _hold(state, signed, key, state.accounts[peer_handle(p.from_node)],
                 _routing_account(state), _label(state, p, order.payer))


def _hold_forward(state: LedgerState, signed: Signed, p: Prepare, key: str) -> Outcome:
    """We forward what we hold inbound: no more than we received, expiring sooner."""
    inbound = state.holds[f"{p.id}/in"]
    if inbound.state != "held":
        return _refuse(ResultCode.hold_resolved, f"the inbound hold was already {inbound.state}")
    if inbound.debit == peer_handle(p.to_node):
        return _refuse(ResultCode.invalid_field, "a payment is not sent back where it came from")
    if p.condition != inbound.condition:
        return _refuse(ResultCode.quote_mismatch, "the forward has another condition")
    if p.expires_at >= inbound.expires_at:
        return _refuse(ResultCode.insufficient_time,
                       "a forwarded PREPARE must expire before the one it forwards")
    if p.amount_from > inbound.amount:
        return _refuse(ResultCode.exceeds_max_pay,
                       f"forwards {p.amount_from}, more than the {inbound.amount} received")
    return _hold(state, signed, key, _routing_account(state),
                 state.accounts[peer_handle(p.to_node)], inbound.counterparty)


def _label(state: LedgerState, p: Prepare, handle: str) -> str:
    line = state.lines[p.line].msg
    assert isinstance(line, Line)
    return f"{handle}@{line.other(state.genesis.node_key).name}"


def _resolve(
    state: LedgerState, hold: Hold, outcome: Literal["post", "void"], key: str, signed: Signed
) -> Outcome:
    if hold.state != "held":
        wanted = "posted" if outcome == "post" else "voided"
        if hold.state == wanted:
            return Outcome(ResultCode.exists, detail="already settled")
        return _refuse(ResultCode.hold_resolved, f"the hold was already {hold.state}")
    debit, credit = state.accounts[hold.debit], state.accounts[hold.credit]
    debit.pending_debit -= hold.amount
    credit.pending_credit -= hold.amount
    del state.open_holds[hold.key]
    postings: tuple[tuple[str, int, str], ...] = ()
    if outcome == "post":
        debit.balance -= hold.amount
        credit.balance += hold.amount
        hold.state = "posted"
        postings = tuple(
            (a.handle, amount, hold.counterparty)
            for a, amount in ((debit, -hold.amount), (credit, hold.amount))
            if a.kind == "member"
        )
    else:
        hold.state = "voided"
    return _record(state, key, digest(signed), (debit.handle, credit.handle), postings)


def _signer(signed: Signed, sigcheck: SigCheck) -> PublicKey | None:
    good, all_good = sigcheck
    if not all_good or len(signed.sigs) != 1 or signed.sigs[0].key not in good:
        return None
    return signed.sigs[0].key


def _peer_of(state: LedgerState, hold: Hold) -> PublicKey:
    line = state.lines[hold.line].msg
    assert isinstance(line, Line)
    return line.other(state.genesis.node_key).node_key


def apply_settle(state: LedgerState, signed: Signed, now: int, sigcheck: SigCheck) -> Outcome:
    """FULFIL, REJECT and DECISION entries: post or void a hold, per who signed and when."""
    msg = signed.msg
    assert isinstance(msg, (Fulfil, Reject, Decision))
    key = event_key(signed)
    if (retry := _retry(state, key, signed)) is not None:
        return retry
    signer = _signer(signed, sigcheck)
    if signer is None:
        return _refuse(ResultCode.bad_signature, f"a {msg.type} is signed by one node")
    ours = state.genesis.node_key
    out_hold = state.holds.get(f"{msg.id}/out")
    in_hold = state.holds.get(f"{msg.id}/in")

    if isinstance(msg, Fulfil):
        # The downstream peer fulfils our outbound hold: valid and in time, we post.
        if out_hold is None or signer != _peer_of(state, out_hold):
            return _refuse(ResultCode.hold_not_found, "no outbound hold for this fulfilment")
        fulfilment = bytes.fromhex(msg.fulfilment)
        if hashlib.sha256(fulfilment).hexdigest() != out_hold.condition:
            return _refuse(ResultCode.condition_mismatch,
                           "the fulfilment does not hash to the condition: forged or corrupt")
        if now >= out_hold.expires_at:
            return _refuse(ResultCode.too_late, "the fulfilment arrived after the expiry")
        return _resolve(state, out_hold, "post", key, signed)

    if isinstance(msg, Reject):
        if signer == ours and in_hold is not None:
            return _resolve(state, in_hold, "void", key, signed)  # we refused it
        if out_hold is not None and signer == _peer_of(state, out_hold):
            return _resolve(state, out_hold, "void", key, signed)
        return _refuse(ResultCode.hold_not_found, "no hold this REJECT may void")

    # Decision.
    if signer == ours:
        if out_hold is None or msg.outcome != "void":
            return _refuse(ResultCode.hold_not_found,
                           "this node logs only its own void decisions, on expiry")
        if now < out_hold.expires_at:
            return _refuse(ResultCode.not_expired, "the hold has not expired yet")
        return _resolve(state, out_hold, "void", key, signed)
    if in_hold is None or signer != _peer_of(state, in_hold):
        return _refuse(ResultCode.hold_not_found, "no inbound hold this decision may settle")
    return _resolve(state, in_hold, msg.outcome, key, signed)


def apply_federation(
    state: LedgerState, signed: Signed, now: int, sigcheck: SigCheck | None = None
) -> Outcome:
    check = sigcheck if sigcheck is not None else signed.verified_signers()
    msg = signed.msg
    if isinstance(msg, Line):
        return apply_line(state, signed, now, check)
    if isinstance(msg, Prepare):
        return apply_prepare(state, signed, now, check)
    if isinstance(msg, (Fulfil, Reject, Decision)):
        return apply_settle(state, signed, now, check)
    if isinstance(msg, LineSettlement):
        return apply_line_settlement(state, signed, now, check)
    return _refuse(ResultCode.invalid_field, f"{msg.type} is not a log entry")


__all__ = ["apply_federation", "event_key", "ROUTING_ACCOUNT"]
