"""The FLUX.2 models the gateway serves and the request limits that apply to them."""

from __future__ import annotations

from dataclasses import dataclass

UPSTREAM_PREFIX = "@cf/black-forest-labs/"

MIN_SIDE = 256
MAX_SIDE = 1920
SIDE_MULTIPLE = 16  # FLUX's latent grid; BFL's own API requires it
DEFAULT_WIDTH = 1024
DEFAULT_HEIGHT = 768
MAX_SEED = 4_294_967_295
MAX_GUIDANCE = 20.0
MAX_INPUT_IMAGES = 4


@dataclass(frozen=True)
class ModelSpec:
    id: str
    description: str
    steps_configurable: bool
    default_steps: int
    max_steps: int

    @property
    def upstream_id(self) -> str:
        return UPSTREAM_PREFIX + self.id


DEFAULT_MODEL = "flux-2-klein-4b"

MODELS: dict[str, ModelSpec] = {
    spec.id: spec
    for spec in (
        ModelSpec(
            id="flux-2-klein-4b",
            description="FLUX.2 [klein] 4B: step-distilled (4 steps), fast, Apache-2.0",
            steps_configurable=False,
            default_steps=4,
            max_steps=4,
        ),
        ModelSpec(
            id="flux-2-klein-9b",
            description="FLUX.2 [klein] 9B: step-distilled (4 steps), higher quality",
            steps_configurable=False,
            default_steps=4,
            max_steps=4,
        ),
        ModelSpec(
            id="flux-2-dev",
            description="FLUX.2 [dev]: configurable steps (1..50)",
            steps_configurable=True,
            default_steps=25,
            max_steps=50,
        ),
    )
}


def resolve_model(name: str) -> ModelSpec | None:
    """Accept both ``flux-2-dev`` and ``@cf/black-forest-labs/flux-2-dev``."""
    return MODELS.get(name.removeprefix(UPSTREAM_PREFIX))


def model_name(upstream_id: str) -> str:
    """``flux-2-dev`` for ``@cf/black-forest-labs/flux-2-dev``: how metrics label a model."""
    return upstream_id.removeprefix(UPSTREAM_PREFIX)


def model_id(name: str) -> str:
    """The canonical id of a model name, for validators; ValueError names the choices."""
    spec = resolve_model(name)
    if spec is None:
        raise ValueError(f"unknown model; use one of {', '.join(MODELS)}")
    return spec.id
