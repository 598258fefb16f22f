"""``tally audit``: check a whole log from outside, trusting nothing the node says.

Layer: node (client side). Reads the log as C2SP tlog-tiles, from a node (``--node URL``)
or from a directory saved earlier (``--dir DIR``, written by ``--save DIR``), and:

1. verifies the checkpoint's signature with the log key (pinned with ``--vkey``, else the
   one the node serves — said so in the report);
2. hashes every entry into the RFC 6962 tree and checks the root equals the signed one,
   and that every hash tile the log serves equals the tree computed here;
3. replays every entry from empty with the ledger rules the node itself uses
   (``protocol.ledger.apply``, signatures included) and checks the invariants: every entry
   applies, no event id twice, node times never go back, balances sum to zero, each balance
   is the sum of its transfers, every balance stays within its limits;
4. with a member's key (``--home``), compares every recomputed balance with what the node
   serves at ``/v1/accounts``.

Memory grows with the log (about 150 bytes per entry for the stored hashes); a million
entries fit easily. Progress goes to stderr.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crypto import merkle
from crypto.canonical import CanonicalError, parse_json
from crypto.checkpoint import parse_checkpoint
from crypto.note import NoteError, open_note, parse_verifier_key
from crypto.tiles import (
    TILE_WIDTH,
    Tile,
    TileError,
    decode_entry_bundle,
    tile_data,
    tile_hash_indexes,
    tile_path,
    tiles_for_size,
)
from node.client import TallyClient, TallyError
from protocol.federation import SETTLEMENT_ACCOUNT, LineSettlement
from protocol.ledger import LedgerState, Policy, apply, invariant_violations, new_state
from protocol.lines import settlement_effect
from protocol.messages import MessageError, Transfer, parse_log_entry

Fetch = Callable[[str, bool], Awaitable[bytes]]  # (path under the log, needs a signature)


class AuditFailed(Exception):
    """The log failed a check that makes the rest meaningless (bad signature, bad tree)."""


@dataclass
class AuditReport:
    size: int = 0
    checks: list[tuple[bool, str]] = field(default_factory=list)
    balances: dict[str, int] = field(default_factory=dict)

    def check(self, ok: bool, text: str) -> bool:
        self.checks.append((ok, text))
        return ok

    @property
    def passed(self) -> bool:
        return all(ok for ok, _ in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "entries": self.size,
            "checks": [{"ok": ok, "check": text} for ok, text in self.checks],
            "balances": self.balances,
        }


class Progress:
    """A one-line progress bar on stderr, when stderr is a terminal (or forced)."""

    def __init__(self, label: str, total: int, enabled: bool) -> None:
        self.label, self.total, self.enabled = label, max(total, 1), enabled
        self.last = 0.0

    def update(self, done: int) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.2 and done < self.total):
            return
        self.last = now
        width = 30
        filled = int(width * done / self.total)
        sys.stderr.write(
            f"\r{self.label:10} [{'#' * filled}{'.' * (width - filled)}] {done}/{self.total}"
        )
        if done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def http_source(client: TallyClient) -> Fetch:
    async def fetch(path: str, signed: bool) -> bytes:
        # Without a member key, ask unsigned: a node with a public log serves entries to all.
        return await client.get_bytes("/log/" + path, signed=signed and client.key is not None)

    return fetch


def dir_source(root: Path) -> Fetch:
    async def fetch(path: str, signed: bool) -> bytes:
        file = root / path
        if not file.exists():
            raise AuditFailed(f"{file} is missing from the saved log")
        return file.read_bytes()

    return fetch


def _save(root: Path | None, path: str, data: bytes) -> None:
    if root is not None:
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


async def audit_log(
    fetch: Fetch,
    *,
    vkey: str | None,
    served_accounts: Callable[[], Awaitable[list[dict[str, Any]] | dict[str, Any]]]
    | None = None,
    save: Path | None = None,
    progress: bool = False,
    checkpoint_wait: float = 5.0,
) -> AuditReport:
    """``served_accounts``: what the node serves as its accounts, to compare with the replay.
    A ``{"accounts": [...], "log_size": n}`` answer (``GET /v1/accounts``) is read before the
    checkpoint and compared with the replay at its own log size, so that entries the node
    logged meanwhile (an admission, a payment) are no false difference; a bare list is
    compared with the replay at the checkpoint."""
    report = AuditReport()
    served_doc = await served_accounts() if served_accounts is not None else None
    served_size = served_doc.get("log_size") if isinstance(served_doc, dict) else None

    # 1. The checkpoint and its signature.
    served_vkey = (await fetch("vkey", False)).decode().strip()
    if vkey is None:
        vkey = served_vkey
        report.check(True, f"log key taken from the log (pin it with --vkey {vkey})")
    elif not report.check(vkey == served_vkey, "the log's key is the one you pinned"):
        raise AuditFailed(f"the log's key is {served_vkey}, not the pinned {vkey}")
    try:
        verifier = parse_verifier_key(vkey)
    except NoteError as exc:
        raise AuditFailed(f"{vkey!r} is not a verifier key: {exc}") from exc
    waited = 0.0
    while True:
        note = await fetch("checkpoint", False)
        try:
            checkpoint = parse_checkpoint(open_note(note, [verifier]).text)
        except (NoteError, ValueError) as exc:
            report.check(False, f"checkpoint signature: {exc}")
            raise AuditFailed(f"the checkpoint is not signed by the log key: {exc}") from exc
        # The node signs a checkpoint shortly after each commit: one that does not cover the
        # accounts read above yet soon will.
        if served_size is None or checkpoint.size >= served_size or waited >= checkpoint_wait:
            break
        await asyncio.sleep(0.2)
        waited += 0.2
    size = report.size = checkpoint.size
    report.check(True, f"checkpoint signature verifies: {size} entries")
    _save(save, "vkey", vkey.encode() + b"\n")
    _save(save, "checkpoint", note)

    # 2. Every entry into the tree; the root and every hash tile must match.
    stored: list[bytes] = []
    # 3. runs alongside: every entry replayed as it arrives
    replayer = Replayer(snapshot_at=served_size if served_size is not None
                        and 0 < served_size <= size else None)
    count = 0
    bar = Progress("entries", size, progress)
    for n in range((size + TILE_WIDTH - 1) // TILE_WIDTH):
        width = min(TILE_WIDTH, size - n * TILE_WIDTH)
        path = tile_path(Tile(-1, n, width))
        bundle = await fetch(path, True)
        _save(save, path, bundle)
        try:
            got = decode_entry_bundle(bundle, width)
        except TileError as exc:
            raise AuditFailed(f"entry bundle {path} is malformed: {exc}") from exc
        for entry in got:
            stored += merkle.append_hashes(
                count, merkle.leaf_hash(entry), [stored[k] for k in merkle.append_indexes(count)]
            )
            replayer.feed(count, entry)
            count += 1
        bar.update(count)
    root = merkle.tree_hash(size, [stored[k] for k in merkle.tree_hash_indexes(size)])
    if not report.check(root == checkpoint.root, "the entries hash to the signed root"):
        # The rest would be checking books we know are not the signed ones: say where.
        await _locate_bad_entry(fetch, size, stored, report)
        return report
    tiles = tiles_for_size(size)
    bad_tiles = []
    for tile in tiles:
        data = await fetch(tile_path(tile), False)
        _save(save, tile_path(tile), data)
        if data != tile_data(tile, [stored[k] for k in tile_hash_indexes(tile)]):
            bad_tiles.append(tile_path(tile))
    report.check(not bad_tiles, f"all {len(tiles)} hash tiles match the tree"
                 + (f" (wrong: {', '.join(bad_tiles[:5])})" if bad_tiles else ""))

    # 3. The replay from empty with the node's own rules (done while downloading).
    state = replayer.finish(report)
    if state is not None:
        report.balances = {h: a.balance for h, a in sorted(state.accounts.items())}

    # 4. What the node serves.
    if served_doc is not None and state is not None:
        listed = served_doc["accounts"] if isinstance(served_doc, dict) else served_doc
        served = {a["handle"]: a["balance"] for a in listed}
        replayed, at = report.balances, size
        if served_size is not None and served_size != size:
            if replayer.snapshot is None:
                report.check(True, f"served balances not compared: they are of {served_size} "
                             f"entries, newer than the latest checkpoint ({size}); run again")
                return report
            replayed, at = replayer.snapshot, served_size
        wrong = sorted(h for h in set(served) | set(replayed)
                       if served.get(h) != replayed.get(h))
        report.check(
            not wrong,
            f"every balance the node serves ({len(served)}) equals the replayed one"
            + (f" at entry {at}" if at != size else "")
            + (f" (differ: {', '.join(wrong[:5])})" if wrong else ""),
        )
    elif state is not None:
        report.check(True, "served balances not compared (pass --home with a member key)")
    return report


async def _locate_bad_entry(fetch: Fetch, size: int, stored: list[bytes], report: AuditReport) -> None:
    """Name the first entry whose hash differs from the level-0 hash tile the node serves."""
    for tile in tiles_for_size(size):
        if tile.level != 0:
            continue
        try:
            data = await fetch(tile_path(tile), False)
        except (TallyError, AuditFailed):
            return
        ours = tile_data(tile, [stored[k] for k in tile_hash_indexes(tile)])
        for k in range(tile.width):
            if data[32 * k : 32 * k + 32] != ours[32 * k : 32 * k + 32]:
                index = tile.index * TILE_WIDTH + k
                report.check(False, f"entry {index} does not match the hash the log holds for it")
                return


class Replayer:
    """Replays entries one by one as they arrive, so the auditor never holds the whole log."""

    def __init__(self, snapshot_at: int | None = None) -> None:
        self.snapshot_at = snapshot_at  # the log size at which to keep every balance
        self.snapshot: dict[str, int] | None = None
        self.state: LedgerState | None = None
        self.policy = Policy(max_valid_window_ms=None)
        self.sums: dict[str, int] = {}
        self.refused: list[str] = []
        self.time_back: list[int] = []
        self.last_time = 0
        self.count = 0
        self.genesis_error = ""

    def feed(self, index: int, raw: bytes) -> None:
        self._feed(index, raw)
        if index + 1 == self.snapshot_at and self.state is not None:
            self.snapshot = {h: a.balance for h, a in self.state.accounts.items()}

    def _feed(self, index: int, raw: bytes) -> None:
        self.count += 1
        if index == 0:
            try:
                genesis = parse_log_entry(parse_json(raw))
                self.state = new_state(genesis.payload, raw)
                self.last_time = genesis.node_time
            except (CanonicalError, MessageError, ValueError) as exc:
                self.genesis_error = str(exc)
            return
        if self.state is None:
            return
        try:
            entry = parse_log_entry(parse_json(raw))
        except (CanonicalError, MessageError) as exc:
            self.refused.append(f"{index} (malformed: {exc})")
            return
        if raw != entry.encode():
            self.refused.append(f"{index} (not in canonical form)")
        if entry.node_time < self.last_time:
            self.time_back.append(index)
        self.last_time = max(self.last_time, entry.node_time)
        outcome = apply(self.state, entry.payload, entry.node_time, self.policy)
        if outcome.code.value != "ok":
            self.refused.append(f"{index} ({outcome.code.value})")
            return
        if outcome.index != index:
            self.refused.append(f"{index} (applies at {outcome.index})")
        msg = entry.payload.msg
        if isinstance(msg, Transfer):
            self.sums[msg.payer] = self.sums.get(msg.payer, 0) - msg.amount
            self.sums[msg.payee] = self.sums.get(msg.payee, 0) + msg.amount
        elif isinstance(msg, LineSettlement):
            handle, delta = settlement_effect(self.state, msg)
            self.sums[handle] = self.sums.get(handle, 0) + delta
            self.sums[SETTLEMENT_ACCOUNT] = self.sums.get(SETTLEMENT_ACCOUNT, 0) - delta

    def finish(self, report: AuditReport) -> LedgerState | None:
        state = self.state
        if state is None:
            report.check(False, "entry 0 is not a valid genesis entry"
                         + (f": {self.genesis_error}" if self.genesis_error else ""))
            return None
        report.check(True, f"genesis: {state.genesis.name!r}, ledger {state.ledger_id[:16]}…")
        sums = dict(self.sums)
        # Payments across collectives move balances through holds that were posted.
        for hold in state.holds.values():
            if hold.state == "posted":
                sums[hold.debit] = sums.get(hold.debit, 0) - hold.amount
                sums[hold.credit] = sums.get(hold.credit, 0) + hold.amount
        refused, time_back = self.refused, self.time_back
        report.check(not refused, f"all {self.count - 1} entries after genesis apply under the "
                     "ledger rules (signatures, limits, unique ids)"
                     + (f"; refused: {', '.join(refused[:5])}" if refused else ""))
        report.check(not time_back, "node times never go back"
                     + (f" (entries {time_back[:5]})" if time_back else ""))
        violations = invariant_violations(state)
        total = sum(a.balance for a in state.accounts.values())
        report.check(total == 0, f"balances sum to zero ({total})")
        mismatched = [h for h, a in state.accounts.items() if a.balance != sums.get(h, 0)]
        report.check(not mismatched, "each balance is the sum of its transfers, posted holds "
                     "and settlements"
                     + (f" (not: {', '.join(mismatched[:5])})" if mismatched else ""))
        report.check(not violations, "every balance is within its limits, pending amounts "
                     "match open holds"
                     + (f" ({'; '.join(violations[:3])})" if violations else ""))
        return state


def format_report(report: AuditReport) -> str:
    lines = [f"{'ok ' if ok else 'FAIL'} {text}" for ok, text in report.checks]
    verdict = "AUDIT PASSED" if report.passed else "AUDIT FAILED"
    return "\n".join(lines + [f"{verdict}: {report.size} entries checked"])


def dump_json(report: AuditReport) -> str:
    return json.dumps(report.to_json(), indent=2)

