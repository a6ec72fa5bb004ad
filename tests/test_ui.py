"""The Gradio tab without a browser: controls built from the request model, the value->request mapping of every
field, the live plan and timeline, presets, load-from-video and a tiny generation through the generate handler.
A last test builds the tab under Gradio 3.43.2 (SD.Next's version) in the host-like Python of `.ci/host-env.sh`."""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers import FAST, REPO, decode_video, host_like_python
from PIL import Image

gr = pytest.importorskip("gradio")

from framepack.plan import make_plan  # noqa: E402
from framepack.request import GenerateRequest  # noqa: E402
from framepack.ui import compat  # noqa: E402
from framepack.ui.controls import (  # noqa: E402
    CONTROL_FIELDS,
    ENHANCED,
    HOST_CHOSEN,
    IMAGE_FIELDS,
    KEYFRAMES,
    default_values,
    field_bounds,
    field_choices,
    field_default,
    field_multiple,
    field_type,
    request_from_values,
)
from framepack.ui.presets import LAST_USED, PresetError, PresetStore  # noqa: E402
from framepack.ui.tab import FramePackTab, create_tab  # noqa: E402
from framepack.ui.timeline import BACKGROUND, BAR_HEIGHT, BAR_TOP, render_timeline, section_colour  # noqa: E402

# Text fields whose free value must satisfy a validator.
TEXT_VALUES = {
    "aspect_ratio": "16:9",
    "codec": "libx265",
    "codec_options": "crf:20",
    "filename": "clip",
    "model": "tiny",
    "enhancer": "tiny",
    "latent_paddings": "1",
}
# The enhanced-prompts table: [sections, section prompt, enhanced text] rows (a row without a text is left out)
ENHANCED_ROWS = [["0-1", "a kite", "a red kite climbs into a pale sky"], ["2", "a boat", ""]]


@pytest.fixture
def tab(make_manager, tmp_path) -> tuple[gr.Blocks, FramePackTab]:
    blocks = create_tab(make_manager(start=False), tmp_path / "out", tmp_path / "presets.json")
    return blocks, blocks.framepack


def picture(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def changed_value(name: str):
    """A UI value for `name` away from the field default, derived from the field (bounds, choices, type)."""
    default = field_default(name)
    if name in IMAGE_FIELDS:
        return picture()
    if name == KEYFRAMES:
        return [[0, picture(seed=1)]]
    if name == ENHANCED:
        return ENHANCED_ROWS
    choices = field_choices(name)
    if choices:
        return next(choice for choice in choices if choice != default)
    kind = field_type(name)
    if kind is bool:
        return not default
    if kind in (int, float):
        low, high = field_bounds(name)
        candidate = (default or 0) + (field_multiple(name) or 1)  # a step the field allows
        if high is not None and candidate > high:
            candidate = low
        return float(candidate)  # sliders and numbers may hand floats back for int fields
    return TEXT_VALUES.get(name, f"changed {name}")


# ---------------------------------------------------------------------------------------------- controls


def test_every_request_field_has_a_control_or_is_documented_host_chosen(tab):
    blocks, _ = tab
    controls = blocks.framepack_controls
    for name in GenerateRequest.model_fields:
        assert name in controls or name in HOST_CHOSEN, f"request field {name!r} has no control in the tab"
    assert set(CONTROL_FIELDS) == set(controls)
    for name, control in controls.items():
        if name == KEYFRAMES:
            continue
        assert control.elem_id == f"framepack_{name}"
        info = GenerateRequest.model_fields[name]
        if field_choices(name) and name != "model":
            choices = [choice[1] if isinstance(choice, tuple) else choice for choice in control.choices]
            assert choices == field_choices(name)
        low, high = field_bounds(name)
        if isinstance(control, gr.Slider):
            assert (control.minimum, control.maximum) == (low, high), name
        if name not in IMAGE_FIELDS:
            assert control.info == info.description


@pytest.mark.parametrize("name", list(GenerateRequest.model_fields))
def test_each_control_value_reaches_its_request_field(name):
    if name in HOST_CHOSEN:
        pytest.skip(f"host-chosen: {HOST_CHOSEN[name]}")
    values = default_values()
    if name in ("single_frame", "reference_image", "init_mask", "reference_mask"):
        values["init_image"] = picture(seed=2)  # a single frame edits the init image
        values["single_frame"] = name != "single_frame"
    if name == "reference_mask":
        values["reference_image"] = picture(seed=3)
    if name == "video_strength":
        values["init_video"] = "source.mp4"  # video-to-video re-renders a video
    base = request_from_values(values)
    values[name] = changed_value(name)
    if name == "end_image":
        values["init_image"] = picture(seed=2)  # FLF2V needs the start frame
    request = request_from_values(values)
    assert getattr(request, name) != getattr(base, name)
    value = getattr(request, name)
    if name in IMAGE_FIELDS:
        assert value.startswith("data:image/png;base64,")
    elif name == KEYFRAMES:
        assert list(value) == [0] and value[0].startswith("data:image/png;base64,")
    elif name == ENHANCED:
        assert value == {"a kite": "a red kite climbs into a pale sky"}
    elif field_type(name) in (int, float):
        assert value == field_type(name)(values[name])
    else:
        assert value == values[name]


def test_plan_line_shows_the_time_estimate_of_earlier_jobs(tab, runner):
    from framepack.estimate import record_speed

    _, handlers = tab
    values = {**default_values(), "model": "tiny", "duration": 4.0}
    text, _ = handlers.plan(*handlers.ordered(values))
    assert "Time estimate: none yet" in text
    request = request_from_values(values)
    plan = make_plan(request)  # T2V: 4 x 25 steps, 109 frames
    record_speed(runner.home, request, plan, {"sampled_steps": 10, "sampling": 5.0, "decode": 1.09, "total": 8.09})
    text, _ = handlers.plan(*handlers.ordered(values))
    assert "Time estimate: about 53 s on this machine" in text  # 0.5 s x 100 steps + 0.01 s x 109 frames + 2 s


def test_a_bad_value_names_its_field(tab):
    _, handlers = tab
    values = default_values()
    values["end_image"] = picture()
    text, timeline = handlers.plan(*handlers.ordered(values))
    assert "Cannot plan" in text and "init_image" in text and timeline is None


# ---------------------------------------------------------------------------------------------- plan and timeline


def test_plan_line_is_the_plan_the_job_runs(tab):
    _, handlers = tab
    values = {
        **default_values(),
        "duration": 3.0,
        "section_prompts": "walk\njump",
        "variant": "f1",
        "aspect_ratio": "16:9",
    }
    text, timeline = handlers.plan(*handlers.ordered(values))
    expected = make_plan(request_from_values(values))
    assert f"**Plan:** {expected.summary()}" in text
    assert expected.num_sections == 2  # 3 s at 30 fps in windows of 9: round(90 / 36)
    assert bar_runs(timeline) == [section_colour(index, 2) for index in range(2)]  # one box per section, in order
    assert np.array_equal(np.asarray(timeline), np.asarray(render_timeline(expected)))  # the picture of this plan

    values["init_image"] = picture(200, 100)
    values["aspect_ratio"] = "auto"
    text, _ = handlers.plan(*handlers.ordered(values))
    assert make_plan(request_from_values(values), (200, 100)).summary() in text


def test_the_plan_line_encodes_a_picture_once_while_the_user_types(tab, monkeypatch):
    from framepack.runner import plan_request

    _, handlers = tab
    values = {**default_values(), "duration": 3.0, "init_image": picture(200, 100)}
    changed = {**values, "init_image": picture(100, 200)}
    expected, expected_changed = (plan_request(request_from_values(named)).summary() for named in (values, changed))
    assert handlers.request(handlers.ordered(values)) == request_from_values(values)  # the same data URL
    encoded = []
    save = Image.Image.save
    monkeypatch.setattr(
        Image.Image, "save", lambda self, *args, **kwargs: (encoded.append(self.size), save(self, *args, **kwargs))[1]
    )
    for prompt in ("a", "a k", "a kite"):  # keystrokes: the same picture each time (a new object, as Gradio sends)
        text, _ = handlers.plan(
            *handlers.ordered({**values, "prompt": prompt, "init_image": values["init_image"].copy()})
        )
        assert f"**Plan:** {expected}" in text, text
    assert encoded == []  # encoded once above, kept since
    text, _ = handlers.plan(*handlers.ordered(changed))  # another picture is encoded, and planned by its size
    assert encoded == [(100, 200)] and f"**Plan:** {expected_changed}" in text and expected != expected_changed


def test_plan_line_offers_the_self_test_model_when_weights_are_missing(tab, tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    _, handlers = tab
    text, _ = handlers.plan(*handlers.ordered({**default_values(), "model": "default"}))
    assert "Model not on this machine" in text and "transformer" in text and "hf download" in text
    assert "Choose model **tiny**" in text and "SELF-TEST" in text
    # as a Markdown renderer that passes HTML shows it: the advice is whole, `<folder>` included
    shown = shown_text(text)
    assert "point the recipe line 'transformer: <folder>' at a local folder with the files." in shown, shown
    text, _ = handlers.plan(*handlers.ordered({**default_values(), "model": "tiny"}))
    assert "Model not on this machine" not in text and "SELF-TEST model" in text


def shown_text(markdown: str) -> str:
    """What a reader sees of `markdown` rendered with raw HTML allowed (CommonMark), tags dropped."""
    import html
    import re

    from markdown_it import MarkdownIt

    return html.unescape(re.sub(r"<[^>]*>", "", MarkdownIt("commonmark").render(markdown)))


def bar_row(image: Image.Image) -> list[tuple[int, int, int]]:
    """The pixels of a row through the section boxes, below their text."""
    return [tuple(int(channel) for channel in pixel) for pixel in np.asarray(image)[BAR_TOP + BAR_HEIGHT - 2]]


def bar_colours(image: Image.Image) -> set[tuple[int, int, int]]:
    return set(bar_row(image))


def bar_runs(image: Image.Image) -> list[tuple[int, int, int]]:
    """The colours of the boxes along the bar, left to right (a run of one colour is one box)."""
    runs = [colour for colour, _ in itertools.groupby(bar_row(image))]
    return [colour for colour in runs if colour != BACKGROUND]


def test_timeline_shows_one_colour_per_section():
    one = make_plan(GenerateRequest(duration=1.0))
    four = make_plan(GenerateRequest(duration=5.0, keyframes={}))
    assert one.num_sections == 1 and four.num_sections == 4
    image_one, image_four = render_timeline(one), render_timeline(four)
    assert image_one.size == image_four.size
    assert bar_runs(image_four) == [section_colour(i, 4) for i in range(4)]
    assert bar_runs(image_one) == [section_colour(0, 1)]
    assert {section_colour(i, 4) for i in range(4)} <= bar_colours(image_four)
    assert section_colour(0, 1) in bar_colours(image_one)
    assert len(bar_colours(image_four) - {BACKGROUND}) > len(bar_colours(image_one) - {BACKGROUND})


# ----------------------------------------------------------------------------------------- keyframes, presets, recipe


def test_keyframes_add_replace_and_clear(tab):
    _, handlers = tab
    values = handlers.ordered({**default_values(), "duration": 3.0})
    keyframes, gallery, text, _ = handlers.add_keyframe(picture(seed=3), 1, [], *values)
    assert [index for index, _ in keyframes] == [1] and len(gallery) == 1 and "Plan" in text
    keyframes, gallery, _, timeline = handlers.add_keyframe(picture(seed=4), 1, keyframes, *values)
    assert len(keyframes) == 1 and timeline is not None
    keyframes, gallery, text, _ = handlers.add_keyframe(picture(seed=4), 9, keyframes, *values)
    assert "Cannot plan" in text and "keyframes" in text  # section 9 does not exist in a 2-section plan
    assert handlers.clear_keyframes(*values)[:2] == ([], [])


def test_presets_save_load_delete_and_last_used(tab, tmp_path):
    _, handlers = tab
    values = {**default_values(), "prompt": "a red kite", "steps": 7.0, "variant": "f1", "init_image": picture()}
    choices, status = handlers.save_preset("windy", *handlers.ordered(values))
    assert "Saved" in status and handlers.presets.names() == ["windy"]
    loaded = handlers.load_preset("windy")
    named = dict(zip(CONTROL_FIELDS, loaded[:-1]))
    assert named["prompt"] == "a red kite" and named["steps"] == 7 and named["variant"] == "f1"
    assert not isinstance(named["init_image"], Image.Image)  # images are not part of presets (left unchanged)
    assert handlers.delete_preset("windy")[1].startswith("Deleted") and handlers.presets.names() == []
    assert "no preset" in handlers.load_preset("windy")[-1]

    store = PresetStore(tmp_path / "presets.json")
    with pytest.raises(PresetError):
        store.save(LAST_USED, {})
    store.save_last_used({"prompt": "last one", "not_a_field": 1})
    restored = handlers.restore_last_used()
    named = dict(zip(CONTROL_FIELDS, restored[:-1]))
    assert named["prompt"] == "last one" and named["steps"] == field_default("steps")


def test_recipe_view_and_edit_selects_a_recipe_file(tab):
    _, handlers = tab
    text = handlers.show_recipe("default", "bidirectional")
    assert "transformer:" in text and "lllyasviel" in text
    assert "not valid" in handlers.use_recipe("transformer nonsense ::", "bidirectional")[1]
    update, status = handlers.use_recipe(text, "f1")
    path = Path(update["value"])
    assert path.is_file() and "next job" in status
    assert request_from_values({"model": str(path)}).model == str(path)


def test_load_and_unload_the_model(tab, runner):
    _, handlers = tab
    status = handlers.load(*handlers.ordered({**default_values(), "model": "tiny"}))
    assert "Loaded the SELF-TEST model" in status and runner._components is not None and runner._components.self_test
    assert "unloaded" in handlers.unload() and runner._components is None
    assert "Cannot load" in handlers.load(*handlers.ordered({**default_values(), "model": "missing.json"}))


# ---------------------------------------------------------------------------------------------- generation


def test_generate_streams_progress_and_ends_with_a_playable_video_that_loads_back(make_manager, tmp_path):
    job_manager = make_manager(start=True)
    handlers = FramePackTab(job_manager, tmp_path / "out", tmp_path / "presets.json")
    values = {**default_values(), **FAST, "seed": 5.0, "section_prompts": "rising\nfalling", "duration": 1.2}
    updates = list(handlers.generate(*handlers.ordered(values)))
    job_id, status, _, board, video, outputs = updates[-1]
    assert "Finished" in status, status
    assert any("step" in update[1] for update in updates[:-1])
    assert any(update[2] is not None for update in updates)  # a section preview was shown
    plan = make_plan(request_from_values(values))
    # the storyboard holds every finished section in time order (and the T2V start frame)
    expected = (["start"] if plan.start_frame_pass else []) + [f"#{index}" for index in range(plan.num_sections)]
    assert [caption for _, caption in board] == expected

    # preview and storyboard are sent when a section changed them, "no change" in between; the end sends all
    def unchanged(value) -> bool:
        return isinstance(value, dict) and value == compat.update()

    streamed = updates[1:-1]  # between the "Queued" line and the end
    pictures = [update[2:4] for update in streamed if not unchanged(update[2])]
    assert pictures and all(isinstance(preview, np.ndarray) and isinstance(board, list) for preview, board in pictures)
    assert len(pictures) <= len(expected)
    assert all(unchanged(update[3]) for update in streamed if unchanged(update[2]))
    assert any("step" in update[1] for update in streamed if unchanged(update[2]))
    assert all(max(image.size) <= 160 for image, _ in board)
    frames, width, height, codec, pixel_format = decode_video(Path(video))
    assert (frames, width, height, codec, pixel_format) == (
        plan.output_frames,
        plan.width,
        plan.height,
        "h264",
        "yuv420p",
    )
    assert video.endswith(".mp4")
    # the files as links (the one naming rule: framepack-<date>-<time>-<seed>-<id>), each under Gradio's file route
    job = job_manager.get(job_id)
    assert job.outputs == [Path(video).name, Path(video).with_suffix(".json").name]
    assert Path(video).name.startswith("framepack-") and Path(video).stem.endswith(f"-5-{job_id[:8]}")
    for name in job.outputs:
        assert f"[{name}]({compat.file_url(tmp_path / 'out' / name)})" in outputs

    # last-used settings were saved on Generate
    named = dict(zip(CONTROL_FIELDS, handlers.restore_last_used()[:-1]))
    assert named["section_prompts"] == "rising\nfalling" and named["model"] == "tiny"

    # load from video fills every control from the file's metadata
    loaded = handlers.load_from_video(video)
    named, status = dict(zip(CONTROL_FIELDS, loaded[: len(CONTROL_FIELDS)])), loaded[len(CONTROL_FIELDS)]
    assert "Loaded" in status and "SELF-TEST" in status
    request = request_from_values(named)
    expected = request_from_values(values)
    for name in CONTROL_FIELDS:
        if name == "filename":
            continue  # the job fixed it to its id
        assert getattr(request, name) == getattr(expected, name), name
    assert "Cannot read" in handlers.load_from_video(str(tmp_path / "missing.mp4"))[len(CONTROL_FIELDS)]


def test_generate_refuses_bad_input_and_cancel_without_a_job(tab):
    _, handlers = tab
    values = {**default_values(), **FAST, "end_image": picture()}
    updates = list(handlers.generate(*handlers.ordered(values)))
    assert len(updates) == 1 and "Not started" in updates[0][1] and "init_image" in updates[0][1]
    assert handlers.cancel("", True) == "Nothing to cancel."
    assert "Cannot cancel" in handlers.cancel("nope", False)


def test_cancel_of_a_queued_job_through_the_tab(tab):
    _, handlers = tab  # the manager is not started: the job stays queued
    stream = handlers.generate(*handlers.ordered({**default_values(), **FAST}))
    job_id = next(stream)[0]
    assert "Cancel requested" in handlers.cancel(job_id, True)
    final = list(stream)[-1]
    assert "Cancelled" in final[1]


def test_compat_shims():
    assert compat.file_path(None) is None
    assert compat.file_path("/x/y.mp4") == Path("/x/y.mp4")
    assert compat.file_path(type("Temp", (), {"name": "/tmp/a.mp4"})()) == Path("/tmp/a.mp4")
    assert compat.file_path({"path": "/tmp/b.mp4"}) == Path("/tmp/b.mp4")
    image = compat.component(gr.Image, sources=["upload"], label="x", not_an_argument=1)
    assert image.label == "x"


# ---------------------------------------------------------------------------------------------- Gradio 3.43


BUILD_SCRIPT = textwrap.dedent(
    """
    import os, sys, tempfile
    os.environ["HF_HUB_OFFLINE"] = "1"
    sys.path.insert(0, sys.argv[1])
    from pathlib import Path
    import gradio
    from framepack.jobs.manager import JobManager
    from framepack.runner import Runner
    from framepack.ui.controls import CONTROL_FIELDS, default_values
    from framepack.ui.tab import create_tab
    from framepack.ui import compat
    folder = Path(tempfile.mkdtemp())
    manager = JobManager(folder / "data", Runner(device="cpu", output_dir=folder / "out"))
    blocks = create_tab(manager, folder / "out", folder / "presets.json")
    compat.enable_queue(blocks)
    config = blocks.get_config_file()
    ids = [c.get("props", {}).get("elem_id") for c in config["components"]]
    assert all(f"framepack_{name}" in ids for name in CONTROL_FIELDS if name != "keyframes"), ids
    text, image = blocks.framepack.plan(*blocks.framepack.ordered(default_values()))
    assert "Plan" in text and image is not None
    print("BUILT", gradio.__version__, len(config["dependencies"]))
    """
)


def test_tab_builds_on_gradio_3_43():
    python = host_like_python()
    if python is None:
        pytest.skip(
            "no host-like Python with Gradio 3.43.2 (create it with .ci/host-env.sh or set FRAMEPACK_HOST_PYTHON)"
        )
    result = subprocess.run(
        [python, "-c", BUILD_SCRIPT, str(REPO)], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "BUILT 3.43.2" in result.stdout


def test_tab_builds_on_the_current_gradio():
    result = subprocess.run(
        [sys.executable, "-c", BUILD_SCRIPT, str(REPO)], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "BUILT" in result.stdout
