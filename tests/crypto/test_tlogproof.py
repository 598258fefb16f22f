"""tlog-proof bundles over Go's 1,000-entry vector log and the spec's example."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.checkpoint import format_checkpoint
from crypto.merkle import (
    append_hashes,
    append_indexes,
    inclusion_proof,
    inclusion_proof_indexes,
    leaf_hash,
    tree_hash,
    tree_hash_indexes,
)
from crypto.note import Cosigner, Ed25519Signer, open_note, parse_verifier_key, sign_note
from crypto.tlogproof import (
    HEADER,
    TlogProof,
    TlogProofError,
    format_tlog_proof,
    parse_tlog_proof,
    verify_tlog_proof,
)

VECTORS = Path(__file__).parent.parent / "vectors"
GO: dict[str, Any] = json.loads((VECTORS / "tlog-go.json").read_text())
SPEC: dict[str, Any] = json.loads((VECTORS / "c2sp-tlog.json").read_text())["tlog_proof"]

ENTRIES = [base64.b64decode(e) for e in GO["entries"]]
HASHES: list[bytes] = []
for _n, _e in enumerate(ENTRIES):
    HASHES += append_hashes(_n, leaf_hash(_e), [HASHES[i] for i in append_indexes(_n)])

ORIGIN = "example.org/tally-vectors"
LOG = parse_verifier_key(GO["vkey"])
SIGNED = GO["checkpoint"].encode()  # signed by Go, size 1000
W1 = Cosigner("witness1.example", bytes([1]) * 32)
W2 = Cosigner("witness2.example", bytes([2]) * 32)
COSIGNED = sign_note(
    open_note(SIGNED, [LOG]).text,
    [W1.at(1_700_000_000), W2.at(1_700_000_001)],
    open_note(SIGNED, [LOG]).sigs,
)


def proof_for(i: int, n: int = 1000) -> list[bytes]:
    return inclusion_proof(i, n, [HASHES[k] for k in inclusion_proof_indexes(i, n)])


def bundle(i: int, checkpoint: bytes = SIGNED, extra: bytes | None = None) -> bytes:
    return format_tlog_proof(i, proof_for(i), checkpoint, extra)


def test_layout() -> None:
    data = bundle(999, extra=b"hello")
    head, _, rest = data.partition(b"\n\n")
    lines = head.decode().split("\n")
    assert lines[0] == HEADER == "c2sp.org/tlog-proof@v1"
    assert lines[1] == "extra " + base64.b64encode(b"hello").decode()
    assert lines[2] == "index 999"
    assert [base64.b64decode(h) for h in lines[3:]] == proof_for(999)
    assert rest == SIGNED  # the checkpoint, verbatim


def test_go_root_is_the_checkpoint_root() -> None:
    assert tree_hash(1000, [HASHES[k] for k in tree_hash_indexes(1000)]) == base64.b64decode(
        GO["roots"][-1]["root"]
    )


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 999), st.one_of(st.none(), st.binary(min_size=1, max_size=40)))
def test_round_trip_and_verify(i: int, extra: bytes | None) -> None:
    data = bundle(i, COSIGNED, extra)
    parsed = parse_tlog_proof(data)
    assert parsed == TlogProof(i, tuple(proof_for(i)), COSIGNED, extra)
    ok = verify_tlog_proof(
        data, leaf_hash(ENTRIES[i]), ORIGIN, [LOG], [W1.verifier(), W2.verifier()], 2
    )
    assert ok.checkpoint.size == 1000
    assert {s.name for s in ok.cosignatures} == {"witness1.example", "witness2.example"}
    # The same proof does not vouch for any other entry.
    j = (i + 1) % 1000
    with pytest.raises(TlogProofError, match="inclusion"):
        verify_tlog_proof(data, leaf_hash(ENTRIES[j]), ORIGIN, [LOG])


def test_verification_failures() -> None:
    leaf = leaf_hash(ENTRIES[7])
    data = bundle(7, COSIGNED)
    assert verify_tlog_proof(data, leaf, ORIGIN, [LOG]).cosignatures == ()
    with pytest.raises(TlogProofError, match="origin"):
        verify_tlog_proof(data, leaf, "example.org/other", [LOG])
    stranger = Ed25519Signer(ORIGIN, bytes(32)).verifier()
    with pytest.raises(TlogProofError, match="checkpoint"):
        verify_tlog_proof(data, leaf, ORIGIN, [stranger])
    # A witness is not the log.
    with pytest.raises(TlogProofError, match="not signed by the log"):
        verify_tlog_proof(data, leaf, ORIGIN, [], [W1.verifier()])
    with pytest.raises(TlogProofError, match="cosignatures"):
        verify_tlog_proof(data, leaf, ORIGIN, [LOG], [W1.verifier()], min_cosignatures=2)
    with pytest.raises(TlogProofError, match="cosignatures"):
        verify_tlog_proof(bundle(7), leaf, ORIGIN, [LOG], [W1.verifier()], min_cosignatures=1)
    # Tampered proof hash, wrong index, truncated proof.
    proof = proof_for(7)
    bad = [proof[0][:-1] + bytes([proof[0][-1] ^ 1]), *proof[1:]]
    for p in [
        format_tlog_proof(7, bad, COSIGNED),
        format_tlog_proof(6, proof, COSIGNED),
        format_tlog_proof(7, proof[:-1], COSIGNED),
        format_tlog_proof(1000, proof, COSIGNED),
    ]:
        with pytest.raises(TlogProofError, match="inclusion"):
            verify_tlog_proof(p, leaf, ORIGIN, [LOG])
    # A checkpoint whose body was altered no longer carries a valid log signature.
    forged = COSIGNED.replace(b"\n1000\n", b"\n1001\n")
    with pytest.raises(TlogProofError, match="checkpoint"):
        verify_tlog_proof(format_tlog_proof(7, proof, forged), leaf, ORIGIN, [LOG])


def test_parse_rejects_malformed() -> None:
    good = bundle(7, extra=b"x").decode()
    head, cp = good.split("\n\n", 1)
    lines = head.split("\n")
    variants = [
        "\n".join(["c2sp.org/tlog-proof@v2", *lines[1:]]),
        "\n".join(lines[:1] + lines[2:]).replace("index 7", "index 07"),
        "\n".join([lines[0], "extra ", *lines[2:]]),
        "\n".join([lines[0], "extra !!", *lines[2:]]),
        "\n".join([lines[0], lines[2], lines[1], *lines[3:]]),  # extra after index
        "\n".join([lines[0], *lines[2:]]).replace("index 7", "index -7"),
        "\n".join([lines[0], *lines[3:]]),  # no index
        "\n".join([*lines, base64.b64encode(b"short").decode()]),
        "\n".join([*lines, lines[-1].rstrip("=")]),
        "\n".join([*lines, "index 8"]),
    ]
    for v in variants:
        with pytest.raises(TlogProofError):
            parse_tlog_proof((v + "\n\n" + cp).encode())
    for data in [
        b"",
        HEADER.encode(),
        (head + "\n\n").encode(),
        (head + "\n\nnot a note\n").encode(),
    ]:
        with pytest.raises(TlogProofError):
            parse_tlog_proof(data)
    with pytest.raises(TlogProofError):
        format_tlog_proof(1, [b"short"], SIGNED)
    with pytest.raises(TlogProofError):
        format_tlog_proof(1, [], SIGNED, extra=b"")


def test_spec_example() -> None:
    # As published, its signatures are elided ("[...]"), so it cannot parse.
    published = SPEC["head"] + SPEC["checkpoint_text"] + "\n" + SPEC["elided_signatures"]
    with pytest.raises(TlogProofError):
        parse_tlog_proof(published.encode())
    # With a real signature in their place, every field of the example parses.
    signer = Ed25519Signer("example.com/fancylog", bytes(32))
    assert (
        format_checkpoint(
            "example.com/fancylog",
            109482,
            base64.b64decode("sFodV/vSp5O8n9a8QpW6PRY97tfOSW5bsc2Xl/EQi08="),
        )
        == SPEC["checkpoint_text"]
    )
    data = (SPEC["head"]).encode() + sign_note(SPEC["checkpoint_text"], [signer])
    parsed = parse_tlog_proof(data)
    assert parsed.index == SPEC["index"]
    assert len(parsed.proof) == SPEC["proof_len"]
    assert parsed.extra is not None and parsed.extra.startswith(b"age-v1.2.1-darwin-arm64.tar.gz")
    # Its proof is illustrative: 5 hashes cannot reach the root of a 109,482-leaf tree.
    with pytest.raises(TlogProofError, match="inclusion"):
        verify_tlog_proof(data, bytes(32), "example.com/fancylog", [signer.verifier()])


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_garbage_raises_only_tlog_proof_error(data: bytes) -> None:
    try:
        parse_tlog_proof(HEADER.encode() + b"\n" + data)
    except TlogProofError:
        return
