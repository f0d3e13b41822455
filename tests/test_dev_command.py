"""`fluxgate dev`: one command, nothing installed, state kept across restarts and crashes; the
admin commands run beside it in its folder; a taken port; Ctrl-C with a job in flight."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from tests.harness.processes import FLUXGATE, ROOT, free_port, wait_until
from tests.helpers import FINAL, wait_for_job
from tests.receiver import Receiver


class DevGateway:
    def __init__(
        self,
        data_dir: Path | None,
        port: int,
        env: dict[str, str],
        *,
        cwd: Path = ROOT,
        latency: float = 0.5,
    ) -> None:
        """``data_dir`` None: the default, ./.fluxgate in ``cwd``."""
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        where = [] if data_dir is None else ["--data-dir", str(data_dir)]
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "app.cli",
                "dev",
                "--port",
                str(port),
                *where,
                "--simulator-latency",
                str(latency),
            ],
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()
        self.url, self.key = self._banner()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def _banner(self) -> tuple[str, str]:
        url = key = ""
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                assert self.process.poll() is None, "".join(self.output)
                continue
            self.output.append(line)
            if found := re.search(r"running at (http://\S+)", line):
                url = found.group(1)
            if found := re.search(r"Admin key: (fgk_\S+)", line):
                key = found.group(1)
            if "Ctrl-C" in line:
                assert url, "".join(self.output)
                assert key, "".join(self.output)
                return url, key
        raise TimeoutError("".join(self.output))

    def client(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {key or self.key}"}, timeout=30
        )

    def banner(self, label: str) -> str:
        """The rest of the banner's line that starts with ``label``."""
        [line] = [line for line in self.output if line.startswith(label)]
        return line.removeprefix(label).strip()

    def interrupt(self) -> int:
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(60)

    def crash(self) -> None:
        """Power cut: every process of the gateway dies at once."""
        pids = [*children_of(self.process.pid), self.process.pid]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(10)


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def processes_using(data_dir: Path) -> list[int]:
    """Processes whose environment points at this data dir (the gateway's children)."""
    marker = f"sqlite:///{data_dir}/".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.fixture
def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FLUXGATE_")}


def test_one_command_gateway_survives_restarts(tmp_path: Path, clean_env: dict[str, str]) -> None:
    data_dir = tmp_path / "state"
    port = free_port()
    gateway = DevGateway(data_dir, port, clean_env)
    assert gateway.url == f"http://127.0.0.1:{port}"
    key_file = data_dir / "admin-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text().strip() == gateway.key
    assert gateway.key in "".join(gateway.output)
    assert "curl" in "".join(gateway.output)
    # The dashboard's address beside the key, and the key opens it.
    assert f"Dashboard: {gateway.url}/admin " in "".join(gateway.output)
    with httpx.Client(base_url=gateway.url, headers={"Origin": gateway.url}) as browser_like:
        login = browser_like.post("/admin/login", data={"key": gateway.key})
        assert login.status_code == 303
        assert browser_like.get("/admin").status_code == 200

    with gateway.client() as client:
        job = client.post(
            "/v1/jobs", json={"prompt": "a lighthouse", "width": 512, "height": 512}
        ).json()
        done = wait_for_job(client, job["id"], statuses=FINAL, timeout=60)
        assert done["status"] == "succeeded", done
        image = client.get(f"/v1/jobs/{job['id']}/image")
        assert image.status_code == 200
        assert image.content.startswith(b"\x89PNG")

    assert processes_using(data_dir), "children run with the embedded settings"
    assert gateway.interrupt() == 0
    wait_until(lambda: not processes_using(data_dir), timeout=30, what="every child to stop")

    again = DevGateway(data_dir, port, clean_env)
    try:
        assert again.key == gateway.key
        with again.client() as client:
            kept = client.get(f"/v1/jobs/{job['id']}").json()
            assert kept["status"] == "succeeded"
            assert kept["output"]["sha256"] == done["output"]["sha256"]
    finally:
        assert again.interrupt() == 0
    wait_until(lambda: not processes_using(data_dir), timeout=30, what="every child to stop")


def test_crash_loses_no_queued_or_running_job(tmp_path: Path, clean_env: dict[str, str]) -> None:
    data_dir = tmp_path / "state"
    port = free_port()
    # Short leases so the sweeper recovers jobs that were running at the crash within the test.
    env = {
        **clean_env,
        "FLUXGATE_UPSTREAM_TIMEOUT_SECONDS": "3",
        "FLUXGATE_UPSTREAM_CONNECT_TIMEOUT_SECONDS": "1",
        "FLUXGATE_JOB_LEASE_SECONDS": "6",
        "FLUXGATE_SWEEP_INTERVAL_SECONDS": "1",
        "FLUXGATE_REQUEUE_AFTER_SECONDS": "3",
        "FLUXGATE_WORKER_CONCURRENCY": "2",
    }
    gateway = DevGateway(data_dir, port, env)
    with gateway.client() as client:
        ids = [
            client.post(
                "/v1/jobs", json={"prompt": f"crash {i}", "width": 256, "height": 256}
            ).json()["id"]
            for i in range(6)
        ]
        wait_until(
            lambda: any(client.get(f"/v1/jobs/{i}").json()["status"] == "running" for i in ids),
            timeout=20,
            what="a job running",
        )
    gateway.crash()
    for pid in processes_using(data_dir):
        os.kill(pid, signal.SIGKILL)

    again = DevGateway(data_dir, port, env)
    try:
        with again.client() as client:
            for job_id in ids:
                done = wait_for_job(client, job_id, statuses=FINAL, timeout=90)
                assert done["status"] == "succeeded", done
                assert done["cost"]["charged"] == "0.000287"
    finally:
        assert again.interrupt() == 0


def fluxgate(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``fluxgate ARGS`` run in ``cwd`` (a folder, not the repository), to the end."""
    return subprocess.run(
        [*FLUXGATE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def output_of(cwd: Path, env: dict[str, str], *args: str) -> str:
    done = fluxgate(cwd, env, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def json_of(cwd: Path, env: dict[str, str], *args: str) -> Any:
    return json.loads(output_of(cwd, env, *args, "--json"))


def test_the_cli_uses_the_dev_state_in_its_folder(
    tmp_path: Path, clean_env: dict[str, str]
) -> None:
    """No FLUXGATE_* variable at all (no database URL, no broker): the admin commands find the
    database of the `fluxgate dev` in the folder they run in."""
    folder = tmp_path / "project"
    folder.mkdir()
    gateway = DevGateway(None, free_port(), clean_env, cwd=folder)
    receiver = Receiver("127.0.0.1")
    try:
        # The admin key's webhook secret: in the banner and in a file only its owner reads.
        secret = gateway.banner("Webhook secret:").split()[0]
        assert secret.startswith("whsec_")
        secret_file = folder / ".fluxgate" / "webhook-secret"
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        assert secret_file.read_text().strip() == secret
        assert "127.0.0.0/8" in gateway.banner("Webhooks may reach")

        # A receiver on this machine is accepted in dev, and the delivery is signed with it.
        with gateway.client() as admin:
            hook = admin.post(
                "/v1/jobs",
                json={
                    "prompt": "hooked",
                    "width": 1024,
                    "height": 1024,
                    "webhook_url": receiver.url("/ok/dev"),
                },
            )
            assert hook.status_code == 202, hook.text
            [delivered] = receiver.wait_for("/ok/dev", timeout=60)
            payload = Webhook(secret).verify(delivered.body, delivered.headers)
            assert payload["data"]["id"] == hook.json()["id"]
            admin_job = wait_for_job(admin, hook.json()["id"], statuses=FINAL, timeout=60)
            assert admin_job["status"] == "succeeded", admin_job

        created = json_of(
            folder, clean_env, "keys", "create", "--name", "budgeted", "--budget-usd", "5"
        )
        with gateway.client(created["key"]) as client:
            job = client.post(
                "/v1/jobs", json={"prompt": "budgeted", "width": 256, "height": 256}
            ).json()
            done = wait_for_job(client, job["id"], statuses=FINAL, timeout=60)
            assert done["status"] == "succeeded", done
        charged = done["cost"]["charged"]
        assert charged != admin_job["cost"]["charged"]

        # keys list: a header, then each key with what it spent and its budget.
        header, *rows = output_of(folder, clean_env, "keys", "list").splitlines()
        assert header.split("  ")[0] == "ID"
        for column in ("PREFIX", "STATE", "SPENT THIS MONTH", "BUDGET", "BUDGET USED", "NAME"):
            assert column in header
        by_id = {row.split()[0]: row.split() for row in rows}
        assert by_id[created["id"]] == [
            created["id"],
            f"{created['key'][:12]}...",
            "key",
            f"${charged}",
            "$5/month",
            f"${charged}",
            "budgeted",
        ]
        [admin_row] = [row for key_id, row in by_id.items() if key_id != created["id"]]
        assert admin_row[2:] == [
            "admin",
            f"${admin_job['cost']['charged']}",
            "-",
            "-",
            "dev",
            "admin",
        ]
        listed = {row["id"]: row for row in json_of(folder, clean_env, "keys", "list")}
        assert listed[created["id"]]["budget_used_usd"] == charged
        assert listed[created["id"]]["spent_this_month_usd"] == charged
        assert listed[created["id"]]["budget_usd"] == "5"

        # usage: the report /v1/admin/usage answers for the same window, to the nano-dollar.
        now = datetime.now(UTC)
        window = {
            "from": f"{now - timedelta(hours=2):%Y-%m-%dT%H:%M:%SZ}",
            "to": f"{now + timedelta(hours=2):%Y-%m-%dT%H:%M:%SZ}",
        }
        with gateway.client() as admin:
            for group_by, tz in (("key", "UTC"), ("day", "Asia/Kolkata"), ("model", "UTC")):
                api = admin.get(
                    "/v1/admin/usage", params={**window, "group_by": group_by, "tz": tz}
                ).json()
                cli = json_of(
                    folder,
                    clean_env,
                    "usage",
                    "--from",
                    window["from"],
                    "--to",
                    window["to"],
                    "--group-by",
                    group_by,
                    "--tz",
                    tz,
                )
                assert cli == api
            assert api["total"]["jobs"] == 2
            mine = admin.get("/v1/admin/usage", params={**window, "key_id": created["id"]}).json()
        assert (
            json_of(
                folder,
                clean_env,
                "usage",
                "--from",
                window["from"],
                "--to",
                window["to"],
                "--key",
                created["id"],
            )
            == mine
        )
        assert mine["total"]["charged_usd"] == charged
        text = output_of(
            folder,
            clean_env,
            "usage",
            "--from",
            window["from"],
            "--to",
            window["to"],
            "--group-by",
            "key",
        ).splitlines()
        assert text[1].split() == [
            "KEY",
            "JOBS",
            "OUTPUT",
            "TILES",
            "INPUT",
            "TILES",
            "CHARGED",
            "USD",
        ]
        assert text[-1].split()[0:2] == ["total", "2"]
        assert text[-1].split()[-1] == api["total"]["charged_usd"]

        # jobs list and show: what /v1/admin/jobs answers.
        with gateway.client() as admin:
            api_jobs = admin.get("/v1/admin/jobs").json()
            api_job = admin.get("/v1/admin/jobs", params={"id": job["id"]}).json()["data"][0]
        assert json_of(folder, clean_env, "jobs", "list") == api_jobs
        header, *rows = output_of(folder, clean_env, "jobs", "list").splitlines()
        assert header.split()[:4] == ["ID", "STATUS", "MODEL", "KEY"]
        assert [row.split()[:2] for row in rows] == [
            [job["id"], "succeeded"],
            [admin_job["id"], "succeeded"],
        ]
        only = json_of(folder, clean_env, "jobs", "list", "--key", created["id"])
        assert [found["id"] for found in only["data"]] == [job["id"]]
        assert json_of(folder, clean_env, "jobs", "show", job["id"]) == api_job
        shown = output_of(folder, clean_env, "jobs", "show", job["id"]).splitlines()
        assert f"key_id: {created['id']}" in [" ".join(line.split()) for line in shown]
        assert "cost.charged: " + charged in [" ".join(line.split()) for line in shown]
        missing = fluxgate(folder, clean_env, "jobs", "show", "job_nope")
        assert (missing.returncode, missing.stderr) == (1, "fluxgate: no job job_nope\n")

        # Elsewhere, the data dir is named, or the command says in one line what it needs.
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        lost = fluxgate(elsewhere, clean_env, "keys", "list")
        assert lost.returncode == 2
        assert lost.stderr == (
            "fluxgate: no database: set FLUXGATE_DATABASE_URL or run in the folder of a "
            "`fluxgate dev` (or pass --data-dir)\n"
        )
        assert lost.stdout == ""
        found = json_of(
            elsewhere, clean_env, "keys", "list", "--data-dir", str(folder / ".fluxgate")
        )
        assert {row["id"] for row in found} == set(listed)
        empty = fluxgate(elsewhere, clean_env, "keys", "list", "--data-dir", str(elsewhere))
        assert empty.returncode == 2
        assert "holds no fluxgate.db" in empty.stderr
        assert not (elsewhere / "fluxgate.db").exists()
    finally:
        receiver.close()
        assert gateway.interrupt() == 0


class Impostor(BaseHTTPRequestHandler):
    """Another server on the port: answers 200 to everything, /readyz included."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_dev_on_a_taken_port_fails_at_once_without_a_key(
    tmp_path: Path, clean_env: dict[str, str]
) -> None:
    impostor = ThreadingHTTPServer(("127.0.0.1", 0), Impostor)
    threading.Thread(target=impostor.serve_forever, daemon=True).start()
    port = impostor.server_address[1]
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
        data_dir = tmp_path / "state"
        started = time.monotonic()
        done = subprocess.run(
            [*FLUXGATE, "dev", "--port", str(port), "--data-dir", str(data_dir)],
            cwd=tmp_path,
            env=clean_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert time.monotonic() - started < 20
    finally:
        impostor.shutdown()
        impostor.server_close()
    assert done.returncode != 0
    assert done.stderr == (
        f"fluxgate: cannot listen on 127.0.0.1:{port}: Address already in use "
        "(another gateway running? pick a port with --port)\n"
    )
    assert "fgk_" not in done.stdout + done.stderr
    assert "running" not in done.stdout
    # Nothing made: no key, not even the data dir.
    assert not data_dir.exists()


def test_ctrl_c_lets_running_jobs_finish_before_the_simulator_stops(
    tmp_path: Path, clean_env: dict[str, str]
) -> None:
    """The simulator takes 4 s an image and stops within 1 s of its SIGTERM: a worker still
    calling it then would fail the attempt and schedule a retry."""
    data_dir = tmp_path / "state"
    # The operator's own (empty) allow-list wins over dev's loopback default.
    env = {**clean_env, "FLUXGATE_WEBHOOK_ALLOWED_NETWORKS": ""}
    gateway = DevGateway(data_dir, free_port(), env, latency=4)
    assert gateway.banner("Webhooks may reach, besides public https receivers:").startswith("none")
    with gateway.client() as client:
        refused = client.post(
            "/v1/jobs", json={"prompt": "x", "webhook_url": "http://127.0.0.1:9/"}
        )
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["message"] == (
            "webhook_url resolves to 127.0.0.1, which is not a public address; the gateway's "
            "operator can allow its network with FLUXGATE_WEBHOOK_ALLOWED_NETWORKS"
        )
        job = client.post("/v1/jobs", json={"prompt": "in flight", "width": 256, "height": 256})
        job_id = job.json()["id"]
        wait_for_job(client, job_id, statuses={"running"}, timeout=30)
    time.sleep(1)  # the call is in the simulator
    assert gateway.interrupt() == 0
    wait_until(lambda: not processes_using(data_dir), timeout=30, what="every child to stop")

    shown = json_of(tmp_path, clean_env, "jobs", "show", job_id, "--data-dir", str(data_dir))
    assert shown["status"] == "succeeded", shown
    assert shown["attempts"] == 1
    worker_log = (data_dir / "logs" / "worker.log").read_text()
    assert f"job {job_id} attempt 1 succeeded" in worker_log
    assert "retry in" not in worker_log
