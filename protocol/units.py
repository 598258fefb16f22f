"""Amounts as people write them, and as the ledger counts them.

Layer: protocol (pure). The ledger counts integers of the collective's smallest unit; people
write and read amounts in the display unit. A time bank in hours with scale 60 counts
minutes: ``1.5`` hours is 90, and 100 shows as ``1.67 hours`` (with the exact minutes beside
it, since a rounded figure must never pass for the real one).
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from crypto.canonical import MAX_SAFE_INTEGER
from protocol.messages import Unit


class AmountError(ValueError):
    """An amount that cannot be counted exactly in the collective's smallest unit."""


def parse_amount(text: str, unit: Unit) -> int:
    """``"1.5"`` hours → 90 minutes. Refuses amounts that are not whole smallest units."""
    cleaned = text.strip().replace("_", "")
    try:
        value = Decimal(cleaned)
    except InvalidOperation as exc:
        raise AmountError(f"{text!r} is not a number") from exc
    if not value.is_finite():
        raise AmountError(f"{text!r} is not a number")
    smallest = value * unit.scale
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
