"""Job event streams cost no thread: asyncio subscriptions, heartbeats, clean-up at disconnect, a cap per server.

The app runs in uvicorn on a thread of the test process (real HTTP on 127.0.0.1), so the tests can look at the
manager's subscribers while clients come and go. Its manager is not started: jobs stay queued and quiet, so only
heartbeats and the test's own actions happen on the streams. The load test with a real `serve` process is in
tests/test_api_load.py.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from api_live_server import free_port
from helpers import SMALLEST

from api import streams
from api.routes import PREFIX
from api.server import create_app
from framepack.jobs.manager import JobManager
from framepack.request import GenerateRequest

CLEANUP_S = 3.0  # well below the 15 s heartbeat: a stream must be cleaned up by the disconnect itself


class ThreadServer:
    """uvicorn serving `app` on 127.0.0.1 from a thread of this process."""

    def __init__(self, app):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="test-uvicorn", daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *_exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def wait_until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def open_raw_stream(port: int, job_id: str) -> tuple[socket.socket, bytes]:
    """A plain socket with the events request sent and the response read up to the first event."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=10)
    connection.sendall(f"GET {PREFIX}/jobs/{job_id}/events HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    received = b""
    while b"event: state" not in received:
        chunk = connection.recv(65536)
        assert chunk, f"the stream closed before its first event: {received!r}"
        received += chunk
    return connection, received


@pytest.fixture
def manager(runner, tmp_path):
    manager = JobManager(tmp_path / "data", runner)  # never started: submitted jobs stay queued
    yield manager
    manager.close(timeout=10)


def test_a_disconnected_stream_is_unsubscribed_at_once(manager, runner):
    job = manager.submit(GenerateRequest(**SMALLEST))
    with ThreadServer(create_app(manager, runner.output_dir, manage_lifecycle=False)) as server:
        connection, received = open_raw_stream(server.port, job.id)
        assert received.startswith(b"HTTP/1.1 200") and b"text/event-stream" in received
        assert manager.subscriber_count(job.id) == 1
        connection.close()
        assert wait_until(lambda: manager.subscriber_count(job.id) == 0, CLEANUP_S), (
            "the manager still queues events for a client that went away"
        )


def test_streams_past_the_cap_get_429_with_retry_after_and_a_closed_one_frees_its_slot(manager, runner):
    job = manager.submit(GenerateRequest(**SMALLEST))
    with ThreadServer(create_app(manager, runner.output_dir, manage_lifecycle=False, max_streams=3)) as server:
        connections = [open_raw_stream(server.port, job.id)[0] for _ in range(3)]
        refused = httpx.get(f"{server.url}{PREFIX}/jobs/{job.id}/events", timeout=10)
        assert refused.status_code == 429
        assert refused.headers["content-type"].startswith("application/json")
        error = refused.json()["error"]
        assert error["kind"] == "too_many_streams" and "the limit is 3" in error["message"]
        assert int(refused.headers["retry-after"]) > 0
        assert httpx.get(f"{server.url}{PREFIX}/jobs/{job.id}", timeout=10).status_code == 200  # the API answers

        connections.pop().close()
        assert wait_until(lambda: manager.subscriber_count(job.id) == 2, CLEANUP_S)
        replacement, _ = open_raw_stream(server.port, job.id)  # the freed slot is taken again
        assert manager.subscriber_count(job.id) == 3
        missing = httpx.get(f"{server.url}{PREFIX}/jobs/nope/events", timeout=10)  # over the cap, a 429 first
        assert missing.status_code == 429
        for connection in [*connections, replacement]:
            connection.close()
        assert wait_until(lambda: manager.subscriber_count() == 0, CLEANUP_S)
        missing = httpx.get(f"{server.url}{PREFIX}/jobs/nope/events", timeout=10)  # a refused stream takes no slot
        assert missing.status_code == 404 and missing.json()["error"]["field"] == "id"
        for _ in range(3):
            open_raw_stream(server.port, job.id)[0].close()  # every slot is free again


def test_a_quiet_stream_sends_heartbeat_comments_then_the_end(manager, runner, monkeypatch):
    monkeypatch.setattr(streams, "HEARTBEAT_SECONDS", 0.2)
    job = manager.submit(GenerateRequest(**SMALLEST))
    with ThreadServer(create_app(manager, runner.output_dir, manage_lifecycle=False)) as server:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            with client.stream("GET", f"{PREFIX}/jobs/{job.id}/events") as stream:
                lines = stream.iter_lines()
                assert next(lines) == "event: state"
                assert json.loads(next(lines)[len("data: ") :])["state"] == "queued"
                pings = 0
                for line in lines:
                    if line == ": ping":
                        pings += 1
                    if pings == 2:
                        break
                manager.cancel(job.id)  # a queued job ends at once; its stream says so and ends
                rest = list(lines)
        assert "event: end" in rest
        end = json.loads(rest[rest.index("event: end") + 1][len("data: ") :])
        assert end["state"] == "cancelled"
    assert manager.subscriber_count() == 0


def test_async_subscription_delivers_a_running_jobs_events_and_sync_subscribers_still_work(make_manager):
    manager = make_manager(start=False)
    job = manager.submit(GenerateRequest(**{**SMALLEST, "steps": 3}))
    synchronous = manager.subscribe(job.id)
    assert next(synchronous).event == "state"

    async def read() -> list:
        subscription = await asyncio.to_thread(manager.subscribe_async, job.id, asyncio.get_running_loop(), 30.0)
        await asyncio.to_thread(manager.start)
        events = [event async for event in subscription]
        assert subscription.closed
        return events

    events = asyncio.run(asyncio.wait_for(read(), 120))
    kinds = [event.event for event in events]
    assert kinds[0] == "state" and kinds[-1] == "end" and "ping" not in kinds
    assert {"stage", "progress", "section"} <= set(kinds)
    last = [event for event in events if event.event == "progress"][-1]
    assert last.done_steps == last.total_steps == job.progress.total_steps == 6  # start frame + 1 section
    assert events[-1].state == "finished"
    assert [event.event for event in synchronous][-1] == "end"
    assert manager.subscriber_count() == 0

    ended = asyncio.run(_collect(manager, job.id))  # an ended job: state and end at once, nothing registered
    assert [event.event for event in ended] == ["state", "end"]
    assert manager.subscriber_count() == 0


async def _collect(manager, job_id: str) -> list:
    return [event async for event in manager.subscribe_async(job_id, asyncio.get_running_loop())]


def test_closing_an_async_subscription_unsubscribes_and_a_stop_ends_the_others(manager, tmp_path: Path):
    job = manager.submit(GenerateRequest(**SMALLEST))

    async def scenario() -> list:
        loop = asyncio.get_running_loop()
        first, second = manager.subscribe_async(job.id, loop), manager.subscribe_async(job.id, loop)
        assert manager.subscriber_count(job.id) == 2
        assert (await first.__anext__()).event == "state"
        first.close()
        first.close()  # idempotent
        assert manager.subscriber_count(job.id) == 1
        with pytest.raises(StopAsyncIteration):
            await first.__anext__()
        await asyncio.to_thread(manager.stop, 10)  # the manager stops: open subscriptions end without "end"
        return [event async for event in second]

    events = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert [event.event for event in events] == ["state"]
    assert manager.subscriber_count() == 0
