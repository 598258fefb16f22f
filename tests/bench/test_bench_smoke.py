"""``python -m bench --smoke`` runs every figure end to end with tiny counts.

This checks that the harness works — real node processes, the load generator, every
ceiling, the JSON it writes — not how fast anything is: no timing is asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

FIGURES = [
    "ceiling.verify_one_core",
    "ceiling.verify_all_cores",
    "ceiling.bare_handler",
    "ceiling.bare_handler_cpu",
    "ceiling.sqlite_inserts_batch1000",
    "ceiling.sqlite_commits",
    "fig1.transfers_per_s",
    "fig1.ratio_to_bare_handler",
    "fig1.node_cpu_per_transfer",
    "fig1.load_generator_cpu_per_request",
    "fig1.offered_rate",
    "fig1.latency_p50",
    "fig1.latency_p99",
    "fig2.transfers_per_s",
    "fig2.ratio_to_verify_all_cores",
    "fig2.node_cpu_per_transfer",
    "fig3.two_hop_payments_per_s",
    "fig3.expiry_rate",
    "fig3.nodes_cpu_per_payment",
    "fig3.ratio_to_fig1",
    "fig3.latency_p50",
    "fig3.latency_p99",
    "fig4.inclusion_small",
    "fig4.inclusion_large",
    "fig4.inclusion_ratio",
    "fig4.tile_small",
    "fig4.tile_large",
    "fig4.tile_ratio",
    "fig4.start_time",
    "fig4.rss_after_start",
    "fig4.peak_rss",
    "fig4.disk_per_transfer",
    "fig5.audit_entries_per_s",
    "fig5.auditor_cpu_per_entry",
    "fig5.node_cpu_per_entry",
]

TARGETED = {
    "fig1.ratio_to_bare_handler",
    "fig2.ratio_to_verify_all_cores",
    "fig3.expiry_rate",
    "fig3.ratio_to_fig1",
    "fig4.inclusion_ratio",
    "fig4.tile_ratio",
    "fig4.start_time",
    "fig4.peak_rss",
}


def test_smoke_run_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench-results.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out),
         "--workdir", str(tmp_path / "work")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=280,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(out.read_text())
    figures = results["figures"]
    assert sorted(figures) == sorted(FIGURES)
    printed = {line.split()[0]: line for line in done.stdout.splitlines() if line.strip()}
    for name in FIGURES:
        fig = figures[name]
        value = fig["value"]
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (name, value)
        assert value == value and value >= 0, (name, value)  # not NaN, not negative
        assert fig["unit"], name
        # One line per figure: name value unit.
        parts = printed[name].split()
        assert float(parts[1]) >= 0 and parts[2] == fig["unit"], printed[name]
        if name in TARGETED:
            assert fig["target"] is not None and fig["pass"] in (True, False), name
            assert ("PASS" in printed[name]) or ("MISS" in printed[name]), printed[name]
    meta = results["meta"]
    assert meta["mode"] == "smoke" and meta["nproc"] >= 1 and meta["python"]
    # Every transfer the smoke run sent was accepted: the harness, not the node, is tested,
    # but refusals would mean it measured something other than accepted transfers.
    for run in results["details"]["fig1_runs"] + results["details"]["fig2_runs"]:
        assert run["items_refused"] == 0 and not run["errors"], run
    # Two-hop payments went through three node processes: some were fulfilled, none failed
    # for a reason other than time.
    fig3_runs = results["details"]["fig3_runs"]
    assert sum(run["items_ok"] for run in fig3_runs) > 0
    for run in fig3_runs:
        assert set(run["refusals"]) <= {"expired", "None"} and not run["errors"], (
            run, node_tracebacks(tmp_path / "work"))


def node_tracebacks(work: Path) -> str:
    """What the benchmark's node processes logged of any fault, to say why a run failed."""
    out = []
    for log in sorted(work.glob("**/logs/*.err")):
        text = log.read_text(errors="replace")
        if "Traceback" in text:
            out.append(f"{log.name}: {text[text.index('Traceback'):][:3000]}")
    return "\n".join(out) or "no traceback in the nodes' logs"
