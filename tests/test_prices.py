"""Prices: tiles and megapixels, and what a job costs under each price schedule."""

from __future__ import annotations

from app.billing.rules import PriceSchedule, job_cost, megapixels, tiles
from app.core.money import format_usd

KLEIN_4B = PriceSchedule("flux-2-klein-4b", "tile", "tile", False, 287_000, 287_000, 59_000)
KLEIN_9B = PriceSchedule(
    "flux-2-klein-9b", "megapixel", "megapixel", False, 15_000_000, 2_000_000, 2_000_000
)
DEV = PriceSchedule("flux-2-dev", "tile", "tile", True, 410_000, 410_000, 210_000)


def test_tile_and_megapixel_rule() -> None:
    assert tiles(1024, 768) == 4
    assert tiles(512, 512) == 1
    assert tiles(513, 512) == 2
    assert tiles(1920, 1920) == 16
    assert megapixels(1024, 1024) == 1
    assert megapixels(1024, 1040) == 2
    assert megapixels(1920, 1080) == 2
    assert megapixels(256, 256) == 1


def test_contract_examples() -> None:
    assert format_usd(job_cost(KLEIN_4B, width=1024, height=768, steps=4).total_nanos) == "0.001148"
    assert format_usd(job_cost(DEV, width=512, height=512, steps=25).total_nanos) == "0.01025"
    two_inputs = job_cost(
        KLEIN_4B, width=1024, height=768, steps=4, input_sizes=[(512, 512), (300, 400)]
    )
    assert format_usd(two_inputs.total_nanos) == "0.001266"
    assert (two_inputs.input_tiles, two_inputs.output_tiles) == (2, 4)


def test_klein_9b_bills_first_and_further_megapixels() -> None:
    assert job_cost(KLEIN_9B, width=1024, height=1024, steps=4).total_nanos == 15_000_000
    assert job_cost(KLEIN_9B, width=1920, height=1080, steps=4).total_nanos == 17_000_000
    assert job_cost(KLEIN_9B, width=1920, height=1920, steps=4).total_nanos == 21_000_000
    with_input = job_cost(KLEIN_9B, width=1024, height=1024, steps=4, input_sizes=[(512, 512)])
    assert with_input.total_nanos == 17_000_000


def test_dev_multiplies_inputs_and_outputs_by_steps() -> None:
    cost = job_cost(DEV, width=1024, height=1024, steps=10, input_sizes=[(512, 512)])
    assert cost.total_nanos == (4 * 410_000 + 210_000) * 10
