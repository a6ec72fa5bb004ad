"""Encoders leave no thread on real-time scheduling (SVT-AV1 switches to SCHED_FIFO 99 where it may: as root).

Each case runs in a child process, so a failure cannot leave this test worker real-time. Where SVT-AV1 cannot switch
(no root or CAP_SYS_NICE) the control shows no hazard and the test skips: there is nothing to undo.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import io, json, os, subprocess, sys, tempfile
import av, numpy as np
from framepack.video.scheduling import realtime_threads

def policies():
    child = subprocess.run([sys.executable, "-c", "import os; print(os.sched_getscheduler(0))"],
                           capture_output=True, text=True, check=True)
    return {"main": os.sched_getscheduler(0), "threads": len(realtime_threads()), "child": int(child.stdout)}

frame = np.zeros((64, 64, 3), np.uint8)
if sys.argv[1] == "bare-pyav":  # the control: PyAV's libsvtav1 without our encoder around it
    output = av.open(io.BytesIO(), mode="w", format="mp4")
    stream = output.add_stream("libsvtav1", rate=30)
    stream.width = stream.height = 64
    stream.pix_fmt = "yuv420p"
    for _ in range(8):
        output.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    during = policies()
    output.mux(stream.encode(None))
    output.close()
elif sys.argv[1] == "sink":
    from framepack.video.encoder import VideoEncoderSink
    sink = VideoEncoderSink(os.path.join(tempfile.mkdtemp(), "a.mp4"), 30, 64, 64, codec="libsvtav1", options="")
    sink.write(np.stack([frame] * 8))
    during = policies()
    sink.close()
else:
    from framepack.video.codecs import probe_encoder
    probe_encoder("libsvtav1", "mp4", {})
    during = policies()
print(json.dumps({"during": during, "after": policies()}))
"""


def run_child(case: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, case],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def hazard() -> dict:
    """What bare PyAV does here: real-time threads, a real-time main thread and a real-time child process."""
    seen = run_child("bare-pyav")
    if seen["during"]["threads"] == 0:
        pytest.skip("SVT-AV1 cannot switch to real-time scheduling here (not root): nothing to undo")
    return seen


@pytest.mark.parametrize("case", ["sink", "probe"])
def test_encoders_leave_every_thread_and_child_on_the_normal_scheduler(hazard, case):
    assert hazard["after"]["main"] == os.SCHED_FIFO and hazard["after"]["child"] == os.SCHED_FIFO  # the control
    seen = run_child(case)
    normal = {"main": os.SCHED_OTHER, "threads": 0, "child": os.SCHED_OTHER}
    assert seen == {"during": normal, "after": normal}
