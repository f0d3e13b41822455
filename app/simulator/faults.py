"""Fault injection for the simulator: fault names, parsing, and the per-request draw.

Pure: no I/O and no web imports, so the server only asks "which fault now?".
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# name -> (HTTP status, Cloudflare error code, message) for faults answered with an error envelope.
# 3040/3021/3036/3007/3008 follow workers-ai.md; 502/503 codes are not documented upstream, so
# these are plausible stand-ins for an edge/gateway failure.
ERROR_FAULTS: dict[str, tuple[int, int, str]] = {
    "3040": (429, 3040, "Capacity temporarily exceeded, please try again."),
    "3021": (429, 3021, "Rate limited"),
    "3036": (
        429,
        3036,
        "You have used up your daily free allocation of 10,000 neurons, please upgrade to "
        "Cloudflare's Workers Paid plan if you would like to continue usage.",
    ),
    "3007": (408, 3007, "Request timeout"),
    "3008": (408, 3008, "Request aborted"),
    "502": (502, 1031, "Bad gateway"),
    "503": (503, 1032, "Service temporarily unavailable"),
}

# Faults that are not an error envelope: the server implements each one specially.
OTHER_FAULTS = frozenset({"500", "hang", "nonjson", "badbase64", "notimage", "wrongsize", "ok"})

FAULT_NAMES = frozenset(ERROR_FAULTS) | OTHER_FAULTS

# Only faults that answer with an HTTP error can meaningfully carry Retry-After.
_RETRY_AFTER_ALLOWED = frozenset(ERROR_FAULTS) | {"500"}


@dataclass(frozen=True)
class Fault:
    """One fault to apply to one request; `retry_after` is sent as the Retry-After header."""

    name: str
    retry_after: int | None = None

    def __str__(self) -> str:
        return self.name if self.retry_after is None else f"{self.name}@{self.retry_after}"


OK = Fault("ok")


def parse_fault(spec: str) -> Fault:
    """Parse "3040" or "3040@2" (Retry-After: 2) into a Fault; raise ValueError if unknown."""
    name, sep, after = spec.strip().partition("@")
    if name not in FAULT_NAMES:
        raise ValueError(f"unknown fault {name!r}; known: {', '.join(sorted(FAULT_NAMES))}")
    if not sep:
        return Fault(name)
    if name not in _RETRY_AFTER_ALLOWED:
        raise ValueError(f"fault {name!r} cannot carry a Retry-After")
    if not after.isdigit():
        raise ValueError(f"Retry-After in {spec!r} must be a non-negative integer")
    return Fault(name, int(after))


def parse_rates(spec: str) -> dict[str, float]:
    """Parse a CLI spec like "3040=0.1,500@2=0.05,hang=0.01" into {fault spec: probability}."""
    rates: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"fault rate {item!r} must look like NAME=PROBABILITY")
        rates[key.strip()] = float(value)
    validate_rates(rates)
    return rates


def validate_rates(rates: Mapping[str, float]) -> list[tuple[Fault, float]]:
    """Check names and probabilities (each in [0, 1], summing to at most 1)."""
    parsed = [(parse_fault(key), float(p)) for key, p in rates.items()]
    if any(not 0.0 <= p <= 1.0 for _, p in parsed):
        raise ValueError("fault probabilities must be between 0 and 1")
    if sum(p for _, p in parsed) > 1.0 + 1e-9:
        raise ValueError("fault probabilities must sum to at most 1")
    return parsed


class FaultPlan:
    """Chooses the fault for each request: per-prompt script, then global script, then rates."""

    def __init__(self, rates: Mapping[str, float], seed: int | None = None) -> None:
        self._rates = validate_rates(rates)
        self._rng = random.Random(seed)
        self._scripts: dict[str, deque[Fault]] = {}
        self._global: deque[Fault] = deque()

    def set_script(self, prompt: str | None, sequence: Iterable[str]) -> None:
        """Replace the script for `prompt` (None: the global one); raise ValueError if invalid."""
        faults = deque(parse_fault(spec) for spec in sequence)
        if prompt is None:
            self._global = faults
        else:
            self._scripts[prompt] = faults

    def clear_scripts(self) -> None:
        """Forget every scripted sequence."""
        self._scripts.clear()
        self._global.clear()

    def next_fault(self, prompt: str) -> Fault:
        """Consume the fault for one request with this prompt."""
        script = self._scripts.get(prompt)
        if script:
            fault = script.popleft()
            if not script:
                del self._scripts[prompt]
            return fault
        if self._global:
            return self._global.popleft()
        # One draw per request, so a seeded plan replays the same faults for the same traffic.
        draw = self._rng.random()
        total = 0.0
        for fault, probability in self._rates:
            total += probability
            if draw < total:
                return fault
        return OK
