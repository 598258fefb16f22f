"""Floods and slow clients: one key flooding does not stop others, slow clients are cut off.

Rate limits are token buckets per member key (``[api]``) and per peer node key
(``[federation]``); past its burst a key gets 429 ``rate_limited`` with ``Retry-After`` and
nothing is written. Here the rates are tiny so that no token comes back during a test: the
outcomes do not depend on timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path

import aiohttp

from crypto.keys import SecretKey
from node.client import transfer_body
from node.config import ApiSettings, Config, FederationSettings
from node.server import serve
from node.service import Node, init_data_dir
from tests.node.conftest import start_collective

BURST = 5
FLOOD = 30
CONFIG = Config(
    api=ApiSettings(rate_per_key_per_second=0.001, rate_burst=BURST),
    federation=FederationSettings(peer_rate_per_second=0.001, peer_rate_burst=BURST),
)


Answer = tuple[int, dict[str, object], str | None]  # status, problem or receipt, Retry-After


async def _post(session: aiohttp.ClientSession, url: str, body: object) -> Answer:
    async with session.post(url, json=body) as resp:
        return resp.status, await resp.json(content_type=None), resp.headers.get("Retry-After")


async def test_one_member_flooding_does_not_stop_another_members_transfers(tmp_path: Path) -> None:
    server, coop = await start_collective(tmp_path, CONFIG)
    try:
        mallory = await coop.add_member("mallory")
        ledger = coop.node.ledger.ledger_id
        url = coop.url + "/v1/transfers"
        async with aiohttp.ClientSession() as session:
            flood = [_post(session, url, transfer_body(mallory, ledger, "mallory", "bob", 1))
                     for _ in range(FLOOD)]
            honest = [_post(session, url, transfer_body(coop.alice, ledger, "alice", "bob", 10))
                      for _ in range(3)]
            answers = await asyncio.gather(*flood[:15], *honest, *flood[15:])
        mallory_answers = answers[:15] + answers[18:]
        alice_answers = answers[15:18]

        assert [status for status, _, _ in alice_answers] == [201, 201, 201], alice_answers
        accepted = [a for a in mallory_answers if a[0] == 201]
        limited = [a for a in mallory_answers if a[0] == 429]
        assert len(accepted) == BURST and len(limited) == FLOOD - BURST, mallory_answers
        for _, body, retry_after in limited:
            assert body["code"] == "rate_limited" and body["status"] == 429
            assert retry_after is not None and int(retry_after) >= 1
        # A refusal wrote nothing: bob got exactly what was accepted.
        assert coop.node.ledger.accounts["bob"].balance == 3 * 10 + BURST * 1
        assert coop.node.ledger.accounts["mallory"].balance == -BURST
    finally:
        await coop.client.close()
        await server.close()


async def test_a_flooding_peer_node_is_limited_apart_from_members(tmp_path: Path) -> None:
    server, coop = await start_collective(tmp_path, CONFIG)
    try:
        stranger = SecretKey(os.urandom(32))  # a node key; any node may propose a line
        statuses = []
        async with aiohttp.ClientSession() as session:
            for _ in range(BURST + 5):
                body = b"{}"
                headers = coop.read_headers(stranger, "/v1/peer/lines", method="POST", body=body)
                async with session.post(coop.url + "/v1/peer/lines", data=body, headers={
                        **headers, "Content-Type": "application/json"}) as resp:
                    problem = await resp.json(content_type=None)
                    statuses.append((resp.status, problem["code"]))
                    if resp.status == 429:
                        assert resp.headers["Content-Type"].startswith(
                            "application/problem+json")
                        assert int(resp.headers["Retry-After"]) >= 1
            # Members, limited per their own key, still read.
            for _ in range(BURST):
                headers = coop.read_headers(coop.alice, "/v1/whoami")
                async with session.get(coop.url + "/v1/whoami", headers=headers) as resp:
                    assert resp.status == 200, await resp.text()
        # Within its burst the stranger reaches the handler (which refuses the empty body);
        # past it, every request is refused before anything is read.
        assert statuses[:BURST] == [(400, "missing_field")] * BURST, statuses
        assert statuses[BURST:] == [(429, "rate_limited")] * 5, statuses
    finally:
        await coop.client.close()
        await server.close()


async def test_a_client_that_never_finishes_its_headers_is_cut_off(tmp_path: Path) -> None:
    data = tmp_path / "node"
    await init_data_dir(data)
    node = Node(data, Config(api=ApiSettings(idle_timeout_seconds=1)))
    served = await serve(node, "127.0.0.1", 0)
    host, port = served.url.removeprefix("http://").rsplit(":", 1)
    try:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /v1/health HTTP/1.1\r\nHost: tally\r\nX-Slow: ")

        async def trickle() -> None:
            # One byte at a time, never the blank line that ends the headers.
            with contextlib.suppress(OSError):
                while True:
                    await asyncio.sleep(0.2)
                    writer.write(b"a")
                    await writer.drain()

        dripping = asyncio.create_task(trickle())
        try:
            # Generous: the configured bound is 1 s. The node closes without an answer.
            try:
                answer = await asyncio.wait_for(reader.read(), timeout=30)
            except ConnectionResetError:
                answer = b""
            assert answer == b""
        finally:
            dripping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await dripping
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

        # The node itself is fine: a prompt client is answered.
        async with aiohttp.ClientSession() as session:
            async with session.get(served.url + "/v1/health") as resp:
                assert resp.status == 200
                assert json.loads(await resp.text())["status"] == "ok"
    finally:
        await served.close()


async def _raw(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


async def _read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the node sends until it closes the connection (generous bound: 30 s)."""
    try:
        return await asyncio.wait_for(reader.read(), timeout=30)
    except ConnectionResetError:
        return b""


async def test_a_client_that_sends_its_body_slowly_gets_408_and_is_cut_off(
        tmp_path: Path) -> None:
    server, coop = await start_collective(tmp_path, Config(api=ApiSettings(
        body_timeout_seconds=1)))
    try:
        size_before = coop.node.ledger.size
        body = json.dumps(transfer_body(coop.alice, coop.node.ledger.ledger_id, "alice", "bob",
                                        10)).encode()
        reader, writer = await _raw(coop.url)
        writer.write(b"POST /v1/transfers HTTP/1.1\r\nHost: tally\r\n"
                     b"Content-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:1])

        async def trickle() -> None:
            # The rest of a valid transfer, one byte at a time: it would never finish in time.
            with contextlib.suppress(OSError):
                for byte in body[1:-1]:
                    await asyncio.sleep(0.2)
                    writer.write(bytes([byte]))
                    await writer.drain()

        dripping = asyncio.create_task(trickle())
        try:
            answer = await _read_until_closed(reader)
            # The node closed the connection while the client was still sending.
            assert not dripping.done()
        finally:
            dripping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await dripping
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

        head, _, payload = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 "), answer
        assert b"application/problem+json" in head.lower()
        assert b"connection: close" in head.lower()
        problem = json.loads(payload)
        assert problem["code"] == "request_timeout" and problem["status"] == 408
        # Nothing was applied, and the node goes on answering others.
        assert coop.node.ledger.size == size_before
        assert coop.node.ledger.accounts["bob"].balance == 0
        status, receipt, _ = await _post_once(coop.url + "/v1/transfers", transfer_body(
            coop.alice, coop.node.ledger.ledger_id, "alice", "bob", 7))
        assert status == 201, receipt
    finally:
        await coop.client.close()
        await server.close()


async def _post_once(url: str, body: object) -> Answer:
    async with aiohttp.ClientSession() as session:
        return await _post(session, url, body)


async def _get_health(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      close: bool = False) -> bytes:
    writer.write(b"GET /v1/health HTTP/1.1\r\nHost: tally\r\n"
                 + (b"Connection: close\r\n" if close else b"") + b"\r\n")
    await writer.drain()
    if close:
        return await _read_until_closed(reader)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=30)
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    return head + await asyncio.wait_for(reader.readexactly(length), timeout=30)


async def test_connections_past_the_cap_from_one_address_are_closed_at_once(
        tmp_path: Path) -> None:
    cap = 3
    data = tmp_path / "node"
    await init_data_dir(data)
    node = Node(data, Config(api=ApiSettings(max_connections_per_client=cap)))
    served = await serve(node, "127.0.0.1", 0)
    held = []
    try:
        for _ in range(cap):
            held.append(await _raw(served.url))
        # Every connection within the cap is served (so all three are open at the node).
        for reader, writer in held:
            assert (await _get_health(reader, writer)).startswith(b"HTTP/1.1 200 ")

        # One more from the same address: closed before anything is read, never answered.
        reader, writer = await _raw(served.url)
        with contextlib.suppress(OSError):
            writer.write(b"GET /v1/health HTTP/1.1\r\nHost: tally\r\n\r\n")
            await writer.drain()
        assert await _read_until_closed(reader) == b""
        writer.close()
        assert served.cap.refused >= 1
        assert served.cap.open == {"127.0.0.1": cap}

        # The client's other connections go on as before.
        for reader, writer in held:
            assert (await _get_health(reader, writer)).startswith(b"HTTP/1.1 200 ")

        # Once one of them is closed, a new connection is admitted again.
        reader, writer = held.pop()
        answer = await _get_health(reader, writer, close=True)
        assert answer.startswith(b"HTTP/1.1 200 ")
        writer.close()
        held.append(await _raw(served.url))
        assert (await _get_health(*held[-1])).startswith(b"HTTP/1.1 200 ")
    finally:
        for _, writer in held:
            writer.close()
        await served.close()
