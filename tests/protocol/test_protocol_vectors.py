"""The golden vectors of the node-to-node protocol (``tests/vectors/protocol-v1.json``) against
the code: recomputed byte for byte, and each checked with the strict parsers and verifiers a
receiving node uses. A change to any message format fails here until the vectors are
regenerated on purpose (``python -m tests.vectors.make_protocol_vectors``)."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest

from crypto.canonical import CanonicalError, canonical_json, parse_json
from crypto.httpsig import verify_request
from crypto.keys import PublicKey, SecretKey
from protocol.evidence import EvidenceError, parse_evidence
from protocol.federation import Line, Statement, condition_of
from protocol.gossip import GossipError, parse_record
from protocol.lines import is_suspension_of
from protocol.messages import _SPECS, MessageError, parse_log_entry, parse_signed
from protocol.reconcile import compare
from protocol.routing import Edge, amounts
from tests.vectors import make_protocol_vectors as gen

STORED = gen.PATH.read_text("utf-8")
VECTORS: dict[str, Any] = json.loads(STORED)
KEYS = {k["name"]: k for k in VECTORS["keys"]}


def test_the_stored_vectors_are_exactly_what_the_code_produces() -> None:
    assert gen.render() == STORED, (
        "the wire format changed: if on purpose, run "
        "`python -m tests.vectors.make_protocol_vectors` and say so in the change")


def test_every_message_type_of_the_protocol_has_a_vector() -> None:
    kinds = {v["msg"]["type"] for v in VECTORS["messages"]}
    assert kinds == {"line", "payment_order", "quote", "prepare", "fulfil", "reject",
                     "decision", "statement", "line_settlement", "node_record"}


def test_the_one_sided_suspension_is_one_the_ledger_takes_from_one_node() -> None:
    by_name = {v["name"]: v for v in VECTORS["messages"]}
    agreed = parse_signed(by_name["line"]["signed"], frozenset({"line"})).msg
    suspension = parse_signed(by_name["line_suspension"]["signed"], frozenset({"line"})).msg
    assert isinstance(agreed, Line) and isinstance(suspension, Line)
    assert is_suspension_of(agreed, suspension)
    assert not is_suspension_of(suspension, agreed)


def test_the_settlement_amounts_follow_the_line_rate() -> None:
    by_name = {v["name"]: v for v in VECTORS["messages"]}
    line = parse_signed(by_name["line"]["signed"], frozenset({"line"})).msg
    s = by_name["line_settlement"]["msg"]
    assert isinstance(line, Line) and s["line"] == line.id
    assert s["amount_b"] == line.convert(s["amount_a"], "a")


def test_the_node_record_is_accepted_by_gossip_and_names_only_its_own_lines() -> None:
    vector = {v["name"]: v for v in VECTORS["messages"]}["node_record"]
    signed, record = parse_record(vector["signed"], now=gen.NOW)
    assert record.key.text == KEYS["node_a"]["public_key"]
    assert signed.canonical == vector["signed_canonical"].encode("utf-8")
    # Signed by another key than the one it describes: refused.
    forged = json.loads(json.dumps(vector["signed"]))
    forged["sigs"][0]["key"] = KEYS["node_b"]["public_key"]
    with pytest.raises(GossipError):
        parse_record(forged, now=gen.NOW)


@pytest.mark.parametrize("vector", VECTORS["evidence"], ids=lambda v: v["name"])
def test_each_evidence_record_verifies_and_names_its_offender(vector: dict[str, Any]) -> None:
    ev = parse_evidence(vector["record"])
    assert canonical_json(vector["record"]) == vector["canonical"].encode("utf-8")
    assert ev.id == vector["id"] == hashlib.sha256(vector["canonical"].encode()).hexdigest()
    assert ev.offender.text == KEYS[vector["offender"]]["public_key"]
    # The same two checkpoints with the same root: no contradiction, so no evidence.
    same = dict(vector["record"], checkpoints=[vector["record"]["checkpoints"][0]] * 2)
    with pytest.raises(EvidenceError):
        parse_evidence(same)


@pytest.mark.parametrize("key", VECTORS["keys"], ids=lambda k: k["name"])
def test_each_key_follows_from_its_seed(key: dict[str, Any]) -> None:
    public = SecretKey(bytes.fromhex(key["seed"])).public
    assert public.text == key["public_key"]
    raw = PublicKey.parse(key["public_key"]).raw
    assert key["key_id"] == hashlib.sha256(raw).digest()[:8].hex()


@pytest.mark.parametrize("vector", VECTORS["messages"], ids=lambda v: v["name"])
def test_each_message_parses_strictly_and_its_signatures_verify(vector: dict[str, Any]) -> None:
    wire = vector["signed_canonical"].encode("utf-8")
    signed = parse_signed(parse_json(wire), frozenset({vector["msg"]["type"]}))
    assert signed.to_json() == vector["signed"]
    assert signed.canonical == wire
    assert canonical_json(vector["msg"]) == vector["canonical"].encode("utf-8")
    assert signed.signed_bytes == vector["canonical"].encode("utf-8")
    assert hashlib.sha256(signed.signed_bytes).hexdigest() == vector["canonical_sha256"]
    good, all_good = signed.verified_signers()
    assert all_good
    assert {k.text for k in good} == {KEYS[n]["public_key"] for n in vector["signers"]}


def test_the_fulfilments_hash_to_the_conditions_the_quotes_carry() -> None:
    conditions = {f["condition"] for f in VECTORS["fulfilments"]}
    assert all(condition_of(bytes.fromhex(f["fulfilment"])) == f["condition"]
               for f in VECTORS["fulfilments"])
    quoted = {v["msg"]["condition"] for v in VECTORS["messages"] if v["msg"]["type"] == "quote"}
    assert quoted == conditions


@pytest.mark.parametrize("vector", VECTORS["log_entries"], ids=lambda v: v["name"])
def test_each_log_entry_embeds_its_signed_message(vector: dict[str, Any]) -> None:
    data = vector["entry"].encode("utf-8")
    entry = parse_log_entry(parse_json(data))
    assert entry.encode() == data
    payload = {v["name"]: v for v in VECTORS["messages"]}[vector["payload"]]
    assert entry.payload.to_json() == payload["signed"]
    assert hashlib.sha256(b"\x00" + data).hexdigest() == vector["leaf_hash"]


@pytest.mark.parametrize("vector", VECTORS["http_requests"], ids=lambda v: v["name"])
def test_each_signed_request_verifies_at_its_recipient_only(vector: dict[str, Any]) -> None:
    headers = {k.lower(): v for k, v in vector["headers"].items()}
    body = vector["body"].encode("utf-8")
    assert headers["content-digest"] == (
        "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":")
    verified = verify_request(
        method=vector["method"], path=vector["path"], query=vector["query"], headers=headers,
        body=body, recipient_key_id=vector["recipient_key_id"], now=vector["created"],
        max_skew=2)
    assert verified.signer.text == KEYS[vector["signer"]]["public_key"]
    signature = base64.b64decode(headers["signature"].removeprefix("tally=:").rstrip(":"))
    assert verified.signer.verify(vector["signature_base"].encode("utf-8"), signature)
    with pytest.raises(ValueError):
        verify_request(method=vector["method"], path=vector["path"], query=vector["query"],
                       headers=headers, body=body, recipient_key_id=KEYS["node_c"]["key_id"],
                       now=vector["created"], max_skew=2)


@pytest.mark.parametrize("case", VECTORS["conversions"],
                         ids=lambda c: f"{c['rate_num']}/{c['rate_den']}-{c['from_side']}-"
                                       f"{c['amount']}")
def test_each_conversion_rounds_as_the_vector_says(case: dict[str, Any]) -> None:
    a, b = gen.PARTY["a"], gen.PARTY["b"]
    line = Line("0" * 32, 1, a, b, 0, 0, case["rate_num"], case["rate_den"], "active", 0)
    side = case["from_side"]
    assert line.convert(case["amount"], side) == case["convert"]
    assert line.needed(case["amount"], side) == case["needed"]
    # needed is the least amount that converts to at least the amount asked for.
    assert line.convert(case["needed"], side) >= case["amount"]
    assert case["needed"] == 1 or line.convert(case["needed"] - 1, side) < case["amount"]


@pytest.mark.parametrize("case", VECTORS["routes"], ids=lambda c: c["name"])
def test_each_route_sends_what_the_vector_says_and_the_payee_gets_enough(
    case: dict[str, Any],
) -> None:
    nodes = tuple(PublicKey(bytes([i]) * 32) for i in range(len(case["hops"]) + 1))
    edges = tuple(
        Edge(str(i), nodes[i] if h["sender_is_a"] else nodes[i + 1],
             nodes[i + 1] if h["sender_is_a"] else nodes[i], h["rate_num"], h["rate_den"], 0, 0)
        for i, h in enumerate(case["hops"]))
    assert list(amounts(edges, nodes, case["amount"])) == case["sends"]
    received = case["sends"][0]
    for i, (edge, prepare) in enumerate(zip(edges, case["prepares"])):
        assert prepare["amount_from"] == received
        received = edge.convert(received, nodes[i])
        assert prepare["amount_to"] == received
    assert received == case["arrives"] >= case["amount"]


@pytest.mark.parametrize("case", VECTORS["reconciliation"], ids=lambda c: c["verdict"])
def test_each_pair_of_statements_gives_its_verdict(case: dict[str, Any]) -> None:
    ours = {v["name"]: v for v in VECTORS["messages"]}[case["ours"]]["signed"]
    mine = parse_signed(ours, frozenset({"statement"})).msg
    theirs = parse_signed({"msg": case["theirs"], "sigs": ours["sigs"]}).msg
    assert isinstance(mine, Statement) and isinstance(theirs, Statement)
    assert compare(mine, theirs)[0] == case["verdict"]


@pytest.mark.parametrize("case", VECTORS["invalid"], ids=lambda c: c["name"])
def test_each_invalid_body_is_refused_with_its_code(case: dict[str, Any]) -> None:
    with pytest.raises((CanonicalError, MessageError)) as info:
        parse_signed(parse_json(case["body"].encode("utf-8")))
    assert getattr(info.value.code, "value", info.value.code) == case["code"]


@pytest.mark.parametrize("case", VECTORS["unverifiable"], ids=lambda c: c["name"])
def test_each_tampered_signature_does_not_verify(case: dict[str, Any]) -> None:
    signed = parse_signed(case["signed"])
    good, all_good = signed.verified_signers()
    assert not all_good and good == frozenset()


SPEC = (gen.PATH.parent.parent.parent / "docs" / "protocol.md").read_text("utf-8")


@pytest.mark.parametrize("kind", sorted({v["msg"]["type"] for v in VECTORS["messages"]}))
def test_the_spec_gives_every_field_of_every_message(kind: str) -> None:
    sections = SPEC.split("\n### ")
    (section,) = [s for s in sections if s.split("\n", 1)[0].endswith(f"`{kind}`")
                  or f"`{kind}` —" in s.split("\n", 1)[0]]
    rows = {line.split("|")[1].strip() for line in section.splitlines()
            if line.startswith("| `")}
    documented = {f.strip("`") for row in rows for f in row.split(", ")}
    assert documented == set(_SPECS[kind]), kind


def test_the_spec_names_the_vectors_and_how_to_regenerate_them() -> None:
    assert "tests/vectors/protocol-v1.json" in SPEC
    assert "python -m tests.vectors.make_protocol_vectors" in SPEC
