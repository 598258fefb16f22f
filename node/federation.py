"""The federation driver: credit lines with other collectives, and payments across them.

Layer: node. Carries out what ``protocol.settlement`` decides and ``protocol.lines`` allows:
it talks to peer nodes (signed HTTP requests with the node key), keeps each payment's state
in the ``payments`` table, resends what was not acknowledged, and on start resumes every
unfinished payment.

Rules it keeps (DESIGN.md §Federation):
- every state is committed (through the single writer) before any message about it is sent;
- every message is idempotent by attempt id: a repeated PREPARE gets the same FULFIL or
  REJECT, a repeated DECISION the same acknowledgement;
- the destination fulfils at most one attempt per order;
- on each line the upstream node alone decides post or void, by its own clock; the payer is
  told "failed" only after a definite REJECT or a void at expiry, never after a mere timeout.

A payment, as the source sees it::

    order (payer-signed) -> quote (destination-signed) -> hold logged -> PREPARE sent
      -> FULFIL: post logged, DECISION post delivered      => the payer's receipt
      -> REJECT, or expiry: void logged, DECISION void      => refused, with its code
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import logging
import os
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, cast

import aiosqlite

from crypto.canonical import canonical_json
from crypto.keys import PublicKey
from node import storage
from node.client import CanonicalBody, TallyClient, TallyError
from node.config import ANSWER_SLACK_MS, payment_answer_ms
from node.intake import Memo
from node.problems import FederationError
from node.tasks import stop_tasks
from node.writer import EventRequest, SqlRequest
from protocol import settlement as sm
from protocol.codes import ResultCode
from protocol.federation import (
    Decision,
    Fulfil,
    Line,
    LineSettlement,
    PaymentOrder,
    Prepare,
    Quote,
    Reject,
    Statement,
    condition_of,
)
from protocol.ledger import Outcome, SigCheck
from protocol.lines import SIGNATURES, is_suspension_of, line_for_peer, settlement_refusal
from protocol.messages import MessageError, Signed, parse_log_entry, parse_signed, sign_message
from protocol.reconcile import Verdict, compare, signer_ok, statement
from protocol.routing import Edge, Route, amounts, edge_of, edges_from_signed, routes

if TYPE_CHECKING:
    from node.service import Node

log = logging.getLogger(__name__)


@dataclass
class PaymentRecord:
    """What this node keeps about one attempt: the state machine and the signed messages."""

    payment: sm.Payment
    prepare: Signed  # the PREPARE we sent (source) or received (intermediary, destination)
    peer: str  # key id of the node we send PREPARE to (source, intermediary), or got it from
    answer: Signed | None = None  # intermediary, destination: the FULFIL or REJECT we gave
    result: dict[str, Any] | None = None  # source: what the payer was told
    forward: Signed | None = None  # intermediary: the PREPARE we forwarded
    upstream: str | None = None  # intermediary: key id of the node we got the PREPARE from
    last_refusal: tuple[str, str] | None = None  # a peer's unsigned 4xx, for the payer
    done: asyncio.Event = field(default_factory=asyncio.Event)
    # One event at a time: the ticker and the task sending PREPARE may both want to decide.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    sending_decision: bool = False  # one DECISION in flight: the ticker does not send a twin

    def _state_json(self) -> dict[str, Any]:
        """Everything but the signed messages."""
        p = self.payment
        return {
            "id": p.id, "role": p.role.value, "condition": p.condition.hex(),
            "inbound": p.inbound.value if p.inbound else None,
            "inbound_expiry": p.inbound_expiry,
            "outbound": p.outbound.value if p.outbound else None,
            "outbound_expiry": p.outbound_expiry, "decision_acked": p.decision_acked,
            "hold": p.hold, "fulfilment": p.fulfilment.hex() if p.fulfilment else None,
            "peer": self.peer, "result": self.result, "upstream": self.upstream,
        }

    def to_json(self) -> dict[str, Any]:
        return {**self._state_json(), "prepare": self.prepare.to_json(),
                "answer": self.answer.to_json() if self.answer else None,
                "forward": self.forward.to_json() if self.forward else None}

    def to_doc(self) -> str:
        """``json.dumps(self.to_json())``, with the signed messages spliced in from their
        cached canonical bytes: a record is stored at every step of a payment, and its
        PREPAREs (each carrying the order and the quote) need not be encoded every time."""
        head = json.dumps(self._state_json())
        signed = ",".join(f'"{name}":{s.canonical.decode() if s else "null"}'
                          for name, s in (("prepare", self.prepare), ("answer", self.answer),
                                          ("forward", self.forward)))
        return f"{head[:-1]},{signed}}}"

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> PaymentRecord:
        payment = sm.Payment(
            id=doc["id"], role=sm.Role(doc["role"]), condition=bytes.fromhex(doc["condition"]),
            inbound=sm.In(doc["inbound"]) if doc["inbound"] else None,
            inbound_expiry=doc["inbound_expiry"],
            outbound=sm.Out(doc["outbound"]) if doc["outbound"] else None,
            outbound_expiry=doc["outbound_expiry"], decision_acked=doc["decision_acked"],
            hold=doc["hold"],
            fulfilment=bytes.fromhex(doc["fulfilment"]) if doc["fulfilment"] else None,
        )
        answer, forward = doc.get("answer"), doc.get("forward")
        return cls(
            payment, parse_signed(doc["prepare"]), doc["peer"],
            parse_signed(answer) if answer else None, doc.get("result"),
            parse_signed(forward) if forward else None, doc.get("upstream"),
        )

    @property
    def outbound(self) -> Signed:
        """The PREPARE this node sent downstream (source or intermediary)."""
        return self.forward if self.forward is not None else self.prepare

    @property
    def sender(self) -> str:
        """Key id of the node whose DECISION this node follows (its upstream)."""
        return self.upstream if self.upstream is not None else self.peer


LINE_KINDS = frozenset({"line"})


def _merge(signed: Signed, *others: Signed) -> Signed:
    """One message with every distinct signature the copies carry."""
    sigs = list(signed.sigs)
    seen = {s.key for s in sigs}
    for other in others:
        if other.msg != signed.msg:
            raise FederationError(ResultCode.invalid_field, "the copies sign different terms")
        for s in other.sigs:
            if s.key not in seen:
                sigs.append(s)
                seen.add(s.key)
    return Signed(signed.msg, tuple(sigs))


# Refusals that say "not this way" rather than "not at all": the source tries its next route.
RETRY_ON_ANOTHER_ROUTE = frozenset({
    ResultCode.exceeds_line_limit, ResultCode.overloaded, ResultCode.line_suspended,
    ResultCode.no_route, ResultCode.unknown_peer, ResultCode.insufficient_time,
    ResultCode.exceeds_max_pay,
})
MAX_LEARNED_LINES = 2000
# DECISIONs are not on the payer's path: those for one peer wait this long to go together.
DECISION_GATHER_S = 0.05
MAX_DECISIONS = 200  # per request: 200 signed DECISIONs stay well under 64 KiB


def canonical_body(**fields: Any) -> CanonicalBody:
    """A node-to-node request (or answer) body in canonical form: signed messages spliced in
    from their cached canonical bytes (a PREPARE carries the order and the quote), the rest
    encoded."""
    parts = []
    for name in sorted(fields):  # ASCII names: sorted as RFC 8785 sorts them
        value = fields[name]
        if isinstance(value, Signed):
            raw = value.canonical
        elif isinstance(value, list) and value and all(isinstance(v, Signed) for v in value):
            raw = b"[" + b",".join(v.canonical for v in value) + b"]"
        else:
            raw = canonical_json(value)
        parts.append(b'"' + name.encode("ascii") + b'":' + raw)
    return CanonicalBody(b"{" + b",".join(parts) + b"}")


def _peer_refusal(exc: TallyError, what: str, peer: str = "") -> FederationError:
    """A peer's HTTP refusal, as one of our result codes. ``peer``, the collective's name:
    a node that does not answer is reported as such (``unreachable`` in the problem), not as
    a refusal."""
    if exc.code == "unreachable":  # not a ResultCode: test it before mapping the rest
        if peer:
            return FederationError(
                ResultCode.no_route, f"{peer}'s node is not answering "
                f"({exc.problem.get('reason') or exc.detail}); nothing was paid",
                extra={"unreachable": peer})
        return FederationError(ResultCode.no_route, f"{what}: unreachable: {exc.detail}")
    if exc.status >= 500:
        # The peer failed, not this node: never our own 500. Another route may do.
        log.warning("%s: the peer failed (%d %s): %s", what, exc.status, exc.code, exc.detail)
        return FederationError(ResultCode.no_route, f"{what}: it failed ({exc.code})")
    code = exc.code if exc.code in ResultCode.__members__ else "rejected"
    return FederationError(ResultCode(code), f"{what}: {exc.detail}")


def _arrives(route: Route, amount_from: int) -> int:
    """What reaches the payee when the source sends ``amount_from``: each hop converts what
    it received at its line's rate, rounding down, and forwards all of it."""
    amount = amount_from
    for i, edge in enumerate(route.edges):
        amount = edge.convert(amount, route.nodes[i])
    return amount


def _order_id(record: PaymentRecord) -> str:
    order = record.prepare.msg.order.msg  # type: ignore[union-attr]
    assert isinstance(order, PaymentOrder)
    return order.id


class Federation:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.payments: dict[str, PaymentRecord] = {}
        self.peer_urls: dict[str, str] = {}
        self.clients: dict[str, TallyClient] = {}
        self.proposals: dict[str, tuple[Signed, str]] = {}
        # Lines between other collectives, as their peers reported them (both nodes signed).
        self.learned: dict[str, Signed] = {}
        self.extra_edges: Any = None  # a callable giving more edges (gossip), if any
        self.reconciled: dict[str, dict[str, Any]] = {}  # line id -> the latest comparison
        # line id -> (the difference, since when, raised already)
        self._unsettled: dict[str, tuple[Any, int, bool]] = {}
        self._mismatched: dict[str, Any] = {}  # line id -> the mismatch last raised
        # Settlement proposals not yet logged: id -> (signed, "ours" or "theirs").
        self.settlements: dict[str, tuple[Signed, str]] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        # Destination: PREPAREs of one order are handled one at a time, so that at most one
        # attempt per order is ever fulfilled (order id -> [lock, users]).
        self._order_locks: dict[str, list[Any]] = {}
        # DECISIONs waiting to go to each peer (key id), and the peers that take them only
        # one per request (an older node: no POST /v1/peer/decisions).
        self._outbox: dict[str, list[PaymentRecord]] = {}
        self._single_decisions: set[str] = set()

    @property
    def public_url(self) -> str:
        return self.node.public_url

    # --- lifecycle ---------------------------------------------------------------------

    @property
    def cfg(self) -> Any:
        return self.node.config.federation

    @property
    def key(self) -> PublicKey:
        return self.node.node_key.public

    async def start(self) -> None:
        db = self.node.reader  # not the writer's connection: the writer may be running
        assert db is not None
        async with db.execute("SELECT key, value FROM meta WHERE key LIKE 'peer_url:%'") as cur:
            self.peer_urls = {row[0].split(":", 1)[1]: row[1] async for row in cur}
        async with db.execute("SELECT key, value FROM meta WHERE key LIKE 'proposal:%'") as cur:
            async for row in cur:
                doc = json.loads(row[1])
                self.proposals[row[0].split(":", 1)[1]] = (parse_signed(doc["line"]), doc["url"])
        await self.load_settlements()
        async with db.execute("SELECT doc FROM payments WHERE finished = 0") as cur:
            async for row in cur:
                record = PaymentRecord.from_json(json.loads(row[0]))
                self.payments[record.payment.id] = record
        if self.payments:
            log.info("resuming %d unfinished payment(s)", len(self.payments))
        for record in list(self.payments.values()):
            if record.payment.role != sm.Role.destination and \
                    record.payment.outbound == sm.Out.held:
                self._spawn(self._drive_outbound(record))
        self._spawn(self._ticker())
        self._spawn(self._graph_loop())
        self._spawn(self._reconcile_loop())

    async def stop(self) -> None:
        await stop_tasks(list(self.tasks))
        for client in self.clients.values():
            await client.close()
        self.clients.clear()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def now(self) -> int:
        return self.node.clock_ms()

    # --- storage (through the single writer) --------------------------------------------

    async def _set_meta(self, key: str, value: str) -> None:
        assert self.node.writer is not None
        await self.node.writer.set_meta(key, value)

    def _storing(self, record: PaymentRecord, extra: Any = None,
                 only_if: Any = None) -> SqlRequest:
        """The writer's request that stores ``record`` as it is now (and runs ``extra``, a
        function of the writer's ``sqlite3.Connection``); with ``only_if``, only if that
        returns True when the writer runs it. Run in the writer's transaction on the event
        loop's thread: a payment stores its record several times, none a hop to a thread."""
        # As it is now: its fields are replaced, never changed in place, so a shallow copy
        # keeps this state; encoded only if stored.
        snapshot, now = copy.copy(record), self.now()

        def run(conn: sqlite3.Connection) -> None:
            if only_if is not None and not only_if():
                return
            conn.execute(
                "INSERT OR REPLACE INTO payments (id, doc, finished, updated) VALUES (?, ?, ?, ?)",
                (snapshot.payment.id, snapshot.to_doc(), 1 if snapshot.payment.finished else 0,
                 now))
            if extra is not None:
                extra(conn)

        return SqlRequest(run)

    def _stored(self, record: PaymentRecord) -> None:
        if record.payment.finished:
            self.payments.pop(record.payment.id, None)
        else:
            self.payments[record.payment.id] = record

    async def _store(self, record: PaymentRecord, extra: Any = None) -> None:
        assert self.node.writer is not None
        request = self._storing(record, extra)
        self.node.writer.submit_nowait(request)
        await request.future
        self._stored(record)

    async def _log_and_store(self, signed: Signed, record: PaymentRecord, after: PaymentRecord,
                             hold: str, state: str, extra: Any = None,
                             before: bool = False) -> Outcome:
        """Log ``signed`` and store ``after`` — ``record`` as it is once the entry took
        effect — in the same commit, then give ``record`` that state.

        ``after`` is stored only if the ledger's hold ``hold`` is then in ``state`` (checked
        by the writer, after it applied the entry): the record never claims what the books
        do not. With ``before``, ``record`` as it is now is stored first (``_store_and_log``).
        Should the entry and the store fall in two batches, the store still follows the
        entry; should it find the hold not yet so, the record is stored after, by itself,
        as ``_log`` then ``_store`` would. Nothing is sent before this returns.
        """
        check = await self._check(signed)
        assert self.node.writer is not None
        wrote: list[bool] = []

        def took_effect() -> bool:
            found = self.node.ledger.holds.get(hold)
            return found is not None and found.state == state

        def applied() -> bool:
            wrote.append(took_effect())
            return wrote[-1]

        entry = EventRequest(signed, check)
        store = self._storing(after, extra, only_if=applied)
        # ``record`` before the entry is for recovery should they commit apart; committed
        # together with ``after``, it would only be overwritten in the same transaction.
        requests: list[Any] = [self._storing(record, only_if=lambda: not took_effect())
                               ] if before else []
        self.node.writer.submit_all([*requests, entry, store])
        for request in requests:
            await request.future
        outcome = await entry.future
        await store.future
        if any(wrote) or outcome.code in (ResultCode.ok, ResultCode.exists):
            record.payment, record.answer, record.result = after.payment, after.answer, \
                after.result
            if any(wrote):
                self._stored(record)
            else:
                await self._store(record, extra)
        elif before:
            self._stored(record)
        return outcome

    async def _store_and_log(self, record: PaymentRecord, signed: Signed, *,
                             then: Signed | None = None, memo: Memo | None = None) -> Outcome:
        """Store ``record``, then log ``signed`` (a hold it knows of): queued together, so
        that the writer commits both in one transaction — or, at the edge of a batch, the
        record first, as ``_store`` then ``_log`` would. One commit to wait for, not two.

        ``then``, an intermediary's own PREPARE downstream, is logged right after: the
        ledger holds it only on top of the inbound hold ``signed`` makes (else it is
        refused: its order is for another ledger). Its outcome is not returned; the task
        that sends it logs it again if it is not held (``_follow_ledger``)."""
        entries = [signed] if then is None else [signed, then]
        checks = [await self._check(e) for e in entries]
        assert self.node.writer is not None
        store = self._storing(record)
        logged = [EventRequest(e, c, memo if e is signed else None)
                  for e, c in zip(entries, checks)]
        self.node.writer.submit_all([store, *logged])
        await store.future
        self._stored(record)
        outcomes = [await entry.future for entry in logged]
        return outcomes[0]

    async def _log(self, signed: Signed) -> Outcome:
        """Apply a federation entry through the writer (signatures checked first, unless
        this node signed it or checked those very bytes already)."""
        check = await self._check(signed)
        assert self.node.writer is not None
        return await self.node.writer.submit(signed, check)

    async def _check(self, signed: Signed) -> SigCheck:
        """``signed.verified_signers()``, remembered. A payment's messages (PREPARE, FULFIL,
        REJECT, DECISION) carry one signature each: checked right here, on the event loop
        (~70 µs), which costs less CPU than handing it to a signature worker and reading the
        answer back; a line or settlement, signed by several, goes to the workers."""
        if len(signed.sigs) == 1:
            return SIGNATURES.check(signed)
        check = SIGNATURES.get(signed)
        if check is None:
            check = (await self.node.verify([signed]))[0]
            SIGNATURES.remember(signed, check)
        return check

    def _sign(self, msg: Any) -> Signed:
        """``msg`` signed by this node; remembered as verified (``_log`` need not check it)."""
        signed = sign_message(msg, self.node.node_key)
        SIGNATURES.remember(signed, (frozenset((self.key,)), True))
        return signed

    # --- peers ----------------------------------------------------------------------------

    def line_with(self, peer: PublicKey) -> Line | None:
        for signed in self.node.ledger.lines.values():
            line = signed.msg
            assert isinstance(line, Line)
            if peer in (line.a.node_key, line.b.node_key):
                return line
        return None

    def client_for(self, key_id: str) -> TallyClient:
        url = self.peer_urls.get(key_id)
        if url is None:
            raise FederationError(ResultCode.unknown_peer, "no address known for that node")
        client = self.clients.get(key_id)
        if client is None or client.url != url.rstrip("/"):
            client = TallyClient(url, self.node.node_key, retries=0,
                                 timeout=self.cfg.peer_timeout_ms / 1000,
                                 expect_key_id=key_id)
            self.clients[key_id] = client
        return client

    async def _remember_peer(self, key: PublicKey, url: str) -> None:
        if url and self.peer_urls.get(key.key_id) != url:
            await self._set_meta(f"peer_url:{key.key_id}", url)
            self.peer_urls[key.key_id] = url

    async def _peer_post(self, key_id: str, path: str,
                         body: dict[str, Any] | CanonicalBody) -> Any:
        client = self.client_for(key_id)
        return (await client._request("POST", path, body, signed=True, idempotent=False))[1]

    # --- lines ----------------------------------------------------------------------------

    # --- the graph of lines, for routing ------------------------------------------------------

    def edges(self) -> list[Edge]:
        """Every credit line this node knows: its own (as its ledger has them), then those
        its peers reported, then any learned by gossip."""
        own = {line_id: edge_of(s.msg) for line_id, s in self.node.ledger.lines.items()
               if isinstance(s.msg, Line)}
        # The learned lines' signatures, checked once each (this runs for every payment).
        learned = [e for e in edges_from_signed(self.learned.values(), SIGNATURES.check)
                   if e.line not in own]
        extra = [e for e in (self.extra_edges() if self.extra_edges else [])
                 if e.line not in own]
        seen = set(own)
        out = list(own.values())
        for e in [*learned, *extra]:
            if e.line not in seen:
                seen.add(e.line)
                out.append(e)
        return out

    def routes_to(self, destination: PublicKey, amount: int) -> list[Route]:
        edges = self.edges()
        avoid = frozenset(e.line for e in edges if self.distrusted(e.a) or self.distrusted(e.b))
        return routes(edges, self.key, destination, amount,
                      max_hops=self.cfg.max_hops, limit=self.cfg.max_routes, avoid=avoid)

    def distrusted(self, key: PublicKey) -> bool:
        """Whether this node holds verified evidence that ``key``'s node equivocated (showed
        two histories of its log): no new payment goes to, from or through it."""
        gossip = self.node.gossip
        return gossip is not None and gossip.suspended(key)

    def _refuse_distrusted(self, key: PublicKey) -> None:
        if self.distrusted(key):
            raise FederationError(ResultCode.line_suspended,
                                  "this node holds evidence that your node equivocated; no new "
                                  "payments until the stewards of both collectives resolve it")

    async def on_evidence(self, ev: Any) -> None:
        """Gossip verified evidence of equivocation by ``ev.offender``: keep it as a dispute
        on the line with that node (if any) for the stewards, who suspend it formally."""
        line = self.line_with(ev.offender)
        log.warning("node %s equivocated: no new payments with it%s", ev.offender.key_id,
                    f"; stewards: `tally peer suspend {line.other(self.key).name}`"
                    if line else "")
        if line is not None:
            await self.record_dispute("equivocation", ev.offender, line.id, ev.id[:32],
                                      {"evidence": ev.to_json()})

    def parties(self) -> dict[PublicKey, dict[str, Any]]:
        """Every collective this node knows (by gossip, or named by a line it knows): key ->
        {node_key, ledger, name, unit}; a line's pinned name wins over a record's."""
        out: dict[PublicKey, dict[str, Any]] = {}
        gossip = self.node.gossip
        if gossip is not None:
            for known in gossip.state.fresh(gossip.now()):
                r = known.record
                if r.key != self.key:
                    out[r.key] = {"node_key": r.key.text, "ledger": r.ledger, "name": r.name,
                                  "unit": r.unit.to_json()}
        for s in [*self.node.ledger.lines.values(), *self.learned.values()]:
            line = s.msg
            if isinstance(line, Line):
                for party in (line.a, line.b):
                    if party.node_key != self.key:
                        out[party.node_key] = party.to_json()
        return out

    async def find_collectives(self, where: str) -> list[tuple[PublicKey, dict[str, Any]]]:
        """The known collectives ``where`` names: node key, key id (or its start), or the
        start of the name a line pinned. Asks the peers again if none matches (a line may
        have been agreed since)."""
        def lookup() -> list[tuple[PublicKey, dict[str, Any]]]:
            return [(key, party) for key, party in self.parties().items()
                    if where in (key.text, key.key_id) or key.key_id.startswith(where.lower())
                    or party["name"].lower().startswith(where.lower())]

        matches = lookup()
        if not matches:
            await self.refresh_graph()
            matches = lookup()
        return matches

    def _knows(self, key: PublicKey) -> bool:
        return key in self.parties()

    def _name_of(self, key: PublicKey, parties: dict[PublicKey, dict[str, Any]] | None = None
                 ) -> str:
        if key == self.key:
            return self.node.ledger.genesis.name
        known = self.parties() if parties is None else parties
        return str(known.get(key, {}).get("name", key.key_id))

    def graph(self) -> list[dict[str, Any]]:
        """What we tell our peers: our lines and the ones we learned, signed by both nodes
        (stewards' signatures left off: they mean nothing to another collective)."""
        out = []
        for s in [*self.node.ledger.lines.values(), *self.learned.values()]:
            line = s.msg
            if not isinstance(line, Line) or line.status != "active":
                continue
            sigs = tuple(sig for sig in s.sigs if sig.key in (line.a.node_key, line.b.node_key))
            if len(sigs) == 2:
                out.append(Signed(line, sigs).to_json())
        return out[:MAX_LEARNED_LINES]

    async def refresh_graph(self) -> None:
        """Ask each peer we have a line with for the lines it knows."""
        own = set(self.node.ledger.lines)
        for signed in list(self.node.ledger.lines.values()):
            line = signed.msg
            assert isinstance(line, Line)
            peer = line.other(self.key).node_key
            if peer.key_id not in self.peer_urls:
                continue
            try:
                client = self.client_for(peer.key_id)
                reply = (await client._request("GET", "/v1/peer/graph", signed=True))[1]
            except (TallyError, FederationError) as exc:
                log.debug("no graph from %s: %s", peer.key_id, exc)
                continue
            reported = reply.get("lines", []) if isinstance(reply, dict) else []
            for doc in reported[:MAX_LEARNED_LINES]:
                try:
                    s = parse_signed(doc, LINE_KINDS)
                except MessageError:
                    continue
                if s.msg.id in own or not edges_from_signed([s]):  # type: ignore[union-attr]
                    continue
                old = self.learned.get(s.msg.id)  # type: ignore[union-attr]
                if old is None or old.msg.version < s.msg.version:  # type: ignore[union-attr]
                    if len(self.learned) < MAX_LEARNED_LINES or old is not None:
                        self.learned[s.msg.id] = s  # type: ignore[union-attr]

    async def _graph_loop(self) -> None:
        while True:
            try:
                await self.refresh_graph()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("refreshing the graph of lines failed; will retry")
            await asyncio.sleep(self.cfg.graph_refresh_ms / 1000)

    async def propose_line(self, signed: Signed, peer_url: str) -> dict[str, Any]:
        """Our stewards signed these terms: add the node's signature and send them."""
        line = signed.msg
        if not isinstance(line, Line) or line.side(self.key) is None:
            raise FederationError(ResultCode.not_a_party, "the terms do not name this node")
        self._check_stewards(signed)
        other = line.other(self.key)
        if other.node_key == self.key:
            raise FederationError(ResultCode.not_a_party, "a line joins two collectives")
        self._refuse_second_line(line)
        ours = _merge(signed, sign_message(line, self.node.node_key))
        await self._set_meta(f"proposal:{line.id}", json.dumps({"line": ours.to_json(),
                                                                "url": peer_url}))
        self.proposals[line.id] = (ours, peer_url)
        await self._remember_peer(other.node_key, peer_url)
        node_only = _merge(sign_message(line, self.node.node_key))
        try:
            await self._peer_post(other.node_key.key_id, "/v1/peer/lines",
                                  {"line": node_only.to_json(), "url": self.public_url})
        except TallyError as exc:
            # Refused: nothing is left waiting for an acceptance that cannot come. (Not
            # reached, it stays: the other node may have it, and its acceptance may come.)
            if exc.code != "unreachable" and exc.status < 500:
                await self._drop_proposal(line.id)
            raise _peer_refusal(exc, f"{other.name!r} refused the proposal") from exc
        return {"line": line.id, "status": "proposed", "peer": other.name}

    async def accept_line(self, signed: Signed) -> dict[str, Any]:
        """Our stewards accept a proposal we received: log it, and send the acceptance."""
        line = signed.msg
        assert isinstance(line, Line)
        pending = self.proposals.get(line.id)
        if pending is None:
            raise FederationError(ResultCode.line_not_found, f"no proposal {line.id} to accept")
        proposal, url = pending
        self._check_stewards(signed)
        entry = _merge(proposal, signed, sign_message(line, self.node.node_key))
        outcome = await self._log(entry)
        if outcome.code not in (ResultCode.ok, ResultCode.exists):
            raise FederationError(outcome.code, outcome.detail)
        other = line.other(self.key)
        both_nodes = Signed(line, tuple(s for s in entry.sigs
                                        if s.key in (self.key, other.node_key)))
        await self._peer_post(other.node_key.key_id, "/v1/peer/lines",
                              {"line": both_nodes.to_json(), "url": self.public_url})
        await self._drop_proposal(line.id)
        return {"line": line.id, "version": line.version, "status": line.status,
                "index": outcome.index}

    def _refuse_second_line(self, line: Line) -> None:
        """A new line with a collective we already have one with is refused when it is
        proposed, not only when it is accepted (it would wait a week on both sides first)."""
        if line.id in self.node.ledger.lines:
            return  # a new version of a line in force
        existing = line_for_peer(self.node.ledger, line.other(self.key).node_key)
        if existing is not None:
            raise FederationError(
                ResultCode.line_exists,
                f"there is already a line with {existing.other(self.key).name!r} "
                f"({existing.id}): change it with `tally peer change` instead")

    def _check_stewards(self, signed: Signed) -> None:
        state = self.node.ledger
        good, all_good = signed.verified_signers()
        if not all_good or len(good & state.stewards) < state.threshold:
            raise FederationError(ResultCode.not_enough_steward_signatures,
                                  f"a line needs the signatures of {state.threshold} steward(s)")

    async def _drop_proposal(self, line_id: str) -> None:
        async def run(db: aiosqlite.Connection) -> None:
            await db.execute("DELETE FROM meta WHERE key = ?", (f"proposal:{line_id}",))

        assert self.node.writer is not None
        await self.node.writer.write(run)
        self.proposals.pop(line_id, None)

    async def receive_line(self, signed: Signed, url: str, sender: PublicKey) -> dict[str, Any]:
        """A peer proposes terms (its node signed), or accepts ours (both nodes signed)."""
        line = signed.msg
        if not isinstance(line, Line) or line.side(self.key) is None:
            raise FederationError(ResultCode.not_a_party, "these terms do not name this node")
        if line.other(self.key).node_key != sender:
            raise FederationError(ResultCode.not_a_party, "the sender is not the other party")
        good, all_good = signed.verified_signers()
        if not all_good or sender not in good:
            raise FederationError(ResultCode.bad_signature, "the terms are not signed by you")
        await self._remember_peer(sender, url)
        if self.key in good:
            # The acceptance of our proposal: log it with our stewards' signatures.
            pending = self.proposals.get(line.id)
            if pending is None:
                if line.id in self.node.ledger.lines:
                    return {"line": line.id, "status": "active"}
                raise FederationError(ResultCode.line_not_found, "we proposed no such line")
            outcome = await self._log(_merge(pending[0], signed))
            if outcome.code not in (ResultCode.ok, ResultCode.exists):
                raise FederationError(outcome.code, outcome.detail)
            await self._drop_proposal(line.id)
            return {"line": line.id, "status": "active"}
        self._refuse_second_line(line)
        await self._set_meta(f"proposal:{line.id}", json.dumps({"line": signed.to_json(),
                                                                "url": url}))
        self.proposals[line.id] = (signed, url)
        log.info("credit line proposed by %s (%s): %s", line.other(self.key).name,
                 sender.key_id, line.id)
        return {"line": line.id, "status": "proposed"}

    # --- the source -------------------------------------------------------------------------

    def _risk_check(self, line: Line, amount: int, expires_at: int) -> None:
        held = [h for h in self.node.ledger.open_holds.values() if h.line == line.id]
        if len(held) >= self.cfg.max_in_flight_count:
            raise FederationError(ResultCode.overloaded,
                                  "too many payments in flight on this line; retry shortly")
        if sum(h.amount for h in held) + amount > self.cfg.max_in_flight_value:
            raise FederationError(ResultCode.overloaded,
                                  "too much value in flight on this line; retry shortly")
        if expires_at - self.now() > self.cfg.max_hold_ms:
            raise FederationError(ResultCode.insufficient_time, "the hold would last too long")

    async def pay(self, order_signed: Signed, memo: Memo | None = None) -> dict[str, Any]:
        """A member's payment to another collective: over the shortest routes first, a fresh
        quote for each attempt, the next route only after a definite refusal. ``memo``, the
        payer's, is kept beside the entry of each attempt's PREPARE (erasable; the order
        carries no hash of it, so it stays here: the payer's history shows it)."""
        order = order_signed.msg
        assert isinstance(order, PaymentOrder)
        state = self.node.ledger
        if order.ledger != state.ledger_id:
            raise FederationError(ResultCode.ledger_mismatch, "signed for another ledger")
        payer = state.accounts.get(order.payer)
        if payer is None or payer.kind != "member":
            raise FederationError(ResultCode.account_not_found, f"no member {order.payer!r}")
        good, _ = SIGNATURES.check(order_signed)
        if payer.key not in good or len(order_signed.sigs) != 1:
            raise FederationError(ResultCode.bad_signature, "the order is not signed by the payer")
        if order.valid_until <= self.now():
            raise FederationError(ResultCode.expired, "the payment order has expired")
        if order.payee_node == self.key:
            raise FederationError(ResultCode.no_route,
                                  "the payee is a member here: pay them with a transfer")
        candidates = self.routes_to(order.payee_node, order.amount)
        if not candidates:
            await self.refresh_graph()
            candidates = self.routes_to(order.payee_node, order.amount)
        if not candidates:
            line = self.line_with(order.payee_node)
            if line is not None and line.status != "active":
                raise FederationError(ResultCode.line_suspended, "the credit line is suspended")
            raise FederationError(
                ResultCode.no_route,
                "no path of credit lines to the payee's collective has room for that amount"
                if line is None and self._knows(order.payee_node) else
                "this collective has no credit line with the payee's, nor a path to it")
        # Answer by then, whatever happens (a client waits that long: ``payment_answer_ms``).
        deadline = self.now() + payment_answer_ms(self.cfg)
        first: FederationError | None = None
        for route in candidates:
            if first is not None and self.now() + self.cfg.margin_ms * route.hops >= deadline:
                break  # no time for another attempt: the first refusal is the answer
            try:
                return await self._attempt(order_signed, route, memo, deadline)
            except FederationError as exc:
                if exc.code not in RETRY_ON_ANOTHER_ROUTE:
                    raise
                log.info("order %s: route via %s refused (%s); trying the next",
                         order.id, [n.key_id for n in route.nodes[1:-1]], exc.code.value)
                first = first or exc
        assert first is not None
        raise first

    async def _attempt(self, order_signed: Signed, route: Route, memo: Memo | None,
                       deadline: int) -> dict[str, Any]:
        order = order_signed.msg
        assert isinstance(order, PaymentOrder)
        peer = route.nodes[1]
        line = self.line_with(peer)
        if line is None or line.status != "active":
            raise FederationError(ResultCode.line_suspended, "the credit line is not active")
        attempt_id = os.urandom(16).hex()
        path = route.nodes[2:]
        try:
            answer = await self._peer_post(peer.key_id, "/v1/peer/quote", canonical_body(
                order=order_signed, attempt=attempt_id, path=[k.text for k in path]))
        except TallyError as exc:
            raise _peer_refusal(exc, "the payee's collective refused to quote",
                                self._name_of(peer)) from exc
        quote_signed = parse_signed(answer["quote"], frozenset({"quote"}))
        quote = quote_signed.msg
        assert isinstance(quote, Quote)
        qgood, qall = SIGNATURES.check(quote_signed)
        if not qall or order.payee_node not in qgood or (quote.order, quote.id) != (
                order.id, attempt_id) or quote.amount < order.amount:
            raise FederationError(ResultCode.quote_mismatch, "the quote is not valid for this order")
        side = line.side(self.key)
        assert side is not None
        sends = amounts(route.edges, route.nodes, quote.amount)
        amount_from = sends[0]
        if amount_from > order.max_pay:
            raise FederationError(ResultCode.exceeds_max_pay,
                                  f"it costs {amount_from}; you allowed at most {order.max_pay}")
        now = self.now()
        hops = len(route.edges)
        # The last hop gets the whole payment timeout; each hop before it a margin more,
        # within the longest hold this node allows.
        expires = min(quote.expires_at, order.valid_until, now + self.cfg.max_hold_ms,
                      now + self.cfg.payment_timeout_ms + (hops - 1) * self.cfg.margin_ms)
        if expires - now < self.cfg.margin_ms * hops:
            raise FederationError(ResultCode.insufficient_time,
                                  "too little time left before the order or quote expires")
        self._risk_check(line, amount_from, expires)
        prepare = self._sign(
            Prepare(attempt_id, line.id, self.key, peer, amount_from,
                    line.convert(amount_from, side), quote.condition, expires, order_signed,
                    quote_signed, path))
        record = PaymentRecord(
            sm.start_source(attempt_id, bytes.fromhex(quote.condition), expires), prepare,
            peer.key_id,
        )
        # The record no later than the hold: recovery finds it either way.
        outcome = await self._store_and_log(record, prepare, memo=memo)
        if outcome.code not in (ResultCode.ok, ResultCode.exists):
            record.payment = sm.Payment(record.payment.id, sm.Role.source,
                                        record.payment.condition, outbound=sm.Out.voided,
                                        outbound_expiry=expires, decision_acked=True,
                                        hold="voided")
            record.result = {"result": outcome.code.value, "detail": outcome.detail}
            await self._store(record)
            raise FederationError(outcome.code, outcome.detail)
        self._spawn(self._drive_outbound(record))
        timeout = min(expires + self.cfg.peer_timeout_ms + ANSWER_SLACK_MS,
                      deadline) / 1000 - self.now() / 1000
        # asyncio.timeout, not wait_for: no task of its own for each payment's wait.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await record.done.wait()
        result = record.result or {
            "result": "pending",
            "detail": "still in flight: ask GET /v1/payments/{order} later; do not pay again",
        }
        if result["result"] not in ("ok", "pending"):
            code = result["result"]
            raise FederationError(
                ResultCode(code) if code in ResultCode.__members__ else ResultCode.rejected,
                result.get("detail", ""),
            )
        parties = self.parties()  # once for the route's names, not once per name
        return {**result, "order": order.id, "attempt": attempt_id, "amount_paid": amount_from,
                # What the payee is credited: at least the quote's amount (each hop converts
                # what it received, rounding down, and forwards all of it).
                "amount_received": _arrives(route, amount_from),
                "route": [self._name_of(k, parties) for k in route.nodes],
                "quote": quote_signed.to_json()}

    async def _drive_outbound(self, record: PaymentRecord) -> None:
        """Send our PREPARE (again, after a restart or a network failure) until answered or
        expired; then apply the answer. The source's and an intermediary's outbound leg."""
        p = record.outbound.msg
        assert isinstance(p, Prepare)
        async with record.lock:
            await self._follow_ledger(record)  # after a restart, the log may be ahead
        delay = 0.2
        while record.payment.outbound == sm.Out.held:
            if self.now() >= p.expires_at:
                await self._outbound_event(record, sm.Tick())
                break
            try:
                answer = await self._peer_post(record.peer, "/v1/peer/prepare",
                                               canonical_body(prepare=record.outbound))
            except TallyError as exc:
                if exc.status and 400 <= exc.status < 500 and exc.code != "rate_limited":
                    # Not a signed REJECT, so not a definite answer: keep asking until the
                    # expiry (our clock alone voids), and tell the payer why it failed.
                    log.warning("peer refused PREPARE %s: %s", p.id, exc)
                    code = exc.code if exc.code in ResultCode.__members__ else "rejected"
                    record.last_refusal = (code, f"the next collective refused: {exc.detail}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            if isinstance(answer, dict) and "pending" in answer:
                # An intermediary waits on its own downstream: ask again soon, well within
                # a margin, or a fulfilment that reached it in time could reach us too late.
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0, self.cfg.margin_ms / 4000)
                continue
            try:
                await self._outbound_answer(record, answer)
            except FederationError as exc:
                log.warning("peer sent an unusable answer to %s: %s", p.id, exc.detail)
                await asyncio.sleep(delay)

    async def _outbound_answer(self, record: PaymentRecord, answer: Any) -> None:
        if not isinstance(answer, dict) or not ({"fulfil", "reject"} & set(answer)):
            raise FederationError(ResultCode.invalid_field, "no FULFIL or REJECT in the answer")
        kind = "fulfil" if "fulfil" in answer else "reject"
        try:
            signed = parse_signed(answer[kind], frozenset({kind}))
        except MessageError as exc:
            raise FederationError(ResultCode.invalid_field,
                                  f"the peer's {kind.upper()} is malformed: {exc}") from exc
        good, all_good = SIGNATURES.check(signed)  # checked once: _log needs it again
        peer_key = record.outbound.msg.to_node  # type: ignore[union-attr]
        if not all_good or peer_key not in good or signed.msg.id != record.payment.id:  # type: ignore[union-attr]
            raise FederationError(ResultCode.bad_signature, "the answer is not the peer's")
        if isinstance(signed.msg, Fulfil):
            event: sm.Event = sm.FulfilReceived(bytes.fromhex(signed.msg.fulfilment))
        else:
            assert isinstance(signed.msg, Reject)
            event = sm.RejectReceived(signed.msg.code)
        await self._outbound_event(record, event, signed)

    async def _outbound_event(self, record: PaymentRecord, event: sm.Event,
                              signed: Signed | None = None, reason: str = "") -> None:
        # The ticker (expiry) and the task sending PREPARE (an answer) may both get here for
        # one payment: one at a time, each deciding from the state the other left.
        async with record.lock:
            await self._outbound_event_locked(record, event, signed, reason)
        await self._send_decision(record)

    async def _follow_ledger(self, record: PaymentRecord) -> None:
        """Make a record whose outbound leg says "held" agree with our ledger's holds.

        The record and the ledger are written one after the other: a node killed in between
        restarts with a record behind its log. The log is the truth. With no hold, the
        PREPARE never left: hold now (or give up if the time is past). With the hold already
        posted (our FULFIL entry is logged) or voided, the record follows; deciding again by
        the clock would contradict the books and tell the peer the opposite.
        """
        payment = record.payment
        if payment.role == sm.Role.destination or payment.outbound != sm.Out.held:
            return
        p = record.outbound.msg
        assert isinstance(p, Prepare)
        holds = self.node.ledger.holds
        if payment.role == sm.Role.intermediary and f"{p.id}/in" not in holds:
            # Stopped before the inbound hold was logged: log it, or refuse upstream (not
            # once the upstream voided: it was told nothing is held, and nothing must be).
            inbound = record.prepare.msg
            assert isinstance(inbound, Prepare)
            outcome = await self._log(record.prepare) if (
                self.now() < inbound.expires_at and payment.inbound == sm.In.prepared) else None
            if outcome is None or outcome.code not in (ResultCode.ok, ResultCode.exists):
                code, detail = (outcome.code.value, outcome.detail) if outcome else (
                    "expired", "expired before it was held")
                await self._settle_unsent(record, code, detail)
                return
        hold = holds.get(f"{p.id}/out")
        if hold is not None and hold.state == "held":
            return
        inbound_hold = holds.get(f"{p.id}/in")
        if hold is None and inbound_hold is not None and inbound_hold.state != "held":
            # The upstream voided what we hold before we could forward it: its clock ran out.
            await self._settle_unsent(record, "expired",
                                      "the upstream voided it before it could be forwarded")
            return
        if hold is None:
            if self.now() < p.expires_at:
                outcome = await self._log(record.outbound)
                if outcome.code in (ResultCode.ok, ResultCode.exists):
                    return
                code, detail = outcome.code.value, outcome.detail
            else:
                code, detail = "expired", "the node stopped before the payment was held"
            await self._settle_unsent(record, code, detail)
            return
        if hold.state == "posted":
            fulfil = await self._logged(f"fulfil/{p.id}/{p.to_node.key_id}")
            assert fulfil is not None and isinstance(fulfil.msg, Fulfil)
            fulfilment = bytes.fromhex(fulfil.msg.fulfilment)
            record.payment = replace(payment, outbound=sm.Out.posted, hold="posted",
                                     fulfilment=fulfilment)
            record.result = {"result": "ok", "fulfilment": fulfilment.hex()}
            if payment.role == sm.Role.intermediary:
                in_hold = holds.get(f"{p.id}/in")
                if in_hold is not None and in_hold.state == "voided":
                    record.payment = replace(record.payment, inbound=sm.In.voided, hold="loss")
                    await self._dispute("loss", record, fulfil)
                else:
                    record.payment = replace(record.payment, inbound=sm.In.fulfilled)
                    record.answer = self._sign(Fulfil(p.id, fulfilment.hex()))
        else:
            reject = await self._logged(f"reject/{p.id}/{p.to_node.key_id}")
            record.payment = replace(payment, outbound=sm.Out.voided, hold="voided")
            if isinstance(reject.msg if reject else None, Reject):
                code = reject.msg.code  # type: ignore[union-attr]
                record.result = {"result": code if code in ResultCode.__members__ else
                                 "rejected", "detail": "refused by the payee's collective"}
            else:
                code = "expired"
                record.result = {"result": "expired", "detail": "no answer before the expiry"}
            if payment.role == sm.Role.intermediary and payment.inbound == sm.In.prepared:
                await self._reject_upstream(record, code, "the payment failed downstream")
        await self._store(record)
        record.done.set()

    async def _settle_unsent(self, record: PaymentRecord, code: str, detail: str) -> None:
        """Our PREPARE never left (no outbound hold): nothing downstream to tell; the payer
        is told, or the upstream node gets our REJECT."""
        record.payment = replace(record.payment, outbound=sm.Out.voided, hold="voided",
                                 decision_acked=True)
        record.result = {"result": code, "detail": detail}
        if record.payment.role == sm.Role.intermediary:
            await self._reject_upstream(record, code, detail)
        await self._store(record)
        record.done.set()

    async def _reject_upstream(self, record: PaymentRecord, code: str, detail: str) -> None:
        """An intermediary refuses the PREPARE it received: log our REJECT (it voids our
        inbound hold, if any), keep it as the answer for every repeat of that PREPARE."""
        p = record.prepare.msg
        assert isinstance(p, Prepare)
        # After a restart the REJECT may be logged already: the same one goes upstream again.
        logged = await self._logged(f"reject/{p.id}/{self.key.key_id}")
        reject = logged if logged is not None else self._sign(
            Reject(p.id, code if code in ResultCode.__members__ else "rejected", detail[:500]))
        outcome = await self._log(reject)
        if outcome.code not in (ResultCode.ok, ResultCode.exists, ResultCode.hold_not_found):
            log.warning("could not void inbound hold %s: %s", p.id, outcome.detail)
        record.answer = reject
        record.payment = replace(record.payment, inbound=sm.In.rejected)

    async def _logged(self, key: str) -> Signed | None:
        """The signed message of the log entry ``seen`` knows by ``key``, if any."""
        db = self.node.reader
        assert db is not None
        idx = await storage.event_index(db, key)
        raw = await storage.read_entry(db, idx) if idx is not None else None
        return parse_log_entry(json.loads(raw)).payload if raw is not None else None

    async def _outbound_event_locked(self, record: PaymentRecord, event: sm.Event,
                                     signed: Signed | None, reason: str = "") -> None:
        await self._follow_ledger(record)
        try:
            new, actions = sm.step(record.payment, event, self.now())
        except sm.SettlementError as exc:
            raise FederationError(ResultCode.condition_mismatch, str(exc)) from exc
        p = record.outbound.msg
        assert isinstance(p, Prepare)
        if signed is not None and actions and isinstance(actions[0], sm.ApplyPost) and all(
                isinstance(a, (sm.ApplyPost, sm.SendDecision, sm.SendFulfil)) for a in actions):
            # Paid in time, the common case: the post and the record that says so (with the
            # FULFIL for upstream, if we forward) in one commit.
            after = copy.copy(record)
            after.payment = new
            after.result = {"result": "ok",
                            "fulfilment": new.fulfilment.hex() if new.fulfilment else None}
            for action in actions:
                if isinstance(action, sm.SendFulfil):
                    after.answer = self._sign(Fulfil(p.id, action.fulfilment.hex()))
            outcome = await self._log_and_store(signed, record, after, f"{p.id}/out", "posted")
            if outcome.code in (ResultCode.ok, ResultCode.exists):
                record.done.set()
                return
            if outcome.code != ResultCode.too_late:
                self._check_logged(outcome, p.id)
            # Too late by the clock the ledger applied it at: the steps below void instead.
        late: Signed | None = None  # a valid fulfilment that came too late: evidence
        i = 0
        while i < len(actions):
            action = actions[i]
            i += 1
            if isinstance(action, sm.ApplyPost):
                assert signed is not None
                outcome = await self._log(signed)
                if outcome.code == ResultCode.too_late:  # our clock moved on meanwhile
                    new, actions = sm.step(record.payment, sm.Tick(), p.expires_at)
                    late = signed  # kept as evidence once our void is logged
                    i = 0
                    continue
                self._check_logged(outcome, p.id)
            elif isinstance(action, sm.ApplyVoid):
                entry = signed if isinstance(event, sm.RejectReceived) and signed is not None \
                    else self._sign(Decision(p.id, "void"))
                self._check_logged(await self._log(entry), p.id)
            elif isinstance(action, sm.SendFulfil):
                record.answer = self._sign(Fulfil(p.id, action.fulfilment.hex()))
            elif isinstance(action, sm.SendReject):
                await self._reject_upstream(record, action.code,
                                            reason or "the payment failed downstream")
            elif isinstance(action, sm.RecordLoss):
                await self._dispute("loss", record, signed)
            elif isinstance(action, sm.RecordLateFulfilment) and signed is not None:
                late = signed
        if late is not None:
            await self._record_late_fulfilment(record, late)
        record.payment = new
        if new.outbound == sm.Out.posted:
            record.result = {"result": "ok", "fulfilment": new.fulfilment.hex()
                             if new.fulfilment else None}
        elif new.outbound == sm.Out.voided and record.result is None:
            if isinstance(event, sm.RejectReceived):
                message = signed.msg.message if signed is not None and isinstance(
                    signed.msg, Reject) else reason
                code = event.code if event.code in ResultCode.__members__ else "rejected"
                detail = (f"refused by the payee's collective{' or one on the way' if p.path else ''}"
                          f": {message}") if signed else message
            elif record.last_refusal is not None:
                code, detail = record.last_refusal
            else:
                code, detail = "expired", "no answer from the payee's collective before the expiry"
            record.result = {"result": code, "detail": detail}
        if late is not None and record.payment.role == sm.Role.source and record.result:
            # The payer was (or is being) told it failed, and nothing was taken from them;
            # yet the payee's side fulfilled: a collective on the way may have paid the payee
            # at its own cost. Say so where the payer looks, before they pay again.
            record.result = {**record.result, "late_fulfilment": True, "detail": (
                record.result.get("detail", "") + "; a valid fulfilment came after the expiry:"
                " the payee may have been paid by a collective on the way (see `tally "
                "disputes`); check with the payee before paying again")}
        await self._store(record)  # the outcome is durable before anyone hears of it
        record.done.set()

    async def _dispute(self, kind: str, record: PaymentRecord, evidence: Signed | None) -> None:
        """An intermediary's loss: it paid downstream (the downstream's FULFIL, in time by
        our clock) and its upstream voided. Kept with the signed evidence for the stewards;
        the loss itself is in our ``~routing`` account."""
        inbound, outbound = record.prepare.msg, record.outbound.msg
        assert isinstance(inbound, Prepare) and isinstance(outbound, Prepare)
        log.warning("DISPUTE %s on payment %s: paid downstream, voided upstream", kind,
                    record.payment.id)
        fulfil = await self._logged(f"fulfil/{outbound.id}/{outbound.to_node.key_id}")
        void = await self._logged(f"decision/{inbound.id}/{inbound.from_node.key_id}")
        await self.record_dispute(kind, inbound.from_node, inbound.line, record.payment.id, {
            "prepare_in": record.prepare.to_json(), "prepare_out": record.outbound.to_json(),
            "fulfil": fulfil.to_json() if fulfil else (evidence.to_json() if evidence else None),
            "void": void.to_json() if void else None,
            "loss": outbound.amount_from,
        })

    @staticmethod
    def _check_logged(outcome: Outcome, attempt_id: str) -> None:
        """The ledger must agree with the state machine: never tell the payer (or the peer)
        an outcome our own books did not record."""
        if outcome.code not in (ResultCode.ok, ResultCode.exists):
            raise FederationError(outcome.code,
                                  f"payment {attempt_id}: the ledger refused: {outcome.detail}")

    async def _send_decision(self, record: PaymentRecord) -> None:
        """Queue our DECISION for the peer: the DECISIONs for one peer that gather within
        ``DECISION_GATHER_S`` go in one request (``POST /v1/peer/decisions``). Not on the
        payer's path: it was answered when the outcome was stored."""
        if record.payment.outbound not in (sm.Out.posted, sm.Out.voided):
            return
        if record.payment.decision_acked or record.sending_decision:
            return
        record.sending_decision = True  # until answered: the ticker sends no second copy
        queue = self._outbox.setdefault(record.peer, [])
        queue.append(record)
        if len(queue) == 1:
            self._spawn(self._flush_decisions(record.peer))

    async def _flush_decisions(self, peer: str) -> None:
        await asyncio.sleep(DECISION_GATHER_S)
        records = self._outbox.pop(peer, [])
        try:
            for i in range(0, len(records), MAX_DECISIONS):
                await self._deliver_decisions(peer, records[i:i + MAX_DECISIONS])
        except Exception:
            log.exception("sending DECISIONs to %s failed; the ticker sends them again", peer)
        finally:
            for record in records:
                record.sending_decision = False

    async def _deliver_decisions(self, peer: str, records: list[PaymentRecord]) -> None:
        """Send the DECISIONs of ``records`` to ``peer`` — together if it takes several at
        once, else one by one — and store each acknowledgement. What is not acknowledged
        the ticker sends again."""
        decisions = [self._sign(Decision(r.payment.id, "post" if r.payment.outbound ==
                                         sm.Out.posted else "void")) for r in records]
        acked: list[PaymentRecord] = []
        batched = False
        if len(records) > 1 and peer not in self._single_decisions:
            try:
                answer = await self._peer_post(peer, "/v1/peer/decisions",
                                               canonical_body(decisions=decisions))
                batched = True
                acks = answer["acks"]
                for record, decision, ack in zip(records, decisions, acks, strict=True):
                    d = decision.msg
                    assert isinstance(d, Decision)
                    if ack == {"id": d.id, "ack": d.outcome}:
                        acked.append(record)
                    else:
                        log.info("decision for %s refused: %s", d.id, ack)
            except TallyError as exc:
                if exc.status not in (404, 405):
                    log.info("decisions for %s not delivered yet: %s", peer, exc.detail)
                    return
                # A node that speaks the single route only: one request each, from now on.
                self._single_decisions.add(peer)
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("%s answered DECISIONs with no list of acks: %s", peer, exc)
                return
        if not batched:
            for record, decision in zip(records, decisions):
                try:
                    await self._peer_post(peer, "/v1/peer/decision",
                                          canonical_body(decision=decision))
                except TallyError as exc:
                    log.info("decision for %s not delivered yet: %s", record.payment.id,
                             exc.detail)
                    continue
                acked.append(record)
        # The acknowledgements, stored together (one commit for the lot).
        await asyncio.gather(*(self._decision_acked(r) for r in acked))

    async def _decision_acked(self, record: PaymentRecord) -> None:
        # Under the lock: an intermediary may be handling its upstream's DECISION meanwhile,
        # and must not store its inbound outcome over this acknowledgement.
        async with record.lock:
            record.payment, _ = sm.step(record.payment, sm.DecisionAcked(), self.now())
            await self._store(record)

    async def _ticker(self) -> None:
        """Time passes: void what expired, resend what is unacknowledged."""
        while True:
            await asyncio.sleep(0.5)
            for record in list(self.payments.values()):
                try:
                    await self._tick(record)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("payment %s: tick failed; will retry", record.payment.id)

    async def _tick(self, record: PaymentRecord) -> None:
        p = record.payment
        if p.role != sm.Role.destination:
            if p.outbound == sm.Out.held:
                assert p.outbound_expiry is not None
                if self.now() >= p.outbound_expiry:
                    await self._outbound_event(record, sm.Tick())
            else:
                await self._send_decision(record)
            return
        # Destination: a prepared payment that expired before we fulfilled is rejected.
        if p.inbound == sm.In.prepared and p.inbound_expiry is not None \
                and self.now() >= p.inbound_expiry:
            async with self._order_lock(_order_id(record)):  # not while a PREPARE fulfils it
                current = self.payments.get(p.id)
                if current is not None and current.payment.inbound == sm.In.prepared:
                    await self._destination_reject(current, "expired",
                                                   "expired before it was fulfilled")

    # --- the destination ------------------------------------------------------------------

    def _next_hop(self, path: tuple[PublicKey, ...]) -> Line:
        """The line to the next node on a path we are asked to forward along."""
        if not path:
            raise FederationError(ResultCode.no_route, "that payee is not a member here")
        if len(path) >= self.cfg.max_hops:
            raise FederationError(ResultCode.no_route,
                                  f"the path is longer than this node's limit of "
                                  f"{self.cfg.max_hops} hops")
        self._refuse_distrusted(path[0])  # not through a node known to have equivocated
        line = self.line_with(path[0])
        if line is None or path[0].key_id not in self.peer_urls:
            raise FederationError(ResultCode.no_route,
                                  "no credit line with the next collective on the path")
        if line.status != "active":
            raise FederationError(ResultCode.line_suspended,
                                  f"the credit line with {line.other(self.key).name} is suspended")
        return line

    async def quote(self, order_signed: Signed, attempt_id: str, sender: PublicKey,
                    path: tuple[PublicKey, ...] = ()) -> Signed:
        order = order_signed.msg
        assert isinstance(order, PaymentOrder)
        if self.line_with(sender) is None:
            raise FederationError(ResultCode.unknown_peer, "no credit line with your collective")
        self._refuse_distrusted(sender)
        if order.payee_node != self.key:
            # Not ours: ask the next node on the path (which asks the next...). The quote is
            # the destination's, signed by it; we only carry it back.
            if sender in path or self.key in path:
                raise FederationError(ResultCode.invalid_field, "the path loops")
            nxt = self._next_hop(path).other(self.key).node_key
            if (path[-1] if path else nxt) != order.payee_node:
                raise FederationError(ResultCode.no_route, "the path does not end at the payee")
            try:
                answer = await self._peer_post(nxt.key_id, "/v1/peer/quote", canonical_body(
                    order=order_signed, attempt=attempt_id, path=[k.text for k in path[1:]]))
                quote = parse_signed(answer["quote"], frozenset({"quote"}))
            except TallyError as exc:
                raise _peer_refusal(exc, "the next collective refused to quote") from exc
            except (KeyError, TypeError, MessageError) as exc:
                raise FederationError(ResultCode.quote_mismatch,
                                      "the next collective sent no valid quote") from exc
            q = quote.msg
            good, all_good = SIGNATURES.check(quote)
            if not isinstance(q, Quote) or not all_good or order.payee_node not in good or \
                    (q.order, q.id) != (order.id, attempt_id):
                raise FederationError(ResultCode.quote_mismatch,
                                      "the next collective sent a quote that is not the payee's "
                                      "for this order")
            return quote
        if path:
            raise FederationError(ResultCode.invalid_field, "the path goes past the payee's node")
        payee = self.node.ledger.accounts.get(order.payee)
        if payee is None or payee.kind != "member":
            raise FederationError(ResultCode.account_not_found, f"no member {order.payee!r} here")
        if payee.status != "open":
            raise FederationError(ResultCode.account_closed, f"{order.payee!r} is closed")
        rows = self._lookup(  # this attempt's quote, and any fulfilled one of the order
            "SELECT id, order_id, doc, fulfilled FROM quotes WHERE id = ? OR order_id = ?",
            (attempt_id, order.id))
        if any(row[1] == order.id and row[3] for row in rows):
            raise FederationError(ResultCode.exists, "this order was already paid")
        for row in rows:
            if row[0] == attempt_id:  # a repeated request: the same quote again, never another
                if row[1] != order.id:
                    raise FederationError(ResultCode.exists_with_different_fields,
                                          "that attempt id was quoted for another order")
                return parse_signed(json.loads(row[2]), frozenset({"quote"}))
        fulfilment = os.urandom(32)
        quote = self._sign(
            Quote(attempt_id, order.id, sender, order.payee, order.amount,
                  condition_of(fulfilment), self.now() + self.cfg.quote_ttl_ms))
        doc = quote.canonical.decode()
        stored: list[str] = []

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(  # a concurrent twin of this request already stored one: keep it
                "INSERT OR IGNORE INTO quotes (id, order_id, fulfilment, doc) VALUES (?, ?, ?, ?)",
                (attempt_id, order.id, fulfilment, doc))
            stored.append(conn.execute("SELECT doc FROM quotes WHERE id = ?",
                                       (attempt_id,)).fetchone()[0])

        assert self.node.writer is not None
        # Read back in the same transaction: whatever a twin stored is the one quote.
        await self.node.writer.write_sql(insert)  # stored before the quote leaves this node
        if stored[0] == doc:
            return quote
        return parse_signed(json.loads(stored[0]), frozenset({"quote"}))  # the twin's

    async def receive_prepare(self, signed: Signed, sender: PublicKey) -> Signed | None:
        """Our FULFIL or REJECT for a PREPARE; None while it is still pending downstream
        (the upstream node asks again with the same PREPARE)."""
        p = signed.msg
        assert isinstance(p, Prepare)
        if p.from_node != sender or p.to_node != self.key:
            raise FederationError(ResultCode.not_a_party, "this PREPARE is not from you to us")
        if self.distrusted(sender) and await self._record_of(p) is None:
            # A signed REJECT, holding nothing: the upstream voids at once instead of asking
            # again until its expiry.
            return await self._refuse_prepare(
                signed, "line_suspended", "this node holds evidence that your node "
                "equivocated; no new payments until the stewards of both collectives resolve it")
        order = p.order.msg
        assert isinstance(order, PaymentOrder)
        if order.payee_node != self.key:
            return await self._receive_transit(signed, sender)
        # From the check that no other attempt of the order was fulfilled to marking this one
        # fulfilled, no other PREPARE of the order may run: else two could both pass the check.
        async with self._order_lock(order.id):
            return await self._receive_prepare(signed, sender)

    async def _receive_transit(self, signed: Signed, sender: PublicKey) -> Signed | None:
        """We are an intermediary: hold against the upstream line, forward along the path
        (expiring a margin sooner), and answer with what comes back — or "pending"."""
        p = signed.msg
        assert isinstance(p, Prepare)
        async with self._order_lock(p.id):  # one setup per attempt, however often it comes
            record = await self._record_of(p)
            if record is not None and (answer := await self._stored_answer(record)):
                return answer  # idempotent: the same answer again
            if record is None:
                try:
                    line_down = self._next_hop(p.path)
                    out_expiry = p.expires_at - self.cfg.margin_ms
                    if out_expiry - self.now() < self.cfg.margin_ms:
                        raise FederationError(ResultCode.insufficient_time,
                                              "too little time left to forward it safely")
                    line_up = self.line_with(sender)
                    assert line_up is not None  # authenticate_peer checked it
                    self._risk_check(line_up, p.amount_to, p.expires_at)
                    self._risk_check(line_down, p.amount_to, out_expiry)
                except FederationError as exc:
                    return await self._refuse_prepare(signed, exc.code.value, exc.detail,
                                                      role=sm.Role.intermediary)
                nxt = p.path[0]
                side = line_down.side(self.key)
                assert side is not None
                forward = self._sign(
                    Prepare(p.id, line_down.id, self.key, nxt, p.amount_to,
                            line_down.convert(p.amount_to, side), p.condition, out_expiry,
                            p.order, p.quote, p.path[1:]))
                record = PaymentRecord(
                    sm.start_intermediary(p.id, bytes.fromhex(p.condition), p.expires_at,
                                          out_expiry),
                    signed, nxt.key_id, forward=forward, upstream=sender.key_id)
                # The upstream's DECISION takes this lock too: it must not find the record
                # stored and the inbound hold not yet logged (it would ack a void of a hold
                # that then appears).
                async with record.lock:
                    # The record no later than either hold: recovery finds it.
                    outcome = await self._store_and_log(record, signed, then=forward)
                    if outcome.code not in (ResultCode.ok, ResultCode.exists):
                        return await self._refuse_prepare(signed, outcome.code.value,
                                                          outcome.detail, record,
                                                          role=sm.Role.intermediary)
                self._spawn(self._drive_outbound(record))
        if record.payment.outbound == sm.Out.held and not record.done.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.cfg.peer_timeout_ms / 2000):
                    await record.done.wait()
        return await self._stored_answer(record)

    @staticmethod
    async def _stored_answer(record: PaymentRecord) -> Signed | None:
        """The answer for upstream, once it is stored: every event that sets it stores the
        record before it lets go of the record's lock."""
        async with record.lock:
            return record.answer

    @contextlib.asynccontextmanager
    async def _order_lock(self, order_id: str) -> AsyncIterator[None]:
        entry = self._order_locks.get(order_id)
        if entry is None:
            entry = self._order_locks[order_id] = [asyncio.Lock(), 0]
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._order_locks[order_id]

    async def _receive_prepare(self, signed: Signed, sender: PublicKey) -> Signed:
        p = signed.msg
        assert isinstance(p, Prepare)
        record = await self._record_of(p)
        if record is not None and record.answer is not None:
            return record.answer  # idempotent: the same answer again
        rows = self._lookup(  # this attempt's quote, and the other quotes of its order
            "SELECT id, fulfilment, order_id, fulfilled FROM quotes WHERE id = ? OR order_id = "
            "(SELECT order_id FROM quotes WHERE id = ?)", (p.id, p.id))
        row = next((r for r in rows if r[0] == p.id), None)
        if row is None:
            return await self._refuse_prepare(signed, "quote_mismatch", "no quote for this attempt")
        fulfilment, order_id = bytes(row[1]), row[2]
        if order_id != p.order.msg.id:  # type: ignore[union-attr]
            return await self._refuse_prepare(signed, "quote_mismatch",
                                              "that quote was made for another order")
        if any(r[0] != p.id and r[3] for r in rows):
            return await self._refuse_prepare(signed, "exists",
                                              "another attempt of this order was paid")
        if p.expires_at - self.now() < self.cfg.margin_ms // 4:
            return await self._refuse_prepare(signed, "insufficient_time",
                                              "too little time left to settle safely")
        line = self.line_with(sender)
        if line is not None:
            try:
                self._risk_check(line, p.amount_to, p.expires_at)
            except FederationError as exc:
                return await self._refuse_prepare(signed, exc.code.value, exc.detail)
        def mark(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE quotes SET fulfilled = 1 WHERE id = ?", (p.id,))

        if record is None:
            record = PaymentRecord(sm.start_destination(p.id, bytes.fromhex(p.condition),
                                                        p.expires_at), signed, sender.key_id)
            new, actions = sm.step(record.payment, sm.LocalFulfil(fulfilment), self.now())
            if not any(isinstance(a, sm.ApplyVoid) for a in actions):
                # The record, the hold, and — if the hold is made — the record fulfilled
                # with the quote marked: one commit, before the FULFIL leaves.
                after = copy.copy(record)
                after.payment = new
                after.answer = self._sign(Fulfil(p.id, fulfilment.hex()))
                outcome = await self._log_and_store(signed, record, after, f"{p.id}/in", "held",
                                                    extra=mark, before=True)
                if outcome.code not in (ResultCode.ok, ResultCode.exists):
                    return await self._refuse_prepare(signed, outcome.code.value,
                                                      outcome.detail, record)
                assert record.answer is not None
                return record.answer
            outcome = await self._store_and_log(record, signed)
        else:
            outcome = await self._log(signed)
        if outcome.code not in (ResultCode.ok, ResultCode.exists):
            return await self._refuse_prepare(signed, outcome.code.value, outcome.detail, record)
        new, actions = sm.step(record.payment, sm.LocalFulfil(fulfilment), self.now())
        record.payment = new
        if any(isinstance(a, sm.ApplyVoid) for a in actions):  # expired meanwhile
            return await self._destination_reject(record, "expired", "expired on arrival")
        record.answer = self._sign(Fulfil(p.id, fulfilment.hex()))
        await self._store(record, mark)  # fulfilled, durably, before the FULFIL leaves
        return record.answer

    async def _refuse_prepare(self, signed: Signed, code: str, detail: str,
                              record: PaymentRecord | None = None,
                              role: sm.Role = sm.Role.destination) -> Signed:
        p = signed.msg
        assert isinstance(p, Prepare)
        reject = self._sign(Reject(p.id, code if code in ResultCode.__members__ else "rejected",
                                   detail[:500]))
        if record is None:
            record = PaymentRecord(sm.start_destination(p.id, bytes.fromhex(p.condition),
                                                        p.expires_at), signed, p.from_node.key_id)
        record.payment = sm.Payment(p.id, role, record.payment.condition,
                                    inbound=sm.In.rejected, inbound_expiry=p.expires_at,
                                    hold="voided")
        if role == sm.Role.intermediary:  # nothing was forwarded: nothing to tell downstream
            record.payment = replace(record.payment, outbound=sm.Out.voided,
                                     decision_acked=True)
            record.forward = None
            record.peer, record.upstream = p.from_node.key_id, None
        record.answer = reject
        await self._store(record)
        return reject

    async def _destination_reject(self, record: PaymentRecord, code: str, detail: str) -> Signed:
        p = record.prepare.msg
        assert isinstance(p, Prepare)
        reject = self._sign(Reject(p.id, code, detail))
        outcome = await self._log(reject)  # void our inbound hold, if there is one
        if outcome.code not in (ResultCode.ok, ResultCode.exists, ResultCode.hold_not_found):
            log.warning("could not void hold %s: %s", p.id, outcome.detail)
        record.payment = sm.Payment(p.id, sm.Role.destination, record.payment.condition,
                                    inbound=sm.In.rejected, inbound_expiry=p.expires_at,
                                    hold="voided")
        record.answer = reject
        await self._store(record)
        return reject

    async def receive_decision(self, signed: Signed, sender: PublicKey) -> dict[str, Any]:
        d = signed.msg
        assert isinstance(d, Decision)
        record = self.payments.get(d.id) or await self._load_record(d.id)
        if record is None and d.outcome == "void" and f"{d.id}/in" not in \
                self.node.ledger.holds:
            # Its PREPARE never reached us (or we stopped before storing anything): nothing
            # is held, so a void is already followed. Else the upstream would resend forever.
            return {"id": d.id, "ack": d.outcome}
        if record is None or record.sender != sender.key_id:
            raise FederationError(ResultCode.hold_not_found, "no payment with you by that id")
        if record.payment.role == sm.Role.intermediary:
            # The outbound leg's events take the same lock: one event at a time per payment.
            async with record.lock:
                return await self._receive_decision(signed, d)
        async with self._order_lock(_order_id(record)):
            return await self._receive_decision(signed, d)

    async def receive_decisions(self, decisions: list[Signed],
                                sender: PublicKey) -> list[dict[str, Any]]:
        """Several DECISIONs at once: each acknowledged, or refused with its code, on its
        own (their entries and records are committed together)."""
        async def one(signed: Signed) -> dict[str, Any]:
            try:
                return await self.receive_decision(signed, sender)
            except FederationError as exc:
                return {"id": signed.msg.id, "code": exc.code.value,  # type: ignore[union-attr]
                        "detail": exc.detail}

        return list(await asyncio.gather(*(one(s) for s in decisions)))

    async def _receive_decision(self, signed: Signed, d: Decision) -> dict[str, Any]:
        record = self.payments.get(d.id) or await self._load_record(d.id)
        assert record is not None
        try:
            new, actions = sm.step(record.payment, sm.DecisionReceived(d.outcome), self.now())
        except sm.SettlementError as exc:
            raise FederationError(ResultCode.hold_resolved, str(exc)) from exc
        inbound = self.node.ledger.holds.get(f"{d.id}/in")
        # The destination's hold is its whole payment; an intermediary's inbound hold is
        # settled by this decision whatever its outbound leg did (a void after it paid
        # downstream is its loss, in its routing account).
        logs = any(isinstance(a, (sm.ApplyPost, sm.ApplyVoid)) for a in actions) or (
            record.payment.role == sm.Role.intermediary and inbound is not None
            and inbound.state == "held")
        if logs and not any(isinstance(a, sm.RecordLoss) for a in actions):
            # The entry and the record that follows it, in one commit.
            after = copy.copy(record)
            after.payment = new
            outcome = await self._log_and_store(
                signed, record, after, f"{d.id}/in", "posted" if d.outcome == "post" else "voided")
            if outcome.code not in (ResultCode.ok, ResultCode.exists):
                raise FederationError(outcome.code, outcome.detail)
            return {"id": d.id, "ack": d.outcome}
        if logs:
            outcome = await self._log(signed)
            if outcome.code not in (ResultCode.ok, ResultCode.exists):
                raise FederationError(outcome.code, outcome.detail)
        if any(isinstance(a, sm.RecordLoss) for a in actions):
            await self._dispute("loss", record, signed)
        record.payment = new
        await self._store(record)
        return {"id": d.id, "ack": d.outcome}

    async def _record_of(self, p: Prepare) -> PaymentRecord | None:
        """What we keep of this PREPARE's attempt, if it came before (the same PREPARE)."""
        record = self.payments.get(p.id) or await self._load_record(p.id)
        if record is not None and record.prepare.msg != p:
            raise FederationError(ResultCode.exists_with_different_fields,
                                  "a different PREPARE already used this attempt id")
        return record

    async def _load_record(self, attempt_id: str) -> PaymentRecord | None:
        rows = self._lookup("SELECT doc FROM payments WHERE id = ?", (attempt_id,))
        return PaymentRecord.from_json(json.loads(rows[0][0])) if rows else None

    def _lookup(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        """The rows of one indexed query (a payment's record, its quotes), read on the event
        loop's thread: no hop to a thread for a read of a few rows (``PointReader``)."""
        assert self.node.lookup is not None
        return self.node.lookup.rows(sql, params)

    def far_end(self, attempt_id: str) -> tuple[dict[str, Any], str | None] | None:
        """Who a member paid or was paid by across collectives, for their history: the
        other member and collective as the PREPARE of ``attempt_id`` this node logged names
        them, the collectives in between, and the payer's memo kept beside that entry.
        None if no PREPARE of that attempt is in this log (a transfer here).

        The payer's node read the order's payee and node key from the payer's signed order,
        and checked that node's signed quote. The payee's node checks no signature of the
        payer's: through a collective in between, the payer and collective are as the order
        that collective relayed names them (``via`` says which vouches for it); directly,
        the sending node, pinned by the line, signed the PREPARE carrying the order."""
        rows = self._lookup(
            "SELECT e.idx, l.entry, m.memo FROM events e JOIN log l ON l.idx = e.idx "
            "LEFT JOIN memos m ON m.idx = e.idx WHERE e.id >= ? AND e.id < ? LIMIT 1",
            (f"prepare/{attempt_id}/", f"prepare/{attempt_id}0"))
        if not rows:
            return None
        _, entry, memo = rows[0]
        p = parse_log_entry(json.loads(bytes(entry))).payload.msg
        if not isinstance(p, Prepare) or not isinstance(p.order.msg, PaymentOrder):
            return None
        order = p.order.msg
        parties = self.parties()
        if p.from_node == self.key:  # we sent it: the payer is ours
            nodes = (p.to_node, *p.path)
            return {"member": order.payee, "collective": self._name_of(nodes[-1], parties),
                    "via": [self._name_of(k, parties) for k in nodes[:-1]]}, memo
        sender = self._name_of(p.from_node, parties)
        line = self.line_with(p.from_node)
        if line is not None and line.other(self.key).ledger == order.ledger:
            return {"member": order.payer, "collective": sender, "via": []}, None
        named = next((party["name"] for party in parties.values()
                      if party.get("ledger") == order.ledger), None)
        return {"member": order.payer, "collective": named, "via": [sender]}, None

    async def payment_status(self, order_id: str) -> list[dict[str, Any]]:
        db = self.node.reader
        assert db is not None
        out = []
        # Only this order's attempts leave SQLite (the table holds every payment ever made).
        async with db.execute(
                "SELECT doc FROM payments "
                "WHERE json_extract(doc, '$.prepare.msg.order.msg.id') = ?", (order_id,)) as cur:
            async for row in cur:
                doc = json.loads(row[0])
                order = doc["prepare"]["msg"]["order"]["msg"]
                if order["id"] == order_id:
                    out.append({"attempt": doc["id"], "role": doc["role"],
                                "outbound": doc["outbound"], "inbound": doc["inbound"],
                                "hold": doc["hold"], "result": doc["result"],
                                "payer": order["payer"], "payee": order["payee"]})
        return out

    # --- reconciliation -----------------------------------------------------------------------

    async def our_statement(self, line_id: str) -> Signed:
        state = self.node.ledger
        db = self.node.reader
        assert db is not None
        prefix = f"line_settlement/{line_id}/"
        async with db.execute("SELECT COUNT(*) FROM events WHERE id >= ? AND id < ?",
                              (prefix, prefix[:-1] + "0")) as cur:
            row = await cur.fetchone()
        settled = int(row[0]) if row else 0
        return sign_message(statement(state, line_id, self.now(), state.size, settled),
                            self.node.node_key)

    def _check_statement(self, signed: Signed, sender: PublicKey) -> Line:
        st = signed.msg
        if not isinstance(st, Statement):
            raise FederationError(ResultCode.invalid_field, "not a statement")
        current = self.node.ledger.lines.get(st.line)
        line = current.msg if current is not None else None
        if not isinstance(line, Line):
            raise FederationError(ResultCode.line_not_found, f"no credit line {st.line}")
        good, all_good = signed.verified_signers()
        if not all_good or len(signed.sigs) != 1 or not signer_ok(line, st, sender) or \
                sender not in good or sender == self.key:
            raise FederationError(ResultCode.bad_signature,
                                  "a statement is signed by the other node of its line")
        return line

    async def _compared(self, ours: Signed, theirs: Signed, line: Line) -> dict[str, Any]:
        verdict, detail = compare(ours.msg, theirs.msg)  # type: ignore[arg-type]
        verdict, detail, new = self._escalate(line.id, verdict, detail, ours, theirs)
        result = {"line": line.id, "peer": line.other(self.key).name, "verdict": verdict,
                  "detail": detail, "ours": ours.to_json(), "theirs": theirs.to_json(),
                  "at": self.now()}
        self.reconciled[line.id] = result
        if verdict == "mismatch" and new:
            log.warning("STATEMENT MISMATCH on the line with %s: %s", result["peer"], detail)
            await self._record_statement_mismatch(line, ours, theirs, detail)
        return result

    def _escalate(self, line_id: str, verdict: Verdict, detail: str, ours: Signed,
                  theirs: Signed) -> tuple[Verdict, str, bool]:
        """An "unsettled" difference that stays the same for three statement rounds is no
        longer a payment in passing: a settlement or a decision reached one ledger only.
        Raise it as a mismatch, with both statements."""
        a, b = ours.msg, theirs.msg
        assert isinstance(a, Statement) and isinstance(b, Statement)
        if verdict != "unsettled":
            self._unsettled.pop(line_id, None)
            if verdict != "mismatch":
                self._mismatched.pop(line_id, None)
                return verdict, detail, True
            # The same lie told again is the same dispute, not a new one every round.
            told = (a.version, a.in_flight, a.settled, a.sum_a, a.sum_b,
                    b.sum_a, b.sum_b)
            new = self._mismatched.get(line_id) != told
            self._mismatched[line_id] = told
            return verdict, detail, new
        same = (a.version, b.version, a.in_flight, b.in_flight, a.settled, b.settled)
        first = self._unsettled.get(line_id)
        if first is None or first[0] != same:
            self._unsettled[line_id] = (same, self.now(), False)
            return verdict, detail, False
        waited = self.now() - first[1]
        if waited < 3 * self.cfg.statement_interval_ms:
            return verdict, detail, False
        self._unsettled[line_id] = (same, first[1], True)  # recorded once, not every round
        return "mismatch", (f"the same difference for {waited // 1000} s, through several "
                            f"statements: {detail}"), not first[2]

    async def _record_statement_mismatch(self, line: Line, ours: Signed, theirs: Signed,
                                         detail: str) -> None:
        st = theirs.msg
        assert isinstance(st, Statement)
        # One dispute per pair of statements (their signed time tells them apart).
        attempt = hashlib.sha256(f"{line.id}/{st.as_of}/{st.size}".encode()).hexdigest()[:32]
        await self.record_dispute("statement_mismatch", line.other(self.key).node_key, line.id,
                                  attempt, {"ours": ours.to_json(), "theirs": theirs.to_json(),
                                            "detail": detail})

    async def receive_statement(self, signed: Signed, sender: PublicKey) -> dict[str, Any]:
        """A peer's statement of our line: answer with ours, and compare them."""
        line = self._check_statement(signed, sender)
        ours = await self.our_statement(line.id)
        await self._compared(ours, signed, line)
        return {"statement": ours.to_json()}

    async def reconcile(self, line_id: str) -> dict[str, Any]:
        """Exchange statements of one line with its other node now, and compare them."""
        current = self.node.ledger.lines.get(line_id)
        line = current.msg if current is not None else None
        if not isinstance(line, Line):
            raise FederationError(ResultCode.line_not_found, f"no credit line {line_id}")
        peer = line.other(self.key).node_key
        ours = await self.our_statement(line_id)
        try:
            answer = await self._peer_post(peer.key_id, "/v1/peer/statement",
                                           {"statement": ours.to_json()})
            theirs = parse_signed(answer["statement"], frozenset({"statement"}))
            self._check_statement(theirs, peer)
        except TallyError as exc:
            result = {"line": line_id, "peer": line.other(self.key).name,
                      "verdict": "unreachable", "detail": exc.detail, "ours": ours.to_json(),
                      "theirs": None, "at": self.now()}
            self.reconciled[line_id] = result
            return result
        except (KeyError, TypeError, MessageError) as exc:
            raise FederationError(ResultCode.invalid_field,
                                  f"the peer's statement is malformed: {exc}") from exc
        return await self._compared(ours, theirs, line)

    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.statement_interval_ms / 1000)
            for line_id in list(self.node.ledger.lines):
                try:
                    await self.reconcile(line_id)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.info("reconciling line %s failed: %s", line_id, exc)

    # --- disputes ---------------------------------------------------------------------------

    async def record_dispute(self, kind: str, peer: PublicKey | str, line: str, attempt: str,
                             evidence: dict[str, Any]) -> str:
        """Keep what went wrong with a peer, and the signed messages that show it; the id of
        the dispute. Idempotent per (kind, attempt): a second call returns the first id.

        A dispute is never applied to the balances: the stewards of both collectives settle
        it between themselves (a line settlement, say) and mark it resolved.
        """
        peer_id = peer.key_id if isinstance(peer, PublicKey) else peer
        fresh = os.urandom(16).hex()
        doc = json.dumps(evidence, sort_keys=True)
        now = self.now()
        found: list[str] = []

        async def run(db: aiosqlite.Connection) -> None:
            await db.execute(
                "INSERT OR IGNORE INTO disputes (id, kind, peer, line, attempt, created, "
                "evidence) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (fresh, kind, peer_id, line, attempt, now, doc),
            )
            async with db.execute("SELECT id FROM disputes WHERE kind = ? AND attempt = ?",
                                  (kind, attempt)) as cur:
                row = await cur.fetchone()
            assert row is not None
            found.append(str(row[0]))

        assert self.node.writer is not None
        await self.node.writer.write(run)
        if found[0] == fresh:
            log.warning("dispute %s recorded: %s with peer %s on line %s (attempt %s); "
                        "stewards: see `tally disputes`", fresh, kind, peer_id, line, attempt)
        return found[0]

    async def _record_late_fulfilment(self, record: PaymentRecord, fulfil: Signed) -> None:
        """We voided at expiry (or on a REJECT); then a valid fulfilment came. The books
        stand as voided; the peer may claim it was paid, so keep the signed evidence."""
        p = record.outbound.msg
        assert isinstance(p, Prepare)
        void = await self._logged(f"decision/{p.id}/{self.key.key_id}") or await self._logged(
            f"reject/{p.id}/{p.to_node.key_id}")
        await self.record_dispute("late_fulfilment", p.to_node, p.line, p.id, {
            "prepare": record.outbound.to_json(), "fulfil": fulfil.to_json(),
            "void": void.to_json() if void is not None else None,
        })

    async def disputes(self, include_resolved: bool = False) -> list[dict[str, Any]]:
        db = self.node.reader
        assert db is not None
        sql = ("SELECT id, kind, peer, line, attempt, created, evidence, resolved, note "
               "FROM disputes" + ("" if include_resolved else " WHERE resolved = 0")
               + " ORDER BY created, id")
        names = {line.other(self.key).node_key.key_id: line.other(self.key).name
                 for line in (s.msg for s in self.node.ledger.lines.values())
                 if isinstance(line, Line)}
        out = []
        async with db.execute(sql) as cur:
            async for row in cur:
                out.append({"id": row[0], "kind": row[1], "peer": row[2],
                            "peer_name": names.get(row[2]), "line": row[3], "attempt": row[4],
                            "created": row[5], "evidence": json.loads(row[6]),
                            "resolved": bool(row[7]), "note": row[8]})
        return out

    async def resolve_dispute(self, dispute_id: str, note: str) -> dict[str, Any]:
        changed: list[int] = []

        async def run(db: aiosqlite.Connection) -> None:
            cur = await db.execute("UPDATE disputes SET resolved = 1, note = ? WHERE id = ?",
                                   (note, dispute_id))
            changed.append(cur.rowcount)

        assert self.node.writer is not None
        await self.node.writer.write(run)
        if not changed[0]:
            raise FederationError(ResultCode.not_found, f"no dispute {dispute_id}")
        return {"id": dispute_id, "resolved": True, "note": note}

    # --- suspension by one side -------------------------------------------------------------

    async def suspend_line(self, signed: Signed) -> dict[str, Any]:
        """Our stewards suspend a line alone: log the new version, then tell the peer.

        Sending again the version already logged just resends it (the peer may have been
        unreachable the first time)."""
        line = signed.msg
        assert isinstance(line, Line)
        current = self.node.ledger.lines.get(line.id)
        if current is None:
            raise FederationError(ResultCode.line_not_found, f"no credit line {line.id}")
        if current.msg == line:
            entry = current
            index = None
        else:
            if not is_suspension_of(cast(Line, current.msg), line):  # one of our lines
                raise FederationError(
                    ResultCode.invalid_field,
                    "one side alone may only suspend an active line: a newer version whose "
                    "only change is the status; other changes need `tally peer change`")
            self._check_stewards(signed)
            entry = _merge(signed, sign_message(line, self.node.node_key))
            outcome = await self._log(entry)
            if outcome.code not in (ResultCode.ok, ResultCode.exists):
                raise FederationError(outcome.code, outcome.detail)
            index = outcome.index
        other = line.other(self.key)
        delivered = True
        try:
            await self._peer_post(other.node_key.key_id, "/v1/peer/suspension",
                                  {"line": entry.to_json()})
        except (TallyError, FederationError) as exc:
            delivered = False
            log.warning("line %s suspended here, but %s was not told: %s; run `tally peer "
                        "suspend` again to resend", line.id, other.name, exc)
        return {"line": line.id, "version": line.version, "status": line.status,
                "index": index, "delivered": delivered}

    async def receive_suspension(self, signed: Signed, sender: PublicKey) -> dict[str, Any]:
        """The peer's stewards suspended the line alone: its node's signature suffices here."""
        line = signed.msg
        if not isinstance(line, Line) or line.side(self.key) is None:
            raise FederationError(ResultCode.not_a_party, "this line does not name this node")
        if line.other(self.key).node_key != sender:
            raise FederationError(ResultCode.not_a_party, "the sender is not the other party")
        current = self.node.ledger.lines.get(line.id)
        if current is None:
            raise FederationError(ResultCode.line_not_found, f"no credit line {line.id}")
        if current.msg == line:
            return {"line": line.id, "version": line.version, "status": line.status}  # resent
        if not is_suspension_of(cast(Line, current.msg), line):  # one of our lines
            raise FederationError(ResultCode.invalid_field,
                                  "not a suspension of the line in force: propose a change")
        outcome = await self._log(signed)
        if outcome.code not in (ResultCode.ok, ResultCode.exists):
            raise FederationError(outcome.code, outcome.detail)
        log.warning("credit line %s suspended by %s (%s): no new payments across it",
                    line.id, line.other(self.key).name, sender.key_id)
        return {"line": line.id, "version": line.version, "status": line.status}

    # --- settlement out of band ---------------------------------------------------------------

    async def next_settlement(self, line_id: str) -> int:
        """The sequence number a new settlement of this line takes."""
        db = self.node.reader
        assert db is not None
        async with db.execute("SELECT COUNT(*) FROM events WHERE id LIKE ?",
                              (f"line_settlement/{line_id}/%",)) as cur:
            row = await cur.fetchone()
        logged = int(row[0]) if row else 0
        sequences = [logged]
        for signed, _ in self.settlements.values():
            s: Any = signed.msg
            if s.line == line_id:
                sequences.append(int(s.sequence))
        return max(sequences) + 1

    def _settlement_line(self, s: LineSettlement) -> Line:
        current = self.node.ledger.lines.get(s.line)
        if current is None:
            raise FederationError(ResultCode.line_not_found, f"no credit line {s.line}")
        line = current.msg
        assert isinstance(line, Line)
        return line

    def _check_settlement(self, s: LineSettlement) -> None:
        refusal = settlement_refusal(self.node.ledger, s)
        if refusal is not None:
            raise FederationError(refusal.code, refusal.detail)

    async def load_settlements(self) -> None:
        db = self.node.reader  # not the writer's connection: the writer may be running
        assert db is not None
        async with db.execute(
                "SELECT key, value FROM meta WHERE key LIKE 'settlement:%'") as cur:
            async for row in cur:
                doc = json.loads(row[1])
                self.settlements[row[0].split(":", 1)[1]] = (
                    parse_signed(doc["settlement"], frozenset({"line_settlement"})), doc["by"])

    async def _keep_settlement(self, signed: Signed, by: str) -> None:
        s = signed.msg
        assert isinstance(s, LineSettlement)
        await self._set_meta(f"settlement:{s.id}", json.dumps({"settlement": signed.to_json(),
                                                                "by": by}))
        self.settlements[s.id] = (signed, by)

    async def _drop_settlement(self, settlement_id: str) -> None:
        async def run(db: aiosqlite.Connection) -> None:
            await db.execute("DELETE FROM meta WHERE key = ?", (f"settlement:{settlement_id}",))

        assert self.node.writer is not None
        await self.node.writer.write(run)
        self.settlements.pop(settlement_id, None)

    async def propose_settlement(self, signed: Signed) -> dict[str, Any]:
        """Our stewards signed a settlement: add the node's signature and send it."""
        s = signed.msg
        assert isinstance(s, LineSettlement)
        line = self._settlement_line(s)
        self._check_stewards(signed)
        self._check_settlement(s)
        if s.valid_until <= self.now():
            raise FederationError(ResultCode.expired, "this settlement has expired already")
        ours = _merge(signed, sign_message(s, self.node.node_key))
        await self._keep_settlement(ours, "ours")
        other = line.other(self.key)
        await self._peer_post(other.node_key.key_id, "/v1/peer/settlements",
                              {"settlement": sign_message(s, self.node.node_key).to_json()})
        return {"settlement": s.id, "line": s.line, "status": "proposed", "peer": other.name}

    async def accept_settlement(self, signed: Signed) -> dict[str, Any]:
        """Our stewards accept a settlement the peer proposed: log it, send the acceptance."""
        s = signed.msg
        assert isinstance(s, LineSettlement)
        pending = self.settlements.get(s.id)
        if pending is None or pending[1] != "theirs":
            raise FederationError(ResultCode.not_found, f"no settlement {s.id} to accept")
        line = self._settlement_line(s)
        self._check_stewards(signed)
        entry = _merge(pending[0], signed, sign_message(s, self.node.node_key))
        outcome = await self._log(entry)
        if outcome.code not in (ResultCode.ok, ResultCode.exists):
            raise FederationError(outcome.code, outcome.detail)
        await self._drop_settlement(s.id)
        other = line.other(self.key)
        both_nodes = Signed(s, tuple(x for x in entry.sigs
                                     if x.key in (self.key, other.node_key)))
        await self._peer_post(other.node_key.key_id, "/v1/peer/settlements",
                              {"settlement": both_nodes.to_json()})
        return {"settlement": s.id, "line": s.line, "status": "settled", "index": outcome.index}

    async def receive_settlement(self, signed: Signed, sender: PublicKey) -> dict[str, Any]:
        """The peer proposes a settlement (its node signed), or accepts ours (both did)."""
        s = signed.msg
        assert isinstance(s, LineSettlement)
        line = self._settlement_line(s)
        if line.other(self.key).node_key != sender:
            raise FederationError(ResultCode.not_a_party, "the sender is not the other party")
        good, all_good = signed.verified_signers()
        if not all_good or sender not in good:
            raise FederationError(ResultCode.bad_signature, "the settlement is not signed by you")
        if self.key in good:
            pending = self.settlements.get(s.id)
            if pending is None or pending[1] != "ours":
                if await self._logged(f"line_settlement/{s.line}/{s.sequence}") is not None:
                    return {"settlement": s.id, "status": "settled"}
                raise FederationError(ResultCode.not_found, "we proposed no such settlement")
            outcome = await self._log(_merge(pending[0], signed))
            if outcome.code not in (ResultCode.ok, ResultCode.exists):
                log.warning("settlement %s accepted by %s but refused here: %s", s.id,
                            line.other(self.key).name, outcome.detail)
                raise FederationError(outcome.code, outcome.detail)
            await self._drop_settlement(s.id)
            return {"settlement": s.id, "status": "settled"}
        self._check_settlement(s)
        await self._keep_settlement(signed, "theirs")
        log.info("settlement of line %s proposed by %s: %s", s.line, line.other(self.key).name,
                 s.id)
        return {"settlement": s.id, "status": "proposed"}
