"""The single writer: applies queued requests in batches, one transaction each, then answers.

Layer: node. Owns every write to the ledger database after initialisation.

Theory of operation
-------------------
Handlers parse a request and check its signatures (in worker threads for large batches),
then ``submit`` it and await the outcome. The writer task takes whatever is queued — up to
``max_group_commit`` requests — and, in one ``BEGIN IMMEDIATE … COMMIT``:

1. reads which of the batch's event ids were applied before (ids are unique forever);
2. runs the pure ledger rules (``protocol.ledger.apply``) on each request in order;
3. appends each accepted event to the log, its Merkle hashes, the derived tables (accounts,
   postings, memos, event ids) and any signed-request nonces.

Only after COMMIT returns are the requests answered, so an acknowledged event is durable,
and a refused one wrote nothing. If the transaction fails, the in-memory state is reloaded
from the database and every request in the batch gets ``internal_error`` (nothing applied).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiosqlite

from node import storage
from node.tree import TreeAppender
from protocol.codes import ResultCode
from protocol.ledger import LedgerState, Outcome, Policy, Seen, SigCheck, apply, seen_key
from protocol.messages import Genesis, LogEntry, SetStewards, Signed, Transfer

log = logging.getLogger(__name__)


@dataclass
class Memo:
    text: str
    salt: bytes


@dataclass
class EventRequest:
    signed: Signed
    sigcheck: SigCheck
    memo: Memo | None = None
    future: asyncio.Future[Outcome] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass
class NonceRequest:
    nonce: str
    expires: int
    future: asyncio.Future[bool] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass
class OpRequest:
    """A write beside the ledger rules (a checkpoint, a memo erasure), run in the batch's
    transaction so that the writer stays the only one writing."""

    run: Callable[[aiosqlite.Connection], Awaitable[None]]
    future: asyncio.Future[bool] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


Request = EventRequest | NonceRequest | OpRequest


class Overloaded(Exception):
    """The writer's queue is full; the client should retry after a short wait."""


class Writer:
    def __init__(
        self,
        db: aiosqlite.Connection,
        state: LedgerState,
        policy: Policy,
        *,
        max_batch: int = 2000,
        max_queue: int = 20000,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        on_commit: Callable[[int], None] | None = None,
    ) -> None:
        self.db = db
        self.state = state
        self.policy = policy
        self.max_batch = max_batch
        self.queue: asyncio.Queue[Request] = asyncio.Queue(maxsize=max_queue)
        self.clock_ms = clock_ms
        self.on_commit = on_commit
        self.tree = TreeAppender(db)
        self.nonces: dict[str, int] = {}
        self.last_time = 0
        self.commits = 0

    async def start(self) -> None:
        now_s = self.clock_ms() // 1000
        async with self.db.execute(
            "SELECT nonce, expires FROM nonces WHERE expires >= ?", (now_s,)
        ) as cur:
            self.nonces = {row[0]: int(row[1]) async for row in cur}
        async with self.db.execute("SELECT entry FROM log ORDER BY idx DESC LIMIT 1") as cur:
            row = await cur.fetchone()
        if row is not None:
            self.last_time = int(json.loads(row[0])["node_time"])
        await self.tree.load(self.state.size)

    def submit_nowait(self, request: Request) -> None:
        try:
            self.queue.put_nowait(request)
        except asyncio.QueueFull as exc:
            raise Overloaded() from exc

    def submit_all(self, requests: list[Request]) -> None:
        """Queue every request or none: a batch is refused whole when the queue lacks room."""
        if self.queue.maxsize - self.queue.qsize() < len(requests):
            raise Overloaded()
        for request in requests:
            self.queue.put_nowait(request)

    async def submit(self, signed: Signed, sigcheck: SigCheck, memo: Memo | None = None) -> Outcome:
        request = EventRequest(signed, sigcheck, memo)
        self.submit_nowait(request)
        return await request.future

    async def write(self, run: Callable[[aiosqlite.Connection], Awaitable[None]]) -> None:
        """Run ``run(db)`` inside the next batch's transaction; return after COMMIT."""
        request = OpRequest(run)
        self.submit_nowait(request)
        await request.future

    async def remember_nonce(self, nonce: str, expires: int) -> bool:
        """Record a signed request's nonce durably; False if it was seen before (a replay)."""
        request = NonceRequest(nonce, expires)
        self.submit_nowait(request)
        return await request.future

    async def run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            while len(batch) < self.max_batch and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            try:
                results = await self._commit(batch)
            except asyncio.CancelledError:
                for request in batch:
                    if not request.future.done():
                        request.future.cancel()
                raise
            except Exception:
                log.exception("writer: a batch of %d failed; nothing applied", len(batch))
                await self._reload()
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(RuntimeError("storage failure"))
                continue
            for request, result in zip(batch, results):
                if not request.future.done():
                    request.future.set_result(result)  # type: ignore[arg-type]
            if self.on_commit is not None:
                self.on_commit(self.state.size)

    async def _reload(self) -> None:
        try:
            await self.db.execute("ROLLBACK")
        except Exception:
            pass
        fresh = await storage.load_state(self.db)
        self.state.__dict__.update(fresh.__dict__)
        await self.tree.load(self.state.size)

    async def _commit(self, batch: list[Request]) -> list[Outcome | bool]:
        state = self.state
        now = max(self.clock_ms(), self.last_time)
        events = [r for r in batch if isinstance(r, EventRequest)]
        ids = list({seen_key(r.signed) for r in events if not isinstance(r.signed.msg, Genesis)})
        state.seen.clear()
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            async with self.db.execute(
                f"SELECT id, digest, idx FROM events WHERE id IN ({marks})", chunk
            ) as cur:
                async for row in cur:
                    state.seen[row[0]] = Seen(bytes(row[1]), int(row[2]))

        results: list[Outcome | bool] = []
        entries: list[tuple[int, bytes]] = []
        event_rows: list[tuple[str, bytes, int]] = []
        postings: list[tuple[str, int, int, str, str, int]] = []
        memos: list[tuple[int, bytes, str]] = []
        dirty: set[str] = set()
        new_nonces: list[tuple[str, int]] = []
        ops: list[OpRequest] = []
        stewards_changed = False
        lines_changed: set[str] = set()
        holds_changed: set[str] = set()
        for request in batch:
            if isinstance(request, OpRequest):
                ops.append(request)
                results.append(True)
                continue
            if isinstance(request, NonceRequest):
                fresh = request.nonce not in self.nonces
                if fresh:
                    self.nonces[request.nonce] = request.expires
                    new_nonces.append((request.nonce, request.expires))
                results.append(fresh)
                continue
            signed = request.signed
            outcome = apply(state, signed, now, self.policy, request.sigcheck)
            results.append(outcome)
            if outcome.code != ResultCode.ok:
                continue
            assert outcome.index is not None
            index = outcome.index
            msg = signed.msg
            entries.append((index, LogEntry(now, signed).encode()))
            event_rows.append((outcome.key, state.seen[outcome.key].digest, index))
            dirty.update(outcome.touched)
            event_id = getattr(msg, "id", "")
            postings.extend(
                (handle, index, amount, counterparty, event_id, now)
                for handle, amount, counterparty in outcome.postings
            )
            if isinstance(msg, Transfer) and request.memo is not None:
                memos.append((index, request.memo.salt, request.memo.text))
            elif isinstance(msg, SetStewards):
                stewards_changed = True
            elif msg.type == "line":
                lines_changed.add(event_id)
            elif msg.type in ("prepare", "fulfil", "reject", "decision"):
                holds_changed.update(k for k in (f"{event_id}/out", f"{event_id}/in")
                                     if k in state.holds)

        if not entries and not new_nonces and not ops:
            return results

        db = self.db
        await db.execute("BEGIN IMMEDIATE")
        try:
            if entries:
                await db.executemany("INSERT INTO log (idx, entry) VALUES (?, ?)", entries)
                await self.tree.append([e for _, e in entries], entries[0][0])
                await db.executemany(
                    "INSERT INTO events (id, digest, idx) VALUES (?, ?, ?)", event_rows
                )
                if postings:
                    await db.executemany(
                        "INSERT INTO postings (handle, idx, amount, counterparty, event_id, "
                        "node_time) VALUES (?, ?, ?, ?, ?, ?)",
                        postings,
                    )
                if memos:
                    await db.executemany(
                        "INSERT INTO memos (idx, salt, memo) VALUES (?, ?, ?)", memos
                    )
                if dirty:
                    await db.executemany(
                        f"INSERT OR REPLACE INTO accounts ({storage.ACCOUNT_COLUMNS}) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [storage.account_row(state.accounts[h]) for h in sorted(dirty)],
                    )
                if lines_changed:
                    await db.executemany(
                        "INSERT OR REPLACE INTO lines (id, signed) VALUES (?, ?)",
                        [(i, json.dumps(state.lines[i].to_json())) for i in sorted(lines_changed)],
                    )
                if holds_changed:
                    await db.executemany(
                        "INSERT OR REPLACE INTO holds (key, doc, state) VALUES (?, ?, ?)",
                        [(k, json.dumps(state.holds[k].to_json()), state.holds[k].state)
                         for k in sorted(holds_changed)],
                    )
                if stewards_changed:
                    doc = {
                        "keys": sorted(k.text for k in state.stewards),
                        "threshold": state.threshold,
                    }
                    await db.execute(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES ('stewards', ?)",
                        (json.dumps(doc),),
                    )
            if new_nonces:
                await db.executemany(
                    "INSERT OR IGNORE INTO nonces (nonce, expires) VALUES (?, ?)", new_nonces
                )
                if self.commits % 256 == 0:
                    cutoff = now // 1000
                    await db.execute("DELETE FROM nonces WHERE expires < ?", (cutoff,))
                    self.nonces = {n: e for n, e in self.nonces.items() if e >= cutoff}
            for op in ops:
                await op.run(db)
            await db.execute("COMMIT")
        except BaseException:
            for nonce, _ in new_nonces:
                self.nonces.pop(nonce, None)
            raise
        self.last_time = now
        self.commits += 1
        self.tree.committed()
        return results
