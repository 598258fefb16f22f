"""The verifiable log as its users meet it: a generic tlog client, prompt checkpoints, the
tiles' caching, refusals of bad tile and proof requests, who may read entries, offline
tlog-proofs, erasing memos, and a node that refuses to sign after an old backup is restored.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from crypto import merkle
from crypto.canonical import parse_json
from crypto.checkpoint import Checkpoint, parse_checkpoint
from crypto.keys import SecretKey
from crypto.note import format_verifier_key, open_note, parse_verifier_key
from crypto.tiles import (
    TILE_WIDTH,
    Tile,
    TileError,
    bundle_tile_data,
    decode_entry_bundle,
    hashes_from_tiles,
    tile_path,
    tiles_for_size,
)
from crypto.tlogproof import TlogProofError, verify_tlog_proof
from node import storage
from node.audit import audit_log, http_source
from node.checkpoints import ForkRefused
from node.cli import main as cli_main
from node.client import TallyError, transfer_body
from node.config import ApiSettings, Config, LedgerSettings, LogSettings, StorageSettings
from node.service import Node
from protocol.messages import Transfer, parse_log_entry
from tests.node.conftest import Collective, start_collective

FAST = LogSettings(checkpoint_delay_ms=100)
UNLIMITED = ApiSettings(rate_per_key_per_second=1e6, rate_burst=1_000_000)


def config(**log: Any) -> Config:
    return Config(log=LogSettings(checkpoint_delay_ms=100, **log), api=UNLIMITED)


@contextlib.asynccontextmanager
async def collective(tmp_path: Path, cfg: Config | None = None) -> AsyncIterator[Collective]:
    server, coop = await start_collective(tmp_path, cfg or config())
    try:
        yield coop
    finally:
        await coop.client.close()
        await server.close()


def body(coop: Collective, payer: str, payee: str, amount: int, key: SecretKey,
         memo: str | None = None) -> dict[str, Any]:
    return transfer_body(key, coop.node.ledger.ledger_id, payer, payee, amount, memo)


async def pay(coop: Collective, payer: str, payee: str, amount: int, key: SecretKey,
              memo: str | None = None) -> dict[str, Any]:
    receipt = await coop.client.submit_transfer(body(coop, payer, payee, amount, key, memo))
    assert receipt["result"] == "ok", receipt
    return receipt


async def pay_many(coop: Collective, n: int) -> int:
    """``n`` small transfers back and forth in one batch; returns the log size after."""
    bodies = [
        body(coop, "alice", "bob", 1, coop.alice) if i % 2 == 0
        else body(coop, "bob", "alice", 1, coop.bob)
        for i in range(n)
    ]
    doc = await coop.client.submit_batch(bodies)
    assert doc["accepted"] == n, doc
    return coop.node.ledger.size


async def served_checkpoint(session: aiohttp.ClientSession, url: str) -> Checkpoint:
    """The checkpoint the node serves now, its signature checked with the served key."""
    async with session.get(url + "/log/vkey") as resp:
        verifier = parse_verifier_key((await resp.text()).strip())
    async with session.get(url + "/log/checkpoint") as resp:
        assert resp.status == 200, await resp.text()
        return parse_checkpoint(open_note(await resp.read(), [verifier]).text)


async def wait_covered(url: str, size: int, timeout: float = 10.0) -> Checkpoint:
    """Poll until a signed checkpoint covers ``size`` entries; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(url + "/log/checkpoint") as resp:
                ready = resp.status == 200
            if ready:
                cp = await served_checkpoint(session, url)
                if cp.size >= size:
                    return cp
            assert time.monotonic() < deadline, f"no checkpoint covering {size} entries"
            await asyncio.sleep(0.01)


def stored_checkpoints(coop: Collective) -> int:
    db = sqlite3.connect(f"file:{coop.node.data_dir / storage.DB_FILE}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0])
    finally:
        db.close()


def log_rows(coop: Collective) -> list[tuple[int, bytes]]:
    db = sqlite3.connect(f"file:{coop.node.data_dir / storage.DB_FILE}?mode=ro", uri=True)
    try:
        return [(int(i), bytes(e)) for i, e in db.execute("SELECT idx, entry FROM log ORDER BY idx")]
    finally:
        db.close()


# --- a generic tlog client: knows C2SP, not Tally ----------------------------------------------


class GenericTlogClient:
    """Plain GETs under /log/ and the crypto primitives: nothing Tally-specific."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session, self.base = session, url + "/log/"

    async def get(self, path: str) -> bytes:
        async with self.session.get(self.base + path) as resp:
            assert resp.status == 200, (path, resp.status, await resp.text())
            return await resp.read()

    async def checkpoint(self) -> tuple[str, Checkpoint]:
        vkey = (await self.get("vkey")).decode().strip()
        verifier = parse_verifier_key(vkey)
        cp = parse_checkpoint(open_note(await self.get("checkpoint"), [verifier]).text)
        assert cp.origin == verifier.name
        return vkey, cp

    async def leaf_hashes(self, cp: Checkpoint) -> list[bytes]:
        """Every leaf hash, read out of hash tiles authenticated against the signed root."""
        tiles = {t: await self.get(tile_path(t)) for t in tiles_for_size(cp.size)}
        leaves = [merkle.stored_hash_index(0, i) for i in range(cp.size)]
        return hashes_from_tiles(cp.size, cp.root, leaves, tiles)

    async def entries(self, cp: Checkpoint) -> list[bytes]:
        out: list[bytes] = []
        for t in tiles_for_size(cp.size):
            if t.level != 0:
                continue
            bundle = decode_entry_bundle(await self.get(tile_path(Tile(-1, t.index, t.width))),
                                         t.width)
            assert bundle_tile_data(bundle) == await self.get(tile_path(t))
            out += bundle
        return out


async def test_generic_tlog_client_verifies_checkpoint_tiles_and_entries(tmp_path: Path) -> None:
    async with collective(tmp_path, config(public_entries=True)) as coop:
        size = await pay_many(coop, 300)  # a full level-0 tile, a partial one, and level 1
        await wait_covered(coop.url, size)
        async with aiohttp.ClientSession() as session:
            tlog = GenericTlogClient(session, coop.url)
            vkey, cp = await tlog.checkpoint()
            assert cp.size >= size > TILE_WIDTH
            assert {t.level for t in tiles_for_size(cp.size)} == {0, 1}
            leaves = await tlog.leaf_hashes(cp)
            entries = await tlog.entries(cp)

            # Tiles that do not hash to the signed root are caught by the same client.
            level0 = Tile(0, 0)
            tiles = {t: await tlog.get(tile_path(t)) for t in tiles_for_size(cp.size)}
            tiles[level0] = bytes(32) + tiles[level0][32:]
            with pytest.raises(TileError):
                hashes_from_tiles(cp.size, cp.root, [0], tiles)

        assert len(entries) == cp.size
        assert [merkle.leaf_hash(e) for e in entries] == leaves
        # ...and they are the very entries the node keeps, genesis first.
        assert entries == [e for _, e in log_rows(coop)][: cp.size]
        assert parse_log_entry(parse_json(entries[0])).payload.msg.type == "genesis"
        assert vkey.startswith(f"tally/{coop.node.ledger.ledger_id}+")


# --- checkpoints: prompt, and not one per entry ------------------------------------------------


async def test_every_entry_is_covered_by_a_checkpoint_within_about_the_delay(tmp_path: Path) -> None:
    async with collective(tmp_path) as coop:
        waits = []
        for n in range(15):
            receipt = await pay(coop, "alice", "bob", 1 + n, coop.alice)
            start = time.monotonic()
            cp = await wait_covered(coop.url, receipt["index"] + 1)
            waits.append(time.monotonic() - start)
            assert cp.size >= receipt["index"] + 1
            await asyncio.sleep(0.01 * (n % 4))
        # The delay is 100 ms; allow a slow machine twenty times that.
        assert max(waits) < 2.0, waits


async def test_a_burst_of_transfers_is_signed_in_one_checkpoint(tmp_path: Path) -> None:
    """The node signs on a timer, not per entry: however many entries are committed while
    the checkpointer waits out its delay, the next checkpoint covers them all at once."""
    # synchronous=NORMAL: commits without fsync, so the burst is quick and commits are many.
    cfg = Config(api=UNLIMITED, storage=StorageSettings(synchronous="NORMAL"))
    async with collective(tmp_path, cfg) as coop:
        await wait_covered(coop.url, coop.node.ledger.size)
        writer, checkpointer = coop.node.writer, coop.node.checkpointer
        assert writer is not None and checkpointer is not None
        # The checkpointer's delay lasts until the test says: no clock in this test.
        delay_over, waiting = asyncio.Event(), asyncio.Event()

        async def held(_seconds: float) -> None:
            waiting.set()
            await delay_over.wait()

        checkpointer.pause = held
        # One transfer wakes it; once it waits in our delay (any delay it was already in has
        # ended, and what it signed then is counted before), the burst begins.
        await pay(coop, "alice", "bob", 1, coop.alice)
        await asyncio.wait_for(waiting.wait(), 10)
        commits_before, checkpoints_before = writer.commits, stored_checkpoints(coop)
        gate = asyncio.Semaphore(4)

        async def one(i: int) -> int:
            async with gate:
                if i % 2:
                    return int((await pay(coop, "bob", "alice", 1, coop.bob))["index"])
                return int((await pay(coop, "alice", "bob", 1, coop.alice))["index"])

        indexes = await asyncio.gather(*(one(i) for i in range(500)))
        commits = writer.commits - commits_before
        # At most four transfers are in flight, so there were at least 125 commits...
        assert commits >= 125, commits
        # ...and not one checkpoint while the delay lasted.
        assert stored_checkpoints(coop) == checkpoints_before
        delay_over.set()
        cp = await wait_covered(coop.url, max(indexes) + 1)
        assert cp.size == coop.node.ledger.size == max(indexes) + 1
        assert stored_checkpoints(coop) == checkpoints_before + 1


# --- HTTP details: caching, content types, refusals ---------------------------------------------


def max_age(cache_control: str) -> int:
    for part in cache_control.split(","):
        part = part.strip()
        if part.startswith("max-age="):
            return int(part[len("max-age="):])
    raise AssertionError(f"no max-age in {cache_control!r}")


async def test_caching_headers_and_content_types(tmp_path: Path) -> None:
    async with collective(tmp_path, config(public_entries=True)) as coop:
        size = await pay_many(coop, 260)
        await wait_covered(coop.url, size)
        async with aiohttp.ClientSession() as session:

            async def head(path: str) -> tuple[str, str]:
                async with session.get(coop.url + path) as resp:
                    assert resp.status == 200, (path, await resp.text())
                    await resp.read()
                    return resp.headers["Content-Type"], resp.headers.get("Cache-Control", "")

            ctype, cache = await head("/log/checkpoint")
            assert ctype.replace(" ", "").lower() == "text/plain;charset=utf-8"
            assert "immutable" not in cache and max_age(cache) <= 10

            ctype, cache = await head("/log/vkey")
            assert ctype.startswith("text/plain")

            for path in ("/log/tile/0/000", "/log/tile/entries/000"):
                ctype, cache = await head(path)
                assert ctype == "application/octet-stream"
                assert "immutable" in cache and max_age(cache) >= 86400, (path, cache)

            cp = await served_checkpoint(session, coop.url)
            partial = cp.size - TILE_WIDTH
            for path in (f"/log/tile/0/001.p/{partial}", f"/log/tile/entries/001.p/{partial}",
                         "/log/tile/1/000.p/1"):
                ctype, cache = await head(path)
                assert ctype == "application/octet-stream"
                assert "immutable" not in cache and max_age(cache) <= 10, (path, cache)

            async with session.get(coop.url + "/v1/log/proof/1") as resp:
                assert resp.status == 200
                assert resp.content_type == "text/plain"
            async with session.get(coop.url + "/v1/log/checkpoint") as resp:
                assert resp.content_type == "application/json"


async def test_entry_bundles_behind_signatures_are_not_publicly_cacheable(tmp_path: Path) -> None:
    """A bundle served only to members must not be stored by shared caches for anyone."""
    async with collective(tmp_path) as coop:
        size = await pay_many(coop, 260)
        await wait_covered(coop.url, size)
        async with aiohttp.ClientSession() as session:
            for path in ("/log/tile/entries/000", "/log/tile/entries/001.p/1"):
                headers = coop.read_headers(coop.alice, path)
                async with session.get(coop.url + path, headers=headers) as resp:
                    assert resp.status == 200, await resp.text()
                    cache = resp.headers.get("Cache-Control", "")
                    assert "public" not in cache and "private" in cache, cache
            # The hash tiles beside them stay public.
            async with session.get(coop.url + "/log/tile/0/000") as resp:
                assert resp.headers["Cache-Control"].startswith("public")


SUPERSCRIPT_TWO = "%C2%B2"  # "²": str.isdigit() says yes, int() says no
HUGE = "9" * 5000  # beyond int()'s default digit limit


async def test_bad_tile_and_proof_requests_are_4xx_problems(tmp_path: Path) -> None:
    async with collective(tmp_path) as coop:
        receipt = await pay(coop, "alice", "bob", 5, coop.alice)
        size = receipt["index"] + 1
        await wait_covered(coop.url, size)
        assert coop.node.ledger.size == size < 20
        public = [
            "/log/tile/0/001",  # canonical, but beyond the checkpoint
            f"/log/tile/0/000.p/{size + 1}",
            "/log/tile/0/000",
            "/log/tile/1/000.p/1",
            "/log/tile/entries/001",
            "/log/tile/0/x001",
            "/log/tile/0/x000/001",
            "/log/tile/0/0001",
            "/log/tile/0/000.p/0",
            "/log/tile/0/000.p/256",
            "/log/tile/0/000.p/01",
            "/log/tile/0/000.p/",
            "/log/tile/99/000",
            "/log/tile/64/000",
            "/log/tile/63/000.p/1",
            "/log/tile/-1/000",
            "/log/tile/01/000",
            "/log/tile/0/000/",
            "/log/tile/0/x009/x223/x372/x036/x854/x775/807",
            "/log/tile/0/x999/x999/x999/x999/x999/x999/999",
            "/log/tile/0/x001/x002/x003/x004/x005/x006/x007/008",
            f"/log/tile/0/{SUPERSCRIPT_TWO}{SUPERSCRIPT_TWO}{SUPERSCRIPT_TWO}",
            "/log/tile/x/000",
            "/v1/log/inclusion",
            "/v1/log/inclusion?index=-1",
            "/v1/log/inclusion?index=abc",
            "/v1/log/inclusion?index=",
            "/v1/log/inclusion?index=1.0",
            f"/v1/log/inclusion?index={SUPERSCRIPT_TWO}",
            f"/v1/log/inclusion?index={HUGE}",
            f"/v1/log/inclusion?index={size}",
            f"/v1/log/inclusion?index=0&size={size + 1}",
            "/v1/log/inclusion?index=0&size=0",
            "/v1/log/inclusion?index=3&size=2",
            "/v1/log/inclusion?index=0&size=-5",
            f"/v1/log/inclusion?index=0&size={SUPERSCRIPT_TWO}",
            f"/v1/log/inclusion?index=0&size={HUGE}",
            "/v1/log/inclusion?index=0&size=99999999999999999999999",
            "/v1/log/consistency",
            "/v1/log/consistency?old=0",
            "/v1/log/consistency?old=-1",
            "/v1/log/consistency?old=3&new=2",
            f"/v1/log/consistency?old=1&new={size + 1}",
            f"/v1/log/consistency?old={size + 1}",
            f"/v1/log/consistency?old={SUPERSCRIPT_TWO}",
            f"/v1/log/consistency?old={HUGE}",
            f"/v1/log/consistency?old=1&new={HUGE}",
            "/v1/log/consistency?old=1&new=0",
            "/v1/log/consistency?old=x&new=y",
            "/v1/log/proof/-1",
            "/v1/log/proof/abc",
            "/v1/log/proof/1.0",
            f"/v1/log/proof/{size}",
            "/v1/log/proof/99999999999999999999999",
            f"/v1/log/proof/{SUPERSCRIPT_TWO}",
            f"/v1/log/proof/{HUGE}",
        ]
        signed = [
            f"/v1/log/entries/{HUGE}",
            f"/v1/log/entries/{size}",
            "/v1/log/entries/99999999999999999999999",
            "/v1/log/entries/-1",
            "/v1/log/entries/abc",
        ]
        failures = []
        async with aiohttp.ClientSession() as session:

            async def check(path: str, headers: dict[str, str] | None = None) -> None:
                async with session.get(URL(coop.url + path, encoded=True), headers=headers) as resp:
                    text = await resp.text()
                    if not (400 <= resp.status < 500
                            and resp.content_type == "application/problem+json"):
                        failures.append((path[:80], resp.status, resp.content_type, text[:200]))

            for path in public:
                await check(path)
            for path in signed:
                await check(path, coop.read_headers(coop.alice, path))
                await check(path)  # unsigned: 401, still a problem
            # The same endpoints answer good requests, so the refusals above are about the input.
            for path in (f"/log/tile/0/000.p/{size}", f"/v1/log/inclusion?index=0&size={size}",
                         f"/v1/log/consistency?old=1&new={size}", f"/v1/log/proof/{size - 1}"):
                async with session.get(coop.url + path) as resp:
                    assert resp.status == 200, (path, await resp.text())
            good = f"/v1/log/entries/{size - 1}"
            async with session.get(coop.url + good, headers=coop.read_headers(coop.alice, good)) as resp:
                assert resp.status == 200, await resp.text()
        assert not failures, "\n".join(f"{p} -> {s} {t}: {b[:60]}" for p, s, t, b in failures)


# --- who reads entries --------------------------------------------------------------------------


async def get_status(session: aiohttp.ClientSession, coop: Collective, path: str,
                     key: SecretKey | None) -> tuple[int, bytes]:
    headers = coop.read_headers(key, path) if key is not None else None
    async with session.get(coop.url + path, headers=headers) as resp:
        return resp.status, await resp.read()


async def test_entries_need_a_members_signature_when_the_log_is_not_public(tmp_path: Path) -> None:
    async with collective(tmp_path) as coop:
        receipt = await pay(coop, "alice", "bob", 5, coop.alice)
        size = receipt["index"] + 1
        await wait_covered(coop.url, size)
        bundle = f"/log/tile/entries/000.p/{size}"
        async with aiohttp.ClientSession() as session:
            status, raw = await get_status(session, coop, bundle, None)
            assert status == 401, raw
            status, raw = await get_status(session, coop, f"/v1/log/entries/{size - 1}", None)
            assert status == 401, raw
            status, raw = await get_status(session, coop, bundle, coop.bob)
            assert status == 200, raw
            entries = decode_entry_bundle(raw, size)
            msg = parse_log_entry(parse_json(entries[-1])).payload.msg
            assert isinstance(msg, Transfer) and msg.id == receipt["id"]
            # The hash tiles stay public: anyone can check the signed root.
            status, _ = await get_status(session, coop, f"/log/tile/0/000.p/{size}", None)
            assert status == 200


async def test_private_books_members_read_only_their_own_entries(tmp_path: Path) -> None:
    cfg = Config(log=FAST, api=UNLIMITED, ledger=LedgerSettings(books="private"))
    async with collective(tmp_path, cfg) as coop:
        carol = await coop.add_member("carol")
        mine = (await pay(coop, "alice", "bob", 5, coop.alice))["index"]
        theirs = (await pay(coop, "bob", "carol", 7, coop.bob))["index"]
        size = theirs + 1
        await wait_covered(coop.url, size)
        bundle = f"/log/tile/entries/000.p/{size}"
        async with aiohttp.ClientSession() as session:
            status, raw = await get_status(session, coop, bundle, coop.alice)
            assert status == 403, raw
            status, raw = await get_status(session, coop, f"/v1/log/entries/{theirs}", coop.alice)
            assert status == 403, raw
            status, raw = await get_status(session, coop, f"/v1/log/entries/{mine}", coop.alice)
            assert status == 200, raw
            doc = parse_json(raw)
            entry = base64.b64decode(doc["entry"])
            assert base64.b64decode(doc["leaf_hash"]) == merkle.leaf_hash(entry)
            msg = parse_log_entry(parse_json(entry)).payload.msg
            assert isinstance(msg, Transfer) and msg.payer == "alice"
            status, raw = await get_status(session, coop, f"/v1/log/entries/{theirs}", carol)
            assert status == 200, raw
            # The steward reads everything.
            status, raw = await get_status(session, coop, bundle, coop.steward)
            assert status == 200, raw
            assert decode_entry_bundle(raw, size) == [e for _, e in log_rows(coop)][:size]
            status, raw = await get_status(session, coop, f"/v1/log/entries/{theirs}", coop.steward)
            assert status == 200, raw


# --- offline proof ----------------------------------------------------------------------------


async def test_tlog_proof_for_a_receipt_verifies_offline(tmp_path: Path) -> None:
    async with collective(tmp_path) as coop:
        receipt = await pay(coop, "alice", "bob", 42, coop.alice)
        other = await pay(coop, "bob", "alice", 2, coop.bob)
        index = receipt["index"]
        await wait_covered(coop.url, other["index"] + 1)
        async with aiohttp.ClientSession() as session:
            vkey = (await (await session.get(coop.url + "/log/vkey")).text()).strip()
            async with session.get(f"{coop.url}/v1/log/proof/{index}") as resp:
                assert resp.status == 200
                bundle = await resp.read()
        async with coop.as_member(coop.alice) as alice:
            entry = base64.b64decode((await alice.get_json(f"/v1/log/entries/{index}", True))["entry"])
            other_entry = base64.b64decode(
                (await alice.get_json(f"/v1/log/entries/{other['index']}", True))["entry"])
        origin = f"tally/{coop.node.ledger.ledger_id}"
    # The node is gone: the bundle, the entry and the key are all it takes.
    verifier = parse_verifier_key(vkey)
    verified = verify_tlog_proof(bundle, merkle.leaf_hash(entry), origin, [verifier])
    assert verified.checkpoint.size > index
    msg = parse_log_entry(parse_json(entry)).payload.msg
    assert isinstance(msg, Transfer)
    assert (msg.id, msg.payer, msg.payee, msg.amount) == (receipt["id"], "alice", "bob", 42)
    with pytest.raises(TlogProofError):
        verify_tlog_proof(bundle, merkle.leaf_hash(other_entry), origin, [verifier])
    stranger = SecretKey(hashlib.sha256(b"another log").digest()).public.raw
    with pytest.raises(TlogProofError):
        verify_tlog_proof(bundle, merkle.leaf_hash(entry), origin,
                          [parse_verifier_key(format_verifier_key(origin, 0x01, stranger))])


# --- erasing memos ------------------------------------------------------------------------------


def run_cli(argv: list[str]) -> int:
    try:
        return cli_main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


async def test_erase_memos_leaves_the_log_intact(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with collective(tmp_path) as coop:
        carol = await coop.add_member("carol")
        await pay(coop, "alice", "bob", 5, coop.alice, memo="alice's garden")
        await pay(coop, "bob", "alice", 3, coop.bob, memo="bread for alice")
        await pay(coop, "bob", "carol", 2, coop.bob, memo="carol's bike")
        size = coop.node.ledger.size
        before_cp = await wait_covered(coop.url, size)
        before = log_rows(coop)

        async with coop.as_member(coop.bob) as bob:
            memos = {p["memo"] for p in await bob.history("bob")}
            assert memos == {"alice's garden", "bread for alice", "carol's bike"}
        async with coop.as_member(coop.alice) as alice:
            with pytest.raises(TallyError) as refused:
                await alice.erase_memos("alice")
            assert (refused.value.status, refused.value.code) == (403, "forbidden")
            assert {p["memo"] for p in await alice.history("alice")} == {
                "alice's garden", "bread for alice"}

        home = tmp_path / "steward-home"
        code = await asyncio.to_thread(run_cli, [
            "member", "erase-memos", "alice", "--steward-key",
            str(coop.node.data_dir / "steward.key"), "--node", coop.url, "--home", str(home)])
        out = capsys.readouterr()
        assert code == 0, out.err
        assert "Erased 2 memo(s) of alice" in out.out

        async with coop.as_member(coop.alice) as alice:
            assert [p["memo"] for p in await alice.history("alice")] == [None, None]
        async with coop.as_member(carol) as carol_client:
            assert [p["memo"] for p in await carol_client.history("carol")] == ["carol's bike"]
        assert log_rows(coop) == before
        assert (await wait_covered(coop.url, size)).root == before_cp.root
        async with coop.as_member(coop.steward) as steward:
            report = await audit_log(http_source(steward), vkey=None,
                                     served_accounts=steward.accounts)
        assert report.passed, report.checks
        assert report.size == size


# --- restoring an old backup ------------------------------------------------------------------


async def test_node_refuses_to_sign_after_an_old_backup_is_restored(tmp_path: Path) -> None:
    data = tmp_path / "node"
    backup = tmp_path / "backup.sqlite"
    async with collective(tmp_path) as coop:
        await pay(coop, "alice", "bob", 5, coop.alice)
        old_size = coop.node.ledger.size
        await wait_covered(coop.url, old_size)
        src = sqlite3.connect(data / storage.DB_FILE)
        dst = sqlite3.connect(backup)
        try:
            src.backup(dst)  # SQLite's online backup, while the node runs
        finally:
            dst.close()
            src.close()
        for n in range(3):
            await pay(coop, "bob", "alice", 1 + n, coop.bob)
        await wait_covered(coop.url, old_size + 3)
    assert parse_checkpoint((data / "checkpoint.last").read_bytes().decode().split("\n\n")[0]
                            + "\n").size > old_size

    shutil.copyfile(backup, data / storage.DB_FILE)
    for leftover in ("-wal", "-shm"):
        (data / (storage.DB_FILE + leftover)).unlink(missing_ok=True)

    node = Node(data, config())
    try:
        with pytest.raises(ForkRefused) as refused:
            await node.start()
    finally:
        await node.stop()
    message = str(refused.value)
    assert f"the log has {old_size} entries" in message
    assert "Restore the newest copy" in message

    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "node", "node", "run", "--data", str(data),
         "--listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=30, cwd=tmp_path,
    )
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "Restore the newest copy" in proc.stderr, proc.stderr
    assert f"the log has {old_size} entries" in proc.stderr
    # Nothing was signed over the restored copy.
    db = sqlite3.connect(data / storage.DB_FILE)
    try:
        assert db.execute("SELECT MAX(idx) + 1 FROM log").fetchone()[0] == old_size
        assert db.execute("SELECT MAX(size) FROM checkpoints").fetchone()[0] <= old_size
    finally:
        db.close()
