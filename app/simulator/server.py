"""The simulator's ASGI app: Cloudflare Workers AI's FLUX.2 run route plus /__sim controls."""

from __future__ import annotations

import asyncio
import base64
import math
import random
import re
import secrets
import time
from collections import Counter, OrderedDict, defaultdict, deque
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from app.simulator.faults import ERROR_FAULTS, FaultPlan
from app.simulator.render import probe_image, render_png, renders

RUN_PATH = "/client/v4/accounts/{account_id}/ai/run/@cf/black-forest-labs/{model}"
MODELS = frozenset({"flux-2-klein-4b", "flux-2-klein-9b", "flux-2-dev"})
TEXT_FIELDS = {  # text field -> the JSON-schema type the real service reports
    "prompt": "string",
    "width": "integer",
    "height": "integer",
    "seed": "integer",
    "guidance": "number",
    "steps": "integer",
}
INPUT_IMAGE_FIELDS = tuple(f"input_image_{i}" for i in range(4))
SIDE_MIN, SIDE_MAX = 256, 1920
STEPS_MIN, STEPS_MAX, STEPS_DEFAULT = 1, 50, 25
RECORDS_PER_PROMPT = 100
# With the cache on: the distinct pictures of one size (chosen by the seed), and how many
# answers are kept at most (least recently used out first).
CACHE_VARIANTS = 4
CACHE_ENTRIES = 64

# Prices in USD from workers-ai.md; neurons = USD / USD_PER_NEURON.
USD_PER_NEURON = 0.011 / 1000
TILE_PRICES = {  # model -> (per input tile, per output tile); flux-2-dev is also per step
    "flux-2-klein-4b": (0.000059, 0.000287),
    "flux-2-dev": (0.00021, 0.00041),
}
KLEIN_9B_FIRST_MP, KLEIN_9B_FURTHER_MP, KLEIN_9B_INPUT_MP = 0.015, 0.002, 0.002

_INTEGER = re.compile(r"-?[0-9]+")


@dataclass(frozen=True)
class SimulatorConfig:
    """How the simulator behaves; `seed` seeds the fault-rate RNG (None: unpredictable).

    `cache`: draw each distinct picture once and answer repeats with the same encoded body,
    for benchmarks that should measure the gateway rather than the drawing (see ImageCache).
    """

    token: str
    latency_seconds: float = 0.0
    latency_jitter_seconds: float = 0.0
    faults: dict[str, float] = field(default_factory=dict)
    hang_seconds: float = 3600.0
    max_body_bytes: int = 10 * 1024 * 1024
    input_max_side: int = 512
    seed: int | None = None
    cache: bool = False


@dataclass
class _Job:
    """A validated generation request."""

    model: str
    prompt: str
    width: int
    height: int
    seed: int | None
    steps: int
    inputs: list[bytes]
    input_sizes: list[tuple[int, int]]


@dataclass
class _Seen:
    """What one request looked like, for /__sim/requests."""

    content_type: str
    prompt: str | None = None
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    fault: str | None = None  # the fault applied; "ok" when it was answered with a picture


class _Invalid(Exception):
    """A 5004 validation failure; the message is sent to the client."""


def tiles(width: int, height: int) -> int:
    """512x512 tiles covering a width x height image (the gateway's documented rule)."""
    return math.ceil(width / 512) * math.ceil(height / 512)


def megapixels(width: int, height: int) -> int:
    """Started megapixels (1024x1024) in a width x height image."""
    return math.ceil(width * height / 1048576)


def neurons(
    model: str, width: int, height: int, steps: int, input_sizes: list[tuple[int, int]]
) -> float:
    """Neurons one generation costs, from the per-tile / per-megapixel prices."""
    if model == "flux-2-klein-9b":
        usd = KLEIN_9B_FIRST_MP + KLEIN_9B_FURTHER_MP * (megapixels(width, height) - 1)
        usd += KLEIN_9B_INPUT_MP * sum(megapixels(w, h) for w, h in input_sizes)
    else:
        per_input, per_output = TILE_PRICES[model]
        input_tiles = sum(tiles(w, h) for w, h in input_sizes)
        usd = per_output * tiles(width, height) + per_input * input_tiles
        if model == "flux-2-dev":
            usd *= steps
    return usd / USD_PER_NEURON


def _envelope_error(
    status: int, code: int, message: str, retry_after: int | None = None
) -> Response:
    headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
    body = {"result": None, "success": False, "errors": [{"code": code, "message": message}]}
    return JSONResponse({**body, "messages": []}, status_code=status, headers=headers)


def _envelope_image(image_b64: str, cost: float) -> Response:
    body = {"result": {"image": image_b64}, "success": True, "errors": [], "messages": []}
    return JSONResponse(body, headers=_neurons(cost))


def _neurons(cost: float) -> dict[str, str]:
    return {"cf-ai-neurons": f"{cost:.2f}"}


class ImageCache:
    """Success bodies (the envelope with the base64 PNG in it), each drawn once.

    A picture is chosen by its size and the seed modulo CACHE_VARIANTS, so the answers stay
    real PNGs of the asked size, deterministic in the seed, and a few differ per size; the
    prompt, the model and input images no longer change them. Concurrent requests for a
    picture not drawn yet wait for the one drawing; the LRU keeps at most CACHE_ENTRIES.
    """

    def __init__(self) -> None:
        self._bodies: OrderedDict[tuple[int, int, int], asyncio.Task[bytes]] = OrderedDict()
        self.hits = 0

    async def body(self, width: int, height: int, seed: int) -> bytes:
        key = (width, height, seed % CACHE_VARIANTS)
        task = self._bodies.get(key)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            # A task of its own: a requester that goes away does not cancel the drawing others
            # wait for.
            task = asyncio.ensure_future(run_in_threadpool(_draw_body, *key))
            self._bodies[key] = task
            while len(self._bodies) > CACHE_ENTRIES:
                self._bodies.popitem(last=False)
        else:
            self.hits += 1
            self._bodies.move_to_end(key)
        return await asyncio.shield(task)


def _draw_body(width: int, height: int, variant: int) -> bytes:
    """The success body of the cache's picture ``variant`` at width x height."""
    png = render_png("cached", f"picture {variant}", variant, width, height)
    return bytes(_envelope_image(base64.b64encode(png).decode(), 0.0).body)


def _int_field(
    fields: Mapping[str, str], name: str, default: int, low: int, high: int | None
) -> int:
    raw = fields.get(name)
    if raw is None:
        return default
    if not _INTEGER.fullmatch(raw):
        raise _Invalid(f"Type mismatch of '/{name}', 'string' not in 'integer'")
    value = int(raw)
    if value < low:
        raise _Invalid(f"Value of '/{name}' must be >= {low}, got {value}")
    if high is not None and value > high:
        raise _Invalid(f"Value of '/{name}' must be <= {high}, got {value}")
    return value


def _validate(
    model: str,
    fields: Mapping[str, str],
    files: Mapping[str, bytes],
    sizes: Mapping[str, tuple[int, int] | None],
    max_side: int,
) -> _Job:
    """Check the form like the real service does; raise _Invalid naming the offending field."""
    if model != "flux-2-dev" and ("steps" in fields or "steps" in files):
        raise _Invalid(f"steps is not supported for {model}")
    # A file part where a text field belongs is a type error, as is text where a file belongs.
    for name, kind in TEXT_FIELDS.items():
        if name in files:
            raise _Invalid(f"Type mismatch of '/{name}', 'binary' not in '{kind}'")
    for name in INPUT_IMAGE_FIELDS:
        if name in fields:
            raise _Invalid(f"Type mismatch of '/{name}', 'string' not in 'binary'")

    prompt = fields.get("prompt")
    if prompt is None:
        raise _Invalid("required properties at '/' are 'prompt'")
    if not prompt.strip():
        raise _Invalid("Length of '/prompt' must be >= 1")
    width = _int_field(fields, "width", 1024, SIDE_MIN, SIDE_MAX)
    height = _int_field(fields, "height", 768, SIDE_MIN, SIDE_MAX)
    seed = _int_field(fields, "seed", 0, 0, None) if "seed" in fields else None
    if "guidance" in fields:
        try:
            guidance = float(fields["guidance"])
        except ValueError:
            guidance = math.nan
        if not math.isfinite(guidance):
            raise _Invalid("Type mismatch of '/guidance', 'string' not in 'number'")
    # klein is step-distilled to 4 steps; the value only matters for flux-2-dev's pricing.
    steps = 4
    if model == "flux-2-dev":
        steps = _int_field(fields, "steps", STEPS_DEFAULT, STEPS_MIN, STEPS_MAX)

    inputs, input_sizes = [], []
    for name in INPUT_IMAGE_FIELDS:
        if name not in files:
            continue
        size = sizes[name]
        if size is None:
            raise _Invalid(f"'/{name}' is not a decodable PNG, JPEG or WebP image")
        if size[0] > max_side or size[1] > max_side:
            raise _Invalid(
                f"'/{name}' must be at most {max_side}x{max_side} pixels, got {size[0]}x{size[1]}"
            )
        inputs.append(files[name])
        input_sizes.append(size)
    return _Job(model, prompt, width, height, seed, steps, inputs, input_sizes)


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The whole body, or None once it exceeds `limit` (declared or actually sent)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class Simulator:
    """State shared by the routes: config, fault plan, counters and recorded requests."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.plan = FaultPlan(config.faults, config.seed)
        self.cache = ImageCache() if config.cache else None
        self.in_flight = 0
        self.reset()

    def reset(self) -> None:
        """Zero the counters and forget recorded requests (scripts are kept)."""
        self.requests = 0
        self.max_in_flight = self.in_flight
        self.renders_before = renders()
        if self.cache is not None:
            self.cache.hits = 0
        self.by_prompt: Counter[str] = Counter()
        self.by_status: Counter[str] = Counter()
        self.records: defaultdict[str, deque[dict[str, Any]]] = defaultdict(
            lambda: deque(maxlen=RECORDS_PER_PROMPT)
        )

    async def run(self, request: Request) -> Response:
        """The Workers AI run route, with accounting around the real work."""
        self.requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        seen = _Seen(content_type)
        received_at = time.time()
        status = 499  # stays so if the client went away and the handler was cancelled
        try:
            response = await self._answer(request, seen)
            # An answer nobody is there to take (the client timed out or died) is recorded as
            # 499: what a job was really given back is what counts upstream.
            status = 499 if await request.is_disconnected() else response.status_code
            return response
        finally:
            self.in_flight -= 1
            self.by_status[str(status)] += 1
            if seen.prompt is not None:
                self.by_prompt[seen.prompt] += 1
                self.records[seen.prompt].append(
                    {
                        "content_type": seen.content_type,
                        "fields": seen.fields,
                        "files": seen.files,
                        "status": status,
                        "fault": seen.fault,
                        "received_at": received_at,
                    }
                )

    async def _answer(self, request: Request, seen: _Seen) -> Response:
        config = self.config
        expected = f"Bearer {config.token}".encode()
        if not secrets.compare_digest(request.headers.get("authorization", "").encode(), expected):
            return _envelope_error(401, 10000, "Authentication error")
        model = request.path_params["model"]
        if model not in MODELS:
            return _envelope_error(
                400, 5007, f"No such model @cf/black-forest-labs/{model} or task"
            )
        body = await _read_body(request, config.max_body_bytes)
        if body is None:
            return _envelope_error(413, 3006, "Request is too large")
        if seen.content_type != "multipart/form-data":
            return _envelope_error(400, 5004, "required properties at '/' are 'multipart'")

        async def replay() -> AsyncGenerator[bytes, None]:
            yield body

        fields: dict[str, str] = {}
        files: dict[str, bytes] = {}
        parser = MultiPartParser(request.headers, replay(), max_part_size=config.max_body_bytes)
        try:
            form = await parser.parse()
        except MultiPartException as exc:
            return _envelope_error(400, 5004, f"Malformed multipart body: {exc}")
        try:
            for name, value in form.multi_items():
                # Repeated names: the first occurrence wins.
                if isinstance(value, UploadFile):
                    if name not in files:
                        files[name] = await value.read()
                        seen.files[name] = {"bytes": len(files[name]), "filename": value.filename}
                else:
                    fields.setdefault(name, value)
        finally:
            await form.close()
        seen.fields = fields
        seen.prompt = fields.get("prompt")

        sizes = await run_in_threadpool(lambda: {n: probe_image(d) for n, d in files.items()})
        for name, size in sizes.items():
            seen.files[name]["width"], seen.files[name]["height"] = size or (None, None)
        try:
            job = _validate(model, fields, files, sizes, config.input_max_side)
        except _Invalid as exc:
            return _envelope_error(400, 5004, str(exc))
        return await self._generate(job, seen)

    async def _generate(self, job: _Job, seen: _Seen) -> Response:
        """Apply latency and the request's fault, then answer (usually with a picture)."""
        config = self.config
        fault = self.plan.next_fault(job.prompt)
        seen.fault = fault.name
        delay = config.latency_seconds + random.uniform(0.0, config.latency_jitter_seconds)
        if delay > 0:
            await asyncio.sleep(delay)
        if fault.name == "hang":
            await asyncio.sleep(config.hang_seconds)
        if fault.name in ERROR_FAULTS:
            status, code, message = ERROR_FAULTS[fault.name]
            return _envelope_error(status, code, message, fault.retry_after)
        if fault.name == "500":
            headers = {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
            page = "<html><body><h1>500 Internal Server Error</h1></body></html>"
            return HTMLResponse(page, status_code=500, headers=headers)
        if fault.name == "nonjson":
            return PlainTextResponse("upstream connect error or disconnect/reset before headers")

        cost = neurons(job.model, job.width, job.height, job.steps, job.input_sizes)
        if fault.name == "badbase64":
            # Fails even lenient decoders: after dropping non-alphabet chars the length is wrong.
            return _envelope_image("!!not-valid-base64!!", cost)
        if fault.name == "notimage":
            return _envelope_image(base64.b64encode(b"this is not an image").decode(), cost)
        width, height = job.width, job.height
        if fault.name == "wrongsize":
            width, height = width // 2, height // 2
        seed = job.seed if job.seed is not None else random.randrange(2**32)
        if self.cache is not None:
            body = await self.cache.body(width, height, seed)
            return Response(body, media_type="application/json", headers=_neurons(cost))
        png = await run_in_threadpool(
            render_png, job.model, job.prompt, seed, width, height, job.inputs
        )
        return _envelope_image(base64.b64encode(png).decode(), cost)

    async def set_script(self, request: Request) -> Response:
        """POST /__sim/script {"prompt": str | null, "sequence": [fault, ...]}."""
        try:
            payload = await request.json()
            prompt, sequence = payload["prompt"], payload["sequence"]
            if prompt is not None and not isinstance(prompt, str):
                raise ValueError("prompt must be a string or null")
            if not isinstance(sequence, list) or not all(isinstance(s, str) for s in sequence):
                raise ValueError("sequence must be a list of fault names")
            self.plan.set_script(prompt, sequence)
        except (ValueError, KeyError, TypeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"prompt": prompt, "sequence": sequence})

    async def clear_scripts(self, request: Request) -> Response:
        """DELETE /__sim/script."""
        self.plan.clear_scripts()
        return JSONResponse({"cleared": True})

    async def stats(self, request: Request) -> Response:
        """GET /__sim/stats."""
        return JSONResponse(
            {
                "requests": self.requests,
                "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight,
                "by_prompt": dict(self.by_prompt),
                "by_status": dict(self.by_status),
                # Pictures drawn and encoded; with the cache on, answers served without drawing.
                "renders": renders() - self.renders_before,
                "cache_hits": None if self.cache is None else self.cache.hits,
            }
        )

    async def reset_stats(self, request: Request) -> Response:
        """POST /__sim/reset."""
        self.reset()
        return JSONResponse({"reset": True})

    async def recorded(self, request: Request) -> Response:
        """GET /__sim/requests?prompt=... (the last 100 requests with that prompt)."""
        prompt = request.query_params.get("prompt")
        if prompt is None:
            return JSONResponse({"error": "query parameter 'prompt' is required"}, status_code=400)
        return JSONResponse(list(self.records.get(prompt, ())))


def create_app(config: SimulatorConfig) -> Starlette:
    """Build the simulator ASGI app; raises ValueError for an invalid fault configuration."""
    sim = Simulator(config)
    app = Starlette(
        routes=[
            Route(RUN_PATH, sim.run, methods=["POST"]),
            Route("/__sim/script", sim.set_script, methods=["POST"]),
            Route("/__sim/script", sim.clear_scripts, methods=["DELETE"]),
            Route("/__sim/stats", sim.stats, methods=["GET"]),
            Route("/__sim/reset", sim.reset_stats, methods=["POST"]),
            Route("/__sim/requests", sim.recorded, methods=["GET"]),
        ]
    )
    app.state.simulator = sim
    return app
