"""Server-sent event streams of jobs that cost no thread, with a cap on how many are open at once.

Each stream is an asynchronous subscription of the job service (events as `framepack.jobs.events` models) read
on the event loop: a quiet stream is an idle coroutine, not a worker thread blocked on a queue (a threadpool of 40
threads used to freeze the whole API at about 40 open streams). A stream sends an SSE comment (`: ping`) after
`heartbeat` quiet seconds, so proxies keep it open. When the client goes away the response notices at once (it
listens for `http.disconnect`) and the subscription is closed, so the service stops queueing events for it.

`StreamSlots` caps the open streams of one server: past the cap a new stream gets 429 with Retry-After. The
default, 128, leaves room for a hundred clients following jobs (the benchmark's load, `docs/performance.md`)
while keeping what a stream holds bounded: one socket (of a process's usual 1,024 descriptors), one queue of at
most 1,000 events, and one wake-up per event on the worker thread.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from framepack.jobs.events import EndEvent, Heartbeat, JobEvent, StateEvent

from .errors import RETRY_AFTER_SECONDS, ApiError

logger = logging.getLogger(__name__)

DEFAULT_MAX_STREAMS = 128
HEARTBEAT_SECONDS = 15.0  # a quiet event stream sends an SSE comment this often
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class StreamSlots:
    """How many event streams are open, at most `limit`. Used on the event loop only (no lock needed)."""

    def __init__(self, limit: int = DEFAULT_MAX_STREAMS):
        if limit < 1:
            raise ValueError(f"the event stream limit (--max-streams) must be at least 1, not {limit}")
        self.limit = limit
        self.open = 0

    def take(self) -> None:
        """Take a slot, or ApiError 429 (kind too_many_streams, Retry-After) when all are taken."""
        if self.open >= self.limit:
            raise ApiError(
                429,
                "too_many_streams",
                f"{self.open} event streams are open, the limit is {self.limit}; retry later or poll the job",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        self.open += 1

    def give_back(self) -> None:
        self.open -= 1


def sse_message(name: str, data_json: str) -> str:
    return f"event: {name}\ndata: {data_json}\n\n"


async def sse_events(
    events: AsyncIterator[JobEvent | Heartbeat], job_id: str, redact: Callable[[dict], dict]
) -> AsyncIterator[str]:
    """The SSE text of a job's events: `event: NAME` / `data: <the event model as JSON>` pairs (JSON has no NaN or
    Infinity: such numbers are null), `: ping` comments for heartbeats, ending after the end event. `redact`
    cleans the request echoed in state and end events (embedded images)."""
    try:
        async for event in events:
            if isinstance(event, Heartbeat):
                yield ": ping\n\n"  # an SSE comment: keeps proxies from closing a quiet stream
                continue
            if isinstance(event, (StateEvent, EndEvent)):
                event = event.model_copy(update={"request": redact(event.request)})
            yield sse_message(event.event, event.model_dump_json())
            if isinstance(event, EndEvent):
                return
    except Exception as error:
        logger.exception("event stream of job %s failed", job_id)
        failure = {"kind": "internal", "message": f"event stream failed ({type(error).__name__})"}
        yield sse_message("error", json.dumps(failure))


class EventStreamResponse(StreamingResponse):
    """A text/event-stream response that runs `on_close` exactly once when it ends: the stream finished, the
    client disconnected (noticed at once: it listens for `http.disconnect` whatever the ASGI server's spec
    version), or sending failed."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None]):
        super().__init__(content, media_type="text/event-stream", headers=STREAM_HEADERS)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    try:
                        await self.stream_response(send)
                    except OSError:  # the client is gone (ASGI 2.4 servers raise on send)
                        pass
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()
        finally:
            self._on_close()
