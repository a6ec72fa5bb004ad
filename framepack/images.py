"""Input images: decode a path or base64 string, normalise its mode, fit it to the bucket.

Decoding and fitting need only PIL and numpy, so planning reads images without torch; the two conversions to and
from model tensors import torch inside themselves (their callers hold tensors, so torch is loaded by then).
"""

from __future__ import annotations

import base64
import binascii
import io
import os
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from framepack.errors import FieldError
from framepack.request import PATH_CHECK_LENGTH

if TYPE_CHECKING:
    import torch

MAX_IMAGE_PIXELS = 64_000_000


class ImageInputError(FieldError):
    """An image field that cannot be used."""


def is_file_path(source: str) -> bool:
    """True for an existing file path; base64 data (long, or not a path at all) is never mistaken for one."""
    return len(source) < PATH_CHECK_LENGTH and os.path.isfile(source)


def _image_bytes(source: str, field: str) -> bytes:
    if source.startswith("data:"):
        _, _, source = source.partition(",")
    elif is_file_path(source):
        with open(source, "rb") as handle:
            return handle.read()
    try:
        return base64.b64decode("".join(source.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ImageInputError(field, "not an existing file path nor valid base64 image data") from None


def _decode(source: str, field: str) -> Image.Image:
    """The image as stored, upright per its EXIF orientation."""
    try:
        image = Image.open(io.BytesIO(_image_bytes(source, field)))
        if image.width * image.height > MAX_IMAGE_PIXELS:
            raise ImageInputError(field, f"image of {image.width}x{image.height} exceeds {MAX_IMAGE_PIXELS} pixels")
        image.load()
    except UnidentifiedImageError:
        raise ImageInputError(field, "not a readable image (PNG, JPEG, WebP, ...)") from None
    except (OSError, Image.DecompressionBombError) as error:
        raise ImageInputError(field, f"cannot decode image ({error})") from None
    return ImageOps.exif_transpose(image)


def load_image(source: str, field: str = "init_image") -> Image.Image:
    """Decode to an 8-bit RGB image upright per its EXIF orientation.

    Transparency is composited on white, 16-bit and float images are scaled to 8 bits, CMYK/palette/grayscale
    are converted, so every face hands the engine the same kind of picture.
    """
    image = _eight_bit(_decode(source, field))
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")


def load_mask(source: str, field: str) -> Image.Image:
    """A mask image as 8-bit grayscale ('L'; 255 = kept, 0 = ignored), upright; transparency counts as black."""
    image = _eight_bit(_decode(source, field))
    if image.mode in ("RGBA", "LA", "P", "PA"):
        image = Image.alpha_composite(Image.new("RGBA", image.size, (0, 0, 0, 255)), image.convert("RGBA"))
    return image.convert("L")


def alpha_mask(source: str, field: str) -> Image.Image | None:
    """The alpha channel of an image as a mask ('L', 255 = opaque), upright; None when it has no transparency."""
    image = _decode(source, field)
    if image.mode == "P" and "transparency" not in image.info:
        return None
    if image.mode not in ("RGBA", "LA", "P", "PA"):
        return None
    return image.convert("RGBA").getchannel("A")


def latent_mask(mask: Image.Image, width: int, height: int, scale: int) -> np.ndarray:
    """A mask fitted to the bucket like its image (cover and centre-crop), then resized with Lanczos to the latent
    grid (width/scale x height/scale): float32 in [0, 1], [h, w]."""
    fitted = Image.fromarray(fit_to_bucket(mask.convert("L"), width, height))
    small = fitted.resize((width // scale, height // scale), Image.LANCZOS)
    return np.asarray(small, dtype=np.float32) / 255.0


def _eight_bit(image: Image.Image) -> Image.Image:
    """16-bit and float images scaled to 8 bits; others as they are."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(array / _white_level(image.mode, array) * 255.0 + 0.5, 0, 255).astype(np.uint8))
    return image


def _white_level(mode: str, array: np.ndarray) -> float:
    """The value that means white: 16-bit modes 65535; 32-bit int and float guessed from their range."""
    peak = float(array.max(initial=0))
    if mode.startswith("I;16") or peak > 255:
        return 65535.0
    if mode == "F" and peak <= 1.0:
        return 1.0
    return 255.0


def fit_to_bucket(image: Image.Image, width: int, height: int) -> np.ndarray:
    """Scale to cover (width, height) with Lanczos and crop the centre, as the original FramePack does."""
    if image.size == (width, height):
        return np.asarray(image)
    scale = max(width / image.width, height / image.height)
    resized = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
    left = (resized.width - width) / 2
    top = (resized.height - height) / 2
    return np.asarray(resized.crop((left, top, left + width, top + height)))


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> float32 [1, 3, H, W] in [-1, 1]."""
    import torch

    return torch.from_numpy(np.array(pixels, dtype=np.uint8)).float().div(127.5).sub(1.0).permute(2, 0, 1)[None]


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """float [..., 3, H, W] in [-1, 1] -> uint8 [..., H, W, 3] (rounded, clipped)."""
    import torch

    array = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return array.movedim(-3, -1).cpu().numpy()
