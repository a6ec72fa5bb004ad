import threading


class CountingLock:
    """threading.Lock that counts acquisitions (SD.Next: queue_lock = threading.Lock())."""

    def __init__(self):
        self._lock = threading.Lock()
        self.acquired = 0

    def acquire(self, *args, **kwargs):
        got = self._lock.acquire(*args, **kwargs)
        self.acquired += bool(got)
        return got

    def release(self):
        self._lock.release()

    def locked(self):
        return self._lock.locked()

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


queue_lock = CountingLock()
