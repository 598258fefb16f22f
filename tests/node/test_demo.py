"""``tally demo``: three collectives, payments across a line and through the one in between."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_demo_pays_across_and_through_collectives_and_refuses_beyond_a_line(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "node", "demo", "--json", "--transfers", "30"],
                         capture_output=True, text=True, timeout=240, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    # It cleans up after itself (keys, databases, homes: it used to leave them all in /tmp).
    assert list(tmp_path.iterdir()) == []
    summary = json.loads(run.stdout[run.stdout.index("{"):])
    # Six payments between collectives went through, two of them through the food co-op;
    # the one far beyond the line was refused with the line's own code.
    across = summary["across"]
    assert (across["paid"], across["refused"]) == (6, ["exceeds_line_limit"])
    through = [(r["payer"], r["payee"]) for r in across["routes"]
               if r["via"] == ["Greenway Food Co-op"]]
    assert through == [("dev@Riverside Time Bank", "kai@Northside Workers"),
                       ("lea@Northside Workers", "eli@Riverside Time Bank")]
    names = [n["name"] for n in summary["nodes"]]
    assert names == ["Riverside Time Bank", "Greenway Food Co-op", "Northside Workers"]
    for node in summary["nodes"]:
        assert node["sum"] == 0, node
        assert node["accepted"] > 0
    # The co-op in between forwarded two payments and neither gained nor lost by it.
    green = summary["nodes"][1]
    kinds = {a["kind"]: a for a in green["accounts"] if a["kind"] == "internal"}
    assert kinds["internal"]["balance"] == 0


def test_demo_keeps_its_directory_when_asked(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "node", "demo", "--keep", "--transfers", "3"],
                         capture_output=True, text=True, timeout=240, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    (kept,) = tmp_path.iterdir()
    assert f"Tally demo in {kept} (kept afterwards)" in run.stdout
    assert sorted(p.name for p in kept.iterdir()) == ["homes", "node1", "node2", "node3"]
