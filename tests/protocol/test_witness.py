"""What a witness cosigns (C2SP tlog-witness), and counting cosignatures on a checkpoint.

Each test plays a log signing checkpoints of an in-memory tree, and asks the witness rules
about an add-checkpoint request: the refusal status a log would see, and evidence of
equivocation exactly when the request proves it.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crypto.checkpoint import format_checkpoint
from crypto.merkle import EMPTY_ROOT, MerkleTree
from crypto.note import Cosigner, Ed25519Signer, Signature, parse_note, sign_note
from crypto.witness import AddCheckpoint
from protocol.codes import ResultCode
from protocol.evidence import parse_evidence
from protocol.witness import (
    Witnessed,
    WitnessRefusal,
    check_add_checkpoint,
    cosign,
    open_witnessed,
    valid_cosigners,
)

ORIGIN = "tally/" + "ab" * 32
LOG = Ed25519Signer(ORIGIN, hashlib.sha256(b"log").digest())
LOGS = {ORIGIN: LOG.verifier()}
WITNESS = Cosigner("tally/" + "cd" * 32 + "/witness", hashlib.sha256(b"witness").digest())


def tree_of(entries: list[bytes]) -> MerkleTree:
    t = MerkleTree()
    for e in entries:
        t.append(e)
    return t


def tree(n: int, tag: bytes = b"") -> MerkleTree:
    return tree_of([tag + b"entry %d" % i for i in range(n)])


def note(t: MerkleTree, n: int, signer: Ed25519Signer = LOG) -> bytes:
    return sign_note(format_checkpoint(ORIGIN, n, t.root(n)), [signer])


def held(t: MerkleTree, n: int) -> dict[str, Witnessed]:
    return {ORIGIN: open_witnessed(note(t, n), LOG.verifier())}


def refusal(req: AddCheckpoint, latest: dict[str, Witnessed]) -> WitnessRefusal:
    with pytest.raises(WitnessRefusal) as info:
        check_add_checkpoint(req, LOGS, latest)
    return info.value


def test_a_first_checkpoint_from_old_0_is_cosigned_and_the_cosignature_verifies() -> None:
    t = tree(5)
    got = check_add_checkpoint(AddCheckpoint(0, (), note(t, 5)), LOGS, {})
    assert (got.checkpoint.size, got.checkpoint.root) == (5, t.root())
    line = cosign(WITNESS, got.checkpoint, 1_700_000_000)
    assert valid_cosigners(note(t, 5) + line.encode(), [WITNESS.verifier()]) == \
        [WITNESS.verifier()]


def test_an_extension_with_its_proof_is_cosigned() -> None:
    t = tree(12)
    got = check_add_checkpoint(AddCheckpoint(5, tuple(t.consistency_proof(5, 12)),
                                             note(t, 12)), LOGS, held(t, 5))
    assert got.checkpoint.size == 12


def test_the_kept_note_has_only_the_logs_signature() -> None:
    t = tree(3)
    line = cosign(WITNESS, check_add_checkpoint(AddCheckpoint(0, (), note(t, 3)), LOGS,
                                                {}).checkpoint, 5)
    got = check_add_checkpoint(AddCheckpoint(0, (), note(t, 3) + line.encode()), LOGS, {})
    assert got.note == note(t, 3)


def test_a_stale_old_size_gets_409_with_the_size_to_prove_from() -> None:
    t = tree(12)
    r = refusal(AddCheckpoint(3, tuple(t.consistency_proof(3, 12)), note(t, 12)), held(t, 5))
    assert (r.status, r.code, r.latest_size) == (409, ResultCode.old_size_mismatch, 5)
    r = refusal(AddCheckpoint(5, tuple(t.consistency_proof(5, 12)), note(t, 12)), {})
    assert (r.status, r.latest_size) == (409, 0)


def test_an_unknown_origin_gets_404() -> None:
    other = Ed25519Signer("tally/" + "ef" * 32, LOG.seed)
    body = sign_note(format_checkpoint(other.name, 1, tree(1).root()), [other])
    r = refusal(AddCheckpoint(0, (), body), {})
    assert (r.status, r.code) == (404, ResultCode.unknown_log)


def test_a_forged_checkpoint_gets_403() -> None:
    forger = Ed25519Signer(ORIGIN, hashlib.sha256(b"forger").digest())
    r = refusal(AddCheckpoint(0, (), note(tree(4), 4, forger)), {})
    assert (r.status, r.code) == (403, ResultCode.bad_signature)
    # A line with the log's key id but a signature that does not verify: refused too.
    text, [sig] = parse_note(note(tree(4), 4))
    bad = Signature(sig.name, sig.key_id, bytes(64)).line
    r = refusal(AddCheckpoint(0, (), (text + "\n" + bad).encode()), {})
    assert r.status == 403


def test_old_larger_than_the_checkpoint_gets_400() -> None:
    r = refusal(AddCheckpoint(9, (), note(tree(4), 4)), held(tree(9), 9))
    assert (r.status, r.code) == (400, ResultCode.invalid_field)


def test_a_malformed_checkpoint_gets_400() -> None:
    r = refusal(AddCheckpoint(0, (), b"not a note\n"), {})
    assert r.status == 400


@pytest.mark.parametrize("case", ["empty-root", "proof-from-0"])
def test_size_0_and_old_0_rules_get_422(case: str) -> None:
    if case == "empty-root":
        body = sign_note(format_checkpoint(ORIGIN, 0, hashlib.sha256(b"x").digest()), [LOG])
        r = refusal(AddCheckpoint(0, (), body), {})
    else:
        t = tree(4)
        r = refusal(AddCheckpoint(0, (t.root(2),), note(t, 4)), {})
    assert (r.status, r.code, r.evidence) == (422, ResultCode.inconsistent_checkpoint, None)
    ok = sign_note(format_checkpoint(ORIGIN, 0, EMPTY_ROOT), [LOG])
    assert check_add_checkpoint(AddCheckpoint(0, (), ok), LOGS, {}).checkpoint.size == 0


def test_a_proof_that_merely_fails_is_refused_without_evidence() -> None:
    t = tree(12)
    garbage = tuple(hashlib.sha256(b"%d" % i).digest() for i in range(4))
    r = refusal(AddCheckpoint(5, garbage, note(t, 12)), held(t, 5))
    assert (r.status, r.code, r.evidence) == (422, ResultCode.inconsistent_checkpoint, None)


def test_a_fork_proven_by_the_logs_own_proof_gives_evidence() -> None:
    honest, forked = tree(5), tree(12, b"forked ")
    r = refusal(AddCheckpoint(5, tuple(forked.consistency_proof(5, 12)), note(forked, 12)),
                held(honest, 5))
    assert r.status == 422 and r.evidence is not None
    # Anyone can check it offline, and it names the log's key.
    again = parse_evidence(r.evidence.to_json())
    assert again.offender.raw == LOG.public_key
    assert [c.size for c in again.checkpoints] == [5, 12]


def test_two_roots_for_one_size_give_evidence() -> None:
    r = refusal(AddCheckpoint(5, (), note(tree(5, b"other "), 5)), held(tree(5), 5))
    assert r.status == 422 and r.evidence is not None
    assert {c.root for c in r.evidence.checkpoints} == {tree(5).root(), tree(5, b"other ").root()}


def test_a_fork_from_a_power_of_two_size_is_refused_but_proves_nothing() -> None:
    # The RFC 6962 proof from a power-of-two size leaves out the old root: nothing to derive.
    honest, forked = tree(4), tree(12, b"forked ")
    r = refusal(AddCheckpoint(4, tuple(forked.consistency_proof(4, 12)), note(forked, 12)),
                held(honest, 4))
    assert (r.status, r.evidence) == (422, None)


@given(st.integers(1, 40), st.integers(0, 40), st.integers(0, 39))
def test_evidence_exactly_when_a_fork_is_provable(m: int, extra: int, changed: int) -> None:
    n = m + extra
    honest = tree(n)
    forked = tree_of([b"forked" if i == changed % m else b"entry %d" % i for i in range(n)])
    proof = tuple(forked.consistency_proof(m, n))
    try:
        got = check_add_checkpoint(AddCheckpoint(m, proof, note(forked, n)), LOGS, held(honest, m))
    except WitnessRefusal as r:
        assert r.status == 422
        provable = m == n or m & (m - 1) != 0
        assert (r.evidence is not None) == provable
        if r.evidence is not None:
            assert parse_evidence(r.evidence.to_json()).id == r.evidence.id
    else:
        raise AssertionError(f"a fork at leaf {changed % m} of {m} was cosigned as size {n}: "
                             f"{got.checkpoint.size}")


def test_counting_cosignatures_skips_bad_unknown_repeated_and_future_ones() -> None:
    t = tree(3)
    base = note(t, 3)
    cp = check_add_checkpoint(AddCheckpoint(0, (), base), LOGS, {}).checkpoint
    other = Cosigner("w2.example/w", hashlib.sha256(b"w2").digest())
    stranger = Cosigner("w3.example/w", hashlib.sha256(b"w3").digest())
    good = cosign(WITNESS, cp, 100)
    forged = Signature(other.name, other.key_id, (100).to_bytes(8, "big") + bytes(64)).line
    future = cosign(other, cp, 10_000)
    text = base + (good + good + forged + cosign(stranger, cp, 100) + future).encode()
    known = [WITNESS.verifier(), other.verifier()]
    assert valid_cosigners(text, known) == known
    assert valid_cosigners(text, known, not_after=1_000) == [WITNESS.verifier()]
    assert valid_cosigners(base + forged.encode(), known) == []
