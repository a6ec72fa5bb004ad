"""The tab's handlers for a first-time user, without a browser: bad values refused by the handlers (Gradio's own
refusals handed on), Generate's state, images kept with the last-used settings, the missing translation."""

from __future__ import annotations

import pytest
from helpers import SMALLEST, pattern_image
from PIL import Image

gr = pytest.importorskip("gradio")

from framepack.ui import compat  # noqa: E402
from framepack.ui.controls import CONTROL_FIELDS, UnreadableImage, default_values  # noqa: E402
from framepack.ui.tab import create_tab  # noqa: E402
from framepack.ui.widgets import tolerant  # noqa: E402


@pytest.fixture
def tab(make_manager, tmp_path):
    blocks = create_tab(make_manager(start=False), tmp_path / "out", tmp_path / "presets.json")
    return blocks.framepack


def values(**changes) -> list:
    named = {**default_values(), **SMALLEST, **changes}
    return [named[name] for name in CONTROL_FIELDS]


def test_values_gradio_refuses_reach_the_handlers_which_name_the_field(tab, tmp_path):
    with gr.Blocks():
        number = tolerant(gr.Number(minimum=0.1, maximum=600))
        image = tolerant(gr.Image(type="pil"))
        text = tolerant(gr.Textbox())
    assert number.preprocess(0) == 0.0 and number.preprocess(5) == 5  # out of bounds: as it is
    assert isinstance(text, gr.Textbox) and "preprocess" not in vars(text)  # nothing else is changed
    notes = tmp_path / "notes.png"
    notes.write_text("a text file")
    from gradio.data_classes import FileData

    payload = FileData(path=str(notes), orig_name="notes.png") if compat.GRADIO_MAJOR >= 4 else str(notes)
    refused = image.preprocess(payload)
    assert isinstance(refused, UnreadableImage)

    line, picture = tab.plan(*values(duration=0.0))
    assert (line, picture) == ("**Cannot plan:** duration: Input should be greater than 0", None)
    line, _ = tab.plan(*values(init_image=refused))
    assert line == "**Cannot plan:** init_image: not a readable image (PNG, JPEG, WebP, ...)"
    updates = list(tab.generate(*values(init_image=refused)))
    assert updates == [
        ("", "**Not started:** init_image: not a readable image (PNG, JPEG, WebP, ...)", None, [], None, "")
    ]
    keyframes, gallery, line, _ = tab.add_keyframe(refused, 0, [], *values())
    assert (keyframes, gallery) == ([], gr.update()) and line.endswith(
        "keyframes.0: not a readable image (PNG, JPEG, WebP, ...)"
    )
    assert tab.add_keyframe(pattern_image(tmp_path / "k.png", 64, 64), -1, [], *values())[2] == (
        "**Keyframe not added:** keyframes: section -1: sections count from 0"
    )


def test_generate_is_enabled_only_when_the_plan_can_run(tab):
    assert tab.plan_view(*values())[2] == gr.update(interactive=True)
    assert tab.plan_view(*values(duration=0.0))[2] == gr.update(interactive=False)
    line, _, button = tab.plan_view(*values(model="default", cache="none"))  # not on this machine (tests are offline)
    assert "Model not on this machine" in line and button == gr.update(interactive=False)


def test_images_are_kept_with_the_last_used_settings_and_a_lost_one_is_named(tab, tmp_path):
    start, end = pattern_image(tmp_path / "start.png", 96, 64), pattern_image(tmp_path / "end.png", 96, 64, seed=3)
    keyframe = Image.open(pattern_image(tmp_path / "key.png", 96, 64, seed=5))
    request = tab.request(
        values(init_image=Image.open(start), end_image=str(end), duration=1.0, keyframes=[[1, keyframe]])
    )
    tab.remember(request)
    folder = tmp_path / "last-used-images"
    assert sorted(path.name for path in folder.iterdir()) == ["end_image.png", "init_image.png", "keyframe-1.png"]

    restored = tab.restore_last_used()
    named = dict(zip(CONTROL_FIELDS, restored, strict=False))
    gallery, note = restored[-2], restored[-1]
    assert named["init_image"].tobytes() == Image.open(start).convert("RGB").tobytes()
    assert named["end_image"].tobytes() == Image.open(end).convert("RGB").tobytes()
    assert [index for index, _ in named["keyframes"]] == [1] and named["keyframes"][0][1].startswith("data:image/png")
    assert [caption for _, caption in gallery] == ["section 1"] and note == ""
    assert tab.plan(*[named[name] for name in CONTROL_FIELDS])[0].startswith("**Plan:**")

    (folder / "end_image.png").unlink()
    (folder / "keyframe-1.png").write_text("damaged")
    restored = tab.restore_last_used()
    named = dict(zip(CONTROL_FIELDS, restored, strict=False))
    assert named["end_image"] is None and named["keyframes"] == [] and restored[-2] == []
    assert restored[-1] == (
        "**Not restored:** the last-used end image, keyframe of section 1 could not be read back (the file is gone "
        "or damaged); add it again, or the video is made without it."
    )

    tab.remember(tab.request(values()))  # no images any more: none is kept
    assert list(folder.iterdir()) == [] and tab.restore_last_used()[-1] == ""


def test_the_missing_gradio_translation_is_filled(tab, make_manager, tmp_path):
    blocks = create_tab(make_manager(start=False), tmp_path / "out2", tmp_path / "presets2.json")
    if not hasattr(gr, "I18n"):
        pytest.skip("this Gradio has no custom translations (and no such key)")
    assert blocks.i18n_instance.translations_dict["en"]["common.complete"] == "Complete"
