"""The Gradio tab in a real browser: Debian's chromium driven by Playwright, against `python -m framepack serve`
(the tab at "/", the REST routes beside it) with the tiny self-test model.

Setup (see .ci/browser-env.sh): `apt-get install -y chromium` and `pip install playwright`. Playwright's own
browser downloads are never used (`playwright install` is not needed): the test launches /usr/bin/chromium.
Skipped, with the reason, when chromium, Playwright or Gradio is missing or the server does not serve the tab.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from api_live_server import LiveServer
from helpers import tiny_home

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("FRAMEPACK_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
SERVER_START_S = 180
RUN_TIMEOUT_MS = 240_000

pytestmark = [
    pytest.mark.skipif(
        not Path(CHROMIUM).is_file(),
        reason=f"{CHROMIUM} is missing (apt-get install -y chromium; see .ci/browser-env.sh)",
    ),
]


@pytest.fixture(scope="module")
def playwright_api():
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    pytest.importorskip("gradio", reason="Gradio is not installed: the standalone server has no tab")
    if not (ROOT / "framepack" / "ui" / "tab.py").is_file():
        pytest.skip("framepack/ui/tab.py does not exist yet")
    return sync_api


@pytest.fixture(scope="module")
def server(playwright_api, tiny_model_dir, tiny_vlm_dir, tmp_path_factory):
    """`python -m framepack serve` on a free port, FRAMEPACK_HOME holding the tiny model; yields its URL.

    FRAMEPACK_UI_URL (with FRAMEPACK_UI_OUTPUTS, its output folder) points the test at a server already running."""
    base = tmp_path_factory.mktemp("ui-server")
    if os.environ.get("FRAMEPACK_UI_URL"):
        yield {
            "url": os.environ["FRAMEPACK_UI_URL"],
            "base": base,
            "outputs": Path(os.environ.get("FRAMEPACK_UI_OUTPUTS", base)),
        }
        return
    server = LiveServer(
        tiny_home(tiny_model_dir, base / "home", tiny_vlm_dir), base / "data", base / "server.log",
        "--device", "cpu", "--output-dir", str(base / "outputs"),
    )  # fmt: skip
    server.start(timeout=SERVER_START_S)
    try:
        url = f"{server.url}/"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                status, body = response.status, response.read(200_000).decode("utf-8", "replace")
        except urllib.error.HTTPError as error:
            status, body = error.code, ""
        if status != 200 or "gradio" not in body.lower():
            pytest.skip(f"the standalone server does not serve the tab at / (GET / answered {status})")
        yield {"url": url, "base": base, "outputs": base / "outputs"}
    finally:
        server.stop()


@pytest.fixture
def page(playwright_api, server):
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1440, "height": 1600})
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(server["url"])
            page.wait_for_selector("#framepack_generate", timeout=60_000)
            # the tab's load event (last-used settings, then the plan line) has run: a value set before it ends
            # would be overwritten by the last-used one (seen under load: an uploaded image and steps replaced)
            page.wait_for_function(
                "() => /^(Plan|Cannot plan): /.test((document.getElementById('framepack_plan') || {}).innerText || '')",
                timeout=60_000,
            )
            page.framepack_errors = errors
            yield page
        finally:
            browser.close()


def open_accordion(page, title: str) -> None:
    """Open a closed Gradio accordion by its title (current Gradio renders its content only once open)."""
    toggle = page.locator(".label-wrap", has_text=title).first
    if "open" not in (toggle.get_attribute("class") or ""):
        toggle.click()


def set_value(page, elem_id: str, value: str) -> None:
    """Type into a textbox / number / slider / dropdown by the component's elem_id, then commit (Enter, blur)."""
    field = page.locator(
        f"#{elem_id} textarea, #{elem_id} input:not([type=range]):not([type=file]):not([type=checkbox])"
    ).first
    field.wait_for(state="visible", timeout=30_000)
    field.fill(value)
    field.press("Enter" if field.evaluate("e => e.tagName") == "INPUT" else "Tab")
    field.blur()


def choose_model(page, name: str) -> None:
    open_accordion(page, "Model")
    choose_option(page, "framepack_model", name)


def fill_form(page, image: Path, steps: int, duration: float, resolution: int, prompt: str) -> None:
    set_value(page, "framepack_prompt", prompt)
    page.locator("#framepack_init_image input[type=file]").set_input_files(str(image))
    # the upload is done when the preview points at the server's copy (it may still be loading, hence attached)
    page.wait_for_selector("#framepack_init_image img[src*='file=']", state="attached", timeout=60_000)
    choose_model(page, "tiny")
    set_value(page, "framepack_resolution", str(resolution))
    set_value(page, "framepack_latent_window_size", "3")
    set_value(page, "framepack_duration", str(duration))
    open_accordion(page, "Sampling")
    set_value(page, "framepack_steps", str(steps))


def progress_text(page) -> str:
    return page.locator("#framepack_progress").inner_text()


@pytest.fixture
def init_image(tmp_path) -> Path:
    from PIL import Image, ImageDraw

    picture = Image.new("RGB", (160, 128), (30, 90, 160))
    draw = ImageDraw.Draw(picture)
    draw.ellipse((50, 30, 110, 90), fill=(240, 200, 40))
    path = tmp_path / "init.png"
    picture.save(path)
    return path


def test_generate_shows_progress_preview_and_a_playable_video(page, server, init_image, tmp_path):
    fill_form(page, init_image, steps=2, duration=0.8, resolution=128, prompt="a yellow kite in a blue sky")
    page.click("#framepack_generate button, button#framepack_generate")
    page.wait_for_function(
        "() => /queued|running|stage|step|section|encoding|finished/i"
        ".test(document.querySelector('#framepack_progress').innerText)",
        timeout=60_000,
    )
    page.wait_for_selector("#framepack_video video", timeout=RUN_TIMEOUT_MS)
    video = page.locator("#framepack_video video").first
    page.wait_for_function(
        "() => { const v = document.querySelector('#framepack_video video'); return v && v.readyState >= 2 && "
        "v.duration > 0; }",
        timeout=60_000,
    )
    state = video.evaluate(
        "v => ({ready: v.readyState, duration: v.duration, width: v.videoWidth, height: v.videoHeight, error: "
        "v.error && v.error.code})"
    )
    assert state["error"] is None and state["duration"] > 0 and state["width"] > 0, state
    assert "Finished" in progress_text(page), progress_text(page)
    assert page.locator("#framepack_preview img").count() >= 1  # the section preview is shown
    videos = list(server["outputs"].glob("*.mp4"))
    assert len(videos) == 1, "the video is in the server's output folder"
    # the output files are links that download them
    link = page.locator("#framepack_outputs a", has_text=videos[0].name)
    assert link.count() == 1, page.locator("#framepack_outputs").inner_text()
    downloaded = page.request.get(urllib.parse.urljoin(page.url, link.get_attribute("href")))
    assert downloaded.status == 200 and downloaded.body() == videos[0].read_bytes()
    shot = tmp_path / "ui.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("FRAMEPACK_UPDATE_SCREENSHOT") == "1":
        shutil.copy(shot, ROOT / "docs" / "ui.png")
    assert not page.framepack_errors, page.framepack_errors


def test_cancel_mid_run_shows_the_cancelled_state(playwright_api, page, server, init_image):
    before = set(server["outputs"].glob("*.mp4"))
    fill_form(page, init_image, steps=25, duration=6.0, resolution=256, prompt="a long flight")
    page.click("#framepack_generate button, button#framepack_generate")
    page.wait_for_function(
        "() => /step \\d+\\/\\d+/.test(document.querySelector('#framepack_progress').innerText)", timeout=RUN_TIMEOUT_MS
    )
    page.click("#framepack_cancel button, button#framepack_cancel")
    page.wait_for_function(
        "() => /cancelled/i.test(document.querySelector('#framepack_progress').innerText)", timeout=120_000
    )
    try:
        page.wait_for_function(
            "() => /cancel requested/i.test(document.querySelector('#framepack_cancel_status').innerText)",
            timeout=30_000,
        )
    except playwright_api.TimeoutError:
        status = page.locator("#framepack_cancel_status").inner_text()
        pytest.fail(
            f"the cancel answer is {status!r}, progress {progress_text(page)!r}, page errors {page.framepack_errors}"
        )
    page.wait_for_timeout(1_000)  # the cancel answer must not overwrite the final state
    assert "cancelled" in progress_text(page).lower(), progress_text(page)
    assert set(server["outputs"].glob("*.mp4")) == before  # nothing half-written is left
    assert not page.framepack_errors, page.framepack_errors


def choose_option(page, elem_id: str, value: str) -> None:
    """Pick (or type, for a dropdown that takes any value) `value` in the dropdown `elem_id`."""
    field = page.locator(f"#{elem_id} input").first
    field.wait_for(state="visible", timeout=30_000)
    field.click()
    field.fill(value)
    option = page.locator("ul[role=listbox] li", has_text=value)
    if option.count():
        option.first.click()
    else:
        field.press("Enter")
    field.blur()
    page.wait_for_function(
        "([id, v]) => (document.querySelector(`#${id} input`) || {}).value === v", arg=[elem_id, value], timeout=10_000
    )


def table_cell(page, elem_id: str, row: int, column: int):
    """The text of a table cell (without the cell's menu button)."""
    return page.locator(f"#{elem_id} [data-testid='cell-{row}-{column}'] span[data-editable]").first


def test_enhance_fills_an_editable_table_whose_text_the_video_encodes(page, server, init_image):
    # the tab's load event fills every control (last-used settings); type only after it
    page.wait_for_function("() => /Plan/.test(document.querySelector('#framepack_plan').innerText)", timeout=60_000)
    fill_form(page, init_image, steps=2, duration=0.4, resolution=128, prompt="a yellow kite")
    open_accordion(page, "Prompt enhancer")
    choose_option(page, "framepack_enhancer", "tiny")
    set_value(page, "framepack_enhance_max_tokens", "16")
    page.click("#framepack_enhance_button button, button#framepack_enhance_button")
    page.wait_for_function(
        "() => /Enhanced 1 prompt|Cannot/.test(document.querySelector('#framepack_enhance_status').innerText)",
        timeout=120_000,
    )
    status = page.locator("#framepack_enhance_status").inner_text()
    assert "Enhanced 1 prompt with tiny (SELF-TEST" in status, status
    assert table_cell(page, "framepack_enhanced_prompts", 0, 1).inner_text() == "a yellow kite"
    written = table_cell(page, "framepack_enhanced_prompts", 0, 2)
    assert written.inner_text().strip()  # the self-test enhancer's text (noise)

    edited = "a yellow kite climbs into the wind"
    page.locator("#framepack_enhanced_prompts [data-testid='cell-0-2']").dblclick()
    editor = page.locator("#framepack_enhanced_prompts [data-testid='cell-0-2'] textarea").first
    editor.fill(edited)
    editor.press("Enter")
    page.wait_for_function(
        "t => (document.querySelector(\"#framepack_enhanced_prompts [data-testid='cell-0-2'] span[data-editable]\")"
        " || {}).innerText === t",
        arg=edited,
        timeout=10_000,
    )
    before = set(server["outputs"].glob("*.json"))
    page.click("#framepack_generate button, button#framepack_generate")
    page.wait_for_selector("#framepack_video video", timeout=RUN_TIMEOUT_MS)
    assert "Encoded 1 enhanced prompt" in progress_text(page), progress_text(page)
    (sidecar,) = set(server["outputs"].glob("*.json")) - before
    record = json.loads(sidecar.read_text())
    assert record["request"]["enhanced_prompts"] == {"a yellow kite": edited}  # what the table held was encoded
    assert not page.framepack_errors, page.framepack_errors
