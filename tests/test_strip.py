"""worker/strip.py: metadata removed without touching the pixels; malformed files refused."""
from __future__ import annotations

import io
import struct

from PIL import Image, ImageChops, PngImagePlugin

from tests import image_factory as make
from worker.strip import strip_jpeg, strip_metadata, strip_png, strip_webp


def same_pixels(a: bytes, b: bytes) -> bool:
    first, second = Image.open(io.BytesIO(a)), Image.open(io.BytesIO(b))
    return first.size == second.size and ImageChops.difference(
        first.convert("RGBA"), second.convert("RGBA")).getbbox() is None


def test_jpeg_with_restart_markers_and_metadata_keeps_its_pixels():
    data = make._save(make.photo((160, 120)), "JPEG", quality=60, restart_marker_blocks=4,
                      exif=make.gps_exif().tobytes(), comment=b"private")
    stripped = strip_jpeg(data)
    assert stripped and same_pixels(stripped, data)
    assert b"SecretCam" not in stripped and b"private" not in stripped
    assert stripped.endswith(b"\xff\xd9")


def test_jpeg_adobe_marker_is_kept_so_rgb_coded_files_keep_their_colours():
    data = make._save(make.photo(), "JPEG", quality=60, keep_rgb=True)
    stripped = strip_jpeg(data)
    assert b"Adobe" in data[:200] and b"Adobe" in stripped[:200]
    assert same_pixels(stripped, data)


def test_truncated_or_foreign_files_are_refused():
    data = make.jpeg()
    assert strip_jpeg(data[: len(data) // 2]) is None
    assert strip_jpeg(b"GIF89a" + data) is None
    assert strip_png(make.png()[:-20]) is None
    assert strip_webp(b"RIFF\x04\x00\x00\x00WEBP") is None
    assert strip_metadata(make.bmp(), "BMP") is None


def test_png_keeps_colour_and_transparency_chunks_only():
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "secret", zip=True)
    info.add_itxt("Title", "private")
    data = make._save(Image.open(io.BytesIO(make.palette_png_with_transparency())), "PNG",
                      pnginfo=info, transparency=0, dpi=(72, 72))
    stripped = strip_png(data)
    assert same_pixels(stripped, data)
    for kind in (b"tEXt", b"zTXt", b"iTXt", b"pHYs"):
        assert kind not in stripped
    assert b"tRNS" in stripped and b"PLTE" in stripped


def test_webp_unknown_chunks_go_and_the_riff_size_is_right():
    data = make._save(make.photo(), "WEBP", quality=30, exif=make.gps_exif().tobytes())
    odd = b"ZZZZ" + struct.pack("<I", 3) + b"abc\0"  # an odd-sized chunk with its padding byte
    data = data[:4] + struct.pack("<I", len(data) - 8 + len(odd)) + data[8:] + odd
    stripped = strip_webp(data)
    assert b"ZZZZ" not in stripped and b"EXIF" not in stripped
    assert struct.unpack("<I", stripped[4:8])[0] == len(stripped) - 8
    assert same_pixels(stripped, data)
