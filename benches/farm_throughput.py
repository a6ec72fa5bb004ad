"""Jobs per hour with 1, 2 and 4 workers on one queue, on the tiny self-test model (CPU).

For each worker count the job service is built as `serve` builds it (`framepack.compose.build_job_service`): with
`--executor local` one in-process worker per `--gpus cpu,...` entry, with `--executor ray` that many Ray render
workers on a local Ray cluster (`--ray-address local`). The workers load the model first (not timed: `load_model`
on every worker), then --jobs identical jobs (distinct seeds and names) are queued at once and the clock runs from
the first submit to the last job's end. Each count gets a fresh data folder and output folder.

    python benches/farm_throughput.py                          # local workers: 1, 2 and 4
    python benches/farm_throughput.py --executor ray           # Ray workers (pip install -r requirements-farm.txt)
    python benches/farm_throughput.py --workers 1,2 --jobs 6

Prints one JSON object per worker count and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

JOB = {
    "model": "tiny",
    "resolution": 128,
    "latent_window_size": 3,
    "steps": 4,
    "duration": 0.8,
    "prompt": "a paper boat drifts across a pond",
}


def measure(workers: int, jobs: int, executor: str, folder: Path) -> dict:
    """Run `jobs` jobs on `workers` workers; the timings and the jobs per hour."""
    from framepack.compose import build_job_service
    from framepack.host import StandaloneHost
    from framepack.jobs.farm import FarmSettings
    from framepack.jobs.models import JobState
    from framepack.request import GenerateRequest

    if executor == "ray":
        farm = FarmSettings(executor="ray", ray_address="local", ray_workers=workers)
    else:
        farm = FarmSettings(devices=("cpu",) * workers)
    host = StandaloneHost(output_dir=folder / "out", data_dir=folder / "home")
    started = time.perf_counter()
    service = build_job_service(host, folder / "data", farm=farm)
    service.start()
    try:
        service.load_model(GenerateRequest(**JOB))
        ready = time.perf_counter()
        submitted = [service.submit(GenerateRequest(**JOB, seed=seed)) for seed in range(jobs)]
        ended = [service.wait(job.id, timeout=3600) for job in submitted]
        finished = time.perf_counter()
    finally:
        service.close(timeout=120)
    failed = [job.id for job in ended if job.state != JobState.FINISHED]
    if failed:
        raise SystemExit(f"{len(failed)} jobs did not finish: {failed}")
    seconds = finished - ready
    return {
        "executor": executor,
        "workers": workers,
        "jobs": jobs,
        "setup_seconds": round(ready - started, 1),
        "seconds": round(seconds, 1),
        "jobs_per_hour": round(jobs * 3600 / seconds, 1),
        "mean_job_seconds": round(sum(job.finished_at - job.started_at for job in ended) / jobs, 2),
        "per_worker": {
            name: sum(1 for job in ended if job.worker == name) for name in sorted({j.worker for j in ended})
        },
        "load_average": os.getloadavg(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4", help="worker counts to measure (default: 1,2,4)")
    parser.add_argument("--jobs", type=int, default=8, help="jobs per measurement (default: 8)")
    parser.add_argument("--executor", choices=("local", "ray"), default="local")
    args = parser.parse_args()
    counts = [int(part) for part in args.workers.split(",")]
    print(
        f"# {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.1f} at start",
        file=sys.stderr,
    )
    results = []
    for count in counts:
        with tempfile.TemporaryDirectory(prefix="farm-bench-") as folder:
            result = measure(count, args.jobs, args.executor, Path(folder))
        print(json.dumps(result), flush=True)
        results.append(result)
    baseline = results[0]["jobs_per_hour"]
    print("\n| executor | workers | jobs | seconds | jobs per hour | vs first | mean s per job | jobs per worker |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for result in results:
        share = ", ".join(str(count) for count in result["per_worker"].values())
        print(
            f"| {result['executor']} | {result['workers']} | {result['jobs']} | {result['seconds']} | "
            f"{result['jobs_per_hour']} | {result['jobs_per_hour'] / baseline:.2f}x | {result['mean_job_seconds']} | "
            f"{share} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
