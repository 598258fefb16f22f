"""Transfers' history postings are held in memory and written to the postings table in bulk
(``node.writer.POSTINGS_FLUSH``): a member's history is whole and in order whichever side
of a flush, a restart or a memo erasure its postings are on."""

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


async def pay(coop: Collective, amount: int, memo: str | None = None) -> int:
    body = transfer_body(coop.alice, coop.node.ledger.ledger_id, "alice", "bob", amount, memo)
    receipt = await coop.client.submit_transfer(body)
    assert receipt["result"] == "ok"
    return int(receipt["index"])


async def pages(coop: Collective, handle: str, key: Any, limit: int) -> list[dict[str, Any]]:
    """Every posting of ``handle``, two requests' worth of cursor at a time."""
    out: list[dict[str, Any]] = []
    async with TallyClient(coop.url, key, retries=0) as client:
        cursor = None
        while True:
            page = await client.history_page(handle, cursor, limit)
            out += page["postings"]
            cursor = page["next"]
            if cursor is None:
                return out


def table(coop: Collective) -> list[tuple[str, int, int]]:
    assert coop.node.lookup is not None
    return [tuple(r) for r in coop.node.lookup.rows(
        "SELECT handle, idx, amount FROM postings ORDER BY idx, handle")]


async def test_history_is_whole_and_in_order_across_a_flush(
        coop: Collective, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer, "POSTINGS_FLUSH", 6)  # two postings a transfer: every third
    indexes = [await pay(coop, 10 + i, memo=f"shift {i}") for i in range(7)]
    # The third and the sixth transfers' commits wrote the held postings to the table; the
    # seventh's are still held.
    assert [idx for _, idx, _ in table(coop)] == sorted(indexes[:6] * 2)
    assert coop.node.lookup is not None
    upto = coop.node.lookup.rows("SELECT value FROM meta WHERE key = 'postings_upto'")
    assert upto == [(str(indexes[5] + 1),)]

    for limit in (1, 2, 3, 50):
        bob = await pages(coop, "bob", coop.bob, limit)
        assert [p["index"] for p in bob] == indexes[::-1]
        assert [(p["amount"], p["memo"], p["counterparty"]) for p in bob] == [
            (10 + i, f"shift {i}", "alice") for i in reversed(range(7))]
    alice = await pages(coop, "alice", coop.alice, 4)
    assert [p["amount"] for p in alice] == [-(10 + i) for i in reversed(range(7))]


async def test_held_postings_are_rebuilt_from_the_log_at_a_restart(tmp_path: Path) -> None:
    server, coop = await start_collective(tmp_path)
    try:
        indexes = [await pay(coop, 5 + i, memo=f"meal {i}") for i in range(4)]
        assert table(coop) == []  # all held: none written to the table yet
        before = await pages(coop, "bob", coop.bob, 50)
    finally:
        await coop.client.close()
        await server.close()  # stops the node: what was held in memory is gone

    node = Node(tmp_path / "node", Config())
    server = TestServer(make_app(node), host="127.0.0.1")
    await server.start_server()
    try:
        again = Collective(str(server.make_url("")).rstrip("/"), node, coop.steward, coop.alice,
                           coop.bob, TallyClient(str(server.make_url("")).rstrip("/"), retries=0))
        after = await pages(again, "bob", coop.bob, 50)
        assert after == before
        assert [p["index"] for p in after] == indexes[::-1]
        assert [p["memo"] for p in after] == [f"meal {i}" for i in reversed(range(4))]
        # and, rebuilt, they reach the table with the next flush like any others
        assert node.writer is not None
        node.writer.held_count = writer.POSTINGS_FLUSH
        last = await pay(again, 1)
        assert [idx for _, idx, _ in table(again)] == sorted([*indexes, last] * 2)
        await again.client.close()
    finally:
        await server.close()


async def test_erasing_memos_reaches_postings_not_yet_in_the_table(coop: Collective) -> None:
    await pay(coop, 3, memo="flat rent")
    await pay(coop, 4, memo="bike repair")
    assert table(coop) == []
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
