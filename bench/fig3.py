"""Figure 3: two-hop cross-collective payments per second, counting only fulfilled ones.

Three node processes on loopback — A pays C through B, over two credit lines with room to
spare — and the load generator posting payment orders, signed before the timed phase, to
A's ``POST /v1/payments`` (each request returns only when the payment is done or refused),
with as many in flight as figure 1 has connections: a payment waits for several durable
commits in turn on the three nodes (quote, PREPAREs, fulfilment), so with fewer in flight
(16 until session 6) the rate measured that latency, not what the nodes can carry.
Reported beside the rate: the share that expired (or was still pending when the request
returned), p50/p99 latency from an open-loop run at half the measured rate, the three
nodes' CPU time per fulfilled payment, and the ratio to figure 1 from the same run.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.procs import Server, cpu_seconds, node_server

if TYPE_CHECKING:
    from bench.run import Bench

FED_CONFIG = """
[federation]
# Room for the benchmark's payments in flight: risk caps are not what this measures.
max_in_flight_value = 1000000000000
max_in_flight_count = 100000
peer_rate_per_second = 1000000000.0
peer_rate_burst = 1000000000
"""


def _orders(ledger: str, payee_node: Any, seed: int, payers: int, count: int) -> bytes:
    from bench.sign import member_key
    from crypto.canonical import canonical_json
    from node.client import now_ms
    from protocol.federation import PaymentOrder
    from protocol.messages import sign_message

    keys = [member_key(seed, i) for i in range(payers)]
    valid = now_ms() + 30 * 60 * 1000
    lines = []
    for n in range(count):
        i = n % payers
        order = PaymentOrder(ledger, os.urandom(16).hex(), f"m{i}", "payee", payee_node,
                             1 + n % 7, 10**9, valid)
        lines.append(canonical_json(sign_message(order, keys[i]).to_json()))
    return b"\n".join(lines) + b"\n"


async def _setup(urls: dict[str, str], data: dict[str, Path], seed: int,
                 payers: int) -> tuple[str, Any]:
    from bench.sign import member_key
    from crypto.keys import read_key_file
    from node.client import TallyClient

    stewards = {k: read_key_file(d / "steward.key")[1] for k, d in data.items()}
    big = 10**12
    async with TallyClient(urls["A"], stewards["A"]) as a, \
            TallyClient(urls["B"], stewards["B"]) as b, \
            TallyClient(urls["C"], stewards["C"]) as c:
        for i in range(payers):
            await a.admit(f"m{i}", member_key(seed, i).public, [stewards["A"]], big, big)
        payee = member_key(seed, 10**6)
        await c.admit("payee", payee.public, [stewards["C"]], big, big)
        proposed = await a.propose_line(urls["B"], [stewards["A"]], big, big, 1, 1)
        await b.accept_line(proposed["line"], [stewards["B"]])
        proposed = await b.propose_line(urls["C"], [stewards["B"]], big, big, 1, 1)
        await c.accept_line(proposed["line"], [stewards["C"]])
        info_a, info_c = await a.info(), await c.info()
    return info_a.ledger_id, info_c.node_key


def figure3(bench: Bench, fig1_rate: float | None) -> None:
    from bench.run import NODE_CONFIG, Figure, med

    p = bench.p
    payers = min(p.members, 64)
    concurrency = p.concurrency  # as figure 1, to which it is compared
    bench.say(f"figure 3: two-hop payments A -> B -> C, {concurrency} in flight")
    bench.note_load("figure 3")
    servers: dict[str, Server] = {}
    data: dict[str, Path] = {}
    for name in ("A", "B", "C"):
        d = bench.work / f"fed-{name}"
        d.mkdir(mode=0o700)
        (d / "config.toml").write_text(NODE_CONFIG + FED_CONFIG)
        data[name] = d
        servers[name] = bench.server(node_server(f"fed-{name}", d, bench.logs))
        servers[name].start()
    urls = {k: s.url for k, s in servers.items()}
    ledger, payee_node = asyncio.run(_setup(urls, data, bench.run_seed, payers))
    seconds = max(p.fig1_seconds, 1.0)
    # Enough pre-signed orders for every run; each run uses its own (an order pays once).
    per_run = int(max(fig1_rate or 200.0, 50.0) * seconds) + 200
    runs = p.reps + 2  # warm-up, the repetitions, and the open-loop latency run

    rates, expiry, cpu = [], [], []
    for r in range(runs - 1):
        bodies = bench.write_bodies(f"fig3-{r}", _orders(ledger, payee_node, bench.run_seed,
                                                         payers, per_run))
        before = {k: cpu_seconds(s.pid) for k, s in servers.items()}
        result = bench.load({"mode": "closed", "url": urls["A"], "path": "/v1/payments",
                             "bodies_file": bodies, "concurrency": concurrency,
                             "duration": seconds if r else min(seconds, 1.0),
                             "request_timeout": 120, "node_pid": servers["A"].pid})
        used = sum(cpu_seconds(s.pid) - before[k] for k, s in servers.items())
        bench.details.setdefault("fig3_runs", []).append(result)
        if r == 0:
            continue  # warm-up: connections, caches, the graph of lines
        done = result["items_ok"]
        refused = result["refusals"]
        expired = refused.get("expired", 0) + result["statuses"].get("202", 0)
        rates.append(result["items_per_s"])
        expiry.append(expired / max(1, done + result["items_refused"]))
        cpu.append(used / max(done, 1) * 1e6)
    rate = med(rates)
    bench.add(Figure("fig3.two_hop_payments_per_s", rate, "payments/s", rates,
                     note=f"fulfilled only; closed loop, {concurrency} in flight"))
    bench.add(Figure("fig3.expiry_rate", med(expiry), "share", expiry, target="<= 0"))
    bench.add(Figure("fig3.nodes_cpu_per_payment", med(cpu), "µs/payment", cpu,
                     note="user+sys of all three nodes ÷ fulfilled payments"))
    if fig1_rate:
        ratios = [x / fig1_rate for x in rates]
        bench.add(Figure("fig3.ratio_to_fig1", med(ratios), "ratio", ratios, target=">= 0.2",
                         note="figure 1's median from this run"))
    bodies = bench.write_bodies("fig3-open", _orders(
        ledger, payee_node, bench.run_seed, payers, int(max(rate / 2, 5) * p.latency_seconds)))
    opened = bench.load({"mode": "open", "url": urls["A"], "path": "/v1/payments",
                         "bodies_file": bodies, "rate": max(rate / 2, 5),
                         "duration": p.latency_seconds, "request_timeout": 120,
                         "node_pid": servers["A"].pid})
    bench.details["fig3_open"] = opened
    lat = opened["latency"]
    bench.add(Figure("fig3.latency_p50", lat.get("p50_ms", 0.0), "ms",
                     note=f"open loop at {max(rate / 2, 5):.0f}/s (half the rate)"))
    bench.add(Figure("fig3.latency_p99", lat.get("p99_ms", 0.0), "ms"))
    for s in servers.values():
        s.stop()
