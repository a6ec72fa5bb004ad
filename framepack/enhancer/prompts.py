"""What the enhancer is asked, and what is kept of its answer. No torch here.

Each distinct section prompt of a plan (the request's prompt joined with the section's line, LoRA tags removed) is
enhanced once, seeing the image its first section (in time order) starts from: the section's keyframe when it has
one, else the init image, else no image (text-to-video: the model works from the text alone). The request's
`enhanced_prompts` maps each section prompt to the text that is encoded instead; prompts it already lists are not
enhanced again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from PIL import Image

from framepack.images import load_image
from framepack.models.lora import parse_lora_tags
from framepack.plan import Plan
from framepack.request import MAX_PROMPT_LENGTH, GenerateRequest

MAX_IMAGE_PIXELS = 640 * 640  # an image is scaled down to this before the model sees it (Qwen3-VL: <= 400 tokens)

DEFAULT_INSTRUCTIONS = (
    "You write prompts for an image-to-video model. You are given the first frame of a short video (when there is "
    "one) and the user's idea for it. Write one paragraph of 60 to 120 words describing the video: the subject as "
    "it appears in the image, what moves and how, with concrete verbs, over a few seconds, the camera (static, "
    "slow push-in, pan, tracking shot...), the setting, the lighting and the mood. Keep everything the image shows "
    "consistent: the same subject, clothes, colours and place. Follow the idea exactly and add detail, not new "
    "events. Without an image, imagine a fitting first frame from the idea. Write plain prose in the present "
    "tense; no lists, headings, quotes or preamble. Answer with the prompt only."
)

THINKING = re.compile(r"<think>.*?(</think>|$)", re.DOTALL)
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class EnhanceItem:
    """One distinct section prompt to enhance: its text, the sections (time order) that use it and the image
    their first section starts from (`image_field` names it: init_image, keyframes.<index>, or None)."""

    prompt: str
    sections: tuple[int, ...]
    image_source: str | None
    image_field: str | None

    def image(self) -> Image.Image | None:
        """The image, upright and scaled down to at most MAX_IMAGE_PIXELS (None without one)."""
        if self.image_source is None:
            return None
        return fit_pixels(load_image(self.image_source, self.image_field or "init_image"), MAX_IMAGE_PIXELS)


def distinct_prompts(request: GenerateRequest, plan: Plan) -> list[EnhanceItem]:
    """Every distinct section prompt of the plan, in time order of its first section, with its image."""
    sections: dict[str, list[int]] = {}
    for section in plan.sections:
        sections.setdefault(section.prompt, []).append(section.index)
    items = []
    for prompt, indices in sections.items():
        first = plan.sections[indices[0]]
        if first.keyframe is not None:
            source, field = request.keyframes[first.keyframe], f"keyframes.{first.keyframe}"
        else:
            source, field = request.init_image, "init_image" if request.init_image else None
        items.append(EnhanceItem(prompt, tuple(indices), source or None, field))
    return items


def pending_prompts(request: GenerateRequest, plan: Plan) -> list[EnhanceItem]:
    """The distinct section prompts the request has no enhanced text for."""
    return [item for item in distinct_prompts(request, plan) if item.prompt not in request.enhanced_prompts]


def encoded_prompt(request: GenerateRequest, prompt: str) -> str:
    """The text encoded for a section prompt: its enhanced text when the request has one, else itself."""
    return request.enhanced_prompts.get(prompt, prompt)


def instructions(request: GenerateRequest) -> str:
    """The system prompt: the request's instructions, else the built-in ones."""
    return request.enhance_instructions.strip() or DEFAULT_INSTRUCTIONS


def user_message(prompt: str) -> str:
    return f"The idea: {prompt}" if prompt.strip() else "The idea: (none given; describe a fitting short video)"


def clean_answer(text: str) -> str:
    """The model's answer as one paragraph of plain text: reasoning (`<think>...`) dropped, control characters
    and line breaks made spaces, LoRA tags removed (LoRAs come from the prompt and section lines), surrounding
    quotes removed, at most MAX_PROMPT_LENGTH characters. May be empty."""
    text = THINKING.sub(" ", text)
    text = CONTROL.sub(" ", text)
    text, _ = parse_lora_tags(text, [])
    text = " ".join(text.split())
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text[:MAX_PROMPT_LENGTH].strip()


def fit_pixels(image: Image.Image, max_pixels: int) -> Image.Image:
    """`image` scaled down (aspect kept) to at most `max_pixels` pixels; smaller images are left as they are."""
    pixels = image.width * image.height
    if pixels <= max_pixels:
        return image
    scale = (max_pixels / pixels) ** 0.5
    size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)
