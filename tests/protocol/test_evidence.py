"""Evidence of equivocation: genuine forks are proved offline, anything weaker is refused."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.merkle import MerkleTree, leaf_hash
from protocol.evidence import EvidenceError, parse_evidence, verify_equivocation
from tests.protocol.gossip_helpers import checkpoint, vkey_of
from tests.strategies import key_for

B, C = key_for("b"), key_for("c")


def tree(entries: list[bytes]) -> MerkleTree:
    return MerkleTree([leaf_hash(e) for e in entries])


def seeded_proof(t: MerkleTree, m: int, n: int) -> list[bytes]:
    proof = t.consistency_proof(m, n)
    return [t.root(m), *proof] if m & (m - 1) == 0 else proof


def test_two_checkpoints_of_one_size_with_different_roots_prove_a_fork() -> None:
    notes = (checkpoint(B, 5, b"\x01" * 32), checkpoint(B, 5, b"\x02" * 32))
    ev = verify_equivocation(vkey_of(B), notes)
    assert ev.offender == B.public
    again = parse_evidence(json.loads(json.dumps(ev.to_json())))
    assert again.id == ev.id and "size 5" in again.summary()


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.integers(0, 11))
def test_a_rewritten_history_is_proved_by_a_consistency_proof(m: int, extra: int,
                                                              changed: int) -> None:
    """The log showed size m, then rewrote entry ``changed`` and grew to n: the proof from
    the larger tree gives another root for the first m entries."""
    changed %= m
    honest = [b"e%d" % i for i in range(m)]
    rewritten = honest[:]
    rewritten[changed] = b"rewritten"
    rewritten += [b"x%d" % i for i in range(extra)]
    small, big = tree(honest), tree(rewritten)
    n = m + extra
    notes = (checkpoint(B, m, small.root()), checkpoint(B, n, big.root()))
    ev = verify_equivocation(vkey_of(B), notes, tuple(seeded_proof(big, m, n)))
    assert ev.offender == B.public


def test_an_honest_extension_is_not_evidence() -> None:
    entries = [b"e%d" % i for i in range(11)]
    t = tree(entries)
    notes = (checkpoint(B, 6, t.root(6)), checkpoint(B, 11, t.root()))
    with pytest.raises(EvidenceError, match="extends"):
        verify_equivocation(vkey_of(B), notes, tuple(seeded_proof(t, 6, 11)))


def test_a_proof_that_merely_fails_proves_nothing() -> None:
    t = tree([b"e%d" % i for i in range(11)])
    notes = (checkpoint(B, 6, b"\x07" * 32), checkpoint(B, 11, t.root()))
    garbage = tuple(leaf_hash(b"junk%d" % i) for i in range(4))
    with pytest.raises(EvidenceError, match="proves nothing"):
        verify_equivocation(vkey_of(B), notes, garbage)


def test_evidence_forged_with_another_key_is_refused() -> None:
    # C signs a checkpoint in B's name: it does not verify with B's key, so B is not accused.
    notes = (checkpoint(B, 5, b"\x01" * 32), checkpoint(C, 5, b"\x02" * 32))
    with pytest.raises(EvidenceError, match="does not verify"):
        verify_equivocation(vkey_of(B), notes)


def test_identical_checkpoints_and_tampered_records_are_refused() -> None:
    same = checkpoint(B, 5, b"\x01" * 32)
    with pytest.raises(EvidenceError, match="same"):
        verify_equivocation(vkey_of(B), (same, same))
    doc = verify_equivocation(vkey_of(B), (same, checkpoint(B, 5, b"\x02" * 32))).to_json()
    doc["checkpoints"][1] = doc["checkpoints"][1].replace("\n5\n", "\n6\n")
    with pytest.raises(EvidenceError):
        parse_evidence(doc)
    doc["extra"] = 1
    with pytest.raises(EvidenceError, match="exactly"):
        parse_evidence(doc)
