"""The ledger rules: which signed events a collective's books accept, and what they change.

Layer: protocol (pure: the clock reading is an argument; no I/O). Owns the rules; the node's
single writer calls ``apply`` for each queued request and stores what it returns, and
``tally audit`` calls the same ``apply`` to replay a whole log from empty.

Theory of operation
-------------------
``LedgerState`` holds every account (members now; peer accounts for credit lines later)
and the steward set. ``seen`` maps each applied event id to what the ledger needs to answer
a retry: the digest of the signed bytes and the log index. The node keeps in ``seen`` only
the ids of the batch at hand (fetched from storage first); tests and audits keep them all.

``apply(state, signed, now, policy)`` checks one signed event against the rules in rank
order (``protocol.codes``), and either changes nothing and returns the refusal, or applies
the event to ``state`` and returns ``ok``. An identical retry of an applied event returns
``exists`` with its original index, whatever has happened since.

Limits: ``debit_limit`` is how far below zero an account may go, ``credit_limit`` how far
above. Holds (pending amounts, for payments across collectives) count against both:
``balance − pending_debit ≥ −debit_limit`` and ``balance + pending_credit ≤ credit_limit``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

from crypto.keys import PublicKey
from protocol.codes import ResultCode
from protocol.messages import (
    Admit,
    Close,
    Genesis,
    Rekey,
    SetLimits,
    STEWARD_ACT_TYPES,
    SetStewards,
    Signed,
    Transfer,
)
from protocol.units import format_amount

AccountKind = Literal["member", "peer", "internal"]
AccountStatus = Literal["open", "closed"]


@dataclass
class Account:
    handle: str
    kind: AccountKind
    key: PublicKey | None
    debit_limit: int
    credit_limit: int
    balance: int = 0
    pending_debit: int = 0
    pending_credit: int = 0
    status: AccountStatus = "open"

    def to_json(self) -> dict[str, object]:
        return {
            "handle": self.handle,
            "kind": self.kind,
            "key": self.key.text if self.key else None,
            "balance": self.balance,
            "pending_debit": self.pending_debit,
            "pending_credit": self.pending_credit,
            "debit_limit": self.debit_limit,
            "credit_limit": self.credit_limit,
            "status": self.status,
        }


@dataclass
class Hold:
    """A pending amount on two accounts, for one attempt on one line, until posted or voided."""

    key: str  # "<attempt id>/out" (we hold as upstream) or "<attempt id>/in" (as downstream)
    line: str
    debit: str  # account whose pending_debit holds the amount
    credit: str  # account whose pending_credit holds it
    amount: int
    condition: str
    expires_at: int
    counterparty: str  # what the member's history shows, e.g. "bob@Greenway Food Co-op"
    state: Literal["held", "posted", "voided"] = "held"
    peer_amount: int = 0  # the same amount in the other collective's unit, as it logs it

    def to_json(self) -> dict[str, object]:
        return {"key": self.key, "line": self.line, "debit": self.debit, "credit": self.credit,
                "amount": self.amount, "condition": self.condition,
                "expires_at": self.expires_at, "counterparty": self.counterparty,
                "state": self.state, "peer_amount": self.peer_amount}


@dataclass(frozen=True)
class Seen:
    """What the ledger remembers of an applied event id, to answer retries."""

    digest: bytes  # SHA-256 of the canonical signed message
    index: int  # its log index


@dataclass(frozen=True)
class Policy:
    """Rules the node's operator configures. Replaying a log ignores the window."""

    max_valid_window_ms: int | None = 24 * 3600 * 1000


@dataclass
class LedgerState:
    ledger_id: str
    genesis: Genesis
    stewards: frozenset[PublicKey]
    threshold: int
    accounts: dict[str, Account] = field(default_factory=dict)
    seen: dict[str, Seen] = field(default_factory=dict)
    size: int = 1  # log entries so far (the genesis entry is index 0)
    # Credit lines by line id (the latest signed version), and holds by hold key
    # (``protocol.lines``): both derived from the log like the accounts.
    lines: dict[str, Signed] = field(default_factory=dict)
    holds: dict[str, Hold] = field(default_factory=dict)
    # The holds still "held", by key: the payments in flight, without a walk through every
    # hold ever made (``holds`` keeps them all, for retries and recovery).
    open_holds: dict[str, Hold] = field(default_factory=dict)

    def key_owner(self, key: PublicKey) -> str | None:
        for account in self.accounts.values():
            if account.key == key and account.status == "open":
                return account.handle
        return None


@dataclass(frozen=True)
class Outcome:
    code: ResultCode
    index: int | None = None  # the log index, for ok and exists
    detail: str = ""
    # For ok: the event's key in ``seen``, the accounts it changed (the writer stores them),
    # and the history postings it makes: (handle, amount, counterparty).
    key: str = ""
    touched: tuple[str, ...] = ()
    postings: tuple[tuple[str, int, str], ...] = ()


def seen_key(signed: Signed) -> str:
    """The key under which ``seen`` remembers an event: its id, or for federation entries
    (where one id has several entries) ``protocol.lines.event_key``."""
    msg = signed.msg
    if isinstance(msg, Transfer) or msg.type in STEWARD_ACT_TYPES:
        return msg.id  # type: ignore[union-attr]
    from protocol.lines import event_key

    return event_key(signed)


def digest(signed: Signed) -> bytes:
    return hashlib.sha256(signed.canonical).digest()


def ledger_id_of(genesis_entry: bytes) -> str:
    """The ledger id: the SHA-256 of the genesis log entry's canonical bytes, in hex."""
    return hashlib.sha256(genesis_entry).hexdigest()


def memo_hash(salt: bytes, memo: str) -> str:
    """The salted hash a transfer signs instead of its memo, so the memo can later be erased."""
    return hashlib.sha256(salt + memo.encode("utf-8")).hexdigest()


class GenesisError(ValueError):
    pass


def check_genesis(signed: Signed) -> Genesis:
    """The genesis entry must be signed by the node key and by ``threshold`` of its stewards."""
    msg = signed.msg
    if not isinstance(msg, Genesis):
        raise GenesisError("the first log entry is not a genesis entry")
    good, all_good = signed.verified_signers()
    if not all_good:
        raise GenesisError("a signature on the genesis entry does not verify")
    if msg.node_key not in good:
        raise GenesisError("the genesis entry is not signed by the node key it names")
    if len(good & set(msg.stewards)) < msg.threshold:
        raise GenesisError("the genesis entry is not signed by enough of its stewards")
    if msg.threshold > len(msg.stewards):
        raise GenesisError("the genesis threshold exceeds the number of stewards")
    return msg


def new_state(genesis_signed: Signed, genesis_entry: bytes) -> LedgerState:
    genesis = check_genesis(genesis_signed)
    return LedgerState(
        ledger_id=ledger_id_of(genesis_entry),
        genesis=genesis,
        stewards=frozenset(genesis.stewards),
        threshold=genesis.threshold,
    )


SigCheck = tuple[frozenset[PublicKey], bool]  # (keys whose signature verifies, all verified)


def _common(
    state: LedgerState, signed: Signed, msg_id: str, ledger: str
) -> tuple[Outcome | None, bytes]:
    """The checks every event shares: retry, ledger, expiry. Returns (refusal or None, digest)."""
    d = digest(signed)
    seen = state.seen.get(msg_id)
    if seen is not None and seen.digest == d:
        return Outcome(ResultCode.exists, seen.index), d
    if ledger != state.ledger_id:
        return Outcome(ResultCode.ledger_mismatch, detail="signed for another ledger"), d
    return None, d


def _timing(valid_until: int, now: int, policy: Policy) -> Outcome | None:
    if valid_until < now:
        return Outcome(ResultCode.expired, detail=f"valid_until {valid_until} is before {now}")
    window = policy.max_valid_window_ms
    if window is not None and valid_until > now + window:
        return Outcome(
            ResultCode.valid_until_too_far,
            detail=f"valid_until may be at most {window // 1000}s ahead of the node's clock",
        )
    return None


def _record(
    state: LedgerState,
    msg_id: str,
    d: bytes,
    touched: tuple[str, ...] = (),
    postings: tuple[tuple[str, int, str], ...] = (),
) -> Outcome:
    index = state.size
    # Seen(d, index) and Outcome(ok, index, ...) as their __init__ would make them, without
    # the frozen dataclasses' one object.__setattr__ per field: this runs for every event.
    seen = object.__new__(Seen)
    seen.__dict__.update(digest=d, index=index)
    state.seen[msg_id] = seen
    state.size += 1
    outcome = object.__new__(Outcome)
    outcome.__dict__.update(
        code=ResultCode.ok, index=index, detail="", key=msg_id, touched=touched,
        postings=postings,
    )
    return outcome


def apply_transfer(
    state: LedgerState,
    signed: Signed,
    now: int,
    policy: Policy = Policy(),
    sigcheck: SigCheck | None = None,
) -> Outcome:
    t = signed.msg
    assert isinstance(t, Transfer)
    refusal, d = _common(state, signed, t.id, t.ledger)
    if refusal:
        return refusal
    payer = state.accounts.get(t.payer)
    if payer is None or payer.kind != "member":
        return Outcome(ResultCode.account_not_found, detail=f"payer {t.payer!r} does not exist")
    payee = state.accounts.get(t.payee)
    if payee is None or payee.kind != "member":
        return Outcome(ResultCode.account_not_found, detail=f"payee {t.payee!r} does not exist")
    if len(signed.sigs) != 1 or signed.sigs[0].key != payer.key:
        return Outcome(ResultCode.bad_signature, detail="a transfer is signed by the payer's key alone")
    good, _ = sigcheck if sigcheck is not None else signed.verified_signers()
    if payer.key not in good:
        return Outcome(ResultCode.bad_signature, detail="the payer's signature does not verify")
    if t.id in state.seen:
        return Outcome(
            ResultCode.exists_with_different_fields,
            detail=f"id {t.id} was used before for a different transfer",
        )
    timing = _timing(t.valid_until, now, policy)
    if timing:
        return timing
    if t.payer == t.payee:
        return Outcome(ResultCode.same_account, detail="payer and payee are the same account")
    if t.amount <= 0:
        return Outcome(ResultCode.amount_must_be_positive, detail="amount must be at least 1")
    for account in (payer, payee):
        if account.status != "open":
            return Outcome(ResultCode.account_closed, detail=f"{account.handle!r} is closed")
    if payer.balance - payer.pending_debit - t.amount < -payer.debit_limit:
        return Outcome(
            ResultCode.exceeds_debit_limit,
            detail=f"{payer.handle!r} may go at most "
            f"{format_amount(payer.debit_limit, state.genesis.unit)} below zero "
            f"(balance {format_amount(payer.balance, state.genesis.unit)})",
        )
    if payee.balance + payee.pending_credit + t.amount > payee.credit_limit:
        return Outcome(
            ResultCode.exceeds_credit_limit,
            detail=f"{payee.handle!r} may hold at most "
            f"{format_amount(payee.credit_limit, state.genesis.unit)}",
        )
    payer.balance -= t.amount
    payee.balance += t.amount
    return _record(state, t.id, d, (t.payer, t.payee), transfer_postings(t))


def transfer_postings(t: Transfer) -> tuple[tuple[str, int, str], ...]:
    """The history postings an applied transfer makes, (handle, amount, counterparty): the
    payer's, then the payee's. A function of the transfer alone, so they can be rebuilt from
    the log."""
    return ((t.payer, -t.amount, t.payee), (t.payee, t.amount, t.payer))


def _check_limits(debit: int, credit: int) -> Outcome | None:
    if debit < 0 or credit < 0:
        return Outcome(ResultCode.limit_must_not_be_negative, detail="limits must be zero or more")
    return None


def apply_act(
    state: LedgerState,
    signed: Signed,
    now: int,
    policy: Policy = Policy(),
    sigcheck: SigCheck | None = None,
) -> Outcome:
    act = signed.msg
    assert isinstance(act, (Admit, SetLimits, Close, Rekey, SetStewards))
    refusal, d = _common(state, signed, act.id, act.ledger)
    if refusal:
        return refusal
    target = None
    if not isinstance(act, SetStewards):
        target = state.accounts.get(act.handle)
        if target is None and not isinstance(act, Admit):
            return Outcome(ResultCode.account_not_found, detail=f"no member {act.handle!r}")
    good, all_good = sigcheck if sigcheck is not None else signed.verified_signers()
    if not all_good:
        return Outcome(ResultCode.bad_signature, detail="a signature on this act does not verify")
    if len(good & state.stewards) < state.threshold:
        return Outcome(
            ResultCode.not_enough_steward_signatures,
            detail=f"this act needs the signatures of {state.threshold} steward(s)",
        )
    if act.id in state.seen:
        return Outcome(
            ResultCode.exists_with_different_fields,
            detail=f"id {act.id} was used before for a different act",
        )
    timing = _timing(act.valid_until, now, policy)
    if timing:
        return timing

    if isinstance(act, Admit):
        if target is not None:
            return Outcome(ResultCode.account_exists, detail=f"{act.handle!r} is taken")
        if state.key_owner(act.key) is not None:
            return Outcome(ResultCode.key_in_use, detail="that key belongs to another member")
        bad = _check_limits(act.debit_limit, act.credit_limit)
        if bad:
            return bad
        state.accounts[act.handle] = Account(
            act.handle, "member", act.key, act.debit_limit, act.credit_limit
        )
    elif isinstance(act, SetLimits):
        assert target is not None
        if target.status != "open":
            return Outcome(ResultCode.account_closed, detail=f"{act.handle!r} is closed")
        bad = _check_limits(act.debit_limit, act.credit_limit)
        if bad:
            return bad
        if (
            target.balance - target.pending_debit < -act.debit_limit
            or target.balance + target.pending_credit > act.credit_limit
        ):
            return Outcome(
                ResultCode.limit_below_balance,
                detail=f"{act.handle!r} already uses more than the new limit "
                f"(balance {format_amount(target.balance, state.genesis.unit)})",
            )
        target.debit_limit = act.debit_limit
        target.credit_limit = act.credit_limit
    elif isinstance(act, Close):
        assert target is not None
        if target.status != "open":
            return Outcome(ResultCode.account_closed, detail=f"{act.handle!r} is already closed")
        if target.balance or target.pending_debit or target.pending_credit:
            return Outcome(
                ResultCode.balance_not_zero,
                detail=f"{act.handle!r} has balance "
                f"{format_amount(target.balance, state.genesis.unit)}; settle it to zero first",
            )
        target.status = "closed"
    elif isinstance(act, Rekey):
        assert target is not None
        if target.status != "open":
            return Outcome(ResultCode.account_closed, detail=f"{act.handle!r} is closed")
        owner = state.key_owner(act.key)
        if owner is not None:
            return Outcome(ResultCode.key_in_use, detail="that key belongs to a member already")
        target.key = act.key
    else:
        if act.threshold > len(act.stewards):
            return Outcome(
                ResultCode.invalid_threshold,
                detail=f"threshold {act.threshold} exceeds the {len(act.stewards)} stewards named",
            )
        state.stewards = frozenset(act.stewards)
        state.threshold = act.threshold
    return _record(state, act.id, d, () if isinstance(act, SetStewards) else (act.handle,))


def apply(
    state: LedgerState,
    signed: Signed,
    now: int,
    policy: Policy = Policy(),
    sigcheck: SigCheck | None = None,
) -> Outcome:
    """Apply one signed event to ``state``; on refusal ``state`` is unchanged.

    ``sigcheck`` is ``signed.verified_signers()`` computed beforehand (the node verifies
    signatures in worker threads before the single writer); without it, ``apply`` verifies.
    """
    if isinstance(signed.msg, Transfer):
        return apply_transfer(state, signed, now, policy, sigcheck)
    if isinstance(signed.msg, Genesis):
        return Outcome(ResultCode.invalid_field, detail="a ledger has one genesis entry")
    if signed.msg.type in STEWARD_ACT_TYPES:
        return apply_act(state, signed, now, policy, sigcheck)
    # Credit lines and payments across them. Imported here: protocol.lines builds on this
    # module (accounts, state, outcomes), so it cannot be imported at the top.
    from protocol import lines

    return lines.apply_federation(state, signed, now, sigcheck)


# --- invariants, for tests after every batch and for `tally audit` -------------------------


def invariant_violations(state: LedgerState) -> list[str]:
    """What is wrong with ``state``; empty when every invariant holds."""
    problems = []
    total = sum(a.balance for a in state.accounts.values())
    if total != 0:
        problems.append(f"balances sum to {total}, not zero")
    for a in state.accounts.values():
        if a.balance - a.pending_debit < -a.debit_limit:
            problems.append(f"{a.handle}: balance {a.balance} is beyond debit limit {a.debit_limit}")
        if a.balance + a.pending_credit > a.credit_limit:
            problems.append(
                f"{a.handle}: balance {a.balance} is beyond credit limit {a.credit_limit}"
            )
        if a.pending_debit < 0 or a.pending_credit < 0:
            problems.append(f"{a.handle}: negative pending amount")
    # Pending amounts are exactly the open holds.
    held_debit: dict[str, int] = {}
    held_credit: dict[str, int] = {}
    for h in state.holds.values():
        if h.state == "held":
            held_debit[h.debit] = held_debit.get(h.debit, 0) + h.amount
            held_credit[h.credit] = held_credit.get(h.credit, 0) + h.amount
    for a in state.accounts.values():
        if (a.pending_debit, a.pending_credit) != (held_debit.get(a.handle, 0),
                                                   held_credit.get(a.handle, 0)):
            problems.append(f"{a.handle}: pending amounts differ from its open holds")
    if state.open_holds != {k: h for k, h in state.holds.items() if h.state == "held"}:
        problems.append("the index of open holds differs from the holds still held")
    return problems
