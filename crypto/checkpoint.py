"""C2SP tlog-checkpoint note bodies (c2sp.org/tlog-checkpoint).

This module owns the text of a checkpoint: origin line, decimal tree size,
base64 root hash, then optional extension lines, each ending in a newline.
Signing and verifying the surrounding note is note.py's job.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass

from crypto.merkle import HASH_SIZE

# Sizes are int64 in every implementation we interoperate with (Go, SQLite).
MAX_TREE_SIZE = 2**63 - 1

_DECIMAL = re.compile(r"0|[1-9][0-9]*", re.ASCII)


class CheckpointError(ValueError):
    """A malformed checkpoint body."""


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check(self.origin, self.size, self.root, self.extensions)

    @property
    def text(self) -> str:
        return format_checkpoint(self.origin, self.size, self.root, self.extensions)


def _check_line(line: str, what: str) -> None:
    if line == "":
        raise CheckpointError(f"empty {what} line")
    # A newline would shift every later line; other controls are banned by
    # the signed-note format the checkpoint travels in.
    if any(ord(c) < 0x20 for c in line):
        raise CheckpointError(f"control character in {what} line")


def _check(origin: str, size: int, root: bytes, extensions: Sequence[str]) -> None:
    _check_line(origin, "origin")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_TREE_SIZE:
        raise CheckpointError(f"invalid tree size {size!r}")
    if not isinstance(root, bytes) or len(root) != HASH_SIZE:
        raise CheckpointError("root hash must be 32 bytes")
    for ext in extensions:
        _check_line(ext, "extension")


def format_checkpoint(origin: str, size: int, root: bytes, extensions: Sequence[str] = ()) -> str:
    """The checkpoint note text, ending in a newline."""
    _check(origin, size, root, extensions)
    lines = [origin, str(size), base64.b64encode(root).decode("ascii"), *extensions]
    return "".join(line + "\n" for line in lines)


def parse_checkpoint(text: str) -> Checkpoint:
    """Parse a checkpoint note text (as returned in Note.text). Strict."""
    if not text.endswith("\n"):
        raise CheckpointError("checkpoint must end in a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise CheckpointError("checkpoint needs origin, size and root lines")
    origin, size_line, root_line, *extensions = lines
    # The length cap keeps int() cheap and inside Python's digit limit.
    if len(size_line) > 19 or not _DECIMAL.fullmatch(size_line):
        raise CheckpointError("tree size must be decimal without leading zeroes")
    try:
        root = base64.b64decode(root_line.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error) as e:
        raise CheckpointError("root hash is not base64") from e
    if base64.b64encode(root).decode("ascii") != root_line:
        raise CheckpointError("root hash is not canonical base64")
    return Checkpoint(origin, int(size_line), root, tuple(extensions))
