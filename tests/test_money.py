"""Money: USD amounts as exact nanodollars, parsed and formatted."""

from __future__ import annotations

import pytest

from app.core.money import MAX_BUDGET_NANOS, format_usd, parse_usd


@pytest.mark.parametrize(
    ("nanos", "text"),
    [
        (0, "0"),
        (1, "0.000000001"),
        (1_148_000, "0.001148"),
        (10_250_000, "0.01025"),
        (1_000_000_000, "1"),
        (12_500_000_000, "12.5"),
        (-59_000, "-0.000059"),
    ],
)
def test_money_round_trips_exactly(nanos: int, text: str) -> None:
    assert format_usd(nanos) == text
    assert parse_usd(text, maximum_nanos=MAX_BUDGET_NANOS) == nanos


@pytest.mark.parametrize("text", ["0.0000000001", "abc", "NaN", "Infinity", ""])
def test_money_refuses_what_is_not_nano_exact(text: str) -> None:
    with pytest.raises(ValueError, match=r"not a decimal|not a finite|more than 9 decimal"):
        parse_usd(text, maximum_nanos=MAX_BUDGET_NANOS)


@pytest.mark.parametrize("text", ["1000000000.000000001", "-1000000001", "1e10", "1e400"])
def test_money_refuses_what_is_past_its_maximum(text: str) -> None:
    assert parse_usd("1000000000", maximum_nanos=MAX_BUDGET_NANOS) == MAX_BUDGET_NANOS
    with pytest.raises(ValueError, match="at most 1000000000 USD"):
        parse_usd(text, maximum_nanos=MAX_BUDGET_NANOS)
