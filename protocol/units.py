"""Amounts as people write them, and as the ledger counts them.

Layer: protocol (pure). The ledger counts integers of the collective's smallest unit; people
write and read amounts in the display unit. A time bank in hours with scale 60 counts
minutes: ``1.5`` hours is 90, and 100 shows as ``1.67 hours`` (with the exact minutes beside
it, since a rounded figure must never pass for the real one).
"""

from __future__ import annotations

import re
from decimal import MAX_EMAX, MIN_EMIN, Context, Decimal

from crypto.canonical import MAX_SAFE_INTEGER
from protocol.messages import Unit


class AmountError(ValueError):
    """An amount that cannot be counted exactly in the collective's smallest unit."""


_DECIMAL_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


def parse_amount(text: str, unit: Unit) -> int:
    """``"1.5"`` hours → 90 minutes. Refuses amounts that are not whole smallest units."""
    cleaned = text.strip().replace("_", "")
    # Plain ASCII decimals only: Decimal would also take exponents ("1e999999" overflows,
    # "1e-999999" silently becomes 0) and digits of other scripts.
    if not _DECIMAL_RE.fullmatch(cleaned):
        raise AmountError(f"{text!r} is not a number")
    value = Decimal(cleaned)  # exact: a Decimal made from a string is never rounded
    if value.adjusted() >= 16:  # 10^16 display units or more: beyond any amount
        raise AmountError(f"{text} is too large")
    # Multiply exactly: the default 28-digit context would round 1.000…0001 hours to 60 minutes.
    exact = Context(prec=len(cleaned) + 20, Emin=MIN_EMIN, Emax=MAX_EMAX)
    smallest = exact.multiply(value, Decimal(unit.scale))
    if smallest != smallest.to_integral_value():
        raise AmountError(
            f"{text} {unit.name} is not a whole number of the smallest unit "
            f"(1/{unit.scale} of {unit.code})"
        )
    result = int(smallest)
    if abs(result) > MAX_SAFE_INTEGER:
        raise AmountError(f"{text} is too large")
    return result


def format_amount(amount: int, unit: Unit, with_name: bool = True) -> str:
    value = Decimal(amount) / Decimal(unit.scale)
    exact = value == value.quantize(Decimal("0.0001"))
    if exact:
        shown = format(value.normalize(), "f") if value != 0 else "0"
        if "." in shown:
            shown = shown.rstrip("0").rstrip(".")
    else:
        shown = f"{value:.2f} ({amount}/{unit.scale})"
    return f"{shown} {unit.name}" if with_name else shown
