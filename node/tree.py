"""The Merkle tree over the log, kept in the database as RFC 6962 stored hashes.

Layer: node. Bridges the pure two-phase functions of ``crypto.merkle`` to SQLite: it keeps in
memory only the tree's right edge (``crypto.merkle.frontier_indexes``), so appending an entry
costs O(log n) and never rehashes the tree; reads fetch exactly the stored hashes a root,
proof or tile needs.
"""

from __future__ import annotations

import hashlib

import aiosqlite

from crypto import merkle


class TreeAppender:
    """Appends leaves inside the writer's transaction; ``committed`` after COMMIT."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db
        self.edge: dict[int, bytes] = {}
        self.size = 0
        self._pending: tuple[dict[int, bytes], int] | None = None

    async def load(self, size: int) -> None:
        """Read the right edge for a tree of ``size`` leaves (after start or a failed batch)."""
        indexes = merkle.frontier_indexes(size)
        self.edge = dict(zip(indexes, await read_hashes(self.db, indexes)))
        self.size = size
        self._pending = None

    async def append(self, entries: list[bytes], first_index: int) -> None:
        if first_index != self.size:
            raise RuntimeError(f"tree has {self.size} leaves, asked to append at {first_index}")
        rows: list[tuple[int, bytes]] = []
        # The right edge as a stack, largest subtree first (``frontier_indexes`` order). Leaf
        # n completes one subtree per trailing one bit of n, whose left siblings are the top
        # of the stack (``append_indexes(n)``, smallest first); ``append_hashes``' hashes go
        # at consecutive indexes from ``stored_hash_count(n)``. Computed inline: this runs for
        # every entry, and the pure functions' argument checks cost more than the hashing.
        stack = [(i, self.edge[i]) for i in merkle.frontier_indexes(first_index)]
        sha256 = hashlib.sha256
        n = first_index
        for entry in entries:
            index = 2 * n - n.bit_count()
            h = sha256(b"\x00" + entry).digest()
            rows.append((index, h))
            m = n
            while m & 1:
                index += 1
                h = sha256(b"\x01" + stack.pop()[1] + h).digest()
                rows.append((index, h))
                m >>= 1
            stack.append((index, h))
            n += 1
        await self.db.executemany("INSERT INTO tree_hashes (idx, hash) VALUES (?, ?)", rows)
        self._pending = (dict(stack), n)

    def committed(self) -> None:
        if self._pending is not None:
            self.edge, self.size = self._pending
            self._pending = None


async def read_hashes(db: aiosqlite.Connection, indexes: list[int]) -> list[bytes]:
    """The stored hashes at ``indexes``, in that order; raises if any is missing."""
    if not indexes:
        return []
    found: dict[int, bytes] = {}
    unique = sorted(set(indexes))
    for start in range(0, len(unique), 500):
        chunk = unique[start : start + 500]
        marks = ",".join("?" * len(chunk))
        async with db.execute(
            f"SELECT idx, hash FROM tree_hashes WHERE idx IN ({marks})", chunk
        ) as cur:
            async for row in cur:
                found[int(row[0])] = bytes(row[1])
    missing = [i for i in unique if i not in found]
    if missing:
        raise LookupError(f"stored hashes missing from the database: {missing[:5]}")
    return [found[i] for i in indexes]
