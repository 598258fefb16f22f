"""Typed, frozen messages and the strict parsing of them from JSON values.

Layer: protocol (pure). Owns the shapes members, stewards and the node sign, and the log-entry
envelope every accepted event is written as.

Wire form of every signed message::

    {"msg": {"type": "transfer", ...}, "sigs": [{"key": "<public key>", "sig": "<signature>"}]}

Each signature is Ed25519 over the RFC 8785 form of ``msg`` (``crypto.keys.sign_object``).
``msg.type`` separates domains: a signature over one kind of message is never valid as another.
``msg.ledger`` names the collective's ledger (the hash of its genesis entry), so a message
cannot be replayed at another collective.

Log entry envelope (the leaves of the Merkle log)::

    {"type": <msg type>, "node_time": <ms since epoch>, "payload": <the signed message>}

Times are integer milliseconds since the Unix epoch; amounts and limits are integers in the
collective's smallest unit.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar, cast

from crypto.canonical import MAX_SAFE_INTEGER, JSONValue, canonical_json
from crypto.keys import KeyFormatError, PublicKey, SecretKey
from crypto.sigtext import SIG_RE as SIG_RE  # re-exported: the spelling checks use it
from crypto.sigtext import signature_bytes as signature_bytes
from protocol.codes import ResultCode

if TYPE_CHECKING:  # for ``Message`` only: both modules build on this one (see its end)
    from protocol.federation import FederationMessage
    from protocol.gossip import NodeRecord

# \Z, not $: $ also matches before a trailing newline, which would admit "alice\n" as a
# handle distinct from "alice".
HANDLE_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,31}\Z")
HEX32_RE = re.compile(r"^[0-9a-f]{32}\Z")
HEX64_RE = re.compile(r"^[0-9a-f]{64}\Z")
MAX_MEMO_BYTES = 1024
MAX_NAME_LEN = 64
MAX_STEWARDS = 64


class MessageError(ValueError):
    """A message that does not have the required shape. ``code`` is a ``ResultCode``."""

    def __init__(self, code: ResultCode, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


# --- field checkers --------------------------------------------------------------------------

T = TypeVar("T")
Checker = Callable[[str, Any], Any]


def _bad(field: str, what: str) -> MessageError:
    return MessageError(ResultCode.invalid_field, f"{field}: {what}", field)


def integer(low: int = -MAX_SAFE_INTEGER, high: int = MAX_SAFE_INTEGER) -> Checker:
    def check(field: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(field, "must be an integer")
        if not low <= value <= high:
            raise _bad(field, f"must be between {low} and {high}")
        return value

    return check


def text(pattern: re.Pattern[str] | None = None, max_len: int = 256, what: str = "") -> Checker:
    def check(field: str, value: Any) -> str:
        if not isinstance(value, str):
            raise _bad(field, "must be a string")
        if len(value) > max_len:
            raise _bad(field, f"must be at most {max_len} characters")
        if pattern is not None and not pattern.match(value):
            raise _bad(field, what or f"must match {pattern.pattern}")
        return value

    return check


def literal(expected: str) -> Checker:
    def check(field: str, value: Any) -> str:
        if value != expected:
            raise _bad(field, f"must be {expected!r}")
        return expected

    return check


def optional(inner: Checker) -> Checker:
    def check(field: str, value: Any) -> Any:
        return None if value is None else inner(field, value)

    return check


def public_key(field: str, value: Any) -> PublicKey:
    if not isinstance(value, str):
        raise _bad(field, "must be a public key (43 characters of base64url)")
    try:
        return PublicKey.parse(value)
    except KeyFormatError as exc:
        raise _bad(field, exc.message) from exc


handle = text(HANDLE_RE, 32, "must be 1-32 of a-z 0-9 _ . - starting with a letter or digit")
hex128 = text(HEX32_RE, 32, "must be 32 lowercase hex digits (a random 128-bit id)")
hex256 = text(HEX64_RE, 64, "must be 64 lowercase hex digits")
amount = integer()  # sign is a ledger rule (amount_must_be_positive), not a shape error
limit = integer()  # likewise: limit_must_not_be_negative
timestamp = integer(0)


def check_fields(
    obj: Any, spec: Mapping[str, Checker], where: str, optional_fields: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """Check a JSON object against a field spec: all known, all present (unless optional)."""
    if not isinstance(obj, dict):
        raise MessageError(ResultCode.invalid_field, f"{where} must be a JSON object", where)
    if obj.keys() == spec.keys():  # the usual case: every field known and present
        return {key: checker(f"{where}.{key}", obj[key]) for key, checker in spec.items()}
    for key in obj:
        if key not in spec:
            raise MessageError(
                ResultCode.unknown_field, f"{where}: unknown field {key!r}", f"{where}.{key}"
            )
    out: dict[str, Any] = {}
    for key, checker in spec.items():
        if key not in obj:
            if key in optional_fields:
                out[key] = None
                continue
            raise MessageError(
                ResultCode.missing_field, f"{where}: missing field {key!r}", f"{where}.{key}"
            )
        out[key] = checker(f"{where}.{key}", obj[key])
    return out


# --- messages --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    code: str  # e.g. "HOUR"
    name: str  # e.g. "hours"
    scale: int  # smallest units per display unit, e.g. 60 (minutes per hour)

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "name": self.name, "scale": self.scale}


UNIT_SPEC: dict[str, Checker] = {
    "code": text(re.compile(r"^[A-Z][A-Z0-9]{0,11}\Z"), 12, "must be 1-12 of A-Z 0-9"),
    "name": text(None, MAX_NAME_LEN),
    "scale": integer(1, 10**9),
}


@dataclass(frozen=True)
class Genesis:
    """The first log entry: who the collective is and who may act for it."""

    name: str
    unit: Unit
    node_key: PublicKey
    stewards: tuple[PublicKey, ...]
    threshold: int
    created: int
    type: str = "genesis"

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "version": 1,
            "name": self.name,
            "unit": self.unit.to_json(),
            "node_key": self.node_key.text,
            "stewards": [k.text for k in self.stewards],
            "threshold": self.threshold,
            "created": self.created,
        }


@dataclass(frozen=True)
class Transfer:
    """A member pays another member of the same collective."""

    ledger: str
    id: str
    payer: str
    payee: str
    amount: int
    memo_hash: str | None
    valid_until: int
    type: str = "transfer"

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "ledger": self.ledger,
            "id": self.id,
            "payer": self.payer,
            "payee": self.payee,
            "amount": self.amount,
            "memo_hash": self.memo_hash,
            "valid_until": self.valid_until,
        }


@dataclass(frozen=True)
class Admit:
    """Stewards admit a member: a handle bound to the member's own public key, with limits."""

    ledger: str
    id: str
    valid_until: int
    handle: str
    key: PublicKey
    debit_limit: int
    credit_limit: int
    type: str = "admit"

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "ledger": self.ledger,
            "id": self.id,
            "valid_until": self.valid_until,
            "handle": self.handle,
            "key": self.key.text,
            "debit_limit": self.debit_limit,
            "credit_limit": self.credit_limit,
        }


@dataclass(frozen=True)
class SetLimits:
    ledger: str
    id: str
    valid_until: int
    handle: str
    debit_limit: int
    credit_limit: int
    type: str = "set_limits"

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "ledger": self.ledger,
            "id": self.id,
            "valid_until": self.valid_until,
            "handle": self.handle,
            "debit_limit": self.debit_limit,
            "credit_limit": self.credit_limit,
        }


@dataclass(frozen=True)
class Close:
    ledger: str
    id: str
    valid_until: int
    handle: str
    type: str = "close"

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "ledger": self.ledger,
            "id": self.id,
            "valid_until": self.valid_until,
            "handle": self.handle,
        }


@dataclass(frozen=True)
class Rekey:
    """Bind a member's account to a new key (the old one was lost or compromised)."""

    ledger: str
    id: str
    valid_until: int
    handle: str
    key: PublicKey
    type: str = "rekey"

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "ledger": self.ledger,
            "id": self.id,
            "valid_until": self.valid_until,
            "handle": self.handle,
            "key": self.key.text,
        }


@dataclass(frozen=True)
class SetStewards:
    """Replace the steward set and the number of them that must sign an act."""

    ledger: str
    id: str
    valid_until: int
    stewards: tuple[PublicKey, ...]
    threshold: int
    type: str = "set_stewards"

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "ledger": self.ledger,
            "id": self.id,
            "valid_until": self.valid_until,
            "stewards": [k.text for k in self.stewards],
            "threshold": self.threshold,
        }


StewardAct = Admit | SetLimits | Close | Rekey | SetStewards
LedgerMessage = Genesis | Transfer | StewardAct
# Every message that is signed and wrapped in ``Signed``: the ledger's own, the federation's
# (``protocol.federation``) and node records (``protocol.gossip``), each registered with
# ``register_message``. A string: those modules build on this one.
Message: TypeAlias = "LedgerMessage | FederationMessage | NodeRecord"


def _key_list(field: str, value: Any) -> tuple[PublicKey, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_STEWARDS:
        raise _bad(field, f"must be a list of 1 to {MAX_STEWARDS} public keys")
    keys = tuple(public_key(f"{field}[{i}]", v) for i, v in enumerate(value))
    if len(set(keys)) != len(keys):
        raise _bad(field, "must not name a key twice")
    return keys


_ACT_COMMON: dict[str, Checker] = {
    "type": text(),
    "ledger": hex256,
    "id": hex128,
    "valid_until": timestamp,
}

_SPECS: dict[str, dict[str, Checker]] = {
    "genesis": {
        "type": literal("genesis"),
        "version": integer(1, 1),
        "name": text(None, MAX_NAME_LEN),
        "unit": lambda f, v: Unit(**check_fields(v, UNIT_SPEC, f)),
        "node_key": public_key,
        "stewards": _key_list,
        "threshold": integer(1, MAX_STEWARDS),
        "created": timestamp,
    },
    "transfer": {
        **_ACT_COMMON,
        "payer": handle,
        "payee": handle,
        "amount": amount,
        "memo_hash": optional(hex256),
    },
    "admit": {**_ACT_COMMON, "handle": handle, "key": public_key, "debit_limit": limit,
              "credit_limit": limit},
    "set_limits": {**_ACT_COMMON, "handle": handle, "debit_limit": limit, "credit_limit": limit},
    "close": {**_ACT_COMMON, "handle": handle},
    "rekey": {**_ACT_COMMON, "handle": handle, "key": public_key},
    "set_stewards": {**_ACT_COMMON, "stewards": _key_list, "threshold": integer(1, MAX_STEWARDS)},
}

_CLASSES: dict[str, type] = {
    "genesis": Genesis,
    "transfer": Transfer,
    "admit": Admit,
    "set_limits": SetLimits,
    "close": Close,
    "rekey": Rekey,
    "set_stewards": SetStewards,
}

def register_message(kind: str, cls: type, spec: dict[str, Checker]) -> None:
    """Add a message type (``protocol.federation`` adds its own) to what ``parse_message``
    accepts. Each class needs ``to_json`` and the fields of ``spec``."""
    if kind in _SPECS:
        raise ValueError(f"message type {kind!r} is registered twice")
    _SPECS[kind] = spec
    _CLASSES[kind] = cls


STEWARD_ACT_TYPES = frozenset({"admit", "set_limits", "close", "rekey", "set_stewards"})


def parse_message(obj: Any, allowed: frozenset[str] | None = None) -> Message:
    """Parse ``msg`` from JSON into its typed form, refusing any deviation from the spec."""
    if not isinstance(obj, dict):
        raise MessageError(ResultCode.invalid_field, "msg must be a JSON object", "msg")
    kind = obj.get("type")
    if not isinstance(kind, str) or kind not in _SPECS or (allowed and kind not in allowed):
        kinds = ", ".join(sorted(allowed or _SPECS))
        raise MessageError(ResultCode.invalid_field, f"msg.type must be one of: {kinds}", "msg.type")
    if kind == "transfer":
        fast = _fast_transfer(obj)
        if fast is not None:
            return fast[0]
    fields = check_fields(obj, _SPECS[kind], "msg")
    if kind == "genesis":
        fields.pop("version")  # fixed at 1: written by Genesis.to_json, not a field
    return cast(Message, _CLASSES[kind](**fields))


_TRANSFER_KEYS = frozenset(
    {"type", "ledger", "id", "payer", "payee", "amount", "memo_hash", "valid_until"}
)


def _fast_transfer(obj: dict[str, Any]) -> tuple[Transfer, bytes] | None:
    """A transfer that passes every check of ``_SPECS["transfer"]``, with its RFC 8785 bytes;
    None whenever anything is unusual, and ``check_fields`` then finds and names it.

    Every value is checked as the spec checks it (exact ``str``/``int`` only, which is all
    ``parse_json`` makes), and the strings accepted (hex, handles) need no JSON escaping, so
    the bytes are written directly: keys in RFC 8785 order."""
    if obj.keys() != _TRANSFER_KEYS:
        return None
    ledger = obj["ledger"]
    id_ = obj["id"]
    payer = obj["payer"]
    payee = obj["payee"]
    amount = obj["amount"]
    memo = obj["memo_hash"]
    valid_until = obj["valid_until"]
    if not (
        obj["type"] == "transfer"
        and type(ledger) is str and HEX64_RE.match(ledger)
        and type(id_) is str and HEX32_RE.match(id_)
        and type(payer) is str and HANDLE_RE.match(payer)
        and type(payee) is str and HANDLE_RE.match(payee)
        and type(amount) is int and -MAX_SAFE_INTEGER <= amount <= MAX_SAFE_INTEGER
        and type(valid_until) is int and 0 <= valid_until <= MAX_SAFE_INTEGER
        and (memo is None or (type(memo) is str and HEX64_RE.match(memo)))
    ):
        return None
    memo_json = "null" if memo is None else f'"{memo}"'
    data = (
        f'{{"amount":{amount},"id":"{id_}","ledger":"{ledger}","memo_hash":{memo_json},'
        f'"payee":"{payee}","payer":"{payer}","type":"transfer","valid_until":{valid_until}}}'
    ).encode("ascii")
    return _new_transfer(ledger, id_, payer, payee, amount, memo, valid_until), data


def _new_transfer(
    ledger: str, id_: str, payer: str, payee: str, amount: int, memo: str | None,
    valid_until: int,
) -> Transfer:
    """``Transfer(...)`` of fields already checked, without the frozen dataclass's __init__
    (one object.__setattr__ per field): this runs for every transfer."""
    t = object.__new__(Transfer)
    t.__dict__.update(
        ledger=ledger, id=id_, payer=payer, payee=payee, amount=amount, memo_hash=memo,
        valid_until=valid_until, type="transfer",
    )
    return t


def _signed_once(msg: Message, key: PublicKey, sig: str, signed_bytes: bytes,
                 canonical: bytes) -> Signed:
    """``Signed`` of a message with one signature, its bytes given (the same way)."""
    signature = object.__new__(Signature)
    signature.__dict__.update(key=key, sig=sig)
    signed = object.__new__(Signed)
    signed.__dict__.update(msg=msg, sigs=(signature,), signed_bytes=signed_bytes,
                           canonical=canonical)
    return signed


def signed_transfer(
    ledger: str, id_: str, payer: str, payee: str, amount: int, memo: str | None,
    valid_until: int, key_text: str, sig: str, signed_bytes: bytes, canonical: bytes,
) -> Signed:
    """The signed transfer, with one signature, that ``parse_signed`` made of these fields
    and bytes (``Signed.signed_bytes`` and ``Signed.canonical``): for values it has already
    checked (in a signature worker, see ``node.intake``), rebuilt without checking them or
    writing the bytes again."""
    return _signed_once(_new_transfer(ledger, id_, payer, payee, amount, memo, valid_until),
                        PublicKey.parse(key_text), sig, signed_bytes, canonical)


def _key(text: Any) -> PublicKey | None:
    """The public key written as ``text`` if it is one (as ``public_key`` accepts), else None.
    (``PublicKey.parse`` keeps the keys it parsed: members sign again and again with the same
    few.)"""
    try:
        return PublicKey.parse(text)
    except (KeyFormatError, TypeError):
        return None


@dataclass(frozen=True)
class Signature:
    key: PublicKey
    sig: str

    def to_json(self) -> dict[str, str]:
        return {"key": self.key.text, "sig": self.sig}


SIG_SPEC: dict[str, Checker] = {"key": public_key, "sig": text(SIG_RE, 86, "must be 86 characters of base64url")}


@dataclass(frozen=True)
class Signed:
    """A message with its signatures, and the exact canonical bytes that were signed."""

    msg: Message
    sigs: tuple[Signature, ...]

    def to_json(self) -> dict[str, Any]:
        return {"msg": self.msg.to_json(), "sigs": [s.to_json() for s in self.sigs]}

    @cached_property
    def signed_bytes(self) -> bytes:
        """The RFC 8785 form of ``msg``: what every signature is over. Computed once (parsing
        fills it in for the messages it knows how to write directly; a message that embeds
        signed ones writes itself with their bytes spliced in: ``canonical_bytes``)."""
        spliced = getattr(self.msg, "canonical_bytes", None)
        return spliced() if spliced is not None else canonical_json(self.msg.to_json())

    @cached_property
    def canonical(self) -> bytes:
        """``canonical_json(self.to_json())``, spliced from ``signed_bytes``: keys sort as
        "msg" < "sigs" and "key" < "sig", and base64url needs no escaping."""
        if all(type(s.sig) is str and SIG_RE.match(s.sig) for s in self.sigs):
            sigs = ",".join(f'{{"key":"{s.key.text}","sig":"{s.sig}"}}' for s in self.sigs)
            return b'{"msg":' + self.signed_bytes + b',"sigs":[' + sigs.encode("ascii") + b"]}"
        return canonical_json(self.to_json())

    @cached_property
    def identity(self) -> tuple[bytes, tuple[tuple[bytes, str], ...]]:
        """SHA-256 of ``signed_bytes`` with every signature as written: two values with the
        same identity have the same ``verified_signers()``."""
        return (hashlib.sha256(self.signed_bytes).digest(),
                tuple((s.key.raw, s.sig) for s in self.sigs))

    def verified_signers(self) -> tuple[frozenset[PublicKey], bool]:
        """(keys whose signature verifies, whether every signature verified)."""
        body = self.signed_bytes
        good = set()
        for s in self.sigs:
            raw = signature_bytes(s.sig)
            if raw is not None and s.key.verify(body, raw):
                good.add(s.key)
        return frozenset(good), len(good) == len({s.key for s in self.sigs})


def _fast_signed(obj: Any, allowed: frozenset[str] | None) -> Signed | None:
    """``parse_signed`` of a well-formed transfer with one signature, the hot path of the
    API; None whenever anything is unusual (``parse_signed`` then checks it field by field).
    Accepts exactly what the general path accepts, and builds the same value."""
    if type(obj) is not dict or len(obj) != 2:
        return None
    msg_obj = obj.get("msg")
    sigs_raw = obj.get("sigs")
    if (
        type(msg_obj) is not dict
        or msg_obj.get("type") != "transfer"
        or (allowed and "transfer" not in allowed)
        or type(sigs_raw) is not list
        or len(sigs_raw) != 1
    ):
        return None
    sig_obj = sigs_raw[0]
    if type(sig_obj) is not dict or len(sig_obj) != 2:
        return None
    key_text = sig_obj.get("key")
    sig = sig_obj.get("sig")
    key = _key(key_text)
    if key is None or type(sig) is not str or len(sig) != 86 or not SIG_RE.match(sig):
        return None
    fast = _fast_transfer(msg_obj)
    if fast is None:
        return None
    msg, data = fast
    canonical = b'{"msg":' + data + f',"sigs":[{{"key":"{key_text}","sig":"{sig}"}}]}}'.encode()
    return _signed_once(msg, key, sig, data, canonical)


def parse_signed(obj: Any, allowed: frozenset[str] | None = None, where: str = "body") -> Signed:
    quick = _fast_signed(obj, allowed)
    if quick is not None:
        return quick
    fields = check_fields(obj, {"msg": lambda f, v: v, "sigs": lambda f, v: v}, where)
    sigs_raw = fields["sigs"]
    if not isinstance(sigs_raw, list) or not 1 <= len(sigs_raw) <= MAX_STEWARDS:
        raise MessageError(
            ResultCode.invalid_field, f"{where}.sigs must list 1 to {MAX_STEWARDS} signatures"
        )
    sigs = tuple(
        Signature(**check_fields(s, SIG_SPEC, f"{where}.sigs[{i}]")) for i, s in enumerate(sigs_raw)
    )
    if len({s.key for s in sigs}) != len(sigs):
        raise MessageError(ResultCode.invalid_field, f"{where}.sigs names a key twice")
    msg_obj = fields["msg"]
    fast = _fast_transfer(msg_obj) if isinstance(msg_obj, dict) and (
        msg_obj.get("type") == "transfer" and (not allowed or "transfer" in allowed)) else None
    if fast is not None:
        signed = Signed(msg=fast[0], sigs=sigs)
        signed.__dict__["signed_bytes"] = fast[1]
        return signed
    return Signed(msg=parse_message(msg_obj, allowed), sigs=sigs)


def sign_message(msg: Message, *keys: SecretKey) -> Signed:
    from crypto.keys import b64url

    spliced = getattr(msg, "canonical_bytes", None)
    data = spliced() if spliced is not None else canonical_json(msg.to_json())
    signed = Signed(msg=msg, sigs=tuple(Signature(k.public, b64url(k.sign(data))) for k in keys))
    signed.__dict__["signed_bytes"] = data
    return signed


# --- log entries ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LogEntry:
    """One leaf of the log: an accepted event, with the node's time of acceptance."""

    node_time: int
    payload: Signed

    @property
    def type(self) -> str:
        return self.payload.msg.type

    def to_json(self) -> dict[str, JSONValue]:
        return {"type": self.type, "node_time": self.node_time, "payload": self.payload.to_json()}

    def encode(self) -> bytes:
        return encode_entry(self.node_time, self.payload)


_TYPE_JSON: dict[str, bytes] = {}  # the JSON string of each message type, written once


def encode_entry(node_time: int, payload: Signed) -> bytes:
    """``LogEntry(node_time, payload).encode()``: its RFC 8785 bytes. The payload's canonical
    bytes are computed once (the digest needs them too) and spliced in: keys sort as
    "node_time" < "payload" < "type"."""
    kind = payload.msg.type
    kind_json = _TYPE_JSON.get(kind)
    if kind_json is None:
        kind_json = _TYPE_JSON[kind] = canonical_json(kind)
    return b'{"node_time":%d,"payload":%s,"type":%s}' % (node_time, payload.canonical, kind_json)


def parse_log_entry(obj: Any) -> LogEntry:
    fields = check_fields(
        obj, {"type": text(), "node_time": timestamp, "payload": lambda f, v: v}, "entry"
    )
    payload = parse_signed(fields["payload"], where="entry.payload")
    if payload.msg.type != fields["type"]:
        raise MessageError(ResultCode.invalid_field, "entry.type differs from its payload's type")
    return LogEntry(node_time=fields["node_time"], payload=payload)


# The federation messages (credit lines, payments across them) register themselves here, so
# that every parser of log entries knows them. Imported last: they build on this module.
import protocol.federation  # noqa: E402, F401
