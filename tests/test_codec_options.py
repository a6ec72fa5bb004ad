"""Encoder options by allowlist: injection strings refused by every encoder and every face, no file written
anywhere, the probe's empty working folder, and the useful options still encoding real videos."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import FAST, decode_video, tiny_home

from api.routes import PREFIX
from api.server import create_app
from framepack.jobs.manager import JobManager
from framepack.runner import Runner
from framepack.video.codecs import SOFTWARE_CANDIDATES, EncoderError, check_output_settings, parse_codec_options
from framepack.video.encoder import VideoEncoderSink

ROOT = Path(__file__).resolve().parents[1]
HARDWARE_SUFFIXES = ("_nvenc", "_qsv", "_amf", "_vaapi", "_videotoolbox", "_v4l2m2m", "_mf", "_vulkan")
# Every encoder the project lists that this PyAV build has (hardware ones too: options are refused before any
# encoder opens, so they are checked here even where no such device exists).


def is_video_encoder(name: str) -> bool:
    try:
        return av.codec.Codec(name, "w").type == "video"
    except Exception:  # a decoder only
        return False


ENCODERS = [name for name in SOFTWARE_CANDIDATES if is_video_encoder(name)] + sorted(
    name for name in av.codecs_available if name.endswith(HARDWARE_SUFFIXES) and is_video_encoder(name)
)
NESTED_OWNERS = {
    "x264-params": {"libx264"},
    "x264opts": {"libx264"},
    "x265-params": {"libx265"},
    "svtav1-params": {"libsvtav1"},
}
CRF_OWNERS = {"libx264", "libx265", "libsvtav1", "libvpx", "libvpx-vp9", "libaom-av1"}


@dataclass(frozen=True)
class Nested:
    """The nested key is named by the encoder whose list it is; other encoders name the list's key."""

    top: str
    key: str

    def expected(self, codec: str) -> str:
        return self.key if codec in NESTED_OWNERS.get(self.top, set()) else self.top


@dataclass(frozen=True)
class AfterCrf:
    """`crf=...,<bad>`: encoders with crf name the bad key, the others crf."""

    key: str

    def expected(self, codec: str) -> str:
        return self.key if codec in CRF_OWNERS else "crf"


INJECTIONS: list[tuple[str, str | Nested | AfterCrf]] = [
    # x264's own parser (x264-params, x264opts): dumps, stats and passes, qp/cqm/timecode files, OpenCL caches
    ("x264-params=dump-yuv=victim.txt", Nested("x264-params", "dump-yuv")),
    ("x264-params=pass=1:stats=x.log", Nested("x264-params", "pass")),
    ("x264-params=stats=x.log:pass=1", Nested("x264-params", "stats")),
    ("x264opts=dump-yuv=a", Nested("x264opts", "dump-yuv")),
    ("x264opts=stats=x.log:pass=2", Nested("x264opts", "stats")),
    ("x264opts=dump-yuv", Nested("x264opts", "dump-yuv")),
    ("x264-params=qpfile=README.md", Nested("x264-params", "qpfile")),
    ("x264-params=cqmfile=README.md", Nested("x264-params", "cqmfile")),
    ("x264-params=tcfile-in=times.txt", Nested("x264-params", "tcfile-in")),
    ("x264-params=tcfile-out=times.txt", Nested("x264-params", "tcfile-out")),
    ("x264-params=keyint=60:dump-yuv=victim.txt", Nested("x264-params", "dump-yuv")),
    ("x264-params=dump_yuv=victim.txt", Nested("x264-params", "dump_yuv")),
    ("x264-params=DUMP-YUV=victim.txt", Nested("x264-params", "DUMP-YUV")),
    ("x264-params=no-dump-yuv=1", Nested("x264-params", "no-dump-yuv")),
    ("x264-params=--dump-yuv=victim.txt", Nested("x264-params", "--dump-yuv")),
    ("x264-params=opencl=1", Nested("x264-params", "opencl")),
    ("x264-params=opencl-clbin=cache.bin", Nested("x264-params", "opencl-clbin")),
    ("x264-params=dump-yuv=/dev/stdout", Nested("x264-params", "dump-yuv")),
    ("x264-params=dump-yuv=victim.txt\\:x", Nested("x264-params", "dump-yuv")),
    ("x264-params='dump-yuv=victim.txt'", Nested("x264-params", "dump-yuv")),
    ("x264-params=keyint=60%3Astats=x.log", Nested("x264-params", "keyint")),
    ("x264-params=keyint=60,stats=x.log", Nested("x264-params", "stats")),
    ("x264-params=keyint=60:keyint=1", Nested("x264-params", "keyint")),
    # x265's parser: CSV logs, analysis files, passes, qp/zone/scaling/lambda files, HDR metadata and grain files
    ("x265-params=csv=a.csv", Nested("x265-params", "csv")),
    ("x265-params=csv-log-level=2:csv=a.csv", Nested("x265-params", "csv-log-level")),
    ("x265-params=analysis-save=a.dat", Nested("x265-params", "analysis-save")),
    ("x265-params=analysis-load=a.dat", Nested("x265-params", "analysis-load")),
    ("x265-params=analysis_save=a.dat", Nested("x265-params", "analysis_save")),
    ("x265-params=pass=1:stats=x265.log", Nested("x265-params", "pass")),
    ("x265-params=qpfile=README.md", Nested("x265-params", "qpfile")),
    ("x265-params=zonefile=zones.txt", Nested("x265-params", "zonefile")),
    ("x265-params=scaling-list=README.md", Nested("x265-params", "scaling-list")),
    ("x265-params=lambda-file=README.md", Nested("x265-params", "lambda-file")),
    ("x265-params=dhdr10-info=a.json", Nested("x265-params", "dhdr10-info")),
    ("x265-params=film-grain=grain.bin", Nested("x265-params", "film-grain")),
    ("x265-params=--csv=a.csv", Nested("x265-params", "--csv")),
    ("x265-params=no-sao=1:csv=a.csv", Nested("x265-params", "csv")),
    # SVT-AV1's parser: grain tables, two-pass stats, ROI maps, error logs, reconstructions
    ("svtav1-params=fgs-table=grain.tbl", Nested("svtav1-params", "fgs-table")),
    ("svtav1-params=stat-file=x.stat", Nested("svtav1-params", "stat-file")),
    ("svtav1-params=pass=1", Nested("svtav1-params", "pass")),
    ("svtav1-params=roi-map-file=roi.txt", Nested("svtav1-params", "roi-map-file")),
    ("svtav1-params=errlog=err.txt", Nested("svtav1-params", "errlog")),
    ("svtav1-params=recon=recon.yuv", Nested("svtav1-params", "recon")),
    # FFmpeg options that name files, passes, filters, devices or protocols, in any case
    ("x265-stats=x.log", "x265-stats"),
    ("passlogfile=x", "passlogfile"),
    ("stats=x", "stats"),
    ("Stats=x", "Stats"),
    ("PASSLOGFILE=x", "PASSLOGFILE"),
    ("pass=1", "pass"),
    ("dump=1", "dump"),
    ("vf=movie=victim.txt", "vf"),
    ("gpu=1", "gpu"),
    ("device=/dev/dri/renderD128", "device"),
    ("qsv_params=a=b", "qsv_params"),
    ("ts-parameters=ts_number_layers=2", "ts-parameters"),
    ("url=http://example.com/x", "url"),
    ("protocol_whitelist=file,http", "protocol_whitelist"),
    ("stats=a,stats=b", "stats"),
    # files, URLs, protocols, escapes and tricks in the values of keys some encoders do allow
    ("preset=file:victim.txt", "preset"),
    ("tune=../../etc/passwd", "tune"),
    ("crf=http://example.com/x", "crf"),
    ("crf=pipe:1", "crf"),
    ("vendor=/dev/null", "vendor"),
    ("profile=..", "profile"),
    ("crf=%2e%2e%2fvictim", "crf"),
    ("crf=16\nstats=x.log", "crf"),
    ("crf=16\r\npasslogfile=x", "crf"),
    ("crf=16\x00stats=x", "crf"),
    ("crf=16;stats=x", "crf"),
    ("crf=16 stats=x", "crf"),
    ("crf:16:stats=x", "crf"),
    ("crf=\uff11\uff16", "crf"),  # fullwidth digits
    ("\uff43rf=16", "\uff43rf"),  # fullwidth c
    ("crf\u200b=16", "crf\u200b"),  # zero-width space
    ("crf=16,passlogfile=x", AfterCrf("passlogfile")),
    ("crf=16,crf=17", "crf"),
]


def expected_key(codec: str, expected: str | Nested | AfterCrf) -> str:
    return expected if isinstance(expected, str) else expected.expected(codec)


def assert_names_key(error: EncoderError | dict, key: str, context: str) -> None:
    field, message = (
        (error.field, str(error)) if isinstance(error, EncoderError) else (error["field"], error["message"])
    )
    assert field == "codec_options", context
    head = message.split("(allowed:")[0].split("may not name")[0]  # the part that names the culprit
    assert key in head or repr(key)[1:-1] in head, f"{context}: {message!r} does not name {key!r}"  # repr shows \u200b


def snapshot(*folders: Path) -> dict[Path, set[str]]:
    """Every file and folder under these folders (recursively, none for a missing folder)."""
    return {
        folder: {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()
        for folder in folders
    }


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working folder holding a README.md to be read, like a project checkout."""
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "README.md").write_text("# not for encoders\n")
    monkeypatch.chdir(folder)
    return folder


def test_the_lists_are_long_enough():
    assert len(INJECTIONS) >= 40 and len(set(text for text, _ in INJECTIONS)) == len(INJECTIONS)
    assert {
        "libx264",
        "libx265",
        "libsvtav1",
        "libvpx-vp9",
        "libvpx",
        "prores_ks",
        "ffv1",
        "mpeg4",
        "mjpeg",
        "png",
    } <= set(ENCODERS)
    assert {"h264_nvenc", "hevc_nvenc", "av1_nvenc"} <= set(ENCODERS)


def test_injections_are_refused_by_every_encoder_and_write_nothing(workdir: Path, tmp_path: Path):
    out = tmp_path / "out"
    before = snapshot(workdir, tmp_path, ROOT / "framepack")
    root_listing = set(os.listdir(ROOT))
    for codec in ENCODERS:
        for text, expected in INJECTIONS:
            key = expected_key(codec, expected)
            context = f"{codec} {text!r}"
            with pytest.raises(EncoderError) as checked:
                check_output_settings(codec, "mkv", text, 64, 64)
            assert_names_key(checked.value, key, context)
            with pytest.raises(EncoderError) as parsed:
                parse_codec_options(text, codec)
            assert_names_key(parsed.value, key, context)
            with pytest.raises(EncoderError) as sink:
                VideoEncoderSink(out / "clip.mkv", 30, 64, 64, codec, "mkv", text)
            assert_names_key(sink.value, key, context)
    assert snapshot(workdir, tmp_path, ROOT / "framepack") == before
    assert set(os.listdir(ROOT)) == root_listing
    assert not (workdir / "victim.txt").exists() and (workdir / "README.md").read_text() == "# not for encoders\n"


@pytest.fixture(scope="module")
def api(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("codec-api")
    runner = Runner(device="cpu", output_dir=root / "out", home=tiny_home(tiny_model_dir, root / "home"))
    manager = JobManager(root / "data", runner)
    with TestClient(create_app(manager, root / "out")) as client:
        yield client, root, runner
    runner.encoder_prober.close()


def test_injections_through_the_plan_route_and_the_mp4_opt_alias(api, workdir: Path):
    client, root, _ = api
    (root / "out").mkdir(exist_ok=True)
    before = snapshot(workdir, root / "out", root / "data", root / "home")
    for codec in ENCODERS:
        for text, expected in INJECTIONS:
            key = expected_key(codec, expected)
            payloads = [{"mp4_codec": codec, "mp4_opt": text}]  # SD.Next's names, every encoder
            if codec == "libx264":
                payloads.append({"codec_options": text})  # ours, with the default encoder
            for payload in payloads:
                response = client.post(f"{PREFIX}/plan", json={**FAST, **payload})
                assert response.status_code == 422, f"{codec} {text!r}: {response.text}"
                assert_names_key(response.json()["error"], key, f"{codec} {text!r} {list(payload)}")
    assert snapshot(workdir, root / "out", root / "data", root / "home") == before


def test_the_probe_runs_in_an_empty_folder_so_a_missed_key_writes_nothing(workdir: Path):
    """The allowlist is bypassed on purpose: the probe itself must keep x264's files away from every folder."""
    from framepack.video.codecs import probe_encoder
    from framepack.video.probe import EncoderProber

    before = snapshot(workdir)
    with EncoderProber() as prober:
        for _ in range(2):  # the child cleans its folder and keeps serving
            with pytest.raises(
                EncoderError, match=r"libx264 wrote files \(victim\.txt, x\.log, x\.log\.mbtree\)"
            ) as error:
                probe_encoder(
                    "libx264", "mp4", {"x264-params": "dump-yuv=victim.txt:stats=x.log:pass=1"}, prober=prober
                )
            assert error.value.field == "codec_options"
        probe_encoder("libx264", "mp4", {"crf": "20"}, prober=prober)
        with pytest.raises(EncoderError, match="libx264 refused"):
            probe_encoder("libx264", "mp4", {"crf": "nonsense"}, prober=prober)  # an error from the child, in words
    assert snapshot(workdir) == before


def test_a_crashed_or_hung_probe_child_is_replaced(workdir: Path):
    from framepack.video.probe import EncoderProber

    with EncoderProber(timeout_s=30) as prober:
        prober.probe("libx264", "mp4", {"crf": "20"}, 64, 64)
        prober._process.kill()  # a crash between probes: the next probe starts a new child
        prober._process.wait()
        prober.probe("libx264", "mp4", {"crf": "20"}, 64, 64)
        prober.timeout_s = 0.5  # eight 4K frames at preset placebo take seconds: killed, reported, replaced
        with pytest.raises(EncoderError, match="libx264 did not open within 0.5 s"):
            prober.probe("libx264", "mp4", {"preset": "placebo"}, 3840, 2160)
        prober.timeout_s = 30
        prober.probe("libx264", "mp4", {"crf": "20"}, 64, 64)


def test_no_allowed_key_is_a_file_key_in_disguise():
    """x264 and x265 read `dump_yuv`, `no-csv`, `--stats` as other keys: no allowed key may turn into a file key."""
    from framepack.video.codec_options import Params, allowed_options, names_a_file

    for codec in ENCODERS + ["libaom-av1"]:
        for key, option in allowed_options(codec).items():
            assert not names_a_file(key), (codec, key)
            for name in option.keys if isinstance(option, Params) else ():
                assert not names_a_file(name) or (codec, name) == ("libsvtav1", "film-grain"), (codec, key, name)


def test_unknown_keys_list_the_encoders_allowed_ones():
    with pytest.raises(
        EncoderError, match=r"libx264 has no option bogus here \(allowed: .*\bcrf\b.*\bx264-params\b"
    ) as error:
        parse_codec_options("bogus=1", "libx264")
    assert error.value.field == "codec_options"
    with pytest.raises(EncoderError, match=r"libx265 x265-params has no key bogus \(allowed: .*\bno-sao\b"):
        parse_codec_options("x265-params=bogus=1", "libx265")
    with pytest.raises(EncoderError, match=r"libx264 refused crf='52': expected a number from 0 to 51"):
        parse_codec_options("crf=52", "libx264")
    with pytest.raises(
        EncoderError, match=r"libx264 refused x264-params bframes='17': expected an integer from 0 to 16"
    ):
        parse_codec_options("x264-params=bframes=17", "libx264")
    with pytest.raises(EncoderError, match="gif has no option crf here"):
        parse_codec_options("crf=20", "gif")


def test_syntax_keeps_commas_inside_values():
    assert parse_codec_options("crf:16", "libx264") == {"crf": "16"}
    assert parse_codec_options("x264-params=deblock=-1,-1:psy-rd=1.0,0.15, crf=18", "libx264") == {
        "x264-params": "deblock=-1,-1:psy-rd=1.0,0.15",
        "crf": "18",
    }
    assert parse_codec_options("partitions=p8x8,i8x8,tune=film,fastdecode,8x8dct=1", "libx264") == {
        "partitions": "p8x8,i8x8",
        "tune": "film,fastdecode",
        "8x8dct": "1",
    }
    assert parse_codec_options("deblock=-1:-1", "libx264") == {"deblock": "-1:-1"}
    with pytest.raises(EncoderError, match="may not name files"):
        parse_codec_options("passlogfile=x")  # no encoder (codec 'none'): file keys are refused all the same


def frames(count: int, width: int = 64, height: int = 48) -> np.ndarray:
    """A moving gradient, different in every frame."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack(
        [np.stack([(x * 4 + t * 9) % 256, (y * 5 + t * 3) % 256, (x + y + t * 17) % 256], -1) for t in range(count)]
    ).astype(np.uint8)


USEFUL = [
    (
        "libx264",
        "mp4",
        "crf=20,preset=veryfast,tune=film,profile=high,x264-params=keyint=12:bframes=2:deblock=-1,-1:psy-rd=1.0,0.15:aq-mode=2",
    ),
    ("libx264", "mkv", "qp=0,preset=ultrafast"),
    ("libx265", "mp4", "crf=26,preset=fast,tune=grain,x265-params=no-sao=1:keyint=12:bframes=2:aq-mode=3:psy-rd=2.0"),
    ("libsvtav1", "mp4", "crf=40,preset=12,svtav1-params=tune=0:film-grain=4:keyint=12:enable-overlays=1"),
    ("libvpx-vp9", "webm", "crf=30,b=0,deadline=good,cpu-used=5,row-mt=1,tile-columns=1,aq-mode=complexity"),
    ("libvpx-vp9", "webm", "lossless=1,deadline=realtime,cpu-used=8"),
    ("libvpx", "webm", "crf=10,b=1M,deadline=good,cpu-used=4,auto-alt-ref=1,lag-in-frames=8"),
    ("prores_ks", "mov", "profile=hq,vendor=apl0,quant_mat=hq"),
    ("ffv1", "mkv", "level=3,slices=4,slicecrc=1,coder=range_tab,context=1"),
    ("mpeg4", "mp4", "qmin=2,qmax=4,bf=2,mbd=rd,trellis=1"),
    ("mjpeg", "mkv", "qmin=2,qmax=3,huffman=optimal"),
    ("png", "mov", "pred=paeth,compression_level=3"),
]


@pytest.mark.parametrize("codec,container,options", USEFUL, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(USEFUL)])
def test_useful_options_still_encode(codec: str, container: str, options: str, tmp_path: Path):
    clip = frames(24)
    check_output_settings(codec, container, options, 64, 48)
    sink = VideoEncoderSink(tmp_path / f"clip.{container}", 30, 64, 48, codec, container, options)
    sink.write(clip)
    path = sink.close()
    assert decode_video(path)[:3] == (len(clip), 64, 48)


def test_options_reach_the_encoder(tmp_path: Path):
    """Nested keyint/scenecut set the keyframes; crf sets the size."""
    clip = frames(24)

    def encode(name: str, options: str) -> Path:
        sink = VideoEncoderSink(tmp_path / f"{name}.mp4", 30, 64, 48, "libx264", "mp4", options)
        sink.write(clip)
        return sink.close()

    keyed = encode("keyed", "crf=20,x264-params=keyint=6:min-keyint=6:scenecut=0")
    with av.open(str(keyed)) as container:
        keyframes = [frame.key_frame for frame in container.decode(video=0)]
    assert len(keyframes) == 24 and sum(keyframes) == 4
    assert encode("fine", "crf=5").stat().st_size > 2 * encode("coarse", "crf=45").stat().st_size


# Rate settings some keys need beside them (libvpx's maxrate needs a bitrate, a bufsize a maxrate, ...)
COMPANIONS = ("", "bufsize=4M", "crf=20", "b=500k,bufsize=4M", "b=500k,maxrate=4M", "b=4M,maxrate=8M,bufsize=16M")


def open_error(codec: str, container: str, text: str, key: str, allowed: Mapping) -> str | None:
    """None when `text` opens the encoder alone or beside one of the COMPANIONS, else the first error."""
    from framepack.video.codecs import open_in_memory

    errors = []
    for companion in COMPANIONS:
        keys = [item.split("=")[0] for item in companion.split(",") if item]
        if key in keys or not all(name in allowed for name in keys):
            continue
        try:
            open_in_memory(
                codec, container, parse_codec_options(",".join(filter(None, (text, companion))), codec), 64, 64
            )
            return None
        except EncoderError as error:
            errors.append(str(error))
    return errors[0]


def test_every_allowed_option_exists_in_this_build():
    """Each allowlisted key, with values of its shape (every word of a word list), opens its encoder for real
    (in this process: the allowlist is the safety here), alone or beside a plain rate setting it needs."""
    from framepack.video.codec_options import Params, allowed_options
    from framepack.video.codecs import list_video_encoders

    failures, tried = [], 0
    for info in (info for info in list_video_encoders() if not info.hardware):
        allowed = allowed_options(info.name)
        for key, option in allowed.items():
            if isinstance(option, Params):
                texts = [f"{key}={name}={value}" for name, shape in option.keys.items() for value in shape.samples()]
            else:
                texts = [f"{key}={value}" for value in option.samples()]
            for text in texts:
                tried += 1
                error = open_error(info.name, info.containers[0], text, key, allowed)
                if error:
                    failures.append(f"{info.name} {text}: {error}")
    assert tried > 600
    assert not failures, "\n".join(failures)


def test_codecs_command_prints_an_encoders_options(capsys: pytest.CaptureFixture):
    import argparse

    from framepack.cli import command_codecs

    assert command_codecs(argparse.Namespace(encoder="libx264")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "crf: a number from 0 to 51" in lines and "x264-params: key=value pairs separated by ':'" in lines
    assert "  keyint: an integer from 1 to 100000 or one of infinite" in lines
    assert not [line for line in lines if "dump-yuv" in line or "stats" in line]
