"""Storage: the SQLite schema, its migrations, and the reads the API serves.

Layer: node. Owns the database file. Writes happen only in ``node.writer`` (one task, one
transaction per batch); everything here either sets the database up or reads it.

SQLite runs in WAL mode with ``synchronous=FULL`` by default: a transaction that has
committed survives a killed process and a power cut. A refused request writes nothing.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import aiosqlite
from aiosqlite.context import Result

from crypto import merkle
from crypto.keys import PublicKey
from protocol.ledger import Account, Hold, LedgerState, new_state
from protocol.messages import LogEntry, parse_log_entry, parse_signed

DB_FILE = "tally.sqlite"


class StorageError(RuntimeError):
    """The database is missing, damaged, or of a schema this version cannot use."""


LOCK_FILE = "node.lock"


class DataDirLock:
    """Held by the one node running on a data directory, for as long as it runs: a second
    node on the same directory would write the same log, each under its own idea of the
    ledger's state (two batches claiming one log index; books that disagree with the log).

    ``flock`` on ``node.lock``: the kernel drops the lock the moment its process ends, even
    by SIGKILL, so a crash never leaves the directory locked. The file holds the holder's
    pid, for the refusal to name it. The signature workers do not inherit it."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StorageError(f"cannot open {self.path} ({exc.strerror}); a node needs to "
                               "write in its data directory") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip()
            os.close(fd)
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise StorageError(
                f"another Tally node{who} is running on {self.path.parent}; stop it first, "
                "or give this one a data directory of its own (--data)"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self.fd = fd

    def release(self) -> None:
        # The file stays: removing it could let a third node lock a new file while a
        # second one still holds the old one.
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _migrations() -> list[tuple[int, str]]:
    out = []
    for item in resources.files("node.migrations").iterdir():
        name = item.name
        if name.endswith(".sql") and name[:4].isdigit():
            out.append((int(name[:4]), item.read_text()))
    return sorted(out)


class Rows:
    """The rows of a query that has already run to its end, read like an aiosqlite cursor
    (``fetchone``, ``fetchall``, ``async for``, ``async with``)."""

    def __init__(self, rows: list[Any]) -> None:
        self._rows = rows
        self._at = 0

    async def fetchone(self) -> Any:
        if self._at >= len(self._rows):
            return None
        self._at += 1
        return self._rows[self._at - 1]

    async def fetchall(self) -> list[Any]:
        rows = self._rows[self._at :]
        self._at = len(self._rows)
        return rows

    def __aiter__(self) -> Rows:
        return self

    async def __anext__(self) -> Any:
        if self._at >= len(self._rows):
            raise StopAsyncIteration
        self._at += 1
        return self._rows[self._at - 1]

    async def close(self) -> None:
        pass


class ReadConnection(aiosqlite.Connection):
    """The node's shared read-only connection, on which every query runs to its end in one
    hop: ``execute`` returns its rows, not a cursor in progress.

    On one SQLite connection a read transaction lasts while *any* statement on it is in
    progress. With a cursor held across an await (between ``execute`` and ``fetchone``, or
    through ``async for``), every other request's query on the shared connection would read
    that cursor's snapshot, possibly older than a commit it already saw acknowledged. Here no
    statement outlives its hop, so each query reads the latest commit."""

    def execute(  # type: ignore[override]
        self, sql: str, parameters: Any = None
    ) -> Result[Rows]:
        return Result(self._run(sql, () if parameters is None else parameters))

    async def _run(self, sql: str, parameters: Any) -> Rows:
        rows: list[Any] = await self._execute(  # type: ignore[no-untyped-call]
            lambda: self._conn.execute(sql, parameters).fetchall())
        return Rows(rows)


async def open_reader(path: Path) -> ReadConnection:
    """A ``ReadConnection`` to the database at ``path``, in query-only mode."""

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(str(path), isolation_level=None)

    reader = ReadConnection(connect, 64)
    await reader  # starts its thread and connects
    await reader.execute("PRAGMA query_only=ON")
    return reader


class PointReader:
    """Small indexed reads (a row by its key) run right here, on the event loop's thread,
    on a query-only connection of their own; each reads the latest commit, as ``reader``
    does.

    Such a read costs SQLite a few tens of microseconds. Through ``reader`` the same read is
    a hop to aiosqlite's thread, which must then win the GIL back from a busy event loop
    (up to the 5 ms switch interval) and hand the rows back through the loop: under load
    that costs the loop more than the read. Not for scans or anything that may take long:
    while it runs the loop serves nobody."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA query_only=ON")
        self.conn.execute("PRAGMA busy_timeout=5000")

    def rows(self, sql: str, parameters: tuple[Any, ...] = ()) -> list[Any]:
        return self.conn.execute(sql, parameters).fetchall()

    def close(self) -> None:
        self.conn.close()


async def open_db(path: Path, synchronous: str = "FULL") -> aiosqlite.Connection:
    """Open (creating if needed) the database and bring its schema up to date."""
    # check_same_thread=False: the writer runs its statements on the event loop's thread
    # (``node.writer.on_loop``), not only in aiosqlite's own.
    db = await aiosqlite.connect(path, isolation_level=None, check_same_thread=False)
    try:
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        await db.execute("PRAGMA foreign_keys=ON")
        await db.execute("PRAGMA busy_timeout=5000")
        async with db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
    except sqlite3.Error as exc:
        # Closed, or its thread would keep the process alive after the refusal.
        await db.close()
        raise StorageError(f"cannot open {path} ({exc}); the node needs to read and write "
                           "its data directory and the files in it") from exc
    version = int(row[0]) if row else 0
    migrations = _migrations()
    latest = migrations[-1][0] if migrations else 0
    if version > latest:
        await db.close()
        raise StorageError(
            f"{path} has schema version {version}, newer than this Tally ({latest}); "
            "upgrade Tally before running this node"
        )
    for number, sql in migrations:
        if number <= version:
            continue
        await db.execute("BEGIN IMMEDIATE")
        try:
            await _run_script(db, sql)
            await db.execute(f"PRAGMA user_version={number}")
            await db.execute("COMMIT")
        except Exception:
            await db.execute("ROLLBACK")
            await db.close()
            raise
    return db


async def _run_script(db: aiosqlite.Connection, sql: str) -> None:
    # executescript() would COMMIT first; run statement by statement inside our transaction.
    statement = ""
    for line in sql.splitlines(keepends=True):
        if line.lstrip().startswith("--"):
            continue
        statement += line
        if statement.strip().endswith(";") and sqlite3.complete_statement(statement):
            await db.execute(statement)
            statement = ""
    if statement.strip():
        await db.execute(statement)


async def get_meta(db: aiosqlite.Connection, key: str) -> str | None:
    async with db.execute("SELECT value FROM meta WHERE key = ?", (key,)) as cur:
        row = await cur.fetchone()
    return str(row[0]) if row else None


async def write_genesis(db: aiosqlite.Connection, entry: LogEntry) -> None:
    """Write the genesis entry as log index 0 of an empty database."""
    encoded = entry.encode()
    state = new_state(entry.payload, encoded)
    await db.execute("BEGIN IMMEDIATE")
    try:
        async with db.execute("SELECT COUNT(*) FROM log") as cur:
            row = await cur.fetchone()
        if row and row[0]:
            raise StorageError("this database already holds a ledger")
        await db.execute("INSERT INTO log (idx, entry) VALUES (0, ?)", (encoded,))
        for i, h in enumerate(merkle.append_hashes(0, merkle.leaf_hash(encoded), [])):
            await db.execute("INSERT INTO tree_hashes (idx, hash) VALUES (?, ?)", (i, h))
        await db.execute(
            "INSERT INTO meta (key, value) VALUES ('ledger_id', ?)", (state.ledger_id,)
        )
        await db.execute("COMMIT")
    except BaseException:
        await db.execute("ROLLBACK")
        raise


async def log_size(db: aiosqlite.Connection) -> int:
    async with db.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM log") as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def read_entry(db: aiosqlite.Connection, idx: int) -> bytes | None:
    async with db.execute("SELECT entry FROM log WHERE idx = ?", (idx,)) as cur:
        row = await cur.fetchone()
    return bytes(row[0]) if row else None


def account_from_row(row: Any) -> Account:
    handle, kind, key, debit, credit, balance, pdebit, pcredit, status = row
    return Account(
        handle=handle,
        kind=kind,
        key=PublicKey.parse(key) if key else None,
        debit_limit=debit,
        credit_limit=credit,
        balance=balance,
        pending_debit=pdebit,
        pending_credit=pcredit,
        status=status,
    )


ACCOUNT_COLUMNS = (
    "handle, kind, key, debit_limit, credit_limit, balance, pending_debit, pending_credit, status"
)


def account_row(a: Account) -> tuple[Any, ...]:
    return (
        a.handle,
        a.kind,
        a.key.text if a.key else None,
        a.debit_limit,
        a.credit_limit,
        a.balance,
        a.pending_debit,
        a.pending_credit,
        a.status,
    )


async def load_state(db: aiosqlite.Connection) -> LedgerState:
    """The ledger's state as last committed: genesis, stewards, accounts and log size.

    The steward set is the last one a ``set_stewards`` act wrote, kept in ``meta``.
    """
    genesis_bytes = await read_entry(db, 0)
    if genesis_bytes is None:
        raise StorageError("this database holds no ledger yet: run `tally node init`")
    genesis = parse_log_entry(json.loads(genesis_bytes))
    state = new_state(genesis.payload, genesis_bytes)
    stored_id = await get_meta(db, "ledger_id")
    if stored_id != state.ledger_id:
        raise StorageError("the ledger id in meta does not match the genesis entry: damaged")
    stewards = await get_meta(db, "stewards")
    if stewards is not None:
        doc = json.loads(stewards)
        state.stewards = frozenset(PublicKey.parse(k) for k in doc["keys"])
        state.threshold = int(doc["threshold"])
    async with db.execute(f"SELECT {ACCOUNT_COLUMNS} FROM accounts") as cur:
        async for row in cur:
            account = account_from_row(row)
            state.accounts[account.handle] = account
    async with db.execute("SELECT signed FROM lines") as cur:
        async for row in cur:
            line = parse_signed(json.loads(row[0]), frozenset({"line"}))
            state.lines[line.msg.id] = line  # type: ignore[union-attr]
    async with db.execute("SELECT doc FROM holds") as cur:
        async for row in cur:
            hold = Hold(**json.loads(row[0]))
            state.holds[hold.key] = hold
            if hold.state == "held":
                state.open_holds[hold.key] = hold
    state.size = await log_size(db)
    return state


@dataclass(frozen=True)
class Posting:
    index: int
    amount: int
    counterparty: str
    event_id: str
    node_time: int
    memo: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "amount": self.amount,
            "counterparty": self.counterparty,
            "id": self.event_id,
            "node_time": self.node_time,
            "memo": self.memo,
        }


# A row of the postings table: handle, idx, amount, counterparty, event id, node time.
PostingRow = tuple[str, int, int, str, str, int]


def history(
    lookup: PointReader, held: list[PostingRow], handle: str, before: int | None, limit: int,
) -> list[Posting]:
    """An account's postings, newest first, strictly before log index ``before`` if given:
    those in the postings table merged with ``held``, the account's postings the writer has
    not written there yet (``Writer.unwritten_postings``), each once."""
    bound = before if before is not None else 2**62
    rows = {row[0]: row for row in lookup.rows(
        "SELECT p.idx, p.amount, p.counterparty, p.event_id, p.node_time, m.memo "
        "FROM postings p LEFT JOIN memos m ON m.idx = p.idx "
        "WHERE p.handle = ? AND p.idx < ? ORDER BY p.idx DESC LIMIT ?",
        (handle, bound, limit),
    )}
    newest = sorted((p for p in held if p[1] < bound and p[1] not in rows),
                    key=lambda p: p[1], reverse=True)[:limit]
    if newest:
        marks = ",".join("?" * len(newest))
        memos = dict(lookup.rows(f"SELECT idx, memo FROM memos WHERE idx IN ({marks})",
                                 tuple(p[1] for p in newest)))
        for _, idx, amount, other, event_id, node_time in newest:
            rows[idx] = (idx, amount, other, event_id, node_time, memos.get(idx))
    return [Posting(*rows[idx]) for idx in sorted(rows, reverse=True)[:limit]]


async def event_index(db: aiosqlite.Connection, event_id: str) -> int | None:
    async with db.execute("SELECT idx FROM events WHERE id = ?", (event_id,)) as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else None


async def logical_dump(db: aiosqlite.Connection) -> list[tuple[Any, ...]]:
    """Every row of every table, in a fixed order: what "nothing was written" compares."""
    out: list[tuple[Any, ...]] = []
    async with db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
        "ORDER BY name"
    ) as cur:
        tables = [r[0] for r in await cur.fetchall()]
    for table in tables:
        async with db.execute(f"SELECT * FROM {table} ORDER BY 1, 2") as cur:
            out.extend((table, *row) for row in await cur.fetchall())
    return out
