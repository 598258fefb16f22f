"""Every refusal is a 4xx RFC 9457 problem with a stable code, and writes nothing.

One table: each row builds a bad request (doing any setup it needs first), and the test
checks the status, the media type, the problem members, and that the logical dump of the
database is the same after the refusal as before it.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from crypto.keys import SecretKey
from node import server as node_server
from node.api import make_app
from node.client import new_id, now_ms, transfer_body
from node.config import Config
from node.service import Node, init_data_dir
from protocol.messages import Admit, parse_signed, sign_message
from tests.node.conftest import Collective

Data = bytes | Callable[[], AsyncIterator[bytes]]


@dataclass(frozen=True)
class Bad:
    data: Data
    path: str = "/v1/transfers"
    content_type: str = "application/json"


def encode(body: Any) -> bytes:
    return json.dumps(body).encode()


def transfer(
    coop: Collective,
    payer: str = "alice",
    payee: str = "bob",
    amount: int = 5,
    key: SecretKey | None = None,
    **kw: Any,
) -> dict[str, Any]:
    signer = key if key is not None else {"alice": coop.alice, "bob": coop.bob}[payer]
    return transfer_body(signer, coop.node.ledger.ledger_id, payer, payee, amount, **kw)


def raw_amount(coop: Collective, literal: str) -> bytes:
    """A transfer whose amount is written as ``literal`` (which cannot be signed canonically)."""
    text = json.dumps(transfer(coop, amount=4242))
    assert text.count('"amount": 4242') == 1
    return text.replace('"amount": 4242', f'"amount": {literal}').encode()


def admit_msg(coop: Collective, handle: str, key: SecretKey | None = None) -> Admit:
    return Admit(
        ledger=coop.node.ledger.ledger_id,
        id=new_id(),
        valid_until=now_ms() + 3600_000,
        handle=handle,
        key=(key or SecretKey(os.urandom(32))).public,
        debit_limit=100,
        credit_limit=100,
    )


def chunks(data: bytes) -> Callable[[], AsyncIterator[bytes]]:
    async def gen() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 8192):
            yield data[start : start + 8192]

    return gen


# --- the bad requests -------------------------------------------------------------------------


async def forged_by_other_key(coop: Collective) -> Bad:
    # Bob signs a transfer that takes money from alice.
    return Bad(encode(transfer(coop, "alice", "bob", key=coop.bob)))


async def forged_in_payers_name(coop: Collective) -> Bad:
    # Alice's key is named, but the signature is bob's over the same message.
    body = transfer(coop)
    forged = sign_message(parse_signed(body["transfer"]).msg, coop.bob)
    body["transfer"]["sigs"][0]["sig"] = forged.sigs[0].sig
    return Bad(encode(body))


async def tampered_amount(coop: Collective) -> Bad:
    body = transfer(coop, amount=5)
    body["transfer"]["msg"]["amount"] = 500
    return Bad(encode(body))


async def sig_not_base64url(coop: Collective) -> Bad:
    body = transfer(coop)
    body["transfer"]["sigs"][0]["sig"] = "!" * 86
    return Bad(encode(body))


async def sig_too_short(coop: Collective) -> Bad:
    body = transfer(coop)
    body["transfer"]["sigs"][0]["sig"] = body["transfer"]["sigs"][0]["sig"][:-2]
    return Bad(encode(body))


async def sig_not_canonical(coop: Collective) -> Bad:
    # 86 characters of base64url, but the last one has padding bits set: not one spelling.
    body = transfer(coop)
    sig = body["transfer"]["sigs"][0]["sig"]
    body["transfer"]["sigs"][0]["sig"] = sig[:-1] + ("B" if sig[-1] != "B" else "C")
    return Bad(encode(body))


async def other_ledger(coop: Collective) -> Bad:
    body = transfer_body(coop.alice, "ab" * 32, "alice", "bob", 5)
    return Bad(encode(body))


async def expired(coop: Collective) -> Bad:
    return Bad(encode(transfer(coop, valid_for_ms=-60_000)))


async def too_far(coop: Collective) -> Bad:
    window = coop.node.config.ledger.max_valid_window_seconds * 1000
    return Bad(encode(transfer(coop, valid_for_ms=window + 3600_000)))


async def reused_id(coop: Collective) -> Bad:
    first = transfer(coop, amount=5)
    await coop.client.submit_transfer(first)
    again = transfer(coop, amount=6, transfer_id=first["transfer"]["msg"]["id"])
    return Bad(encode(again))


async def reused_act_id(coop: Collective) -> Bad:
    # Ids are unique across every kind of event: an admission's id cannot name a transfer.
    receipt = await coop.client.admit("carol", SecretKey(os.urandom(32)).public, [coop.steward])
    return Bad(encode(transfer(coop, transfer_id=receipt["id"])))


async def amount_zero(coop: Collective) -> Bad:
    return Bad(encode(transfer(coop, amount=0)))


async def amount_negative(coop: Collective) -> Bad:
    # Bob "pays" alice -5: taking money from her with his own signature.
    return Bad(encode(transfer(coop, "bob", "alice", amount=-5)))


async def amount_2_53(coop: Collective) -> Bad:
    return Bad(raw_amount(coop, str(2**53)))


async def amount_huge(coop: Collective) -> Bad:
    return Bad(raw_amount(coop, "9" * 4000))


async def amount_float(coop: Collective) -> Bad:
    return Bad(raw_amount(coop, "1.5"))


async def amount_exponent(coop: Collective) -> Bad:
    return Bad(raw_amount(coop, "5e0"))


async def duplicate_key_in_msg(coop: Collective) -> Bad:
    return Bad(raw_amount(coop, '5, "amount": 500'))


async def duplicate_key_top(coop: Collective) -> Bad:
    inner = json.dumps(transfer(coop)["transfer"])
    return Bad(f'{{"transfer": {inner}, "transfer": {inner}}}'.encode())


async def unknown_field_top(coop: Collective) -> Bad:
    body = transfer(coop)
    body["priority"] = 1
    return Bad(encode(body))


async def unknown_field_msg(coop: Collective) -> Bad:
    body = transfer(coop)
    body["transfer"]["msg"]["fee"] = 1
    return Bad(encode(body))


async def missing_field_msg(coop: Collective) -> Bad:
    body = transfer(coop)
    del body["transfer"]["msg"]["payee"]
    return Bad(encode(body))


async def missing_field_top(coop: Collective) -> Bad:
    return Bad(encode({"memo": {"text": "hi", "salt": "00" * 16}}))


async def over_cap(coop: Collective) -> Bad:
    cap = coop.node.config.api.max_body_bytes
    return Bad(encode({"transfer": "x" * cap}))


async def over_cap_chunked(coop: Collective) -> Bad:
    cap = coop.node.config.api.max_body_bytes
    return Bad(chunks(encode({"transfer": "x" * cap})))


async def batch_over_cap(coop: Collective) -> Bad:
    cap = coop.node.config.api.max_batch_body_bytes
    return Bad(encode({"transfers": ["x" * cap]}), path="/v1/transfers/batch")


async def not_json(coop: Collective) -> Bad:
    return Bad(b"pay bob 5")


async def not_utf8(coop: Collective) -> Bad:
    return Bad(b'{"transfer": "\xff"}')


async def non_ascii_key(coop: Collective) -> Bad:
    return Bad('{"tränsfer": {}}'.encode())


async def lone_surrogate(coop: Collective) -> Bad:
    body = transfer(coop)
    body["memo"] = {"text": "\ud800", "salt": "00" * 16}
    return Bad(json.dumps(body).encode())


async def not_an_object(coop: Collective) -> Bad:
    return Bad(encode([transfer(coop)]))


async def text_plain(coop: Collective) -> Bad:
    return Bad(encode(transfer(coop)), content_type="text/plain")


async def form_encoded(coop: Collective) -> Bad:
    return Bad(b"payer=alice&payee=bob", content_type="application/x-www-form-urlencoded")


async def unknown_payee(coop: Collective) -> Bad:
    return Bad(encode(transfer(coop, payee="zed")))


async def unknown_payer(coop: Collective) -> Bad:
    return Bad(encode(transfer(coop, payer="zed", key=SecretKey(os.urandom(32)))))


async def closed_payee(coop: Collective) -> Bad:
    await coop.add_member("carol")
    await coop.client.act("close", [coop.steward], handle="carol")
    return Bad(encode(transfer(coop, payee="carol")))


async def closed_payer(coop: Collective) -> Bad:
    carol = await coop.add_member("carol")
    await coop.client.act("close", [coop.steward], handle="carol")
    return Bad(encode(transfer(coop, payer="carol", key=carol)))


async def over_debit_limit(coop: Collective) -> Bad:
    return Bad(encode(transfer(coop, amount=1001)))


async def over_debit_limit_after_spending(coop: Collective) -> Bad:
    await coop.client.submit_transfer(transfer(coop, amount=990))
    return Bad(encode(transfer(coop, amount=11)))


async def over_credit_limit(coop: Collective) -> Bad:
    await coop.client.act(
        "set_limits", [coop.steward], handle="bob", debit_limit=1000, credit_limit=10
    )
    return Bad(encode(transfer(coop, amount=11)))


async def same_account(coop: Collective) -> Bad:
    return Bad(encode(transfer(coop, "alice", "alice")))


async def act_by_member(coop: Collective) -> Bad:
    return Bad(encode(sign_message(admit_msg(coop, "mallory"), coop.alice).to_json()), "/v1/acts")


async def act_bad_signature(coop: Collective) -> Bad:
    body = sign_message(admit_msg(coop, "carol"), coop.steward).to_json()
    body["msg"]["debit_limit"] = 10**6
    return Bad(encode(body), "/v1/acts")


async def admit_existing(coop: Collective) -> Bad:
    return Bad(encode(sign_message(admit_msg(coop, "bob"), coop.steward).to_json()), "/v1/acts")


async def admit_key_in_use(coop: Collective) -> Bad:
    msg = admit_msg(coop, "alice2", key=coop.alice)
    return Bad(encode(sign_message(msg, coop.steward).to_json()), "/v1/acts")


async def transfer_as_act(coop: Collective) -> Bad:
    return Bad(encode(transfer(coop)["transfer"]), "/v1/acts")


async def batch_too_large(coop: Collective) -> Bad:
    one = transfer(coop)
    count = coop.node.config.api.max_batch + 1
    return Bad(encode({"transfers": [one] * count}), "/v1/transfers/batch")


async def batch_empty(coop: Collective) -> Bad:
    return Bad(encode({"transfers": []}), "/v1/transfers/batch")


Builder = Callable[[Collective], Awaitable[Bad]]

CASES: list[tuple[Builder, int, str]] = [
    (forged_by_other_key, 422, "bad_signature"),
    (forged_in_payers_name, 422, "bad_signature"),
    (tampered_amount, 422, "bad_signature"),
    (sig_not_base64url, 400, "invalid_field"),
    (sig_too_short, 400, "invalid_field"),
    (sig_not_canonical, 422, "bad_signature"),
    (other_ledger, 422, "ledger_mismatch"),
    (expired, 422, "expired"),
    (too_far, 422, "valid_until_too_far"),
    (reused_id, 409, "exists_with_different_fields"),
    (reused_act_id, 409, "exists_with_different_fields"),
    (amount_zero, 422, "amount_must_be_positive"),
    (amount_negative, 422, "amount_must_be_positive"),
    (amount_2_53, 400, "integer_out_of_range"),
    (amount_huge, 400, "integer_out_of_range"),
    (amount_float, 400, "float_not_allowed"),
    (amount_exponent, 400, "float_not_allowed"),
    (duplicate_key_in_msg, 400, "duplicate_key"),
    (duplicate_key_top, 400, "duplicate_key"),
    (unknown_field_top, 400, "unknown_field"),
    (unknown_field_msg, 400, "unknown_field"),
    (missing_field_msg, 400, "missing_field"),
    (missing_field_top, 400, "missing_field"),
    (over_cap, 413, "body_too_large"),
    (over_cap_chunked, 413, "body_too_large"),
    (batch_over_cap, 413, "body_too_large"),
    (not_json, 400, "invalid_json"),
    (not_utf8, 400, "invalid_json"),
    (non_ascii_key, 400, "invalid_json"),
    (lone_surrogate, 400, "invalid_json"),
    (not_an_object, 400, "invalid_field"),
    (text_plain, 415, "unsupported_media_type"),
    (form_encoded, 415, "unsupported_media_type"),
    (unknown_payee, 422, "account_not_found"),
    (unknown_payer, 422, "account_not_found"),
    (closed_payee, 422, "account_closed"),
    (closed_payer, 422, "account_closed"),
    (over_debit_limit, 422, "exceeds_debit_limit"),
    (over_debit_limit_after_spending, 422, "exceeds_debit_limit"),
    (over_credit_limit, 422, "exceeds_credit_limit"),
    (same_account, 422, "same_account"),
    (act_by_member, 422, "not_enough_steward_signatures"),
    (act_bad_signature, 422, "bad_signature"),
    (admit_existing, 409, "account_exists"),
    (admit_key_in_use, 409, "key_in_use"),
    (transfer_as_act, 400, "invalid_field"),
    (batch_too_large, 413, "batch_too_large"),
    (batch_empty, 400, "invalid_field"),
]


@pytest.mark.parametrize(("build", "status", "code"), CASES, ids=[c[0].__name__ for c in CASES])
async def test_refusal_is_a_problem_and_writes_nothing(
    coop: Collective, build: Builder, status: int, code: str
) -> None:
    bad = await build(coop)
    before = await coop.dump_unprompted()
    async with aiohttp.ClientSession() as session:
        async with session.post(
            coop.url + bad.path,
            # BytesIO: aiohttp warns about raw bytes over 1 MiB; it still sends Content-Length.
            data=bad.data() if callable(bad.data) else io.BytesIO(bad.data),
            headers={"Content-Type": bad.content_type},
        ) as resp:
            problem = await resp.json(content_type=None)
            assert (resp.status, resp.content_type) == (status, "application/problem+json"), problem
        assert problem["code"] == code, problem
        assert problem["status"] == status
        assert problem["type"] == f"/problems/{code}"
        assert isinstance(problem["title"], str) and problem["title"]
        assert isinstance(problem["detail"], str) and problem["detail"]
        assert problem["instance"] == bad.path
        # The problem type resolves to a document naming the same code and status.
        async with session.get(coop.url + problem["type"]) as doc:
            assert doc.status == 200
            assert await doc.json() == {"code": code, "status": status}
    assert await coop.dump_unprompted() == before


async def test_identical_retry_answers_exists_with_the_original_index(coop: Collective) -> None:
    body = encode(transfer(coop, amount=7, memo="bread"))
    async with aiohttp.ClientSession() as session:
        headers = {"Content-Type": "application/json"}
        async with session.post(coop.url + "/v1/transfers", data=body, headers=headers) as first:
            assert first.status == 201
            receipt = await first.json()
        after_first = await coop.dump_unprompted()
        async with session.post(coop.url + "/v1/transfers", data=body, headers=headers) as retry:
            assert retry.status == 200
            again = await retry.json()
    assert receipt["result"] == "ok" and again["result"] == "exists"
    assert again["index"] == receipt["index"]
    assert {k: v for k, v in again.items() if k != "result"} == {
        k: v for k, v in receipt.items() if k != "result"
    }
    assert await coop.dump_unprompted() == after_first
    accounts = {a["handle"]: a["balance"] for a in await _accounts(coop)}
    assert accounts == {"alice": -7, "bob": 7}


async def _accounts(coop: Collective) -> list[dict[str, Any]]:
    async with coop.as_member(coop.steward) as steward:
        return await steward.accounts()


async def test_a_client_hanging_up_mid_body_is_refused_not_an_internal_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A connection cut halfway through a body (found by the fault harness: a peer's
    PREPARE cut by the network) is a 400 ``invalid_json`` nobody reads, and nothing is
    logged as an internal error."""
    data = tmp_path / "node"
    await init_data_dir(data)
    answered: asyncio.Queue[tuple[str, int, str]] = asyncio.Queue()

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        response = await handler(request)  # the answer the node gives, delivered or not
        assert isinstance(response, web.Response) and response.body is not None
        code = json.loads(bytes(response.body)).get("code", "")  # type: ignore[arg-type]
        answered.put_nowait((request.path, response.status, code))
        return response

    def recording_app(node: Node) -> web.Application:
        app = make_app(node)
        app.middlewares.insert(0, record)
        return app

    monkeypatch.setattr(node_server, "make_app", recording_app)
    served = await node_server.serve(Node(data, Config()), "127.0.0.1", 0)
    try:
        host, port = served.url.removeprefix("http://").rsplit(":", 1)
        _, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"POST /v1/transfers HTTP/1.1\r\nHost: tally\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 400\r\n\r\n"
                     b'{"transfer": {"msg": ')
        await writer.drain()
        writer.transport.abort()
        path, status, code = await asyncio.wait_for(answered.get(), timeout=30)
        assert (path, status, code) == ("/v1/transfers", 400, "invalid_json")
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    finally:
        await served.close()
