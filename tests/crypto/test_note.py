"""Signed notes and cosignatures against the C2SP spec examples and Go's sumdb/note."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.note import (
    ALG_COSIGNATURE_V1,
    ALG_ED25519,
    MAX_TIMESTAMP,
    CosignatureVerifier,
    Cosigner,
    Ed25519Signer,
    Ed25519Verifier,
    InvalidSignatureError,
    NoteError,
    Signature,
    UnverifiedNoteError,
    cosignature_message,
    format_signer_key,
    format_verifier_key,
    is_valid_key_name,
    key_id,
    open_note,
    parse_note,
    parse_signer_key,
    parse_verifier_key,
    sign_note,
    split_cosignature,
)

VECTORS = Path(__file__).parent.parent / "vectors"
NOTE: dict[str, Any] = json.loads((VECTORS / "c2sp-signed-note.json").read_text())
TLOG: dict[str, Any] = json.loads((VECTORS / "c2sp-tlog.json").read_text())
GO_TLOG: dict[str, Any] = json.loads((VECTORS / "tlog-go.json").read_text())
GO = NOTE["go"]

PETER = parse_verifier_key(GO["peter_vkey"])
ENOCH = parse_verifier_key(GO["enoch_vkey"])
SIGNER = Ed25519Signer("test.example/log", bytes(range(32)))
COSIGNER = Cosigner("test.example/witness", bytes(range(1, 33)))


# ---------------------------------------------------------------------------
# Spec and Go vectors


def test_spec_example_verifies() -> None:
    v = NOTE["spec_example"]
    verifier = parse_verifier_key(v["vkey"])
    assert isinstance(verifier, Ed25519Verifier)
    assert verifier.vkey == v["vkey"]
    note = open_note(v["note"].encode(), [verifier])
    assert note.text == v["text"]
    assert [s.name for s in note.sigs] == ["example.com/foo"]
    assert note.sigs[0].key_id == 0x530D903A
    # One flipped character of the text and it fails.
    with pytest.raises(InvalidSignatureError):
        open_note(v["note"].replace("example message", "example massage").encode(), [verifier])


def test_spec_intro_parses() -> None:
    v = NOTE["spec_intro"]
    text, sigs = parse_note(v["note"].encode())
    assert text == v["text"]  # split at the *last* blank line
    assert [(s.name, f"{s.key_id:08x}", len(s.signature)) for s in sigs] == [
        (v["name"], v["key_id_hex"], 64)
    ]
    with pytest.raises(UnverifiedNoteError) as e:
        open_note(v["note"].encode(), [PETER])
    assert e.value.note.unverified_sigs == tuple(sigs)


def test_go_sign_byte_for_byte() -> None:
    signer = parse_signer_key(GO["peter_skey"])
    assert signer.verifier().vkey == GO["peter_vkey"]
    assert format_signer_key(signer.name, signer.seed) == GO["peter_skey"]
    assert sign_note(GO["text"], [signer]).decode() == GO["signed_by_peter"]
    # Re-signing replaces the existing signature by the same key.
    old = Signature("PeterNeumann", 0xC74F20A3, b"stale")
    assert sign_note(GO["text"], [signer], [old]).decode() == GO["signed_by_peter"]


def test_go_open() -> None:
    msg = (GO["text"] + "\n" + GO["peter_sig_line"] + GO["enoch_sig_line"]).encode()
    note = open_note(msg, [PETER])
    assert note.text == GO["text"]
    assert [s.name for s in note.sigs] == ["PeterNeumann"]
    assert [s.name for s in note.unverified_sigs] == ["EnochRoot"]
    both = open_note(msg, [PETER, ENOCH])
    assert [s.name for s in both.sigs] == ["PeterNeumann", "EnochRoot"]
    assert both.unverified_sigs == ()
    with pytest.raises(UnverifiedNoteError) as e:
        open_note(msg, [])
    assert len(e.value.note.unverified_sigs) == 2
    # Repeated lines are dropped.
    dup = (GO["text"] + "\n" + GO["peter_sig_line"] * 2 + GO["enoch_sig_line"] * 2).encode()
    note = open_note(dup, [PETER])
    assert len(note.sigs) == 1 and len(note.unverified_sigs) == 1
    # The signature block ends the note on a signature.
    assert sign_note(note.text, [], [*note.sigs, *note.unverified_sigs]) == msg


def test_go_malformed() -> None:
    for msg in GO["malformed_notes"]:
        with pytest.raises(NoteError):
            open_note(msg.encode(), [PETER])
    with pytest.raises(NoteError):
        open_note(b"\xff" + GO["signed_by_peter"].encode(), [PETER])
    too_many = (GO["text"] + "\n" + GO["peter_sig_line"] * 101).encode()
    with pytest.raises(NoteError):
        open_note(too_many, [PETER])
    line = GO["peter_sig_line"]
    corrupt = (GO["text"] + "\n" + line[:60] + "ABCD" + line[60:]).encode()
    with pytest.raises(InvalidSignatureError):
        open_note(corrupt, [PETER])


def test_go_bad_vkeys_and_manglings() -> None:
    for bad in GO["bad_vkeys"]:
        with pytest.raises(NoteError):
            parse_verifier_key(bad)
    for good, parse in [
        (GO["peter_vkey"], parse_verifier_key),
        (GO["peter_skey"], parse_signer_key),
    ]:
        for i in range(len(good)):
            for j in range(i + 1, len(good) + 1):
                if (i, j) != (0, len(good)):
                    with pytest.raises(NoteError):
                        parse(good[i:j])
            mangled = good[:i] + chr(ord(good[i]) + 1) + good[i + 1 :]
            with pytest.raises(NoteError):
                parse(mangled)


def test_ambiguous_verifiers() -> None:
    other = Ed25519Verifier("PeterNeumann", bytes(32))
    clash = _SameId(other.name, PETER.key_id, other)
    with pytest.raises(NoteError, match="ambiguous"):
        open_note(GO["signed_by_peter"].encode(), [PETER, clash])
    # The same verifier listed twice is harmless.
    assert open_note(GO["signed_by_peter"].encode(), [PETER, PETER]).sigs


class _SameId:
    """A verifier claiming another key's name and ID."""

    def __init__(self, name: str, kid: int, inner: Ed25519Verifier) -> None:
        self.name, self.key_id, self.inner = name, kid, inner

    def verify(self, msg: bytes, sig: bytes) -> bool:
        return self.inner.verify(msg, sig)


# ---------------------------------------------------------------------------
# Go's tlog vectors: the checkpoint note


def test_go_tlog_checkpoint_note() -> None:
    seed = bytes.fromhex(GO_TLOG["key_seed_hex"])
    name = GO_TLOG["vkey"].split("+")[0]
    signer = Ed25519Signer(name, seed)
    assert signer.verifier().vkey == GO_TLOG["vkey"]
    note = open_note(GO_TLOG["checkpoint"].encode(), [parse_verifier_key(GO_TLOG["vkey"])])
    assert sign_note(note.text, [signer]).decode() == GO_TLOG["checkpoint"]


# ---------------------------------------------------------------------------
# Keys


def test_key_names() -> None:
    for good in ["a", "example.com/log", "quasimodo.example/salvatore", "ключ"]:
        assert is_valid_key_name(good)
    for bad in ["", "a b", "a+b", "a\tb", "a\u00a0b", "a\u2003b", "a\nb", "a\x01b"]:
        assert not is_valid_key_name(bad)
        with pytest.raises(NoteError):
            Ed25519Signer(bad, bytes(32))


def test_key_strings_round_trip() -> None:
    v = SIGNER.verifier()
    assert parse_verifier_key(v.vkey) == v
    assert parse_signer_key(format_signer_key(SIGNER.name, SIGNER.seed)).public_key == v.public_key
    cv = COSIGNER.verifier()
    parsed = parse_verifier_key(cv.vkey)
    assert isinstance(parsed, CosignatureVerifier) and parsed == cv
    # Same key material, different algorithm byte, different key ID.
    assert key_id("n", ALG_ED25519, v.public_key) != key_id("n", ALG_COSIGNATURE_V1, v.public_key)
    with pytest.raises(NoteError):
        parse_verifier_key(format_verifier_key("n", 0x02, v.public_key))
    assert "PRIVATE" not in repr(SIGNER) and SIGNER.seed.hex() not in repr(SIGNER)


def test_key_id_definition() -> None:
    pub = SIGNER.public_key
    digest = hashlib.sha256(SIGNER.name.encode() + b"\n\x01" + pub).digest()
    assert SIGNER.key_id == int.from_bytes(digest[:4], "big")
    assert SIGNER.verifier().vkey == (
        SIGNER.name + "+" + digest[:4].hex() + "+" + base64.b64encode(b"\x01" + pub).decode()
    )


# ---------------------------------------------------------------------------
# Signing


def test_sign_rejects_bad_text() -> None:
    for bad in ["no newline", "", "tab\there\n", "nul\x00\n", "cr\r\n"]:
        with pytest.raises(NoteError):
            sign_note(bad, [SIGNER])
    with pytest.raises(NoteError):
        sign_note("fine\n", [])


text_lines = st.text(alphabet=st.characters(codec="utf-8", min_codepoint=0x20), max_size=30)


@settings(max_examples=50)
@given(st.lists(text_lines, min_size=1, max_size=5))
def test_sign_open_round_trip(lines: list[str]) -> None:
    text = "\n".join(lines) + "\n"
    msg = sign_note(text, [SIGNER, COSIGNER.at(1_700_000_000)])
    note = open_note(msg, [SIGNER.verifier(), COSIGNER.verifier()])
    assert note.text == text
    assert [s.name for s in note.sigs] == [SIGNER.name, COSIGNER.name]
    # Only the verifier's own key counts.
    with pytest.raises(UnverifiedNoteError):
        open_note(msg, [PETER])


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_open_garbage_only_raises_note_error(msg: bytes) -> None:
    try:
        note = open_note(msg, [SIGNER.verifier()])
    except NoteError:
        return
    raise AssertionError(f"garbage accepted: {note}")


@settings(max_examples=100)
@given(st.integers(0, 200), st.integers(0, 255))
def test_any_byte_flip_is_caught(pos: int, xor: int) -> None:
    msg = bytearray(sign_note("origin\n42\nsome text\n", [SIGNER]))
    pos %= len(msg)
    msg[pos] ^= xor or 1
    with pytest.raises(NoteError):
        open_note(bytes(msg), [SIGNER.verifier()])


# ---------------------------------------------------------------------------
# Cosignatures


def test_spec_cosignature_message() -> None:
    v = TLOG["cosignature_message"]
    cp = TLOG["checkpoint"]
    body = cp["note"].split("\n\n")[0] + "\n"
    assert cosignature_message(body.encode(), v["timestamp"]).decode() == v["message"]


def test_spec_cosignature_line() -> None:
    cp = TLOG["checkpoint"]
    _, sigs = parse_note(cp["note"].encode())
    log, witness = sigs
    assert f"{log.key_id:08x}" == cp["log_key_id_hex"] and len(log.signature) == 64
    assert witness.name == cp["witness_name"]
    assert f"{witness.key_id:08x}" == cp["witness_key_id_hex"]
    timestamp, raw = split_cosignature(witness.signature)
    assert timestamp == TLOG["cosignature_message"]["timestamp"]
    assert len(raw) == 64


def test_cosign_and_verify() -> None:
    text = b"example.com/log\n5\n" + base64.b64encode(bytes(32)) + b"\n"
    sig = COSIGNER.sign_at(text, 1234)
    assert sig[:8] == (1234).to_bytes(8, "big")
    v = COSIGNER.verifier()
    assert v.verify(text, sig)
    assert not v.verify(text + b"x\n", sig)
    assert not v.verify(text, (1235).to_bytes(8, "big") + sig[8:])  # the time is signed
    assert not v.verify(text, sig[:-1])
    # A plain Ed25519 signature is not a cosignature, and vice versa.
    assert not v.verify(text, SIGNER.sign(text))
    assert not Ed25519Verifier(COSIGNER.name, COSIGNER.public_key).verify(text, sig[8:])
    with pytest.raises(NoteError):
        COSIGNER.sign_at(text, MAX_TIMESTAMP + 1)
    with pytest.raises(NoteError):
        split_cosignature((MAX_TIMESTAMP + 1).to_bytes(8, "big") + bytes(64))


def test_cosigning_an_existing_checkpoint() -> None:
    body = "example.com/log\n5\n" + base64.b64encode(bytes(32)).decode() + "\n"
    signed = sign_note(body, [SIGNER])
    note = open_note(signed, [SIGNER.verifier()])
    cosigned = sign_note(note.text, [COSIGNER.at(99)], note.sigs)
    assert cosigned.startswith(signed)  # the log's line is kept, the witness's appended
    both = open_note(cosigned, [SIGNER.verifier(), COSIGNER.verifier()])
    assert split_cosignature(both.sigs[1].signature)[0] == 99
