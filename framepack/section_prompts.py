"""Section prompts: the syntaxes users write, read into one prompt line per section (in time order).

One text holds one syntax; mixing is refused.

- `lines`: one suffix per line. Section `i` of `n` takes line `floor(i * lines / n)`.
- `timestamps`: `[2.5s] text`, `[2.5] text`, `[1:02.5] text`. Each section takes the latest line at or before its
  middle (the earliest line when none is).
- `studio` (FramePack-Studio): `[2s: text]` runs from 2 s until the next entry starts, `[2s-4s: text]` from 2 s to 4 s.
  Times snap to the nearest section boundary. A section that no entry covers gets no suffix, and where two entries
  overlap the one that starts later wins.
- `musubi` (musubi-tuner): `index:text` entries separated by `;;;`. `a-b:text` names sections a to b (inclusive),
  `-1:text` the last section (negative indices count from the end and win over positive ones). A section that no
  entry names takes the entry of the earliest named section; of two entries for the same section the later wins.

Indices and times are always in time order, whatever the variant's generation order. Text that looks like one of these
syntaxes but does not parse (`[2.5x] jumping`, `2:jumping` without `;;;`, `[3s-1s: a]`) is refused, naming its
line, so that it never silently becomes prompt text. Nothing here imports torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from framepack.errors import PlanError

Syntax = Literal["none", "lines", "timestamps", "studio", "musubi"]
FIELD = "section_prompts"
MUSUBI_SEPARATOR = ";;;"

TIMESTAMP = re.compile(r"^\[\s*(?:(\d+):)?(\d+(?:\.\d+)?)\s*s?\s*\]\s*(.*)$", re.DOTALL)
STUDIO = re.compile(r"^\[\s*(\d+(?:\.\d+)?)\s*s\s*(?:-\s*(\d+(?:\.\d+)?)\s*s\s*)?:\s*(.*?)\s*\]$", re.DOTALL)
TIME_LIKE = re.compile(r"^\[\s*\d")  # a line that starts like a timestamp
MUSUBI_ENTRY = re.compile(r"^(-?\d+)(?:\s*-\s*(\d+))?\s*:(.*)$", re.DOTALL)
MUSUBI_LIKE = re.compile(r"^-?\d+(?:\s*-\s*\d+)?\s*:\s*[^\d\s]")  # `2:jumping`, not `1:1 scale model`
TIME_FORMS = "'[2.5s] text', '[2.5s: text]' or '[2s-4s: text]'"


@dataclass(frozen=True)
class PromptLine:
    text: str
    time: float | None  # seconds, for the timestamped form


@dataclass(frozen=True)
class SectionPrompts:
    """What a section_prompts text says: its syntax, its lines or entries (a section's `prompt_line` indexes
    `lines`) and the line of every section in time order (None: no suffix)."""

    syntax: Syntax
    lines: list[str] = field(default_factory=list)
    chosen: list[int | None] = field(default_factory=list)

    @property
    def unused(self) -> list[int]:
        """Lines or entries that no section takes."""
        return sorted(set(range(len(self.lines))) - {index for index in self.chosen if index is not None})

    def unused_warning(self, sections: int) -> str | None:
        if not self.unused:
            return None
        listed = ", ".join(str(index + 1) for index in self.unused)
        if self.syntax in ("lines", "timestamps"):
            return f"{FIELD}: {len(self.lines)} lines for {sections} sections; unused lines {listed}"
        return f"{FIELD}: unused entries {listed} (they name or cover no section of the {sections})"


def quoted(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def refuse(where: str, text: str, problem: str) -> PlanError:
    return PlanError(FIELD, f"{where} {quoted(text)} {problem}")


def non_empty_lines(text: str) -> list[tuple[int, str]]:
    """(1-based line number, stripped line) of every non-empty line."""
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1) if line.strip()]


def line_kind(number: int, line: str) -> str:
    """'studio', 'timestamp', 'plain'; a line that looks like a timestamp or a musubi entry and is neither is
    refused."""
    if STUDIO.match(line):
        return "studio"
    match = TIMESTAMP.match(line)
    if match:
        if match.group(1) is not None and float(match.group(2)) >= 60:
            raise refuse(f"line {number}", line, "has a [minutes:seconds] time with 60 or more seconds")
        return "timestamp"
    if TIME_LIKE.match(line):
        raise refuse(f"line {number}", line, f"looks like a timestamp but does not parse; write {TIME_FORMS}")
    if MUSUBI_LIKE.match(line):
        raise refuse(
            f"line {number}",
            line,
            "looks like musubi-tuner's index:text; separate the entries with ';;;' (0:walking;;;2:jumping), or "
            "leave out the index",
        )
    return "plain"


def parse_section_prompts(text: str) -> list[PromptLine]:
    """The `lines` and `timestamps` syntaxes: one entry per non-empty line (never split on commas); `[2.5s] text`,
    `[2.5] text`, `[1:02.5] text` give the timestamped form (sorted by time), which cannot be mixed with plain
    lines."""
    lines: list[PromptLine] = []
    for number, line in non_empty_lines(text):
        kind = line_kind(number, line)
        if kind == "studio":
            raise refuse(f"line {number}", line, "is FramePack-Studio's [time: text]; do not mix it with other lines")
        match = TIMESTAMP.match(line) if kind == "timestamp" else None
        if match:
            minutes, seconds, rest = match.groups()
            lines.append(PromptLine(rest.strip(), float(minutes or 0) * 60 + float(seconds)))
        else:
            lines.append(PromptLine(line, None))
    timed = [line.time is not None for line in lines]
    if any(timed) and not all(timed):
        raise PlanError(FIELD, "either every line has a [time] prefix or none does")
    if any(timed):
        times = [line.time for line in lines]
        if len(set(times)) != len(times):
            raise PlanError(FIELD, "two lines have the same timestamp")
        lines.sort(key=lambda line: line.time)
    return lines


def assign_lines(lines: list[PromptLine], midpoints: list[float]) -> list[int | None]:
    """Line index per section: evenly stretched (section i of n takes line floor(i*L/n)) for plain lines,
    the latest line at or before the section's middle for timestamped lines."""
    if not lines:
        return [None] * len(midpoints)
    if lines[0].time is None:
        count = len(midpoints)
        return [index * len(lines) // count for index in range(count)]
    chosen: list[int | None] = []
    for middle in midpoints:
        active = [index for index, line in enumerate(lines) if line.time <= middle]
        chosen.append(active[-1] if active else 0)
    return chosen


def snap(seconds: float, boundaries: list[float]) -> int:
    """Index of the section boundary nearest to `seconds` (the earlier one of two equally near)."""
    return min(range(len(boundaries)), key=lambda index: (abs(boundaries[index] - seconds), index))


def read_studio(text: str, boundaries: list[float]) -> SectionPrompts:
    """FramePack-Studio's `[2s: text]` and `[2s-4s: text]` over sections whose start times (and the video's end)
    are `boundaries`."""
    sections = len(boundaries) - 1
    entries: list[tuple[int, str, float, float | None]] = []  # (line number, text, start, end)
    for number, line in non_empty_lines(text):
        if line_kind(number, line) != "studio":
            raise refuse(
                f"line {number}", line, "is not FramePack-Studio's [time: text]; do not mix it with [time: text] lines"
            )
        start, end, words = STUDIO.match(line).groups()
        start_s, end_s = float(start), float(end) if end is not None else None
        if end_s is not None and end_s <= start_s:
            raise refuse(f"line {number}", line, "ends before it starts; write [start s-end s: text], start < end")
        if any(other[2] == start_s for other in entries):
            raise refuse(f"line {number}", line, "starts at the same time as an earlier line")
        entries.append((number, words.strip(), start_s, end_s))
    chosen: list[int | None] = [None] * sections
    by_start = sorted(range(len(entries)), key=lambda index: entries[index][2])
    for position, index in enumerate(by_start):
        _number, _words, start_s, end_s = entries[index]
        if end_s is None:
            end_s = entries[by_start[position + 1]][2] if position + 1 < len(by_start) else boundaries[-1]
        for section in range(snap(start_s, boundaries), snap(end_s, boundaries)):
            chosen[section] = index
    return SectionPrompts("studio", [entry[1] for entry in entries], chosen)


def read_musubi(text: str, sections: int) -> SectionPrompts:
    """musubi-tuner's `index:text;;;a-b:text;;;-1:text` over `sections` sections."""
    texts: list[str] = []
    positive: dict[int, int] = {}  # section -> entry
    negative: dict[int, int] = {}
    allowed = f"allowed 0..{sections - 1} or -{sections}..-1"
    for number, raw in enumerate(text.split(MUSUBI_SEPARATOR), 1):
        entry = raw.strip()
        if not entry:
            continue
        where = f"entry {number}"
        match = MUSUBI_ENTRY.match(entry)
        if not match:
            raise refuse(where, entry, "has no section index; write index:text, a-b:text or -1:text between ';;;'")
        first, last, words = match.groups()
        if not words.strip():
            raise refuse(where, entry, "has no text after its index")
        start = int(first)
        stop = int(last) if last is not None else start
        if last is not None and (start < 0 or stop < start):
            raise refuse(where, entry, "is not a range a-b with 0 <= a <= b")
        if not (-sections <= start < sections and stop < sections):
            raise refuse(where, entry, f"names a section that does not exist; {allowed}")
        index = len(texts)
        texts.append(words.strip())
        for section in range(start, stop + 1):
            (negative if section < 0 else positive)[section % sections if section < 0 else section] = index
    named = {**positive, **negative}  # a negative index wins over a positive one
    if not named:
        return SectionPrompts("musubi", texts, [None] * sections)
    fallback = named[min(named)]
    return SectionPrompts("musubi", texts, [named.get(section, fallback) for section in range(sections)])


def read_section_prompts(text: str, boundaries: list[float], midpoints: list[float]) -> SectionPrompts:
    """Which syntax `text` is written in and the line of every section. `boundaries`: the sections' start times and
    the video's end (seconds); `midpoints`: the sections' middles."""
    if not text.strip():
        return SectionPrompts("none", [], [None] * len(midpoints))
    if MUSUBI_SEPARATOR in text:
        return read_musubi(text, len(midpoints))
    kinds = {line_kind(number, line) for number, line in non_empty_lines(text)}
    if "studio" in kinds:
        return read_studio(text, boundaries)
    lines = parse_section_prompts(text)
    syntax: Syntax = "timestamps" if lines[0].time is not None else "lines"
    return SectionPrompts(syntax, [line.text for line in lines], assign_lines(lines, midpoints))


def looks_like_section_prompts(prompt: str) -> bool:
    """Whether a prompt holds what reads as section prompts (a `[2s: text]` entry or `;;;`)."""
    return MUSUBI_SEPARATOR in prompt or any(STUDIO.match(line) for _number, line in non_empty_lines(prompt))
