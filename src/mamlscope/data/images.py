"""Reading one image file faithfully, or refusing it with one line naming the file.

Shared by every reader of image files (`mamlscope.data.archives` for dataset folders and
archives, `mamlscope.data.episode_table` for `mamlscope evaluate`, figure stacking), so a
file gives the same pixels, or the same error, whichever way it is read. PIL's own
``convert("L")`` clips 16-bit pixels instead of scaling them (a 16-bit PNG turns black and
white) and drops alpha, keeping whatever colour lies under transparent pixels; Pillow's
decompression-bomb check raises an error that names no file, or only warns.
"""

from __future__ import annotations

import os
import re
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

import numpy as np
from PIL import Image

from mamlscope.errors import DataError

#: What PIL raises on a file it cannot decode (a DataError of ours passes through as it is).
IMAGE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    zlib.error,
    Image.DecompressionBombError,
)

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA = ("LA", "La", "PA", "RGBA", "RGBa")
_WHITE = 255

Source = str | os.PathLike[str] | IO[bytes]


@contextmanager
def bomb_warnings_silenced() -> Iterator[None]:
    """Silence Pillow's DecompressionBombWarning: `open_image` refuses those images itself.

    Enter it in the thread that starts the reading, around any worker threads: the warning
    filter is process-wide and `warnings.catch_warnings` is not thread-safe.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


@contextmanager
def open_image(source: Source, *, name: str | os.PathLike[str]) -> Iterator[Image.Image]:
    """The opened (not yet decoded) image, or a DataError naming ``name``.

    An image whose header claims more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels is refused
    before anything is decoded: Pillow raises past twice that limit and only warns below it,
    and a few-shot image that large is a corrupt or hostile header, not a picture.
    """
    limit = Image.MAX_IMAGE_PIXELS
    try:
        image = Image.open(source)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's message holds the claimed size: "Image size (N pixels) exceeds limit ..."
        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        claim = f"{claimed[1]} pixels" if claimed else f"more than {2 * (limit or 0)} pixels"
        raise _too_large(name, claim) from exc
    except IMAGE_ERRORS as exc:
        raise DataError(f"{name}: cannot read image ({exc})") from exc
    with image:
        width, height = image.size
        if limit is not None and width * height > limit:
            raise _too_large(name, f"{width} x {height} = {width * height} pixels")
        yield image


def _too_large(name: str | os.PathLike[str], claim: str) -> DataError:
    return DataError(
        f"{name}: refused as a likely decompression bomb: its header claims {claim}, over "
        f"Pillow's limit of {Image.MAX_IMAGE_PIXELS} (PIL.Image.MAX_IMAGE_PIXELS); if the "
        "image is genuine, shrink it first"
    )


def to_mode(image: Image.Image, mode: str, *, path: str | os.PathLike[str]) -> Image.Image:
    """``image`` as 8-bit ``mode`` ("L" or "RGB"), scaled and composited, never clipped.

    * 16-bit modes (I;16*) are scaled by 255/65535 (v / 257): a uint16 image * 257 reads
      exactly as the uint8 image. Mode I (32-bit) read from a PNG holds at most 16 bits
      (PNG has no deeper grey; Pillow before 11 opened 16-bit grey PNGs as I), so it is
      scaled the same; from a TIFF by its BitsPerSample; otherwise by int32's range.
      Negative values are refused. Float (F) pixels must lie in 0..1 (scaled by 255).
    * Alpha (LA, PA, RGBA, a palette's or a grey/RGB image's transparency) is composited on
      white: what image viewers and browsers show and ImageMagick's ``-flatten`` default,
      so the pixels read are those the user saw when choosing the file. Both readers use
      this one rule, so a transparent image reads the same through either.
    * Anything PIL cannot bring to ``mode`` (directly or through RGB) is refused.
    """
    if mode not in ("L", "RGB"):
        raise ValueError(f"mode must be 'L' or 'RGB'; got {mode!r}")
    if image.mode in _ALPHA or "transparency" in image.info:
        return _on_white(image, mode, path)
    if image.mode == mode:
        return image
    if image.mode in (*_SIXTEEN_BIT, "I", "F"):
        grey = Image.fromarray(_scaled(image, path))
        return grey if mode == "L" else grey.convert("RGB")
    return _convert(image, mode, path)


def _convert(image: Image.Image, mode: str, path: str | os.PathLike[str]) -> Image.Image:
    try:
        return image.convert(mode)
    except ValueError:
        pass
    try:  # LAB, for one, reaches L only through RGB
        return image.convert("RGB").convert(mode)
    except ValueError as exc:
        raise DataError(
            f"{path}: cannot convert an image of mode {image.mode} to {mode} ({exc}); "
            "save it as 8-bit greyscale or RGB"
        ) from exc


def _on_white(image: Image.Image, mode: str, path: str | os.PathLike[str]) -> Image.Image:
    """Alpha composited on white; the colour under a transparent pixel never shows."""
    if image.mode in _SIXTEEN_BIT or image.mode == "I":  # a 16-bit grey with a tRNS value
        grey = _scaled(image, path)
        grey[np.asarray(image) == image.info["transparency"]] = _WHITE
        return Image.fromarray(grey).convert(mode)
    with_alpha = _convert(image.convert("LA") if image.mode == "La" else image, mode + "A", path)
    array = np.asarray(with_alpha, dtype=np.uint32)
    colour, alpha = array[..., :-1], array[..., -1:]
    mixed = (colour * alpha + _WHITE * (255 - alpha) + 127) // 255
    return Image.fromarray(
        mixed.astype(np.uint8)[..., 0] if mode == "L" else mixed.astype(np.uint8)
    )


def _scaled(image: Image.Image, path: str | os.PathLike[str]) -> np.ndarray:
    """A 16-bit, 32-bit or float image as uint8, scaled by its type's range."""
    values = np.asarray(image).astype(np.float64)
    if image.mode == "F":
        top = 1.0
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise DataError(
                f"{path}: float pixels must lie in 0..1, found "
                f"{np.nanmin(values):g}..{np.nanmax(values):g}; save it as 8- or 16-bit"
            )
    else:
        top = float(2 ** _integer_bits(image) - 1)
        if values.min() < 0 or values.max() > top:
            raise DataError(
                f"{path}: {image.mode} pixels {values.min():g}..{values.max():g} lie outside "
                f"0..{int(top)}; save it as 8- or 16-bit unsigned"
            )
    return np.rint(values * (255.0 / top)).astype(np.uint8)


def _integer_bits(image: Image.Image) -> int:
    """Bits of an integer image's samples: 16 for I;16* and PNG, TIFF's BitsPerSample, or 31."""
    if image.mode in _SIXTEEN_BIT or image.format == "PNG":
        return 16
    tags = getattr(image, "tag_v2", None)
    bits = tags.get(258) if tags is not None else None  # TIFF BitsPerSample
    if isinstance(bits, tuple) and bits:
        bits = bits[0]
    if isinstance(bits, int) and 0 < bits <= 32:
        signed = tags is not None and tags.get(339) in (2, (2,))  # SampleFormat: signed int
        return min(bits - 1 if signed else bits, 31)
    return 31  # int32, non-negative values


def to_array(
    image: Image.Image, size: int, channels: int, *, path: str | os.PathLike[str] = "image"
) -> np.ndarray:
    """One PIL image as uint8 [C, size, size]: greyscale or RGB (`to_mode`), LANCZOS-resized."""
    image = to_mode(image, "L" if channels == 1 else "RGB", path=path)
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def read_pixels(
    source: Source, *, name: str | os.PathLike[str], size: int, channels: int
) -> np.ndarray:
    """An image file (or file object) as uint8 [C, size, size], or a DataError naming it."""
    with _naming(name), open_image(source, name=name) as image:
        return to_array(image, size, channels, path=name)


def read_image(path: str | os.PathLike[str], mode: str) -> Image.Image:
    """An image file decoded into 8-bit ``mode`` (`to_mode`), or a DataError naming it."""
    with _naming(path), open_image(path, name=path) as image:
        converted = to_mode(image, mode, path=path)
        return converted.copy() if converted is image else converted


@contextmanager
def _naming(name: str | os.PathLike[str]) -> Iterator[None]:
    """PIL's decoding errors (truncated data, a bad chunk) as a DataError naming the file."""
    try:
        yield
    except DataError:
        raise
    except IMAGE_ERRORS as exc:
        raise DataError(f"{name}: cannot read image ({exc})") from exc
