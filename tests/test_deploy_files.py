"""There is no Docker engine here, so check what can be checked: the compose file is valid by the
Compose Specification's schema (vendored, tests/schemas/), every command the compose file and the
Dockerfile run is a real `fluxgate` command, and names, ports, secrets and limits match the
settings."""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shlex
import subprocess
import sys
from importlib.metadata import requires, version
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

from app.cli.commands import build_parser
from app.core.settings import DEFAULT_SECRETS_DIR, Settings
from tests.deploy_schemas import SCHEMAS, compose_validator
from tests.harness.processes import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
FLUXGATE_SERVICES = {"migrate", "api", "worker", "webhooks", "beat", "simulator"}
MONITORING_SERVICES = {"prometheus", "grafana"}
DEPLOY = ROOT / "deploy"
SETTINGS = {f"FLUXGATE_{name.upper()}" for name in Settings.model_fields}
HEARTBEAT_ROLES = ("worker", "webhooks", "beat")


def seconds(duration: str) -> float:
    """A compose duration ("150s", "2m30s") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert "".join(number + unit for number, unit in parts) == duration, duration
    return sum(float(number) * units[unit] for number, unit in parts)


def megabytes(size: str) -> float:
    number, unit = re.fullmatch(r"(\d+)([kmg])", size.lower()).groups()  # type: ignore[union-attr]
    return int(number) * {"k": 1 / 1024, "m": 1, "g": 1024}[unit]


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def exec_form(value: str) -> list[str]:
    parsed = json.loads(value)
    assert isinstance(parsed, list), f"not exec form: {value}"
    return [str(part) for part in parsed]


def parses_as_fluxgate(argv: list[str]) -> None:
    """argparse exits on an unknown command or option; a real command parses."""
    args = build_parser().parse_args(argv)
    assert callable(args.handler)


def test_services_are_the_documented_ones() -> None:
    assert set(SERVICES) == {"postgres", "redis", *FLUXGATE_SERVICES, *MONITORING_SERVICES}
    assert SERVICES["simulator"]["profiles"] == ["simulator"]
    for name in MONITORING_SERVICES:
        assert SERVICES[name]["profiles"] == ["monitoring"]
    for name in FLUXGATE_SERVICES:
        assert SERVICES[name]["build"] == "."
        assert SERVICES[name]["image"] == "fluxgate:local"


@pytest.mark.parametrize("name", sorted(FLUXGATE_SERVICES))
def test_every_service_command_is_a_fluxgate_subcommand(name: str) -> None:
    command = SERVICES[name]["command"]
    assert command[0] in {"migrate", "api", "worker", "beat", "simulate-upstream"}
    parses_as_fluxgate(command)


def test_environment_names_are_settings() -> None:
    for name in FLUXGATE_SERVICES:
        for key in SERVICES[name].get("environment", {}):
            assert key in SETTINGS, key
    example = (ROOT / ".env.example").read_text()
    names = set(re.findall(r"^#?\s*(FLUXGATE_[A-Z_]+)=", example, flags=re.MULTILINE))
    assert names, "the example documents settings"
    # FLUXGATE_PORT is compose's host port for the API, not a gateway setting.
    assert names - {"FLUXGATE_PORT"} <= SETTINGS
    assert {"FLUXGATE_CF_ACCOUNT_ID", "FLUXGATE_CF_BASE_URL"} <= names


def test_the_env_example_marks_what_must_be_filled_and_keeps_secrets_out() -> None:
    """A line left empty is one the operator must fill (and a required one is marked so); the
    secrets are files, named as the compose file mounts them."""
    lines = (ROOT / ".env.example").read_text().splitlines()
    for number, line in enumerate(lines):
        if re.fullmatch(r"FLUXGATE_[A-Z_]+=", line):
            assert lines[number - 1].startswith("# REQUIRED"), line
    assert "FLUXGATE_CF_ACCOUNT_ID=" in lines
    assert not any(
        line.startswith(("FLUXGATE_CF_API_TOKEN", "POSTGRES_PASSWORD")) for line in lines
    )
    files = {secret["file"].removeprefix("./") for secret in COMPOSE["secrets"].values()}
    text = "\n".join(lines)
    for path in files:
        assert f"#   {path}" in text, path


def test_webhooks_have_workers_of_their_own_and_every_queue_is_consumed() -> None:
    def queues(name: str) -> set[str]:
        command = SERVICES[name]["command"]
        return set(command[command.index("--queues") + 1].split(","))

    assert queues("webhooks") == {"webhooks"}
    assert "webhooks" not in queues("worker")
    assert queues("worker") | queues("webhooks") == {"jobs", "webhooks", "maintenance"}


def test_database_and_broker_point_at_the_services() -> None:
    env = SERVICES["api"]["environment"]
    # A user, no password: the password comes from its secret.
    assert env["FLUXGATE_DATABASE_URL"] == "postgresql://fluxgate@postgres:5432/fluxgate"
    assert env["FLUXGATE_REDIS_URL"].startswith("redis://redis:6379/")


def test_ports_match_the_commands() -> None:
    api = SERVICES["api"]
    port = api["command"][api["command"].index("--port") + 1]
    assert any(mapping.endswith(f":{port}") for mapping in api["ports"])
    instructions = dockerfile_instructions()
    assert ("EXPOSE", port) in instructions
    [health] = [rest for keyword, rest in instructions if keyword == "HEALTHCHECK"]
    assert f"127.0.0.1:{port}/healthz" in health
    simulator = SERVICES["simulator"]["command"]
    example = (ROOT / ".env.example").read_text()
    sim_port = simulator[simulator.index("--port") + 1]
    assert f"http://simulator:{sim_port}/client/v4" in example


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_prometheus_scrapes_every_role_where_it_serves_metrics() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {
        sd["names"][0]: sd["port"]
        for job in config["scrape_configs"]
        for sd in job["dns_sd_configs"]
    }
    api = SERVICES["api"]["command"]
    # /metrics is on the API's own port unless it is given one of its own.
    api_metrics_port = (
        flag(api, "--metrics-port") if "--metrics-port" in api else flag(api, "--port")
    )
    assert targets["api"] == int(api_metrics_port)
    for role in ("worker", "webhooks"):
        command = SERVICES[role]["command"]
        assert targets[role] == int(flag(command, "--metrics-port"))
        # Reachable from Prometheus's container, and never published on the host.
        assert flag(command, "--metrics-host") == "0.0.0.0"
        assert "ports" not in SERVICES[role]
        parses_as_fluxgate(command)
    mounted = {
        volume.split(":")[1]: volume.split(":")[0] for volume in SERVICES["prometheus"]["volumes"]
    }
    assert mounted["/etc/prometheus/prometheus.yml"] == "./deploy/prometheus/prometheus.yml"
    assert "--config.file=/etc/prometheus/prometheus.yml" in SERVICES["prometheus"]["command"]


def test_a_plain_up_needs_no_monitoring_variable() -> None:
    """Compose substitutes variables in the whole file, profiles or not: a required one (``:?``)
    would stop a plain ``docker compose up``."""
    text = (ROOT / "docker-compose.yml").read_text()
    assert re.findall(r"\$\{[A-Z_]+:\?", text) == []


def test_grafana_is_provisioned_with_the_dashboard_and_its_datasource() -> None:
    grafana = SERVICES["grafana"]
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in grafana["volumes"]}
    provisioning = DEPLOY / "grafana" / "provisioning"
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    [source] = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert source["url"] == "http://prometheus:9090"
    [provider] = yaml.safe_load((provisioning / "dashboards" / "fluxgate.yml").read_text())[
        "providers"
    ]
    dashboard_path = provider["options"]["path"]
    assert mounts[f"{dashboard_path}/fluxgate.json"] == "./deploy/grafana/fluxgate.json"
    dashboard = json.loads((DEPLOY / "grafana" / "fluxgate.json").read_text())
    panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    assert len(panels) >= 20
    for panel in panels:
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == source["uid"]
    # Panels do not overlap.
    cells = set()
    for panel in dashboard["panels"]:
        box = panel["gridPos"]
        for dx in range(box["w"]):
            for dy in range(box["h"]):
                cell = (box["x"] + dx, box["y"] + dy)
                assert cell not in cells, panel["title"]
                cells.add(cell)


def test_stateful_services_persist_and_are_checked() -> None:
    assert "--appendonly" in SERVICES["redis"]["command"]
    assert (
        SERVICES["redis"]["command"][SERVICES["redis"]["command"].index("--appendonly") + 1]
        == "yes"
    )
    for name in ("postgres", "redis"):
        assert SERVICES[name]["volumes"], name
        assert SERVICES[name]["healthcheck"]["test"], name
    assert set(COMPOSE["volumes"]) == {
        "postgres-data",
        "redis-data",
        "prometheus-data",
        "grafana-data",
    }


def test_migrate_runs_once_before_the_others() -> None:
    assert SERVICES["migrate"]["restart"] == "no"
    assert SERVICES["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker", "webhooks", "beat"):
        assert (
            SERVICES[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        )
        assert SERVICES[name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_dockerfile_is_multi_stage_slim_non_root_with_a_real_entrypoint() -> None:
    instructions = dockerfile_instructions()
    stages = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert len(stages) >= 2
    assert all("slim" in stage for stage in stages)
    [user] = [rest for keyword, rest in instructions if keyword == "USER"]
    assert user not in ("root", "0")
    [entrypoint] = [exec_form(rest) for keyword, rest in instructions if keyword == "ENTRYPOINT"]
    # tini, Debian's, as PID 1: it passes signals on and reaps orphans.
    assert entrypoint == ["tini", "--", "fluxgate"]
    runtime = instructions[[keyword for keyword, _ in instructions].index("FROM", 1) :]
    assert any(
        keyword == "RUN" and "apt-get install -y --no-install-recommends tini" in rest
        for keyword, rest in runtime
    )
    [cmd] = [exec_form(rest) for keyword, rest in instructions if keyword == "CMD"]
    parses_as_fluxgate(cmd)
    # The per-core default would count the host's cores, which a container's quota is not.
    assert cmd[cmd.index("--workers") + 1] == "2"
    # Every source the image copies exists in the repository.
    for keyword, rest in instructions:
        if keyword == "COPY" and not rest.startswith("--from"):
            for source in shlex.split(rest)[:-1]:
                assert (ROOT / source).exists(), source
    # The HEALTHCHECK command is valid Python.
    [health] = [rest for keyword, rest in instructions if keyword == "HEALTHCHECK"]
    command = exec_form(health.split("CMD", 1)[1].strip())
    assert command[:2] == ["python", "-c"]
    compile(command[2], "<healthcheck>", "exec")


def test_the_base_image_is_pinned_by_version() -> None:
    stages = [rest.split()[0] for keyword, rest in dockerfile_instructions() if keyword == "FROM"]
    assert len(set(stages)) == 1, stages
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", stages[0])


def test_dependencies_are_installed_before_the_code_is_copied() -> None:
    """A change to app/ (or the README) reuses the dependencies' layer: what is copied before
    it is pyproject.toml, constraints.txt and the script that lists the requirements."""
    build = dockerfile_instructions()
    build = build[: [keyword for keyword, _ in build].index("FROM", 1)]
    [dependencies] = [i for i, (_, rest) in enumerate(build) if "-r requirements.txt" in rest]
    [package] = [i for i, (_, rest) in enumerate(build) if "--no-deps" in rest]
    copied_before = {
        source
        for keyword, rest in build[:dependencies]
        if keyword == "COPY"
        for source in shlex.split(rest)[:-1]
    }
    assert copied_before == {"pyproject.toml", "constraints.txt", "scripts/image_requirements.py"}
    assert "pip install -c constraints.txt -r requirements.txt" in build[dependencies][1]
    assert ("COPY", "app ./app") in build[dependencies:package]
    assert "pip check" in build[package][1]


@pytest.mark.parametrize("extras", ["", "otel"])
def test_the_dependency_layer_installs_what_the_package_requires(extras: str) -> None:
    """The script the image runs (``python image_requirements.py "$EXTRAS"``) lists exactly the
    requirements of the installed package with those extras."""
    [run] = [
        rest
        for keyword, rest in dockerfile_instructions()
        if keyword == "RUN" and "image_requirements" in rest
    ]
    assert run.startswith('python image_requirements.py "$EXTRAS" > requirements.txt')
    listed = subprocess.run(
        [sys.executable, "scripts/image_requirements.py", extras],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    declared = set()
    for text in requires("fluxgate") or []:
        requirement = Requirement(text)
        extra = re.search(r'extra == "([a-z]+)"', str(requirement.marker or ""))
        if extra is None or extra.group(1) in extras.split(","):
            requirement.marker = None
            declared.add(str(requirement))
    assert {str(Requirement(line)) for line in listed if line} == declared


def test_an_unknown_extra_stops_the_build() -> None:
    done = subprocess.run(
        [sys.executable, "scripts/image_requirements.py", "otle"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    assert "no extra 'otle'" in done.stderr


def test_docker_ignores_local_state() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", ".env", ".fluxgate", "secrets"):
        assert entry in ignored
    assert "secrets/" in (ROOT / ".gitignore").read_text().split()


def test_console_script_is_declared() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'fluxgate = "app.cli:main"' in pyproject
    assert Path(ROOT / "constraints.txt").exists()


@pytest.mark.parametrize(
    ("package", "floor"),
    [("starlette", (1, 3, 1)), ("python-multipart", (0, 0, 32)), ("pillow", (13, 0))],
)
def test_upload_parsers_carry_the_security_fixes(package: str, floor: tuple[int, ...]) -> None:
    installed = tuple(int(part) for part in version(package).split(".")[: len(floor)])
    assert installed >= floor
    pinned = re.search(
        rf"^{package}==([\d.]+)$", (ROOT / "constraints.txt").read_text(), re.M | re.I
    )
    assert pinned is not None
    assert tuple(int(part) for part in pinned.group(1).split(".")[: len(floor)]) >= floor


def test_the_compose_file_is_valid_by_the_compose_specification() -> None:
    validator = compose_validator()
    assert [error.message for error in validator.iter_errors(COMPOSE)] == []
    # The schema is strict: a misspelt key is found.
    broken = copy.deepcopy(COMPOSE)
    broken["services"]["worker"]["mem_limt"] = "1g"
    assert not validator.is_valid(broken)


def test_the_vendored_schemas_are_the_recorded_files_with_their_licences() -> None:
    manifest = json.loads((SCHEMAS / "manifest.json").read_text())
    recorded = set()
    for package in manifest["packages"]:
        folder = SCHEMAS / package["folder"]
        assert re.fullmatch(r"\d+\.\d+\.\d+", package["version"])
        assert package["wheel"].startswith(
            package["name"].replace("-", "_") + "-" + package["version"]
        )
        assert re.fullmatch(r"[0-9a-f]{64}", package["wheel_sha256"])
        assert "Apache" in (folder / package["licence_file"]).read_text()
        for name, meta in package["files"].items():
            assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == meta["sha256"], name
            recorded.add(folder / name)
    on_disk = {path for path in SCHEMAS.rglob("*") if path.is_file()} - {SCHEMAS / "manifest.json"}
    assert on_disk == recorded


def test_no_container_name_and_only_loopback_ports() -> None:
    """`--scale worker=N` needs no fixed name and no host port; whatever is published listens on
    this machine only (the README says how to expose the API)."""
    for name, service in SERVICES.items():
        assert "container_name" not in service, name
        for mapping in service.get("ports", []):
            assert mapping.startswith("127.0.0.1:"), (name, mapping)
    published = {name for name, service in SERVICES.items() if service.get("ports")}
    assert published == {"api", "prometheus", "grafana"}


@pytest.mark.parametrize("role", HEARTBEAT_ROLES)
def test_workers_webhooks_and_beat_are_checked_by_their_heartbeat(role: str) -> None:
    command = SERVICES[role]["command"]
    parses_as_fluxgate(command)
    path = flag(command, "--heartbeat-file")
    health = SERVICES[role]["healthcheck"]
    assert "disable" not in health
    kind, python, dash_c, check = health["test"]
    assert (kind, python, dash_c) == ("CMD", "python", "-c")
    assert f"os.stat({path!r})" in check
    compile(check, "<healthcheck>", "exec")
    # Older than several beats (every 10 s) before it counts as stale.
    assert int(re.search(r"> (\d+)\)", check).group(1)) >= 30  # type: ignore[union-attr]


def test_stop_grace_period_outlasts_an_upstream_call() -> None:
    defaults = Settings.model_fields
    call = float(defaults["upstream_connect_timeout_seconds"].default) + float(
        defaults["upstream_timeout_seconds"].default
    )
    for name in FLUXGATE_SERVICES:
        assert seconds(SERVICES[name]["stop_grace_period"]) > call, name


def test_every_service_has_a_memory_limit_and_rotated_logs() -> None:
    for name, service in SERVICES.items():
        assert megabytes(service["mem_limit"]) >= 256, name
        logging = service["logging"]
        assert logging["driver"] == "json-file", name
        assert megabytes(logging["options"]["max-size"]) <= 100, name
        assert int(logging["options"]["max-file"]) >= 2, name
    decode = int(Settings.model_fields["input_decode_memory_bytes"].default) / 1024 / 1024
    # Each API process decodes up to INPUT_DECODE_MEMORY_BYTES of images at once, beside the
    # rest; the processes are pinned (the default, one per core, is the host's count).
    command = SERVICES["api"]["command"]
    processes = int(command[command.index("--workers") + 1])
    assert megabytes(SERVICES["api"]["mem_limit"]) >= processes * decode + 512


def test_secrets_are_files_and_no_password_has_a_default() -> None:
    """The database password and the Cloudflare token reach the containers as files in
    /run/secrets named after their settings; no environment carries them, none defaults."""
    text = (ROOT / "docker-compose.yml").read_text()
    assert "PASSWORD:-" not in text.replace("GRAFANA_ADMIN_PASSWORD:-", "")
    for secret in COMPOSE["secrets"].values():
        assert secret["file"].startswith("./secrets/")
    for name in FLUXGATE_SERVICES:
        service = SERVICES[name]
        targets = {mount["target"]: mount["source"] for mount in service["secrets"]}
        assert targets == {
            "fluxgate_database_password": "database_password",
            "fluxgate_cf_api_token": "cf_api_token",
        }
        for target in targets:
            assert target.removeprefix("fluxgate_") in Settings.model_fields
        for key in service["environment"]:
            assert not re.search("PASSWORD|TOKEN", key), (name, key)
    postgres = SERVICES["postgres"]
    assert "POSTGRES_PASSWORD" not in postgres["environment"]
    assert postgres["environment"]["POSTGRES_PASSWORD_FILE"] == (
        f"{DEFAULT_SECRETS_DIR}/database_password"
    )
    assert postgres["secrets"] == ["database_password"]


def test_the_readme_starts_compose_with_an_admin_key_and_documents_scaling() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Run it with docker compose") :]
    section = section[: section.index("\n## ", 1)]
    first = next(line for line in section.splitlines() if "keys create" in line)
    assert first.startswith("docker compose exec api fluxgate keys create")
    parses_as_fluxgate(shlex.split(first)[5:])
    assert "--admin" in first
    assert "--scale worker=" in section
    for path in (secret["file"].removeprefix("./") for secret in COMPOSE["secrets"].values()):
        assert f"> {path}" in section, path  # the commands create every secret file
