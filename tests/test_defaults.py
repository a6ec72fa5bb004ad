"""The default model (and cache, offload) of each face: FRAMEPACK_MODEL for the CLI and `serve`, `serve --model`,
a request's own model always winning, and the self-test model said out loud wherever it is the default."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from api_live_server import PREFIX, LiveServer
from helpers import FAST, tiny_home

from framepack.defaults import MODEL_ENV, apply_defaults, env_defaults, model_default
from framepack.errors import FieldError
from framepack.request import GenerateRequest

ROOT = Path(__file__).resolve().parents[1]
NO_MODEL = {name: value for name, value in FAST.items() if name != "model"}  # the defaults choose the model


def test_a_field_left_out_takes_the_default_and_a_field_given_wins():
    left_out = GenerateRequest(prompt="x")
    completed = apply_defaults(left_out, {"model": "tiny", "cache": "none", "offload": None})
    assert (completed.model, completed.cache, completed.offload) == ("tiny", "none", "balanced")
    given = GenerateRequest(prompt="x", model="default", cache="magcache")  # "default" is the published model
    assert apply_defaults(given, {"model": "tiny", "cache": "none"}) is given
    assert apply_defaults(left_out, {}) is left_out
    with pytest.raises(ValueError, match="not a defaultable field: steps"):
        apply_defaults(left_out, {"steps": 3})


def test_default_model_names_and_a_bad_one_named_by_its_source(tmp_path):
    recipe = tmp_path / "mine.txt"
    recipe.write_text("self_test: false\n")
    assert [model_default(name, "x") for name in ("published", "default", "self-test", "tiny", " ", None)] == [
        "default", "default", "tiny", "tiny", None, None,
    ]  # fmt: skip
    assert model_default(str(recipe), "x") == str(recipe)
    assert env_defaults({MODEL_ENV: "Self-Test"}) == {"model": "tiny"} and env_defaults({}) == {}
    with pytest.raises(FieldError) as error:
        env_defaults({MODEL_ENV: "no-such-recipe.json"})
    assert error.value.field == "model"
    assert str(error.value) == (
        "model: the environment variable FRAMEPACK_MODEL is 'no-such-recipe.json': allowed 'published' (or "
        "'default'), 'self-test' (or 'tiny') or the path of an existing recipe file"
    )


def test_the_manager_applies_its_defaults_at_submit(make_manager):
    manager = make_manager(request_defaults=lambda: {"model": "tiny", "cache": "none"})
    job = manager.submit(GenerateRequest(**NO_MODEL))
    assert (job.request["model"], job.request["cache"]) == ("tiny", "none")
    assert "SELF-TEST model" in job.summary
    assert manager.wait(job.id, 120).state.value == "finished"


def run_cli(*args: str, home: Path, cwd: Path, model: str | None) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != MODEL_ENV}
    env.update({"FRAMEPACK_HOME": str(home), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    if model is not None:
        env[MODEL_ENV] = model
    return subprocess.run(
        [sys.executable, "-m", "framepack", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )


def test_cli_plan_and_generate_take_framepack_model(tmp_path, tiny_model_dir):
    home = tiny_home(tiny_model_dir, tmp_path / "home")
    flags = [
        "--prompt",
        "a boat",
        "--resolution",
        "128",
        "--duration",
        "0.4",
        "--steps",
        "2",
        "--latent-window-size",
        "3",
    ]
    plan = run_cli("plan", *flags, home=home, cwd=tmp_path, model="tiny")
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.splitlines()[0].endswith(", SELF-TEST model (random weights: the video is noise)")
    explicit = run_cli("plan", *flags, "--model", "default", home=home, cwd=tmp_path, model="tiny")
    assert "SELF-TEST" not in explicit.stdout.splitlines()[0]
    generated = run_cli(
        "generate",
        *flags,
        "--output-dir",
        str(tmp_path),
        "--filename",
        "boat",
        home=home,
        cwd=tmp_path,
        model="self-test",
    )
    assert generated.returncode == 0, generated.stderr
    assert "model: tiny SELF-TEST model" in generated.stdout and (tmp_path / "boat.mp4").is_file()
    bad = run_cli("plan", *flags, home=home, cwd=tmp_path, model="missing.json")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == (
        "error: model: the environment variable FRAMEPACK_MODEL is 'missing.json': allowed 'published' (or "
        "'default'), 'self-test' (or 'tiny') or the path of an existing recipe file"
    )


def test_serve_with_framepack_model_tiny_renders_requests_without_a_model_with_the_self_test_model(
    tmp_path, tiny_model_dir
):
    home = tiny_home(tiny_model_dir, tmp_path / "home")
    log = tmp_path / "server.log"
    server = LiveServer(
        home, tmp_path / "data", log, env={MODEL_ENV: "tiny", "HF_HUB_CACHE": str(tmp_path / "empty-hf-cache")}
    ).start()
    try:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            planned = client.post(f"{PREFIX}/plan", json=NO_MODEL)
            rendered = client.post(PREFIX, json=NO_MODEL)
            job = client.get(f"{PREFIX}/jobs/{rendered.json()['id']}").json() if rendered.status_code == 200 else None
            explicit = client.post(f"{PREFIX}/jobs", json={**NO_MODEL, "model": "default"})
    finally:
        server.stop()
    assert planned.status_code == 200 and "SELF-TEST model" in planned.json()["summary"]
    assert rendered.status_code == 200, rendered.text
    assert "SELF-TEST model" in rendered.json()["summary"] and job["request"]["model"] == "tiny"
    sidecar = tmp_path / "data" / "outputs" / rendered.json()["outputs"][-1]
    assert '"self_test_model": true' in sidecar.read_text()
    assert explicit.status_code == 503 and explicit.json()["error"]["kind"] == "model_unavailable"  # its own model
    text = log.read_text()
    assert "the default model is the SELF-TEST model (random weights: every video is noise)" in text


def test_serve_model_flag_wins_over_the_environment_and_a_bad_one_stops_it(tmp_path, tiny_model_dir):
    home = tiny_home(tiny_model_dir, tmp_path / "home")
    server = LiveServer(
        home,
        tmp_path / "data",
        tmp_path / "server.log",
        "--model",
        "published",
        env={MODEL_ENV: "tiny", "HF_HUB_CACHE": str(tmp_path / "empty-hf-cache")},
    ).start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            answer = client.post(f"{PREFIX}/jobs", json=NO_MODEL)
    finally:
        server.stop()
    assert answer.status_code == 503 and answer.json()["error"]["field"] == "model"
    bad = run_cli("serve", "--model", "nowhere.txt", "--port", "1", home=home, cwd=tmp_path, model=None)
    assert bad.returncode == 2
    assert (
        bad.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "--model is 'nowhere.txt': allowed 'published' (or 'default'), 'self-test' (or 'tiny') or the "
            "path of an existing recipe file"
        )
    )
