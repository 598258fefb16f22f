"""Signed reads: who may read what, and why a captured or stale request is useless.

Every read except health, info and the OpenAPI document carries an HTTP message signature
(``crypto.httpsig``) by a member's or steward's key, made for this node, fresh, and used once.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from crypto.keys import SecretKey
from node.api import make_app
from node.client import TallyClient, TallyError, transfer_body
from node.config import Config, LedgerSettings
from node.service import Node
from tests.node.conftest import Collective, start_collective

READS = [
    "/v1/accounts/bob",
    "/v1/accounts/bob/history",
    "/v1/accounts",
    "/v1/events/{event}",
    "/v1/whoami",
]


async def pay(
    coop: Collective, payer: str, payee: str, amount: int, key: SecretKey, memo: str | None = None
) -> dict[str, Any]:
    body = transfer_body(key, coop.node.ledger.ledger_id, payer, payee, amount, memo)
    return await coop.client.submit_transfer(body)


@pytest.fixture
async def event_id(coop: Collective) -> str:
    return str((await pay(coop, "alice", "bob", 10, coop.alice))["id"])


async def get(
    session: aiohttp.ClientSession, url: str, target: str, headers: dict[str, str] | None = None
) -> tuple[int, str, dict[str, Any]]:
    async with session.get(url + target, headers=headers or {}) as resp:
        return resp.status, resp.content_type, await resp.json(content_type=None)


async def refused(
    session: aiohttp.ClientSession,
    url: str,
    target: str,
    headers: dict[str, str] | None,
    status: int,
    code: str,
) -> None:
    got_status, content_type, doc = await get(session, url, target, headers)
    assert (got_status, content_type, doc.get("code")) == (
        status,
        "application/problem+json",
        code,
    ), (target, doc)


@pytest.mark.parametrize("target", READS)
async def test_unsigned_read_is_refused(coop: Collective, event_id: str, target: str) -> None:
    path = target.format(event=event_id)
    async with aiohttp.ClientSession() as session:
        await refused(session, coop.url, path, None, 401, "signature_required")


@pytest.mark.parametrize("target", READS)
async def test_replayed_read_is_refused(coop: Collective, event_id: str, target: str) -> None:
    path = target.format(event=event_id)
    headers = coop.read_headers(coop.alice, path)
    async with aiohttp.ClientSession() as session:
        status, _, doc = await get(session, coop.url, path, headers)
        assert status == 200, doc
        await refused(session, coop.url, path, headers, 401, "replayed_request")


async def test_captured_signature_does_not_fit_another_request(coop: Collective) -> None:
    """Each failure of the signature itself is a 401 with its own code, whatever the read."""
    other_node = SecretKey(os.urandom(32)).public.key_id
    now = int(time.time())
    stranger = SecretKey(os.urandom(32))
    cases: list[tuple[str, dict[str, str], int, str]] = [
        # signed for alice's account, sent for bob's
        (
            "/v1/accounts/bob",
            coop.read_headers(coop.alice, "/v1/accounts/alice"),
            401,
            "bad_signature",
        ),
        # signed for one page size, sent with another
        (
            "/v1/accounts/bob/history?limit=500",
            coop.read_headers(coop.alice, "/v1/accounts/bob/history?limit=5"),
            401,
            "bad_signature",
        ),
        (
            "/v1/whoami",
            coop.read_headers(coop.alice, "/v1/whoami", created=now - 3600),
            401,
            "stale_request",
        ),
        (
            "/v1/whoami",
            coop.read_headers(coop.alice, "/v1/whoami", created=now + 3600),
            401,
            "stale_request",
        ),
        (
            "/v1/whoami",
            coop.read_headers(coop.alice, "/v1/whoami", recipient_key_id=other_node),
            401,
            "wrong_recipient",
        ),
        ("/v1/whoami", coop.read_headers(coop.alice, "/v1/whoami", body=b"x"), 401, "bad_digest"),
        (
            "/v1/whoami",
            {**coop.read_headers(coop.alice, "/v1/whoami"), "Signature": "tally=:x:"},
            401,
            "malformed_signature",
        ),
        ("/v1/whoami", coop.read_headers(stranger, "/v1/whoami"), 403, "unknown_signer"),
    ]
    before = await coop.dump_unprompted()
    async with aiohttp.ClientSession() as session:
        for target, headers, status, code in cases:
            await refused(session, coop.url, target, headers, status, code)
    assert await coop.dump_unprompted() == before  # no nonce of a refused signature was remembered


@pytest.mark.parametrize("target", READS)
async def test_stale_wrong_recipient_and_stranger_are_refused(
    coop: Collective, event_id: str, target: str
) -> None:
    path = target.format(event=event_id)
    now = int(time.time())
    other_node = SecretKey(os.urandom(32)).public.key_id
    async with aiohttp.ClientSession() as session:
        stale = coop.read_headers(coop.alice, path, created=now - 3600)
        await refused(session, coop.url, path, stale, 401, "stale_request")
        misdirected = coop.read_headers(coop.alice, path, recipient_key_id=other_node)
        await refused(session, coop.url, path, misdirected, 401, "wrong_recipient")
        stranger = coop.read_headers(SecretKey(os.urandom(32)), path)
        await refused(session, coop.url, path, stranger, 403, "unknown_signer")


async def test_closed_members_key_no_longer_reads(coop: Collective) -> None:
    carol = await coop.add_member("carol")
    async with aiohttp.ClientSession() as session:
        status, _, doc = await get(
            session, coop.url, "/v1/whoami", coop.read_headers(carol, "/v1/whoami")
        )
        assert (status, doc["handle"]) == (200, "carol")
        await coop.client.act("close", [coop.steward], handle="carol")
        await refused(
            session,
            coop.url,
            "/v1/whoami",
            coop.read_headers(carol, "/v1/whoami"),
            403,
            "unknown_signer",
        )


async def test_nonce_is_remembered_across_a_restart(tmp_path: Path) -> None:
    server, coop = await start_collective(tmp_path)
    headers = coop.read_headers(coop.alice, "/v1/whoami")
    async with aiohttp.ClientSession() as session:
        try:
            status, _, doc = await get(session, coop.url, "/v1/whoami", headers)
            assert (status, doc["handle"]) == (200, "alice")
            await server.close()
            node = Node(coop.node.data_dir, coop.node.config)
            server = TestServer(make_app(node), host="127.0.0.1")
            await server.start_server()
            url = str(server.make_url("")).rstrip("/")
            await refused(session, url, "/v1/whoami", headers, 401, "replayed_request")
            fresh = coop.read_headers(coop.alice, "/v1/whoami")
            status, _, doc = await get(session, url, "/v1/whoami", fresh)
            assert (status, doc["handle"]) == (200, "alice")
        finally:
            await coop.client.close()
            await server.close()


async def test_whoami_names_member_and_steward(coop: Collective) -> None:
    async with coop.as_member(coop.alice) as alice, coop.as_member(coop.steward) as steward:
        assert await alice.whoami() == {
            "key": coop.alice.public.text,
            "handle": "alice",
            "steward": False,
        }
        assert await steward.whoami() == {
            "key": coop.steward.public.text,
            "handle": None,
            "steward": True,
        }


async def test_open_books_members_read_each_other(coop: Collective, event_id: str) -> None:
    async with coop.as_member(coop.alice) as alice:
        bob = await alice.account("bob")
        assert (bob["handle"], bob["balance"], bob["credit_limit"]) == ("bob", 10, 1000)
        assert [p["amount"] for p in await alice.history("bob")] == [10]
        assert {a["handle"]: a["balance"] for a in await alice.accounts()} == {
            "alice": -10,
            "bob": 10,
        }
        event = await alice.event(event_id)
        assert (event["payer"], event["payee"], event["amount"]) == ("alice", "bob", 10)


@pytest.fixture
async def private_coop(tmp_path: Path) -> AsyncIterator[Collective]:
    server, collective = await start_collective(
        tmp_path, Config(ledger=LedgerSettings(books="private"))
    )
    try:
        yield collective
    finally:
        await collective.client.close()
        await server.close()


async def test_private_books_members_read_only_themselves(private_coop: Collective) -> None:
    coop = private_coop
    carol = await coop.add_member("carol")
    theirs = (await pay(coop, "bob", "carol", 4, coop.bob))["id"]
    mine = (await pay(coop, "alice", "bob", 3, coop.alice))["id"]
    async with aiohttp.ClientSession() as session:

        async def read(key: SecretKey, target: str) -> tuple[int, dict[str, Any]]:
            status, _, doc = await get(session, coop.url, target, coop.read_headers(key, target))
            return status, doc

        for target in (
            "/v1/accounts/bob",
            "/v1/accounts/bob/history",
            "/v1/accounts",
            f"/v1/events/{theirs}",
        ):
            status, doc = await read(coop.alice, target)
            assert (status, doc["code"]) == (403, "forbidden"), target
            status, doc = await read(coop.steward, target)
            assert status == 200, (target, doc)
        assert (await read(coop.alice, "/v1/accounts/alice"))[1]["balance"] == -3
        history = (await read(coop.alice, "/v1/accounts/alice/history"))[1]
        assert [(p["amount"], p["counterparty"]) for p in history["postings"]] == [(-3, "bob")]
        assert (await read(coop.alice, f"/v1/events/{mine}"))[1]["amount"] == 3
        assert (await read(carol, f"/v1/events/{theirs}"))[1]["payer"] == "bob"
        listing = (await read(coop.steward, "/v1/accounts"))[1]
        assert {a["handle"]: a["balance"] for a in listing["accounts"]} == {
            "alice": -3,
            "bob": -1,
            "carol": 4,
        }


async def test_history_pages_cover_every_posting_once_newest_first(coop: Collective) -> None:
    carol = await coop.add_member("carol")
    keys = {"alice": coop.alice, "bob": coop.bob, "carol": carol}
    expected: list[tuple[int, int, str, str]] = []  # (index, alice's amount, counterparty, memo)
    for i in range(25):
        other = "bob" if i % 3 else "carol"
        amount = 10 + i
        memo = f"job {i}: é ✓"
        if i % 2:
            receipt = await pay(coop, "alice", other, amount, coop.alice, memo)
            expected.append((receipt["index"], -amount, other, memo))
        else:
            receipt = await pay(coop, other, "alice", amount, keys[other], memo)
            expected.append((receipt["index"], amount, other, memo))
        if i == 12:  # a transfer alice is not part of must not appear in her history
            await pay(coop, "bob", "carol", 1, coop.bob)
    expected.sort(reverse=True)

    seen: list[dict[str, Any]] = []
    pages = []
    cursor = None
    async with coop.as_member(coop.bob) as bob:
        while True:
            page = await bob.history_page("alice", cursor, limit=10)
            assert page["handle"] == "alice"
            pages.append(len(page["postings"]))
            seen.extend(page["postings"])
            cursor = page["next"]
            if cursor is None:
                break
            assert len(pages) < 10, "pagination does not end"
    assert pages == [10, 10, 5]
    assert [(p["index"], p["amount"], p["counterparty"], p["memo"]) for p in seen] == expected
    assert len({p["id"] for p in seen}) == 25


@pytest.mark.parametrize(
    "query", ["limit=0", "limit=501", "limit=ten", "limit=-1", "cursor=-5", "limit=" + "9" * 5000]
)
async def test_bad_history_query_is_a_400(coop: Collective, query: str) -> None:
    target = f"/v1/accounts/alice/history?{query}"
    async with aiohttp.ClientSession() as session:
        await refused(
            session, coop.url, target, coop.read_headers(coop.alice, target), 400, "invalid_field"
        )


async def test_reading_an_unknown_account_or_event_is_a_404(coop: Collective) -> None:
    async with TallyClient(coop.url, coop.alice, retries=0) as alice:
        for read, code in (
            (lambda: alice.account("zed"), "account_not_found"),
            (lambda: alice.history_page("zed"), "account_not_found"),
            (lambda: alice.event("0" * 32), "not_found"),
        ):
            with pytest.raises(TallyError) as err:
                await read()
            assert (err.value.status, err.value.code) == (404, code)
