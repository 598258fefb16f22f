"""``python -m bench``: Tally's benchmark. Real node processes on loopback, a load generator in
another process, ceilings measured in the same run on the same machine.

    python -m bench --quick        # under 3 minutes on 2 cores; large log = 100,000 entries
    python -m bench                # full: more repetitions, longer runs, 1,000,000 entries
    python -m bench --smoke        # tiny counts, < 60 s: checks the harness works (CI)

Prints one line per figure, ``name value unit``, optionally followed by ``# …`` (repetitions,
spread, target and PASS/MISS), and writes the same as JSON (``--out``, default
bench-results.json). See docs/benchmarks.md for what each figure means and what limits it.

Method
------
- Every transfer is signed before the timed phase that sends it (``bench.sign``, one worker
  process per core), never during it.
- Each throughput figure is bracketed by runs of its ceiling: C F C F C F C. A repetition's
  ratio is F over the mean of the two ceiling runs around it, so a machine that gets busier
  or quieter during the run moves both. Value = median of the repetitions; spread = (max −
  min) / median.
- Beside every throughput, the node's own CPU time per transfer: user+sys of the node
  process (all threads, /proc/<pid>/stat) over the timed phase, ÷ transfers accepted.
- Latency comes from an open-loop generator at a fixed offered rate (half the measured
  throughput), measured from each request's scheduled time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import ceilings
from bench.procs import (
    Server,
    bare_server,
    child_env,
    disk_bytes,
    memory_kib,
    node_server,
    wait_idle,
)
from bench.sign import Signer, member_key

NODE_CONFIG = """\
# Written by the benchmark: the per-key rate limiter and the writer's queue must not be what
# the figures measure. Every client here (load generator, other nodes) connects from
# 127.0.0.1, so the cap on connections per client address is off.
[api]
rate_per_key_per_second = 1000000000.0
rate_burst = 1000000000
max_queue = 200000
max_connections_per_client = 0
"""


@dataclass(frozen=True)
class Params:
    mode: str
    reps: int  # repetitions of every figure (ceilings: reps + 1 brackets)
    members: int  # payer keys for figures 1 and 2
    concurrency: int  # figure 1 and the bare handler
    batch_concurrency: int  # figure 2: batch requests in flight
    batch_size: int
    fig1_seconds: float
    bare_seconds: float
    latency_seconds: float
    fig2_seconds: float
    verify_seconds: float
    sqlite_seconds: float
    small_log: int
    large_log: int
    log_members: int
    get_requests: int
    fig1_warmup: int  # transfers sent before figure 1's first timed run
    bare_bodies: int  # distinct bodies the bare handler is sent (cyclically)
    audit_log: int  # entries of the log figure 5 audits (the large log unless too slow)
    audit_reps: int


MODES = {
    # Smoke checks that the harness works end to end, not performance: two repetitions.
    "smoke": Params("smoke", 2, 8, 16, 2, 100, 0.4, 0.3, 0.4, 0.5, 0.2, 0.2, 300, 1000, 20,
                    20, 50, 200, 1000, 2),
    # Three audits of the 100,000-entry log alone would take the whole 3 minutes on 2 cores
    # (the auditor replays ~3,000 entries/s): --quick audits a 20,000-entry log and says so.
    "quick": Params("quick", 3, 256, 64, 4, 1000, 3.0, 2.5, 3.0, 4.0, 1.0, 0.8, 1000, 100_000,
                    200, 300, 1000, 2000, 20_000, 3),
    "full": Params("full", 5, 256, 64, 4, 1000, 10.0, 8.0, 10.0, 12.0, 3.0, 3.0, 1000,
                   1_000_000, 200, 1000, 2000, 5000, 1_000_000, 3),
}


# --- results -------------------------------------------------------------------------------


@dataclass
class Figure:
    name: str
    value: float | str
    unit: str
    samples: list[float] | None = None
    target: str | None = None  # e.g. ">= 0.5"
    note: str = ""
    agg: str = "median"  # how value summarises samples

    @property
    def passed(self) -> bool | None:
        if self.target is None or not isinstance(self.value, (int, float)):
            return None
        op, bound = self.target.split()
        return self.value >= float(bound) if op == ">=" else self.value <= float(bound)

    def spread_pct(self) -> float | None:
        if not self.samples or len(self.samples) < 2 or not isinstance(self.value, (int, float)):
            return None
        if self.value == 0:
            return None
        return (max(self.samples) - min(self.samples)) / abs(self.value) * 100

    def line(self) -> str:
        if isinstance(self.value, str):
            return f"{self.name} {self.value}"
        digits = 3 if abs(self.value) < 10 else 1 if abs(self.value) < 1000 else 0
        text = f"{self.name} {self.value:.{digits}f} {self.unit}"
        extras = []
        if self.samples and len(self.samples) > 1:
            spread = self.spread_pct()
            extras.append(f"{self.agg} of {len(self.samples)}, "
                          + (f"spread {spread:.1f}% " if spread is not None else "")
                          + f"({_fmt(min(self.samples))}–{_fmt(max(self.samples))})")
        if self.target is not None:
            extras.append(f"target {self.target.replace('>=', '≥').replace('<=', '≤')} "
                          f"{'PASS' if self.passed else 'MISS'}")
        if self.note:
            extras.append(self.note)
        return text + ("  # " + "; ".join(extras) if extras else "")

    def to_json(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "unit": self.unit,
            "samples": self.samples,
            "spread_pct": self.spread_pct(),
            "target": self.target,
            "pass": self.passed,
            "note": self.note or None,
            "aggregate": self.agg if self.samples else None,
        }


def _fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


def med(xs: list[float]) -> float:
    return statistics.median(xs)


class Bench:
    def __init__(self, params: Params, work: Path, out: Path, profile: Path | None,
                 only: frozenset[str] = frozenset()) -> None:
        self.p = params
        self.only = only  # figures to run ("1", "2", "4"); empty: all
        self.work = work
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.out = out
        self.profile_dir = profile
        self.workers = os.cpu_count() or 1
        self.pool = ProcessPoolExecutor(self.workers,
                                        mp_context=multiprocessing.get_context("spawn"))
        self.figures: dict[str, Figure] = {}
        self.details: dict[str, Any] = {}
        self.loads: list[tuple[str, list[float]]] = []
        self.run_seed = random.SystemRandom().randrange(2**32)
        self.servers: list[Server] = []
        self.started = time.monotonic()
        self.generator: subprocess.Popen[bytes] | None = None

    # --- plumbing ---------------------------------------------------------------------

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {text}", file=sys.stderr, flush=True)

    def note_load(self, where: str) -> None:
        self.loads.append((where, [round(x, 2) for x in os.getloadavg()]))

    def add(self, fig: Figure) -> None:
        self.figures[fig.name] = fig
        print(fig.line(), flush=True)

    def load(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Run ``spec`` in the load generator (another process, started once); its result."""
        spec.setdefault("timeout", 600)
        self.settle()
        if self.generator is None or self.generator.poll() is not None:
            with open(self.logs / "load.err", "ab") as err:
                self.generator = subprocess.Popen(
                    [sys.executable, "-m", "bench.load", "--serve"], stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=err, env=child_env())
        assert self.generator.stdin is not None and self.generator.stdout is not None
        self.generator.stdin.write(json.dumps(spec).encode() + b"\n")
        self.generator.stdin.flush()
        line = self.generator.stdout.readline()
        if not line:
            self.generator.wait(timeout=10)
            raise RuntimeError("the load generator died:\n"
                               + (self.logs / "load.err").read_text()[-3000:])
        result: dict[str, Any] = json.loads(line)
        return result

    def server(self, server: Server) -> Server:
        self.servers.append(server)
        return server

    def write_bodies(self, name: str, data: bytes) -> str:
        path = self.work / f"{name}.jsonl"
        path.write_bytes(data)
        return str(path)

    def close(self) -> None:
        for s in self.servers:
            s.stop()
        if self.generator is not None:
            assert self.generator.stdin is not None
            self.generator.stdin.close()
            if self.generator.stdout is not None:
                self.generator.stdout.close()
            try:
                self.generator.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.generator.kill()
                self.generator.wait()
        self.pool.shutdown(cancel_futures=True)

    # --- ceilings ---------------------------------------------------------------------

    def settle(self) -> None:
        """Let every server started here go quiet before the next timed run."""
        pids = [s.pid for s in self.servers if s.proc is not None and s.proc.poll() is None]
        if pids:
            wait_idle(pids)

    def verify_ceiling(self, processes: int, seconds: float) -> float:
        self.settle()
        start_at = time.time() + 0.3
        jobs = [self.pool.submit(ceilings.verify_rate, seconds, start_at)
                for _ in range(processes)]
        return sum(j.result() for j in jobs)

    def sqlite_ceiling(self, batch: int) -> float:
        self.settle()
        path = str(self.work / "ceiling.sqlite")
        return self.pool.submit(ceilings.sqlite_rate, path, batch, self.p.sqlite_seconds).result()

    def machine_ceilings(self) -> None:
        self.say("ceilings: Ed25519 verification (one core), SQLite durable inserts")
        self.note_load("ceilings")
        one = [self.verify_ceiling(1, self.p.verify_seconds) for _ in range(self.p.reps)]
        self.add(Figure("ceiling.verify_one_core", med(one), "verifications/s", one))
        batched = [self.sqlite_ceiling(1000) for _ in range(self.p.reps)]
        self.add(Figure("ceiling.sqlite_inserts_batch1000", med(batched), "rows/s", batched,
                        note="WAL, synchronous=FULL, 1000 rows of 400 B per commit"))
        single = [self.sqlite_ceiling(1) for _ in range(self.p.reps)]
        self.add(Figure("ceiling.sqlite_commits", med(single), "commits/s", single,
                        note="one row per commit: the fsync rate"))

    # --- the node for figures 1 and 2 -----------------------------------------------------

    def start_ledger_node(self) -> tuple[Server, str]:
        data = self.work / "node"
        data.mkdir(mode=0o700)
        (data / "config.toml").write_text(NODE_CONFIG)
        node = self.server(node_server("node", data, self.logs))
        url = node.start()
        ledger_id = asyncio.run(self.admit(url, data))
        return node, ledger_id

    async def admit(self, url: str, data: Path) -> str:
        from crypto.keys import read_key_file
        from node.client import TallyClient

        steward = read_key_file(data / "steward.key")[1]
        async with TallyClient(url) as client:
            info = await client.info()
            gate = asyncio.Semaphore(16)

            async def one(i: int) -> None:
                async with gate:
                    await client.admit(f"m{i}", member_key(self.run_seed, i).public, [steward],
                                       debit_limit=10**12, credit_limit=10**12)

            await asyncio.gather(*(one(i) for i in range(self.p.members)))
        return info.ledger_id

    # --- figure 1 -----------------------------------------------------------------------

    def figure1(self, node: Server, signer: Signer) -> None:
        p = self.p
        self.say("figure 1: one signed transfer per request, "
                 f"{p.concurrency} connections; bracketed by the bare handler")
        self.note_load("figure 1")
        bare = self.server(bare_server(self.logs))
        bare.start()
        bare_bodies = self.write_bodies("bare", signer.bodies(p.bare_bodies))
        warm = self.write_bodies("fig1-warm", signer.bodies(p.fig1_warmup))
        warm_run = self.load({"mode": "closed", "url": node.url, "path": "/v1/transfers",
                              "bodies_file": warm, "concurrency": p.concurrency,
                              "duration": 60, "node_pid": node.pid})
        self.details["fig1_warmup"] = warm_run
        estimate = max(warm_run["items_per_s"], 50.0)

        def bare_run() -> dict[str, Any]:
            return self.load({"mode": "closed", "url": bare.url, "path": "/v1/transfers",
                              "bodies_file": bare_bodies, "concurrency": p.concurrency,
                              "duration": p.bare_seconds, "cycle": True,
                              "warmup": min(200, p.bare_bodies),
                              "node_pid": bare.pid})

        ceilings_runs = [bare_run()]
        runs = []
        for rep in range(p.reps):
            bodies = self.write_bodies(f"fig1-{rep}", signer.bodies(
                int(estimate * p.fig1_seconds * 1.5) + 2 * p.concurrency))
            run = self.load({"mode": "closed", "url": node.url, "path": "/v1/transfers",
                             "bodies_file": bodies, "concurrency": p.concurrency,
                             "duration": p.fig1_seconds, "warmup": p.concurrency,
                             "node_pid": node.pid})
            runs.append(run)
            estimate = max(run["items_per_s"], 50.0)
            self.say(f"  rep {rep + 1}: {run['items_per_s']:.0f} transfers/s "
                     f"(bare {ceilings_runs[-1]['requests_per_s']:.0f} req/s)")
            self.check_refusals("figure 1", run)
            ceilings_runs.append(bare_run())
        bare.stop()
        self.details["fig1_runs"] = runs
        self.details["bare_runs"] = ceilings_runs

        bare_rates = [c["requests_per_s"] for c in ceilings_runs]
        rates = [r["items_per_s"] for r in runs]
        ratios = [r / ((bare_rates[i] + bare_rates[i + 1]) / 2) for i, r in enumerate(rates)]
        cpu = [r["node_cpu_s"] / r["items_ok"] * 1e6 for r in runs]
        bare_cpu = [c["node_cpu_s"] / c["requests_ok"] * 1e6 for c in ceilings_runs]
        client_cpu = [r["client_cpu_s"] / r["requests_ok"] * 1e6 for r in runs]
        self.add(Figure("ceiling.bare_handler", med(bare_rates), "requests/s", bare_rates,
                        note=f"same client, {p.concurrency} connections"))
        self.add(Figure("ceiling.bare_handler_cpu", med(bare_cpu), "µs/request", bare_cpu,
                        note="server CPU per request"))
        self.add(Figure("fig1.transfers_per_s", med(rates), "transfers/s", rates))
        self.add(Figure("fig1.ratio_to_bare_handler", med(ratios), "ratio", ratios,
                        target=">= 0.5"))
        self.add(Figure("fig1.node_cpu_per_transfer", med(cpu), "µs/transfer", cpu))
        self.add(Figure("fig1.load_generator_cpu_per_request", med(client_cpu), "µs/request",
                        client_cpu, note="the client shares the machine with the node"))

        # Latency at half the measured rate, open loop.
        rate = max(1.0, med(rates) / 2)
        self.say(f"figure 1 latency: open loop at {rate:.0f} transfers/s")
        lat = []
        for rep in range(p.reps):
            bodies = self.write_bodies(f"fig1-lat-{rep}", signer.bodies(
                int(rate * p.latency_seconds) + 2 + 20))
            run = self.load({"mode": "open", "url": node.url, "path": "/v1/transfers",
                             "bodies_file": bodies, "concurrency": p.concurrency, "rate": rate,
                             "duration": p.latency_seconds, "warmup": 20,
                             "node_pid": node.pid})
            self.check_refusals("figure 1 latency", run)
            lat.append(run)
        self.details["fig1_latency_runs"] = lat
        p50 = [r["latency"]["p50_ms"] for r in lat]
        p99 = [r["latency"]["p99_ms"] for r in lat]
        self.add(Figure("fig1.offered_rate", rate, "transfers/s", note="open loop, half of "
                        "fig1.transfers_per_s"))
        self.add(Figure("fig1.latency_p50", med(p50), "ms", p50))
        self.add(Figure("fig1.latency_p99", med(p99), "ms", p99))

    def check_refusals(self, what: str, run: dict[str, Any]) -> None:
        if run["items_refused"] or run["errors"]:
            self.say(f"  WARNING {what}: {run['items_refused']} refused "
                     f"{run['refusals']}, errors {run['errors']}")

    # --- figure 2 -----------------------------------------------------------------------

    def figure2(self, node: Server, signer: Signer) -> None:
        p = self.p
        self.say(f"figure 2: batches of {p.batch_size}, {p.batch_concurrency} in flight; "
                 "bracketed by all-core verification")
        self.note_load("figure 2")
        per = p.batch_size

        def spec(bodies: str, duration: float) -> dict[str, Any]:
            return {"mode": "closed", "url": node.url, "path": "/v1/transfers/batch",
                    "bodies_file": bodies, "concurrency": p.batch_concurrency,
                    "duration": duration, "check": "accepted", "items_per_body": per,
                    "node_pid": node.pid}

        warm = self.write_bodies("fig2-warm", signer.bodies(per * p.batch_concurrency, per))
        warm_run = self.load(spec(warm, 60))
        estimate = max(warm_run["items_per_s"], 100.0)

        def ceiling() -> float:
            return self.verify_ceiling(self.workers, p.verify_seconds)

        verify = [ceiling()]
        runs = []
        for rep in range(p.reps):
            n = max(int(estimate * p.fig2_seconds * 1.4), 2 * p.batch_concurrency * per)
            bodies = self.write_bodies(f"fig2-{rep}", signer.bodies(n, per))
            run = self.load(spec(bodies, p.fig2_seconds))
            runs.append(run)
            estimate = max(run["items_per_s"], 100.0)
            self.say(f"  rep {rep + 1}: {run['items_per_s']:.0f} transfers/s "
                     f"(verify ceiling {verify[-1]:.0f}/s)")
            self.check_refusals("figure 2", run)
            verify.append(ceiling())
        self.details["fig2_runs"] = runs
        rates = [r["items_per_s"] for r in runs]
        ratios = [r / ((verify[i] + verify[i + 1]) / 2) for i, r in enumerate(rates)]
        cpu = [r["node_cpu_s"] / r["items_ok"] * 1e6 for r in runs]
        self.add(Figure("ceiling.verify_all_cores", med(verify), "verifications/s", verify,
                        note=f"{self.workers} processes"))
        self.add(Figure("fig2.transfers_per_s", med(rates), "transfers/s", rates))
        self.add(Figure("fig2.ratio_to_verify_all_cores", med(ratios), "ratio", ratios,
                        target=">= 0.45"))
        self.add(Figure("fig2.node_cpu_per_transfer", med(cpu), "µs/transfer", cpu))

    # --- profiling (optional, after the measured runs) -----------------------------------

    def profile(self, node: Server, signer: Signer) -> None:
        assert self.profile_dir is not None
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(py_spy).exists():
            self.say("profile: py-spy not found; pip install py-spy")
            return
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        p = self.p
        seconds = max(p.fig1_seconds, p.fig2_seconds) * 2
        for (name, path, per, conc), kind in [
            (fig, kind)
            for fig in (("fig1", "/v1/transfers", 1, p.concurrency),
                        ("fig2", "/v1/transfers/batch", p.batch_size, p.batch_concurrency))
            for kind in ("wall", "gil")
        ]:
            rate = self.figures[f"{name}.transfers_per_s"].value
            assert isinstance(rate, float)
            bodies = self.write_bodies(f"profile-{name}", signer.bodies(
                int(rate * seconds * 1.3) + conc * per, per))
            raw = self.profile_dir / f"{name}.{kind}.collapsed"
            # wall: every thread, idle or not (what each thread waits on); gil: only the
            # thread holding the GIL (where the Python CPU of a GIL-bound process goes).
            flags = ["--threads", "--idle"] if kind == "wall" else ["--threads", "--gil"]
            spy = subprocess.Popen(
                [py_spy, "record", "--pid", str(node.pid), "--duration", str(int(seconds)),
                 "--rate", "200", "--format", "raw", "--nonblocking", *flags, "-o", str(raw)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(0.5)
            self.load({"mode": "closed", "url": node.url, "path": path, "bodies_file": bodies,
                       "concurrency": conc, "duration": seconds, "check":
                       "accepted" if per > 1 else "status", "items_per_body": per})
            spy.wait(timeout=seconds + 60)
            self.say(f"profile of {name} ({kind}) written to {raw}; "
                     f"summary: python -m bench.profile {raw}")

    # --- figures 4 and 5 ------------------------------------------------------------------

    def build_log(self, name: str, entries: int) -> Path:
        data = self.work / name
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-m", "bench.make_log", "--data", str(data),
                        "--entries", str(entries), "--members", str(self.p.log_members),
                        "--workers", str(self.workers)],
                       check=True, env=child_env(), stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        self.say(f"  built {name}: {entries} entries in {time.monotonic() - t0:.1f}s")
        (data / "config.toml").write_text(NODE_CONFIG)
        return data

    def figure4_5(self) -> None:
        from bench.make_log import member_keys
        from crypto.tiles import Tile, tile_path

        p = self.p
        self.say(f"figure 4: building logs of {p.small_log} and {p.large_log} entries")
        small_dir = self.build_log("log-small", p.small_log)
        large_dir = self.build_log("log-large", p.large_log)
        audit_dir = large_dir
        if p.audit_log != p.large_log:
            audit_dir = self.build_log("log-audit", p.audit_log)
        rng = random.Random(self.run_seed)
        self.note_load("figure 4")

        def paths(size: int) -> tuple[list[str], list[str]]:
            inc = [f"/v1/log/inclusion?index={rng.randrange(size)}&size={size}"
                   for _ in range(p.get_requests)]
            tiles = [f"/log/{tile_path(Tile(0, rng.randrange(size // 256)))}"
                     for _ in range(p.get_requests)]
            return inc, tiles

        def gets(runs: list[tuple[Server, list[str]]]) -> list[dict[str, Any]]:
            spec = {"mode": "get", "concurrency": 1, "runs": [
                {"url": server.url, "paths": todo, "warmup": min(20, len(todo)),
                 "node_pid": server.pid} for server, todo in runs]}
            results: list[dict[str, Any]] = self.load(spec)["runs"]
            for run, (_, todo) in zip(results, runs):
                if run["errors"] or run["requests_ok"] != len(todo):
                    raise RuntimeError(f"log reads failed: {run['statuses']} {run['errors']} "
                                       f"{run['refusals']}")
            return results

        small = self.server(node_server("log-small", small_dir, self.logs))
        small.start()
        large = self.server(node_server("log-large", large_dir, self.logs))
        audit_node = large
        if p.audit_log != p.large_log:
            audit_node = self.server(node_server("log-audit", audit_dir, self.logs))
            audit_node.start()
        s_inc, s_tiles = paths(p.small_log)
        l_inc, l_tiles = paths(p.large_log)
        audit_seed = member_keys(1, p.log_members)[0].seed.hex()
        rows: list[dict[str, Any]] = []
        for rep in range(max(p.reps, p.audit_reps)):
            large.start()
            mem_start = memory_kib(large.pid)
            row: dict[str, Any] = {"start_s": large.start_seconds,
                                   "rss_after_start_kib": mem_start["VmRSS"]}
            if rep < p.reps:
                # Small and large alternate closely, in one load-generator process.
                (row["inc_small"], row["inc_large"], row["tile_small"],
                 row["tile_large"]) = gets([(small, s_inc), (large, l_inc), (small, s_tiles),
                                           (large, l_tiles)])
            if rep < p.audit_reps:
                audit = self.load({"mode": "audit", "url": audit_node.url,
                                   "member_seed": audit_seed, "node_pid": audit_node.pid,
                                   "timeout": 7200})
                if not audit["passed"] or audit["entries"] != p.audit_log:
                    raise RuntimeError(f"the audit failed: {audit}")
                row["audit"] = audit
            row["memory_kib"] = memory_kib(large.pid)
            rows.append(row)
            self.say(f"  rep {rep + 1}: start {large.start_seconds:.2f}s"
                     + (f", inclusion {row['inc_small']['latency']['p50_ms']:.2f}/"
                        f"{row['inc_large']['latency']['p50_ms']:.2f} ms" if "inc_small" in row
                        else "")
                     + (f", audit {row['audit']['entries_per_s']:.0f} entries/s"
                        if "audit" in row else ""))
            large.stop()
        small.stop()
        audit_node.stop()
        self.details["fig4_5_runs"] = rows
        per_transfer = (disk_bytes(large_dir) - disk_bytes(small_dir)) / (p.large_log - p.small_log)

        size_note = (f"{p.small_log:,} vs {p.large_log:,} entries"
                     + (" (--quick: 100,000 stands in for 1,000,000)" if p.mode == "quick" else "")
                     + (" (--smoke: tiny logs)" if p.mode == "smoke" else ""))
        timed = [r for r in rows if "inc_small" in r]
        for what, key in (("inclusion", "inc"), ("tile", "tile")):
            s = [r[f"{key}_small"]["latency"]["p50_ms"] for r in timed]
            lg = [r[f"{key}_large"]["latency"]["p50_ms"] for r in timed]
            ratio = [b / a for a, b in zip(s, lg)]
            label = "inclusion proof" if what == "inclusion" else "level-0 hash tile"
            self.add(Figure(f"fig4.{what}_small", med(s), "ms", s,
                            note=f"{label}, p50 of {p.get_requests} sequential GETs, "
                            f"{p.small_log:,} entries"))
            self.add(Figure(f"fig4.{what}_large", med(lg), "ms", lg,
                            note=f"{p.large_log:,} entries"))
            self.add(Figure(f"fig4.{what}_ratio", med(ratio), "ratio", ratio, target="<= 2",
                            note=size_note))
        starts = [r["start_s"] for r in rows]
        self.add(Figure("fig4.start_time", med(starts), "s", starts, target="<= 3",
                        note=f"launch to listening, {p.large_log:,} entries"))
        rss = [r["rss_after_start_kib"] * 1024 / 1e6 for r in rows]
        peak = [r["memory_kib"]["VmHWM"] * 1024 / 1e6 for r in rows]
        self.add(Figure("fig4.rss_after_start", med(rss), "MB", rss))
        self.add(Figure("fig4.peak_rss", max(peak), "MB", peak, target="<= 250", agg="worst",
                        note="VmHWM after proofs and tiles"
                        + (" and a full audit" if audit_node is large else "")))
        self.add(Figure("fig4.disk_per_transfer", per_transfer, "B/transfer",
                        note="(large − small) on disk ÷ (large − small) entries"))
        audits = [r["audit"] for r in rows if "audit" in r]
        audit_rates = [a["entries_per_s"] for a in audits]
        audit_cpu = [a["node_cpu_s"] / p.audit_log * 1e6 for a in audits]
        auditor_cpu = [a["client_cpu_s"] / p.audit_log * 1e6 for a in audits]
        self.add(Figure("fig5.audit_entries_per_s", med(audit_rates), "entries/s", audit_rates,
                        note=f"audit_log over HTTP with a member key, {p.audit_log:,} entries"
                        + (" (--quick: not the 100,000-entry log, to stay within 3 minutes)"
                           if p.mode == "quick" else "")))
        self.add(Figure("fig5.auditor_cpu_per_entry", med(auditor_cpu), "µs/entry",
                        auditor_cpu, note="the auditing process"))
        self.add(Figure("fig5.node_cpu_per_entry", med(audit_cpu), "µs/entry", audit_cpu,
                        note="the node serving the audit"))

    # --- the whole run ----------------------------------------------------------------------

    def run(self) -> None:
        self.say(f"mode {self.p.mode}; work directory {self.work}")
        self.pool.submit(ceilings.verify_rate, 0.01).result()  # start the workers
        list(self.pool.map(abs, range(self.workers)))
        want = (lambda f: not self.only or f in self.only)
        self.machine_ceilings()
        if want("1") or want("2"):
            self.say(f"figures 1-2: node with {self.p.members} members")
            node, ledger_id = self.start_ledger_node()
            signer = Signer(self.pool, self.workers, ledger_id, self.run_seed, self.p.members)
            if want("1"):
                self.figure1(node, signer)
            if want("2"):
                self.figure2(node, signer)
            if self.profile_dir is not None and want("1") and want("2"):
                self.profile(node, signer)
            node.stop()
        if want("3"):
            from bench.fig3 import figure3

            fig1 = self.figures.get("fig1.transfers_per_s")
            figure3(self, fig1.value if fig1 and isinstance(fig1.value, float) else None)
        if want("4") or want("5"):
            self.figure4_5()
        self.note_load("end")

    def results(self) -> dict[str, Any]:
        return {
            "meta": machine(self.p, self.loads, time.monotonic() - self.started),
            "figures": {name: fig.to_json() for name, fig in self.figures.items()},
            "details": self.details,
        }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(p: Params, loads: list[tuple[str, list[float]]], seconds: float) -> dict[str, Any]:
    from importlib.metadata import version

    return {
        "mode": p.mode,
        "params": p.__dict__,
        "command": "python -m " + " ".join(["bench"] + sys.argv[1:]),
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {pkg: version(pkg) for pkg in ("aiohttp", "aiosqlite", "pynacl")},
        "load_average": loads,
        "seconds": round(seconds, 1),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__.split("\n\n")[0].replace("\n", " "))
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="under 3 minutes on 2 cores")
    group.add_argument("--smoke", action="store_true", help="tiny counts: checks the harness")
    parser.add_argument("--out", default="bench-results.json", type=Path,
                        help="where to write the JSON results (default bench-results.json)")
    parser.add_argument("--workdir", type=Path,
                        help="keep data directories and logs here (default: a temporary "
                        "directory, removed afterwards)")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="after the measured runs, record py-spy profiles of the node "
                        "under figure 1 and 2 load into DIR")
    parser.add_argument("--only", default="", metavar="FIGS",
                        help="run only these figures, e.g. 1,2 (for working on one figure; "
                        "a report runs them all)")
    args = parser.parse_args(argv)
    only = frozenset(f.strip() for f in args.only.split(",") if f.strip())
    params = MODES["smoke" if args.smoke else "quick" if args.quick else "full"]
    keep = args.workdir is not None
    if keep:
        args.workdir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="tally-bench-", dir=args.workdir))
    else:
        work = Path(tempfile.mkdtemp(prefix="tally-bench-"))
    bench = Bench(params, work, args.out, args.profile, only)
    try:
        bench.run()
    finally:
        bench.close()
        results = bench.results()
        args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        bench.say(f"wrote {args.out} ({results['meta']['seconds']}s)")
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
