"""Input images: every mode becomes upright 8-bit RGB; paths and base64 work; bad data names the field."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from framepack.images import ImageInputError, fit_to_bucket, load_image, to_tensor, to_uint8


def encoded(image: Image.Image, fmt: str = "PNG", **save) -> str:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return base64.b64encode(buffer.getvalue()).decode()


def test_path_base64_and_data_url_give_the_same_pixels(tmp_path):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8))
    image.save(tmp_path / "a.png")
    data = encoded(image)
    for source in (str(tmp_path / "a.png"), data, f"data:image/png;base64,{data}"):
        loaded = load_image(source)
        assert loaded.mode == "RGB" and np.array_equal(np.asarray(loaded), np.asarray(image))


def test_rgba_is_composited_on_white():
    pixels = np.zeros((4, 4, 4), np.uint8)
    pixels[..., 0] = 200
    pixels[:, :2, 3] = 255  # left half opaque red, right half fully transparent
    rgb = np.asarray(load_image(encoded(Image.fromarray(pixels, "RGBA"))))
    assert rgb[0, 0].tolist() == [200, 0, 0] and rgb[0, 3].tolist() == [255, 255, 255]


def test_grayscale_16bit_palette_and_cmyk_convert():
    gray = load_image(encoded(Image.fromarray(np.full((3, 3), 77, np.uint8), "L")))
    assert np.asarray(gray)[0, 0].tolist() == [77, 77, 77]
    deep = load_image(encoded(Image.fromarray(np.full((3, 3), 65535, np.uint16))))
    assert np.asarray(deep)[0, 0].tolist() == [255, 255, 255]
    dark = load_image(encoded(Image.fromarray(np.full((3, 3), 200 * 257, np.uint16))))  # 16-bit, not 8-bit, scale
    assert np.asarray(dark)[0, 0].tolist() == [200, 200, 200]
    unit_float = load_image(encoded(Image.fromarray(np.full((3, 3), 0.5, np.float32)), "TIFF"))
    assert np.asarray(unit_float)[0, 0].tolist() == [128, 128, 128]
    palette = Image.new("P", (3, 3))
    palette.putpalette([10, 20, 30] * 256)
    assert np.asarray(load_image(encoded(palette)))[0, 0].tolist() == [10, 20, 30]
    cmyk = load_image(encoded(Image.new("CMYK", (3, 3), (0, 255, 255, 0)), "JPEG"))
    red, green, blue = np.asarray(cmyk)[1, 1].tolist()
    assert red > 200 and green < 60 and blue < 60


def test_exif_rotation_is_applied():
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    loaded = load_image(encoded(image, "JPEG", exif=exif.tobytes()))
    assert loaded.size == (20, 40)


@pytest.mark.parametrize(
    "source", ["not-an-image-or-path", base64.b64encode(b"plain text").decode(), "data:image/png;base64,@@@"]
)
def test_bad_sources_name_the_field(source):
    with pytest.raises(ImageInputError, match="^end_image: ") as error:
        load_image(source, "end_image")
    assert error.value.field == "end_image"


def test_fit_to_bucket_covers_and_crops_the_centre():
    pixels = np.zeros((100, 200, 3), np.uint8)
    pixels[:, 50:150] = 255  # a white centre band half as wide as the image
    fitted = fit_to_bucket(Image.fromarray(pixels), 64, 64)
    assert fitted.shape == (64, 64, 3)
    assert fitted[:, 2:-2].min() > 200  # the crop kept the centre


def test_tensor_round_trip_is_exact():
    pixels = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    tensor = to_tensor(pixels)
    assert tensor.shape == (1, 3, 5, 7) and tensor.min() >= -1 and tensor.max() <= 1
    assert np.array_equal(to_uint8(tensor)[0], pixels)
