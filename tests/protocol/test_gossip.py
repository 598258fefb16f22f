"""Gossip's pure core: records, their merge, digests, staleness, peer choice and the graph."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.keys import SecretKey
from protocol.codes import ResultCode
from protocol.gossip import (
    GossipError,
    GossipState,
    Outcome,
    Update,
    make_record,
    parse_digest,
    parse_record,
)
from protocol.messages import Signature, Signed
from tests.protocol.gossip_helpers import NOW, UNIT, checkpoint, ledger_of, line, record, vkey_of
from tests.strategies import key_for

A, B, C, D = (key_for(n) for n in "abcd")
MINUTE = 60_000


def state(me: SecretKey = A) -> GossipState:
    return GossipState(me.public, stale_after_ms=10 * MINUTE, forget_after_ms=60 * MINUTE)


# --- records ------------------------------------------------------------------------------


def test_a_record_survives_its_wire_form() -> None:
    signed = record(B, 3, lines=[line("ab", A, B)])
    again, parsed = parse_record(signed.to_json(), NOW)
    assert parsed == signed.msg and again.signed_bytes == signed.signed_bytes


def test_a_record_signed_by_another_key_is_refused() -> None:
    # C signs a record that claims to be B's: the node is its key, so this is forged.
    genuine = record(B, 2)
    forged = Signed(genuine.msg, (Signature(C.public, record(C, 2).sigs[0].sig),))
    with pytest.raises(GossipError) as err:
        parse_record(forged.to_json(), NOW)
    assert err.value.code == ResultCode.bad_signature


def test_a_tampered_record_is_refused() -> None:
    doc = record(B, 2).to_json()
    doc["msg"]["name"] = "someone else"
    with pytest.raises(GossipError) as err:
        parse_record(doc, NOW)
    assert err.value.code == ResultCode.bad_signature


def test_a_record_claiming_another_nodes_key_in_its_log_key_is_refused() -> None:
    signed = make_record(B, name="b", ledger=ledger_of(B), log_vkey=vkey_of(C),
                         urls=["http://x"], unit=UNIT, lines=[], software="t", counter=1,
                         issued=NOW)
    with pytest.raises(GossipError, match="log_vkey"):
        parse_record(signed.to_json(), NOW)


def test_a_record_may_only_name_its_own_lines() -> None:
    with pytest.raises(GossipError) as err:
        parse_record(record(B, 1, lines=[line("cd", C, D)]).to_json(), NOW)
    assert err.value.code == ResultCode.not_a_party


def test_a_record_from_the_future_is_refused() -> None:
    with pytest.raises(GossipError, match="future"):
        parse_record(record(B, 1, issued=NOW + 60 * MINUTE).to_json(), NOW)


def test_newer_replaces_older_and_older_is_refused_as_stale() -> None:
    s = state()
    assert s.add_record(record(B, 5), NOW) == Outcome.new
    assert s.add_record(record(B, 5), NOW) == Outcome.duplicate
    assert s.add_record(record(B, 7, name="renamed"), NOW) == Outcome.updated
    with pytest.raises(GossipError) as err:
        s.add_record(record(B, 6), NOW)
    assert err.value.code == ResultCode.stale_record
    assert s.records[B.public.text].record.name == "renamed"


def test_two_records_with_one_counter_keep_the_first() -> None:
    s = state()
    s.add_record(record(B, 5, name="first"), NOW)
    with pytest.raises(GossipError) as err:
        s.add_record(record(B, 5, name="second"), NOW)
    assert err.value.code == ResultCode.record_conflict
    assert s.records[B.public.text].record.name == "first"


counters = st.lists(st.tuples(st.sampled_from([B, C, D]), st.integers(0, 20)), max_size=25)


@settings(max_examples=40, deadline=None)
@given(counters, st.randoms(use_true_random=False))
def test_merge_converges_whatever_the_order(items: list[tuple[SecretKey, int]],
                                            rng: random.Random) -> None:
    """Any two orders of delivery leave the same records: the newest of each node."""
    signed = [record(k, c, name=f"n{c}") for k, c in items]
    shuffled = signed[:]
    rng.shuffle(shuffled)
    held = []
    for order in (signed, shuffled):
        s = state()
        s.merge(Update(records=tuple(x.to_json() for x in order)), NOW)
        held.append({k: v.record.counter for k, v in s.records.items()})
    newest: dict[str, int] = {}
    for k, c in items:
        newest[k.public.text] = max(c, newest.get(k.public.text, -1))
    assert held[0] == held[1] == newest


def test_one_bad_item_does_not_spoil_an_update() -> None:
    bad = record(B, 2).to_json()
    bad["msg"]["counter"] = 3
    merged = state().merge(Update(records=(bad, record(C, 1).to_json(), {"msg": 1})), NOW)
    assert merged.changed_records == [C.public]
    assert len(merged.refused) == 2


# --- staleness, peers -------------------------------------------------------------------------


def test_a_node_unheard_of_is_stale_then_forgotten() -> None:
    s = state()
    s.add_record(record(B, 1, issued=NOW), NOW)
    s.add_record(record(C, 1, issued=NOW), NOW)
    later = NOW + 11 * MINUTE
    s.add_record(record(C, 2, issued=later), later)
    assert [r.key for r in s.choose_peers(5, later, random.Random(1))] == [C.public]
    assert B.public.text in s.records  # stale, not deleted at once
    assert s.forget(NOW + 61 * MINUTE) == [B.public.text]
    assert set(s.records) == {C.public.text}


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 6), st.integers(0, 2**32))
def test_peers_are_distinct_others_without_evidence(fanout: int, seed: int) -> None:
    s = state()
    keys = [key_for(f"p{i}") for i in range(6)]
    for k in [A, *keys]:
        s.add_record(record(k, 1), NOW)
    s.suspended.add(keys[0].public)
    peers = s.choose_peers(fanout, NOW, random.Random(seed))
    chosen = [p.key for p in peers]
    assert len(chosen) == len(set(chosen)) == min(fanout, 5)
    assert A.public not in chosen and keys[0].public not in chosen


# --- the graph -------------------------------------------------------------------------------


def test_a_line_enters_the_graph_only_when_both_sides_name_it() -> None:
    s = state()
    ab = line("ab", A, B, a_limit=100, b_limit=300, rate=(3, 1))
    s.add_record(record(A, 1, lines=[ab]), NOW)
    assert s.edges(NOW) == []
    # B's record names it too, with a different limit of A's side: A's own word counts.
    s.add_record(record(B, 1, lines=[line("ab", A, B, a_limit=999, b_limit=300, rate=(3, 1))]),
                 NOW)
    [edge] = s.edges(NOW)
    assert (edge.a, edge.b, edge.a_limit, edge.b_limit, edge.rate_num) == (
        A.public, B.public, 100, 300, 3)
    assert edge.active


def test_lines_that_disagree_or_are_suspended_or_stale_do_not_carry_payments() -> None:
    s = state()
    s.add_record(record(A, 1, lines=[line("ab", A, B, rate=(2, 1)), line("ac", A, C),
                                     line("ad", A, D)]), NOW)
    s.add_record(record(B, 1, lines=[line("ab", A, B, rate=(3, 1))]), NOW)
    s.add_record(record(C, 1, lines=[line("ac", A, C, status="suspended")]), NOW)
    s.add_record(record(D, 1, lines=[line("ad", A, D)], issued=NOW - 20 * MINUTE), NOW)
    edges = s.edges(NOW)
    assert [e.line[:2] for e in edges] == ["ac"]
    assert not edges[0].active


def test_evidence_against_a_node_deactivates_its_lines() -> None:
    s = state()
    s.add_record(record(A, 1, lines=[line("ab", A, B)]), NOW)
    s.add_record(record(B, 1, lines=[line("ab", A, B)]), NOW)
    s.add_checkpoint(B.public.text, checkpoint(B, 4, b"\x01" * 32))
    outcome, ev = s.add_checkpoint(B.public.text, checkpoint(B, 4, b"\x02" * 32))
    assert outcome == Outcome.evidence and ev is not None and ev.offender == B.public
    assert B.public in s.suspended
    assert [e.active for e in s.edges(NOW)] == [False]


# --- exchanges -------------------------------------------------------------------------------


def _exchange(a: GossipState, b: GossipState, budget: int = 1 << 20) -> None:
    rng = random.Random(0)
    digest = parse_digest(a.digest().to_json(), 10_000)
    answer = b.newer_than(digest, budget, rng)
    want = b.wants(digest)
    a.merge(answer, NOW)
    b.merge(a.items_for(want, budget, rng), NOW)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.sampled_from([A, B, C, D]), st.integers(1, 5)),
                max_size=12))
def test_one_push_pull_exchange_leaves_both_with_the_newest_of_everything(
        items: list[tuple[bool, SecretKey, int]]) -> None:
    left, right = state(A), state(B)
    for to_left, k, c in items:
        target = left if to_left else right
        held = target.records.get(k.public.text)
        if held is None or held.record.counter < c:
            target.add_record(record(k, c, name=f"n{c}"), NOW)
    _exchange(left, right)
    assert left.digest().records == right.digest().records
    newest: dict[str, int] = {}
    for _, k, c in items:
        newest[k.public.text] = max(c, newest.get(k.public.text, 0))
    assert left.digest().records == newest


def test_a_small_budget_still_makes_progress() -> None:
    left, right = state(A), state(B)
    for i in range(20):
        right.add_record(record(key_for(f"n{i}"), 1), NOW)
    rounds = 0
    while len(left.records) < 20:
        _exchange(left, right, budget=2500)
        rounds += 1
        assert rounds < 20
    assert rounds > 1


def test_an_oversized_digest_is_refused() -> None:
    s = state()
    for i in range(5):
        s.add_record(record(key_for(f"n{i}"), 1), NOW)
    with pytest.raises(GossipError) as err:
        parse_digest(s.digest().to_json(), 4)
    assert err.value.code == ResultCode.body_too_large


def test_checkpoints_spread_and_a_fork_is_caught_where_they_meet() -> None:
    left, right = state(A), state(C)
    for s in (left, right):
        s.add_record(record(B, 1), NOW)
    left.add_checkpoint(B.public.text, checkpoint(B, 9, b"\x05" * 32))
    right.add_checkpoint(B.public.text, checkpoint(B, 9, b"\x06" * 32))
    _exchange(left, right)
    assert len(left.evidence) == 1 and left.suspended == {B.public}
    _exchange(left, right)
    assert right.evidence.keys() == left.evidence.keys()
