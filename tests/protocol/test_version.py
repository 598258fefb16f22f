"""How two nodes agree on a node-to-node protocol version (``protocol.version``)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from protocol.version import DEFAULT, SUPPORTED, choose, parse_header


def test_a_request_without_the_header_speaks_version_1() -> None:
    assert parse_header(None) == DEFAULT == 1


def test_the_header_is_a_positive_decimal_version() -> None:
    assert parse_header("1") == 1
    assert parse_header(" 2 ") == 2
    for junk in ("", "0", "01", "-1", "1.0", "v1", "1, 2", "99999999999"):
        assert parse_header(junk) is None, junk


def test_a_node_listing_no_versions_is_spoken_to_in_version_1() -> None:
    assert choose(SUPPORTED, None) == 1
    assert choose((2, 3), None) is None


@given(st.sets(st.integers(1, 20)), st.sets(st.integers(1, 20)))
def test_two_nodes_speak_the_highest_version_both_know(ours: set[int], theirs: set[int]) -> None:
    chosen = choose(ours, theirs)
    if ours & theirs:
        assert chosen == max(ours & theirs)
    else:
        assert chosen is None
