"""Fixtures for node tests: a fresh collective on a temporary data directory, served by
aiohttp's test server on loopback, with a steward key and two members, alice and bob."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from crypto.keys import SecretKey, read_key_file
from node.api import NODE, make_app
from node.client import TallyClient
from node.config import Config
from node.service import Node, init_data_dir
from node import storage


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

    async def dump(self) -> list[tuple[object, ...]]:
        assert self.node.reader is not None
        return await storage.logical_dump(self.node.reader)


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
