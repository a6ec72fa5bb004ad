"""A real `python -m framepack serve` subprocess on 127.0.0.1 for the live API tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from api.routes import PREFIX

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LiveServer:
    """Starts the server, waits until it answers, and stops it (gracefully, or with kill -9)."""

    def __init__(self, home: Path, data_dir: Path, log: Path, *extra: str, env: dict[str, str] | None = None):
        self.home, self.data_dir, self.log_path, self.extra = home, data_dir, log, extra
        self.env = env or {}  # more environment variables for the server
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 180.0) -> LiveServer:
        env = {
            **os.environ,
            "FRAMEPACK_HOME": str(self.home),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
            "GRADIO_ANALYTICS_ENABLED": "False",
            **self.env,
        }
        command = [
            sys.executable,
            "-m",
            "framepack",
            "serve",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            *self.extra,
        ]
        self.log = open(self.log_path, "ab")  # noqa: SIM115 -- the server writes to it until stop()
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log_text()}")
            try:
                if httpx.get(f"{self.url}{PREFIX}/jobs", timeout=2).status_code in (200, 401):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.kill()
        raise AssertionError(f"server did not answer within {timeout} s:\n{self.log_text()}")

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-5000:]

    def kill(self) -> None:
        """kill -9: no shutdown code runs."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self, timeout: float = 30.0, sig: int = signal.SIGINT) -> int:
        """Ctrl-C (or `sig`, such as SIGTERM): uvicorn shuts down and the lifespan closes the manager; returns the
        exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"server did not stop within {timeout} s:\n{self.log_text()}") from None
        finally:
            self.log.close()


def wait_for_job(
    client: httpx.Client,
    job_id: str,
    timeout: float = 120.0,
    until=lambda job: job["state"] in ("finished", "failed", "cancelled"),
) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"{PREFIX}/jobs/{job_id}").json()
        if until(job):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not get there within {timeout} s: {job}")
