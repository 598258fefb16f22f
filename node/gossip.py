"""The gossip loop: this node's signed record, push-pull rounds with random peers, the HTTP
routes peers call, and what happens when evidence of equivocation turns up.

Layer: node. The merge, the digests and the choice of peers are ``protocol.gossip``'s; this
module only does the I/O around them (DESIGN.md §Gossip).

Each round (every ``period_ms`` ± ``jitter_ms``) the node refreshes its own record and
checkpoint in the state, picks ``fanout`` fresh peers (topping up from ``bootstrap`` and
the collectives it has credit lines with while it knows too few), and runs one exchange
with each at once, each bounded by ``timeout_ms``:

    POST /v1/gossip/exchange  {digest}   ->  {update, want}
    POST /v1/gossip/push      {update}   ->  {merged, refused}

Requests are signed by the sending node's key (RFC 9421, as every node-to-node request);
any node may gossip (records carry their own signatures), rate-limited per key.

Evidence: when a merge yields evidence of equivocation (received, or found because two
checkpoints of one size met here), the node stores it, gossips it, stops choosing that node
as a peer and drops its lines from the learned graph, logs a warning for the stewards, and
calls each ``on_evidence`` hook: the place to suspend the credit line with that node.

Test-only fault: with the environment variable ``TALLY_TEST_EQUIVOCATE=1`` (never set by
anything in the node, and not reachable from the API), the node signs a second checkpoint of
the same size as its latest, with another root, and sends it in every other message.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from crypto.checkpoint import format_checkpoint
from crypto.keys import PublicKey
from crypto.note import ALG_ED25519, format_verifier_key, sign_note
from node.api import NODE, read_body, read_json
from node.checkpoints import log_origin, log_signer
from node.client import TallyClient, TallyError
from node.peerapi import authenticate_peer
from node.problems import Problem
from node.tasks import stop_tasks
from protocol.codes import ResultCode
from protocol.evidence import Equivocation, EvidenceError, parse_evidence
from protocol.federation import Line
from protocol.gossip import (
    GossipError,
    GossipState,
    LineEntry,
    Merged,
    NodeRecord,
    Update,
    make_record,
    parse_digest,
    parse_update,
    parse_want,
)
from protocol.routing import Edge

if TYPE_CHECKING:
    from node.service import Node

log = logging.getLogger(__name__)

SOFTWARE = "tally 0.1.0"
FAULT_ENV = "TALLY_TEST_EQUIVOCATE"
EvidenceHook = Callable[[Equivocation], Awaitable[None]]


class Gossip:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.cfg = node.config.gossip
        self.me = node.node_key.public
        self.state = GossipState(self.me, stale_after_ms=self.cfg.stale_after_seconds * 1000,
                                 forget_after_ms=self.cfg.forget_after_seconds * 1000)
        # Peer choice needs no secrecy, only independence between nodes.
        self.rng = random.Random(os.urandom(16))
        self.counter = 0
        self.published: tuple[Any, ...] | None = None
        self.published_at = 0
        self.clients: dict[str, TallyClient] = {}
        self.task: asyncio.Task[None] | None = None
        self.on_evidence: list[EvidenceHook] = []
        self.fault_equivocate = os.environ.get(FAULT_ENV) == "1"
        self.forked_note: bytes | None = None
        self.lie_next = False

    def now(self) -> int:
        return self.node.clock_ms()

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        db = self.node.reader  # not the writer's connection: the writer may be running
        assert db is not None
        async with db.execute("SELECT value FROM meta WHERE key = 'gossip_counter'") as cur:
            row = await cur.fetchone()
        self.counter = int(row[0]) if row else 0
        async with db.execute("SELECT value FROM meta WHERE key LIKE 'gossip_evidence:%'") as cur:
            async for (doc,) in cur:
                try:
                    self.state.add_evidence(parse_evidence(json.loads(doc)))
                except (EvidenceError, ValueError):
                    log.error("stored evidence no longer verifies; ignored")
        if self.fault_equivocate:
            log.warning("%s=1: this node will equivocate (test fault)", FAULT_ENV)
        self.task = asyncio.create_task(self._run(), name="gossip")

    async def stop(self) -> None:
        await stop_tasks([self.task])
        for client in self.clients.values():
            await client.close()
        self.clients.clear()

    async def _run(self) -> None:
        while True:
            try:
                await self.round()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("gossip round failed; trying again next period")
            jitter = self.rng.uniform(-self.cfg.jitter_ms, self.cfg.jitter_ms)
            await asyncio.sleep((self.cfg.period_ms + jitter) / 1000)

    # --- our own record and checkpoint ------------------------------------------------------

    def _terms(self) -> tuple[Any, ...]:
        entries: list[LineEntry] = []
        for signed in self.node.ledger.lines.values():
            if isinstance(signed.msg, Line):
                entries.append(LineEntry.of(signed.msg))
        lines = tuple(sorted(entries, key=lambda e: e.id))
        return (self.node.public_url, lines)

    async def publish(self) -> None:
        """Sign a newer record of this node if its terms changed or it is due a refresh."""
        now = self.now()
        terms = self._terms()
        if terms == self.published and now - self.published_at < self.cfg.refresh_seconds * 1000:
            return
        if not self.node.public_url:
            return  # not reachable yet: nothing to tell anyone
        state = self.node.ledger
        self.counter = max(self.counter + 1, now)
        await self._set_meta("gossip_counter", str(self.counter))
        signed = make_record(
            self.node.node_key, name=state.genesis.name, ledger=state.ledger_id,
            log_vkey=format_verifier_key(log_origin(state.ledger_id), ALG_ED25519,
                                         self.me.raw),
            urls=[self.node.public_url], unit=state.genesis.unit, lines=terms[1],
            software=SOFTWARE, counter=self.counter, issued=now)
        self.state.add_record(signed, now)
        self.published, self.published_at = terms, now

    def _own_checkpoint(self) -> None:
        checkpointer = self.node.checkpointer
        latest = checkpointer.latest if checkpointer is not None else None
        if latest is None or self.me.text not in self.state.records:
            return
        held = self.state.checkpoints.get(self.me.text)
        if held is None or held.checkpoint.size < latest.checkpoint.size:
            self.state.add_checkpoint(self.me.text, latest.note)
            if self.fault_equivocate:
                c = latest.checkpoint
                fake_root = hashlib.sha256(b"fork" + c.root).digest()
                signer = log_signer(self.node.ledger.ledger_id, self.node.node_key)
                self.forked_note = sign_note(format_checkpoint(c.origin, c.size, fake_root),
                                             [signer])

    def _for_peer(self, update: Update, peer: PublicKey | None) -> Update:
        """The update as sent to ``peer``: itself, unless the test fault makes us lie."""
        if self.forked_note is None or peer is None:
            return update
        self.lie_next = not self.lie_next  # every other message: both versions get out
        if not self.lie_next:
            return update
        forked = self.forked_note.decode("utf-8")
        return Update(update.records,
                      tuple((k, forked if k == self.me.text else n) for k, n in update.checkpoints),
                      update.evidence)

    # --- rounds -----------------------------------------------------------------------------

    async def round(self) -> None:
        await self.publish()
        self._own_checkpoint()
        now = self.now()
        self.state.forget(now)
        targets: list[tuple[str, PublicKey | None]] = [
            (r.urls[0], r.key) for r in self.state.choose_peers(self.cfg.fanout, now, self.rng)]
        if len(targets) < self.cfg.fanout:
            known = {url for url, _ in targets} | {self.node.public_url}
            # The configured bootstrap nodes, and the collectives we have credit lines with:
            # a node with a line needs no bootstrap setting to be found and to find others.
            fed = self.node.federation
            line_peers = list(fed.peer_urls.values()) if fed is not None else []
            spare = [u for u in dict.fromkeys([*self.cfg.bootstrap, *line_peers])
                     if u not in known]
            self.rng.shuffle(spare)
            targets += [(u, None) for u in spare[: self.cfg.fanout - len(targets)]]
        if targets:
            await asyncio.gather(*(self._exchange_bounded(url, key) for url, key in targets))

    async def _exchange_bounded(self, url: str, key: PublicKey | None) -> None:
        try:
            await asyncio.wait_for(self.exchange(url, key), self.cfg.timeout_ms / 1000)
        except TimeoutError:
            log.info("gossip with %s timed out", url)
        except (TallyError, GossipError, ValueError) as exc:
            log.info("gossip with %s failed: %s", url, exc)

    def client(self, url: str) -> TallyClient:
        client = self.clients.get(url)
        if client is None:
            client = TallyClient(url, self.node.node_key, retries=0,
                                 timeout=self.cfg.timeout_ms / 1000)
            self.clients[url] = client
        return client

    async def exchange(self, url: str, key: PublicKey | None) -> None:
        """One push-pull exchange with the node at ``url`` (whose record says ``key``)."""
        client = self.client(url)
        info = await client.info()
        if key is not None and info.node_key != key:
            raise GossipError(ResultCode.unknown_peer,
                              f"{url} is now another node's; its old record will go stale")
        if info.node_key == self.me:
            return
        _, answer = await client._request(
            "POST", "/v1/gossip/exchange", {"digest": self.state.digest().to_json()},
            signed=True, idempotent=False)
        if not isinstance(answer, dict) or set(answer) != {"update", "want"}:
            raise GossipError(ResultCode.invalid_field, "the answer is not {update, want}")
        cap = self.cfg.max_digest_entries
        update = parse_update(answer["update"], cap)
        want = parse_want(answer["want"], cap)
        await self.merged(self.state.merge(update, self.now()))
        if not want.empty:
            push = self._for_peer(self.state.items_for(want, self.cfg.max_update_bytes,
                                                       self.rng), info.node_key)
            await client._request("POST", "/v1/gossip/push", {"update": push.to_json()},
                                  signed=True, idempotent=False)

    # --- what peers send us -------------------------------------------------------------------

    def answer(self, body: Any, sender: PublicKey) -> dict[str, Any]:
        if not isinstance(body, dict) or set(body) != {"digest"}:
            raise GossipError(ResultCode.invalid_field, 'the body must be {"digest": ...}')
        digest = parse_digest(body["digest"], self.cfg.max_digest_entries)
        update = self.state.newer_than(digest, self.cfg.max_update_bytes, self.rng)
        return {"update": self._for_peer(update, sender).to_json(),
                "want": self.state.wants(digest).to_json()}

    async def receive(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or set(body) != {"update"}:
            raise GossipError(ResultCode.invalid_field, 'the body must be {"update": ...}')
        update = parse_update(body["update"], self.cfg.max_digest_entries)
        merged = self.state.merge(update, self.now())
        await self.merged(merged)
        if merged.refused and not merged.outcomes:
            raise merged.refused[0]
        return {"merged": len(merged.outcomes),
                "refused": [{"code": e.code.value, "message": e.message} for e in merged.refused]}

    async def found(self, ev: Equivocation) -> None:
        """Evidence this node found itself (a witness's check, ``node.witness``): kept,
        gossiped and acted on like evidence received."""
        if self.state.add_evidence(ev):
            await self.merged(Merged(evidence=[ev]))

    async def merged(self, merged: Merged) -> None:
        for exc in merged.refused:
            log.debug("gossip item refused (%s): %s", exc.code.value, exc.message)
        for ev in merged.evidence:
            await self._set_meta(f"gossip_evidence:{ev.id}", json.dumps(ev.to_json()))
            log.warning(
                "EVIDENCE OF EQUIVOCATION: %s. Stewards: stop trusting this node and suspend "
                "any credit line with it; the evidence (id %s) is served at "
                "/v1/gossip/evidence/%s and can be checked with `tally evidence check`.",
                ev.summary(), ev.id, ev.id)
            for hook in self.on_evidence:
                try:
                    await hook(ev)
                except Exception:
                    log.exception("an evidence hook failed")

    # --- reads ----------------------------------------------------------------------------

    def edges(self) -> list[Edge]:
        """The credit lines learnt by gossip, as routing takes them (``protocol.routing``)."""
        return self.state.edges(self.now())

    def suspended(self, key: PublicKey) -> bool:
        """Whether this node holds evidence that ``key`` equivocated."""
        return key in self.state.suspended

    def nodes_document(self) -> dict[str, Any]:
        now = self.now()
        nodes = []
        for known in sorted(self.state.records.values(), key=lambda k: k.record.name):
            r: NodeRecord = known.record
            seen = self.state.checkpoints.get(r.key.text)
            nodes.append({
                "key": r.key.text, "key_id": r.key.key_id, "name": r.name, "ledger": r.ledger,
                "urls": list(r.urls), "unit": r.unit.to_json(), "software": r.software,
                "protocol": r.protocol, "counter": r.counter, "issued": r.issued,
                "age_seconds": max(0, (now - r.issued) // 1000),
                "stale": self.state.is_stale(r, now), "suspended": r.key in self.state.suspended,
                "self": r.key == self.me, "lines": [e.to_json() for e in r.lines],
                "checkpoint_size": seen.checkpoint.size if seen else None,
            })
        return {
            "self": self.me.text,
            "nodes": nodes,
            "edges": [{"line": e.line, "a": e.a.text, "b": e.b.text, "active": e.active,
                       "version": e.version} for e in self.edges()],
            "evidence": [{"id": i, "offender": ev.offender.text, "summary": ev.summary()}
                         for i, ev in sorted(self.state.evidence.items())],
        }

    async def _set_meta(self, key: str, value: str) -> None:
        assert self.node.writer is not None
        await self.node.writer.set_meta(key, value)


# --- routes ---------------------------------------------------------------------------------


def _gossip(request: web.Request) -> Gossip:
    gossip = request.app[NODE].gossip
    assert gossip is not None
    return gossip


async def _signed_body(request: web.Request) -> tuple[Any, PublicKey]:
    node = request.app[NODE]
    await read_body(request, node.config.gossip.max_message_bytes)  # read once, up to the cap
    sender = await authenticate_peer(request, known_only=False)
    return await read_json(request, node.config.gossip.max_message_bytes), sender



async def post_exchange(request: web.Request) -> web.Response:
    body, sender = await _signed_body(request)
    return web.json_response(_gossip(request).answer(body, sender))


async def post_push(request: web.Request) -> web.Response:
    body, _ = await _signed_body(request)
    return web.json_response(await _gossip(request).receive(body))


async def get_nodes(request: web.Request) -> web.Response:
    return web.json_response(_gossip(request).nodes_document())


async def get_evidence(request: web.Request) -> web.Response:
    ev = _gossip(request).state.evidence.get(request.match_info["id"])
    if ev is None:
        raise Problem(ResultCode.not_found, "no evidence by that id here")
    return web.json_response(ev.to_json())


def add_gossip_routes(app: web.Application) -> None:
    app.router.add_post("/v1/gossip/exchange", post_exchange)
    app.router.add_post("/v1/gossip/push", post_push)
    app.router.add_get("/v1/gossip/nodes", get_nodes)
    app.router.add_get("/v1/gossip/evidence/{id}", get_evidence)

