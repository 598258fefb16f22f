"""Key files, key text forms and signatures over canonical JSON."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.canonical import canonical_json
from crypto.keys import (
    KeyFormatError,
    PublicKey,
    SecretKey,
    b64url,
    decode_secret_key,
    encode_secret_key,
    read_key_file,
    sign_object,
    verify_object,
    write_key_file,
)
from crypto.note import format_signer_key, parse_signer_key
from tests.strategies import json_objects, json_values, key_for, secret_keys, seeds

# --- key files -----------------------------------------------------------------------------------


def test_a_key_file_is_created_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "alice.key"
    write_key_file(path, "alice", key_for("alice"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_key_file_round_trips(tmp_path: Path) -> None:
    key = key_for("alice")
    write_key_file(tmp_path / "alice.key", "alice", key)
    name, read = read_key_file(tmp_path / "alice.key")
    assert name == "alice"
    assert read.seed == key.seed
    assert read.public == key.public


def test_writing_never_overwrites_an_existing_key(tmp_path: Path) -> None:
    path = tmp_path / "alice.key"
    write_key_file(path, "alice", key_for("alice"))
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        write_key_file(path, "alice", key_for("mallory"))
    assert path.read_bytes() == before
    assert read_key_file(path)[1].seed == key_for("alice").seed


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o700 | 0o020])
def test_a_key_file_others_may_read_is_refused_with_the_fix(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "alice.key"
    write_key_file(path, "alice", key_for("alice"))
    os.chmod(path, mode)
    with pytest.raises(KeyFormatError) as err:
        read_key_file(path)
    assert err.value.code == "key_file_too_open"
    assert f"chmod 600 {path}" in err.value.message
    assert f"{mode:04o}" in err.value.message


def test_a_read_only_key_file_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "alice.key"
    write_key_file(path, "alice", key_for("alice"))
    os.chmod(path, 0o400)
    assert read_key_file(path)[1].public == key_for("alice").public


def _damage(text: str, field: int) -> str:
    parts = text.strip().split("+", 4)
    value = parts[field]
    # change one character: the first hex digit of the hash, or a middle one of the key material
    i = 0 if field == 3 else 10
    parts[field] = value[:i] + ("1" if value[i] != "1" else "2") + value[i + 1 :]
    return "+".join(parts)


@pytest.mark.parametrize("field", [2, 3, 4], ids=["name", "hash", "key"])
def test_a_damaged_key_file_is_refused(tmp_path: Path, field: int) -> None:
    path = tmp_path / "alice.key"
    write_key_file(path, "alice-laptop", key_for("alice"))
    path.write_text(_damage(path.read_text(), field) + "\n")
    with pytest.raises(KeyFormatError) as err:
        read_key_file(path)
    assert err.value.code == "invalid_key_file"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "PUBLIC+KEY+alice+00000000+AQ==",
        "PRIVATE+KEY+alice+00000000",
        "PRIVATE+KEY+alice+00000000+not base64!",
        # algorithm 0x04 (a cosignature key), not Ed25519 (0x01)
        "PRIVATE+KEY+alice+00000000+" + base64.b64encode(b"\x04" + b"\x00" * 32).decode(),
        # 31 bytes of seed
        "PRIVATE+KEY+alice+00000000+" + base64.b64encode(b"\x01" + b"\x00" * 31).decode(),
    ],
)
def test_text_that_is_not_a_key_is_refused(text: str) -> None:
    with pytest.raises(KeyFormatError) as err:
        decode_secret_key(text)
    assert err.value.code == "invalid_key_file"


def test_our_key_file_is_read_by_the_signed_note_signer_parser(tmp_path: Path) -> None:
    key = key_for("node")
    write_key_file(tmp_path / "node.key", "tally.example/coop", key)
    # crypto/note.py refuses the trailing newline the file ends with (Go's decoder skips it).
    signer = parse_signer_key((tmp_path / "node.key").read_text().strip())
    assert signer.name == "tally.example/coop"
    assert signer.seed == key.seed
    assert signer.public_key == key.public.raw
    assert key.public.verify(b"message", signer.sign(b"message"))


def test_a_signed_note_signer_key_is_read_as_our_key_file(tmp_path: Path) -> None:
    key = key_for("witness")
    path = tmp_path / "witness.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(format_signer_key("witness.example/w1", key.seed) + "\n")
    name, read = read_key_file(path)
    assert name == "witness.example/w1"
    assert read.seed == key.seed


@given(seeds, st.sampled_from(["alice", "example.com/behind-the-sofa", "node-1"]))
def test_our_encoding_is_exactly_go_notes_private_key_encoding(seed: bytes, name: str) -> None:
    assert encode_secret_key(name, SecretKey(seed)) == format_signer_key(name, seed)


@pytest.mark.parametrize("name", ["", "a+b", "a b", "tab\there", "new\nline"])
def test_key_names_that_would_break_the_format_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(KeyFormatError) as err:
        write_key_file(tmp_path / "k.key", name, key_for("alice"))
    assert err.value.code == "invalid_key_name"


# --- a secret key never shows its seed -----------------------------------------------------------


@given(secret_keys)
def test_repr_of_a_secret_key_does_not_contain_the_seed(key: SecretKey) -> None:
    shown = repr(key) + str(key) + repr([key]) + f"{key}"
    for spelling in (
        key.seed.hex(),
        key.seed.hex().upper(),
        base64.b64encode(key.seed).decode().rstrip("="),
        b64url(key.seed),
        repr(key.seed),
    ):
        assert spelling not in shown
    assert key.public.text in repr(key)  # what it does show: which key it is


# --- public key text -----------------------------------------------------------------------------


@given(secret_keys)
def test_public_key_text_round_trips(key: SecretKey) -> None:
    text = key.public.text
    assert len(text) == 43
    assert PublicKey.parse(text) == key.public


def _non_canonical(text: str) -> str:
    # 32 bytes use 256 of the 258 bits of 43 base64 characters: set the two spare bits.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(text[-1])
    return text[:-1] + alphabet[last | 0b11]


@pytest.mark.parametrize(
    "spoil",
    [
        lambda t: t + "=",  # padded
        lambda t: b64url(base64.urlsafe_b64decode(t + "=")[:31]),  # 31 bytes
        lambda t: b64url(base64.urlsafe_b64decode(t + "=") + b"\x00"),  # 33 bytes
        _non_canonical,
        lambda t: base64.b64encode(base64.urlsafe_b64decode(t + "=")).decode(),  # standard b64
        lambda t: t.replace(t[5], "+"),  # a character outside base64url
        lambda t: " " + t,
        lambda t: t + "\n",
        lambda t: "",
    ],
    ids=["padded", "31-bytes", "33-bytes", "non-canonical", "std-alphabet", "plus", "space",
         "newline", "empty"],
)
def test_public_key_text_is_refused_unless_exactly_canonical(spoil: Any) -> None:
    text = key_for("alice").public.text
    spoiled = spoil(text)
    assert spoiled != text
    with pytest.raises(KeyFormatError) as err:
        PublicKey.parse(spoiled)
    assert err.value.code == "invalid_key"


def test_the_non_canonical_spelling_decodes_to_the_same_bytes() -> None:
    # Otherwise the test above would prove nothing about canonicality.
    text = key_for("alice").public.text
    spoiled = _non_canonical(text)
    assert spoiled != text
    assert base64.urlsafe_b64decode(spoiled + "=") == key_for("alice").public.raw


# --- signatures over canonical JSON --------------------------------------------------------------


@settings(max_examples=40)
@given(secret_keys, json_objects)
def test_a_signed_object_verifies_whatever_the_key_order(key: SecretKey, obj: dict[str, Any]) -> None:
    sig = sign_object(key, obj)
    reordered = dict(reversed(list(obj.items())))
    assert verify_object(key.public, reordered, sig)


@settings(max_examples=40)
@given(secret_keys, json_objects, st.data())
def test_any_change_to_a_signed_object_is_detected(
    key: SecretKey, obj: dict[str, Any], data: st.DataObject
) -> None:
    sig = sign_object(key, obj)
    field = data.draw(st.sampled_from(sorted(obj)))
    before = canonical_json(obj[field])
    other = data.draw(json_values.filter(lambda v: canonical_json(v) != before))
    assert not verify_object(key.public, {**obj, field: other}, sig)
    assert not verify_object(key.public, {**obj, "k" * 9: None}, sig)  # keys drawn are ≤ 8 chars
    assert not verify_object(key.public, {k: v for k, v in obj.items() if k != field}, sig)


def test_true_and_one_are_different_objects_to_a_signature() -> None:
    key = key_for("alice")
    assert not verify_object(key.public, {"x": 1}, sign_object(key, {"x": True}))


@settings(max_examples=40)
@given(secret_keys, secret_keys, json_objects)
def test_a_signature_verifies_only_with_its_signers_key(
    key: SecretKey, other: SecretKey, obj: dict[str, Any]
) -> None:
    sig = sign_object(key, obj)
    assert verify_object(key.public, obj, sig)
    if other.public != key.public:
        assert not verify_object(other.public, obj, sig)


@pytest.mark.parametrize(
    "sig",
    ["", "AAAA", "A" * 86 + "==", "A" * 85, "not base64 at all" * 6, 12345, None],
)
def test_a_malformed_signature_does_not_verify_and_does_not_raise(sig: Any) -> None:
    assert verify_object(key_for("alice").public, {"a": 1}, sig) is False


def test_a_flipped_bit_in_the_signature_does_not_verify() -> None:
    key = key_for("alice")
    raw = bytearray(base64.urlsafe_b64decode(sign_object(key, {"a": 1}) + "=="))
    raw[10] ^= 0x01
    assert not verify_object(key.public, {"a": 1}, b64url(bytes(raw)))
