"""Tile paths, tile sets, tile contents, tile authentication and entry bundles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.merkle import (
    MerkleTree,
    append_hashes,
    append_indexes,
    inclusion_proof,
    inclusion_proof_indexes,
    leaf_hash,
    stored_hash_index,
    tree_hash,
    tree_hash_indexes,
    verify_inclusion,
)
from crypto.tiles import (
    ENTRIES,
    MAX_ENTRY_SIZE,
    Tile,
    TileError,
    bundle_tile_data,
    decode_entry_bundle,
    encode_entry_bundle,
    hashes_from_tiles,
    new_tiles,
    parse_tile_path,
    split_tile_data,
    tile_data,
    tile_for_stored_hash,
    tile_hash_indexes,
    tile_path,
    tiles_for_hashes,
    tiles_for_size,
)

SPEC: dict[str, Any] = json.loads(
    (Path(__file__).parent.parent / "vectors" / "c2sp-tlog-tiles.json").read_text()
)

# The spec's 70,000-entry example, big enough for a full level-1 tile.
SIZE = 70_000
ENTRY_LIST = [b"tile entry %d" % i for i in range(SIZE)]
HASHES: list[bytes] = []
for _n, _e in enumerate(ENTRY_LIST):
    HASHES += append_hashes(_n, leaf_hash(_e), [HASHES[i] for i in append_indexes(_n)])


def read(indexes: list[int]) -> list[bytes]:
    return [HASHES[i] for i in indexes]


def root(n: int) -> bytes:
    return tree_hash(n, read(tree_hash_indexes(n)))


def serve(tile: Tile) -> bytes:
    """What the log would serve for a hash tile."""
    return tile_data(tile, read(tile_hash_indexes(tile)))


# ---------------------------------------------------------------------------
# Paths


def test_spec_paths() -> None:
    for v in SPEC["paths"]:
        tile = Tile(v["level"], v["index"], v["width"])
        assert tile_path(tile) == v["path"]
        assert parse_tile_path(v["path"]) == tile
    for v in SPEC["index_encoding"]:
        assert tile_path(Tile(0, v["index"])) == "tile/0/" + v["elements"]


@pytest.mark.parametrize("path", SPEC["bad_paths_derived"])
def test_bad_paths(path: str) -> None:
    with pytest.raises(TileError):
        parse_tile_path(path)


def test_path_details() -> None:
    assert tile_path(Tile(0, 0)) == "tile/0/000"
    assert tile_path(Tile(3, 999)) == "tile/3/999"
    assert tile_path(Tile(3, 1000)) == "tile/3/x001/000"
    assert tile_path(Tile(ENTRIES, 5, 3)) == "tile/entries/005.p/3"
    assert tile_path(Tile(1, 2**63 - 1)) == "tile/1/x009/x223/x372/x036/x854/x775/807"
    with pytest.raises(TileError):
        parse_tile_path("tile/1/x009/x223/x372/x036/x854/x775/808")  # 2^63
    with pytest.raises(TileError):
        Tile(0, 0, 0)
    with pytest.raises(TileError):
        Tile(64, 0)


tiles = st.builds(Tile, st.integers(ENTRIES, 63), st.integers(0, 2**63 - 1), st.integers(1, 256))


@given(tiles)
def test_path_round_trip(tile: Tile) -> None:
    assert parse_tile_path(tile_path(tile)) == tile


@settings(max_examples=300)
@given(st.text(alphabet="tile/entrsxp.0123456789", max_size=40))
def test_parse_is_strict_or_canonical(path: str) -> None:
    try:
        tile = parse_tile_path(path)
    except TileError:
        return
    assert tile_path(tile) == path


# ---------------------------------------------------------------------------
# Which tiles exist


def _summary(size: int) -> list[dict[str, int]]:
    by_level: dict[int, dict[str, int]] = {}
    for t in tiles_for_size(size):
        d = by_level.setdefault(t.level, {"level": t.level, "full": 0, "partial_width": 0})
        if t.is_partial:
            d["partial_width"] = t.width
        else:
            d["full"] += 1
    return [by_level[k] for k in sorted(by_level)]


def test_spec_tile_sets() -> None:
    for v in SPEC["sizes"]:
        assert _summary(v["size"]) == v["tiles"]
    assert tiles_for_size(0) == []
    with_entries = tiles_for_size(300, entries=True)
    assert Tile(ENTRIES, 0) in with_entries and Tile(ENTRIES, 1, 44) in with_entries


@given(st.lists(st.integers(0, 3 * 65536), min_size=1, max_size=4))
def test_new_tiles_accumulate_to_tiles_for_size(sizes: list[int]) -> None:
    sizes = sorted(sizes)
    published: set[Tile] = set()
    prev = 0
    for s in sizes:
        new = new_tiles(prev, s)
        assert not set(new) & set(tiles_for_size(prev)) or prev == s and not new
        assert set(new) <= set(tiles_for_size(s))
        published |= set(new)
        prev = s
    assert set(tiles_for_size(sizes[-1])) <= published
    # Every tile published at some point is either current or superseded by a
    # full tile: partial tiles only ever grow.
    current = set(tiles_for_size(sizes[-1]))
    for t in published - current:
        assert (
            t.is_partial
            and Tile(t.level, t.index) in current
            or any(c.level == t.level and c.index == t.index and c.width > t.width for c in current)
        )


def test_new_tiles_rejects_shrinking() -> None:
    with pytest.raises(TileError):
        new_tiles(10, 9)


# ---------------------------------------------------------------------------
# Tile contents


def test_level0_tile_is_leaf_hashes() -> None:
    t = Tile(0, 3)
    assert serve(t) == b"".join(leaf_hash(e) for e in ENTRY_LIST[768:1024])
    assert serve(Tile(0, 273, 112)) == bundle_tile_data(ENTRY_LIST[273 * 256 : SIZE])


def test_level1_tile_hashes_are_full_level0_tiles() -> None:
    ref = MerkleTree([leaf_hash(e) for e in ENTRY_LIST[: 65536 + 4 * 256]])
    level1 = split_tile_data(Tile(1, 0), serve(Tile(1, 0)))
    for k in (0, 1, 200, 255):
        assert level1[k] == ref.mth(k * 256, (k + 1) * 256)
    partial = split_tile_data(Tile(1, 1, 17), serve(Tile(1, 1, 17)))
    assert partial[3] == ref.mth(65536 + 3 * 256, 65536 + 4 * 256)
    level2 = split_tile_data(Tile(2, 0, 1), serve(Tile(2, 0, 1)))
    assert level2[0] == ref.mth(0, 65536)


def test_tile_data_checks_shape() -> None:
    with pytest.raises(TileError):
        tile_data(Tile(0, 0, 2), [b"\x00" * 32])
    with pytest.raises(TileError):
        tile_data(Tile(0, 0, 1), [b"\x00" * 31])
    with pytest.raises(TileError):
        split_tile_data(Tile(0, 0, 2), b"\x00" * 63)
    with pytest.raises(TileError):
        tile_hash_indexes(Tile(ENTRIES, 0))


def test_tile_for_stored_hash() -> None:
    assert tile_for_stored_hash(SIZE, stored_hash_index(0, 5)) == Tile(0, 0)
    assert tile_for_stored_hash(SIZE, stored_hash_index(0, 69_999)) == Tile(0, 273, 112)
    assert tile_for_stored_hash(SIZE, stored_hash_index(3, 40)) == Tile(0, 1)
    assert tile_for_stored_hash(SIZE, stored_hash_index(8, 271)) == Tile(1, 1, 17)
    assert tile_for_stored_hash(SIZE, stored_hash_index(16, 0)) == Tile(2, 0, 1)
    with pytest.raises(TileError):
        tile_for_stored_hash(SIZE, stored_hash_index(0, SIZE))
    with pytest.raises(TileError):
        tile_for_stored_hash(SIZE, stored_hash_index(4, SIZE // 16))


# ---------------------------------------------------------------------------
# A client reading proofs out of tiles


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_inclusion_proof_from_tiles(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, SIZE))
    i = data.draw(st.integers(0, n - 1))
    r = root(n)
    indexes = inclusion_proof_indexes(i, n)
    fetched = {t: serve(t) for t in tiles_for_hashes(n, indexes)}
    proof = inclusion_proof(i, n, hashes_from_tiles(n, r, indexes, fetched))
    assert verify_inclusion(i, n, leaf_hash(ENTRY_LIST[i]), proof, r)

    # Any corrupted tile is caught, whether it is on the right edge (checked
    # against the root) or full (checked against its parent).
    victim = data.draw(st.sampled_from(sorted(fetched)))
    byte = data.draw(st.integers(0, len(fetched[victim]) - 1))
    bad = dict(fetched)
    bad[victim] = bytes(b ^ (k == byte) for k, b in enumerate(fetched[victim]))
    with pytest.raises(TileError):
        hashes_from_tiles(n, r, indexes, bad)
    missing = dict(fetched)
    del missing[victim]
    with pytest.raises(TileError):
        hashes_from_tiles(n, r, indexes, missing)
    with pytest.raises(TileError):
        hashes_from_tiles(n, leaf_hash(b"not the root"), indexes, fetched)


def test_tiles_for_hashes_includes_parent_chain() -> None:
    # A leaf in a full level-0 tile needs its level-1 parent and the level-2 root tile.
    needed = tiles_for_hashes(SIZE, [stored_hash_index(0, 10)])
    assert Tile(0, 0) in needed and Tile(1, 0) in needed and Tile(2, 0, 1) in needed
    assert tiles_for_hashes(0, []) == []


# ---------------------------------------------------------------------------
# Entry bundles


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=256))
def test_bundle_round_trip(entries: list[bytes]) -> None:
    data = encode_entry_bundle(entries)
    assert decode_entry_bundle(data) == entries
    assert decode_entry_bundle(data, len(entries)) == entries
    assert len(data) == sum(2 + len(e) for e in entries)


def test_bundle_layout_and_limits() -> None:
    assert encode_entry_bundle([b"ab", b""]) == b"\x00\x02ab\x00\x00"
    big = b"x" * MAX_ENTRY_SIZE
    assert decode_entry_bundle(encode_entry_bundle([big])) == [big]
    with pytest.raises(TileError):
        encode_entry_bundle([big + b"x"])
    with pytest.raises(TileError):
        encode_entry_bundle([])
    with pytest.raises(TileError):
        encode_entry_bundle([b""] * 257)
    for bad in [b"", b"\x00", b"\x00\x03ab", b"\x00\x00" * 257]:
        with pytest.raises(TileError):
            decode_entry_bundle(bad)
    with pytest.raises(TileError):
        decode_entry_bundle(b"\x00\x00", width=2)


def test_bundle_matches_level0_tile() -> None:
    entries = ENTRY_LIST[512:768]
    assert bundle_tile_data(decode_entry_bundle(encode_entry_bundle(entries))) == serve(Tile(0, 2))
