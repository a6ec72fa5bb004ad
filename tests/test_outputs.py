"""Output names and files (issue 10, items 3 to 6): names reserved at submit for every face, filename rules,
all-or-nothing outputs with disk full as its own error, final renames that never replace a file, and LoRA tags
checked at submit. Through the job manager, the REST API, the tab and the CLI, with the tiny self-test model."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from helpers import FAST, decode_video, read_raw_frames, tiny_home
from pydantic import ValidationError
from safetensors.torch import save_file

from api.routes import PREFIX
from api.server import create_app
from framepack import outputs
from framepack.errors import FieldError
from framepack.jobs.manager import JobManager
from framepack.jobs.models import JobConflict, JobState
from framepack.outputs import (
    MAX_NAME_BYTES,
    MAX_STEM_BYTES,
    OutputCommit,
    OutputExists,
    derived_names,
    rename_no_replace,
)
from framepack.plan import make_plan
from framepack.request import GenerateRequest
from framepack.runner import Runner
from framepack.video.raw import RawFramesSink

ALL_OUTPUTS = {"save_raw": True, "save_frames": "png"}
WAIT_S = 120
ROOT = Path(__file__).resolve().parents[1]
FREE_SPACE = re.compile(r"\((\d+ bytes|\d+\.\d (KiB|MiB|GiB|TiB)) free\)")
NINES = "9" * 400
BAD_FILENAMES = [
    ".racejob.partial",
    ".hidden",
    "a\nb",
    "\U0001f600" * 200,
    "..",
    "a/b",
    "a\\b",
    "x.partial",
    "a:b",
    " x",
]


def request(**changes) -> GenerateRequest:
    return GenerateRequest(**{**FAST, **changes})


def assert_error(response, status: int, kind: str, field: str | None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["kind"], error["field"]) == (kind, field), error
    return error


class Server:
    """The REST app over a real manager whose runner uses the tiny model (started unless `start=False`)."""

    def __init__(self, root: Path, tiny_model_dir: Path, start: bool = True):
        self.root = root
        self.output_dir = root / "out"
        self.runner = Runner(device="cpu", output_dir=self.output_dir, home=tiny_home(tiny_model_dir, root / "home"))
        self.manager = JobManager(root / "data", self.runner)
        self.client = TestClient(create_app(self.manager, self.output_dir, manage_lifecycle=start))

    def __enter__(self) -> Server:
        self.client.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.client.__exit__(*exc)
        self.manager.close()


@pytest.fixture
def server(tiny_model_dir, tmp_path):
    with Server(tmp_path, tiny_model_dir) as started:
        yield started


@pytest.fixture
def idle(tiny_model_dir, tmp_path):
    """Jobs stay queued: the manager is never started."""
    with Server(tmp_path, tiny_model_dir, start=False) as server:
        yield server


# ---------------------------------------------------------------------------------- 3: names reserved at submit


def test_a_name_is_taken_while_a_queued_job_will_write_it_and_free_once_that_job_ended(make_manager):
    manager = make_manager(start=False)
    first = manager.submit(request(filename="race"))
    with pytest.raises(JobConflict) as taken:
        manager.submit(request(filename="race", prompt="another kite"))
    assert taken.value.field == "filename"
    assert f"'race' is taken by job {first.id} (queued)" in str(taken.value)
    assert [job.id for job in manager.list_jobs()] == [first.id]
    # default names (the job id) never clash; another folder is another name
    unnamed = [manager.submit(request()) for _ in range(2)]
    assert unnamed[0].request["filename"] != unnamed[1].request["filename"]
    elsewhere = manager.submit(request(filename="race", output_dir=str(manager.output_dir / "sub")))
    manager.cancel(first.id)
    assert manager.submit(request(filename="race")).request["filename"] == "race"
    assert elsewhere.state == JobState.QUEUED


@pytest.mark.parametrize("existing", ["race.mp4", "race.webm", "race.safetensors", "race.json", "race"])
def test_a_name_is_taken_by_an_existing_output_of_any_kind(make_manager, existing):
    manager = make_manager(start=False)
    folder = manager.output_dir
    folder.mkdir(parents=True)
    if existing == "race":
        (folder / existing).mkdir()  # a frames folder
    else:
        (folder / existing).write_text("someone's")
    with pytest.raises(JobConflict) as taken:
        manager.submit(request(filename="race"))
    assert taken.value.field == "filename" and f"an output named '{existing}' exists already" in str(taken.value)
    assert manager.list_jobs() == []


def test_back_to_back_jobs_with_one_name_never_replace_each_other(make_manager, tmp_path):
    manager = make_manager()
    first = manager.submit(request(filename="shared"))
    with pytest.raises(JobConflict, match="taken by job"):
        manager.submit(request(filename="shared", prompt="a different video"))
    assert manager.wait(first.id, WAIT_S).state == JobState.FINISHED
    with pytest.raises(JobConflict, match="exists already"):
        manager.submit(request(filename="shared", prompt="a different video"))
    assert sorted(os.listdir(tmp_path / "out")) == ["shared.json", "shared.mp4"]
    assert '"prompt": "a kite"' in (tmp_path / "out" / "shared.json").read_text()


def test_the_tab_shows_a_taken_name_as_not_started(make_manager, tmp_path):
    gr = pytest.importorskip("gradio")  # noqa: F841
    from framepack.ui.controls import default_values
    from framepack.ui.tab import create_tab

    manager = make_manager(start=False)
    handlers = create_tab(manager, tmp_path / "out", tmp_path / "presets.json").framepack
    values = {**default_values(), **FAST, "filename": "tabbed"}
    first = next(handlers.generate(*handlers.ordered(values)))
    assert first[0] and "Queued" in first[1]
    second = handlers.generate(*handlers.ordered(values))
    refused = next(second)
    assert refused[0] == "" and refused[1].startswith(f"**Not started:** filename: 'tabbed' is taken by job {first[0]}")
    assert next(second, None) is None


def test_two_back_to_back_api_submits_with_one_name_get_202_then_409(idle):
    client = idle.client
    first = client.post(f"{PREFIX}/jobs", json={**FAST, "filename": "twice"})
    assert first.status_code == 202, first.text
    for route in (f"{PREFIX}/jobs", PREFIX):
        error = assert_error(client.post(route, json={**FAST, "filename": "twice"}), 409, "conflict", "filename")
        assert f"taken by job {first.json()['id']} (queued)" in error["message"]
    assert len(client.get(f"{PREFIX}/jobs").json()["jobs"]) == 1
    assert client.post(f"{PREFIX}/jobs", json=FAST).status_code == 202  # a default name never clashes


def test_a_file_that_appears_while_the_job_runs_is_never_replaced(server, monkeypatch):
    """The final renames never replace: a name taken during the run fails the job (409 conflict naming filename),
    the other file is left as it is and none of the job's outputs remain."""
    import framepack.runner

    generate = framepack.runner.generate

    def generate_then_someone_writes(*args, **kwargs):
        result = generate(*args, **kwargs)
        (server.output_dir / "clash.json").write_text("someone else's")
        return result

    monkeypatch.setattr(framepack.runner, "generate", generate_then_someone_writes)
    response = server.client.post(PREFIX, json={**FAST, **ALL_OUTPUTS, "filename": "clash"})
    error = assert_error(response, 409, "conflict", "filename")
    assert "'clash.json' appeared in the output folder while the job ran" in error["message"]
    assert str(server.root) not in error["message"]
    job = server.client.get(f"{PREFIX}/jobs/{response.json()['id']}").json()
    assert job["state"] == "failed" and job["error"]["kind"] == "conflict"
    assert sorted(os.listdir(server.output_dir)) == ["clash.json"]
    assert (server.output_dir / "clash.json").read_text() == "someone else's"


def test_the_runner_refuses_a_taken_name_before_any_model_work(runner):
    runner.output_dir.mkdir(parents=True)
    (runner.output_dir / "kept.json").write_text("mine")
    with pytest.raises(OutputExists) as taken:
        runner.run(request(filename="kept"))
    assert taken.value.names == ["kept.json"] and "'kept.json' exists already" in str(taken.value)
    assert runner._components is None
    assert sorted(os.listdir(runner.output_dir)) == ["kept.json"]


@pytest.mark.parametrize("with_renameat2", [True, False], ids=["renameat2", "link-or-checked-rename"])
def test_rename_no_replace_keeps_what_is_there(tmp_path, monkeypatch, with_renameat2):
    if not with_renameat2:
        monkeypatch.setattr(outputs, "_renameat2", lambda: None)
    (tmp_path / "new").write_text("new")
    (tmp_path / "old").write_text("old")
    with pytest.raises(FileExistsError):
        rename_no_replace(tmp_path / "new", tmp_path / "old")
    assert (tmp_path / "old").read_text() == "old" and (tmp_path / "new").read_text() == "new"
    (tmp_path / "folder").mkdir()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "inside").write_text("kept")
    with pytest.raises(OSError) as folder_clash:  # FileExistsError, or ENOTEMPTY from a plain POSIX rename
        rename_no_replace(tmp_path / "folder", tmp_path / "taken")
    assert folder_clash.value.errno in (errno.EEXIST, errno.ENOTEMPTY)
    assert (tmp_path / "taken" / "inside").read_text() == "kept"
    rename_no_replace(tmp_path / "new", tmp_path / "moved")
    rename_no_replace(tmp_path / "folder", tmp_path / "folder-moved")
    assert (tmp_path / "moved").read_text() == "new" and not (tmp_path / "new").exists()
    assert (tmp_path / "folder-moved").is_dir() and not (tmp_path / "folder").exists()


def test_a_commit_that_meets_a_taken_name_rolls_back_the_renames_done(tmp_path):
    commit = OutputCommit()
    for name in ("a.mp4", "a.safetensors", "a.json"):
        (tmp_path / f".a.partial{Path(name).suffix}").write_text(name)
        commit.stage(tmp_path / f".a.partial{Path(name).suffix}", tmp_path / name)
    (tmp_path / "a.json").write_text("someone else's")
    with pytest.raises(OutputExists) as clash:
        commit.commit()
    assert clash.value.names == ["a.json"] and clash.value.during_commit
    assert sorted(os.listdir(tmp_path)) == ["a.json"] and (tmp_path / "a.json").read_text() == "someone else's"


# ---------------------------------------------------------------------------------------- 4: filename rules


def short_id(value: str) -> str:
    return repr(value)[:20]


@pytest.mark.parametrize("filename", BAD_FILENAMES, ids=short_id)
def test_bad_filenames_are_refused_by_the_request_naming_the_field(filename):
    with pytest.raises(ValidationError) as refused:
        request(filename=filename)
    assert [error["loc"] for error in refused.value.errors()] == [("filename",)]


@pytest.mark.parametrize("filename", BAD_FILENAMES, ids=short_id)
def test_bad_filenames_are_422_over_the_api(idle, filename):
    for route in (f"{PREFIX}/jobs", f"{PREFIX}/plan", PREFIX):
        assert_error(idle.client.post(route, json={**FAST, "filename": filename}), 422, "invalid", "filename")
    assert idle.client.get(f"{PREFIX}/jobs").json()["jobs"] == []


def test_filename_messages_say_what_is_allowed():
    messages = {}
    for filename in (".racejob.partial", "a\nb", "x.partial", "\U0001f600" * 200):
        with pytest.raises(ValidationError) as refused:
            request(filename=filename)
        messages[filename] = refused.value.errors()[0]["msg"]
    assert "must not start with '.'" in messages[".racejob.partial"]
    assert "must be printable" in messages["a\nb"]
    assert "must not contain '.partial'" in messages["x.partial"]
    assert f"at most {MAX_STEM_BYTES} characters" in messages["\U0001f600" * 200]
    with pytest.raises(ValidationError, match=f"is 180 bytes of UTF-8; at most {MAX_STEM_BYTES}"):
        request(filename="\U0001f600" * 45)


def test_the_longest_name_fits_every_output_and_temporary_name():
    stem = "\u00e9" * (MAX_STEM_BYTES // 2) + "x" * (MAX_STEM_BYTES % 2)
    assert len(stem.encode()) == MAX_STEM_BYTES and request(filename=stem).filename == stem
    longest = max(len(name.encode()) for name in derived_names(stem))
    assert longest == MAX_NAME_BYTES <= 255
    assert max(derived_names(stem), key=lambda name: len(name.encode())) == f".{stem}.partial.safetensors"


def test_a_job_with_the_longest_unicode_name_writes_and_serves_every_output(server):
    stem = "\u00e9" * (MAX_STEM_BYTES // 2) + "x" * (MAX_STEM_BYTES % 2)
    response = server.client.post(PREFIX, json={**FAST, **ALL_OUTPUTS, "filename": stem})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["outputs"] == [f"{stem}.mp4", f"{stem}.safetensors", stem, f"{stem}.json"]
    download = server.client.get(body["url"])
    assert download.status_code == 200 and download.headers["content-type"] == "video/mp4"
    frames = body["plan"]["output_frames"]
    assert decode_video(server.output_dir / f"{stem}.mp4")[0] == frames
    assert len(read_raw_frames(server.output_dir / f"{stem}.safetensors")) == frames
    assert len(os.listdir(server.output_dir / stem)) == frames


# --------------------------------------------------------------------------------- 5: all-or-nothing outputs


def fill_disk(monkeypatch, where: str) -> None:
    """A simulated full disk (ENOSPC) at one write: the sidecar's, the raw file's (half of a chunk written), or
    the rename of the second output into place."""
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if where == "sidecar":
        write_text = Path.write_text

        def sidecar_write(self, *args, **kwargs):
            if not self.name.endswith(".partial.json"):
                return write_text(self, *args, **kwargs)
            with open(self, "w") as handle:
                handle.write("{")
            raise full

        monkeypatch.setattr(Path, "write_text", sidecar_write)
    elif where == "raw":
        write = RawFramesSink.write

        def raw_write(self, frames):
            write(self, frames[: len(frames) // 2])
            raise full

        monkeypatch.setattr(RawFramesSink, "write", raw_write)
    else:
        rename = outputs.rename_no_replace
        renamed = []

        def second_rename_fails(source, target):
            if renamed:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
            rename(source, target)
            renamed.append(target)

        monkeypatch.setattr(outputs, "rename_no_replace", second_rename_fails)


@pytest.mark.parametrize("where", ["sidecar", "raw", "rename"])
def test_disk_full_leaves_nothing_and_the_same_name_is_accepted_again(make_manager, tmp_path, monkeypatch, where):
    manager = make_manager()
    folder = tmp_path / "out"
    fill_disk(monkeypatch, where)
    job = manager.wait(manager.submit(request(**ALL_OUTPUTS, filename="full")).id, WAIT_S)
    assert job.state == JobState.FAILED and job.error.kind == "disk_full", job.error
    assert f"no space left in {folder} (" in job.error.message and FREE_SPACE.search(job.error.message)
    assert job.outputs == [] and os.listdir(folder) == []  # no video, raw, frames, sidecar or temporary file

    monkeypatch.undo()
    retry = manager.wait(manager.submit(request(**ALL_OUTPUTS, filename="full")).id, WAIT_S)
    assert retry.state == JobState.FINISHED, retry.error
    assert retry.outputs == ["full.mp4", "full.safetensors", "full", "full.json"]
    assert sorted(os.listdir(folder)) == ["full", "full.json", "full.mp4", "full.safetensors"]


def test_disk_full_is_507_over_the_api_and_the_server_keeps_serving(server, monkeypatch):
    fill_disk(monkeypatch, "sidecar")
    response = server.client.post(PREFIX, json={**FAST, **ALL_OUTPUTS, "filename": "full"})
    error = assert_error(response, 507, "disk_full", None)
    assert "disk full" in error["message"] and FREE_SPACE.search(error["message"])
    assert response.json()["id"]
    assert os.listdir(server.output_dir) == []
    listed = server.client.get(f"{PREFIX}/jobs")
    assert listed.status_code == 200 and listed.json()["jobs"][0]["error"]["kind"] == "disk_full"

    monkeypatch.undo()
    retry = server.client.post(PREFIX, json={**FAST, **ALL_OUTPUTS, "filename": "full"})
    assert retry.status_code == 200, retry.text
    assert retry.json()["outputs"] == ["full.mp4", "full.safetensors", "full", "full.json"]


# ------------------------------------------------------------------------------------ 6: LoRA tags at submit


def lora_folder(folder: Path, outside: Path) -> Path:
    """good (a real safetensors file), broken (not safetensors), escape (a link to a file outside the folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"x": torch.zeros(2)}, str(folder / "good.safetensors"))
    (folder / "broken.safetensors").write_bytes(b"\xff" * 64)
    save_file({"x": torch.zeros(2)}, str(outside))
    os.symlink(outside, folder / "escape.safetensors")
    return folder


LORA_REFUSALS = [
    (f"a kite <lora:good:{NINES}>", "prompt", "LoRA 'good' has weight inf; allowed finite numbers from -10 to 10"),
    ("a kite <lora:good:10.5>", "prompt", "LoRA 'good' has weight 10.5; allowed finite numbers from -10 to 10"),
    ("a kite <lora:missing>", "prompt", "LoRA 'missing' not found in the LoRA folder; available: broken, good"),
    ("a kite <lora:../outside>", "prompt", "LoRA name '../outside' points outside the LoRA folder"),
    ("a kite <lora:escape>", "prompt", "LoRA name 'escape' points outside the LoRA folder"),
    ("a kite <lora:broken:0.5>", "prompt", "LoRA 'broken' is not a readable safetensors file"),
]


def test_lora_weights_are_finite_and_bounded_in_the_plan():
    with pytest.raises(FieldError) as nines:
        make_plan(GenerateRequest(prompt=f"a cat <lora:good:{NINES}>"))
    assert nines.value.field == "prompt" and "weight inf" in str(nines.value)
    with pytest.raises(FieldError) as section:
        make_plan(GenerateRequest(prompt="a cat", section_prompts="runs <lora:good:-11>"))
    assert section.value.field == "section_prompts" and "weight -11" in str(section.value)
    assert make_plan(GenerateRequest(prompt="a cat <lora:good:-10> <lora:other:10>")).loras == [
        ("good", -10.0),
        ("other", 10.0),
    ]


@pytest.mark.parametrize(("prompt", "field", "message"), LORA_REFUSALS, ids=[case[2][:28] for case in LORA_REFUSALS])
def test_lora_tags_are_checked_at_submit_before_queueing(make_manager, runner, tmp_path, prompt, field, message):
    manager = make_manager(start=False)
    runner.lora_dir = lora_folder(tmp_path / "loras", tmp_path / "outside.safetensors")
    with pytest.raises(FieldError) as refused:
        manager.submit(request(prompt=prompt))
    assert refused.value.field == field and message in str(refused.value)
    assert str(tmp_path) not in str(refused.value)
    assert manager.list_jobs() == []
    assert manager.submit(request(prompt="a kite <lora:good:0.8>")).state == JobState.QUEUED


def test_lora_refusals_over_the_api_are_422_naming_the_field_without_server_paths(idle):
    lora_folder(idle.runner.lora_dir[0], idle.root / "outside.safetensors")
    for prompt, field, message in LORA_REFUSALS:
        error = assert_error(idle.client.post(f"{PREFIX}/jobs", json={**FAST, "prompt": prompt}), 422, "invalid", field)
        assert message in error["message"] and str(idle.root) not in error["message"]
    for route in (f"{PREFIX}/plan", PREFIX):
        assert_error(idle.client.post(route, json={**FAST, "prompt": LORA_REFUSALS[0][0]}), 422, "invalid", "prompt")
    section = {**FAST, "section_prompts": "rises\nfalls <lora:missing>"}
    assert_error(idle.client.post(f"{PREFIX}/jobs", json=section), 422, "invalid", "section_prompts")
    assert idle.client.get(f"{PREFIX}/jobs").json()["jobs"] == []
    assert idle.client.post(f"{PREFIX}/jobs", json={**FAST, "prompt": "a kite <lora:good>"}).status_code == 202


# ------------------------------------------------------------------------------------------------------ CLI


def test_the_cli_never_replaces_an_existing_output(tmp_path):
    (tmp_path / "boat.json").write_text("my notes")
    env = {**os.environ, "FRAMEPACK_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    flags = ["--model", "tiny", "--resolution", "128", "--duration", "0.4", "--steps", "2", "--latent-window-size", "3"]
    result = subprocess.run(
        [sys.executable, "-m", "framepack", "generate", *flags, "--output-dir", str(tmp_path), "--filename", "boat"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: --filename: boat.json exists already in {tmp_path}; choose another --filename or remove it "
        "(outputs never replace a file)"
    )
    assert sorted(name for name in os.listdir(tmp_path) if name != "home") == ["boat.json"]
    assert (tmp_path / "boat.json").read_text() == "my notes"
