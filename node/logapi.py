"""Serving the log: C2SP tlog-tiles under ``/log/``, and JSON proofs under ``/v1/log/``.

Layer: node. Thin handlers over the stored hashes (``node.tree``) and the pure tile and proof
functions of ``crypto``. What is public and what is not (DESIGN.md, privacy):

- public: ``/log/checkpoint``, ``/log/vkey``, hash tiles ``/log/tile/<L>/<N>[.p/<W>]``, and the
  JSON checkpoint, inclusion and consistency proofs — sizes and hashes only;
- entries (``/log/tile/entries/...`` bundles and ``/v1/log/entries/{index}``): to members and
  stewards on signed requests; with private balances a member gets only entries that
  concern them; to anyone when the operator sets ``[log] public_entries`` (``tally demo``).

Nothing beyond the latest signed checkpoint is served, so every tile a client fetches can
be checked against a checkpoint it can get.
"""

from __future__ import annotations

import base64
from typing import Any

from aiohttp import web

from crypto import merkle
from crypto.canonical import parse_json
from crypto.note import format_verifier_key
from crypto.tiles import (
    ENTRIES,
    TILE_WIDTH,
    TileError,
    encode_entry_bundle,
    parse_tile_path,
    tile_data,
    tile_hash_indexes,
)
from crypto.tlogproof import format_tlog_proof
from node.api import NODE, authenticate
from node.checkpoints import SignedCheckpoint, log_origin
from node.problems import Problem
from node.service import Node
from node.tree import read_hashes
from node.witness import add_witness_routes, witness_vkey
from protocol.codes import ResultCode
from protocol.messages import Transfer, parse_log_entry

IMMUTABLE = "public, max-age=31536000, immutable"
SHORT = "public, max-age=1"
# Entry bundles served only on signed requests: no shared cache may keep them for others.
PRIVATE_IMMUTABLE = "private, max-age=31536000, immutable"
PRIVATE_SHORT = "private, max-age=1"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def vkey_of(node: Node) -> str:
    name = log_origin(node.ledger.ledger_id)
    return format_verifier_key(name, 0x01, node.node_key.public.raw)


def latest(node: Node) -> SignedCheckpoint:
    assert node.checkpointer is not None
    cp = node.checkpointer.latest
    if cp is None:
        raise Problem(ResultCode.not_found, "no checkpoint signed yet; retry in a second")
    return cp


def served_note(node: Node, cp: SignedCheckpoint) -> bytes:
    """The checkpoint note as served: with the cosignatures its witnesses gave it
    (``node.witness``), still a valid signed note for clients that know none of them."""
    return node.witnessing.cosigned_note(cp) if node.witnessing is not None else cp.note


def _decimal(raw: str | None) -> int | None:
    """A non-negative decimal index or size, or None. isdigit() alone takes "²" (int() then
    fails) and 5,000 digits (over int()'s limit): both were 500s."""
    if raw is None or not (raw.isascii() and raw.isdigit() and len(raw) <= 19):
        return None
    return int(raw)


def _size_param(request: web.Request, name: str, low: int, high: int) -> int:
    value = _decimal(request.query.get(name))
    if value is None or not low <= value <= high:
        raise Problem(
            ResultCode.invalid_field,
            f"query {name} must be an integer from {low} to {high} "
            f"(the latest checkpoint covers {high} entries)" if high >= low else
            f"query {name} is out of range",
            field=name,
        )
    return value


async def entries_public_or_member(request: web.Request) -> None:
    """Entry bundles: public where the operator opened the log, else members' signed reads.

    With private balances, whole bundles would show others' entries, so only stewards get
    them; members read their own entries one by one with proofs.
    """
    node = request.app[NODE]
    if node.config.log.public_entries:
        return
    reader = await authenticate(request)
    if not reader.steward and node.config.ledger.books != "open":
        raise Problem(
            ResultCode.forbidden,
            "balances are private here: read your own entries at /v1/log/entries/{index}",
        )


# --- C2SP tlog-tiles ------------------------------------------------------------------------


async def get_checkpoint(request: web.Request) -> web.Response:
    node = request.app[NODE]
    return web.Response(
        body=served_note(node, latest(node)), content_type="text/plain", charset="utf-8",
        headers={"Cache-Control": SHORT},
    )


async def get_vkey(request: web.Request) -> web.Response:
    return web.Response(
        text=vkey_of(request.app[NODE]) + "\n", content_type="text/plain",
        headers={"Cache-Control": IMMUTABLE},
    )


async def get_tile(request: web.Request) -> web.Response:
    node = request.app[NODE]
    path = "tile/" + request.match_info["path"]
    try:
        tile = parse_tile_path(path)
    except TileError as exc:
        raise Problem(ResultCode.not_found, f"{path} is not a tile path: {exc}") from exc
    size = latest(node).checkpoint.size
    span = TILE_WIDTH ** max(tile.level, 0)  # leaves under each hash of this tile's level
    if (tile.index * TILE_WIDTH + tile.width) * span > size:
        raise Problem(
            ResultCode.not_found,
            f"{path} lies beyond the latest checkpoint ({size} entries)",
        )
    assert node.reader is not None
    cache = SHORT if tile.is_partial else IMMUTABLE
    if tile.level == ENTRIES:
        await entries_public_or_member(request)
        if not node.config.log.public_entries:
            cache = PRIVATE_SHORT if tile.is_partial else PRIVATE_IMMUTABLE
        first = tile.index * TILE_WIDTH
        async with node.reader.execute(
            "SELECT entry FROM log WHERE idx >= ? AND idx < ? ORDER BY idx",
            (first, first + tile.width),
        ) as cur:
            entries = [bytes(row[0]) for row in await cur.fetchall()]
        body = encode_entry_bundle(entries)
    else:
        body = tile_data(tile, await read_hashes(node.reader, tile_hash_indexes(tile)))
    return web.Response(
        body=body,
        content_type="application/octet-stream",
        headers={"Cache-Control": cache},
    )


# --- JSON proofs ------------------------------------------------------------------------------


async def get_checkpoint_json(request: web.Request) -> web.Response:
    node = request.app[NODE]
    cp = latest(node)
    return web.json_response({
        "origin": cp.checkpoint.origin,
        "size": cp.checkpoint.size,
        "root": b64(cp.checkpoint.root),
        "note": served_note(node, cp).decode(),
        "vkey": vkey_of(node),
        # Witnessing: this node's own cosigner key, and those of the line peers that witness
        # its log (keys as its credit lines pin them; a member may prefer keys of its own).
        "witness_vkey": node.witnessing.vkey if node.witnessing is not None else None,
        "witnesses": sorted(witness_vkey(p) for p in node.witnessing.peers())
        if node.witnessing is not None else [],
    })


async def get_inclusion(request: web.Request) -> web.Response:
    node = request.app[NODE]
    top = latest(node).checkpoint.size
    size = _size_param(request, "size", 1, top) if "size" in request.query else top
    index = _size_param(request, "index", 0, size - 1)
    assert node.reader is not None
    hashes = await read_hashes(node.reader, merkle.inclusion_proof_indexes(index, size))
    proof = merkle.inclusion_proof(index, size, hashes)
    return web.json_response({"index": index, "size": size, "proof": [b64(h) for h in proof]})


async def get_consistency(request: web.Request) -> web.Response:
    node = request.app[NODE]
    top = latest(node).checkpoint.size
    new = _size_param(request, "new", 1, top) if "new" in request.query else top
    old = _size_param(request, "old", 1, new)
    assert node.reader is not None
    hashes = await read_hashes(node.reader, merkle.consistency_proof_indexes(old, new))
    proof = merkle.consistency_proof(old, new, hashes)
    return web.json_response({"old": old, "new": new, "proof": [b64(h) for h in proof]})


async def get_tlog_proof(request: web.Request) -> web.Response:
    """A C2SP tlog-proof bundle for one entry under the latest checkpoint: kept offline,
    it proves the entry is in the log whatever the node does later."""
    node = request.app[NODE]
    cp = latest(node)
    raw = request.match_info["index"]
    index = _decimal(raw)
    if index is None or index >= cp.checkpoint.size:
        raise Problem(
            ResultCode.not_found,
            f"entry {raw[:30]} is not covered by the latest checkpoint "
            f"({cp.checkpoint.size} entries)",
        )
    assert node.reader is not None
    hashes = await read_hashes(
        node.reader, merkle.inclusion_proof_indexes(index, cp.checkpoint.size)
    )
    proof = merkle.inclusion_proof(index, cp.checkpoint.size, hashes)
    return web.Response(body=format_tlog_proof(index, proof, served_note(node, cp)),
                        content_type="text/plain",
                        charset="utf-8")


async def get_entry(request: web.Request) -> web.Response:
    """One entry, for a member checking their own: the entry and its leaf hash."""
    node = request.app[NODE]
    reader = await authenticate(request)
    raw = request.match_info["index"]
    size = latest(node).checkpoint.size
    index = _decimal(raw)
    if index is None or index >= size:
        raise Problem(ResultCode.not_found, f"no entry {raw[:30]} under the latest checkpoint")
    assert node.reader is not None
    async with node.reader.execute("SELECT entry FROM log WHERE idx = ?", (index,)) as cur:
        row = await cur.fetchone()
    assert row is not None
    entry = bytes(row[0])
    if not reader.steward and node.config.ledger.books != "open":
        msg = parse_log_entry(parse_json(entry)).payload.msg
        concerns = (
            reader.handle in (msg.payer, msg.payee)
            if isinstance(msg, Transfer)
            else getattr(msg, "handle", None) == reader.handle
        )
        if not concerns:
            raise Problem(ResultCode.forbidden, "balances are private here: not your entry")
    doc: dict[str, Any] = {
        "index": index,
        "entry": b64(entry),
        "leaf_hash": b64(merkle.leaf_hash(entry)),
    }
    return web.json_response(doc)


def add_log_routes(app: web.Application) -> None:
    app.router.add_get("/log/checkpoint", get_checkpoint)
    app.router.add_get("/log/vkey", get_vkey)
    app.router.add_get("/log/tile/{path:.+}", get_tile)
    app.router.add_get("/v1/log/checkpoint", get_checkpoint_json)
    app.router.add_get("/v1/log/inclusion", get_inclusion)
    app.router.add_get("/v1/log/consistency", get_consistency)
    app.router.add_get("/v1/log/proof/{index}", get_tlog_proof)
    app.router.add_get("/v1/log/entries/{index}", get_entry)
    add_witness_routes(app)

