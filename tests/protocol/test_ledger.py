"""The ledger rules: one test for every result code ``apply`` returns, ranking, stewards, rekeys."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.canonical import parse_json
from crypto.keys import SecretKey
from protocol.codes import ResultCode
from protocol.ledger import LedgerState, Outcome, Policy, apply, invariant_violations
from protocol.messages import (
    MessageError,
    Signature,
    Signed,
    Transfer,
    parse_signed,
    sign_message,
)
from tests.strategies import (
    DAY_MS,
    T0,
    Collective,
    admit,
    amounts,
    close,
    handles,
    key_for,
    new_collective,
    rekey,
    set_limits,
    set_stewards,
    signed_transfers,
    small_amounts,
    transfer,
)

S1, S2, S3, OUTSIDER = (key_for(n) for n in ("steward 1", "steward 2", "steward 3", "outsider"))
OTHER_LEDGER = "ab" * 32


def snapshot(state: LedgerState) -> Any:
    return copy.deepcopy((state.accounts, state.stewards, state.threshold, state.size, state.seen))


def ok(c: Collective, signed: Signed, now: int = T0) -> Outcome:
    before = c.state.size
    outcome = apply(c.state, signed, now)
    assert outcome.code == ResultCode.ok, outcome
    assert outcome.index == before
    assert invariant_violations(c.state) == []
    return outcome


def refused(c: Collective, signed: Signed, code: ResultCode, now: int = T0) -> Outcome:
    """Apply, expect ``code``, and check that the refusal changed nothing."""
    before = snapshot(c.state)
    outcome = apply(c.state, signed, now)
    assert outcome.code == code, outcome
    assert snapshot(c.state) == before
    return outcome


@pytest.fixture
def coop() -> Collective:
    """Stewards S1, S2, S3 (any one may act); alice and bob with limits of 100 each way."""
    c = new_collective([S1, S2, S3], threshold=1)
    for handle in ("alice", "bob"):
        c.members[handle] = key_for(handle)
        ok(c, admit(c, handle, key_for(handle).public, 100, 100))
    return c


def balances(c: Collective) -> dict[str, int]:
    return {h: a.balance for h, a in c.state.accounts.items()}


# --- properties ------------------------------------------------------------------------------------


@settings(max_examples=40)
@given(st.data())
def test_any_transfer_is_applied_exactly_or_refused_without_a_trace(data: st.DataObject) -> None:
    c = new_collective()
    for handle in ("alice", "bob", "carol"):
        c.members[handle] = key_for(handle)
        ok(c, admit(c, handle, key_for(handle).public, 100, 100))
    applied: dict[str, Signed] = {}
    for _ in range(6):
        signed = data.draw(signed_transfers(c.state, c.members, T0, st.one_of(small_amounts, amounts)))
        t = signed.msg
        assert isinstance(t, Transfer)
        before, snap = balances(c), snapshot(c.state)
        if t.id in applied:  # Hypothesis likes to draw the same id again
            expected = (ResultCode.exists if applied[t.id] == signed
                        else ResultCode.exists_with_different_fields)
        elif t.payer == t.payee:
            expected = ResultCode.same_account
        elif t.amount <= 0:
            expected = ResultCode.amount_must_be_positive
        elif before[t.payer] - t.amount < -100:
            expected = ResultCode.exceeds_debit_limit
        elif before[t.payee] + t.amount > 100:
            expected = ResultCode.exceeds_credit_limit
        else:
            expected = ResultCode.ok
        assert apply(c.state, signed, T0).code == expected
        if expected == ResultCode.ok:
            applied[t.id] = signed
            assert balances(c) == {**before, t.payer: before[t.payer] - t.amount,
                                   t.payee: before[t.payee] + t.amount}
        else:
            assert snapshot(c.state) == snap
        assert invariant_violations(c.state) == []


@given(handles)
def test_any_valid_handle_is_admitted_and_survives_the_wire(handle: str) -> None:
    c = new_collective()
    signed = admit(c, handle, key_for("member").public)
    assert parse_signed(parse_json(signed.canonical)) == signed
    ok(c, signed)
    assert c.state.accounts[handle].key == key_for("member").public


# --- transfers ----------------------------------------------------------------------------------


def test_a_transfer_moves_the_amount_and_gets_the_next_index(coop: Collective) -> None:
    outcome = ok(coop, transfer(coop, "alice", "bob", 30))
    assert outcome.index == 3  # genesis, two admissions, then this
    assert balances(coop) == {"alice": -30, "bob": 30}
    assert coop.state.size == 4


def test_a_transfer_to_the_exact_limit_is_accepted(coop: Collective) -> None:
    ok(coop, transfer(coop, "alice", "bob", 100))
    assert balances(coop) == {"alice": -100, "bob": 100}


def test_ledger_mismatch(coop: Collective) -> None:
    refused(coop, transfer(coop, "alice", "bob", 5, ledger=OTHER_LEDGER), ResultCode.ledger_mismatch)


@pytest.mark.parametrize(("payer", "payee"), [("zed", "bob"), ("alice", "zed")])
def test_account_not_found(coop: Collective, payer: str, payee: str) -> None:
    refused(coop, transfer(coop, payer, payee, 5, key=key_for("alice")), ResultCode.account_not_found)


def test_bad_signature_by_someone_else(coop: Collective) -> None:
    refused(coop, transfer(coop, "alice", "bob", 5, key=key_for("bob")), ResultCode.bad_signature)


def test_bad_signature_that_does_not_verify(coop: Collective) -> None:
    good = transfer(coop, "alice", "bob", 5)
    forged = Signed(good.msg, (Signature(good.sigs[0].key, "A" * 86),))
    refused(coop, forged, ResultCode.bad_signature)


def test_bad_signature_when_a_second_key_signs_too(coop: Collective) -> None:
    good = transfer(coop, "alice", "bob", 5)
    both = sign_message(good.msg, key_for("alice"), key_for("bob"))
    refused(coop, both, ResultCode.bad_signature)


def test_exists_with_different_fields(coop: Collective) -> None:
    first = transfer(coop, "alice", "bob", 5)
    ok(coop, first)
    refused(coop, transfer(coop, "alice", "bob", 6, id=first.msg.id),
            ResultCode.exists_with_different_fields)


def test_an_id_used_by_a_steward_act_cannot_be_reused_for_a_transfer(coop: Collective) -> None:
    act = set_limits(coop, "alice", 50, 50)
    ok(coop, act)
    refused(coop, transfer(coop, "alice", "bob", 5, id=act.msg.id),
            ResultCode.exists_with_different_fields)


def test_expired(coop: Collective) -> None:
    refused(coop, transfer(coop, "alice", "bob", 5, valid_until=T0 - 1), ResultCode.expired)


def test_valid_until_now_is_still_valid(coop: Collective) -> None:
    ok(coop, transfer(coop, "alice", "bob", 5, valid_until=T0))


def test_valid_until_too_far(coop: Collective) -> None:
    refused(coop, transfer(coop, "alice", "bob", 5, valid_until=T0 + DAY_MS + 1),
            ResultCode.valid_until_too_far)


def test_valid_until_at_the_end_of_the_window_is_accepted(coop: Collective) -> None:
    ok(coop, transfer(coop, "alice", "bob", 5, valid_until=T0 + DAY_MS))


def test_replaying_a_log_ignores_the_window(coop: Collective) -> None:
    far = transfer(coop, "alice", "bob", 5, valid_until=T0 + 30 * DAY_MS)
    refused(coop, far, ResultCode.valid_until_too_far)
    assert apply(coop.state, far, T0, Policy(max_valid_window_ms=None)).code == ResultCode.ok


def test_same_account(coop: Collective) -> None:
    refused(coop, transfer(coop, "alice", "alice", 5), ResultCode.same_account)


@pytest.mark.parametrize("amount", [0, -1, -100])
def test_amount_must_be_positive(coop: Collective, amount: int) -> None:
    refused(coop, transfer(coop, "alice", "bob", amount), ResultCode.amount_must_be_positive)


@pytest.mark.parametrize(("payer", "payee"), [("alice", "carol"), ("carol", "alice")])
def test_account_closed(coop: Collective, payer: str, payee: str) -> None:
    coop.members["carol"] = key_for("carol")
    ok(coop, admit(coop, "carol", key_for("carol").public))
    ok(coop, close(coop, "carol"))
    refused(coop, transfer(coop, payer, payee, 5), ResultCode.account_closed)


def test_exceeds_debit_limit(coop: Collective) -> None:
    ok(coop, transfer(coop, "alice", "bob", 60))
    refused(coop, transfer(coop, "alice", "bob", 41), ResultCode.exceeds_debit_limit)


def test_exceeds_credit_limit(coop: Collective) -> None:
    ok(coop, set_limits(coop, "alice", 500, 100))
    ok(coop, transfer(coop, "alice", "bob", 60))
    refused(coop, transfer(coop, "alice", "bob", 41), ResultCode.exceeds_credit_limit)


def test_an_identical_retry_answers_exists_with_the_original_index(coop: Collective) -> None:
    first = transfer(coop, "alice", "bob", 30, valid_until=T0 + 1000)
    index = ok(coop, first).index
    ok(coop, transfer(coop, "bob", "alice", 50))  # the payer's balance changes since
    later = T0 + 10 * DAY_MS  # and the transfer has long expired
    outcome = refused(coop, first, ResultCode.exists, now=later)
    assert outcome.index == index
    assert balances(coop) == {"alice": 20, "bob": -20}


def test_a_retry_after_the_payer_closed_their_account_still_answers_exists(coop: Collective) -> None:
    first = transfer(coop, "alice", "bob", 30)
    index = ok(coop, first).index
    ok(coop, transfer(coop, "bob", "alice", 30))
    ok(coop, close(coop, "alice"))
    assert refused(coop, first, ResultCode.exists).index == index


def test_genesis_cannot_be_applied_again(coop: Collective) -> None:
    refused(coop, coop.genesis.payload, ResultCode.invalid_field)


# --- ranking: when several rules are broken, the first in ResultCode's order is reported ---------


def test_expired_and_over_the_limit_reports_expired(coop: Collective) -> None:
    refused(coop, transfer(coop, "alice", "bob", 1_000, valid_until=T0 - 1), ResultCode.expired)


def test_wrong_ledger_and_bad_signature_reports_ledger_mismatch(coop: Collective) -> None:
    signed = transfer(coop, "alice", "bob", 5, ledger=OTHER_LEDGER, key=key_for("bob"))
    refused(coop, signed, ResultCode.ledger_mismatch)


def test_unknown_payee_and_expired_reports_account_not_found(coop: Collective) -> None:
    refused(coop, transfer(coop, "alice", "zed", 0, valid_until=T0 - 1), ResultCode.account_not_found)


def test_bad_signature_outranks_a_reused_id(coop: Collective) -> None:
    # Without the payer's key nobody learns whether an id was used.
    first = transfer(coop, "alice", "bob", 5)
    ok(coop, first)
    refused(coop, transfer(coop, "alice", "bob", 6, id=first.msg.id, key=key_for("bob")),
            ResultCode.bad_signature)


def test_a_reused_id_outranks_expiry(coop: Collective) -> None:
    first = transfer(coop, "alice", "bob", 5)
    ok(coop, first)
    refused(coop, transfer(coop, "alice", "bob", 6, id=first.msg.id, valid_until=T0 - 1),
            ResultCode.exists_with_different_fields)


def test_same_account_outranks_a_non_positive_amount(coop: Collective) -> None:
    refused(coop, transfer(coop, "alice", "alice", 0), ResultCode.same_account)


def test_a_non_positive_amount_outranks_a_closed_account(coop: Collective) -> None:
    ok(coop, close(coop, "bob"))
    refused(coop, transfer(coop, "alice", "bob", 0), ResultCode.amount_must_be_positive)


def test_debit_limit_outranks_credit_limit(coop: Collective) -> None:
    ok(coop, transfer(coop, "alice", "bob", 90))
    refused(coop, transfer(coop, "alice", "bob", 20), ResultCode.exceeds_debit_limit)


# --- steward acts -------------------------------------------------------------------------------


def test_admission_of_a_taken_handle_is_account_exists(coop: Collective) -> None:
    refused(coop, admit(coop, "alice", key_for("alice 2").public), ResultCode.account_exists)


def test_admission_with_a_members_key_is_key_in_use(coop: Collective) -> None:
    refused(coop, admit(coop, "alice2", key_for("alice").public), ResultCode.key_in_use)


def test_key_in_use_outranks_a_negative_limit(coop: Collective) -> None:
    refused(coop, admit(coop, "alice2", key_for("alice").public, -1, 5), ResultCode.key_in_use)


@pytest.mark.parametrize(("debit", "credit"), [(-1, 10), (10, -1)])
def test_limit_must_not_be_negative(coop: Collective, debit: int, credit: int) -> None:
    refused(coop, admit(coop, "carol", key_for("carol").public, debit, credit),
            ResultCode.limit_must_not_be_negative)
    refused(coop, set_limits(coop, "alice", debit, credit), ResultCode.limit_must_not_be_negative)


def test_limits_change(coop: Collective) -> None:
    ok(coop, set_limits(coop, "alice", 10, 20))
    assert (coop.state.accounts["alice"].debit_limit, coop.state.accounts["alice"].credit_limit) == (10, 20)
    refused(coop, transfer(coop, "alice", "bob", 11), ResultCode.exceeds_debit_limit)


@pytest.mark.parametrize(("handle", "debit", "credit"), [("alice", 59, 100), ("bob", 100, 59)])
def test_limit_below_balance(coop: Collective, handle: str, debit: int, credit: int) -> None:
    ok(coop, transfer(coop, "alice", "bob", 60))
    refused(coop, set_limits(coop, handle, debit, credit), ResultCode.limit_below_balance)
    ok(coop, set_limits(coop, handle, 60, 60))  # exactly the balance is allowed


def test_set_limits_of_a_closed_account_is_account_closed(coop: Collective) -> None:
    ok(coop, close(coop, "bob"))
    refused(coop, set_limits(coop, "bob", 5, 5), ResultCode.account_closed)


def test_an_act_on_an_unknown_member_is_account_not_found(coop: Collective) -> None:
    refused(coop, set_limits(coop, "zed", 5, 5), ResultCode.account_not_found)
    refused(coop, close(coop, "zed"), ResultCode.account_not_found)
    refused(coop, rekey(coop, "zed", key_for("zed").public), ResultCode.account_not_found)


def test_close_needs_a_zero_balance(coop: Collective) -> None:
    ok(coop, transfer(coop, "alice", "bob", 10))
    refused(coop, close(coop, "alice"), ResultCode.balance_not_zero)
    refused(coop, close(coop, "bob"), ResultCode.balance_not_zero)
    ok(coop, transfer(coop, "bob", "alice", 10))
    ok(coop, close(coop, "alice"))
    assert coop.state.accounts["alice"].status == "closed"


def test_closing_twice_is_account_closed(coop: Collective) -> None:
    ok(coop, close(coop, "alice"))
    refused(coop, close(coop, "alice"), ResultCode.account_closed)


def test_a_closed_members_key_may_be_admitted_again(coop: Collective) -> None:
    ok(coop, close(coop, "alice"))
    ok(coop, admit(coop, "alice.new", key_for("alice").public))


def test_rekey_old_key_can_no_longer_pay_new_key_can(coop: Collective) -> None:
    new = key_for("alice's new phone")
    ok(coop, rekey(coop, "alice", new.public))
    refused(coop, transfer(coop, "alice", "bob", 5), ResultCode.bad_signature)  # old key
    ok(coop, transfer(coop, "alice", "bob", 5, key=new))
    assert balances(coop) == {"alice": -5, "bob": 5}


def test_rekey_to_a_key_in_use_is_key_in_use(coop: Collective) -> None:
    refused(coop, rekey(coop, "alice", key_for("bob").public), ResultCode.key_in_use)


def test_rekey_of_a_closed_account_is_account_closed(coop: Collective) -> None:
    ok(coop, close(coop, "alice"))
    refused(coop, rekey(coop, "alice", key_for("x").public), ResultCode.account_closed)


def test_an_expired_act_is_refused(coop: Collective) -> None:
    refused(coop, set_limits(coop, "alice", 5, 5, valid_until=T0 - 1), ResultCode.expired)


def test_an_identical_act_retried_answers_exists(coop: Collective) -> None:
    act = set_limits(coop, "alice", 50, 50)
    index = ok(coop, act).index
    assert refused(coop, act, ResultCode.exists, now=T0 + 7 * DAY_MS).index == index


def test_an_act_signed_for_another_ledger_is_refused(coop: Collective) -> None:
    refused(coop, admit(coop, "carol", key_for("carol").public, ledger=OTHER_LEDGER),
            ResultCode.ledger_mismatch)


def test_an_act_with_a_signature_that_does_not_verify_is_bad_signature(coop: Collective) -> None:
    good = set_limits(coop, "alice", 5, 5)
    forged = Signed(good.msg, (Signature(S1.public, "A" * 86),))
    refused(coop, forged, ResultCode.bad_signature)


# --- stewards: k of n ---------------------------------------------------------------------------


@pytest.fixture
def two_of_three() -> Collective:
    return new_collective([S1, S2, S3], threshold=2)


def test_one_steward_of_two_needed_is_not_enough(two_of_three: Collective) -> None:
    c = two_of_three
    refused(c, admit(c, "alice", key_for("alice").public, signers=[S1]),
            ResultCode.not_enough_steward_signatures)


@pytest.mark.parametrize("pair", [(S1, S2), (S2, S3), (S3, S1), (S1, S2, S3)])
def test_two_stewards_of_three_may_act(two_of_three: Collective, pair: tuple[SecretKey, ...]) -> None:
    c = two_of_three
    ok(c, admit(c, "alice", key_for("alice").public, signers=pair))
    assert "alice" in c.state.accounts


def test_a_non_stewards_signature_does_not_count(two_of_three: Collective) -> None:
    c = two_of_three
    refused(c, admit(c, "alice", key_for("alice").public, signers=[S1, OUTSIDER]),
            ResultCode.not_enough_steward_signatures)
    refused(c, admit(c, "bob", key_for("bob").public, signers=[OUTSIDER]),
            ResultCode.not_enough_steward_signatures)


def test_a_members_signature_does_not_count_as_a_stewards(two_of_three: Collective) -> None:
    c = two_of_three
    ok(c, admit(c, "alice", key_for("alice").public, signers=[S1, S2]))
    refused(c, set_limits(c, "alice", 1000, 1000, signers=[S1, key_for("alice")]),
            ResultCode.not_enough_steward_signatures)


def test_set_stewards_changes_who_may_act(two_of_three: Collective) -> None:
    c = two_of_three
    s4 = key_for("steward 4")
    ok(c, set_stewards(c, [s4.public], 1, signers=[S1, S2]))
    assert c.state.stewards == frozenset({s4.public})
    assert c.state.threshold == 1
    refused(c, admit(c, "alice", key_for("alice").public, signers=[S1, S2, S3]),
            ResultCode.not_enough_steward_signatures)
    ok(c, admit(c, "alice", key_for("alice").public, signers=[s4]))


def test_set_stewards_needs_k_stewards_itself(two_of_three: Collective) -> None:
    c = two_of_three
    refused(c, set_stewards(c, [OUTSIDER.public], 1, signers=[OUTSIDER]),
            ResultCode.not_enough_steward_signatures)
    refused(c, set_stewards(c, [OUTSIDER.public], 1, signers=[S3]),
            ResultCode.not_enough_steward_signatures)


def test_invalid_threshold(two_of_three: Collective) -> None:
    c = two_of_three
    refused(c, set_stewards(c, [S1.public, S2.public], 3, signers=[S1, S2]),
            ResultCode.invalid_threshold)


# --- what the ledger is given: a handle is exactly what it looks like -----------------------------


def test_a_handle_with_a_trailing_newline_is_refused_when_parsed(coop: Collective) -> None:
    body = admit(coop, "carol", key_for("carol").public).to_json()
    body["msg"]["handle"] = "alice\n"
    with pytest.raises(MessageError) as err:
        parse_signed(body)
    assert err.value.code == ResultCode.invalid_field
    assert err.value.field == "msg.handle"
