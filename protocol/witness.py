"""Witnessing: what a witness cosigns (C2SP tlog-witness), and counting cosignatures.

Layer: protocol (pure). A Tally node witnesses the logs of the nodes it has credit lines with,
and its peers witness its log; this module decides one ``add-checkpoint`` request given the
logs the witness knows and the checkpoint it last cosigned for each. The node (``node.witness``)
does the I/O, keeps the decision atomic with storing the new latest, and signs with the time.

Theory of operation: the checks run in this order, each with the status the spec gives::

    the checkpoint's origin is no log we witness          404  unknown_log
    no valid signature from that log's key on it          403  bad_signature
    old size > checkpoint size                            400  invalid_field
    old size != size we last cosigned (0 if none)         409  old_size_mismatch, with ours
    size 0 with a root other than the empty tree's        422  inconsistent_checkpoint
    old 0 with a non-empty proof                          422  inconsistent_checkpoint
    old = size, and the root differs from ours            422  + evidence (same size)
    the proof does not verify from our root to the new    422  (+ evidence, see below)
    otherwise                                             200  cosign; this is the new latest

Evidence: a proof that verifies against the new root but yields another root for the old
size proves that the log signed two histories (``protocol.evidence``). The witness gets the
proof in the RFC 6962 form, which leaves out the old root when the old size is a power of two;
then nothing can be derived from it and a failing proof is only refused, never evidence.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from crypto.checkpoint import Checkpoint, CheckpointError, parse_checkpoint
from crypto.merkle import EMPTY_ROOT, verify_consistency
from crypto.note import (
    CosignatureVerifier,
    Cosigner,
    Ed25519Verifier,
    NoteError,
    Signature,
    open_note,
    parse_note,
    sign_note,
    split_cosignature,
)
from crypto.witness import AddCheckpoint
from protocol.codes import ResultCode
from protocol.evidence import Equivocation, EvidenceError, verify_equivocation


class WitnessRefusal(Exception):
    """The witness does not cosign: ``status`` and ``code`` as the spec and API give them.

    ``latest_size`` is set on a 409 (the size to retry from); ``evidence`` when the request
    itself proves that the log equivocated."""

    def __init__(self, status: int, code: ResultCode, message: str, *,
                 latest_size: int | None = None, evidence: Equivocation | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.latest_size = latest_size
        self.evidence = evidence


@dataclass(frozen=True)
class Witnessed:
    """A checkpoint a witness accepted: the note keeps only the log's own signature."""

    checkpoint: Checkpoint
    note: bytes


def open_witnessed(note: bytes, verifier: Ed25519Verifier) -> Witnessed:
    """A checkpoint note reduced to the log's verified signature (the form a witness keeps
    and puts in evidence: other witnesses' cosignatures are not its to vouch for)."""
    opened = open_note(note, [verifier])
    checkpoint = parse_checkpoint(opened.text)
    return Witnessed(checkpoint, sign_note(opened.text, [], existing=opened.sigs))


def _origin(note: bytes) -> str:
    try:
        text, _ = parse_note(note)
        return parse_checkpoint(text).origin
    except (NoteError, CheckpointError) as exc:
        raise WitnessRefusal(400, ResultCode.invalid_field,
                             f"the checkpoint is not a signed C2SP checkpoint note: {exc}") from exc


def check_add_checkpoint(
    req: AddCheckpoint,
    logs: Mapping[str, Ed25519Verifier],
    latest: Mapping[str, Witnessed],
) -> Witnessed:
    """The checkpoint to cosign, or ``WitnessRefusal``. ``logs``: origin -> the log's key;
    ``latest``: origin -> the checkpoint last cosigned."""
    origin = _origin(req.note)
    verifier = logs.get(origin)
    if verifier is None:
        raise WitnessRefusal(404, ResultCode.unknown_log,
                             f"this witness cosigns only the logs of collectives it has a "
                             f"credit line with, and {origin[:80]!r} is none of them")
    try:
        new = open_witnessed(req.note, verifier)
    except NoteError as exc:
        raise WitnessRefusal(403, ResultCode.bad_signature,
                             f"the checkpoint is not validly signed by the key of "
                             f"{origin}: {exc}") from exc
    except CheckpointError as exc:  # pragma: no cover - _origin parsed the same text
        raise WitnessRefusal(400, ResultCode.invalid_field, str(exc)) from exc
    cp, old = new.checkpoint, req.old_size
    if old > cp.size:
        raise WitnessRefusal(400, ResultCode.invalid_field,
                             f"the old size {old} is larger than the checkpoint's {cp.size}")
    held = latest.get(origin)
    held_size = held.checkpoint.size if held else 0
    if old != held_size:
        raise WitnessRefusal(409, ResultCode.old_size_mismatch,
                             f"this witness last cosigned size {held_size} of {origin}, not "
                             f"{old}: send a proof from {held_size}", latest_size=held_size)
    if cp.size == 0 and cp.root != EMPTY_ROOT:
        raise WitnessRefusal(422, ResultCode.inconsistent_checkpoint,
                             "a checkpoint of size 0 must have the empty tree's root")
    if held is None:
        if req.proof:
            raise WitnessRefusal(422, ResultCode.inconsistent_checkpoint,
                                 "from old size 0 the consistency proof must be empty")
        return new
    if verify_consistency(old, cp.size, held.checkpoint.root, cp.root, list(req.proof)):
        return new
    evidence = _evidence(verifier, held, new, req.proof)
    if old == cp.size:
        why = f"a checkpoint of size {old} with a root other than the one cosigned before"
    else:
        why = f"the consistency proof from size {old} to {cp.size} does not verify"
    raise WitnessRefusal(422, ResultCode.inconsistent_checkpoint,
                         why + (": the log signed two histories (evidence "
                                f"{evidence.id[:16]})" if evidence else ""),
                         evidence=evidence)


def _evidence(verifier: Ed25519Verifier, held: Witnessed, new: Witnessed,
              proof: tuple[bytes, ...]) -> Equivocation | None:
    """Evidence of equivocation from a failed check, if the request holds any."""
    smaller, larger = (held, new) if held.checkpoint.size <= new.checkpoint.size else (new, held)
    if smaller.checkpoint.size == larger.checkpoint.size:
        proof = ()
        smaller, larger = sorted((held, new), key=lambda w: w.note)
    try:
        return verify_equivocation(verifier.vkey, (smaller.note, larger.note), proof)
    except EvidenceError:
        return None  # a proof that merely fails proves nothing


def cosign(cosigner: Cosigner, checkpoint: Checkpoint, timestamp: int) -> str:
    """The cosignature/v1 note signature line on ``checkpoint`` (tlog-cosignature)."""
    if timestamp <= 0:
        raise ValueError("a witness's cosignature must carry the time (tlog-witness)")
    sig = cosigner.sign_at(checkpoint.text.encode("utf-8"), timestamp)
    return Signature(cosigner.name, cosigner.key_id, sig).line


def valid_cosigners(note: bytes, witnesses: Iterable[CosignatureVerifier],
                    not_after: int | None = None) -> list[CosignatureVerifier]:
    """The witnesses whose cosignature on ``note`` verifies (each counted once).

    Checked line by line, so that a bad line (or one from an unknown key) costs only that
    witness's vote, never the note. ``not_after`` (seconds): later timestamps do not count.
    """
    text, sigs = parse_note(note)
    body = text.encode("utf-8")
    by_id = {(w.name, w.key_id): w for w in witnesses}
    found: dict[tuple[str, int], CosignatureVerifier] = {}
    for sig in sigs:
        w = by_id.get((sig.name, sig.key_id))
        if w is None or (sig.name, sig.key_id) in found or not w.verify(body, sig.signature):
            continue
        if not_after is not None and split_cosignature(sig.signature)[0] > not_after:
            continue
        found[(sig.name, sig.key_id)] = w
    return list(found.values())
