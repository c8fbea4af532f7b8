"""Kubernetes quantity strings ("10Gi", "1.5G", "34359738368") as whole, non-negative integers.

Only the forms a byte count can sensibly take are accepted: a plain or decimal number, optionally followed by
a binary suffix (Ki, Mi, Gi, Ti, Pi, Ei), a decimal suffix (k, M, G, T, P, E) or a decimal exponent (e3, E6).
Milli-units ("500m") are rejected: a byte count cannot be fractional. The result must be a whole number.
"""

import re
from decimal import Decimal, InvalidOperation
from typing import Final

BINARY_SUFFIXES: Final[dict[str, int]] = {
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
    "Pi": 1024**5,
    "Ei": 1024**6,
}
DECIMAL_SUFFIXES: Final[dict[str, int]] = {
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
}

_QUANTITY = re.compile(
    r"^\+?(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
    r"(?:(?P<exponent>[eE][+-]?[0-9]+)|(?P<suffix>[KMGTPE]i|[kMGTPE]))?$"
)
_HINT: Final = "expected a number with an optional suffix (Ki, Mi, Gi, Ti, Pi, Ei, k, M, G, T, P or E)"


def parse_quantity(value: str | int) -> int:
    """The integer a quantity stands for; ValueError names the bad input and the accepted forms."""
    if isinstance(value, bool):
        raise ValueError(f"quantity {value!r} is a boolean; {_HINT}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"quantity {value} must not be negative")
        return value
    if value.startswith("-"):
        raise ValueError(f"quantity {value!r} must not be negative")
    match = _QUANTITY.match(value)
    if match is None:
        raise ValueError(f"quantity {value!r} is not valid: {_HINT}")
    try:
        number = Decimal(match["number"])
    except InvalidOperation as err:  # pragma: no cover - the regex admits only valid decimals
        raise ValueError(f"quantity {value!r} is not valid: {_HINT}") from err
    if match["exponent"]:
        number = number.scaleb(int(match["exponent"][1:]))
    elif match["suffix"]:
        suffix = match["suffix"]
        number *= BINARY_SUFFIXES.get(suffix) or DECIMAL_SUFFIXES[suffix]
    if number != number.to_integral_value():
        raise ValueError(f"quantity {value!r} is {number}, not a whole number")
    return int(number)


def format_bytes(count: int) -> str:
    """The shortest exact binary-suffixed form of a byte count: 34359738368 -> "32Gi", 1500 -> "1500"."""
    if count < 0:
        raise ValueError(f"byte count {count} must not be negative")
    for suffix, factor in reversed(BINARY_SUFFIXES.items()):
        if count and count % factor == 0:
            return f"{count // factor}{suffix}"
    return str(count)
