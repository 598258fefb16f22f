"""``python -m bench.flood`` runs every phase end to end with tiny counts.

This checks that the harness works (a real node process, the load generator, the three
attackers, the figures it prints and writes), not how the node fares: nothing about
timing or throughput is asserted.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PER_PHASE = ["honest_transfers_per_s", "honest_p50", "honest_p99", "honest_refused"]
FIGURES = (
    ["flood.node_rss_before", "flood.node_rss_after", "flood.node_peak_rss",
     "flood.load_average"]
    + [f"flood.{phase}.{name}" for phase in ("baseline", "member", "peer", "slow")
       for name in PER_PHASE]
    + [f"flood.{kind}.{name}" for kind in ("member", "peer")
       for name in ("flooder_requests_per_s", "flooder_refused_429", "flooder_not_refused")]
    + [f"flood.slow.{name}" for name in ("connections_opened", "closed_at_once", "cut_408",
                                         "cut_silent", "other_endings")]
)


def test_flood_smoke_run_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "flood.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "bench.flood", "--seconds", "0.5", "--members", "2",
         "--rate", "20", "--slow-connections", "10", "--out", str(out),
         "--workdir", str(tmp_path / "work")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=280,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    figures = json.loads(out.read_text())
    assert sorted(figures) == sorted(FIGURES)
    printed = [line.split()[0] for line in done.stdout.splitlines() if line.strip()]
    assert printed == list(figures)
    # Every figure is a number (a phase that measured nothing would be NaN or missing).
    assert all(isinstance(f["value"], (int, float)) and math.isfinite(f["value"])
               for f in figures.values()), figures
