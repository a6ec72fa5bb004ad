"""How long a planned job will take on this machine, from what earlier jobs of the same kind measured.

After each finished job the runner records three rates under the job's key (model, variant, frame size, window and
the settings that change the time per step or per frame) in `<FRAMEPACK_HOME>/speed.json`:

- `step_seconds`: sampling seconds per denoising step (sections and the T2V start frame that were sampled, not
  restored from a checkpoint; their previews included),
- `frame_seconds`: seconds per generated frame of the decode stage (VAE windows, joining, interpolation, encoding),
- `other_seconds`: the rest of the job once the model is loaded (prompt and image encoding, closing the outputs).

Each is the mean of the last `KEEP` jobs of the key. A plan of the same key then shows
`estimated_seconds = step_seconds * total_steps + frame_seconds * generated_frames + other_seconds`, rounded to
0.1 s, and None until a job of its key has finished. Loading the model is not included (the first job after a
start loads it; later ones reuse it). The device is not part of the key: the store describes the device this
machine's jobs ran on.

Imports neither torch nor the engine: `python -m framepack plan` reads it.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from framepack.plan import Plan
from framepack.request import GenerateRequest

logger = logging.getLogger(__name__)

STORE_FILE = "speed.json"
KEEP = 5  # jobs per key the rates average over
RATES = ("step_seconds", "frame_seconds", "other_seconds")


def speed_key(request: GenerateRequest, plan: Plan) -> str:
    """The kind of job whose rates are comparable: same model, variant, frame size and window, and the settings
    that change the time per step (cache, attention, offload, real CFG's second call) or per frame (interpolation)."""
    calls = 2 if request.cfg_scale > 1.0 else 1
    return (
        f"{request.model}|{plan.variant}|{plan.width}x{plan.height}|window {plan.latent_window_size}|"
        f"cache {request.cache}|attention {request.attention}|offload {request.offload}|calls {calls}|"
        f"interpolate {plan.interpolate}"
    )


def read_store(home: Path) -> dict[str, dict[str, list[float]]]:
    """The stored rates by key; empty when there are none or the file cannot be read (it is only an estimate)."""
    path = Path(home) / STORE_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        logger.warning("ignoring unreadable speed measurements %s: %s", path, error)
        return {}
    if not isinstance(data, dict):
        return {}
    entries = {}
    for key, entry in data.items():
        if isinstance(entry, dict) and all(_numbers(entry.get(rate)) for rate in RATES):
            entries[key] = {rate: [float(value) for value in entry[rate]] for rate in RATES}
    return entries


def _numbers(values: object) -> bool:
    return (
        isinstance(values, list)
        and bool(values)
        and all(isinstance(value, (int, float)) and value >= 0 for value in values)
    )


def measured_rates(timings: Mapping[str, float], plan: Plan) -> dict[str, float] | None:
    """A finished job's rates from its timings (`framepack.generate`), None when it sampled no step (a job resumed
    after its last section) or lacks a timing."""
    steps = timings.get("sampled_steps", 0)
    if steps <= 0 or any(name not in timings for name in ("sampling", "decode", "total")):
        return None
    sampling, decode = float(timings["sampling"]), float(timings["decode"])
    return {
        "step_seconds": sampling / steps,
        "frame_seconds": decode / plan.generated_frames,
        "other_seconds": max(0.0, float(timings["total"]) - sampling - decode),
    }


def record_speed(home: Path, request: GenerateRequest, plan: Plan, timings: Mapping[str, float]) -> bool:
    """Add a finished job's rates to the store (the last KEEP per key are kept); False when it had none."""
    rates = measured_rates(timings, plan)
    if rates is None:
        return False
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    store = read_store(home)
    entry = store.setdefault(speed_key(request, plan), {rate: [] for rate in RATES})
    for rate in RATES:
        entry[rate] = [*entry[rate], round(rates[rate], 6)][-KEEP:]
    descriptor, temporary = tempfile.mkstemp(prefix=".speed.", suffix=".json", dir=home)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(store, handle, indent=1)
            handle.write("\n")
        os.replace(temporary, home / STORE_FILE)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return True


def estimate_seconds(home: Path, request: GenerateRequest, plan: Plan) -> float | None:
    """Seconds the planned job should take once the model is loaded, from the mean rates of earlier jobs of its
    key; None when none has finished."""
    entry = read_store(home).get(speed_key(request, plan))
    if entry is None:
        return None
    step, frame, other = (sum(entry[rate]) / len(entry[rate]) for rate in RATES)
    return round(step * plan.total_steps + frame * plan.generated_frames + other, 1)
