#!/usr/bin/env python
"""REST client of the FramePack API: submit a generation, follow its progress, download its outputs.

    python create-video.py --prompt "a boat on a lake" --init-image start.png --duration 3
    python create-video.py --prompt "a city at night"                       # text-to-video
    python create-video.py --request-file saved.json --seed 7 --server http://host:7860 --user me:secret

Every field of the request model is a flag with the model's own help and default, except output_dir: the
server chooses its folder and --output-dir is the local download folder. Images given as file paths are read
here and sent base64-encoded (the server does not read client paths). The job is submitted to the
queue, followed on its event stream (or by polling), and its files are downloaded to --output-dir.

Exit codes: 0 done, 1 the job failed or was cancelled, 2 the request was refused (by the server or by local
validation), 3 the server could not be reached, 130 interrupted (the job is cancelled on the server first).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Self
from urllib.parse import quote

import httpx
from pydantic import ValidationError
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the framepack package next to this script

from framepack import cli as framepack_cli  # noqa: E402
from framepack.cli import given_request
from framepack.errors import FieldError, validation_message
from framepack.jobs.events import (
    EndEvent,
    EnhanceEvent,
    FramesEvent,
    JobEvent,
    ProgressEvent,
    SectionEvent,
    StageEvent,
    StateEvent,
    parse_event,
)
from framepack.jobs.models import JobProgress, JobState
from framepack.request import IMAGE_FIELDS, PATH_CHECK_LENGTH

API = "/sdapi/v1/framepack"
DEFAULT_SERVER = "http://127.0.0.1:7860"
# The server chooses its own output folder (the API refuses `output_dir`); here --output-dir is the local folder
# the outputs are downloaded to, and an output_dir in a --request-file is dropped.
SERVER_CHOSEN = ("output_dir",)
ENDED_STATES = {state.value for state in JobState if state.ended}
POLL_INTERVAL_S = 1.0
SSE_IDLE_TIMEOUT_S = 30.0  # no event (nor keep-alive) for this long: fall back to polling

EXIT_OK, EXIT_JOB_FAILED, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

IMAGE_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
)


class ClientError(Exception):
    """An error that ends the script with one line on stderr and an exit code."""

    exit_code = EXIT_REFUSED

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))  # always one line


class RequestRefused(ClientError):
    """The server answered with an error status (or local validation refused the request)."""

    exit_code = EXIT_REFUSED


class JobFailed(ClientError):
    """The job ended failed or cancelled."""

    exit_code = EXIT_JOB_FAILED


class ServerUnreachable(ClientError):
    """Connection refused, DNS failure, timeout, broken connection."""

    exit_code = EXIT_UNREACHABLE


# --- request ---------------------------------------------------------------------------------------------------


def add_request_flags(parser: argparse.ArgumentParser) -> None:
    """The main CLI's request flags, less the fields the server chooses itself."""
    group = parser.add_argument_group("request (defaults are the server's request model defaults)")
    framepack_cli.add_request_flags(group, skip=frozenset(SERVER_CHOSEN))
    parser.set_defaults(**dict.fromkeys(SERVER_CHOSEN))


def image_mime(data: bytes, path: Path) -> str:
    """Mime type from the file's signature, else its extension."""
    for signature, mime in IMAGE_SIGNATURES:
        if data.startswith(signature):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    suffix = path.suffix.lower().lstrip(".")
    return f"image/{'jpeg' if suffix == 'jpg' else suffix}" if suffix else "application/octet-stream"


def image_payload(source: str, field: str) -> str:
    """A data: URL for a local image file; base64 and data: URLs pass through unchanged."""
    if source.startswith("data:"):
        return source
    path = Path(source).expanduser()
    if len(source) < PATH_CHECK_LENGTH and path.is_file():
        try:
            data = path.read_bytes()
        except OSError as error:
            raise FieldError(field, f"cannot read {source}: {error}") from None
        if not data:
            raise FieldError(field, f"{source} is empty")
        return f"data:{image_mime(data, path)};base64,{base64.b64encode(data).decode('ascii')}"
    try:
        base64.b64decode("".join(source.split()), validate=True)
    except (binascii.Error, ValueError):
        raise FieldError(field, f"{source[:200]!r} is not an existing file nor base64 image data") from None
    return source


def build_request_body(args: argparse.Namespace) -> dict[str, Any]:
    """The JSON body of the request: the fields given (by flags or --request-file), images inlined as base64.

    Validated here with the same model the server uses, so a bad value is refused before any upload.
    """
    request = given_request(args)  # the server applies its own defaults (its model...) to what is left out
    body = request.model_dump(mode="json", exclude_unset=True)
    for name in SERVER_CHOSEN:
        body.pop(name, None)
    for field in IMAGE_FIELDS:
        if body.get(field):
            body[field] = image_payload(body[field], field)
    if body.get("keyframes"):
        body["keyframes"] = {index: image_payload(source, "keyframes") for index, source in body["keyframes"].items()}
    return body


# --- HTTP ------------------------------------------------------------------------------------------------------


@dataclass
class ServerError:
    status: int
    kind: str | None
    field: str | None
    message: str

    def line(self) -> str:
        where = f"{self.field}: " if self.field else ""
        return f"{where}{self.message} (HTTP {self.status})"


def server_error(response: httpx.Response) -> ServerError:
    """The server's reason from {"error": {kind, field, message}}; FastAPI's {"detail": ...} or the raw text
    otherwise."""
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        error = payload["error"]
        return ServerError(
            response.status_code,
            error.get("kind"),
            error.get("field"),
            str(error.get("message") or response.reason_phrase),
        )
    if isinstance(payload, dict) and "detail" in payload:
        detail = payload["detail"]
        if isinstance(detail, list):  # FastAPI's validation list
            parts = [
                f"{'.'.join(str(p) for p in item.get('loc', [])[1:]) or 'request'}: {item.get('msg')}"
                for item in detail
                if isinstance(item, dict)
            ]
            return ServerError(response.status_code, "invalid", None, "; ".join(parts) or str(detail))
        return ServerError(response.status_code, None, None, str(detail))
    text = response.text.strip()[:300] if response.text else ""
    return ServerError(response.status_code, None, None, text or response.reason_phrase)


class FramePackClient:
    """Thin typed wrapper over the FramePack REST routes. Raises ClientError subclasses, prints nothing."""

    def __init__(
        self,
        server: str,
        auth: tuple[str, str] | None = None,
        token: str | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.server = server.rstrip("/")
        self.timeout = httpx.Timeout(timeout, connect=min(timeout, 10.0))
        self.http = httpx.Client(
            base_url=self.server, auth=auth, headers=headers, timeout=self.timeout, transport=transport
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise ServerUnreachable(f"{self.server} did not answer {method} {path} in time") from None
        except httpx.TransportError as error:
            raise ServerUnreachable(f"cannot reach {self.server}: {error or type(error).__name__}") from None
        if response.status_code >= 400:
            raise RequestRefused(server_error(response).line())
        return response

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        """Queue a generation; the job as the server recorded it."""
        return self._request("POST", f"{API}/jobs", json=body).json()

    def job(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", f"{API}/jobs/{quote(job_id)}").json()

    def cancel(self, job_id: str) -> None:
        self._request("POST", f"{API}/jobs/{quote(job_id)}/cancel")

    def events(self, job_id: str) -> Iterator[JobEvent]:
        """The job's events (`framepack.jobs.events` models) from its server-sent event stream until the server
        closes it; events this client does not know, or whose data does not fit their model, are skipped.

        Raises httpx errors (and RequestRefused for an error status) for the caller to fall back on polling.
        """
        timeout = httpx.Timeout(SSE_IDLE_TIMEOUT_S, connect=self.timeout.connect)
        with self.http.stream(
            "GET", f"{API}/jobs/{quote(job_id)}/events", timeout=timeout, headers={"Accept": "text/event-stream"}
        ) as response:
            if response.status_code >= 400:
                response.read()
                raise RequestRefused(server_error(response).line())
            name, data_lines = "message", []
            for line in response.iter_lines():
                if not line:  # blank line: dispatch
                    event = parse_event(name, _json_or_none("\n".join(data_lines))) if data_lines else None
                    if event is not None:
                        yield event
                    name, data_lines = "message", []
                elif line.startswith(":"):
                    continue  # comment / keep-alive
                else:
                    key, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if key == "event":
                        name = value
                    elif key == "data":
                        data_lines.append(value)

    def download(self, relative: str, folder: Path) -> Path:
        """Fetch one output file (a path relative to the server's output folder) to the same relative path under
        `folder`; written to a .part file first so a broken transfer leaves no truncated output."""
        target = local_path(folder, relative)
        url = f"{API}/files/{quote(target.relative_to(folder).as_posix())}"
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        try:
            with self.http.stream("GET", url) as response:
                if response.status_code >= 400:
                    response.read()
                    raise RequestRefused(f"download {relative}: {server_error(response).line()}")
                with partial.open("wb") as handle:
                    for chunk in response.iter_bytes(1 << 20):
                        handle.write(chunk)
        except httpx.TimeoutException:
            partial.unlink(missing_ok=True)
            raise ServerUnreachable(f"{self.server} stopped sending {relative}") from None
        except httpx.TransportError as error:
            partial.unlink(missing_ok=True)
            raise ServerUnreachable(
                f"download of {relative} from {self.server} failed: {error or type(error).__name__}"
            ) from None
        partial.replace(target)
        return target


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def local_path(folder: Path, relative: str) -> Path:
    """Where an output goes under `folder`: its path relative to the server's output folder, without any
    component that could leave `folder`."""
    parts = [part for part in PurePosixPath(relative.replace("\\", "/")).parts if part not in ("", "/", ".", "..")]
    if not parts:
        raise RequestRefused(f"outputs: the server listed an unusable path {relative!r}")
    return folder.joinpath(*parts)


def output_files(job: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """Each output of a finished job with the files it consists of: itself, or for the frames folder (listed as
    the folder `<stem>` beside `<stem>.mp4`, `<stem>.json`...) its images `<stem>-00000.png`..., one per output
    frame of the plan, named as `framepack.video.frames.FrameExportSink` names them."""
    from framepack.video.frames import FORMATS, frame_file_name

    outputs = [str(output) for output in job.get("outputs") or []]
    frames_format = (job.get("request") or {}).get("save_frames", "none")
    frame_count = int((job.get("plan") or {}).get("output_frames") or 0)
    stems = {str(PurePosixPath(output).with_suffix("")) for output in outputs if PurePosixPath(output).suffix}
    listed = []
    for output in outputs:
        if frames_format != "none" and output in stems:
            name = PurePosixPath(output).name
            extension = FORMATS[frames_format]
            files = [f"{output}/{frame_file_name(name, index, extension)}" for index in range(frame_count)]
            listed.append((output, files))
        else:
            listed.append((output, [output]))
    return listed


# --- progress --------------------------------------------------------------------------------------------------


class ProgressBar:
    """A tqdm bar over the job's denoising steps; the description shows the section and stage."""

    def __init__(self, enabled: bool = True):
        self.bar = tqdm(total=0, unit="step", dynamic_ncols=True, desc="queued", disable=not enabled)
        self.progress = JobProgress()

    def update(self, progress: JobProgress, queue_position: int | None = None) -> None:
        self.progress = p = progress
        total, done = p.total_steps, p.done_steps
        if total and total != self.bar.total:
            self.bar.total = total
        if done != self.bar.n:
            self.bar.n = min(done, total) if total else done
        parts = []
        if p.section == -1:
            parts.append("start frame")
        elif p.sections:
            parts.append(f"section {min(p.sections_done + 1, p.sections)}/{p.sections}")
        if p.stage:
            parts.append(p.stage if queue_position is None else f"{p.stage} (position {queue_position})")
        self.bar.set_description(" ".join(parts) or "waiting", refresh=False)
        self.bar.refresh()

    def change(self, **fields: Any) -> None:
        """Update some fields of the progress."""
        self.update(self.progress.model_copy(update=fields))

    def note(self, line: str) -> None:
        """A line above the bar."""
        self.bar.write(line)

    def close(self) -> None:
        self.bar.close()


def apply_event(bar: ProgressBar, event: JobEvent) -> str | None:
    """Update the bar from one event; the job's state when the event says it ended, else None.

    State and end events carry the whole job; the others the fields of the job's progress they change.
    """
    if isinstance(event, (StateEvent, EndEvent)):
        bar.update(event.progress, event.queue_position)
        if event.state.ended:
            return event.state.value
    elif isinstance(event, ProgressEvent):
        fields = {"section": event.section, "done_steps": event.done_steps, "total_steps": event.total_steps}
        if event.section >= 0:
            fields["sections_done"] = event.order  # sections generated before this one
        bar.change(**fields)
    elif isinstance(event, SectionEvent):
        bar.change(section=event.section, sections_done=event.sections_done, sections=event.sections)
    elif isinstance(event, StageEvent):
        bar.change(stage=event.stage)
    elif isinstance(event, FramesEvent):
        bar.change(frames_written=event.frames)
    elif isinstance(event, EnhanceEvent):
        for line in enhance_lines(event):
            bar.note(line)
    return "ended" if isinstance(event, EndEvent) else None


def enhance_lines(event: EnhanceEvent) -> list[str]:
    """Each prompt the job encodes enhanced, with its sections and what wrote it (the run's warnings, the stage's
    among them, are printed when the job ends)."""
    by = {"enhancer": f"by {event.enhancer}" + (" (SELF-TEST: noise)" if event.self_test else ""), "request": "given"}
    return [
        f"prompt of sections {', '.join(map(str, item.sections))} ({by[item.by]}): {item.enhanced}"
        for item in event.prompts
        if item.enhanced is not None
    ]


def follow(client: FramePackClient, job: dict[str, Any], bar: ProgressBar) -> dict[str, Any]:
    """Follow a job to its end on the event stream, polling once a second when the stream is unavailable;
    the final job record."""
    job_id = job["id"]
    bar.update(JobProgress.model_validate(job.get("progress") or {}), job.get("queue_position"))
    if job.get("state") in ENDED_STATES:
        return job
    try:
        with contextlib.closing(client.events(job_id)) as events:
            for event in events:
                if apply_event(bar, event):
                    break
    except (httpx.HTTPError, RequestRefused):
        pass  # no (or a broken) event stream: polling below finds the end
    while True:
        job = client.job(job_id)
        bar.update(JobProgress.model_validate(job.get("progress") or {}), job.get("queue_position"))
        if job.get("state") in ENDED_STATES:
            return job
        time.sleep(POLL_INTERVAL_S)


def job_error_line(job: dict[str, Any]) -> str:
    error = job.get("error") or {}
    where = f"{error['field']}: " if error.get("field") else ""
    message = error.get("message") or f"job {job.get('state')}"
    return f"{where}{message}"


# --- script ----------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="create-video.py",
        description="Generate a video on a FramePack server (REST API): submit, follow progress, download the outputs.",
        epilog="Exit codes: 0 done, 1 job failed or cancelled, 2 request refused or bad local input, "
        "3 server unreachable, 130 interrupted (the job is cancelled on the server).",
    )
    client = parser.add_argument_group("client")
    client.add_argument(
        "--server",
        default=os.environ.get("FRAMEPACK_SERVER") or DEFAULT_SERVER,
        help="server URL (env FRAMEPACK_SERVER; default: %(default)s)",
    )
    client.add_argument(
        "--user",
        default=os.environ.get("FRAMEPACK_AUTH"),
        metavar="USER:PASS",
        help="HTTP Basic credentials (env FRAMEPACK_AUTH)",
    )
    client.add_argument("--token", default=os.environ.get("FRAMEPACK_TOKEN"), help="Bearer token (env FRAMEPACK_TOKEN)")
    client.add_argument(
        "--output-dir",
        dest="download_dir",
        metavar="DIR",
        type=Path,
        default=Path("outputs"),
        help="local folder for the downloaded outputs (default: %(default)s)",
    )
    client.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for each HTTP answer (default: %(default)s)"
    )
    client.add_argument("--no-wait", action="store_true", help="only submit the job and print its id")
    client.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_request_flags(parser)
    return parser


def parse_credentials(value: str | None) -> tuple[str, str] | None:
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user:
        raise RequestRefused("user: credentials must be USER:PASS")
    return user, password


def run(args: argparse.Namespace) -> int:
    try:
        body = build_request_body(args)
    except ValidationError as error:
        raise RequestRefused(validation_message(error)) from None
    except FieldError as error:
        raise RequestRefused(str(error)) from None
    auth = parse_credentials(args.user)
    with FramePackClient(args.server, auth=auth, token=args.token, timeout=args.timeout) as client:
        job = client.submit(body)
        if args.no_wait:
            print(job["id"])
            return EXIT_OK
        print(f"job: {job['id']}")
        if job.get("summary"):
            print(f"plan: {job['summary']}")
        sys.stdout.flush()
        bar = ProgressBar(enabled=not args.no_progress)
        try:
            job = follow(client, job, bar)
        except KeyboardInterrupt:
            bar.close()
            try:
                client.cancel(job["id"])
                note = f"cancelled job {job['id']} on the server"
            except ClientError as error:
                note = f"could not cancel job {job['id']}: {error}"
            print(f"error: interrupted; {note}", file=sys.stderr)
            return EXIT_INTERRUPTED
        except ServerUnreachable as error:
            raise ServerUnreachable(f"{error}; job {job['id']} may still be running on the server") from None
        finally:
            bar.close()
        for warning in (job.get("progress") or {}).get("warnings") or []:
            print(f"warning: {warning}")
        if job.get("state") != "finished":
            raise JobFailed(job_error_line(job))
        for relative, files in output_files(job):
            for file in files:
                client.download(file, args.download_dir)
            print(f"output: {local_path(args.download_dir, relative)}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except ClientError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
