"""Figure 3's work, counted: what one two-hop payment costs each node, in events, not time.

    python -m bench.count3 [--payments 400] [--in-flight 8]

Three nodes in this one process (A pays C through B, as figure 3 sets them up), signature
checks on each node's event loop (``signature_workers = 0``, so every one is counted here),
``--in-flight`` payments at a time posted to A's ``POST /v1/payments``. After a warm-up, it
counts per node until every payment has settled, and prints each count per fulfilled
payment: HTTP requests in and out (by route), Ed25519 signatures made and checked, writer
requests (by kind) and commits, hops to an aiosqlite thread, JSON parsed and canonical JSON
encoded, and the CPU time of the whole process. On a machine whose timings move by half
between runs, these counts do not move: compare them before and after a change.

Each node's work is told apart by a context variable, set for its requests (a middleware)
and inherited by the tasks it starts. A measuring tool: it patches the functions it counts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import aiosqlite
import nacl.bindings
from aiohttp import web

import crypto.canonical
import node.api
import node.server  # noqa: F401  (its make_app is replaced: see instrument)
from bench.sign import member_key
from crypto.canonical import canonical_json
from crypto.keys import read_key_file
from node import writer as writer_mod
from node.client import TallyClient, now_ms
from node.config import ApiSettings, Config, FederationSettings, NodeSettings
from node.server import Served, serve
from node.service import Node, init_data_dir
from protocol.federation import PaymentOrder
from protocol.messages import sign_message

WHO: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="-")
COUNTS: dict[str, Counter[str]] = {}

CONFIG = Config(
    node=NodeSettings(signature_workers=0),
    api=ApiSettings(rate_per_key_per_second=1e9, rate_burst=10**9, max_queue=200000,
                    max_connections_per_client=0),
    federation=FederationSettings(max_in_flight_value=10**12, max_in_flight_count=100000,
                                  peer_rate_per_second=1e9, peer_rate_burst=10**9),
)


def count(what: str, n: int = 1) -> None:
    COUNTS.setdefault(WHO.get(), Counter())[what] += n


def _wrap(owner: Any, name: str, what: Any) -> None:
    """Count every call of ``owner.name`` as ``what`` (a string, or a function of the call's
    arguments giving one)."""
    original = getattr(owner, name)

    if asyncio.iscoroutinefunction(original):
        async def counted_async(*args: Any, **kwargs: Any) -> Any:
            count(what(*args, **kwargs) if callable(what) else what)
            return await original(*args, **kwargs)

        setattr(owner, name, counted_async)
    else:
        def counted(*args: Any, **kwargs: Any) -> Any:
            count(what(*args, **kwargs) if callable(what) else what)
            return original(*args, **kwargs)

        setattr(owner, name, counted)


def instrument() -> None:
    import node.federation
    import node.gossip
    import node.logapi
    import node.peerapi
    import node.witness  # noqa: F401  (imported late by the node: here, so they are patched)

    _wrap(nacl.bindings, "crypto_sign", "ed25519 sign")
    _wrap(nacl.bindings, "crypto_sign_open", "ed25519 verify")
    _wrap(aiosqlite.Connection, "_execute", "aiosqlite hop")
    _wrap(json, "loads", "json.loads")
    _wrap(json, "dumps", "json.dumps")
    # Imported by name into many modules: replaced in each of them.
    for name, what in (("parse_json", "parse_json (strict)"),
                       ("canonical_json", "canonical_json")):
        original = getattr(crypto.canonical, name)
        for module in list(sys.modules.values()):
            if getattr(module, name, None) is original:
                _wrap(module, name, what)
    _wrap(TallyClient, "_request_raw",
          lambda self, method, path, *a, **k: f"http out {method} {path.split('?')[0]}")
    _wrap(writer_mod.Writer, "submit_nowait",
          lambda self, request: f"writer {type(request).__name__}")
    _wrap(writer_mod.Writer, "_commit", "writer commit")
    original_make_app = node.api.make_app

    def make_app(node: Node) -> web.Application:
        app = original_make_app(node)
        name = WHO.get()

        @web.middleware
        async def who(request: web.Request, handler: Any) -> web.StreamResponse:
            WHO.set(name)
            count(f"http in {request.method} {request.path}")
            response: web.StreamResponse = await handler(request)
            return response

        app.middlewares.insert(0, who)
        return app

    node.server.make_app = make_app  # type: ignore[attr-defined]


async def start(root: Path, name: str, sides: dict[str, Served]) -> None:
    data = root / name
    await init_data_dir(data, name=name)
    token = WHO.set(name)  # the node's own tasks (writer, ticker) inherit it
    try:
        sides[name] = await serve(Node(data, CONFIG), "127.0.0.1", 0)
    finally:
        WHO.reset(token)


async def run(payments: int, in_flight: int) -> None:
    instrument()
    root = Path(tempfile.mkdtemp(prefix="tally-count3-"))
    sides: dict[str, Served] = {}
    try:
        for name in ("A", "B", "C"):
            await start(root, name, sides)
        urls = {k: s.url for k, s in sides.items()}
        stewards = {k: read_key_file(root / k / "steward.key")[1] for k in sides}
        big = 10**12
        async with TallyClient(urls["A"], stewards["A"]) as a, \
                TallyClient(urls["B"], stewards["B"]) as b, \
                TallyClient(urls["C"], stewards["C"]) as c:
            for i in range(8):
                await a.admit(f"m{i}", member_key(1, i).public, [stewards["A"]], big, big)
            await c.admit("payee", member_key(1, 10**6).public, [stewards["C"]], big, big)
            proposed = await a.propose_line(urls["B"], [stewards["A"]], big, big, 1, 1)
            await b.accept_line(proposed["line"], [stewards["B"]])
            proposed = await b.propose_line(urls["C"], [stewards["B"]], big, big, 1, 1)
            await c.accept_line(proposed["line"], [stewards["C"]])
            ledger = (await a.info()).ledger_id
            payee_node = (await c.info()).node_key

        def orders(n: int) -> list[bytes]:
            valid = now_ms() + 30 * 60 * 1000
            return [canonical_json(sign_message(PaymentOrder(  # type: ignore[arg-type]
                ledger, os.urandom(16).hex(), f"m{i % 8}", "payee", payee_node, 1 + i % 7,
                10**9, valid), member_key(1, i % 8)).to_json()) for i in range(n)]

        async def pay(bodies: list[bytes]) -> Counter[str]:
            results: Counter[str] = Counter()
            queue = list(reversed(bodies))
            async with aiohttp.ClientSession() as session:
                async def worker() -> None:
                    while queue:
                        body = queue.pop()
                        async with session.post(urls["A"] + "/v1/payments", data=body, headers={
                                "Content-Type": "application/json"}) as resp:
                            doc = await resp.json()
                            results[doc.get("result") or doc.get("code", "?")] += 1

                await asyncio.gather(*(worker() for _ in range(in_flight)))
            return results

        async def settle() -> None:
            while any(h.state == "held" for s in sides.values()
                      for h in s.node.ledger.holds.values()) or any(
                    s.node.federation and s.node.federation.payments for s in sides.values()):
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.2)  # the last checkpoint and its witnessing

        await pay(orders(max(20, in_flight * 2)))  # warm-up: connections, routes
        await settle()
        warm = orders(payments)
        COUNTS.clear()
        cpu0, wall0 = time.process_time(), time.monotonic()
        results = await pay(warm)
        paid_wall = time.monotonic() - wall0
        await settle()
        cpu = time.process_time() - cpu0
        done = results.get("ok", 0)
        print(f"{payments} payments, {in_flight} in flight: {dict(results)}; "
              f"{done / paid_wall:.0f}/s; process CPU {cpu / max(done, 1) * 1e3:.2f} ms "
              "per fulfilled payment (three nodes, client and harness)")
        names = sorted({k for c in COUNTS.values() for k in c})
        print(f"{'per fulfilled payment':44}" + "".join(f"{n:>8}" for n in ("A", "B", "C"))
              + f"{'all':>8}")
        for what in names:
            row = [COUNTS.get(n, Counter())[what] / max(done, 1) for n in ("A", "B", "C")]
            print(f"{what[:44]:44}" + "".join(f"{v:8.2f}" for v in row) + f"{sum(row):8.2f}")
        other = {k: v for k, v in COUNTS.get("-", Counter()).items()}
        if other:
            print("not attributed to a node:", other)
    finally:
        for s in sides.values():
            await s.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payments", type=int, default=400)
    parser.add_argument("--in-flight", type=int, default=8)
    args = parser.parse_args()
    asyncio.run(run(args.payments, args.in_flight))


if __name__ == "__main__":
    main()
