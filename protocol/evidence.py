"""Evidence that a log signer showed two histories: self-verifying, checkable offline.

Layer: protocol (pure). Owns the evidence record and its verification; knows nothing of who
found it or how it travels (``protocol.gossip`` carries it, ``node.gossip`` stores it).

An evidence record (JSON)::

    {"type": "equivocation",
     "vkey": "<C2SP verifier key of the log signer>",
     "checkpoints": ["<signed note>", "<signed note>"],
     "proof": ["<base64 hash>", ...]}

It proves equivocation, and nothing weaker, when both notes verify with ``vkey``, name the
same origin, and either

- both checkpoints have the same size and different roots (``proof`` is empty); or
- the sizes are m < n (the smaller first) and ``proof`` is a consistency proof from m to n
  that verifies against the larger root yet yields a root for size m that differs from the
  smaller checkpoint's. For m a power of two the proof is in the seeded form (the root of the
  first m leaves first; ``crypto.merkle.consistency_proof(..., seeded=True)``), so the
  derived root is bound to the larger tree.

A proof that merely fails to verify proves nothing (anyone can send garbage), so it is
refused as evidence. The offender is the key in ``vkey``; for a Tally node that is the node
key (``node.checkpoints.log_signer``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from typing import Any

from crypto.canonical import canonical_json
from crypto.checkpoint import Checkpoint, CheckpointError, parse_checkpoint
from crypto.keys import PublicKey
from crypto.merkle import consistency_proof, root_from_consistency_proof
from crypto.note import Ed25519Verifier, NoteError, open_note, parse_verifier_key

MAX_PROOF_HASHES = 64  # a consistency proof of a tree of up to 2^63 entries is shorter
MAX_NOTE_BYTES = 16 * 1024


class EvidenceError(ValueError):
    """Not evidence of equivocation: the message says what is missing or wrong."""


@dataclass(frozen=True)
class Equivocation:
    """Verified evidence: ``offender`` signed both checkpoints, which contradict each other."""

    vkey: str
    notes: tuple[bytes, bytes]  # the smaller (or equal) size first
    proof: tuple[bytes, ...]
    offender: PublicKey
    origin: str
    checkpoints: tuple[Checkpoint, Checkpoint]

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "equivocation",
            "vkey": self.vkey,
            "checkpoints": [n.decode("utf-8") for n in self.notes],
            "proof": [base64.b64encode(h).decode("ascii") for h in self.proof],
        }

    @property
    def id(self) -> str:
        """The SHA-256 of the record's RFC 8785 form, hex: how gossip names it."""
        return hashlib.sha256(canonical_json(self.to_json())).hexdigest()

    def summary(self) -> str:
        a, b = self.checkpoints
        if a.size == b.size:
            how = f"two checkpoints of size {a.size} with different roots"
        else:
            how = (f"a checkpoint of size {a.size} and one of size {b.size} whose "
                   "consistency proof gives a different root for the smaller")
        return f"{self.origin} (key {self.offender.key_id}) signed {how}"


def _open(vkey: str, note: bytes) -> Checkpoint:
    try:
        verifier = parse_verifier_key(vkey)
    except NoteError as exc:
        raise EvidenceError(f"vkey: {exc}") from exc
    if not isinstance(verifier, Ed25519Verifier):
        raise EvidenceError("vkey: a log signer's key must be plain Ed25519 (type 0x01)")
    try:
        opened = open_note(note, [verifier])
        checkpoint = parse_checkpoint(opened.text)
    except (NoteError, CheckpointError) as exc:
        raise EvidenceError(f"a checkpoint does not verify with vkey: {exc}") from exc
    if checkpoint.origin != verifier.name:
        raise EvidenceError("a checkpoint's origin is not the vkey's name")
    return checkpoint


def verify_equivocation(
    vkey: str, notes: tuple[bytes, bytes], proof: tuple[bytes, ...] = ()
) -> Equivocation:
    """The verified evidence, or ``EvidenceError`` saying why it proves nothing."""
    if len(proof) > MAX_PROOF_HASHES:
        raise EvidenceError(f"proof: at most {MAX_PROOF_HASHES} hashes")
    if any(len(n) > MAX_NOTE_BYTES for n in notes):
        raise EvidenceError(f"checkpoints: each at most {MAX_NOTE_BYTES} bytes")
    first, second = (_open(vkey, n) for n in notes)
    if first.size > second.size:
        raise EvidenceError("checkpoints: the smaller one comes first")
    if first.size == second.size:
        if proof:
            raise EvidenceError("proof: must be empty for two checkpoints of one size")
        if first.root == second.root and first.extensions == second.extensions:
            raise EvidenceError("the two checkpoints are the same: no contradiction")
        if first.root == second.root:
            raise EvidenceError("the two checkpoints have the same root: no contradiction")
    else:
        derived = root_from_consistency_proof(first.size, second.size, second.root, list(proof))
        if derived is None:
            raise EvidenceError(
                "proof: does not verify against the larger checkpoint's root, so it proves "
                "nothing (a proof that merely fails is no evidence)")
        if derived == first.root:
            raise EvidenceError("the larger checkpoint extends the smaller: no contradiction")
    verifier = parse_verifier_key(vkey)
    assert isinstance(verifier, Ed25519Verifier)
    return Equivocation(vkey, notes, tuple(proof), PublicKey(verifier.public_key),
                        first.origin, (first, second))


def parse_evidence(obj: Any) -> Equivocation:
    """Strictly parse and verify an evidence record (JSON value)."""
    if not isinstance(obj, dict) or set(obj) != {"type", "vkey", "checkpoints", "proof"}:
        raise EvidenceError(
            'evidence must be an object with exactly "type", "vkey", "checkpoints", "proof"')
    if obj["type"] != "equivocation":
        raise EvidenceError('type: must be "equivocation"')
    vkey, notes, proof = obj["vkey"], obj["checkpoints"], obj["proof"]
    if not isinstance(vkey, str) or len(vkey) > 512:
        raise EvidenceError("vkey: must be a C2SP verifier key string")
    if (not isinstance(notes, list) or len(notes) != 2
            or not all(isinstance(n, str) for n in notes)):
        raise EvidenceError("checkpoints: must be a list of two signed notes")
    if not isinstance(proof, list) or not all(isinstance(h, str) for h in proof):
        raise EvidenceError("proof: must be a list of base64 hashes")
    hashes = []
    for h in proof[:MAX_PROOF_HASHES + 1]:
        try:
            raw = base64.b64decode(h.encode("ascii"), validate=True)
        except (UnicodeEncodeError, binascii.Error) as exc:
            raise EvidenceError("proof: a hash is not base64") from exc
        if len(raw) != 32:
            raise EvidenceError("proof: each hash is 32 bytes")
        hashes.append(raw)
    encoded = (notes[0].encode("utf-8"), notes[1].encode("utf-8"))
    return verify_equivocation(vkey, encoded, tuple(hashes))


def same_size_evidence(vkey: str, a: bytes, b: bytes) -> Equivocation:
    """Evidence from two signed checkpoints of one size with different roots."""
    return verify_equivocation(vkey, (a, b))


def fork_evidence(vkey: str, smaller: bytes, larger: bytes, hashes: list[bytes]) -> Equivocation:
    """Evidence from two checkpoints of sizes m < n and the stored hashes a log holding the
    larger tree serves for ``consistency_proof(m, n, seeded=True)``."""
    m = _open(vkey, smaller).size
    n = _open(vkey, larger).size
    return verify_equivocation(vkey, (smaller, larger),
                               tuple(consistency_proof(m, n, hashes, seeded=True)))
