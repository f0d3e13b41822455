"""There is no Docker engine here, so check what can be checked: every command the compose file
and the Dockerfile run is a real `fluxgate` command, and names and ports match the settings."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tomllib
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.cli.commands import build_parser
from app.core.settings import Settings
from tests.harness.processes import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
FLUXGATE_SERVICES = {"migrate", "api", "worker", "webhooks", "beat", "simulator"}
MONITORING_SERVICES = {"prometheus", "grafana"}
DEPLOY = ROOT / "deploy"
SETTINGS = {f"FLUXGATE_{name.upper()}" for name in Settings.model_fields}


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
    assert {"FLUXGATE_CF_ACCOUNT_ID", "FLUXGATE_CF_API_TOKEN", "FLUXGATE_CF_BASE_URL"} <= names


def test_webhooks_have_workers_of_their_own_and_every_queue_is_consumed() -> None:
    def queues(name: str) -> set[str]:
        command = SERVICES[name]["command"]
        return set(command[command.index("--queues") + 1].split(","))

    assert queues("webhooks") == {"webhooks"}
    assert "webhooks" not in queues("worker")
    assert queues("worker") | queues("webhooks") == {"jobs", "webhooks", "maintenance"}


def test_database_and_broker_point_at_the_services() -> None:
    env = SERVICES["api"]["environment"]
    assert "@postgres:5432/" in env["FLUXGATE_DATABASE_URL"]
    assert env["FLUXGATE_DATABASE_URL"].startswith("postgresql://")
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
    assert targets["api"] == int(flag(api, "--port"))
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
    assert entrypoint == ["fluxgate"]
    [cmd] = [exec_form(rest) for keyword, rest in instructions if keyword == "CMD"]
    parses_as_fluxgate(cmd)
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


def test_the_image_installs_the_extras_it_is_built_with() -> None:
    """``docker build --build-arg EXTRAS=otel``: the install line, run by the image's shell
    with pip replaced by echo, names the extra; without the argument, none."""
    [install] = [
        rest
        for keyword, rest in dockerfile_instructions()
        if keyword == "RUN" and "pip install" in rest
    ]
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert "otel" in extras
    echoed = install.replace("/opt/fluxgate/bin/pip install", "echo")
    for value, target in (("", "."), ("otel", ".[otel]")):
        done = subprocess.run(
            ["sh", "-c", echoed], env={"EXTRAS": value}, capture_output=True, text=True, check=True
        )
        assert done.stdout.split() == ["-c", "constraints.txt", target]


def test_docker_ignores_local_state() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", ".env", ".fluxgate"):
        assert entry in ignored


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
