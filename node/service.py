"""A collective's node: its data directory, keys, database, writer and the ledger they keep.

Layer: node. ``init_data_dir`` makes a new collective (keys and the signed genesis entry);
``Node`` opens one and runs its background tasks. The HTTP routes (``node.api``) and the
CLI (``node.cli``) are thin layers over this.

Data directory::

    config.toml     optional settings (see config.example.toml)
    node.key        the node's Ed25519 key (mode 0600): signs checkpoints and peer messages
    steward.key     the first steward's key, made for the operator (mode 0600)
    tally.sqlite    the ledger (WAL mode: also tally.sqlite-wal and -shm)
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import aiosqlite

from crypto.canonical import parse_json
from crypto.keys import SecretKey, read_key_file, write_key_file
from node import storage
from node.checkpoints import Checkpointer, check_not_forked, log_signer
from node.config import Config, load_config
from node.intake import Read, TransferItem, parse_transfer_item, read_transfers, rebuild
from node.sigworker import (
    BATCH,
    HEADER,
    READY,
    SIGNATURES,
    TRANSFER,
    Job,
    Part,
    encode_frame,
    encode_signatures,
    open_signed,
    split_answers,
)
from node.tasks import stop_tasks
from node.writer import Writer

if TYPE_CHECKING:
    from node.federation import Federation
    from node.gossip import Gossip
    from node.witness import Witnessing
from protocol.ledger import LedgerState, Policy, SigCheck
from protocol.messages import Genesis, LogEntry, MessageError, Signed, Unit, sign_message

log = logging.getLogger(__name__)

NODE_KEY = "node.key"
STEWARD_KEY = "steward.key"
# How long a clean stop waits for the writer to write the postings it holds.
FLUSH_AT_STOP_SECONDS = 10.0


class InitError(RuntimeError):
    """The data directory cannot be initialised as asked; the message says why."""


@dataclass(frozen=True)
class InitResult:
    data_dir: Path
    ledger_id: str
    node_key_path: Path
    steward_key_path: Path
    name: str
    unit: Unit


def is_initialised(data_dir: Path) -> bool:
    return (data_dir / storage.DB_FILE).exists() and (data_dir / NODE_KEY).exists()


async def init_data_dir(
    data_dir: Path,
    *,
    name: str = "Tally collective",
    unit: Unit = Unit("HOUR", "hours", 60),
    now_ms: int | None = None,
) -> InitResult:
    """Create keys and a ledger whose genesis names the operator's key as the first steward."""
    if is_initialised(data_dir):
        raise InitError(f"{data_dir} already holds a Tally node; use `tally node run --data`")
    for leftover in (NODE_KEY, STEWARD_KEY, storage.DB_FILE):
        if (data_dir / leftover).exists():
            raise InitError(
                f"{data_dir / leftover} exists but the node is not complete; "
                "move the directory away or choose another --data"
            )
    node_key = SecretKey.from_random(os.urandom(32))
    steward_key = SecretKey.from_random(os.urandom(32))
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(data_dir, 0o700)
        write_key_file(data_dir / NODE_KEY, "tally-node", node_key)
        write_key_file(data_dir / STEWARD_KEY, "tally-steward", steward_key)
    except OSError as exc:
        raise InitError(
            f"cannot write the node's keys in {data_dir} ({exc.strerror}); "
            "choose a directory you can write (--data)"
        ) from exc
    created = now_ms if now_ms is not None else int(time.time() * 1000)
    genesis = Genesis(
        name=name,
        unit=unit,
        node_key=node_key.public,
        stewards=(steward_key.public,),
        threshold=1,
        created=created,
    )
    entry = LogEntry(created, sign_message(genesis, node_key, steward_key))
    try:
        db = await storage.open_db(data_dir / storage.DB_FILE)
    except storage.StorageError as exc:
        raise InitError(str(exc)) from exc
    try:
        await storage.write_genesis(db, entry)
        ledger_id = await storage.get_meta(db, "ledger_id")
    finally:
        await db.close()
    assert ledger_id is not None
    return InitResult(
        data_dir, ledger_id, data_dir / NODE_KEY, data_dir / STEWARD_KEY, name, unit
    )


# --- signature checks off the event loop ----------------------------------------------------

def _jobs(items: list[Signed]) -> list[Job]:
    """One job per signature, in order."""
    return [(sig.sig, sig.key.raw, signed.signed_bytes) for signed in items for sig in signed.sigs]


def _sigchecks(items: list[Signed], good: list[bool]) -> list[SigCheck]:
    """``Signed.verified_signers()`` of each item, from the jobs' answers."""
    out: list[SigCheck] = []
    # One answer per signer for single signatures: a batch's keys repeat (``_key`` interns
    # them, so ``id`` tells them apart without hashing a dataclass per item).
    signers: dict[int, SigCheck] = {}
    bad: SigCheck = (frozenset(), False)
    n = 0
    for signed in items:
        sigs = signed.sigs
        if len(sigs) == 1:
            ok = good[n]
            n += 1
            if not ok:
                out.append(bad)
                continue
            key = sigs[0].key
            check = signers.get(id(key))
            if check is None:  # (every key stays alive in ``items``: ids do not repeat)
                check = signers[id(key)] = (frozenset((key,)), True)
            out.append(check)
            continue
        keys = {s.key for s, ok in zip(sigs, good[n : n + len(sigs)]) if ok}
        n += len(sigs)
        out.append((frozenset(keys), len(keys) == len({s.key for s in sigs})))
    return out


def verdicts(answer: bytes, n: int) -> list[bool]:
    """The ``n`` verdicts of a signatures part's answer (a byte each, 1 where it verifies)."""
    if len(answer) != n:
        raise RuntimeError("a signature worker answered the wrong number of verdicts")
    return [b == 1 for b in answer]


class _Worker:
    """One running worker process, and the answers it owes, in the order of its jobs."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.waiting: collections.deque[asyncio.Future[bytes]] = collections.deque()
        self.reader: asyncio.Task[None] | None = None  # reads its answers; ends when it does
        self.started = asyncio.get_running_loop().time()
        self.ready = False  # it has imported what it needs and said so (``sigworker.READY``)
        self.since = 0.0  # loop time since which its oldest owed answer has been awaited

    @property
    def alive(self) -> bool:
        stdin = self.proc.stdin
        return (self.proc.returncode is None and stdin is not None and not stdin.is_closing()
                and self.reader is not None and not self.reader.done())


class SigWorkers:
    """Worker processes (``python -m node.sigworker``) that check signatures, each fed jobs
    over its standard input and answering on its standard output, in order. The event loop
    writes the jobs and reads the answers itself, like any socket: no thread of the node
    takes part, so no thread waits on the GIL (see ``node.sigworker``). Started on first
    use; a worker that dies fails the jobs it held (those requests get ``internal_error``,
    nothing is applied) and is replaced on the next job. So does a worker that is alive but
    stuck (stopped, or hung in a library): one that owes answers and has given none for
    ``STALL_SECONDS`` (counted from when it is ready) is killed, and every request behind it
    is answered instead of waiting for ever; so is one not ready ``STARTUP_SECONDS`` after
    it was started."""

    # The largest frame is one batch body, ~1,000 transfers: a fraction of a second of one
    # core's work (docs/benchmarks.md). 30 s without an answer is a worker that will not
    # answer. Starting Python and importing on a busy machine can take far longer.
    STALL_SECONDS = 30.0
    STARTUP_SECONDS = 120.0
    END_SECONDS = 2.0  # for a worker whose output ended to exit by itself

    def __init__(self, count: int) -> None:
        self.count = count
        self.workers: list[_Worker | None] = [None] * count
        self.load = [0] * count  # signatures sent to each slot's worker, not yet answered
        self.starting: list[asyncio.Future[None] | None] = [None] * count
        self.closing = False
        self.watchdog: asyncio.Task[None] | None = None
        self.killed: set[_Worker] = set()  # taken out of ``workers`` by the watchdog

    async def _worker(self, i: int) -> _Worker:
        worker = self.workers[i]
        if worker is not None and worker.alive:
            return worker
        starting = self.starting[i]
        if starting is not None:  # another job is starting this slot's worker
            await starting
            return await self._worker(i)  # (it may have died already: then start another)
        starting = self.starting[i] = asyncio.get_running_loop().create_future()
        try:
            env = dict(os.environ)
            root = str(Path(__file__).resolve().parent.parent)  # where ``node`` lives
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "node.sigworker", env=env,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
            if self.closing:  # close() ran meanwhile: it must not leave this one behind
                proc.kill()
                await proc.wait()
                raise RuntimeError("the node is stopping")
            # A new worker, with its own queue of owed answers: a reader still draining a
            # dead worker's queue can never take the new one's.
            worker = self.workers[i] = _Worker(proc)
            worker.reader = asyncio.create_task(self._read(i, worker))
            if self.watchdog is None or self.watchdog.done():
                self.watchdog = asyncio.create_task(self._watch())
            starting.set_result(None)
            return worker
        except BaseException as exc:
            # The jobs waiting for this start fail with it; but a starter that was cancelled
            # (its client hung up) fails them with an error, not a cancellation of their own.
            starting.set_exception(RuntimeError("starting a signature worker was cancelled")
                                   if isinstance(exc, asyncio.CancelledError) else exc)
            starting.exception()  # retrieved: others awaiting it get it raised
            raise
        finally:
            self.starting[i] = None

    async def _read(self, i: int, worker: _Worker) -> None:
        stdout = worker.proc.stdout
        assert stdout is not None
        loop = asyncio.get_running_loop()
        try:
            if await stdout.readexactly(len(READY)) != READY:
                raise ConnectionError("a signature worker did not start as expected")
            worker.ready = True
            worker.since = loop.time()  # what it owes was sent before it could start on it
            while True:
                header = await stdout.readexactly(4)
                answer = await stdout.readexactly(int.from_bytes(header, "big"))
                future = worker.waiting.popleft()
                worker.since = loop.time()
                if not future.done():
                    future.set_result(answer)
        except (asyncio.IncompleteReadError, ConnectionError, IndexError) as exc:
            if not self.closing:
                log.warning("a signature worker stopped (%s); starting another on the next "
                            "job", exc.__class__.__name__)
        finally:
            while worker.waiting:
                future = worker.waiting.popleft()
                if not future.done():
                    future.set_exception(RuntimeError("a signature worker stopped"))
            if self.workers[i] is worker:
                # Gone from here on, even before its exit status is known: the next job
                # starts another worker instead of writing to this one's pipe. (Its jobs'
                # weight leaves ``load`` as each of them fails.)
                self.workers[i] = None
            await self._end(worker)
            self.killed.discard(worker)

    async def _end(self, worker: _Worker) -> None:
        """A worker whose output ended has almost always exited: wait for asyncio's child
        watcher to say so. Killing it at once would make ``Popen.poll`` reap it before the
        watcher does, and asyncio would then log "Unknown child process" and report 255
        for a worker that exited cleanly. One still running after ``END_SECONDS`` (it
        closed its output, or answered nonsense) is killed."""
        if worker.proc.returncode is not None:
            return
        try:
            await asyncio.wait_for(worker.proc.wait(), self.END_SECONDS)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                worker.proc.kill()

    async def _watch(self) -> None:
        """Kill a worker that owes answers and has given none for ``STALL_SECONDS`` (or is
        not ready ``STARTUP_SECONDS`` after it started): its reader then fails the jobs it
        held, as a dead worker's, and the next job starts another at once."""
        loop = asyncio.get_running_loop()
        every = self.STALL_SECONDS / 4
        last = loop.time()
        while not self.closing:
            await asyncio.sleep(every)
            now = loop.time()
            if now - last > 2 * every:
                # The event loop itself was held up: answers may be waiting unread in the
                # pipes. No worker is judged on that time.
                for worker in self.workers:
                    if worker is not None:
                        worker.since = max(worker.since, now)
                last = now
                continue
            last = now
            for i, worker in enumerate(self.workers):
                if worker is None or not worker.waiting or worker.proc.returncode is not None:
                    continue
                if worker.ready:
                    what, waited = "gave no answer", now - worker.since
                    bound = self.STALL_SECONDS
                else:
                    what, waited = "did not start", now - worker.started
                    bound = self.STARTUP_SECONDS
                if waited <= bound:
                    continue
                log.warning(
                    "a signature worker (pid %d) %s for %.0f s with %d jobs waiting; killing "
                    "it (those requests fail, the next job starts another)",
                    worker.proc.pid, what, waited, len(worker.waiting))
                self.workers[i] = None  # no job is given to it from now on
                self.killed.add(worker)  # until its reader has seen it end
                with contextlib.suppress(ProcessLookupError):  # it died meanwhile
                    worker.proc.kill()

    async def run(self, parts: list[Part], weight: int) -> list[bytes]:
        """Each part's answer, in order, from the least-loaded worker. ``weight`` is the
        work the parts carry (in signatures), for choosing that worker."""
        if self.closing:
            raise RuntimeError("the node is stopping")
        # Built before anything is queued: a job whose frame cannot be built (it raises here)
        # leaves no answer expected, so no later job can be given another's answers.
        frame = encode_frame(parts)
        i = min(range(self.count), key=self.load.__getitem__)
        self.load[i] += weight + 1  # counted before any await: the next job goes elsewhere
        try:
            worker = await self._worker(i)
            stdin = worker.proc.stdin
            assert stdin is not None
            loop = asyncio.get_running_loop()
            future: asyncio.Future[bytes] = loop.create_future()
            if not worker.waiting:
                worker.since = loop.time()
            worker.waiting.append(future)
            stdin.write(frame)
            answer = await future
        finally:
            self.load[i] = max(0, self.load[i] - weight - 1)
        answers = split_answers(answer)
        if len(answers) != len(parts):
            raise RuntimeError("a signature worker answered the wrong number of parts")
        return answers

    async def check(self, jobs: list[Job]) -> list[bool]:
        """Each signature's verdict, in order."""
        (answer,) = await self.run([(SIGNATURES, encode_signatures(jobs))], len(jobs))
        return verdicts(answer, len(jobs))

    async def close(self) -> None:
        self.closing = True
        await stop_tasks([self.watchdog])
        for gone in list(self.killed):  # killed: their readers end with them
            await gone.proc.wait()
            if gone.reader is not None:
                await gone.reader
        for i, worker in enumerate(self.workers):
            if worker is None:
                continue
            if worker.proc.stdin is not None:
                worker.proc.stdin.close()  # the worker ends at the end of its input
            try:
                await asyncio.wait_for(worker.proc.wait(), 5)
            except TimeoutError:
                worker.proc.kill()
                await worker.proc.wait()
            if worker.reader is not None:
                await worker.reader
            self.workers[i] = None


class Verifier:
    """Checks signatures, and reads transfer bodies, off the event loop: in worker processes
    (``SigWorkers``).

    Small jobs (a single transfer's body, an act's signatures) wait in a queue that is sent
    whole to a worker, as one frame, when one is free: the requests read in one round of the
    loop share one round trip. A batch body goes to a worker at once, in a frame of its own;
    a call to verify ``SPLIT`` or more signatures is split across every worker.

    ``workers=0`` does it all on the event loop itself (libsodium, ~100 µs a signature): for
    a node that must not start processes.
    """

    SPLIT = 64  # signatures from which one call is split across the workers

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.pool = SigWorkers(workers) if workers else None
        self.pending: list[tuple[Part, int, asyncio.Future[bytes]]] = []
        self.in_flight = 0
        self.scheduled = False

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()

    async def verify(self, items: list[Signed]) -> list[SigCheck]:
        if not items:
            return []
        jobs = _jobs(items)
        pool = self.pool
        if pool is None:
            good = open_signed(jobs)
        elif len(jobs) >= self.SPLIT:
            size = -(-len(jobs) // self.workers)
            parts = await asyncio.gather(*(
                pool.check(jobs[i : i + size]) for i in range(0, len(jobs), size)
            ))
            good = [ok for part in parts for ok in part]
        else:
            answer = await self._queue((SIGNATURES, encode_signatures(jobs)), len(jobs))
            good = verdicts(answer, len(jobs))
        return _sigchecks(items, good)

    async def read_transfers(self, body: bytes, max_batch: int = 0) -> list[Read]:
        """``node.intake.read_transfers`` of ``body`` (``max_batch`` 0: a single transfer's
        body), in a worker; ``node.intake.rebuild`` of its answer."""
        if self.pool is None:
            answer = read_transfers(body, max_batch)
        elif max_batch:
            (answer,) = await self.pool.run([(BATCH, HEADER.pack(max_batch) + body)],
                                            len(body) // 400 + 1)
        else:
            answer = await self._queue((TRANSFER, body), 1)
        return rebuild(answer)

    def _queue(self, part: Part, weight: int) -> asyncio.Future[bytes]:
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.pending.append((part, weight, future))
        if not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return future

    def _flush(self) -> None:
        """Hand everything queued to a free worker as one frame (after the loop's current
        round, so that the requests read in it join)."""
        self.scheduled = False
        if not self.pending or self.in_flight >= self.workers:
            return  # a frame in flight flushes again when it is answered
        waiting, self.pending = self.pending, []
        assert self.pool is not None
        self.in_flight += 1
        done = asyncio.ensure_future(
            self.pool.run([part for part, _, _ in waiting], sum(w for _, w, _ in waiting)))
        done.add_done_callback(lambda f: self._answer(waiting, f))

    def _answer(
        self,
        waiting: list[tuple[Part, int, asyncio.Future[bytes]]],
        done: asyncio.Future[list[bytes]],
    ) -> None:
        self.in_flight -= 1
        if self.pending and not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        exc = done.exception() if not done.cancelled() else asyncio.CancelledError()
        answers = None if exc is not None else done.result()
        for i, (_, _, future) in enumerate(waiting):
            if future.done():
                pass
            elif answers is None:
                future.set_exception(exc)  # type: ignore[arg-type]
            else:
                future.set_result(answers[i])


class Node:
    """One running collective node. ``start`` before use; ``stop`` closes everything."""

    def __init__(
        self,
        data_dir: Path,
        config: Config | None = None,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.data_dir = data_dir
        self.lock = storage.DataDirLock(data_dir)
        self.config = config if config is not None else load_config(data_dir)
        self.clock_ms = clock_ms
        # The writer's connection: once the writer runs, nothing else may use it (the writer
        # runs statements on it from the event loop's thread); read through ``reader``.
        self.db: aiosqlite.Connection | None = None
        self.reader: aiosqlite.Connection | None = None
        self.lookup: storage.PointReader | None = None  # point reads on the loop's thread
        self.writer: Writer | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.verifier = Verifier(self.config.node.signature_workers)
        _, self.node_key = read_key_file(data_dir / NODE_KEY)
        self.state: LedgerState | None = None
        self.checkpointer: Checkpointer | None = None
        self.federation: Federation | None = None
        self.gossip: Gossip | None = None
        self.witnessing: Witnessing | None = None
        # The URL peers reach us at: the configured one, else set by the server once bound.
        self.public_url = self.config.node.public_url

    @property
    def ledger(self) -> LedgerState:
        assert self.state is not None, "node not started"
        return self.state

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            # Close what was opened, so a refused start leaves no thread keeping us alive.
            await self.stop()
            raise

    async def _start(self) -> None:
        path = self.data_dir / storage.DB_FILE
        if not path.exists():
            raise storage.StorageError(f"no ledger at {path}: run `tally node init` first")
        self.lock.acquire()
        self.db = await storage.open_db(path, self.config.storage.synchronous)
        self.state = await storage.load_state(self.db)
        if self.state.genesis.node_key != self.node_key.public:
            raise storage.StorageError(
                f"{self.data_dir / NODE_KEY} is not the key this ledger's genesis names"
            )
        self.reader = await storage.open_reader(path)
        self.lookup = storage.PointReader(path)
        policy = Policy(max_valid_window_ms=self.config.ledger.max_valid_window_seconds * 1000)
        self.writer = Writer(
            self.db,
            self.state,
            policy,
            max_batch=self.config.storage.max_group_commit,
            max_queue=self.config.api.max_queue,
            clock_ms=self.clock_ms,
        )
        await self.writer.start()
        signer = log_signer(self.state.ledger_id, self.node_key)
        latest = await check_not_forked(self.reader, self.data_dir, signer, self.state.size)
        self.checkpointer = Checkpointer(
            self.reader, self.data_dir, signer, self._store_checkpoint,
            self.config.log.checkpoint_delay_ms,
        )
        self.checkpointer.latest = latest
        self.checkpointer.committed_size = self.state.size
        self.writer.on_commit = self.checkpointer.on_commit
        self.tasks.append(asyncio.create_task(self.writer.run(), name="writer"))
        self.tasks.append(asyncio.create_task(self.checkpointer.run(), name="checkpointer"))
        from node.federation import Federation

        self.federation = Federation(self)
        await self.federation.start()
        from node.gossip import Gossip

        self.gossip = Gossip(self)
        # Routes also go over the lines learnt by gossip; evidence of equivocation stops
        # payments with the node that equivocated.
        self.federation.extra_edges = self.gossip.edges
        self.gossip.on_evidence.append(self.federation.on_evidence)
        await self.gossip.start()
        from node.witness import Witnessing

        self.witnessing = Witnessing(self)
        await self.witnessing.start()
        log.info("ledger %s open: %d log entries", self.state.ledger_id[:16], self.state.size)

    async def _store_checkpoint(self, size: int, note: bytes) -> None:
        def insert(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT OR IGNORE INTO checkpoints (size, note) VALUES (?, ?)",
                         (size, note))

        assert self.writer is not None
        await self.writer.write_sql(insert)

    async def stop(self) -> None:
        try:
            if self.witnessing is not None:
                await self.witnessing.stop()
                self.witnessing = None
            if self.gossip is not None:
                await self.gossip.stop()
                self.gossip = None
            if self.federation is not None:
                await self.federation.stop()
                self.federation = None
            await self._flush_held()
            await stop_tasks(self.tasks)
            self.tasks.clear()
            for conn in (self.reader, self.db):
                if conn is not None:
                    await conn.close()
            self.reader = self.db = None
            if self.lookup is not None:
                self.lookup.close()
                self.lookup = None
            await self.verifier.close()
        finally:
            self.lock.release()  # last: nothing of this node touches the directory now

    def history(self, handle: str, before: int | None, limit: int) -> list[storage.Posting]:
        """``handle``'s postings, newest first, strictly before log index ``before`` if
        given: the postings table and the writer's unwritten postings, read in one step of
        the event loop (``storage.history``)."""
        assert self.lookup is not None and self.writer is not None
        [(size,)] = self.lookup.rows("SELECT COALESCE(MAX(idx) + 1, 0) FROM log")
        return storage.history(self.lookup, self.writer.unwritten_postings(handle, size),
                               handle, before, limit)

    async def erase_memos(self, handle: str) -> int:
        """Erase the memos of ``handle``'s transfers, in the writer's next batch; how many
        (the log keeps only their salted hashes, so it verifies as before)."""
        erased = 0

        async def erase(db: aiosqlite.Connection) -> None:
            nonlocal erased
            assert self.writer is not None
            unwritten = [p[1] for p in self.writer.unwritten_postings(handle)]
            # The memos of the member's payments to other collectives sit beside the entries
            # of their PREPAREs (``Federation.pay``), which the holds they made name.
            prepares = [f"prepare/{h.key[:-len('/out')]}/{self.node_key.public.key_id}"
                        for h in self.ledger.holds.values()
                        if h.debit == handle and h.key.endswith("/out")]
            cur = await db.execute(
                "DELETE FROM memos WHERE idx IN (SELECT idx FROM postings WHERE handle = ?) "
                f"OR idx IN ({','.join('?' * len(unwritten))}) "
                f"OR idx IN (SELECT idx FROM events WHERE id IN "
                f"({','.join('?' * len(prepares))}))",
                (handle, *unwritten, *prepares),
            )
            erased = cur.rowcount

        assert self.writer is not None
        await self.writer.write(erase)
        return erased

    async def _flush_held(self) -> None:
        """Write the postings the writer holds (``node.writer.POSTINGS_PER_WRITE``) before
        stopping it, so that a node stopped cleanly leaves its tables whole. Should it fail
        or take too long, nothing is lost: the next start rebuilds them from the log."""
        writer_task = next((t for t in self.tasks if t.get_name() == "writer"), None)
        if self.writer is None or writer_task is None or writer_task.done():
            return
        try:
            await asyncio.wait_for(self.writer.flush(), FLUSH_AT_STOP_SECONDS)
        except Exception as exc:  # noqa: BLE001 - logged; the log still holds every entry
            log.warning("could not write the held postings before stopping (%s); the next "
                        "start rebuilds them from the log", exc or type(exc).__name__)

    async def verify(self, items: list[Signed]) -> list[SigCheck]:
        """Check signatures (``Signed.verified_signers`` of each item) off the event loop:
        see ``Verifier``."""
        return await self.verifier.verify(items)

    async def read_transfers(
        self, body: bytes, max_batch: int = 0
    ) -> list[tuple[TransferItem, SigCheck] | MessageError]:
        """The transfers of a ``POST /v1/transfers`` body (``max_batch`` 0) or of a batch
        body, parsed and their signatures checked off the event loop (``node.intake``): each
        with its check, or the ``MessageError`` refusing it alone. Raises the
        ``CanonicalError`` or ``MessageError`` refusing the whole body."""
        read = await self.verifier.read_transfers(body, max_batch)
        slow = [i for i, r in enumerate(read) if isinstance(r, bytes)]
        if slow:  # several signatures: parsed here, checked like any other signed message
            items = [parse_transfer_item(parse_json(read[i]), f"transfers[{i}]")  # type: ignore[arg-type]
                     for i in slow]
            for i, item, check in zip(slow, items, await self.verify([t.signed for t in items])):
                read[i] = (item, check)
        return read  # type: ignore[return-value]
