"""Canonical JSON (RFC 8785) for the shapes Tally signs, and the strict parser for outside input.

Layer: crypto (pure). Owns the one byte form every signature, hash and log entry is computed
over, and the one way bytes from outside become Python values.

We sign only a subset of JSON, which keeps RFC 8785 simple and exact:
- integers only, within ±(2^53 − 1) (the range every JSON implementation represents exactly),
  so RFC 8785's ECMAScript number serialisation reduces to plain decimal integers;
- object keys are ASCII, so sorting by UTF-16 code units equals sorting Python ``str``;
- strings are valid Unicode (no lone surrogates), written as UTF-8 with only the escapes
  RFC 8785 requires.

The parser refuses what canonical form could not represent — floats, NaN, duplicate keys,
integers out of range, non-ASCII keys — each with its own error code, so a refusal says
exactly what was wrong.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_SAFE_INTEGER = 2**53 - 1

JSONValue = Any  # dict[str, JSONValue] | list[JSONValue] | str | int | bool | None


class CanonicalError(ValueError):
    """Input that is not in Tally's JSON subset. ``code`` is a stable machine-readable reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _check(value: JSONValue) -> None:
    """Refuse anything outside the subset; what remains, json.dumps writes per RFC 8785."""
    # bool before int: bool is a subclass of int in Python.
    if value is None or value is True or value is False or isinstance(value, str):
        return
    if isinstance(value, int):
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise CanonicalError(
                "integer_out_of_range", f"integer {value} is outside ±(2^53−1)"
            )
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or not key.isascii():
                raise CanonicalError("invalid_key", f"object keys must be ASCII strings: {key!r}")
            _check(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check(item)
    elif isinstance(value, float):
        raise CanonicalError("float_not_allowed", "numbers must be integers")
    else:
        raise CanonicalError("invalid_value", f"cannot encode {type(value).__name__} as JSON")


# ``json.dumps(value, **these)``, without building the encoder at every call.
_CANONICAL_ENCODER = json.JSONEncoder(
    ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False)


def canonical_json(value: JSONValue) -> bytes:
    """The RFC 8785 form of ``value`` as UTF-8 bytes.

    Within our subset, the standard library's encoder already writes RFC 8785: with
    ``ensure_ascii=False`` it escapes exactly ``"``, ``\\`` and the control characters
    (``\\b \\f \\n \\r \\t`` by name, the rest as lowercase ``\\u00xx``) and writes
    everything else as UTF-8; integers are plain decimals; ASCII keys sort as RFC 8785 sorts
    them. ``_check`` refuses the rest first; a lone surrogate fails the UTF-8 encoding.
    Tests cross-check every case against the independent ``rfc8785`` package.
    """
    try:
        _check(value)
        text = _CANONICAL_ENCODER.encode(value)
    except RecursionError as exc:
        raise CanonicalError("invalid_value", "JSON nested too deeply") from exc
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CanonicalError(
            "invalid_string", "strings must be valid Unicode (lone surrogate)"
        ) from exc


def _no_duplicates_ascii(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``_no_duplicates`` for text whose keys are all ASCII (``parse_json`` knows when)."""
    fast = dict(pairs)
    if len(fast) == len(pairs):
        return fast
    return _no_duplicates(pairs)  # raises


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise CanonicalError("duplicate_key", f"duplicate key {key!r} in JSON object")
        if not key.isascii():
            raise CanonicalError("invalid_key", f"object keys must be ASCII: {key!r}")
        result[key] = value
    return result


def _no_float(text: str) -> Any:
    raise CanonicalError("float_not_allowed", f"numbers must be integers, got {text}")


def _no_constant(text: str) -> Any:
    raise CanonicalError("float_not_allowed", f"{text} is not allowed")


def _bounded_int(text: str) -> int:
    # Refuse before converting: a 100,000-digit integer is a denial of service, not an amount.
    if len(text.lstrip("-")) > 16:
        raise CanonicalError("integer_out_of_range", "integer is outside ±(2^53−1)")
    value = int(text)
    if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        raise CanonicalError("integer_out_of_range", f"integer {value} is outside ±(2^53−1)")
    return value


def _check_strings(value: JSONValue) -> None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise CanonicalError(
                "invalid_string", "strings must be valid Unicode (lone surrogate)"
            ) from exc
    elif isinstance(value, dict):
        for item in value.values():
            _check_strings(item)
    elif isinstance(value, list):
        for item in value:
            _check_strings(item)


# Where a lone surrogate can come from in text decoded from UTF-8 (which has none itself): an
# escape \uD800–\uDFFF. Text without one needs no walk for lone surrogates.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


# What ``json.loads(text, **hooks)`` would build afresh at every call (a decoder and its
# scanner, a few microseconds: a third of parsing a transfer): made once. A decoder keeps no
# state between calls.
_HOOKS: dict[str, Any] = {
    "parse_float": _no_float, "parse_int": _bounded_int, "parse_constant": _no_constant,
}
_ASCII_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates_ascii, **_HOOKS)
_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, **_HOOKS)


def parse_json(data: bytes | str) -> JSONValue:
    """Parse JSON from outside, strictly: no floats, no duplicate keys, safe integers only."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CanonicalError("invalid_json", "body is not valid UTF-8") from exc
        escapes = "\\u" in text
        may_hold_surrogates = escapes and _SURROGATE_ESCAPE.search(text) is not None
    else:
        text = data
        escapes = "\\u" in text
        may_hold_surrogates = not text.isascii() or _SURROGATE_ESCAPE.search(text) is not None
    # ASCII text without \u escapes can only hold ASCII keys.
    decoder = _ASCII_DECODER if not escapes and text.isascii() else _DECODER
    try:
        if text.startswith("\ufeff"):  # as json.loads refuses it
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        value = decoder.decode(text)
    except CanonicalError:
        raise
    except (json.JSONDecodeError, RecursionError) as exc:
        raise CanonicalError("invalid_json", f"body is not valid JSON: {exc}") from exc
    if may_hold_surrogates:
        _check_strings(value)
    return value
