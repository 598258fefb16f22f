"""Golden vectors of the node-to-node protocol, version 1 (``docs/protocol.md``).

Writes ``tests/vectors/protocol-v1.json`` from the code, deterministically: keys from fixed
seeds, fixed times and ids, Ed25519's deterministic signatures. Regenerate on purpose, after
a deliberate change to a message format, and say so in the change::

    python -m tests.vectors.make_protocol_vectors

``tests/protocol/test_protocol_vectors.py`` recomputes every vector and compares it with the
file byte for byte, so an accidental change to the wire format fails until this is run.

Every value here is made up (keys, ledger ids, times) and means nothing outside the vectors.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from dataclasses import replace

from crypto.canonical import canonical_json
from crypto.checkpoint import format_checkpoint
from crypto.httpsig import content_digest, sign_request, signature_base
from crypto.keys import SecretKey
from crypto.note import ALG_ED25519, Ed25519Signer, format_verifier_key, sign_note
from protocol import version as protocol_version
from protocol.evidence import same_size_evidence
from protocol.federation import (
    Decision,
    Fulfil,
    Line,
    LineSettlement,
    Party,
    PaymentOrder,
    Prepare,
    Quote,
    Reject,
    Statement,
    condition_of,
)
from protocol.gossip import LineEntry, make_record
from protocol.messages import LogEntry, Signed, Unit, sign_message
from protocol.reconcile import compare
from protocol.routing import Edge, amounts

PATH = Path(__file__).parent / "protocol-v1.json"
NOW = 1_700_000_000_000  # ms: every time below is relative to it


def seed(name: str) -> bytes:
    return hashlib.sha256(f"tally protocol-v1 vector key: {name}".encode()).digest()


def hex_id(name: str, length: int = 32) -> str:
    return hashlib.sha256(f"tally protocol-v1 vector id: {name}".encode()).hexdigest()[:length]


KEY_NAMES = ("node_a", "node_b", "node_c", "steward_a", "steward_b", "alice")
KEYS = {name: SecretKey(seed(name)) for name in KEY_NAMES}
PUB = {name: key.public for name, key in KEYS.items()}

HOURS = Unit("HOUR", "hours", 60)  # A, a time bank counting minutes
CREDITS = Unit("CREDIT", "credits", 100)  # B, a co-op counting cents
BREAD = Unit("LOAF", "loaves", 4)  # C, a bakery counting quarter loaves
PARTY = {
    "a": Party(PUB["node_a"], hex_id("ledger a", 64), "Riverside Time Bank", HOURS),
    "b": Party(PUB["node_b"], hex_id("ledger b", 64), "Greenway Co-op", CREDITS),
    "c": Party(PUB["node_c"], hex_id("ledger c", 64), "Hilltop Bakery", BREAD),
}

# A-B: 3 cents per 2 minutes. B-C (B is side a): 1 quarter loaf per 7 cents.
LINE_AB = Line(hex_id("line ab"), 1, PARTY["a"], PARTY["b"], 3000, 600, 3, 2, "active",
               NOW + 86_400_000)
LINE_BC = Line(hex_id("line bc"), 2, PARTY["b"], PARTY["c"], 5000, 400, 1, 7, "active",
               NOW + 86_400_000)

FULFILMENT = hashlib.sha256(b"tally protocol-v1 vector fulfilment").digest()
FULFILMENT_2 = hashlib.sha256(b"tally protocol-v1 vector fulfilment 2").digest()
ATTEMPT = hex_id("attempt 1")
ATTEMPT_2 = hex_id("attempt 2")


def message_vector(name: str, signed: Signed, signers: list[str], note: str) -> dict[str, Any]:
    """A message: its fields, the exact bytes signed, and the whole signed form."""
    data = canonical_json(signed.msg.to_json())
    assert data == signed.signed_bytes
    return {
        "name": name,
        "note": note,
        "msg": signed.msg.to_json(),
        "canonical": data.decode("utf-8"),
        "canonical_sha256": hashlib.sha256(data).hexdigest(),
        "signers": signers,
        "signed": signed.to_json(),
        "signed_canonical": signed.canonical.decode("utf-8"),
    }


def messages() -> tuple[list[dict[str, Any]], dict[str, Signed]]:
    k = KEYS
    s: dict[str, Signed] = {}
    s["line"] = sign_message(LINE_AB, k["node_a"], k["node_b"])
    s["line_proposal"] = sign_message(LINE_BC, k["node_b"])
    order = PaymentOrder(PARTY["a"].ledger, hex_id("order 1"), "alice", "bob", PUB["node_b"],
                         150, 120, NOW + 3_600_000)
    s["payment_order"] = sign_message(order, k["alice"])
    quote = Quote(ATTEMPT, order.id, PUB["node_a"], "bob", 150, condition_of(FULFILMENT),
                  NOW + 60_000)
    s["quote"] = sign_message(quote, k["node_b"])
    # The source sends needed(150) = 100 minutes, which is 150 cents at 3/2.
    s["prepare"] = sign_message(
        Prepare(ATTEMPT, LINE_AB.id, PUB["node_a"], PUB["node_b"], 100,
                LINE_AB.convert(100, "a"), quote.condition, NOW + 30_000,
                s["payment_order"], s["quote"]), k["node_a"])
    s["fulfil"] = sign_message(Fulfil(ATTEMPT, FULFILMENT.hex()), k["node_b"])
    s["reject"] = sign_message(
        Reject(ATTEMPT, "exceeds_line_limit", "the credit line with Riverside Time Bank has "
               "room for 2 credits more now"), k["node_b"])
    s["decision_post"] = sign_message(Decision(ATTEMPT, "post"), k["node_a"])
    s["decision_void"] = sign_message(Decision(ATTEMPT, "void"), k["node_a"])
    s["statement"] = sign_message(
        Statement(LINE_AB.id, 1, PUB["node_a"], NOW + 5_000, 42, 100, 150,
                  (ATTEMPT_2, hex_id("attempt 3"))), k["node_a"])

    # Two hops: alice at A pays carol at C through B. The quote is C's, made for B (the node
    # that asked C); A's PREPARE names the rest of the path, B forwards a margin sooner.
    order2 = PaymentOrder(PARTY["a"].ledger, hex_id("order 2"), "alice", "carol",
                          PUB["node_c"], 5, 40, NOW + 3_600_000)
    s["payment_order_2hop"] = sign_message(order2, k["alice"])
    quote2 = Quote(ATTEMPT_2, order2.id, PUB["node_b"], "carol", 5, condition_of(FULFILMENT_2),
                   NOW + 60_000)
    s["quote_2hop"] = sign_message(quote2, k["node_c"])
    route_nodes = (PUB["node_a"], PUB["node_b"], PUB["node_c"])
    sends = amounts((edge(LINE_AB), edge(LINE_BC)), route_nodes, quote2.amount)
    first_to = LINE_AB.convert(sends[0], "a")
    s["prepare_2hop_first"] = sign_message(
        Prepare(ATTEMPT_2, LINE_AB.id, PUB["node_a"], PUB["node_b"], sends[0], first_to,
                quote2.condition, NOW + 38_000, s["payment_order_2hop"], s["quote_2hop"],
                (PUB["node_c"],)), k["node_a"])
    s["prepare_2hop_forward"] = sign_message(
        Prepare(ATTEMPT_2, LINE_BC.id, PUB["node_b"], PUB["node_c"], first_to,
                LINE_BC.convert(first_to, "a"), quote2.condition, NOW + 30_000,
                s["payment_order_2hop"], s["quote_2hop"]), k["node_b"])

    # Line AB (B owes A 150 cents, say): B paid A 90 cents out of band = 60 minutes at 3/2.
    s["line_settlement"] = sign_message(
        LineSettlement(hex_id("settlement 1"), LINE_AB.id, 1, "b", 60, LINE_AB.convert(60, "a"),
                       "bank transfer GW-2023-117", NOW + 86_400_000), k["node_a"], k["node_b"])
    # A suspends line AB alone: version 2, the only change active -> suspended.
    s["line_suspension"] = sign_message(replace(LINE_AB, version=2, status="suspended"),
                                        k["node_a"])
    s["node_record"] = make_record(
        k["node_a"], name=PARTY["a"].name, ledger=PARTY["a"].ledger,
        log_vkey=log_vkey("a"), urls=["https://riverside.example/tally"], unit=HOURS,
        lines=[LineEntry.of(LINE_AB)], software="tally 0.1.0", counter=NOW + 7, issued=NOW + 7)

    notes = {
        "line": ("line", ["node_a", "node_b"],
                 "a credit line agreement as the two nodes exchange it (stewards' signatures "
                 "are added on each ledger that logs it)"),
        "line_proposal": ("line", ["node_b"],
                          "a proposal: signed by the proposing node only; version 2"),
        "payment_order": ("payment_order", ["alice"], "signed by the payer's member key"),
        "quote": ("quote", ["node_b"], "signed by the destination node"),
        "prepare": ("prepare", ["node_a"], "one hop: path is empty"),
        "fulfil": ("fulfil", ["node_b"], "sha256(fulfilment) is the quote's condition"),
        "reject": ("reject", ["node_b"], "a definite refusal with a result code"),
        "decision_post": ("decision", ["node_a"], "the upstream posted"),
        "decision_void": ("decision", ["node_a"], "the upstream voided"),
        "statement": ("statement", ["node_a"], "in_flight sorted, without repeats"),
        "payment_order_2hop": ("payment_order", ["alice"], "payee at C, two lines away"),
        "quote_2hop": ("quote", ["node_c"],
                       "payer_node is the node that asked C for the quote: B, not A"),
        "prepare_2hop_first": ("prepare", ["node_a"], "A to B; path names C"),
        "prepare_2hop_forward": ("prepare", ["node_b"],
                                 "B to C: all that B received, converted; expires a margin "
                                 "(8000 ms) sooner; path empty"),
        "line_settlement": ("line_settlement", ["node_a", "node_b"],
                            "B paid A outside Tally: 60 minutes = 90 cents at 3/2; as the two "
                            "nodes exchange it (each ledger adds k of its own stewards)"),
        "line_suspension": ("line", ["node_a"],
                            "A suspends line AB alone: version 2 of the line, the only change "
                            "active -> suspended, signed by A's node (A's stewards add theirs "
                            "on A's ledger)"),
        "node_record": ("node_record", ["node_a"],
                        "A's gossip record of itself: signed by the key it describes; lines "
                        "sorted by id; log_vkey is the node key under the log's origin"),
    }
    out = []
    for name, (kind, signers, note) in notes.items():
        assert s[name].msg.type == kind
        out.append(message_vector(name, s[name], signers, note))
    return out, s


def log_origin(side: str) -> str:
    return f"tally/{PARTY[side].ledger}"


def log_vkey(side: str) -> str:
    return format_verifier_key(log_origin(side), ALG_ED25519, PARTY[side].node_key.raw)


def evidence() -> list[dict[str, Any]]:
    """Equivocation evidence: A's node signed two checkpoints of one size, other roots."""
    signer = Ed25519Signer(log_origin("a"), seed("node_a"))
    notes = sorted(
        sign_note(format_checkpoint(log_origin("a"), 42,
                                    hashlib.sha256(f"tally protocol-v1 vector root {i}".encode())
                                    .digest()), [signer])
        for i in (1, 2))
    ev = same_size_evidence(log_vkey("a"), notes[0], notes[1])
    record = ev.to_json()
    return [{"name": "equivocation_same_size",
             "note": "two checkpoints of size 42 signed by node_a's log key, different roots; "
                     "proof empty; the smaller note (bytewise) first",
             "offender": "node_a", "record": record,
             "canonical": canonical_json(record).decode("utf-8"), "id": ev.id}]


def edge(line: Line) -> Edge:
    return Edge(line.id, line.a.node_key, line.b.node_key, line.rate_num, line.rate_den,
                line.a_limit, line.b_limit, line.version)


def log_entries(s: dict[str, Signed]) -> list[dict[str, Any]]:
    out = []
    for name, node_time in (("prepare", NOW + 10), ("fulfil", NOW + 250),
                            ("decision_void", NOW + 30_001)):
        entry = LogEntry(node_time, s[name])
        data = entry.encode()
        assert data == canonical_json(entry.to_json())
        out.append({"name": f"entry_{name}", "node_time": node_time, "payload": name,
                    "entry": data.decode("utf-8"),
                    "leaf_hash": hashlib.sha256(b"\x00" + data).hexdigest()})
    return out


def http_requests(s: dict[str, Signed]) -> list[dict[str, Any]]:
    out = []
    cases = (
        ("post_prepare", "POST", "/v1/peer/prepare", "",
         canonical_json({"prepare": s["prepare"].to_json()}), "node_a", "node_b"),
        ("get_graph", "GET", "/v1/peer/graph", "", b"", "node_b", "node_a"),
        ("post_settlement", "POST", "/v1/peer/settlements", "",
         canonical_json({"settlement": s["line_settlement"].to_json()}), "node_b", "node_a"),
    )
    for name, method, path, query, body, signer, recipient in cases:
        created = NOW // 1000 + 3
        nonce = "AAECAwQFBgcICQoLDA0ODw"  # b64url of bytes 0..15
        recipient_id = PUB[recipient].key_id
        signed_headers = sign_request(KEYS[signer], method=method, path=path, query=query,
                                      body=body, recipient_key_id=recipient_id,
                                      created=created, nonce=nonce)
        params = signed_headers["Signature-Input"].removeprefix("tally=")
        base = signature_base(method, path, query, content_digest(body), params)
        headers = {protocol_version.HEADER: str(protocol_version.VERSION)}
        if body:
            headers["Content-Type"] = "application/json"
        headers.update(signed_headers)
        out.append({
            "name": name, "method": method, "path": path, "query": query,
            "body": body.decode("utf-8"), "signer": signer, "recipient": recipient,
            "recipient_key_id": recipient_id, "created": created, "nonce": nonce,
            "signature_base": base.decode("utf-8"), "headers": headers,
        })
    return out


# (rate_num, rate_den, from_side, amount): awkward rates both ways, and one amount whose
# product with the rate needs more than 64 bits.
CONVERSIONS = [
    (3, 2, "a", 1), (3, 2, "a", 7), (3, 2, "b", 1), (3, 2, "b", 7), (3, 2, "b", 150),
    (7, 3, "a", 10), (7, 3, "b", 10), (1, 60, "a", 59), (1, 60, "a", 61), (1, 60, "b", 1),
    (100, 7, "a", 1), (100, 7, "b", 99), (999_999_999_999, 1_000_000_000_000, "a", 1_000_000),
    (999_999_999_999, 1_000_000_000_000, "b", 2**53 - 1), (1, 1, "a", 12345),
]


def conversions() -> list[dict[str, Any]]:
    out = []
    for num, den, side, amount in CONVERSIONS:
        line = Line(hex_id("rate"), 1, PARTY["a"], PARTY["b"], 0, 0, num, den, "active", 0)
        out.append({"rate_num": num, "rate_den": den, "from_side": side, "amount": amount,
                    "convert": line.convert(amount, side),  # type: ignore[arg-type]
                    "needed": line.needed(amount, side)})  # type: ignore[arg-type]
    return out


# Routes: each hop (rate_num, rate_den, sender_is_a) and what the payee must receive.
ROUTES = [
    ("two hops", [(3, 2, True), (1, 7, True)], 5),
    ("two hops, second line reversed", [(3, 2, True), (7, 1, False)], 5),
    ("three hops, awkward rates", [(7, 3, True), (100, 7, False), (13, 11, True)], 1000),
    ("three hops, rounding adds up", [(2, 3, True), (3, 2, True), (5, 7, True)], 1),
]


def routes() -> list[dict[str, Any]]:
    out = []
    for name, hops, amount in ROUTES:
        nodes = tuple(SecretKey(seed(f"route node {i}")).public for i in range(len(hops) + 1))
        edges = tuple(
            Edge(hex_id(f"route line {i}"), nodes[i] if a_sends else nodes[i + 1],
                 nodes[i + 1] if a_sends else nodes[i], num, den, 0, 0)
            for i, (num, den, a_sends) in enumerate(hops))
        sends = amounts(edges, nodes, amount)
        # What the PREPAREs carry: the source sends sends[0]; each hop forwards all it got.
        prepares = []
        received = sends[0]
        for i, e in enumerate(edges):
            sent = received
            received = e.convert(sent, nodes[i])
            prepares.append({"amount_from": sent, "amount_to": received})
        assert received >= amount
        out.append({"name": name, "amount": amount,
                    "hops": [{"rate_num": n, "rate_den": d, "sender_is_a": a}
                             for n, d, a in hops],
                    "sends": list(sends), "prepares": prepares, "arrives": received})
    return out


def verdicts(s: dict[str, Signed]) -> list[dict[str, Any]]:
    ours = s["statement"].msg
    assert isinstance(ours, Statement)
    cases = {
        "agree": Statement(ours.line, 1, PUB["node_b"], NOW + 5_100, 77, 100, 150,
                           ours.in_flight),
        "unsettled": Statement(ours.line, 1, PUB["node_b"], NOW + 5_100, 77, 100, 150,
                               ours.in_flight[:1]),
        "mismatch": Statement(ours.line, 1, PUB["node_b"], NOW + 5_100, 77, 100, 151,
                              ours.in_flight),
    }
    out = []
    for name, theirs in cases.items():
        verdict, _ = compare(ours, theirs)
        assert verdict == name
        out.append({"ours": "statement", "theirs": theirs.to_json(), "verdict": verdict})
    return out


def _with(doc: dict[str, Any], path: list[Any], value: Any) -> dict[str, Any]:
    doc = json.loads(json.dumps(doc))
    target = doc
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return doc


def invalid(s: dict[str, Signed]) -> list[dict[str, Any]]:
    """Bodies a strict parser must refuse, each with its result code."""
    fulfil = s["fulfil"].to_json()
    text = json.dumps
    cases = [
        ("float amount", text(s["payment_order"].to_json()).replace('"amount": 150',
                                                                    '"amount": 150.0'),
         "float_not_allowed"),
        ("duplicate key", text(fulfil).replace('"type": "fulfil"',
                                               '"type": "fulfil", "type": "fulfil"'),
         "duplicate_key"),
        ("integer beyond 2^53-1", text(_with(s["payment_order"].to_json(),
                                             ["msg", "max_pay"], 2**53)), "integer_out_of_range"),
        ("unknown field", text(_with(fulfil, ["msg", "extra"], 1)), "unknown_field"),
        ("missing field", text({"msg": {"type": "fulfil", "id": ATTEMPT},
                                "sigs": fulfil["sigs"]}), "missing_field"),
        ("uppercase hex id", text(_with(fulfil, ["msg", "id"], ATTEMPT.upper())),
         "invalid_field"),
        ("amount zero", text(_with(s["payment_order"].to_json(), ["msg", "amount"], 0)),
         "invalid_field"),
        ("decision outcome", text(_with(s["decision_post"].to_json(), ["msg", "outcome"],
                                        "maybe")), "invalid_field"),
        ("reject code not a code", text(_with(s["reject"].to_json(), ["msg", "code"],
                                              "Exceeds Line Limit")), "invalid_field"),
        ("path too long", text(_with(s["prepare"].to_json(), ["msg", "path"],
                                     [SecretKey(seed(f"hop {i}")).public.text
                                      for i in range(8)])), "invalid_field"),
        ("path names a node twice", text(_with(s["prepare"].to_json(), ["msg", "path"],
                                               [PUB["node_c"].text] * 2)), "invalid_field"),
        ("in_flight not sorted", text(_with(s["statement"].to_json(), ["msg", "in_flight"],
                                            list(reversed(s["statement"].msg.in_flight)))),  # type: ignore[union-attr]
         "invalid_field"),
        ("no signatures", text({"msg": fulfil["msg"], "sigs": []}), "invalid_field"),
        ("one key signs twice", text({"msg": fulfil["msg"], "sigs": fulfil["sigs"] * 2}),
         "invalid_field"),
        ("padded public key", text(_with(fulfil, ["sigs", 0, "key"],
                                         fulfil["sigs"][0]["key"] + "=")), "invalid_field"),
    ]
    return [{"name": n, "body": b, "code": c} for n, b, c in cases]


def unverifiable(s: dict[str, Signed]) -> list[dict[str, Any]]:
    """Signed messages that parse, but whose signature must not verify."""
    fulfil = s["fulfil"].to_json()
    sig = fulfil["sigs"][0]["sig"]
    # The same 64 bytes spelled with non-zero unused bits: not the canonical spelling.
    last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    respelled = sig[:-1] + last[last.index(sig[-1]) + 1]
    other = _with(fulfil, ["msg", "fulfilment"], FULFILMENT_2.hex())
    return [
        {"name": "signature spelled non-canonically",
         "signed": _with(fulfil, ["sigs", 0, "sig"], respelled)},
        {"name": "message changed after signing", "signed": other},
        {"name": "signed by another key",
         "signed": _with(fulfil, ["sigs", 0, "key"], PUB["node_a"].text)},
    ]


def build() -> dict[str, Any]:
    vectors, s = messages()
    return {
        "description": "Golden vectors of Tally's node-to-node protocol, version 1 "
                       "(docs/protocol.md). Generated by "
                       "`python -m tests.vectors.make_protocol_vectors`; every key, id and "
                       "time is made up.",
        "protocol": protocol_version.VERSION,
        "keys": [{"name": n, "seed": seed(n).hex(), "public_key": PUB[n].text,
                  "key_id": PUB[n].key_id} for n in KEY_NAMES],
        "fulfilments": [{"fulfilment": f.hex(), "condition": condition_of(f)}
                        for f in (FULFILMENT, FULFILMENT_2)],
        "messages": vectors,
        "log_entries": log_entries(s),
        "evidence": evidence(),
        "http_requests": http_requests(s),
        "conversions": conversions(),
        "routes": routes(),
        "reconciliation": verdicts(s),
        "invalid": invalid(s),
        "unverifiable": unverifiable(s),
    }


def render() -> str:
    return json.dumps(build(), indent=1, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    PATH.write_text(render(), encoding="utf-8")
    print(f"wrote {PATH}")
