"""`fluxgate dev`: one command, nothing installed, state kept across restarts and crashes."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.harness.processes import ROOT, free_port, wait_until
from tests.helpers import FINAL, wait_for_job


class DevGateway:
    def __init__(self, data_dir: Path, port: int, env: dict[str, str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "app.cli",
                "dev",
                "--port",
                str(port),
                "--data-dir",
                str(data_dir),
                "--simulator-latency",
                "0.5",
            ],
            env=env,
            cwd=ROOT,
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

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=30
        )

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
