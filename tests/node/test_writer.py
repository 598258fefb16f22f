"""The writer under concurrent batches: debit limits hold across batches committed together,
and the log's indexes stay dense."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from typing import Any

import pytest

from crypto.keys import SecretKey
from node.writer import BIG_COMMIT, EventRequest, SqlRequest, Writer
from protocol.messages import Signed, Transfer, sign_message
from tests.node.conftest import Collective


def transfer(coop: Collective, key: SecretKey, payer: str, payee: str, amount: int,
             transfer_id: str | None = None) -> Signed:
    msg = Transfer(coop.node.ledger.ledger_id, transfer_id or os.urandom(16).hex(), payer,
                   payee, amount, None, coop.node.clock_ms() + 600_000)
    return sign_message(msg, key)


def event(signed: Signed) -> tuple[Signed, Any, None]:
    return signed, (frozenset({signed.sigs[0].key}), True), None


def the_writer(coop: Collective) -> Writer:
    assert coop.node.writer is not None
    return coop.node.writer


async def balances(coop: Collective) -> dict[str, int]:
    return {h: a.balance for h, a in coop.node.ledger.accounts.items()}


async def test_concurrent_batches_keep_order_and_limits(coop: Collective) -> None:
    """Concurrent batches spending from one account never pass its debit limit, and the log
    indexes they get are dense."""
    w = the_writer(coop)
    batches = [[event(transfer(coop, coop.alice, "alice", "bob", 30)) for _ in range(10)]
               for _ in range(8)]
    results = await asyncio.gather(*(w.submit_batch(b) for b in batches))
    oks = [o for r in results for o in r if o.code.value == "ok"]
    refused = [o for r in results for o in r if o.code.value != "ok"]
    assert len(oks) == 1000 // 30  # limit 1000
    assert {o.code.value for o in refused} == {"exceeds_debit_limit"}
    indexes = sorted(o.index or 0 for o in oks)
    assert indexes == list(range(indexes[0], indexes[0] + len(oks)))
    assert (await balances(coop))["alice"] == -30 * len(oks)


async def test_a_read_sees_every_acknowledged_commit_while_another_read_is_half_done(
        coop: Collective) -> None:
    """A request that reads after its write was acknowledged sees it, even while another
    request is part-way through reading many rows from the shared read connection (on one
    SQLite connection, a statement in progress would hold every query to its old snapshot)."""
    w = the_writer(coop)
    for _ in range(3):
        await w.submit(*event(transfer(coop, coop.alice, "alice", "bob", 1))[:2])
    reader = coop.node.reader
    assert reader is not None
    async with reader.execute("SELECT idx FROM log ORDER BY idx") as scan:
        first = await scan.fetchone()  # another request, paused part-way through its rows
        assert first is not None
        outcome = await w.submit(*event(transfer(coop, coop.alice, "alice", "bob", 1))[:2])
        assert outcome.code.value == "ok"
        async with reader.execute("SELECT idx FROM log WHERE idx = ?", (outcome.index,)) as cur:
            assert await cur.fetchone() == (outcome.index,)
        rest = await scan.fetchall()
    assert len(rest) >= 3


async def test_a_big_batch_is_durable_when_answered(coop: Collective) -> None:
    """A transaction of BIG_COMMIT entries or more commits in aiosqlite's thread: its events
    are in the database when the batch is answered, and the writer goes on after it."""
    w = the_writer(coop)
    size = coop.node.ledger.size
    big = [event(transfer(coop, coop.alice, "alice", "bob", 1)) for _ in range(BIG_COMMIT)]
    assert all(o.code.value == "ok" for o in await w.submit_batch(big))
    reader = coop.node.reader
    assert reader is not None
    async with reader.execute("SELECT count(*) FROM log WHERE idx >= ?", (size,)) as cur:
        assert (await cur.fetchone()) == (BIG_COMMIT,)
    outcome = await w.submit(*event(transfer(coop, coop.bob, "bob", "alice", 5))[:2])
    assert outcome.code.value == "ok" and outcome.index == size + BIG_COMMIT
    assert (await balances(coop))["alice"] == -BIG_COMMIT + 5


async def test_a_big_commit_that_fails_applies_nothing(coop: Collective, monkeypatch) -> None:
    """When the COMMIT of a big transaction fails (in aiosqlite's thread), every request in
    it fails, nothing is applied, and the next batch is applied as if it never was."""
    w = the_writer(coop)
    before = await balances(coop)
    size = coop.node.ledger.size
    real = w.db.execute
    failed = []

    def execute(sql: str, *args: Any) -> Any:
        if sql == "COMMIT" and not failed:
            failed.append(sql)
            raise sqlite3.OperationalError("disk I/O error")
        return real(sql, *args)

    monkeypatch.setattr(w.db, "execute", execute)
    big = [event(transfer(coop, coop.alice, "alice", "bob", 1)) for _ in range(BIG_COMMIT)]
    with pytest.raises(RuntimeError, match="storage failure"):
        await w.submit_batch(big)
    assert failed and await balances(coop) == before and coop.node.ledger.size == size
    retry = await w.submit_batch(big)  # the same transfers, applied now, at the same indexes
    assert [o.index for o in retry] == list(range(size, size + BIG_COMMIT))
    assert (await balances(coop))["alice"] == before["alice"] - BIG_COMMIT


async def test_a_write_beside_the_ledger_commits_with_its_batch_or_not_at_all(
        coop: Collective) -> None:
    """A ``SqlRequest`` (a payment's record, say) runs in the same transaction as the events
    queued with it: committed with them, and if it fails, none of them is applied and the
    books, in memory and on disk, are as before."""
    w = the_writer(coop)
    lookup = coop.node.lookup
    assert lookup is not None

    def store(conn: Any) -> None:
        conn.execute("INSERT INTO meta (key, value) VALUES ('note', 'kept')")

    def fail(conn: Any) -> None:
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    kept = EventRequest(*event(transfer(coop, coop.alice, "alice", "bob", 5))[:2])
    stored = SqlRequest(store)
    w.submit_all([kept, stored])
    assert (await kept.future).code.value == "ok" and await stored.future
    assert lookup.rows("SELECT value FROM meta WHERE key = 'note'") == [("kept",)]
    before, size = await balances(coop), coop.node.ledger.size

    lost = EventRequest(*event(transfer(coop, coop.alice, "alice", "bob", 7))[:2])
    failing = SqlRequest(fail)
    w.submit_all([lost, failing])
    with pytest.raises(RuntimeError):
        await lost.future
    with pytest.raises(RuntimeError):
        await failing.future
    assert await balances(coop) == before and coop.node.ledger.size == size
    assert lookup.rows("SELECT COUNT(*) FROM log") == [(size,)]
