"""The billing answers (models and their prices, usage, prices) and the functions that build
them from rows."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.billing import usage
from app.billing.models import Price
from app.core.money import MAX_UNIT_PRICE_NANOS, format_usd, parse_usd
from app.core.orm import as_utc
from app.upstream import catalog


class Range(BaseModel):
    min: int
    max: int
    default: int
    multiple_of: int = 1


class ModelLimits(BaseModel):
    width: Range
    height: Range
    steps: Range
    steps_configurable: bool
    seed_max: int
    guidance_max: float


class ModelPricing(BaseModel):
    effective_from: datetime
    output_unit: str
    input_unit: str
    per_step: bool
    output_first_unit_usd: str
    output_unit_usd: str
    input_unit_usd: str


class ModelOut(BaseModel):
    id: str
    object: Literal["model"] = "model"
    upstream_id: str
    description: str
    limits: ModelLimits
    pricing: ModelPricing


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelOut]
    next_cursor: None = None


def pricing_out(price: Price) -> ModelPricing:
    return ModelPricing(
        effective_from=price.effective_from,
        output_unit=price.output_unit,
        input_unit=price.input_unit,
        per_step=price.per_step,
        output_first_unit_usd=format_usd(price.output_first_unit_nanos),
        output_unit_usd=format_usd(price.output_unit_nanos),
        input_unit_usd=format_usd(price.input_unit_nanos),
    )


def model_out(spec: catalog.ModelSpec, price: Price) -> ModelOut:
    side = {"min": catalog.MIN_SIDE, "max": catalog.MAX_SIDE, "multiple_of": catalog.SIDE_MULTIPLE}
    return ModelOut(
        id=spec.id,
        upstream_id=spec.upstream_id,
        description=spec.description,
        limits=ModelLimits(
            width=Range(default=catalog.DEFAULT_WIDTH, **side),
            height=Range(default=catalog.DEFAULT_HEIGHT, **side),
            steps=Range(
                min=spec.default_steps if not spec.steps_configurable else 1,
                max=spec.max_steps,
                default=spec.default_steps,
            ),
            steps_configurable=spec.steps_configurable,
            seed_max=catalog.MAX_SEED,
            guidance_max=catalog.MAX_GUIDANCE,
        ),
        pricing=pricing_out(price),
    )


class UsageRowOut(BaseModel):
    group: str = Field(
        description="the day (YYYY-MM-DD in tz), the hour (ISO 8601 start, in tz), model or key id"
    )
    jobs: int
    output_tiles: int
    input_tiles: int
    charged_usd: str


class UsageOut(BaseModel):
    object: Literal["usage"] = "usage"
    from_: datetime = Field(alias="from")
    to: datetime
    group_by: str
    tz: str = Field(default="UTC", description="the time zone of days and hours")
    data: list[UsageRowOut]
    total: UsageRowOut

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


def _usage_row(row: usage.UsageRow) -> UsageRowOut:
    return UsageRowOut(
        group=row.group,
        jobs=row.jobs,
        output_tiles=row.output_tiles,
        input_tiles=row.input_tiles,
        charged_usd=format_usd(row.charged_nanos),
    )


def usage_out(
    rows: Sequence[usage.UsageRow],
    *,
    start: datetime,
    end: datetime,
    group_by: str,
    tz: str = "UTC",
) -> UsageOut:
    total = UsageRowOut(
        group="total",
        jobs=sum(row.jobs for row in rows),
        output_tiles=sum(row.output_tiles for row in rows),
        input_tiles=sum(row.input_tiles for row in rows),
        charged_usd=format_usd(sum(row.charged_nanos for row in rows)),
    )
    return UsageOut(
        from_=start,
        to=end,
        group_by=group_by,
        tz=tz,
        data=[_usage_row(row) for row in rows],
        total=total,
    )


def _unit_price(text: str) -> int:
    nanos = parse_usd(text, maximum_nanos=MAX_UNIT_PRICE_NANOS)
    if nanos < 0:
        raise ValueError("must not be negative")
    return nanos


class PriceCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str
    effective_from: datetime = Field(strict=False)  # an ISO 8601 string in JSON
    output_unit: Literal["tile", "megapixel"] = "tile"
    input_unit: Literal["tile", "megapixel"] = "tile"
    per_step: bool = False
    output_unit_usd: str
    output_first_unit_usd: str | None = Field(
        default=None, description="the first output unit, if priced differently"
    )
    input_unit_usd: str

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        return catalog.model_id(value)

    @field_validator("effective_from")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        return as_utc(value)

    @field_validator("output_unit_usd", "output_first_unit_usd", "input_unit_usd")
    @classmethod
    def _usd(cls, value: str | None) -> str | None:
        if value is not None:
            _unit_price(value)
        return value

    def to_price(self) -> Price:
        further = _unit_price(self.output_unit_usd)
        first = (
            further
            if self.output_first_unit_usd is None
            else _unit_price(self.output_first_unit_usd)
        )
        return Price(
            model=self.model,
            effective_from=self.effective_from,
            output_unit=self.output_unit,
            input_unit=self.input_unit,
            per_step=self.per_step,
            output_first_unit_nanos=first,
            output_unit_nanos=further,
            input_unit_nanos=_unit_price(self.input_unit_usd),
        )


class PriceOut(ModelPricing):
    id: int
    object: Literal["price"] = "price"
    model: str


class PriceList(BaseModel):
    object: Literal["list"] = "list"
    data: list[PriceOut]
    next_cursor: None = None


def price_out(price: Price) -> PriceOut:
    return PriceOut(id=price.id, model=price.model, **pricing_out(price).model_dump())
