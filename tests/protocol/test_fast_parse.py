"""The hot path's shortcuts give exactly what the general path gives.

``parse_signed`` takes a shortcut for a well-formed one-signature transfer (and writes its
canonical bytes directly); ``Signed.canonical`` is spliced from ``signed_bytes``; signatures
are decoded without ``crypto.keys.from_b64url``. Each is checked here against the general
form: same value, same bytes, same refusal.
"""

from __future__ import annotations

import copy
import string
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.canonical import MAX_SAFE_INTEGER, canonical_json, parse_json
from crypto.keys import KeyFormatError, SecretKey, from_b64url
from protocol import messages
from protocol.messages import (
    MessageError,
    Signature,
    Signed,
    Transfer,
    parse_signed,
    sign_message,
    signature_bytes,
)
from tests.strategies import event_ids, handles, seeds

LEDGER = "ab" * 32


def general_parse(obj: Any, allowed: frozenset[str] | None = None) -> Signed:
    """parse_signed with the shortcuts turned off."""
    fast_signed, fast_transfer = messages._fast_signed, messages._fast_transfer
    messages._fast_signed = lambda *a: None  # type: ignore[assignment]
    messages._fast_transfer = lambda *a: None  # type: ignore[assignment]
    try:
        return parse_signed(obj, allowed)
    finally:
        messages._fast_signed, messages._fast_transfer = fast_signed, fast_transfer


def outcome(parse: Any, obj: Any) -> Any:
    try:
        s = parse(copy.deepcopy(obj), frozenset({"transfer"}))
    except MessageError as exc:
        return ("refused", exc.code, exc.message, exc.field)
    return ("ok", s, s.signed_bytes, s.canonical, s.verified_signers())


transfers = st.builds(
    Transfer,
    ledger=st.just(LEDGER),
    id=event_ids,
    payer=handles,
    payee=handles,
    amount=st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER),
    memo_hash=st.one_of(st.none(), st.binary(min_size=32, max_size=32).map(bytes.hex)),
    valid_until=st.integers(0, MAX_SAFE_INTEGER),
)


@settings(max_examples=300)
@given(transfers, seeds)
def test_shortcut_gives_the_same_message_and_bytes(t: Transfer, seed: bytes) -> None:
    signed = sign_message(t, SecretKey(seed))
    wire = parse_json(canonical_json(signed.to_json()))
    fast = parse_signed(wire, frozenset({"transfer"}))
    assert fast == signed
    assert fast.signed_bytes == canonical_json(t.to_json())
    assert fast.canonical == canonical_json(signed.to_json())
    assert fast.verified_signers() == ({signed.sigs[0].key}, True)
    assert outcome(parse_signed, wire) == outcome(general_parse, wire)


def _mutations() -> list[tuple[str, Any]]:
    """(path, new value) pairs: each a small change to a valid transfer body."""
    odd = ["", "x" * 300, "A" * 64, "ab" * 31, "ab" * 33, "Alice", "al ice", "alice\n", None, 1,
           True, 1.5, [], {}, -1, 2**53, -(2**53), 0, "\ud800", "ab" * 32, "ef" * 16]
    paths = ["msg.type", "msg.ledger", "msg.id", "msg.payer", "msg.payee", "msg.amount",
             "msg.memo_hash", "msg.valid_until", "sigs.0.key", "sigs.0.sig"]
    return [(p, v) for p in paths for v in odd]


def _set(obj: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    for part in parts[:-1]:
        obj = obj[int(part)] if part.isdigit() else obj[part]  # type: ignore[index]
    obj[parts[-1]] = value


@pytest.mark.parametrize(("path", "value"), _mutations())
def test_shortcut_refuses_or_accepts_as_the_general_path(path: str, value: Any) -> None:
    t = Transfer(LEDGER, "cd" * 16, "alice", "bob", 5, None, 1000)
    wire = sign_message(t, SecretKey(b"k" * 32)).to_json()
    _set(wire, path, value)
    assert outcome(parse_signed, wire) == outcome(general_parse, wire)


@pytest.mark.parametrize("change", ["extra_top", "extra_msg", "extra_sig", "two_sigs",
                                    "no_sigs", "missing_msg_field", "sigs_not_list",
                                    "other_type", "twice_same_key", "noncanonical_sig",
                                    "noncanonical_key"])
def test_shortcut_shapes(change: str) -> None:
    t = Transfer(LEDGER, "cd" * 16, "alice", "bob", 5, "ef" * 32, 1000)
    k1, k2 = SecretKey(b"k" * 32), SecretKey(b"j" * 32)
    wire = sign_message(t, k1).to_json()
    if change == "extra_top":
        wire["x"] = 1
    elif change == "extra_msg":
        wire["msg"]["x"] = 1
    elif change == "extra_sig":
        wire["sigs"][0]["x"] = 1
    elif change == "two_sigs":
        wire = sign_message(t, k1, k2).to_json()
    elif change == "no_sigs":
        wire["sigs"] = []
    elif change == "missing_msg_field":
        del wire["msg"]["memo_hash"]
    elif change == "sigs_not_list":
        wire["sigs"] = wire["sigs"][0]
    elif change == "other_type":
        wire["msg"]["type"] = "admit"
    elif change == "twice_same_key":
        wire["sigs"] = wire["sigs"] * 2
    elif change == "noncanonical_sig":
        sig = wire["sigs"][0]["sig"]
        wire["sigs"][0]["sig"] = sig[:-1] + {"A": "B", "Q": "R", "g": "h", "w": "x"}[sig[-1]]
    elif change == "noncanonical_key":
        key = wire["sigs"][0]["key"]
        last = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
        wire["sigs"][0]["key"] = key[:-1] + last[(last.index(key[-1]) + 1) % 64]
    assert outcome(parse_signed, wire) == outcome(general_parse, wire)


@settings(max_examples=500)
@given(st.text(alphabet=string.ascii_letters + string.digits + "-_+/=", min_size=84,
               max_size=88))
def test_signature_bytes_matches_from_b64url(text: str) -> None:
    try:
        expected: bytes | None = from_b64url(text, 64)
    except KeyFormatError:
        expected = None
    assert signature_bytes(text) == expected


def test_canonical_splice_falls_back_for_odd_signatures() -> None:
    t = Transfer(LEDGER, "cd" * 16, "alice", "bob", 5, None, 1000)
    key = SecretKey(b"k" * 32).public
    odd = Signed(t, (Signature(key, 'no"t base64\n'),))
    assert odd.canonical == canonical_json(odd.to_json())
    assert odd.verified_signers() == (frozenset(), False)


@settings(max_examples=50, deadline=None)
@given(seeds, seeds, st.integers(1, MAX_SAFE_INTEGER), st.integers(1, MAX_SAFE_INTEGER),
       st.lists(seeds, max_size=3, unique=True), event_ids, handles)
def test_a_prepare_spliced_from_its_order_and_quote_is_the_general_encoding(
        up: bytes, down: bytes, amount: int, expires: int, path: list[bytes], attempt: str,
        payee: str) -> None:
    """A PREPARE's signed bytes splice in the embedded order's and quote's canonical bytes
    (``Prepare.canonical_bytes``): byte for byte ``canonical_json(to_json())``, whether the
    PREPARE was signed here or parsed from what another node sent."""
    from protocol.federation import PaymentOrder, Prepare, Quote

    a, b = SecretKey(up), SecretKey(down)
    order_msg: Any = PaymentOrder(LEDGER, attempt, "payer", payee, b.public, amount, amount,
                                  expires)
    quote_msg: Any = Quote(attempt, attempt, a.public, payee, amount, "cd" * 32, expires)
    order, quote = sign_message(order_msg, a), sign_message(quote_msg, b)
    prepare = Prepare(attempt, attempt, a.public, b.public, amount, amount, "cd" * 32, expires,
                      order, quote, tuple(SecretKey(p).public for p in path))
    general = canonical_json(prepare.to_json())
    assert prepare.canonical_bytes() == general
    odd = replace(prepare, line='x,"path":[],"to_node":"y"')  # not a line id: built by hand
    assert odd.canonical_bytes() == canonical_json(odd.to_json())
    assert sign_message(prepare, a).signed_bytes == general  # type: ignore[arg-type]
    sent = sign_message(prepare, a).canonical  # type: ignore[arg-type]
    parsed = parse_signed(parse_json(sent))
    assert parsed.signed_bytes == general
    assert parsed.verified_signers() == (frozenset({a.public}), True)
