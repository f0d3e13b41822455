"""`python -m app.simulator ...` (or `fluxgate simulate-upstream ...`): run the simulator."""

from __future__ import annotations

import argparse

from app.core.settings import ConfigError, simulator_settings
from app.simulator import SimulatorConfig, serve
from app.simulator.faults import parse_rates


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The simulator's options, shared by this module and the `fluxgate` command."""
    parser.add_argument("--port", type=int, default=8787)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per generation")
    parser.add_argument("--latency-jitter", type=float, default=0.0, help="extra 0..S seconds")
    parser.add_argument(
        "--token",
        default=None,
        help="expected bearer token (default: FLUXGATE_CF_API_TOKEN, or its file in the secrets "
        "folder, else 'simulator-token')",
    )
    parser.add_argument(
        "--faults", default="", help="fault rates, e.g. 3040=0.1,500=0.05,hang=0.01,3021@2=0.1"
    )
    parser.add_argument("--hang-seconds", type=float, default=3600.0)
    parser.add_argument("--max-body-bytes", type=int, default=10 * 1024 * 1024)
    parser.add_argument("--input-max-side", type=int, default=512)
    parser.add_argument("--seed", type=int, default=None, help="seed for the fault-rate RNG")
    parser.add_argument(
        "--cache",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="draw each picture once (4 per size, chosen by the seed) and answer repeats with "
        "the same bytes, so that benchmarks measure the gateway rather than the drawing "
        "(default: FLUXGATE_SIMULATOR_CACHE, else off)",
    )


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Build the config from parsed options and serve until interrupted."""
    try:
        faults = parse_rates(args.faults)
    except ValueError as exc:
        parser.error(f"--faults: {exc}")
    # Read here, not when the parser is built: every other command would read them too.
    settings = simulator_settings()
    config = SimulatorConfig(
        token=args.token if args.token is not None else settings.cf_api_token,
        latency_seconds=args.latency,
        latency_jitter_seconds=args.latency_jitter,
        faults=faults,
        hang_seconds=args.hang_seconds,
        max_body_bytes=args.max_body_bytes,
        input_max_side=args.input_max_side,
        seed=args.seed,
        cache=args.cache if args.cache is not None else settings.simulator_cache,
    )
    serve(config, args.host, args.port)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m app.simulator", description=__doc__)
    add_arguments(parser)
    try:
        run(parser, parser.parse_args(argv))
    except ConfigError as error:  # e.g. the port is taken
        raise SystemExit(f"simulator: {error}") from None


if __name__ == "__main__":
    main()
