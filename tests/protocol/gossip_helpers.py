"""Builders for node records and checkpoints in tests of gossip (and the simulation)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from crypto.checkpoint import format_checkpoint
from crypto.keys import SecretKey
from crypto.note import ALG_ED25519, Ed25519Signer, format_verifier_key, sign_note
from protocol.gossip import LineEntry, make_record
from protocol.messages import Signed, Unit

UNIT = Unit("HOUR", "hours", 60)
NOW = 1_700_000_000_000


def ledger_of(key: SecretKey) -> str:
    return hashlib.sha256(b"ledger " + key.public.raw).hexdigest()


def origin_of(key: SecretKey) -> str:
    return f"tally/{ledger_of(key)}"


def vkey_of(key: SecretKey) -> str:
    return format_verifier_key(origin_of(key), ALG_ED25519, key.public.raw)


def record(key: SecretKey, counter: int = 1, *, lines: Iterable[LineEntry] = (),
           issued: int = NOW, name: str = "coop", url: str = "http://127.0.0.1:7300") -> Signed:
    return make_record(key, name=name, ledger=ledger_of(key), log_vkey=vkey_of(key), urls=[url],
                       unit=UNIT, lines=lines, software="tally test", counter=counter,
                       issued=issued)


def checkpoint(key: SecretKey, size: int, root: bytes) -> bytes:
    signer = Ed25519Signer(origin_of(key), key.seed)
    return sign_note(format_checkpoint(origin_of(key), size, root), [signer])


def line(line_id: str, a: SecretKey, b: SecretKey, *, a_limit: int = 1000, b_limit: int = 2000,
         rate: tuple[int, int] = (1, 1), status: str = "active", version: int = 1) -> LineEntry:
    return LineEntry(line_id.ljust(32, "0"), version, a.public, b.public, a_limit, b_limit,
                     rate[0], rate[1], status)
