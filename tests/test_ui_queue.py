"""The tab's queue panel without a browser: the table (order, escaping, thumbnails), moving, cancelling,
deleting, pausing, queueing without following and re-running a job's settings, over a real job manager."""

from __future__ import annotations

import pytest
from helpers import SMALLEST, pattern_image

gr = pytest.importorskip("gradio")

from framepack.jobs.models import JobState  # noqa: E402
from framepack.request import GenerateRequest  # noqa: E402
from framepack.ui.controls import CONTROL_FIELDS, default_values  # noqa: E402
from framepack.ui.queue_panel import job_choice  # noqa: E402
from framepack.ui.tab import create_tab  # noqa: E402

WAIT_S = 120


@pytest.fixture
def panel(make_manager, tmp_path):
    manager = make_manager(start=False)
    blocks = create_tab(manager, tmp_path / "out", tmp_path / "presets.json")
    panel = blocks.framepack_queue
    panel.manager = manager
    return panel


def request(**changes) -> GenerateRequest:
    return GenerateRequest(**{**SMALLEST, **changes})


def values(**changes) -> list:
    named = {**default_values(), **SMALLEST, **changes}
    return [named[name] for name in CONTROL_FIELDS]


def test_the_table_lists_running_queued_and_ended_jobs_escaped_with_thumbnails(panel, tmp_path):
    manager = panel.manager
    image = str(pattern_image(tmp_path / "start.png", 96, 64))
    ended = manager.submit(request(prompt="ended"))
    manager.cancel(ended.id)
    a = manager.submit(request(prompt="<script>alert(1)</script>", init_image=image))
    b = manager.submit(request(prompt="b"))
    manager.move(b.id, 0)
    assert [job.id for job in panel.jobs()] == [b.id, a.id, ended.id]  # queued in queue order, then ended
    table = panel.table(panel.jobs())
    assert "<script>" not in table and "&lt;script&gt;alert(1)&lt;/script&gt;" in table
    assert table.count("<tr data-job-id=") == 3 and table.count('<img src="data:image/jpeg;base64,') == 1
    assert "#1 in the queue" in table and "#2 in the queue" in table and "cancelled by request" in table
    html, choices, line, shown = panel.refresh(None, "")
    assert html == table and line == "2 waiting, nothing running."
    assert choices["choices"] == [job_choice(job) for job in panel.jobs()]
    assert panel.refresh(None, shown)[0] == gr.update()  # unchanged: nothing is sent again


def test_buttons_move_cancel_pause_and_delete(panel):
    manager = panel.manager
    jobs = [manager.submit(request(prompt=name)) for name in ("one", "two", "three")]
    choice = {job.id: job_choice(job) for job in jobs}
    assert panel.move(choice[jobs[2].id], -1) == f"Job {jobs[2].id[:8]} is now #2 in the queue."
    assert panel.move(choice[jobs[2].id], 0) == f"Job {jobs[2].id[:8]} is now #1 in the queue."
    assert panel.move(jobs[0].id[:8], 1) == f"Job {jobs[0].id[:8]} is now #3 in the queue."  # a typed id prefix
    assert [job.id for job in panel.jobs()] == [jobs[2].id, jobs[1].id, jobs[0].id]
    assert panel.cancel(choice[jobs[1].id]) == f"Cancelled {jobs[1].id[:8]}."
    assert panel.cancel(choice[jobs[1].id]).endswith("only queued or running jobs can be cancelled")
    assert panel.move(choice[jobs[1].id], 0) == f"Job {jobs[1].id[:8]} is cancelled; only queued jobs can be moved."
    assert panel.delete(choice[jobs[0].id], False).endswith("cancel it first, then delete it")
    assert (
        panel.delete(choice[jobs[1].id], False)
        == f"Deleted {jobs[1].id[:8]} from the queue's history; its files were kept."
    )
    assert panel.cancel(None) == "Choose a job in the list first."
    assert panel.cancel("zzzz") == "No job matches 'zzzz'."
    assert panel.pause() == "Queue paused: the running job finishes, no other starts."
    assert panel.queue_line().startswith("**Paused**") and manager.queue_state().paused
    assert panel.resume() == "Queue resumed." and not manager.queue_state().paused


def test_add_to_queue_refuses_bad_values_with_a_message_and_queues_good_ones(panel):
    refused = panel.enqueue(*values(duration=0))
    assert refused.startswith("**Not queued:** duration: ")
    queued = panel.enqueue(*values(prompt="a kite"))
    assert queued.startswith("Queued ") and " as #1: " in queued
    assert [job.request["prompt"] for job in panel.manager.list_jobs()] == ["a kite"]


def test_rerun_loads_the_jobs_settings_and_images_but_not_its_output_name(panel, tmp_path):
    manager = panel.manager
    image = str(pattern_image(tmp_path / "start.png", 96, 64))
    job = manager.submit(request(prompt="again", init_image=image, seed=-1))
    manager.start()
    assert manager.wait(job.id, WAIT_S).state == JobState.FINISHED
    *controls, gallery, message = panel.rerun(job_choice(job))
    named = dict(zip(CONTROL_FIELDS, controls, strict=True))
    assert named["prompt"] == "again" and named["seed"] == job.request["seed"] >= 0
    assert named["filename"] == "" and named["steps"] == SMALLEST["steps"]
    assert named["init_image"].size == (96, 64)
    assert gallery == [] and message == f"Loaded the settings of {job.id[:8]} (seed {job.request['seed']})."
    rerun = manager.submit(panel.tab.request(controls))  # the same settings queue again, under a new name
    assert manager.wait(rerun.id, WAIT_S).state == JobState.FINISHED
    # the same plan; only the time estimate is new (the first job's speed was kept when it finished)
    replanned = {key: value for key, value in rerun.plan.items() if key != "estimated_seconds"}
    assert rerun.request["seed"] == job.request["seed"] and replanned == job.plan


# ---------------------------------------------------------------------------------------------- batches


def test_a_batch_of_images_and_prompts_queues_one_job_each_or_none(panel, tmp_path):
    from framepack.ui.batch_panel import BatchQueuer

    queuer, manager = BatchQueuer(panel.tab), panel.manager
    images = [str(pattern_image(tmp_path / name, 96, 64, seed=index)) for index, name in enumerate(("a.png", "b.png"))]
    (tmp_path / "notes.png").write_text("a text file named like an image")

    message, batch_id = queuer.queue([images[0], str(tmp_path / "notes.png")], "", *values())
    assert (message, batch_id) == ("**Not queued:** image notes.png: init_image: not a readable image (PNG, JPEG, "
                                   "WebP, ...)", "")  # fmt: skip
    message, batch_id = queuer.queue(images, "one\ntwo", *values(duration=0))
    assert message.startswith("**Not queued:** job 1 (image a.png, prompt 'one'): duration: ") and batch_id == ""
    message, batch_id = queuer.queue(images, "one\n\n", *values(duration=0.1, keyframes=[[3, images[0]]]))
    assert message.startswith("**Not queued:** job 1 (image a.png, prompt 'one'): keyframes") and batch_id == ""
    assert manager.count_jobs() == 0
    assert queuer.queue(None, "  ", *values()) == ("Give start images or prompts (one per line) to queue a batch.", "")

    message, batch_id = queuer.queue(images, "one\ntwo", *values())
    assert message == f"Queued a batch of 4 jobs (batch {batch_id[:8]})."
    jobs = manager.list_jobs(batch_id=batch_id)
    assert [job.request["prompt"] for job in jobs] == ["one", "two", "one", "two"]
    assert len({manager.get(job.id).request["init_image"] for job in jobs}) == 2  # each image, embedded
    assert queuer.cancel(batch_id) == f"Batch {batch_id[:8]}: cancel requested; 4 of 4 jobs have ended."
    assert {job.state for job in manager.list_jobs(batch_id=batch_id)} == {JobState.CANCELLED}
    message, batch_id = queuer.queue(None, "three\nfour", *values())
    assert [job.request["prompt"] for job in manager.list_jobs(batch_id=batch_id)] == ["three", "four"]
