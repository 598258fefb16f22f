"""C2SP tiled transparency log resources (c2sp.org/tlog-tiles), sans I/O.

This module owns tile coordinates and their URL paths, which tiles exist for
a tree size, tile contents computed from stored hashes, authenticating hashes
read out of fetched tiles against a checkpoint root, and entry bundles.

Tiles have height 8: a level-L tile holds up to 256 consecutive stored hashes
of Merkle level 8·L. Entry bundles mirror the level-0 tiles' coordinates and
are represented here as tiles with level ENTRIES (-1).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from crypto.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    MerkleError,
    leaf_hash,
    node_hash,
    split_stored_hash_index,
    stored_hash_index,
    tree_hash,
    tree_hash_indexes,
)

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT
MAX_LEVEL = 63
ENTRIES = -1
# Entries are length-prefixed with a uint16, so each is < 64 KiB.
MAX_ENTRY_SIZE = 0xFFFF
# Tree sizes are int64 everywhere we interoperate; this also bounds path length.
MAX_INDEX = 2**63 - 1

_LEVEL = re.compile(r"0|[1-9][0-9]?", re.ASCII)
_WIDTH = re.compile(r"[1-9][0-9]{0,2}", re.ASCII)
_X_ELEM = re.compile(r"x[0-9]{3}", re.ASCII)
_LAST_ELEM = re.compile(r"[0-9]{3}", re.ASCII)


class TileError(ValueError):
    """A malformed tile path, tile, or entry bundle, or tiles that fail to authenticate."""


@dataclass(frozen=True, order=True)
class Tile:
    """Tile coordinates: level (ENTRIES for an entry bundle), index, width 1..256."""

    level: int
    index: int
    width: int = TILE_WIDTH

    def __post_init__(self) -> None:
        if not ENTRIES <= self.level <= MAX_LEVEL:
            raise TileError(f"tile level {self.level} out of range")
        if not 0 <= self.index <= MAX_INDEX:
            raise TileError(f"tile index {self.index} out of range")
        if not 1 <= self.width <= TILE_WIDTH:
            raise TileError(f"tile width {self.width} out of range")

    @property
    def is_entries(self) -> bool:
        return self.level == ENTRIES

    @property
    def is_partial(self) -> bool:
        return self.width < TILE_WIDTH

    @property
    def path(self) -> str:
        return tile_path(self)


# ---------------------------------------------------------------------------
# Paths


def _encode_index(n: int) -> str:
    digits = str(n)
    digits = "0" * (-len(digits) % 3) + digits
    groups = [digits[i : i + 3] for i in range(0, len(digits), 3)]
    return "/".join(["x" + g for g in groups[:-1]] + [groups[-1]])


def tile_path(tile: Tile) -> str:
    """tile/<L>/<N>[.p/<W>] or tile/entries/<N>[.p/<W>], without the log prefix."""
    level = "entries" if tile.is_entries else str(tile.level)
    path = f"tile/{level}/{_encode_index(tile.index)}"
    if tile.is_partial:
        path += f".p/{tile.width}"
    return path


def parse_tile_path(path: str) -> Tile:
    """Parse a tile or entry bundle path (without the log prefix), strictly.

    Only the canonical spelling is accepted: no leading zeroes in L or W, no
    superfluous x000 groups, W in 1..255, N within int64.
    """
    elems = path.split("/")
    if len(elems) < 3 or elems[0] != "tile":
        raise TileError(f"malformed tile path {path!r}")
    level_s, rest = elems[1], elems[2:]
    if level_s == "entries":
        level = ENTRIES
    elif _LEVEL.fullmatch(level_s) and int(level_s) <= MAX_LEVEL:
        level = int(level_s)
    else:
        raise TileError(f"malformed tile level in {path!r}")
    width = TILE_WIDTH
    if len(rest) >= 2 and rest[-2].endswith(".p"):
        if not _WIDTH.fullmatch(rest[-1]) or int(rest[-1]) >= TILE_WIDTH:
            raise TileError(f"malformed partial tile width in {path!r}")
        width = int(rest[-1])
        rest = rest[:-2] + [rest[-2][: -len(".p")]]
    if len(rest) > 7:  # 2^63 has 19 digits: at most 7 groups
        raise TileError(f"tile index too long in {path!r}")
    if not _LAST_ELEM.fullmatch(rest[-1]) or not all(_X_ELEM.fullmatch(e) for e in rest[:-1]):
        raise TileError(f"malformed tile index in {path!r}")
    index = int("".join(e.lstrip("x") for e in rest))
    if index > MAX_INDEX:
        raise TileError(f"tile index too large in {path!r}")
    tile = Tile(level, index, width)
    # Rejects x000 prefixes and any other non-canonical spelling.
    if tile_path(tile) != path:
        raise TileError(f"non-canonical tile path {path!r}")
    return tile


# ---------------------------------------------------------------------------
# Which tiles a tree has


def new_tiles(old_size: int, new_size: int, *, entries: bool = False) -> list[Tile]:
    """Tiles present at new_size but not (with that width) at old_size.

    These are what a log must publish after growing; with entries=True the
    matching entry bundles are included. Partial tiles from old_size are not
    returned, but the log MAY delete them once the full tile is out.
    """
    if not 0 <= old_size <= new_size <= MAX_INDEX:
        raise TileError(f"invalid tree sizes {old_size} -> {new_size}")
    out: list[Tile] = []
    level = 0
    while new_size >> (TILE_HEIGHT * level):
        new_count = new_size >> (TILE_HEIGHT * level)  # hashes at level 8L
        old_count = old_size >> (TILE_HEIGHT * level)
        levels = [level, ENTRIES] if entries and level == 0 else [level]
        for n in range(old_count // TILE_WIDTH, new_count // TILE_WIDTH):
            out.extend(Tile(lv, n) for lv in levels)
        w = new_count % TILE_WIDTH
        if w and new_count != old_count:
            out.extend(Tile(lv, new_count // TILE_WIDTH, w) for lv in levels)
        level += 1
    return out


def tiles_for_size(size: int, *, entries: bool = False) -> list[Tile]:
    """Every tile (and optionally entry bundle) of a tree of this size.

    E.g. 70,000 gives 273 full + 1 partial (112) level-0 tiles, 1 full +
    1 partial (17) level-1 tiles and 1 partial (1) level-2 tile.
    """
    return new_tiles(0, size, entries=entries)


# ---------------------------------------------------------------------------
# Tile contents from stored hashes (the log side)


def tile_hash_indexes(tile: Tile) -> list[int]:
    """Stored hashes making up a hash tile: level 8·L, indexes 256·N .. 256·N+W-1."""
    if tile.is_entries:
        raise TileError("entry bundles are not made of stored hashes")
    level = TILE_HEIGHT * tile.level
    first = tile.index * TILE_WIDTH
    return [stored_hash_index(level, first + i) for i in range(tile.width)]


def tile_data(tile: Tile, hashes: Sequence[bytes]) -> bytes:
    """The tile's bytes: the hashes from tile_hash_indexes(tile), concatenated."""
    if tile.is_entries:
        raise TileError("entry bundles are not made of stored hashes")
    if len(hashes) != tile.width or any(len(h) != HASH_SIZE for h in hashes):
        raise TileError(f"need {tile.width} hashes of {HASH_SIZE} bytes")
    return b"".join(hashes)


def split_tile_data(tile: Tile, data: bytes) -> list[bytes]:
    """Check a hash tile's length and cut it into its hashes."""
    if tile.is_entries:
        raise TileError("entry bundles are not made of stored hashes")
    if len(data) != tile.width * HASH_SIZE:
        raise TileError(f"tile {tile_path(tile)} must be {tile.width * HASH_SIZE} bytes")
    return [data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)]


# ---------------------------------------------------------------------------
# Reading stored hashes out of fetched tiles (the client side)


def _reduce(hashes: Sequence[bytes]) -> bytes:
    # Hash of a complete subtree whose 2^k leaves are `hashes`.
    level = list(hashes)
    while len(level) > 1:
        level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def _width_at(level: int, index: int, size: int) -> int:
    count = size >> (TILE_HEIGHT * level)
    return TILE_WIDTH if index < count // TILE_WIDTH else count % TILE_WIDTH


def tile_for_stored_hash(size: int, index: int) -> Tile:
    """The tile of a tree of this size from which stored hash `index` is computed.

    Hashes whose level is not a multiple of 8 are not in any tile verbatim;
    they are recomputed from 2^(level mod 8) hashes of one tile.
    """
    try:
        level, n = split_stored_hash_index(index)
    except MerkleError as e:
        raise TileError(str(e)) from e
    if (n + 1) << level > size:
        raise TileError(f"stored hash {index} is not in a tree of size {size}")
    tile_level, sub = divmod(level, TILE_HEIGHT)
    tile_index = (n << sub) // TILE_WIDTH
    return Tile(tile_level, tile_index, _width_at(tile_level, tile_index, size))


def _parent(tile: Tile, size: int) -> Tile:
    level, index = tile.level + 1, tile.index // TILE_WIDTH
    return Tile(level, index, _width_at(level, index, size))


def tiles_for_hashes(size: int, indexes: Iterable[int]) -> list[Tile]:
    """Tiles to fetch so hashes_from_tiles can authenticate and read `indexes`.

    That is the tiles holding them, the partial tiles that make up the root,
    and the chain of parents above every full tile, which is how a full tile
    is tied to the root.
    """
    want = {tile_for_stored_hash(size, i) for i in indexes}
    want |= {tile_for_stored_hash(size, i) for i in tree_hash_indexes(size)}
    todo = [t for t in want if not t.is_partial]
    while todo:
        parent = _parent(todo.pop(), size)
        if parent not in want:
            want.add(parent)
            if not parent.is_partial:
                todo.append(parent)
    return sorted(want)


def _read(tiles: Mapping[Tile, list[bytes]], size: int, index: int) -> bytes:
    tile = tile_for_stored_hash(size, index)
    level, n = split_stored_hash_index(index)
    sub = level - TILE_HEIGHT * tile.level
    start = (n << sub) - tile.index * TILE_WIDTH
    return _reduce(tiles[tile][start : start + (1 << sub)])


def hashes_from_tiles(
    size: int, root: bytes, indexes: Sequence[int], tiles: Mapping[Tile, bytes]
) -> list[bytes]:
    """Read stored hashes out of fetched tiles, after authenticating the tiles.

    `tiles` must hold at least tiles_for_hashes(size, indexes). The partial
    tiles are checked by recomputing `root` (every hash in them is used), and
    each full tile by hashing it and comparing with its entry in the parent
    tile, top-down. Raises TileError if anything is missing or fails.
    """
    needed = tiles_for_hashes(size, indexes)
    parsed: dict[Tile, list[bytes]] = {}
    for t in needed:
        if t not in tiles:
            raise TileError(f"missing tile {tile_path(t)}")
        parsed[t] = split_tile_data(t, tiles[t])
    if size == 0:
        computed = EMPTY_ROOT
    else:
        computed = tree_hash(size, [_read(parsed, size, i) for i in tree_hash_indexes(size)])
    if computed != root:
        raise TileError("tiles do not hash to the checkpoint root")
    for t in sorted((t for t in needed if not t.is_partial), key=lambda t: -t.level):
        parent = _parent(t, size)
        if _reduce(parsed[t]) != parsed[parent][t.index % TILE_WIDTH]:
            raise TileError(f"tile {tile_path(t)} does not match its parent")
    return [_read(parsed, size, i) for i in indexes]


# ---------------------------------------------------------------------------
# Entry bundles


def encode_entry_bundle(entries: Sequence[bytes]) -> bytes:
    """Concatenate entries, each prefixed by its big-endian uint16 length."""
    if not 1 <= len(entries) <= TILE_WIDTH:
        raise TileError("an entry bundle holds 1 to 256 entries")
    out = bytearray()
    for e in entries:
        if len(e) > MAX_ENTRY_SIZE:
            raise TileError("entries must be shorter than 64 KiB")
        out += len(e).to_bytes(2, "big") + e
    return bytes(out)


def decode_entry_bundle(data: bytes, width: int | None = None) -> list[bytes]:
    """Split an entry bundle; with `width`, it must hold exactly that many entries."""
    entries: list[bytes] = []
    pos = 0
    while pos < len(data):
        if len(entries) == TILE_WIDTH:
            raise TileError("entry bundle has more than 256 entries")
        if pos + 2 > len(data):
            raise TileError("truncated entry length")
        length = int.from_bytes(data[pos : pos + 2], "big")
        pos += 2
        if pos + length > len(data):
            raise TileError("truncated entry")
        entries.append(data[pos : pos + length])
        pos += length
    if not entries:
        raise TileError("empty entry bundle")
    if width is not None and len(entries) != width:
        raise TileError(f"entry bundle has {len(entries)} entries, want {width}")
    return entries


def bundle_tile_data(entries: Sequence[bytes]) -> bytes:
    """The level-0 tile an entry bundle must hash to (compare with the fetched tile)."""
    return b"".join(leaf_hash(e) for e in entries)
