"""Section prompt syntaxes in the plan (lines, [t] timestamps, FramePack-Studio's [Ts: text], musubi-tuner's
index:text;;;...), against section prompts computed by hand, and the refusals of text that only looks like one.

At the default window 9 and 30 fps a section is 36 frames: 4.8 s gives 4 sections starting at 0, 37/30, 73/30 and
109/30 s (0, 1.233, 2.433, 3.633), and the video ends at 145/30 = 4.833 s; 6 s gives 5 sections."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from helpers import FAST, tiny_home

from api.routes import PREFIX
from api.server import create_app
from framepack.cli import main
from framepack.jobs.manager import JobManager
from framepack.plan import PlanError, make_plan
from framepack.request import GenerateRequest
from framepack.runner import Runner


def prompts(text: str, duration: float = 4.8, variant: str = "bidirectional", prompt: str = "x"):
    plan = make_plan(GenerateRequest(prompt=prompt, section_prompts=text, duration=duration, variant=variant))
    return plan, [section.prompt for section in plan.sections]


def test_plain_lines_and_timestamps_report_their_syntax():
    plan, texts = prompts("walking\njumping")
    assert plan.section_prompt_syntax == "lines" and texts == ["x, walking", "x, walking", "x, jumping", "x, jumping"]
    plan, texts = prompts("[0s] walking\n[2.5s] jumping")  # middles 0.62, 1.83, 3.03, 4.23
    assert plan.section_prompt_syntax == "timestamps" and texts == ["x, walking"] * 2 + ["x, jumping"] * 2
    plan, texts = prompts("")
    assert plan.section_prompt_syntax == "none" and texts == ["x"] * 4


@pytest.mark.parametrize("variant", ["bidirectional", "f1"])
def test_studio_ranges_snap_to_section_boundaries_in_time_order(variant):
    # 0 s -> boundary 0; 2 s -> 2.433 (0.43 away, 1.233 is 0.77); 3 s -> 2.433 (0.57 away, 3.633 is 0.63)
    plan, texts = prompts("[0s-2s: walking]\n[3s: jumping]", variant=variant)
    assert plan.section_prompt_syntax == "studio"
    assert texts == ["x, walking", "x, walking", "x, jumping", "x, jumping"]
    assert [section.prompt_line for section in plan.sections] == [0, 0, 1, 1]
    assert plan.unused_prompt_lines == [] and plan.warnings == []


def test_studio_gaps_get_no_suffix_and_a_later_start_wins_an_overlap():
    # [0s-1s] covers section 0 only (1 s snaps to 1.233); [3.7s] starts at boundary 3
    _, texts = prompts("[0s-1s: a]\n[3.7s: b]")
    assert texts == ["x, a", "x", "x", "x, b"]
    # [0s-3.6s] covers sections 0..2, [1.2s] (open: until the end) takes over from section 1
    _, texts = prompts("[0s-3.6s: a]\n[1.2s: b]")
    assert texts == ["x, a", "x, b", "x, b", "x, b"]
    # written out of order: still in time order
    _, texts = prompts("[2.4s: late]\n[0s: early]")
    assert texts == ["x, early", "x, early", "x, late", "x, late"]


def test_studio_entry_that_snaps_to_nothing_is_reported_unused():
    plan, texts = prompts("[0s: a]\n[4.7s: b]")  # 4.7 s snaps to the end of the video: no section is left
    assert texts == ["x, a"] * 4
    assert plan.unused_prompt_lines == [1]
    assert "section_prompts: unused entries 2 (they name or cover no section of the 4)" in plan.warnings


def test_musubi_indices_ranges_and_last():
    plan, texts = prompts("0:walking;;;1-2:jumping;;;-1:waving")
    assert plan.section_prompt_syntax == "musubi"
    assert texts == ["x, walking", "x, jumping", "x, jumping", "x, waving"]
    # 5 sections: section 3 is named by no entry and takes section 0's
    _, texts = prompts("0:walking;;;1-2:jumping;;;-1:waving", duration=6)
    assert texts == ["x, walking", "x, jumping", "x, jumping", "x, walking", "x, waving"]


def test_musubi_negative_wins_and_unnamed_sections_take_the_earliest_named():
    _, texts = prompts("0-3:a;;;-1:b")
    assert texts == ["x, a", "x, a", "x, a", "x, b"]
    _, texts = prompts("-1:b;;;3:a")  # the negative index wins whatever the order
    assert texts[3] == "x, b"
    _, texts = prompts("2:b;;;3:c")
    assert texts == ["x, b", "x, b", "x, b", "x, c"]
    plan, texts = prompts("1:a;;;1:b;;;\n0:c")  # the later entry for a section wins; newlines around ;;; are fine
    assert texts == ["x, c", "x, b", "x, c", "x, c"] and plan.unused_prompt_lines == [0]


def test_musubi_and_studio_keep_the_order_whatever_the_variant():
    for text in ("0:a;;;-1:b", "[0s: a]\n[3.7s: b]"):
        assert prompts(text, variant="f1")[1] == prompts(text, variant="bidirectional")[1] == ["x, a"] * 3 + ["x, b"]


REFUSED = [
    ("walking\n[2.5x] jumping", "line 2 '[2.5x] jumping' looks like a timestamp but does not parse"),
    ("[0s-2s walking]", "line 1 '[0s-2s walking]' looks like a timestamp but does not parse"),
    ("[1:75] late", "line 1 '[1:75] late' has a [minutes:seconds] time with 60 or more seconds"),
    ("[3s-1s: a]", "line 1 '[3s-1s: a]' ends before it starts"),
    ("[0s: a]\n[0s-2s: b]", "line 2 '[0s-2s: b]' starts at the same time as an earlier line"),
    ("[0s: a]\nplain", "line 2 'plain' is not FramePack-Studio's [time: text]"),
    ("[0s: a]\n[2s] b", "line 2 '[2s] b' is not FramePack-Studio's [time: text]"),
    ("walking\n2:jumping", "line 2 '2:jumping' looks like musubi-tuner's index:text; separate the entries with ';;;'"),
    ("0:a;;;walking", "entry 2 'walking' has no section index"),
    ("0:a;;;7:b", "entry 2 '7:b' names a section that does not exist; allowed 0..3 or -4..-1"),
    ("0:a;;;-5:b", "entry 2 '-5:b' names a section that does not exist"),
    ("0:a;;;3-1:b", "entry 2 '3-1:b' is not a range a-b with 0 <= a <= b"),
    ("0:a;;;2:", "entry 2 '2:' has no text after its index"),
]


@pytest.mark.parametrize("text,message", REFUSED, ids=[str(index) for index in range(len(REFUSED))])
def test_text_that_looks_like_a_syntax_but_does_not_parse_is_refused(text, message):
    with pytest.raises(PlanError) as refused:
        prompts(text)
    assert refused.value.field == "section_prompts"
    assert str(refused.value).startswith(f"section_prompts: {message}")


def test_ordinary_prompts_that_start_with_digits_and_colons_stay_text():
    _, texts = prompts("1:1 scale model\n16:9 wide shot")
    assert texts == ["x, 1:1 scale model"] * 2 + ["x, 16:9 wide shot"] * 2


def test_a_prompt_holding_section_syntax_is_warned_about():
    plan, _ = prompts("", prompt="[0s: a cat] [2s: a dog]")
    assert any(warning.startswith("prompt holds what reads as section prompts") for warning in plan.warnings)


def test_refusal_is_exit_2_in_the_cli(capsys):
    assert main(["plan", "--prompt", "x", "--section-prompts", "[0s: a]\n[2.5x] b"]) == 2
    assert "error: section_prompts: line 2 '[2.5x] b' looks like a timestamp" in capsys.readouterr().err


def test_refusal_is_422_in_the_api_naming_the_field(tiny_model_dir, tmp_path):
    runner = Runner(device="cpu", output_dir=tmp_path / "out", home=tiny_home(tiny_model_dir, tmp_path / "home"))
    manager = JobManager(tmp_path / "data", runner)
    with TestClient(create_app(manager, tmp_path / "out", manage_lifecycle=False)) as client:
        response = client.post(f"{PREFIX}/plan", json={**FAST, "section_prompts": "0:a;;;9:b"})
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert (
            error["field"] == "section_prompts"
            and "entry 2 '9:b' names a section that does not exist" in (error["message"])
        )
        accepted = client.post(f"{PREFIX}/plan", json={**FAST, "section_prompts": "[0s: a]"}).json()
        assert accepted["plan"]["section_prompt_syntax"] == "studio"
