"""How a job's cost is computed from a price schedule: the one place the tile rule lives.

Pure arithmetic on integers of nano-USD; prices themselves are data (the ``prices`` table).

The rule (Workers AI does not document how it counts): a W x H image is
``ceil(W/512) * ceil(H/512)`` tiles, and ``ceil(W*H / 1048576)`` megapixels. Each model's
schedule says which unit it bills for output and input, what the first and each further output
unit cost, what an input unit costs, and whether the total is multiplied by the step count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

TILE_SIDE = 512
MEGAPIXEL = 1024 * 1024

Unit = Literal["tile", "megapixel"]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def tiles(width: int, height: int) -> int:
    return _ceil_div(width, TILE_SIDE) * _ceil_div(height, TILE_SIDE)


def megapixels(width: int, height: int) -> int:
    return _ceil_div(width * height, MEGAPIXEL)


def count_units(unit: Unit, width: int, height: int) -> int:
    return tiles(width, height) if unit == "tile" else megapixels(width, height)


@dataclass(frozen=True)
class PriceSchedule:
    model: str
    output_unit: Unit
    input_unit: Unit
    per_step: bool
    output_first_unit_nanos: int
    output_unit_nanos: int
    input_unit_nanos: int


@dataclass(frozen=True)
class Cost:
    total_nanos: int
    output_tiles: int
    input_tiles: int


@dataclass(frozen=True)
class CostLine:
    label: str
    units: int
    unit_nanos: int

    @property
    def nanos(self) -> int:
        return self.units * self.unit_nanos


@dataclass(frozen=True)
class Breakdown:
    """The charge as a bill: each line units x unit price, their sum times the steps when the
    schedule prices per step (``steps`` is then set)."""

    lines: tuple[CostLine, ...]
    steps: int | None
    total_nanos: int


def breakdown(
    schedule: PriceSchedule,
    *,
    width: int,
    height: int,
    steps: int,
    input_sizes: Sequence[tuple[int, int]] = (),
) -> Breakdown:
    output_units = count_units(schedule.output_unit, width, height)
    lines = [CostLine(f"first output {schedule.output_unit}", 1, schedule.output_first_unit_nanos)]
    if output_units > 1:
        lines.append(
            CostLine(
                f"further output {schedule.output_unit}s",
                output_units - 1,
                schedule.output_unit_nanos,
            )
        )
    input_units = sum(count_units(schedule.input_unit, w, h) for w, h in input_sizes)
    if input_units:
        lines.append(
            CostLine(f"input {schedule.input_unit}s", input_units, schedule.input_unit_nanos)
        )
    total = sum(line.nanos for line in lines)
    if schedule.per_step:
        total *= steps
    return Breakdown(
        lines=tuple(lines), steps=steps if schedule.per_step else None, total_nanos=total
    )


def job_cost(
    schedule: PriceSchedule,
    *,
    width: int,
    height: int,
    steps: int,
    input_sizes: Sequence[tuple[int, int]] = (),
) -> Cost:
    bill = breakdown(schedule, width=width, height=height, steps=steps, input_sizes=input_sizes)
    return Cost(
        total_nanos=bill.total_nanos,
        output_tiles=tiles(width, height),
        input_tiles=sum(tiles(w, h) for w, h in input_sizes),
    )
