#!/usr/bin/env python3
"""Encode a raw FramePack frames file (safetensors, uint8 [T, H, W, 3]) into a video and/or image files.

Frames stream from the file in chunks, through the optional interpolator, into the encoder and the image
writer, so memory stays flat however long the video is. The generation settings stored in the raw file are
carried into the video's metadata.

Examples:
  python encode-video.py clip.safetensors                                  # clip.mp4, H.264 CRF 16
  python encode-video.py clip.safetensors --codec libvpx-vp9 --container webm --codec-options crf=30,b=0
  python encode-video.py clip.safetensors --codec none --frames png        # clip/clip-00000.png ...
  python encode-video.py clip.safetensors --interpolate 1 --interpolation flow --fps 60
  python encode-video.py --list-codecs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from framepack.errors import FieldError  # noqa: E402
from framepack.request import GenerateRequest, field_kind  # noqa: E402

DEFAULTS = GenerateRequest.model_fields


def choices(name: str) -> tuple:
    """The allowed values of the request field `name` (a Literal)."""
    return field_kind(DEFAULTS[name].annotation)[1]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="encode-video.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("input", nargs="?", type=Path, help="raw frames file (.safetensors) written with save_raw")
    parser.add_argument(
        "--output", type=Path, help="video path (default: the input's name with the container's suffix)"
    )
    parser.add_argument(
        "--codec",
        default=DEFAULTS["codec"].default,
        help="video encoder, or 'none' for no video (default: %(default)s)",
    )
    parser.add_argument(
        "--container",
        default=DEFAULTS["container"].default,
        choices=choices("container"),
        help="(default: %(default)s)",
    )
    parser.add_argument(
        "--codec-options",
        default=DEFAULTS["codec_options"].default,
        help="encoder options such as crf:16 or crf=16,preset=slow (default: %(default)s)",
    )
    parser.add_argument(
        "--fps", type=float, help="frames per second of the output (default: the file's fps times interpolate+1)"
    )
    parser.add_argument(
        "--interpolate", type=int, default=0, help="frames to insert between each pair, 0..10 (default: %(default)s)"
    )
    parser.add_argument(
        "--interpolation",
        default="auto",
        choices=choices("interpolation"),
        help="interpolation method (default: %(default)s)",
    )
    parser.add_argument(
        "--frames",
        default="none",
        choices=choices("save_frames"),
        help="also write every frame as an image (default: %(default)s)",
    )
    parser.add_argument(
        "--jpeg-quality", type=int, default=DEFAULTS["jpeg_quality"].default, help="1..100 (default: %(default)s)"
    )
    parser.add_argument("--frames-dir", type=Path, help="folder for the image folder (default: beside the output)")
    parser.add_argument("--model-dir", type=Path, help="folder holding rife/ weights (default: FRAMEPACK_HOME)")
    parser.add_argument("--list-codecs", action="store_true", help="list the encoders that really open here and exit")
    return parser


def encode(args: argparse.Namespace) -> list[Path]:
    from tqdm import tqdm

    from framepack.home import data_home
    from framepack.record import embedded_record
    from framepack.video.codecs import check_output_settings
    from framepack.video.encoder import VideoEncoderSink
    from framepack.video.frames import FrameExportSink
    from framepack.video.interpolate import InterpolatingSink, load_interpolator
    from framepack.video.raw import RawFrames
    from framepack.video.sink import abort_sinks, close_sinks

    if not 0 <= args.interpolate <= 10:
        raise FieldError("interpolate", f"{args.interpolate}; allowed 0..10")
    if args.codec == "none" and args.frames == "none":
        raise FieldError("codec", "'none' and no --frames: nothing to write")
    with RawFrames(args.input) as raw:
        fps = args.fps or (raw.fps * (args.interpolate + 1) if raw.fps else None)
        if not fps or fps <= 0:
            raise FieldError("fps", f"{args.input} does not record its fps; give --fps")
        check_output_settings(args.codec, args.container, args.codec_options, raw.width, raw.height)
        output = args.output or args.input.with_suffix(f".{args.container}")
        record = embedded_record(raw.request)  # carried into the video when the raw file has one
        sinks = []
        try:
            if args.codec != "none":
                sinks.append(
                    VideoEncoderSink(
                        output,
                        round(fps),
                        raw.width,
                        raw.height,
                        args.codec,
                        args.container,
                        args.codec_options,
                        record and record.embed(),
                    )
                )
            if args.frames != "none":
                sinks.append(
                    FrameExportSink(args.frames_dir or output.parent, output.stem, args.frames, args.jpeg_quality)
                )
        except BaseException:
            abort_sinks(sinks)
            raise
        if args.interpolate:
            sinks = [
                InterpolatingSink(
                    sinks, load_interpolator(args.interpolation, args.model_dir or data_home()), args.interpolate
                )
            ]
        try:
            with tqdm(total=raw.count, unit="frame", desc="encoding") as bar:
                for chunk in raw.iter_chunks():
                    for sink in sinks:
                        sink.write(chunk)
                    bar.update(chunk.shape[0])
        except BaseException:
            abort_sinks(sinks)
            raise
        return close_sinks(sinks)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_codecs:
        from framepack.cli import command_codecs

        return command_codecs(args)
    if args.input is None:
        build_parser().error("the input raw file is required (or --list-codecs)")
    from framepack.errors import user_error_message

    try:
        for path in encode(args):
            print(f"output: {path}")
    except KeyboardInterrupt:
        print("error: interrupted; no partial output was kept", file=sys.stderr)
        return 2
    except Exception as error:
        message = user_error_message(error)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
