"""The single writer: applies queued requests in batches, one transaction each, then answers.

Layer: node. Owns every write to the ledger database after initialisation.

Theory of operation
-------------------
Handlers parse a request and check its signatures off the event loop (``Node.verify``),
then ``submit`` it (or ``submit_batch`` a whole batch request, with one future for all its
events) and await the outcome. The writer task takes whatever is queued — up to
``max_group_commit`` events, never splitting a batch request — and, in one
``BEGIN IMMEDIATE … COMMIT``:

1. reads which of the batch's event ids were applied before (ids are unique forever);
2. runs the pure ledger rules (``protocol.ledger.apply``) on each request in order;
3. appends each accepted event to the log, its Merkle hashes, the derived tables (accounts,
   postings, memos, event ids) and any signed-request nonces, then runs the batch's
   ``SqlRequest``s (writes beside the ledger rules, such as a payment's record). A
   transfer's postings may wait in memory, and go with a later commit (``HeldPostings``).

Steps 1 and 3 each run as one plain ``sqlite3`` call sequence *on the event loop's thread*
(``on_loop``); step 3 includes the COMMIT unless an ``OpRequest`` must run in between (ops
use the connection through aiosqlite, awaited one at a time, after every ``SqlRequest``)
or the transaction is big (``BIG_COMMIT``: then the COMMIT alone runs in aiosqlite's
thread). Only after COMMIT returns are the requests answered, so an acknowledged event is
durable, and a refused one wrote nothing. If the transaction fails, the in-memory state is
reloaded from the database and every request in the batch gets ``internal_error`` (nothing
applied).

Why on the loop's thread, blocking it for the inserts and the fsync: in aiosqlite's thread
every SQLite step releases the GIL and must win it back from a busy event loop, which holds
it for up to the interpreter's switch interval (5 ms) at a time. Measured under figure 1's
load (bench, docs/benchmarks.md), a group commit of ~20 transfers took ~16 ms that way
(~5 ms for a SELECT of 20 ids, ~10 ms for the inserts and COMMIT), and every request waited
for it; on the loop's thread the same commit takes ~3-4 ms, of which the fsync is a few
hundred microseconds on a local SSD. The cost: while the fsync runs, the loop serves nobody
(a disk with slow fsyncs slows every request, not only writes). After ``start`` the writer is
the only user of its connection, so nothing else can run statements on it meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiosqlite

from node import storage
from node.intake import Memo
from node.tree import TreeAppender
from protocol.codes import ResultCode
from protocol.ledger import (
    LedgerState,
    Outcome,
    Policy,
    Seen,
    SigCheck,
    apply,
    seen_key,
    transfer_postings,
)
from protocol.messages import (
    Genesis,
    SetStewards,
    Signed,
    Transfer,
    encode_entry,
    parse_log_entry,
)

log = logging.getLogger(__name__)


@dataclass
class EventRequest:
    signed: Signed
    sigcheck: SigCheck
    memo: Memo | None = None
    future: asyncio.Future[Outcome] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass
class EventBatch:
    """The events of one batch request, (signed, sigcheck, memo) each: committed in one
    transaction, answered with one future holding every outcome in order."""

    events: Sequence[tuple[Signed, SigCheck, Memo | None]]
    future: asyncio.Future[list[Outcome]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


@dataclass
class NonceRequest:
    nonce: str
    expires: int
    claimed: bool = False  # by ``claim_nonce``: already in ``Writer.nonces``, only to store
    future: asyncio.Future[bool] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass
class OpRequest:
    """A write beside the ledger rules (a checkpoint, a memo erasure), run in the batch's
    transaction so that the writer stays the only one writing."""

    run: Callable[[aiosqlite.Connection], Awaitable[None]]
    future: asyncio.Future[bool] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass
class SqlRequest:
    """A write beside the ledger rules that needs no await: ``run(conn)`` gets the writer's
    own ``sqlite3.Connection`` and runs on the event loop's thread, inside the batch's
    transaction, after the batch's entries and before its COMMIT, like the batch's own
    inserts (no hop to aiosqlite's thread, no COMMIT of its own)."""

    run: Callable[[sqlite3.Connection], None]
    future: asyncio.Future[bool] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())
    write_all_postings: bool = False  # and every held posting with this batch (``flush``)


Request = EventRequest | EventBatch | NonceRequest | OpRequest | SqlRequest

T = TypeVar("T")


class Overloaded(Exception):
    """The writer's queue is full; the client should retry after a short wait."""


def _size(request: Request) -> int:
    return len(request.events) if isinstance(request, EventBatch) else 1


def on_loop(db: aiosqlite.Connection, fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(conn, *args)`` right here, on the event loop's thread, with ``db``'s own
    ``sqlite3.Connection`` (opened with ``check_same_thread=False``: see the module's
    docstring for why). Only the writer calls it, and never while an aiosqlite call on
    ``db`` is in flight (it awaits each of those), so the two never run at once."""
    return fn(db._conn, *args)


class _Recorder:
    """Stands in for the connection while ``TreeAppender.append`` computes its rows, so they
    are written with the rest of the batch, in one transaction."""

    def __init__(self) -> None:
        self.statements: list[tuple[str, list[Any]]] = []

    async def executemany(self, sql: str, rows: Any) -> None:
        self.statements.append((sql, list(rows)))


def _select_seen(conn: sqlite3.Connection, ids: list[str]) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        rows += conn.execute(f"SELECT id, digest, idx FROM events WHERE id IN ({marks})", chunk)
    return rows


# Rows per multi-row INSERT: any count is written as a few statements of these sizes, so
# the connection's statement cache keeps a handful per table (at most 256 × 9 = 2,304
# parameters, far under SQLite's limit).
_CHUNKS = (256, 32, 4, 1)

# A transaction of this many log entries or more commits in aiosqlite's thread, not on the
# loop's: its COMMIT (the WAL frames of every page it touched, then the fsync: tens of ms for
# a batch request of 1,000 transfers) would stall every other request, while the thread
# needs the GIL back only once. Smaller ones commit on the loop: measured under figure 1's
# load (many small group commits), committing those in the thread cost throughput.
BIG_COMMIT = 256

# Transfers' history postings wait in memory until their account has this many, then go
# together with the next commit. A posting goes under its account's handle, so each lands on
# a page of its own: written at every commit, the postings of a commit of 16 transfers made
# ~12 of its ~21 KiB of WAL per transfer and about half the writer's CPU; written eight at
# a time, eight share a page (docs/benchmarks.md). An account's postings also go once the
# oldest has waited POSTINGS_MAX_AGE log entries, and all of them at a clean stop.
POSTINGS_PER_WRITE = 8
POSTINGS_MAX_AGE = 2048

PostingRow = storage.PostingRow


class HeldPostings:
    """Transfers' postings not yet in the postings table, by account.

    Served from memory (``Writer.unwritten_postings``) and rebuilt from the log when the node
    starts (``Writer.start``). ``meta.postings_upto`` is a log size below which every
    transfer's postings are in the table; at or above it, the table says which are."""

    def __init__(self) -> None:
        self.by_handle: dict[str, list[PostingRow]] = {}
        # (index of the oldest held posting, handle), oldest first; an entry whose handle
        # was written since, or holds a newer oldest posting, is stale and skipped
        self.oldest: deque[tuple[int, str]] = deque()

    def due(self, new: dict[str, list[PostingRow]], size: int, everything: bool) -> set[str]:
        """The accounts whose postings go with this commit, given its ``new`` ones and the
        log ``size`` after it."""
        if everything:
            return set(self.by_handle) | set(new)
        limit = size - POSTINGS_MAX_AGE
        due = {h for h, rows in new.items()
               if len(rows) + len(self.by_handle.get(h, ())) >= POSTINGS_PER_WRITE
               or rows[0][1] < limit}
        for idx, handle in self.oldest:
            if idx >= limit:
                break
            rows = self.by_handle.get(handle)
            if rows and rows[0][1] == idx:
                due.add(handle)
        return due

    def upto(self, new: dict[str, list[PostingRow]], size: int) -> int:
        """A log size below which every posting is in the table after this commit."""
        oldest = [rows[0][1] for rows in new.values()]
        for idx, handle in self.oldest:
            rows = self.by_handle.get(handle)
            if rows and rows[0][1] == idx:
                oldest.append(idx)
                break
        return min(oldest, default=size)

    def committed(self, new: dict[str, list[PostingRow]], written: set[str]) -> None:
        for handle in written:
            self.by_handle.pop(handle, None)
        for handle, rows in new.items():
            if handle in written:
                continue
            held = self.by_handle.setdefault(handle, [])
            if not held:
                self.oldest.append((rows[0][1], handle))
            held += rows
        while self.oldest:  # drop stale entries from the front
            idx, handle = self.oldest[0]
            kept = self.by_handle.get(handle)
            if kept and kept[0][1] == idx:
                break
            self.oldest.popleft()


def _insert_rows(conn: sqlite3.Connection, sql: str, rows: list[Sequence[Any]]) -> None:
    """``conn.executemany(sql, rows)`` for ``sql`` of the form ``INSERT … VALUES (?, …)``,
    as multi-row INSERTs: the same rows in the same order, but one SQLite step per statement
    instead of per row (less interpreter work per row)."""
    head, _, group = sql.rpartition(" VALUES ")
    start = 0
    for size in _CHUNKS:
        if len(rows) - start < size:
            continue
        text = f"{head} VALUES {','.join([group] * size)}"
        while len(rows) - start >= size:
            conn.execute(text, [v for row in rows[start : start + size] for v in row])
            start += size


def _write(conn: sqlite3.Connection, statements: list[tuple[str, Any]],
           sql_ops: list[SqlRequest], commit: bool) -> None:
    """BEGIN IMMEDIATE, every statement (for a list of rows, an INSERT of all of them; else
    ``execute``), every ``SqlRequest`` in queue order, then COMMIT if ``commit``. On
    failure the caller rolls back."""
    conn.execute("BEGIN IMMEDIATE")
    for sql, rows in statements:
        if isinstance(rows, list):
            _insert_rows(conn, sql, rows)
        else:
            conn.execute(sql, rows)
    for op in sql_ops:
        op.run(conn)
    if commit:
        conn.execute("COMMIT")


def _commit_only(conn: sqlite3.Connection) -> None:
    conn.execute("COMMIT")


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
        self.max_queue = max_queue
        self.queue: asyncio.Queue[Request] = asyncio.Queue()
        self.queued = 0  # events (and other requests) waiting in ``queue``
        self.clock_ms = clock_ms
        self.on_commit = on_commit
        self.tree = TreeAppender(db)
        self.nonces: dict[str, int] = {}
        self.last_time = 0
        self.commits = 0
        self.held = HeldPostings()
        self.postings_upto = 0  # as in meta
        # The waiting postings of the batch being committed: held once its COMMIT returns.
        self.pending: dict[str, list[PostingRow]] = {}

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
        await self._load_held()

    async def _load_held(self) -> None:
        """Rebuild the held postings (memory does not outlive the process) from the log:
        those of the transfers logged at or after ``meta.postings_upto`` that are not in
        the table (see ``HeldPostings``). The log is the truth, and a transfer's postings
        are a function of its entry alone."""
        self.held = HeldPostings()
        upto = int(await storage.get_meta(self.db, "postings_upto") or self.state.size)
        self.postings_upto = upto
        new: dict[str, list[PostingRow]] = {}
        async with self.db.execute(
            "SELECT idx, entry FROM log WHERE idx >= ? ORDER BY idx", (max(upto, 1),)
        ) as cur:
            async for idx, entry in cur:
                doc = json.loads(entry)
                if doc["type"] != "transfer":
                    continue
                logged = parse_log_entry(doc)
                t = logged.payload.msg
                assert isinstance(t, Transfer)
                for handle, amount, other in transfer_postings(t):
                    new.setdefault(handle, []).append(
                        (handle, int(idx), amount, other, t.id, logged.node_time))
        # Those the table has (written since ``upto``), by index, not by each account's
        # greatest: postings other than transfers' are written at once, maybe newer.
        handles = list(new)
        written: set[tuple[str, int]] = set()
        for start in range(0, len(handles), 500):
            chunk = handles[start : start + 500]
            async with self.db.execute(
                f"SELECT handle, idx FROM postings WHERE handle IN ({','.join('?' * len(chunk))})"
                " AND idx >= ?", (*chunk, upto)
            ) as cur:
                async for row in cur:
                    written.add((row[0], int(row[1])))
        for handle in handles:
            new[handle] = [p for p in new[handle] if (handle, p[1]) not in written]
            if not new[handle]:
                del new[handle]
        # oldest first, as commits would have held them
        for handle in sorted(new, key=lambda h: new[h][0][1]):
            self.held.committed({handle: new[handle]}, set())

    def unwritten_postings(self, handle: str, below: int | None = None) -> list[PostingRow]:
        """``handle``'s postings not in the postings table yet: those held, and those the
        batch being committed leaves waiting. Inside that batch's transaction (an
        ``OpRequest``) all of the latter are its own; outside it, pass ``below``, the log size
        the reader sees: the waiting ones under it are committed (a big batch's COMMIT runs
        in a thread, and may land before the writer resumes to hold them). Read them in the
        same step of the event loop as the table (``storage.PointReader``), so that a write
        cannot fall between the two reads."""
        rows = list(self.held.by_handle.get(handle, ()))
        rows += [p for p in self.pending.get(handle, ()) if below is None or p[1] < below]
        return rows

    async def flush(self) -> None:
        """Write every held posting to the table now (a clean stop does, so that the table
        is whole on disk); return after COMMIT."""
        request = SqlRequest(lambda conn: None, write_all_postings=True)
        self.submit_nowait(request)
        await request.future

    def submit_nowait(self, request: Request) -> None:
        size = _size(request)
        if self.queued + size > self.max_queue:
            raise Overloaded()
        self.queued += size
        self.queue.put_nowait(request)

    def submit_all(self, requests: list[Request]) -> None:
        """Queue every request or none: a batch is refused whole when the queue lacks room."""
        if self.queued + sum(_size(r) for r in requests) > self.max_queue:
            raise Overloaded()
        for request in requests:
            self.submit_nowait(request)

    async def submit(self, signed: Signed, sigcheck: SigCheck, memo: Memo | None = None) -> Outcome:
        request = EventRequest(signed, sigcheck, memo)
        self.submit_nowait(request)
        return await request.future

    async def submit_batch(
        self, events: Sequence[tuple[Signed, SigCheck, Memo | None]]
    ) -> list[Outcome]:
        """Apply ``events`` in order, in one transaction; every outcome, after COMMIT.
        Raises ``Overloaded`` (nothing queued) when the queue lacks room for all of them."""
        request = EventBatch(events)
        self.submit_nowait(request)
        return await request.future

    async def write(self, run: Callable[[aiosqlite.Connection], Awaitable[None]]) -> None:
        """Run ``run(db)`` inside the next batch's transaction; return after COMMIT."""
        request = OpRequest(run)
        self.submit_nowait(request)
        await request.future

    async def write_sql(self, run: Callable[[sqlite3.Connection], None]) -> None:
        """Run ``run(conn)`` inside the next batch's transaction (see ``SqlRequest``);
        return after COMMIT."""
        request = SqlRequest(run)
        self.submit_nowait(request)
        await request.future

    async def set_meta(self, key: str, value: str) -> None:
        """Store ``value`` under ``key`` in the ``meta`` table (replacing it); after COMMIT."""

        def run(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

        await self.write_sql(run)

    async def remember_nonce(self, nonce: str, expires: int) -> bool:
        """Record a signed request's nonce durably; False if it was seen before (a replay)."""
        request = NonceRequest(nonce, expires)
        self.submit_nowait(request)
        return await request.future

    def claim_nonce(self, nonce: str, expires: int) -> asyncio.Future[bool] | None:
        """Claim a signed request's nonce at once and queue it to be stored: None if it was
        seen or claimed before (a replay), else a future done once it is committed. What
        the request writes next is queued after it, so it commits with the nonce or later:
        the request need not wait for a commit of its own before doing its work, but must
        not be answered before the future is done."""
        if nonce in self.nonces:
            return None
        request = NonceRequest(nonce, expires, claimed=True)
        self.submit_nowait(request)
        self.nonces[nonce] = expires
        return request.future

    async def run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            size = _size(batch[0])
            # Up to max_batch events; a batch request is never split, so the last one taken
            # may carry the transaction past max_batch by at most its own size.
            while size < self.max_batch and not self.queue.empty():
                request = self.queue.get_nowait()
                batch.append(request)
                size += _size(request)
            self.queued -= size
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
        await self._load_held()

    async def _commit(self, batch: list[Request]) -> list[Outcome | bool | list[Outcome]]:
        state = self.state
        now = max(self.clock_ms(), self.last_time)
        ids_set: set[str] = set()
        for r in batch:
            if isinstance(r, EventRequest):
                if not isinstance(r.signed.msg, Genesis):
                    ids_set.add(seen_key(r.signed))
            elif isinstance(r, EventBatch):
                ids_set.update(seen_key(s) for s, _, _ in r.events
                               if not isinstance(s.msg, Genesis))
        state.seen.clear()
        if ids_set:
            for row in on_loop(self.db, _select_seen, list(ids_set)):
                state.seen[row[0]] = Seen(bytes(row[1]), int(row[2]))

        results: list[Outcome | bool | list[Outcome]] = []
        entries: list[tuple[int, bytes]] = []
        event_rows: list[tuple[str, bytes, int]] = []
        postings: list[PostingRow] = []
        held: dict[str, list[PostingRow]] = {}  # this batch's transfers' postings, by account
        memos: list[tuple[int, bytes, str]] = []
        dirty: set[str] = set()
        new_nonces: list[tuple[str, int]] = []
        ops: list[OpRequest] = []
        sql_ops: list[SqlRequest] = []
        stewards_changed = False
        lines_changed: set[str] = set()
        holds_changed: set[str] = set()
        policy = self.policy
        ok = ResultCode.ok
        for request in batch:
            if isinstance(request, OpRequest):
                ops.append(request)
                results.append(True)
                continue
            if isinstance(request, SqlRequest):
                sql_ops.append(request)
                results.append(True)
                continue
            if isinstance(request, NonceRequest):
                fresh = request.claimed or request.nonce not in self.nonces
                if fresh:
                    self.nonces[request.nonce] = request.expires
                    new_nonces.append((request.nonce, request.expires))
                results.append(fresh)
                continue
            if isinstance(request, EventRequest):
                events: Sequence[tuple[Signed, SigCheck, Memo | None]] = (
                    (request.signed, request.sigcheck, request.memo),
                )
            else:
                events = request.events
            outcomes: list[Outcome] = []
            for signed, sigcheck, memo in events:
                outcome = apply(state, signed, now, policy, sigcheck)
                outcomes.append(outcome)
                if outcome.code is not ok:
                    continue
                assert outcome.index is not None
                index = outcome.index
                msg = signed.msg
                entries.append((index, encode_entry(now, signed)))
                event_rows.append((outcome.key, state.seen[outcome.key].digest, index))
                dirty.update(outcome.touched)
                event_id = getattr(msg, "id", "")
                for handle, amount, counterparty in outcome.postings:
                    row = (handle, index, amount, counterparty, event_id, now)
                    if isinstance(msg, Transfer):
                        held.setdefault(handle, []).append(row)
                    else:
                        postings.append(row)
                if memo is not None:  # a transfer's, or a payment order's by its PREPARE
                    memos.append((index, memo.salt, memo.text))
                if isinstance(msg, SetStewards):
                    stewards_changed = True
                elif msg.type == "line":
                    lines_changed.add(event_id)
                elif msg.type in ("prepare", "fulfil", "reject", "decision"):
                    holds_changed.update(k for k in (f"{event_id}/out", f"{event_id}/in")
                                         if k in state.holds)
            results.append(outcomes[0] if isinstance(request, EventRequest) else outcomes)

        if not entries and not new_nonces and not ops and not sql_ops:
            return results

        db = self.db
        statements: list[tuple[str, Any]] = []
        # Transfers' postings: those of the accounts due go now, the others wait.
        everything = any(isinstance(r, SqlRequest) and r.write_all_postings for r in batch)
        written = self.held.due(held, state.size, everything)
        for handle in written:
            postings += self.held.by_handle.get(handle, [])
            postings += held.get(handle, [])
        waiting = {h: rows for h, rows in held.items() if h not in written}
        upto = self.held.upto(waiting, state.size) if not everything else state.size
        if upto != self.postings_upto:
            statements.append((
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('postings_upto', ?)",
                (str(upto),),
            ))
        if entries:
            statements.append(("INSERT INTO log (idx, entry) VALUES (?, ?)", entries))
            recorder = _Recorder()
            self.tree.db = recorder  # type: ignore[assignment]
            try:
                await self.tree.append([e for _, e in entries], entries[0][0])
            finally:
                self.tree.db = db
            statements += recorder.statements
            # Events and postings go in key order (by id; by handle, then index): SQLite then
            # inserts into neighbouring B-tree pages one after the other, not all over its
            # indexes (less CPU per row). The rows and the transaction are the same.
            event_rows.sort()
            statements.append(
                ("INSERT INTO events (id, digest, idx) VALUES (?, ?, ?)", event_rows)
            )
            if memos:
                statements.append(("INSERT INTO memos (idx, salt, memo) VALUES (?, ?, ?)", memos))
            if dirty:
                statements.append((
                    f"INSERT OR REPLACE INTO accounts ({storage.ACCOUNT_COLUMNS}) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [storage.account_row(state.accounts[h]) for h in sorted(dirty)],
                ))
            if lines_changed:
                statements.append((
                    "INSERT OR REPLACE INTO lines (id, signed) VALUES (?, ?)",
                    [(i, json.dumps(state.lines[i].to_json())) for i in sorted(lines_changed)],
                ))
            if holds_changed:
                statements.append((
                    "INSERT OR REPLACE INTO holds (key, doc, state) VALUES (?, ?, ?)",
                    [(k, json.dumps(state.holds[k].to_json()), state.holds[k].state)
                     for k in sorted(holds_changed)],
                ))
            if stewards_changed:
                doc = {
                    "keys": sorted(k.text for k in state.stewards),
                    "threshold": state.threshold,
                }
                statements.append((
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('stewards', ?)",
                    (json.dumps(doc),),
                ))
        if postings:
            postings.sort()
            statements.append((
                "INSERT INTO postings (handle, idx, amount, counterparty, event_id, "
                "node_time) VALUES (?, ?, ?, ?, ?, ?)",
                postings,
            ))
        prune = False
        if new_nonces:
            statements.append(
                ("INSERT OR IGNORE INTO nonces (nonce, expires) VALUES (?, ?)", new_nonces)
            )
            if self.commits % 256 == 0:
                prune = True
                statements.append(("DELETE FROM nonces WHERE expires < ?", (now // 1000,)))
        try:
            # BEGIN, every statement, the SQL ops and COMMIT, on this thread; unless ops must
            # run first or the transaction is big.
            big = len(entries) >= BIG_COMMIT
            self.pending = waiting
            on_loop(db, _write, statements, sql_ops, not ops and not big)
            for op in ops:
                await op.run(db)
            if big:
                await db.execute("COMMIT")  # in aiosqlite's thread: see BIG_COMMIT
            elif ops:
                on_loop(db, _commit_only)
        except BaseException:
            self.pending = {}
            for nonce, _ in new_nonces:
                self.nonces.pop(nonce, None)
            raise
        if prune:
            cutoff = now // 1000
            self.nonces = {n: e for n, e in self.nonces.items() if e >= cutoff}
        self.last_time = now
        self.commits += 1
        self.tree.committed()
        self.held.committed(waiting, written)
        self.pending = {}
        self.postings_upto = upto
        return results
