"""Stored-hash Merkle functions against Go's tlog vectors and a naive reference tree."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.merkle import (
    EMPTY_ROOT,
    MerkleError,
    MerkleTree,
    append_hashes,
    append_indexes,
    consistency_proof,
    consistency_proof_indexes,
    frontier_indexes,
    inclusion_proof,
    inclusion_proof_indexes,
    leaf_hash,
    node_hash,
    root_from_consistency_proof,
    split_stored_hash_index,
    stored_hash_count,
    stored_hash_index,
    subtree_hash,
    subtree_hash_indexes,
    tree_hash,
    tree_hash_indexes,
    verify_consistency,
    verify_inclusion,
)

VECTORS = Path(__file__).parent.parent / "vectors"
GO: dict[str, Any] = json.loads((VECTORS / "tlog-go.json").read_text())
B64 = base64.b64decode
MAX = 3000


class CachedTree(MerkleTree):
    """The reference tree with memoised subtree hashes, to keep tests quick."""

    def __init__(self, leaves: list[bytes]) -> None:
        super().__init__(leaves)
        self._memo: dict[tuple[int, int], bytes] = {}

    def mth(self, lo: int, hi: int) -> bytes:
        key = (lo, hi)
        if key not in self._memo:
            self._memo[key] = super().mth(lo, hi)
        return self._memo[key]


class Store:
    """A stand-in for the node's hash storage: a list indexed by stored hash index."""

    def __init__(self) -> None:
        self.hashes: list[bytes] = []
        self.size = 0

    def append(self, entry: bytes) -> None:
        n = self.size
        new = append_hashes(n, leaf_hash(entry), self.read(append_indexes(n)))
        assert len(self.hashes) == stored_hash_count(n)
        self.hashes.extend(new)
        self.size = n + 1

    def read(self, indexes: list[int]) -> list[bytes]:
        return [self.hashes[i] for i in indexes]

    def root(self, n: int) -> bytes:
        return tree_hash(n, self.read(tree_hash_indexes(n)))

    def inclusion(self, i: int, n: int) -> list[bytes]:
        return inclusion_proof(i, n, self.read(inclusion_proof_indexes(i, n)))

    def consistency(self, m: int, n: int, seeded: bool = False) -> list[bytes]:
        idx = consistency_proof_indexes(m, n, seeded=seeded)
        return consistency_proof(m, n, self.read(idx), seeded=seeded)


def _entries(count: int, tag: bytes = b"") -> list[bytes]:
    return [b"entry %d%s" % (i, tag) for i in range(count)]


def _build(entries: list[bytes]) -> tuple[Store, CachedTree]:
    store = Store()
    for e in entries:
        store.append(e)
    return store, CachedTree([leaf_hash(e) for e in entries])


STORE, REF = _build(_entries(MAX))
GO_STORE, _ = _build([B64(e) for e in GO["entries"]])


def _flip(h: bytes, bit: int) -> bytes:
    b = bytearray(h)
    b[(bit // 8) % len(b)] ^= 1 << (bit % 8)
    return bytes(b)


# ---------------------------------------------------------------------------
# Go's sumdb/tlog, byte for byte


def test_go_roots() -> None:
    for r in GO["roots"]:
        assert GO_STORE.root(r["size"]) == B64(r["root"]), r["size"]


def test_go_inclusion_proofs() -> None:
    for r in GO["inclusion"]:
        i, n = r["index"], r["size"]
        want = [B64(h) for h in r["proof"] or []]
        assert GO_STORE.inclusion(i, n) == want
        assert leaf_hash(B64(GO["entries"][i])) == B64(r["leaf_hash"])
        assert verify_inclusion(i, n, B64(r["leaf_hash"]), want, GO_STORE.root(n))


def test_go_consistency_proofs() -> None:
    for r in GO["consistency"]:
        m, n = r["old_size"], r["new_size"]
        want = [B64(h) for h in r["proof"] or []]
        assert GO_STORE.consistency(m, n) == want, (m, n)
        old, new = GO_STORE.root(m), GO_STORE.root(n)
        assert verify_consistency(m, n, old, new, want)
        assert root_from_consistency_proof(m, n, new, GO_STORE.consistency(m, n, True)) == old


# ---------------------------------------------------------------------------
# Hashing and stored hash numbering


def test_hash_domain_separation() -> None:
    assert leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    assert (
        node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()
    )
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert tree_hash(0, []) == EMPTY_ROOT


def test_stored_hash_index_layout() -> None:
    # Leaves 0..4 store: L0 h0, L0 h1, L1 (0,1), L0 h2, L0 h3, L1 (2,3), L2 (0..3), L0 h4.
    layout = [(0, 0), (0, 1), (1, 0), (0, 2), (0, 3), (1, 1), (2, 0), (0, 4)]
    for index, (level, n) in enumerate(layout):
        assert stored_hash_index(level, n) == index
        assert split_stored_hash_index(index) == (level, n)
    assert [stored_hash_count(n) for n in range(6)] == [0, 1, 3, 4, 7, 8]


def test_split_is_a_bijection_over_a_prefix() -> None:
    seen = [split_stored_hash_index(i) for i in range(stored_hash_count(600))]
    assert len(set(seen)) == len(seen)
    assert [stored_hash_index(lv, n) for lv, n in seen] == list(range(len(seen)))


@given(st.integers(0, 62), st.integers(0, 2**40))
def test_split_inverts_index(level: int, n: int) -> None:
    assert split_stored_hash_index(stored_hash_index(level, n)) == (level, n)


def test_every_stored_hash_is_its_subtree() -> None:
    for index in range(stored_hash_count(520)):
        level, n = split_stored_hash_index(index)
        assert STORE.hashes[index] == REF.mth(n << level, (n + 1) << level), (level, n)


def test_append_reads_and_writes_log_n() -> None:
    assert append_indexes(0) == []
    assert append_indexes(1) == [stored_hash_index(0, 0)]
    assert append_indexes(7) == [
        stored_hash_index(0, 6),
        stored_hash_index(1, 2),
        stored_hash_index(2, 0),
    ]
    assert len(append_indexes(2**20 - 1)) == 20
    assert len(append_indexes(2**20)) == 0


# ---------------------------------------------------------------------------
# Against the reference tree


def test_small_trees_exhaustively() -> None:
    for n in range(66):
        root = STORE.root(n)
        assert root == REF.root(n)
        for i in range(n):
            proof = STORE.inclusion(i, n)
            assert proof == REF.inclusion_proof(i, n)
            assert verify_inclusion(i, n, REF.leaves[i], proof, root)
        for m in range(n + 1):
            proof = STORE.consistency(m, n)
            assert proof == REF.consistency_proof(m, n)
            assert verify_consistency(m, n, REF.root(m), root, proof)


@settings(max_examples=60)
@given(st.data())
def test_inclusion_matches_reference(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, MAX))
    i = data.draw(st.integers(0, n - 1))
    root = STORE.root(n)
    assert root == REF.root(n)
    proof = STORE.inclusion(i, n)
    assert proof == REF.inclusion_proof(i, n)
    leaf = REF.leaves[i]
    assert verify_inclusion(i, n, leaf, proof, root)
    # Any single bit flipped anywhere must break it.
    bit = data.draw(st.integers(0, 255))
    assert not verify_inclusion(i, n, _flip(leaf, bit), proof, root)
    assert not verify_inclusion(i, n, leaf, proof, _flip(root, bit))
    if proof:
        k = data.draw(st.integers(0, len(proof) - 1))
        bad = proof[:k] + [_flip(proof[k], bit)] + proof[k + 1 :]
        assert not verify_inclusion(i, n, leaf, bad, root)
        assert not verify_inclusion(i, n, leaf, proof[:-1], root)
    assert not verify_inclusion(i, n, leaf, [*proof, root], root)
    other = data.draw(st.integers(0, n - 1).filter(lambda j: j != i)) if n > 1 else None
    if other is not None:
        assert not verify_inclusion(other, n, leaf, proof, root)


@settings(max_examples=60)
@given(st.data())
def test_consistency_matches_reference(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, MAX))
    m = data.draw(st.integers(1, n))
    old, new = STORE.root(m), STORE.root(n)
    proof = STORE.consistency(m, n)
    assert proof == REF.consistency_proof(m, n)
    assert verify_consistency(m, n, old, new, proof)
    seeded = STORE.consistency(m, n, seeded=True)
    assert root_from_consistency_proof(m, n, new, seeded) == old
    bit = data.draw(st.integers(0, 255))
    assert not verify_consistency(m, n, _flip(old, bit), new, proof)
    assert not verify_consistency(m, n, old, _flip(new, bit), proof)
    if m < n:  # when m == n the "implied old root" is the new root itself
        assert root_from_consistency_proof(m, n, _flip(new, bit), seeded) is None
    if proof:
        k = data.draw(st.integers(0, len(proof) - 1))
        bad = proof[:k] + [_flip(proof[k], bit)] + proof[k + 1 :]
        assert not verify_consistency(m, n, old, new, bad)
        assert not verify_consistency(m, n, old, new, proof[:-1])
    if m < n:
        assert not verify_consistency(m, n, old, new, [*proof, new])


def test_power_of_two_old_size_needs_seeded_form() -> None:
    m, n = 512, 1000
    rfc = STORE.consistency(m, n)
    seeded = STORE.consistency(m, n, seeded=True)
    assert seeded == [STORE.root(m), *rfc]
    assert root_from_consistency_proof(m, n, STORE.root(n), seeded) == STORE.root(m)
    # The RFC form lacks the old root, so nothing can be derived from it.
    assert root_from_consistency_proof(m, n, STORE.root(n), rfc) is None
    # Non-powers of two are unaffected by `seeded`.
    assert STORE.consistency(513, n, seeded=True) == STORE.consistency(513, n)


def test_forked_log_is_exposed_by_consistency_proof() -> None:
    # Two histories that agree on 9 entries and then differ at entry 9.
    honest, _ = _build(_entries(40))
    forked, _ = _build(_entries(9) + _entries(31, b" forked")[9:] + [b"x"] * 9)
    for m, n in [(12, 40), (16, 40), (10, 33)]:
        signed_old = honest.root(m)
        forked_new = forked.root(n)
        proof = forked.consistency(m, n, seeded=True)
        implied = root_from_consistency_proof(m, n, forked_new, proof)
        assert implied is not None and implied != signed_old
        assert implied == forked.root(m)
        assert not verify_consistency(m, n, signed_old, forked_new, forked.consistency(m, n))
    # Before the fork, the trees agree and a proof from the fork is fine.
    assert verify_consistency(9, 40, honest.root(9), forked.root(40), forked.consistency(9, 40))


def test_edge_sizes() -> None:
    root = STORE.root(100)
    assert verify_consistency(0, 100, EMPTY_ROOT, root, [])
    assert not verify_consistency(0, 100, root, root, [])
    assert not verify_consistency(0, 100, EMPTY_ROOT, root, [root])
    assert verify_consistency(100, 100, root, root, [])
    assert not verify_consistency(100, 100, root, root, [root])
    assert not verify_consistency(100, 100, STORE.root(99), root, [])
    assert root_from_consistency_proof(100, 100, root, []) == root
    assert root_from_consistency_proof(0, 100, root, []) == EMPTY_ROOT
    assert not verify_consistency(101, 100, root, root, [])
    assert not verify_inclusion(0, 0, REF.leaves[0], [], EMPTY_ROOT)


def test_subtree_hash() -> None:
    for lo, hi in [(0, 1), (4, 7), (256, 300), (0, 1000), (1024, 1500)]:
        assert subtree_hash(lo, hi, STORE.read(subtree_hash_indexes(lo, hi))) == REF.mth(lo, hi)
    with pytest.raises(MerkleError):
        subtree_hash_indexes(3, 7)  # not a node: [3, 7) straddles subtrees


def test_provers_reject_bad_arguments() -> None:
    with pytest.raises(MerkleError):
        inclusion_proof_indexes(5, 5)
    with pytest.raises(MerkleError):
        inclusion_proof_indexes(-1, 5)
    with pytest.raises(MerkleError):
        consistency_proof_indexes(6, 5)
    with pytest.raises(MerkleError):
        tree_hash_indexes(-1)
    with pytest.raises(MerkleError):
        tree_hash(5, STORE.read(tree_hash_indexes(5))[:-1])
    with pytest.raises(MerkleError):
        append_hashes(3, REF.leaves[3], [])
    with pytest.raises(MerkleError):
        append_hashes(2, b"short", [])
    with pytest.raises(MerkleError):
        inclusion_proof(1, 4, [b"\x00" * 31, b"\x00" * 32])
    with pytest.raises(MerkleError):
        split_stored_hash_index(-1)


# ---------------------------------------------------------------------------
# Verifiers on garbage

garbage = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.binary(max_size=40),
    st.text(max_size=5),
    st.lists(st.binary(min_size=31, max_size=33), max_size=4),
)
hashes = st.lists(st.binary(min_size=32, max_size=32), max_size=12)


@settings(max_examples=300)
@given(garbage, garbage, garbage, st.one_of(garbage, hashes), garbage)
def test_verifiers_never_raise_on_garbage(a: Any, b: Any, c: Any, proof: Any, d: Any) -> None:
    assert verify_inclusion(a, b, c, proof, d) in (True, False)
    assert verify_consistency(a, b, c, d, proof) in (True, False)
    assert root_from_consistency_proof(a, b, c, proof) is None or isinstance(c, bytes)


@settings(max_examples=200)
@given(
    st.integers(-5, 2**64),
    st.integers(-5, 2**64),
    st.binary(min_size=32, max_size=32),
    hashes,
    st.binary(min_size=32, max_size=32),
)
def test_random_well_typed_proofs_fail(
    i: int, n: int, leaf: bytes, proof: list[bytes], root: bytes
) -> None:
    assert not verify_inclusion(i, n, leaf, proof, root)
    assert not verify_consistency(i, n, leaf, root, proof) or (
        i == n and leaf == root and not proof
    )
    implied = root_from_consistency_proof(i, n, root, proof)
    assert implied is None or (not proof and i in (0, n))


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=0, max_value=600), st.integers(min_value=1, max_value=300))
def test_frontier_is_enough_to_keep_appending(start: int, more: int) -> None:
    """A writer that keeps only the frontier can append any further leaves, and its
    hashes equal a full tree's (the node keeps nothing else in memory)."""
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(start + more)]
    stored: list[bytes] = []
    for n in range(start):
        stored += append_hashes(n, leaves[n], [stored[i] for i in append_indexes(n)])
    kept = {i: stored[i] for i in frontier_indexes(start)}
    for n in range(start, start + more):
        new = append_hashes(n, leaves[n], [kept[i] for i in append_indexes(n)])
        for k, h in enumerate(new):
            kept[stored_hash_count(n) + k] = h
        kept = {i: kept[i] for i in frontier_indexes(n + 1)}
    final = start + more
    assert tree_hash(final, [kept[i] for i in tree_hash_indexes(final)]) == MerkleTree(leaves).root(final)
