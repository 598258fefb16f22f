"""The process settings a served node runs with."""

from __future__ import annotations

import asyncio
import gc
import json
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web

from node.client import transfer_body
from node.config import Config
from node.server import GC_YOUNG_THRESHOLD, serve, settle_collector
from node.service import Node, init_data_dir
from tests.node.conftest import Collective


class _Cell:
    """An object that can sit in a reference cycle and be watched by a weak reference."""

    def __init__(self) -> None:
        self.other: object = None


@pytest.fixture
def restored_collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_a_settled_node_still_frees_garbage_cycles_on_its_own(restored_collector: None) -> None:
    # A node serves for months: if settling the collector stopped it collecting, every
    # request's reference cycles would stay in memory until the operator restarts it.
    settle_collector()
    assert gc.isenabled()
    a, b = _Cell(), _Cell()
    a.other, b.other = b, a
    watch = weakref.ref(a)
    del a, b
    assert watch() is not None  # a cycle waits for the collector: nothing freed it yet
    keep = [[] for _ in range(GC_YOUNG_THRESHOLD * 2)]  # allocations, as requests make them
    assert watch() is None, "the collector did not run after its young-generation threshold"
    del keep


def test_a_settled_node_does_not_scan_what_lived_before_it_started(
    restored_collector: None,
) -> None:
    # What exists once the node has started (modules, the ledger's state) lives as long as
    # the process; the collector must not walk it again on every round.
    long_lived = [[i] for i in range(1000)]
    assert any(o is long_lived for o in gc.get_objects())  # scanned at every full round
    settle_collector()
    assert not any(o is long_lived for o in gc.get_objects())  # frozen: never scanned again
    assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD


async def test_node_run_settles_the_collector_once_it_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    # ``tally node run``: settled after the node has started (what lives by then is frozen)
    # and before it serves until stopped; without it figure 2's node spends ~10 % more CPU.
    from node import cli, server

    order: list[str] = []
    monkeypatch.setattr(server, "settle_collector", lambda: order.append("settled"))

    async def stop_at_once() -> None:
        order.append("serving until stopped")

    monkeypatch.setattr(server, "wait_for_stop_signal", stop_at_once)
    await cli._run_node(tmp_path / "node", "127.0.0.1:0", True)
    assert order == ["settled", "serving until stopped"]
    assert json.loads(capsys.readouterr().out)["url"].startswith("http://127.0.0.1:")


@pytest.mark.parametrize("setting, level", [("warning", "WARNING"), ("debug", "DEBUG")])
async def test_node_run_logs_at_the_configured_level(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    setting: str, level: str,
) -> None:
    # [node] log_level was documented ("debug, info, warning or error") but did nothing.
    import logging

    from node import cli, server

    data = tmp_path / "node"
    data.mkdir()
    (data / "config.toml").write_text(f'[node]\nlog_level = "{setting}"\n')
    seen: list[str] = []

    async def stop_at_once() -> None:
        seen.append(logging.getLevelName(logging.getLogger().level))

    monkeypatch.setattr(server, "wait_for_stop_signal", stop_at_once)
    monkeypatch.setattr(server, "settle_collector", lambda: None)
    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.INFO)  # as `tally` sets it without -v
    try:
        await cli._run_node(data, "127.0.0.1:0", True)
    finally:
        root.setLevel(before)
    assert seen == [level]


def _requests_in_cycles() -> int:
    """How many requests only the garbage collector would free (it is off while they pile
    up: this runs a collection that keeps what it finds, to count it, then drops it)."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        return sum(1 for o in gc.garbage if isinstance(o, web.BaseRequest))
    finally:
        gc.garbage.clear()
        gc.set_debug(0)


async def test_answered_requests_are_freed_at_once_not_by_the_collector(coop: Collective) -> None:
    # The node collects garbage cycles only every GC_YOUNG_THRESHOLD allocations: a request
    # caught in a cycle would keep its body (a batch may be 2 MiB) in memory until then, and
    # a flood of refused batches could hold gigabytes. So no answer, refusal or not, may
    # leave its request in a cycle.
    ledger = coop.node.ledger.ledger_id
    json_type = {"content-type": "application/json"}
    forged = transfer_body(coop.bob, ledger, "alice", "bob", 1)  # bob signs for alice
    async with aiohttp.ClientSession() as http:

        async def answers() -> list[int]:
            statuses = []
            good = transfer_body(coop.alice, ledger, "alice", "bob", 1)
            for url, body in (
                ("/v1/transfers", b"{not json"),
                ("/v1/transfers", json.dumps(forged).encode()),
                ("/v1/transfers", json.dumps(good).encode()),
                ("/v1/transfers/batch", json.dumps({"transfers": []}).encode()),
                ("/v1/transfers/batch", json.dumps({"transfers": [
                    transfer_body(coop.alice, ledger, "alice", "bob", 1)]}).encode()),
                ("/v1/no-such-route", b"{}"),
            ):
                async with http.post(coop.url + url, data=body, headers=json_type) as r:
                    await r.read()
                    statuses.append(r.status)
            return statuses

        assert await answers() == [400, 422, 201, 400, 200, 404]  # warm: caches, connections
        gc.collect()
        gc.disable()
        try:
            for _ in range(10):
                await answers()
            left = _requests_in_cycles()
        finally:
            gc.enable()
    assert left == 0, f"{left} answered requests are still in memory, kept by cycles"


async def test_a_real_server_frees_requests_cut_off_mid_body_or_failed_inside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As `tally node run` serves (aiohttp's test server cancels a handler whose client hung
    # up, the real one does not): a client that hangs up halfway through a batch body, and
    # a request whose signature worker fails, must not leave the request, nor the part of
    # the body read so far, in memory until the collector's next round.
    data = tmp_path / "node"
    await init_data_dir(data, name="Co")
    node = Node(data, Config())
    served = await serve(node, "127.0.0.1", 0)
    host, port = urlsplit(served.url).hostname, urlsplit(served.url).port
    cut_off = (b"POST /v1/transfers/batch HTTP/1.1\r\nHost: x\r\n"
               b"Content-Type: application/json\r\nContent-Length: 2000000\r\n\r\n"
               + b"[" * 300_000)

    async def hang_up_mid_body() -> None:
        _, writer = await asyncio.open_connection(host, port)
        writer.write(cut_off)
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.transport.abort()

    async def worker_fails(body: bytes, max_batch: int = 0) -> Any:
        stopped = asyncio.get_running_loop().create_future()
        stopped.set_exception(RuntimeError("a signature worker stopped"))
        return await stopped  # as SigWorkers fails a dead worker's jobs

    try:
        async with aiohttp.ClientSession() as http:

            async def failed_inside() -> int:
                async with http.post(served.url + "/v1/transfers", data=b"{}",
                                     headers={"content-type": "application/json"}) as r:
                    await r.read()
                    return r.status

            monkeypatch.setattr(node, "read_transfers", worker_fails)
            await hang_up_mid_body()
            assert await failed_inside() == 500
            await asyncio.sleep(0.3)
            gc.collect()
            gc.disable()
            try:
                for _ in range(4):
                    await hang_up_mid_body()
                    assert await failed_inside() == 500
                await asyncio.sleep(0.5)  # the server notices the hang-ups
                left = _requests_in_cycles()
            finally:
                gc.enable()
    finally:
        await served.close()
    assert left == 0, f"{left} requests are still in memory, kept by cycles"
