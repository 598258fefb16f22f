"""The OpenAPI 3.1 description of the HTTP API, served at ``/v1/openapi.json``.

Layer: node. Built from the same code lists the API uses (result codes, limits), and checked
by ``tests/node/test_openapi.py`` against the routes the app registers and against real
responses, so it cannot silently drift from the code.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from protocol.codes import ResultCode

HANDLE = {"type": "string", "pattern": "^[a-z0-9][a-z0-9_.-]{0,31}$"}
ID = {"type": "string", "pattern": "^[0-9a-f]{32}$", "description": "random 128-bit id, hex"}
LEDGER = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
KEY = {"type": "string", "pattern": "^[A-Za-z0-9_-]{43}$", "description": "Ed25519 public key, base64url"}
INT = {"type": "integer", "minimum": -(2**53 - 1), "maximum": 2**53 - 1}
TIME = {"type": "integer", "minimum": 0, "description": "milliseconds since the Unix epoch"}


def _obj(props: dict[str, Any], required: list[str] | None = None, extra: bool = False) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": props,
        "required": list(props) if required is None else required,
        "additionalProperties": extra,
    }


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _act(kind: str, props: dict[str, Any]) -> dict[str, Any]:
    return _obj({"type": {"const": kind}, "ledger": LEDGER, "id": ID, "valid_until": TIME, **props})


SCHEMAS: dict[str, Any] = {
    "Problem": _obj(
        {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "instance": {"type": "string"},
            "code": {"type": "string", "enum": [c.value for c in ResultCode]},
            "field": {"type": "string"},
            # unsupported_protocol: the node-to-node protocol versions this node speaks
            "protocols": {"type": "array", "items": {"type": "integer", "minimum": 1}},
        },
        required=["type", "title", "status", "detail", "code"],
    ),
    "Signature": _obj({"key": KEY, "sig": {"type": "string", "pattern": "^[A-Za-z0-9_-]{86}$"}}),
    "TransferMsg": _obj(
        {
            "type": {"const": "transfer"},
            "ledger": LEDGER,
            "id": ID,
            "payer": HANDLE,
            "payee": HANDLE,
            "amount": INT,
            "memo_hash": {"oneOf": [LEDGER, {"type": "null"}]},
            "valid_until": TIME,
        }
    ),
    "SignedTransfer": _obj(
        {"msg": _ref("TransferMsg"), "sigs": {"type": "array", "items": _ref("Signature"),
                                              "minItems": 1, "maxItems": 1}}
    ),
    "Memo": _obj({"text": {"type": "string", "maxLength": 1024},
                  "salt": {"type": "string", "pattern": "^[0-9a-f]{32}$"}}),
    "PaymentRequest": _obj(
        {"order": _ref("SignedMessage"), "memo": _ref("Memo")}, required=["order"]
    ),
    "TransferRequest": _obj(
        {"transfer": _ref("SignedTransfer"), "memo": _ref("Memo")}, required=["transfer"]
    ),
    "Admit": _act("admit", {"handle": HANDLE, "key": KEY, "debit_limit": INT, "credit_limit": INT}),
    "SetLimits": _act("set_limits", {"handle": HANDLE, "debit_limit": INT, "credit_limit": INT}),
    "Close": _act("close", {"handle": HANDLE}),
    "Rekey": _act("rekey", {"handle": HANDLE, "key": KEY}),
    "SetStewards": _act(
        "set_stewards",
        {"stewards": {"type": "array", "items": KEY, "minItems": 1, "maxItems": 64},
         "threshold": {"type": "integer", "minimum": 1, "maximum": 64}},
    ),
    "SignedAct": _obj(
        {
            "msg": {"oneOf": [_ref(n) for n in ("Admit", "SetLimits", "Close", "Rekey", "SetStewards")]},
            "sigs": {"type": "array", "items": _ref("Signature"), "minItems": 1, "maxItems": 64},
        }
    ),
    "Receipt": _obj(
        {
            "result": {"enum": ["ok", "exists"]},
            "type": {"type": "string"},
            "id": ID,
            "ledger": LEDGER,
            "index": {"type": "integer", "minimum": 0, "description": "the event's log index"},
            "payer": HANDLE,
            "payee": HANDLE,
            "amount": INT,
            "handle": HANDLE,
            "node_time": TIME,
        },
        required=["result", "type", "id", "ledger", "index"],
    ),
    "BatchItemRefused": _obj(
        {"result": {"type": "string", "enum": [c.value for c in ResultCode]},
         "id": {"oneOf": [ID, {"type": "null"}]}, "detail": {"type": "string"}},
        required=["result", "detail"],
    ),
    "BatchResult": _obj(
        {
            "accepted": {"type": "integer"},
            "results": {"type": "array",
                        "items": {"oneOf": [_ref("Receipt"), _ref("BatchItemRefused")]}},
        }
    ),
    "Account": _obj(
        {
            "handle": HANDLE,
            "kind": {"enum": ["member", "peer", "internal"]},
            "key": {"oneOf": [KEY, {"type": "null"}]},
            "balance": INT,
            "pending_debit": INT,
            "pending_credit": INT,
            "debit_limit": INT,
            "credit_limit": INT,
            "status": {"enum": ["open", "closed"]},
        }
    ),
    "AccountList": _obj({"accounts": {"type": "array", "items": _ref("Account")},
                         "log_size": {"type": "integer", "minimum": 1,
                                      "description": "the log entries these balances reflect "
                                                     "(read in one snapshot with them)"}}),
    "Posting": _obj(
        {
            "index": {"type": "integer"},
            "amount": INT,
            "counterparty": {"type": "string", "description": (
                "the other member here; for a payment across collectives, the other "
                "member's handle @ the adjacent collective, whose peer account it moved")},
            "id": ID,
            "node_time": TIME,
            "memo": {"type": ["string", "null"]},
            "across": {"oneOf": [{"type": "null"}, _obj({
                "member": HANDLE,
                "collective": {"type": ["string", "null"],
                               "description": "null if this node knows no collective of "
                                              "the payer's ledger"},
                "via": {"type": "array", "items": {"type": "string"},
                        "description": "the collectives in between that this node knows"},
            })], "description": (
                "null for a transfer here; for a payment across collectives, the member and "
                "collective at the far end as the payment order this node logged names them")},
        }
    ),
    "History": _obj(
        {
            "handle": HANDLE,
            "postings": {"type": "array", "items": _ref("Posting")},
            "next": {"type": ["integer", "null"], "description": "pass as ?cursor= for the next page"},
        }
    ),
    "WhoAmI": _obj({"key": KEY, "handle": {"oneOf": [HANDLE, {"type": "null"}]},
                    "steward": {"type": "boolean"}}),
    "Health": _obj({"status": {"const": "ok"}, "log_size": {"type": "integer"}}),
    "Info": _obj(
        {
            "name": {"type": "string"},
            "ledger_id": LEDGER,
            "node_key": KEY,
            "node_key_id": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
            "unit": _obj({"code": {"type": "string"}, "name": {"type": "string"},
                          "scale": {"type": "integer", "minimum": 1}}),
            "stewards": {"type": "array", "items": KEY},
            "threshold": {"type": "integer"},
            "defaults": _obj({"debit_limit": INT, "credit_limit": INT}),
            "books": {"enum": ["open", "private"]},
            "max_valid_window_seconds": {"type": "integer"},
            "request_skew_seconds": {"type": "integer"},
            "max_batch": {"type": "integer"},
            "payment_answer_seconds": {
                "type": "integer", "minimum": 1,
                "description": "the longest POST /v1/payments waits before it answers (a "
                               "receipt, a refusal, or 202 pending): wait at least this long"},
            "log_size": {"type": "integer"},
            "api_version": {"const": "v1"},
            "protocols": {"type": "array", "items": {"type": "integer", "minimum": 1}},
            "software": {"type": "string"},
        },
        extra=True,
    ),
    "ProblemCode": _obj({"code": {"type": "string"}, "status": {"type": "integer"}}),
    "CheckpointJson": _obj(
        {
            "origin": {"type": "string"},
            "size": {"type": "integer", "minimum": 1},
            "root": {"type": "string", "description": "base64 SHA-256 tree root"},
            "note": {"type": "string", "description": "the C2SP signed note, as at /log/checkpoint"},
            "vkey": {"type": "string", "description": "the log's verifier key, name+hash+key"},
            "witness_vkey": {"type": ["string", "null"], "description":
                             "this node's own cosigner key (tlog-cosignature, type 0x04)"},
            "witnesses": {"type": "array", "items": {"type": "string"}, "description":
                          "cosigner keys of the line peers that witness this log"},
        }
    ),
    "InclusionProof": _obj(
        {"index": {"type": "integer"}, "size": {"type": "integer"},
         "proof": {"type": "array", "items": {"type": "string"}}}
    ),
    "ConsistencyProof": _obj(
        {"old": {"type": "integer"}, "new": {"type": "integer"},
         "proof": {"type": "array", "items": {"type": "string"}}}
    ),
    "LogEntry": _obj(
        {"index": {"type": "integer"}, "entry": {"type": "string", "description": "base64"},
         "leaf_hash": {"type": "string"}}
    ),
    "Erased": _obj({"handle": HANDLE, "erased": {"type": "integer", "minimum": 0}}),
    "SignedMessage": _obj({"msg": {"type": "object"},
                           "sigs": {"type": "array", "items": _ref("Signature")}}),
    "PaymentReceipt": {"type": "object", "required": ["result", "order", "attempt",
                                                      "fulfilment", "quote"],
                       "properties": {"result": {"const": "ok"}, "order": ID, "attempt": ID,
                                      "fulfilment": {"type": "string"},
                                      "amount_paid": INT, "amount_received": INT,
                                      "quote": _ref("SignedMessage")}},
    "PaymentStatus": {"type": "object", "properties": {
        "order": ID, "attempts": {"type": "array", "items": {"type": "object"}}}},
    "Lines": {"type": "object", "properties": {
        "lines": {"type": "array", "items": {"type": "object"}},
        "proposals": {"type": "array", "items": {
            "type": "object", "required": ["id", "terms", "url", "by"],
            "properties": {"id": ID, "terms": {"type": "object"}, "url": {"type": "string"},
                           "by": {"enum": ["ours", "theirs"]}}},
            "description": "line proposals not yet accepted; by: ours (waiting for their "
                           "stewards) or theirs (ours may accept)"},
        "settlements": {"type": "array", "items": {"type": "object"},
                        "description": "settlement proposals not yet logged; by: ours or "
                                       "theirs"}}},
    "Routes": {"type": "object", "required": ["collective", "direct"], "properties": {
        "collective": {"type": "object", "required": ["node_key", "ledger", "name", "unit"]},
        "direct": {"type": "boolean"},
        "routes": {"type": "array", "items": {
            "type": "object", "required": ["via", "nodes", "hops", "cost"],
            "properties": {"via": {"type": "array", "items": {"type": "string"}},
                           "nodes": {"type": "array", "items": {"type": "string"}},
                           "hops": {"type": "integer", "minimum": 1},
                           "cost": {"type": "integer", "minimum": 1}}}}}},
    "LineRequest": _obj({"line": _ref("SignedMessage"), "url": {"type": "string"},
                         "action": {"enum": ["propose", "accept", "suspend"]}}),
    "SettlementRequest": _obj({"settlement": _ref("SignedMessage"),
                               "action": {"enum": ["propose", "accept"]}}),
    "Dispute": _obj({
        "id": ID, "kind": {"type": "string", "description": "late_fulfilment, "
                           "intermediary_loss, statement_mismatch"},
        "peer": {"type": "string", "description": "the peer node's key id"},
        "peer_name": {"type": ["string", "null"]}, "line": ID, "attempt": ID,
        "created": TIME,
        "evidence": {"type": "object", "description": "the signed messages that show it"},
        "resolved": {"type": "boolean"}, "note": {"type": ["string", "null"]}}),
    "Disputes": _obj({"disputes": {"type": "array", "items": _ref("Dispute")}}),
    "DisputeResolved": _obj({"id": ID, "resolved": {"const": True},
                             "note": {"type": "string"}}),
}


def _json(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _text(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}}


def _problems(*statuses: int) -> dict[str, Any]:
    return {
        str(s): {
            "description": "refused: an RFC 9457 problem with a stable `code`",
            "content": {"application/problem+json": {"schema": _ref("Problem")}},
        }
        for s in statuses
    }


_LIST = {"type": "array", "items": {"type": "object"}}
_EVIDENCE = _obj({"type": {"const": "equivocation"}, "vkey": {"type": "string"},
                  "checkpoints": {"type": "array", "items": {"type": "string"},
                                  "minItems": 2, "maxItems": 2},
                  "proof": {"type": "array", "items": {"type": "string"}}})
_UPDATE = _obj({"records": _LIST, "checkpoints": _LIST, "evidence": _LIST})
_WANT = _obj({"records": {"type": "array", "items": KEY},
              "checkpoints": {"type": "array", "items": KEY},
              "evidence": {"type": "array", "items": LEDGER}})
SCHEMAS.update({
    "GossipDigest": _obj({"digest": _obj({
        "records": {"type": "object", "additionalProperties": {"type": "integer"},
                    "description": "node key -> counter of the record held"},
        "checkpoints": {"type": "object", "additionalProperties": _obj(
            {"size": {"type": "integer"}, "root": {"type": "string"}}),
            "description": "node key -> size and root of the largest checkpoint held"},
        "evidence": {"type": "array", "items": LEDGER}})}),
    "GossipUpdate": _obj({"update": _UPDATE}),
    "GossipAnswer": _obj({"update": _UPDATE, "want": _WANT}),
    "GossipMerged": _obj({"merged": {"type": "integer"}, "refused": {"type": "array", "items":
                          _obj({"code": {"type": "string"}, "message": {"type": "string"}})}}),
    "GossipNodes": _obj({
        "self": KEY,
        "nodes": {"type": "array", "items": {"type": "object", "required": [
            "key", "name", "urls", "stale", "suspended", "lines", "checkpoint_size",
            "age_seconds"]}},
        "edges": _LIST,
        "evidence": {"type": "array", "items": _obj({"id": LEDGER, "offender": KEY,
                                                     "summary": {"type": "string"}})}}),
    "Evidence": _EVIDENCE,
})


def _gossip_paths() -> dict[str, Any]:
    node_to_node: dict[str, Any] = {"security": [{"nodeSignature": []}]}
    return {
        "/v1/gossip/exchange": {"post": {
            "operationId": "gossipExchange", **node_to_node,
            "summary": "Node to node: send a digest; get what is newer here, and what we want",
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": _ref("GossipDigest")}}},
            "responses": {"200": _json("GossipAnswer", "items newer here, and wanted ones"),
                          **_problems(400, 401, 413, 415, 429)}}},
        "/v1/gossip/push": {"post": {
            "operationId": "gossipPush", **node_to_node,
            "summary": "Node to node: the items asked for (records, checkpoints, evidence)",
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": _ref("GossipUpdate")}}},
            "responses": {"200": _json("GossipMerged", "how many merged; each refusal"),
                          **_problems(400, 401, 413, 415, 422, 429)}}},
        "/v1/gossip/nodes": {"get": {
            "operationId": "gossipNodes",
            "summary": "The nodes known by gossip, their freshness, lines and log size seen, "
                       "the learned graph, and evidence of equivocation",
            "responses": {"200": _json("GossipNodes", "known nodes")}}},
        "/v1/gossip/evidence/{id}": {"get": {
            "operationId": "gossipEvidence",
            "summary": "One piece of evidence, as `tally evidence check` reads it",
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": LEDGER}],
            "responses": {"200": _json("Evidence", "the evidence record"),
                          **_problems(404)}}},
    }


SIGNED_READ: list[dict[str, list[str]]] = [{"memberSignature": []}]
READ_PROBLEMS = _problems(400, 401, 403, 404, 429, 503)
PATH_HANDLE = {"name": "handle", "in": "path", "required": True, "schema": HANDLE}


def _with_body_timeouts(doc: dict[str, Any]) -> dict[str, Any]:
    """408 ``request_timeout`` wherever the node reads a request body: operations that take
    one, and signed or possibly signed ones (a signature covers the body's digest)."""
    for item in doc["paths"].values():
        for op in item.values():
            responses = op["responses"]
            if "requestBody" in op or "security" in op or "401" in responses:
                responses.update(_problems(408))
                op["responses"] = dict(sorted(responses.items()))
    return doc


@lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    return _with_body_timeouts({
        "openapi": "3.1.0",
        "info": {
            "title": "Tally node API",
            "version": "1",
            "description": (
                "A collective's mutual-credit ledger. Transfers and steward acts are signed in "
                "their body (Ed25519 over the RFC 8785 form of `msg`). Reads other than "
                "health, info and this document need an HTTP message signature (RFC 9421 "
                "profile: covered components @method @path @query content-digest; "
                "params created, nonce, keyid = signer's public key, tag = the node's key id). "
                "Every refusal is an RFC 9457 problem whose `code` is stable; "
                "`/problems/{code}` names each."
            ),
        },
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "nodeSignature": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Signature",
                    "description": "RFC 9421 signature by the sending node's key",
                },
                "memberSignature": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Signature",
                    "description": "RFC 9421 signature by a member's or steward's key",
                }
            },
        },
        "paths": {
            "/v1/health": {"get": {"operationId": "health", "summary": "Liveness",
                                   "responses": {"200": _json("Health", "the node is up")}}},
            "/v1/info": {"get": {"operationId": "info", "summary": "The collective and its node",
                                 "responses": {"200": _json("Info", "public node info")}}},
            "/v1/openapi.json": {"get": {"operationId": "openapi", "summary": "This document",
                                         "responses": {"200": {"description": "OpenAPI 3.1"}}}},
            "/problems/{code}": {
                "get": {
                    "operationId": "problem",
                    "summary": "What a result code means",
                    "parameters": [{"name": "code", "in": "path", "required": True,
                                    "schema": {"type": "string"}}],
                    "responses": {"200": _json("ProblemCode", "the code and its HTTP status"),
                                  **_problems(404)},
                }
            },
            "/v1/transfers": {
                "post": {
                    "operationId": "submitTransfer",
                    "summary": "Submit one transfer signed by the payer",
                    "requestBody": {"required": True, "content": {"application/json": {
                        "schema": _ref("TransferRequest")}}},
                    "responses": {
                        "201": _json("Receipt", "applied"),
                        "200": _json("Receipt", "an identical transfer was applied before (exists)"),
                        **_problems(400, 409, 413, 415, 422, 429, 503),
                    },
                }
            },
            "/v1/transfers/batch": {
                "post": {
                    "operationId": "submitTransferBatch",
                    "summary": "Submit up to max_batch transfers; each gets its own result",
                    "requestBody": {"required": True, "content": {"application/json": {
                        "schema": _obj({"transfers": {"type": "array", "minItems": 1, "items": {
                            # Not a $ref: items are checked one by one, and a malformed one
                            # gets its own refusal in `results` instead of refusing the batch.
                            "description": "a TransferRequest; a malformed item is refused "
                                           "alone, in its place in `results`"}}})}}},
                    "responses": {"200": _json("BatchResult", "one result per transfer, in order"),
                                  **_problems(400, 413, 415, 429, 503)},
                }
            },
            "/v1/acts": {
                "post": {
                    "operationId": "submitAct",
                    "summary": "Submit a steward act (admit, set_limits, close, rekey, set_stewards)",
                    "requestBody": {"required": True, "content": {"application/json": {
                        "schema": _ref("SignedAct")}}},
                    "responses": {
                        "201": _json("Receipt", "applied"),
                        "200": _json("Receipt", "an identical act was applied before (exists)"),
                        **_problems(400, 409, 413, 415, 422, 429, 503),
                    },
                }
            },
            "/v1/whoami": {"get": {"operationId": "whoami", "summary": "Who the signing key is",
                                   "security": SIGNED_READ,
                                   "responses": {"200": _json("WhoAmI", "the signer"),
                                                 **READ_PROBLEMS}}},
            "/v1/accounts": {"get": {"operationId": "listAccounts", "summary": "Every account",
                                     "security": SIGNED_READ,
                                     "responses": {"200": _json("AccountList", "accounts"),
                                                   **READ_PROBLEMS}}},
            "/v1/accounts/{handle}": {
                "get": {"operationId": "getAccount", "summary": "An account's balance and limits",
                        "security": SIGNED_READ, "parameters": [PATH_HANDLE],
                        "responses": {"200": _json("Account", "the account"), **READ_PROBLEMS}}
            },
            "/v1/accounts/{handle}/history": {
                "get": {
                    "operationId": "getHistory",
                    "summary": "An account's postings, newest first, paginated by cursor",
                    "security": SIGNED_READ,
                    "parameters": [
                        PATH_HANDLE,
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1}},
                        {"name": "cursor", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                    ],
                    "responses": {"200": _json("History", "a page of postings"), **READ_PROBLEMS},
                }
            },
            "/v1/accounts/{handle}/erase-memos": {
                "post": {
                    "operationId": "eraseMemos",
                    "summary": "Erase a member's memos (stewards); the log still verifies",
                    "security": SIGNED_READ,
                    "parameters": [PATH_HANDLE],
                    "requestBody": {"required": True, "content": {"application/json": {
                        "schema": {"type": "object", "additionalProperties": False}}}},
                    "responses": {"200": _json("Erased", "how many memos were erased"),
                                  **READ_PROBLEMS},
                }
            },
            "/log/checkpoint": {"get": {
                "operationId": "logCheckpoint",
                "summary": "The latest checkpoint: a C2SP tlog-checkpoint in a signed note, "
                           "with the cosignatures its witnesses gave it",
                "responses": {"200": _text("the signed note"), **_problems(404)}}},
            "/log/vkey": {"get": {
                "operationId": "logVkey", "summary": "The log's signed-note verifier key",
                "responses": {"200": _text("name+hash+base64 key")}}},
            "/log/tile/{path}": {"get": {
                "operationId": "logTile",
                "summary": "C2SP tlog-tiles: hash tiles tile/<L>/<N>[.p/<W>] (public) and entry "
                           "bundles tile/entries/<N>[.p/<W>] (members, or all if opened)",
                "parameters": [{"name": "path", "in": "path", "required": True,
                                "schema": {"type": "string"}}],
                "responses": {"200": {"description": "the tile",
                                      "content": {"application/octet-stream": {}}},
                              **_problems(401, 403, 404)}}},
            "/add-checkpoint": {"post": {
                "operationId": "witnessAddCheckpoint",
                "summary": "C2SP tlog-witness: cosign a checkpoint of a line peer's log, given "
                           "a consistency proof from the size this node last cosigned",
                "description": (
                    "Body: `old <size>`, up to 63 base64 consistency proof lines, a blank "
                    "line, then the signed checkpoint. Only the logs of collectives this node "
                    "has a credit line with are witnessed. 200: a cosignature/v1 note "
                    "signature line. 409: the size last cosigned, as `text/x.tlog.size`; "
                    "retry with a proof from it. A request proving that the log signed two "
                    "histories is refused with 422 and its evidence is gossiped."),
                "requestBody": {"required": True, "content": {"text/plain": {
                    "schema": {"type": "string"}}}},
                "responses": {
                    "200": _text("the cosignature line(s)"),
                    "409": {"description": "old is not the size this witness last cosigned",
                            "content": {"text/x.tlog.size": {"schema": {"type": "string"}}}},
                    **_problems(400, 403, 404, 413, 422, 429, 503)}}},
            "/v1/log/checkpoint": {"get": {
                "operationId": "logCheckpointJson", "summary": "The latest checkpoint, as JSON",
                "responses": {"200": _json("CheckpointJson", "the checkpoint"),
                              **_problems(404)}}},
            "/v1/log/inclusion": {"get": {
                "operationId": "logInclusion",
                "summary": "RFC 6962 inclusion proof of entry `index` in the tree of `size`",
                "parameters": [{"name": "index", "in": "query", "required": True,
                                "schema": {"type": "integer", "minimum": 0}},
                               {"name": "size", "in": "query",
                                "schema": {"type": "integer", "minimum": 1}}],
                "responses": {"200": _json("InclusionProof", "the proof"),
                              **_problems(400, 404)}}},
            "/v1/log/consistency": {"get": {
                "operationId": "logConsistency",
                "summary": "RFC 6962 consistency proof between sizes `old` and `new`",
                "parameters": [{"name": "old", "in": "query", "required": True,
                                "schema": {"type": "integer", "minimum": 1}},
                               {"name": "new", "in": "query",
                                "schema": {"type": "integer", "minimum": 1}}],
                "responses": {"200": _json("ConsistencyProof", "the proof"),
                              **_problems(400, 404)}}},
            "/v1/log/proof/{index}": {"get": {
                "operationId": "logTlogProof",
                "summary": "A C2SP tlog-proof bundle for one entry under the latest checkpoint",
                "parameters": [{"name": "index", "in": "path", "required": True,
                                "schema": {"type": "integer", "minimum": 0}}],
                "responses": {"200": _text("the tlog-proof"), **_problems(404)}}},
            "/v1/log/entries/{index}": {"get": {
                "operationId": "logEntry", "summary": "One log entry and its leaf hash",
                "security": SIGNED_READ,
                "parameters": [{"name": "index", "in": "path", "required": True,
                                "schema": {"type": "integer", "minimum": 0}}],
                "responses": {"200": _json("LogEntry", "the entry"), **READ_PROBLEMS}}},
            "/v1/payments": {"post": {
                "operationId": "payAcross",
                "summary": "Pay a member of another collective (a payer-signed payment_order). "
                           "The answer is final: 201 with the receipt (fulfilment and the "
                           "payee's signed quote), or a problem with the refusal's code",
                "requestBody": {
                    "required": True,
                    "description": "the signed payment_order, or {order, memo}: the memo is "
                                   "kept beside this node's log only (erasable; the order "
                                   "carries no hash of it and the payee's node never sees it)",
                    "content": {"application/json": {"schema": {"oneOf": [
                        _ref("SignedMessage"), _ref("PaymentRequest")]}}}},
                "responses": {"201": _json("PaymentReceipt", "paid"),
                              "202": {"description": "still in flight when the node stopped "
                                                     "waiting: ask GET /v1/payments/{order}; "
                                                     "do not pay again",
                                      "content": {"application/json": {}}},
                              **_problems(400, 409, 413, 415, 422, 429, 503)}}},
            "/v1/payments/{order}": {"get": {
                "operationId": "getPayment", "summary": "The attempts of a payment order",
                "security": SIGNED_READ,
                "parameters": [{"name": "order", "in": "path", "required": True, "schema": ID}],
                "responses": {"200": _json("PaymentStatus", "its attempts"), **READ_PROBLEMS}}},
            "/v1/lines": {
                "get": {"operationId": "getLines",
                        "summary": "Credit lines with other collectives, and pending proposals",
                        "security": SIGNED_READ,
                        "responses": {"200": _json("Lines", "lines and proposals"),
                                      **READ_PROBLEMS}},
                "post": {"operationId": "postLine",
                         "summary": "Stewards propose a line to another collective's node "
                                    "(action propose, url) or accept a received proposal",
                         "requestBody": {"required": True, "content": {"application/json": {
                             "schema": _ref("LineRequest")}}},
                         "responses": {"201": {"description": "proposed or active",
                                               "content": {"application/json": {}}},
                                       **_problems(400, 401, 404, 409, 422)}},
            },
            "/v1/settlements": {"post": {
                "operationId": "postSettlement",
                "summary": "Stewards propose a settlement of a credit line out of band "
                           "(action propose), or accept the other collective's (accept)",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": _ref("SettlementRequest")}}},
                "responses": {"201": {"description": "proposed, or settled on both ledgers",
                                      "content": {"application/json": {}}},
                              **_problems(400, 401, 404, 409, 422)}}},
            "/v1/disputes": {"get": {
                "operationId": "getDisputes",
                "summary": "Disputes with peers and their signed evidence (stewards only); "
                           "?all=1 includes resolved ones",
                "security": SIGNED_READ,
                "parameters": [{"name": "all", "in": "query",
                                "schema": {"enum": ["0", "1"]}}],
                "responses": {"200": _json("Disputes", "the disputes"), **READ_PROBLEMS}}},
            "/v1/disputes/{id}/resolve": {"post": {
                "operationId": "resolveDispute",
                "summary": "Mark a dispute resolved, with a note (stewards only)",
                "security": SIGNED_READ,
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": ID}],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": _obj({"note": {"type": "string", "maxLength": 500}})}}},
                "responses": {"200": _json("DisputeResolved", "resolved"), **READ_PROBLEMS}}},
            **{
                f"/v1/peer/{name}": {"post": {
                    "operationId": f"peer{name.capitalize()}",
                    "summary": summary,
                    "security": [{"nodeSignature": []}],
                    "requestBody": {"required": True, "content": {"application/json": {
                        "schema": {"type": "object"}}}},
                    "responses": {"200": {"description": "the signed answer",
                                          "content": {"application/json": {}}},
                                  **({"202": {"description": "forwarded, no answer from "
                                                             "downstream yet: send the same "
                                                             "PREPARE again later",
                                              "content": {"application/json": {}}}}
                                     if name == "prepare" else {}),
                                  **_problems(400, 401, 403, 404, 409, 422, 429)}}}
                for name, summary in (
                    ("lines", "Node to node: propose line terms, or accept ours"),
                    ("quote", "Node to node: ask the payee's collective for a signed quote, "
                              "through the nodes of `path` if it is not the next one"),
                    ("prepare", "Node to node: PREPARE; answered FULFIL or REJECT, signed "
                                "(202 while an intermediary waits on its downstream)"),
                    ("decision", "Node to node: the upstream's decision, post or void"),
                    ("decisions", "Node to node: several decisions of the upstream at once "
                                  "(up to 200); each acknowledged, or refused with its code, "
                                  "in order"),
                    ("statement", "Node to node: a signed statement of our line; answered "
                                  "with ours"),
                    ("settlements", "Node to node: propose a line settlement, or accept "
                                    "ours"),
                    ("suspension", "Node to node: the sender's stewards suspended the line "
                                   "alone"),
                )
            },
            "/v1/peer/graph": {"get": {
                "operationId": "peerGraph",
                "summary": "Node to node: the credit lines this node knows, each signed by "
                           "both of its nodes, for routing",
                "security": [{"nodeSignature": []}],
                "responses": {"200": {"description": "signed line agreements",
                                      "content": {"application/json": {"schema": {
                                          "type": "object", "required": ["lines"],
                                          "properties": {"lines": {
                                              "type": "array",
                                              "items": _ref("SignedMessage")}}}}}},
                              **_problems(400, 401, 403, 422, 429)}}},
            "/v1/lines/status": {"get": {
                "operationId": "getLinesStatus",
                "summary": "Reconcile every credit line now: both sides' signed statements "
                           "(line version, sums in both units, holds in flight) and the "
                           "verdict: agree, unsettled, mismatch, or unreachable",
                "security": SIGNED_READ,
                "responses": {"200": {"description": "one comparison per line",
                                      "content": {"application/json": {"schema": {
                                          "type": "object", "required": ["lines"],
                                          "properties": {"lines": {"type": "array", "items": {
                                              "type": "object",
                                              "required": ["line", "verdict", "detail",
                                                           "ours", "theirs"],
                                              "properties": {"verdict": {"enum": [
                                                  "agree", "unsettled", "mismatch",
                                                  "unreachable"]}}}}}}}}},
                              **READ_PROBLEMS}}},
            "/v1/routes": {"get": {
                "operationId": "getRoutes",
                "summary": "Which collective `to` names (node key, key id or the start of its "
                           "name) and, with `amount` in its unit, the routes a payment to it "
                           "would try and what each costs",
                "security": SIGNED_READ,
                "parameters": [{"name": "to", "in": "query", "required": True,
                                "schema": {"type": "string"}},
                               {"name": "amount", "in": "query",
                                "schema": {"type": "integer", "minimum": 1}}],
                "responses": {"200": _json("Routes", "the collective and its routes"),
                              **READ_PROBLEMS}}},
            **_gossip_paths(),
            "/v1/events/{id}": {
                "get": {"operationId": "getEvent", "summary": "The receipt of an applied event",
                        "security": SIGNED_READ,
                        "parameters": [{"name": "id", "in": "path", "required": True, "schema": ID}],
                        "responses": {"200": _json("Receipt", "the receipt"), **READ_PROBLEMS}}
            },
        },
    })
