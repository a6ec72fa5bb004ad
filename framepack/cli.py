"""`python -m framepack`: generate, enhance, calibrate-magcache, plan, make-tiny, recipe, info, codecs, download-rife,
serve, jobs backup.

`generate` takes every request field as a flag, built from the request model so help and defaults are the
model's own.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import typing
from pathlib import Path

from pydantic import ValidationError
from pydantic.fields import FieldInfo

from framepack.errors import FieldError, user_error_message, validation_message
from framepack.outputs import OutputExists
from framepack.plan import Plan
from framepack.request import (
    PUBLISHED_MODEL,
    SELF_TEST_ENHANCER,
    SELF_TEST_MODEL,
    GenerateRequest,
    Variant,
    field_kind,
)

FIELD_FLAGS_SKIP = {"keyframes"}  # given as repeated --keyframe INDEX=IMAGE


def add_request_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, skip: frozenset[str] = frozenset()
) -> None:
    """One flag per request field (help and default from the model) plus --request-file and --keyframe;
    `skip` leaves out fields the caller does not offer (create-video.py: the server's own choices)."""
    for name, info in GenerateRequest.model_fields.items():
        if name in FIELD_FLAGS_SKIP or name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        help_text = f"{info.description}{bounds_text(info)} (default: {default_text(info.default)})"
        help_text = help_text.replace("%", "%%")  # argparse formats help with %
        kind, choices = field_kind(info.annotation)
        if kind is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif typing.get_origin(kind) is dict:  # enhanced_prompts: `enhance --json` writes them as a request file
            parser.add_argument(flag, dest=name, type=json_object, default=None, metavar="JSON", help=help_text)
        else:
            parser.add_argument(flag, dest=name, type=kind, choices=choices, default=None, help=help_text)
    parser.add_argument(
        "--request-file",
        default=None,
        metavar="JSON",
        help="start from a request saved by `info --request` (or any request JSON); flags override its fields "
        "(default: none)",
    )
    parser.add_argument(
        "--keyframe",
        dest="keyframes",
        action="append",
        default=[],
        metavar="SECTION=IMAGE",
        help="keyframe image for a section (time order, 0-based); repeat for several (default: none)",
    )


def bounds_text(info: FieldInfo) -> str:
    """The field's numeric bounds as help text (' [1 to 100]', ' [> 0 to 600]'), or ''."""
    low = high = ""
    for rule in info.metadata:
        if getattr(rule, "ge", None) is not None:
            low = f"{rule.ge}"
        elif getattr(rule, "gt", None) is not None:
            low = f"> {rule.gt}"
        elif getattr(rule, "le", None) is not None:
            high = f"{rule.le}"
        elif getattr(rule, "lt", None) is not None:
            high = f"< {rule.lt}"
    if not (low or high):
        return ""
    return f" [{low or 'any'} to {high or 'any'}]"


def default_text(default: object) -> str:
    """A default as a user would type it ('' shows as "", None as none)."""
    if default is None:
        return "none"
    if default == "" or default == {}:
        return '""' if default == "" else "none"
    return str(default)


def json_object(text: str) -> dict:
    """A flag's JSON object value."""
    try:
        value = json.loads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def request_from_args(args: argparse.Namespace) -> GenerateRequest:
    """The request of the flags (over --request-file), with the CLI's defaults for the fields neither names."""
    from framepack.defaults import apply_defaults

    return apply_defaults(given_request(args), cli_defaults())


def cli_defaults() -> dict[str, object]:
    """The CLI's face defaults: FRAMEPACK_MODEL's model, and no kept latents (a plain run is no job of a job store;
    see `command_generate_job`)."""
    from framepack.defaults import env_defaults

    return {**env_defaults(), "keep_latents": False}


def given_request(args: argparse.Namespace) -> GenerateRequest:
    """The request the flags and --request-file name (fields neither names are left out)."""
    values = {}
    if args.request_file:
        from framepack.record import request_fields

        try:
            values = json.loads(Path(args.request_file).read_text())
        except (OSError, ValueError) as error:
            raise FieldError("request_file", f"cannot read {args.request_file}: {error}") from None
        values = request_fields(values)  # a whole record or just its request
    flags = {name: getattr(args, name) for name in GenerateRequest.model_fields if name not in FIELD_FLAGS_SKIP}
    values.update({name: value for name, value in flags.items() if value is not None})
    keyframes = {int(index): source for index, source in values.get("keyframes", {}).items()}
    for item in args.keyframes:
        index, sep, source = item.partition("=")
        if not sep or not index.strip().isdigit():
            raise FieldError("keyframes", f"{item!r} must be SECTION=IMAGE, e.g. 2=frame.png")
        keyframes[int(index)] = source
    values["keyframes"] = keyframes
    return GenerateRequest(**values)


def command_info(args: argparse.Namespace) -> int:
    from framepack.record import GenerationRecord

    record = GenerationRecord.read(Path(args.video))
    print(json.dumps(record.request if args.request else record.as_dict(), indent=2))
    return 0


def command_download_rife(args: argparse.Namespace) -> int:
    from framepack.home import data_home
    from framepack.video.interpolate import download_rife_weights

    print(f"RIFE weights: {download_rife_weights(args.model_dir or data_home())}")
    return 0


def command_codecs(args: argparse.Namespace) -> int:
    from framepack.video.codec_options import describe_options
    from framepack.video.codecs import list_video_encoders

    if getattr(args, "encoder", None):  # the options a request may give that encoder (no probe)
        lines = describe_options(args.encoder)
        print("\n".join(lines) if lines else f"{args.encoder}: no options are accepted")
        return 0
    for info in list_video_encoders():
        kind = "hardware" if info.hardware else "software"
        print(f"{info.name:<14} {kind:<9} {info.pixel_format:<12} {','.join(info.containers):<18} {info.description}")
    return 0


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def output_exists_message(error: OutputExists) -> str:
    """The CLI's line for outputs that would replace a file: they never do; the run stops instead."""
    names = ", ".join(error.names)
    if error.during_commit:
        return (
            f"--filename: {names} appeared in {error.folder} while the video was made; it was left as it is and "
            "nothing of this run was kept; choose another --filename"
        )
    return (
        f"--filename: {names} exists already in {error.folder}; choose another --filename or remove it (outputs "
        "never replace a file)"
    )


def checked_plan(request: GenerateRequest) -> Plan:
    """The plan of `request`, its codec options checked against the encoder's allowlist too: what can be refused
    without torch or PyAV is refused before either loads (the encoder itself is tried later, by the runner)."""
    from framepack.planning import plan_request
    from framepack.video.codec_options import parse_codec_options

    plan = plan_request(request)
    parse_codec_options(request.codec_options, None if request.codec == "none" else request.codec)
    return plan


def command_plan(args: argparse.Namespace) -> int:
    plan = checked_plan(request_from_args(args))
    print(plan.summary())
    print(json.dumps(plan.model_dump(), indent=2))
    return 0


def quiet_library_progress() -> None:
    """Our own bar shows progress; the libraries' per-file loading bars would only interleave with it."""
    import diffusers
    import huggingface_hub
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()


def command_generate(args: argparse.Namespace) -> int:
    batch = args.batch or args.init_image_dir or args.seeds is not None
    if args.cp_size != 1 and batch:
        return _error("--cp-size: runs one video per command; leave out --batch, --init-image-dir and --seeds")
    if batch:
        return command_generate_batch(args)
    given = given_request(args)
    request = request_from_args(args)
    job_store = given.continue_job is not None or given.reroll_job is not None or request.keep_latents
    if job_store and args.cp_size != 1:
        return _error("--cp-size: not with --keep-latents, --continue-job or --reroll-job (they run as a job here)")
    if given.continue_job is not None or given.reroll_job is not None:
        return command_generate_job(args, given)  # the parent job's fields fill in what the flags leave out
    if request.keep_latents:
        return command_generate_job(args, request)
    plan = checked_plan(request)  # bad flags, images and codec options stop here, before torch is imported
    if args.cp_size != 1:  # the gang's checks (devices, heads, cache, compile, attention), before any model loads
        from framepack.gang import plan_gang

        gang = plan_gang(args.cp_size, args.device, request)
    print(f"plan: {plan.summary()}")
    print(plan.estimate_summary())
    for warning in plan.warnings:
        print(f"warning: {warning}")
    if request.model == SELF_TEST_MODEL:
        print("model: tiny SELF-TEST model with random weights -- the video is noise, not a real generation")
    if args.cp_size != 1:
        print(f"context parallelism: {gang.size} ranks on {', '.join(gang.devices)}")

    from framepack.progress import ConsoleProgress
    from framepack.runner import Runner

    quiet_library_progress()
    with ConsoleProgress(plan) as progress:
        if args.cp_size != 1:
            from framepack.gang import run_gang

            result = run_gang(gang, request, plan, args.output_dir_default, on_event=progress)
        else:
            runner = Runner(device=args.device, output_dir=args.output_dir_default)
            result = runner.run(request, on_event=progress, plan=plan)
    print(f"done in {result.timings['total']:.1f} s: {result.frames} frames at {plan.fps} fps")
    for key in sorted(k for k in result.timings if k.startswith("section_")):
        print(f"  {key.replace('_', ' ')}: {result.timings[key]:.2f} s")
    for name in ("compile", "enhance", "encode_prompts", "encode_images", "start_frame", "decode"):
        if name in result.timings:
            print(f"  {name.replace('_', ' ')}: {result.timings[name]:.2f} s")
    for path in result.outputs:
        print(f"output: {path}")
    return 0


def command_generate_job(args: argparse.Namespace, request: GenerateRequest) -> int:
    """`generate --keep-latents / --continue-job / --reroll-job`: the run is a job of the server's data folder
    (`--data-dir`), run here by a job manager over it, so its latents are kept there with the job and a later
    `--continue-job` or `--reroll-job` (or the server) finds them. A server running over that folder holds it: then
    queue the request on the server (create-video.py) instead."""
    from framepack.home import server_data_dir
    from framepack.jobs.events import EndEvent, SectionEvent, StageEvent
    from framepack.jobs.manager import JobManager
    from framepack.runner import Runner

    quiet_library_progress()
    folder = server_data_dir(args.data_dir)
    manager = JobManager(folder, Runner(device=args.device, output_dir=args.output_dir_default))
    try:
        plan = manager.plan(request)  # a parent's refusal names its field here, before any model loads
        print(f"plan: {plan.summary()}")
        for warning in plan.warnings:
            print(f"warning: {warning}")
        try:
            manager.start()
        except RuntimeError as error:
            raise FieldError("data_dir", f"{error}; queue the request on that server (create-video.py)") from None
        job = manager.submit(request)
        print(f"job {job.id} in {folder}")
        for event in manager.subscribe(job.id):
            if isinstance(event, StageEvent):
                print(f"  {event.stage}: {event.detail}".rstrip(": "))
            elif isinstance(event, SectionEvent):
                print(f"  section {event.section} done ({event.sections_done}/{event.sections})")
            elif isinstance(event, EndEvent):
                break
        job = manager.get(job.id)
    finally:
        manager.close()
    if job.state.value != "finished":
        return _error(job.error.message if job.error else job.state.value)
    for path in job.outputs:
        print(f"output: {manager.output_dir / path}")
    if job.latents_kept:
        print(f"latents kept with job {job.id}: --continue-job {job.id} or --reroll-job {job.id} continue from them")
    return 0


def command_enhance(args: argparse.Namespace) -> int:
    request = request_from_args(args)
    plan = checked_plan(request)  # bad flags and images stop here, before torch is imported
    if request.enhancer == SELF_TEST_ENHANCER and not args.json:
        print("enhancer: tiny SELF-TEST model with random weights -- its text is noise")

    from framepack.jobs.events import enhance_result
    from framepack.plan import section_ranges
    from framepack.runner import Runner

    quiet_library_progress()
    runner = Runner(device=args.device, output_dir=args.output_dir_default)
    enhanced, event = runner.enhance(request, plan, everything=True)
    result = enhance_result(event, plan.num_sections)
    if args.json:  # a request file: `generate --request-file` encodes these texts
        print(json.dumps({"request": enhanced.model_dump(mode="json"), **result.model_dump(mode="json")}, indent=2))
        return 0
    print(f"enhancer {result.enhancer}, seed {result.seed}: {len(result.prompts)} prompts in {result.seconds:.1f} s")
    for item in result.prompts:
        print(f"sections {section_ranges(item.sections)}: {item.prompt}")
        print(f"  -> {item.enhanced if item.enhanced is not None else '(unchanged)'}")
    for warning in result.warnings:
        print(f"warning: {warning}")
    return 0


def command_generate_batch(args: argparse.Namespace) -> int:
    """`generate --batch/--init-image-dir/--seeds` (see `framepack.batch`): every request validated and planned
    before any is run, then one video after the other with one loaded model; exit 1 when any of them failed."""
    from framepack.batch import BatchInvalid, fan_out, folder_images, item_request, named_error, read_batch_file
    from framepack.defaults import apply_defaults
    from framepack.outputs import existing_names, output_names

    base = given_request(args).model_dump(exclude_unset=True)
    given = [name for name in ("keep_latents", "continue_job", "reroll_job") if base.get(name)]
    if given:
        raise FieldError(given[0], "runs as a job of a job store: not with --batch, --init-image-dir or --seeds")
    lines = read_batch_file(Path(args.batch)) if args.batch else None
    images = folder_images(Path(args.init_image_dir)) if args.init_image_dir else None
    items = fan_out(base, lines, images, args.seeds, source=f"--batch {args.batch}")
    defaults, planned = cli_defaults(), []
    for item in items:
        request = apply_defaults(item_request(item), defaults)
        try:
            plan = checked_plan(request)
        except Exception as error:
            raise named_error(item, error) from None
        if request.filename:
            folder = Path(request.output_dir or args.output_dir_default)
            taken = existing_names(folder, output_names(request.filename))
            if taken:
                message = f"{taken[0]} exists already in {folder}; choose another filename or remove it"
                raise BatchInvalid(item.where, f"filename: {message}", "filename")
        planned.append((item, request, plan))
    print(f"batch: {len(planned)} videos, all checked")

    from framepack.progress import ConsoleProgress
    from framepack.runner import Runner

    quiet_library_progress()
    runner = Runner(device=args.device, output_dir=args.output_dir_default)
    failed = 0
    for index, (item, request, plan) in enumerate(planned, 1):
        print(f"[{index}/{len(planned)}] {item.where}: plan: {plan.summary()}")
        try:
            with ConsoleProgress(plan) as progress:
                result = runner.run(request, on_event=progress, plan=plan)
        except Exception as error:
            message = output_exists_message(error) if isinstance(error, OutputExists) else user_error_message(error)
            if message is None:
                raise
            print(f"error: [{index}/{len(planned)}] {item.where}: {message}", file=sys.stderr)
            failed += 1
            continue
        print(f"done in {result.timings['total']:.1f} s: {result.frames} frames at {plan.fps} fps")
        for path in result.outputs:
            print(f"output: {path}")
    print(f"batch: {len(planned) - failed} of {len(planned)} videos made")
    return 1 if failed else 0


def command_calibrate_magcache(args: argparse.Namespace) -> int:
    request = request_from_args(args)
    plan = checked_plan(request)
    print(f"calibrating MagCache on: {plan.summary()} (no call is skipped)")

    from framepack.progress import ConsoleProgress
    from framepack.runner import Runner

    quiet_library_progress()
    runner = Runner(device=args.device, output_dir=args.output_dir_default)
    with ConsoleProgress(plan) as progress:
        result = runner.run(request, on_event=progress, plan=plan, calibrate_magcache=True)
    print(f"MagCache ratios for {request.variant} at {plan.steps} steps (used by later --cache magcache jobs):")
    print(json.dumps(result.mag_ratios))
    return 0


def command_make_tiny(args: argparse.Namespace) -> int:
    from framepack.models.tiny import write_tiny_model

    folder = write_tiny_model(args.folder)
    print(f"wrote the tiny SELF-TEST model (random weights, output is noise) to {folder}")
    return 0


def command_recipe(args: argparse.Namespace) -> int:
    from framepack.defaults import env_defaults
    from framepack.models.recipe import recipe_to_json, recipe_to_text
    from framepack.planning import resolve_recipe

    recipe = resolve_recipe(args.model or env_defaults().get("model", PUBLISHED_MODEL), args.variant)
    print(recipe_to_json(recipe) if args.json else recipe_to_text(recipe))
    return 0


def command_serve(args: argparse.Namespace) -> int:
    from framepack.jobs.farm import FarmSettings, parse_devices
    from framepack.serve import ServeSettings, serve

    quiet_library_progress()
    if not args.verbose:  # a server should say what it runs; the libraries stay at WARNING
        for name in ("framepack", "api"):
            logging.getLogger(name).setLevel(logging.INFO)
    settings = ServeSettings(
        host=args.host,
        port=args.port,
        data_dir=Path(args.data_dir) if args.data_dir else None,
        output_dir=Path(args.output_dir) if args.output_dir else None,
        auth=args.auth,
        token=args.token,
        device=args.device,
        model=args.model,
        max_queued=args.max_queued,
        max_streams=args.max_streams,
        verbose=args.verbose,
        keep_jobs=args.keep_jobs,
        keep_days=args.keep_days,
        prune_outputs=args.prune_outputs,
        farm=FarmSettings(
            devices=parse_devices(args.gpus, "--gpus"),
            executor=args.executor,
            ray_address=args.ray_address or (os.environ.get("RAY_ADDRESS") if args.executor == "ray" else None),
            ray_workers=args.ray_workers,
            ray_worker_gpus=args.ray_worker_gpus,
            ray_worker_cpus=args.ray_worker_cpus,
            max_attempts=args.max_attempts,
            placement_timeout=args.placement_timeout,
            shared_outputs=args.shared_outputs,
        ),
        upload_max_mb=args.upload_max_mb,
        upload_hours=args.upload_hours,
    )
    try:
        return serve(settings)
    except ValueError as error:  # bad --auth / --token / retention / upload limits
        return _error(str(error))


def command_jobs_backup(args: argparse.Namespace) -> int:
    from framepack.home import server_data_dir
    from framepack.jobs.backup import backup_jobs
    from framepack.jobs.store import STORE_FILE

    source = server_data_dir(args.data_dir) / STORE_FILE
    jobs = backup_jobs(source, Path(args.path), force=args.force)
    print(f"copied {jobs} job{'' if jobs == 1 else 's'} from {source} to {args.path}")
    return 0


def add_serve_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind; anything but loopback deserves --auth or --token"
    )
    parser.add_argument("--port", type=int, default=7860, help="default: 7860")
    parser.add_argument(
        "--data-dir", default=None, help="job database and checkpoints (default: FRAMEPACK_HOME/server)"
    )
    parser.add_argument("--output-dir", default=None, help="where videos are written (default: <data-dir>/outputs)")
    parser.add_argument(
        "--auth",
        default=os.environ.get("FRAMEPACK_API_AUTH"),
        metavar="USER:PASSWORD",
        help="require HTTP Basic credentials on every route (default: $FRAMEPACK_API_AUTH)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("FRAMEPACK_API_TOKEN"),
        help="require 'Authorization: Bearer TOKEN' on every route (default: $FRAMEPACK_API_TOKEN)",
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--model",
        default=None,
        help="the model of requests that name none: published (or default), self-test (or tiny: random weights, "
        "noise) or a recipe file (default: $FRAMEPACK_MODEL, else published); a request's own model wins",
    )
    parser.add_argument(
        "--max-queued", type=int, default=100, help="jobs allowed to wait; more get HTTP 429 (default: 100)"
    )
    parser.add_argument(
        "--max-streams", type=int, default=128, help="job event streams open at once; more get HTTP 429 (default: 128)"
    )
    parser.add_argument(
        "--keep-jobs",
        type=int,
        default=0,
        metavar="N",
        help="keep the newest N ended jobs in the queue's history, delete older ones after each job (default: 0 = all)",
    )
    parser.add_argument(
        "--keep-days",
        type=float,
        default=0.0,
        metavar="D",
        help="delete ended jobs older than D days from the history (default: 0 = never)",
    )
    parser.add_argument(
        "--prune-outputs",
        action="store_true",
        help="also delete the outputs of jobs removed from the history (default: outputs are kept)",
    )
    parser.add_argument(
        "--upload-max-mb",
        type=float,
        default=512.0,
        metavar="MB",
        help="largest file POST .../uploads takes, in MiB (default: 512; images at most 32 MiB)",
    )
    parser.add_argument(
        "--upload-hours",
        type=float,
        default=24.0,
        metavar="H",
        help="hours an upload can be named in requests (default: 24)",
    )
    add_farm_flags(parser)


def add_farm_flags(parser: argparse.ArgumentParser) -> None:
    """`serve`'s workers: local GPUs, or a Ray render farm (docs/farm.md; `framepack.jobs.farm`)."""
    farm = parser.add_argument_group("workers (docs/farm.md)")
    farm.add_argument(
        "--gpus",
        default=None,
        metavar="LIST",
        help="one worker per device, each keeping its model loaded: GPU numbers (0,1), cuda:N, mps or cpu (cpu,cpu: "
        "two CPU workers); jobs go to the first free worker (default: one worker on --device)",
    )
    farm.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="local: workers in this process; ray: Ray render workers, one per GPU of the cluster (pip install -r "
        "requirements-farm.txt) (default: local)",
    )
    farm.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDRESS|local",
        help="with --executor ray: 'local' starts a Ray cluster on this machine (127.0.0.1 only), else the address of "
        "a running cluster's head, HOST:6379 (default: $RAY_ADDRESS)",
    )
    farm.add_argument(
        "--ray-workers",
        type=int,
        default=None,
        metavar="N",
        help="Ray render workers (default: one per GPU of the cluster, 1 on a cluster without GPUs)",
    )
    farm.add_argument(
        "--ray-worker-gpus",
        type=float,
        default=None,
        metavar="G",
        help="GPUs each Ray worker reserves (default: 1 on a cluster with GPUs, else 0)",
    )
    farm.add_argument(
        "--ray-worker-cpus",
        type=float,
        default=None,
        metavar="C",
        help="CPUs each Ray worker reserves (default: 1 beside a GPU, 0.5 on a cluster without GPUs)",
    )
    farm.add_argument(
        "--max-attempts",
        type=int,
        default=3,
        metavar="N",
        help="runs of a job whose worker dies before the job fails (kind worker_lost) (default: 3)",
    )
    farm.add_argument(
        "--placement-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds to wait for Ray to start a worker; then the server stops with the resources it lacked "
        "(default: 60)",
    )
    farm.add_argument(
        "--shared-outputs",
        action="store_true",
        help="the output folder is the same path on every Ray machine (a shared mount): workers write there "
        "instead of streaming each file back to this server",
    )


def add_batch_flags(parser: argparse.ArgumentParser) -> None:
    """`generate`'s batch flags (see `framepack.batch`)."""
    parser.add_argument(
        "--batch",
        default=None,
        metavar="FILE.jsonl",
        help="one request per line (a JSON object of request fields, over the flags); every line is checked before "
        "any video is made (default: none)",
    )
    parser.add_argument(
        "--init-image-dir",
        default=None,
        metavar="DIR",
        help="one video per image of the folder (png, jpg, webp, bmp, tif; by name) as the start image; a batch "
        "line's own init_image wins (default: none)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=None,
        metavar="N",
        help="N videos of each request, seeds S, S+1, ... (each its own with --seed -1) [1 to 1000] (default: one)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m framepack", description="FramePack video generation")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    rendering = {
        "generate": ("generate a video", command_generate),
        "calibrate-magcache": (
            "measure MagCache's magnitude ratios on this model with one generation (saved per variant in "
            "FRAMEPACK_HOME)",
            command_calibrate_magcache,
        ),
    }
    for name, (help_text, handler) in rendering.items():
        command = commands.add_parser(name, help=help_text)
        add_request_flags(command)
        command.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
        command.add_argument(
            "--default-output-dir",
            dest="output_dir_default",
            default="outputs",
            help="the folder for jobs whose request names no output_dir; --output-dir (or a request file's "
            "output_dir) takes precedence (default: outputs)",
        )
        command.set_defaults(handler=handler)
        if name == "generate":
            add_batch_flags(command)
            command.add_argument(
                "--cp-size",
                type=int,
                default=1,
                metavar="N",
                help="one video on N GPUs of this machine (context parallelism, one process per GPU; N divides the "
                "transformer's 24 attention heads; pays on NVLink GPUs, see docs/context-parallel.md) (default: 1)",
            )
            command.add_argument(
                "--data-dir",
                default=None,
                help="the job store of --keep-latents, --continue-job and --reroll-job runs: the server's data folder "
                "(default: FRAMEPACK_HOME/server)",
            )

    enhance = commands.add_parser(
        "enhance",
        help="rewrite the section prompts with the prompt enhancer (a vision-language model), without a video",
    )
    add_request_flags(enhance)
    enhance.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    enhance.add_argument(
        "--json",
        action="store_true",
        help="print JSON: the request with the enhanced texts (for generate --request-file) and each prompt's text",
    )
    enhance.set_defaults(handler=command_enhance, output_dir_default="outputs")

    plan = commands.add_parser("plan", help="print the plan of a request without running it")
    add_request_flags(plan)
    plan.set_defaults(handler=command_plan)

    tiny = commands.add_parser("make-tiny", help="write the random-weight SELF-TEST model to a folder")
    tiny.add_argument("folder", type=Path)
    tiny.set_defaults(handler=command_make_tiny)

    info = commands.add_parser("info", help="print the generation settings stored in a video (or raw file)")
    info.add_argument("video")
    info.add_argument("--request", action="store_true", help="print only the request, to re-create with --request-file")
    info.set_defaults(handler=command_info)

    codecs = commands.add_parser("codecs", help="list the video encoders that really open on this machine")
    codecs.add_argument("encoder", nargs="?", help="print the codec options this encoder accepts instead")
    codecs.set_defaults(handler=command_codecs)

    rife = commands.add_parser("download-rife", help="fetch the Practical-RIFE 4.6 interpolation weights once")
    rife.add_argument("--model-dir", type=Path, default=None, help="default: FRAMEPACK_HOME (weights go to its rife/)")
    rife.set_defaults(handler=command_download_rife)

    serve = commands.add_parser("serve", help="run the REST API server (FastAPI + uvicorn)")
    add_serve_flags(serve)
    serve.set_defaults(handler=command_serve)

    jobs = commands.add_parser("jobs", help="tools for the server's job database")
    jobs_commands = jobs.add_subparsers(dest="jobs_command", required=True)
    backup = jobs_commands.add_parser(
        "backup", help="write a consistent copy of the job database (SQLite online backup; the server may run)"
    )
    backup.add_argument("path", help="the backup file to write (refused if it exists, unless --force)")
    backup.add_argument("--data-dir", default=None, help="the server's data folder (default: FRAMEPACK_HOME/server)")
    backup.add_argument("--force", action="store_true", help="replace an existing backup file")
    backup.set_defaults(handler=command_jobs_backup)

    recipe = commands.add_parser("recipe", help="print the model recipe")
    recipe.add_argument(
        "--model", default=None, help="'default', 'tiny' or a recipe file (default: $FRAMEPACK_MODEL, else 'default')"
    )
    recipe.add_argument("--variant", default="bidirectional", choices=typing.get_args(Variant))
    recipe.add_argument("--json", action="store_true", help="JSON instead of text lines")
    recipe.set_defaults(handler=command_recipe)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.handler(args)
    except ValidationError as error:
        return _error(validation_message(error))
    except OutputExists as error:
        return _error(output_exists_message(error))
    except KeyboardInterrupt:
        return _error("interrupted; no partial output was kept")
    except Exception as error:  # known user-facing errors print one line; anything else is a bug with a trace
        message = user_error_message(error)
        if message is None:
            raise
        return _error(message)
