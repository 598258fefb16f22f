"""Witnessing (C2SP tlog-witness): cosigning the line peers' logs, and collecting their
cosignatures on ours.

Layer: node. The rules of what to cosign are ``protocol.witness``; the wire format is
``crypto.witness``; this module keeps the state, does the HTTP, and keeps each decision atomic
with storing its outcome.

Who witnesses whom: each node witnesses the logs of the collectives it has a credit line
with, and they witness its log. A witness accepts checkpoints only from those logs (origin
``tally/<ledger id>``, key: the peer's node key as the line pins it).

The witness key is the node key used as an Ed25519 cosignature/v1 key (type 0x04) under the
name ``tally/<ledger id>/witness``. Reusing the node key is safe: a cosignature signs
``cosignature/v1\\ntime <t>\\n`` followed by the checkpoint, a message the node key signs in no
other role (its own checkpoints start with ``tally/``, its JSON messages with ``{``, its
HTTP signature bases with ``"@method"``). And anyone who knows a collective's node key (every
line peer, every member) can check its cosignatures without learning another key.

As a witness (``POST /add-checkpoint``): the request is checked against the checkpoint last
cosigned for that origin, under one lock, and the new one is stored before the cosignature
is returned. A request that proves the log equivocated is refused with 422 and its evidence
goes to gossip (stored, spread, ``on_evidence`` hooks: the line's dispute).

As a log: after each new checkpoint (coalesced: only the latest is sent) the node sends it
to every line peer's ``/add-checkpoint`` with a consistency proof from the size that peer
last cosigned; on 409 it retries once from the size the witness names. Each witness's
latest cosignature is stored and appended to the checkpoint at ``/log/checkpoint`` while that
checkpoint is the latest. A witness that failed is asked again after ``retry_ms``.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from crypto import merkle
from crypto.keys import PublicKey
from crypto.note import (
    ALG_COSIGNATURE_V1,
    MAX_SIGNATURES,
    CosignatureVerifier,
    Cosigner,
    Ed25519Verifier,
    NoteError,
    format_verifier_key,
    parse_note,
)
from crypto.witness import (
    SIZE_CONTENT_TYPE,
    WitnessFormatError,
    format_add_checkpoint,
    format_size,
    parse_add_checkpoint,
    parse_size,
)
from node.api import NODE, limit_rate, read_body
from node.checkpoints import SignedCheckpoint, log_origin
from node.problems import Problem
from node.tasks import stop_tasks
from node.tree import read_hashes
from protocol.codes import ResultCode
from protocol.federation import Line, Party
from protocol.witness import (
    Witnessed,
    WitnessRefusal,
    check_add_checkpoint,
    cosign,
    open_witnessed,
)

if TYPE_CHECKING:
    from node.service import Node

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 32 * 1024  # 63 proof lines and a checkpoint with a few signatures


def witness_name(ledger_id: str) -> str:
    """The cosigner name of a collective's node (tlog-cosignature key name)."""
    return f"{log_origin(ledger_id)}/witness"


def witness_verifier(party: Party) -> CosignatureVerifier:
    return CosignatureVerifier(witness_name(party.ledger), party.node_key.raw)


def witness_vkey(party: Party) -> str:
    return format_verifier_key(witness_name(party.ledger), ALG_COSIGNATURE_V1,
                               party.node_key.raw)


def log_verifier(party: Party) -> Ed25519Verifier:
    return Ed25519Verifier(log_origin(party.ledger), party.node_key.raw)


class Witnessing:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.cfg = node.config.witness
        self.cosigner = Cosigner(witness_name(node.ledger.ledger_id), node.node_key.seed)
        # As a witness: origin -> the checkpoint last cosigned; one request decided at a time.
        self.latest: dict[str, Witnessed] = {}
        self.lock = asyncio.Lock()
        # As a log: witness (node key text) -> (size, root, signature line) of its latest.
        self.cosignatures: dict[str, tuple[int, bytes, str]] = {}
        self.session: aiohttp.ClientSession | None = None
        self.task: asyncio.Task[None] | None = None

    @property
    def vkey(self) -> str:
        return format_verifier_key(self.cosigner.name, ALG_COSIGNATURE_V1,
                                   self.cosigner.public_key)

    def peers(self) -> list[Party]:
        """The other collective of each credit line this node has (witnesses both ways)."""
        me = self.node.node_key.public
        out: dict[PublicKey, Party] = {}
        for signed in self.node.ledger.lines.values():
            if isinstance(signed.msg, Line) and signed.msg.side(me) is not None:
                party = signed.msg.other(me)
                out[party.node_key] = party
        return list(out.values())

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        db = self.node.reader  # not the writer's connection: the writer may be running
        assert db is not None
        logs = {log_origin(p.ledger): log_verifier(p) for p in self.peers()}
        async with db.execute("SELECT origin, note FROM witnessed") as cur:
            async for origin, note in cur:
                verifier = logs.get(origin)
                if verifier is not None:  # a line since gone keeps its row, unused
                    self.latest[origin] = open_witnessed(bytes(note), verifier)
        async with db.execute("SELECT witness, size, root, line FROM cosignatures") as cur:
            async for witness, size, root, line in cur:
                self.cosignatures[witness] = (int(size), bytes(root), str(line))
        self.task = asyncio.create_task(self._run(), name="witnessing")

    async def stop(self) -> None:
        await stop_tasks([self.task])
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def _write(self, sql: str, args: tuple[Any, ...]) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute(sql, args)

        assert self.node.writer is not None
        await self.node.writer.write_sql(run)

    # --- as a witness -----------------------------------------------------------------------

    async def add_checkpoint(self, body: bytes) -> str:
        """Cosign the checkpoint in an add-checkpoint body: the signature line, or
        ``WitnessRefusal`` (``WitnessFormatError`` for a malformed body)."""
        req = parse_add_checkpoint(body)
        logs = {log_origin(p.ledger): log_verifier(p) for p in self.peers()}
        async with self.lock:
            try:
                accepted = check_add_checkpoint(req, logs, self.latest)
            except WitnessRefusal as refusal:
                if refusal.evidence is not None and self.node.gossip is not None:
                    await self.node.gossip.found(refusal.evidence)
                raise
            cp = accepted.checkpoint
            line = cosign(self.cosigner, cp, max(1, self.node.clock_ms() // 1000))
            await self._write(
                "INSERT OR REPLACE INTO witnessed (origin, size, note, updated) "
                "VALUES (?, ?, ?, ?)", (cp.origin, cp.size, accepted.note, self.node.clock_ms()))
            self.latest[cp.origin] = accepted
        return line

    # --- as a log ---------------------------------------------------------------------------

    def cosigned_note(self, cp: SignedCheckpoint) -> bytes:
        """The checkpoint note with the cosignatures collected on it appended (C2SP: extra
        signature lines on the same note; a client that knows no witness ignores them)."""
        c = cp.checkpoint
        lines = sorted(line for size, root, line in self.cosignatures.values()
                       if size == c.size and root == c.root)
        room = MAX_SIGNATURES - len(parse_note(cp.note)[1])
        return cp.note + "".join(lines[:room]).encode("utf-8")

    async def _run(self) -> None:
        checkpointer = self.node.checkpointer
        assert checkpointer is not None
        pushed = -1
        while True:
            try:
                latest = checkpointer.latest
                if latest is not None:
                    pushed = latest.checkpoint.size
                    await self.push_all(latest)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("asking witnesses to cosign failed; trying again later")

            # Until a newer checkpoint, or retry_ms. A plain sleep loop: cancelling a task
            # waiting on a Condition inside wait_for can hang on Python 3.11 (seen when the
            # node stopped), and a sleep is always cancelled at once.
            deadline = asyncio.get_running_loop().time() + self.cfg.retry_ms / 1000
            while asyncio.get_running_loop().time() < deadline and (
                    checkpointer.latest is None or checkpointer.latest.checkpoint.size <= pushed):
                await asyncio.sleep(0.2)

    async def push_all(self, cp: SignedCheckpoint) -> None:
        """Ask every line peer that has not cosigned ``cp`` yet to cosign it, at once."""
        c = cp.checkpoint
        todo = [p for p in self.peers()
                if self.cosignatures.get(p.node_key.text, (0, b""))[:2] != (c.size, c.root)]
        await asyncio.gather(*(self._push_bounded(p, cp) for p in todo))

    async def _push_bounded(self, party: Party, cp: SignedCheckpoint) -> None:
        try:
            await asyncio.wait_for(self.push(party, cp), self.cfg.timeout_ms / 1000)
        except TimeoutError:
            log.info("witness %s did not answer in time", party.name)
        except (aiohttp.ClientError, OSError, WitnessFormatError, NoteError) as exc:
            log.info("witness %s: %s", party.name, exc)

    async def _proof(self, old: int, new: int) -> list[bytes]:
        if old == 0 or old == new:
            return []
        assert self.node.reader is not None
        hashes = await read_hashes(self.node.reader, merkle.consistency_proof_indexes(old, new))
        return merkle.consistency_proof(old, new, hashes)

    async def push(self, party: Party, cp: SignedCheckpoint) -> bool:
        """One witness: send ``cp`` and keep its cosignature. True if it cosigned."""
        fed = self.node.federation
        url = fed.peer_urls.get(party.node_key.key_id) if fed is not None else None
        if not url:
            return False
        if self.session is None:
            self.session = aiohttp.ClientSession()
        key = party.node_key.text
        size = cp.checkpoint.size
        old = self.cosignatures.get(key, (0, b"", ""))[0]
        for _ in range(2):  # a 409 names the size to prove from: one retry
            if old > size:
                log.error("witness %s has cosigned %d entries of this log, more than it "
                          "holds (%d): was an old copy of the database restored?",
                          party.name, old, size)
                return False
            body = format_add_checkpoint(old, await self._proof(old, size), cp.note)
            async with self.session.post(url.rstrip("/") + "/add-checkpoint", data=body,
                                         headers={"Content-Type": "text/plain"}) as resp:
                answer = await resp.read()
                status = resp.status
            if status == 409:
                old = parse_size(answer)
                continue
            if status != 200:
                log.warning("witness %s refused checkpoint %d (HTTP %d): %s", party.name,
                            size, status, answer[:300].decode("utf-8", "replace"))
                return False
            return await self._keep(party, cp, answer)
        return False

    async def _keep(self, party: Party, cp: SignedCheckpoint, answer: bytes) -> bool:
        text, sigs = parse_note(cp.note + answer)
        verifier = witness_verifier(party)
        body = text.encode("utf-8")
        for sig in sigs:
            if (sig.name, sig.key_id) == (verifier.name, verifier.key_id) \
                    and verifier.verify(body, sig.signature):
                c = cp.checkpoint
                await self._write(
                    "INSERT OR REPLACE INTO cosignatures (witness, size, root, line, updated) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (party.node_key.text, c.size, c.root, sig.line, self.node.clock_ms()))
                self.cosignatures[party.node_key.text] = (c.size, c.root, sig.line)
                return True
        log.warning("witness %s answered 200 without a valid cosignature by its key",
                    party.name)
        return False


# --- route ----------------------------------------------------------------------------------


async def post_add_checkpoint(request: web.Request) -> web.Response:
    """C2SP tlog-witness add-checkpoint. Refusals are RFC 9457 problems with the spec's
    status, except 409, whose body the spec fixes: our latest size as ``text/x.tlog.size``."""
    node = request.app[NODE]
    witnessing = node.witnessing
    if witnessing is None:
        raise Problem(ResultCode.overloaded, "this node is starting; retry in a second")
    body = await read_body(request, MAX_REQUEST_BYTES)
    # Checking a signature costs: rate-limited per client address (requests carry no key).
    limit_rate(request, f"witness:{request.remote}")
    try:
        line = await witnessing.add_checkpoint(body)
    except WitnessFormatError as exc:
        raise Problem(ResultCode.invalid_field, f"not a tlog-witness request body: {exc}",
                      status=400) from exc
    except WitnessRefusal as refusal:
        if refusal.status == 409:
            assert refusal.latest_size is not None
            return web.Response(status=409, body=format_size(refusal.latest_size),
                                content_type=SIZE_CONTENT_TYPE)
        raise Problem(refusal.code, refusal.message, status=refusal.status) from refusal
    return web.Response(text=line, content_type="text/plain", charset="utf-8")


def add_witness_routes(app: web.Application) -> None:
    app.router.add_post("/add-checkpoint", post_add_checkpoint)
