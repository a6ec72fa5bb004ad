"""Which video encoders this machine can really use, and checks of encoder settings before any sampling.

PyAV bundles FFmpeg; which encoders open depends on the build and the hardware (NVENC needs an NVIDIA GPU),
so the list is found by opening each candidate for real, in memory, with a couple of frames.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import av
import numpy as np
from av.codec import Codec
from av.codec.codec import Capabilities

from framepack.outputs import CONTAINERS
from framepack.video.codec_options import HARDWARE_MARKERS, EncoderError, parse_codec_options
from framepack.video.probe import EncoderProber
from framepack.video.scheduling import drop_realtime_scheduling

# FFmpeg's format name of each container the request model offers (its file suffix, except Matroska's)
CONTAINER_FORMATS = {container: {"mkv": "matroska"}.get(container, container) for container in CONTAINERS}
# Delivery and mastering encoders worth offering; hardware encoders are added from what FFmpeg reports.
SOFTWARE_CANDIDATES = (
    "libx264", "libx265", "libsvtav1", "libaom-av1", "libvpx-vp9", "libvpx", "prores_ks",
    "ffv1", "mpeg4", "mjpeg", "png",
)  # fmt: skip
PREFERRED_PIXEL_FORMATS = ("yuv420p", "yuvj420p", "yuv422p10le", "rgb24")
PIXEL_FORMAT_OVERRIDES = {"mjpeg": "yuvj420p"}  # FFmpeg's MJPEG encoder wants full-range YUV
# FFmpeg's SVT-AV1 wrapper only warns about svtav1-params it cannot parse unless errors explode.
PROBE_EXTRAS = {"libsvtav1": {"err_detect": "explode"}}
PROBE_SIZE = 64
# x265 gives garbage DTS (which the MP4 muxer may refuse) when a B-frame GOP is cut after two frames: probe with more
PROBE_FRAMES = 8


@dataclass(frozen=True)
class EncoderInfo:
    name: str
    description: str
    hardware: bool
    pixel_format: str
    containers: tuple[str, ...]  # of CONTAINER_FORMATS, in that order


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


def check_names(codec: str, container: str) -> None:
    """EncoderError unless the container is one we write and the codec an encoder of this FFmpeg build."""
    if container not in CONTAINER_FORMATS:
        raise EncoderError("container", f"{container!r}; allowed {', '.join(CONTAINER_FORMATS)}")
    try:
        Codec(codec, "w")
    except Exception:
        raise EncoderError(
            "codec", f"{codec!r} is not an encoder of this FFmpeg build; run `python -m framepack codecs`"
        ) from None


def open_in_memory(codec: str, container: str, options: dict[str, str], width: int, height: int) -> None:
    """Encode a few frames into memory with exactly these settings, in this process; EncoderError naming the field."""
    check_names(codec, container)
    buffer = io.BytesIO()
    output = av.open(buffer, mode="w", format=CONTAINER_FORMATS[container])
    try:
        try:
            stream = output.add_stream(codec, rate=30)
        except ValueError as error:
            raise EncoderError("container", f"{container} cannot hold {codec}: {error}") from None
        stream.width, stream.height, stream.pix_fmt = width, height, pixel_format(codec)
        # one thread: libvpx's threads spin-wait on each other, and on busy cores a probe of a few 64x64 frames was
        # seen to spin for minutes; a probe checks what opens, not speed
        stream.thread_count = 1
        stream.options = {**options, **(PROBE_EXTRAS.get(codec, {}) if options else {})}
        frame = av.VideoFrame.from_ndarray(np.zeros((height, width, 3), np.uint8), format="rgb24")
        try:
            for _ in range(PROBE_FRAMES):
                output.mux(stream.encode(frame))
            output.mux(stream.encode(None))
        except Exception as error:
            reason = getattr(error, "strerror", None) or error
            raise EncoderError(
                "codec_options" if options else "codec", f"{codec} refused {options or 'to open'}: {reason}"
            ) from None
        unused = sorted(stream.codec_context.options)  # FFmpeg hands back the options nothing consumed
        if unused:
            raise EncoderError(
                "codec_options", f"{codec} has no option {', '.join(unused)} (see `ffmpeg -h encoder={codec}`)"
            )
    finally:
        output.close()
        drop_realtime_scheduling()


def probe_encoder(
    codec: str,
    container: str,
    options: dict[str, str],
    width: int = PROBE_SIZE,
    height: int = PROBE_SIZE,
    prober: EncoderProber | None = None,
) -> None:
    """Open the encoder for real on a few frames in memory; EncoderError naming the field if it fails.

    Options come from requests, so they are tried by `prober` (a child process in an empty temporary folder; a
    one-off prober when none is given). With no options nothing can name a file and the probe runs here.
    """
    if not options:
        open_in_memory(codec, container, options, width, height)
    elif prober is not None:
        prober.probe(codec, container, options, width, height)
    else:
        with EncoderProber() as one_off:
            one_off.probe(codec, container, options, width, height)


def check_output_settings(
    codec: str, container: str, codec_options: str, width: int, height: int, prober: EncoderProber | None = None
) -> dict[str, str]:
    """Validate a request's video settings before sampling (options by the encoder's allowlist, then a real probe
    by `prober`, see probe_encoder); returns the parsed options."""
    if codec == "none":
        return parse_codec_options(codec_options)
    check_names(codec, container)
    options = parse_codec_options(codec_options, codec)
    if width % 2 or height % 2:
        raise EncoderError("resolution", f"{width}x{height}: width and height must be even")
    probe_encoder(codec, container, options, prober=prober)
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
