"""Encoder probes with request options run in a child Python process whose working folder is empty and temporary.

Encoder libraries resolve relative file names against the working folder, which belongs to the whole process: a
chdir would move every thread of a server at once. So a probe that carries options runs in a long-lived child
process started in a new empty temporary folder; even an option the allowlist missed cannot touch the server's
folders, a crash or a hang stays in the child (killed after a timeout, restarted on the next probe), and a file
the encoder leaves in that folder is deleted there and refuses the options. One child serves one prober's probes
in turn, so a probe costs a few milliseconds after the child's start (about half a second, once).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import weakref
from pathlib import Path

from framepack.video.codec_options import EncoderError

logger = logging.getLogger(__name__)

REPLY = "framepack-probe-reply "  # marks the child's reply among whatever an encoder library prints to stdout
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding the framepack package
# `-c` puts the working folder first on sys.path: the package root takes its place
CHILD = "import sys; sys.path[0] = {root!r}; from framepack.video.probe_child import serve; serve()"
TIMEOUT_S = 60.0


class EncoderProber:
    """Opens encoders for real, in memory, in a child process in an empty temporary folder; thread-safe.

    Use one per long-lived owner (the Runner) so the child is started once; `close()` (or garbage collection,
    or the end of this process) ends the child, which removes its folder.
    """

    def __init__(self, timeout_s: float = TIMEOUT_S):
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._finalizer: weakref.finalize | None = None

    def __enter__(self) -> EncoderProber:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def probe(self, codec: str, container: str, options: dict[str, str], width: int, height: int) -> None:
        """Encode a few frames with exactly these settings in the child; EncoderError naming the field if it fails."""
        settings = {"codec": codec, "container": container, "options": options, "width": width, "height": height}
        field = "codec_options" if options else "codec"
        with self._lock:
            process = self._running()
            expired = threading.Event()
            watchdog = threading.Timer(self.timeout_s, lambda: (expired.set(), process.kill()))
            watchdog.start()
            try:
                reply = self._ask(process, json.dumps(settings))
            finally:
                watchdog.cancel()
            if reply is None:
                self._stop()
                logger.warning("encoder probe of %s with %s ended without a reply", codec, options)
                if expired.is_set():
                    raise EncoderError(
                        field, f"{codec} did not open within {self.timeout_s:g} s with {options or 'no options'}"
                    )
                raise EncoderError(field, f"{codec} crashed with {options or 'no options'}")
        if reply:
            raise EncoderError(reply["field"], reply["message"])

    def close(self) -> None:
        """End the child (it removes its folder); a later probe starts a new one."""
        with self._lock:
            self._stop()

    def _running(self) -> subprocess.Popen:
        if self._process is not None and self._process.poll() is None:
            return self._process
        self._stop()
        self._process = subprocess.Popen(
            [sys.executable, "-c", CHILD.format(root=str(PACKAGE_ROOT))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=PACKAGE_ROOT,
            creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),
        )  # fmt: skip
        self._finalizer = weakref.finalize(self, _end, self._process)
        return self._process

    @staticmethod
    def _ask(process: subprocess.Popen, request: str) -> dict | None:
        """Send one request line; the reply, or None when the child ended first."""
        try:
            process.stdin.write(request + "\n")
            process.stdin.flush()
        except OSError:
            return None
        for line in process.stdout:
            if line.startswith(REPLY):
                return json.loads(line.removeprefix(REPLY))
        return None

    def _stop(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # ends the child once, whoever calls first
        self._process, self._finalizer = None, None


def _end(process: subprocess.Popen) -> None:
    """Close the child's input (it leaves its loop and removes its folder), then make sure it is gone."""
    for stream in (process.stdin, process.stdout):
        try:
            stream.close()
        except OSError:
            pass
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
