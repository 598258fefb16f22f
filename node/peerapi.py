"""HTTP routes for federation: node-to-node under ``/v1/peer/``, and members' and stewards'
routes for payments to other collectives and for credit lines.

Layer: node. Thin handlers over ``node.federation.Federation``. Peer requests are HTTP
message signatures by the sending node's key (``crypto.httpsig``): the sender is the key
that signed, never a field; a request meant for another node, a replay, or one from a node
whose clock is off by more than a quarter of the expiry margin is refused.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from crypto.httpsig import SignedRequestError
from crypto.keys import PublicKey
from protocol.codes import ResultCode
from protocol.messages import check_fields, parse_signed, text
from node.api import NODE, authenticate, consume_nonce, limit_rate, read_json, verify_signed
from node.api import PEER_LIMITER
from node.federation import FederationError
from node.problems import Problem

LINE = frozenset({"line"})
URL = text(None, 300)


def _fed(request: web.Request) -> Any:
    fed = request.app[NODE].federation
    assert fed is not None
    return fed


async def authenticate_peer(request: web.Request, known_only: bool = True) -> PublicKey:
    node = request.app[NODE]
    skew = max(1, node.config.federation.margin_ms // 4 // 1000)
    try:
        verified = await verify_signed(request, skew)
    except SignedRequestError as exc:
        if exc.code == "stale_request":
            raise Problem(ResultCode.clock_skew,
                          f"your clock differs from ours by more than {skew}s: {exc.message}"
                          ) from exc
        raise
    if known_only and _fed(request).line_with(verified.signer) is None:
        raise Problem(ResultCode.unknown_peer, "no credit line with the node that signed this")
    await consume_nonce(request, verified, skew, PEER_LIMITER)
    return verified.signer


def _problem(exc: FederationError) -> Problem:
    return Problem(exc.code, exc.detail)


async def _body(request: web.Request, spec: dict[str, Any]) -> dict[str, Any]:
    node = request.app[NODE]
    return check_fields(await read_json(request, node.config.api.max_body_bytes), spec, "body")


# --- node to node -------------------------------------------------------------------------


async def peer_lines(request: web.Request) -> web.Response:
    sender = await authenticate_peer(request, known_only=False)
    body = await _body(request, {"line": lambda f, v: parse_signed(v, LINE, f), "url": URL})
    try:
        return web.json_response(await _fed(request).receive_line(body["line"], body["url"],
                                                                  sender))
    except FederationError as exc:
        raise _problem(exc) from exc


async def peer_quote(request: web.Request) -> web.Response:
    sender = await authenticate_peer(request)
    from protocol.messages import hex128

    body = await _body(request, {
        "order": lambda f, v: parse_signed(v, frozenset({"payment_order"}), f),
        "attempt": hex128,
    })
    try:
        quote = await _fed(request).quote(body["order"], body["attempt"], sender)
    except FederationError as exc:
        raise _problem(exc) from exc
    return web.json_response({"quote": quote.to_json()})


async def peer_prepare(request: web.Request) -> web.Response:
    sender = await authenticate_peer(request)
    body = await _body(request, {"prepare": lambda f, v: parse_signed(v, frozenset({"prepare"}), f)})
    try:
        answer = await _fed(request).receive_prepare(body["prepare"], sender)
    except FederationError as exc:
        raise _problem(exc) from exc
    return web.json_response({answer.msg.type: answer.to_json()})


async def peer_decision(request: web.Request) -> web.Response:
    sender = await authenticate_peer(request)
    body = await _body(request,
                       {"decision": lambda f, v: parse_signed(v, frozenset({"decision"}), f)})
    try:
        return web.json_response(await _fed(request).receive_decision(body["decision"], sender))
    except FederationError as exc:
        raise _problem(exc) from exc


# --- members and stewards -------------------------------------------------------------------


async def post_payment(request: web.Request) -> web.Response:
    """A member pays a member of another collective: the answer is final — done with a
    receipt, or refused with a code — unless the node itself fails (then ask
    ``GET /v1/payments/{order}``, and never pay again on a mere timeout)."""
    node = request.app[NODE]
    order = parse_signed(await read_json(request, node.config.api.max_body_bytes),
                         frozenset({"payment_order"}))
    limit_rate(request, order.sigs[0].key.text)
    try:
        result = await _fed(request).pay(order)
    except FederationError as exc:
        raise _problem(exc) from exc
    # 202: neither done nor refused yet (the node could not finish in time); not final.
    return web.json_response(result, status=202 if result["result"] == "pending" else 201)


async def get_payment(request: web.Request) -> web.Response:
    reader = await authenticate(request)
    attempts = await _fed(request).payment_status(request.match_info["order"])
    if not reader.steward:
        attempts = [a for a in attempts if reader.handle in (a["payer"], a["payee"])]
    if not attempts:
        raise Problem(ResultCode.not_found, "no payment by that order id that you may see")
    return web.json_response({"order": request.match_info["order"], "attempts": attempts})


async def get_lines(request: web.Request) -> web.Response:
    await authenticate(request)
    fed = _fed(request)
    node = request.app[NODE]
    lines = []
    for signed in node.ledger.lines.values():
        line = signed.msg
        other = line.other(fed.key)
        account = node.ledger.accounts.get("~" + other.node_key.key_id)
        lines.append({"id": line.id, "version": line.version, "status": line.status,
                      "peer": other.to_json(), "peer_url": fed.peer_urls.get(
                          other.node_key.key_id),
                      "terms": line.to_json(),
                      "account": account.to_json() if account else None})
    proposals = [{"id": lid, "terms": s.msg.to_json(), "url": url}
                 for lid, (s, url) in fed.proposals.items()]
    return web.json_response({"lines": lines, "proposals": proposals})


async def post_line(request: web.Request) -> web.Response:
    """Stewards propose terms to another collective (``peer_url``) or accept a proposal."""
    body = await _body(request, {"line": lambda f, v: parse_signed(v, LINE, f), "url": URL,
                                 "action": text(None, 10)})
    fed = _fed(request)
    try:
        if body["action"] == "propose":
            result = await fed.propose_line(body["line"], body["url"])
        elif body["action"] == "accept":
            result = await fed.accept_line(body["line"])
        else:
            raise Problem(ResultCode.invalid_field, 'action must be "propose" or "accept"')
    except FederationError as exc:
        raise _problem(exc) from exc
    return web.json_response(result, status=201)


def add_federation_routes(app: web.Application) -> None:
    app.router.add_post("/v1/peer/lines", peer_lines)
    app.router.add_post("/v1/peer/quote", peer_quote)
    app.router.add_post("/v1/peer/prepare", peer_prepare)
    app.router.add_post("/v1/peer/decision", peer_decision)
    app.router.add_post("/v1/payments", post_payment)
    app.router.add_get("/v1/payments/{order}", get_payment)
    app.router.add_get("/v1/lines", get_lines)
    app.router.add_post("/v1/lines", post_line)
