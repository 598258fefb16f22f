"""``tally verify``: a member checks that the node keeps its books honestly.

Layer: node (client side). Every check is done here, with keys and hashes the member holds,
not taken on the node's word:

1. the node's log key is pinned on first contact (trust on first use) in the member's home;
   a node that later signs with another key is refused;
2. the latest checkpoint's signature verifies with that key;
3. the checkpoint is consistent with the last one this member saw (an RFC 6962 consistency
   proof): the log only grew. A log that shrank, or a proof that fails, is reported loudly,
   with both checkpoints saved as evidence;
   With ``witnesses=k``, the checkpoint must also carry at least k valid C2SP cosignatures
   from known witnesses: the keys given, or else the line peers' cosigner keys the node
   reports (``node.witness``) — which shows the checkpoint was seen, consistent with their
   last, by collectives other than the node itself. Keys given by the member are the stronger
   choice: a node that lies could report witnesses it controls;
4. each of the member's own postings not yet checked is an entry in the log (an inclusion
   proof against the checkpoint), and that entry says what the history said; a C2SP
   tlog-proof bundle for each is kept in the home, valid offline whatever the node does later.

State kept in ``<home>/logs/<ledger id>/``: ``vkey``, ``checkpoint`` (last seen),
``verified`` (highest log index checked), ``proofs/<index>.tlog-proof``, and evidence files.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crypto import merkle
from crypto.canonical import parse_json
from crypto.checkpoint import Checkpoint, CheckpointError, parse_checkpoint
from crypto.note import CosignatureVerifier, NoteError, Verifier, open_note, parse_verifier_key
from node.client import TallyClient
from protocol.federation import Decision, Fulfil
from protocol.messages import MessageError, Transfer, parse_log_entry
from protocol.witness import valid_cosigners

# A cosignature dated further ahead of the member's clock than this does not count.
COSIGNATURE_SKEW_SECONDS = 600


class VerificationFailed(Exception):
    """The node's log failed a check. ``evidence`` names a file holding the proof, if any."""

    def __init__(self, message: str, evidence: Path | None = None) -> None:
        super().__init__(message)
        self.evidence = evidence


@dataclass
class Report:
    checkpoint_size: int = 0
    previous_size: int | None = None
    entries_checked: int = 0
    lines: list[str] = field(default_factory=list)

    def ok(self, line: str) -> None:
        self.lines.append(f"ok  {line}")


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (ValueError, TypeError) as exc:
        raise VerificationFailed(f"the node sent a malformed hash or entry ({exc})") from exc


LOGS_DIR = "logs"  # in the member's home: one directory per ledger, named by its id


class LogState:
    """What the member's home remembers about one ledger's log."""

    def __init__(self, home: Path, ledger_id: str) -> None:
        self.dir = home / LOGS_DIR / ledger_id

    def read(self, name: str) -> bytes | None:
        path = self.dir / name
        return path.read_bytes() if path.exists() else None

    def write(self, name: str, data: bytes) -> Path:
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        return path


def _open_checkpoint(note: bytes, verifier: Verifier, what: str) -> Checkpoint:
    try:
        return parse_checkpoint(open_note(note, [verifier]).text)
    except (NoteError, CheckpointError) as exc:
        raise VerificationFailed(
            f"{what} is not validly signed by this node's log key ({exc})"
        ) from exc


def _cosigner_keys(vkeys: Sequence[str], source: str) -> list[CosignatureVerifier]:
    out = []
    for vkey in vkeys:
        try:
            v = parse_verifier_key(vkey)
        except NoteError as exc:
            raise VerificationFailed(f"witness key {vkey[:60]!r} ({source}): {exc}") from exc
        if not isinstance(v, CosignatureVerifier):
            raise VerificationFailed(
                f"witness key {vkey[:60]!r} ({source}) is not a cosignature key (type 0x04); "
                "a witness's key is the `witness_vkey` its node serves at /v1/log/checkpoint")
        out.append(v)
    return out


async def _witnessed_checkpoint(
    client: TallyClient, verifier: Verifier, doc: dict[str, Any], need: int,
    witness_keys: Sequence[str], wait_seconds: float, report: Report,
) -> dict[str, Any]:
    """The checkpoint document once its note carries ``need`` valid cosignatures; the node
    asks its witnesses after each checkpoint, so a fresh one is waited for a little."""
    if witness_keys:
        trusted, source = _cosigner_keys(witness_keys, "given"), "the keys you gave"
    else:
        trusted = _cosigner_keys(doc.get("witnesses", []), "reported by the node")
        source = "the line peers the node reports"
    deadline = time.monotonic() + wait_seconds
    while True:
        note = doc["note"].encode()
        _open_checkpoint(note, verifier, "the latest checkpoint")
        found = valid_cosigners(note, trusted,
                                not_after=int(time.time()) + COSIGNATURE_SKEW_SECONDS)
        if len(found) >= need:
            report.ok(f"cosigned by {len(found)} witness(es): "
                      + ", ".join(w.name for w in found))
            return doc
        if time.monotonic() >= deadline or len(trusted) < need:
            names = ", ".join(w.name for w in found) or "none"
            hint = (f"only {len(trusted)} witness key(s) are known ({source}); give more with "
                    "--witness-key" if len(trusted) < need else
                    "its witnesses have not cosigned it (yet): run again in a minute, and if "
                    "it persists ask your stewards whether the line peers are reachable")
            raise VerificationFailed(
                f"the checkpoint carries {len(found)} valid cosignature(s) from known "
                f"witnesses ({names}), but you asked for at least {need}: {hint}")
        await asyncio.sleep(0.5)
        doc = await client.get_json("/v1/log/checkpoint")


async def verify_member(
    client: TallyClient, handle: str, home: Path, recheck_all: bool = False, *,
    witnesses: int = 0, witness_keys: Sequence[str] = (), wait_seconds: float = 10.0,
) -> Report:
    info = await client.info()
    state = LogState(home, info.ledger_id)
    report = Report()

    served_vkey = (await client.get_text("/log/vkey")).strip()
    pinned = state.read("vkey")
    if pinned is None:
        state.write("vkey", served_vkey.encode() + b"\n")
        report.ok(f"pinned the log key on first contact: {served_vkey}")
        pinned_vkey = served_vkey
    else:
        pinned_vkey = pinned.decode().strip()
        if pinned_vkey != served_vkey:
            raise VerificationFailed(
                f"the node now serves log key {served_vkey}, but you pinned {pinned_vkey}: "
                "it is not the same log. Do not trust its answers; tell your stewards."
            )
        report.ok("the log key is the one pinned on first contact")
    verifier = parse_verifier_key(pinned_vkey)

    cp_doc = await client.get_json("/v1/log/checkpoint")
    if witnesses > 0:
        cp_doc = await _witnessed_checkpoint(client, verifier, cp_doc, witnesses, witness_keys,
                                             wait_seconds, report)
    note = cp_doc["note"].encode()
    cp = _open_checkpoint(note, verifier, "the latest checkpoint")
    report.checkpoint_size = cp.size
    report.ok(f"checkpoint signature verifies (size {cp.size})")

    previous = state.read("checkpoint")
    if previous is not None:
        old = _open_checkpoint(previous, verifier, "the checkpoint you saw before")
        report.previous_size = old.size
        await _check_consistent(client, state, old, previous, cp, note)
        report.ok(f"consistent with the checkpoint you saw before (size {old.size} → {cp.size})")
    state.write("checkpoint", note)

    verified_upto = -1 if recheck_all else int((state.read("verified") or b"-1").decode())
    postings = await client.history(handle)
    fresh = sorted(
        (p for p in postings if verified_upto < p["index"] < cp.size), key=lambda p: p["index"]
    )
    for posting in fresh:
        await _check_posting(client, state, handle, posting, cp)
        report.entries_checked += 1
    if fresh:
        state.write("verified", str(max(fresh[-1]["index"], verified_upto)).encode())
    pending = sum(1 for p in postings if p["index"] >= cp.size)
    report.ok(
        f"{report.entries_checked} new entr{'y' if report.entries_checked == 1 else 'ies'} of "
        f"yours included in the log"
        + (f"; {pending} newer than the checkpoint, checked next time" if pending else "")
    )
    return report


async def _check_consistent(
    client: TallyClient, state: LogState, old: Checkpoint, old_note: bytes, new: Checkpoint,
    new_note: bytes,
) -> None:
    def evidence(reason: str, proof: list[str] | None = None) -> Path:
        doc = {
            "reason": reason,
            "node": client.url,
            "found_at": int(time.time()),
            "earlier_checkpoint": old_note.decode(),
            "later_checkpoint": new_note.decode(),
            "consistency_proof": proof,
        }
        return state.write(f"evidence-{time.time_ns()}.json",
                           json.dumps(doc, indent=2).encode())

    if new.size < old.size:
        path = evidence("the log shrank")
        raise VerificationFailed(
            f"the log shrank: you saw {old.size} entries, the node now signs {new.size}. "
            f"Both signed checkpoints are saved as evidence in {path}; tell your stewards.",
            path,
        )
    if new.size == old.size:
        if new.root != old.root:
            path = evidence("two checkpoints of one size with different roots")
            raise VerificationFailed(
                f"the node signed two different logs of size {new.size}: a fork. "
                f"Evidence saved in {path}; tell your stewards.",
                path,
            )
        return
    doc = await client.get_json(f"/v1/log/consistency?old={old.size}&new={new.size}")
    proof = [_b64(h) for h in doc["proof"]]
    if not merkle.verify_consistency(old.size, new.size, old.root, new.root, proof):
        path = evidence("consistency proof does not verify", doc["proof"])
        raise VerificationFailed(
            f"the log of size {new.size} does not extend the one of size {old.size} you saw: "
            f"the history was rewritten. Evidence saved in {path}; tell your stewards.",
            path,
        )


async def _check_posting(
    client: TallyClient, state: LogState, handle: str, posting: dict[str, Any], cp: Checkpoint
) -> None:
    index = posting["index"]
    doc = await client.get_json(f"/v1/log/entries/{index}", signed=True)
    entry = _b64(doc["entry"])
    try:
        msg = parse_log_entry(parse_json(entry)).payload.msg
    except (MessageError, ValueError) as exc:
        raise VerificationFailed(f"log entry {index} is malformed: {exc}") from exc
    expected_other = posting["counterparty"]
    if isinstance(msg, Transfer):
        matches = msg.id == posting["id"] and (
            (msg.payer == handle and msg.payee == expected_other
             and -msg.amount == posting["amount"])
            or (msg.payee == handle and msg.payer == expected_other
                and msg.amount == posting["amount"])
        )
    else:
        # A payment across collectives is posted by the FULFIL (on the payer's side) or the
        # DECISION (on the payee's) of its attempt; its amount is the hold's, which the
        # inclusion proof below covers only through `tally audit`'s replay.
        matches = isinstance(msg, (Fulfil, Decision)) and msg.id == posting["id"]
    if not matches:
        raise VerificationFailed(
            f"your history says entry {index} is transfer {posting['id']} of "
            f"{posting['amount']} with {expected_other}, but the log entry there says otherwise"
        )
    proof_doc = await client.get_json(f"/v1/log/inclusion?index={index}&size={cp.size}")
    proof = [_b64(h) for h in proof_doc["proof"]]
    if not merkle.verify_inclusion(index, cp.size, merkle.leaf_hash(entry), proof, cp.root):
        raise VerificationFailed(
            f"entry {index} (transfer {posting['id']}) is not in the log the node signed "
            f"(size {cp.size}): its inclusion proof does not verify"
        )
    bundle = await client.get_text(f"/v1/log/proof/{index}")
    state.write(f"proofs/{index}.tlog-proof", bundle.encode())

