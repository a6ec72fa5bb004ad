"""Keep encoders from leaving this process's threads on real-time scheduling.

SVT-AV1 (`libsvtav1`, bundled with PyAV) switches the thread that opens it, and every thread it starts, to
SCHED_FIFO at priority 99 whenever it is allowed to: as root, which includes most containers. The switch outlives
the encoder, and every process started from such a thread inherits it. A real-time thread that spins starves every
normal process on the machine: after one AV1 encode, a test worker's browser spun for 20 minutes at FIFO 99 and
held both cores, and nothing could kill it until its policy was reset. `drop_realtime_scheduling()` puts the
threads of this process back on the normal scheduler; encoders call it once their threads exist.
"""

from __future__ import annotations

import contextlib
import logging
import os

logger = logging.getLogger(__name__)

REALTIME_POLICIES = frozenset(getattr(os, name) for name in ("SCHED_FIFO", "SCHED_RR") if hasattr(os, name))


def realtime_threads() -> list[int]:
    """Thread ids of this process on a real-time policy (empty where the platform has no such policies)."""
    if not REALTIME_POLICIES or not os.path.isdir("/proc/self/task"):
        return []
    found = []
    for name in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):  # a thread may end while we look
            if os.sched_getscheduler(int(name)) in REALTIME_POLICIES:
                found.append(int(name))
    return found


def drop_realtime_scheduling() -> int:
    """Move every real-time thread of this process to the normal policy; returns how many were moved."""
    moved = 0
    for thread_id in realtime_threads():
        with contextlib.suppress(OSError):
            os.sched_setscheduler(thread_id, os.SCHED_OTHER, os.sched_param(0))
            moved += 1
    if moved:
        logger.debug("moved %d real-time encoder threads back to the normal scheduler", moved)
    return moved
