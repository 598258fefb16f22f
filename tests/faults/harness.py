"""The fault harness: three real node processes on loopback behind misbehaving proxies,
killed and partitioned at random while members pay, then every ledger read and checked.

Three collectives A–B–C (the ones of ``tests/integration/test_multihop_kill.py``): A has a
credit line with B, and B with C, so A and C pay each other through B. Every request one
node makes to another goes through a ``FaultProxy`` of its own direction (A→B, B→A, B→C,
C→B), which drops, cuts, delays and replays connections by a seeded policy; every member's
request goes through a proxy in front of its node that cuts connections too. Meanwhile the
harness SIGKILLs nodes (each restarted on its data directory and port) and partitions a line
(both directions) for a while.

A node learns a peer's address from the line messages (the ``url`` of a proposal or
acceptance, that is the sender's ``[node] public_url``), so each node's public URL is set to
the proxy its peer must use to reach it. B has two peers but one public URL: it is set for
A, B's line with A is made, then B is restarted with the URL for C, and its line with C made.

The workload: members pay within their collective (signed transfers, retried with the very
same signed bytes after a failure until a definite answer: ``exists`` means the earlier try
was applied) and to other collectives (``pay_remote``, never paid again after a failure: the
order is unknown until ``GET /v1/payments/{order}`` says what became of it).

Afterwards, with the network healed and every hold expired or settled, ``check`` reads every
node (its API, its served log and checkpoints, then its database once stopped) and lists
every violation of:

- each ledger sums to zero, replays from empty to the books the node keeps, and its log
  passes ``tally audit`` (signature, Merkle tree, tiles, replay);
- every checkpoint a node served during the run is consistent with its final log;
- mirrored peer accounts agree: on each line, what one side posted outbound the other posted
  inbound at the line's rate, and each peer account is the sum of those;
- no hold is left pending, and each lasted no longer than its bound and was posted or voided
  by the rules (``check_hold_bounds``);
- every payment or transfer a client was told succeeded is present exactly once, none told
  failed is present (but for B's own losses, each recorded as a dispute), none was applied
  twice; B's routing account is exactly minus its losses.

``run`` returns the figures; ``python -m bench.faults`` prints them for a longer run.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from crypto import merkle
from crypto.canonical import canonical_json
from crypto.keys import SecretKey, read_key_file
from crypto.note import parse_verifier_key
from node.audit import audit_log, http_source
from node.client import TallyClient, TallyError, new_id, transfer_body
from node.service import init_data_dir
from protocol.federation import ROUTING_ACCOUNT, Line, peer_handle
from protocol.messages import Transfer, parse_message
from tests.faults.proxy import FaultPolicy, FaultProxy
from tests.integration.conftest import NodeProcess
from tests.integration.test_federation_kill import (
    Books,
    Collective,
    Ledger,
    read_ledger,
    wait_settled,
)
from tests.integration.test_log_kill import opened
from tests.integration.test_multihop_kill import (
    CONFIG,
    LINES,
    MEMBER_LIMIT,
    MEMBERS,
    NODES,
    SMALL_CREDIT,
    Order,
    check_hold_bounds,
    node_log,
    posted,
    resolve,
)

NETWORK_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)
# Who pays whom across lines: two hops (A→C, C→A through B), and next door (A→B, B→C).
CROSS = [("A", "C"), ("C", "A"), ("A", "B"), ("B", "C")]
ANSWER_WITHIN_S = 40.0  # a local transfer retried this long without an answer is a violation
# Refusals a payer may be told under faults (the rest would be bugs).
EXPECTED_REFUSALS = {
    "exceeds_line_limit", "exceeds_credit_limit", "exceeds_debit_limit", "account_not_found",
    "no_route", "expired", "rejected", "insufficient_time", "unknown_peer", "quote_mismatch",
    "overloaded", "rate_limited", "downstream_failed",
}


@dataclass(frozen=True)
class RunConfig:
    seed: int = 1
    seconds: float = 10.0  # how long members pay while faults happen
    kills: int = 3
    partitions: int = 2
    partition_s: tuple[float, float] = (1.0, 3.0)
    # Between nodes: every kind of fault. Between a member and its node: cuts and drops.
    peer_policy: FaultPolicy = FaultPolicy(drop=0.04, cut=0.06, delay=0.15, max_delay_s=0.25,
                                           duplicate=0.08)
    client_policy: FaultPolicy = FaultPolicy(drop=0.02, cut=0.08, delay=0.05, max_delay_s=0.2)


@dataclass
class LocalBooks:
    """Transfers within one collective: what each client was finally told."""

    sent: dict[str, str] = field(default_factory=dict)  # transfer id -> side
    ok: set[str] = field(default_factory=set)
    refused: dict[str, str] = field(default_factory=dict)  # id -> code
    retried_then_answered: int = 0  # a try failed (cut, node down) and a retry got the answer
    exists: int = 0  # ... and that answer was ``exists``: the failed try had been applied
    unanswered: set[str] = field(default_factory=set)


@dataclass
class Figures:
    seed: int = 0
    seconds: float = 0.0
    wall_s: float = 0.0
    transfers: Counter[str] = field(default_factory=Counter)
    payments: Counter[str] = field(default_factory=Counter)
    kills: int = 0
    partitions: int = 0
    network: Counter[str] = field(default_factory=Counter)
    refusals: Counter[str] = field(default_factory=Counter)  # payments', by code
    violations: list[str] = field(default_factory=list)

    @property
    def dropped(self) -> int:
        """Messages lost on the way: connections dropped or cut (by a fault or a partition)."""
        n = self.network
        return n["dropped"] + n["cut"] + n["dropped_by_partition"] + n["cut_by_partition"]

    def report(self) -> str:
        t, p, n = self.transfers, self.payments, self.network
        return "\n".join([
            f"fault harness: seed {self.seed}, {self.seconds:g} s of payments, "
            f"{self.wall_s:.0f} s wall",
            f"  payments across lines: attempted {p['attempted']}, acknowledged "
            f"{p['acknowledged']}, refused {p['refused']}, unknown-then-resolved "
            f"{p['unknown']} ({p['resolved_ok']} had succeeded, {p['resolved_failed']} had "
            f"failed, {p['never_started']} never started); {p['through_b']} paid through B",
            f"    refusals: {', '.join(f'{k} {n}' for k, n in self.refusals.most_common())}",
            f"  transfers within a collective: attempted {t['attempted']}, acknowledged "
            f"{t['acknowledged']} ({t['exists']} as exists), refused {t['refused']}, "
            f"unknown-then-resolved {t['retried']}",
            f"  B's losses (paid downstream, voided upstream, disputed): {p['losses']}",
            f"  kills {self.kills}; partitions {self.partitions}",
            f"  network: {n['connections']} connections; messages dropped {self.dropped} "
            f"({n['dropped']} dropped, {n['cut']} cut mid-stream, "
            f"{n['dropped_by_partition'] + n['cut_by_partition']} by partitions); "
            f"{n['delayed']} chunks delayed; {n['duplicated']} requests replayed",
            f"  violations: {len(self.violations)}",
            *[f"    - {v}" for v in self.violations[:50]],
        ])


class Violations:
    def __init__(self, out: list[str]) -> None:
        self.out = out

    def check(self, ok: bool, what: str) -> bool:
        if not ok:
            self.out.append(what)
        return ok

    async def run(self, what: str, step: Callable[[], Awaitable[Any]]) -> Any:
        """A step whose own assertions (shared with the kill tests) count as violations."""
        try:
            return await step()
        except AssertionError as exc:
            self.out.append(f"{what}: {exc}")
            return None


@dataclass
class Federation:
    """The three nodes, their proxies, and what their members were told."""

    work: Path
    cfg: RunConfig
    rng: random.Random
    c: dict[str, Collective] = field(default_factory=dict)
    peer_proxies: dict[tuple[str, str], FaultProxy] = field(default_factory=dict)
    client_proxies: dict[str, FaultProxy] = field(default_factory=dict)
    lines: dict[str, Line] = field(default_factory=dict)
    ledger_ids: dict[str, str] = field(default_factory=dict)
    books: Books = field(default_factory=Books)
    orders: dict[str, Order] = field(default_factory=dict)
    local: LocalBooks = field(default_factory=LocalBooks)
    checkpoints: dict[str, list[bytes]] = field(default_factory=dict)
    kills: int = 0

    @property
    def proxies(self) -> list[FaultProxy]:
        return [*self.peer_proxies.values(), *self.client_proxies.values()]

    # --- setting up ------------------------------------------------------------------------

    def _write_config(self, side: str, public_url: str) -> None:
        (self.work / side / "config.toml").write_text(
            CONFIG + f'\n[node]\npublic_url = "{public_url}"\n')

    async def start(self) -> None:
        for x, y, *_ in LINES:
            for a, b in ((x, y), (y, x)):
                self.peer_proxies[a, b] = FaultProxy(f"{a}->{b}", random.Random(self.rng.random()))
        for side in NODES:
            self.client_proxies[side] = FaultProxy(f"members->{side}",
                                                   random.Random(self.rng.random()))
        for proxy in self.proxies:
            await proxy.start()
        # The URL each node tells its peers: the proxy they reach it through (B's for A first).
        public = {"A": self.peer_proxies["B", "A"].url, "B": self.peer_proxies["A", "B"].url,
                  "C": self.peer_proxies["B", "C"].url}
        for side, (name, unit) in NODES.items():
            data, logs = self.work / side, self.work / f"{side}-logs"
            data.mkdir(mode=0o700)
            logs.mkdir()
            self._write_config(side, public[side])
            await init_data_dir(data, name=name, unit=unit)
            proc = NodeProcess(data, logs)
            _, steward = read_key_file(data / "steward.key")
            _, node_key = read_key_file(data / "node.key")
            self.c[side] = Collective(name, proc, steward, node_key.public)
            await proc.start()
            self.checkpoints[side] = []
        for (_, b), proxy in self.peer_proxies.items():
            proxy.target_port = self.c[b].proc.port
        for side, proxy in self.client_proxies.items():
            proxy.target_port = self.c[side].proc.port

    async def setup_lines(self) -> None:
        c = self.c
        for side in c:
            async with TallyClient(c[side].url, c[side].steward, retries=2) as admin:
                self.ledger_ids[side] = (await admin.info()).ledger_id
                for handle in MEMBERS[side]:
                    key = SecretKey(os.urandom(32))
                    c[side].keys[handle] = key
                    receipt = await admin.admit(handle, key.public, [c[side].steward],
                                                MEMBER_LIMIT,
                                                SMALL_CREDIT.get(handle, MEMBER_LIMIT))
                    assert receipt["result"] == "ok", receipt
        for x, y, x_limit, y_limit, rate in LINES:
            if (x, y) == ("B", "C"):  # B now tells its peers C's way to reach it
                assert await c["B"].proc.stop() == 0, c["B"].proc.stderr_tail()
                self._write_config("B", self.peer_proxies["C", "B"].url)
                await c["B"].proc.start()
            async with TallyClient(c[x].url, c[x].steward, retries=2) as ax, \
                    TallyClient(c[y].url, c[y].steward, retries=2) as ay:
                proposed = await ax.propose_line(self.peer_proxies[x, y].url, [c[x].steward],
                                                 x_limit, y_limit, *rate)
                await ay.accept_line(proposed["line"], [c[y].steward])
                for side, admin in ((x, ax), (y, ay)):
                    other = y if side == x else x
                    (doc,) = [d for d in (await admin.lines())["lines"]
                              if d["id"] == proposed["line"]]
                    assert doc["status"] == "active", doc
                    # Each node reaches the other through the proxy of that direction.
                    assert doc["peer_url"] == self.peer_proxies[side, other].url, (side, doc)
                line = parse_message(doc["terms"], frozenset({"line"}))
                assert isinstance(line, Line)
                self.lines[x + y] = line
        # Routes through B are known (each node asks its peers for their lines).
        for x, y in (("A", "C"), ("C", "A")):
            async with TallyClient(c[x].url, c[x].steward, retries=2) as admin:
                deadline = time.monotonic() + 20
                while not (await admin.routes(c[y].node_key.text, 10))["routes"]:
                    assert time.monotonic() < deadline, f"{x} never learnt a route to {y}"
                    await asyncio.sleep(0.2)

    def set_faults(self, on: bool) -> None:
        for proxy in self.peer_proxies.values():
            proxy.policy = self.cfg.peer_policy if on else FaultPolicy.calm()
        for proxy in self.client_proxies.values():
            proxy.policy = self.cfg.client_policy if on else FaultPolicy.calm()

    async def close(self) -> None:
        for collective in self.c.values():
            collective.proc.cleanup()
        for proxy in self.proxies:
            await proxy.close()

    # --- the workload ------------------------------------------------------------------------

    async def local_payer(self, n: int, side: str, stop: asyncio.Event) -> None:
        """Transfers within ``side``, each resent with the same bytes until answered."""
        rng = random.Random(self.cfg.seed * 1000 + n)
        url = self.client_proxies[side].url
        keys = self.c[side].keys
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=8)) as session:
            while not stop.is_set():
                payer, payee = rng.sample(MEMBERS[side], 2)
                transfer_id = new_id()
                body = transfer_body(keys[payer], self.ledger_ids[side], payer, payee,
                                     rng.randint(1, 400), transfer_id=transfer_id)
                data = canonical_json(body)
                self.local.sent[transfer_id] = side
                failed = False
                deadline = time.monotonic() + ANSWER_WITHIN_S
                while True:
                    try:
                        async with session.post(url + "/v1/transfers", data=data, headers={
                                "Content-Type": "application/json"}) as resp:
                            status, doc = resp.status, await resp.json(content_type=None)
                    except (*NETWORK_ERRORS, ValueError):
                        status, doc = 0, None
                    if status in (200, 201):
                        self.local.ok.add(transfer_id)
                        self.local.retried_then_answered += failed
                        self.local.exists += status == 200
                        break
                    if 400 <= status < 500 and status != 429:
                        self.local.refused[transfer_id] = str((doc or {}).get("code"))
                        self.local.retried_then_answered += failed
                        break
                    failed = True  # cut, node down, 429/5xx: the same bytes again
                    if time.monotonic() > deadline:
                        self.local.unanswered.add(transfer_id)
                        break
                    await asyncio.sleep(0.2)
                await asyncio.sleep(rng.uniform(0.0, 0.1))

    async def cross_payer(self, n: int, side: str, to: str, stop: asyncio.Event) -> None:
        """Payments to another collective; after a failed request, never paid again."""
        rng = random.Random(self.cfg.seed * 1000 + 100 + n)
        c = self.c
        # retries apply to reads (the node's info) only: a payment is never sent twice.
        clients = {h: TallyClient(self.client_proxies[side].url, k, retries=4, timeout=30)
                   for h, k in c[side].keys.items()}
        try:
            while not stop.is_set():
                payer = rng.choice([m for m in MEMBERS[side] if m not in SMALL_CREDIT])
                payee = rng.choice(MEMBERS[to]) if rng.random() > 0.05 else "nobody"
                amount = rng.randint(10, 150) if to != "A" else rng.randint(5, 80)
                order_id = new_id()
                self.orders[order_id] = Order(order_id, side, to, payer, payee, amount)
                self.books.told(order_id)
                try:
                    receipt = await clients[payer].pay_remote(
                        payer, payee, c[to].node_key, amount, 2 * amount + 2, 60_000,
                        order_id=order_id)
                except TallyError as exc:
                    if 400 <= exc.status < 500:
                        self.books.refused[order_id] = exc.code
                    else:  # cut, or the node died mid-request: the answer is unknown
                        self.books.unknown.add(order_id)
                        await asyncio.sleep(0.1)
                    continue
                if receipt.get("result") == "ok" and receipt.get("order") == order_id:
                    self.books.done[order_id] = receipt
                else:
                    self.books.unknown.add(order_id)
        finally:
            for client in clients.values():
                await client.close()

    async def watch_checkpoints(self, side: str, stop: asyncio.Event) -> None:
        """Keep each distinct checkpoint the node serves (straight, not through a proxy)."""
        seen = self.checkpoints[side]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while not stop.is_set():
                try:
                    async with session.get(self.c[side].url + "/log/checkpoint") as resp:
                        if resp.status == 200:
                            note = await resp.read()
                            if note not in seen[-3:]:
                                seen.append(note)
                except NETWORK_ERRORS:
                    pass
                await asyncio.sleep(0.1)

    async def chaos(self) -> None:
        """Kills and partitions at seeded moments over the run."""
        cfg, rng = self.cfg, self.rng
        events = ["kill"] * cfg.kills + ["partition"] * cfg.partitions
        rng.shuffle(events)
        gap = cfg.seconds / (len(events) + 1)
        victims = list(NODES) * (cfg.kills // len(NODES) + 1)
        victims = victims[:cfg.kills]
        rng.shuffle(victims)
        for event in events:
            await asyncio.sleep(rng.uniform(0.5 * gap, 1.2 * gap))
            if event == "kill":
                victim = self.c[victims.pop()]
                victim.proc.kill()
                self.kills += 1
                await asyncio.sleep(rng.uniform(0.0, 0.5))
                await victim.proc.start()
            else:
                x, y, *_ = rng.choice(LINES)
                seconds = rng.uniform(*cfg.partition_s)
                self.peer_proxies[x, y].partition(seconds)
                self.peer_proxies[y, x].partition(seconds)


# --- the final read ------------------------------------------------------------------------


async def check(fed: Federation, v: Violations, figures: Figures) -> None:
    c, books, orders, local = fed.c, fed.books, fed.orders, fed.local

    await v.run("holds never resolved", lambda: wait_settled(c))
    await v.run("an unknown order never settled", lambda: resolve(c, books, orders))
    refused = set(books.refused) | {o for o, r in books.resolved.items() if r != "ok"}
    paid = {o for o in books.done if books.resolved.get(o, "ok") == "ok"}
    v.check(paid.isdisjoint(refused), "an order was both paid and refused")
    v.check(paid | refused == set(orders),
            f"{len(set(orders) - paid - refused)} order(s) with no final answer")
    unexpected = set(books.refused.values()) - EXPECTED_REFUSALS
    v.check(not unexpected, f"unexpected refusal codes: {sorted(unexpected)}")
    v.check(not local.unanswered, f"{len(local.unanswered)} transfer(s) never answered")
    attempt_of = {o: books.done[o]["attempt"] for o in paid}

    p = figures.payments
    p["attempted"] = len(orders)
    p["acknowledged"] = len(set(books.done) - books.unknown)
    p["refused"] = len(books.refused)
    figures.refusals.update(books.refused.values())
    p["unknown"] = len(books.unknown)
    p["resolved_ok"] = sum(1 for r in books.resolved.values() if r == "ok")
    p["never_started"] = sum(1 for r in books.resolved.values() if r == "not_found")
    p["resolved_failed"] = len(books.resolved) - p["resolved_ok"] - p["never_started"]
    t = figures.transfers
    t["attempted"] = len(local.sent)
    t["acknowledged"] = len(local.ok)
    t["refused"] = len(local.refused)
    t["retried"] = local.retried_then_answered
    t["exists"] = local.exists

    # Through the API, nodes still running: payees' histories, disputes, the served logs.
    credited: dict[str, Counter[str]] = {}
    disputes: dict[str, list[dict[str, Any]]] = {}
    for side in c:
        async with TallyClient(c[side].url, c[side].steward, retries=2, timeout=30) as reader:
            for handle in MEMBERS[side]:
                postings = await reader.history(handle)
                credited[handle] = Counter(p["id"] for p in postings if p["amount"] > 0)
                balance = (await reader.account(handle))["balance"]
                v.check(sum(p["amount"] for p in postings) == balance,
                        f"{side}: {handle}'s history does not sum to its balance")
            disputes[side] = await reader.disputes(include_resolved=True)
            report = await audit_log(http_source(reader), vkey=None)
            for ok, text in report.checks:
                v.check(ok, f"{side}: audit: {text}")
            verifier = parse_verifier_key((await reader.get_text("/log/vkey")).strip())
            await check_checkpoints(side, reader, verifier, fed.checkpoints[side], v)
        mismatches = [d for d in disputes[side] if d["kind"] == "statement_mismatch"]
        v.check(not mismatches, f"{side}: {len(mismatches)} statement mismatch(es) between "
                f"honest nodes: {mismatches[:1]}")

    for side, collective in c.items():
        v.check(await collective.proc.stop() == 0,
                f"{side} did not stop cleanly: {collective.proc.stderr_tail(500)}")
        text = node_log(collective.proc)
        v.check("Traceback" not in text, f"{side} logged a traceback: "
                + text[text.find("Traceback") - 200:][:1500])

    # Straight from the databases.
    ledgers: dict[str, Ledger] = {}
    for side in c:
        try:
            ledgers[side] = read_ledger(c[side].proc)
        except AssertionError as exc:
            v.out.append(f"{side}: the log does not replay: {exc}")
    if len(ledgers) < len(c):
        return
    for side, ledger in ledgers.items():
        v.check(ledger.accounts == ledger.state.accounts, f"{side}: replay differs (accounts)")
        v.check(ledger.holds == ledger.state.holds, f"{side}: replay differs (holds)")
        v.check(sum(a.balance for a in ledger.accounts.values()) == 0, f"{side}: sum is not 0")
        v.check(all(a.pending_debit == a.pending_credit == 0 for a in ledger.accounts.values()),
                f"{side}: something still pending")
        left = [k for k, h in ledger.holds.items() if h.state not in ("posted", "voided")]
        v.check(not left, f"{side}: holds left open: {left[:3]}")
        try:
            check_hold_bounds(side, ledger, c)
        except AssertionError as exc:
            v.out.append(f"{side}: a hold broke its bounds: {exc}")
        # Transfers within the collective: each told ok once, none told refused.
        applied = Counter(s.msg.id for _, s in ledger.entries[1:] if isinstance(s.msg, Transfer))
        twice = [k for k, n in applied.items() if n > 1]
        v.check(not twice, f"{side}: transfers applied twice: {twice[:3]}")
        ours = {k for k, s in local.sent.items() if s == side}
        v.check(all(applied[k] == 1 for k in ours & local.ok),
                f"{side}: a transfer told ok is not in the ledger")
        v.check(not (set(applied) & set(local.refused)),
                f"{side}: a transfer told refused was applied")

    for name, line in fed.lines.items():
        one, two = name[0], name[1]
        for up, down in ((one, two), (two, one)):
            sent = posted(ledgers[up], line, "out")
            up_side = line.side(c[up].node_key)
            assert up_side is not None
            v.check(posted(ledgers[down], line, "in") ==
                    {k: line.convert(x, up_side) for k, x in sent.items()},
                    f"line {name}: what {up} posted out, {down} did not post in")
        for me, them in ((one, two), (two, one)):
            peer = ledgers[me].accounts[peer_handle(c[them].node_key)]
            v.check(peer.balance == sum(posted(ledgers[me], line, "out").values())
                    - sum(posted(ledgers[me], line, "in").values()),
                    f"line {name}: {me}'s peer account is not the sum of its posted holds")

    # B in between: forwards all it held, a margin sooner; its losses are disputes.
    b = ledgers["B"]
    losses: dict[str, int] = {}
    for key, hold_out in b.holds.items():
        if not key.endswith("/out") or hold_out.debit != ROUTING_ACCOUNT:
            continue
        attempt = key.split("/")[0]
        hold_in = b.holds[f"{attempt}/in"]
        v.check(hold_out.amount == hold_in.amount, f"B forwarded another amount for {attempt}")
        v.check((hold_in.state, hold_out.state) != ("posted", "voided"),
                f"B was paid upstream for {attempt} but did not pay downstream")
        if (hold_in.state, hold_out.state) == ("voided", "posted"):
            losses[attempt] = hold_out.amount
    routing = b.accounts.get(ROUTING_ACCOUNT)
    v.check((routing.balance if routing else 0) == -sum(losses.values()),
            "B's routing account is not minus its losses")
    disputed = {d["attempt"] for d in disputes["B"] if d["kind"] == "loss"}
    v.check(set(losses) <= disputed, "a loss of B's is not recorded as a dispute")
    p["losses"] = len(losses)
    p["through_b"] = sum(1 for o in paid if "B" not in (orders[o].side, orders[o].to))

    # Payments: each told (or found) done was posted on every ledger on its way and credited
    # once; none told failed reached its payee, but for B's losses.
    loss_orders = {b.order_of[a] for a in losses}
    for order_id in paid:
        order, attempt = orders[order_id], attempt_of[order_id]
        way = [order.side, "B", order.to] if "B" not in (order.side, order.to) else \
            [order.side, order.to]
        v.check(all(ledgers[s].holds.get(f"{attempt}/{d}") is not None
                    and ledgers[s].holds[f"{attempt}/{d}"].state == "posted"
                    for s in way for d in (("out",) if s == order.side else
                                           ("in",) if s == order.to else ("in", "out"))),
                f"paid order {order_id} is not posted all the way")
        v.check(credited[order.payee][attempt] == 1,
                f"paid order {order_id} credited {credited[order.payee][attempt]} time(s)")
    paid_attempts = set(attempt_of.values())
    for handle, ids in credited.items():
        stray = set(ids) - paid_attempts - set(losses) - set(local.ok)
        v.check(not stray, f"{handle} was credited for payments told failed: {sorted(stray)}")
    v.check(loss_orders <= refused, "B lost on a payment its payer was told succeeded")


async def check_checkpoints(side: str, reader: TallyClient, verifier: Any, seen: list[bytes],
                            v: Violations) -> None:
    """Every checkpoint the node served is a prefix of its final log (a consistency proof
    from the node, checked here); two of one size are the same."""
    final = opened(await reader.get_bytes("/log/checkpoint"), verifier)
    for note in seen:
        cp = opened(note, verifier)
        if cp.size == final.size:
            v.check(cp.root == final.root, f"{side}: two checkpoints of size {cp.size} differ")
            continue
        if not v.check(cp.size < final.size, f"{side}: served a checkpoint past its final log"):
            continue
        doc = await reader.get_json(f"/v1/log/consistency?old={cp.size}&new={final.size}")
        proof = [base64.b64decode(h) for h in doc["proof"]]
        v.check(merkle.verify_consistency(cp.size, final.size, cp.root, final.root, proof),
                f"{side}: checkpoint of size {cp.size} served earlier is not in the final log")


# --- the run ----------------------------------------------------------------------------------


async def run(cfg: RunConfig, work: Path, progress: Callable[[str], None] | None = None) -> Figures:
    """Set up A–B–C in ``work`` (a fresh directory), pay under faults for ``cfg.seconds``,
    heal, check; return the figures (``violations`` lists what failed, and must be empty)."""
    say = progress or (lambda _: None)
    began = time.monotonic()
    figures = Figures(seed=cfg.seed, seconds=cfg.seconds)
    v = Violations(figures.violations)
    fed = Federation(work, cfg, random.Random(cfg.seed))
    try:
        await fed.start()
        await fed.setup_lines()
        say(f"nodes up, lines agreed ({time.monotonic() - began:.1f} s); paying under faults")
        fed.set_faults(True)
        stop, watch_stop = asyncio.Event(), asyncio.Event()
        tasks = [asyncio.create_task(fed.local_payer(n, side, stop))
                 for n, side in enumerate(NODES)]
        tasks += [asyncio.create_task(fed.cross_payer(n, x, y, stop))
                  for n, (x, y) in enumerate(CROSS)]
        watchers = [asyncio.create_task(fed.watch_checkpoints(side, watch_stop))
                    for side in NODES]
        try:
            chaos = asyncio.create_task(fed.chaos())
            await asyncio.sleep(cfg.seconds)
            await chaos
            fed.set_faults(False)
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), ANSWER_WITHIN_S + 30)
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        say(f"payments stopped ({time.monotonic() - began:.1f} s); settling and checking")
        watch_stop.set()
        await asyncio.gather(*watchers)
        await check(fed, v, figures)
    finally:
        await fed.close()
    figures.kills = fed.kills
    figures.partitions = sum(p.counts["partitions"] for p in fed.peer_proxies.values()) // 2
    for proxy in fed.proxies:
        figures.network.update(proxy.counts)
    figures.wall_s = time.monotonic() - began
    return figures
