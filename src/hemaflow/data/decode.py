"""Safe decoding of one image file to 8-bit RGB.

Every way a file can be unusable maps to a :class:`RejectedImage` with a short, stable
reason code and a human message, so ingest can quarantine it instead of crashing.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import stat
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Never let PIL silently pad truncated files with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

DEFAULT_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "MPO")


class RejectedImage(Exception):
    """A file that cannot be used as an image; ``code`` is stable, ``message`` explains."""

    def __init__(self, code: str, message: str):
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # RGB; may be smaller than width x height when decoded in draft mode
    width: int  # full size as displayed (after EXIF rotation), before any draft reduction
    height: int
    format: str
    mode: str  # the mode the file was stored in, before conversion

    @property
    def rgb(self) -> np.ndarray:
        return np.asarray(self.image, dtype=np.uint8)


_READ_CHUNK = 1 << 20


def read_bytes(path: str, timeout_s: float = 60.0) -> bytes:
    """The bytes of a regular file, read within ``timeout_s`` seconds.

    The file is opened non-blocking and checked with fstat before any read, so a FIFO,
    socket or device named like an image is rejected instead of hanging ingest; the read
    itself goes in chunks against a deadline (ingest.read_timeout_s)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        kind = "broken_link" if os.path.islink(path) else "missing_file"
        raise RejectedImage(kind, "file does not exist") from None
    except IsADirectoryError:
        raise RejectedImage("unreadable", "is a directory, not a file") from None
    except OSError as exc:
        raise RejectedImage("unreadable", f"cannot read file: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise RejectedImage("unreadable", "is a directory, not a file")
        if not stat.S_ISREG(info.st_mode):
            raise RejectedImage("not_a_file", "not a regular file (a FIFO, socket or device)")
        deadline = time.monotonic() + timeout_s
        chunks = []
        while True:
            try:
                chunk = os.read(fd, max(_READ_CHUNK, info.st_size + 1))
            except OSError as exc:
                raise RejectedImage(
                    "unreadable", f"cannot read file: {exc.strerror or exc}"
                ) from None
            if not chunk:
                break
            chunks.append(chunk)
            if time.monotonic() > deadline:
                raise RejectedImage(
                    "read_timeout",
                    f"reading took longer than {timeout_s:g} s (ingest.read_timeout_s)",
                )
        return b"".join(chunks)
    finally:
        os.close(fd)


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB, scaling high bit depths instead of clipping."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if mode.startswith("I;16"):
            scaled = values / 257.0
        else:
            # 32-bit int / float images: use the data's own range (16-bit PNGs often land in I)
            high = float(values.max()) if values.size else 0.0
            scale = 65535.0 if high > 255 else 255.0
            scaled = values * (255.0 / scale)
        gray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if mode == "P":
        image = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent pixels become white: the empty background of a smear is light.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image if image.mode == "RGB" else image.convert("RGB")


@contextlib.contextmanager
def _pillow_pixel_limit(max_pixels: int) -> Iterator[None]:
    """Pillow's own bomb guard at ``max_pixels`` (it raises above twice its limit, which
    by default is about 179 M pixels), so that ingest.max_image_pixels alone decides."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def decode_image(
    data: bytes,
    *,
    max_pixels: int = 40_000_000,
    formats: tuple[str, ...] | list[str] = DEFAULT_FORMATS,
    draft_size: Callable[[int, int], tuple[int, int]] | None = None,
) -> DecodedImage:
    """Decode bytes to RGB, or raise RejectedImage with the reason.

    ``draft_size(width, height)`` may name the smallest size the caller needs; JPEGs are
    then decoded with DCT scaling (up to 8x fewer pixels), which is faster than decoding
    at full size and resizing, and gives the same low-pass result."""
    if len(data) == 0:
        raise RejectedImage("empty_file", "zero-byte file")
    try:
        with warnings.catch_warnings(), _pillow_pixel_limit(max_pixels):
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            fmt = image.format or "unknown"
            if fmt not in formats:
                raise RejectedImage(
                    "unsupported_format",
                    f"format {fmt} is not accepted (accepted: {', '.join(formats)})",
                )
            width, height = image.size
            if width <= 0 or height <= 0:
                raise RejectedImage("corrupt", f"invalid size {width}x{height}")
            if width * height > max_pixels:
                raise RejectedImage(
                    "too_large",
                    f"{width}x{height} = {width * height} pixels exceeds the limit of "
                    f"{max_pixels} (decompression-bomb guard, ingest.max_image_pixels)",
                )
            stored_mode = image.mode
            if draft_size is not None and fmt in ("JPEG", "MPO"):
                image.draft(None, draft_size(width, height))
            image.load()
            oriented = ImageOps.exif_transpose(image)
            if oriented.size != image.size:  # rotated by 90 degrees: report what a viewer shows
                width, height = height, width
            image = oriented
            rgb = _to_rgb(image)
            rgb.load()
    except RejectedImage:
        raise
    except UnidentifiedImageError:
        raise RejectedImage("not_an_image", "content is not a recognised image format") from None
    except Image.DecompressionBombError:
        raise RejectedImage(
            "too_large",
            f"image exceeds the limit of {max_pixels} pixels "
            "(decompression-bomb guard, ingest.max_image_pixels)",
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        text = str(exc) or type(exc).__name__
        code = "truncated" if "truncated" in text.lower() else "corrupt"
        raise RejectedImage(code, f"cannot decode image data: {text}") from None
    except MemoryError:
        raise RejectedImage("too_large", "ran out of memory while decoding") from None
    return DecodedImage(image=rgb, width=width, height=height, format=fmt, mode=stored_mode)
