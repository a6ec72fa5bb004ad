"""The tab's queue panel in a real browser (chromium driven by Playwright, as tests/test_ui_browser.py), against
`python -m framepack serve` with the tiny self-test model: three jobs queued from the tab while the queue is
paused, two reordered, one cancelled, and the rest run in the new order once the queue is resumed."""

from __future__ import annotations

import httpx
import test_ui_browser as browser
from test_ui_browser import fill_form, set_value

from api.routes import PREFIX

RUN_TIMEOUT_MS = 240_000
# The browser tests' fixtures and skip conditions (a server of this module's own, a page, a start image).
pytestmark = browser.pytestmark
playwright_api, server, page, init_image = browser.playwright_api, browser.server, browser.page, browser.init_image


def click(page, elem_id: str) -> None:
    page.click(f"#{elem_id} button, button#{elem_id}")


def wait_for_text(page, elem_id: str, pattern: str, timeout: int = 30_000) -> None:
    page.wait_for_function(
        "([id, pattern]) => new RegExp(pattern, 'i').test((document.getElementById(id) || {}).innerText || '')",
        arg=[elem_id, pattern],
        timeout=timeout,
    )


def rows(page) -> list[dict]:
    """The queue table's rows: id, state and prompt, top to bottom."""
    return page.eval_on_selector_all(
        "#framepack_queue_table tbody tr",
        "rows => rows.map(r => ({id: r.dataset.jobId, state: r.dataset.state, prompt: r.cells[3].innerText}))",
    )


def choose_job(page, job_id: str) -> None:
    """Type the job's id into the "Job" list (it takes a typed id) and commit it."""
    field = page.locator("#framepack_queue_job input").first
    field.click()
    field.fill(job_id)
    field.press("Enter")
    field.blur()
    page.wait_for_function(
        "id => (document.querySelector('#framepack_queue_job input') || {}).value === id", arg=job_id, timeout=10_000
    )


def queue_job(page, prompt: str) -> None:
    set_value(page, "framepack_prompt", prompt)
    click(page, "framepack_queue_add")
    wait_for_text(page, "framepack_queue_status", "^Queued ")
    page.wait_for_function(
        "p => [...document.querySelectorAll('#framepack_queue_table tbody tr')].some(r => r.cells[3].innerText === p)",
        arg=prompt,
        timeout=30_000,
    )


def test_queue_three_reorder_pause_cancel_resume_and_the_rest_run_in_the_new_order(page, server, init_image, tmp_path):
    click(page, "framepack_queue_pause")
    wait_for_text(page, "framepack_queue_line", "Paused")
    fill_form(page, init_image, steps=1, duration=0.4, resolution=128, prompt="first job")
    for prompt in ("first job", "second job", "third job"):
        queue_job(page, prompt)
    ids = {row["prompt"]: row["id"] for row in rows(page)}
    assert [row["prompt"] for row in rows(page) if row["state"] == "queued"] == ["first job", "second job", "third job"]

    choose_job(page, ids["third job"])
    click(page, "framepack_queue_up")
    wait_for_text(page, "framepack_queue_status", "is now #2 in the queue")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#framepack_queue_table tbody tr')].map(r => r.cells[3].innerText)"
        ".join('|') === 'first job|third job|second job'",
        timeout=30_000,
    )

    choose_job(page, ids["first job"])
    click(page, "framepack_queue_cancel")
    wait_for_text(page, "framepack_queue_status", "^Cancelled ")
    page.wait_for_timeout(3_000)  # paused: nothing starts
    assert {row["prompt"]: row["state"] for row in rows(page)} == {
        "first job": "cancelled",
        "second job": "queued",
        "third job": "queued",
    }

    click(page, "framepack_queue_resume")
    wait_for_text(page, "framepack_queue_line", "waiting")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#framepack_queue_table tbody tr')]"
        ".filter(r => r.dataset.state === 'finished').length === 2",
        timeout=RUN_TIMEOUT_MS,
    )
    jobs = {job["id"]: job for job in httpx.get(f"{server['url'].rstrip('/')}{PREFIX}/jobs").json()["jobs"]}
    third, second, first = (jobs[ids[name]] for name in ("third job", "second job", "first job"))
    assert (first["state"], second["state"], third["state"]) == ("cancelled", "finished", "finished")
    assert third["finished_at"] <= second["started_at"]  # the new order: third before second
    assert page.locator("#framepack_queue_table img").count() >= 3  # thumbnails: start images and first frames
    page.screenshot(path=str(tmp_path / "queue.png"), full_page=True)
    assert not page.framepack_errors, page.framepack_errors
