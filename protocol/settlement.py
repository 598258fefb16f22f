"""The settlement state machine: one payment as one node sees it, across its credit lines.

Layer: protocol (pure). No clock, no randomness, no I/O: ``now`` is an argument, and what to do
is returned as actions for the node's federation driver to carry out (after storing the new
state: every state is stored before any message about it is sent).

Theory of operation
-------------------
A cross-collective payment is a hold on every ledger on its path, released by a hashlock
(Interledger v4 style). Each node plays one role:

- the **source** holds the payer's amount against the line to the next node and sends
  PREPARE (the *outbound leg*);
- an **intermediary** receives PREPARE (the *inbound leg*), holds against both lines and
  forwards PREPARE (its outbound leg);
- the **destination** receives PREPARE, holds the payee's credit as pending, and fulfils.

On each line, the upstream node alone decides post or void, by its own clock: it posts if a
valid fulfilment (SHA-256 of it equals the condition) reached it before the expiry of the
PREPARE it sent, and voids otherwise (a REJECT, or the expiry passed). It then tells the
downstream node its DECISION, until acknowledged; the downstream node follows.

The destination keeps the payee's credit pending until the decision, so a payee is never
credited for a payment the payer was told failed. An intermediary must pay its downstream
side when it decides post there; if its upstream later decides void (the fulfilment reached
it too late), the intermediary carries that loss — a dispute with the signed evidence,
bounded by the per-hop expiry margin and its caps.

Outbound leg (we sent PREPARE)::

    HELD --fulfil (valid, now < expiry)--> POSTED     ApplyPost; SendDecision(post); ...
    HELD --reject-----------------------> VOIDED     ApplyVoid; SendDecision(void)
    HELD --tick (now >= expiry)----------> VOIDED     ApplyVoid; SendDecision(void)
    VOIDED --fulfil (late)--------------> VOIDED     RecordLateFulfilment (evidence only)

Inbound leg (we received PREPARE)::

    PREPARED --we fulfil----------------> FULFILLED  SendFulfil (destination; or intermediary
                                                     after its outbound leg POSTED)
    PREPARED --we refuse / tick expiry---> REJECTED   ApplyVoid; SendReject
    FULFILLED --decision post------------> CONFIRMED  ApplyPost (destination); nothing more
                                                     for an intermediary (it posted already)
    FULFILLED --decision void------------> VOIDED     ApplyVoid (destination: the payee's
                                                     pending credit goes); RecordLoss
                                                     (intermediary)
    REJECTED/CONFIRMED/VOIDED --decision--> same     AckDecision (idempotent repeats)

Every message is idempotent by payment id: a repeated event in a state that already
reflects it changes nothing and repeats the answer. An event that makes no sense in a state
raises ``SettlementError`` and changes nothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from enum import Enum
from typing import Literal


class Role(str, Enum):
    source = "source"
    intermediary = "intermediary"
    destination = "destination"


class Out(str, Enum):
    """Outbound leg: the line on which we are upstream."""

    held = "held"
    posted = "posted"
    voided = "voided"


class In(str, Enum):
    """Inbound leg: the line on which we are downstream."""

    prepared = "prepared"
    fulfilled = "fulfilled"
    rejected = "rejected"
    confirmed = "confirmed"
    voided = "voided"


Hold = Literal["held", "posted", "voided", "loss"]


class SettlementError(ValueError):
    """An event that is not legal in the payment's state; nothing changed."""


# --- events -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FulfilReceived:
    fulfilment: bytes


@dataclass(frozen=True)
class RejectReceived:
    code: str


@dataclass(frozen=True)
class Tick:
    """Time passes (the driver calls this on its timer and at start)."""


@dataclass(frozen=True)
class DecisionReceived:
    outcome: Literal["post", "void"]


@dataclass(frozen=True)
class DecisionAcked:
    pass


@dataclass(frozen=True)
class LocalFulfil:
    """The destination fulfils with the fulfilment it generated for the quote."""

    fulfilment: bytes


@dataclass(frozen=True)
class LocalReject:
    code: str


Event = FulfilReceived | RejectReceived | Tick | DecisionReceived | DecisionAcked | LocalFulfil | LocalReject


# --- actions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApplyPost:
    """Post this node's hold: pending amounts become balances."""


@dataclass(frozen=True)
class ApplyVoid:
    """Void this node's hold: pending amounts are released."""


@dataclass(frozen=True)
class RecordLoss:
    """An intermediary posted downstream but its upstream voided: reverse the upstream side
    into the collective's loss account and record a dispute with the signed evidence."""


@dataclass(frozen=True)
class SendDecision:
    outcome: Literal["post", "void"]


@dataclass(frozen=True)
class SendFulfil:
    fulfilment: bytes


@dataclass(frozen=True)
class SendReject:
    code: str


@dataclass(frozen=True)
class AckDecision:
    outcome: Literal["post", "void"]


@dataclass(frozen=True)
class RecordLateFulfilment:
    """A valid fulfilment arrived after we voided: keep it as evidence for the dispute."""

    fulfilment: bytes


Action = (
    ApplyPost | ApplyVoid | RecordLoss | SendDecision | SendFulfil | SendReject | AckDecision
    | RecordLateFulfilment
)


# --- the payment --------------------------------------------------------------------------


@dataclass(frozen=True)
class Payment:
    id: str
    role: Role
    condition: bytes  # SHA-256 of the fulfilment
    inbound: In | None = None  # None for the source
    inbound_expiry: int | None = None  # expiry of the PREPARE we received (ms)
    outbound: Out | None = None  # None for the destination
    outbound_expiry: int | None = None  # expiry of the PREPARE we sent (ms)
    decision_acked: bool = False  # our outbound decision reached the downstream node
    hold: Hold = "held"  # this node's own ledger hold
    fulfilment: bytes | None = None

    @property
    def finished(self) -> bool:
        """Nothing more will happen: our hold is resolved and every message delivered."""
        out_done = self.outbound is None or (
            self.outbound in (Out.posted, Out.voided) and self.decision_acked
        )
        in_done = self.inbound is None or self.inbound in (In.rejected, In.confirmed, In.voided)
        return out_done and in_done and self.hold != "held"


def fulfils(condition: bytes, fulfilment: bytes) -> bool:
    return len(fulfilment) == 32 and hashlib.sha256(fulfilment).digest() == condition


def start_source(payment_id: str, condition: bytes, expiry: int) -> Payment:
    return Payment(payment_id, Role.source, condition, outbound=Out.held, outbound_expiry=expiry)


def start_destination(payment_id: str, condition: bytes, expiry: int) -> Payment:
    return Payment(
        payment_id, Role.destination, condition, inbound=In.prepared, inbound_expiry=expiry
    )


def start_intermediary(
    payment_id: str, condition: bytes, inbound_expiry: int, outbound_expiry: int
) -> Payment:
    if outbound_expiry >= inbound_expiry:
        raise SettlementError("the outbound expiry must be earlier than the inbound one")
    return Payment(
        payment_id, Role.intermediary, condition, inbound=In.prepared,
        inbound_expiry=inbound_expiry, outbound=Out.held, outbound_expiry=outbound_expiry,
    )


def step(p: Payment, event: Event, now: int) -> tuple[Payment, list[Action]]:
    """The one transition function. Returns the new payment and what the driver must do."""
    if isinstance(event, FulfilReceived):
        return _on_fulfil_received(p, event.fulfilment, now)
    if isinstance(event, RejectReceived):
        return _on_reject_received(p, event.code)
    if isinstance(event, Tick):
        return _on_tick(p, now)
    if isinstance(event, DecisionReceived):
        return _on_decision(p, event.outcome)
    if isinstance(event, DecisionAcked):
        if p.outbound not in (Out.posted, Out.voided):
            raise SettlementError("no decision was sent yet")
        return replace(p, decision_acked=True), []
    if isinstance(event, LocalFulfil):
        return _on_local_fulfil(p, event.fulfilment, now)
    if isinstance(event, LocalReject):
        return _on_local_reject(p, event.code)
    raise SettlementError(f"unknown event {event!r}")


def _on_fulfil_received(p: Payment, f: bytes, now: int) -> tuple[Payment, list[Action]]:
    if p.outbound is None:
        raise SettlementError("the destination sent no PREPARE, so it takes no fulfilment")
    if not fulfils(p.condition, f):
        raise SettlementError("the fulfilment does not match the condition (forged or corrupt)")
    if p.outbound == Out.posted:
        return p, [] if p.decision_acked else [SendDecision("post")]
    if p.outbound == Out.voided:
        return p, [RecordLateFulfilment(f)]
    assert p.outbound_expiry is not None
    if now >= p.outbound_expiry:
        # Our clock alone decides: the fulfilment came too late.
        voided, void_actions = _void_outbound(p)
        return voided, [*void_actions, RecordLateFulfilment(f)]
    actions: list[Action] = [SendDecision("post")]
    new = replace(p, outbound=Out.posted, fulfilment=f)
    if p.role == Role.source:
        new = replace(new, hold="posted")
        actions.insert(0, ApplyPost())
    elif p.inbound == In.voided:
        # Intermediary whose upstream already voided: we still owe downstream (our clock said
        # in time), so we post, and the upstream side of our hold becomes our loss.
        new = replace(new, hold="loss")
        actions = [ApplyPost(), SendDecision("post"), RecordLoss()]
    else:
        # Intermediary: pay downstream now (post the whole hold), fulfil upstream.
        new = replace(new, hold="posted", inbound=In.fulfilled)
        actions = [ApplyPost(), SendDecision("post"), SendFulfil(f)]
    return new, actions


def _void_outbound(p: Payment) -> tuple[Payment, list[Action]]:
    actions: list[Action] = []
    new = replace(p, outbound=Out.voided)
    if p.hold == "held":
        new = replace(new, hold="voided")
        actions.append(ApplyVoid())
    actions.append(SendDecision("void"))
    if p.role == Role.intermediary and p.inbound == In.prepared:
        new = replace(new, inbound=In.rejected)
        actions.append(SendReject("downstream_failed"))
    return new, actions


def _on_reject_received(p: Payment, code: str) -> tuple[Payment, list[Action]]:
    if p.outbound is None:
        raise SettlementError("the destination sent no PREPARE, so it takes no REJECT")
    if p.outbound == Out.voided:
        return p, [] if p.decision_acked else [SendDecision("void")]
    if p.outbound == Out.posted:
        raise SettlementError("a REJECT after a valid fulfilment: the fulfilment stands")
    new, actions = _void_outbound(p)
    if p.role == Role.intermediary and actions and isinstance(actions[-1], SendReject):
        actions[-1] = SendReject(code)
    return new, actions


def _on_tick(p: Payment, now: int) -> tuple[Payment, list[Action]]:
    if p.outbound == Out.held and p.outbound_expiry is not None and now >= p.outbound_expiry:
        return _void_outbound(p)
    if p.outbound in (Out.posted, Out.voided) and not p.decision_acked:
        return p, [SendDecision("post" if p.outbound == Out.posted else "void")]
    if (
        p.role == Role.destination
        and p.inbound == In.prepared
        and p.inbound_expiry is not None
        and now >= p.inbound_expiry
    ):
        return replace(p, inbound=In.rejected, hold="voided"), [ApplyVoid(), SendReject("expired")]
    return p, []


def _on_decision(p: Payment, outcome: Literal["post", "void"]) -> tuple[Payment, list[Action]]:
    if p.inbound is None:
        raise SettlementError("the source has no upstream to decide for it")
    if p.inbound in (In.confirmed, In.voided, In.rejected):
        settled = {In.confirmed: "post", In.voided: "void", In.rejected: "void"}[p.inbound]
        if settled != outcome:
            raise SettlementError(f"decision {outcome} contradicts the earlier {settled}")
        return p, [AckDecision(outcome)]
    if p.inbound == In.prepared:
        if outcome == "post":
            raise SettlementError("decision post before we fulfilled: impossible upstream")
        # Upstream voided (its clock ran out) before we fulfilled: release everything.
        new = replace(p, inbound=In.voided)
        actions: list[Action] = [AckDecision("void")]
        if p.outbound is None:
            new = replace(new, hold="voided")
            actions.insert(0, ApplyVoid())
        # An intermediary's hold stays until its own outbound leg resolves (it expires before
        # the inbound one; if downstream fulfils in time we post, and carry the loss).
        return new, actions
    # FULFILLED: the decision settles it.
    if outcome == "post":
        if p.role == Role.destination:
            return replace(p, inbound=In.confirmed, hold="posted"), [ApplyPost(), AckDecision("post")]
        return replace(p, inbound=In.confirmed), [AckDecision("post")]
    if p.role == Role.destination:
        return replace(p, inbound=In.voided, hold="voided"), [ApplyVoid(), AckDecision("void")]
    return replace(p, inbound=In.voided, hold="loss"), [RecordLoss(), AckDecision("void")]


def _on_local_fulfil(p: Payment, f: bytes, now: int) -> tuple[Payment, list[Action]]:
    if p.role != Role.destination:
        raise SettlementError("only the destination fulfils with its own fulfilment")
    if not fulfils(p.condition, f):
        raise SettlementError("that fulfilment does not match the condition")
    if p.inbound == In.fulfilled:
        return p, [SendFulfil(f)]
    if p.inbound != In.prepared:
        raise SettlementError(f"cannot fulfil a payment that is {p.inbound}")
    assert p.inbound_expiry is not None
    if now >= p.inbound_expiry:
        return replace(p, inbound=In.rejected, hold="voided"), [ApplyVoid(), SendReject("expired")]
    return replace(p, inbound=In.fulfilled, fulfilment=f), [SendFulfil(f)]


def _on_local_reject(p: Payment, code: str) -> tuple[Payment, list[Action]]:
    # An intermediary that has forwarded cannot refuse: its outbound leg decides. One that
    # refuses before forwarding answers REJECT without ever holding, so it has no Payment.
    if p.role != Role.destination:
        raise SettlementError("only the destination rejects on its own; others follow downstream")
    if p.inbound == In.rejected:
        return p, [SendReject(code)]
    if p.inbound != In.prepared:
        raise SettlementError(f"cannot reject a payment that is {p.inbound}")
    return replace(p, inbound=In.rejected, hold="voided"), [ApplyVoid(), SendReject(code)]
