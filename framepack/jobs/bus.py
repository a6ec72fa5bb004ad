"""The event bus of the jobs: per-job subscribers with bounded queues, for threads and for asyncio readers.

A publisher (the worker thread) never blocks: a full subscriber queue drops its oldest progress or frames event
(then its oldest other event), never the `EndEvent`, so a slow reader still sees how the job ended. `close_all()`
ends every subscription without an end (the manager stopped).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator

from framepack.jobs.events import EndEvent, FramesEvent, Heartbeat, JobEvent, ProgressEvent

DROPPABLE = (ProgressEvent, FramesEvent)  # what a full subscriber queue drops first, oldest first


class _Closed:
    """Tells a subscriber that the bus closed (the manager stopped): its stream ends without an end event."""


_CLOSED = _Closed()
_Item = JobEvent | _Closed


class Subscriber:
    """A bounded event queue of one subscriber. `wake` (optional) is called after each put, outside the queue's
    lock: an asyncio reader's way to be woken from the worker thread (see `AsyncSubscription`)."""

    def __init__(self, maxsize: int, wake: Callable[[], None] | None = None):
        self.maxsize = max(1, maxsize)
        self._items: deque[_Item] = deque()
        self._ready = threading.Condition()
        self._wake = wake

    def put(self, item: _Item) -> None:
        with self._ready:
            if len(self._items) >= self.maxsize and not isinstance(item, (_Closed, EndEvent)):
                self._drop_one()
            self._items.append(item)
            self._ready.notify()
        if self._wake is not None:
            self._wake()

    def _drop_one(self) -> None:
        for kinds in (DROPPABLE, None):
            for index, queued in enumerate(self._items):
                if isinstance(queued, (_Closed, EndEvent)):
                    continue
                if kinds is None or isinstance(queued, kinds):
                    del self._items[index]
                    return

    def get(self, timeout: float | None) -> _Item | None:
        """The next item, or None when `timeout` passed without one."""
        with self._ready:
            if not self._ready.wait_for(lambda: self._items, timeout):
                return None
            return self._items.popleft()

    def get_nowait(self) -> _Item | None:
        """The next item, or None when there is none."""
        with self._ready:
            return self._items.popleft() if self._items else None


class EventBus:
    """Subscribers by job id. Thread-safe; its lock guards the subscriber lists only, so an event loop can
    unsubscribe without waiting for the worker."""

    def __init__(self, queue_size: int = 1000):
        self.queue_size = queue_size
        self._subscribers: dict[str, list[Subscriber]] = {}
        self._lock = threading.Lock()

    def add(self, job_id: str, wake: Callable[[], None] | None = None) -> Subscriber:
        subscriber = Subscriber(self.queue_size, wake)
        with self._lock:
            self._subscribers.setdefault(job_id, []).append(subscriber)
        return subscriber

    def remove(self, job_id: str, subscriber: Subscriber) -> None:
        with self._lock:
            subscribers = self._subscribers.get(job_id, [])
            if subscriber in subscribers:
                subscribers.remove(subscriber)
            if not subscribers:
                self._subscribers.pop(job_id, None)

    def publish(self, job_id: str, event: JobEvent) -> None:
        """Hand `event` to every subscriber of the job; after an `EndEvent` the job has no subscribers."""
        with self._lock:
            subscribers = list(self._subscribers.get(job_id, ()))
            if isinstance(event, EndEvent):
                self._subscribers.pop(job_id, None)
        for subscriber in subscribers:
            subscriber.put(event)

    def close_all(self) -> None:
        """End every subscription (without an end event)."""
        with self._lock:
            subscribers = [item for items in self._subscribers.values() for item in items]
            self._subscribers.clear()
        for subscriber in subscribers:
            subscriber.put(_CLOSED)

    def count(self, job_id: str | None = None) -> int:
        """Open subscriptions to `job_id`'s events (to every job's when None)."""
        with self._lock:
            if job_id is not None:
                return len(self._subscribers.get(job_id, ()))
            return sum(len(items) for items in self._subscribers.values())

    def stream(
        self, job_id: str, first: list[JobEvent], subscriber: Subscriber | None, heartbeat: float | None
    ) -> Iterator[JobEvent | Heartbeat]:
        """`first`, then the subscriber's events until the end (or the bus closes); a `Heartbeat` after `heartbeat`
        quiet seconds. Without a subscriber (an ended job) only `first`. Closing the generator unsubscribes."""
        try:
            yield from first
            if subscriber is None:
                return
            while True:
                item = subscriber.get(heartbeat)
                if isinstance(item, _Closed):
                    return
                if item is None:
                    yield Heartbeat()
                    continue
                yield item
                if isinstance(item, EndEvent):
                    return
        finally:
            if subscriber is not None:
                self.remove(job_id, subscriber)


class AsyncSubscription:
    """A job's events for an asyncio reader (the API's event streams), with no thread waiting while the job is
    quiet: the worker's publish wakes the reader's event loop (`wake` of its `Subscriber` calls
    `loop.call_soon_threadsafe`). `close()` unsubscribes at once (idempotent); a reader whose client went away must
    call it. Iterate it with `async for`; it ends after the `EndEvent`, or when the bus closes."""

    def __init__(
        self,
        first: list[JobEvent],
        subscriber: Subscriber | None,
        ready: asyncio.Event,
        unsubscribe: Callable[[], None],
        heartbeat: float | None,
    ):
        self._first = deque(first)
        self._subscriber = subscriber
        self._ready = ready
        self._unsubscribe = unsubscribe
        self._heartbeat = heartbeat
        self.closed = subscriber is None

    def __aiter__(self) -> AsyncIterator[JobEvent | Heartbeat]:
        return self

    async def __anext__(self) -> JobEvent | Heartbeat:
        if self._first:
            return self._first.popleft()
        while not self.closed:
            assert self._subscriber is not None
            item = self._subscriber.get_nowait()
            if item is None:
                self._ready.clear()  # cleared before the second look: a put after it sets the event again
                item = self._subscriber.get_nowait()
            if item is None:
                try:
                    await asyncio.wait_for(self._ready.wait(), self._heartbeat)
                except TimeoutError:
                    return Heartbeat()
                continue
            if isinstance(item, (_Closed, EndEvent)):
                self.close()
            if isinstance(item, _Closed):
                break
            return item
        raise StopAsyncIteration

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._unsubscribe()


def loop_waker(loop: asyncio.AbstractEventLoop, ready: asyncio.Event) -> Callable[[], None]:
    """A `wake` for `Subscriber` that sets `ready` on `loop` from any thread (nothing when the loop is closed:
    nobody reads that subscription any more, and the job's end removes it)."""

    def wake() -> None:
        try:
            loop.call_soon_threadsafe(ready.set)
        except RuntimeError:
            pass

    return wake
