"""``python -m bench.count3`` counts a few two-hop payments' work, per node.

It patches the functions it counts (a measuring tool, in its own process here), so it
breaks quietly when they move: this checks that it still pays and still counts what a
two-hop payment must do — the quote and PREPARE each crossing both lines, one commit or
more, the payer's node signing — not how much of anything there is.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_count3_pays_and_counts_per_node() -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "bench.count3", "--payments", "6", "--in-flight", "2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("6 payments, 2 in flight: {'ok': 6}"), lines[0]
    rows = {line[:44].strip(): [float(x) for x in line[44:].split()] for line in lines[2:]
            if line[:44].strip() and not line.startswith("not attributed")}
    # A, B, C, all: each payment's quote and PREPARE leave A for B and B for C.
    assert rows["http out POST /v1/peer/quote"] == [1.0, 1.0, 0.0, 2.0]
    assert rows["http in POST /v1/peer/prepare"] == [0.0, 1.0, 1.0, 2.0]
    assert rows["writer commit"][3] > 0 and rows["ed25519 sign"][0] > 0
