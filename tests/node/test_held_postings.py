"""Transfers' history postings wait in memory until their account has a few
(``node.writer.POSTINGS_PER_WRITE``) or the oldest has waited long enough: a member's history
is whole and in order whichever side of a write, a restart, a crash or a memo erasure its
postings are on."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from node import storage, writer
from node.api import make_app
from node.client import TallyClient, transfer_body
from node.config import Config
from node.intake import Memo
from node.service import Node
from node.writer import EventRequest, HeldPostings
from protocol.ledger import memo_hash
from protocol.messages import Transfer, sign_message
from tests.node.conftest import Collective, start_collective


def body(coop: Collective, amount: int, memo: str | None = None,
         payee: str = "bob") -> dict[str, Any]:
    return transfer_body(coop.alice, coop.node.ledger.ledger_id, "alice", payee, amount, memo)


async def pay(coop: Collective, amount: int, memo: str | None = None,
              payee: str = "bob") -> int:
    receipt = await coop.client.submit_transfer(body(coop, amount, memo, payee))
    assert receipt["result"] == "ok"
    return int(receipt["index"])


async def pages(coop: Collective, handle: str, key: Any, limit: int) -> list[dict[str, Any]]:
    """Every posting of ``handle``, following the cursor ``limit`` postings at a time."""
    out: list[dict[str, Any]] = []
    async with TallyClient(coop.url, key, retries=0) as client:
        cursor = None
        while True:
            page = await client.history_page(handle, cursor, limit)
            out += page["postings"]
            cursor = page["next"]
            if cursor is None:
                return out


def posted(data_dir: Path) -> list[tuple[str, int]]:
    """(handle, log index) of every row of the postings table, read from the file."""
    db = sqlite3.connect(f"file:{data_dir / storage.DB_FILE}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT handle, idx FROM postings ORDER BY handle, idx")
        return [tuple(r) for r in rows]
    finally:
        db.close()


async def test_history_is_whole_and_in_order_as_postings_wait_and_go(coop: Collective) -> None:
    per = writer.POSTINGS_PER_WRITE
    indexes = [await pay(coop, 10 + i, memo=f"shift {i}") for i in range(per + 2)]
    # alice's and bob's first `per` postings went to the table together; the last two wait
    assert posted(coop.node.data_dir) == sorted(
        (h, i) for i in indexes[:per] for h in ("alice", "bob"))

    for limit in (1, 2, 3, 50):
        bob = await pages(coop, "bob", coop.bob, limit)
        assert [p["index"] for p in bob] == indexes[::-1]
        assert [(p["amount"], p["memo"], p["counterparty"]) for p in bob] == [
            (10 + i, f"shift {i}", "alice") for i in reversed(range(per + 2))]
    alice = await pages(coop, "alice", coop.alice, 4)
    assert [p["amount"] for p in alice] == [-(10 + i) for i in reversed(range(per + 2))]


async def test_postings_go_once_the_oldest_has_waited_long_enough(
        coop: Collective, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer, "POSTINGS_PER_WRITE", 1000)  # only age sends them
    monkeypatch.setattr(writer, "POSTINGS_MAX_AGE", 5)
    carol = await coop.add_member("carol")
    first = await pay(coop, 7, payee="carol")
    later = [await pay(coop, 1) for _ in range(5)]
    # carol's one posting went to the table with the entry that made it 5 entries old; of
    # the others, only postings younger than that still wait (an account's go all at once)
    made = {("carol", first), ("alice", first), *((h, i) for i in later for h in ("alice", "bob"))}
    table = set(posted(coop.node.data_dir))
    assert ("carol", first) in table and table <= made
    assert all(idx >= later[-1] + 1 - 5 for _, idx in made - table)
    assert made - table  # and some still wait: the age, not a write of everything, sent them
    assert [p["amount"] for p in await pages(coop, "carol", carol, 50)] == [7]
    assert [p["amount"] for p in await pages(coop, "alice", coop.alice, 2)] == [-1] * 5 + [-7]


async def restart(tmp_path: Path, old: Collective) -> tuple[TestServer, Collective]:
    node = Node(tmp_path / "node", Config())
    server = TestServer(make_app(node), host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    return server, Collective(url, node, old.steward, old.alice, old.bob,
                              TallyClient(url, retries=0))


async def stop_node(server: TestServer, coop: Collective, monkeypatch: pytest.MonkeyPatch,
                    crash: bool) -> None:
    """Stop the node; with ``crash``, as if its process died: nothing written at the stop."""
    if crash:
        async def no_flush(self: Node) -> None:
            pass
        monkeypatch.setattr(Node, "_flush_held", no_flush)
    try:
        await coop.client.close()
        await server.close()
    finally:
        monkeypatch.undo()


@pytest.mark.parametrize("stop", ["clean", "crash"])
async def test_held_postings_outlive_the_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop: str) -> None:
    """A clean stop writes the held postings; after a crash (nothing written at the stop)
    the next start rebuilds them from the log. Either way history is as before, and the
    rebuilt ones reach the table like any others."""
    server, coop = await start_collective(tmp_path)
    data = coop.node.data_dir
    try:
        per = writer.POSTINGS_PER_WRITE
        indexes = [await pay(coop, 5 + i, memo=f"meal {i}") for i in range(per + 3)]
        in_table = sorted((h, i) for i in indexes[:per] for h in ("alice", "bob"))
        assert posted(data) == in_table
        before = await pages(coop, "bob", coop.bob, 50)
    finally:
        await stop_node(server, coop, monkeypatch, crash=stop == "crash")
    everything = sorted((h, i) for i in indexes for h in ("alice", "bob"))
    assert posted(data) == (in_table if stop == "crash" else everything)

    server, again = await restart(tmp_path, coop)
    try:
        after = await pages(again, "bob", coop.bob, 50)
        assert after == before
        assert [p["index"] for p in after] == indexes[::-1]
        assert [p["memo"] for p in after] == [f"meal {i}" for i in reversed(range(per + 3))]
        # alice and bob each hold 3 (rebuilt after the crash) or none (written at the
        # clean stop); this many more make `per` of each, and they all go to the table
        more = [await pay(again, 1) for _ in range(per - 3 if stop == "crash" else per)]
        assert posted(data) == sorted((h, i) for i in indexes + more for h in ("alice", "bob"))
        await again.client.close()
    finally:
        await server.close()


async def test_a_start_after_a_crash_holds_only_what_the_table_lacks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """bob's postings wait while alice's (made at the same entries, and later) go to the
    table: after a crash the node rebuilds from bob's oldest, and must not hold alice's
    again (they would be written twice)."""
    server, coop = await start_collective(tmp_path)
    data = coop.node.data_dir
    per = writer.POSTINGS_PER_WRITE
    try:
        carol = await coop.add_member("carol")
        to_bob = [await pay(coop, 2) for _ in range(3)]
        to_carol = [await pay(coop, 1, payee="carol") for _ in range(per - 3)]
        assert {h for h, _ in posted(data)} == {"alice"}
    finally:
        await stop_node(server, coop, monkeypatch, crash=True)

    server, again = await restart(tmp_path, coop)
    try:
        alice = await pages(again, "alice", coop.alice, 50)
        assert [p["index"] for p in alice] == (to_bob + to_carol)[::-1]
        assert [p["amount"] for p in await pages(again, "carol", carol, 50)] == [1] * (per - 3)
        more = [await pay(again, 2) for _ in range(per - 3)]  # bob's reach `per`: written
        assert [p["index"] for p in await pages(again, "bob", coop.bob, 3)] == (to_bob + more)[::-1]
        await again.client.close()
    finally:
        await server.close()  # a clean stop: everything else goes to the table, once
    everything = [("alice", i) for i in to_bob + to_carol + more] + [
        ("bob", i) for i in to_bob + more] + [("carol", i) for i in to_carol]
    assert posted(data) == sorted(everything)


async def test_erasing_memos_reaches_postings_not_yet_in_the_table(coop: Collective) -> None:
    await pay(coop, 3, memo="flat rent")
    await pay(coop, 4, memo="bike repair")
    assert posted(coop.node.data_dir) == []
    async with TallyClient(coop.url, coop.steward, retries=0) as steward:
        assert (await steward.erase_memos("bob"))["erased"] == 2
    assert [p["memo"] for p in await pages(coop, "bob", coop.bob, 50)] == [None, None]


async def hold_the_writer(coop: Collective) -> tuple[asyncio.Event, asyncio.Task[None]]:
    """Keep the writer inside a batch (an op that waits), so that what is queued meanwhile
    goes in its next batch, together."""
    w = coop.node.writer
    assert w is not None
    gate, inside = asyncio.Event(), asyncio.Event()

    async def wait(db: Any) -> None:
        inside.set()
        await gate.wait()

    task = asyncio.create_task(w.write(wait))
    await inside.wait()
    return gate, task


async def queued(coop: Collective, n: int) -> None:
    assert coop.node.writer is not None
    while coop.node.writer.queue.qsize() < n:
        await asyncio.sleep(0.01)


async def test_erasing_memos_reaches_a_transfer_of_the_same_batch(coop: Collective) -> None:
    """The erasure runs in the batch's transaction after its transfers; a transfer of that
    batch whose postings wait is in neither the table nor the held postings yet."""
    w = coop.node.writer
    assert w is not None
    salt = os.urandom(16)
    msg = Transfer(coop.node.ledger.ledger_id, os.urandom(16).hex(), "alice", "bob", 3,
                   memo_hash(salt, "secret rent"), coop.node.clock_ms() + 600_000)
    gate, holder = await hold_the_writer(coop)
    transfer = EventRequest(sign_message(msg, coop.alice), (frozenset({coop.alice.public}), True),
                            Memo("secret rent", salt))
    w.submit_nowait(transfer)
    erase = asyncio.create_task(coop.node.erase_memos("bob"))  # what the endpoint runs
    await queued(coop, 2)
    gate.set()
    await holder
    assert (await transfer.future).code.value == "ok"
    assert await erase == 1
    assert [(p["amount"], p["memo"]) for p in await pages(coop, "bob", coop.bob, 50)] == [
        (3, None)]


async def test_a_flush_asked_for_during_a_commit_writes_everything(coop: Collective) -> None:
    indexes = [await pay(coop, 2) for _ in range(3)]
    assert posted(coop.node.data_dir) == []
    gate, holder = await hold_the_writer(coop)
    assert coop.node.writer is not None
    flush = asyncio.create_task(coop.node.writer.flush())
    await queued(coop, 1)
    gate.set()
    await holder
    await flush
    assert posted(coop.node.data_dir) == sorted((h, i) for i in indexes for h in ("alice", "bob"))


# --- the bookkeeping of held postings, against a plain model ---------------------------------

@settings(max_examples=200, deadline=None)
@given(
    commits=st.lists(st.tuples(st.lists(st.sampled_from("abcdef"), max_size=6), st.booleans()),
                     max_size=40),
    per=st.integers(1, 5),
    age=st.integers(1, 12),
)
def test_held_postings_go_oldest_first_and_never_wait_too_long(
        commits: list[tuple[list[str], bool]], per: int, age: int) -> None:
    """Over any commits (each a list of accounts posted to, one log entry each, and whether
    a flush was asked for): every posting is written once or held; an account's written
    postings are its oldest; none waits past the age; and every posting under ``upto`` is
    written, so a restart that rebuilds from there misses nothing."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(writer, "POSTINGS_PER_WRITE", per)
        patch.setattr(writer, "POSTINGS_MAX_AGE", age)
        check_commits(commits, per, age)


def check_commits(commits: list[tuple[list[str], bool]], per: int, age: int) -> None:
    held, size, table, made = HeldPostings(), 1, [], []
    for accounts, everything in commits:
        new: dict[str, list[Any]] = {}
        for handle in accounts:
            row = (handle, size, 1, "x", f"{size:032x}", 0)
            new.setdefault(handle, []).append(row)
            made.append(row)
            size += 1
        due = held.due(new, size, everything)
        for handle in due:
            table += held.by_handle.get(handle, []) + new.get(handle, [])
        waiting = {h: rows for h, rows in new.items() if h not in due}
        upto = held.upto(waiting, size) if not everything else size
        held.committed(waiting, due)
        kept = [row for rows in held.by_handle.values() for row in rows]
        assert sorted(table + kept) == sorted(made)
        assert len(set(table)) == len(table)
        for handle, rows in held.by_handle.items():
            assert rows and all(r[1] > max((t[1] for t in table if t[0] == handle), default=0)
                                for r in rows)
            assert len(rows) < per
            assert rows[0][1] >= size - age
        assert all(r in table for r in made if r[1] < upto)
        if everything:
            assert not held.by_handle


# --- the merge of table and held postings, against a plain sort of both ----------------------

Row = tuple[str, int, int, str, str, int]


def posting(handle: str, idx: int) -> Row:
    return (handle, idx, idx * 3 - 7, "other", f"{idx:032x}", 1_700_000_000_000 + idx)


@settings(max_examples=60, deadline=None)
@given(
    where=st.dictionaries(st.integers(1, 60), st.sampled_from(["table", "held", "both"]),
                          max_size=25),
    noise=st.sets(st.integers(61, 90), max_size=5),
    memos=st.sets(st.integers(1, 60)),
    before=st.one_of(st.none(), st.integers(0, 70)),
    limit=st.integers(1, 12),
)
def test_history_merges_table_and_held_postings(
        where: dict[int, str], noise: set[int], memos: set[int], before: int | None,
        limit: int) -> None:
    """Whatever postings are in the table, held, or both (a flush seen half-way), a page is
    the newest ``limit`` of them before the cursor, each once, with its memo."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.sqlite"
        db = sqlite3.connect(path)
        db.executescript(
            "CREATE TABLE postings (handle TEXT, idx INTEGER, amount INTEGER, counterparty "
            "TEXT, event_id TEXT, node_time INTEGER, PRIMARY KEY (handle, idx));"
            "CREATE TABLE memos (idx INTEGER PRIMARY KEY, salt BLOB, memo TEXT);")
        db.executemany("INSERT INTO postings VALUES (?, ?, ?, ?, ?, ?)",
                       [posting("ann", i) for i, w in where.items() if w != "held"]
                       + [posting("kim", i) for i in noise])
        db.executemany("INSERT INTO memos VALUES (?, x'00', ?)",
                       [(i, f"memo {i}") for i in memos])
        db.commit()
        db.close()
        held = [posting("ann", i) for i, w in sorted(where.items()) if w != "table"]
        lookup = storage.PointReader(path)
        try:
            page = storage.history(lookup, held, "ann", before, limit)
        finally:
            lookup.close()
    bound = 2**62 if before is None else before
    want = sorted((i for i in where if i < bound), reverse=True)[:limit]
    assert [p.index for p in page] == want
    for p in page:
        _, idx, amount, other, event_id, node_time = posting("ann", p.index)
        assert (p.amount, p.counterparty, p.event_id, p.node_time) == (
            amount, other, event_id, node_time)
        assert p.memo == (f"memo {idx}" if idx in memos else None)
