"""SD.Next's `modules.shared`, reduced to what the extension touches: log, opts (with OptionInfo), cmd_opts,
state, and the API object whose `add_api_route` puts routes on the app (with the host's auth when set).
`/sdapi/v1/progress`, `/sdapi/v1/history` and `/sdapi/v1/interrupt` are registered the way modules/api/api.py
does, with the logic of modules/api/server.py."""

import logging
import os
import time
from types import SimpleNamespace

from fastapi import FastAPI

from modules.options import OptionInfo, Options  # noqa: F401 - SD.Next re-exports OptionInfo here
from modules.shared_state import State

log = logging.getLogger("sd")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
models_path = os.path.join(ROOT, "models")

opts = Options({
    "outdir_video": OptionInfo("outputs/video", "Folder for videos", folder=True),
    "hfcache_dir": OptionInfo(os.path.join(models_path, "huggingface"), "Folder for Huggingface cache", folder=True),
    "lora_dir": OptionInfo(os.path.join(models_path, "Lora"), "Folder with LoRA network(s)", folder=True),
    "offline_mode": OptionInfo(False, "Force offline mode"),
})  # fmt: skip
cmd_opts = SimpleNamespace(auth=None, lora_dir=opts.lora_dir)
state = State()


class Api:
    def __init__(self, app):
        self.app = app
        self.routes = []
        self.add_api_route("/sdapi/v1/progress", get_progress, methods=["GET"])
        self.add_api_route("/sdapi/v1/history", get_history, methods=["GET"])
        self.add_api_route("/sdapi/v1/interrupt", post_interrupt, methods=["POST"])

    def add_api_route(self, path, fn, auth=True, **kwargs):
        self.routes.append((path, tuple(kwargs.get("methods") or ())))
        self.app.add_api_route(path, endpoint=fn, **kwargs)


def get_history(id: str | None = None):  # noqa: A002 - SD.Next's query parameter name
    if id is not None and len(id) > 0:
        return [item for item in state.state_history if item["id"] == id]
    return state.state_history


def get_progress(skip_current_image: bool = False):
    if state.job_count == 0 and state.sampling_step == 0:
        return {"id": state.id, "progress": 0, "eta_relative": 0, "state": state.dict(), "textinfo": state.textinfo}
    batch_x = max(state.job_no, 0)
    batch_y = max(state.job_count, 1)
    step_x = max(state.sampling_step, 0)
    prev_steps = max(state.sampling_steps, 1)
    while step_x > state.sampling_steps:
        state.sampling_steps += prev_steps
    step_y = max(state.sampling_steps, 1)
    current = step_y * batch_x + step_x
    total = step_y * batch_y
    progress = min((current / total) if current > 0 and total > 0 else 0, 1)
    elapsed = time.time() - state.time_start
    eta = (elapsed / progress) - elapsed if progress > 0 else 0
    return {"id": state.id, "progress": round(progress, 2), "eta_relative": round(eta, 2), "state": state.dict(),
            "textinfo": state.textinfo}  # fmt: skip


def post_interrupt():
    state.interrupt()


app = FastAPI()
api = Api(app)
