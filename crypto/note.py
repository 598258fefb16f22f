"""C2SP signed notes (c2sp.org/signed-note) and Ed25519 cosignatures (c2sp.org/tlog-cosignature).

This module owns the text format of signed notes, the Ed25519 (type 0x01) and
timestamped Ed25519 cosignature/v1 (type 0x04) signature algorithms, key IDs,
and the verifier/private key string encodings. Pure: no clock, no randomness;
keys come in as 32-byte seeds and cosignature times as integers.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ALG_ED25519 = 0x01
ALG_COSIGNATURE_V1 = 0x04  # timestamped Ed25519 checkpoint cosignature

# The spec says verifiers MUST accept at least 16; Go's reference accepts 100.
MAX_SIGNATURES = 100
# tlog-cosignature: the timestamp MUST NOT exceed 2^63 - 1.
MAX_TIMESTAMP = 2**63 - 1

_SIG_PREFIX = "\u2014 "  # em dash, space
_HEX8 = re.compile(r"[0-9a-f]{8}", re.ASCII)


class NoteError(ValueError):
    """A malformed note, key or signature."""


class UnverifiedNoteError(NoteError):
    """The note is well formed but no signature from a known key is on it."""

    def __init__(self, note: Note) -> None:
        super().__init__("note has no verifiable signatures")
        self.note = note


class InvalidSignatureError(NoteError):
    """A signature from a known key failed to verify: the whole note is rejected."""

    def __init__(self, name: str, key_id: int) -> None:
        super().__init__(f"invalid signature for key {name}+{key_id:08x}")
        self.name = name
        self.key_id = key_id


# ---------------------------------------------------------------------------
# Names, key IDs, key strings


def is_valid_key_name(name: str) -> bool:
    """Non-empty, no Unicode spaces, no '+' (which separates vkey fields).

    Control characters are refused too: a note may not contain them anyway.
    """
    return (
        isinstance(name, str)
        and name != ""
        and "+" not in name
        and not any(c.isspace() or ord(c) < 0x20 or c == "\x7f" for c in name)
    )


def key_id(name: str, alg: int, public_key: bytes) -> int:
    """SHA-256(name || 0x0A || alg || public key)[:4] as a big-endian uint32."""
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([alg]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


def _b64decode_strict(s: str) -> bytes:
    # RFC 4648 §4 standard alphabet with padding, and canonical: re-encoding
    # must give back the same text, so one value has exactly one spelling.
    try:
        raw = base64.b64decode(s.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError) as e:
        raise NoteError("invalid base64") from e
    if base64.b64encode(raw).decode("ascii") != s:
        raise NoteError("non-canonical base64")
    return raw


def format_verifier_key(name: str, alg: int, public_key: bytes) -> str:
    """<name>+<hex key ID>+base64(alg || public key)."""
    if not is_valid_key_name(name):
        raise NoteError(f"invalid key name {name!r}")
    if len(public_key) != 32:
        raise NoteError("Ed25519 public keys are 32 bytes")
    kid = key_id(name, alg, public_key)
    enc = base64.b64encode(bytes([alg]) + public_key).decode("ascii")
    return f"{name}+{kid:08x}+{enc}"


def parse_verifier_key(vkey: str) -> Verifier:
    """Parse a vkey of type 0x01 (Ed25519) or 0x04 (Ed25519 cosignature/v1)."""
    # The base64 part may itself contain '+'; name and ID cannot.
    parts = vkey.split("+", 2)
    if len(parts) != 3:
        raise NoteError("malformed verifier key")
    name, hex_id, b64 = parts
    if not is_valid_key_name(name) or not _HEX8.fullmatch(hex_id):
        raise NoteError("malformed verifier key")
    raw = _b64decode_strict(b64)
    if len(raw) != 33:
        raise NoteError("malformed verifier key")
    alg, pub = raw[0], raw[1:]
    if key_id(name, alg, pub) != int(hex_id, 16):
        raise NoteError("verifier key ID does not match key")
    if alg == ALG_ED25519:
        return Ed25519Verifier(name, pub)
    if alg == ALG_COSIGNATURE_V1:
        return CosignatureVerifier(name, pub)
    raise NoteError(f"unsupported signature type {alg:#04x}")


def format_signer_key(name: str, seed: bytes) -> str:
    """PRIVATE+KEY+<name>+<hex key ID>+base64(0x01 || seed), as Go's note package."""
    signer = Ed25519Signer(name, seed)
    enc = base64.b64encode(bytes([ALG_ED25519]) + seed).decode("ascii")
    return f"PRIVATE+KEY+{name}+{signer.key_id:08x}+{enc}"


def parse_signer_key(skey: str) -> Ed25519Signer:
    """Inverse of format_signer_key; checks the key ID against the derived public key."""
    parts = skey.split("+", 4)
    if len(parts) != 5 or parts[0] != "PRIVATE" or parts[1] != "KEY":
        raise NoteError("malformed signer key")
    _, _, name, hex_id, b64 = parts
    if not is_valid_key_name(name) or not _HEX8.fullmatch(hex_id):
        raise NoteError("malformed signer key")
    raw = _b64decode_strict(b64)
    if len(raw) != 33 or raw[0] != ALG_ED25519:
        raise NoteError("malformed signer key")
    signer = Ed25519Signer(name, raw[1:])
    if signer.key_id != int(hex_id, 16):
        raise NoteError("signer key ID does not match key")
    return signer


# ---------------------------------------------------------------------------
# Signers and verifiers


class Verifier(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def key_id(self) -> int: ...
    def verify(self, msg: bytes, sig: bytes) -> bool: ...


class Signer(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def key_id(self) -> int: ...
    def sign(self, msg: bytes) -> bytes: ...


def _ed25519_verify(public_key: bytes, msg: bytes, sig: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(sig, msg)
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False


def _public_from_seed(seed: bytes) -> tuple[Ed25519PrivateKey, bytes]:
    if not isinstance(seed, bytes) or len(seed) != 32:
        raise NoteError("Ed25519 seeds are 32 bytes")
    priv = Ed25519PrivateKey.from_private_bytes(seed)
    return priv, priv.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _checked_name(name: str) -> str:
    if not is_valid_key_name(name):
        raise NoteError(f"invalid key name {name!r}")
    return name


@dataclass(frozen=True)
class Ed25519Verifier:
    """Verifies plain Ed25519 note signatures (type 0x01)."""

    name: str
    public_key: bytes
    key_id: int = field(init=False)

    def __post_init__(self) -> None:
        _checked_name(self.name)
        if len(self.public_key) != 32:
            raise NoteError("Ed25519 public keys are 32 bytes")
        object.__setattr__(self, "key_id", key_id(self.name, ALG_ED25519, self.public_key))

    @property
    def vkey(self) -> str:
        return format_verifier_key(self.name, ALG_ED25519, self.public_key)

    def verify(self, msg: bytes, sig: bytes) -> bool:
        return _ed25519_verify(self.public_key, msg, sig)


@dataclass(frozen=True, repr=False)
class Ed25519Signer:
    """Signs notes with plain Ed25519 (type 0x01). repr hides the seed."""

    name: str
    seed: bytes
    public_key: bytes = field(init=False)
    key_id: int = field(init=False)

    def __post_init__(self) -> None:
        _checked_name(self.name)
        _, pub = _public_from_seed(self.seed)
        object.__setattr__(self, "public_key", pub)
        object.__setattr__(self, "key_id", key_id(self.name, ALG_ED25519, pub))

    def __repr__(self) -> str:
        return f"Ed25519Signer({self.name!r}, key_id={self.key_id:08x})"

    def verifier(self) -> Ed25519Verifier:
        return Ed25519Verifier(self.name, self.public_key)

    def sign(self, msg: bytes) -> bytes:
        return Ed25519PrivateKey.from_private_bytes(self.seed).sign(msg)


def cosignature_message(text: bytes, timestamp: int) -> bytes:
    """The cosignature/v1 signed message: header, time line, then the note text."""
    return b"cosignature/v1\ntime %d\n" % timestamp + text


def split_cosignature(sig: bytes) -> tuple[int, bytes]:
    """timestamped_signature -> (timestamp, 64-byte Ed25519 signature)."""
    if len(sig) != 8 + 64:
        raise NoteError("cosignature must be 72 bytes")
    ts = int.from_bytes(sig[:8], "big")
    if ts > MAX_TIMESTAMP:
        raise NoteError("cosignature timestamp out of range")
    return ts, sig[8:]


@dataclass(frozen=True)
class CosignatureVerifier:
    """Verifies timestamped Ed25519 cosignature/v1 signatures (type 0x04).

    Future timestamps are not refused here (no clock); read them with
    split_cosignature and apply policy in the caller.
    """

    name: str
    public_key: bytes
    key_id: int = field(init=False)

    def __post_init__(self) -> None:
        _checked_name(self.name)
        if len(self.public_key) != 32:
            raise NoteError("Ed25519 public keys are 32 bytes")
        kid = key_id(self.name, ALG_COSIGNATURE_V1, self.public_key)
        object.__setattr__(self, "key_id", kid)

    @property
    def vkey(self) -> str:
        return format_verifier_key(self.name, ALG_COSIGNATURE_V1, self.public_key)

    def verify(self, msg: bytes, sig: bytes) -> bool:
        try:
            ts, raw = split_cosignature(sig)
        except NoteError:
            return False
        return _ed25519_verify(self.public_key, cosignature_message(msg, ts), raw)


@dataclass(frozen=True, repr=False)
class Cosigner:
    """An Ed25519 cosignature/v1 key. Bind it to a time with at() to get a Signer."""

    name: str
    seed: bytes
    public_key: bytes = field(init=False)
    key_id: int = field(init=False)

    def __post_init__(self) -> None:
        _checked_name(self.name)
        _, pub = _public_from_seed(self.seed)
        object.__setattr__(self, "public_key", pub)
        object.__setattr__(self, "key_id", key_id(self.name, ALG_COSIGNATURE_V1, pub))

    def __repr__(self) -> str:
        return f"Cosigner({self.name!r}, key_id={self.key_id:08x})"

    def verifier(self) -> CosignatureVerifier:
        return CosignatureVerifier(self.name, self.public_key)

    def sign_at(self, msg: bytes, timestamp: int) -> bytes:
        if not 0 <= timestamp <= MAX_TIMESTAMP:
            raise NoteError("cosignature timestamp out of range")
        raw = Ed25519PrivateKey.from_private_bytes(self.seed).sign(
            cosignature_message(msg, timestamp)
        )
        return timestamp.to_bytes(8, "big") + raw

    def at(self, timestamp: int) -> TimedCosigner:
        return TimedCosigner(self, timestamp)


@dataclass(frozen=True)
class TimedCosigner:
    """A Cosigner with its timestamp fixed, usable wherever a Signer is."""

    cosigner: Cosigner
    timestamp: int

    @property
    def name(self) -> str:
        return self.cosigner.name

    @property
    def key_id(self) -> int:
        return self.cosigner.key_id

    def sign(self, msg: bytes) -> bytes:
        return self.cosigner.sign_at(msg, self.timestamp)


# ---------------------------------------------------------------------------
# Notes


@dataclass(frozen=True)
class Signature:
    """One signature line: key name, key ID, and the signature after the ID."""

    name: str
    key_id: int
    signature: bytes

    @property
    def line(self) -> str:
        blob = self.key_id.to_bytes(4, "big") + self.signature
        return f"{_SIG_PREFIX}{self.name} {base64.b64encode(blob).decode('ascii')}\n"


@dataclass(frozen=True)
class Note:
    """A note text with its verified signatures and those from unknown keys."""

    text: str
    sigs: tuple[Signature, ...]
    unverified_sigs: tuple[Signature, ...] = ()


def _check_chars(text: str) -> None:
    # "MUST NOT contain any ASCII control characters other than newline."
    for c in text:
        if ord(c) < 0x20 and c != "\n":
            raise NoteError("malformed note: control character")


def parse_note(msg: bytes) -> tuple[str, list[Signature]]:
    """Split a signed note into its text and signature lines, verifying nothing.

    Exact duplicate lines are kept; open_note drops them.
    """
    try:
        s = msg.decode("utf-8")
    except (UnicodeDecodeError, AttributeError) as e:
        raise NoteError("malformed note: not UTF-8") from e
    _check_chars(s)
    # The text runs to the *last* blank line; it may itself contain blank lines.
    split = s.rfind("\n\n")
    if split < 0:
        raise NoteError("malformed note: no signature block")
    text, block = s[: split + 1], s[split + 2 :]
    if not block.endswith("\n"):
        raise NoteError("malformed note: no signatures or missing final newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError("malformed note: too many signatures")
    sigs = []
    for line in lines:
        if not line.startswith(_SIG_PREFIX):
            raise NoteError("malformed note: bad signature line")
        name, sep, b64 = line[len(_SIG_PREFIX) :].partition(" ")
        if not sep or not is_valid_key_name(name):
            raise NoteError("malformed note: bad signature line")
        blob = _b64decode_strict(b64)
        if len(blob) < 5:
            raise NoteError("malformed note: signature too short")
        sigs.append(Signature(name, int.from_bytes(blob[:4], "big"), blob[4:]))
    return text, sigs


def open_note(msg: bytes, verifiers: Iterable[Verifier]) -> Note:
    """Parse a signed note and verify the signatures from known keys.

    A key is known by (name, key ID); signatures from unknown keys are kept
    aside unverified. A bad signature from a known key rejects the note, and
    so does the absence of any verified signature (UnverifiedNoteError).
    """
    text, sigs = parse_note(msg)
    known: dict[tuple[str, int], list[Verifier]] = {}
    for v in verifiers:
        known.setdefault((v.name, v.key_id), []).append(v)
    body = text.encode("utf-8")
    verified: list[Signature] = []
    unverified: list[Signature] = []
    for sig in sigs:
        candidates = known.get((sig.name, sig.key_id))
        if candidates is None:
            if sig not in unverified:
                unverified.append(sig)
            continue
        if len(candidates) > 1 and any(c != candidates[0] for c in candidates):
            raise NoteError(f"ambiguous key {sig.name}+{sig.key_id:08x}")
        if any(s.name == sig.name and s.key_id == sig.key_id for s in verified):
            continue  # one signature per key counts; drop repeats
        if not candidates[0].verify(body, sig.signature):
            raise InvalidSignatureError(sig.name, sig.key_id)
        verified.append(sig)
    note = Note(text, tuple(verified), tuple(unverified))
    if not verified:
        raise UnverifiedNoteError(note)
    return note


def sign_note(text: str, signers: Sequence[Signer], existing: Sequence[Signature] = ()) -> bytes:
    """Encode `text` signed by `signers`, after any `existing` signature lines.

    An existing signature by the same (name, key ID) as a new signer is
    replaced, so re-signing or adding a cosignature is one call.
    """
    if not text.endswith("\n"):
        raise NoteError("malformed note: text must end in a newline")
    _check_chars(text)
    body = text.encode("utf-8")
    new_keys = set()
    new_lines = []
    for s in signers:
        if not is_valid_key_name(s.name):
            raise NoteError(f"invalid signer name {s.name!r}")
        new_keys.add((s.name, s.key_id))
        new_lines.append(Signature(s.name, s.key_id, s.sign(body)).line)
    old_lines = []
    for sig in existing:
        if not is_valid_key_name(sig.name):
            raise NoteError(f"invalid signature name {sig.name!r}")
        if (sig.name, sig.key_id) not in new_keys:
            old_lines.append(sig.line)
    lines = old_lines + new_lines
    if not lines:
        raise NoteError("a note needs at least one signature")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError("too many signatures")
    return (text + "\n" + "".join(lines)).encode("utf-8")
