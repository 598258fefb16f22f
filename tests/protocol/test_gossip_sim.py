"""The gossip simulation: news and evidence reach every node in about log N rounds."""

from __future__ import annotations

import math

from bench.gossip_sim import simulate


def test_news_and_evidence_reach_everyone_in_logarithmic_rounds_despite_loss_and_churn() -> None:
    n = 64
    run = simulate(n, fanout=3, loss=0.1, churn=0.05, seed=7)
    bound = math.ceil(math.log2(n)) + 6
    assert run.rounds_record is not None and run.rounds_record <= bound
    assert run.rounds_evidence is not None and run.rounds_evidence <= bound
    # Each node sends its digests and pushes, and answers those that reach it: bounded by
    # the fanout, not by N.
    assert run.messages_per_node_round <= 3 * 2 + 1


def test_without_gossip_partners_nothing_spreads() -> None:
    run = simulate(16, fanout=0, seed=1, max_rounds=5)
    assert run.rounds_record is None and run.rounds_evidence is None
