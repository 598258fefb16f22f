"""Signed checkpoints of the log: made promptly, stored before served, never contradicting.

Layer: node. Owns the node's signing of C2SP tlog-checkpoints (as C2SP signed notes with the
node key) and the guard against signing a fork.

Theory of operation
-------------------
After each commit the writer reports the new log size. The ``Checkpointer`` task waits half
the configured delay (so a busy node signs at most about two checkpoints per delay, however
many entries arrive), computes the root from the stored hashes, signs, stores the note in
the database through the writer, then records it in ``<data>/checkpoint.last`` (written
atomically and fsynced), and only then serves it. Every entry is thus covered by a served
checkpoint within about the delay of being appended.

``checkpoint.last`` lives outside the database on purpose: if an operator restores an old
copy of the database, the log there is shorter than (or differs from) the last checkpoint
this node published, and signing a new one would be a fork that peers can prove. At start,
the node compares its log with that file and refuses to sign until an operator resolves it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from crypto import merkle
from crypto.checkpoint import Checkpoint, format_checkpoint, parse_checkpoint
from crypto.keys import SecretKey
from crypto.note import Ed25519Signer, open_note, sign_note
from node.tree import read_hashes

log = logging.getLogger(__name__)

LAST_FILE = "checkpoint.last"


StoreCheckpoint = Callable[[int, bytes], Awaitable[None]]


class ForkRefused(RuntimeError):
    """The log does not extend the last checkpoint this node signed; signing would fork."""


@dataclass(frozen=True)
class SignedCheckpoint:
    checkpoint: Checkpoint
    note: bytes  # the signed note, as served at /log/checkpoint


def log_origin(ledger_id: str) -> str:
    """The checkpoint origin (and note key name): stable for the life of the ledger."""
    return f"tally/{ledger_id}"


def log_signer(ledger_id: str, node_key: SecretKey) -> Ed25519Signer:
    return Ed25519Signer(log_origin(ledger_id), node_key.seed)


async def root_at(db: aiosqlite.Connection, size: int) -> bytes:
    return merkle.tree_hash(size, await read_hashes(db, merkle.tree_hash_indexes(size)))


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


async def check_not_forked(
    db: aiosqlite.Connection, data_dir: Path, signer: Ed25519Signer, log_size: int
) -> SignedCheckpoint | None:
    """The last checkpoint this node published, after checking the log still extends it.

    That is the larger of ``checkpoint.last`` and the newest in the database (the file may
    lag by one if the node was killed between storing a checkpoint and writing the file).
    """
    path = data_dir / LAST_FILE
    candidates: list[bytes] = []
    if path.exists():
        candidates.append(path.read_bytes())
    async with db.execute("SELECT note FROM checkpoints ORDER BY size DESC LIMIT 1") as cur:
        row = await cur.fetchone()
    if row is not None:
        candidates.append(bytes(row[0]))
    if not candidates:
        return None
    opened = [
        (parse_checkpoint(open_note(c, [signer.verifier()]).text), c) for c in candidates
    ]
    last, note_bytes = max(opened, key=lambda pair: pair[0].size)
    advice = (
        "This happens when an old copy of the database is restored. Restore the newest copy "
        "(backups must be continuous: SQLite online backup or WAL shipping), or, if this "
        f"ledger is truly lost, tell your peers before starting over. Details: {path}"
    )
    if last.size > log_size:
        raise ForkRefused(
            f"the log has {log_size} entries but this node already published a checkpoint "
            f"of {last.size}: refusing to sign a shorter history. {advice}"
        )
    if await root_at(db, last.size) != last.root:
        raise ForkRefused(
            f"the log's first {last.size} entries do not hash to the root this node "
            f"published for them: the history was changed. {advice}"
        )
    return SignedCheckpoint(last, note_bytes)


class Checkpointer:
    def __init__(
        self,
        reader: aiosqlite.Connection,
        data_dir: Path,
        signer: Ed25519Signer,
        store: StoreCheckpoint,
        delay_ms: int,
    ) -> None:
        self.reader = reader
        self.data_dir = data_dir
        self.signer = signer
        self.store = store
        self.delay = delay_ms / 1000
        self.latest: SignedCheckpoint | None = None
        self.committed_size = 0
        self._wake = asyncio.Event()
        self.changed = asyncio.Condition()
        # How the checkpointer waits out its delay: time is passed in, so a test can hold it.
        self.pause: Callable[[float], Awaitable[None]] = asyncio.sleep

    def on_commit(self, size: int) -> None:
        self.committed_size = size
        self._wake.set()

    async def sign(self, size: int) -> SignedCheckpoint:
        root = await root_at(self.reader, size)
        text = format_checkpoint(self.signer.name, size, root)
        note = sign_note(text, [self.signer])
        signed = SignedCheckpoint(parse_checkpoint(text), note)
        await self.store(size, note)  # in the database first, in the same order as the log
        _write_atomically(self.data_dir / LAST_FILE, note)
        self.latest = signed
        async with self.changed:
            self.changed.notify_all()
        return signed

    async def run(self) -> None:
        if self.committed_size and (self.latest is None or self.latest.checkpoint.size < self.committed_size):
            await self.sign(self.committed_size)
        while True:
            await self._wake.wait()
            await self.pause(self.delay / 2)
            self._wake.clear()
            size = self.committed_size
            if self.latest is not None and self.latest.checkpoint.size >= size:
                continue
            try:
                await self.sign(size)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("could not sign a checkpoint of size %d; will retry", size)
                self._wake.set()
                await asyncio.sleep(self.delay)

    async def wait_for(self, size: int, timeout: float) -> SignedCheckpoint | None:
        """The first checkpoint covering ``size`` entries, waiting up to ``timeout`` seconds."""
        async def covered() -> SignedCheckpoint:
            async with self.changed:
                await self.changed.wait_for(
                    lambda: self.latest is not None and self.latest.checkpoint.size >= size
                )
            assert self.latest is not None
            return self.latest

        try:
            return await asyncio.wait_for(covered(), timeout)
        except TimeoutError:
            return None

