"""Amounts as people write them (``1.5`` hours) and as the ledger counts them (90 minutes)."""

from __future__ import annotations

import time
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crypto.canonical import MAX_SAFE_INTEGER
from protocol.messages import Unit
from protocol.units import AmountError, format_amount, parse_amount

HOURS = Unit("HOUR", "hours", 60)  # a time bank counts minutes
CREDITS = Unit("CR", "credits", 100)  # a co-op counts cents


@pytest.mark.parametrize(
    ("text", "unit", "expected"),
    [
        ("1.5", HOURS, 90),
        ("1", HOURS, 60),
        ("0.25", HOURS, 15),
        (" 2 ", HOURS, 120),
        ("1_000", HOURS, 60_000),
        (".5", HOURS, 30),
        ("0", HOURS, 0),
        ("12.34", CREDITS, 1234),
        ("0.01", CREDITS, 1),
        ("1.50000000", CREDITS, 150),
        ("-1.5", HOURS, -90),
        ("-0.01", CREDITS, -1),
    ],
)
def test_amounts_are_counted_in_the_smallest_unit(text: str, unit: Unit, expected: int) -> None:
    assert parse_amount(text, unit) == expected


def test_an_amount_finer_than_the_smallest_unit_is_refused_with_a_clear_message() -> None:
    with pytest.raises(AmountError) as err:
        parse_amount("0.01", HOURS)
    message = str(err.value)
    assert "0.01 hours" in message
    assert "not a whole number" in message
    assert "1/60" in message


@pytest.mark.parametrize(
    "text",
    [
        "1.00000000000000000000000000001",  # beyond Decimal's default 28 digits: must not round
        "0.001",
        "1.005",
        "0." + "0" * 5_000 + "1",
    ],
)
def test_fractions_of_a_minute_are_refused_however_small(text: str) -> None:
    with pytest.raises(AmountError, match="not a whole number"):
        parse_amount(text, HOURS)


@pytest.mark.parametrize(
    "text",
    ["", "abc", "1.2.3", "1,5", "one", "NaN", "inf", "-Infinity", "1e3", "1e-999999999",
     "1e999999", "0x10", "١.٥", "½", "--1", "1 5", "$5"],
)
def test_text_that_is_not_a_plain_decimal_is_refused(text: str) -> None:
    with pytest.raises(AmountError, match="not a number"):
        parse_amount(text, HOURS)


@pytest.mark.parametrize("text", ["150119987579017", "1" + "0" * 16, "9" * 5_000])
def test_amounts_beyond_the_safe_integer_range_are_refused_quickly(text: str) -> None:
    started = time.perf_counter()
    with pytest.raises(AmountError, match="too large"):
        parse_amount(text, HOURS)
    assert time.perf_counter() - started < 1.0


def test_the_largest_amount_is_accepted() -> None:
    assert parse_amount("90071992547409.91", CREDITS) == MAX_SAFE_INTEGER


# --- formatting -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "unit", "shown"),
    [
        (90, HOURS, "1.5 hours"),
        (60, HOURS, "1 hours"),
        (15, HOURS, "0.25 hours"),
        (0, HOURS, "0 hours"),
        (-90, HOURS, "-1.5 hours"),
        (6000, HOURS, "100 hours"),
        (1234, CREDITS, "12.34 credits"),
        (1, CREDITS, "0.01 credits"),
        (100_000, CREDITS, "1000 credits"),
    ],
)
def test_exact_amounts_are_shown_in_the_display_unit(amount: int, unit: Unit, shown: str) -> None:
    assert format_amount(amount, unit) == shown
    assert format_amount(amount, unit, with_name=False) == shown.rsplit(" ", 1)[0]


@pytest.mark.parametrize(
    ("amount", "shown"),
    [(100, "1.67 (100/60) hours"), (1, "0.02 (1/60) hours"), (-100, "-1.67 (-100/60) hours")],
)
def test_an_inexact_amount_shows_the_exact_fraction_beside_the_rounded_one(
    amount: int, shown: str
) -> None:
    assert format_amount(amount, HOURS) == shown


_units = st.builds(Unit, st.just("U"), st.just("units"), st.sampled_from([1, 2, 4, 10, 60, 100, 1000]))


@given(st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER), _units)
def test_what_is_shown_as_exact_parses_back_to_the_same_amount(amount: int, unit: Unit) -> None:
    shown = format_amount(amount, unit, with_name=False)
    if "(" in shown:
        # Rounded for display: the exact fraction beside it is the amount.
        assert shown.endswith(f"({amount}/{unit.scale})")
        assert Fraction(amount, unit.scale).denominator > 1
    else:
        assert parse_amount(shown, unit) == amount


# Units whose every amount is a terminating decimal (1/60 is not).
_decimal_units = st.builds(Unit, st.just("U"), st.just("units"), st.sampled_from([1, 2, 8, 10, 100]))


@given(st.integers(-(10**12), 10**12), _decimal_units)
def test_parse_of_an_exact_decimal_gives_the_amount(amount: int, unit: Unit) -> None:
    assert parse_amount(_decimal(Fraction(amount, unit.scale)), unit) == amount


def _decimal(value: Fraction) -> str:
    sign = "-" if value < 0 else ""
    value = abs(value)
    whole, rest = divmod(value.numerator, value.denominator)
    digits = ""
    while rest:
        rest *= 10
        digit, rest = divmod(rest, value.denominator)
        digits += str(digit)
    return f"{sign}{whole}.{digits}" if digits else f"{sign}{whole}"
