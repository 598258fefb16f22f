"""The HTTP API, version 1: thin handlers over ``node.service.Node``.

Layer: node. Each handler parses (strictly), authenticates, hands the work to the node and
shapes the answer. Refusals are raised as ``Problem`` and rendered at one boundary
(``node.problems``). The OpenAPI document (``node.openapi``) describes every route here, and
a test keeps the two in step.

Public: ``/v1/health``, ``/v1/info``, ``/v1/openapi.json``, ``/problems/{code}``.
Signed in the body (a member's or stewards' signature over the message itself):
``POST /v1/transfers``, ``POST /v1/transfers/batch``, ``POST /v1/acts``.
Signed requests (HTTP message signature by a member's or steward's key): every other read.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from crypto.canonical import parse_json
from crypto.httpsig import VerifiedRequest, verify_request
from crypto.keys import PublicKey
from node import storage
from node.config import payment_answer_ms
from node.intake import Memo, TransferItem
from node.openapi import openapi_document
from node.problems import Problem, problem_middleware
from node.ratelimit import RateLimiter
from node.service import Node
from protocol import version as protocol_version
from protocol.codes import ResultCode
from protocol.ledger import Outcome, SigCheck
from protocol.messages import (
    HEX32_RE,
    STEWARD_ACT_TYPES,
    MessageError,
    Signed,
    Transfer,
    parse_log_entry,
    parse_signed,
)
from protocol.messages import (
    handle as check_handle,
)

NODE = web.AppKey("node", Node)
LIMITER = web.AppKey("limiter", RateLimiter)  # per member or steward key
PEER_LIMITER = web.AppKey("peer_limiter", RateLimiter)  # per peer node key

JSON_TYPES = ("application/json", "application/problem+json")


# --- request helpers ----------------------------------------------------------------------


BODY = web.RequestKey("body", bytes)


async def read_body(request: web.Request, cap: int) -> bytes:
    """The request body, at most ``cap`` bytes; read once and kept on the request.

    The whole body must arrive within ``[api] body_timeout_seconds`` of starting to read it:
    a client sending it a byte at a time gets 408 ``request_timeout`` and its connection is
    closed, rather than holding a handler for as long as it likes."""
    if BODY in request:
        return request[BODY]
    if request.content_length is not None and request.content_length > cap:
        raise Problem(ResultCode.body_too_large, f"the body may be at most {cap} bytes here")
    if request.content.is_eof() and request.content.exception() is None:
        # The whole body is already here (a small one arrives with its headers): take it
        # without a timer, which costs more than the read (a few % of a transfer's CPU).
        # (A client that hung up after sending it has set an exception: the path below.)
        whole = request.content.read_nowait()
        if len(whole) > cap:
            raise Problem(ResultCode.body_too_large, f"the body may be at most {cap} bytes here")
        request[BODY] = whole
        return whole
    seconds = request.app[NODE].config.api.body_timeout_seconds
    data = bytearray()
    try:
        async with asyncio.timeout(seconds):
            while chunk := await request.content.read(65536):
                data += chunk
                if len(data) > cap:
                    raise Problem(ResultCode.body_too_large,
                                  f"the body may be at most {cap} bytes here")
    except TimeoutError:
        raise Problem(
            ResultCode.request_timeout,
            f"the request body did not arrive within {seconds}s; nothing was applied. "
            "Check the connection and retry.",
            close=True,
        ) from None
    except ConnectionResetError as exc:
        # The client hung up mid-body: a refusal like any other body that is not JSON, not
        # an internal error (nobody is left to read the answer; nothing was applied).
        raise Problem(ResultCode.invalid_json,
                      "the connection closed before the whole body arrived") from exc
    request[BODY] = bytes(data)
    return request[BODY]


def check_json_type(request: web.Request) -> None:
    if request.content_type not in JSON_TYPES:
        raise Problem(
            ResultCode.unsupported_media_type,
            f"send the body as application/json, not {request.content_type or 'nothing'}",
        )


async def read_json(request: web.Request, cap: int) -> Any:
    check_json_type(request)
    return parse_json(await read_body(request, cap))


def limit_rate(
    request: web.Request, key: str, cost: float = 1.0,
    limiter: web.AppKey[RateLimiter] = LIMITER,
) -> None:
    wait = request.app[limiter].take(key, cost)
    if wait > 0:
        seconds = max(1, int(wait + 0.999))
        raise Problem(
            ResultCode.rate_limited,
            f"too many requests from this key; retry in {seconds}s",
            headers={"Retry-After": str(seconds)},
        )


@dataclass(frozen=True)
class Reader:
    key: PublicKey
    handle: str | None
    steward: bool


async def verify_signed(request: web.Request, skew: int) -> VerifiedRequest:
    """Check an HTTP message signature meant for this node: signature, recipient, freshness.

    The caller checks who the signer is, then calls ``consume_nonce``: a refused request
    writes nothing, not even its nonce."""
    node = request.app[NODE]
    body = await read_body(request, node.config.api.max_body_bytes)
    now = node.clock_ms() // 1000
    verified = verify_request(
        method=request.method,
        # RFC 9421: the path and query as sent (percent-encoded), not as decoded.
        path=request.rel_url.raw_path,
        query=request.rel_url.raw_query_string,
        headers={k.lower(): v for k, v in request.headers.items()},
        body=body,
        recipient_key_id=node.node_key.public.key_id,
        now=now,
        max_skew=skew,
    )
    return verified


async def consume_nonce(
    request: web.Request, verified: VerifiedRequest, skew: int,
    limiter: web.AppKey[RateLimiter] = LIMITER,
) -> None:
    """Remember the nonce durably (until the request could no longer be fresh), so a replay
    is refused even after a restart; rate-limit the signer."""
    node = request.app[NODE]
    limit_rate(request, verified.signer.text, limiter=limiter)
    assert node.writer is not None
    if not await node.writer.remember_nonce(verified.nonce, verified.created + skew):
        raise Problem(ResultCode.replayed_request, "this signed request was already used")


async def authenticate(request: web.Request) -> Reader:
    """Check a member's or steward's signed request, and say who they are."""
    node = request.app[NODE]
    skew = node.config.api.request_skew_seconds
    verified = await verify_signed(request, skew)
    state = node.ledger
    handle = state.key_owner(verified.signer)
    steward = verified.signer in state.stewards
    if handle is None and not steward:
        raise Problem(
            ResultCode.unknown_signer,
            "the signing key belongs to no member or steward of this collective",
        )
    await consume_nonce(request, verified, skew)
    return Reader(verified.signer, handle, steward)


def may_read_account(request: web.Request, reader: Reader, handle: str) -> None:
    node = request.app[NODE]
    if reader.steward or reader.handle == handle:
        return
    if node.config.ledger.books == "open" and reader.handle is not None:
        return
    raise Problem(
        ResultCode.forbidden,
        "this collective keeps balances private: members may read only their own account",
    )


def receipt(signed: Signed, outcome: Outcome) -> dict[str, Any]:
    msg = signed.msg
    out: dict[str, Any] = {
        "result": outcome.code.value,
        "type": msg.type,
        "id": getattr(msg, "id", None),
        "ledger": getattr(msg, "ledger", None),
        "index": outcome.index,
    }
    if isinstance(msg, Transfer):
        out.update(payer=msg.payer, payee=msg.payee, amount=msg.amount)
    elif hasattr(msg, "handle"):
        out["handle"] = msg.handle
    return out


def refusal(outcome: Outcome) -> Problem:
    return Problem(outcome.code, outcome.detail or outcome.code.value.replace("_", " "))


# --- handlers -------------------------------------------------------------------------------


async def health(request: web.Request) -> web.Response:
    node = request.app[NODE]
    return web.json_response({"status": "ok", "log_size": node.ledger.size})


def info_document(node: Node) -> dict[str, Any]:
    state = node.ledger
    g = state.genesis
    cfg = node.config
    return {
        "name": g.name,
        "ledger_id": state.ledger_id,
        "node_key": node.node_key.public.text,
        "node_key_id": node.node_key.public.key_id,
        "unit": g.unit.to_json(),
        "stewards": sorted(k.text for k in state.stewards),
        "threshold": state.threshold,
        "defaults": {
            "debit_limit": cfg.ledger.default_debit_limit,
            "credit_limit": cfg.ledger.default_credit_limit,
        },
        "books": cfg.ledger.books,
        "max_valid_window_seconds": cfg.ledger.max_valid_window_seconds,
        "request_skew_seconds": cfg.api.request_skew_seconds,
        "max_batch": cfg.api.max_batch,
        "payment_answer_seconds": -(-payment_answer_ms(cfg.federation) // 1000),
        "log_size": state.size,
        "api_version": "v1",
        "protocols": list(protocol_version.SUPPORTED),  # node-to-node versions it speaks
        "software": "tally 0.1.0",
    }


async def info(request: web.Request) -> web.Response:
    return web.json_response(info_document(request.app[NODE]))


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


async def problem_doc(request: web.Request) -> web.Response:
    code = request.match_info["code"]
    if code not in ResultCode.__members__:
        raise Problem(ResultCode.not_found, f"no result code {code!r}")
    return web.json_response({"code": code, "status": Problem(ResultCode(code), "").status})


async def _apply_one(node: Node, signed: Signed, memo: Memo | None) -> Outcome:
    sigcheck = (await node.verify([signed]))[0]
    assert node.writer is not None
    return await node.writer.submit(signed, sigcheck, memo)


def _accepted(signed: Signed, outcome: Outcome) -> web.Response:
    if outcome.code == ResultCode.ok:
        return web.json_response(receipt(signed, outcome), status=201)
    if outcome.code == ResultCode.exists:
        return web.json_response(receipt(signed, outcome), status=200)
    raise refusal(outcome)


async def post_transfer(request: web.Request) -> web.Response:
    node = request.app[NODE]
    check_json_type(request)
    # Parsed and its signature checked in a signature worker, so the rate limit is taken
    # after the check (a forger cannot spend a member's allowance).
    # One transfer's body: one item, never a MessageError (that refuses the whole body).
    ((item, check),) = await node.read_transfers(  # type: ignore[misc]
        await read_body(request, node.config.api.max_body_bytes))
    limit_rate(request, item.signed.sigs[0].key.text)
    assert node.writer is not None
    return _accepted(item.signed, await node.writer.submit(item.signed, check, item.memo))


async def post_batch(request: web.Request) -> web.Response:
    node = request.app[NODE]
    cfg = node.config.api
    check_json_type(request)
    read = await node.read_transfers(
        await read_body(request, cfg.max_batch_body_bytes), cfg.max_batch)
    results: list[dict[str, Any] | None] = [None] * len(read)
    items: list[tuple[int, TransferItem, SigCheck]] = []
    for i, r in enumerate(read):
        if isinstance(r, MessageError):
            results[i] = {"result": r.code.value, "detail": r.message}
        else:
            items.append((i, r[0], r[1]))
    if items:
        keys = {item.signed.sigs[0].key for _, item, _ in items}
        for key in keys:
            limit_rate(request, key.text, cost=max(1.0, len(items) / len(keys) / 10))
        assert node.writer is not None
        outcomes = await node.writer.submit_batch(
            [(item.signed, check, item.memo) for _, item, check in items]
        )
        for (i, item, _), outcome in zip(items, outcomes):
            if outcome.code in (ResultCode.ok, ResultCode.exists):
                results[i] = receipt(item.signed, outcome)
            else:
                results[i] = {
                    "result": outcome.code.value,
                    "id": getattr(item.signed.msg, "id", None),
                    "detail": outcome.detail,
                }
    accepted = sum(1 for r in results if r and r["result"] in ("ok", "exists"))
    return web.json_response({"accepted": accepted, "results": results})


async def post_act(request: web.Request) -> web.Response:
    node = request.app[NODE]
    body = await read_json(request, node.config.api.max_body_bytes)
    signed = parse_signed(body, STEWARD_ACT_TYPES)
    limit_rate(request, signed.sigs[0].key.text)
    return _accepted(signed, await _apply_one(node, signed, None))


async def whoami(request: web.Request) -> web.Response:
    reader = await authenticate(request)
    return web.json_response(
        {"key": reader.key.text, "handle": reader.handle, "steward": reader.steward}
    )


async def list_accounts(request: web.Request) -> web.Response:
    reader = await authenticate(request)
    node = request.app[NODE]
    if not reader.steward and node.config.ledger.books != "open":
        raise Problem(
            ResultCode.forbidden,
            "this collective keeps balances private: only stewards may list accounts",
        )
    assert node.reader is not None
    # One statement, so one snapshot: the balances and the log size they reflect (an
    # auditor compares them with a replay of exactly that many entries).
    columns = ", ".join(f"a.{c.strip()}" for c in storage.ACCOUNT_COLUMNS.split(","))
    async with node.reader.execute(
        f"SELECT n.size, {columns} FROM (SELECT COALESCE(MAX(idx) + 1, 0) AS size FROM log) n "
        "LEFT JOIN accounts a ORDER BY a.handle"
    ) as cur:
        rows = list(await cur.fetchall())
    accounts = [storage.account_from_row(row[1:]).to_json()
                for row in rows if row[1] is not None]
    return web.json_response({"accounts": accounts, "log_size": int(rows[0][0])})


async def _account_or_404(node: Node, handle: str) -> dict[str, Any]:
    assert node.reader is not None
    async with node.reader.execute(
        f"SELECT {storage.ACCOUNT_COLUMNS} FROM accounts WHERE handle = ?", (handle,)
    ) as cur:
        row = await cur.fetchone()
    if row is None:
        # 404, not the 422 a transfer naming an unknown account gets: a read of no resource.
        raise Problem(ResultCode.account_not_found, f"no account {handle!r}", status=404)
    return storage.account_from_row(row).to_json()


def _path_handle(request: web.Request) -> str:
    value = request.match_info["handle"]
    check_handle("handle", value)
    return value


async def get_account(request: web.Request) -> web.Response:
    reader = await authenticate(request)
    handle = _path_handle(request)
    may_read_account(request, reader, handle)
    return web.json_response(await _account_or_404(request.app[NODE], handle))


def _int_param(request: web.Request, name: str, default: int | None, low: int, high: int) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    # isdigit() alone takes "²" (int() fails) and 5,000 digits (over int()'s limit): a 500.
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 16) or not low <= int(raw) <= high:
        raise Problem(
            ResultCode.invalid_field, f"query {name} must be an integer from {low} to {high}",
            field=name,
        )
    return int(raw)


async def get_history(request: web.Request) -> web.Response:
    reader = await authenticate(request)
    node = request.app[NODE]
    handle = _path_handle(request)
    may_read_account(request, reader, handle)
    await _account_or_404(node, handle)
    page_max = node.config.api.history_page_max
    limit = _int_param(request, "limit", 50, 1, page_max)
    cursor = _int_param(request, "cursor", None, 0, 2**53 - 1)
    assert limit is not None
    postings = node.history(handle, cursor, limit)
    next_cursor = postings[-1].index if len(postings) == limit else None
    return web.json_response(
        {"handle": handle, "postings": [_posting(node, p) for p in postings],
         "next": next_cursor}
    )


def _posting(node: Node, posting: storage.Posting) -> dict[str, Any]:
    """A posting as members read it: with ``across`` (null for a transfer here), the member
    and collective at the far end of a payment across collectives and those in between,
    as the PREPARE this node logged names them (``counterparty`` names only the adjacent
    collective, whose peer account the payment moved)."""
    doc = posting.to_json()
    far = None
    if "@" in posting.counterparty and node.federation is not None:
        far = node.federation.far_end(posting.event_id)
    doc["across"] = far[0] if far else None
    if far and doc["memo"] is None:
        doc["memo"] = far[1]  # the payer's memo, kept beside the PREPARE's entry
    return doc


async def get_event(request: web.Request) -> web.Response:
    reader = await authenticate(request)
    node = request.app[NODE]
    event_id = request.match_info["id"]
    if not HEX32_RE.match(event_id):
        raise Problem(ResultCode.invalid_field, "an event id is 32 lowercase hex digits")
    assert node.reader is not None
    index = await storage.event_index(node.reader, event_id)
    entry = await storage.read_entry(node.reader, index) if index is not None else None
    if entry is None or index is None:
        raise Problem(ResultCode.not_found, f"no event {event_id} in this ledger")
    log_entry = parse_log_entry(parse_json(entry))
    msg = log_entry.payload.msg
    if isinstance(msg, Transfer) and not reader.steward and node.config.ledger.books != "open":
        if reader.handle not in (msg.payer, msg.payee):
            raise Problem(ResultCode.forbidden, "balances are private here: not your transfer")
    doc = receipt(log_entry.payload, Outcome(ResultCode.ok, index))
    doc["node_time"] = log_entry.node_time
    return web.json_response(doc)


async def erase_memos(request: web.Request) -> web.Response:
    """Erase the memos of every transfer a member took part in: for a member who leaves.

    The log keeps only salted hashes of memos, so it verifies exactly as before.
    """
    reader = await authenticate(request)
    if not reader.steward:
        raise Problem(ResultCode.forbidden, "only a steward may erase memos")
    node = request.app[NODE]
    handle = _path_handle(request)
    await _account_or_404(node, handle)
    return web.json_response({"handle": handle, "erased": await node.erase_memos(handle)})


def make_app(node: Node) -> web.Application:
    cfg = node.config.api
    app = web.Application(
        middlewares=[problem_middleware],
        client_max_size=max(cfg.max_batch_body_bytes, cfg.max_body_bytes),
    )
    app[NODE] = node
    app[LIMITER] = RateLimiter(cfg.rate_per_key_per_second, cfg.rate_burst)
    fed = node.config.federation
    app[PEER_LIMITER] = RateLimiter(fed.peer_rate_per_second, fed.peer_rate_burst)
    app.router.add_get("/v1/health", health)
    app.router.add_get("/v1/info", info)
    app.router.add_get("/v1/openapi.json", openapi)
    app.router.add_get("/problems/{code}", problem_doc)
    app.router.add_post("/v1/transfers", post_transfer)
    app.router.add_post("/v1/transfers/batch", post_batch)
    app.router.add_post("/v1/acts", post_act)
    app.router.add_get("/v1/whoami", whoami)
    app.router.add_get("/v1/accounts", list_accounts)
    app.router.add_get("/v1/accounts/{handle}", get_account)
    app.router.add_get("/v1/accounts/{handle}/history", get_history)
    app.router.add_get("/v1/events/{id}", get_event)
    app.router.add_post("/v1/accounts/{handle}/erase-memos", erase_memos)
    # The log routes need this module's NODE and authenticate: registered here, imported late.
    from node.gossip import add_gossip_routes
    from node.logapi import add_log_routes
    from node.peerapi import add_federation_routes

    add_log_routes(app)
    add_federation_routes(app)
    add_gossip_routes(app)

    async def lifecycle(app: web.Application):  # type: ignore[no-untyped-def]
        await node.start()
        yield
        await node.stop()

    app.cleanup_ctx.append(lifecycle)
    return app

