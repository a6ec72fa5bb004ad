"""Loading a vision-language model, writing enhanced prompts with it, releasing it.

One code path serves the real models and the tiny self-test one: `AutoModelForImageTextToText` and the model's own
processor. Qwen3-VL and Qwen3.5 processors are loaded through `ImageOnlyQwenVLProcessor`: in transformers 5 their
processor also wants a video processor, which cannot be built without torchvision (not installed on CPU machines);
the image-only subclass loads the image processor, the tokenizer and the chat template. Other models use
`AutoProcessor`.

Prompts come from users (the API included): the chat template is applied with `sanitize_control_tokens=True`, so
text such as `<|im_start|>` or `<|image_pad|>` in a prompt stays text and cannot open a turn or fake an image.
Images are scaled down to `prompts.MAX_IMAGE_PIXELS` before the processor sees them. Sampling is seeded per
prompt inside `torch.random.fork_rng`, so a prompt's text depends on its seed and inputs only, and the global
random state of the process is left as it was.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from framepack.enhancer.processor import ImageOnlyQwenVLProcessor
from framepack.enhancer.prompts import clean_answer, user_message
from framepack.enhancer.source import EnhancerSource, EnhancerUnavailableError
from framepack.models.load_lock import LOAD_LOCK
from framepack.models.quantize import module_bytes, quantization_missing
from framepack.models.tiny import is_self_test_folder

logger = logging.getLogger(__name__)

QWEN_VL_TYPES = ("qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe")  # configs whose processor is Qwen3VLProcessor
# Kept in float when the language model is quantized: the vision tower (Qwen: model.visual; Gemma and LLaVA-like
# models: model.vision_tower and the projector) and the output head. transformers matches these as prefixes.
KEEP_IN_FLOAT = ["model.visual", "model.vision_tower", "model.multi_modal_projector", "lm_head"]
LOAD_ERRORS = (OSError, ValueError, KeyError)
SAMPLING = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20}
MIN_NEW_TOKENS = 16  # a real answer is longer; it keeps a model from answering nothing


@dataclass
class LoadedVLM:
    """A loaded enhancer: the model on its device, its processor and what it is."""

    model: torch.nn.Module
    processor: Any
    source: EnhancerSource
    self_test: bool
    weight_bytes: int  # of the model's parameters and buffers, as loaded (quantized ones by their storage)
    template_variables: dict[str, Any]  # for the chat template: enable_thinking=False where it has the switch

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def inputs(self, prompt: str, image: Image.Image | None, instructions: str) -> dict[str, Any]:
        """The model's inputs for one prompt, on its device: the system turn (`instructions`), the user turn (the
        image, when there is one, and the prompt), the assistant turn opened. Control tokens in the texts stay
        text."""
        user: list[dict[str, Any]] = [{"type": "image", "image": image}] if image is not None else []
        user.append({"type": "text", "text": user_message(prompt)})
        messages = [
            {"role": "system", "content": [{"type": "text", "text": instructions}]},
            {"role": "user", "content": user},
        ]
        inputs = self.processor.apply_chat_template(
            messages,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            sanitize_control_tokens=True,
            **self.template_variables,
        )
        device = self.device
        inputs = {name: value.to(device) if torch.is_tensor(value) else value for name, value in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        return inputs

    def write(self, prompt: str, image: Image.Image | None, instructions: str, seed: int, max_tokens: int) -> str:
        """The enhanced text for one prompt (cleaned by `prompts.clean_answer`; may be empty)."""
        inputs = self.inputs(prompt, image, instructions)
        device = self.device
        prompt_length = inputs["input_ids"].shape[1]
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            torch.manual_seed(seed)
            output = self.model.generate(
                **inputs,
                max_new_tokens=max_tokens,
                min_new_tokens=min(MIN_NEW_TOKENS, max_tokens),
                **SAMPLING,
            )
        return clean_answer(self.processor.decode(output[0, prompt_length:], skip_special_tokens=True))


def model_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 on a GPU that has it (float16 otherwise), float32 on the CPU."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_vlm(
    source: EnhancerSource,
    device: torch.device,
    quantize: str = "none",
    cache_dir: str | None = None,
) -> LoadedVLM:
    """Load the model and its processor (hub repos from the cache only: `check_enhancer` passed), quantize the
    language model when asked (optimum-quanto, on the CPU; the vision tower stays in float), then move it to
    `device`. EnhancerUnavailableError when the files do not load."""
    start = time.perf_counter()
    options: dict[str, Any] = {} if source.is_local else {"local_files_only": True, "cache_dir": cache_dir}
    model_options: dict[str, Any] = {"dtype": model_dtype(device)}
    if quantize != "none":
        missing = quantization_missing()
        if missing is not None:
            raise EnhancerUnavailableError(missing.replace("quantize=... in the model recipe", "enhance_quantize"))
        from transformers import QuantoConfig

        model_options["quantization_config"] = QuantoConfig(weights=quantize, modules_to_not_convert=KEEP_IN_FLOAT)
    try:
        with LOAD_LOCK:  # from_pretrained is not thread-safe (several workers in one process)
            config = AutoConfig.from_pretrained(source.path, **options)
            processor_class = ImageOnlyQwenVLProcessor if config.model_type in QWEN_VL_TYPES else AutoProcessor
            processor = processor_class.from_pretrained(source.path, **options)
            model = AutoModelForImageTextToText.from_pretrained(source.path, **options, **model_options)
    except LOAD_ERRORS as error:
        raise EnhancerUnavailableError(_load_failure(source, error)) from error
    model.eval().requires_grad_(False)
    model.to(device)
    self_test = source.self_test or (source.is_local and is_self_test_folder(source.path))
    # models that can reason first (Qwen3.5) have a switch in their chat template; their answer is the prompt only
    thinking = "enable_thinking" in str(getattr(processor, "chat_template", "") or "")
    loaded = LoadedVLM(
        model, processor, source, self_test, module_bytes(model), {"enable_thinking": False} if thinking else {}
    )
    logger.info(
        "loaded the enhancer %s (%s, %.1f MB on %s%s) in %.2f s",
        source.describe(),
        type(model).__name__,
        loaded.weight_bytes / 2**20,
        device,
        f", {quantize}" if quantize != "none" else "",
        time.perf_counter() - start,
    )
    if self_test:
        logger.warning("the enhancer is the SELF-TEST model: random weights, its text is noise")
    return loaded


def release(device: torch.device) -> None:
    """After the last reference to a loaded model is dropped: collect it and return its memory to the device."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _load_failure(source: EnhancerSource, error: BaseException) -> str:
    reason = " ".join(f"{type(error).__name__}: {error}".split())[:600]
    message = f"enhancer {source.name} did not load from {source.describe()}: {reason}."
    try:
        import torchvision  # noqa: F401
    except ImportError:
        if "video" in str(error).lower() or "torchvision" in str(error).lower():
            message += (
                " Its processor needs torchvision, which is not installed; use a Qwen3-VL or Qwen3.5 model (loaded "
                "without it) or install torchvision for your torch."
            )
    return message
