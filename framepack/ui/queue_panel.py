"""The queue panel of the tab: every job of the shared queue (the tab's, the REST API's, SD.Next's), steerable.

Running and queued jobs (in queue order) and the latest ended ones are shown in a table with a thumbnail, state,
progress and time, refreshed every few seconds. A job chosen in the "Job" list can be cancelled, re-run (its
settings, images included, loaded into the controls), deleted (optionally with the files it wrote), or moved in
the queue; the queue as a whole can be paused and resumed, and the current controls queued without following the
run ("Add to queue"). A finished job can be continued (seconds added, optionally a new prompt) or one of its
sections re-rolled (a section of the storyboard picks it); "Variants" shows the chosen job's family, its parents
and the continuations and re-rolls made of them, as an indented list. Everything goes through the `JobService`;
every handler answers with a message, never raises.

`QueuePanel` holds the handlers (testable without a browser); `build_queue_panel` makes its components inside
the tab's Blocks and wires them to the tab's controls.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import time
from typing import TYPE_CHECKING, Any

from PIL import Image

from framepack.jobs.models import ENDED_STATES, Job, JobState
from framepack.request import GenerateRequest
from framepack.ui import compat
from framepack.ui.controls import (
    CONTROL_FIELDS,
    IMAGE_FIELDS,
    KEYFRAMES,
    as_markdown,
    describe_error,
    values_from_request,
)

if TYPE_CHECKING:
    import gradio as gr


logger = logging.getLogger(__name__)

REFRESH_S = 2.0  # how often the panel asks the service for the queue
ENDED_SHOWN = 20  # the latest ended jobs the panel lists
THUMBNAIL_PX = 96  # the longer side of a thumbnail in the table
PICTURES_KEPT = 256  # encoded thumbnails kept between refreshes
PROMPT_SHOWN = 60  # characters of the prompt shown in a row and in the job list
SEPARATOR = " · "  # between the short id and the prompt in the job list
VARIANTS_SCANNED = 1000  # the newest jobs searched for a job's parents and children
KIND_WORDS = {"continue": "continues", "reroll": "re-rolls"}


def _clock(seconds: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(seconds)) if seconds is not None else ""


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}"


def short_prompt(job: Job) -> str:
    prompt = " ".join(str(job.request.get("prompt") or "").split())
    return prompt if len(prompt) <= PROMPT_SHOWN else prompt[: PROMPT_SHOWN - 1] + "…"


def lineage(job: Job) -> str:
    """'↳ continues abcd1234: ' for a continuation or re-roll ('' for a job of its own)."""
    if job.parent is None or job.parent_kind is None:
        return ""
    return f"↳ {KIND_WORDS[job.parent_kind]} {job.parent[:8]}: "


def job_choice(job: Job) -> str:
    """The job's entry in the "Job" list: its short id and prompt (stable while the job runs and ends)."""
    return f"{job.id[:8]}{SEPARATOR}{short_prompt(job) or '(no prompt)'}"


def progress_text(job: Job) -> str:
    """One line: where the job stands."""
    progress = job.progress
    if job.state == JobState.QUEUED:
        return f"#{(job.queue_position or 0) + 1} in the queue" if job.queue_position is not None else "queued"
    if job.state == JobState.RUNNING:
        percent = 100 * progress.done_steps // progress.total_steps if progress.total_steps else 0
        text = f"{progress.stage}: step {progress.done_steps}/{progress.total_steps} ({percent}%)"
        if progress.sections:
            text += f", {progress.sections_done}/{progress.sections} sections"
        if progress.eta_seconds is not None:
            text += f", ETA {_duration(progress.eta_seconds)}"
        return text
    if job.state == JobState.FINISHED:
        return f"{job.summary or 'finished'}"
    return job.error.message if job.error is not None else job.state.value


def time_text(job: Job) -> str:
    if job.state == JobState.QUEUED:
        return f"queued {_clock(job.created_at)}"
    if job.state == JobState.RUNNING:
        return f"started {_clock(job.started_at)}"
    took = (job.finished_at or 0) - (job.started_at or job.finished_at or 0)
    return f"ended {_clock(job.finished_at)}" + (f" after {_duration(took)}" if job.started_at else "")


def auto_named(job: Job) -> bool:
    """Whether the job's output name is the one the queue gave it (its id, or the naming rule's
    `framepack-...-<id8>`), not one the user chose."""
    name = str(job.request.get("filename") or "")
    return name == job.id or (name.startswith("framepack-") and name.endswith(f"-{job.id[:8]}"))


class QueuePanel:
    """Handlers of the queue panel over the tab's job service."""

    def __init__(self, tab: Any):  # the tab's handlers, `framepack.ui.tab.FramePackTab`
        self.tab = tab
        self.service = tab.service
        self._pictures: dict[tuple[str, str, int], str] = {}  # (job, state, sections done) -> data URL

    # ---------------------------------------------------------------------------------------------- listing

    def jobs(self) -> list[Job]:
        """Running, then queued in queue order, then the latest ended jobs (newest first)."""
        live = self.service.list_jobs(states=(JobState.RUNNING, JobState.QUEUED))
        live.sort(key=lambda job: (job.state != JobState.RUNNING, job.queue_position or 0))
        return live + self.service.list_jobs(states=ENDED_STATES, limit=ENDED_SHOWN, newest_first=True)

    def picture(self, job: Job) -> str | None:
        """The job's thumbnail as a JPEG data URL (kept per job, state and finished sections), or None."""
        key = (job.id, job.state.value, job.progress.sections_done)
        if key not in self._pictures:
            try:
                pixels = self.service.thumbnail(job.id, THUMBNAIL_PX)
            except Exception as error:  # noqa: BLE001 - a row without a picture rather than no panel
                logger.debug("no thumbnail for job %s: %s", job.id, error)
                pixels = None
            if pixels is None:
                return None
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="JPEG", quality=80)
            self._pictures[key] = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
            while len(self._pictures) > PICTURES_KEPT:
                del self._pictures[next(iter(self._pictures))]
        return self._pictures[key]

    def table(self, jobs: list[Job]) -> str:
        """The jobs as an HTML table; every text from a job is escaped (prompts come from anyone)."""
        if not jobs:
            return '<div id="framepack_queue_empty">No jobs yet.</div>'
        rows = []
        for job in jobs:
            picture = self.picture(job)
            image = f'<img src="{picture}" alt="" style="max-width:{THUMBNAIL_PX}px">' if picture else ""
            cells = [
                image,
                f"<code>{job.id[:8]}</code>",
                f'<span class="framepack-queue-state">{job.state.value}</span>',
                html.escape(lineage(job) + short_prompt(job)),
                html.escape(progress_text(job)),
                html.escape(time_text(job)),
            ]
            rows.append(
                f'<tr data-job-id="{job.id}" data-state="{job.state.value}">'
                + "".join(f"<td>{cell}</td>" for cell in cells)
                + "</tr>"
            )
        head = "".join(f"<th>{name}</th>" for name in ("", "job", "state", "prompt", "progress", "time"))
        return (
            '<table id="framepack_queue_table" style="width:100%">'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        )

    def queue_line(self) -> str:
        state = self.service.queue_state()
        paused = "**Paused**: no job starts until you resume. " if state.paused else ""
        running = "one job running" if state.running else "nothing running"
        return f"{paused}{state.queued} waiting, {running}."

    def refresh(self, selected: str | None, shown: str | None) -> tuple[Any, Any, str, str]:
        """(table, job list, queue line, what is shown) for the timer: the table and the job list are sent only when
        they changed, so an open list is not redrawn under the pointer."""
        try:
            jobs = self.jobs()
            table, choices, line = self.table(jobs), [job_choice(job) for job in jobs], self.queue_line()
        except Exception as error:  # noqa: BLE001 - the panel says so and keeps refreshing
            return compat.update(), compat.update(), f"Cannot list the queue: {as_markdown(describe_error(error))}", ""
        signature = f"{len(table)}:{hash(table)}|{hash(tuple(choices))}"
        if signature == shown:
            return compat.update(), compat.update(), line, signature
        return table, compat.update(choices=choices), line, signature

    def resolve(self, selected: str | None) -> str | None:
        """The job id of a "Job" list entry (or of a typed id or id prefix); None when none matches."""
        token = (selected or "").split(SEPARATOR)[0].strip()
        if not token:
            return None
        try:
            self.service.get(token)
            return token
        except Exception:  # noqa: BLE001 - not a whole id: look for the prefix among the listed jobs
            pass
        matches = [job.id for job in self.jobs() if job.id.startswith(token)]
        return matches[0] if len(matches) == 1 else None

    # ---------------------------------------------------------------------------------------------- actions

    def _act(self, selected: str | None, action: Any) -> str:
        job_id = self.resolve(selected)
        if job_id is None:
            return "Choose a job in the list first." if not selected else f"No job matches {selected!r}."
        try:
            return action(job_id)
        except Exception as error:  # noqa: BLE001 - every refusal is a message
            return as_markdown(describe_error(error))

    def cancel(self, selected: str | None) -> str:
        def cancel(job_id: str) -> str:
            job = self.service.cancel(job_id)
            return f"Cancelled {job_id[:8]}." if job.state.ended else f"Cancel requested for {job_id[:8]}."

        return self._act(selected, cancel)

    def delete(self, selected: str | None, with_files: bool) -> str:
        def delete(job_id: str) -> str:
            deleted = self.service.delete(job_id, files=bool(with_files))
            if not with_files:
                return f"Deleted {job_id[:8]} from the queue's history; its files were kept."
            kept = f"; kept {', '.join(deleted.kept_files)}" if deleted.kept_files else ""
            return f"Deleted {job_id[:8]} and {len(deleted.removed_files)} of its files{as_markdown(kept)}."

        return self._act(selected, delete)

    def move(self, selected: str | None, step: int) -> str:
        """Move a queued job `step` places (negative: towards the front); step 0 runs it next."""

        def move(job_id: str) -> str:
            job = self.service.get(job_id)
            if job.queue_position is None:
                return f"Job {job_id[:8]} is {job.state.value}; only queued jobs can be moved."
            target = 0 if step == 0 else max(0, job.queue_position + step)
            moved = self.service.move(job_id, target)
            return f"Job {job_id[:8]} is now #{(moved.queue_position or 0) + 1} in the queue."

        return self._act(selected, move)

    def pause(self) -> str:
        try:
            self.service.pause()
        except Exception as error:  # noqa: BLE001
            return as_markdown(describe_error(error))
        return "Queue paused: the running job finishes, no other starts."

    def resume(self) -> str:
        try:
            self.service.resume()
        except Exception as error:  # noqa: BLE001
            return as_markdown(describe_error(error))
        return "Queue resumed."

    def enqueue(self, *values: Any) -> str:
        """Queue the current controls without following the run (kept as the last-used settings, as Generate
        does)."""
        try:
            request = self.tab.request(values)
            job = self.service.submit(request)
        except Exception as error:  # noqa: BLE001
            return f"**Not queued:** {as_markdown(describe_error(error))}"
        self.tab.remember(request)  # as Generate does: the settings and images come back after a reload
        return f"Queued {job.id[:8]} as #{(job.queue_position or 0) + 1}: {as_markdown(job.summary or '')}"

    def continue_job(self, selected: str | None, seconds: Any, prompt: str | None) -> str:
        """Queue the continuation of the chosen finished job by `seconds`, with a new prompt when one is given."""

        def go(job_id: str) -> str:
            fields: dict[str, Any] = {"continue_job": job_id, "duration": seconds}
            if prompt and prompt.strip():
                fields["prompt"] = prompt
            return self._queued(self.service.submit(GenerateRequest(**fields)))

        return self._act(selected, go)

    def reroll(self, selected: str | None, section: Any, seed: Any, line: str | None) -> str:
        """Queue a re-roll of `section` of the chosen finished job (seed -1: a new one; `line`: a new prompt line)."""

        def go(job_id: str) -> str:
            fields: dict[str, Any] = {"reroll_job": job_id, "reroll_section": section, "reroll_prompt": line or ""}
            if seed is not None:
                fields["reroll_seed"] = seed
            return self._queued(self.service.submit(GenerateRequest(**fields)))

        return self._act(selected, go)

    @staticmethod
    def _queued(job: Job) -> str:
        return f"Queued {job.id[:8]} as #{(job.queue_position or 0) + 1}: {as_markdown(job.summary or '')}"

    def variants(self, selected: str | None) -> str:
        """The chosen job's family as an indented Markdown list: its first ancestor, then every continuation and
        re-roll below the job it derives from (among the newest VARIANTS_SCANNED jobs); '' for a job of its own."""
        job_id = self.resolve(selected)
        if job_id is None:
            return ""
        try:
            jobs = {job.id: job for job in self.service.list_jobs(limit=VARIANTS_SCANNED, newest_first=True)}
        except Exception as error:  # noqa: BLE001
            return as_markdown(describe_error(error))
        root = job_id
        while root in jobs and jobs[root].parent in jobs:
            root = str(jobs[root].parent)
        children: dict[str, list[Job]] = {}
        for job in sorted(jobs.values(), key=lambda job: job.created_at):
            if job.parent is not None:
                children.setdefault(job.parent, []).append(job)
        if root not in jobs or not children.get(root):
            return ""
        lines = ["**Variants** (continuations and re-rolls, each below the job it comes from):"]

        def add(job: Job, depth: int) -> None:
            shown = f"`{job.id[:8]}`"
            if job.id == job_id:
                shown = f"**{shown}**"
            how = f"{KIND_WORDS[job.parent_kind]} " if job.parent_kind else ""
            section = job.request.get("reroll_section")
            how += f"section {section}, " if job.parent_kind == "reroll" else ""
            text = f"{how}{job.state.value}: {short_prompt(job) or '(no prompt)'}"
            lines.append(f"{'    ' * depth}- {shown} {as_markdown(text)}")
            for child in children.get(job.id, []):
                add(child, depth + 1)

        add(jobs[root], 0)
        return "\n".join(lines)

    def rerun(self, selected: str | None) -> list:
        """Every control from the chosen job's request (images included), then the keyframe gallery and a message.
        The job's own output name (its id) is not taken over; the seed is, so Generate makes the same video."""
        unchanged = [compat.update() for _ in CONTROL_FIELDS]
        job_id = self.resolve(selected)
        if job_id is None:
            return [*unchanged, compat.update(), "Choose a job in the list first."]
        try:
            job = self.service.get(job_id)
        except Exception as error:  # noqa: BLE001
            return [*unchanged, compat.update(), as_markdown(describe_error(error))]
        fields = dict(job.request)
        if auto_named(job):
            fields["filename"] = None
        values = self.tab.default_values()
        values.update(values_from_request(fields))
        missing = [name for name in IMAGE_FIELDS if fields.get(name) and values.get(name) is None]
        note = f" Images no longer found: {', '.join(missing)}." if missing else ""
        message = f"Loaded the settings of {job_id[:8]} (seed {fields.get('seed')}).{note}"
        return [*self.tab.ordered(values), self.tab.keyframe_gallery(values[KEYFRAMES]), message]


def build_queue_panel(
    panel: QueuePanel, blocks: gr.Blocks, inputs: list[Any], keyframe_gallery: Any, c: Any = compat.component
) -> dict[str, Any]:
    """The panel's components (inside the current Blocks context) wired to the tab's control `inputs` (in
    CONTROL_FIELDS order) and its keyframe gallery; returns the components by name."""
    import gradio as gr

    parts: dict[str, Any] = {}
    with gr.Row():
        parts["enqueue"] = c(gr.Button, value="Add to queue", elem_id="framepack_queue_add")
        parts["pause"] = c(gr.Button, value="Pause queue", elem_id="framepack_queue_pause")
        parts["resume"] = c(gr.Button, value="Resume queue", elem_id="framepack_queue_resume")
    parts["line"] = c(gr.Markdown, value="", elem_id="framepack_queue_line")
    parts["table"] = c(gr.HTML, value="", elem_id="framepack_queue")
    with gr.Row():
        parts["job"] = c(
            gr.Dropdown,
            label="Job",
            choices=[],
            value=None,
            allow_custom_value=True,
            info="the job the buttons act on (its short id and prompt; a typed job id works too)",
            elem_id="framepack_queue_job",
        )
        with gr.Column():
            with gr.Row():
                parts["first"] = c(gr.Button, value="Run next", elem_id="framepack_queue_first")
                parts["up"] = c(gr.Button, value="Move up", elem_id="framepack_queue_up")
                parts["down"] = c(gr.Button, value="Move down", elem_id="framepack_queue_down")
            with gr.Row():
                parts["cancel"] = c(gr.Button, value="Cancel job", variant="stop", elem_id="framepack_queue_cancel")
                parts["rerun"] = c(gr.Button, value="Re-run (load its settings)", elem_id="framepack_queue_rerun")
                parts["delete"] = c(gr.Button, value="Delete from history", elem_id="framepack_queue_delete")
                parts["files"] = c(
                    gr.Checkbox, label="also delete its files", value=False, elem_id="framepack_queue_delete_files"
                )
    with gr.Row():  # continue or re-roll the chosen finished job (its kept latents)
        parts["continue_seconds"] = c(
            gr.Number, label="Seconds to add", value=5.0, minimum=0.1, elem_id="framepack_continue_seconds"
        )
        parts["continue_prompt"] = c(
            gr.Textbox, label="Prompt of the added part (empty: the job's)", elem_id="framepack_continue_prompt"
        )
        parts["continue"] = c(gr.Button, value="Continue this job", elem_id="framepack_continue")
    with gr.Row():
        parts["reroll_section"] = c(
            gr.Number,
            label="Section to re-roll (or click it in the storyboard)",
            value=0,
            precision=0,
            minimum=0,
            elem_id="framepack_reroll_section",
        )
        parts["reroll_seed"] = c(
            gr.Number, label="Re-roll seed (-1: a new one)", value=-1, precision=0, elem_id="framepack_reroll_seed"
        )
        parts["reroll_prompt"] = c(
            gr.Textbox, label="New prompt line for the section (optional)", elem_id="framepack_reroll_prompt"
        )
        parts["reroll"] = c(gr.Button, value="Re-roll this section", elem_id="framepack_reroll")
    parts["status"] = c(gr.Markdown, value="", elem_id="framepack_queue_status")
    parts["variants"] = c(gr.Markdown, value="", elem_id="framepack_variants")
    shown = gr.State("")

    view = [parts["table"], parts["job"], parts["line"], shown]

    def refresh_after(event: Any) -> None:
        compat.on(event.then, panel.refresh, [parts["job"], shown], view, queue=False, show_progress="hidden")

    job = [parts["job"]]
    refresh_after(compat.on(parts["enqueue"].click, panel.enqueue, inputs, [parts["status"]], queue=False))
    refresh_after(compat.on(parts["pause"].click, panel.pause, None, [parts["status"]], queue=False))
    refresh_after(compat.on(parts["resume"].click, panel.resume, None, [parts["status"]], queue=False))
    refresh_after(compat.on(parts["cancel"].click, panel.cancel, job, [parts["status"]], queue=False))
    refresh_after(
        compat.on(parts["delete"].click, panel.delete, [parts["job"], parts["files"]], [parts["status"]], queue=False)
    )
    for name, step in (("first", 0), ("up", -1), ("down", 1)):
        refresh_after(
            compat.on(
                parts[name].click, lambda selected, step=step: panel.move(selected, step), job, [parts["status"]],
                queue=False,
            )
        )  # fmt: skip
    compat.on(parts["rerun"].click, panel.rerun, job, [*inputs, keyframe_gallery, parts["status"]], queue=False)
    continued = compat.on(
        parts["continue"].click,
        panel.continue_job,
        [parts["job"], parts["continue_seconds"], parts["continue_prompt"]],
        [parts["status"]],
        queue=False,
    )
    rerolled = compat.on(
        parts["reroll"].click,
        panel.reroll,
        [parts["job"], parts["reroll_section"], parts["reroll_seed"], parts["reroll_prompt"]],
        [parts["status"]],
        queue=False,
    )
    for event in (continued, rerolled):
        refresh_after(event)
    compat.on(parts["job"].change, panel.variants, job, [parts["variants"]], queue=False)
    compat.every(blocks, REFRESH_S, panel.refresh, [parts["job"], shown], view)
    compat.on(blocks.load, panel.refresh, [parts["job"], shown], view, queue=False)
    return parts
