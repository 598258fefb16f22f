"""Credit lines between collectives, and payments across them: messages and ledger rules.

Layer: protocol (pure). Owns what a node-to-node message says, who must sign it, and what it
does to the ledger when it becomes a log entry. The order of events — who decides post or
void and when — is ``protocol.settlement``'s; the timers and messages are ``node.federation``'s.

Messages (each a ``Signed`` message, like transfers and acts, so it can be logged as is):

``line``
    A credit line agreement between collectives A and B (``a`` and ``b``): ``a_limit`` is how
    far A lets B owe A, in A's smallest unit; ``b_limit`` how far B lets A owe B, in B's;
    ``rate_num/rate_den`` is B's units per A unit. Signed by both node keys and, on each
    ledger that logs it, by that collective's stewards (k of n). A later ``version`` of the
    same line id replaces it; ``status: suspended`` stops new payments. A version whose only
    change is ``active`` -> ``suspended`` needs one side alone: its node and stewards.
``payment_order``
    Signed by the payer: pay ``amount`` (in the payee's unit) to ``payee`` at the collective
    whose node key is ``payee_node``, spending at most ``max_pay`` (in the payer's unit).
``quote``
    Signed by the destination node: for order ``order`` and attempt ``id``, it will release
    the fulfilment of ``condition`` (SHA-256) for ``amount`` to ``payee`` until ``expires_at``.
``prepare``
    Signed by the upstream node on a line: hold ``amount_from`` (upstream's unit), which is
    ``amount_to`` (downstream's unit) at the line's rate, rounded down, until ``expires_at``,
    against ``condition``. Embeds the signed order and quote, so every hold in every log
    shows who asked for it.
``fulfil`` / ``reject``
    Signed by the downstream node: the fulfilment (its SHA-256 is the condition), or a
    refusal with a stable ``code``.
``decision``
    Signed by the upstream node: ``post`` or ``void``, the upstream's final word on the line.
``line_settlement``
    A settlement of the line out of band: ``paid_by`` (``a`` or ``b``) paid the other, outside
    Tally, ``amount_a`` (A's unit), which is ``amount_b`` (B's unit) at the line's rate, one
    converted from the other and rounded down. Its debt on the line falls by that much.
    ``sequence`` numbers the settlements of one line (unique per line); ``reference`` is a
    short reference both sides can look up (an invoice or bank reference, not personal
    data). Signed like a line: both nodes, and that side's stewards on each ledger.

Ledger accounts added: one ``peer`` account per line, handle ``~<peer key id>``, whose limits
come from the line (debit: how far the peer may owe us; credit: how far we may owe the
peer, converted at the line's rate). Holds are pending amounts on two accounts.

Log entries and what they do, by who signed them:

====================  ======================  ===================================================
entry payload          signed by               effect on this ledger
====================  ======================  ===================================================
``line``               both nodes + stewards   open or change the peer account's limits
``line``               one node + its          suspend the line (the only change: active ->
                       stewards                suspended); on the other ledger the suspending
                                               node's signature suffices
``line_settlement``    both nodes + stewards   move the peer account toward zero, against
                                               ``~settlements`` (never past zero, and never so
                                               far that holds in flight exceed the limits)
``prepare``            this node (source)      hold: payer → peer (payer's debit, peer's credit)
``prepare``            the peer (upstream)     hold: peer → payee (we are the destination)
``prepare``            the peer (upstream)     hold: peer → ``~routing`` (we forward it)
``prepare``            this node (forwarding)  hold: ``~routing`` → next peer
``fulfil``             the downstream peer     post our outbound hold (valid, before expiry)
``reject``             the downstream peer     void our outbound hold
``decision`` (void)    this node               void our outbound hold (its expiry passed)
``reject``             this node               void our inbound hold (we refused, or it expired)
``decision``           the upstream peer       post or void our inbound hold
====================  ======================  ===================================================
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Literal

from crypto.canonical import canonical_json
from crypto.keys import PublicKey
from protocol.codes import ResultCode
from protocol.messages import (
    UNIT_SPEC,
    Checker,
    MessageError,
    Signed,
    Unit,
    check_fields,
    handle,
    hex128,
    hex256,
    integer,
    literal,
    parse_signed,
    public_key,
    register_message,
    text,
    timestamp,
)

MAX_AMOUNT = 2**53 - 1
CODE_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}\Z")


# --- messages -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Party:
    node_key: PublicKey
    ledger: str
    name: str
    unit: Unit

    def to_json(self) -> dict[str, Any]:
        return {"node_key": self.node_key.text, "ledger": self.ledger, "name": self.name,
                "unit": self.unit.to_json()}


def _party(field: str, value: Any) -> Party:
    f = check_fields(value, {"node_key": public_key, "ledger": hex256,
                             "name": text(None, 64), "unit": lambda f, v: v}, field)
    f["unit"] = Unit(**check_fields(f["unit"], UNIT_SPEC, f"{field}.unit"))
    return Party(**f)


@dataclass(frozen=True)
class Line:
    id: str
    version: int
    a: Party
    b: Party
    a_limit: int
    b_limit: int
    rate_num: int
    rate_den: int
    status: Literal["active", "suspended"]
    valid_until: int
    type: str = "line"

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type, "id": self.id, "version": self.version,
            "a": self.a.to_json(), "b": self.b.to_json(),
            "a_limit": self.a_limit, "b_limit": self.b_limit,
            "rate_num": self.rate_num, "rate_den": self.rate_den,
            "status": self.status, "valid_until": self.valid_until,
        }

    def side(self, node_key: PublicKey) -> Literal["a", "b"] | None:
        return "a" if self.a.node_key == node_key else "b" if self.b.node_key == node_key else None

    def other(self, node_key: PublicKey) -> Party:
        return self.b if self.a.node_key == node_key else self.a

    def convert(self, amount: int, from_side: Literal["a", "b"]) -> int:
        """An amount in ``from_side``'s unit in the other side's unit, rounded down.

        Rounding down per payment means the receiving side never records more than the
        sending side paid; both sides log the same pair of amounts, so their peer accounts
        mirror each other exactly however many small payments add up.
        """
        if from_side == "a":
            return amount * self.rate_num // self.rate_den
        return amount * self.rate_den // self.rate_num

    def needed(self, amount_to: int, from_side: Literal["a", "b"]) -> int:
        """The least amount in ``from_side``'s unit that converts to at least ``amount_to``."""
        num, den = (self.rate_num, self.rate_den) if from_side == "a" else (
            self.rate_den, self.rate_num)
        return -(-amount_to * den // num)


@dataclass(frozen=True)
class PaymentOrder:
    ledger: str
    id: str
    payer: str
    payee: str
    payee_node: PublicKey
    amount: int
    max_pay: int
    valid_until: int
    type: str = "payment_order"

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "ledger": self.ledger, "id": self.id, "payer": self.payer,
                "payee": self.payee, "payee_node": self.payee_node.text, "amount": self.amount,
                "max_pay": self.max_pay, "valid_until": self.valid_until}


@dataclass(frozen=True)
class Quote:
    id: str  # the attempt this quote is for
    order: str
    payer_node: PublicKey
    payee: str
    amount: int
    condition: str  # hex SHA-256 of the fulfilment
    expires_at: int
    type: str = "quote"

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "id": self.id, "order": self.order,
                "payer_node": self.payer_node.text, "payee": self.payee, "amount": self.amount,
                "condition": self.condition, "expires_at": self.expires_at}


@dataclass(frozen=True)
class Prepare:
    id: str  # the attempt id: one hold per line per attempt
    line: str
    from_node: PublicKey
    to_node: PublicKey
    amount_from: int
    amount_to: int
    condition: str
    expires_at: int
    order: Signed
    quote: Signed
    # The nodes after ``to_node``, to the destination: empty when ``to_node`` is the payee's.
    path: tuple[PublicKey, ...] = ()
    type: str = "prepare"

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "id": self.id, "line": self.line,
                "from_node": self.from_node.text, "to_node": self.to_node.text,
                "amount_from": self.amount_from, "amount_to": self.amount_to,
                "condition": self.condition, "expires_at": self.expires_at,
                "order": self.order.to_json(), "quote": self.quote.to_json(),
                "path": [k.text for k in self.path]}

    def canonical_bytes(self) -> bytes:
        """``canonical_json(self.to_json())``, with the order and the quote spliced in from
        their cached canonical bytes: a PREPARE is encoded at every hop (signed by one node,
        parsed and checked by the next), and they are most of it. Fields in RFC 8785 order:
        amount_from … line, order, path, quote, to_node, type."""
        rest = canonical_json({"amount_from": self.amount_from, "amount_to": self.amount_to,
                               "condition": self.condition, "expires_at": self.expires_at,
                               "from_node": self.from_node.text, "id": self.id,
                               "line": self.line, "path": [k.text for k in self.path],
                               "to_node": self.to_node.text, "type": self.type})
        # Ids are hex and keys base64url: each marker is the member's own name. (Should a
        # value built by hand contain one, the general encoding is used.)
        if rest.count(b',"path":') != 1 or rest.count(b',"to_node":') != 1:
            return canonical_json(self.to_json())
        at_path, at_to = rest.index(b',"path":'), rest.index(b',"to_node":')
        return (rest[:at_path] + b',"order":' + self.order.canonical + rest[at_path:at_to]
                + b',"quote":' + self.quote.canonical + rest[at_to:])


@dataclass(frozen=True)
class Fulfil:
    id: str
    fulfilment: str  # hex
    type: str = "fulfil"

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "id": self.id, "fulfilment": self.fulfilment}


@dataclass(frozen=True)
class Reject:
    id: str
    code: str
    message: str
    type: str = "reject"

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "id": self.id, "code": self.code, "message": self.message}


@dataclass(frozen=True)
class Decision:
    id: str
    outcome: Literal["post", "void"]
    type: str = "decision"

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "id": self.id, "outcome": self.outcome}


@dataclass(frozen=True)
class Statement:
    """One node's account of a credit line, for reconciliation (``protocol.reconcile``):
    ``sum_a`` and ``sum_b`` are what has flowed from A to B, net, in A's and in B's unit, by
    every posted hold on the line; ``in_flight`` the attempts held on it now."""

    line: str
    version: int
    node: PublicKey  # whose account this is: one of the line's two nodes
    as_of: int  # the node's clock, ms
    size: int  # its log's size then
    sum_a: int
    sum_b: int
    in_flight: tuple[str, ...]
    settled: int = 0  # how many out-of-band settlements of the line this ledger logged
    type: str = "statement"

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "line": self.line, "version": self.version,
                "node": self.node.text, "as_of": self.as_of, "size": self.size,
                "sum_a": self.sum_a, "sum_b": self.sum_b, "in_flight": list(self.in_flight),
                "settled": self.settled}


MAX_IN_FLIGHT_LISTED = 10_000


def _attempt_ids(field: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_IN_FLIGHT_LISTED:
        raise MessageError(ResultCode.invalid_field,
                           f"{field} must list at most {MAX_IN_FLIGHT_LISTED} attempt ids", field)
    ids = tuple(hex128(f"{field}[{i}]", v) for i, v in enumerate(value))
    if list(ids) != sorted(set(ids)):
        raise MessageError(ResultCode.invalid_field, f"{field} must be sorted, without repeats",
                           field)
    return ids


def _signed(kinds: frozenset[str]) -> Checker:
    def check(field: str, value: Any) -> Signed:
        return parse_signed(value, kinds, field)

    return check


def _choice(*options: str) -> Checker:
    def check(field: str, value: Any) -> str:
        if value not in options:
            raise MessageError(ResultCode.invalid_field, f"{field}: must be one of {options}",
                               field)
        return str(value)

    return check


MAX_HOPS = 8


def path_of_keys(field: str, value: Any) -> tuple[PublicKey, ...]:
    if not isinstance(value, list) or len(value) > MAX_HOPS - 1:
        raise MessageError(ResultCode.invalid_field,
                           f"{field} must list at most {MAX_HOPS - 1} node keys", field)
    keys = tuple(public_key(f"{field}[{i}]", v) for i, v in enumerate(value))
    if len(set(keys)) != len(keys):
        raise MessageError(ResultCode.invalid_field, f"{field} names a node twice", field)
    return keys


POSITIVE = integer(1, MAX_AMOUNT)
register_message("line", Line, {
    "type": literal("line"), "id": hex128, "version": integer(1, 2**31),
    "a": _party, "b": _party, "a_limit": integer(0, MAX_AMOUNT),
    "b_limit": integer(0, MAX_AMOUNT), "rate_num": integer(1, 10**12),
    "rate_den": integer(1, 10**12), "status": _choice("active", "suspended"),
    "valid_until": timestamp,
})
register_message("payment_order", PaymentOrder, {
    "type": literal("payment_order"), "ledger": hex256, "id": hex128, "payer": handle,
    "payee": handle, "payee_node": public_key, "amount": POSITIVE, "max_pay": POSITIVE,
    "valid_until": timestamp,
})
register_message("quote", Quote, {
    "type": literal("quote"), "id": hex128, "order": hex128, "payer_node": public_key,
    "payee": handle, "amount": POSITIVE, "condition": hex256, "expires_at": timestamp,
})
register_message("prepare", Prepare, {
    "type": literal("prepare"), "id": hex128, "line": hex128, "from_node": public_key,
    "to_node": public_key, "amount_from": POSITIVE, "amount_to": POSITIVE,
    "condition": hex256, "expires_at": timestamp,
    "order": _signed(frozenset({"payment_order"})), "quote": _signed(frozenset({"quote"})),
    "path": path_of_keys,
})
register_message("fulfil", Fulfil, {"type": literal("fulfil"), "id": hex128,
                                    "fulfilment": hex256})
register_message("reject", Reject, {"type": literal("reject"), "id": hex128,
                                    "code": text(CODE_RE, 64, "must be a result code"),
                                    "message": text(None, 512)})
register_message("decision", Decision, {"type": literal("decision"), "id": hex128,
                                        "outcome": _choice("post", "void")})

SIGNED_SUM = integer(-MAX_AMOUNT, MAX_AMOUNT)
register_message("statement", Statement, {
    "type": literal("statement"), "line": hex128, "version": integer(1, 2**31),
    "node": public_key, "as_of": timestamp, "size": integer(0, MAX_AMOUNT),
    "sum_a": SIGNED_SUM, "sum_b": SIGNED_SUM, "in_flight": _attempt_ids,
    "settled": integer(0, 2**31),
})


@dataclass(frozen=True)
class LineSettlement:
    id: str
    line: str
    sequence: int
    paid_by: Literal["a", "b"]
    amount_a: int
    amount_b: int
    reference: str
    valid_until: int
    type: str = "line_settlement"

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "id": self.id, "line": self.line, "sequence": self.sequence,
                "paid_by": self.paid_by, "amount_a": self.amount_a, "amount_b": self.amount_b,
                "reference": self.reference, "valid_until": self.valid_until}


register_message("line_settlement", LineSettlement, {
    "type": literal("line_settlement"), "id": hex128, "line": hex128,
    "sequence": integer(1, 2**31), "paid_by": _choice("a", "b"), "amount_a": POSITIVE,
    "amount_b": POSITIVE, "reference": text(None, 64), "valid_until": timestamp,
})

# Every message above: what ``protocol.messages.Message`` adds for credit lines and payments.
FederationMessage = (Line | PaymentOrder | Quote | Prepare | Fulfil | Reject | Decision
                     | Statement | LineSettlement)

FEDERATION_TYPES = frozenset({"line", "prepare", "fulfil", "reject", "decision",
                              "line_settlement"})


def condition_of(fulfilment: bytes) -> str:
    return hashlib.sha256(fulfilment).hexdigest()


def peer_handle(node_key: PublicKey) -> str:
    """The handle of the peer account for the collective whose node key this is."""
    return "~" + node_key.key_id


ROUTING_ACCOUNT = "~routing"
"""An intermediary's own account for payments it forwards: credited by what it receives
upstream, debited by what it pays downstream. It stays at zero, except by a loss (it paid
downstream, and its upstream voided) — each logged as a dispute with its evidence."""

SETTLEMENT_ACCOUNT = "~settlements"
"""The internal account a line settlement moves a peer account against, so that balances
still sum to zero: what the collective's members were paid, or paid, outside Tally."""
