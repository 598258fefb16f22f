"""Ed25519 keys, their text forms, key ids, key files, and signatures over canonical JSON.

Layer: crypto (pure, except the two key-file functions, which read and write one file).

Text forms:
- a public key is written as 43 characters of unpadded base64url of its 32 bytes, the form
  members paste into ``tally member admit``;
- a key id is the first 8 bytes of SHA-256 of the public key, in lowercase hex; it names
  the intended recipient of a signed request and shows up in logs, never as proof;
- a key file holds the secret seed in the C2SP signed-note private-key form
  ``PRIVATE+KEY+<name>+<hash>+<base64(0x01 ‖ seed)>``, so Go's ``note`` package and ours read
  each other's keys. Key files are created mode 0600 and refused when others can read them.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import nacl.bindings
import nacl.exceptions

from crypto.canonical import JSONValue, canonical_json
from crypto.note import NoteError, format_signer_key, parse_signer_key


class KeyFormatError(ValueError):
    """A key, key file or signature encoding that is malformed. ``code`` is stable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def from_b64url(text: str, length: int | None = None) -> bytes:
    if not isinstance(text, str) or not text.isascii() or "=" in text:
        raise KeyFormatError("invalid_encoding", "expected unpadded base64url text")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise KeyFormatError("invalid_encoding", "expected unpadded base64url text") from exc
    if b64url(data) != text:  # refuse non-canonical encodings: one value, one spelling
        raise KeyFormatError("invalid_encoding", "non-canonical base64url")
    if length is not None and len(data) != length:
        raise KeyFormatError("invalid_encoding", f"expected {length} bytes, got {len(data)}")
    return data


# Keys parsed from their text, by that text: a node meets the same few keys (its peers' in
# every signed request, its members') again and again; the same value is returned, with its
# text and key id already worked out. Bounded: cleared when full.
_PARSED: dict[str, PublicKey] = {}
_PARSED_MAX = 4096


@dataclass(frozen=True)
class PublicKey:
    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != 32:
            raise KeyFormatError("invalid_key", "an Ed25519 public key is 32 bytes")

    @classmethod
    def parse(cls, text: str) -> PublicKey:
        known = _PARSED.get(text) if type(text) is str else None
        if known is not None:
            return known
        try:
            key = cls(from_b64url(text, 32))
        except KeyFormatError as exc:
            raise KeyFormatError("invalid_key", f"not a public key: {exc.message}") from exc
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()
        _PARSED[text] = key
        return key

    # Both are asked for at every turn (request headers, peer lookups, JSON of every message
    # naming a node): worked out once per key. Equality and hashing stay on ``raw`` alone.
    @cached_property
    def text(self) -> str:
        return b64url(self.raw)

    @cached_property
    def key_id(self) -> str:
        return hashlib.sha256(self.raw).digest()[:8].hex()

    def verify(self, message: bytes, signature: bytes) -> bool:
        return ed25519_verify(self.raw, message, signature)

    def __str__(self) -> str:
        return self.text


def ed25519_verify(public: bytes, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` (64 bytes) is the one ``public`` (32 bytes) made over ``message``.

    libsodium's own call (PyNaCl's ``VerifyKey`` would be built for every check and copy the
    message twice more); ``PublicKey.verify`` and the node's signature workers both use it."""
    if len(signature) != 64 or len(public) != 32:  # libsodium reads them at those lengths
        return False
    try:
        nacl.bindings.crypto_sign_open(signature + message, public)
    except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
        return False
    return True


@dataclass(frozen=True, repr=False)
class SecretKey:
    """An Ed25519 signing key. ``repr`` never shows the seed, so it cannot leak into logs."""

    seed: bytes

    def __post_init__(self) -> None:
        if len(self.seed) != 32:
            raise KeyFormatError("invalid_key", "an Ed25519 seed is 32 bytes")

    @classmethod
    def from_random(cls, random_bytes: bytes) -> SecretKey:
        """Make a key from 32 bytes of randomness the caller draws (``os.urandom(32)``)."""
        return cls(random_bytes)

    @cached_property
    def _keypair(self) -> tuple[bytes, bytes]:
        """(public key, libsodium's 64-byte secret key), from the seed."""
        public, secret = nacl.bindings.crypto_sign_seed_keypair(self.seed)
        return public, secret

    @cached_property
    def public(self) -> PublicKey:
        return PublicKey(self._keypair[0])

    def sign(self, message: bytes) -> bytes:
        # libsodium's call itself (PyNaCl's SigningKey.sign wraps its answer in objects,
        # which cost about half as much again): the signature is its answer's first 64 bytes.
        return nacl.bindings.crypto_sign(message, self._keypair[1])[:64]

    def __repr__(self) -> str:
        return f"SecretKey(public={self.public.text})"


def encode_secret_key(name: str, key: SecretKey) -> str:
    """The key file line: Go's ``note`` private-key form (``crypto.note.format_signer_key``)."""
    try:
        return format_signer_key(name, key.seed)
    except NoteError as exc:
        raise KeyFormatError("invalid_key_name", f"key name {name!r}: {exc}") from exc


def decode_secret_key(text: str) -> tuple[str, SecretKey]:
    try:
        signer = parse_signer_key(text.strip())
    except NoteError as exc:
        raise KeyFormatError(
            "invalid_key_file", f"not a PRIVATE+KEY+<name>+<hash>+<key> line, or damaged: {exc}"
        ) from exc
    return signer.name, SecretKey(signer.seed)


def write_key_file(path: Path, name: str, key: SecretKey) -> None:
    """Create ``path`` with mode 0600; never overwrite an existing key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(encode_secret_key(name, key) + "\n")


def read_key_file(path: Path) -> tuple[str, SecretKey]:
    """Read a key file, refusing one that group or others may read."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFormatError(
            "key_file_too_open",
            f"{path} is readable by other users (mode {stat.S_IMODE(mode):04o}); "
            f"run: chmod 600 {path}",
        )
    return decode_secret_key(path.read_text())


def sign_object(key: SecretKey, obj: JSONValue) -> str:
    """Sign the RFC 8785 form of ``obj``; the signature as unpadded base64url."""
    return b64url(key.sign(canonical_json(obj)))


def verify_object(public: PublicKey, obj: JSONValue, signature: str) -> bool:
    try:
        raw = from_b64url(signature, 64)
    except KeyFormatError:
        return False
    return public.verify(canonical_json(obj), raw)
