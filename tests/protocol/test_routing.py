"""Routing over credit lines: loop-free paths within the hop limit, and amounts that arrive."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from crypto.keys import SecretKey
from protocol.federation import Line
from protocol.messages import Signature, Signed, sign_message
from protocol.routing import Edge, amounts, edges_from_signed, routes

KEYS = [SecretKey(os.urandom(32)).public for _ in range(6)]
A, B, C, D, E, F = KEYS


def edge(name: str, a, b, num=1, den=1, a_limit=10**9, b_limit=10**9, active=True) -> Edge:
    return Edge(name.ljust(32, "0"), a, b, num, den, a_limit, b_limit, active=active)


def test_direct_line_is_the_only_route_of_one_hop():
    found = routes([edge("1", A, B)], A, B, 500)
    assert [r.nodes for r in found] == [(A, B)]
    assert found[0].sends == (500,)


def test_two_hops_through_an_intermediary_with_rates():
    # A -> B at 3 B-units per A-unit; C is B's "a" side, 1 C-unit = 2 B-units.
    ab = edge("ab", A, B, 3, 1)
    cb = edge("cb", C, B, 2, 1)
    [route] = routes([ab, cb], A, C, 100)
    assert route.nodes == (A, B, C)
    # B sends 200 B-units for C to get 100; A sends ceil(200 / 3) = 67 A-units.
    assert route.sends == (67, 200)
    assert ab.convert(67, A) >= 200 and cb.convert(200, B) >= 100


def test_fewest_hops_first_and_hop_limit():
    lines = [edge("ab", A, B), edge("bc", B, C), edge("cd", C, D), edge("ad", A, D)]
    found = routes(lines, A, D, 10)
    assert [len(r.edges) for r in found] == [1, 3]
    assert routes(lines, A, D, 10, max_hops=2)[0].nodes == (A, D)
    assert routes(lines, A, C, 10, max_hops=1) == []


def test_suspended_and_avoided_lines_are_left_out_too_small_ones_last():
    lines = [edge("ab", A, B), edge("bc", B, C, active=False), edge("ad", A, D),
             edge("dc", D, C, b_limit=5), edge("ae", A, E), edge("ec", E, C)]
    found = routes(lines, A, C, 10)
    # b-c is suspended; d-c's limit (5) is too small for 10, so that route comes last.
    assert [(r.nodes, r.fits) for r in found] == [((A, E, C), True), ((A, D, C), False)]
    assert routes(lines, A, C, 10, avoid=frozenset({"ec".ljust(32, "0"), "dc".ljust(32, "0")})
                  ) == []


def test_no_loops():
    lines = [edge("ab", A, B), edge("ba2", B, C), edge("ca", C, A), edge("cd", C, D)]
    for r in routes(lines, A, D, 1):
        assert len(set(r.nodes)) == len(r.nodes)


rates = st.tuples(st.integers(1, 1000), st.integers(1, 1000))


@given(st.lists(rates, min_size=1, max_size=4), st.integers(1, 10**7),
       st.lists(st.booleans(), min_size=4, max_size=4))
def test_amounts_computed_backwards_always_arrive(rate_list, amount, flips):
    nodes = tuple(KEYS[: len(rate_list) + 1])
    edges = tuple(
        # Either orientation of each line: the sender may be its "a" or its "b" side.
        edge(str(i), nodes[i], nodes[i + 1], n, d) if flips[i] else
        edge(str(i), nodes[i + 1], nodes[i], n, d)
        for i, (n, d) in enumerate(rate_list)
    )
    sends = amounts(edges, nodes, amount)
    # Going forward, each hop converts what it sent (rounding down) and forwards at least
    # what the next hop must send; the last hop delivers at least the amount.
    for i, e in enumerate(edges):
        received = e.convert(sends[i], nodes[i])
        wanted = sends[i + 1] if i + 1 < len(edges) else amount
        assert received >= wanted
        # ... and not wastefully: one unit less would not do.
        assert sends[i] == 1 or e.convert(sends[i] - 1, nodes[i]) < wanted


def test_only_lines_signed_by_both_nodes_become_edges():
    from tests.protocol.test_lines import HOUR, NOW, collective

    a, b = collective("A", HOUR, []), collective("B", HOUR, [])
    line = Line(os.urandom(16).hex(), 1, a.party, b.party, 10, 10, 1, 1, "active", NOW)
    both = sign_message(line, a.node, b.node)
    one_sided = sign_message(line, a.node)
    forged = Signed(line, (*one_sided.sigs, Signature(b.node.public, bytes(64))))
    assert [e.line for e in edges_from_signed([both])] == [both.msg.id]
    assert edges_from_signed([one_sided]) == []
    assert edges_from_signed([forged]) == []
