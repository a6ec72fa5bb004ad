"""One classification of errors for jobs and the API: exception -> error kind (with field and message) -> HTTP status.

A job that fails records `classify(error)` as its error; the API answers a refused request, and a failed job on the
blocking route, with `STATUS[kind]`. Exceptions that are not known here are bugs: kind "internal", status 500.

Importing this module imports neither torch nor the model loader: an exception of their classes can only exist
once their module was imported, so they are looked up in `sys.modules` when an error is classified.
"""

from __future__ import annotations

import sys

from framepack.errors import FieldError, UserError
from framepack.jobs.models import BatchLineError, JobConflict, JobErrorInfo, JobNotFound, QueueFull
from framepack.outputs import DiskFull, OutputExists

OUT_OF_MEMORY_ADVICE = (
    "Try a lower resolution, a shorter duration or a smaller latent_window_size, or enable model offload, "
    "then submit the job again."
)

# The kinds of JobErrorInfo.kind and the HTTP status each answers.
STATUS = {
    "invalid": 422,  # bad input; `field` names it
    "not_found": 404,  # no job with that id (field "id")
    "conflict": 409,  # cancelling an ended job, or an output name a job or a file has taken (field "filename")
    "queue_full": 429,  # too many jobs waiting; retry later
    "model_unavailable": 503,  # a model component or the enhancer is not on this machine; the message says how
    "out_of_memory": 503,  # the job ran out of (GPU) memory
    "disk_full": 507,  # no space left for the outputs; nothing of the job was kept
    "cancelled": 409,  # the job was cancelled before it finished
    "worker_lost": 503,  # the job's worker died (a render farm) as many times as a job may be attempted
    "internal": 500,  # a bug; details are in the log
}


def _loaded_class(module: str, name: str) -> type[BaseException] | None:
    """`module.name` when that module is imported already (else no instance of it can exist), else None."""
    loaded = sys.modules.get(module)
    return getattr(loaded, name, None) if loaded is not None else None


def is_out_of_memory(error: BaseException) -> bool:
    """Python's MemoryError or torch's (CUDA) out-of-memory error."""
    torch_oom = _loaded_class("torch", "OutOfMemoryError")
    return isinstance(error, MemoryError) or (torch_oom is not None and isinstance(error, torch_oom))


def classify(error: BaseException) -> JobErrorInfo | None:
    """The kind, field and message of a known error; None for a bug (kind "internal" is then the caller's)."""
    if isinstance(error, BatchLineError):
        return JobErrorInfo(kind=error.kind, field=error.field, message=str(error))
    model_unavailable = _loaded_class("framepack.models.loader", "ModelUnavailableError")
    if model_unavailable is not None and isinstance(error, model_unavailable):
        return JobErrorInfo(kind="model_unavailable", field="model", message=str(error))
    enhancer_unavailable = _loaded_class("framepack.enhancer.source", "EnhancerUnavailableError")
    if enhancer_unavailable is not None and isinstance(error, enhancer_unavailable):
        return JobErrorInfo(kind="model_unavailable", field="enhancer", message=str(error))
    if isinstance(error, QueueFull):
        return JobErrorInfo(kind="queue_full", message=str(error) or "the queue is full")
    if isinstance(error, JobNotFound):
        return JobErrorInfo(kind="not_found", field="id", message=str(error) or "no such job")
    if isinstance(error, (JobConflict, OutputExists)):
        return JobErrorInfo(kind="conflict", field=error.field, message=str(error))
    if isinstance(error, DiskFull):
        return JobErrorInfo(kind="disk_full", message=str(error))
    if isinstance(error, FieldError):
        return JobErrorInfo(kind="invalid", field=error.field, message=str(error))
    if isinstance(error, UserError):
        return JobErrorInfo(kind="invalid", message=str(error))
    if is_out_of_memory(error):
        detail = " ".join(str(error).split())[:500] or type(error).__name__
        return JobErrorInfo(kind="out_of_memory", message=f"out of memory ({detail}). {OUT_OF_MEMORY_ADVICE}")
    return None


def internal_error(error: BaseException) -> JobErrorInfo:
    """What a job records for a bug."""
    return JobErrorInfo(kind="internal", message=f"internal error: {type(error).__name__}: {error}")
