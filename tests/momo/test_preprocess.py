"""momo.preprocess: hardened decoding of untrusted image bytes, and the numeric transform."""

from __future__ import annotations

import base64
import io
import pickle
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from momo.config import MoMoConfig, get_preset
from momo.preprocess import (
    DEFAULT_FORMATS,
    ImageDecodeError,
    ImageLimits,
    decode_base64_image,
    decode_image,
    load_image_file,
    preprocess_image,
    preprocess_images,
    to_rgb,
)
from tests.momo import bad_images
from tests.momo.bad_images import bad_image_codes, bad_image_corpus, good_image_corpus

CONFIG = get_preset("momo-test")  # image_size 16, mean = std = 0.5
IMAGENET = MoMoConfig(
    image_size=16, patch_size=4, image_mean=(0.485, 0.456, 0.406), image_std=(0.229, 0.224, 0.225)
)


def rgb_at(img: Image.Image, x: int, y: int) -> tuple[int, ...]:
    """The pixel at (x, y) as a tuple of ints (typed, unlike `Image.getpixel`)."""
    return tuple(int(v) for v in np.asarray(img)[y, x])


# --- the corpora ----------------------------------------------------------------------------------------


def test_corpus_codes_cover_every_bad_entry() -> None:
    assert set(bad_image_corpus()) == set(bad_image_codes())


@pytest.mark.parametrize("name", sorted(bad_image_codes()))
def test_bad_image_is_refused_with_its_code(name: str) -> None:
    data = bad_image_corpus()[name]
    start = time.perf_counter()
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data)
    assert time.perf_counter() - start < 1.0
    assert info.value.code == bad_image_codes()[name]
    assert str(info.value)  # a human-readable message


@pytest.mark.parametrize("name", sorted(good_image_corpus()))
def test_good_image_decodes_to_rgb_and_preprocesses(name: str) -> None:
    img = decode_image(good_image_corpus()[name])
    assert img.mode == "RGB"
    assert img.width >= 1 and img.height >= 1
    x = preprocess_image(img, CONFIG)
    assert x.shape == (3, 16, 16) and x.dtype == np.float32
    assert np.isfinite(x).all() and x.min() >= -1.0 - 1e-6 and x.max() <= 1.0 + 1e-6


def test_bad_images_are_refused_through_base64_too() -> None:
    for name, data in bad_image_corpus().items():
        with pytest.raises(ImageDecodeError) as info:
            decode_base64_image(base64.b64encode(data).decode())
        assert info.value.code == bad_image_codes()[name], name


# --- limits and decompression bombs ---------------------------------------------------------------------


def test_bomb_header_is_refused_before_pixels_are_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_load(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixel data must not be decoded for an over-limit image")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_load)
    # 20000×20000 trips Pillow's own hard limit; 8000×8000 is under Pillow's but over ours.
    for width, height in [(20_000, 20_000), (8_000, 8_000), (40_001, 1_000)]:
        data = bad_images.png_with_header_size(width, height)
        assert len(data) < 200
        start = time.perf_counter()
        with pytest.raises(ImageDecodeError) as info:
            decode_image(data)
        assert time.perf_counter() - start < 0.5
        assert info.value.code == "image_too_many_pixels"
        assert f"{width}" in str(info.value) or "pixels" in str(info.value)


def test_pixel_limit_is_configurable_and_inclusive() -> None:
    data = bad_images.encode(Image.new("RGB", (10, 10)), "PNG")
    assert decode_image(data, ImageLimits(max_pixels=100)).size == (10, 10)
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, ImageLimits(max_pixels=99))
    assert info.value.code == "image_too_many_pixels"


def test_pillow_bomb_warning_becomes_an_error_without_touching_globals() -> None:
    max_before = Image.MAX_IMAGE_PIXELS
    filters_before = list(warnings.filters)
    # 10000×10000 = 100 Mpx: above Pillow's warning threshold (≈89 Mpx), below its hard error.
    data = bad_images.png_with_header_size(10_000, 10_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning may escape either
        with pytest.raises(ImageDecodeError) as info:
            decode_image(data, ImageLimits(max_pixels=500_000_000))
    assert info.value.code == "image_too_many_pixels"
    assert max_before == Image.MAX_IMAGE_PIXELS
    assert list(warnings.filters) == filters_before


def test_byte_limit_is_checked_before_decoding() -> None:
    data = bad_images.encode(bad_images.noise_image((32, 32)), "PNG")
    assert decode_image(data, ImageLimits(max_bytes=len(data))).size == (32, 32)
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, ImageLimits(max_bytes=len(data) - 1))
    assert info.value.code == "image_too_large_bytes"
    # Default limit: 10 MiB. Garbage over it is refused on size, not sniffed.
    with pytest.raises(ImageDecodeError) as info:
        decode_image(b"\x00" * (10 * 1024 * 1024 + 1))
    assert info.value.code == "image_too_large_bytes"


def test_empty_bytes() -> None:
    for empty in (b"", bytearray(), memoryview(b"")):
        with pytest.raises(ImageDecodeError) as info:
            decode_image(empty)
        assert info.value.code == "image_empty"


def test_format_allow_list() -> None:
    tga = bad_images.encode(Image.new("RGB", (4, 4), (1, 2, 3)), "TGA")
    with pytest.raises(ImageDecodeError) as info:
        decode_image(tga)
    assert info.value.code == "image_unreadable"
    assert "PNG" in str(info.value)
    assert decode_image(tga, ImageLimits(formats=(*DEFAULT_FORMATS, "tga"))).getpixel((0, 0)) == (1, 2, 3)
    assert decode_image(tga, ImageLimits(formats=None)).size == (4, 4)


def test_limits_validate_themselves() -> None:
    with pytest.raises(ValueError):
        ImageLimits(max_bytes=0)
    with pytest.raises(ValueError):
        ImageLimits(max_pixels=0)
    with pytest.raises(ValueError):
        ImageLimits(formats=())
    with pytest.raises(ValueError, match="NOPE"):
        ImageLimits(formats=("PNG", "NOPE"))


def test_error_type_is_a_value_error_and_pickles_with_its_code() -> None:
    err = ImageDecodeError("too big", code="image_too_large_bytes")
    assert isinstance(err, ValueError)
    copy = pickle.loads(pickle.dumps(err))
    assert (str(copy), copy.code) == ("too big", "image_too_large_bytes")


# --- modes, frames, orientation -----------------------------------------------------------------------


def test_cmyk_jpeg_colours() -> None:
    img = decode_image(bad_images.cmyk_jpeg())
    assert img.mode == "RGB"
    red, blue = np.array(rgb_at(img, 2, 8)), np.array(rgb_at(img, 13, 8))
    np.testing.assert_allclose(red, [255, 0, 0], atol=12)
    np.testing.assert_allclose(blue, [0, 0, 255], atol=12)


def test_16bit_png_is_scaled_not_clipped() -> None:
    raw = Image.open(io.BytesIO(bad_images.grey16_png()))
    assert raw.mode.startswith("I;16")
    img = decode_image(bad_images.grey16_png())
    assert [rgb_at(img, i, 0) for i in range(3)] == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]


def test_32bit_and_float_modes() -> None:
    as_16bit = Image.fromarray(np.array([[0, 65535]], dtype=np.int32), mode="I")
    assert rgb_at(to_rgb(as_16bit), 1, 0) == (255, 255, 255)
    as_8bit = Image.fromarray(np.array([[0, 200]], dtype=np.int32), mode="I")
    assert rgb_at(to_rgb(as_8bit), 1, 0) == (200, 200, 200)
    unit_float = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), mode="F")
    assert [rgb_at(to_rgb(unit_float), i, 0)[0] for i in range(3)] == [0, 128, 255]
    odd_float = Image.fromarray(np.array([[-1.0, np.nan, 3.0]], dtype=np.float32), mode="F")
    assert [rgb_at(to_rgb(odd_float), i, 0)[0] for i in range(3)] == [0, 64, 255]


def test_palette_transparency_becomes_white() -> None:
    img = decode_image(bad_images.palette_transparent_png())
    assert [rgb_at(img, i, 0) for i in range(4)] == [(255, 255, 255), (0, 255, 0)] * 2


def test_alpha_is_composited_over_white() -> None:
    img = decode_image(bad_images.rgba_png())
    assert rgb_at(img, 0, 0) == (255, 255, 255)  # fully transparent black → white
    assert all(abs(v - 127) <= 1 for v in rgb_at(img, 1, 0))  # half-transparent black → grey
    la = Image.new("LA", (1, 1), (0, 0))
    assert rgb_at(to_rgb(la), 0, 0) == (255, 255, 255)


def test_other_modes_convert() -> None:
    for mode in ("1", "L", "P", "RGBX", "YCbCr", "HSV", "RGBa", "PA"):
        out = to_rgb(Image.new(mode, (3, 2)))
        assert (out.mode, out.size) == ("RGB", (3, 2)), mode
    rgb = Image.new("RGB", (2, 2))
    assert to_rgb(rgb) is rgb


def test_animated_gif_gives_first_frame() -> None:
    img = decode_image(bad_images.animated_gif())
    assert img.mode == "RGB" and img.size == (8, 8)
    assert rgb_at(img, 4, 4) == (255, 0, 0)


def test_exif_orientation_is_applied() -> None:
    img = decode_image(bad_images.exif_rotated_jpeg())
    assert img.size == (20, 40)  # stored 40×20, Orientation=6
    top, bottom = np.array(rgb_at(img, 10, 5)), np.array(rgb_at(img, 10, 34))
    np.testing.assert_allclose(top, [255, 0, 0], atol=20)
    np.testing.assert_allclose(bottom, [0, 0, 255], atol=20)


def test_corrupt_exif_does_not_reject_the_image() -> None:
    img = decode_image(bad_images.corrupt_exif_jpeg())
    assert img.size == (8, 8)


def test_one_by_one_image() -> None:
    img = decode_image(good_image_corpus()["tiny_1x1_png"])
    assert img.size == (1, 1)
    x = preprocess_image(img, CONFIG)
    assert x.shape == (3, 16, 16)
    expected = (np.array([7, 8, 9], dtype=np.float32) / np.float32(255) - np.float32(0.5)) / np.float32(0.5)
    np.testing.assert_allclose(x[:, 0, 0], expected, atol=1e-6)


# --- base64 -------------------------------------------------------------------------------------------


def _png_b64() -> tuple[bytes, str]:
    data = bad_images.encode(bad_images.noise_image((12, 10)), "PNG")
    return data, base64.b64encode(data).decode()


def test_base64_round_trip_raw_and_data_uri() -> None:
    data, b64 = _png_b64()
    expected = np.asarray(decode_image(data))
    for text in (
        b64,
        f"data:image/png;base64,{b64}",
        f"  DATA:image/PNG;BASE64,{b64}\n",
        f"data:;base64,{b64}",
        f"data:image/jpeg;charset=utf-8;base64,{b64}",  # a wrong subtype is harmless: content decides
        "\n".join(b64[i : i + 76] for i in range(0, len(b64), 76)),  # MIME line breaks
        b64.rstrip("="),  # missing padding
        base64.urlsafe_b64encode(data).decode(),
        f"data:image/png;base64,{b64.replace('+', '%2B').replace('/', '%2F')}",
    ):
        np.testing.assert_array_equal(np.asarray(decode_base64_image(text)), expected)


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("not base64 at all!", "invalid_base64"),
        ("abcde", "invalid_base64"),
        ("ab=c", "invalid_base64"),
        ("YWJj====", "invalid_base64"),
        ("ñañaña==", "invalid_base64"),
        ("", "image_empty"),
        ("   \n", "image_empty"),
        ("data:image/png;base64,", "image_empty"),
        ("data:image/png;base64", "invalid_data_uri"),
        ("data:image/png,iVBORw0KGgo=", "invalid_data_uri"),
        ("data:text/plain;base64,aGVsbG8=", "invalid_data_uri"),
        ("aGVsbG8gd29ybGQ=", "image_unreadable"),  # valid base64 of "hello world"
    ],
)
def test_invalid_base64(text: str, code: str) -> None:
    with pytest.raises(ImageDecodeError) as info:
        decode_base64_image(text)
    assert info.value.code == code


def test_base64_byte_limit_on_decoded_and_encoded_size() -> None:
    data, b64 = _png_b64()
    assert decode_base64_image(b64, ImageLimits(max_bytes=len(data))).size == (12, 10)
    with pytest.raises(ImageDecodeError) as info:
        decode_base64_image(b64, ImageLimits(max_bytes=len(data) - 1))
    assert info.value.code == "image_too_large_bytes"
    # The pre-check refuses a huge text without decoding it (even if it is not valid base64).
    start = time.perf_counter()
    with pytest.raises(ImageDecodeError) as info:
        decode_base64_image("!" * 20_000_000)
    assert info.value.code == "image_too_large_bytes"
    assert time.perf_counter() - start < 0.5


# --- files --------------------------------------------------------------------------------------------


def test_load_image_file(tmp_path: Path) -> None:
    good = tmp_path / "rotated.jpg"
    good.write_bytes(bad_images.exif_rotated_jpeg())
    assert load_image_file(good).size == (20, 40)
    assert load_image_file(str(good)).mode == "RGB"
    big = tmp_path / "big.png"
    big.write_bytes(bad_images.encode(bad_images.noise_image((32, 32)), "PNG"))
    with pytest.raises(ImageDecodeError) as info:
        load_image_file(big, ImageLimits(max_bytes=100))
    assert info.value.code == "image_too_large_bytes"
    bad = tmp_path / "bad.png"
    bad.write_bytes(bad_image_corpus()["truncated_png"])
    with pytest.raises(ImageDecodeError) as info:
        load_image_file(bad)
    assert info.value.code == "image_truncated"
    with pytest.raises(FileNotFoundError):
        load_image_file(tmp_path / "missing.png")


# --- the numeric transform -------------------------------------------------------------------------------


def test_normalisation_values_exact() -> None:
    white = Image.new("RGB", (5, 7), (255, 255, 255))
    black = Image.new("RGB", (16, 16), (0, 0, 0))
    mean = np.array(IMAGENET.image_mean, dtype=np.float32)
    std = np.array(IMAGENET.image_std, dtype=np.float32)
    x = preprocess_image(white, IMAGENET)
    assert x.shape == (3, 16, 16) and x.dtype == np.float32 and x.flags.c_contiguous
    for c in range(3):
        assert np.all(x[c] == (np.float32(1.0) - mean[c]) / std[c])
    y = preprocess_image(black, IMAGENET)
    for c in range(3):
        assert np.all(y[c] == -mean[c] / std[c])
    z = preprocess_image(white, CONFIG)  # mean = std = 0.5 → exactly 1.0
    assert np.all(z == 1.0)


def test_channel_order_is_rgb_and_layout_is_chw() -> None:
    img = Image.new("RGB", (16, 16), (255, 0, 0))
    img.paste((0, 0, 255), (0, 8, 16, 16))  # bottom half blue
    x = preprocess_image(img, CONFIG)
    np.testing.assert_array_equal(x[:, 0, 0], [1.0, -1.0, -1.0])
    np.testing.assert_array_equal(x[:, 15, 0], [-1.0, -1.0, 1.0])


def test_resize_squashes_non_square_images() -> None:
    img = Image.new("RGB", (64, 16), (0, 0, 0))
    img.paste((255, 255, 255), (32, 0, 64, 16))  # right half white
    x = preprocess_image(img, CONFIG)
    assert x.shape == (3, 16, 16)
    assert np.all(x[:, :, :6] == -1.0) and np.all(x[:, :, 10:] == 1.0)  # no crop: both halves kept


def test_non_rgb_input_to_preprocess_is_converted() -> None:
    grey = Image.new("L", (16, 16), 255)
    assert np.all(preprocess_image(grey, CONFIG) == 1.0)
    transparent = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    assert np.all(preprocess_image(transparent, CONFIG) == 1.0)


def test_preprocess_images_batch() -> None:
    images = [Image.new("RGB", (5, 9), (255, 255, 255)), decode_image(bad_images.animated_gif())]
    batch = preprocess_images(images, CONFIG)
    assert batch.shape == (2, 3, 16, 16) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[1], preprocess_image(images[1], CONFIG))
    assert preprocess_images([], CONFIG).shape == (0, 3, 16, 16)


def test_num_channels_other_than_three_is_refused() -> None:
    with pytest.raises(ValueError, match="num_channels"):
        preprocess_image(Image.new("RGB", (4, 4)), CONFIG.replace(num_channels=1))


def test_module_does_not_import_torch() -> None:
    code = "import sys, momo.preprocess; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_rgba_palette_is_composited() -> None:
    img = Image.new("P", (2, 1))
    img.putpalette([0, 0, 0, 0, 10, 20, 30, 255], rawmode="RGBA")
    img.putdata([0, 1])
    assert [rgb_at(to_rgb(img), i, 0) for i in range(2)] == [(255, 255, 255), (10, 20, 30)]
