"""Which video encoders this machine can really use, and checks of encoder settings before any sampling.

PyAV bundles FFmpeg; which encoders open depends on the build and the hardware (NVENC needs an NVIDIA GPU),
so the list is found by opening each candidate for real, in memory, with a couple of frames.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import av
import numpy as np
from av.codec import Codec
from av.codec.codec import Capabilities

from framepack.errors import FieldError

CONTAINER_FORMATS = {"mp4": "mp4", "webm": "webm", "mkv": "matroska", "mov": "mov"}
# Delivery and mastering encoders worth offering; hardware encoders are added from what FFmpeg reports.
SOFTWARE_CANDIDATES = (
    "libx264", "libx265", "libsvtav1", "libaom-av1", "libvpx-vp9", "libvpx", "prores_ks",
    "ffv1", "mpeg4", "mjpeg", "png",
)  # fmt: skip
HARDWARE_MARKERS = ("_nvenc", "_qsv", "_amf", "_vaapi", "_videotoolbox", "_v4l2m2m", "_mf", "_vulkan")
PREFERRED_PIXEL_FORMATS = ("yuv420p", "yuvj420p", "yuv422p10le", "rgb24")
PIXEL_FORMAT_OVERRIDES = {"mjpeg": "yuvj420p"}  # FFmpeg's MJPEG encoder wants full-range YUV
# Encoder options that name files to read or write (two-pass logs, stats, dumps): never from a request.
FILE_OPTIONS = {"stats", "passlogfile", "twopass", "dump", "psnr_file", "ssim_file", "x265-stats", "vbv-file"}
OPTION_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")
OPTION_VALUE = re.compile(r"^[A-Za-z0-9_.+\-:=]*$")
PROBE_SIZE = 64


class EncoderError(FieldError):
    """Bad encoder settings."""


@dataclass(frozen=True)
class EncoderInfo:
    name: str
    description: str
    hardware: bool
    pixel_format: str
    containers: tuple[str, ...]  # of CONTAINER_FORMATS, in that order


def parse_codec_options(text: str) -> dict[str, str]:
    """'crf:16' or 'crf=16,preset=slow,x264-params=keyint=60:bframes=2' -> options for the encoder.

    Each comma-separated item is split at its first ':' or '='. Values are restricted to the characters of
    plain settings and file-naming options are refused, so options can neither write files nor open URLs.
    """
    options: dict[str, str] = {}
    for item in filter(str.strip, text.split(",")):
        match = re.match(r"^\s*([^:=\s]+)\s*[:=]\s*(.*?)\s*$", item)
        if not match or not OPTION_NAME.match(match.group(1)) or not match.group(2):
            raise EncoderError("codec_options", f"cannot read {item.strip()!r}; write key:value or key=value, comma separated")
        name, value = match.group(1), match.group(2)
        if name.lower() in FILE_OPTIONS or not OPTION_VALUE.match(value) or "//" in value:
            raise EncoderError("codec_options", f"{name}={value!r} is not allowed: options may not name files or URLs")
        options[name] = value
    return options


def is_hardware(codec: Codec) -> bool:
    bits = Capabilities.hardware.value | Capabilities.hybrid.value
    return bool(codec.capabilities & bits) or any(marker in codec.name for marker in HARDWARE_MARKERS)


def pixel_format(codec_name: str) -> str:
    """yuv420p where the encoder has it (the browser-playable choice), else its best other format."""
    if codec_name in PIXEL_FORMAT_OVERRIDES:
        return PIXEL_FORMAT_OVERRIDES[codec_name]
    formats = [fmt.name for fmt in (Codec(codec_name, "w").video_formats or [])]
    for preferred in PREFERRED_PIXEL_FORMATS:
        if preferred in formats:
            return preferred
    return formats[0] if formats else "yuv420p"


def probe_encoder(codec: str, container: str, options: dict[str, str], width: int = PROBE_SIZE, height: int = PROBE_SIZE) -> None:
    """Encode two frames into memory with exactly these settings; EncoderError naming the field if it fails."""
    if container not in CONTAINER_FORMATS:
        raise EncoderError("container", f"{container!r}; allowed {', '.join(CONTAINER_FORMATS)}")
    try:
        Codec(codec, "w")
    except Exception:
        raise EncoderError("codec", f"{codec!r} is not an encoder of this FFmpeg build; run `python -m framepack codecs`") from None
    buffer = io.BytesIO()
    output = av.open(buffer, mode="w", format=CONTAINER_FORMATS[container])
    try:
        try:
            stream = output.add_stream(codec, rate=30)
        except ValueError as error:
            raise EncoderError("container", f"{container} cannot hold {codec}: {error}") from None
        stream.width, stream.height, stream.pix_fmt = width, height, pixel_format(codec)
        stream.options = dict(options)
        frame = av.VideoFrame.from_ndarray(np.zeros((height, width, 3), np.uint8), format="rgb24")
        try:
            for _ in range(2):
                output.mux(stream.encode(frame))
            output.mux(stream.encode(None))
        except Exception as error:
            raise EncoderError("codec_options" if options else "codec", f"{codec} refused {options or 'to open'}: {error}") from None
        unused = sorted(stream.codec_context.options)  # FFmpeg hands back the options nothing consumed
        if unused:
            raise EncoderError("codec_options", f"{codec} has no option {', '.join(unused)} (see `ffmpeg -h encoder={codec}`)")
    finally:
        output.close()


def check_output_settings(codec: str, container: str, codec_options: str, width: int, height: int) -> dict[str, str]:
    """Validate a request's video settings before sampling; returns the parsed options."""
    options = parse_codec_options(codec_options)
    if codec == "none":
        return options
    if width % 2 or height % 2:
        raise EncoderError("resolution", f"{width}x{height}: width and height must be even")
    probe_encoder(codec, container, options)
    return options


def list_video_encoders() -> list[EncoderInfo]:
    """The encoders that really open here, hardware first, each with the containers that accept it.

    Probing takes about a second; call it again to refresh (after a driver change, say).
    """
    names = [name for name in SOFTWARE_CANDIDATES if name in av.codecs_available]
    hardware_names = sorted(name for name in av.codecs_available if any(marker in name for marker in HARDWARE_MARKERS))
    found: list[EncoderInfo] = []
    for name in hardware_names + names:
        try:
            codec = Codec(name, "w")
        except Exception:
            continue
        if codec.type != "video":
            continue
        containers = []
        for container in CONTAINER_FORMATS:
            try:
                probe_encoder(name, container, {})
                containers.append(container)
            except EncoderError:
                continue
        if containers:
            found.append(EncoderInfo(name, codec.long_name, is_hardware(codec), pixel_format(name), tuple(containers)))
    return sorted(found, key=lambda info: not info.hardware)
