"""The settlement state machine, driven by Hypothesis through every state × input.

Two ways in:
- every event in every reachable state of each role gives a legal new state or a
  ``SettlementError`` (and an error changes nothing, since payments are immutable);
- a simulated path source → intermediary → destination over a hostile network (messages
  dropped, duplicated, reordered, delayed past expiry; forged fulfilments; clock skew)
  keeps the safety properties: each hold resolves at most once; the payee's credit is
  posted only if the payer's hold was posted (never credited when the payer was told it
  failed); an intermediary's loss happens only when it posted downstream and its upstream
  voided; and once the network heals and time passes, every hold is resolved.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.settlement import (
    AckDecision,
    ApplyPost,
    ApplyVoid,
    DecisionAcked,
    DecisionReceived,
    FulfilReceived,
    In,
    LocalFulfil,
    LocalReject,
    Out,
    Payment,
    RecordLoss,
    RejectReceived,
    Role,
    SendDecision,
    SendFulfil,
    SendReject,
    SettlementError,
    Tick,
    start_destination,
    start_intermediary,
    start_source,
    step,
)

F = bytes(range(32))
C = hashlib.sha256(F).digest()
FORGED = bytes(32)

events = st.one_of(
    st.builds(FulfilReceived, st.sampled_from([F, FORGED])),
    st.builds(RejectReceived, st.sampled_from(["expired", "no_such_payee"])),
    st.just(Tick()),
    st.builds(DecisionReceived, st.sampled_from(["post", "void"])),
    st.just(DecisionAcked()),
    st.builds(LocalFulfil, st.sampled_from([F, FORGED])),
    st.builds(LocalReject, st.just("payee_closed")),
)
starts = st.sampled_from([
    lambda: start_source("p", C, 1000),
    lambda: start_destination("p", C, 1000),
    lambda: start_intermediary("p", C, 1000, 900),
])


@settings(max_examples=300, deadline=None)
@given(starts, st.lists(st.tuples(events, st.integers(0, 2000)), max_size=12))
def test_every_event_in_every_state_is_legal_or_refused(start, script) -> None:  # type: ignore[no-untyped-def]
    p = start()
    resolutions = 0
    for event, now in script:
        try:
            new, actions = step(p, event, now)
        except SettlementError:
            continue  # refused: p is immutable, nothing changed
        resolutions += sum(isinstance(a, (ApplyPost, ApplyVoid)) for a in actions)
        # A hold is resolved once: posted or voided, never both, never twice.
        assert resolutions <= 1, (p, event, actions)
        if p.hold != "held":
            assert not any(isinstance(a, (ApplyPost, ApplyVoid)) for a in actions)
        # A forged fulfilment is never accepted.
        if isinstance(event, (FulfilReceived, LocalFulfil)) and event.fulfilment == FORGED:
            raise AssertionError("forged fulfilment was not refused")
        # The payee is credited only on the upstream's word.
        if p.role == Role.destination and any(isinstance(a, ApplyPost) for a in actions):
            assert event == DecisionReceived("post")
        if any(isinstance(a, RecordLoss) for a in actions):
            assert p.role == Role.intermediary
        p = new
    assert (p.hold == "held") == (resolutions == 0)


# --- a path over a hostile network --------------------------------------------------------


@dataclass
class Node:
    name: str
    payment: Payment
    skew: int  # this node's clock minus true time
    posted: bool = False
    voided: bool = False
    lost: bool = False

    def now(self, t: int) -> int:
        return t + self.skew


@dataclass
class Net:
    inflight: list[tuple[str, object]] = field(default_factory=list)  # (to, event)


def run_path(
    script: list[tuple[str, int, int]], skews: tuple[int, int, int], heal: bool, hops: int = 2
) -> tuple[Node, Node | None, Node]:
    """Source → (intermediary →) destination; returns (source, intermediary or None, dest)."""
    if hops == 2:
        src = Node("S", start_source("p", C, 3000), skews[0])
        mid: Node | None = Node("M", start_intermediary("p", C, 3000, 2000), skews[1])
        dst = Node("D", start_destination("p", C, 2000), skews[2])
        nodes = {"S": src, "M": mid, "D": dst}
        upstream = {"M": "S", "D": "M"}
        downstream = {"S": "M", "M": "D"}
    else:
        src = Node("S", start_source("p", C, 2000), skews[0])
        mid = None
        dst = Node("D", start_destination("p", C, 2000), skews[2])
        nodes = {"S": src, "D": dst}
        upstream = {"D": "S"}
        downstream = {"S": "D"}
    net = Net()

    def apply(node: Node, event: object, t: int) -> None:
        try:
            node.payment, actions = step(node.payment, event, node.now(t))  # type: ignore[arg-type]
        except SettlementError:
            return
        for a in actions:
            if isinstance(a, ApplyPost):
                assert not node.posted and not node.voided
                node.posted = True
            elif isinstance(a, ApplyVoid):
                assert not node.posted and not node.voided
                node.voided = True
            elif isinstance(a, RecordLoss):
                node.lost = True
            elif isinstance(a, SendDecision):
                net.inflight.append((downstream[node.name], DecisionReceived(a.outcome)))
            elif isinstance(a, SendFulfil):
                net.inflight.append((upstream[node.name], FulfilReceived(a.fulfilment)))
            elif isinstance(a, SendReject):
                net.inflight.append((upstream[node.name], RejectReceived(a.code)))
            elif isinstance(a, AckDecision):
                net.inflight.append((upstream[node.name], DecisionAcked()))

    t = 0
    # The destination fulfils at some moment; the network delivers, drops, duplicates.
    for op, who, delay in script:
        t += delay
        if op == "fulfil":
            apply(dst, LocalFulfil(F), t)
        elif op == "forge" and net.inflight:
            net.inflight.append((net.inflight[0][0], FulfilReceived(FORGED)))
        elif op == "tick":
            apply(list(nodes.values())[who % len(nodes)], Tick(), t)
        elif net.inflight:
            i = who % len(net.inflight)
            to, event = net.inflight[i]
            if op == "deliver":
                net.inflight.pop(i)
                apply(nodes[to], event, t)
            elif op == "duplicate":
                apply(nodes[to], event, t)
            elif op == "drop":
                net.inflight.pop(i)
    if heal:
        # The network heals: time passes, every node ticks (resending what is unacknowledged),
        # and everything in flight is delivered, until nothing is left to say.
        t += 10_000
        for _ in range(10):
            for node in nodes.values():
                apply(node, Tick(), t)
            if not net.inflight:
                break
            while net.inflight:
                to, event = net.inflight.pop(0)
                apply(nodes[to], event, t)
    return src, mid, dst


SKEWS = st.tuples(st.integers(-300, 300), st.integers(-300, 300), st.integers(-300, 300))
ops = st.tuples(
    st.sampled_from(["deliver", "deliver", "deliver", "duplicate", "drop", "tick", "fulfil", "forge"]),
    st.integers(0, 10),
    st.integers(0, 800),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(ops, max_size=30), SKEWS, st.booleans())
def test_one_line_never_credits_a_payee_when_the_payer_was_told_it_failed(script, skews, heal) -> None:  # type: ignore[no-untyped-def]
    src, _, dst = run_path(script, skews, heal, hops=1)
    if dst.posted:
        assert src.posted and not src.voided
    if src.voided:
        assert not dst.posted
    if heal:
        assert (src.posted or src.voided) and (dst.posted or dst.voided)
        assert src.posted == dst.posted
        assert src.payment.finished and dst.payment.finished


@settings(max_examples=200, deadline=None)
@given(st.lists(ops, max_size=30), SKEWS, st.booleans())
def test_a_path_stays_safe_over_a_hostile_network(script, skews, heal) -> None:  # type: ignore[no-untyped-def]
    src, mid, dst = run_path(script, skews, heal)
    assert mid is not None
    # An intermediary loses only when it paid downstream and its upstream voided.
    if mid.lost:
        assert mid.posted and src.voided
    # The destination follows its upstream: it posts only after the intermediary did.
    if dst.posted:
        assert mid.posted
    if heal:
        for node in (src, mid, dst):
            assert node.posted or node.voided, node
        # A payee credited for a payment the payer was told failed is the intermediary's
        # loss, recorded once its upstream's decision reached it.
        if dst.posted and src.voided:
            assert mid.lost
        assert src.posted == dst.posted or mid.lost
        assert src.payment.finished and dst.payment.finished


def test_valid_fulfilment_in_time_posts_at_the_source_and_is_confirmed_downstream() -> None:
    src, mid, dst = run_path(
        [("fulfil", 0, 10), ("deliver", 0, 10), ("deliver", 0, 10), ("deliver", 0, 10),
         ("deliver", 0, 10), ("deliver", 0, 10), ("deliver", 0, 10), ("deliver", 0, 10)],
        (0, 0, 0), heal=True,
    )
    assert mid is not None
    assert src.posted and mid.posted and dst.posted and not mid.lost
    assert src.payment.outbound == Out.posted and dst.payment.inbound == In.confirmed


def test_late_fulfilment_voids_everywhere_and_the_payee_is_never_credited() -> None:
    # The destination fulfils, but the fulfilment reaches the intermediary after its
    # outbound expiry (2000): every hold is voided and nobody loses.
    src, mid, dst = run_path([("fulfil", 0, 10), ("deliver", 0, 2500)], (0, 0, 0), heal=True)
    assert mid is not None
    assert src.voided and mid.voided and dst.voided and not mid.lost


def test_skewed_intermediary_posts_downstream_and_carries_the_loss() -> None:
    # The intermediary's clock runs slow (-900): the fulfilment arrives in time by its clock,
    # but after the source's expiry by the source's: the intermediary pays and loses.
    src, mid, dst = run_path(
        [("fulfil", 0, 10), ("tick", 0, 3100), ("deliver", 0, 0)], (0, -1200, 0), heal=True
    )
    assert mid is not None
    assert src.voided and mid.posted and mid.lost and dst.posted
