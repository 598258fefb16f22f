"""The single writer: applies queued requests in batches, one transaction each, then answers.

Layer: node. Owns every write to the ledger database after initialisation.

Theory of operation
-------------------
Handlers parse a request and check its signatures (in workers, ``Node.verify``), then
``submit`` it (or ``submit_batch`` a whole batch request, with one future for all its
events) and await the outcome. The writer task takes whatever is queued — up to
``max_group_commit`` events, never splitting a batch request — and, in one
``BEGIN IMMEDIATE … COMMIT``:

1. reads which of the batch's event ids were applied before (ids are unique forever);
2. runs the pure ledger rules (``protocol.ledger.apply``) on each request in order;
3. appends each accepted event to the log, its Merkle hashes, the derived tables (accounts,
   postings, memos, event ids) and any signed-request nonces.

Steps 1 and 3 each run as one function in a connection's own thread (one hop each, not one
per statement); step 3 includes the COMMIT unless an ``OpRequest`` must run in between.
Only after COMMIT returns are the requests answered, so an acknowledged event is durable,
and a refused one wrote nothing.

Pipelining: while one batch's step 3 runs in the database thread (its COMMIT waits for the
disk), the writer already does steps 1 and 2 of the next batch on the in-memory state, which
includes the batch being written. Step 1 then reads through a second, read-only connection
(it sees committed rows) plus the ids of the batches still being written. The writes run in
order in the one database thread, so batch k+1 commits after batch k, and it is answered
only after its own COMMIT. If a write fails, every write queued behind it refuses too (they
were applied on top of it), the in-memory state is reloaded from the database, and every
request of those batches gets ``internal_error`` (nothing applied). A batch with an
``OpRequest`` waits until no write is in flight and runs alone.
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
from node.tree import TreeAppender
from protocol.codes import ResultCode
from protocol.ledger import LedgerState, Outcome, Policy, Seen, SigCheck, apply, seen_key
from protocol.messages import Genesis, SetStewards, Signed, Transfer, encode_entry

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
    future: asyncio.Future[bool] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass
class OpRequest:
    """A write beside the ledger rules (a checkpoint, a memo erasure), run in the batch's
    transaction so that the writer stays the only one writing."""

    run: Callable[[aiosqlite.Connection], Awaitable[None]]
    future: asyncio.Future[bool] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


Request = EventRequest | EventBatch | NonceRequest | OpRequest

T = TypeVar("T")


class Overloaded(Exception):
    """The writer's queue is full; the client should retry after a short wait."""


def _size(request: Request) -> int:
    return len(request.events) if isinstance(request, EventBatch) else 1


async def in_db_thread(db: aiosqlite.Connection, fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(conn, *args)`` in ``db``'s own thread, with its ``sqlite3.Connection``: one
    hop for many statements. In order with every other call on ``db`` (aiosqlite runs them
    one at a time from one queue). Uses aiosqlite's ``_execute``, its way to run any
    function in that thread."""
    return await db._execute(lambda: fn(db._conn, *args))  # type: ignore[no-any-return]


class _Recorder:
    """Stands in for the connection while ``TreeAppender.append`` computes its rows, so they
    are written with the rest of the batch, in the one hop."""

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


def _insert_rows(conn: sqlite3.Connection, sql: str, rows: list[Sequence[Any]]) -> None:
    """``conn.executemany(sql, rows)`` for ``sql`` of the form ``INSERT … VALUES (?, …)``,
    as multi-row INSERTs: the same rows in the same order, but one SQLite step (one release
    and re-acquisition of the GIL) per statement instead of per row. Row by row, a thread
    that must win the GIL back thousands of times per commit is starved by the event loop
    (each wait up to the interpreter's switch interval)."""
    head, _, group = sql.rpartition(" VALUES ")
    start = 0
    for size in _CHUNKS:
        if len(rows) - start < size:
            continue
        text = f"{head} VALUES {','.join([group] * size)}"
        while len(rows) - start >= size:
            conn.execute(text, [v for row in rows[start : start + size] for v in row])
            start += size


class _Gate:
    """Closed, in the database thread, when a write fails: every write queued behind it then
    refuses (its batch was applied on top of the failed one) until the writer reloads."""

    failed = False


def _write(
    conn: sqlite3.Connection, statements: list[tuple[str, Any]], commit: bool, gate: _Gate
) -> None:
    """BEGIN IMMEDIATE, every statement (for a list of rows, an INSERT of all of them; else
    ``execute``), then COMMIT if ``commit``. On failure the writer rolls back (``_reset``)."""
    if gate.failed:
        raise RuntimeError("not written: an earlier batch failed")
    try:
        conn.execute("BEGIN IMMEDIATE")
        for sql, rows in statements:
            if isinstance(rows, list):
                _insert_rows(conn, sql, rows)
            else:
                conn.execute(sql, rows)
        if commit:
            conn.execute("COMMIT")
    except BaseException:
        gate.failed = True
        raise


def _commit_only(conn: sqlite3.Connection, gate: _Gate) -> None:
    try:
        conn.execute("COMMIT")
    except BaseException:
        gate.failed = True
        raise


def _reset(conn: sqlite3.Connection, gate: _Gate) -> None:
    """After a failure: roll back whatever is open, and let writes through again."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")
    gate.failed = False


@dataclass
class _InFlight:
    """A batch applied in memory whose write (step 3) may still be running."""

    batch: list[Request]
    results: list[Any]
    write: asyncio.Future[None] | None  # None: nothing to write
    size: int  # the log's size once this batch is committed
    seen: dict[str, Seen]  # the ids it applied, for later batches' step 1 meanwhile
    new_nonces: list[tuple[str, int]]


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
        read_db: aiosqlite.Connection | None = None,
    ) -> None:
        self.db = db
        # Step 1 reads here while a write is in flight (None: through ``db``, after it).
        self.read_db = read_db
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
        self._gate = _Gate()
        self._inflight: deque[_InFlight] = deque()
        self._inflight_seen: dict[str, Seen] = {}
        self._arrived = asyncio.Event()  # set by each submit: wakes a writer waiting on a write

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
        size = _size(request)
        if self.queued + size > self.max_queue:
            raise Overloaded()
        self.queued += size
        self.queue.put_nowait(request)
        self._arrived.set()

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

    async def remember_nonce(self, nonce: str, expires: int) -> bool:
        """Record a signed request's nonce durably; False if it was seen before (a replay)."""
        request = NonceRequest(nonce, expires)
        self.submit_nowait(request)
        return await request.future

    DEPTH = 2  # batches applied in memory whose writes are not yet answered

    async def _take(self) -> list[Request]:
        batch = [await self.queue.get()]
        size = _size(batch[0])
        # Up to max_batch events; a batch request is never split, so the last one taken
        # may carry the transaction past max_batch by at most its own size.
        while size < self.max_batch and not self.queue.empty():
            request = self.queue.get_nowait()
            batch.append(request)
            size += _size(request)
        self.queued -= size
        return batch

    async def run(self) -> None:
        batch: list[Request] = []
        try:
            while True:
                batch = []
                if self._inflight:
                    write = self._inflight[0].write
                    if write is None or write.done() or len(self._inflight) >= self.DEPTH:
                        await self._finish_oldest()
                        continue
                    if self.queue.empty():
                        # Whichever comes first: the oldest write ends, or new work arrives.
                        self._arrived.clear()
                        arrived = asyncio.ensure_future(self._arrived.wait())
                        try:
                            await asyncio.wait({write, arrived},
                                               return_when=asyncio.FIRST_COMPLETED)
                        finally:
                            arrived.cancel()
                        continue
                batch = await self._take()
                if any(isinstance(r, OpRequest) for r in batch):
                    while self._inflight:  # ops run inside the transaction: alone
                        await self._finish_oldest()
                try:
                    await self._commit(batch)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("writer: a batch of %d failed; nothing applied", len(batch))
                    # Its effects on the in-memory state are undone by reloading; batches
                    # before it are still written (and answered) first.
                    while self._inflight:
                        await self._finish_oldest()
                    await self._reload()
                    _fail(batch)
        except asyncio.CancelledError:
            for request in batch:
                if not request.future.done():
                    request.future.cancel()
            for entry in self._inflight:
                for request in entry.batch:
                    if not request.future.done():
                        request.future.cancel()
            raise

    async def _finish_oldest(self) -> None:
        """Wait for the oldest batch's write; answer it, or on failure fail every batch in
        flight and reload."""
        entry = self._inflight[0]
        try:
            if entry.write is not None:
                await entry.write
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("writer: a batch of %d failed; nothing applied", len(entry.batch))
            failed = list(self._inflight)
            self._inflight.clear()
            self._inflight_seen.clear()
            for other in failed[1:]:
                if other.write is not None:
                    try:
                        await other.write  # refused by the gate, or cancelled
                    except (Exception, asyncio.CancelledError):
                        pass
            for other in failed:
                for nonce, _ in other.new_nonces:
                    self.nonces.pop(nonce, None)
            await self._reload()
            for other in failed:
                _fail(other.batch)
            return
        self._inflight.popleft()
        for key, seen in entry.seen.items():
            if self._inflight_seen.get(key) is seen:
                del self._inflight_seen[key]
        for request, result in zip(entry.batch, entry.results):
            if not request.future.done():
                request.future.set_result(result)
        if self.on_commit is not None:
            self.on_commit(entry.size)

    async def _reload(self) -> None:
        await in_db_thread(self.db, _reset, self._gate)
        fresh = await storage.load_state(self.db)
        self.state.__dict__.update(fresh.__dict__)
        await self.tree.load(self.state.size)

    async def _commit(self, batch: list[Request]) -> None:
        """Steps 1 and 2 for ``batch``, then start its write (step 3) and queue it in
        ``_inflight``; ``_finish_oldest`` answers it once written."""
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
            ids = list(ids_set)
            reader = self.read_db if self.read_db is not None else self.db
            for row in await in_db_thread(reader, _select_seen, ids):
                state.seen[row[0]] = Seen(bytes(row[1]), int(row[2]))
            if self._inflight_seen:  # applied by batches still being written
                for key in ids:
                    seen = self._inflight_seen.get(key)
                    if seen is not None:
                        state.seen[key] = seen

        results: list[Outcome | bool | list[Outcome]] = []
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
        policy = self.policy
        ok = ResultCode.ok
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
                    postings.append((handle, index, amount, counterparty, event_id, now))
                if isinstance(msg, Transfer):
                    if memo is not None:
                        memos.append((index, memo.salt, memo.text))
                elif isinstance(msg, SetStewards):
                    stewards_changed = True
                elif msg.type == "line":
                    lines_changed.add(event_id)
                elif msg.type in ("prepare", "fulfil", "reject", "decision"):
                    holds_changed.update(k for k in (f"{event_id}/out", f"{event_id}/in")
                                         if k in state.holds)
            results.append(outcomes[0] if isinstance(request, EventRequest) else outcomes)

        applied = {key: state.seen[key] for key, _, _ in event_rows}
        if not entries and not new_nonces and not ops:
            # Nothing to write; answered in order, after the batches before it are written.
            self._inflight.append(_InFlight(batch, results, None, state.size, {}, []))
            return

        db = self.db
        statements: list[tuple[str, Any]] = []
        if entries:
            statements.append(("INSERT INTO log (idx, entry) VALUES (?, ?)", entries))
            recorder = _Recorder()
            self.tree.db = recorder  # type: ignore[assignment]
            try:
                await self.tree.append([e for _, e in entries], entries[0][0])
            finally:
                self.tree.db = db
            # The tree, like the ledger state, now includes this batch: the next batch
            # appends after it. A failed write reloads both from the database.
            self.tree.committed()
            statements += recorder.statements
            # Events and postings go in key order (by id; by handle, then index): SQLite then
            # inserts into neighbouring B-tree pages one after the other, not all over its
            # indexes (less CPU per row). The rows and the transaction are the same.
            event_rows.sort()
            statements.append(
                ("INSERT INTO events (id, digest, idx) VALUES (?, ?, ?)", event_rows)
            )
            if postings:
                postings.sort()
                statements.append((
                    "INSERT INTO postings (handle, idx, amount, counterparty, event_id, "
                    "node_time) VALUES (?, ?, ?, ?, ?, ?)",
                    postings,
                ))
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
        prune = False
        if new_nonces:
            statements.append(
                ("INSERT OR IGNORE INTO nonces (nonce, expires) VALUES (?, ?)", new_nonces)
            )
            if self.commits % 256 == 0:
                prune = True
                statements.append(("DELETE FROM nonces WHERE expires < ?", (now // 1000,)))
        self.last_time = now
        self.commits += 1
        if prune:
            cutoff = now // 1000
            self.nonces = {n: e for n, e in self.nonces.items() if e >= cutoff}
        # One hop: BEGIN, every statement and (unless ops must run first) COMMIT.
        write = asyncio.ensure_future(in_db_thread(db, _write, statements, not ops, self._gate))
        if ops:  # alone (run() waited for every write in flight): the ops, then COMMIT
            try:
                await write
                for op in ops:
                    await op.run(db)
                await in_db_thread(db, _commit_only, self._gate)
            except BaseException:
                for nonce, _ in new_nonces:
                    self.nonces.pop(nonce, None)
                raise
        self._inflight_seen.update(applied)
        self._inflight.append(_InFlight(batch, results, write, state.size, applied, new_nonces))


def _fail(batch: list[Request]) -> None:
    for request in batch:
        if not request.future.done():
            request.future.set_exception(RuntimeError("storage failure"))
