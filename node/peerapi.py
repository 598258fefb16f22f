"""HTTP routes for federation: node-to-node under ``/v1/peer/``, and members' and stewards'
routes for payments to other collectives and for credit lines.

Layer: node. Thin handlers over ``node.federation.Federation``. Peer requests are HTTP
message signatures by the sending node's key (``crypto.httpsig``): the sender is the key
that signed, never a field; a request meant for another node, a replay, or one from a node
whose clock is off by more than a quarter of the expiry margin is refused.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from aiohttp import web

from crypto.httpsig import SignedRequestError
from crypto.keys import PublicKey
from node.api import (
    NODE,
    PEER_LIMITER,
    authenticate,
    limit_rate,
    read_json,
    verify_signed,
)
from node.federation import MAX_DECISIONS, canonical_body
from node.intake import Memo, parse_memo
from node.problems import Problem
from protocol import version as protocol_version
from protocol.codes import ResultCode
from protocol.federation import Line, path_of_keys
from protocol.messages import (
    MessageError,
    Signed,
    check_fields,
    hex128,
    parse_signed,
    text,
)

HEADER, SUPPORTED = protocol_version.HEADER, protocol_version.SUPPORTED
LINE = frozenset({"line"})
DECISION = frozenset({"decision"})
URL = text(None, 300)


def _fed(request: web.Request) -> Any:
    fed = request.app[NODE].federation
    assert fed is not None
    return fed


async def authenticate_peer(request: web.Request, known_only: bool = True) -> PublicKey:
    node = request.app[NODE]
    if protocol_version.parse_header(request.headers.get(HEADER)) not in SUPPORTED:
        raise Problem(ResultCode.unsupported_protocol,
                      f"this node speaks node-to-node protocol version(s) "
                      f"{', '.join(map(str, SUPPORTED))}, not {request.headers.get(HEADER)!r}",
                      extra={"protocols": list(SUPPORTED)})
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
    limit_rate(request, verified.signer.text, limiter=PEER_LIMITER)
    # The nonce is claimed now and stored with whatever the request writes next (one commit,
    # not one for the nonce and another for the work); ``nonce_stored_first`` holds the
    # answer until it is durable.
    assert node.writer is not None
    stored = node.writer.claim_nonce(verified.nonce, verified.created + skew)
    if stored is None:
        raise Problem(ResultCode.replayed_request, "this signed request was already used")
    request[NONCE_STORED] = stored
    return verified.signer


NONCE_STORED = web.RequestKey("nonce_stored", asyncio.Future)


@web.middleware
async def nonce_stored_first(request: web.Request, handler: Any) -> web.StreamResponse:
    """Nothing is answered to a peer's signed request, not even a refusal, before its nonce
    is stored: a replay is refused even after a restart."""
    try:
        response: web.StreamResponse = await handler(request)
    finally:
        stored = request.get(NONCE_STORED)
        if stored is not None:
            await asyncio.shield(stored)
    return response



async def _body(request: web.Request, spec: dict[str, Any]) -> dict[str, Any]:
    node = request.app[NODE]
    return check_fields(await read_json(request, node.config.api.max_body_bytes), spec, "body")


# --- node to node -------------------------------------------------------------------------


async def peer_lines(request: web.Request) -> web.Response:
    sender = await authenticate_peer(request, known_only=False)
    body = await _body(request, {"line": lambda f, v: parse_signed(v, LINE, f), "url": URL})
    return web.json_response(await _fed(request).receive_line(body["line"], body["url"],
                                                              sender))


async def peer_quote(request: web.Request) -> web.Response:
    sender = await authenticate_peer(request)
    body = check_fields(
        await read_json(request, request.app[NODE].config.api.max_body_bytes), {
            "order": lambda f, v: parse_signed(v, frozenset({"payment_order"}), f),
            "attempt": hex128, "path": path_of_keys,
        }, "body", optional_fields=frozenset({"path"}))
    quote = await _fed(request).quote(body["order"], body["attempt"], sender,
                                      body.get("path", ()))
    return _signed_answer(quote=quote)


async def peer_prepare(request: web.Request) -> web.Response:
    sender = await authenticate_peer(request)
    body = await _body(request, {"prepare": lambda f, v: parse_signed(v, frozenset({"prepare"}), f)})
    answer = await _fed(request).receive_prepare(body["prepare"], sender)
    if answer is None:
        # Forwarded, and no answer from downstream yet: send the same PREPARE again later.
        return web.json_response({"pending": {"id": body["prepare"].msg.id,
                                              "retry_after_ms": 500}}, status=202)
    return _signed_answer(**{answer.msg.type: answer})


def _signed_answer(**fields: Any) -> web.Response:
    """A 200 answer carrying signed messages, written from their cached canonical bytes."""
    return web.Response(body=canonical_body(**fields), content_type="application/json")


async def peer_statement(request: web.Request) -> web.Response:
    """A peer's signed statement of our line; the answer is ours, and both are compared."""
    sender = await authenticate_peer(request)
    body = await _body(request,
                       {"statement": lambda f, v: parse_signed(v, frozenset({"statement"}), f)})
    return web.json_response(await _fed(request).receive_statement(body["statement"],
                                                                   sender))


async def get_lines_status(request: web.Request) -> web.Response:
    """Reconcile every line now: both sides' signed statements and what comparing shows."""
    await authenticate(request)
    fed = _fed(request)
    results = []
    for line_id in list(request.app[NODE].ledger.lines):
        results.append(await fed.reconcile(line_id))
    return web.json_response({"lines": results})


async def peer_graph(request: web.Request) -> web.Response:
    """The credit lines this node knows (signed by both of each line's nodes), for routing."""
    await authenticate_peer(request)
    return web.json_response({"lines": _fed(request).graph()})


async def peer_decision(request: web.Request) -> web.Response:
    sender = await authenticate_peer(request)
    body = await _body(request,
                       {"decision": lambda f, v: parse_signed(v, frozenset({"decision"}), f)})
    return web.json_response(await _fed(request).receive_decision(body["decision"], sender))


async def peer_decisions(request: web.Request) -> web.Response:
    """Several DECISIONs of the sender at once; each answered on its own, in order."""
    sender = await authenticate_peer(request)
    body = await _body(request, {"decisions": decision_list})
    return web.json_response({"acks": await _fed(request).receive_decisions(body["decisions"],
                                                                            sender)})


def decision_list(field: str, value: Any) -> list[Any]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_DECISIONS:
        raise MessageError(ResultCode.invalid_field,
                           f"{field} must list 1 to {MAX_DECISIONS} signed decisions")
    decisions = [parse_signed(v, DECISION, f"{field}[{i}]") for i, v in enumerate(value)]
    if len({d.msg.id for d in decisions}) != len(decisions):  # type: ignore[union-attr]
        raise MessageError(ResultCode.invalid_field, f"{field} names an attempt twice")
    return decisions


# --- members and stewards -------------------------------------------------------------------


ORDER = frozenset({"payment_order"})


def parse_payment(body: Any) -> tuple[Signed, Memo | None]:
    """A ``POST /v1/payments`` body: the payer-signed order itself, or ``{"order", "memo"}``
    with a memo ``{"text", "salt"}`` as for a transfer. The order has no memo hash (the
    node-to-node protocol carries none), so the memo stays beside this node's log only."""
    if not (isinstance(body, dict) and "order" in body):
        return parse_signed(body, ORDER), None
    fields = check_fields(body, {"order": lambda f, v: v, "memo": lambda f, v: v}, "body",
                          optional_fields=frozenset({"memo"}))
    order = parse_signed(fields["order"], ORDER, "body.order")
    if fields["memo"] is None:
        return order, None
    return order, parse_memo(fields["memo"], "body.memo")


async def post_payment(request: web.Request) -> web.Response:
    """A member pays a member of another collective: the answer is final — done with a
    receipt, or refused with a code — unless the node itself fails (then ask
    ``GET /v1/payments/{order}``, and never pay again on a mere timeout)."""
    node = request.app[NODE]
    order, memo = parse_payment(await read_json(request, node.config.api.max_body_bytes))
    limit_rate(request, order.sigs[0].key.text)
    result = await _fed(request).pay(order, memo)
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


async def get_routes(request: web.Request) -> web.Response:
    """Which collective ``to`` names (node key, key id or the start of its pinned name), and,
    with ``amount`` (in its unit), the routes a payment would try and what each costs."""
    await authenticate(request)
    fed = _fed(request)
    where = request.query.get("to", "").strip()
    if not where:
        raise Problem(ResultCode.invalid_field, "say which collective: ?to=NAME or node key")
    matches = await fed.find_collectives(where)
    if not matches:
        known = ", ".join(sorted(p["name"] for p in fed.parties().values())) or "none yet"
        raise Problem(ResultCode.not_found,
                      f"no collective {where!r} is known here (known: {known})")
    if len(matches) > 1:
        names = ", ".join(f"{p['name']} ({k.key_id})" for k, p in matches)
        raise Problem(ResultCode.invalid_field,
                      f"{where!r} names several collectives: {names}; use a node key")
    key, party = matches[0]
    body: dict[str, Any] = {"collective": party, "direct": fed.line_with(key) is not None}
    if "amount" in request.query:
        try:
            amount = int(request.query["amount"])
        except ValueError:
            amount = 0
        if not 1 <= amount <= 2**53 - 1:
            raise Problem(ResultCode.invalid_field, "amount must be a positive whole number "
                                                    "of the payee's smallest unit")
        body["routes"] = [{"via": [fed._name_of(k) for k in r.nodes[1:-1]],
                           "nodes": [k.text for k in r.nodes], "hops": r.hops, "cost": r.cost}
                          for r in fed.routes_to(key, amount)]
    return web.json_response(body)


async def get_lines(request: web.Request) -> web.Response:
    await authenticate(request)
    fed = _fed(request)
    node = request.app[NODE]
    lines = []
    for signed in node.ledger.lines.values():
        line = cast(Line, signed.msg)  # the ledger's lines are its signed ``line`` entries
        other = line.other(fed.key)
        account = node.ledger.accounts.get("~" + other.node_key.key_id)
        lines.append({"id": line.id, "version": line.version, "status": line.status,
                      "peer": other.to_json(), "peer_url": fed.peer_urls.get(
                          other.node_key.key_id),
                      "terms": line.to_json(),
                      "account": account.to_json() if account else None})
    # Ours carry our node's signature (``Federation.propose_line``); theirs only theirs.
    proposals = [{"id": lid, "terms": s.msg.to_json(), "url": url,
                  "by": "ours" if any(sig.key == fed.key for sig in s.sigs) else "theirs"}
                 for lid, (s, url) in fed.proposals.items()]
    for entry in lines:
        entry["next_settlement"] = await fed.next_settlement(entry["id"])
    settlements = [{"id": sid, "terms": s.msg.to_json(), "by": by}
                   for sid, (s, by) in fed.settlements.items()]
    return web.json_response({"lines": lines, "proposals": proposals,
                              "settlements": settlements})


async def post_line(request: web.Request) -> web.Response:
    """Stewards propose terms to another collective (``peer_url``) or accept a proposal."""
    body = await _body(request, {"line": lambda f, v: parse_signed(v, LINE, f), "url": URL,
                                 "action": text(None, 10)})
    fed = _fed(request)
    if body["action"] == "propose":
        result = await fed.propose_line(body["line"], body["url"])
    elif body["action"] == "accept":
        result = await fed.accept_line(body["line"])
    elif body["action"] == "suspend":
        result = await fed.suspend_line(body["line"])
    else:
        raise Problem(ResultCode.invalid_field,
                      'action must be "propose", "accept" or "suspend"')
    return web.json_response(result, status=201)


SETTLEMENT = frozenset({"line_settlement"})


async def peer_suspension(request: web.Request) -> web.Response:
    sender = await authenticate_peer(request)
    body = await _body(request, {"line": lambda f, v: parse_signed(v, LINE, f)})
    return web.json_response(await _fed(request).receive_suspension(body["line"], sender))


async def peer_settlements(request: web.Request) -> web.Response:
    sender = await authenticate_peer(request)
    body = await _body(request, {"settlement": lambda f, v: parse_signed(v, SETTLEMENT, f)})
    return web.json_response(await _fed(request).receive_settlement(body["settlement"],
                                                                    sender))


async def post_settlement(request: web.Request) -> web.Response:
    """Stewards propose a settlement of a line out of band, or accept the peer's."""
    body = await _body(request, {"settlement": lambda f, v: parse_signed(v, SETTLEMENT, f),
                                 "action": text(None, 10)})
    fed = _fed(request)
    if body["action"] == "propose":
        result = await fed.propose_settlement(body["settlement"])
    elif body["action"] == "accept":
        result = await fed.accept_settlement(body["settlement"])
    else:
        raise Problem(ResultCode.invalid_field, 'action must be "propose" or "accept"')
    return web.json_response(result, status=201)


async def _steward(request: web.Request) -> None:
    reader = await authenticate(request)
    if not reader.steward:
        raise Problem(ResultCode.forbidden, "only the collective's stewards see its disputes")


async def get_disputes(request: web.Request) -> web.Response:
    await _steward(request)
    include = request.query.get("all", "0")
    if include not in ("0", "1"):
        raise Problem(ResultCode.invalid_field, "query all must be 0 or 1", field="all")
    disputes = await _fed(request).disputes(include_resolved=include == "1")
    return web.json_response({"disputes": disputes})


async def resolve_dispute(request: web.Request) -> web.Response:
    await _steward(request)
    body = await _body(request, {"note": text(None, 500)})
    dispute_id = request.match_info["id"]
    from protocol.messages import HEX32_RE

    if not HEX32_RE.match(dispute_id):
        raise Problem(ResultCode.invalid_field, "a dispute id is 32 lowercase hex digits")
    return web.json_response(await _fed(request).resolve_dispute(dispute_id, body["note"]))


async def _protocol_header(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer to a node-to-node request says which protocol version it speaks."""
    if request.path.startswith("/v1/peer/"):
        asked = protocol_version.parse_header(request.headers.get(HEADER))
        response.headers[HEADER] = str(asked if asked in SUPPORTED else protocol_version.VERSION)


def add_federation_routes(app: web.Application) -> None:
    app.router.add_post("/v1/peer/settlements", peer_settlements)
    app.router.add_post("/v1/peer/suspension", peer_suspension)
    app.router.add_post("/v1/settlements", post_settlement)
    app.router.add_get("/v1/disputes", get_disputes)
    app.router.add_post("/v1/disputes/{id}/resolve", resolve_dispute)
    app.on_response_prepare.append(_protocol_header)
    app.middlewares.append(nonce_stored_first)  # inside problem_middleware: refusals wait too
    app.router.add_post("/v1/peer/lines", peer_lines)
    app.router.add_post("/v1/peer/quote", peer_quote)
    app.router.add_post("/v1/peer/prepare", peer_prepare)
    app.router.add_post("/v1/peer/decision", peer_decision)
    app.router.add_post("/v1/peer/decisions", peer_decisions)
    app.router.add_get("/v1/peer/graph", peer_graph)
    app.router.add_post("/v1/peer/statement", peer_statement)
    app.router.add_get("/v1/lines/status", get_lines_status)
    app.router.add_get("/v1/routes", get_routes)
    app.router.add_post("/v1/payments", post_payment)
    app.router.add_get("/v1/payments/{order}", get_payment)
    app.router.add_get("/v1/lines", get_lines)
    app.router.add_post("/v1/lines", post_line)
