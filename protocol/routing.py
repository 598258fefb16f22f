"""Routing: paths for a payment over the credit lines a node knows, and what each hop sends.

Layer: protocol (pure). The graph's edges are credit lines: a line is an edge only when it is
known from a line agreement signed by both collectives' nodes (or, once gossip lands, from
both sides' signed node records) and is active. Who reports a line does not matter; the
signatures do.

A path is the list of node keys from the source to the destination. The source picks the
shortest paths first (fewest hops, then the cheapest for the payer) within a hop limit, and
the amount each hop sends is worked out backwards from what the payee must receive:

    the last hop sends ``needed(amount, at the last line's rate)``;
    each hop before it sends what its downstream neighbour must forward, converted again.

Each conversion rounds so that the receiver never gets less than it needs (ceiling going
backwards; the PREPARE itself converts forward rounding down, as ``Line.convert`` says).
An intermediary forwards in its own unit exactly what it received (no fee yet), so the
amounts the source computes are the amounts every hop checks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from crypto.keys import PublicKey
from protocol.federation import Line
from protocol.messages import Signed


@dataclass(frozen=True)
class Edge:
    """One credit line, as routing sees it."""

    line: str
    a: PublicKey
    b: PublicKey
    rate_num: int  # b's units per a unit
    rate_den: int
    a_limit: int  # how far A lets B owe A, in A's unit
    b_limit: int  # how far B lets A owe B, in B's unit
    version: int = 1
    active: bool = True

    def other(self, key: PublicKey) -> PublicKey:
        return self.b if key == self.a else self.a

    def needed(self, amount_to: int, sender: PublicKey) -> int:
        """The least the sender sends (its unit) for the receiver to get ``amount_to``."""
        num, den = (self.rate_num, self.rate_den) if sender == self.a else (
            self.rate_den, self.rate_num)
        return -(-amount_to * den // num)

    def convert(self, amount_from: int, sender: PublicKey) -> int:
        num, den = (self.rate_num, self.rate_den) if sender == self.a else (
            self.rate_den, self.rate_num)
        return amount_from * num // den

    def capacity(self, sender: PublicKey) -> int:
        """The line's limit for payments from ``sender`` (in the sender's unit): how far the
        receiver lets the sender owe it, converted; balances are not known here."""
        if sender == self.a:
            return self.b_limit * self.rate_den // self.rate_num
        return self.a_limit * self.rate_num // self.rate_den


def edge_of(line: Line) -> Edge:
    return Edge(line.id, line.a.node_key, line.b.node_key, line.rate_num, line.rate_den,
                line.a_limit, line.b_limit, line.version, line.status == "active")


def edges_from_signed(lines: Iterable[Signed],
                      check: Callable[[Signed], tuple[frozenset[PublicKey], bool]] = (
                          Signed.verified_signers)
                      ) -> list[Edge]:
    """The edges of line agreements that both parties' nodes signed; the newest version of
    each line wins. Anything else (one signature, a bad one, not a line) is left out.
    ``check`` gives a value's ``verified_signers()`` (a caller that asks for the same lines
    again and again passes one that remembers)."""
    best: dict[str, Edge] = {}
    for signed in lines:
        line = signed.msg
        if not isinstance(line, Line):
            continue
        good, all_good = check(signed)
        if not all_good or line.a.node_key not in good or line.b.node_key not in good:
            # A one-sided version (a suspension) is only honoured by the parties themselves.
            continue
        edge = edge_of(line)
        if line.id not in best or best[line.id].version < edge.version:
            best[line.id] = edge
    return list(best.values())


@dataclass(frozen=True)
class Route:
    nodes: tuple[PublicKey, ...]  # source ... destination
    edges: tuple[Edge, ...]  # edges[i] joins nodes[i] and nodes[i + 1]
    sends: tuple[int, ...]  # sends[i]: what nodes[i] sends over edges[i], in its unit

    @property
    def hops(self) -> int:
        return len(self.edges)

    @property
    def fits(self) -> bool:
        """Every line's limit is large enough for what its hop sends (room not counted)."""
        return all(s <= self.edges[i].capacity(self.nodes[i]) for i, s in enumerate(self.sends))

    @property
    def cost(self) -> int:
        """What the payer's collective sends, in its unit."""
        return self.sends[0]


def amounts(edges: tuple[Edge, ...], nodes: tuple[PublicKey, ...], amount: int) -> tuple[int, ...]:
    """What each hop sends so that the last receiver gets at least ``amount``."""
    sends = [0] * len(edges)
    need = amount
    for i in range(len(edges) - 1, -1, -1):
        sends[i] = edges[i].needed(need, nodes[i])
        need = sends[i]
    return tuple(sends)


def routes(
    edges: Iterable[Edge],
    source: PublicKey,
    destination: PublicKey,
    amount: int,
    *,
    max_hops: int = 4,
    limit: int = 5,
    avoid: frozenset[str] = frozenset(),
) -> list[Route]:
    """Up to ``limit`` loop-free routes: those whose every line's limit could carry the
    payment first, then fewest hops, then cheapest for the payer.

    Lines in ``avoid`` (ids) and inactive lines are left out. A route where some hop would
    send more than that line's limit allows comes last (it can only be refused, with the
    line's own code: the payer learns which limit stopped it); one whose room is merely used
    up now refuses at PREPARE time, and the source tries the next route.
    """
    adjacency: dict[PublicKey, list[Edge]] = {}
    for e in edges:
        if not e.active or e.line in avoid or e.a == e.b:
            continue
        adjacency.setdefault(e.a, []).append(e)
        adjacency.setdefault(e.b, []).append(e)
    found: list[Route] = []
    # Breadth-first over simple paths: the graphs of a federation are small, and the hop
    # limit bounds the work (at most degree ** max_hops partial paths).
    frontier: list[tuple[tuple[PublicKey, ...], tuple[Edge, ...]]] = [((source,), ())]
    for _ in range(max_hops):
        next_frontier = []
        for nodes, path in frontier:
            for e in sorted(adjacency.get(nodes[-1], ()), key=lambda e: e.line):
                nxt = e.other(nodes[-1])
                if nxt in nodes:
                    continue
                if nxt == destination:
                    route_nodes, route_edges = (*nodes, nxt), (*path, e)
                    sends = amounts(route_edges, route_nodes, amount)
                    found.append(Route(route_nodes, route_edges, sends))
                else:
                    next_frontier.append(((*nodes, nxt), (*path, e)))
        frontier = next_frontier
    found.sort(key=lambda r: (not r.fits, r.hops, r.cost, [e.line for e in r.edges]))
    return found[:limit]
