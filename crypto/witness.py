"""The text formats of C2SP tlog-witness (c2sp.org/tlog-witness): add-checkpoint bodies.

Layer: crypto (pure). Owns the request body of ``POST <prefix>/add-checkpoint``::

    old <size>\\n
    <base64 hash>\\n          (zero to 63 consistency proof lines)
    \\n
    <signed checkpoint note>

and the ``text/x.tlog.size`` body of a 409 answer (the size the witness last cosigned, in
decimal, then a newline). A 200 answer is note signature lines: ``crypto.note`` parses them
once appended to the checkpoint. Which checkpoints a witness cosigns is ``protocol.witness``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass

from crypto.checkpoint import MAX_TREE_SIZE
from crypto.merkle import HASH_SIZE

MAX_PROOF_LINES = 63  # "The client MUST NOT send more than 63 consistency proof lines."
SIZE_CONTENT_TYPE = "text/x.tlog.size"

_DECIMAL = re.compile(r"0|[1-9][0-9]{0,18}", re.ASCII)


class WitnessFormatError(ValueError):
    """A malformed add-checkpoint body or size answer (HTTP 400 at a witness)."""


@dataclass(frozen=True)
class AddCheckpoint:
    old_size: int
    proof: tuple[bytes, ...]
    note: bytes  # the signed checkpoint, as sent: checked by the witness, not here


def _size(text: str, what: str) -> int:
    if not _DECIMAL.fullmatch(text) or int(text) > MAX_TREE_SIZE:
        raise WitnessFormatError(f"{what} must be a decimal size without leading zeroes")
    return int(text)


def format_add_checkpoint(old_size: int, proof: Sequence[bytes], note: bytes) -> bytes:
    if not 0 <= old_size <= MAX_TREE_SIZE or len(proof) > MAX_PROOF_LINES:
        raise WitnessFormatError("old size out of range or too many proof lines")
    if any(len(h) != HASH_SIZE for h in proof):
        raise WitnessFormatError("each proof hash is 32 bytes")
    lines = [f"old {old_size}", *(base64.b64encode(h).decode("ascii") for h in proof)]
    return ("".join(line + "\n" for line in lines) + "\n").encode("ascii") + note


def parse_add_checkpoint(body: bytes) -> AddCheckpoint:
    """Strictly parse a request body; the note after the blank line is returned as bytes."""
    head, sep, note = body.partition(b"\n\n")
    if not sep:
        raise WitnessFormatError("the body needs an old size line, proof lines, a blank line "
                                 "and the checkpoint")
    try:
        lines = head.decode("ascii").split("\n")
    except UnicodeDecodeError as exc:
        raise WitnessFormatError("the lines before the checkpoint must be ASCII") from exc
    first, proof_lines = lines[0], lines[1:]
    if not first.startswith("old "):
        raise WitnessFormatError('the first line must be "old <size>"')
    old_size = _size(first[4:], "the old size")
    if len(proof_lines) > MAX_PROOF_LINES:
        raise WitnessFormatError(f"at most {MAX_PROOF_LINES} consistency proof lines")
    proof = []
    for line in proof_lines:
        try:
            raw = base64.b64decode(line.encode("ascii"), validate=True)
        except binascii.Error as exc:
            raise WitnessFormatError("a consistency proof line is not base64") from exc
        if len(raw) != HASH_SIZE or base64.b64encode(raw).decode("ascii") != line:
            raise WitnessFormatError("each consistency proof line is one base64 SHA-256 hash")
        proof.append(raw)
    if not note:
        raise WitnessFormatError("the checkpoint is missing after the blank line")
    return AddCheckpoint(old_size, tuple(proof), note)


def format_size(size: int) -> bytes:
    """The body of a 409 answer: the size the witness last cosigned."""
    return b"%d\n" % size


def parse_size(body: bytes) -> int:
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError as exc:
        raise WitnessFormatError("the size answer is not ASCII") from exc
    if not text.endswith("\n"):
        raise WitnessFormatError("the size answer must end in a newline")
    return _size(text[:-1], "the size answer")
