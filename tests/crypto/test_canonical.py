"""Canonical JSON against RFC 8785 and an independent implementation; the strict parser's refusals."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.canonical import MAX_SAFE_INTEGER, CanonicalError, canonical_json, parse_json
from tests.strategies import json_strings, json_values

VECTORS = json.loads((Path(__file__).parent.parent / "vectors" / "rfc8785.json").read_text("utf-8"))


# --- agreement with RFC 8785 -------------------------------------------------------------------


@settings(max_examples=150)
@given(json_values)
def test_canonical_json_equals_the_independent_rfc8785_package(value: Any) -> None:
    assert canonical_json(value) == rfc8785.dumps(value)


@given(json_strings)
def test_strings_with_control_characters_and_emoji_agree_with_rfc8785(s: str) -> None:
    assert canonical_json({"s": s, "l": [s, s]}) == rfc8785.dumps({"s": s, "l": [s, s]})


@pytest.mark.parametrize("n", [0, 1, -1, MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER, 10**15, -(10**15)])
def test_integers_at_the_edges_of_the_range_agree_with_rfc8785(n: int) -> None:
    assert canonical_json([n]) == rfc8785.dumps([n]) == f"[{n}]".encode()


@pytest.mark.parametrize("vector", VECTORS["canonical"], ids=lambda v: v["source"][:40])
def test_rfc8785_examples_in_our_subset(vector: dict[str, str]) -> None:
    parsed = parse_json(vector["input"].encode())
    assert canonical_json(parsed) == vector["expected"].encode("utf-8")


@pytest.mark.parametrize("vector", VECTORS["spec_only"], ids=lambda v: v["source"][:40])
def test_rfc8785_examples_outside_our_subset_are_refused_with_their_code(
    vector: dict[str, Any],
) -> None:
    # The oracle first: the independent package gives the RFC's own result for this input,
    # so the vector file is right and the package is a fair judge for the tests above.
    as_doubles = json.loads(vector["input"], parse_int=float)
    expected = vector.get("expected")
    if "expected_utf8_hex" in vector:
        expected = bytes.fromhex(vector["expected_utf8_hex"]).decode("utf-8")
    if expected is None:
        with pytest.raises(rfc8785.CanonicalizationError):
            rfc8785.dumps(as_doubles)
    else:
        assert rfc8785.dumps(as_doubles) == expected.encode("utf-8")

    with pytest.raises(CanonicalError) as err:
        parse_json(vector["input"].encode())
    assert err.value.code == vector["refused_with"]


def test_object_keys_are_sorted_and_nothing_is_added() -> None:
    value = {"b": [1, {"z": None, "a": True}], "a": "x", "": False, "B": -0}
    assert canonical_json(value) == b'{"":false,"B":0,"a":"x","b":[1,{"a":true,"z":null}]}'


# --- round trip ----------------------------------------------------------------------------------


@settings(max_examples=100)
@given(json_values)
def test_parse_of_canonical_form_gives_back_the_value(value: Any) -> None:
    text = canonical_json(value)
    parsed = parse_json(text)
    assert parsed == value
    # == says True == 1; the canonical bytes do not, so compare those too.
    assert canonical_json(parsed) == text


@given(json_values)
def test_parse_accepts_any_spelling_and_canonical_form_is_unique(value: Any) -> None:
    # Whitespace, \u escapes and surrogate-pair escapes for emoji: all one value, one form.
    spelled = json.dumps(value, ensure_ascii=True, indent=2)
    assert canonical_json(parse_json(spelled.encode())) == canonical_json(value)


# --- the strict parser's refusals ---------------------------------------------------------------


def refusal(data: bytes | str) -> str:
    with pytest.raises(CanonicalError) as err:
        parse_json(data)
    return err.value.code


@pytest.mark.parametrize(
    "text",
    ["1.0", "1e3", "1E3", "-0.0", "[1.5]", '{"amount": 2.50}', "0.1e1", "NaN", "Infinity",
     "-Infinity", '{"a": [NaN]}'],
)
def test_floats_nan_and_infinity_are_refused(text: str) -> None:
    assert refusal(text.encode()) == "float_not_allowed"


@pytest.mark.parametrize(
    "text",
    ['{"a": 1, "a": 2}', '{"a": 1, "a": 1}', '{"x": {"id": 1, "id": 1}}', '[{"k": 0, "k": 0}]',
     '{"payer": "alice", "payee": "bob", "payer": "carol"}'],
)
def test_duplicate_keys_are_refused_even_when_nested(text: str) -> None:
    assert refusal(text.encode()) == "duplicate_key"


@pytest.mark.parametrize(
    "text", ["9007199254740992", "-9007199254740992", "[18446744073709551616]", '{"n": 1' + "0" * 20 + "}"]
)
def test_integers_beyond_two_to_the_53_are_refused(text: str) -> None:
    assert refusal(text.encode()) == "integer_out_of_range"


@pytest.mark.parametrize("data", [b"\xef\xbb\xbf{}", "\ufeff{}", b"{} {}", b"{} x", b""])
def test_a_byte_order_mark_or_anything_after_the_value_is_refused(data: bytes | str) -> None:
    with pytest.raises(CanonicalError) as exc:
        parse_json(data)
    assert exc.value.code == "invalid_json"


def test_the_largest_safe_integers_are_accepted() -> None:
    assert parse_json(b"[9007199254740991, -9007199254740991]") == [MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER]


@pytest.mark.parametrize("digits", [5_000, 1_000_000])
def test_huge_digit_strings_are_refused_quickly(digits: int) -> None:
    body = b'{"amount": -' + b"9" * digits + b"}"
    started = time.perf_counter()
    assert refusal(body) == "integer_out_of_range"
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize(
    "data",
    [b'"\xff"', b'{"a": "\xc3"}', b'"\xc0\xaf"', b'"\xed\xa0\x80"', b'\xfe\xff"a"', b"[1, 2"],
    ids=["byte-ff", "truncated", "overlong", "encoded-surrogate", "utf16-bom", "not-json"],
)
def test_invalid_utf8_and_broken_json_are_refused(data: bytes) -> None:
    assert refusal(data) == "invalid_json"


@pytest.mark.parametrize(
    "text", ['"\\ud800"', '"\\udfff"', '["ok", "\\udc00x"]', '{"memo": "\\ude00\\ud83d"}']
)
def test_lone_surrogates_are_refused(text: str) -> None:
    assert refusal(text.encode()) == "invalid_string"


def test_a_surrogate_pair_escape_is_one_emoji() -> None:
    assert parse_json(b'"\\ud83d\\ude00"') == "\U0001f600"


@pytest.mark.parametrize("text", ['{"é": 1}', '{"\\u00e9": 1}', '{"a": {"ключ": 1}}', '{"\\ud800": 1}'])
def test_non_ascii_keys_are_refused(text: str) -> None:
    assert refusal(text.encode()) == "invalid_key"


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (1.0, "float_not_allowed"),
        ({"a": [0.5]}, "float_not_allowed"),
        (MAX_SAFE_INTEGER + 1, "integer_out_of_range"),
        (-MAX_SAFE_INTEGER - 1, "integer_out_of_range"),
        ({"é": 1}, "invalid_key"),
        ({1: "a"}, "invalid_key"),
        ("\ud800", "invalid_string"),
        (b"bytes", "invalid_value"),
        ({"a": {1, 2}}, "invalid_value"),
    ],
)
def test_canonical_json_refuses_values_outside_the_subset(value: Any, code: str) -> None:
    with pytest.raises(CanonicalError) as err:
        canonical_json(value)
    assert err.value.code == code


@given(st.integers(min_value=MAX_SAFE_INTEGER + 1) | st.integers(max_value=-MAX_SAFE_INTEGER - 1))
def test_no_unsafe_integer_is_ever_encoded(n: int) -> None:
    with pytest.raises(CanonicalError) as err:
        canonical_json({"n": n})
    assert err.value.code == "integer_out_of_range"
