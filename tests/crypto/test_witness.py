"""The C2SP tlog-witness add-checkpoint body: the spec's example, round trips, and refusals."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crypto.witness import (
    MAX_PROOF_LINES,
    WitnessFormatError,
    format_add_checkpoint,
    format_size,
    parse_add_checkpoint,
    parse_size,
)

# The example request body of c2sp.org/tlog-witness (signature lines as given there).
SPEC_EXAMPLE = b"""old 20852014
PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=
jrJZDmY8Y7SyJE0MWLpLozkIVMSMZcD5kvuKxPC3swk=
5+pKlUdi2LeF/BcMHBn+Ku6yhPGNCswZZD1X/6QgPd8=
/6WVhPs2CwSsb5rYBH5cjHV/wSmA79abXAwhXw3Kj/0=

example.com/behind-the-sofa
20852163
CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=

""" + (
    "\u2014 example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URY"
    "N7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n").encode()

NOTE = SPEC_EXAMPLE.split(b"\n\n", 1)[1]


def test_the_specs_example_request_parses() -> None:
    req = parse_add_checkpoint(SPEC_EXAMPLE)
    assert req.old_size == 20852014
    assert len(req.proof) == 4
    assert req.proof[0] == base64.b64decode("PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=")
    assert req.note.startswith(b"example.com/behind-the-sofa\n20852163\n")
    assert format_add_checkpoint(req.old_size, req.proof, req.note) == SPEC_EXAMPLE


@given(st.integers(0, 2**63 - 1), st.lists(st.binary(min_size=32, max_size=32), max_size=63))
def test_format_then_parse_gives_back_the_request(old: int, proof: list[bytes]) -> None:
    req = parse_add_checkpoint(format_add_checkpoint(old, proof, NOTE))
    assert (req.old_size, list(req.proof), req.note) == (old, proof, NOTE)


@pytest.mark.parametrize("body, words", [
    (b"old 5\nexample.com/behind-the-sofa\n", "blank line"),
    (b"old 5\n" + NOTE, "not base64"),  # no blank line before the checkpoint
    (b"old 05\n\n" + NOTE, "leading zeroes"),
    (b"old -1\n\n" + NOTE, "decimal"),
    (b"old 9223372036854775808\n\n" + NOTE, "decimal"),
    (b"new 5\n\n" + NOTE, '"old <size>"'),
    (b"old 5\nAAAA\n\n" + NOTE, "one base64 SHA-256 hash"),
    (b"old 5\n" + base64.b64encode(bytes(32)) + b"x\n\n" + NOTE, "not base64"),
    (b"old 5\n" + b"".join([base64.b64encode(bytes(32)) + b"\n"] * (MAX_PROOF_LINES + 1))
     + b"\n" + NOTE, "at most 63"),
    (b"old 5\n\n", "checkpoint is missing"),
    (b"old 5\xff\n\n" + NOTE, "ASCII"),
])
def test_malformed_bodies_are_refused_saying_what_is_wrong(body: bytes, words: str) -> None:
    with pytest.raises(WitnessFormatError, match=words):
        parse_add_checkpoint(body)


def test_the_409_size_body_round_trips_and_must_end_in_a_newline() -> None:
    assert format_size(20852163) == b"20852163\n"
    assert parse_size(b"20852163\n") == 20852163
    for bad in (b"12", b"012\n", b"x\n", b"\xff\n"):
        with pytest.raises(WitnessFormatError):
            parse_size(bad)
