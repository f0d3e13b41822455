"""Money is an integer of nano-USD (1e-9 USD) everywhere; strings only at the edges."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

NANOS_PER_USD = 1_000_000_000


def format_usd(nanos: int) -> str:
    """``1148000`` -> ``"0.001148"``; ``0`` -> ``"0"``: exact, no trailing zeros, no exponent."""
    sign = "-" if nanos < 0 else ""
    whole, fraction = divmod(abs(nanos), NANOS_PER_USD)
    digits = f"{fraction:09d}".rstrip("0")
    return f"{sign}{whole}.{digits}" if digits else f"{sign}{whole}"


def parse_usd(text: str) -> int:
    """``"0.001148"`` -> ``1148000``; refuses anything not exactly representable in nano-USD."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a decimal amount") from None
    if not value.is_finite():
        raise ValueError(f"{text!r} is not a finite amount")
    nanos = value * NANOS_PER_USD
    if nanos != nanos.to_integral_value():
        raise ValueError(f"{text!r} has more than 9 decimal places")
    return int(nanos)
