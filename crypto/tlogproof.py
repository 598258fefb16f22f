"""C2SP tlog-proof bundles (c2sp.org/tlog-proof@v1): offline-verifiable inclusion.

This module owns the text format (header, optional extra data, index,
inclusion proof hashes, blank line, signed checkpoint verbatim) and its
verification: log signature, witness cosignatures, then inclusion of the
caller-computed leaf hash under the checkpoint root.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from crypto.checkpoint import Checkpoint, CheckpointError, parse_checkpoint
from crypto.merkle import HASH_SIZE, verify_inclusion
from crypto.note import Note, NoteError, Signature, Verifier, open_note, parse_note

HEADER = "c2sp.org/tlog-proof@v1"

_DECIMAL = re.compile(r"0|[1-9][0-9]{0,18}", re.ASCII)


class TlogProofError(ValueError):
    """A malformed or unverifiable tlog proof."""


@dataclass(frozen=True)
class TlogProof:
    index: int
    proof: tuple[bytes, ...]
    checkpoint: bytes  # the signed checkpoint note, verbatim
    extra: bytes | None = None


@dataclass(frozen=True)
class VerifiedTlogProof:
    """What a verified proof establishes."""

    checkpoint: Checkpoint
    note: Note
    cosignatures: tuple[Signature, ...]  # verified signatures by the given witnesses


def _b64(s: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(s.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error) as e:
        raise TlogProofError(f"{what} is not base64") from e
    if base64.b64encode(raw).decode("ascii") != s:
        raise TlogProofError(f"{what} is not canonical base64")
    return raw


def format_tlog_proof(
    index: int, proof: Sequence[bytes], checkpoint: bytes, extra: bytes | None = None
) -> bytes:
    """Encode a proof; `checkpoint` is the signed checkpoint note as the log served it."""
    if index < 0:
        raise TlogProofError("negative index")
    if any(len(h) != HASH_SIZE for h in proof):
        raise TlogProofError("proof hashes must be 32 bytes")
    if extra is not None and not extra:
        raise TlogProofError("extra data, when present, must be non-empty")
    try:
        parse_note(checkpoint)
    except NoteError as e:
        raise TlogProofError(f"checkpoint is not a signed note: {e}") from e
    lines = [HEADER]
    if extra is not None:
        lines.append("extra " + base64.b64encode(extra).decode("ascii"))
    lines.append(f"index {index}")
    lines.extend(base64.b64encode(h).decode("ascii") for h in proof)
    return ("\n".join(lines) + "\n\n").encode("ascii") + checkpoint


def parse_tlog_proof(data: bytes) -> TlogProof:
    """Parse a proof strictly. The checkpoint must be a well-formed signed note
    with a well-formed checkpoint body; its signatures are checked by verify."""
    # The head is ASCII; the checkpoint after it is UTF-8 and kept as bytes.
    head_end = data.find(b"\n\n")
    if head_end < 0:
        raise TlogProofError("missing blank line before the checkpoint")
    try:
        head = data[:head_end].decode("ascii")
    except UnicodeDecodeError as e:
        raise TlogProofError("non-ASCII proof header") from e
    checkpoint = data[head_end + 2 :]
    lines = head.split("\n")
    if lines[0] != HEADER:
        raise TlogProofError("not a c2sp.org/tlog-proof@v1 proof")
    pos = 1
    extra = None
    if pos < len(lines) and lines[pos].startswith("extra "):
        extra = _b64(lines[pos][len("extra ") :], "extra data")
        if not extra:
            raise TlogProofError("empty extra data")
        pos += 1
    if pos >= len(lines) or not lines[pos].startswith("index "):
        raise TlogProofError("missing index line")
    index_s = lines[pos][len("index ") :]
    if not _DECIMAL.fullmatch(index_s):
        raise TlogProofError("index must be decimal without leading zeroes")
    proof = []
    for line in lines[pos + 1 :]:
        h = _b64(line, "proof hash")
        if len(h) != HASH_SIZE:
            raise TlogProofError("proof hashes must be 32 bytes")
        proof.append(h)
    try:
        text, _ = parse_note(checkpoint)
        parse_checkpoint(text)
    except (NoteError, CheckpointError) as e:
        raise TlogProofError(f"bad checkpoint: {e}") from e
    return TlogProof(int(index_s), tuple(proof), checkpoint, extra)


def verify_tlog_proof(
    proof: TlogProof | bytes,
    leaf: bytes,
    origin: str,
    log_verifiers: Iterable[Verifier],
    witnesses: Iterable[Verifier] = (),
    min_cosignatures: int = 0,
) -> VerifiedTlogProof:
    """Verify a proof for `leaf` (a leaf hash the caller computed from its data).

    Steps per the spec: the origin must be `origin`, the checkpoint signed by
    one of `log_verifiers`, at least `min_cosignatures` of the `witnesses`
    must have cosigned (a k-of-n policy; anything richer is the caller's), and
    the inclusion proof must tie `leaf` to the checkpoint root.
    """
    p = parse_tlog_proof(proof) if isinstance(proof, bytes) else proof
    logs = list(log_verifiers)
    wits = list(witnesses)
    try:
        note = open_note(p.checkpoint, logs + wits)
        cp = parse_checkpoint(note.text)
    except (NoteError, CheckpointError) as e:
        raise TlogProofError(f"checkpoint rejected: {e}") from e
    if cp.origin != origin:
        raise TlogProofError(f"checkpoint origin {cp.origin!r}, want {origin!r}")
    log_keys = {(v.name, v.key_id) for v in logs}
    wit_keys = {(v.name, v.key_id) for v in wits}
    if not any((s.name, s.key_id) in log_keys for s in note.sigs):
        raise TlogProofError("checkpoint not signed by the log")
    cosigs = tuple(s for s in note.sigs if (s.name, s.key_id) in wit_keys)
    if len(cosigs) < min_cosignatures:
        raise TlogProofError(f"{len(cosigs)} cosignatures, need {min_cosignatures}")
    if not verify_inclusion(p.index, cp.size, leaf, list(p.proof), cp.root):
        raise TlogProofError("inclusion proof does not verify")
    return VerifiedTlogProof(cp, note, cosigs)
