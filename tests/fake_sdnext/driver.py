"""Runs inside the fake SD.Next root (cwd): loads the extension like SD.Next does, drives it, prints one line
`REPORT {json}`. Mode (argv[1]): routes | tabs | degraded. Settings come as JSON in argv[2]."""

import base64
import importlib.util
import io
import json
import os
import sys
import time
from pathlib import Path

host_root = Path.cwd()
extension_root = host_root / "extensions" / os.environ["EXTENSION_NAME"]
mode = sys.argv[1]
given = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
report = {}

from modules import call_queue, script_callbacks, shared  # noqa: E402


def load_scripts(root: Path, script: Path):
    """modules.scripts_manager.load_scripts + script_loading.load_module: the extension root first on sys.path
    while the script is imported (module name = the file's name), then sys.path is restored."""
    saved = sys.path
    sys.path = [str(root)] + sys.path
    try:
        spec = importlib.util.spec_from_file_location(os.path.basename(script), script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path = saved


# Another extension, loaded first, owns the bare name `api` (as SD.Next keeps it in sys.modules).
other = host_root / "extensions" / "other-extension"
load_scripts(other, other / "scripts" / "other.py")
report["api_taken_by"] = sys.modules["api"].__file__

for key, value in given.get("opts", {}).items():
    setattr(shared.opts, key, value)
module = load_scripts(extension_root, extension_root / "scripts" / "framepack_extension.py")
report["api_still"] = sys.modules["api"].__file__
report["problems"] = module.extension.problems
report["callbacks"] = [
    len(script_callbacks.callbacks_ui_tabs), len(script_callbacks.callbacks_app_started),
    len(script_callbacks.callbacks_ui_settings),
]  # fmt: skip
report["manager_built_at_import"] = module.extension._service is not None
if not module.extension.problems:
    import framepack

    report["framepack_from"] = str(Path(framepack.__file__).resolve().parent.parent)

for fn in script_callbacks.callbacks_ui_settings:
    fn()
report["settings"] = {
    key: [info.default, info.label, getattr(info.component, "__name__", None), info.component_args, list(info.section)]
    for key, info in shared.opts.data_labels.items()
    if key.startswith("framepack_")
}
for key, value in given.get("settings", {}).items():
    setattr(shared.opts, key, value)

if mode in ("tabs", "degraded"):
    import gradio as gr

    report["gradio"] = gr.__version__
    tabs = [tab for fn in script_callbacks.callbacks_ui_tabs for tab in fn()]
    report["tabs"] = [[isinstance(blocks, gr.Blocks), title, elem_id] for blocks, title, elem_id in tabs]
    components = {getattr(block, "elem_id", None): block for block in tabs[0][0].blocks.values()}
    report["model_control"] = getattr(components.get("framepack_model"), "value", None)
    report["cache_control"] = getattr(components.get("framepack_cache"), "value", None)
    notice = components.get("framepack_unavailable")
    report["unavailable_text"] = notice.value if notice is not None else None
    # the settings page builds each setting as modules/ui_settings.create_setting_component does
    built = {}
    with gr.Blocks():
        for key, info in shared.opts.data_labels.items():
            if key.startswith("framepack_"):
                value = getattr(shared.opts, key)
                component = info.component(
                    label=info.label, value=value, elem_id=f"setting_{key}", **(info.component_args or {})
                )
                built[key] = component.value
    report["settings_built"] = built

for fn in script_callbacks.callbacks_app_started:
    fn(None, shared.app)
report["routes"] = [[path, list(methods)] for path, methods in shared.api.routes]

from fastapi.testclient import TestClient  # noqa: E402

client = TestClient(shared.app)
if mode == "degraded":
    answers = [client.post("/sdapi/v1/framepack", json={"prompt": "x"}), client.get("/sdapi/v1/framepack/jobs/abc")]
    report["degraded_answers"] = [[answer.status_code, answer.json()] for answer in answers]
if mode != "routes":
    print("REPORT " + json.dumps(report))
    sys.exit(0)

from PIL import Image  # noqa: E402

buffer = io.BytesIO()
Image.new("RGB", (96, 80), (200, 120, 40)).save(buffer, format="PNG")
image = base64.b64encode(buffer.getvalue()).decode()
FAST = dict(resolution=128, latent_window_size=3, steps=2, duration=0.8, prompt="a kite", init_image=image)
LONG = dict(FAST, steps=50, duration=8.0, cache="none")  # seconds of work, whatever the cache


def job(job_id):
    return client.get(f"/sdapi/v1/framepack/jobs/{job_id}").json()


def wait_state(job_id, states, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        current = job(job_id)
        if current["state"] in states:
            return current
        time.sleep(0.05)
    return job(job_id)


ENDED = ("finished", "failed", "cancelled")

# 1. A request without a model, the host's default model setting being the self-test model.
shared.state.progress_log.clear()
response = client.post("/sdapi/v1/framepack", json={**FAST, "filename": "from-host"})
report["first"] = [response.status_code, response.json()]
first_id = response.json().get("id")
report["first_job"] = job(first_id) if first_id else None
report["progress_log"] = list(shared.state.progress_log)
report["lock_acquired_after_first"] = call_queue.queue_lock.acquired
# what the older extension's create-video.py does after its blocking POST
progress = client.get("/sdapi/v1/progress?skip_current_image=true").json()
report["progress_after"] = progress
report["history_all"] = client.get(f"/sdapi/v1/history?id={progress.get('id')}").json()
report["history_of_job"] = client.get(f"/sdapi/v1/history?id={first_id}").json()
report["state_calls"] = [list(call) for call in shared.state.calls]

# 2. An explicit model wins over the setting: the published model is not in SD.Next's Hugging Face cache.
response = client.post("/sdapi/v1/framepack/jobs", json={**FAST, "model": "default"})
report["explicit_default"] = [response.status_code, response.json()]

# 3. The default model as a recipe file over SD.Next's Hugging Face cache, a LoRA from SD.Next's LoRA folder,
#    and the default cache setting.
for key, value in given.get("settings_later", {}).items():
    setattr(shared.opts, key, value)
response = client.post(
    "/sdapi/v1/framepack", json={**FAST, "prompt": "a kite <lora:host-style:0.7>", "filename": "recipe"}
)
report["recipe"] = [response.status_code, response.json()]
report["recipe_job"] = job(response.json()["id"]) if response.status_code == 200 else None

# 4. Interrupts. a) while the job runs
started = client.post("/sdapi/v1/framepack/jobs", json={**LONG, "filename": "interrupted"}).json()
wait_state(started["id"], ("running",) + ENDED)
time.sleep(1.0)
shared.state.interrupt()
report["interrupt_running"] = wait_state(started["id"], ENDED)["state"]

# b) after submit, before the job begins (the worker waits for the host's GPU lock meanwhile); a stale flag is
#    left from a) while SD.Next is idle
report["stale_flag_before_b"] = shared.state.interrupted
with call_queue.queue_lock:
    queued = client.post("/sdapi/v1/framepack/jobs", json=LONG).json()
    time.sleep(0.3)
    shared.state.interrupt()
    time.sleep(0.3)
report["interrupt_before_begin"] = [wait_state(queued["id"], ENDED)[key] for key in ("state", "progress")]

# c) 0 to 100 ms after submit, the worker free
report["interrupt_after_submit"] = []
for delay in (0.0, 0.05, 0.1):
    submitted = client.post("/sdapi/v1/framepack/jobs", json=LONG).json()
    time.sleep(delay)
    shared.state.interrupt()
    report["interrupt_after_submit"].append([delay, wait_state(submitted["id"], ENDED)["state"]])

# d) one press cancels the running job only, not the one queued behind it
running = client.post("/sdapi/v1/framepack/jobs", json=LONG).json()
wait_state(running["id"], ("running",) + ENDED)
behind = client.post("/sdapi/v1/framepack/jobs", json={**FAST, "filename": "behind"}).json()
time.sleep(0.2)
shared.state.interrupt()
report["one_press"] = [wait_state(running["id"], ENDED)["state"], wait_state(behind["id"], ENDED)["state"]]

report["lock_held_after"] = call_queue.queue_lock.locked()
report["outdir_files"] = sorted(p.name for p in (host_root / "outputs" / "video").iterdir())
module.extension.service().stop(10)
print("REPORT " + json.dumps(report))
