"""``python -m bench.flood``: what honest members see while one client floods a node.

    python -m bench.flood                 # about 1 minute: 4 phases of 8 s
    python -m bench.flood --seconds 2     # quicker, noisier

One real node process on loopback (``tally node run``), with the default rate limits and
connection cap; only its two timeouts are shortened (``FLOOD_CONFIG``) so that slow clients
are cut within a phase. Honest members (``--members``, 8) send signed transfers at a fixed
offered rate (``--rate``, 200/s in all, a quarter of each key's limit) from the load
generator in open loop (``bench.load``: latency from each request's scheduled time). Each
phase runs them for ``--seconds`` while an attacker, in a process of its own, does one thing:

- ``baseline``: nothing.
- ``member``: one admitted member's key posts valid signed transfers as fast as it can
  (closed loop, 32 connections).
- ``peer``: one node key that is no peer of this node posts signed ``/v1/peer/lines``
  requests as fast as it can (32 connections).
- ``slow``: from another loopback address (127.0.0.2, so the per-address cap does not touch
  the honest clients), ``--slow-connections`` (400) connections kept open at once, half
  trickling their headers a byte every half second, half sending headers and then a body
  the same way; each one the node closes is opened again.

Prints ``name value unit`` lines: the honest members' transfers/s and p50/p99 latency in
every phase, requests refused (429) to each flooder and what it got through, how the slow
connections ended (closed at once by the cap, 408 after a slow body, closed silently after
slow headers), and the node's resident memory before, after and at its peak.

The attacker runs as ``python -m bench.flood --attack SPEC.json`` and prints one JSON line.
Everything listens on and sends to loopback only; every process started is stopped by its
own handle.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from bench.procs import child_env, memory_kib, node_server, wait_idle
from bench.sign import Signer, member_key

FLOOD_CONFIG = """\
# Written by bench.flood: default rate limits and connection cap; the two timeouts are
# shortened from 15 s and 10 s so that slow clients are cut within one phase.
[api]
idle_timeout_seconds = 3
body_timeout_seconds = 3
"""

FLOOD_CONNECTIONS = 32  # the member and peer flooders' connections
ATTACKER_ADDRESS = "127.0.0.2"  # the slow attacker's source address (loopback)
PHASES = ("baseline", "member", "peer", "slow")


# --- the attacker process ---------------------------------------------------------------------


async def _closed_loop(seconds: float, send: Any) -> tuple[Counter[str], int]:
    """``FLOOD_CONNECTIONS`` workers calling ``send()`` back to back for ``seconds``."""
    statuses: Counter[str] = Counter()
    stop_at = time.monotonic() + seconds
    sent = 0

    async def worker() -> None:
        nonlocal sent
        while time.monotonic() < stop_at:
            sent += 1
            try:
                statuses[str(await send())] += 1
            except (OSError, TimeoutError, ValueError) as exc:
                statuses[type(exc).__name__] += 1

    await asyncio.gather(*(worker() for _ in range(FLOOD_CONNECTIONS)))
    return statuses, sent


async def attack_member(spec: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    bodies = [b for b in Path(spec["bodies_file"]).read_bytes().split(b"\n") if b]
    url = spec["url"] + "/v1/transfers"
    headers = {"Content-Type": "application/json"}
    count = 0
    connector = aiohttp.TCPConnector(limit=FLOOD_CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def send() -> int:
            nonlocal count
            body = bodies[count % len(bodies)]
            count += 1
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                return resp.status

        statuses, sent = await _closed_loop(float(spec["seconds"]), send)
    return {"statuses": dict(statuses), "sent": sent}


async def attack_peer(spec: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    from crypto.httpsig import sign_request
    from crypto.keys import SecretKey, b64url

    key = SecretKey(os.urandom(32))  # a node key this node has no line with
    url = spec["url"] + "/v1/peer/lines"
    body = b"{}"
    connector = aiohttp.TCPConnector(limit=FLOOD_CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def send() -> int:
            headers = sign_request(key, method="POST", path="/v1/peer/lines", query="",
                                   body=body, recipient_key_id=spec["node_key_id"],
                                   created=int(time.time()), nonce=b64url(os.urandom(16)))
            headers["Content-Type"] = "application/json"
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                return resp.status

        statuses, sent = await _closed_loop(float(spec["seconds"]), send)
    return {"statuses": dict(statuses), "sent": sent}


async def attack_slow(spec: dict[str, Any]) -> dict[str, Any]:
    """Keep ``connections`` slow connections open from ``ATTACKER_ADDRESS``; count endings."""
    host, port = spec["url"].removeprefix("http://").rsplit(":", 1)
    stop_at = time.monotonic() + float(spec["seconds"])
    endings: Counter[str] = Counter()
    opened = 0

    async def one(slow_body: bool) -> None:
        nonlocal opened
        try:
            reader, writer = await asyncio.open_connection(
                host, int(port), local_addr=(ATTACKER_ADDRESS, 0))
        except OSError:
            endings["connect_failed"] += 1
            await asyncio.sleep(0.1)
            return
        opened += 1
        began = time.monotonic()
        if slow_body:
            writer.write(b"POST /v1/transfers HTTP/1.1\r\nHost: tally\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 50000\r\n\r\n{")
            drip = b" "
        else:
            writer.write(b"GET /v1/health HTTP/1.1\r\nHost: tally\r\nX-Slow: ")
            drip = b"a"

        async def trickle() -> None:
            while time.monotonic() < stop_at:
                await asyncio.sleep(0.5)
                writer.write(drip)
                await writer.drain()

        dripping = asyncio.create_task(trickle())
        try:
            answer = await asyncio.wait_for(reader.read(), max(0.1, stop_at - time.monotonic()))
        except (OSError, TimeoutError):
            answer = None  # reset by the node, or still open when the phase ended
        finally:
            dripping.cancel()
            try:
                await dripping
            except (asyncio.CancelledError, OSError):
                pass
            writer.close()
        lived = time.monotonic() - began
        if answer is None and time.monotonic() >= stop_at:
            endings["open_at_end"] += 1
        elif answer and answer.startswith(b"HTTP/1.1 408 "):
            endings["cut_408"] += 1
        elif answer:
            endings["answered_" + answer[9:12].decode(errors="replace")] += 1
        elif lived < 1.0:
            endings["closed_at_once"] += 1
            await asyncio.sleep(0.1)  # then try again
        else:
            endings["cut_silent"] += 1

    async def keep_open(slow_body: bool) -> None:
        while time.monotonic() < stop_at:
            await one(slow_body)

    await asyncio.gather(*(keep_open(i % 2 == 1) for i in range(int(spec["connections"]))))
    return {"endings": dict(endings), "opened": opened}


ATTACKS = {"member": attack_member, "peer": attack_peer, "slow": attack_slow}


def run_attack(path: str) -> None:
    spec = json.loads(Path(path).read_text())
    if not spec["url"].startswith("http://127.0.0.1:"):
        raise SystemExit(f"bench.flood attacks only http://127.0.0.1, not {spec['url']}")
    print(json.dumps(asyncio.run(ATTACKS[spec["kind"]](spec))), flush=True)


# --- the orchestrator -------------------------------------------------------------------------


def line(name: str, value: float, unit: str, note: str = "") -> str:
    digits = 3 if abs(value) < 10 else 1 if abs(value) < 1000 else 0
    return f"{name} {value:.{digits}f} {unit}" + (f"  # {note}" if note else "")


class Flood:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.seed = random.SystemRandom().randrange(2**32)
        self.started = time.monotonic()
        self.results: dict[str, Any] = {}

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {text}", file=sys.stderr, flush=True)

    def emit(self, name: str, value: float, unit: str, note: str = "") -> None:
        self.results[name] = {"value": value, "unit": unit, "note": note or None}
        print(line(name, value, unit, note), flush=True)

    async def admit(self, url: str, data: Path) -> tuple[str, str]:
        from crypto.keys import read_key_file
        from node.client import TallyClient

        steward = read_key_file(data / "steward.key")[1]
        async with TallyClient(url) as client:
            info = await client.info()
            for i in range(self.args.members + 1):  # the last one floods
                await client.admit(f"m{i}", member_key(self.seed, i).public, [steward],
                                   debit_limit=10**12, credit_limit=10**12)
        return info.ledger_id, info.node_key.key_id

    def flooder_bodies(self, ledger_id: str, count: int) -> str:
        from crypto.canonical import canonical_json
        from node.client import transfer_body

        n = self.args.members
        key = member_key(self.seed, n)
        path = self.work / "flooder.jsonl"
        path.write_bytes(b"\n".join(
            canonical_json(transfer_body(key, ledger_id, f"m{n}", "m0", 1))
            for _ in range(count)) + b"\n")
        return str(path)

    def honest(self, url: str, signer: Signer, node_pid: int) -> dict[str, Any]:
        a = self.args
        bodies = self.work / "honest.jsonl"
        bodies.write_bytes(signer.bodies(int(a.rate * a.seconds) + 1))
        spec = {"mode": "open", "url": url, "path": "/v1/transfers",
                "bodies_file": str(bodies), "rate": a.rate, "duration": a.seconds,
                "concurrency": 16, "node_pid": node_pid, "request_timeout": 30,
                "timeout": a.seconds + 120}
        spec_file = self.work / "honest-spec.json"
        spec_file.write_text(json.dumps(spec))
        done = subprocess.run([sys.executable, "-m", "bench.load", str(spec_file)],
                              capture_output=True, env=child_env(), timeout=a.seconds + 180)
        if done.returncode != 0:
            raise RuntimeError("the load generator failed:\n" + done.stderr.decode()[-3000:])
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def attacker(self, kind: str, spec: dict[str, Any]) -> subprocess.Popen[bytes]:
        spec_file = self.work / f"attack-{kind}.json"
        spec_file.write_text(json.dumps({"kind": kind, **spec}))
        return subprocess.Popen([sys.executable, "-m", "bench.flood", "--attack", str(spec_file)],
                                stdout=subprocess.PIPE, stderr=open(self.logs / f"{kind}.err", "wb"),
                                stdin=subprocess.DEVNULL, env=child_env())

    def phase(self, kind: str, url: str, signer: Signer, node_pid: int,
              spec: dict[str, Any]) -> None:
        a = self.args
        self.say(f"phase {kind}: honest members at {a.rate:g} transfers/s for {a.seconds:g} s"
                 + ("" if kind == "baseline" else f", while the {kind} attacker runs"))
        wait_idle([node_pid])
        attack = None
        if kind != "baseline":
            # The attacker starts first and outlasts the honest run at both ends.
            attack = self.attacker(kind, {"url": url, "seconds": a.seconds + 2.5, **spec})
            time.sleep(1.0)
        honest = self.honest(url, signer, node_pid)
        got: dict[str, Any] = {}
        if attack is not None:
            out, _ = attack.communicate(timeout=a.seconds + 120)
            if attack.returncode != 0:
                raise RuntimeError(f"the {kind} attacker failed: "
                                   + (self.logs / f"{kind}.err").read_text()[-3000:])
            got = json.loads(out)
        self.report(kind, honest, got)

    def report(self, kind: str, honest: dict[str, Any], got: dict[str, Any]) -> None:
        lat = honest.get("latency", {})
        refused = honest["items_refused"] + sum(honest["errors"].values())
        base = self.results.get("flood.baseline.honest_p99", {}).get("value")
        self.emit(f"flood.{kind}.honest_transfers_per_s", honest["items_ok"] / honest["elapsed"],
                  "transfers/s", f"offered {self.args.rate:g}/s")
        self.emit(f"flood.{kind}.honest_p50", lat.get("p50_ms", float("nan")), "ms")
        self.emit(f"flood.{kind}.honest_p99", lat.get("p99_ms", float("nan")), "ms",
                  f"{lat.get('p99_ms', 0) / base:.1f}x baseline" if base else "")
        self.emit(f"flood.{kind}.honest_refused", refused, "requests",
                  json.dumps({**honest["refusals"], **honest["errors"]}) if refused else "")
        if kind in ("member", "peer"):
            statuses = Counter(got["statuses"])
            seconds = self.args.seconds + 2.5
            self.emit(f"flood.{kind}.flooder_requests_per_s", got["sent"] / seconds, "requests/s")
            self.emit(f"flood.{kind}.flooder_refused_429", statuses["429"], "requests",
                      f"of {got['sent']} sent")
            through = sum(v for k, v in statuses.items() if k != "429")
            self.emit(f"flood.{kind}.flooder_not_refused", through, "requests",
                      json.dumps({k: v for k, v in statuses.items() if k != "429"}))
        if kind == "slow":
            endings = Counter(got["endings"])
            self.emit("flood.slow.connections_opened", got["opened"], "connections",
                      f"{self.args.slow_connections} kept open at once from {ATTACKER_ADDRESS}")
            self.emit("flood.slow.closed_at_once", endings["closed_at_once"], "connections",
                      "over the per-address cap: closed before anything was read")
            self.emit("flood.slow.cut_408", endings["cut_408"], "connections",
                      "slow body: 408 request_timeout, then closed")
            self.emit("flood.slow.cut_silent", endings["cut_silent"], "connections",
                      "slow headers: closed unanswered")
            other = {k: v for k, v in endings.items()
                     if k not in ("closed_at_once", "cut_408", "cut_silent")}
            self.emit("flood.slow.other_endings", sum(other.values()), "connections",
                      json.dumps(other) if other else "")

    def run(self) -> None:
        a = self.args
        data = self.work / "node"
        data.mkdir(mode=0o700)
        (data / "config.toml").write_text(FLOOD_CONFIG)
        node = node_server("node", data, self.logs)
        pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"))
        try:
            url = node.start()
            ledger_id, node_key_id = asyncio.run(self.admit(url, data))
            signer = Signer(pool, 2, ledger_id, self.seed, a.members)
            flooder = self.flooder_bodies(ledger_id, 5000)
            wait_idle([node.pid])
            before = memory_kib(node.pid)
            self.emit("flood.node_rss_before", before["VmRSS"] / 1024, "MiB")
            specs: dict[str, dict[str, Any]] = {
                "baseline": {}, "member": {"bodies_file": flooder},
                "peer": {"node_key_id": node_key_id},
                "slow": {"connections": a.slow_connections}}
            for kind in PHASES:
                self.phase(kind, url, signer, node.pid, specs[kind])
            wait_idle([node.pid])
            after = memory_kib(node.pid)
            self.emit("flood.node_rss_after", after["VmRSS"] / 1024, "MiB")
            self.emit("flood.node_peak_rss", after["VmHWM"] / 1024, "MiB")
            self.emit("flood.load_average", os.getloadavg()[0], "",
                      f"1-minute load average at the end; {os.cpu_count()} cores")
        finally:
            node.stop()
            pool.shutdown(cancel_futures=True)


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["--attack"] and len(args_in) == 2:
        run_attack(args_in[1])
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.flood", description=__doc__.split(
        "\n\n")[0].strip("`"), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0,
                        help="length of each phase's honest run (default 8)")
    parser.add_argument("--members", type=int, default=8, help="honest members (default 8)")
    parser.add_argument("--rate", type=float, default=200.0,
                        help="honest transfers per second, all members together (default 200)")
    parser.add_argument("--slow-connections", type=int, default=400,
                        help="slow connections the slow attacker keeps open (default 400)")
    parser.add_argument("--out", type=Path, help="also write the figures here as JSON")
    parser.add_argument("--workdir", type=Path,
                        help="keep the node's data and logs here (default: a temporary "
                             "directory, removed afterwards)")
    args = parser.parse_args(args_in)
    if args.members < 2:
        parser.error("--members must be at least 2")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="tally-flood-"))
    work.mkdir(parents=True, exist_ok=True)
    flood = Flood(args, work)
    try:
        flood.run()
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.out:
        args.out.write_text(json.dumps(flood.results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
