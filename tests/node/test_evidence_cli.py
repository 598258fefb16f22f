"""`tally evidence check FILE`: a genuine fork passes offline, a forgery is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from node.cli import main
from protocol.evidence import verify_equivocation
from tests.protocol.gossip_helpers import checkpoint, vkey_of
from tests.strategies import key_for

B, C = key_for("b"), key_for("c")


def test_genuine_evidence_checks_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ev = verify_equivocation(vkey_of(B), (checkpoint(B, 3, b"\x01" * 32),
                                          checkpoint(B, 3, b"\x02" * 32)))
    path = tmp_path / "ev.json"
    path.write_text(json.dumps(ev.to_json()))
    assert main(["evidence", "check", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["valid"] and out["offender"] == B.public.text


def test_forged_evidence_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The second checkpoint is C's, passed off as B's: B is not accused.
    doc = {"type": "equivocation", "vkey": vkey_of(B), "proof": [],
           "checkpoints": [checkpoint(B, 3, b"\x01" * 32).decode(),
                           checkpoint(C, 3, b"\x02" * 32).decode()]}
    path = tmp_path / "forged.json"
    path.write_text(json.dumps(doc))
    assert main(["evidence", "check", str(path)]) == 1
    assert "proves nothing" in capsys.readouterr().err


def test_a_missing_file_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evidence", "check", str(tmp_path / "nope.json")]) == 1
    assert "cannot read" in capsys.readouterr().err
