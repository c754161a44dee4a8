"""decode_image / read_bytes: every stored mode to 8-bit RGB, and every bad input to its
stable reason code."""

from __future__ import annotations

import io
import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hemaflow.data.decode import (
    DEFAULT_FORMATS,
    DecodedImage,
    RejectedImage,
    content_hash,
    decode_image,
    read_bytes,
)


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def assert_rgb8(decoded: DecodedImage, width: int, height: int) -> np.ndarray:
    assert decoded.image.mode == "RGB"
    rgb = decoded.rgb
    assert rgb.dtype == np.uint8
    assert rgb.shape == (height, width, 3)
    return rgb


def rejected(data: bytes, **kwargs) -> RejectedImage:
    with pytest.raises(RejectedImage) as info:
        decode_image(data, **kwargs)
    assert info.value.message, "a rejection must explain itself"
    assert str(info.value).startswith(info.value.code + ":")
    return info.value


def png_with_claimed_size(width: int, height: int) -> bytes:
    """A real 1x1 PNG whose IHDR is rewritten to claim width x height (CRC fixed)."""
    data = bytearray(encode(Image.new("L", (1, 1), 7), "PNG"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


@pytest.fixture(scope="module")
def pbc_jpeg(shared_datasets: Path) -> Path:
    path = shared_datasets / "pbc" / "basophil" / "BA_100102.jpg"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


# ---------------------------------------------------------------------------- modes


def test_rgb_jpeg_roundtrip_and_metadata():
    data = encode(Image.new("RGB", (20, 10), (200, 30, 60)), "JPEG", quality=95)
    decoded = decode_image(data)
    rgb = assert_rgb8(decoded, 20, 10)
    assert (decoded.width, decoded.height, decoded.format, decoded.mode) == (20, 10, "JPEG", "RGB")
    assert np.abs(rgb.astype(int) - (200, 30, 60)).max() <= 4


def test_grayscale_l_becomes_equal_channels():
    gray = np.arange(0, 240, 10, dtype=np.uint8).reshape(4, 6)
    decoded = decode_image(encode(Image.fromarray(gray, "L"), "PNG"))
    rgb = assert_rgb8(decoded, 6, 4)
    assert decoded.mode == "L"
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], gray)


def test_la_transparent_pixels_become_white():
    la = np.zeros((2, 3, 2), np.uint8)
    la[..., 0] = 40  # dark grey everywhere
    la[..., 1] = 255  # opaque
    la[0, 0, 1] = 0  # fully transparent
    decoded = decode_image(encode(Image.fromarray(la, "LA"), "PNG"))
    rgb = assert_rgb8(decoded, 3, 2)
    assert decoded.mode == "LA"
    np.testing.assert_array_equal(rgb[0, 0], (255, 255, 255))
    np.testing.assert_array_equal(rgb[1, 2], (40, 40, 40))


def test_rgba_transparent_white_opaque_kept_partial_blended():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 0)  # transparent -> white
    rgba[0, 1] = (10, 20, 30, 255)  # opaque -> unchanged
    rgba[1, 0] = (0, 0, 0, 128)  # half transparent black over white -> mid grey
    rgba[1, 1] = (255, 0, 0, 255)
    decoded = decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    rgb = assert_rgb8(decoded, 2, 2)
    assert decoded.mode == "RGBA"
    np.testing.assert_array_equal(rgb[0, 0], (255, 255, 255))
    np.testing.assert_array_equal(rgb[0, 1], (10, 20, 30))
    assert np.all(np.abs(rgb[1, 0].astype(int) - 127) <= 2)
    np.testing.assert_array_equal(rgb[1, 1], (255, 0, 0))


def _palette_image() -> Image.Image:
    image = Image.new("P", (4, 4), 0)
    image.putpalette([255, 0, 0, 0, 0, 255, 0, 255, 0] + [0] * (768 - 9))
    image.putpixel((0, 0), 1)
    image.putpixel((3, 3), 2)
    return image


def test_palette_without_transparency():
    data = encode(_palette_image(), "PNG")
    decoded = decode_image(data)
    rgb = assert_rgb8(decoded, 4, 4)
    assert decoded.mode == "P"
    np.testing.assert_array_equal(rgb[0, 0], (0, 0, 255))
    np.testing.assert_array_equal(rgb[3, 3], (0, 255, 0))
    np.testing.assert_array_equal(rgb[1, 1], (255, 0, 0))


def test_palette_with_transparency_index_becomes_white():
    data = encode(_palette_image(), "PNG", transparency=1)
    decoded = decode_image(data)
    rgb = assert_rgb8(decoded, 4, 4)
    np.testing.assert_array_equal(rgb[0, 0], (255, 255, 255))  # index 1 is transparent
    np.testing.assert_array_equal(rgb[3, 3], (0, 255, 0))
    np.testing.assert_array_equal(rgb[1, 1], (255, 0, 0))


def test_cmyk_jpeg_converted_to_rgb():
    data = encode(Image.new("CMYK", (8, 6), (0, 255, 255, 0)), "JPEG", quality=95)
    decoded = decode_image(data)
    rgb = assert_rgb8(decoded, 8, 6)
    assert decoded.mode == "CMYK" and decoded.format == "JPEG"
    red, green, blue = rgb.reshape(-1, 3).mean(axis=0)
    assert red > 200 and green < 50 and blue < 50


def test_16bit_grayscale_png_is_scaled_not_clipped():
    values = np.array([[0, 32768, 65535, 1000, 257, 40000]], dtype=np.uint16)
    data = encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    decoded = decode_image(data)
    rgb = assert_rgb8(decoded, 6, 1)
    assert decoded.mode.startswith("I;16")
    gray = rgb[0, :, 0]
    assert gray[0] == 0
    assert gray[2] == 255
    assert abs(int(gray[1]) - 128) <= 1  # 32768 -> ~128, not clipped to 255
    assert gray[3] == 4  # 1000 / 257
    assert gray[4] == 1
    assert abs(int(gray[5]) - 156) <= 1
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 1])
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])


def test_32bit_int_mode_8bit_range_kept():
    values = np.array([[0, 100, 255, 7]], dtype=np.int32)
    data = encode(Image.fromarray(values), "TIFF")
    decoded = decode_image(data)
    rgb = assert_rgb8(decoded, 4, 1)
    assert decoded.mode == "I"
    np.testing.assert_array_equal(rgb[0, :, 0], [0, 100, 255, 7])


def test_32bit_int_mode_16bit_range_scaled():
    values = np.array([[0, 32768, 65535, 1000]], dtype=np.int32)
    decoded = decode_image(encode(Image.fromarray(values), "TIFF"))
    gray = assert_rgb8(decoded, 4, 1)[0, :, 0]
    assert gray[0] == 0 and gray[2] == 255
    assert abs(int(gray[1]) - 128) <= 1
    assert gray[3] == 4


def test_1bit_image_black_and_white():
    bits = np.zeros((3, 5), bool)
    bits[1, 2] = True
    data = encode(Image.fromarray(bits), "PNG")
    decoded = decode_image(data)
    rgb = assert_rgb8(decoded, 5, 3)
    assert decoded.mode == "1"
    np.testing.assert_array_equal(rgb[1, 2], (255, 255, 255))
    assert rgb.sum() == 3 * 255


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "WEBP"])
def test_other_accepted_formats(fmt):
    data = encode(
        Image.new("RGB", (9, 7), (0, 128, 255)),
        fmt,
        **({"lossless": True} if fmt == "WEBP" else {}),
    )
    decoded = decode_image(data)
    rgb = assert_rgb8(decoded, 9, 7)
    assert decoded.format == fmt
    np.testing.assert_array_equal(rgb[3, 4], (0, 128, 255))


def test_exif_orientation_is_applied():
    # stored 40 wide x 20 tall, red block in the stored top-left corner
    stored = np.full((20, 40, 3), 128, np.uint8)
    stored[:8, :8] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    data = encode(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes())
    decoded = decode_image(data)
    rgb = decoded.rgb
    assert rgb.shape == (40, 20, 3)  # transposed
    # width/height are reported as displayed, after the rotation (crops use them)
    assert (decoded.width, decoded.height) == (20, 40)
    # clockwise: the stored top-left corner is now the top-right corner
    assert rgb[:6, -6:, 0].mean() > 200 and rgb[:6, -6:, 1].mean() < 60
    assert rgb[:6, :6, 1].mean() > 100  # top-left is the grey background


def test_exif_orientation_without_rotation_keeps_shape():
    exif = Image.Exif()
    exif[0x0112] = 1
    data = encode(Image.new("RGB", (40, 20)), "JPEG", exif=exif.tobytes())
    assert decode_image(data).rgb.shape == (20, 40, 3)


def test_draft_size_decodes_real_jpeg_smaller(pbc_jpeg: Path):
    data = pbc_jpeg.read_bytes()
    requests = []

    def draft(width, height):
        requests.append((width, height))
        return (64, 64)

    full = decode_image(data)
    small = decode_image(data, draft_size=draft)
    assert requests == [(224, 224)]
    assert (full.width, full.height) == (224, 224)
    assert (small.width, small.height) == (224, 224)  # stored size unchanged
    assert full.image.size == (224, 224)
    assert min(small.image.size) >= 64
    assert max(small.image.size) < 224  # DCT scaling actually used
    assert small.rgb.dtype == np.uint8 and small.rgb.shape[2] == 3


def test_draft_size_ignored_for_png():
    data = encode(Image.new("RGB", (100, 80)), "PNG")
    decoded = decode_image(data, draft_size=lambda w, h: (10, 8))
    assert decoded.image.size == (100, 80)


# ---------------------------------------------------------------------------- bad inputs


def test_zero_byte_file_is_empty_file():
    assert rejected(b"").code == "empty_file"


def test_truncated_real_jpeg(pbc_jpeg: Path):
    data = pbc_jpeg.read_bytes()
    assert rejected(data[: len(data) // 2]).code in ("truncated", "corrupt")


def test_real_non_image_ds_store_named_jpg(shared_datasets: Path):
    path = shared_datasets / "pbc" / "neutrophil" / ".DS_169665.jpg"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    assert rejected(read_bytes(str(path))).code == "not_an_image"


def test_text_bytes_not_an_image():
    assert rejected(b"hello, I am a text file\n" * 10).code == "not_an_image"


def test_corrupt_png_payload():
    data = bytearray(
        encode(Image.fromarray(np.arange(4096, dtype=np.uint8).reshape(64, 64) % 251), "PNG")
    )
    start = data.index(b"IDAT") + 4
    data[start : start + 40] = b"\x00" * 40  # destroy the zlib stream, keep the header
    assert rejected(bytes(data)).code in ("corrupt", "truncated")


@pytest.mark.parametrize("fmt", ["GIF", "ICO"])
def test_unsupported_formats(fmt):
    error = rejected(encode(Image.new("RGB", (16, 16), (1, 2, 3)), fmt))
    assert error.code == "unsupported_format"
    assert fmt in error.message


def test_formats_argument_restricts_accepted():
    data = encode(Image.new("RGB", (4, 4)), "PNG")
    assert rejected(data, formats=("JPEG",)).code == "unsupported_format"
    assert decode_image(data, formats=("PNG",)).format == "PNG"
    assert "PNG" in DEFAULT_FORMATS


def test_too_large_with_small_max_pixels():
    data = encode(Image.new("RGB", (100, 50)), "PNG")
    assert decode_image(data, max_pixels=5000).image.size == (100, 50)  # exactly the limit
    error = rejected(data, max_pixels=4999)
    assert error.code == "too_large"
    assert "5000" in error.message


@pytest.mark.parametrize("claimed", [(6000, 7000), (100_000, 100_000)])
def test_png_header_claiming_huge_size_is_too_large(claimed):
    data = png_with_claimed_size(*claimed)
    assert len(data) < 100
    start = time.perf_counter()
    assert rejected(data).code == "too_large"  # default max_pixels = 40M
    assert time.perf_counter() - start < 1.0


def test_header_patch_helper_is_a_valid_png():
    # guards the helper above: with a small claimed size the header is read as written
    data = png_with_claimed_size(3, 2)
    assert Image.open(io.BytesIO(data)).size == (3, 2)


def test_real_large_dimension_bilevel_png_is_too_large(tmp_path: Path):
    path = tmp_path / "bomb.png"
    Image.new("1", (10_000, 10_000), 0).save(path, "PNG")
    data = path.read_bytes()
    assert len(data) < 1_000_000  # small on disk, 100 Mpixel when decoded
    start = time.perf_counter()
    error = rejected(data)
    elapsed = time.perf_counter() - start
    assert error.code == "too_large"
    assert elapsed < 2.0, f"rejection took {elapsed:.1f} s: was the image decoded?"


# ---------------------------------------------------------------------------- read_bytes


def test_read_bytes_reads_file_and_hash(tmp_path: Path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"abc")
    assert read_bytes(str(path)) == b"abc"
    assert (
        content_hash(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_missing_path_is_missing_file(tmp_path: Path):
    with pytest.raises(RejectedImage) as info:
        read_bytes(str(tmp_path / "nope.jpg"))
    assert info.value.code == "missing_file"


def test_directory_is_unreadable(tmp_path: Path):
    folder = tmp_path / "looks_like.jpg"
    folder.mkdir()
    with pytest.raises(RejectedImage) as info:
        read_bytes(str(folder))
    assert info.value.code == "unreadable"


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0,
    reason="root can read a chmod-000 file; the directory case covers 'unreadable'",
)
def test_permission_denied_is_unreadable(tmp_path: Path):
    path = tmp_path / "locked.jpg"
    path.write_bytes(b"\xff\xd8\xff")
    path.chmod(0)
    try:
        with pytest.raises(RejectedImage) as info:
            read_bytes(str(path))
        assert info.value.code == "unreadable"
    finally:
        path.chmod(0o644)
