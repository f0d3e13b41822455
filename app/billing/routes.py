"""``GET /v1/models``: what can be run, within which limits, at which prices today."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel

from app import catalog
from app.billing.service import prices_in_force
from app.deps import ApiKeyDep, SessionDep
from app.money import format_usd

router = APIRouter(prefix="/v1", tags=["billing"])


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


@router.get("/models", response_model=ModelList, summary="Models, their limits and current prices")
def list_models(session: SessionDep, _api_key: ApiKeyDep) -> ModelList:
    prices = prices_in_force(session, models=list(catalog.MODELS))
    data = []
    for spec in catalog.MODELS.values():
        price = prices[spec.id]
        side = {
            "min": catalog.MIN_SIDE,
            "max": catalog.MAX_SIDE,
            "multiple_of": catalog.SIDE_MULTIPLE,
        }
        data.append(
            ModelOut(
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
                pricing=ModelPricing(
                    effective_from=price.effective_from,
                    output_unit=price.output_unit,
                    input_unit=price.input_unit,
                    per_step=price.per_step,
                    output_first_unit_usd=format_usd(price.output_first_unit_nanos),
                    output_unit_usd=format_usd(price.output_unit_nanos),
                    input_unit_usd=format_usd(price.input_unit_nanos),
                ),
            )
        )
    return ModelList(data=data)
