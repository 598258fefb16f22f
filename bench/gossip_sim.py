"""Simulated gossip: N nodes of the pure ``protocol.gossip`` core in one process, no sockets.

Measures what DESIGN.md §Gossip promises, with messages lost and nodes churning:

- rounds until every node holds a new node record that one node published;
- rounds until every honest node holds evidence against a node that signed two checkpoints
  of one size and showed each to a different node (the fork is caught where the two meet,
  and the evidence spreads);
- messages per node per round (a push-pull exchange is up to three messages: digest,
  answer, push).

Each round, every online node picks ``fanout`` fresh peers (``GossipState.choose_peers``) and
runs one push-pull exchange with each, through the same digest / answer / want / merge calls
as ``node.gossip`` — only the HTTP is replaced by function calls. A lost message is dropped
whole; an offline node neither asks nor answers.

    python -m bench.gossip_sim --sizes 10,100,1000 --loss 0.1 --churn 0.05
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import statistics
import sys
from dataclasses import dataclass

from crypto.checkpoint import format_checkpoint
from crypto.keys import SecretKey
from crypto.note import ALG_ED25519, Ed25519Signer, format_verifier_key, sign_note
from protocol.gossip import GossipState, Known, Update, make_record
from protocol.messages import Unit

NOW = 1_700_000_000_000
BUDGET = 256 * 1024  # bytes of items per answer or push, as node.gossip's default


@dataclass
class Run:
    n: int
    rounds_record: int | None
    rounds_evidence: int | None
    messages_per_node_round: float
    max_messages_node_round: int
    digest_bytes: int


def _key(rng: random.Random) -> SecretKey:
    return SecretKey(rng.randbytes(32))


def _record(key: SecretKey, counter: int, i: int) -> tuple[object, str]:
    ledger = hashlib.sha256(key.public.raw).hexdigest()
    vkey = format_verifier_key(f"tally/{ledger}", ALG_ED25519, key.public.raw)
    signed = make_record(key, name=f"node{i}", ledger=ledger, log_vkey=vkey,
                         urls=[f"http://node{i}.test"], unit=Unit("HOUR", "hours", 60),
                         lines=[], software="sim", counter=counter, issued=NOW)
    return signed, f"tally/{ledger}"


def simulate(n: int, *, fanout: int = 3, loss: float = 0.0, churn: float = 0.0, seed: int = 0,
             max_rounds: int = 200) -> Run:
    rng = random.Random(seed)
    keys = [_key(rng) for _ in range(n)]
    states = [GossipState(k.public) for k in keys]
    index = {k.public.text: i for i, k in enumerate(keys)}
    # Start converged: every node holds every record (built once, shared read-only).
    known = []
    origins = []
    for i, k in enumerate(keys):
        signed, origin = _record(k, 1, i)
        origins.append(origin)
        known.append(Known(signed, signed.msg, NOW))  # type: ignore[arg-type]
    for s in states:
        s.records = {k.record.key.text: k for k in known}
    # At round 0: node 1 publishes a newer record; node 0 equivocates, showing one checkpoint
    # to node 2 and another of the same size to node n // 2 (both honest).
    publisher, liar = min(1, n - 1), 0
    fresh, _ = _record(keys[publisher], 2, publisher)
    states[publisher].add_record(fresh, NOW)  # type: ignore[arg-type]
    signer = Ed25519Signer(origins[liar], keys[liar].seed)
    honest = [i for i in range(n) if i != liar]
    witnesses = (honest[1 % len(honest)], honest[len(honest) // 2])
    for w, root in zip(witnesses, (b"\x01" * 32, b"\x02" * 32)):
        note = sign_note(format_checkpoint(origins[liar], 10, root), [signer])
        states[w].add_checkpoint(keys[liar].public.text, note)
    target = keys[publisher].public.text
    rounds_record = rounds_evidence = None
    sent = 0
    max_sent = 0
    digest_bytes = len(json.dumps(states[0].digest().to_json()))
    for rnd in range(1, max_rounds + 1):
        online = [rng.random() >= churn for _ in range(n)]
        per_node = [0] * n
        arrivals: list[tuple[GossipState, Update]] = []
        for i in rng.sample(range(n), n):  # every node once per round, in random order
            if not online[i]:
                continue
            for peer in states[i].choose_peers(fanout, NOW, rng):
                j = index[peer.key.text]
                per_node[i] += 1  # the digest
                if rng.random() < loss or not online[j]:
                    continue
                a, b = states[i], states[j]
                digest = a.digest()
                answer, want = b.newer_than(digest, BUDGET, rng), b.wants(digest)
                per_node[j] += 1  # the answer
                if rng.random() < loss:
                    continue
                arrivals.append((a, answer))
                if not want.empty:
                    per_node[i] += 1  # the push
                    if rng.random() >= loss:
                        arrivals.append((b, a.items_for(want, BUDGET, rng)))
        # Synchronous rounds: what is learnt in a round is passed on from the next one.
        for state, update in arrivals:
            state.merge(update, NOW)
        sent += sum(per_node)
        max_sent = max(max_sent, *per_node)
        if rounds_record is None and all(s.records[target].record.counter == 2 for s in states):
            rounds_record = rnd
        if rounds_evidence is None and all(states[i].evidence for i in honest):
            rounds_evidence = rnd
        if rounds_record is not None and rounds_evidence is not None:
            break
    return Run(n, rounds_record, rounds_evidence, sent / n / rnd, max_sent, digest_bytes)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gossip_sim", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10,30,100,300,1000")
    p.add_argument("--fanout", type=int, default=3)
    p.add_argument("--loss", type=float, default=0.1, help="chance each message is lost")
    p.add_argument("--churn", type=float, default=0.05,
                   help="chance each node is offline in a round")
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    print(f"fanout {args.fanout}, loss {args.loss:.0%}, churn {args.churn:.0%}, "
          f"{args.trials} trials each (median [max])")
    print(f"{'N':>6} {'log2 N':>7} {'record rounds':>15} {'evidence rounds':>16} "
          f"{'msgs/node/round':>16} {'max msgs':>9} {'digest bytes':>13}")
    for n in (int(x) for x in args.sizes.split(",")):
        runs = [simulate(n, fanout=args.fanout, loss=args.loss, churn=args.churn,
                    seed=args.seed * 1000 + t) for t in range(args.trials)]
        rec = [r.rounds_record or -1 for r in runs]
        evi = [r.rounds_evidence or -1 for r in runs]
        print(f"{n:>6} {math.log2(n):>7.1f} {statistics.median(rec):>9.0f} [{max(rec):>3}]"
              f" {statistics.median(evi):>10.0f} [{max(evi):>3}]"
              f" {statistics.mean(r.messages_per_node_round for r in runs):>16.2f}"
              f" {max(r.max_messages_node_round for r in runs):>9}"
              f" {max(r.digest_bytes for r in runs):>13}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
