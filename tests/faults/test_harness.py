"""A short seeded run of the fault harness (``tests/faults/harness.py``): three real nodes
A–B–C behind proxies that drop, cut, delay and replay their messages, three of them killed
with SIGKILL and a line partitioned twice, while members pay within their collective, next
door, and two hops away through B. Every ledger and log read afterwards must show no
violation, and the faults must really have happened. ``python -m bench.faults`` runs it
longer (docs/reliability.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.harness import RunConfig, run

SEED = 20261201


@pytest.mark.timeout(150)
async def test_payments_survive_a_hostile_network_kills_and_partitions(tmp_path: Path) -> None:
    figures = await run(RunConfig(seed=SEED, seconds=8.0, kills=3, partitions=2), tmp_path)
    report = figures.report()
    assert figures.violations == [], report

    # The faults happened: every kind, and some answers were lost on the way to a payer.
    assert figures.kills == 3 and figures.partitions == 2, report
    net = figures.network
    assert net["dropped"] and net["cut"] and net["delayed"] and net["duplicated"], report
    assert net["dropped_by_partition"] + net["cut_by_partition"], report
    assert figures.payments["unknown"] + figures.transfers["retried"] > 0, report

    # And payments of every kind went through, some were refused.
    assert figures.transfers["acknowledged"] and figures.transfers["refused"], report
    assert figures.payments["through_b"] > 0, report
    assert figures.payments["acknowledged"] > figures.payments["through_b"], report
    assert figures.payments["refused"] > 0, report
