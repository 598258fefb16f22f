"""The writer holds the rows of ``events``, and transfers' rows of ``postings``, in memory and
writes them in bulk (``node.writer.HELD_FLUSH``): a member's history, a lookup of an event
and the refusal of a transfer applied before are the same whichever side of a flush, a
restart, a crash or a memo erasure its rows are on."""

from __future__ import annotations

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
from node.service import Node
from tests.node.conftest import Collective, start_collective


def body(coop: Collective, amount: int, memo: str | None = None) -> dict[str, Any]:
    return transfer_body(coop.alice, coop.node.ledger.ledger_id, "alice", "bob", amount, memo)


async def pay(coop: Collective, amount: int, memo: str | None = None) -> int:
    receipt = await coop.client.submit_transfer(body(coop, amount, memo))
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


def table(path: Path, sql: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(f"file:{path / storage.DB_FILE}?mode=ro", uri=True)
    try:
        return [tuple(r) for r in db.execute(sql)]
    finally:
        db.close()


def posted(coop: Collective) -> list[int]:
    """The log indexes in the postings table, a transfer's two postings each."""
    return [i for (i,) in table(coop.node.data_dir, "SELECT idx FROM postings ORDER BY idx")]


async def test_history_and_events_are_whole_across_flushes(
        coop: Collective, monkeypatch: pytest.MonkeyPatch) -> None:
    # Held: the two admissions of the fixture. Every third entry then writes what is held.
    monkeypatch.setattr(writer, "HELD_FLUSH", 3)
    bodies = [body(coop, 10 + i, memo=f"shift {i}") for i in range(8)]
    indexes = []
    for b in bodies:
        receipt = await coop.client.submit_transfer(b)
        assert receipt["result"] == "ok"
        indexes.append(receipt["index"])
    # The 1st, 4th and 7th transfers' commits wrote the rows held; the 8th's are held.
    assert posted(coop) == sorted(indexes[:7] * 2)
    events = table(coop.node.data_dir, "SELECT idx FROM events ORDER BY idx")
    assert [i for (i,) in events] == [1, 2, *indexes[:7]]
    assert table(coop.node.data_dir, "SELECT value FROM meta WHERE key = 'tables_upto'") == [
        (str(indexes[6] + 1),)]

    for limit in (1, 2, 3, 50):
        bob = await pages(coop, "bob", coop.bob, limit)
        assert [p["index"] for p in bob] == indexes[::-1]
        assert [(p["amount"], p["memo"], p["counterparty"]) for p in bob] == [
            (10 + i, f"shift {i}", "alice") for i in reversed(range(8))]
    alice = await pages(coop, "alice", coop.alice, 4)
    assert [p["amount"] for p in alice] == [-(10 + i) for i in reversed(range(8))]

    async with TallyClient(coop.url, coop.bob, retries=0) as bob_client:
        for b, index in zip(bodies, indexes):  # in the table (1st-7th) and held (8th)
            assert (await bob_client.event(b["transfer"]["msg"]["id"]))["index"] == index
            again = await coop.client.submit_transfer(b)
            assert (again["result"], again["index"]) == ("exists", index)
    assert coop.node.ledger.accounts["bob"].balance == sum(10 + i for i in range(8))


async def restart(tmp_path: Path, old: Collective) -> tuple[TestServer, Collective]:
    node = Node(tmp_path / "node", Config())
    server = TestServer(make_app(node), host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    return server, Collective(url, node, old.steward, old.alice, old.bob,
                              TallyClient(url, retries=0))


@pytest.mark.parametrize("stop", ["clean", "crash"])
async def test_held_rows_outlive_the_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop: str) -> None:
    """A clean stop writes the held rows; after a crash (no flush) the next start rebuilds
    them from the log. Either way history, events and retries are as before the stop."""
    server, coop = await start_collective(tmp_path)
    try:
        bodies = [body(coop, 5 + i, memo=f"meal {i}") for i in range(4)]
        indexes = [(await coop.client.submit_transfer(b))["index"] for b in bodies]
        assert posted(coop) == []  # all held
        before = await pages(coop, "bob", coop.bob, 50)
        if stop == "crash":  # the process dies with its memory: nothing written at the stop
            async def no_flush(self: Node) -> None:
                pass
            monkeypatch.setattr(Node, "_flush_held", no_flush)
    finally:
        await coop.client.close()
        await server.close()
    monkeypatch.undo()
    assert posted(coop) == ([] if stop == "crash" else sorted(indexes * 2))

    server, again = await restart(tmp_path, coop)
    try:
        after = await pages(again, "bob", coop.bob, 50)
        assert after == before
        assert [p["index"] for p in after] == indexes[::-1]
        assert [p["memo"] for p in after] == [f"meal {i}" for i in reversed(range(4))]
        for b, index in zip(bodies, indexes):
            retry = await again.client.submit_transfer(b)
            assert (retry["result"], retry["index"]) == ("exists", index)
        assert again.node.ledger.accounts["bob"].balance == 5 + 6 + 7 + 8
        await again.client.close()
    finally:
        await server.close()
    # the clean stop of the restarted node wrote everything, rebuilt rows included
    assert posted(again) == sorted(indexes * 2)


async def test_erasing_memos_reaches_postings_not_yet_in_the_table(coop: Collective) -> None:
    await pay(coop, 3, memo="flat rent")
    await pay(coop, 4, memo="bike repair")
    assert posted(coop) == []
    async with TallyClient(coop.url, coop.steward, retries=0) as steward:
        assert (await steward.erase_memos("bob"))["erased"] == 2
    assert [p["memo"] for p in await pages(coop, "bob", coop.bob, 50)] == [None, None]


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
