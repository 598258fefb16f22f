"""The load generator: a separate process that drives a server on loopback and reports.

    python -m bench.load SPEC.json        # prints one JSON object with the results
    python -m bench.load --serve          # one spec per line on stdin, one result per line

(``--serve`` is how ``python -m bench`` uses it: one generator process for the whole run, so
that its start-up is paid once.)

It sends only to 127.0.0.1, at most ``max_requests`` requests (or the bodies it was given)
and for at most ``duration`` seconds, and gives up entirely after ``timeout`` seconds. The
aiohttp client's connector is limited to ``concurrency`` connections.

Modes (``spec["mode"]``):

- ``closed``: ``concurrency`` workers each POST the next body as soon as their previous
  answer arrived (closed loop): the most the server sustains. ``warmup`` bodies go first,
  untimed. With ``cycle`` the bodies are reused (the bare handler does not care).
- ``open``: one request every 1/``rate`` seconds whatever the answers (open loop); each
  latency runs from the request's *scheduled* time, so a server that falls behind is charged
  for the queue it causes (no coordinated omission).
- ``get``: for each of ``runs`` in turn, GET each of its ``paths`` (``concurrency`` at a
  time); latencies.
- ``audit``: ``node.audit.audit_log`` over HTTP with a member's key, as ``tally audit`` does.

If ``node_pid`` is given, the node's CPU time (user+sys from /proc) is read right before
and after the timed phase, so the CPU per transfer covers exactly the measured requests.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from bench.procs import cpu_seconds, thread_cpu_seconds

JSON_HEADERS = {"Content-Type": "application/json"}


def client_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def percentiles(latencies: list[float]) -> dict[str, float]:
    if not latencies:
        return {}
    s = sorted(latencies)

    def at(q: float) -> float:
        return s[min(len(s) - 1, int(q * len(s)))] * 1000

    return {"p50_ms": at(0.50), "p90_ms": at(0.90), "p99_ms": at(0.99), "max_ms": s[-1] * 1000,
            "mean_ms": sum(s) / len(s) * 1000, "n": len(s)}


class Tally:
    """Counts of what came back."""

    def __init__(self, check: str, items_per_body: int) -> None:
        self.check = check
        self.items_per_body = items_per_body
        self.ok = 0  # requests answered as expected
        self.items_ok = 0  # transfers accepted
        self.items_refused = 0
        self.statuses: Counter[str] = Counter()
        self.results: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.last_done = 0.0

    def record(self, status: int, raw: bytes, latency: float) -> None:
        self.statuses[str(status)] += 1
        self.latencies.append(latency)
        self.last_done = time.perf_counter()
        if self.check == "accepted" and status == 200:
            doc = json.loads(raw)
            accepted = int(doc["accepted"])
            self.ok += 1
            self.items_ok += accepted
            self.items_refused += len(doc["results"]) - accepted
            if accepted != len(doc["results"]):
                self.results.update(r["result"] for r in doc["results"])
        elif status in (200, 201):
            self.ok += 1
            self.items_ok += self.items_per_body
        else:
            self.items_refused += self.items_per_body
            try:
                self.results[str(json.loads(raw).get("code"))] += 1
            except ValueError:
                self.results["unparsable"] += 1

    def to_json(self) -> dict[str, Any]:
        return {
            "requests_ok": self.ok,
            "items_ok": self.items_ok,
            "items_refused": self.items_refused,
            "statuses": dict(self.statuses),
            "refusals": dict(self.results),
            "errors": dict(self.errors),
            "latency": percentiles(self.latencies),
        }


def read_bodies(path: str) -> list[bytes]:
    return [line for line in Path(path).read_bytes().split(b"\n") if line]


async def post(session: aiohttp.ClientSession, url: str, body: bytes, tally: Tally,
               since: float) -> None:
    try:
        async with session.post(url, data=body, headers=JSON_HEADERS) as resp:
            raw = await resp.read()
            tally.record(resp.status, raw, time.perf_counter() - since)
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        tally.errors[type(exc).__name__] += 1


async def closed_loop(session: aiohttp.ClientSession, url: str, bodies: list[bytes],
                      concurrency: int, stop_at: float, cycle: bool, max_requests: int,
                      tally: Tally) -> int:
    sent = 0

    async def worker() -> None:
        nonlocal sent
        while sent < max_requests and time.perf_counter() < stop_at:
            if sent >= len(bodies) and not cycle:
                return
            body = bodies[sent % len(bodies)]
            sent += 1
            await post(session, url, body, tally, time.perf_counter())

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sent


def session_for(spec: dict[str, Any]) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=int(spec.get("concurrency", 64)))
    return aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=spec.get("request_timeout", 120))
    )


def node_cpu(spec: dict[str, Any]) -> float | None:
    pid = spec.get("node_pid")
    return cpu_seconds(int(pid)) if pid else None


def node_threads(spec: dict[str, Any]) -> dict[str, float]:
    pid = spec.get("node_pid")
    try:
        return thread_cpu_seconds(int(pid)) if pid else {}
    except OSError:
        return {}


def timed(spec: dict[str, Any]) -> dict[str, Any]:
    return {"t": time.perf_counter(), "node_cpu": node_cpu(spec), "client_cpu": client_cpu(),
            "threads": node_threads(spec)}


def since(start: dict[str, Any], spec: dict[str, Any], end_t: float) -> dict[str, Any]:
    n1 = node_cpu(spec)
    n0 = start["node_cpu"]
    c0 = start["client_cpu"]
    t0 = start["t"]
    assert t0 is not None and c0 is not None
    threads = node_threads(spec)
    return {
        "elapsed": end_t - t0,
        "node_cpu_s": (n1 - n0) if n1 is not None and n0 is not None else None,
        "client_cpu_s": client_cpu() - c0,
        # CPU seconds of the node's threads by name over the timed phase (the event loop's
        # thread is named after the process).
        "node_thread_cpu_s": {k: round(v - start["threads"].get(k, 0.0), 3)
                              for k, v in threads.items()},
    }


async def run_closed(spec: dict[str, Any]) -> dict[str, Any]:
    url = spec["url"] + spec["path"]
    bodies = read_bodies(spec["bodies_file"])
    conc = int(spec["concurrency"])
    warmup = int(spec.get("warmup", 0))
    cycle = bool(spec.get("cycle", False))
    check = spec.get("check", "status")
    per = int(spec.get("items_per_body", 1))
    async with session_for(spec) as session:
        if warmup:
            await closed_loop(session, url, bodies[:warmup], conc, time.perf_counter() + 60,
                              False, warmup, Tally(check, per))
        timed_bodies = bodies[warmup:] if not cycle else bodies
        tally = Tally(check, per)
        start = timed(spec)
        assert start["t"] is not None
        sent = await closed_loop(session, url, timed_bodies, conc,
                                 start["t"] + float(spec["duration"]), cycle,
                                 int(spec.get("max_requests", 10**9)), tally)
        out = since(start, spec, tally.last_done or time.perf_counter())
    out.update(tally.to_json(), sent=sent)
    out["requests_per_s"] = tally.ok / out["elapsed"] if out["elapsed"] > 0 else 0.0
    out["items_per_s"] = tally.items_ok / out["elapsed"] if out["elapsed"] > 0 else 0.0
    return out


async def run_open(spec: dict[str, Any]) -> dict[str, Any]:
    url = spec["url"] + spec["path"]
    bodies = read_bodies(spec["bodies_file"])
    rate = float(spec["rate"])
    warmup = int(spec.get("warmup", 0))
    check = spec.get("check", "status")
    per = int(spec.get("items_per_body", 1))
    async with session_for(spec) as session:
        if warmup:
            await closed_loop(session, url, bodies[:warmup], min(8, warmup),
                              time.perf_counter() + 60, False, warmup, Tally(check, per))
        todo = bodies[warmup:][: int(rate * float(spec["duration"]))]
        tally = Tally(check, per)
        tasks = []
        start = timed(spec)
        t0 = start["t"]
        assert t0 is not None
        worst_lag = 0.0
        for i, body in enumerate(todo):
            scheduled = t0 + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                worst_lag = max(worst_lag, -delay)
            tasks.append(asyncio.create_task(post(session, url, body, tally, scheduled)))
        await asyncio.gather(*tasks)
        out = since(start, spec, time.perf_counter())
    out.update(tally.to_json(), sent=len(todo), offered_rate=rate,
               worst_dispatch_lag_ms=worst_lag * 1000)
    out["requests_per_s"] = tally.ok / out["elapsed"] if out["elapsed"] > 0 else 0.0
    return out


async def get_run(session: aiohttp.ClientSession, run: dict[str, Any]) -> dict[str, Any]:
    paths: list[str] = run["paths"]
    conc = int(run.get("concurrency", 1))
    tally = Tally("status", 1)
    for path in paths[: int(run.get("warmup", 0))]:
        async with session.get(run["url"] + path) as resp:
            await resp.read()
    todo = iter(paths)

    async def worker() -> None:
        for path in todo:
            t = time.perf_counter()
            try:
                async with session.get(run["url"] + path) as resp:
                    raw = await resp.read()
                    tally.record(resp.status, raw, time.perf_counter() - t)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                tally.errors[type(exc).__name__] += 1

    start = timed(run)
    await asyncio.gather(*(worker() for _ in range(conc)))
    out = since(start, run, time.perf_counter())
    out.update(tally.to_json())
    out["requests_per_s"] = tally.ok / out["elapsed"] if out["elapsed"] > 0 else 0.0
    return out


async def run_get(spec: dict[str, Any]) -> dict[str, Any]:
    """``runs``: a list of {url, paths, concurrency, warmup, node_pid}, run one after another
    (each timed on its own), so that runs against two servers alternate closely."""
    async with session_for(spec) as session:
        return {"runs": [await get_run(session, run) for run in spec["runs"]]}


async def run_audit(spec: dict[str, Any]) -> dict[str, Any]:
    from crypto.keys import SecretKey
    from node.audit import audit_log, http_source
    from node.client import TallyClient

    key = SecretKey(bytes.fromhex(spec["member_seed"]))
    async with TallyClient(spec["url"], key, timeout=float(spec.get("request_timeout", 120))) as c:
        await c.info()
        start = timed(spec)
        report = await audit_log(http_source(c), vkey=None, served_accounts=c.accounts)
        out = since(start, spec, time.perf_counter())
    out.update(entries=report.size, passed=report.passed,
               failed_checks=[t for ok, t in report.checks if not ok])
    out["entries_per_s"] = report.size / out["elapsed"] if out["elapsed"] > 0 else 0.0
    return out


MODES = {"closed": run_closed, "open": run_open, "get": run_get, "audit": run_audit}


def check_loopback(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname != "127.0.0.1":
        raise SystemExit(f"bench.load sends only to http://127.0.0.1, not to {url}")


def run_spec(spec: dict[str, Any]) -> dict[str, Any]:
    if spec["mode"] == "get":
        for r in spec["runs"]:
            check_loopback(r["url"])
    else:
        check_loopback(spec["url"])
    run = MODES[spec["mode"]]
    return asyncio.run(asyncio.wait_for(run(spec), float(spec.get("timeout", 600))))


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--serve"]:
        for line in sys.stdin:
            if line.strip():
                print(json.dumps(run_spec(json.loads(line))), flush=True)
        return
    if len(args) != 1:
        raise SystemExit("usage: python -m bench.load SPEC.json | --serve")
    print(json.dumps(run_spec(json.loads(Path(args[0]).read_text()))))


if __name__ == "__main__":
    main()
