"""Fixtures for node tests: a fresh collective on a temporary data directory, served by
aiohttp's test server on loopback, with a steward key and two members, alice and bob."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from aiohttp.test_utils import TestServer

from crypto.httpsig import sign_request
from crypto.keys import SecretKey, b64url, read_key_file
from node import storage
from node.api import make_app
from node.client import TallyClient
from node.config import Config
from node.service import Node, init_data_dir


@dataclass
class Collective:
    url: str
    node: Node
    steward: SecretKey
    alice: SecretKey
    bob: SecretKey
    client: TallyClient  # unauthenticated: public reads and body-signed writes

    def as_member(self, key: SecretKey) -> TallyClient:
        return TallyClient(self.url, key, retries=0)

    async def dump(self, *, skip: tuple[str, ...] = ()) -> list[tuple[object, ...]]:
        assert self.node.reader is not None
        return [row for row in await storage.logical_dump(self.node.reader) if row[0] not in skip]

    async def dump_unprompted(self) -> list[tuple[object, ...]]:
        """The dump without what the node writes on its own: checkpoints it signs a little
        after earlier writes. What "a refusal writes nothing" compares."""
        return await self.dump(skip=("checkpoints",))

    async def add_member(
        self, handle: str, debit_limit: int = 1000, credit_limit: int = 1000
    ) -> SecretKey:
        """Admit a new member with a fresh key (signed by the steward); return the key."""
        key = SecretKey(os.urandom(32))
        await self.client.admit(handle, key.public, [self.steward], debit_limit, credit_limit)
        return key

    def read_headers(
        self,
        key: SecretKey,
        target: str,
        *,
        method: str = "GET",
        body: bytes = b"",
        created: int | None = None,
        nonce: str | None = None,
        recipient_key_id: str | None = None,
    ) -> dict[str, str]:
        """Headers that sign a read of ``target`` (path and query) by ``key`` for this node."""
        parts = urlsplit(target)
        return sign_request(
            key,
            method=method,
            path=parts.path,
            query=parts.query,
            body=body,
            recipient_key_id=recipient_key_id or self.node.node_key.public.key_id,
            created=int(time.time()) if created is None else created,
            nonce=nonce or b64url(os.urandom(16)),
        )


async def start_collective(tmp_path: Path, config: Config | None = None) -> tuple[TestServer, Collective]:
    data = tmp_path / "node"
    await init_data_dir(data, name="Test Co-op")
    node = Node(data, config or Config())
    server = TestServer(make_app(node), host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    _, steward = read_key_file(data / "steward.key")
    alice, bob = SecretKey(os.urandom(32)), SecretKey(os.urandom(32))
    client = TallyClient(url, retries=0)
    collective = Collective(url, node, steward, alice, bob, client)
    await client.admit("alice", alice.public, [steward], 1000, 1000)
    await client.admit("bob", bob.public, [steward], 1000, 1000)
    return server, collective


@pytest.fixture
async def coop(tmp_path: Path) -> AsyncIterator[Collective]:
    server, collective = await start_collective(tmp_path)
    try:
        yield collective
    finally:
        await collective.client.close()
        await server.close()
