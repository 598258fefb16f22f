"""Node-to-node protocol versions: what a node says it speaks, and what it does with a peer
that speaks another (``protocol.version``, ``docs/protocol.md`` §Versioning)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from crypto.canonical import canonical_json
from crypto.keys import SecretKey
from node.client import TallyClient, TallyError, new_id
from tests.node.conftest import Collective


async def peer_post(coop: Collective, key: SecretKey, body: Any,
                    version: str | None) -> tuple[int, Any, aiohttp.ClientResponse]:
    """A node-to-node request signed by ``key`` for this node, in protocol ``version``."""
    data = canonical_json(body)
    headers = coop.read_headers(key, "/v1/peer/quote", method="POST", body=data)
    headers["Content-Type"] = "application/json"
    if version is not None:
        headers["Tally-Protocol"] = version
    async with aiohttp.ClientSession() as session:
        async with session.post(coop.url + "/v1/peer/quote", data=data,
                                headers=headers) as resp:
            return resp.status, await resp.json(content_type=None), resp


def quote_request() -> dict[str, Any]:
    return {"order": {"msg": {}, "sigs": []}, "attempt": new_id()}


async def test_a_node_lists_the_protocol_versions_it_speaks(coop: Collective) -> None:
    info = await coop.client.info()
    assert info.raw["protocols"] == [1]


@pytest.mark.parametrize("version", ["2", "0", "one"])
async def test_a_peer_speaking_another_version_is_told_which_this_node_speaks(
    coop: Collective, version: str
) -> None:
    before = await coop.dump_unprompted()
    stranger = SecretKey(os.urandom(32))
    status, doc, resp = await peer_post(coop, stranger, quote_request(), version)
    assert (status, doc["code"]) == (400, "unsupported_protocol")
    assert doc["protocols"] == [1]
    assert resp.headers["Tally-Protocol"] == "1"
    assert await coop.dump_unprompted() == before  # nothing written, not even the nonce


@pytest.mark.parametrize("version", ["1", None])
async def test_a_peer_speaking_version_1_is_heard_and_answered_in_it(
    coop: Collective, version: str | None
) -> None:
    # Heard: the request gets past the version to the next check (this key has no line).
    stranger = SecretKey(os.urandom(32))
    status, doc, resp = await peer_post(coop, stranger, quote_request(), version)
    assert (status, doc["code"]) == (422, "unknown_peer")
    assert resp.headers["Tally-Protocol"] == "1"


async def test_a_node_refuses_to_speak_to_a_peer_with_no_version_in_common(
    coop: Collective,
) -> None:
    before = await coop.dump_unprompted()
    client = TallyClient(coop.url, SecretKey(os.urandom(32)), retries=0)
    try:
        info = await client.info()
        client._info = replace(info, raw={**info.raw, "protocols": [2, 3]})
        with pytest.raises(TallyError) as err:
            await client._request("GET", "/v1/peer/graph", signed=True)
        assert err.value.code == "unsupported_protocol"
        assert "[2, 3]" in err.value.detail and "upgrade" in err.value.detail
        assert err.value.status == 0  # refused here: the request never left
    finally:
        await client.close()
    assert await coop.dump_unprompted() == before


async def test_every_node_to_node_route_is_specified(coop: Collective) -> None:
    from node.api import make_app

    spec = (Path(__file__).parent.parent.parent / "docs" / "protocol.md").read_text("utf-8")
    routes = {f"{r.method} {r.resource.canonical}" for r in make_app(coop.node).router.routes()
              if r.resource is not None and r.method != "HEAD"
              and r.resource.canonical.startswith(("/v1/peer/", "/v1/gossip/"))}
    assert len(routes) >= 12
    for route in routes:
        assert f"`{route}`" in spec, route
