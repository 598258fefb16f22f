"""RFC 6962 / RFC 9162 Merkle tree hashing over *stored hashes*, sans I/O.

This module owns the tree arithmetic of the verifiable log: leaf and node
hashing, the numbering of stored hashes, and inclusion and consistency proofs
(producing and verifying them).

Storage model (the same as Go's golang.org/x/mod/sumdb/tlog): every complete,
aligned subtree hash is stored exactly once, at a "stored hash index", in the
order in which the subtrees complete as leaves are appended. Appending leaf n
therefore writes 1 + (trailing one bits of n) hashes, and everything else
(roots of any size, proofs) is derived from O(log n) stored hashes.

Because the node's storage is asynchronous and this layer must stay pure, every
operation that needs stored hashes is split in two: ``*_indexes(...)`` says
which stored hashes to read, and the matching function takes those hashes,
in the same order, and computes the answer. Provers raise ``MerkleError`` on
impossible arguments; verifiers never raise and just answer False / None.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

HASH_SIZE = 32
# RFC 6962 §2.1: the hash of an empty list is the hash of the empty string.
EMPTY_ROOT = hashlib.sha256(b"").digest()


class MerkleError(ValueError):
    """Invalid arguments to a Merkle tree computation (a caller bug, or bad storage)."""


def leaf_hash(entry: bytes) -> bytes:
    """MTH({d}) = SHA-256(0x00 || d)."""
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Interior node: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


# ---------------------------------------------------------------------------
# Stored hash numbering


def stored_hash_count(n: int) -> int:
    """Number of stored hashes for a tree of n leaves.

    Every complete aligned subtree is stored: n at level 0, n//2 at level 1, ...
    whose sum is 2n - popcount(n).
    """
    _check_size(n)
    return 2 * n - n.bit_count()


def stored_hash_index(level: int, n: int) -> int:
    """Index of the hash of the n-th complete subtree of height `level`.

    That subtree is stored right after its last leaf, m = (n+1)·2^level − 1:
    first the leaf's own hash at stored_hash_count(m), then one hash per level
    completed by that leaf, so level `level` lands `level` slots later.
    """
    if level < 0 or n < 0:
        raise MerkleError(f"invalid stored hash coordinates ({level}, {n})")
    last_leaf = ((n + 1) << level) - 1
    return stored_hash_count(last_leaf) + level


def split_stored_hash_index(index: int) -> tuple[int, int]:
    """Inverse of stored_hash_index: index -> (level, n)."""
    if index < 0:
        raise MerkleError(f"negative stored hash index {index}")
    # Find the leaf m whose append wrote this index: the largest m with
    # stored_hash_count(m) <= index. Since count(m) = 2m - popcount(m) <= 2m,
    # m >= index // 2, and the popcount term means we are at most ~64 leaves off.
    m = index // 2
    while stored_hash_count(m + 1) <= index:
        m += 1
    level = index - stored_hash_count(m)
    return level, m >> level


# ---------------------------------------------------------------------------
# Appending


def append_indexes(n: int) -> list[int]:
    """Stored hashes to read before appending leaf number n (0-based).

    Leaf n completes one subtree per trailing one bit of n; each needs the
    left sibling at that level, which is already stored.
    """
    _check_size(n)
    out = []
    level = 0
    while (n >> level) & 1:
        out.append(stored_hash_index(level, (n >> level) - 1))
        level += 1
    return out


def frontier_indexes(n: int) -> list[int]:
    """Stored hashes of the complete subtrees that make up a tree of n leaves, largest first.

    They are everything a writer must keep to append any number of further leaves: each
    append_indexes(m) for m >= n names only these or hashes stored after n.
    """
    _check_size(n)
    out = []
    for level in reversed(range(n.bit_length())):
        if (n >> level) & 1:
            out.append(stored_hash_index(level, (n >> level) - 1))
    return out


def append_hashes(n: int, leaf: bytes, read: Sequence[bytes]) -> list[bytes]:
    """The hashes to store when appending leaf n, given append_indexes(n).

    They go at consecutive indexes starting at stored_hash_count(n).
    """
    expected = append_indexes(n)
    _check_hashes(read, len(expected))
    _check_hash(leaf)
    out = [leaf]
    h = leaf
    for left in read:
        h = node_hash(left, h)
        out.append(h)
    return out


# ---------------------------------------------------------------------------
# Hashes of arbitrary ranges, from stored hashes


def _subtrees(lo: int, hi: int) -> list[tuple[int, int]]:
    """Split [lo, hi) into maximal complete aligned subtrees, left to right.

    Returns (level, n) pairs. For the ranges the RFC 6962 tree actually has
    as nodes (lo aligned to a power of two >= hi - lo), folding these
    right-to-left gives that node's MTH.
    """
    out = []
    while lo < hi:
        level = (hi - lo).bit_length() - 1
        # Shrink until the block is aligned at lo.
        while lo & ((1 << level) - 1):
            level -= 1
        out.append((level, lo >> level))
        lo += 1 << level
    return out


def _range_indexes(lo: int, hi: int) -> list[int]:
    return [stored_hash_index(level, n) for level, n in _subtrees(lo, hi)]


def _fold(hashes: Sequence[bytes]) -> bytes:
    # RFC 6962 puts the largest power of two on the left, so the right spine
    # is hashed first: H(a, H(b, H(c, d))).
    h = hashes[-1]
    for left in reversed(hashes[:-1]):
        h = node_hash(left, h)
    return h


def _plan_indexes(ranges: Sequence[tuple[int, int]]) -> list[int]:
    out: list[int] = []
    for lo, hi in ranges:
        out.extend(_range_indexes(lo, hi))
    return out


def _plan_hashes(ranges: Sequence[tuple[int, int]], hashes: Sequence[bytes]) -> list[bytes]:
    counts = [len(_subtrees(lo, hi)) for lo, hi in ranges]
    _check_hashes(hashes, sum(counts))
    out = []
    pos = 0
    for c in counts:
        out.append(_fold(hashes[pos : pos + c]))
        pos += c
    return out


def subtree_hash_indexes(lo: int, hi: int) -> list[int]:
    """Stored hashes needed for MTH(D[lo:hi]) of a node range of the tree."""
    _check_node_range(lo, hi)
    return _range_indexes(lo, hi)


def subtree_hash(lo: int, hi: int, hashes: Sequence[bytes]) -> bytes:
    """MTH(D[lo:hi]) from the hashes named by subtree_hash_indexes(lo, hi)."""
    _check_node_range(lo, hi)
    return _plan_hashes([(lo, hi)], hashes)[0]


def tree_hash_indexes(n: int) -> list[int]:
    """Stored hashes needed for the root of the tree of size n."""
    _check_size(n)
    return _range_indexes(0, n)


def tree_hash(n: int, hashes: Sequence[bytes]) -> bytes:
    """Root of the tree of size n from the hashes named by tree_hash_indexes(n)."""
    _check_size(n)
    if n == 0:
        _check_hashes(hashes, 0)
        return EMPTY_ROOT
    return _plan_hashes([(0, n)], hashes)[0]


# ---------------------------------------------------------------------------
# Inclusion proofs (RFC 6962 §2.1.1, RFC 9162 §2.1.3)


def _largest_power_of_two_below(n: int) -> int:
    # k < n <= 2k, for n >= 2.
    return 1 << ((n - 1).bit_length() - 1)


def _inclusion_ranges(i: int, n: int) -> list[tuple[int, int]]:
    if not 0 <= i < n:
        raise MerkleError(f"leaf {i} not in tree of size {n}")
    # PATH(m, D[lo:hi]) walked top-down; the proof lists siblings leaf-first.
    ranges = []
    lo, hi = 0, n
    while hi - lo > 1:
        k = _largest_power_of_two_below(hi - lo)
        if i < lo + k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo = lo + k
    ranges.reverse()
    return ranges


def inclusion_proof_indexes(i: int, n: int) -> list[int]:
    """Stored hashes needed for the inclusion proof of leaf i in tree size n."""
    return _plan_indexes(_inclusion_ranges(i, n))


def inclusion_proof(i: int, n: int, hashes: Sequence[bytes]) -> list[bytes]:
    """The RFC 6962 audit path of leaf i in tree size n, leaf's sibling first."""
    return _plan_hashes(_inclusion_ranges(i, n), hashes)


def verify_inclusion(i: int, n: int, leaf: bytes, proof: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 §2.1.3.2. True iff `proof` links `leaf` at index i to `root` of size n.

    Never raises: every input is type-checked first, as it may be hostile.
    """
    if not (_is_hash(leaf) and _is_hash(root) and _all_hashes(proof)):
        return False
    if not (_is_int(i) and _is_int(n) and 0 <= i < n):
        return False
    fn, sn = i, n - 1
    r = leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            # Skip the levels where our node is a lone right-edge child.
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


# ---------------------------------------------------------------------------
# Consistency proofs (RFC 6962 §2.1.2, RFC 9162 §2.1.4)


def _is_power_of_two(m: int) -> bool:
    return m > 0 and m & (m - 1) == 0


def _consistency_ranges(m: int, n: int, seeded: bool) -> list[tuple[int, int]]:
    if not 0 <= m <= n:
        raise MerkleError(f"no consistency proof from size {m} to {n}")
    if m == 0 or m == n:
        return []
    # SUBPROOF(m, D[lo:hi], b) walked top-down, then reversed so the
    # deepest hashes come first, as the RFC lists them.
    ranges = []
    lo, hi, complete = 0, n, True
    while True:
        if m == hi:
            if not complete:
                ranges.append((lo, hi))
            break
        k = _largest_power_of_two_below(hi - lo)
        if m - lo <= k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo = lo + k
            complete = False
    ranges.reverse()
    if seeded and _is_power_of_two(m):
        # The RFC omits MTH(D[0:m]) here since the verifier already has it;
        # evidence of equivocation needs it spelled out.
        ranges.insert(0, (0, m))
    return ranges


def consistency_proof_indexes(m: int, n: int, *, seeded: bool = False) -> list[int]:
    """Stored hashes needed for the consistency proof from size m to size n."""
    return _plan_indexes(_consistency_ranges(m, n, seeded))


def consistency_proof(
    m: int, n: int, hashes: Sequence[bytes], *, seeded: bool = False
) -> list[bytes]:
    """The RFC 6962 consistency proof from size m to n (empty if m == n or m == 0).

    With seeded=True and m a power of two (m < n), the old root MTH(D[0:m]) is
    prepended, as RFC 9162 §2.1.4.2 step 2 does; that form is self-contained
    and is what root_from_consistency_proof expects.
    """
    return _plan_hashes(_consistency_ranges(m, n, seeded), hashes)


def root_from_consistency_proof(
    m: int, n: int, new_root: bytes, proof: Sequence[bytes]
) -> bytes | None:
    """The root of size m implied by a consistency proof verifying against new_root.

    Returns None when the proof does not verify against `new_root`. If the
    result differs from a root the log signed for size m, the two checkpoints
    are proof of a forked log. When m is a power of two (and m < n) the proof
    must be in seeded form (see consistency_proof): the RFC form leaves that
    root out, so nothing could be derived from it.
    """
    if not (_is_hash(new_root) and _all_hashes(proof)):
        return None
    if not (_is_int(m) and _is_int(n) and 0 <= m <= n):
        return None
    if m == n:
        return new_root if len(proof) == 0 else None
    if m == 0:
        return EMPTY_ROOT if len(proof) == 0 else None
    if len(proof) == 0:
        return None
    fn, sn = m - 1, n - 1
    # Start from the deepest node shared by both trees: the old tree's
    # right-edge node, at the level where fn stops having a low 1 bit.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0 or sr != new_root:
        return None
    return fr


def verify_consistency(
    m: int, n: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """RFC 9162 §2.1.4.2: True iff the tree (n, new_root) extends (m, old_root).

    Takes the RFC (unseeded) proof form. m == n needs an empty proof and equal
    roots; m == 0 needs an empty proof and old_root == EMPTY_ROOT.
    """
    if not (_is_hash(old_root) and _all_hashes(proof)):
        return False
    if _is_int(m) and _is_int(n) and 0 < m < n and _is_power_of_two(m):
        proof = [old_root, *proof]
    return root_from_consistency_proof(m, n, new_root, proof) == old_root


# ---------------------------------------------------------------------------
# Reference implementation


class MerkleTree:
    """A plain in-memory RFC 6962 tree, by direct recursion on the definitions.

    Deliberately naive and independent of the stored-hash code above, so
    tests can cross-check one against the other.
    """

    def __init__(self, leaves: Sequence[bytes] = ()) -> None:
        self.leaves: list[bytes] = list(leaves)

    def append(self, entry: bytes) -> None:
        self.leaves.append(leaf_hash(entry))

    def __len__(self) -> int:
        return len(self.leaves)

    def mth(self, lo: int, hi: int) -> bytes:
        if hi - lo == 0:
            return EMPTY_ROOT
        if hi - lo == 1:
            return self.leaves[lo]
        k = _largest_power_of_two_below(hi - lo)
        return node_hash(self.mth(lo, lo + k), self.mth(lo + k, hi))

    def root(self, n: int | None = None) -> bytes:
        return self.mth(0, len(self.leaves) if n is None else n)

    def inclusion_proof(self, i: int, n: int) -> list[bytes]:
        def path(m: int, lo: int, hi: int) -> list[bytes]:
            if hi - lo <= 1:
                return []
            k = _largest_power_of_two_below(hi - lo)
            if m < k:
                return path(m, lo, lo + k) + [self.mth(lo + k, hi)]
            return path(m - k, lo + k, hi) + [self.mth(lo, lo + k)]

        return path(i, 0, n)

    def consistency_proof(self, m: int, n: int) -> list[bytes]:
        def subproof(m: int, lo: int, hi: int, complete: bool) -> list[bytes]:
            if m == hi - lo:
                return [] if complete else [self.mth(lo, hi)]
            k = _largest_power_of_two_below(hi - lo)
            if m <= k:
                return subproof(m, lo, lo + k, complete) + [self.mth(lo + k, hi)]
            return subproof(m - k, lo + k, hi, False) + [self.mth(lo, lo + k)]

        if m == 0:
            return []
        return subproof(m, 0, n, True)


# ---------------------------------------------------------------------------
# Argument checks


def _check_size(n: int) -> None:
    if not isinstance(n, int) or n < 0:
        raise MerkleError(f"invalid tree size {n!r}")


def _check_node_range(lo: int, hi: int) -> None:
    if not 0 <= lo < hi:
        raise MerkleError(f"invalid range [{lo}, {hi})")
    size = hi - lo
    if lo & ((1 << (size - 1).bit_length()) - 1):
        raise MerkleError(f"[{lo}, {hi}) is not a node of any tree")


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_hash(h: object) -> bool:
    return isinstance(h, bytes) and len(h) == HASH_SIZE


def _all_hashes(hs: object) -> bool:
    return isinstance(hs, (list, tuple)) and all(_is_hash(h) for h in hs)


def _check_hash(h: bytes) -> None:
    if not _is_hash(h):
        raise MerkleError("hash must be 32 bytes")


def _check_hashes(hashes: Sequence[bytes], want: int) -> None:
    if len(hashes) != want:
        raise MerkleError(f"got {len(hashes)} hashes, want {want}")
    for h in hashes:
        _check_hash(h)
