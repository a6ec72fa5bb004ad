"""The enhance stage of a job: before the text encoders, each distinct section prompt without an enhanced text gets
one from the vision-language model, which is then released.

What happens, by the request's `enhance`:

- every section prompt already in `enhanced_prompts` (a replayed record, the tab's edited texts): nothing loads;
  those texts are encoded;
- `off`: the other prompts are encoded as they are;
- `on` / `require`: the enhancer is looked for first (`source.check_enhancer`). Missing (or not loading), `require`
  fails (the job was refused at submit already when this could be known then) and `on` goes on with the original
  prompts and a warning. Found: the runner makes room on the device (`make_room`), the model loads, writes each
  pending prompt (seeded by `enhance_seed`, else the video's seed), and is released before anything else loads.

The stage returns the request with the new texts in `enhanced_prompts` (the record keeps them, so replaying it
needs no enhancer) and the `PromptsEnhanced` event that tells the faces what each section encodes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from framepack.enhancer.prompts import EnhanceItem, distinct_prompts, instructions
from framepack.enhancer.source import EnhancerSource, EnhancerUnavailableError, check_enhancer, resolve_enhancer
from framepack.events import CancelToken, EnhancedPrompt, EventCallback, PromptsEnhanced, StageStarted, ignore_events
from framepack.plan import Plan
from framepack.request import GenerateRequest

if TYPE_CHECKING:
    from framepack.models.loader import HubCache

logger = logging.getLogger(__name__)


def enhance_stage(
    request: GenerateRequest,
    plan: Plan,
    device: torch.device,
    hub: HubCache,
    home: Path | None = None,
    on_event: EventCallback = ignore_events,
    cancel: CancelToken | None = None,
    make_room: Callable[[], None] | None = None,
    everything: bool = False,
) -> tuple[GenerateRequest, PromptsEnhanced | None]:
    """Run the stage (see the module docstring); returns the request as it is encoded and the stage's event (None
    when nothing about the prompts changes: enhance off and no enhanced prompt applies).

    `everything` (the enhance route and command): enhance every distinct prompt anew, whatever `enhance` and
    `enhanced_prompts` say; a missing enhancer then raises EnhancerUnavailableError as `require` does."""
    start = time.perf_counter()
    items = distinct_prompts(request, plan)
    given = {} if everything else {item.prompt: request.enhanced_prompts[item.prompt] for item in items
                                   if item.prompt in request.enhanced_prompts}  # fmt: skip
    pending = [item for item in items if item.prompt not in given]
    if not (everything or request.enhance != "off") or not pending:
        if not given:
            return request, None
        return request, _event(items, given, {}, None, None, start)
    source = resolve_enhancer(request.enhancer, home)
    strict = everything or request.enhance == "require"
    missing = check_enhancer(source, hub)
    if missing is not None:
        if strict:
            raise missing
        return request, _without_enhancer(items, given, missing, start)
    seed = request.enhance_seed if request.enhance_seed >= 0 else plan.seed
    on_event(StageStarted("enhance", f"{len(pending)} prompt{'s' if len(pending) != 1 else ''} by {source.describe()}"))
    if make_room is not None:
        make_room()
    try:
        run = _write(request, pending, source, device, hub, seed, cancel or CancelToken())
    except EnhancerUnavailableError as error:  # its files are there but do not load (or cannot be quantized here)
        if strict:
            raise
        return request, _without_enhancer(items, given, error, start)
    enhanced = {**request.enhanced_prompts, **run.texts} if not everything else run.texts
    request = request.model_copy(update={"enhanced_prompts": enhanced})  # the texts are cleaned: they validate
    event = _event(items, given, run.texts, source.name, seed, start, run.warnings)
    event.self_test, event.weight_bytes, event.peak_bytes = run.self_test, run.weight_bytes, run.peak_bytes
    return request, event


@dataclass
class _Run:
    """What the model wrote, and what it took."""

    texts: dict[str, str]  # section prompt -> enhanced text
    warnings: list[str]
    weight_bytes: int
    peak_bytes: int | None
    self_test: bool


def _write(
    request: GenerateRequest,
    pending: list[EnhanceItem],
    source: EnhancerSource,
    device: torch.device,
    hub: HubCache,
    seed: int,
    cancel: CancelToken,
) -> _Run:
    """Load the model, write the pending prompts, release it (also when a cancel or an error stops it)."""
    from framepack.enhancer.vlm import load_vlm, release

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    vlm = load_vlm(source, device, request.enhance_quantize, str(hub.cache_dir()))
    run = _Run({}, [], vlm.weight_bytes, None, vlm.self_test)
    try:
        for item in pending:
            cancel.check()
            text = vlm.write(item.prompt, item.image(), instructions(request), seed, request.enhance_max_tokens)
            if text:
                run.texts[item.prompt] = text
            else:
                run.warnings.append(f"enhance: the enhancer wrote nothing for {_short(item.prompt)}; it is used as is")
        if device.type == "cuda":
            run.peak_bytes = torch.cuda.max_memory_allocated(device)
    finally:
        del vlm  # the only reference: the model is freed here, before the FramePack model is placed
        release(device)
    return run


def _without_enhancer(
    items: list[EnhanceItem], given: dict[str, str], error: EnhancerUnavailableError, start: float
) -> PromptsEnhanced:
    """enhance 'on' and the enhancer cannot be used: the event that says so; the prompts stay as they are."""
    warning = f"enhance: {error} The original prompts were used."
    logger.warning("%s", warning)
    return _event(items, given, {}, None, None, start, [warning])


def _event(
    items: list[EnhanceItem],
    given: dict[str, str],
    written: dict[str, str],
    enhancer: str | None,
    seed: int | None,
    start: float,
    warnings: list[str] | None = None,
) -> PromptsEnhanced:
    prompts = []
    for item in items:
        if item.prompt in written:
            by, text = "enhancer", written[item.prompt]
        elif item.prompt in given:
            by, text = "request", given[item.prompt]
        else:
            by, text = "original", None
        prompts.append(EnhancedPrompt(list(item.sections), item.prompt, text, by))
    return PromptsEnhanced(prompts, enhancer, False, seed, round(time.perf_counter() - start, 3), list(warnings or []))


def _short(text: str, length: int = 60) -> str:
    return repr(text if len(text) <= length else text[: length - 3] + "...")
