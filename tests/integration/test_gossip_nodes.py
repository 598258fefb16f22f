"""Gossip between real node processes: a newcomer with one bootstrap URL becomes known to
all, and a node made to equivocate (a test-only fault) is caught by every other node."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from protocol.evidence import parse_evidence
from tests.integration.conftest import TEST_CONFIG, NodeProcess

PERIOD_MS = 300
# Gossip reaches N nodes in about log2 N rounds; this many periods is a generous bound for 7.
BOUND_PERIODS = 60


def config(bootstrap: list[str]) -> str:
    urls = ", ".join(f'"{u}"' for u in bootstrap)
    return TEST_CONFIG + f"""
[gossip]
bootstrap = [{urls}]
period_ms = {PERIOD_MS}
jitter_ms = 100
timeout_ms = 1500
"""


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Callable[[list[str], bool], NodeProcess]]:
    made: list[NodeProcess] = []

    def make(bootstrap: list[str], liar: bool = False) -> NodeProcess:
        root = tmp_path / f"n{len(made)}"
        data = root / "node"
        data.mkdir(parents=True, mode=0o700)
        (data / "config.toml").write_text(config(bootstrap))
        proc = NodeProcess(data, root)
        if liar:
            proc.env = {**os.environ, "TALLY_TEST_EQUIVOCATE": "1"}
        made.append(proc)
        return proc

    try:
        yield make
    finally:
        for proc in made:
            proc.cleanup()


async def nodes_doc(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(url + "/v1/gossip/nodes") as resp:
        assert resp.status == 200
        return await resp.json()  # type: ignore[no-any-return]


async def within_periods(what: str, check: Callable[[], Awaitable[bool]]) -> int:
    """Poll ``check`` until true; fail if it takes more than BOUND_PERIODS gossip periods."""
    start = time.monotonic()
    while not await check():
        periods = (time.monotonic() - start) * 1000 / PERIOD_MS
        assert periods < BOUND_PERIODS, f"{what}: not done within {BOUND_PERIODS} periods"
        await asyncio.sleep(PERIOD_MS / 3000)
    return int((time.monotonic() - start) * 1000 / PERIOD_MS)


async def test_a_newcomer_is_known_to_all_and_an_equivocator_is_caught_by_all(
        processes: Callable[..., NodeProcess]) -> None:
    first = processes([])
    url0 = await first.start()
    honest = [first] + [processes([url0]) for _ in range(4)]
    liar = processes([url0], liar=True)
    for proc in honest[1:] + [liar]:
        await proc.start()
    everyone = honest + [liar]
    async with aiohttp.ClientSession() as session:
        keys = {p.url: (await nodes_doc(session, p.url))["self"] for p in everyone}

        async def all_know(urls: list[str], members: list[NodeProcess]) -> bool:
            for url in urls:
                known = {n["key"] for n in (await nodes_doc(session, url))["nodes"]}
                if not {keys[m.url] for m in members} <= known:
                    return False
            return True

        await within_periods("the first six learn each other",
                             lambda: all_know([p.url for p in everyone], everyone))

        # A newcomer who knows one node only (not the first) joins.
        newcomer = processes([honest[3].url])
        await newcomer.start()
        keys[newcomer.url] = (await nodes_doc(session, newcomer.url))["self"]
        everyone.append(newcomer)
        honest.append(newcomer)
        await within_periods("the newcomer is known to all",
                             lambda: all_know([p.url for p in everyone], everyone))

        # The liar showed two checkpoints of one size: every honest node ends up with
        # evidence naming it, which anyone can check offline.
        liar_key = keys[liar.url]

        async def all_caught() -> bool:
            for p in honest:
                doc = await nodes_doc(session, p.url)
                if liar_key not in {e["offender"] for e in doc["evidence"]}:
                    return False
            return True

        await within_periods("every honest node holds evidence against the liar", all_caught)
        for p in honest:
            doc = await nodes_doc(session, p.url)
            [ev] = [e for e in doc["evidence"] if e["offender"] == liar_key]
            assert {n["key"]: n for n in doc["nodes"]}[liar_key]["suspended"]
            async with session.get(f"{p.url}/v1/gossip/evidence/{ev['id']}") as resp:
                assert parse_evidence(await resp.json()).offender.text == liar_key
        # No honest node is accused.
        for p in everyone:
            accused = {e["offender"] for e in (await nodes_doc(session, p.url))["evidence"]}
            assert accused <= {liar_key}
