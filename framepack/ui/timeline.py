"""The section timeline picture: each section's time span, its prompt line, its keyframe and generation order."""

from __future__ import annotations

import colorsys

from PIL import Image, ImageDraw, ImageFont

from framepack.plan import Plan

WIDTH = 640  # about the width of the tab's right column, so the picture is shown near 1:1
HEIGHT = 156
MARGIN = 12
BAR_TOP = 30
BAR_HEIGHT = 60
FONT_SIZE = 15
BACKGROUND = (24, 24, 28)
TEXT = (235, 235, 235)
MUTED = (150, 150, 160)
KEYFRAME = (255, 200, 40)


def section_colour(index: int, count: int) -> tuple[int, int, int]:
    """A distinct colour per section (hues spread over the sections in time order)."""
    hue = (index / max(1, count)) * 0.85
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.55, 0.78)
    return round(red * 255), round(green * 255), round(blue * 255)


def render_timeline(plan: Plan, width: int = WIDTH) -> Image.Image:
    """Sections left to right in time order, widths proportional to their time span. Inside each: `#index`,
    `gen k` (its place in generation order, 1 = generated first); below: the prompt line it uses (`L n`) and a
    yellow `K` mark when a keyframe conditions it. The bottom line gives the generation order."""
    image = Image.new("RGB", (width, HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=FONT_SIZE)
    total = max(plan.sections[-1].end_time if plan.sections else plan.duration, 1e-6)
    usable = width - 2 * MARGIN
    draw.text((MARGIN, 6), "0 s", fill=MUTED, font=font)
    end_label = f"{total:.2f} s"
    draw.text((width - MARGIN - draw.textlength(end_label, font=font), 6), end_label, fill=MUTED, font=font)
    count = len(plan.sections)
    for section in plan.sections:
        left = MARGIN + round(section.start_time / total * usable)
        right = MARGIN + round(section.end_time / total * usable)
        right = max(right, left + 1)
        draw.rectangle((left, BAR_TOP, right - 1, BAR_TOP + BAR_HEIGHT), fill=section_colour(section.index, count))
        if right - left > 2:
            draw.line((right - 1, BAR_TOP, right - 1, BAR_TOP + BAR_HEIGHT), fill=BACKGROUND)
        room = right - left - 6
        lines = [f"#{section.index}", f"gen {section.order + 1}"]
        for row, text in enumerate(lines):
            if draw.textlength(text, font=font) <= room:
                draw.text((left + 4, BAR_TOP + 6 + row * (FONT_SIZE + 4)), text, fill=(0, 0, 0), font=font)
        below = []
        if section.prompt_line is not None:
            below.append(f"L{section.prompt_line + 1}")
        if section.keyframe is not None:
            below.append(f"K{section.keyframe}")
        if section.connecting:
            below.append("loop")
        x = left + 2
        for text in below:
            if x + draw.textlength(text, font=font) > right:
                break
            draw.text((x, BAR_TOP + BAR_HEIGHT + 4), text, fill=KEYFRAME if text.startswith("K") else TEXT, font=font)
            x += draw.textlength(text, font=font) + 6
    order = " -> ".join(f"#{index}" for index in plan.generation_order)
    if draw.textlength(order, font=font) > usable:
        order = f"{plan.generation_order[0]} ... {plan.generation_order[-1]} ({count} sections)"
    draw.text((MARGIN, HEIGHT - FONT_SIZE - 6), f"generation order: {order}", fill=MUTED, font=font)
    return image
