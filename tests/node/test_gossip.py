"""Gossip between real nodes on loopback: learning each other, refusing bad input, evidence,
and peers that answer slowly or never."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from crypto.keys import SecretKey
from node.client import TallyClient, TallyError
from node.config import Config, GossipSettings
from protocol.evidence import Equivocation, verify_equivocation
from protocol.messages import Signature, Signed
from tests.node.conftest import Collective, start_collective
from tests.node.test_openapi import Contract, served_document
from tests.protocol.gossip_helpers import checkpoint, record, vkey_of

QUIET = GossipSettings(period_ms=600_000, jitter_ms=0, max_digest_entries=50, timeout_ms=500,
                       max_message_bytes=65536)


async def start(path: Path, cfg: Config) -> tuple[TestServer, Collective]:
    """A collective whose node knows the URL it is served at (as ``tally node run`` does)."""
    server, coop = await start_collective(path, cfg)
    coop.node.public_url = coop.url
    return server, coop


def config(**gossip: Any) -> Config:
    settings = {**QUIET.__dict__, **gossip}
    return Config(gossip=GossipSettings(**settings))


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Collective, Collective]]:
    servers = []
    coops = []
    for name in ("a", "b"):
        server, coop = await start(tmp_path / name, config())
        servers.append(server)
        coops.append(coop)
    try:
        yield coops[0], coops[1]
    finally:
        for coop in coops:
            await coop.client.close()
        for server in servers:
            await server.close()


def gossip_of(coop: Collective) -> Any:
    assert coop.node.gossip is not None
    return coop.node.gossip


async def push(coop: Collective, update: dict[str, Any], key: SecretKey | None = None) -> Any:
    """A signed push from some node (a fresh key unless given)."""
    async with TallyClient(coop.url, key or SecretKey(os.urandom(32)), retries=0) as client:
        return (await client._request("POST", "/v1/gossip/push", {"update": update},
                                      signed=True, idempotent=False))[1]


def update(records: list[Any] | None = None, evidence: list[Any] | None = None
           ) -> dict[str, Any]:
    return {"records": records or [], "checkpoints": [], "evidence": evidence or []}


async def test_two_nodes_learn_each_other_in_one_exchange(pair: tuple[Collective, Collective]
                                                          ) -> None:
    a, b = pair
    await gossip_of(a).publish()
    await gossip_of(b).publish()
    await gossip_of(a).exchange(b.url, None)
    contract = Contract(await served_document(a))
    async with aiohttp.ClientSession() as session:
        for coop, other in ((a, b), (b, a)):
            async with session.get(coop.url + "/v1/gossip/nodes") as resp:
                doc = await resp.json()
                contract.check("GET", "/v1/gossip/nodes", resp.status, resp.content_type, doc)
            known = {n["key"]: n for n in doc["nodes"]}
            other_key = other.node.node_key.public.text
            assert known[other_key]["urls"] == [other.url]
            assert known[other_key]["name"] == "Test Co-op" and not known[other_key]["stale"]


async def test_forged_stale_and_impostor_records_are_refused(pair: tuple[Collective, Collective]
                                                             ) -> None:
    a, _ = pair
    x, y = SecretKey(os.urandom(32)), SecretKey(os.urandom(32))
    now = a.node.clock_ms()
    assert (await push(a, update([record(x, 5, issued=now).to_json()])))["merged"] == 1
    cases = []
    tampered = record(x, 6, issued=now).to_json()
    tampered["msg"]["name"] = "evil"
    cases.append((tampered, "bad_signature"))
    cases.append((record(x, 4, issued=now).to_json(), "stale_record"))
    # Y signs a record that says it is X: refused, whoever relays it.
    impostor = Signed(record(x, 9, issued=now).msg,
                      (Signature(y.public, record(y, 9, issued=now).sigs[0].sig),))
    cases.append((impostor.to_json(), "bad_signature"))
    for doc, code in cases:
        with pytest.raises(TallyError) as err:
            await push(a, update([doc]))
        assert err.value.code == code
    held = {n["key"]: n for n in gossip_of(a).nodes_document()["nodes"]}[x.public.text]
    assert (held["counter"], held["name"]) == (5, "coop")


async def test_an_oversized_digest_or_body_is_refused(pair: tuple[Collective, Collective]) -> None:
    a, _ = pair
    key = SecretKey(os.urandom(32))
    digest = {"records": {SecretKey(os.urandom(32)).public.text: 1 for _ in range(51)},
              "checkpoints": {}, "evidence": []}
    async with TallyClient(a.url, key, retries=0) as client:
        with pytest.raises(TallyError) as err:
            await client._request("POST", "/v1/gossip/exchange", {"digest": digest},
                                  signed=True, idempotent=False)
        assert err.value.code == "body_too_large"
        with pytest.raises(TallyError) as err:
            await client._request("POST", "/v1/gossip/exchange",
                                  {"digest": {"records": {}, "checkpoints": {},
                                              "evidence": ["x" * 100_000]}},
                                  signed=True, idempotent=False)
        assert err.value.code == "body_too_large"


async def test_unsigned_gossip_is_refused(pair: tuple[Collective, Collective]) -> None:
    a, _ = pair
    async with aiohttp.ClientSession() as session:
        async with session.post(a.url + "/v1/gossip/push", json={"update": update()}) as resp:
            assert resp.status == 401


async def test_evidence_is_verified_kept_served_and_raised(pair: tuple[Collective, Collective]
                                                           ) -> None:
    a, b = pair
    liar = SecretKey(os.urandom(32))
    raised: list[Equivocation] = []

    async def hook(ev: Equivocation) -> None:
        raised.append(ev)

    gossip_of(a).on_evidence.append(hook)
    forged = {"type": "equivocation", "vkey": vkey_of(liar), "proof": [],
              "checkpoints": [checkpoint(liar, 3, b"\x01" * 32).decode(),
                              checkpoint(SecretKey(os.urandom(32)), 3, b"\x02" * 32).decode()]}
    with pytest.raises(TallyError) as err:
        await push(a, update(evidence=[forged]))
    assert err.value.code == "bad_evidence" and not raised
    ev = verify_equivocation(vkey_of(liar), (checkpoint(liar, 3, b"\x01" * 32),
                                             checkpoint(liar, 3, b"\x02" * 32)))
    assert (await push(a, update(evidence=[ev.to_json()])))["merged"] == 1
    assert [e.id for e in raised] == [ev.id]
    assert gossip_of(a).suspended(liar.public)
    served = await a.client.get_json(f"/v1/gossip/evidence/{ev.id}")
    assert served == ev.to_json()
    # It spreads: B learns it from A in one exchange.
    await gossip_of(b).exchange(a.url, None)
    assert ev.id in gossip_of(b).state.evidence


async def test_evidence_survives_a_restart(tmp_path: Path) -> None:
    from node.service import Node

    server, coop = await start(tmp_path, config())
    liar = SecretKey(os.urandom(32))
    ev = verify_equivocation(vkey_of(liar), (checkpoint(liar, 3, b"\x01" * 32),
                                             checkpoint(liar, 3, b"\x02" * 32)))
    try:
        await push(coop, update(evidence=[ev.to_json()]))
    finally:
        await coop.client.close()
        await server.close()
    node = Node(tmp_path / "node", config())
    await node.start()
    try:
        assert node.gossip is not None and node.gossip.suspended(liar.public)
    finally:
        await node.stop()


async def test_a_peer_that_never_answers_does_not_hold_up_the_others(tmp_path: Path) -> None:
    hung = asyncio.Event()

    async def never(request: web.Request) -> web.Response:
        await hung.wait()
        return web.Response()

    silent_app = web.Application()
    silent_app.router.add_route("*", "/{tail:.*}", never)
    silent = TestServer(silent_app, host="127.0.0.1")
    await silent.start_server()
    b_server, b = await start(tmp_path / "b", config())
    silent_url = str(silent.make_url("")).rstrip("/")
    a_server, a = await start(tmp_path / "a", config(bootstrap=[silent_url, b.url]))
    try:
        await gossip_of(b).publish()
        await gossip_of(a).round()  # returns although one bootstrap node never answers
        assert b.node.node_key.public.text in gossip_of(a).state.records
        assert (await a.client.health())["status"] == "ok"
    finally:
        hung.set()
        for coop, server in ((a, a_server), (b, b_server)):
            await coop.client.close()
            await server.close()
        await silent.close()

