"""Transfer bodies read in a signature worker (``node.intake``, ``Verifier.read_transfers``):
the worker must read exactly what parsing on the event loop reads — the same transfers, the
same signature verdicts, the same refusals — since the node now trusts what it answers."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from crypto.canonical import CanonicalError, canonical_json
from crypto.keys import SecretKey
from node import intake
from node.client import transfer_body
from node.intake import parse_batch, read_transfers, rebuild
from node.service import Verifier
from protocol.messages import MessageError, parse_message, sign_message
from tests.node.conftest import Collective

LEDGER = "ab" * 32
ANN = SecretKey.from_random(bytes(range(32)))
BO = SecretKey.from_random(bytes(range(1, 33)))


def mixed_items() -> list[dict[str, Any]]:
    """Transfers of every kind a batch may hold: plain, with a memo, forged, malformed, with
    a memo that does not match, with two signatures, with a field too many."""
    def body(i: int, **kw: Any) -> dict[str, Any]:
        return transfer_body(ANN, LEDGER, "ann", "bo", 1 + i, transfer_id=f"{i:032x}", **kw)

    items = [body(0), body(1, memo="rent, June"), body(2, memo="ünïcode ✓")]
    forged = body(3)
    forged["transfer"]["sigs"][0]["sig"] = body(4)["transfer"]["sigs"][0]["sig"]
    missing = body(5)
    del missing["transfer"]["msg"]["payee"]
    bad_memo = body(6, memo="tea")
    bad_memo["memo"]["text"] = "coffee"
    two = body(7)
    two["transfer"] = sign_message(parse_message(two["transfer"]["msg"]), ANN, BO).to_json()
    extra = body(8)
    extra["transfer"]["msg"]["colour"] = "red"
    return [*items, forged, missing, bad_memo, two, extra, body(9)]


def seen(read: list[Any]) -> list[Any]:
    """What a reading says of each item, comparably."""
    out: list[Any] = []
    for r in read:
        if isinstance(r, MessageError):
            out.append(("refused", r.code, r.message, r.field))
        else:
            item, check = r
            s = item.signed
            out.append((s, s.signed_bytes, s.canonical, item.memo, check))
    return out


def reference(body: bytes, max_batch: int) -> list[Any]:
    """Parsing and checking on the loop, the plain way."""
    out: list[Any] = []
    for p in parse_batch(body, max_batch):
        out.append(p if isinstance(p, MessageError) else (p, p.signed.verified_signers()))
    return out


async def test_worker_and_loop_read_a_batch_alike():
    items = mixed_items()
    body = canonical_json({"transfers": items})
    workers, on_loop = Verifier(1), Verifier(0)
    try:
        by_worker = await workers.read_transfers(body, 100)
        here = await on_loop.read_transfers(body, 100)
    finally:
        await workers.close()
    expected = seen(reference(body, 100))
    # The two-signature transfer comes back as JSON to parse again (read_transfers' "slow"
    # items); everything else is read in full.
    assert [r for r in by_worker if isinstance(r, bytes)] == [canonical_json(items[6])]
    plain = [i for i, r in enumerate(by_worker) if not isinstance(r, bytes)]
    assert seen([by_worker[i] for i in plain]) == [expected[i] for i in plain]
    assert seen([here[i] for i in plain]) == [expected[i] for i in plain]
    verdicts = [r[1][1] if isinstance(r, tuple) else r for r in by_worker]
    assert verdicts[:3] == [True, True, True] and verdicts[3] is False  # the forged one
    refused = {i: r.code.value for i, r in enumerate(by_worker) if isinstance(r, MessageError)}
    assert refused == {4: "missing_field", 5: "invalid_field", 7: "unknown_field"}


async def test_node_reads_every_transfer_like_the_loop(coop: Collective):
    """``Node.read_transfers`` (workers, then the two-signature one parsed on the loop) gives
    exactly what parsing and checking on the loop give, item by item."""
    body = canonical_json({"transfers": mixed_items()})
    assert seen(await coop.node.read_transfers(body, 100)) == seen(reference(body, 100))
    one = canonical_json(mixed_items()[1])
    ((item, check),) = await coop.node.read_transfers(one)  # type: ignore[misc]
    assert item.memo is not None and item.memo.text == "rent, June" and check[1]


BAD_BODIES = [
    (b"{", CanonicalError, "invalid_json"),
    (b'{"transfers": [], "transfers": []}', CanonicalError, "duplicate_key"),
    (b'{"transfers": [{"amount": 1.5}]}', CanonicalError, "float_not_allowed"),
    (b"[]", MessageError, "invalid_field"),
    (b'{"transfer": []}', MessageError, "unknown_field"),
    (b'{"transfers": []}', MessageError, "invalid_field"),
    (b'{"transfers": {}}', MessageError, "invalid_field"),
    (json.dumps({"transfers": [{}] * 3}).encode(), MessageError, "batch_too_large"),
]


@pytest.mark.parametrize(("body", "error", "code"), BAD_BODIES)
async def test_a_body_refused_whole_is_refused_the_same_from_a_worker(body, error, code):
    workers = Verifier(1)
    try:
        with pytest.raises(error) as by_worker:
            await workers.read_transfers(body, 2)
    finally:
        await workers.close()
    with pytest.raises(error) as here:
        parse_batch(body, 2)
    got, want = by_worker.value, here.value
    assert code_of(got) == code_of(want) == code
    assert (got.message, getattr(got, "field", None)) == (  # type: ignore[attr-defined]
        want.message, getattr(want, "field", None))  # type: ignore[attr-defined]


def code_of(exc: BaseException) -> str:
    code = exc.code  # type: ignore[attr-defined]
    return code if isinstance(code, str) else code.value


async def test_a_single_transfer_body_refused_names_the_body():
    workers = Verifier(1)
    try:
        with pytest.raises(MessageError) as exc:
            await workers.read_transfers(b'{"transfer": {"msg": {}, "sigs": []}, "x": 1}')
    finally:
        await workers.close()
    assert exc.value.code.value == "unknown_field" and "body" in exc.value.message


def test_a_bug_while_reading_fails_the_request_not_the_worker(monkeypatch, capsys):
    """Anything but a refusal raised while reading is answered as a failure (the request gets
    a 500, nothing is applied) instead of ending the worker process."""
    def broken(body: bytes, max_batch: int) -> list[Any]:
        raise KeyError("oops")

    monkeypatch.setattr(intake, "parse_batch", broken)
    answer = read_transfers(b'{"transfers": []}', 5)
    with pytest.raises(RuntimeError, match="KeyError"):
        rebuild(answer)
    assert "KeyError" in capsys.readouterr().err


async def test_a_two_signature_transfer_is_refused_alone_in_a_batch(coop: Collective):
    ledger = coop.node.ledger.ledger_id
    good = transfer_body(coop.alice, ledger, "alice", "bob", 3)
    two = transfer_body(coop.alice, ledger, "alice", "bob", 4)
    two["transfer"] = sign_message(parse_message(two["transfer"]["msg"]), coop.alice,
                                   SecretKey(os.urandom(32))).to_json()
    results = (await coop.client.submit_batch([good, two, good]))["results"]
    assert [r["result"] for r in results] == ["ok", "bad_signature", "exists"]
