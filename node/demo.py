"""``tally demo``: three collectives on this machine, members paying each other.

Layer: node. Everything runs on loopback in a temporary directory: three nodes (a time bank,
a food co-op and a workers' co-op), five members each with keys in their own home
directories, and a few hundred transfers signed by those members — some deliberately
beyond a limit, to show a refusal. The summary gives each node's URL; with ``--serve`` the
nodes keep running so you can try the CLI against them (the homes are printed).
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crypto.keys import read_key_file
from node.client import TallyClient, TallyError, transfer_body
from node.config import Config, LogSettings
from node.home import Home
from node.server import Served, serve, settle_collector, wait_for_stop_signal
from node.service import STEWARD_KEY, Node, init_data_dir
from protocol.messages import Unit
from protocol.units import format_amount

COLLECTIVES = [
    ("Riverside Time Bank", Unit("HOUR", "hours", 60), ["ana", "ben", "chloe", "dev", "eli"]),
    ("Greenway Food Co-op", Unit("CREDIT", "credits", 100), ["fay", "gus", "hana", "ivo", "jun"]),
    ("Northside Workers", Unit("HOUR", "hours", 60), ["kai", "lea", "max", "nia", "oli"]),
]


@dataclass
class DemoNode:
    name: str
    unit: Unit
    served: Served
    homes: dict[str, Path] = field(default_factory=dict)
    accepted: int = 0
    refused: dict[str, int] = field(default_factory=dict)


def _say(json_out: bool, text: str) -> None:
    if not json_out:
        print(text, flush=True)


async def run_demo(
    serve_forever: bool = False,
    transfers: int = 300,
    json_out: bool = False,
    base_port: int = 0,
    seed: int | None = None,
    keep: bool = False,
) -> dict[str, Any]:
    rng = random.Random(seed)
    root = Path(tempfile.mkdtemp(prefix="tally-demo-"))
    _say(json_out, f"Tally demo in {root} " + (
        "(kept afterwards)" if keep else "(removed at the end; --keep keeps it)"))
    nodes: list[DemoNode] = []
    config = Config(log=LogSettings(public_entries=True))
    try:
        for i, (name, unit, members) in enumerate(COLLECTIVES):
            data = root / f"node{i + 1}"
            await init_data_dir(data, name=name, unit=unit)
            port = base_port + i if base_port else 0
            served = await serve(Node(data, config), "127.0.0.1", port)
            demo = DemoNode(name, unit, served)
            nodes.append(demo)
            steward = read_key_file(data / STEWARD_KEY)[1]
            async with TallyClient(served.url) as client:
                for handle in members:
                    home = Home(root / "homes" / f"{handle}")
                    key = home.new_key()
                    home.remember(node=served.url, handle=handle)
                    demo.homes[handle] = home.path
                    await client.admit(handle, key.public, [steward],
                                       debit_limit=20 * unit.scale, credit_limit=40 * unit.scale)
            _say(json_out, f"  {name}: {served.url}, {len(members)} members admitted")

        across = await _across(nodes, root, json_out)
        _say(json_out, f"\nRunning {transfers} signed transfers within the collectives...")
        per_node = [transfers // len(nodes) + (1 if i < transfers % len(nodes) else 0)
                    for i in range(len(nodes))]
        for demo, count, (_, unit, members) in zip(nodes, per_node, COLLECTIVES):
            keys = {h: Home(demo.homes[h]).key() for h in members}
            async with TallyClient(demo.served.url) as client:
                info = await client.info()
            bodies = []
            for n in range(count):
                payer, payee = rng.sample(members, 2)
                # Mostly small payments; now and then one far beyond any limit, refused.
                amount = rng.randint(1, 3 * unit.scale) if n % 50 else 100 * unit.scale
                bodies.append(transfer_body(keys[payer], info.ledger_id, payer, payee, amount,
                                            memo=rng.choice(["gardening", "childcare", "repairs",
                                                             "lessons", "cooking", None])))
            async with TallyClient(demo.served.url) as client:
                for start in range(0, len(bodies), 100):
                    result = await client.submit_batch(bodies[start : start + 100])
                    for r in result["results"]:
                        if r["result"] in ("ok", "exists"):
                            demo.accepted += 1
                        else:
                            demo.refused[r["result"]] = demo.refused.get(r["result"], 0) + 1

        summary = await _summary(nodes)
        summary["across"] = across
        if json_out:
            print(json.dumps(summary, indent=2), flush=True)
        else:
            for demo, s in zip(nodes, summary["nodes"]):
                refused = ", ".join(f"{v} {k}" for k, v in demo.refused.items()) or "none"
                print(f"\n{demo.name}  {demo.served.url}")
                print(f"  transfers accepted {demo.accepted}, refused {refused}; "
                      f"log size {s['log_size']}; balances sum to {s['sum']}")
                for a in s["accounts"]:
                    label = {"member": a["handle"], "peer": "(credit line)"}.get(
                        a["kind"], "(forwarding)")
                    print(f"    {label:14} {format_amount(a['balance'], demo.unit):>20}")
        if serve_forever:
            first = nodes[0]
            handle = next(iter(first.homes))
            _say(json_out, (
                "\nThe nodes keep running; try, in another terminal:\n"
                f"  tally balance --home {first.homes[handle]}\n"
                f"  tally pay {list(first.homes)[1]} 1.5 --memo thanks --home {first.homes[handle]}\n"
                f"  tally history --home {first.homes[handle]}\n"
                "Stop with Ctrl-C."
            ))
            settle_collector()  # serving until stopped, as `tally node run` does
            await wait_for_stop_signal()
        return summary
    except TallyError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        raise
    finally:
        for demo in nodes:
            await demo.served.close()
        if not keep:
            # Keys, databases and members' homes: a few MB left in the temporary directory
            # at every run otherwise.
            shutil.rmtree(root, ignore_errors=True)


async def _across(nodes: list[DemoNode], root: Path, json_out: bool) -> dict[str, Any]:
    """Credit lines between the time bank and the food co-op (1 hour = 10 credits) and
    between the food co-op and the workers (10 credits = 1 hour); members paying members of
    the other collectives, directly and through the co-op in between, and one payment far
    beyond a line, refused."""
    river, green, north = nodes
    stewards = [read_key_file(root / f"node{i}" / STEWARD_KEY)[1] for i in (1, 2, 3)]
    async with TallyClient(river.served.url) as a, TallyClient(green.served.url) as b, \
            TallyClient(north.served.url) as c:
        # We let them owe us 15 hours; they let us owe them 150 credits.
        proposed = await a.propose_line(green.served.url, [stewards[0]], 15 * 60, 150 * 100,
                                        1000, 60)
        await b.accept_line(proposed["line"], [stewards[1]])
        proposed = await b.propose_line(north.served.url, [stewards[1]], 100 * 100, 10 * 60,
                                        60, 1000)
        await c.accept_line(proposed["line"], [stewards[2]])
        infos = {id(river): await a.info(), id(green): await b.info(), id(north): await c.info()}
    _say(json_out, f"\nCredit lines agreed: {river.name} <-> {green.name} <-> {north.name}; "
                   f"1 hour = 10 credits")
    payments: list[tuple[DemoNode, str, DemoNode, str, int]] = [
        (river, "ana", green, "fay", 150),  # 1.5 credits
        (river, "ben", green, "gus", 500),
        (green, "hana", river, "chloe", 30),  # 30 minutes
        (river, "dev", north, "kai", 45),  # 45 minutes, through the food co-op
        (north, "lea", river, "eli", 90),  # and back the other way
        (river, "dev", green, "ivo", 200),
        (river, "eli", green, "jun", 18_000),  # 180 credits: within eli's limit, beyond the line
    ]
    done, refused, routes = 0, [], []
    for src, payer, dst, payee, amount in payments:
        dst_info = infos[id(dst)]
        async with TallyClient(src.served.url, Home(src.homes[payer]).key()) as client:
            try:
                receipt = await client.pay_remote(payer, payee, dst_info.node_key, amount,
                                                  10**9)
            except TallyError as exc:
                refused.append(exc.code)
                _say(json_out, f"  {payer}@{src.name} -> {payee}@{dst.name}: "
                               f"{format_amount(amount, dst.unit)} refused ({exc.code}): "
                               f"{exc.detail}")
                continue
        done += 1
        via = receipt.get("route", [])[1:-1]
        routes.append({"payer": f"{payer}@{src.name}", "payee": f"{payee}@{dst.name}",
                       "via": via})
        _say(json_out, f"  {payer}@{src.name} -> {payee}@{dst.name}: "
                       f"{format_amount(amount, dst.unit)}, cost "
                       f"{format_amount(receipt['amount_paid'], src.unit)}"
                       + (f", via {', '.join(via)}" if via else ""))
    return {"paid": done, "refused": refused, "routes": routes}


async def _summary(nodes: list[DemoNode]) -> dict[str, Any]:
    out = []
    for demo in nodes:
        home = Home(next(iter(demo.homes.values())))
        async with TallyClient(demo.served.url, home.key()) as client:
            accounts = await client.accounts()
            info = await client.info(refresh=True)
        out.append({
            "name": demo.name,
            "url": demo.served.url,
            "accepted": demo.accepted,
            "refused": demo.refused,
            "log_size": info.raw["log_size"],
            "sum": sum(a["balance"] for a in accounts),
            "accounts": [{"handle": a["handle"], "balance": a["balance"], "kind": a["kind"]}
                         for a in accounts],
            "homes": {h: str(p) for h, p in demo.homes.items()},
        })
    return {"nodes": out}


if __name__ == "__main__":
    asyncio.run(run_demo(serve_forever="--serve" in sys.argv))
