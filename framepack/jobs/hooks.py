"""What a host program sees of the job queue: `JobHooks`, which `JobManager(host_hooks=...)` calls.

The manager calls, for each job:

- `submitted(job)` when it is queued (before the worker can start it);
- `running(job)`: a context manager entered when the job starts (after the GPU lock is taken) and left when it
  ends, whatever the outcome;
- `progress(job)` after each denoising step, frames written and stage change (`job.progress` is up to date);
- `outputs(job, paths)` inside `running`, after a successful run, with every file the job wrote (as the runner
  wrote them: the output folder joined with the file name).

The defaults do nothing. A hook that raises is logged and never fails the job. The SD.Next implementation is
`framepack.host.HostJobHooks`.
"""

from __future__ import annotations

import contextlib

from framepack.jobs.models import Job


class JobHooks:
    """A host's view of the queue; see the module docstring. Subclasses override what they need."""

    def submitted(self, job: Job) -> None:
        """The job was queued."""

    def running(self, job: Job) -> contextlib.AbstractContextManager:
        """Entered when the job starts, left when it ends."""
        return contextlib.nullcontext()

    def progress(self, job: Job) -> None:
        """The running job's progress changed (steps, frames written or stage)."""

    def outputs(self, job: Job, paths: list[str]) -> None:
        """The running job wrote these files (called once, after a successful run)."""
