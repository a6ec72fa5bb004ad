"""The time estimate of a plan (framepack/estimate.py): rates measured by finished jobs, kept per model, size and
speed settings under FRAMEPACK_HOME, shown by the plan of a later job of the same kind."""

from __future__ import annotations

import json

import pytest
from helpers import FAST

from framepack.estimate import KEEP, STORE_FILE, estimate_seconds, record_speed, speed_key
from framepack.plan import format_duration, make_plan
from framepack.planning import plan_request
from framepack.request import GenerateRequest

# a job's timings as `generate` reports them: 10 steps sampled in 5 s, 1.09 s of decode, 2 s of everything else
TIMINGS = {"sampled_steps": 10, "sampling": 5.0, "decode": 1.09, "total": 8.09}


def test_the_estimate_is_the_measured_rates_times_the_planned_work(tmp_path):
    request = GenerateRequest(
        prompt="a kite", duration=4.0
    )  # T2V: a start frame and 3 sections of 25 steps, 109 frames
    plan = make_plan(request)
    assert estimate_seconds(tmp_path, request, plan) is None  # nothing measured yet
    assert record_speed(tmp_path, request, plan, TIMINGS)
    stored = json.loads((tmp_path / STORE_FILE).read_text())
    assert stored == {
        speed_key(request, plan): {"step_seconds": [0.5], "frame_seconds": [0.01], "other_seconds": [2.0]}
    }
    # 0.5 s x 100 steps + 0.01 s x 109 frames + 2 s
    assert (plan.total_steps, plan.generated_frames) == (100, 109)
    assert estimate_seconds(tmp_path, request, plan) == 53.1

    longer = GenerateRequest(prompt="another prompt", duration=6.0, steps=10, seed=3)  # same kind, other work
    longer_plan = make_plan(longer)
    assert estimate_seconds(tmp_path, longer, longer_plan) == round(0.5 * (5 + 1) * 10 + 0.01 * (36 * 5 + 1) + 2.0, 1)
    for other in ({"resolution": 512}, {"cache": "none"}, {"cfg_scale": 2.0}, {"variant": "f1"}, {"model": "tiny"}):
        changed = GenerateRequest(prompt="a kite", duration=4.0, **other)
        assert estimate_seconds(tmp_path, changed, make_plan(changed)) is None, other


def test_rates_average_the_last_jobs_and_a_broken_store_is_no_estimate(tmp_path):
    request = GenerateRequest(prompt="a kite", duration=4.0)
    plan = make_plan(request)
    for step in range(1, KEEP + 2):  # 1 .. 6 s per step: the first falls out
        timings = {**TIMINGS, "sampling": step * 10.0, "total": step * 10.0 + 1.09 + 2.0}
        record_speed(tmp_path, request, plan, timings)
    entry = json.loads((tmp_path / STORE_FILE).read_text())[speed_key(request, plan)]
    assert entry["step_seconds"] == [2.0, 3.0, 4.0, 5.0, 6.0]
    assert estimate_seconds(tmp_path, request, plan) == round(4.0 * 100 + 0.01 * 109 + 2.0, 1)
    # a job resumed after its last section sampled nothing: no rate to learn
    assert not record_speed(tmp_path, request, plan, {**TIMINGS, "sampled_steps": 0})
    (tmp_path / STORE_FILE).write_text("{not json")
    assert estimate_seconds(tmp_path, request, plan) is None
    assert record_speed(tmp_path, request, plan, TIMINGS)  # replaced by a readable store
    assert estimate_seconds(tmp_path, request, plan) == 53.1


def test_a_finished_job_gives_the_next_plan_of_its_kind_an_estimate(runner, tmp_path):
    request = GenerateRequest(**{**FAST, "output_dir": str(tmp_path / "out"), "filename": "first"})
    assert plan_request(request, runner.home).estimated_seconds is None
    result = runner.run(request)
    timings = result.timings
    assert timings["sampled_steps"] == result.plan.total_steps  # T2V: the start frame's steps and the section's
    step = timings["sampling"] / timings["sampled_steps"]
    frame = timings["decode"] / result.plan.generated_frames
    other = timings["total"] - timings["sampling"] - timings["decode"]
    assert step > 0 and frame > 0 and other > 0

    again = GenerateRequest(**{**FAST, "output_dir": str(tmp_path / "out"), "filename": "second", "steps": 5})
    plan = plan_request(again, runner.home)
    assert plan.total_steps == 10  # five steps for the start frame and five for the section
    assert plan.estimated_seconds == pytest.approx(
        step * plan.total_steps + frame * plan.generated_frames + other, abs=0.051
    )  # measured seconds per step x steps, per frame x frames, plus the rest, rounded to 0.1 s (rates to 1e-6 s)


def test_durations_read_as_people_write_them():
    assert [format_duration(s) for s in (0.42, 42.4, 200, 3725)] == ["0.4 s", "42 s", "3 min 20 s", "1 h 02 min"]
