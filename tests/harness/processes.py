"""The processes of a stack: each one in its own process group, logging to a file, measured
from /proc and stopped for good; and the small tools for starting them (free ports, waiting)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
FLUXGATE = [sys.executable, "-m", "app.cli"]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class StackError(Exception):
    """A process of a stack exited, or a command of it failed; the message says which."""


class ProcessExited(StackError):
    """A process exited while it was being waited for."""


class WaitTimedOut(StackError, TimeoutError):
    """What was waited for did not happen in time."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    check: Callable[[], bool],
    *,
    timeout: float,
    interval: float = 0.05,
    what: str = "",
    watch: Iterable[Process] = (),
) -> None:
    """Return once ``check()`` is true; WaitTimedOut after ``timeout`` seconds, ProcessExited
    as soon as one of the ``watch`` processes has exited (it will never get there)."""
    watched = list(watch)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in watched:
            if not process.alive():
                raise ProcessExited(
                    f"{process.name} exited with {process.popen.returncode}"
                    f" while waiting for {what or check}"
                )
        if check():
            return
        time.sleep(interval)
    raise WaitTimedOut(f"timed out after {timeout:g}s waiting for {what or check}")


def answers(url: str) -> bool:
    """Whether ``url`` gives an answer that is not a server error."""
    try:
        return httpx.get(url, timeout=1).status_code < 500
    except httpx.HTTPError:
        return False


def proc_status_kb(pid: int, field: str) -> int | None:
    """A ``kB`` field of /proc/<pid>/status (e.g. ``VmHWM``), or None if there is none."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class Process:
    """One process (a ``fluxgate`` role) in its own process group, logging to a file in
    ``log_dir``; ``name`` names the role ("api", "worker1", ...)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            argv,
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.popen.pid
        self.stopped = False

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the process group, if the process still runs."""
        if self.alive():
            self._signal_group(sig)

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds."""
        stop_all([self], timeout)

    def kill(self) -> None:
        self._signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)
        self._close()

    def _close(self) -> None:
        self._log.close()
        self.stopped = True

    def log(self) -> str:
        """Everything the process has written so far."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def peak_rss_kb(self) -> int | None:
        """The process's peak resident memory (VmHWM); None once it is gone."""
        return proc_status_kb(self.pid, "VmHWM")

    def cpu_seconds(self) -> float | None:
        """User + system CPU of the process (all its threads); None once it is gone."""
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return None
        # The command name in parentheses may hold spaces: count the fields after it.
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def stop_all(processes: Sequence[Process], timeout: float = 20) -> None:
    """SIGTERM every process group at once, wait up to ``timeout`` seconds in all, then SIGKILL
    whatever is left; each process once, however often this is called."""
    processes = [process for process in processes if not process.stopped]
    for process in processes:
        process.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.popen.wait(max(0.1, deadline - time.monotonic()))
    for process in processes:
        # Also kills what is left of the group after its leader has exited.
        process._signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.popen.wait(5)
        process._close()
