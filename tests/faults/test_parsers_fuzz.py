"""Every parser of outside bytes either parses or raises its module's own error type.

Hostile input is arbitrary bytes or text, and valid inputs with random edits: bytes
flipped, inserted, deleted, truncated or repeated, and for JSON messages a value somewhere
in the tree replaced, a field dropped or an unknown one added. Whatever arrives, the parser
answers with a value or its documented error (which the API turns into a 4xx problem), never
another exception (which would be a 500, or a crashed loop in the federation driver).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from crypto.canonical import CanonicalError, canonical_json, parse_json
from crypto.checkpoint import CheckpointError, format_checkpoint, parse_checkpoint
from crypto.httpsig import SignedRequestError, sign_request, verify_request
from crypto.keys import KeyFormatError, PublicKey, decode_secret_key, encode_secret_key
from crypto.note import (
    Cosigner,
    Ed25519Signer,
    NoteError,
    open_note,
    parse_note,
    parse_signer_key,
    parse_verifier_key,
    sign_note,
    split_cosignature,
)
from crypto.tiles import (
    Tile,
    TileError,
    decode_entry_bundle,
    encode_entry_bundle,
    parse_tile_path,
    split_tile_data,
    tile_path,
)
from crypto.tlogproof import TlogProofError, format_tlog_proof, parse_tlog_proof
from node.intake import parse_transfer_item
from protocol.federation import (
    FEDERATION_TYPES,
    Decision,
    Fulfil,
    Line,
    Party,
    PaymentOrder,
    Prepare,
    Quote,
    Reject,
)
from protocol.messages import (
    Admit,
    LogEntry,
    MessageError,
    Signed,
    Transfer,
    parse_log_entry,
    parse_signed,
    sign_message,
)
from tests.strategies import HOURS, T0, json_values, key_for, new_collective

# --- valid inputs to start from ---------------------------------------------------------------

COOP = new_collective()
LEDGER = COOP.ledger
NODE, PEER, ALICE = key_for("node"), key_for("peer"), key_for("alice")
ID = "0123456789abcdef0123456789abcdef"
H64 = hashlib.sha256(b"x").hexdigest()


def _party(key: Any, name: str) -> Party:
    return Party(key.public, hashlib.sha256(name.encode()).hexdigest(), name, HOURS)


ORDER = sign_message(PaymentOrder(LEDGER, ID, "alice", "bob", PEER.public, 60, 70, T0), ALICE)
QUOTE = sign_message(Quote(ID, ID, NODE.public, "bob", 60, H64, T0), PEER)
MESSAGES: list[Signed] = [
    COOP.genesis.payload,
    sign_message(Transfer(LEDGER, ID, "alice", "bob", 5, None, T0), ALICE),
    sign_message(Transfer(LEDGER, ID, "alice", "bob", 5, H64, T0), ALICE),
    sign_message(Admit(LEDGER, ID, T0, "alice", ALICE.public, 100, 100), key_for("steward")),
    sign_message(Line(ID, 1, _party(NODE, "a"), _party(PEER, "b"), 100, 200, 3, 2, "active",
                      T0), NODE, PEER),
    ORDER,
    QUOTE,
    sign_message(Prepare(ID, ID, NODE.public, PEER.public, 70, 60, H64, T0, ORDER, QUOTE), NODE),
    sign_message(Fulfil(ID, H64), PEER),
    sign_message(Reject(ID, "expired", "too late"), PEER),
    sign_message(Decision(ID, "post"), NODE),
]
ENTRIES = [LogEntry(T0, m) for m in MESSAGES]

LOG = Ed25519Signer("tally.test/log", bytes(range(32)))
WITNESS = Cosigner("tally.test/witness", bytes(range(1, 33)))
CHECKPOINT = format_checkpoint("tally.test/log", 5, hashlib.sha256(b"root").digest())
NOTE = sign_note(CHECKPOINT, [LOG, WITNESS.at(T0 // 1000)])
LOG_VKEY = LOG.verifier().vkey
WITNESS_VKEY = WITNESS.verifier().vkey
PROOF = format_tlog_proof(3, [hashlib.sha256(b"%d" % i).digest() for i in range(3)], NOTE)
BUNDLE = encode_entry_bundle([e.encode() for e in ENTRIES[:3]])


def _headers() -> dict[str, str]:
    signed = sign_request(ALICE, method="GET", path="/v1/accounts", query="a=1", body=b"",
                          recipient_key_id=NODE.public.key_id, created=T0 // 1000,
                          nonce="abcdefghijklmnop")
    return {k.lower(): v for k, v in signed.items()}


HEADERS = _headers()

# --- hostile variations -----------------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    """``original`` with one to four random edits."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        edit = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "repeat"]))
        if edit == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif edit == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8) | st.sampled_from(
                [b"\n", b"\n\n", b"+", b"\\u0000", b'"', b"\xe2\x80\x94 ", b"=", b"0", b"9" * 30]))
        elif edit == "delete":
            del data[at:at + draw(st.integers(1, 8))]
        elif edit == "truncate":
            del data[at:]
        else:
            data[at:at] = data[at:at + draw(st.integers(1, 16))]
    return bytes(data)


def mutated_text(original: str) -> st.SearchStrategy[str]:
    return mutated(original.encode()).map(lambda b: b.decode("utf-8", "replace"))


@st.composite
def mutated_json(draw: st.DrawFn, original: Any) -> Any:
    """``original`` (a JSON value) with one to three edits somewhere in its tree."""
    value = parse_json(canonical_json(original))  # a private copy, as parse_json gives
    for _ in range(draw(st.integers(1, 3))):
        parent, key = None, None
        node = value
        while isinstance(node, (dict, list)) and node and draw(st.booleans()):
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            parent, key = node, draw(st.sampled_from(keys))
            node = node[key]
        edit = draw(st.sampled_from(["replace", "drop", "add"]))
        if parent is None:
            value = draw(json_values)
        elif edit == "replace":
            parent[key] = draw(json_values)
        elif edit == "drop":
            del parent[key]
        elif isinstance(parent, dict):
            parent[draw(st.sampled_from(["extra", "type", "msg", "sigs", "id"]))] = draw(
                json_values)
        else:
            parent.append(draw(json_values))
    return value


def refused_only_with(error: type[Exception], parse: Callable[[], object]) -> object:
    """Run ``parse``: a value, or ``error``; any other exception fails the test."""
    try:
        return parse()
    except error:
        return None


# --- JSON and the messages in it ------------------------------------------------------------


@given(st.binary(max_size=300) | mutated(canonical_json(MESSAGES[4].to_json())))
def test_parse_json_takes_any_bytes(data: bytes) -> None:
    refused_only_with(CanonicalError, lambda: parse_json(data))


@given(st.text(max_size=300))
def test_parse_json_takes_any_text(text: str) -> None:
    refused_only_with(CanonicalError, lambda: parse_json(text))


def _parse_signed_fully(obj: Any, allowed: frozenset[str] | None) -> None:
    signed = parse_signed(obj, allowed)
    # What the node does next with a parsed message must not fail either.
    signed.verified_signers()
    assert parse_json(signed.canonical) == signed.to_json()


@given(st.sampled_from(MESSAGES).flatmap(lambda m: mutated_json(m.to_json())))
def test_signed_messages_parse_or_are_refused_with_message_error(obj: Any) -> None:
    refused_only_with(MessageError, lambda: _parse_signed_fully(obj, None))
    refused_only_with(MessageError, lambda: _parse_signed_fully(obj, FEDERATION_TYPES))


@given(st.sampled_from(MESSAGES).flatmap(lambda m: mutated(canonical_json(m.to_json()))))
def test_mutated_message_bytes_are_refused_with_typed_errors(data: bytes) -> None:
    obj = refused_only_with(CanonicalError, lambda: parse_json(data))
    refused_only_with(MessageError, lambda: _parse_signed_fully(obj, None))


@given(st.sampled_from(ENTRIES).flatmap(lambda e: mutated_json(e.to_json())))
def test_log_entries_parse_or_are_refused_with_message_error(obj: Any) -> None:
    entry = refused_only_with(MessageError, lambda: parse_log_entry(obj))
    if isinstance(entry, LogEntry):
        assert parse_log_entry(parse_json(entry.encode())) == entry


@given(mutated_json({"transfer": MESSAGES[2].to_json(),
                     "memo": {"text": "tea", "salt": "00" * 16}}))
def test_transfer_requests_parse_or_are_refused_with_message_error(obj: Any) -> None:
    refused_only_with(MessageError, lambda: parse_transfer_item(obj, "body"))


@given(json_values)
def test_any_json_value_as_a_message(obj: Any) -> None:
    refused_only_with(MessageError, lambda: _parse_signed_fully(obj, None))
    refused_only_with(MessageError, lambda: parse_log_entry(obj))


# --- signed notes, checkpoints, cosignatures, proofs ------------------------------------------


@given(st.binary(max_size=300) | mutated(NOTE))
def test_signed_notes_parse_or_are_refused_with_note_error(data: bytes) -> None:
    refused_only_with(NoteError, lambda: parse_note(data))
    verifiers = [parse_verifier_key(LOG_VKEY), parse_verifier_key(WITNESS_VKEY)]
    refused_only_with(NoteError, lambda: open_note(data, verifiers))


@given(st.text(max_size=120) | mutated_text(LOG_VKEY) | mutated_text(WITNESS_VKEY))
def test_verifier_keys_parse_or_are_refused_with_note_error(text: str) -> None:
    refused_only_with(NoteError, lambda: parse_verifier_key(text))


@given(st.text(max_size=120) | mutated_text(encode_secret_key("tally-node", NODE)))
def test_key_files_parse_or_are_refused_with_key_errors(text: str) -> None:
    refused_only_with(NoteError, lambda: parse_signer_key(text))
    refused_only_with(KeyFormatError, lambda: decode_secret_key(text))
    refused_only_with(KeyFormatError, lambda: PublicKey.parse(text))


@given(st.binary(max_size=100))
def test_cosignatures_split_or_are_refused_with_note_error(data: bytes) -> None:
    refused_only_with(NoteError, lambda: split_cosignature(data))
    assert WITNESS.at(T0 // 1000).sign(b"x") is not None


@given(st.text(max_size=200) | mutated_text(CHECKPOINT))
def test_checkpoints_parse_or_are_refused_with_checkpoint_error(text: str) -> None:
    refused_only_with(CheckpointError, lambda: parse_checkpoint(text))


@given(st.binary(max_size=400) | mutated(PROOF))
def test_tlog_proofs_parse_or_are_refused_with_their_error(data: bytes) -> None:
    refused_only_with(TlogProofError, lambda: parse_tlog_proof(data))


# --- tiles ----------------------------------------------------------------------------------


@given(st.text(max_size=80) | st.sampled_from([
    "tile/0/000", "tile/entries/x001/234.p/7", "tile/3/x123/x456/789", "tile/0/000.p/255",
]).flatmap(mutated_text))
def test_tile_paths_parse_or_are_refused_with_tile_error(path: str) -> None:
    tile = refused_only_with(TileError, lambda: parse_tile_path(path))
    if isinstance(tile, Tile):
        assert tile_path(tile) == path


@given(st.binary(max_size=600) | mutated(BUNDLE), st.none() | st.integers(0, 300))
def test_entry_bundles_split_or_are_refused_with_tile_error(data: bytes, width: int | None) -> None:
    refused_only_with(TileError, lambda: decode_entry_bundle(data, width))
    refused_only_with(TileError, lambda: split_tile_data(Tile(0, 0, 1), data))


# --- HTTP message signatures --------------------------------------------------------------


@st.composite
def signed_headers(draw: st.DrawFn) -> dict[str, str]:
    headers = dict(HEADERS)
    for name in draw(st.lists(st.sampled_from(sorted(headers)), min_size=1, max_size=3)):
        if draw(st.booleans()):
            headers[name] = draw(mutated_text(headers.get(name, HEADERS[name])))
        elif draw(st.booleans()):
            headers.pop(name, None)
        else:
            headers[name] = draw(st.text(max_size=200))
    return headers


@given(signed_headers(), st.sampled_from(["GET", "POST", "get", ""]),
       st.text(max_size=20), st.text(max_size=20), st.binary(max_size=20))
def test_signed_request_headers_verify_or_are_refused_with_their_error(
    headers: dict[str, str], method: str, path: str, query: str, body: bytes
) -> None:
    refused_only_with(SignedRequestError, lambda: verify_request(
        method=method, path=path, query=query, headers=headers, body=body,
        recipient_key_id=NODE.public.key_id, now=T0 // 1000, max_skew=300))


def test_the_unmutated_inputs_are_valid() -> None:
    """The seeds the mutations start from parse: else the fuzzing would start from refusals."""
    for m in MESSAGES:
        assert parse_signed(parse_json(canonical_json(m.to_json()))) == m
        assert m.verified_signers()[1]
    for e in ENTRIES:
        assert parse_log_entry(parse_json(e.encode())) == e
    assert open_note(NOTE, [parse_verifier_key(LOG_VKEY)]).text == CHECKPOINT
    assert parse_tlog_proof(PROOF).index == 3
    assert len(decode_entry_bundle(BUNDLE)) == 3
    verified = verify_request(method="GET", path="/v1/accounts", query="a=1", headers=HEADERS,
                              body=b"", recipient_key_id=NODE.public.key_id, now=T0 // 1000,
                              max_skew=300)
    assert verified.signer == ALICE.public
    assert decode_secret_key(encode_secret_key("tally-node", NODE))[1].seed == NODE.seed
    assert base64.b64decode(CHECKPOINT.split("\n")[2])
