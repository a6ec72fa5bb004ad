"""From a planned request to finished files: check it on this machine, enhance its prompts, load the model, build the
sinks, generate, write the record.

`Runner.run` is called by the CLI's `generate` and `calibrate-magcache` and by the job queue's worker
(`framepack.jobs`); the tab and the REST API reach it only through the queue. The runner owns the one loaded model,
so repeated jobs with the same recipe do not reload it. Planning and model resolution, which need no torch, are
in `framepack.planning`.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path

import torch

from framepack.enhancer.stage import enhance_stage
from framepack.estimate import record_speed
from framepack.events import CancelToken, EventCallback, PromptsEnhanced, StageStarted, ignore_events
from framepack.generate import GenerationResult, generate
from framepack.home import data_home
from framepack.models.attention import check_attention, set_attention
from framepack.models.caches import TransformerCache, load_mag_ratios, save_mag_ratios
from framepack.models.compile import check_compile, compile_mode, compile_seconds, set_compile
from framepack.models.components import Components
from framepack.models.load_lock import LOAD_LOCK
from framepack.models.loader import DEFAULT_HUB, HubCache, load_components
from framepack.models.lora import LoraFolders, LoraRef, check_loras, ensure_loras, lora_folders, parse_lora_tags
from framepack.models.offload import HostOffload, Offloader
from framepack.models.quantize import check_compute
from framepack.models.recipe import Recipe
from framepack.outputs import IMAGE_SUFFIX, OutputCommit, OutputExists, default_stem, disk_full, existing_names
from framepack.plan import Plan
from framepack.planning import plan_request, resolve_recipe
from framepack.record import GenerationRecord, sidecar_path
from framepack.request import GenerateRequest
from framepack.video.codecs import check_output_settings
from framepack.video.encoder import VideoEncoderSink
from framepack.video.frames import FrameExportSink
from framepack.video.image import ImageSink
from framepack.video.interpolate import InterpolatingSink, load_interpolator
from framepack.video.probe import EncoderProber
from framepack.video.raw import RawFramesSink
from framepack.video.sink import FrameSink, abort_sinks

logger = logging.getLogger(__name__)


def output_path(request: GenerateRequest, plan: Plan, default_dir: Path) -> Path:
    """The video's path (single frame: the PNG's); the other outputs take its stem (raw .safetensors, sidecar .json,
    frames folder)."""
    folder = Path(request.output_dir) if request.output_dir else default_dir
    stem = request.filename or default_stem(plan.seed, uuid.uuid4().hex)
    return folder / (f"{stem}{IMAGE_SUFFIX}" if request.single_frame else f"{stem}.{request.container}")


def planned_outputs(request: GenerateRequest, path: Path) -> list[Path]:
    """The final paths the request writes beside the video path `path`: video (or single frame: the PNG), raw file,
    frames folder, sidecar."""
    paths = [path] if request.codec != "none" or request.single_frame else []
    if request.save_raw:
        paths.append(path.with_suffix(".safetensors"))
    if request.save_frames != "none":
        paths.append(path.with_name(path.stem))
    return [*paths, path.with_suffix(".json")]


def check_outputs(request: GenerateRequest, plan: Plan, prober: EncoderProber | None = None) -> None:
    """Encoder, container and options are checked by the encoder's allowlist and tried in memory (by `prober`, in
    a child process in an empty folder) before any model work. A single frame writes a PNG: no encoder is used."""
    if request.single_frame:
        return
    check_output_settings(request.codec, request.container, request.codec_options, plan.width, plan.height, prober)


def build_sinks(
    request: GenerateRequest,
    plan: Plan,
    path: Path,
    model_dir: Path | None = None,
    commit: OutputCommit | None = None,
    record: GenerationRecord | None = None,
) -> list[FrameSink]:
    """Video, raw frames and image export, behind the interpolator when frames are interpolated. With `commit`
    the sinks leave their finished outputs under temporary names, staged for `commit.commit()`. The video and the
    raw file carry `record` (default: the record of `request` and `plan`); a single frame is one PNG carrying it."""
    record = record or GenerationRecord.of(request, plan)
    if request.single_frame:
        return [ImageSink(path, record.embed(), commit)]
    sinks: list[FrameSink] = []
    try:
        if request.codec != "none":
            sinks.append(
                VideoEncoderSink(
                    path,
                    plan.fps,
                    plan.width,
                    plan.height,
                    request.codec,
                    request.container,
                    request.codec_options,
                    record.embed(),
                    commit,
                )
            )
        if request.save_raw:
            settings = {"codec": request.codec, "container": request.container, "codec_options": request.codec_options}
            raw_path = path.with_suffix(".safetensors")
            sinks.append(
                RawFramesSink(
                    raw_path,
                    plan.fps,
                    plan.width,
                    plan.height,
                    plan.output_frames,
                    settings,
                    request=record.embedded(),
                    commit=commit,
                )
            )
        if request.save_frames != "none":
            sinks.append(
                FrameExportSink(path.parent, path.stem, request.save_frames, request.jpeg_quality, commit=commit)
            )
    except BaseException:
        abort_sinks(sinks)
        raise
    if request.interpolate > 0:
        with LOAD_LOCK:  # builds a module (several workers in one process)
            interpolator = load_interpolator(request.interpolation, model_dir)
        return [InterpolatingSink(sinks, interpolator, request.interpolate, wrap=request.loop)]
    return sinks


def mean_ratios(calibration: list[list[float]], steps: int) -> list[float]:
    """Per-step mean of the sections' measured MagCache ratios (every section that ran all its steps)."""
    complete = [ratios for ratios in calibration if len(ratios) == steps]
    if not complete:
        raise RuntimeError("MagCache calibration measured no complete section")
    return [round(sum(values) / len(values), 5) for values in zip(*complete)]


def report_compile(seconds: float) -> float:
    """Log the time this job spent compiling the transformer blocks (once; reused later) and return it."""
    if seconds > 0:
        logger.info("compiled the transformer blocks in %.1f s; later sections and jobs reuse them", seconds)
    else:
        logger.info("the transformer blocks were compiled already: no compile time in this job")
    return round(seconds, 3)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Runner:
    """Runs requests one at a time on one device, keeping the last loaded model."""

    def __init__(
        self,
        device: torch.device | str | None = None,
        output_dir: Path | str = "outputs",
        home: Path | None = None,
        lora_dir: LoraFolders | None = None,
        host_offload: HostOffload | None = None,
        hub: HubCache = DEFAULT_HUB,
    ):
        """`lora_dir`: one LoRA folder or several, searched in order (default `<home>/loras`); `host_offload`: the
        host's balanced offload (SD.Next's), used instead of ours for offload 'balanced'; `hub`: where hub repos
        are looked for (SD.Next: its Hugging Face cache folder and offline setting)."""
        self.device = torch.device(device) if device else default_device()
        self.output_dir = Path(output_dir)
        self.home = home
        self.lora_dir = lora_folders(lora_dir) if lora_dir else [(home or data_home()) / "loras"]
        self.host_offload = host_offload
        self.hub = hub
        self._recipe: Recipe | None = None
        self._components: Components | None = None
        self._offloader: Offloader | None = None
        self._placement: tuple[str, float] | None = None
        self.encoder_prober = EncoderProber()  # its child process starts on the first probe with options

    def preflight(self, request: GenerateRequest, plan: Plan) -> None:
        """Everything about the request that can fail on this machine, checked before any model work:
        encoder, container and options, the attention kernel on this device, and each LoRA's file (inside the
        LoRA folder, with a readable safetensors header)."""
        check_outputs(request, plan, self.encoder_prober)
        check_attention(request.attention, self.device)
        check_compile(request.compile, self.device)
        if plan.loras:
            in_prompt = {ref.name for ref in parse_lora_tags(request.prompt)[1]}
            fields = {name: "prompt" if name in in_prompt else "section_prompts" for name, _weight in plan.loras}
            check_loras([LoraRef(name, weight) for name, weight in plan.loras], self.lora_dir, fields)

    def check_recipe(self, recipe: Recipe) -> None:
        """What the model recipe asks of this machine's device, before any model loads: float8 compute
        (quantize=float8-dynamic) only on a GPU that has it (FieldError naming `model`)."""
        check_compute(recipe, self.device)

    def components_for(
        self, request: GenerateRequest, recipe: Recipe, on_event: EventCallback = ignore_events
    ) -> Components:
        """The loaded model for `recipe`, its blocks compiled or not as the request says, placed per its offload
        settings (reloaded only when the recipe changed, re-placed only when the offload or compile settings
        changed: a compiled model stays compiled while it stays loaded)."""
        if self._components is None or recipe != self._recipe:
            self.unload()
            on_event(StageStarted("load model", "self-test model" if recipe.self_test else request.model))
            # offloaded models rest on the CPU: loading them onto a small GPU first would not fit
            device = self.device if request.offload == "none" else torch.device("cpu")
            self._components = load_components(
                recipe, device, variant=request.variant, hub=self.hub, compute_device=self.device
            )
            self._recipe = recipe
        placement = (request.offload, request.preserved_memory_gb)
        recompile = compile_mode(self._components.transformer) != request.compile
        if self._offloader is None or placement != self._placement or recompile:
            if self._offloader is not None:
                self._offloader.remove(self._components, device="cpu")
                self._offloader = None
            set_compile(self._components.transformer, request.compile)  # while no offload hook wraps a block
            offloader = Offloader(
                self.device, request.offload, request.preserved_memory_gb, apply_host_offload=self.host_offload
            )
            offloader.apply(self._components)
            self._offloader, self._placement = offloader, placement
        return self._components

    def cache_for(
        self, request: GenerateRequest, plan: Plan, components: Components, calibrate_magcache: bool = False
    ) -> TransformerCache:
        """The request's cache on the transformer for this job; MagCache takes the ratios calibrated on this
        machine (`python -m framepack calibrate-magcache`) when there are some, else the published ones."""
        if calibrate_magcache:
            return TransformerCache(components.transformer, "magcache", plan.steps, calibrate=True)
        ratios = load_mag_ratios(components.variant, self.home or data_home()) if request.cache == "magcache" else None
        return TransformerCache(components.transformer, request.cache, plan.steps, request.cache_threshold, ratios)

    def prepare_model(
        self,
        request: GenerateRequest,
        plan: Plan,
        recipe: Recipe,
        on_event: EventCallback = ignore_events,
        calibrate_magcache: bool = False,
    ) -> tuple[Components, TransformerCache]:
        """The job's model: loaded and placed (`components_for`), with the request's LoRAs, attention kernel and
        cache (to be used as a context manager around the generation, which takes the cache off again)."""
        components = self.components_for(request, recipe, on_event)
        if plan.loras:
            listed = ", ".join(f"{name}:{weight:g}" for name, weight in plan.loras)
            on_event(StageStarted("apply LoRAs", listed))
        # the request's LoRAs exactly (none -> any earlier ones are unloaded); an identical set stays applied. A
        # change happens inside `regrouping`: a streamed transformer regroups its blocks with the LoRA layers once
        # (diffusers' unload_lora would otherwise rebuild group offload too, re-pinning every weight)
        refs = [LoraRef(name, weight) for name, weight in plan.loras]
        with LOAD_LOCK:  # LoRA layers are new modules (several workers in one process)
            ensure_loras(components.transformer, refs, self.lora_dir, around_change=self._offloader.regrouping)
        set_attention(components.transformer, request.attention)
        return components, self.cache_for(request, plan, components, calibrate_magcache)

    def enhance(
        self,
        request: GenerateRequest,
        plan: Plan,
        on_event: EventCallback = ignore_events,
        cancel: CancelToken | None = None,
        everything: bool = False,
    ) -> tuple[GenerateRequest, PromptsEnhanced | None]:
        """The enhance stage (`framepack.enhancer.stage`) on this runner's device and model cache: the request with
        the enhanced texts, and the stage's event, also sent to `on_event`. Before the enhancer loads, the loaded
        FramePack model is moved off the GPU (it is placed again when the job needs it); the enhancer is released
        before this returns. `everything`: enhance every distinct prompt anew (the enhance route and command)."""
        request, event = enhance_stage(
            request, plan, self.device, self.hub, self.home, on_event, cancel, self.clear_device, everything
        )
        if event is not None:
            on_event(event)
        return request, event

    def clear_device(self) -> None:
        """Move the loaded FramePack model off the GPU (nothing to do on a CPU): the next job's placement applies
        its offload mode again."""
        if self._components is None or self._offloader is None or self.device.type == "cpu":
            return
        self._offloader.remove(self._components, device="cpu")
        self._offloader, self._placement = None, None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def record_speed(self, request: GenerateRequest, result: GenerationResult) -> None:
        """Keep the finished job's seconds per step and per frame for later plans' estimates (a store that cannot
        be written costs the estimate, never the job)."""
        try:
            record_speed(self.home or data_home(), request, result.plan, result.timings)
        except OSError as error:
            logger.warning("could not store the job's speed for later estimates: %s", error)

    @property
    def loaded_recipe(self) -> Recipe | None:
        """The recipe of the loaded model; None when none is loaded."""
        return self._recipe if self._components is not None else None

    def unload(self) -> None:
        self._components, self._recipe, self._offloader = None, None, None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def run(
        self,
        request: GenerateRequest,
        on_event: EventCallback = ignore_events,
        cancel: CancelToken | None = None,
        plan: Plan | None = None,
        finished_sections: dict | None = None,
        on_section_latents=None,
        calibrate_magcache: bool = False,
        recipe: Recipe | None = None,
        checked: bool = False,
        source_latents: torch.Tensor | None = None,
    ) -> GenerationResult:
        """Validate everything, enhance the prompts (see `enhance`), load the model, generate; outputs plus a sidecar
        JSON appear only on success. The record holds the request as encoded: its enhanced_prompts included.

        `checked=True`: `preflight` passed for this request and `plan` already (a queued job is checked when it is
        submitted, see `framepack.jobs.prepare`), so it is not repeated; `recipe` is the model resolved then.

        All outputs are written complete under temporary names, then renamed into place together (`OutputCommit`):
        they appear together or none remains. An output name that exists already is refused before any work
        (OutputExists), and the final renames never replace a file; disk full anywhere raises DiskFull.

        `finished_sections` / `on_section_latents` pass through to `generate` for checkpoints and resume (the plan
        must then be the same plan, seed included); so do `source_latents` (a video the job continues, given as
        latents: `plan` must then be made for them, see `generate`). `calibrate_magcache` runs without skipping
        while measuring MagCache's magnitude ratios, saves their mean over the sections for the variant in the data
        folder (later magcache jobs use them) and returns them as `result.mag_ratios`.
        """
        plan = plan or plan_request(request, self.home)
        if not checked:
            self.preflight(request, plan)
        path = output_path(request, plan, self.output_dir)
        taken = existing_names(path.parent, [planned.name for planned in planned_outputs(request, path)])
        if taken:
            raise OutputExists(path.parent, taken)
        recipe = recipe or resolve_recipe(request.model, request.variant, self.home)
        if not checked:
            self.check_recipe(recipe)
        clock = time.perf_counter()
        request, enhanced = self.enhance(request, plan, on_event, cancel)
        enhance_seconds = time.perf_counter() - clock
        record = GenerationRecord.of(request, plan, enhanced.warnings if enhanced is not None else None)
        commit = OutputCommit()
        try:
            sinks = build_sinks(request, plan, path, self.home or data_home(), commit, record)
            try:
                components, cache = self.prepare_model(request, plan, recipe, on_event, calibrate_magcache)
            except BaseException:
                abort_sinks(sinks)
                raise
            if components.self_test:
                logger.warning("running the SELF-TEST model: random weights, the video is noise")
            compiled_before = compile_seconds()
            with cache:  # the hooks come off the shared transformer whatever happens
                result = generate(
                    components, request, plan, sinks, on_event, cancel, finished_sections, on_section_latents, cache,
                    source_latents,
                )  # fmt: skip
            if request.compile != "none":
                result.timings["compile"] = report_compile(compile_seconds() - compiled_before)
            if calibrate_magcache:
                result.mag_ratios = mean_ratios(cache.calibration, plan.steps)
                saved = save_mag_ratios(components.variant, result.mag_ratios, self.home or data_home())
                logger.info("MagCache ratios for %s saved to %s", components.variant, saved)
            if enhanced is not None:
                result.timings["enhance"] = round(enhance_seconds, 4)
            # every output is complete under its temporary name (the sidecar last); now they appear together
            sidecar = record.finished(result.plan, result.timings, result.outputs).write(sidecar_path(path), commit)
            result.outputs.append(str(sidecar))
            commit.commit()
            if not calibrate_magcache:  # a calibration skips no call: not the speed of its cache setting
                self.record_speed(request, result)
        except BaseException as error:
            commit.discard()
            full = disk_full(error, path.parent) if isinstance(error, Exception) else None
            if full is not None and full is not error:
                raise full from error
            raise
        return result
