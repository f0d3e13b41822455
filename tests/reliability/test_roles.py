"""Roles that cannot start stop at once; the simulator stops on SIGTERM even with a call
hanging."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import threading
import time

import httpx
import pytest

from tests.harness.processes import FLUXGATE, ROOT, answers, free_port, wait_until
from tests.harness.stack import SIM_TOKEN, Stack


@pytest.mark.parametrize(
    "role",
    [
        ["api", "--port", "{port}"],
        ["simulate-upstream", "--port", "{port}"],
    ],
)
def test_a_role_that_cannot_listen_exits_at_once_with_one_line(
    stack: Stack, role: list[str]
) -> None:
    """The probe's `fluxgate api` on a taken port logged [Errno 98], kept running and
    ignored SIGTERM."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        result = subprocess.run(
            [*FLUXGATE, *(part.format(port=port) for part in role)],
            env=stack.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 2, result
    assert time.monotonic() - started < 10
    assert result.stderr.strip() == (
        f"fluxgate: cannot listen on 127.0.0.1:{port}: Address already in use"
    ), result.stderr


def test_the_simulator_stops_on_sigterm_with_a_call_hanging(stack: Stack) -> None:
    port = free_port()
    simulator = stack.start(
        "simulator-hang",
        [
            *FLUXGATE,
            "simulate-upstream",
            "--port",
            str(port),
            "--token",
            SIM_TOKEN,
            "--hang-seconds",
            "3600",
            "--faults",
            "hang=1",
        ],
    )
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: answers(f"{url}/__sim/stats"), timeout=20, what="simulator")
    caller = threading.Thread(target=_hanging_call, args=(url,), daemon=True)
    caller.start()
    wait_until(
        lambda: httpx.get(f"{url}/__sim/stats").json()["in_flight"] == 1,
        timeout=10,
        what="the call in flight",
    )
    simulator.signal(signal.SIGTERM)
    started = time.monotonic()
    try:
        simulator.popen.wait(timeout=10)
    except subprocess.TimeoutExpired:
        simulator.kill()
        raise
    assert time.monotonic() - started < 5


def _hanging_call(url: str) -> None:
    with contextlib.suppress(httpx.HTTPError):  # the simulator went away: that is the point
        httpx.post(
            f"{url}/client/v4/accounts/a/ai/run/@cf/black-forest-labs/flux-2-klein-4b",
            headers={"Authorization": f"Bearer {SIM_TOKEN}"},
            files={"prompt": (None, "hang")},
            timeout=60,
        )
