"""A corpus of bad and odd images, built in code with Pillow (no binary fixtures in the repo).

Used by `tests/momo/test_preprocess.py` and reusable by the service tests:

    from tests.momo.bad_images import bad_image_corpus, bad_image_codes, good_image_corpus

- `bad_image_corpus()`: name → bytes that `momo.preprocess.decode_image` must refuse with
  `ImageDecodeError` (under the default `ImageLimits`); `bad_image_codes()` gives the expected
  `code` for each name.
- `good_image_corpus()`: name → bytes of valid but awkward images (every pixel mode, animation,
  EXIF rotation, 1×1, ...) that must decode to RGB.

Everything is small (a few KiB per entry) and deterministic. The decompression-bomb entries are
crafted headers claiming huge sizes over a few bytes of data: nothing here allocates the pixels.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib
from typing import Any

import numpy as np
from PIL import Image

# --- building blocks ----------------------------------------------------------------------------------


def encode(img: Image.Image, fmt: str, **save_kwargs: Any) -> bytes:
    """`img` saved in format `fmt` to bytes."""
    buf = io.BytesIO()
    img.save(buf, fmt, **save_kwargs)
    return buf.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_with_header_size(width: int, height: int) -> bytes:
    """A syntactically valid PNG whose IHDR claims `width`×`height` (8-bit RGB), with a tiny IDAT.

    Opening it reads the header only; decoding it would need width×height×3 bytes. Built by hand,
    so it costs a few dozen bytes whatever the claimed size.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def gif_with_header_size(width: int, height: int) -> bytes:
    """A GIF whose logical screen and single image descriptor claim `width`×`height`."""
    small = encode(Image.new("P", (1, 1), 0), "GIF")
    # Logical screen descriptor: bytes 6..9 after the "GIF89a" signature.
    data = bytearray(small)
    data[6:10] = struct.pack("<HH", width, height)
    # Image descriptor: 0x2C, left, top, width, height.
    pos = data.index(b"\x2c", 13)
    data[pos + 5 : pos + 9] = struct.pack("<HH", width, height)
    return bytes(data)


def jpeg_with_header_size(width: int, height: int) -> bytes:
    """A small baseline JPEG whose SOF0 marker is patched to claim `width`×`height`."""
    data = bytearray(encode(Image.new("RGB", (8, 8), (10, 20, 30)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    # SOF0: marker(2) length(2) precision(1) height(2) width(2)
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def noise_image(size: tuple[int, int] = (48, 32), mode: str = "RGB", seed: int = 0) -> Image.Image:
    """Deterministic random-noise image (compresses badly, so truncation hits pixel data)."""
    rng = np.random.default_rng(seed)
    channels = len(Image.new(mode, (1, 1)).getbands())
    arr = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(arr[..., 0] if channels == 1 else arr, mode=mode)


# --- specific odd images (also used directly by the tests) ---------------------------------------------


def cmyk_jpeg() -> bytes:
    """16×16 CMYK JPEG: left half pure red, right half pure blue (in RGB terms)."""
    img = Image.new("RGB", (16, 16), (255, 0, 0))
    img.paste((0, 0, 255), (8, 0, 16, 16))
    return encode(img.convert("CMYK"), "JPEG", quality=95)


def grey16_png() -> bytes:
    """3×1 16-bit greyscale PNG ("I;16") with values 0, 32768, 65535."""
    arr = np.array([[0, 32768, 65535]], dtype=np.uint16)
    return encode(Image.fromarray(arr), "PNG")


def palette_transparent_png() -> bytes:
    """4×1 palette PNG: index 0 (red) is transparent, index 1 (green) opaque; pixels 0,1,0,1."""
    img = Image.new("P", (4, 1))
    img.putpalette([255, 0, 0, 0, 255, 0] + [0, 0, 0] * 254)
    img.putdata([0, 1, 0, 1])
    return encode(img, "PNG", transparency=0)


def rgba_png() -> bytes:
    """2×1 RGBA PNG: a fully transparent black pixel, then a half-transparent black pixel."""
    img = Image.new("RGBA", (2, 1))
    img.putdata([(0, 0, 0, 0), (0, 0, 0, 128)])
    return encode(img, "PNG")


def animated_gif() -> bytes:
    """3-frame 8×8 GIF: red, green, blue frames."""
    frames = [Image.new("RGB", (8, 8), colour) for colour in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def exif_rotated_jpeg() -> bytes:
    """Stored 40×20 (wide): left half red, right half blue; EXIF Orientation=6 (rotate 90° CW).

    Displayed correctly it is 20×40 (tall) with red on top and blue at the bottom.
    """
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(img, "JPEG", quality=95, exif=exif.tobytes())


def corrupt_exif_jpeg() -> bytes:
    """A valid 8×8 JPEG whose EXIF block is garbage (the image itself must still decode)."""
    return encode(Image.new("RGB", (8, 8), (0, 128, 0)), "JPEG", exif=b"Exif\x00\x00MM\x00*\xff\xff\xff")


# --- the corpora --------------------------------------------------------------------------------------

_BAD_CODES: dict[str, str] = {
    "empty": "image_empty",
    "random_bytes": "image_unreadable",
    "plain_text": "image_unreadable",
    "html": "image_unreadable",
    "png_signature_only": "image_unreadable",
    "truncated_png": "image_truncated",
    "truncated_jpeg": "image_truncated",
    "truncated_gif": "image_truncated",
    "corrupt_png_data": "image_unreadable",
    "eps_not_allowed": "image_unreadable",
    "png_bomb_20000x20000": "image_too_many_pixels",
    "png_over_limit_8000x8000": "image_too_many_pixels",
    "gif_bomb_65535x65535": "image_too_many_pixels",
    "jpeg_bomb_65000x65000": "image_too_many_pixels",
}


@functools.cache
def _bad() -> dict[str, bytes]:
    rng = np.random.default_rng(1234)
    noise = noise_image((64, 48))
    png = encode(noise, "PNG")
    jpeg = encode(noise, "JPEG", quality=90)
    gif = encode(noise.convert("P"), "GIF")
    corrupt_png = bytearray(png)
    idat = corrupt_png.index(b"IDAT")
    for offset in range(idat + 12, idat + 40):  # scramble the zlib stream (chunk CRC left stale)
        corrupt_png[offset] ^= 0x5A
    return {
        "empty": b"",
        "random_bytes": rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "plain_text": b"this is not an image, just some text\n" * 10,
        "html": b"<!doctype html><html><body><img src='cat.png'></body></html>",
        "png_signature_only": b"\x89PNG\r\n\x1a\n",
        "truncated_png": png[: len(png) // 2],
        "truncated_jpeg": jpeg[: len(jpeg) // 2],
        "truncated_gif": gif[: len(gif) // 2],
        "corrupt_png_data": bytes(corrupt_png),
        "eps_not_allowed": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n%%EOF\n",
        "png_bomb_20000x20000": png_with_header_size(20_000, 20_000),
        "png_over_limit_8000x8000": png_with_header_size(8_000, 8_000),
        "gif_bomb_65535x65535": gif_with_header_size(65_535, 65_535),
        "jpeg_bomb_65000x65000": jpeg_with_header_size(65_000, 65_000),
    }


def bad_image_corpus() -> dict[str, bytes]:
    """name → bytes that must be refused with `ImageDecodeError` under the default limits."""
    return dict(_bad())


def bad_image_codes() -> dict[str, str]:
    """name → the `ImageDecodeError.code` expected for each `bad_image_corpus()` entry."""
    return dict(_BAD_CODES)


@functools.cache
def _good() -> dict[str, bytes]:
    noise = noise_image((24, 16))
    rgb_key = Image.new("RGB", (2, 1), (1, 2, 3))
    rgb_key.putpixel((1, 0), (200, 100, 50))
    float_img = Image.fromarray(np.linspace(0.0, 1.0, 16, dtype=np.float32).reshape(4, 4), mode="F")
    return {
        "rgb_png": encode(noise, "PNG"),
        "rgb_jpeg": encode(noise, "JPEG"),
        "rgb_webp": encode(noise, "WEBP", lossless=True),
        "rgb_bmp": encode(noise, "BMP"),
        "rgb_tiff": encode(noise, "TIFF"),
        "rgb_ppm": encode(noise, "PPM"),
        "grey_png": encode(noise.convert("L"), "PNG"),
        "grey_alpha_png": encode(noise.convert("LA"), "PNG"),
        "rgba_png": rgba_png(),
        "palette_png": encode(noise.convert("P"), "PNG"),
        "palette_transparent_png": palette_transparent_png(),
        "rgb_colour_key_png": encode(rgb_key, "PNG", transparency=(1, 2, 3)),
        "one_bit_png": encode(noise.convert("1"), "PNG"),
        "cmyk_jpeg": cmyk_jpeg(),
        "grey16_png": grey16_png(),
        "float_tiff": encode(float_img, "TIFF"),
        "animated_gif": animated_gif(),
        "exif_rotated_jpeg": exif_rotated_jpeg(),
        "corrupt_exif_jpeg": corrupt_exif_jpeg(),
        "tiny_1x1_png": encode(Image.new("RGB", (1, 1), (7, 8, 9)), "PNG"),
        "thin_1x300_png": encode(Image.new("L", (1, 300), 90), "PNG"),
    }


def good_image_corpus() -> dict[str, bytes]:
    """name → bytes of valid but awkward images that must decode to RGB under the default limits."""
    return dict(_good())
