"""The tab for a first-time user, in a real browser (chromium driven by Playwright, as tests/test_ui_browser.py),
against `python -m framepack serve` with the tiny self-test model: bad values and a text file as the start image
give one clear message (no red "Error" pills, checked in screenshots, and no traceback in the server log); the
title, the model choice near the top and a Generate that cannot be pressed while the plan cannot run; keyframes,
storyboard and presets that show what they hold; no untranslated Gradio key after a cancel; images that come back
after a reload, or a note naming the one that could not."""

from __future__ import annotations

import io
import re

import numpy as np
import test_ui_browser as browser
from PIL import Image
from test_ui_browser import RUN_TIMEOUT_MS, choose_model, fill_form, open_accordion, set_value

pytestmark = browser.pytestmark
playwright_api, server, page, init_image = browser.playwright_api, browser.server, browser.page, browser.init_image

PILL_RED = np.array([185, 28, 28])  # the text and border colour of Gradio's red "Error" pill (current Gradio)
OUTPUTS = (
    "framepack_plan", "framepack_timeline", "framepack_progress", "framepack_job_id", "framepack_preview",
    "framepack_storyboard", "framepack_video", "framepack_outputs",
)  # fmt: skip


def click(page, elem_id: str) -> None:
    page.click(f"#{elem_id} button, button#{elem_id}")


def generate_button(page):
    return page.locator("button#framepack_generate, #framepack_generate button").first


def wait_for_generate(page, enabled: bool) -> None:
    """Generate's state comes from the handler that writes the plan line, but the browser may show it a moment later
    than the text, so a test waits for it rather than reading it once."""
    page.wait_for_function(
        "(enabled) => { const b = document.querySelector('button#framepack_generate, #framepack_generate button');"
        " return !!b && b.disabled === !enabled; }",
        arg=enabled,
        timeout=30_000,
    )


def wait_for_text(page, elem_id: str, pattern: str, timeout: int = 30_000) -> None:
    page.wait_for_function(
        "([id, pattern]) => new RegExp(pattern).test((document.getElementById(id) || {}).innerText || '')",
        arg=[elem_id, pattern],
        timeout=timeout,
    )


def red_pill_pixels(page, tmp_path, name: str) -> dict[str, int]:
    """Pixels of the red pill's colour in a screenshot of each output (also saved whole as `name`.png)."""
    page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
    counts = {}
    for elem_id in OUTPUTS:
        element = page.locator(f"#{elem_id}").first
        box = element.bounding_box()
        if not element.is_visible() or box is None or box["height"] < 1:
            counts[elem_id] = 0  # nothing shown there (an empty Markdown has no height)
            continue
        shot = Image.open(io.BytesIO(element.screenshot())).convert("RGB")
        pixels = np.asarray(shot).astype(int)
        counts[elem_id] = int((np.abs(pixels - PILL_RED).sum(-1) < 40).sum())
    return counts


def error_pills(page) -> int:
    return page.evaluate("() => [...document.querySelectorAll('.error')].filter(e => e.innerText.trim() === 'Error')"
                         ".length")  # fmt: skip


def server_log(server) -> str:
    return (server["base"] / "server.log").read_text(errors="replace")


def test_bad_values_show_one_message_and_no_error_pills_nor_traceback(page, server, init_image, tmp_path):
    choose_model(page, "tiny")
    set_value(page, "framepack_prompt", "a kite")
    set_value(page, "framepack_duration", "0")
    wait_for_text(page, "framepack_plan", "^Cannot plan: duration: Input should be greater than 0$")
    wait_for_generate(page, enabled=False)
    generate_button(page).click(force=True)  # pressed anyway: nothing happens
    page.wait_for_timeout(2_000)
    assert page.locator("#framepack_progress").inner_text() == ""
    assert error_pills(page) == 0 and set(red_pill_pixels(page, tmp_path, "duration-0").values()) == {0}

    set_value(page, "framepack_duration", "1")
    wait_for_text(page, "framepack_plan", "^Plan: ")
    wait_for_generate(page, enabled=True)
    text_file = tmp_path / "notes.png"
    text_file.write_text("a text file, not a picture")
    page.locator("#framepack_init_image input[type=file]").set_input_files(str(text_file))
    wait_for_text(
        page, "framepack_plan", r"^Cannot plan: init_image: not a readable image \(PNG, JPEG, WebP, \.\.\.\)$"
    )
    wait_for_generate(page, enabled=False)
    assert error_pills(page) == 0 and set(red_pill_pixels(page, tmp_path, "text-as-image").values()) == {0}
    assert "Traceback" not in server_log(server) and " 500 " not in server_log(server)
    assert not page.framepack_errors, page.framepack_errors


def test_title_model_first_and_generate_only_when_the_plan_can_run(page, server):
    title = page.locator("#framepack_intro h1").first
    assert title.inner_text() == "FramePack" and "SELF-TEST" in page.locator("#framepack_intro").inner_text()
    model_box = page.locator("#framepack_model").bounding_box()
    assert model_box["y"] < page.locator("#framepack_prompt").bounding_box()["y"]  # the model choice comes first
    assert model_box["y"] < 400
    choose_model(page, "default")  # the published model: not on this (offline) machine
    wait_for_text(page, "framepack_plan", "Model not on this machine")
    wait_for_generate(page, enabled=False)
    choose_model(page, "tiny")
    wait_for_text(page, "framepack_plan", "^Plan: ")
    wait_for_generate(page, enabled=True)


def test_keyframes_storyboard_and_presets_show_what_they_hold(page, server, init_image, tmp_path):
    fill_form(page, init_image, steps=1, duration=0.7, resolution=128, prompt="a kite")
    set_value(page, "framepack_latent_window_size", "1")
    open_accordion(page, "Section keyframes")
    page.locator("#framepack_keyframe_image input[type=file]").set_input_files(str(init_image))
    page.wait_for_selector("#framepack_keyframe_image img", state="attached", timeout=30_000)
    set_value(page, "framepack_keyframe_section", "2")
    click(page, "framepack_keyframe_add")
    page.wait_for_selector("#framepack_keyframe_gallery img", timeout=30_000)
    gallery = page.locator("#framepack_keyframe_gallery").bounding_box()
    thumbnail = page.locator("#framepack_keyframe_gallery img").first.bounding_box()
    assert thumbnail["width"] < gallery["width"] / 3  # a thumbnail, not a bar across the gallery
    fit = page.locator("#framepack_keyframe_gallery img").first.evaluate("e => getComputedStyle(e).objectFit")
    assert fit == "contain"  # the whole picture, not a crop

    click(page, "framepack_generate")
    page.wait_for_selector("#framepack_video video", timeout=RUN_TIMEOUT_MS)
    board = page.locator("#framepack_storyboard").bounding_box()
    items = page.locator("#framepack_storyboard img")
    assert items.count() == 5  # sections 0..4 in time order
    for index in range(items.count()):
        box = items.nth(index).bounding_box()
        assert board["x"] <= box["x"] and box["x"] + box["width"] <= board["x"] + board["width"], (index, box, board)
    captions = page.eval_on_selector_all(
        "#framepack_storyboard .caption-label, #framepack_storyboard figcaption, #framepack_storyboard .caption",
        "els => els.map(e => [e.innerText, e.scrollWidth <= e.clientWidth + 1])",
    )
    assert [text for text, _ in captions] == ["#0", "#1", "#2", "#3", "#4"]
    assert all(whole for _, whole in captions), captions  # no caption clipped

    open_accordion(page, "Presets")
    load = page.locator("#framepack_preset_load").bounding_box()
    choice = page.locator("#framepack_preset").bounding_box()
    header = page.locator(".label-wrap", has_text="Load settings from a video").first.bounding_box()
    assert page.locator("#framepack_preset_load").inner_text().strip() == "Load preset"
    assert abs(load["y"] - choice["y"]) < choice["height"]  # beside the preset it loads
    assert header["y"] - (load["y"] + load["height"]) > 40  # not right above the next header
    assert not page.framepack_errors, page.framepack_errors


def test_a_cancel_shows_no_untranslated_gradio_key(page, server, init_image):
    fill_form(page, init_image, steps=25, duration=6.0, resolution=128, prompt="a long flight")
    click(page, "framepack_generate")
    page.wait_for_function(
        "() => /step \\d+\\/\\d+/.test(document.querySelector('#framepack_progress').innerText)", timeout=RUN_TIMEOUT_MS
    )
    click(page, "framepack_cancel")
    seen = []
    for _ in range(200):  # the key flashed for a moment when the run's event ended
        seen += re.findall(r"common\.\w+", page.evaluate("() => document.body.textContent"))
        if "cancelled" in page.locator("#framepack_progress").inner_text().lower():
            break
        page.wait_for_timeout(50)
    for _ in range(40):
        seen += re.findall(r"common\.\w+", page.evaluate("() => document.body.textContent"))
        page.wait_for_timeout(50)
    assert "cancelled" in page.locator("#framepack_progress").inner_text().lower()
    assert seen == []


def test_images_come_back_after_a_reload_or_the_tab_says_which_did_not(page, server, init_image, tmp_path):
    end = tmp_path / "end.png"
    Image.new("RGB", (160, 128), (200, 60, 60)).save(end)
    fill_form(page, init_image, steps=1, duration=0.4, resolution=128, prompt="from blue to red")
    open_accordion(page, "Section keyframes")
    click(page, "framepack_keyframe_clear")  # an earlier test's keyframe may have come back with its settings
    page.locator("#framepack_end_image input[type=file]").set_input_files(str(end))
    page.wait_for_selector("#framepack_end_image img[src*='file=']", state="attached", timeout=60_000)
    wait_for_text(page, "framepack_plan", "FLF2V")
    click(page, "framepack_generate")
    page.wait_for_selector("#framepack_video video", timeout=RUN_TIMEOUT_MS)

    page.reload()
    page.wait_for_selector("#framepack_generate", timeout=60_000)
    wait_for_text(page, "framepack_plan", "FLF2V")  # both images are back: still first-last-frame
    for elem_id in ("framepack_init_image", "framepack_end_image"):
        page.wait_for_selector(f"#{elem_id} img", state="attached", timeout=30_000)
    assert page.locator("#framepack_restore_note").inner_text() == ""

    (server["base"] / "data" / "last-used-images" / "end_image.png").unlink()
    page.reload()
    page.wait_for_selector("#framepack_generate", timeout=60_000)
    wait_for_text(page, "framepack_restore_note", "Not restored: the last-used end image could not be read back")
    wait_for_text(page, "framepack_plan", "I2V")
    assert not page.framepack_errors, page.framepack_errors
