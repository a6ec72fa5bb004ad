"""Field names of SD.Next's FramePack API (and the sd-extension-framepack peer) mapped onto ours.

Clients written for `POST /sdapi/v1/framepack` of SD.Next (`modules/framepack/framepack_api.py`, whose
`ReqFramepack` also serves the extension's `create-video.py`) keep working: each of their fields that means
something here is renamed or converted to the one request model's field (`use_teacache` -> `cache`, the peer's
attention names -> ours, its VLM prompt enhancer `vlm_*` -> `enhance*`). Peer fields whose features do not exist
here (CFGZero, styles, VAE choices, system prompts) are accepted only with their "off" value; any other value is
refused with 422 naming the field, as is any unknown field -- nothing is ignored silently.

Null values: the peer declares every field optional, so a null peer field means "the default" (a null `seed`
means random, as in the peer).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from framepack.errors import FieldError

# peer name -> our name, same value
RENAMES: dict[str, str] = {
    "section_prompt": "section_prompts",
    "start_weight": "init_strength",
    "end_weight": "end_strength",
    "vision_weight": "vision_strength",
    "cfg_distilled": "guidance",
    "latent_ws": "latent_window_size",
    "mp4_fps": "fps",
    "mp4_codec": "codec",
    "mp4_opt": "codec_options",
    "mp4_ext": "container",
    "mp4_interpolate": "interpolate",
    "mp4_sf": "save_raw",
}

VARIANT_VALUES: dict[str, str] = {
    "bi-directional": "bidirectional",
    "bidirectional": "bidirectional",
    "forward-only": "f1",
    "forward": "f1",
    "f1": "f1",
}


def _frames(value: Any) -> tuple[str, Any]:
    """mp4_frames: the peer saves every frame as JPEG when true."""
    if not isinstance(value, bool):
        raise FieldError("mp4_frames", "must be true or false")
    return "save_frames", "jpeg" if value else "none"


def _teacache(value: Any) -> tuple[str, Any]:
    """use_teacache: the peer's TeaCache switch; ours is one of several caches."""
    if not isinstance(value, bool):
        raise FieldError("use_teacache", "must be true or false")
    return "cache", "teacache" if value else "none"


# the peer's attention names (SD.Next's choices, any case) -> ours; ours pass through unchanged
ATTENTION_VALUES = {
    "default": "sdpa",
    "scaled-dot-product": "sdpa",
    "sdp": "sdpa",
    "flash attention": "flash",
    "sage attention": "sage",
}


def _attention(value: Any) -> tuple[str, Any]:
    if isinstance(value, str):
        return "attention", ATTENTION_VALUES.get(value.strip().lower(), value.strip().lower())
    return "attention", value  # the request model refuses it by name


def _vlm_enhance(value: Any) -> tuple[str, Any]:
    """vlm_enhance: the peer's prompt enhancer switch; ours is enhance off / on / require."""
    if not isinstance(value, bool):
        raise FieldError("vlm_enhance", "must be true or false")
    return "enhance", "on" if value else "off"


def _vlm_model(value: Any) -> tuple[str, Any] | None:
    """vlm_model: the enhancer's model, as a hub repo id here ('' = the default)."""
    if not isinstance(value, str):
        raise FieldError("vlm_model", "must be a hub repo id such as 'Qwen/Qwen3-VL-2B-Instruct'")
    return ("enhancer", value.strip()) if value.strip() else None


def _vlm_system_prompt(value: Any) -> tuple[str, Any] | None:
    """vlm_system_prompt: the enhancer's instructions ('' = the built-in ones)."""
    if not isinstance(value, str):
        raise FieldError("vlm_system_prompt", "must be text")
    return ("enhance_instructions", value) if value.strip() else None


# peer name -> converter returning (our name, value), or None when the value means "the default"
CONVERTED: dict[str, Callable[[Any], tuple[str, Any] | None]] = {
    "mp4_frames": _frames,
    "use_teacache": _teacache,
    "attention": _attention,
    "vlm_enhance": _vlm_enhance,
    "vlm_model": _vlm_model,
    "vlm_system_prompt": _vlm_system_prompt,
}

# peer features without an equivalent here -> the values that mean "off" (accepted, as they change nothing)
INERT: dict[str, tuple[Any, ...]] = {
    "system_prompt": ("",),
    "optimized_prompt": (False,),  # SD.Next's alternative system prompt; off (False) = the original template, used here
    "styles": ([],),
    "use_cfgzero": (False,),
    "vae_type": ("Local", "Full"),
}

# fields both APIs share whose null means "the default" in the peer
PEER_NULLABLE = {
    "prompt",
    "negative_prompt",
    "variant",
    "resolution",
    "duration",
    "steps",
    "cfg_scale",
    "cfg_rescale",
    "shift",
    "init_image",
    "end_image",
}

# (SD.Next's field, ours): documentation, shown in the OpenAPI description of the request body
ALIAS_TABLE: list[tuple[str, str]] = (
    [(peer, ours) for peer, ours in RENAMES.items()]
    + [("mp4_frames", "save_frames (true -> 'jpeg', false -> 'none')"), ("mp4_video", "codec ('none' when false)")]
    + [("use_teacache", "cache (true -> 'teacache', false -> 'none')"), ("attention 'Default'", "attention 'sdpa'")]
    + [
        ("vlm_enhance", "enhance (true -> 'on', false -> 'off')"),
        ("vlm_model", "enhancer (a hub repo id)"),
        ("vlm_system_prompt", "enhance_instructions"),
    ]
    + [
        ("variant 'bi-directional' / 'forward-only'", "variant 'bidirectional' / 'f1'"),
        ("seed null or -1", "seed -1 (random)"),
    ]
)


def translate(payload: dict[str, Any]) -> dict[str, Any]:
    """A request in our names, the peer's names or a mix -> our names. Raises FieldError for a field given
    twice (under both names), an inert peer field with a value that would need a missing feature, or a bad
    variant name. Unknown fields pass through for the request model to refuse by name."""
    result: dict[str, Any] = {}
    origin: dict[str, str] = {}  # our name -> the name the client used

    def put(name: str, value: Any, given_as: str) -> None:
        if name in result:
            raise FieldError(given_as, f"sets {name!r}, which is also given as {origin[name]!r}; send one of them")
        result[name], origin[name] = value, given_as

    for key, value in payload.items():
        if key in RENAMES:
            if value is not None:
                put(RENAMES[key], value, key)
        elif key in CONVERTED:
            converted = CONVERTED[key](value) if value is not None else None
            if converted is not None:
                put(*converted, key)
        elif key == "mp4_video":
            if value is not None and not isinstance(value, bool):
                raise FieldError("mp4_video", "must be true or false")
        elif key in INERT:
            if value is not None and value not in INERT[key]:
                allowed = " or ".join(repr(v) for v in (None, *INERT[key]))
                raise FieldError(
                    key, f"is an SD.Next FramePack option without an equivalent here; leave it out or send {allowed}"
                )
        elif key == "seed" and value is None:
            put("seed", -1, key)
        elif key in PEER_NULLABLE and value is None:
            continue
        else:
            put(key, value, key)

    if payload.get("mp4_video") is False:  # as in the peer: no video file whatever mp4_codec says
        result["codec"] = "none"
    variant = result.get("variant")
    if isinstance(variant, str):
        if variant.strip().lower() not in VARIANT_VALUES:
            names = ", ".join(repr(name) for name in VARIANT_VALUES)
            raise FieldError("variant", f"{variant!r} is not one of {names}")
        result["variant"] = VARIANT_VALUES[variant.strip().lower()]
    return result
