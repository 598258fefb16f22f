"""The process settings a served node runs with."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from node.server import GC_YOUNG_THRESHOLD, settle_collector


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
    settle_collector()
    assert gc.get_freeze_count() >= len(long_lived)
    assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD
