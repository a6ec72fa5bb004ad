"""Which encoder options a request may give, per encoder family, and the parser that holds options to them.

Options reach FFmpeg (and, through `x264-params`, `x265-params`, `svtav1-params`, the encoder libraries' own
parsers), and several of those options name files: two-pass logs, stats, dumps, CSV logs, analysis files, film
grain tables. So options are taken by allowlist: each encoder family lists the keys it accepts and the shape of
each value (an integer range, a number range, a set of words, a bitrate), nested `key=value` lists included.
Anything else is refused before an encoder is opened, naming the key; keys that name files, passes, stats logs,
protocols, devices or URLs say so.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from framepack.errors import FieldError

FIELD = "codec_options"
HARDWARE_MARKERS = ("_nvenc", "_qsv", "_amf", "_vaapi", "_videotoolbox", "_v4l2m2m", "_mf", "_vulkan")
KEY = r"[A-Za-z0-9][A-Za-z0-9_-]{0,47}"
# A comma starts a new item only where a key follows (a letter, or digits then a letter as in `8x8dct`), so values
# keep their own commas: `partitions=p8x8,i8x8`, `x264-params=deblock=-1,-1:psy-rd=1.0,0.15`.
ITEM_BREAK = re.compile(r",(?=\s*(?:[A-Za-z]|[0-9]+[A-Za-z])[A-Za-z0-9_-]*\s*[:=])", re.ASCII)
ITEM = re.compile(rf"\s*({KEY})\s*[:=]\s*(.*?)\s*", re.ASCII | re.DOTALL)
VALUE = re.compile(r"[A-Za-z0-9_.+,:=-]+", re.ASCII)
NESTED_VALUE = re.compile(r"[A-Za-z0-9_.+,-]+", re.ASCII)
SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:", re.ASCII)  # file:, pipe:, http: ... (pairs like -1:-1 start otherwise)
INTEGER = re.compile(r"[+-]?[0-9]{1,10}", re.ASCII)
DECIMAL = re.compile(r"[+-]?(?:[0-9]{1,10}(?:\.[0-9]{1,6})?|\.[0-9]{1,6})", re.ASCII)
BITRATE = re.compile(r"([0-9]{1,10}(?:\.[0-9]{1,3})?)([kM]?)", re.ASCII)
FILES = "options may not name files or URLs (logs, passes, stats, devices, protocols)"
# Keys (lower case, '_' as '-', without a leading '--' or 'no-') that name a file, a pass or stats log, a protocol,
# a device or a URL in FFmpeg or in an encoder library. The allowlists decide (SVT-AV1's film-grain is a level, x265's
# a file); this list only words the refusal of a key that is not on the encoder's list.
FILE_KEYS = frozenset(
    "stats stats-in stats-out stat-file input-stat-file output-stat-file passlogfile pass passes twopass x265-stats "
    "dump dump-yuv qpfile qp-file use-q-file cqmfile cqm-file tcfile-in tcfile-out timebase-file psnr-file ssim-file "
    "vbv-file csv csv-log-level analysis-save analysis-load analysis-reuse-file analysis-file scaling-list "
    "lambda-file zonefile zones-file dhdr10-info dolby-vision-rpu film-grain film-grain-table fgs-table roi-map-file "
    "errlog recon log-file logfile input output config opencl opencl-clbin opencl-device gpu device hwaccel-device "
    "init-hw-device filter-hw-device vf af filter filter-complex lavfi url uri file path dir folder pipe protocol "
    "protocol-whitelist protocol-blacklist codec-whitelist format-whitelist ts-parameters qsv-params"
    .split()
)  # fmt: skip


class EncoderError(FieldError):
    """Bad encoder settings."""


@dataclass(frozen=True)
class Integer:
    """A whole number in [low, high], or one of `words` (FFmpeg's named constants)."""

    low: int
    high: int
    words: tuple[str, ...] = ()

    def accepts(self, value: str) -> bool:
        return value in self.words or (INTEGER.fullmatch(value) is not None and self.low <= int(value) <= self.high)

    def describe(self) -> str:
        if (self.low, self.high, self.words) == (0, 1, ()):
            return "0 or 1"
        text = f"an integer from {self.low} to {self.high}"
        return f"{text} or one of {', '.join(self.words)}" if self.words else text

    def samples(self) -> tuple[str, ...]:
        """Values to try: both ends of a 0/1 switch, else the middle; and every word."""
        numbers = (self.low, self.high) if self.high - self.low <= 1 else ((self.low + self.high) // 2,)
        return (*map(str, numbers), *self.words)


@dataclass(frozen=True)
class Number:
    """A decimal number in [low, high]."""

    low: float
    high: float

    def accepts(self, value: str) -> bool:
        return DECIMAL.fullmatch(value) is not None and self.low <= float(value) <= self.high

    def describe(self) -> str:
        return f"a number from {self.low:g} to {self.high:g}"

    def samples(self) -> tuple[str, ...]:
        return (f"{(self.low + self.high) / 2:g}",)


@dataclass(frozen=True)
class Words:
    """One of `words`; with `joiners`, several of them joined by one of those characters."""

    words: tuple[str, ...]
    joiners: str = ""

    def accepts(self, value: str) -> bool:
        parts = re.split(f"[{re.escape(self.joiners)}]", value) if self.joiners else [value]
        return all(part in self.words for part in parts)

    def describe(self) -> str:
        joined = f" (several joined by {' or '.join(self.joiners)})" if self.joiners else ""
        return f"one of {', '.join(self.words)}{joined}"

    def samples(self) -> tuple[str, ...]:
        return self.words


@dataclass(frozen=True)
class Bitrate:
    """Bits per second: digits with an optional k or M suffix, up to `high`."""

    high: int = 1_000_000_000

    def accepts(self, value: str) -> bool:
        match = BITRATE.fullmatch(value)
        if not match:
            return False
        return float(match.group(1)) * {"": 1, "k": 1e3, "M": 1e6}[match.group(2)] <= self.high

    def describe(self) -> str:
        return f"a bitrate in bits/s such as 800k or 4M, at most {self.high // 1_000_000}M"

    def samples(self) -> tuple[str, ...]:
        return ("800k", "2M")


@dataclass(frozen=True)
class Pair:
    """One value, or two joined by one of `separators` (x264's `deblock=-1:-1`, `psy-rd=1.0:0.15`)."""

    item: Integer | Number
    separators: str

    def accepts(self, value: str) -> bool:
        parts = re.split(f"[{re.escape(self.separators)}]", value)
        return len(parts) <= 2 and all(self.item.accepts(part) for part in parts)

    def describe(self) -> str:
        return f"{self.item.describe()}, or two of them joined by {' or '.join(self.separators)}"

    def samples(self) -> tuple[str, ...]:
        value = self.item.samples()[0]
        return (value, f"{value}{self.separators[0]}{value}")


@dataclass(frozen=True)
class Code:
    """A fixed-length code of letters and digits (ProRes' `vendor`, e.g. apl0)."""

    length: int

    def accepts(self, value: str) -> bool:
        return re.fullmatch(rf"[A-Za-z0-9]{{{self.length}}}", value, re.ASCII) is not None

    def describe(self) -> str:
        return f"{self.length} letters or digits"

    def samples(self) -> tuple[str, ...]:
        return ("0" * self.length,)


@dataclass(frozen=True)
class Params:
    """A nested `key=value:key=value` list handed to an encoder library's own parser; each key by allowlist."""

    keys: Mapping[str, Shape]

    def describe(self) -> str:
        return f"key=value pairs separated by ':' with keys {', '.join(sorted(self.keys))}"


Shape = Integer | Number | Words | Bitrate | Pair | Code
Option = Shape | Params

BOOL = Integer(0, 1)
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo")
H264_LEVELS = tuple("1 1b 1.1 1.2 1.3 2 2.1 2.2 3 3.1 3.2 4 4.1 4.2 5 5.1 5.2 6 6.1 6.2".split())
COLOR_PRIMARIES = ("bt709", "bt470m", "bt470bg", "smpte170m", "smpte240m", "film", "bt2020", "smpte428", "smpte431",
                   "smpte432")  # fmt: skip
TRANSFERS = ("bt709", "bt470m", "bt470bg", "smpte170m", "smpte240m", "linear", "iec61966-2-1", "bt2020-10", "bt2020-12",
             "smpte2084", "arib-std-b67")  # fmt: skip
MATRICES = ("bt709", "fcc", "bt470bg", "smpte170m", "smpte240m", "ycgco", "bt2020nc", "bt2020c")
RATE: dict[str, Option] = {"b": Bitrate(), "maxrate": Bitrate(), "bufsize": Bitrate(), "g": Integer(1, 100_000)}

X264_PARAMS = Params({
    "keyint": Integer(1, 100_000, ("infinite",)), "min-keyint": Integer(1, 100_000), "scenecut": Integer(0, 100),
    "bframes": Integer(0, 16), "b-adapt": Integer(0, 2), "b-bias": Integer(-100, 100),
    "b-pyramid": Words(("none", "strict", "normal")),
    "open-gop": BOOL, "ref": Integer(1, 16), "deblock": Pair(Integer(-6, 6), ","), "no-deblock": BOOL, "cabac": BOOL,
    "crf": Number(0, 51), "qp": Integer(0, 51), "qpmin": Integer(0, 51), "qpmax": Integer(0, 51),
    "qpstep": Integer(1, 51),
    "ipratio": Number(1, 10), "pbratio": Number(1, 10), "chroma-qp-offset": Integer(-12, 12), "qcomp": Number(0, 1),
    "aq-mode": Integer(0, 3), "aq-strength": Number(0, 3), "psy": BOOL, "psy-rd": Pair(Number(0, 10), ","),
    "mbtree": BOOL, "rc-lookahead": Integer(0, 250), "vbv-maxrate": Integer(0, 1_000_000),
    "vbv-bufsize": Integer(0, 1_000_000),
    "me": Words(("dia", "hex", "umh", "esa", "tesa")), "subme": Integer(0, 11), "merange": Integer(4, 64),
    "trellis": Integer(0, 2), "direct": Words(("none", "spatial", "temporal", "auto")), "weightb": BOOL,
    "weightp": Integer(0, 2), "8x8dct": BOOL, "fast-pskip": BOOL, "mixed-refs": BOOL, "dct-decimate": BOOL,
    "nr": Integer(0, 100_000), "deadzone-inter": Integer(0, 32), "deadzone-intra": Integer(0, 32), "aud": BOOL,
    "repeat-headers": BOOL, "slices": Integer(0, 16), "colorprim": Words(COLOR_PRIMARIES), "transfer": Words(TRANSFERS),
    "colormatrix": Words(MATRICES), "level": Words(H264_LEVELS),
    "bluray-compat": BOOL, "intra-refresh": BOOL,
})  # fmt: skip

X264: dict[str, Option] = {
    "crf": Number(0, 51), "crf_max": Number(0, 51), "qp": Integer(0, 51), "preset": Words(PRESETS),
    "tune": Words(("film", "animation", "grain", "stillimage", "psnr", "ssim", "fastdecode", "zerolatency"), ",+"),
    "profile": Words(("baseline", "main", "high", "high10", "high422", "high444")), "level": Words(H264_LEVELS),
    "aq-mode": Integer(0, 3, ("none", "variance", "autovariance", "autovariance-biased")), "aq-strength": Number(0, 3),
    "psy": BOOL, "psy-rd": Pair(Number(0, 10), ":,"), "rc-lookahead": Integer(0, 250), "weightb": BOOL,
    "weightp": Integer(0, 2, ("none", "simple", "smart")), "b-pyramid": Integer(0, 2, ("none", "strict", "normal")),
    "b-bias": Integer(-100, 100), "mixed-refs": BOOL, "8x8dct": BOOL, "fast-pskip": BOOL, "aud": BOOL, "mbtree": BOOL,
    "deblock": Pair(Integer(-6, 6), ":,"),
    "partitions": Words(("p8x8", "p4x4", "b8x8", "i8x8", "i4x4", "all", "none"), ","),
    "direct-pred": Integer(0, 3, ("none", "spatial", "temporal", "auto")),
    "motion-est": Words(("dia", "hex", "umh", "esa", "tesa")), "coder": Words(("default", "cavlc", "cabac")),
    "sc_threshold": Integer(0, 100), "noise_reduction": Integer(0, 100_000), "chromaoffset": Integer(-12, 12),
    "forced-idr": BOOL, "intra-refresh": BOOL, "bluray-compat": BOOL,
    "bf": Integer(0, 16), "refs": Integer(1, 16), "keyint_min": Integer(1, 100_000), "qmin": Integer(0, 51),
    "qmax": Integer(0, 51), "trellis": Integer(0, 2), "subq": Integer(0, 11), "me_range": Integer(4, 64),
    **RATE, "x264-params": X264_PARAMS, "x264opts": X264_PARAMS,
}  # fmt: skip

X265_PARAMS = Params({
    "crf": Number(0, 51), "qp": Integer(0, 51), "bitrate": Integer(1, 1_000_000), "vbv-maxrate": Integer(0, 1_000_000),
    "vbv-bufsize": Integer(0, 1_000_000), "vbv-init": Number(0, 1), "keyint": Integer(-1, 100_000),
    "min-keyint": Integer(0, 100_000), "scenecut": Integer(0, 100), "bframes": Integer(0, 16), "b-adapt": Integer(0, 2),
    "bframe-bias": Integer(-90, 100), "b-pyramid": BOOL, "ref": Integer(1, 8), "rd": Integer(1, 6),
    "rdoq-level": Integer(0, 2), "psy-rd": Number(0, 5), "psy-rdoq": Number(0, 50), "aq-mode": Integer(0, 4),
    "aq-strength": Number(0, 3), "cutree": BOOL, "no-cutree": BOOL, "sao": BOOL, "no-sao": BOOL,
    "selective-sao": Integer(0, 4), "limit-sao": BOOL, "deblock": Pair(Integer(-6, 6), ","), "no-deblock": BOOL,
    "strong-intra-smoothing": BOOL, "no-strong-intra-smoothing": BOOL, "open-gop": BOOL, "no-open-gop": BOOL,
    "rc-lookahead": Integer(5, 250), "lookahead-slices": Integer(0, 16),
    "me": Words(("dia", "hex", "umh", "star", "sea", "full")),
    "subme": Integer(0, 7), "merange": Integer(0, 1024), "weightp": BOOL, "weightb": BOOL,
    "tu-intra-depth": Integer(1, 4),
    "tu-inter-depth": Integer(1, 4), "limit-tu": Integer(0, 4), "ctu": Words(("16", "32", "64")),
    "min-cu-size": Words(("8", "16", "32")), "limit-refs": Integer(0, 3), "limit-modes": BOOL, "rect": BOOL,
    "amp": BOOL,
    "early-skip": BOOL, "rskip": Integer(0, 2), "qcomp": Number(0.5, 1), "ipratio": Number(1, 10),
    "pbratio": Number(1, 10),
    "cbqpoffs": Integer(-12, 12), "crqpoffs": Integer(-12, 12), "nr-intra": Integer(0, 2000),
    "nr-inter": Integer(0, 2000),
    "repeat-headers": BOOL, "aud": BOOL, "hrd": BOOL, "info": BOOL, "range": Words(("full", "limited")),
    "colorprim": Words(COLOR_PRIMARIES), "transfer": Words(TRANSFERS), "colormatrix": Words(MATRICES),
    "frame-threads": Integer(0, 16), "lossless": BOOL, "fades": BOOL,
})  # fmt: skip

X265: dict[str, Option] = {
    "crf": Number(0, 51), "qp": Integer(0, 51), "preset": Words(PRESETS),
    "tune": Words(("psnr", "ssim", "grain", "zerolatency", "fastdecode", "animation")),
    "profile": Words(("main", "main-intra", "mainstillpicture", "msp", "main444-8", "main444-intra")),
    "forced-idr": BOOL, "bf": Integer(0, 16), "refs": Integer(1, 8), "keyint_min": Integer(0, 100_000),
    "qmin": Integer(0, 51), "qmax": Integer(0, 51), **RATE, "x265-params": X265_PARAMS,
}  # fmt: skip

SVTAV1_PARAMS = Params({
    "tune": Integer(0, 4), "film-grain": Integer(0, 50), "film-grain-denoise": BOOL, "adaptive-film-grain": BOOL,
    "enable-overlays": BOOL, "enable-tf": Integer(0, 2), "tf-strength": Integer(0, 4), "keyint": Integer(-1, 100_000),
    "scd": BOOL, "lookahead": Integer(0, 120), "enable-qm": BOOL, "qm-min": Integer(0, 15), "qm-max": Integer(0, 15),
    "sharpness": Integer(-7, 7), "enable-variance-boost": BOOL, "variance-boost-strength": Integer(1, 4),
    "variance-octile": Integer(1, 8), "fast-decode": Integer(0, 2), "tile-rows": Integer(0, 6),
    "tile-columns": Integer(0, 4), "aq-mode": Integer(0, 2), "enable-dlf": Integer(0, 2), "enable-cdef": BOOL,
    "enable-restoration": BOOL, "enable-mfmv": BOOL, "hierarchical-levels": Integer(2, 5), "crf": Integer(1, 63),
    "qp": Integer(1, 63), "min-qp": Integer(1, 63), "max-qp": Integer(1, 63), "color-range": Words(("studio", "full")),
    "color-primaries": Words(("bt709", "bt470m", "bt470bg", "bt601", "smpte240", "film", "bt2020")),
    "transfer-characteristics": Words(
        ("bt709", "bt470m", "bt470bg", "bt601", "smpte240", "linear", "srgb", "bt2020-10", "smpte2084", "hlg")
    ),
    "matrix-coefficients": Words(("bt709", "fcc", "bt470bg", "bt601", "smpte240", "ycgco", "bt2020-ncl")),
})  # fmt: skip

SVTAV1: dict[str, Option] = {
    "crf": Integer(1, 63), "qp": Integer(1, 63), "preset": Integer(-1, 13), "qmin": Integer(1, 63),
    "qmax": Integer(1, 63),
    **RATE, "svtav1-params": SVTAV1_PARAMS,
}  # fmt: skip

VPX: dict[str, Option] = {
    "crf": Integer(4, 63), "deadline": Words(("best", "good", "realtime")), "cpu-used": Integer(-16, 16),
    "lag-in-frames": Integer(0, 25), "auto-alt-ref": Integer(0, 2), "arnr-maxframes": Integer(0, 15),
    "arnr-strength": Integer(0, 6), "static-thresh": Integer(0, 10_000), "noise-sensitivity": Integer(0, 4),
    "undershoot-pct": Integer(0, 100), "overshoot-pct": Integer(0, 100), "max-intra-rate": Integer(0, 10_000),
    "sharpness": Integer(0, 7), "tune": Words(("psnr", "ssim")), "qmin": Integer(0, 63), "qmax": Integer(0, 63),
    "minrate": Bitrate(), "keyint_min": Integer(0, 100_000), **RATE,
}  # fmt: skip

VP9: dict[str, Option] = {
    **VPX, "crf": Integer(0, 63), "cpu-used": Integer(-8, 8), "auto-alt-ref": Integer(0, 6), "lossless": BOOL,
    "row-mt": BOOL,
    "tile-columns": Integer(0, 6), "tile-rows": Integer(0, 2), "frame-parallel": BOOL, "enable-tpl": BOOL,
    "aq-mode": Integer(0, 4, ("none", "variance", "complexity", "cyclic", "equator360")),
    "tune-content": Words(("default", "screen", "film")),
}  # fmt: skip

AOM: dict[str, Option] = {
    "crf": Integer(0, 63), "cpu-used": Integer(0, 8), "row-mt": BOOL, "tile-columns": Integer(0, 6),
    "tile-rows": Integer(0, 6), "lag-in-frames": Integer(0, 35), **RATE,
}  # fmt: skip

PRORES: dict[str, Option] = {
    "profile": Integer(-1, 5, ("auto", "proxy", "lt", "standard", "hq", "4444", "4444xq")), "vendor": Code(4),
    "bits_per_mb": Integer(0, 8192), "quant_mat": Words(("auto", "proxy", "lt", "standard", "hq", "default")),
    "mbs_per_slice": Words(("1", "2", "4", "8")),
}  # fmt: skip

FFV1: dict[str, Option] = {
    "level": Words(("0", "1", "3")), "slices": Words(("4", "6", "9", "12", "16", "24", "30")), "slicecrc": BOOL,
    "coder": Words(("rice", "range_def", "range_tab")), "context": BOOL, "g": Integer(1, 100_000),
}  # fmt: skip

MPEG4: dict[str, Option] = {
    **RATE, "minrate": Bitrate(), "bf": Integer(0, 4), "qmin": Integer(1, 31), "qmax": Integer(1, 31),
    "mbd": Words(("simple", "bits", "rd")), "trellis": BOOL, "mpeg_quant": BOOL, "data_partitioning": BOOL,
    "alternate_scan": BOOL,
}  # fmt: skip

MJPEG: dict[str, Option] = {
    "b": Bitrate(), "qmin": Integer(1, 31), "qmax": Integer(1, 31), "huffman": Words(("default", "optimal")),
}  # fmt: skip

PNG: dict[str, Option] = {
    "pred": Words(("none", "sub", "up", "avg", "paeth", "mixed")), "compression_level": Integer(0, 9),
    "dpi": Integer(0, 65536), "dpm": Integer(0, 65536),
}  # fmt: skip

NVENC_COMMON: dict[str, Option] = {
    "rc-lookahead": Integer(0, 64), "spatial-aq": BOOL, "temporal-aq": BOOL, "aq-strength": Integer(1, 15),
    "multipass": Words(("disabled", "qres", "fullres")), "b_ref_mode": Words(("disabled", "each", "middle")),
    "no-scenecut": BOOL, "zerolatency": BOOL, "bf": Integer(0, 4), "qmin": Integer(0, 51), "qmax": Integer(0, 51),
    **RATE,
}  # fmt: skip
NVENC_PRESETS = ("default", "slow", "medium", "fast", "p1", "p2", "p3", "p4", "p5", "p6", "p7")
NVENC_RC = ("constqp", "vbr", "cbr")
H264_NVENC: dict[str, Option] = {
    **NVENC_COMMON, "preset": Words(NVENC_PRESETS + ("hp", "hq", "bd", "ll", "llhq", "llhp", "lossless", "losslesshp")),
    "tune": Words(("hq", "ll", "ull", "lossless")), "profile": Words(("baseline", "main", "high", "high444p")),
    "level": Words(("auto", *H264_LEVELS)), "rc": Words(NVENC_RC), "cq": Number(0, 51), "qp": Integer(0, 51),
}  # fmt: skip
HEVC_NVENC: dict[str, Option] = {
    **NVENC_COMMON, "preset": Words(NVENC_PRESETS + ("hp", "hq", "bd", "ll", "llhq", "llhp", "lossless", "losslesshp")),
    "tune": Words(("hq", "uhq", "ll", "ull", "lossless")), "profile": Words(("main", "main10", "rext")),
    "level": Words(tuple("auto 1 2 2.1 3 3.1 4 4.1 5 5.1 5.2 6 6.1 6.2".split())), "tier": Words(("main", "high")),
    "rc": Words(NVENC_RC), "cq": Number(0, 51), "qp": Integer(0, 51),
}  # fmt: skip
AV1_NVENC: dict[str, Option] = {
    **NVENC_COMMON, "preset": Words(NVENC_PRESETS), "tune": Words(("hq", "uhq", "ll", "ull", "lossless")),
    "level": Words(tuple("auto 2 2.1 3 3.1 4 4.1 5 5.1 5.2 5.3 6 6.1 6.2 6.3".split())), "tier": Words(("0", "1")),
    "rc": Words(NVENC_RC), "cq": Number(0, 63), "qp": Integer(0, 255), "qmin": Integer(0, 255), "qmax": Integer(0, 255),
}  # fmt: skip
QSV: dict[str, Option] = {
    **RATE, "bf": Integer(0, 16), "preset": Words(PRESETS[2:-1]), "global_quality": Integer(1, 51),
    "look_ahead": BOOL, "look_ahead_depth": Integer(0, 100),
}  # fmt: skip
AMF: dict[str, Option] = {
    **RATE, "bf": Integer(0, 3), "quality": Words(("speed", "balanced", "quality")),
    "rc": Words(("cqp", "cbr", "vbr_peak", "vbr_latency", "qvbr")), "qp_i": Integer(0, 51), "qp_p": Integer(0, 51),
    "qp_b": Integer(0, 51), "qvbr_quality_level": Integer(0, 51),
}  # fmt: skip
OTHER_HARDWARE: dict[str, Option] = {**RATE, "bf": Integer(0, 16)}

SOFTWARE: dict[str, dict[str, Option]] = {
    "libx264": X264, "libx265": X265, "libsvtav1": SVTAV1, "libvpx": VPX, "libvpx-vp9": VP9, "libaom-av1": AOM,
    "prores_ks": PRORES, "ffv1": FFV1, "mpeg4": MPEG4, "mjpeg": MJPEG, "png": PNG,
    "h264_nvenc": H264_NVENC, "hevc_nvenc": HEVC_NVENC, "av1_nvenc": AV1_NVENC,
}  # fmt: skip
FAMILIES_BY_SUFFIX: dict[str, dict[str, Option]] = {"_qsv": QSV, "_amf": AMF}


def allowed_options(codec: str) -> Mapping[str, Option]:
    """The option keys (with value shapes) a request may give this encoder; empty for an encoder not listed."""
    if codec in SOFTWARE:
        return SOFTWARE[codec]
    for suffix, options in FAMILIES_BY_SUFFIX.items():
        if codec.endswith(suffix):
            return options
    return OTHER_HARDWARE if codec.endswith(HARDWARE_MARKERS) else {}


def names_a_file(key: str) -> bool:
    """Whether a key (any case, '_' or '-', with or without '--' or 'no') is one that names a file, log or device."""
    name = key.lower().replace("_", "-").lstrip("-")
    return name in FILE_KEYS or (name.startswith("no") and name.removeprefix("no").lstrip("-") in FILE_KEYS)


def split_items(text: str) -> list[tuple[str, str]]:
    """'crf=16,preset=slow' -> [('crf', '16'), ('preset', 'slow')]; EncoderError for an item that is not key=value."""
    items = []
    for item in ITEM_BREAK.split(text):
        if not item.strip():
            continue
        match = ITEM.fullmatch(item)
        if not match or not match.group(2):
            raise EncoderError(FIELD, f"cannot read {item.strip()!r}; write key:value or key=value, comma separated")
        items.append((match.group(1), match.group(2)))
    return items


def check_value_text(key: str, value: str) -> None:
    """Values are plain numbers and words: no paths, no escapes, no URLs, whatever the key."""
    if not VALUE.fullmatch(value) or SCHEME.match(value) or ".." in value:
        raise EncoderError(FIELD, f"{key}={value!r} is not allowed: {FILES}; values are numbers and words")


def check_nested(codec: str, key: str, value: str, params: Params) -> None:
    """A `key=value:key=value` list for an encoder library: each key on the allowlist, each value in shape."""
    seen: set[str] = set()
    for part in value.split(":"):
        name, equals, nested_value = part.partition("=")
        if not equals or not nested_value or not re.fullmatch(KEY, name, re.ASCII):
            raise EncoderError(FIELD, f"{key}: cannot read {part!r}; write key=value pairs separated by ':'")
        if name in seen:
            raise EncoderError(FIELD, f"{key}: {name} is given twice")
        seen.add(name)
        shape = params.keys.get(name)
        if shape is None:
            if names_a_file(name):
                raise EncoderError(FIELD, f"{key}: {name} is not allowed: {FILES}")
            raise EncoderError(FIELD, f"{codec} {key} has no key {name} (allowed: {', '.join(sorted(params.keys))})")
        if not NESTED_VALUE.fullmatch(nested_value):
            raise EncoderError(
                FIELD, f"{key}: {name}={nested_value!r} is not allowed: {FILES}; values are numbers and words"
            )
        if not shape.accepts(nested_value):
            raise EncoderError(FIELD, f"{codec} refused {key} {name}={nested_value!r}: expected {shape.describe()}")


def parse_codec_options(text: str, codec: str | None = None) -> dict[str, str]:
    """'crf:16' or 'crf=16,preset=slow,x264-params=keyint=60:bframes=2' -> options for the encoder.

    With `codec`, every key must be on that encoder's allowlist with a value of the right shape; without it
    (no video is written) only the syntax is read and keys naming files are refused. EncoderError names the key.
    """
    allowed = allowed_options(codec) if codec is not None else None
    options: dict[str, str] = {}
    for key, value in split_items(text):
        if key in options:
            raise EncoderError(FIELD, f"{key} is given twice")
        option = allowed.get(key) if allowed is not None else None
        if option is None and names_a_file(key):
            raise EncoderError(FIELD, f"{key} is not allowed: {FILES}")
        if isinstance(option, Params):
            check_nested(str(codec), key, value, option)
        else:
            check_value_text(key, value)
        if allowed is not None and option is None:
            listed = ", ".join(sorted(allowed)) or "none"
            raise EncoderError(
                FIELD, f"{codec} has no option {key} here (allowed: {listed}; `python -m framepack codecs {codec}`)"
            )
        if option is not None and not isinstance(option, Params) and not option.accepts(value):
            raise EncoderError(FIELD, f"{codec} refused {key}={value!r}: expected {option.describe()}")
        options[key] = value
    return options


def describe_options(codec: str) -> list[str]:
    """One line per allowed option of an encoder, nested keys indented under their list."""
    lines = []
    for key, option in sorted(allowed_options(codec).items()):
        if isinstance(option, Params):
            lines.append(f"{key}: key=value pairs separated by ':'")
            lines += [f"  {name}: {shape.describe()}" for name, shape in sorted(option.keys.items())]
        else:
            lines.append(f"{key}: {option.describe()}")
    return lines
