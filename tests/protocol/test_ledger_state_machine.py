"""The ledger driven by Hypothesis through random sequences of valid and invalid events.

A small model, written independently of ``protocol.ledger`` (balances, limits, keys, applied ids),
predicts whether each event is applied or refused. After every step the ledger must agree with
the model, keep its invariants, and be reproducible by replaying its log from the genesis entry.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from crypto.canonical import parse_json
from crypto.keys import PublicKey, SecretKey
from protocol.codes import ACCEPTED, ResultCode
from protocol.ledger import Outcome, Policy, apply, invariant_violations, new_state
from protocol.messages import LogEntry, Signed, Transfer, parse_log_entry, sign_message
from tests.strategies import (
    DAY_MS,
    T0,
    admit,
    close,
    key_for,
    new_collective,
    rekey,
    set_limits,
    transfer,
)

HANDLES = ("ann", "ben", "cat", "dan")
KEYS = tuple(key_for(f"member {i}") for i in range(6))  # more keys than members: rekeys, reuse
STEWARD = key_for("steward")
OUTSIDER = key_for("outsider")
OTHER_LEDGER = "cd" * 32

handles = st.sampled_from(HANDLES)
keys = st.sampled_from(KEYS)
limits = st.integers(-2, 300)
# zero, negative, within typical limits, over them
amounts = st.one_of(st.integers(-5, 0), st.integers(1, 150), st.integers(151, 2_000))
# valid_until relative to now: ordinary (most often), expired, the last valid instant, the
# window's edge, too far
validity = st.sampled_from([3600_000, 3600_000, 3600_000, -1, 0, DAY_MS, DAY_MS + 1])
faults = st.sampled_from(["none"] * 5 + ["other member's key", "outsider's key", "other ledger"])


@dataclass
class ModelAccount:
    key: PublicKey
    debit_limit: int
    credit_limit: int
    balance: int = 0
    open: bool = True


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.c = new_collective([STEWARD])
        self.now = T0
        # the model
        self.accounts: dict[str, ModelAccount] = {}
        self.applied: dict[str, tuple[Signed, int]] = {}  # id -> (event, index)
        self.applied_transfers: list[Transfer] = []
        # what the node would have written
        self.log: list[LogEntry] = []

    # --- helpers -----------------------------------------------------------------------------------

    def owner(self, key: PublicKey) -> str | None:
        return next((h for h, a in self.accounts.items() if a.open and a.key == key), None)

    def in_window(self, valid_until: int) -> bool:
        return self.now <= valid_until <= self.now + DAY_MS

    def submit(self, signed: Signed, expect_ok: bool) -> Outcome:
        before = copy.deepcopy((self.c.state.accounts, self.c.state.stewards, self.c.state.size,
                                self.c.state.seen))
        outcome = apply(self.c.state, signed, self.now)
        event(f"{signed.msg.type}: {outcome.code.value}")
        if expect_ok:
            assert outcome.code == ResultCode.ok, outcome
            assert outcome.index == 1 + len(self.log)
            self.applied[signed.msg.id] = (signed, outcome.index)  # type: ignore[union-attr]
            self.log.append(LogEntry(self.now, signed))
        else:
            assert outcome.code not in ACCEPTED, outcome
            after = (self.c.state.accounts, self.c.state.stewards, self.c.state.size,
                     self.c.state.seen)
            assert after == before, "a refusal changed the ledger"
        return outcome

    # --- rules -------------------------------------------------------------------------------------

    @rule(handle=handles, key=keys, debit=limits, credit=limits, signer_is_steward=st.booleans())
    def admit(self, handle: str, key: SecretKey, debit: int, credit: int,
              signer_is_steward: bool) -> None:
        signer = STEWARD if signer_is_steward else OUTSIDER
        signed = admit(self.c, handle, key.public, debit, credit, signers=[signer],
                       valid_until=self.now + 60_000)
        expect = (signer_is_steward and handle not in self.accounts and debit >= 0
                  and credit >= 0 and self.owner(key.public) is None)
        self.submit(signed, expect)
        if expect:
            self.accounts[handle] = ModelAccount(key.public, debit, credit)

    @initialize(members=st.lists(handles, min_size=2, max_size=3, unique=True))
    def some_members(self, members: list[str]) -> None:
        for i, handle in enumerate(members):
            self.admit(handle, KEYS[i], 200, 200, signer_is_steward=True)

    def send(self, payer: str, payee: str, amount: int, key: SecretKey, valid_until: int,
             ledger: str) -> None:
        a, b = self.accounts.get(payer), self.accounts.get(payee)
        signed = transfer(self.c, payer, payee, amount, key=key, valid_until=valid_until,
                          ledger=ledger)
        expect = (
            ledger == self.c.ledger and a is not None and b is not None and key.public == a.key
            and self.in_window(valid_until) and payer != payee and amount > 0
            and a.open and b.open
            and a.balance - amount >= -a.debit_limit and b.balance + amount <= b.credit_limit
        )
        self.submit(signed, expect)
        if expect:
            assert a is not None and b is not None
            a.balance -= amount
            b.balance += amount
            assert isinstance(signed.msg, Transfer)
            self.applied_transfers.append(signed.msg)

    def key_of(self, handle: str) -> SecretKey:
        a = self.accounts.get(handle)
        return next((k for k in KEYS if a and k.public == a.key), KEYS[0])

    @rule(payer=handles, payee=handles, amount=amounts, valid=validity, fault=faults)
    def transfer(self, payer: str, payee: str, amount: int, valid: int, fault: str) -> None:
        key = self.key_of(payer)
        if fault == "other member's key":
            key = next(k for k in KEYS if k != key)
        elif fault == "outsider's key":
            key = OUTSIDER
        ledger = OTHER_LEDGER if fault == "other ledger" else self.c.ledger
        self.send(payer, payee, amount, key, self.now + valid, ledger)

    @precondition(lambda self: sum(a.open for a in self.accounts.values()) >= 2)
    @rule(data=st.data())
    def transfer_within_limits(self, data: st.DataObject) -> None:
        members = sorted(h for h, a in self.accounts.items() if a.open)
        payer = data.draw(st.sampled_from(members))
        payee = data.draw(st.sampled_from([h for h in members if h != payer]))
        a, b = self.accounts[payer], self.accounts[payee]
        room = min(a.balance + a.debit_limit, b.credit_limit - b.balance)
        amount = data.draw(st.integers(1, max(1, room)))  # 1 when there is no room: refused
        self.send(payer, payee, amount, self.key_of(payer), self.now + 60_000, self.c.ledger)

    @precondition(lambda self: self.applied)
    @rule(data=st.data())
    def retry_identical(self, data: st.DataObject) -> None:
        event_id = data.draw(st.sampled_from(sorted(self.applied)))
        signed, index = self.applied[event_id]
        before = copy.deepcopy((self.c.state.accounts, self.c.state.size))
        outcome = apply(self.c.state, signed, self.now)
        assert outcome.code == ResultCode.exists
        assert outcome.index == index
        assert (self.c.state.accounts, self.c.state.size) == before

    @precondition(lambda self: self.applied_transfers)
    @rule(data=st.data(), change=st.sampled_from(["amount", "payee", "valid_until", "memo"]))
    def retry_changed(self, data: st.DataObject, change: str) -> None:
        t = data.draw(st.sampled_from(self.applied_transfers))
        if change == "amount":
            msg = Transfer(t.ledger, t.id, t.payer, t.payee, t.amount + 1, t.memo_hash, t.valid_until)
        elif change == "payee":
            other = next(h for h in HANDLES if h not in (t.payer, t.payee))
            msg = Transfer(t.ledger, t.id, t.payer, other, t.amount, t.memo_hash, t.valid_until)
        elif change == "valid_until":
            msg = Transfer(t.ledger, t.id, t.payer, t.payee, t.amount, t.memo_hash, self.now + 1)
        else:
            msg = Transfer(t.ledger, t.id, t.payer, t.payee, t.amount, "ee" * 32, t.valid_until)
        payer = self.accounts[t.payer]
        key = next((k for k in KEYS if k.public == payer.key), OUTSIDER)
        outcome = self.submit(sign_message(msg, key), expect_ok=False)
        if change != "payee":  # (a changed payee may not exist: account_not_found ranks higher)
            assert outcome.code == ResultCode.exists_with_different_fields

    @rule(handle=handles, debit=limits, credit=limits)
    def set_limits(self, handle: str, debit: int, credit: int) -> None:
        a = self.accounts.get(handle)
        expect = (a is not None and a.open and debit >= 0 and credit >= 0
                  and a.balance >= -debit and a.balance <= credit)
        self.submit(set_limits(self.c, handle, debit, credit, valid_until=self.now), expect)
        if expect:
            assert a is not None
            a.debit_limit, a.credit_limit = debit, credit

    @rule(handle=handles)
    def close(self, handle: str) -> None:
        a = self.accounts.get(handle)
        expect = a is not None and a.open and a.balance == 0
        self.submit(close(self.c, handle, valid_until=self.now + DAY_MS), expect)
        if expect:
            assert a is not None
            a.open = False

    @rule(handle=handles, key=keys)
    def rekey(self, handle: str, key: SecretKey) -> None:
        a = self.accounts.get(handle)
        expect = a is not None and a.open and self.owner(key.public) is None
        self.submit(rekey(self.c, handle, key.public, valid_until=self.now + 1), expect)
        if expect:
            assert a is not None
            a.key = key.public

    @rule(handle=handles, expired=st.booleans())
    def act_out_of_time(self, handle: str, expired: bool) -> None:
        valid_until = self.now - 1 if expired else self.now + DAY_MS + 1
        self.submit(close(self.c, handle, valid_until=valid_until), expect_ok=False)

    @rule(ms=st.sampled_from([1, 1000, 3600_000, DAY_MS]))
    def time_passes(self, ms: int) -> None:
        self.now += ms

    # --- invariants --------------------------------------------------------------------------------

    @invariant()
    def ledger_invariants_hold(self) -> None:
        assert invariant_violations(self.c.state) == []
        assert sum(a.balance for a in self.c.state.accounts.values()) == 0

    @invariant()
    def ledger_agrees_with_the_model(self) -> None:
        state = self.c.state
        assert sorted(state.accounts) == sorted(self.accounts)
        for handle, m in self.accounts.items():
            a = state.accounts[handle]
            assert (a.key, a.debit_limit, a.credit_limit, a.balance, a.status) == (
                m.key, m.debit_limit, m.credit_limit, m.balance, "open" if m.open else "closed"
            )

    @invariant()
    def each_balance_is_the_sum_of_its_transfers(self) -> None:
        sums = dict.fromkeys(self.accounts, 0)
        for t in self.applied_transfers:
            sums[t.payer] -= t.amount
            sums[t.payee] += t.amount
        assert {h: a.balance for h, a in self.c.state.accounts.items()} == sums

    @invariant()
    def no_id_is_applied_twice(self) -> None:
        ids = [e.payload.msg.id for e in self.log]  # type: ignore[union-attr]
        assert len(ids) == len(set(ids))
        assert set(self.c.state.seen) == set(ids)
        assert self.c.state.size == 1 + len(self.log)

    @invariant()
    def replaying_the_log_reproduces_the_ledger(self) -> None:
        genesis = parse_log_entry(parse_json(self.c.genesis.encode()))
        replay = new_state(genesis.payload, self.c.genesis.encode())
        assert replay.ledger_id == self.c.ledger
        for i, entry in enumerate(self.log, start=1):
            stored = parse_log_entry(parse_json(entry.encode()))  # as the log serves it
            outcome = apply(replay, stored.payload, stored.node_time,
                            Policy(max_valid_window_ms=None))
            assert (outcome.code, outcome.index) == (ResultCode.ok, i)
        assert replay.accounts == self.c.state.accounts
        assert replay.size == self.c.state.size


LedgerMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestLedger = LedgerMachine.TestCase
