"""Batches from the tab: several start images and/or a list of prompts queue one job each, with the other
settings of the controls, as one batch that is checked whole and can be cancelled as a whole.

`BatchQueuer` holds the handlers (testable without a browser); `build_batch_panel` makes the components inside
the tab's Blocks and wires them to the tab's controls.
"""

from __future__ import annotations

from typing import Any

from framepack.images import load_image
from framepack.jobs.models import BatchLineError
from framepack.ui import compat
from framepack.ui.controls import as_markdown, describe_error

MAX_BATCH = 1000  # jobs one click may queue (the queue's own limit applies too)


class BatchQueuer:
    """Queue a batch from the tab's controls over its job service."""

    def __init__(self, tab: Any):  # the tab's handlers, `framepack.ui.tab.FramePackTab`
        self.tab = tab

    def queue(self, files: Any, prompts: str, *values: Any) -> tuple[str, str]:
        """(message, batch id): one job per start image (the init image control when none is given) and per prompt
        line (the prompt control when there are none); nothing is queued when one of them is refused."""
        named = self.tab.named(values)
        given = files if isinstance(files, (list, tuple)) else ([files] if files else [])
        paths = [path for path in (compat.file_path(item) for item in given) if path is not None]
        lines = [line.strip() for line in (prompts or "").splitlines() if line.strip()]
        if not paths and not lines:
            return "Give start images or prompts (one per line) to queue a batch.", ""
        count = max(1, len(paths)) * max(1, len(lines))
        if count > MAX_BATCH:
            return f"**Not queued:** {count} jobs; at most {MAX_BATCH} at once.", ""
        items = []
        for path in paths or [None]:
            image = named["init_image"]
            if path is not None:
                try:
                    image = load_image(str(path), "init_image")
                except Exception as error:  # noqa: BLE001 - named below
                    return f"**Not queued:** image {path.name}: {as_markdown(describe_error(error))}", ""
            for prompt in lines or [named["prompt"]]:
                label = ", ".join(
                    part
                    for part in (f"image {path.name}" if path else "", f"prompt {prompt[:40]!r}" if lines else "")
                    if part
                )
                items.append((label, {**named, "init_image": image, "prompt": prompt}))
        requests = []
        for number, (label, item) in enumerate(items, 1):
            try:
                requests.append(self.tab.request(self.tab.ordered(item)))
            except Exception as error:  # noqa: BLE001
                return f"**Not queued:** job {number} ({label}): {as_markdown(describe_error(error))}", ""
        try:
            batch = self.tab.service.submit_batch(requests)
        except BatchLineError as error:
            label = items[error.line - 1][0]
            detail = str(error).removeprefix(f"line {error.line}: ")
            return f"**Not queued:** job {error.line} ({label}): {as_markdown(detail)}", ""
        except Exception as error:  # noqa: BLE001
            return f"**Not queued:** {as_markdown(describe_error(error))}", ""
        return f"Queued a batch of {len(batch.jobs)} jobs (batch {batch.batch_id[:8]}).", batch.batch_id

    def cancel(self, batch_id: str) -> str:
        if not batch_id:
            return "No batch to cancel."
        try:
            jobs = self.tab.service.cancel_batch(batch_id)
        except Exception as error:  # noqa: BLE001
            return as_markdown(describe_error(error))
        ended = sum(1 for job in jobs if job.state.ended)
        return f"Batch {batch_id[:8]}: cancel requested; {ended} of {len(jobs)} jobs have ended."


def build_batch_panel(queuer: BatchQueuer, inputs: list[Any], c: Any = compat.component) -> dict[str, Any]:
    """The batch components (inside the current Blocks context) wired to the tab's control `inputs`."""
    import gradio as gr

    parts: dict[str, Any] = {}
    with gr.Row():
        parts["images"] = c(
            gr.File,
            label="Start images (one job each)",
            file_count="multiple",
            file_types=["image"],
            elem_id="framepack_batch_images",
        )
        parts["prompts"] = c(
            gr.Textbox,
            label="Prompts (one job per line)",
            lines=4,
            info="with start images too: one job per image and prompt; the other settings are the controls'",
            elem_id="framepack_batch_prompts",
        )
    with gr.Row():
        parts["queue"] = c(gr.Button, value="Queue batch", elem_id="framepack_batch_queue")
        parts["batch_id"] = c(gr.Textbox, label="Batch id", interactive=False, elem_id="framepack_batch_id")
        parts["cancel"] = c(gr.Button, value="Cancel this batch", variant="stop", elem_id="framepack_batch_cancel")
    parts["status"] = c(gr.Markdown, value="", elem_id="framepack_batch_status")
    compat.on(
        parts["queue"].click,
        queuer.queue,
        [parts["images"], parts["prompts"], *inputs],
        [parts["status"], parts["batch_id"]],
        queue=False,
    )
    compat.on(parts["cancel"].click, queuer.cancel, [parts["batch_id"]], [parts["status"]], queue=False)
    return parts
