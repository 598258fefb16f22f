"""The process settings a served node runs with."""

from __future__ import annotations

import gc
import json
import weakref
from collections.abc import Iterator

import aiohttp
import pytest
from aiohttp import web

from node.client import transfer_body
from node.server import GC_YOUNG_THRESHOLD, settle_collector
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


def _live_requests() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, web.BaseRequest))


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
            before = _live_requests()
            for _ in range(10):
                await answers()
            left = _live_requests() - before
        finally:
            gc.enable()
    assert left <= 1, f"{left} answered requests are still in memory, kept by cycles"
