"""Continuing and re-rolling finished jobs from their kept latents (issue 16), on the tiny self-test model.

One job manager serves the module; its jobs are the smallest that show the point: window 1 (4 frames per section),
one step per section, raw frames compared bit for bit.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from helpers import SMALLEST, MemorySink, decode_video, pattern_image, read_raw_frames, tiny_home

from api.routes import PREFIX
from api.server import create_app
from framepack.errors import FieldError
from framepack.extend import ParentJob, generated_before, plan_metadata, resolve
from framepack.generate import START, generate, kept_dtype
from framepack.jobs.manager import JobManager
from framepack.jobs.models import JobState
from framepack.kept_latents import FORMAT, kept_bytes, load_kept, read_metadata
from framepack.models.loader import load_components
from framepack.models.recipe import tiny_recipe
from framepack.plan import Plan, make_plan
from framepack.planning import plan_request
from framepack.request import GenerateRequest
from framepack.runner import Runner
from framepack.ui.queue_panel import QueuePanel
from framepack.ui.tab import FramePackTab, caption_section

WAIT_S = 300
WINDOW = 1  # SMALLEST's latent window: a section is 4 frames, the overlap blend 1 frame
SECTION_S = 4 / 30  # one section at 30 fps
BASE = {**SMALLEST, "fps": 30, "codec": "none", "save_raw": True}


def section_frames(plan: dict, index: int) -> slice:
    section = plan["sections"][index]
    return slice(section["first_frame"], section["end_frame"])


@pytest.fixture(scope="module")
def home(tiny_model_dir, tmp_path_factory) -> Path:
    return tiny_home(tiny_model_dir, tmp_path_factory.mktemp("extend") / "home")


@pytest.fixture(scope="module")
def manager(home):
    runner = Runner(device="cpu", output_dir=home.parent / "out", home=home)
    manager = JobManager(home.parent / "data", runner)
    manager.start()
    yield manager
    manager.close(timeout=30)


def run(manager: JobManager, base: dict | None = None, **fields):
    job = manager.wait(manager.submit(GenerateRequest(**{**(base or {}), **fields})).id, WAIT_S)
    assert job.state == JobState.FINISHED, job.error
    return job


def frames(manager: JobManager, job) -> np.ndarray:
    return read_raw_frames(manager.output_dir / job.outputs[0])


@pytest.fixture(scope="module")
def f1(manager, home):
    """I2V F1 jobs: a parent of 3 sections, its continuation by 1, one job of 4, re-rolls of section 2 of both with
    one seed, and the continuation of the parent's re-roll."""
    image = str(pattern_image(home.parent / "start.png", 160, 128))
    fields = {**BASE, "variant": "f1", "init_image": image}
    jobs = {"parent": run(manager, fields, duration=3 * SECTION_S)}
    jobs["continued"] = run(manager, continue_job=jobs["parent"].id, duration=SECTION_S)
    jobs["whole"] = run(manager, fields, duration=4 * SECTION_S)
    jobs["rerolled"] = run(manager, reroll_job=jobs["whole"].id, reroll_section=2, reroll_seed=5)
    jobs["parent_rerolled"] = run(manager, reroll_job=jobs["parent"].id, reroll_section=2, reroll_seed=5)
    jobs["rerolled_continued"] = run(manager, continue_job=jobs["parent_rerolled"].id, duration=SECTION_S)
    return jobs


def test_continuing_an_f1_job_gives_exactly_the_frames_of_one_longer_job(manager, f1):
    parent, continued, whole = f1["parent"], f1["continued"], f1["whole"]
    assert (parent.plan["num_sections"], continued.plan["num_sections"]) == (3, 4)
    assert continued.plan["extend"] == {
        "kind": "continue", "parent": parent.id, "parent_sections": 3, "restored": [0, 1, 2], "reroll_section": None,
        "reroll_seed": None, "source_latents": False,
    }  # fmt: skip
    assert (continued.parent, continued.parent_kind) == (parent.id, "continue")
    assert continued.timings["sampled_steps"] == 1  # the added section only: no VAE round trip, nothing resampled
    assert continued.request["seed"] == parent.request["seed"] and continued.request["init_image"]
    assert frames(manager, continued).shape == (17, 112, 144, 3)  # 4 sections of 4 frames and the start
    assert np.array_equal(frames(manager, continued), frames(manager, whole))
    sidecar = json.loads((manager.output_dir / continued.outputs[-1]).read_text())
    assert (sidecar["parent"], sidecar["parent_kind"]) == (parent.id, "continue")
    assert "parent" not in json.loads((manager.output_dir / parent.outputs[-1]).read_text())


def test_a_continued_re_roll_continues_the_re_rolled_random_stream(manager, f1):
    """Its added section draws from the re-roll's kept stream state, so it equals re-rolling the longer job."""
    assert f1["rerolled_continued"].plan["extend"]["restored"] == [0, 1, 2]
    assert np.array_equal(frames(manager, f1["rerolled_continued"]), frames(manager, f1["rerolled"]))
    assert not np.array_equal(frames(manager, f1["continued"]), frames(manager, f1["rerolled_continued"]))


def test_an_f1_re_roll_keeps_the_frames_decoded_only_from_earlier_sections(manager, f1):
    whole, rerolled = f1["whole"], f1["rerolled"]
    assert rerolled.plan["extend"]["restored"] == [0, 1] and rerolled.plan["extend"]["reroll_seed"] == 5
    assert (rerolled.parent, rerolled.parent_kind) == (whole.id, "reroll")
    assert rerolled.timings["sampled_steps"] == 2  # sections 2 and 3
    before, after = frames(manager, whole), frames(manager, rerolled)
    # windows [start, 0] and [0, 1] hold only unchanged latents; window [1, 2] changes, and the 1-frame overlap
    # blend at its start ends window [0, 1]: frames 0 .. 4*window*(k-1) + 3 are decoded from unchanged latents only
    unchanged = 4 * WINDOW * (2 - 1) + 4
    assert np.array_equal(before[:unchanged], after[:unchanged])
    # the blend's first frame weighs the earlier window 1 and the re-rolled one 0; every later frame takes from it
    section = section_frames(rerolled.plan, 2)
    assert section.start == unchanged + 1
    assert all(not np.array_equal(before[i], after[i]) for i in range(unchanged + 1, len(before)))


@pytest.fixture(scope="module")
def bidirectional(manager):
    """A text-to-video bidirectional job of 3 sections."""
    return run(manager, BASE, variant="bidirectional", duration=3 * SECTION_S)


def test_a_bidirectional_re_roll_keeps_the_frames_of_the_sections_generated_before(manager, bidirectional):
    """Bidirectional runs from the end: re-rolling section 0 samples it again and keeps sections 1 and 2; the
    window [0, 1] blends into window [1, 2], so the frames from section 2 on are the ones decoded only from kept
    latents. Text-to-video: the start frame is restored, not sampled again."""
    parent = bidirectional
    rerolled = run(manager, reroll_job=parent.id, reroll_section=0, reroll_seed=9, reroll_prompt="now in the rain")
    assert parent.plan["generation_order"] == [2, 1, 0] and rerolled.plan["extend"]["restored"] == [1, 2]
    assert rerolled.plan["sections"][0]["prompt"] == "a kite, now in the rain"
    assert rerolled.plan["sections"][1]["prompt"] == parent.plan["sections"][1]["prompt"] == "a kite"
    assert rerolled.timings["sampled_steps"] == 1  # section 0 only: the start frame and sections 1, 2 are kept
    before, after = frames(manager, parent), frames(manager, rerolled)
    unchanged = 4 * WINDOW * (0 + 2) + 1
    assert unchanged == section_frames(parent.plan, 2).start
    assert np.array_equal(before[unchanged:], after[unchanged:])
    # the decode normalises over a whole window, so even the start frame (restored, not sampled) changes a little
    assert all(not np.array_equal(before[i], after[i]) for i in range(unchanged))


def test_kept_latents_are_the_jobs_own_with_the_stream_state_and_their_size_is_computed(manager, f1, tiny_components):
    parent = f1["parent"]
    path = manager.jobs_dir / "latents" / f"{parent.id}.latents.safetensors"
    plan = Plan.model_validate(parent.plan)
    assert parent.latents_kept and read_metadata(path)["format"] == FORMAT
    dtype = kept_dtype(tiny_components.transformer.dtype)
    assert dtype == torch.float32  # the self-test model runs in float32 on a CPU: its latents are kept as they are
    size = kept_bytes(plan, tiny_components.latent_channels, tiny_components.spatial_scale, dtype)
    assert (plan.height, plan.width, tiny_components.latent_channels) == (112, 144, 4)
    assert size == 4 * 4 * 14 * 18 * (1 + 3) + 5056  # start + 3 sections of one 4x14x18 float32 frame, the state
    assert 0 < path.stat().st_size - size < 1024  # the rest is the safetensors header
    kept = load_kept(path, plan, [START, 0, 1, 2])
    assert kept.latents[0].shape == (1, 4, 1, 14, 18) and kept.stream_state.shape == (5056,)
    assert kept.stream_state.dtype == torch.uint8  # a continuation starts from it (see the re-roll test above)

    # a minute at 640: 50 sections of 9 latent frames at 80x76, plus the start frame
    minute = make_plan(GenerateRequest(duration=60.0, resolution=640))
    assert (minute.num_sections, minute.latent_window_size, minute.height // 8, minute.width // 8) == (50, 9, 80, 76)
    published = kept_bytes(minute, 16, 8, kept_dtype(torch.bfloat16))  # the published transformer's dtype
    assert published < 100_000_000 and round(published / 1e6, 1) == 87.9
    assert round(kept_bytes(minute, 4, 8, torch.float32) / 1e6, 1) == 43.9  # the self-test model on a CPU


def test_a_16_bit_transformer_rounds_the_sections_it_samples_and_keeps_them_so(tiny_model_dir):
    """With the published model's bfloat16 transformer the latents a job decodes are the ones it keeps (2 bytes)."""
    recipe = tiny_recipe(tiny_model_dir)
    recipe = recipe.replace(transformer=dataclasses.replace(recipe.transformer, dtype="bfloat16"))
    components = load_components(recipe, device="cpu")
    request = GenerateRequest(**{**BASE, "variant": "f1", "duration": SECTION_S, "codec": "libx264", "save_raw": False})
    sampled = {}
    result = generate(
        components,
        request,
        plan_request(request),
        [],
        on_section_latents=lambda key, value: sampled.update({key: value}),
    )
    assert result.kept.latents[0].dtype == torch.bfloat16 and result.kept.latents[START].dtype == torch.float32
    assert torch.equal(sampled[0], sampled[0].bfloat16().float())  # rounded as sampled, before anything used it
    assert torch.equal(result.kept.latents[0].float(), sampled[0])
    assert torch.equal(result.kept.latents[START], sampled[START])  # the text-to-video start frame stays float32


def test_a_re_roll_restores_the_sections_generated_before_it_and_a_loop_is_not_continued():
    """Pure: the restored sections follow the generation order (a loop's connecting section comes last)."""
    fields = {**BASE, "duration": 3 * SECTION_S, "loop": True}
    loop = make_plan(GenerateRequest(**fields, variant="bidirectional"))
    assert loop.generation_order == [2, 1, 0, 3]
    assert (generated_before(loop, 1), generated_before(loop, 3)) == ([2], [0, 1, 2])
    assert generated_before(make_plan(GenerateRequest(**fields, variant="f1")), 2) == [0, 1]
    request = GenerateRequest(**fields, variant="bidirectional", seed=7).model_dump(mode="json")
    parent = ParentJob("looped", "finished", request, loop, None, plan_metadata(loop))
    with pytest.raises(FieldError, match=r"^continue_job: job looped is a seamless loop") as refused:
        resolve(GenerateRequest(continue_job="looped"), lambda _id: parent)
    assert refused.value.field == "continue_job"
    with pytest.raises(FieldError, match="a re-roll keeps job looped's loop") as refused:
        resolve(GenerateRequest(reroll_job="looped", reroll_section=1, loop=False), lambda _id: parent)
    rerolled = resolve(GenerateRequest(reroll_job="looped", reroll_section=1, reroll_seed=4), lambda _id: parent)
    planned = rerolled.plan(make_plan(rerolled.request))
    assert planned.extend.restored == [2] and planned.extend.reroll_seed == 4 and planned.loop_sections == 1
    assert (rerolled.request.seed, rerolled.request.loop, rerolled.request.filename) == (7, True, None)
    # a keyframe is taken for a section the re-roll samples (bidirectional, section 1: sections 1, 0 and the loop's)
    keyed = resolve(
        GenerateRequest(reroll_job="looped", reroll_section=1, keyframes={0: "key.png"}), lambda _id: parent
    )
    assert keyed.request.keyframes == {0: "key.png"}
    with pytest.raises(FieldError, match="a keyframe is accepted for the sections this job samples \\(0-1, 3\\)"):
        resolve(GenerateRequest(reroll_job="looped", reroll_section=1, keyframes={2: "key.png"}), lambda _id: parent)


def test_without_keep_latents_nothing_is_kept_and_continuing_is_refused(manager):
    job = run(manager, BASE, variant="f1", keep_latents=False)
    assert not job.latents_kept and not (manager.jobs_dir / "latents" / f"{job.id}.latents.safetensors").exists()
    with pytest.raises(FieldError, match=r"^continue_job: job \w+ has no kept latents") as refused:
        manager.submit(GenerateRequest(continue_job=job.id))
    assert refused.value.field == "continue_job"


def refusal(manager: JobManager, **fields) -> FieldError:
    with pytest.raises(FieldError) as refused:
        manager.submit(GenerateRequest(**fields))
    return refused.value


def test_continuations_and_re_rolls_are_refused_with_the_field_before_any_model_loads(manager, f1, home):
    fresh = JobManager(manager.jobs_dir, Runner(device="cpu", output_dir=manager.output_dir, home=home))
    parent = f1["parent"].id
    cases = {
        "continue_job": dict(continue_job="nosuchjob"),
        "variant": dict(continue_job=parent, variant="bidirectional"),
        "resolution": dict(continue_job=parent, resolution=256),
        "seed": dict(continue_job=parent, seed=1),
        "model": dict(continue_job=parent, model="default"),
        "keyframes": dict(continue_job=parent, keyframes={1: f1["parent"].request["init_image"]}),
        "reroll_section": dict(reroll_job=parent, reroll_section=3),
        "reroll_prompt": dict(reroll_job=parent, reroll_section=1, reroll_prompt="<lora:x:1> rain"),
        "duration": dict(reroll_job=parent, reroll_section=1, duration=9.0),
    }
    for field, fields in cases.items():
        error = refusal(fresh, **fields)
        assert error.field == field, (field, str(error))
    assert "no job with id 'nosuchjob'" in str(refusal(fresh, continue_job="nosuchjob"))
    assert str(refusal(fresh, reroll_job=parent, reroll_section=3)).endswith("has 3 sections: 0 to 2")
    assert fresh.list_jobs() == manager.list_jobs()  # nothing was queued
    assert fresh._runner._components is None  # and no model loaded
    fresh.close()

    manager.pause()
    try:
        queued = manager.submit(GenerateRequest(**BASE))
        error = refusal(manager, reroll_job=queued.id, reroll_section=0)
        assert (error.field, str(error)) == ("reroll_job", f"reroll_job: job {queued.id} is queued; only finished "
                                             "jobs can be re-rolled")  # fmt: skip
        manager.cancel(queued.id)
    finally:
        manager.resume()
    with pytest.raises(ValueError, match="continue_job and reroll_job: give one of them"):
        GenerateRequest(continue_job=parent, reroll_job=parent, reroll_section=0)
    with pytest.raises(ValueError, match="reroll_section: give the section to re-roll with reroll_job"):
        GenerateRequest(reroll_job=parent)
    with pytest.raises(ValueError, match="must be a job id"):
        GenerateRequest(continue_job="../../etc")


def test_a_bidirectional_continuation_continues_the_parents_kept_latents_as_its_source(
    manager, bidirectional, tiny_components
):
    """The parent's kept latents in time order (START, sections 0..2) are the source the 2 new sections start from;
    keep_source (on by default) puts the parent's frames first. The queue's job equals the engine given those latents
    by hand, so the order and the hand-over are checked, not only that something ran."""
    parent = bidirectional
    continued = run(manager, continue_job=parent.id, duration=2 * SECTION_S)
    plan = continued.plan
    assert (plan["mode"], plan["num_sections"], plan["generation_order"]) == ("extend", 2, [1, 0])
    assert plan["extend"]["source_latents"] and plan["extend"]["restored"] == []
    assert (plan["source"]["frames"], plan["source"]["latent_frames"], plan["source"]["kept_frames"]) == (13, 4, 13)
    assert continued.timings["sampled_steps"] == 2  # the two new sections only
    assert continued.request["keep_source"] and continued.request["init_image"] is None
    video, before = frames(manager, continued), frames(manager, parent)
    assert len(video) == plan["output_frames"] == 13 + 8  # the parent's 13 frames, then 2 sections of 4
    # the parent's frames come back bit for bit: its latents decoded in its own windows, the blend's first frame
    # taking the earlier window whole
    assert np.array_equal(video[:13], before)

    request = GenerateRequest.model_validate(continued.request)
    kept = load_kept(manager.jobs_dir / "latents" / f"{parent.id}.latents.safetensors",
                     Plan.model_validate(parent.plan), [START, 0, 1, 2])  # fmt: skip
    source = torch.cat([kept.latents[key] for key in (START, 0, 1, 2)], dim=2)
    by_hand = MemorySink()
    generate(tiny_components, request, Plan.model_validate(plan), [by_hand], source_latents=source)
    assert np.array_equal(video, np.concatenate(by_hand.chunks))
    reversed_order = torch.cat([kept.latents[key] for key in (START, 2, 1, 0)], dim=2)
    wrong = MemorySink()
    generate(tiny_components, request, Plan.model_validate(plan), [wrong], source_latents=reversed_order)
    assert not np.array_equal(video[13:], np.concatenate(wrong.chunks)[13:])

    new_only = run(manager, continue_job=parent.id, duration=2 * SECTION_S, keep_source=False)
    assert len(frames(manager, new_only)) == new_only.plan["output_frames"] == 9  # the parent's last frame + 8
    # one job continues another: the continuation's own kept latents continue again
    again = run(manager, continue_job=continued.id, duration=SECTION_S)
    assert again.plan["source"]["frames"] == 4 * (1 + 2 * WINDOW - 1) + 1 and len(frames(manager, again)) == 9 + 4


def test_the_queue_panel_continues_re_rolls_and_shows_the_variants_as_a_tree(manager, f1, tmp_path):
    tab = FramePackTab(manager, manager.output_dir, tmp_path / "presets.json")
    panel = QueuePanel(tab)
    ids = {name: job.id[:8] for name, job in f1.items()}
    assert panel.variants(f1["parent_rerolled"].id).splitlines()[1:] == [
        f"- `{ids['parent']}` finished: a kite",
        f"    - `{ids['continued']}` continues finished: a kite",
        f"    - **`{ids['parent_rerolled']}`** re-rolls section 2, finished: a kite",
        f"        - `{ids['rerolled_continued']}` continues finished: a kite",
    ]
    assert panel.variants(f1["whole"].id).splitlines()[1:] == [
        f"- **`{ids['whole']}`** finished: a kite",
        f"    - `{ids['rerolled']}` re-rolls section 2, finished: a kite",
    ]
    assert f"↳ re-rolls {ids['whole']}: a kite" in panel.table([manager.get(f1["rerolled"].id)])
    assert panel.reroll(f1["whole"].id, 9, -1, "") == f"reroll_section: job {f1['whole'].id} has 4 sections: 0 to 3"
    assert panel.continue_job("nosuchjob", 1.0, "") == "No job matches 'nosuchjob'."
    manager.pause()
    try:
        message = panel.continue_job(f1["whole"].id, 2 * SECTION_S, "now at night")
        queued = manager.list_jobs(states=(JobState.QUEUED,))[-1]
        assert message.startswith(f"Queued {queued.id[:8]} as #1: ") and "continues" in message
        assert [section["prompt"] for section in queued.plan["sections"]][3:] == ["a kite"] + ["now at night"] * 2
        message = panel.reroll(f1["whole"].id, 1, 77, "with a tail")
        rerolled = manager.list_jobs(states=(JobState.QUEUED,))[-1]
        assert message.startswith(f"Queued {rerolled.id[:8]} as #2: ")
        assert (rerolled.plan["extend"]["reroll_seed"], rerolled.plan["sections"][1]["prompt"]) == (
            77,
            "a kite, with a tail",
        )
        for job in (queued, rerolled):
            manager.cancel(job.id)
    finally:
        manager.resume()
    # a storyboard click picks the section (Gradio 3 gives the caption, later versions a dict holding it)
    assert tab.pick_section("abc", SimpleNamespace(value={"caption": "#2"})) == ("abc", 2)
    assert tab.pick_section("abc", SimpleNamespace(value="#0")) == ("abc", 0)
    assert caption_section("start") is None and caption_section({"image": {}, "caption": None}) is None


def test_the_rest_api_takes_the_fields_and_shows_the_parent(manager, bidirectional):
    app = create_app(manager, manager.output_dir, manage_lifecycle=False)
    with TestClient(app) as client:
        refused = client.post(f"{PREFIX}/jobs", json={"continue_job": "nosuchjob"})
        assert refused.status_code == 422 and refused.json()["error"]["field"] == "continue_job"
        refused = client.post(f"{PREFIX}/jobs", json={"reroll_job": bidirectional.id, "reroll_section": 1, "fps": 24})
        assert refused.status_code == 422 and refused.json()["error"]["field"] == "fps"
        body = {"reroll_job": bidirectional.id, "reroll_section": 1, "reroll_seed": 3, "codec": "libx264"}
        made = client.post(PREFIX, json=body)
        assert made.status_code == 200, made.text
        job = client.get(f"{PREFIX}/jobs/{made.json()['id']}").json()
    assert (job["parent"], job["parent_kind"], job["latents_kept"]) == (bidirectional.id, "reroll", True)
    assert job["plan"]["extend"]["restored"] == [2] and job["plan"]["extend"]["reroll_seed"] == 3
    frames_written, width, height, codec, _ = decode_video(manager.output_dir / made.json()["filename"])
    assert (frames_written, width, height, codec) == (job["plan"]["output_frames"], 128, 128, "h264")


def test_the_cli_continues_a_job_of_the_data_folder_as_a_job_of_it(manager, f1, home, tmp_path, framepack_cli):
    parent, data = f1["parent"], str(manager.jobs_dir)
    flags = ["--continue-job", parent.id, "--duration", str(SECTION_S), "--data-dir", data, "--device", "cpu"]
    held = framepack_cli("generate", *flags, "--default-output-dir", str(tmp_path), home=home, cwd=tmp_path)
    assert held.returncode == 2 and "another job manager" in held.stderr and "create-video.py" in held.stderr
    refused = framepack_cli("generate", "--reroll-job", parent.id, "--reroll-section", "5", "--data-dir", data)
    assert (refused.returncode, refused.stderr.strip()) == (
        2,
        f"error: reroll_section: job {parent.id} has 3 sections: 0 to 2",
    )
    manager.stop()  # a server over the folder holds it; stopped, the CLI runs the job there
    try:
        result = framepack_cli("generate", *flags, "--default-output-dir", str(tmp_path), home=home, cwd=tmp_path)
    finally:
        manager.start()
    assert result.returncode == 0, result.stderr
    assert f"continues {parent.id[:8]} (3 sections restored)" in result.stdout
    job_id = result.stdout.split("job ", 1)[1].split()[0]
    job = manager.get(job_id)
    assert (job.state, job.parent, job.latents_kept) == (JobState.FINISHED, parent.id, True)
    raw = tmp_path / job.outputs[0]
    assert f"output: {raw}" in result.stdout and f"--continue-job {job_id}" in result.stdout
    assert np.array_equal(read_raw_frames(raw), frames(manager, f1["continued"]))


def test_deleting_a_job_removes_its_kept_latents_and_its_children_then_fail_clearly(manager, f1):
    manager.pause()
    try:
        child = manager.submit(GenerateRequest(continue_job=f1["rerolled_continued"].id, duration=SECTION_S))
        manager.delete(f1["rerolled_continued"].id)
        assert not (manager.jobs_dir / "latents" / f"{f1['rerolled_continued'].id}.latents.safetensors").exists()
    finally:
        manager.resume()
    failed = manager.wait(child.id, WAIT_S)
    assert failed.state == JobState.FAILED and failed.error.field == "continue_job"
    assert "was deleted after this job was queued" in failed.error.message
