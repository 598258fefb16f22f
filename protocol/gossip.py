"""Gossip: signed node records, how copies merge, what to exchange, and with whom.

Layer: protocol (pure). Time (``now``, ms since the epoch) and randomness (``rng``, a
``random.Random``) are arguments; what to send is returned, never sent. ``node.gossip`` does
the HTTP; ``tests/protocol/sim_gossip.py`` runs thousands of these states in one process.

Theory of operation
-------------------
Every node signs a **node record** of itself: key, name, URLs, unit, the verifier key of its
log, its credit lines (terms and limits, never balances), software and protocol version, an
``issued`` time and a ``counter`` that only grows. A node is its key; the name is a label.
A record is accepted only with exactly one signature, by the key it describes.

Each state holds, per node key, the record with the highest counter it has seen; per log
signer, the largest checkpoint seen; and every piece of equivocation evidence it verified.
Each period a node picks ``fanout`` random fresh peers and runs push-pull anti-entropy:

    A -> B   digest: {records: key -> counter, checkpoints: key -> size, evidence: [id]}
    B -> A   answer: the items B holds that are newer than A's digest (within a byte
             budget), and ``want``: what A's digest shows A has newer than B
    A -> B   push:   the items B wanted (within the budget)

Merging an item (``GossipState.merge``), for each kind:

==============  ============================  =============================================
item            compared with what we hold     outcome
==============  ============================  =============================================
record          higher counter                 replace (after checking the signature)
record          same counter, same bytes       duplicate
record          same counter, other bytes      refused: ``record_conflict`` (first kept)
record          lower counter                  refused: ``stale_record``
checkpoint      larger size                    replace (after checking the signature)
checkpoint      same size, other root          **evidence**: the signer equivocated
checkpoint      same size and root, or less    ignored
evidence        unknown id                     verify, keep, suspend the offender
==============  ============================  =============================================

A record whose ``issued`` is older than ``stale_after`` is **stale**: kept (and gossiped, so
others learn it too) but not chosen as a peer and left out of the graph; after
``forget_after`` it is dropped. A credit line enters the graph (``edges``) only when both
sides' fresh records name it with the same rate; each side's limit comes from its own record.
"""

from __future__ import annotations

import base64
import binascii
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from crypto.canonical import canonical_json
from crypto.checkpoint import Checkpoint, CheckpointError, parse_checkpoint
from crypto.keys import PublicKey, SecretKey
from crypto.note import Ed25519Verifier, NoteError, open_note, parse_verifier_key
from protocol.codes import ResultCode
from protocol.evidence import Equivocation, EvidenceError, parse_evidence, same_size_evidence
from protocol.federation import Line
from protocol.messages import (
    UNIT_SPEC,
    Checker,
    MessageError,
    Signed,
    Unit,
    check_fields,
    hex128,
    hex256,
    integer,
    literal,
    parse_signed,
    public_key,
    register_message,
    sign_message,
    text,
    timestamp,
)
from protocol.routing import Edge

PROTOCOL_VERSION = 1
MAX_URLS = 4
MAX_LINES = 256
MAX_RECORD_BYTES = 64 * 1024
MAX_FUTURE_MS = 5 * 60 * 1000  # a record issued further ahead than this is refused
URL_RE = re.compile(r"^https?://[^\s/?#]+(/[^\s?#]*)?\Z")
MAX_AMOUNT = 2**53 - 1


class GossipError(ValueError):
    """An item refused by the merge. ``code`` is a ``ResultCode``; ``message`` says why."""

    def __init__(self, code: ResultCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# --- the node record ------------------------------------------------------------------------


@dataclass(frozen=True)
class LineEntry:
    """One credit line as a node states it in its record: the line's current terms."""

    id: str
    version: int
    a: PublicKey
    b: PublicKey
    a_limit: int  # how far A lets B owe A, in A's unit
    b_limit: int  # how far B lets A owe B, in B's unit
    rate_num: int  # B's units per A unit
    rate_den: int
    status: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "version": self.version, "a": self.a.text, "b": self.b.text,
                "a_limit": self.a_limit, "b_limit": self.b_limit, "rate_num": self.rate_num,
                "rate_den": self.rate_den, "status": self.status}

    @classmethod
    def of(cls, line: Line) -> LineEntry:
        return cls(line.id, line.version, line.a.node_key, line.b.node_key, line.a_limit,
                   line.b_limit, line.rate_num, line.rate_den, line.status)


def _status(field: str, value: Any) -> str:
    if value not in ("active", "suspended"):
        raise MessageError(ResultCode.invalid_field, f"{field}: must be active or suspended",
                           field)
    return str(value)


LINE_ENTRY_SPEC: dict[str, Checker] = {
    "id": hex128, "version": integer(1, 2**31), "a": public_key, "b": public_key,
    "a_limit": integer(0, MAX_AMOUNT), "b_limit": integer(0, MAX_AMOUNT),
    "rate_num": integer(1, 10**12), "rate_den": integer(1, 10**12), "status": _status,
}


def _lines(field: str, value: Any) -> tuple[LineEntry, ...]:
    if not isinstance(value, list) or len(value) > MAX_LINES:
        raise MessageError(ResultCode.invalid_field, f"{field}: at most {MAX_LINES} lines", field)
    entries = tuple(LineEntry(**check_fields(v, LINE_ENTRY_SPEC, f"{field}[{i}]"))
                    for i, v in enumerate(value))
    if len({e.id for e in entries}) != len(entries):
        raise MessageError(ResultCode.invalid_field, f"{field}: names a line twice", field)
    return entries


def _urls(field: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_URLS:
        raise MessageError(ResultCode.invalid_field, f"{field}: 1 to {MAX_URLS} URLs", field)
    check = text(URL_RE, 300, "must be an http:// or https:// URL")
    return tuple(check(f"{field}[{i}]", v) for i, v in enumerate(value))


@dataclass(frozen=True)
class NodeRecord:
    key: PublicKey
    name: str
    ledger: str
    log_vkey: str  # C2SP verifier key of the node's checkpoints (the node key, type 0x01)
    urls: tuple[str, ...]
    unit: Unit
    lines: tuple[LineEntry, ...]
    software: str
    protocol: int
    counter: int
    issued: int
    type: str = "node_record"

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "key": self.key.text, "name": self.name,
                "ledger": self.ledger, "log_vkey": self.log_vkey, "urls": list(self.urls),
                "unit": self.unit.to_json(), "lines": [e.to_json() for e in self.lines],
                "software": self.software, "protocol": self.protocol,
                "counter": self.counter, "issued": self.issued}


register_message("node_record", NodeRecord, {
    "type": literal("node_record"), "key": public_key, "name": text(None, 64),
    "ledger": hex256, "log_vkey": text(None, 300), "urls": _urls,
    "unit": lambda f, v: Unit(**check_fields(v, UNIT_SPEC, f)), "lines": _lines,
    "software": text(None, 64), "protocol": integer(1, 2**31),
    "counter": integer(0), "issued": timestamp,
})
RECORD = frozenset({"node_record"})


def make_record(key: SecretKey, *, name: str, ledger: str, log_vkey: str, urls: Iterable[str],
                unit: Unit, lines: Iterable[LineEntry], software: str, counter: int,
                issued: int) -> Signed:
    record = NodeRecord(key.public, name, ledger, log_vkey, tuple(urls), unit,
                        tuple(sorted(lines, key=lambda e: e.id)), software, PROTOCOL_VERSION,
                        counter, issued)
    return sign_message(record, key)


def log_verifier(record: NodeRecord) -> Ed25519Verifier:
    verifier = parse_verifier_key(record.log_vkey)
    if not isinstance(verifier, Ed25519Verifier):
        raise NoteError("log_vkey must be an Ed25519 (type 0x01) key")
    return verifier


def verify_record(signed: Signed, now: int) -> NodeRecord:
    """The record, if it is one, signed by exactly the key it describes; else ``GossipError``."""
    record = signed.msg
    if not isinstance(record, NodeRecord):
        raise GossipError(ResultCode.invalid_field, "not a node record")
    if len(signed.canonical) > MAX_RECORD_BYTES:
        raise GossipError(ResultCode.body_too_large,
                          f"a node record is at most {MAX_RECORD_BYTES} bytes")
    if len(signed.sigs) != 1 or signed.sigs[0].key != record.key:
        raise GossipError(ResultCode.bad_signature,
                          "a node record must be signed by the key it describes, and only by it")
    good, _ = signed.verified_signers()
    if record.key not in good:
        raise GossipError(ResultCode.bad_signature, "the node record's signature does not verify")
    try:
        verifier = log_verifier(record)
    except NoteError as exc:
        raise GossipError(ResultCode.invalid_field, f"log_vkey: {exc}") from exc
    if verifier.public_key != record.key.raw:
        raise GossipError(ResultCode.invalid_field, "log_vkey is not the record's own key")
    if any(record.key not in (e.a, e.b) or e.a == e.b for e in record.lines):
        raise GossipError(ResultCode.not_a_party,
                          "a node record may only name lines between its node and another")
    if record.issued > now + MAX_FUTURE_MS:
        raise GossipError(ResultCode.invalid_field,
                          "the record is issued in the future (check the node's clock)")
    return record


def parse_record(obj: Any, now: int) -> tuple[Signed, NodeRecord]:
    try:
        signed = parse_signed(obj, RECORD, "record")
    except MessageError as exc:
        raise GossipError(exc.code, exc.message) from exc
    return signed, verify_record(signed, now)


# --- checkpoints ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeenCheckpoint:
    note: bytes
    checkpoint: Checkpoint


def open_checkpoint(record: NodeRecord, note: bytes) -> Checkpoint:
    try:
        checkpoint = parse_checkpoint(open_note(note, [log_verifier(record)]).text)
    except (NoteError, CheckpointError) as exc:
        raise GossipError(ResultCode.bad_signature,
                          f"the checkpoint does not verify with the node's log key: {exc}") from exc
    if checkpoint.origin != log_verifier(record).name:
        raise GossipError(ResultCode.invalid_field, "the checkpoint's origin is not the node's log")
    return checkpoint


# --- wire forms -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Digest:
    records: Mapping[str, int]  # node key (text) -> counter
    # node key (text) -> (size, root): the root too, so that two checkpoints of one size
    # that differ are exchanged, and the fork is caught where they meet.
    checkpoints: Mapping[str, tuple[int, bytes]]
    evidence: frozenset[str]  # evidence ids

    def to_json(self) -> dict[str, Any]:
        return {"records": dict(self.records),
                "checkpoints": {k: {"size": n, "root": base64.b64encode(r).decode("ascii")}
                                for k, (n, r) in self.checkpoints.items()},
                "evidence": sorted(self.evidence)}

    @property
    def entries(self) -> int:
        return len(self.records) + len(self.checkpoints) + len(self.evidence)


@dataclass(frozen=True)
class Want:
    records: tuple[str, ...] = ()
    checkpoints: tuple[str, ...] = ()
    evidence: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"records": list(self.records), "checkpoints": list(self.checkpoints),
                "evidence": list(self.evidence)}

    @property
    def empty(self) -> bool:
        return not (self.records or self.checkpoints or self.evidence)


@dataclass(frozen=True)
class Update:
    """Items sent: signed records, checkpoint notes by node key, evidence records."""

    records: tuple[Any, ...] = ()  # JSON of signed records
    checkpoints: tuple[tuple[str, str], ...] = ()  # (node key text, note text)
    evidence: tuple[Any, ...] = ()  # JSON of evidence records

    def to_json(self) -> dict[str, Any]:
        return {"records": list(self.records),
                "checkpoints": [{"key": k, "note": n} for k, n in self.checkpoints],
                "evidence": list(self.evidence)}

    @property
    def items(self) -> int:
        return len(self.records) + len(self.checkpoints) + len(self.evidence)


def _bad(message: str) -> GossipError:
    return GossipError(ResultCode.invalid_field, message)


def _key_text(field: str, value: Any) -> str:
    return public_key(field, value).text


def _size_root(field: str, value: Any) -> tuple[int, bytes]:
    f = check_fields(value, {"size": integer(0), "root": text(None, 44)}, field)
    try:
        root = base64.b64decode(f["root"].encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error) as exc:
        raise _bad(f"{field}.root: not base64") from exc
    if len(root) != 32:
        raise _bad(f"{field}.root: must be a 32-byte hash")
    return f["size"], root


def parse_digest(obj: Any, max_entries: int) -> Digest:
    """A digest from JSON, refused (``body_too_large``) if it lists more than ``max_entries``."""
    try:
        f = check_fields(obj, {"records": lambda f, v: v, "checkpoints": lambda f, v: v,
                               "evidence": lambda f, v: v}, "digest")
    except MessageError as exc:
        raise GossipError(exc.code, exc.message) from exc
    recs, cps, evs = f["records"], f["checkpoints"], f["evidence"]
    if not isinstance(recs, dict) or not isinstance(cps, dict) or not isinstance(evs, list):
        raise _bad("digest: records and checkpoints are objects, evidence a list")
    if len(recs) + len(cps) + len(evs) > max_entries:
        raise GossipError(ResultCode.body_too_large,
                          f"a digest lists at most {max_entries} entries")
    count = integer(0)
    try:
        records = {_key_text(f"digest.records.{k}", k): count(f"digest.records.{k}", v)
                   for k, v in recs.items()}
        checkpoints = {_key_text(f"digest.checkpoints.{k}", k): _size_root(
            f"digest.checkpoints.{k}", v) for k, v in cps.items()}
        evidence = frozenset(hex256(f"digest.evidence[{i}]", v) for i, v in enumerate(evs))
    except MessageError as exc:
        raise GossipError(exc.code, exc.message) from exc
    return Digest(records, checkpoints, evidence)


def parse_want(obj: Any, max_entries: int) -> Want:
    try:
        f = check_fields(obj, {"records": lambda f, v: v, "checkpoints": lambda f, v: v,
                               "evidence": lambda f, v: v}, "want")
        lists = [f[k] for k in ("records", "checkpoints", "evidence")]
        if not all(isinstance(v, list) for v in lists):
            raise _bad("want: records, checkpoints and evidence are lists")
        if sum(len(v) for v in lists) > max_entries:
            raise GossipError(ResultCode.body_too_large,
                              f"a want lists at most {max_entries} entries")
        return Want(tuple(_key_text("want.records", v) for v in lists[0]),
                    tuple(_key_text("want.checkpoints", v) for v in lists[1]),
                    tuple(hex256("want.evidence", v) for v in lists[2]))
    except MessageError as exc:
        raise GossipError(exc.code, exc.message) from exc


def parse_update(obj: Any, max_items: int) -> Update:
    """The shape of an update; each item is checked when merged (one bad item does not
    spoil the others)."""
    try:
        f = check_fields(obj, {"records": lambda f, v: v, "checkpoints": lambda f, v: v,
                               "evidence": lambda f, v: v}, "update")
    except MessageError as exc:
        raise GossipError(exc.code, exc.message) from exc
    recs, cps, evs = f["records"], f["checkpoints"], f["evidence"]
    if not all(isinstance(v, list) for v in (recs, cps, evs)):
        raise _bad("update: records, checkpoints and evidence are lists")
    if len(recs) + len(cps) + len(evs) > max_items:
        raise GossipError(ResultCode.body_too_large, f"an update holds at most {max_items} items")
    checkpoints = []
    for i, c in enumerate(cps):
        try:
            g = check_fields(c, {"key": _key_text, "note": text(None, 16 * 1024)},
                             f"update.checkpoints[{i}]")
        except MessageError as exc:
            raise GossipError(exc.code, exc.message) from exc
        checkpoints.append((g["key"], g["note"]))
    return Update(tuple(recs), tuple(checkpoints), tuple(evs))


# --- the state --------------------------------------------------------------------------------


class Outcome(str, Enum):
    new = "new"  # a node we did not know
    updated = "updated"  # a newer record, or a larger checkpoint
    duplicate = "duplicate"  # what we already hold
    evidence = "evidence"  # new evidence (received, or found by comparing checkpoints)


def _behind(theirs: tuple[int, bytes] | None, ours: Checkpoint) -> bool:
    """Whether a peer holding ``theirs`` should get ``ours``: it is larger, or contradicts."""
    return theirs is None or theirs[0] < ours.size or (
        theirs[0] == ours.size and theirs[1] != ours.root)


def _ahead(theirs: tuple[int, bytes], ours: Checkpoint) -> bool:
    return theirs[0] > ours.size or (theirs[0] == ours.size and theirs[1] != ours.root)


@dataclass
class Known:
    signed: Signed
    record: NodeRecord
    heard: int  # our time when this version arrived


@dataclass
class Merged:
    """What one update did: outcome per item, refusals with their reasons, new evidence."""

    outcomes: list[Outcome] = field(default_factory=list)
    refused: list[GossipError] = field(default_factory=list)
    evidence: list[Equivocation] = field(default_factory=list)
    changed_records: list[PublicKey] = field(default_factory=list)


@dataclass
class GossipState:
    me: PublicKey
    stale_after_ms: int = 10 * 60 * 1000
    forget_after_ms: int = 7 * 24 * 3600 * 1000
    records: dict[str, Known] = field(default_factory=dict)  # by node key text
    checkpoints: dict[str, SeenCheckpoint] = field(default_factory=dict)  # by node key text
    evidence: dict[str, Equivocation] = field(default_factory=dict)  # by evidence id
    suspended: set[PublicKey] = field(default_factory=set)  # offenders we hold evidence on

    # --- freshness -----------------------------------------------------------------------

    def is_stale(self, record: NodeRecord, now: int) -> bool:
        return now - record.issued > self.stale_after_ms

    def forget(self, now: int) -> list[str]:
        """Drop records (and their checkpoints) unheard-of for ``forget_after``; never our own."""
        gone = [k for k, known in self.records.items()
                if now - known.record.issued > self.forget_after_ms and known.record.key != self.me]
        for k in gone:
            del self.records[k]
            self.checkpoints.pop(k, None)
        return gone

    # --- merging -------------------------------------------------------------------------

    def add_record(self, signed: Signed, now: int) -> Outcome:
        """Merge one signed record (already parsed); ``GossipError`` if refused."""
        record = signed.msg
        if not isinstance(record, NodeRecord):
            raise GossipError(ResultCode.invalid_field, "not a node record")
        key = record.key.text
        held = self.records.get(key)
        # What we hold already, or older, is answered before any signature is checked: the
        # common case costs a comparison, and a forgery of an old record changes nothing.
        if held is not None:
            if record.counter < held.record.counter:
                raise GossipError(ResultCode.stale_record,
                                  f"counter {record.counter} is older than the "
                                  f"{held.record.counter} we hold for that node")
            if record.counter == held.record.counter and (
                    signed.signed_bytes == held.signed.signed_bytes):
                return Outcome.duplicate
        record = verify_record(signed, now)
        if held is not None and record.counter == held.record.counter:
            raise GossipError(ResultCode.record_conflict,
                              "that node signed another record with the same counter")
        self.records[key] = Known(signed, record, now)
        return Outcome.new if held is None else Outcome.updated

    def add_checkpoint(self, key: str, note: bytes) -> tuple[Outcome, Equivocation | None]:
        known = self.records.get(key)
        if known is None:
            raise GossipError(ResultCode.unknown_peer,
                              "a checkpoint of a node whose record we do not hold")
        checkpoint = open_checkpoint(known.record, note)
        held = self.checkpoints.get(key)
        if held is None or checkpoint.size > held.checkpoint.size:
            self.checkpoints[key] = SeenCheckpoint(note, checkpoint)
            return Outcome.updated, None
        if checkpoint.size == held.checkpoint.size and checkpoint.root != held.checkpoint.root:
            ev = same_size_evidence(known.record.log_vkey, *sorted((held.note, note)))
            return (Outcome.evidence, ev) if self.add_evidence(ev) else (Outcome.duplicate, None)
        return Outcome.duplicate, None

    def add_evidence(self, ev: Equivocation) -> bool:
        """Keep verified evidence; True if it was new. Its offender is suspended."""
        if ev.id in self.evidence:
            return False
        self.evidence[ev.id] = ev
        self.suspended.add(ev.offender)
        return True

    def merge(self, update: Update, now: int) -> Merged:
        """Merge every item of an update; each is refused or taken on its own."""
        out = Merged()
        for obj in update.records:
            try:
                signed, _ = parse_record(obj, now)
                outcome = self.add_record(signed, now)
            except GossipError as exc:
                out.refused.append(exc)
                continue
            out.outcomes.append(outcome)
            if outcome in (Outcome.new, Outcome.updated):
                assert isinstance(signed.msg, NodeRecord)
                out.changed_records.append(signed.msg.key)
        for obj in update.evidence:
            try:
                ev = parse_evidence(obj)
            except EvidenceError as exc:
                out.refused.append(GossipError(ResultCode.bad_evidence, str(exc)))
                continue
            if self.add_evidence(ev):
                out.outcomes.append(Outcome.evidence)
                out.evidence.append(ev)
            else:
                out.outcomes.append(Outcome.duplicate)
        for key, note in update.checkpoints:
            try:
                outcome, found = self.add_checkpoint(key, note.encode("utf-8"))
            except GossipError as exc:
                out.refused.append(exc)
                continue
            out.outcomes.append(outcome)
            if found is not None:
                out.evidence.append(found)
        return out

    # --- what to send --------------------------------------------------------------------

    def digest(self) -> Digest:
        return Digest({k: v.record.counter for k, v in self.records.items()},
                      {k: (v.checkpoint.size, v.checkpoint.root)
                       for k, v in self.checkpoints.items()},
                      frozenset(self.evidence))

    def newer_than(self, digest: Digest, max_bytes: int, rng: random.Random) -> Update:
        """What we hold that ``digest`` lacks or has older, within about ``max_bytes``.

        Evidence first (it matters most), then records, then checkpoints; within a kind in
        random order, so that a budget too small for everything still makes progress."""
        evidence = [i for i in self.evidence if i not in digest.evidence]
        records = [key for key, k in self.records.items()
                   if digest.records.get(key, -1) < k.record.counter]
        checkpoints = [key for key, c in self.checkpoints.items()
                       if _behind(digest.checkpoints.get(key), c.checkpoint)]
        return self._within(max_bytes, rng, evidence, records, checkpoints)

    def wants(self, digest: Digest) -> Want:
        """What ``digest`` shows its sender holds newer than we do."""
        return Want(
            tuple(k for k, c in digest.records.items()
                  if k not in self.records or self.records[k].record.counter < c),
            tuple(k for k, theirs in digest.checkpoints.items()
                  if (k in self.records or k in digest.records) and (
                      k not in self.checkpoints
                      or _ahead(theirs, self.checkpoints[k].checkpoint))),
            tuple(i for i in digest.evidence if i not in self.evidence),
        )

    def items_for(self, want: Want, max_bytes: int, rng: random.Random) -> Update:
        """The items a peer asked for, that we hold, within about ``max_bytes``."""
        return self._within(max_bytes, rng,
                            [i for i in want.evidence if i in self.evidence],
                            [k for k in want.records if k in self.records],
                            [k for k in want.checkpoints if k in self.checkpoints])

    def _within(self, max_bytes: int, rng: random.Random, evidence: list[str],
                records: list[str], checkpoints: list[str]) -> Update:
        """The items named, as many as fit in about ``max_bytes`` (each kind shuffled)."""
        budget = max_bytes
        chosen: list[list[Any]] = [[], [], []]
        for kind, names in enumerate((evidence, records, checkpoints)):
            rng.shuffle(names)
            for name in names:
                item: Any
                if kind == 0:
                    item = self.evidence[name].to_json()
                    cost = len(canonical_json(item))
                elif kind == 1:
                    item = self.records[name].signed.to_json()
                    cost = len(self.records[name].signed.canonical)
                else:
                    item = (name, self.checkpoints[name].note.decode("utf-8"))
                    cost = len(item[0]) + len(item[1]) + 24
                if cost > budget:
                    continue
                budget -= cost
                chosen[kind].append(item)
        return Update(tuple(chosen[1]), tuple(chosen[2]), tuple(chosen[0]))

    # --- choosing peers and reading the graph -------------------------------------------

    def fresh(self, now: int) -> list[Known]:
        return [k for k in self.records.values() if not self.is_stale(k.record, now)]

    def choose_peers(self, fanout: int, now: int, rng: random.Random) -> list[NodeRecord]:
        """Up to ``fanout`` distinct fresh nodes other than us, with no evidence against them,
        uniformly at random (sorted first, so that a seeded ``rng`` replays exactly)."""
        candidates = sorted(
            (k.record for k in self.fresh(now)
             if k.record.key != self.me and k.record.key not in self.suspended),
            key=lambda r: r.key.raw)
        return rng.sample(candidates, min(fanout, len(candidates)))

    def edges(self, now: int) -> list[Edge]:
        """Credit lines both of whose sides' fresh records name them, with the same parties
        and rate. Each side's limit is taken from its own record; the edge is active only if
        both say so and neither side is suspended for equivocation."""
        stated: dict[str, dict[PublicKey, LineEntry]] = {}
        for known in self.fresh(now):
            for entry in known.record.lines:
                stated.setdefault(entry.id, {})[known.record.key] = entry
        edges = []
        for line_id, by_node in sorted(stated.items()):
            if len(by_node) != 2:
                continue
            (_, first), (_, second) = by_node.items()
            if (first.a, first.b, first.rate_num, first.rate_den) != (
                    second.a, second.b, second.rate_num, second.rate_den):
                continue
            if set(by_node) != {first.a, first.b}:
                continue
            ea, eb = by_node[first.a], by_node[first.b]
            active = (ea.status == eb.status == "active"
                      and not {first.a, first.b} & self.suspended)
            edges.append(Edge(line_id, first.a, first.b, first.rate_num, first.rate_den,
                              ea.a_limit, eb.b_limit, min(ea.version, eb.version), active))
        return edges

