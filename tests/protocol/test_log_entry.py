"""The log entry envelope: its bytes are exactly the RFC 8785 form, and parse back."""

from __future__ import annotations

import json

import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.keys import SecretKey
from protocol.messages import LogEntry, Transfer, parse_log_entry, sign_message


@settings(max_examples=60, deadline=None)
@given(
    seed=st.binary(min_size=32, max_size=32),
    node_time=st.integers(min_value=0, max_value=2**53 - 1),
    amount=st.integers(min_value=-(2**53 - 1), max_value=2**53 - 1),
    memo_hash=st.none() | st.text("0123456789abcdef", min_size=64, max_size=64),
)
def test_entry_bytes_are_rfc8785_and_round_trip(
    seed: bytes, node_time: int, amount: int, memo_hash: str | None
) -> None:
    key = SecretKey(seed)
    msg = Transfer("ab" * 32, "cd" * 16, "alice", "bob", amount, memo_hash, node_time)
    entry = LogEntry(node_time, sign_message(msg, key))
    encoded = entry.encode()
    assert encoded == rfc8785.dumps(entry.to_json())
    assert parse_log_entry(json.loads(encoded)) == entry
