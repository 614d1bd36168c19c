"""Image decoding and preprocessing: untrusted bytes in, a normalised float32 array out.

Length (~420 lines) on purpose: one image-input path that every entry point imports from one place;
the transform is ~45 lines beside the decoder whose `to_rgb` it uses.

Two stages, kept apart so that every entry point (HTTP service, ONNX runtime, training loaders)
shares one hardened decoder and one numeric transform:

1. `decode_image` (and `decode_base64_image`, `load_image_file`) turn untrusted bytes into an RGB
   `PIL.Image.Image`. Every way the input can be bad ends in one exception type,
   `ImageDecodeError`, carrying a human message and a short machine `code` that the service maps
   to a 4xx. Limits are checked as early as possible: byte size before decoding, header
   width×height before any pixel buffer is allocated (decompression bombs).
2. `preprocess_image` / `preprocess_images` turn RGB images into the model's input: squash-resize
   to `config.image_size`² (bicubic), scale to [0, 1], normalise per channel with
   `config.image_mean` / `config.image_std`, channels first.

This module imports only numpy, Pillow and `momo.config` (never torch), so the torch-free ONNX
serving path can use it.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal
from urllib.parse import unquote_to_bytes

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from momo.config import MoMoConfig

__all__ = [
    "DEFAULT_FORMATS",
    "DEFAULT_LIMITS",
    "ImageDecodeError",
    "ImageErrorCode",
    "ImageLimits",
    "decode_base64_image",
    "decode_image",
    "load_image_file",
    "preprocess_image",
    "preprocess_images",
    "to_rgb",
]

ImageErrorCode = Literal[
    "image_empty",  # no bytes at all, or a zero-area image
    "image_too_large_bytes",  # more (encoded or decoded) bytes than ImageLimits.max_bytes
    "image_too_many_pixels",  # header width×height above ImageLimits.max_pixels (decompression bomb)
    "image_unreadable",  # not an image, an unsupported format, or corrupt data
    "image_truncated",  # a recognised image whose data ends early
    "image_unsupported_mode",  # decodes, but its pixel mode cannot be turned into RGB
    "invalid_base64",  # the text is not valid base64
    "invalid_data_uri",  # a `data:` URI that is malformed, not base64, or not an image type
]


class ImageDecodeError(ValueError):
    """The caller's image could not be accepted. `str(err)` is for humans, `err.code` for machines.

    Raised for every kind of bad image input (too big, not an image, corrupt, truncated, bad
    base64...); the service maps it to a 4xx response with `code` in the error body.
    """

    def __init__(self, message: str, code: ImageErrorCode) -> None:
        super().__init__(message)
        self.message = message
        self.code: ImageErrorCode = code

    def __reduce__(self) -> tuple[type[ImageDecodeError], tuple[str, ImageErrorCode]]:
        # Keep `code` across pickling (process pools, Celery).
        return (type(self), (self.message, self.code))


# Formats accepted by default: what cameras, browsers and datasets actually produce. Pillow can
# open many more (EPS shells out to Ghostscript, ICO/ICNS/FLI/... widen the attack surface for no
# benefit), so serving restricts to this list. `ImageLimits(formats=None)` accepts all of Pillow's.
# (Multi-picture JPEGs from phone cameras, "MPO", open through the JPEG entry.)
DEFAULT_FORMATS: Final[tuple[str, ...]] = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF", "PPM")

_MIB: Final = 1024 * 1024


@dataclass(frozen=True)
class ImageLimits:
    """Resource limits applied to one untrusted image.

    `max_bytes` bounds the encoded file; `max_pixels` bounds width×height read from the header,
    checked before any pixel data is decoded. Pillow's own guard still applies on top of this:
    images above `PIL.Image.MAX_IMAGE_PIXELS` (≈89 Mpx by default) are refused too, so raising
    `max_pixels` beyond that has no effect unless the application raises Pillow's limit as well.
    Any image of at least 1×1 pixel is allowed.
    """

    max_bytes: int = 10 * _MIB
    max_pixels: int = 40_000_000
    formats: tuple[str, ...] | None = DEFAULT_FORMATS

    def __post_init__(self) -> None:
        if self.max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, not {self.max_bytes}")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be positive, not {self.max_pixels}")
        if self.formats is not None:
            if not self.formats:
                raise ValueError("formats must be None (all of Pillow's) or a non-empty tuple")
            formats = tuple(f.upper() for f in self.formats)
            if any(f not in Image.OPEN for f in formats):
                Image.init()  # registers every plugin Pillow has (idempotent)
            unknown = [f for f in formats if f not in Image.OPEN]
            if unknown:
                raise ValueError(f"Pillow cannot open formats {unknown}; known: {sorted(Image.OPEN)}")
            object.__setattr__(self, "formats", formats)


DEFAULT_LIMITS: Final = ImageLimits()

_WHITE: Final = (255, 255, 255)

# `warnings.catch_warnings` swaps process-global state (until Python 3.14). Holding this lock while
# we use it keeps concurrent decodes in this module from racing each other; it only covers
# `Image.open` (header parsing, cheap), never pixel decoding.
_WARNINGS_LOCK = threading.Lock()


# --- decoding ---------------------------------------------------------------------------------------


def decode_image(data: bytes | bytearray | memoryview, limits: ImageLimits = DEFAULT_LIMITS) -> Image.Image:
    """Decode untrusted image bytes into a fully loaded RGB image, or raise `ImageDecodeError`.

    Order of checks: empty / over `limits.max_bytes` (before decoding), format allow-list and
    header width×height against `limits.max_pixels` (before pixel data is allocated), then a full
    decode (`load()`), so truncated or corrupt data fails here and not later. The result has its
    EXIF orientation applied, is the first frame of an animated image, and is mode "RGB" (see
    `to_rgb` for how other modes are converted).
    """
    size = memoryview(data).nbytes
    if size == 0:
        raise ImageDecodeError("image is empty (0 bytes)", code="image_empty")
    if size > limits.max_bytes:
        raise ImageDecodeError(
            f"image is {size} bytes, more than the limit of {limits.max_bytes} bytes",
            code="image_too_large_bytes",
        )

    img = _open_checked(data, limits)
    try:
        # The first frame of an animated image is the one Image.open positions on.
        img.load()
    except MemoryError:
        raise
    except Image.DecompressionBombError as exc:
        raise _too_many_pixels(img.size, limits, str(exc)) from exc
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, EOFError, zlib.error...
        if "truncated" in str(exc).lower():
            raise ImageDecodeError(
                f"image data is truncated ({img.format or 'unknown'} file ends early): {exc}",
                code="image_truncated",
            ) from exc
        raise ImageDecodeError(
            f"image data is corrupt ({img.format or 'unknown'} file): {exc}", code="image_unreadable"
        ) from exc

    _apply_exif_orientation(img)
    return to_rgb(img)


def _open_checked(data: bytes | bytearray | memoryview, limits: ImageLimits) -> ImageFile.ImageFile:
    """`Image.open` (header only) with the format allow-list and the pixel limit applied."""
    try:
        with _WARNINGS_LOCK, warnings.catch_warnings():
            # Pillow warns (rather than raises) between MAX_IMAGE_PIXELS and twice that; make it fatal.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=limits.formats)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(
            f"image has too many pixels (limit {limits.max_pixels}): {exc}", code="image_too_many_pixels"
        ) from exc
    except UnidentifiedImageError as exc:
        accepted = ", ".join(limits.formats) if limits.formats else "any format Pillow can read"
        raise ImageDecodeError(
            f"data is not a recognised image (accepted formats: {accepted})", code="image_unreadable"
        ) from exc
    except MemoryError:
        raise
    except Exception as exc:  # a recognised header that is malformed (SyntaxError, OSError, ...)
        code: ImageErrorCode = "image_truncated" if "truncated" in str(exc).lower() else "image_unreadable"
        raise ImageDecodeError(f"image header is invalid: {exc}", code=code) from exc

    width, height = img.size
    if width < 1 or height < 1:
        raise ImageDecodeError(f"image has zero area ({width}×{height})", code="image_empty")
    if width * height > limits.max_pixels:
        raise _too_many_pixels(img.size, limits)
    return img


def _too_many_pixels(size: tuple[int, int], limits: ImageLimits, detail: str = "") -> ImageDecodeError:
    width, height = size
    message = (
        f"image is {width}×{height} = {width * height} pixels, more than the limit of "
        f"{limits.max_pixels} pixels"
    )
    return ImageDecodeError(message + (f" ({detail})" if detail else ""), code="image_too_many_pixels")


def _apply_exif_orientation(img: Image.Image) -> None:
    """Rotate/flip `img` in place per its EXIF Orientation tag; unreadable EXIF is ignored.

    Broken metadata is common in the wild and the pixels are still fine, so a failure to parse the
    EXIF block keeps the image as stored rather than rejecting it.
    """
    try:
        ImageOps.exif_transpose(img, in_place=True)
    except MemoryError:
        raise
    except Exception:
        pass


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to "RGB" (returns `img` itself when it already is plain RGB).

    - alpha (LA, PA, RGBA, RGBa), RGBA palettes, and palette/L/RGB images with a `transparency`
      entry: composited over white, so transparent pixels become white;
    - 16-bit ("I;16", "I;16B", ...): scaled by 255/65535 (65535 → 255, 32768 → 128), not clipped;
    - 32-bit integer "I": treated as 8-bit if all values lie in [0, 255], as 16-bit if in
      [0, 65535], otherwise min–max stretched;
    - float "F": ×255 if all values lie in [0, 1], as-is if in [0, 255], otherwise min–max stretched;
    - "1", "L", "P", "CMYK", "YCbCr", "LAB", "HSV", "RGBX": Pillow's conversion. CMYK uses Pillow's
      plain formula (no ICC colour management).

    Raises `ImageDecodeError` (code "image_unsupported_mode") for a mode Pillow cannot convert.
    """
    mode = img.mode
    has_alpha = img.has_transparency_data  # alpha band, a `transparency` entry, or an RGBA palette
    if mode == "RGB" and not has_alpha:
        return img
    try:
        if mode.startswith("I") or mode == "F":
            return Image.fromarray(_high_depth_to_uint8(img), mode="L").convert("RGB")
        if has_alpha:
            rgba = img.convert("RGBA")
            out = Image.new("RGB", rgba.size, _WHITE)
            out.paste(rgba, mask=rgba.getchannel("A"))
            return out
        return img.convert("RGB")
    except MemoryError:
        raise
    except Exception as exc:
        raise ImageDecodeError(
            f"image pixel mode {mode!r} cannot be converted to RGB: {exc}", code="image_unsupported_mode"
        ) from exc


def _high_depth_to_uint8(img: Image.Image) -> np.ndarray:
    """8-bit grey levels for a 16-bit, 32-bit integer or float single-channel image."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16"):
        return _rescale(arr.astype(np.float64), 0.0, 65535.0)
    values = arr.astype(np.float64)
    if img.mode == "F":
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if img.mode == "F" and lo >= 0.0 and hi <= 1.0:
        return _rescale(values, 0.0, 1.0)
    if lo >= 0.0 and hi <= 255.0:
        return _rescale(values, 0.0, 255.0)
    if img.mode != "F" and lo >= 0.0 and hi <= 65535.0:
        return _rescale(values, 0.0, 65535.0)
    return _rescale(values, lo, hi)


def _rescale(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map [lo, hi] linearly onto 0..255 (rounded, clipped) as uint8."""
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def decode_base64_image(text: str, limits: ImageLimits = DEFAULT_LIMITS) -> Image.Image:
    """Decode raw base64 or a `data:image/<type>;base64,<data>` URI into an RGB image.

    Whitespace and line breaks inside the base64 are ignored, missing `=` padding is tolerated and
    the URL-safe alphabet (`-`, `_`) is accepted. The length of the text is checked against
    `limits.max_bytes` before anything is decoded; the decoded size is then checked exactly.
    """
    # Cheap pre-check on the raw text: base64 needs 4 characters per 3 bytes; allow line breaks
    # (2 per 76 characters, as MIME writes) and a data-URI prefix on top.
    max_encoded = 4 * -(-limits.max_bytes // 3)
    max_text = max_encoded + max_encoded // 38 + 1024
    if len(text) > max_text:
        raise ImageDecodeError(
            f"encoded image is {len(text)} characters, which decodes to more than the limit of "
            f"{limits.max_bytes} bytes",
            code="image_too_large_bytes",
        )

    payload = text.strip()
    if payload[:5].lower() == "data:":
        payload = _data_uri_payload(payload)
    return decode_image(_b64decode(payload), limits)


def _data_uri_payload(uri: str) -> str:
    """The base64 part of a `data:` URI, after checking that it declares an image and base64."""
    header, sep, payload = uri.partition(",")
    if not sep:
        raise ImageDecodeError("data URI has no ',' separating header and data", code="invalid_data_uri")
    params = [p.strip().lower() for p in header[5:].split(";")]
    media_type = params[0]
    if "base64" not in params[1:]:
        raise ImageDecodeError(
            "data URI must be base64-encoded (data:image/<type>;base64,...)", code="invalid_data_uri"
        )
    if media_type and not media_type.startswith("image/"):
        raise ImageDecodeError(
            f"data URI media type {media_type!r} is not an image type", code="invalid_data_uri"
        )
    return payload


def _b64decode(payload: str) -> bytes:
    """Strict base64 decoding (standard or URL-safe alphabet) with whitespace/padding leniency."""
    if "%" in payload:  # percent-encoded data URI payload; '%' is not in either base64 alphabet
        try:
            payload = unquote_to_bytes(payload).decode("ascii")
        except UnicodeDecodeError:
            raise ImageDecodeError(
                "base64 data contains non-ASCII characters", code="invalid_base64"
            ) from None
    compact = "".join(payload.split())
    if not compact:
        raise ImageDecodeError("image is empty (no base64 data)", code="image_empty")
    if not compact.isascii():
        raise ImageDecodeError("base64 data contains non-ASCII characters", code="invalid_base64")
    if "-" in compact or "_" in compact:
        compact = compact.replace("-", "+").replace("_", "/")
    core = compact.rstrip("=")
    if len(core) % 4 == 1 or len(compact) - len(core) > 2:
        raise ImageDecodeError("base64 data has an impossible length or padding", code="invalid_base64")
    compact = core + "=" * (-len(core) % 4)  # tolerate missing (or partial) padding
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageDecodeError(f"invalid base64 data: {exc}", code="invalid_base64") from exc


def load_image_file(path: str | os.PathLike[str], limits: ImageLimits = DEFAULT_LIMITS) -> Image.Image:
    """Read an image file with the same checks as `decode_image` (for training data loaders).

    Reads at most `limits.max_bytes + 1` bytes, so an oversized file is refused without reading
    it whole. A missing or unreadable *file* raises the usual `OSError` (a data-set problem, not
    a bad image); bad *contents* raise `ImageDecodeError`.
    """
    with Path(path).open("rb") as f:
        data = f.read(limits.max_bytes + 1)
    if len(data) > limits.max_bytes:
        raise ImageDecodeError(
            f"image file {os.fspath(path)!r} is larger than the limit of {limits.max_bytes} bytes",
            code="image_too_large_bytes",
        )
    return decode_image(data, limits)


# --- preprocessing ------------------------------------------------------------------------------------


def preprocess_image(img: Image.Image, config: MoMoConfig) -> np.ndarray:
    """One image → float32 array (C, H, W) = (3, image_size, image_size), normalised.

    The image is converted to RGB (`to_rgb`) if needed, then *squashed* to a square with bicubic
    resampling: the whole picture is kept and the aspect ratio is not. This is the simplest
    transform that never drops content (centre-cropping can cut off the object a caption or a
    question is about); training and serving both use this function, so the model sees the same
    distortion in both. Values are scaled to [0, 1], then `(x - mean) / std` per channel.
    """
    out = np.empty((config.num_channels, config.image_size, config.image_size), dtype=np.float32)
    _preprocess_into(img, config, out)
    return out


def preprocess_images(images: Sequence[Image.Image], config: MoMoConfig) -> np.ndarray:
    """A batch of images → float32 array (B, C, H, W); B may be 0."""
    out = np.empty((len(images), config.num_channels, config.image_size, config.image_size), dtype=np.float32)
    for i, img in enumerate(images):
        _preprocess_into(img, config, out[i])
    return out


def resize_rgb_uint8(img: Image.Image, config: MoMoConfig) -> np.ndarray:
    """One image -> (S, S, 3) uint8 RGB at model resolution: the resize half of preprocessing.

    Training caches images in this form and normalises per batch with the same arithmetic as
    `_preprocess_into`, so train and serve see identical pixels.
    """
    if config.num_channels != 3:
        raise ValueError(f"momo.preprocess produces RGB input; config.num_channels is {config.num_channels}")
    size = config.image_size
    rgb = to_rgb(img)
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(rgb, dtype=np.uint8)


def _preprocess_into(img: Image.Image, config: MoMoConfig, out: np.ndarray) -> None:
    pixels = resize_rgb_uint8(img, config).astype(np.float32) / np.float32(255.0)  # (H, W, 3) in [0, 1]
    mean = np.asarray(config.image_mean, dtype=np.float32)
    std = np.asarray(config.image_std, dtype=np.float32)
    out[...] = ((pixels - mean) / std).transpose(2, 0, 1)
