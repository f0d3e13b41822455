"""Money is an integer of nano-USD (1e-9 USD) everywhere; strings only at the edges."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

NANOS_PER_USD = 1_000_000_000
# The largest amounts the API takes: far beyond real use, and far inside the 64-bit columns
# (about 9.2e18 nano-USD) that hold them and their sums.
MAX_BUDGET_NANOS = 1_000_000_000 * NANOS_PER_USD  # $1,000,000,000
MAX_UNIT_PRICE_NANOS = 10 * NANOS_PER_USD  # $10 per tile or megapixel


def format_usd(nanos: int) -> str:
    """``1148000`` -> ``"0.001148"``; ``0`` -> ``"0"``: exact, no trailing zeros, no exponent."""
    sign = "-" if nanos < 0 else ""
    whole, fraction = divmod(abs(nanos), NANOS_PER_USD)
    digits = f"{fraction:09d}".rstrip("0")
    return f"{sign}{whole}.{digits}" if digits else f"{sign}{whole}"


def parse_usd(text: str, *, maximum_nanos: int) -> int:
    """``"0.001148"`` -> ``1148000``; refuses anything not exactly representable in nano-USD,
    and anything above ``maximum_nanos``."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a decimal amount") from None
    if not value.is_finite():
        raise ValueError(f"{text!r} is not a finite amount")
    if abs(value) > Decimal(maximum_nanos) / NANOS_PER_USD:
        raise ValueError(f"must be at most {format_usd(maximum_nanos)} USD")
    nanos = value * NANOS_PER_USD
    if nanos != nanos.to_integral_value():
        raise ValueError(f"{text!r} has more than 9 decimal places")
    return int(nanos)
