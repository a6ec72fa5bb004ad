"""Status requests while many job event streams are open, against a real `python -m framepack serve`.

The server runs the tiny self-test model in a fresh FRAMEPACK_HOME. A long job (thirty sections of 100 steps)
is submitted and followed until it runs, and a second one waits behind it in the queue. Then --requests status
requests (`GET .../jobs/{id}`) are sent --concurrency at a time, in three phases:

    no streams      the baseline
    running job     --streams clients read `GET .../jobs/{id}/events` of the running job (progress all the time)
    queued job      --streams clients read the events of the queued job (quiet: only heartbeats)

The latency of each status request is measured on the client, from the request to the whole answer. A request
that takes longer than --timeout counts as timed out; after --give-up timeouts a phase stops (a server whose
streams hold its threads never answers).

    python benches/event_streams.py                                  # this checkout
    python benches/event_streams.py --root /path/to/other/checkout   # the same load on another version

Prints one JSON object per phase and a Markdown table; exits 1 when a phase with streams lost a request or its
p99 is over --target-ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "/sdapi/v1/framepack"
LONG_JOB = {
    "model": "tiny",
    "resolution": 128,
    "latent_window_size": 1,
    "steps": 100,
    "duration": 4.0,
    "prompt": "a paper boat drifts across a pond",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(root: Path, folder: Path, port: int, python: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "FRAMEPACK_HOME": str(folder / "home"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "PYTHONUNBUFFERED": "1",
    }
    command = [python, "-m", "framepack", "serve", "--port", str(port), "--data-dir", str(folder / "data")]
    log = open(folder / "server.log", "wb")  # noqa: SIM115 -- the server writes to it until it exits
    return subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_until_serving(url: str, process: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}")
        try:
            if httpx.get(f"{url}{PREFIX}/jobs", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"the server did not answer within {timeout} s")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


async def status_requests(url: str, job_id: str, count: int, concurrency: int, timeout: float, give_up: int) -> dict:
    """Latencies (ms) of `count` GET .../jobs/{id}, `concurrency` at a time, stopping after `give_up` timeouts."""
    latencies: list[float] = []
    timeouts = errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        sent = 0

        async def one() -> None:
            nonlocal timeouts, errors
            started = time.perf_counter()
            try:
                response = await client.get(f"{PREFIX}/jobs/{job_id}")
                if response.status_code == 200:
                    latencies.append((time.perf_counter() - started) * 1000)
                else:
                    errors += 1
            except httpx.TimeoutException:
                timeouts += 1

        while sent < count and timeouts < give_up:
            batch = min(concurrency, count - sent)
            await asyncio.gather(*(one() for _ in range(batch)))
            sent += batch
    result = {"sent": sent, "answered": len(latencies), "timed_out": timeouts, "errors": errors}
    if latencies:
        result.update(
            p50_ms=round(statistics.median(latencies), 1),
            p99_ms=round(percentile(latencies, 0.99), 1),
            max_ms=round(max(latencies), 1),
        )
    return result


async def open_streams(port: int, job_id: str, count: int, timeout: float) -> tuple[list, list[asyncio.Task], int]:
    """`count` event streams, each read in the background; returns them, their readers and how many got their
    first event within `timeout`."""
    request = f"GET {PREFIX}/jobs/{job_id}/events HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n"
    connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(count)]
    for _, writer in connections:
        writer.write(request.encode())
        await writer.drain()
    first = [asyncio.Event() for _ in connections]

    async def drain(reader: asyncio.StreamReader, seen: asyncio.Event) -> None:
        received = b""
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                return
            if not seen.is_set():
                received += chunk
                if b"event: state" in received:
                    seen.set()

    readers = [asyncio.create_task(drain(reader, seen)) for (reader, _), seen in zip(connections, first)]
    try:
        await asyncio.wait_for(asyncio.gather(*(seen.wait() for seen in first)), timeout)
    except TimeoutError:
        pass
    return connections, readers, sum(seen.is_set() for seen in first)


async def run(args: argparse.Namespace, url: str, port: int, running: str, queued: str) -> list[dict]:
    baseline = await status_requests(url, running, args.requests, args.concurrency, args.timeout, args.give_up)
    phases = [{"phase": "no streams", "streams": 0, **baseline}]
    for name, streamed in (("running job", running), ("queued job", queued)):
        connections, readers, opened = await open_streams(port, streamed, args.streams, args.stream_timeout)
        try:
            loaded = await status_requests(url, running, args.requests, args.concurrency, args.timeout, args.give_up)
            phases.append({"phase": name, "streams": args.streams, "streams_with_first_event": opened, **loaded})
        finally:
            for _, writer in connections:
                writer.close()
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
    return phases


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}, Python {platform.python_version()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=100, help="event streams held open (default 100)")
    parser.add_argument("--requests", type=int, default=200, help="status requests per phase (default 200)")
    parser.add_argument("--concurrency", type=int, default=1, help="status requests in flight at once (default 1)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds before a status request times out")
    parser.add_argument("--give-up", type=int, default=5, help="stop a phase after this many timeouts (default 5)")
    parser.add_argument("--stream-timeout", type=float, default=30.0, help="seconds to wait for the first events")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose server runs (default: this one)")
    parser.add_argument("--python", default=sys.executable, help="the Python that runs the server")
    parser.add_argument("--target-ms", type=float, default=250.0, help="p99 target with streams open (default 250)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="framepack-streams-bench-") as temporary:
        folder = Path(temporary)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        process = start_server(args.root.resolve(), folder, port, args.python)
        try:
            wait_until_serving(url, process)
            with httpx.Client(base_url=url, timeout=60) as client:
                running = client.post(f"{PREFIX}/jobs", json=LONG_JOB).json()["id"]
                queued = client.post(f"{PREFIX}/jobs", json=LONG_JOB).json()["id"]
                deadline = time.monotonic() + 120
                while client.get(f"{PREFIX}/jobs/{running}").json()["progress"]["done_steps"] == 0:
                    if time.monotonic() > deadline:
                        raise SystemExit("the job did not start within 120 s")
                    time.sleep(0.2)
            phases = asyncio.run(run(args, url, port, running, queued))
            with httpx.Client(base_url=url, timeout=60) as client:
                states = [client.get(f"{PREFIX}/jobs/{job_id}").json()["state"] for job_id in (running, queued)]
                for job_id in (queued, running):
                    client.post(f"{PREFIX}/jobs/{job_id}/cancel")
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

    header = {"machine": machine(), "root": str(args.root), "job_states_at_the_end": states}
    print(json.dumps(header))
    for phase in phases:
        print(json.dumps(phase))
    print()
    print("| phase | streams | answered | timed out | p50 ms | p99 ms | max ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for phase in phases:
        cells = [phase.get(key, "-") for key in ("p50_ms", "p99_ms", "max_ms")]
        print(
            f"| {phase['phase']} | {phase['streams']} | {phase['answered']}/{phase['sent']} | {phase['timed_out']} | "
            + " | ".join(str(cell) for cell in cells)
            + " |"
        )
    ok = all(
        phase["answered"] == args.requests and phase.get("p99_ms", float("inf")) <= args.target_ms
        for phase in phases[1:]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
