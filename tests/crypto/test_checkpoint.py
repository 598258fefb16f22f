"""Checkpoint note bodies: spec example, Go vector, strictness, round trips."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crypto.checkpoint import (
    MAX_TREE_SIZE,
    Checkpoint,
    CheckpointError,
    format_checkpoint,
    parse_checkpoint,
)
from crypto.note import parse_note

VECTORS = Path(__file__).parent.parent / "vectors"
TLOG: dict[str, Any] = json.loads((VECTORS / "c2sp-tlog.json").read_text())
GO_TLOG: dict[str, Any] = json.loads((VECTORS / "tlog-go.json").read_text())
ROOT = bytes(range(32))
ROOT_B64 = base64.b64encode(ROOT).decode()


def test_spec_example() -> None:
    v = TLOG["checkpoint"]
    text, _ = parse_note(v["note"].encode())
    cp = parse_checkpoint(text)
    assert cp == Checkpoint(v["origin"], v["size"], base64.b64decode(v["root"]))
    assert cp.text == text


def test_go_vector() -> None:
    text, _ = parse_note(GO_TLOG["checkpoint"].encode())
    cp = parse_checkpoint(text)
    assert cp.origin == "example.org/tally-vectors"
    assert cp.size == 1000
    assert cp.root == base64.b64decode(GO_TLOG["roots"][-1]["root"])
    assert format_checkpoint(cp.origin, cp.size, cp.root) == text


def test_format_layout() -> None:
    assert format_checkpoint("o", 0, ROOT) == f"o\n0\n{ROOT_B64}\n"
    assert (
        format_checkpoint("o", 7, ROOT, ["ext one", "two"]) == f"o\n7\n{ROOT_B64}\next one\ntwo\n"
    )
    assert parse_checkpoint(f"o\n7\n{ROOT_B64}\next one\ntwo\n").extensions == ("ext one", "two")


@pytest.mark.parametrize(
    "text",
    [
        f"o\n1\n{ROOT_B64}",  # no final newline
        f"o\n1\n{ROOT_B64}\n\n",  # empty extension line
        "o\n1\n",  # no root
        f"\n1\n{ROOT_B64}\n",  # empty origin
        f"o\n01\n{ROOT_B64}\n",  # leading zero
        f"o\n+1\n{ROOT_B64}\n",
        f"o\n-1\n{ROOT_B64}\n",
        f"o\n 1\n{ROOT_B64}\n",
        f"o\n1 \n{ROOT_B64}\n",
        f"o\n\uff11\n{ROOT_B64}\n",  # fullwidth digit one
        f"o\n1_0\n{ROOT_B64}\n",
        f"o\n{MAX_TREE_SIZE + 1}\n{ROOT_B64}\n",
        f"o\n{'9' * 5000}\n{ROOT_B64}\n",
        "o\n1\n" + base64.b64encode(ROOT[:31]).decode() + "\n",  # 31-byte root
        "o\n1\n" + ROOT_B64.rstrip("=") + "\n",  # unpadded
        "o\n1\n" + ROOT_B64[:-2] + "B=\n",  # non-canonical trailing bits
        "o\n1\n" + base64.urlsafe_b64encode(b"\xff" * 32).decode() + "\n",  # URL alphabet
        f"o\n1\n{ROOT_B64}\nbad\x01ext\n",
        f"o\r\n1\n{ROOT_B64}\n",
    ],
)
def test_rejects(text: str) -> None:
    with pytest.raises(CheckpointError):
        parse_checkpoint(text)


def test_constructor_checks() -> None:
    with pytest.raises(CheckpointError):
        Checkpoint("o", -1, ROOT)
    with pytest.raises(CheckpointError):
        Checkpoint("o", 1, ROOT[:31])
    with pytest.raises(CheckpointError):
        Checkpoint("", 1, ROOT)
    with pytest.raises(CheckpointError):
        format_checkpoint("a\nb", 1, ROOT)
    with pytest.raises(CheckpointError):
        format_checkpoint("o", 1, ROOT, [""])


lines = st.text(
    alphabet=st.characters(codec="utf-8", min_codepoint=0x20),
    min_size=1,
    max_size=20,
)


@given(
    lines,
    st.integers(0, MAX_TREE_SIZE),
    st.binary(min_size=32, max_size=32),
    st.lists(lines, max_size=3),
)
def test_round_trip(origin: str, size: int, root: bytes, extensions: list[str]) -> None:
    text = format_checkpoint(origin, size, root, extensions)
    assert parse_checkpoint(text) == Checkpoint(origin, size, root, tuple(extensions))


@given(st.text(max_size=80))
def test_garbage_raises_only_checkpoint_error(text: str) -> None:
    try:
        cp = parse_checkpoint(text)
    except CheckpointError:
        return
    assert cp.text == text  # anything accepted is canonical
