"""deploy/kubernetes/, checked offline: every object is valid by the strict Kubernetes v1.33
schemas vendored in tests/schemas/ (no unknown field), and the objects agree with each other and
with the application (labels and selectors, ports, probe paths the API answers, commands the
CLI takes, settings that exist, the compose file's heartbeat check)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from app.cli.commands import build_parser
from app.core.settings import DEFAULT_SECRETS_DIR, Settings
from tests.deploy_schemas import kubernetes_errors, kubernetes_schema_file
from tests.harness.processes import ROOT
from tests.harness.stack import Stack

KUBERNETES = ROOT / "deploy" / "kubernetes"
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SETTINGS = {f"FLUXGATE_{name.upper()}" for name in Settings.model_fields}


def documents(path: Path) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


OBJECTS = [
    (path.name, document)
    for path in sorted(KUBERNETES.glob("*.yaml"))
    if path.name != "kustomization.yaml"
    for document in documents(path)
]
WORKLOADS = {
    document["metadata"]["name"]: document
    for _, document in OBJECTS
    if document["kind"] in ("Deployment", "Job")
}


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [document for _, document in OBJECTS if document["kind"] == kind]


def container(workload: dict[str, Any]) -> dict[str, Any]:
    [only] = workload["spec"]["template"]["spec"]["containers"]
    return dict(only)


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


@pytest.mark.parametrize(
    ("name", "document"),
    OBJECTS,
    ids=[f"{name}:{doc['kind']}/{doc['metadata']['name']}" for name, doc in OBJECTS],
)
def test_every_object_is_valid_by_the_strict_kubernetes_schema(
    name: str, document: dict[str, Any]
) -> None:
    assert kubernetes_schema_file(document).exists(), f"no vendored schema for {name}"
    assert kubernetes_errors(document) == []


def test_the_schemas_are_strict() -> None:
    """A misspelt field deep in a pod, or a wrong type, is found."""
    deployment = copy.deepcopy(WORKLOADS["fluxgate-api"])
    [api] = deployment["spec"]["template"]["spec"]["containers"]
    api["readinessProbe"]["httpGet"]["paht"] = "/"
    assert any("paht" in error for error in kubernetes_errors(deployment))
    deployment = copy.deepcopy(WORKLOADS["fluxgate-api"])
    deployment["spec"]["replicas"] = "two"
    assert kubernetes_errors(deployment)


def test_the_kustomization_applies_every_file_but_the_secret_example() -> None:
    [kustomization] = documents(KUBERNETES / "kustomization.yaml")
    listed = set(kustomization["resources"])
    on_disk = {path.name for path in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk - {"secret.example.yaml"}
    # The image name the workloads use is the one it rewrites.
    [image] = kustomization["images"]
    for workload in WORKLOADS.values():
        assert container(workload)["image"] == image["name"]


def test_the_roles_are_all_there() -> None:
    assert set(WORKLOADS) == {
        "fluxgate-api",
        "fluxgate-worker",
        "fluxgate-webhooks",
        "fluxgate-beat",
        "fluxgate-migrate",
    }
    assert WORKLOADS["fluxgate-migrate"]["kind"] == "Job"
    beat = WORKLOADS["fluxgate-beat"]["spec"]
    # Two beats would send every periodic task twice, even for the moment of a rollout.
    assert beat["replicas"] == 1
    assert beat["strategy"] == {"type": "Recreate"}


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_every_command_is_a_fluxgate_command_run_through_the_images_init(name: str) -> None:
    spec = container(WORKLOADS[name])
    # `args` replaces the image's CMD and keeps its ENTRYPOINT (tini -- fluxgate).
    assert "command" not in spec
    parsed = build_parser().parse_args(spec["args"])
    assert callable(parsed.handler)


def test_labels_and_selectors_agree() -> None:
    templates = {
        name: workload["spec"]["template"]["metadata"]["labels"]
        for name, workload in WORKLOADS.items()
    }
    for name, workload in WORKLOADS.items():
        selector = workload["spec"].get("selector", {}).get("matchLabels")
        if workload["kind"] == "Deployment":
            assert selector == templates[name], name
            assert workload["metadata"]["labels"] == templates[name]

    def selected(labels: dict[str, str]) -> set[str]:
        return {
            name
            for name, template in templates.items()
            if labels.items() <= template.items() and WORKLOADS[name]["kind"] == "Deployment"
        }

    budgets = {
        budget["metadata"]["name"]: selected(budget["spec"]["selector"]["matchLabels"])
        for budget in of_kind("PodDisruptionBudget")
    }
    assert budgets == {
        "fluxgate-api": {"fluxgate-api"},
        "fluxgate-worker": {"fluxgate-worker"},
        "fluxgate-webhooks": {"fluxgate-webhooks"},
    }
    [service] = of_kind("Service")
    assert selected(service["spec"]["selector"]) == {"fluxgate-api"}
    api = container(WORKLOADS["fluxgate-api"])
    ports = {port["name"]: port["containerPort"] for port in api["ports"]}
    [service_port] = service["spec"]["ports"]
    assert service_port["targetPort"] in ports
    assert ports[service_port["targetPort"]] == int(flag(api["args"], "--port"))


def test_the_api_probes_name_its_port() -> None:
    api = container(WORKLOADS["fluxgate-api"])
    ports = {port["name"]: port["containerPort"] for port in api["ports"]}
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert ports[api[probe]["httpGet"]["port"]] == int(flag(api["args"], "--port"))


@pytest.fixture(scope="module")
def embedded_api(log_dir: Path) -> Iterator[Stack]:
    stack = Stack(log_dir, backend="embedded")
    try:
        stack.start_api()
        yield stack
    finally:
        stack.close()


def test_the_api_answers_the_probes_paths(embedded_api: Stack) -> None:
    api = container(WORKLOADS["fluxgate-api"])
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        path = api[probe]["httpGet"]["path"]
        assert httpx.get(f"{embedded_api.api_url}{path}", timeout=10).status_code == 200, path


@pytest.mark.parametrize("name", ["fluxgate-worker", "fluxgate-webhooks", "fluxgate-beat"])
def test_workers_and_beat_are_live_while_their_heartbeat_is_fresh(name: str) -> None:
    """The liveness probe is the compose file's heartbeat check, on the file the role touches."""
    spec = container(WORKLOADS[name])
    heartbeat = flag(spec["args"], "--heartbeat-file")
    assert heartbeat.startswith("/tmp/")  # the writable emptyDir
    command = spec["livenessProbe"]["exec"]["command"]
    role = name.removeprefix("fluxgate-")
    assert ["CMD", *command] == COMPOSE["services"][role]["healthcheck"]["test"]
    assert flag(COMPOSE["services"][role]["command"], "--heartbeat-file") == heartbeat


def test_the_workers_queues_and_metrics_ports_match_compose() -> None:
    for role in ("worker", "webhooks"):
        spec = container(WORKLOADS[f"fluxgate-{role}"])
        compose = COMPOSE["services"][role]["command"]
        for name in ("--queues", "--metrics-port"):
            assert flag(spec["args"], name) == flag(compose, name)
        [port] = spec["ports"]
        assert port["containerPort"] == int(flag(spec["args"], "--metrics-port"))


def test_a_worker_has_time_to_finish_an_upstream_call() -> None:
    defaults = Settings.model_fields
    call = float(defaults["upstream_connect_timeout_seconds"].default) + float(
        defaults["upstream_timeout_seconds"].default
    )
    grace = WORKLOADS["fluxgate-worker"]["spec"]["template"]["spec"]
    assert grace["terminationGracePeriodSeconds"] > call


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_pods_run_locked_down_with_resources_and_the_secret_files(name: str) -> None:
    pod = WORKLOADS[name]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's USER
    spec = container(WORKLOADS[name])
    security = spec["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= set(spec["resources"]["requests"])
    assert "memory" in spec["resources"]["limits"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in spec["volumeMounts"]}
    # /tmp is the only writable place: the API's metrics directory, the heartbeat files.
    assert "emptyDir" in volumes[mounts["/tmp"]]
    secret = volumes[mounts[DEFAULT_SECRETS_DIR]]["secret"]
    [example] = of_kind("Secret")
    assert secret["secretName"] == example["metadata"]["name"]
    # Readable by the group the pod's files get (fsGroup), not by others.
    assert secret["defaultMode"] == 0o440
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
    [source] = spec["envFrom"]
    [config] = of_kind("ConfigMap")
    assert source["configMapRef"]["name"] == config["metadata"]["name"]


def test_the_config_and_the_secret_hold_real_settings_and_no_secret_in_the_config() -> None:
    [config] = of_kind("ConfigMap")
    assert set(config["data"]) <= SETTINGS
    user_part = config["data"]["FLUXGATE_DATABASE_URL"].split("//", 1)[1].split("@", 1)[0]
    assert ":" not in user_part  # the password is in the Secret
    [secret] = of_kind("Secret")
    # The file names the settings read from /run/secrets.
    assert set(secret["stringData"]) == {"fluxgate_database_password", "fluxgate_cf_api_token"}
    for key in secret["stringData"]:
        assert key.upper() in SETTINGS
        assert secret["stringData"][key] == "change-me"  # an example, never a real value


def test_an_api_pod_runs_one_process_within_its_memory_limit() -> None:
    """The default (one process per core) counts the node's cores, which the pod's limit does
    not: the pod pins one process, and its limit holds that process's image decoding."""
    spec = container(WORKLOADS["fluxgate-api"])
    assert flag(spec["args"], "--workers") == "1"
    limit = spec["resources"]["limits"]["memory"]
    assert limit.endswith("Mi"), limit
    decode = int(Settings.model_fields["input_decode_memory_bytes"].default) // 2**20
    assert int(limit.removesuffix("Mi")) >= decode + 512
