"""Small test images made in memory, each returned as the bytes of a file.

Every image has real structure (gradients and a fractal), so lossy encoders have work to do and a
rotation or a lost alpha channel shows in the pixels. Sizes are small to keep tests fast.
"""
from __future__ import annotations

import functools
import io
import struct
import zlib

from PIL import Image, ImageCms, ImageDraw

SIZE = (96, 64)  # deliberately not square: a missed rotation shows in the dimensions


def photo(size: tuple[int, int] = SIZE, mode: str = "RGB") -> Image.Image:
    """A deterministic picture: gradients plus a fractal, dark top-left and white bottom-right."""
    w, h = size
    red = Image.linear_gradient("L").resize(size)
    green = Image.radial_gradient("L").resize(size)
    blue = Image.effect_mandelbrot(size, (-2.0, -1.2, 1.0, 1.2), 60)
    im = Image.merge("RGB", (red, green, blue))
    draw = ImageDraw.Draw(im)
    draw.rectangle((0, 0, w // 4, h // 4), fill=(0, 0, 0))  # marks the top-left corner
    draw.rectangle((w - w // 4, h - h // 4, w - 1, h - 1), fill=(255, 255, 255))
    return im.convert(mode) if mode != "RGB" else im


def alpha_mask(size: tuple[int, int] = SIZE) -> Image.Image:
    """Left half opaque, right half fully transparent, a soft band between."""
    w, h = size
    mask = Image.new("L", size, 255)
    draw = ImageDraw.Draw(mask)
    draw.rectangle((w // 2, 0, w - 1, h - 1), fill=0)
    draw.rectangle((w // 2 - 4, 0, w // 2 - 1, h - 1), fill=128)
    return mask


# Made once: LittleCMS stamps each profile it makes with the time, so two made a second apart
# differ, and a test comparing an output's profile with a new one would fail now and then.
@functools.cache
def srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _save(im: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    im.save(out, fmt, **options)
    return out.getvalue()


# --------------------------------------------------------------------------- JPEG

def jpeg(size: tuple[int, int] = SIZE, quality: int = 90, mode: str = "RGB", **options) -> bytes:
    """A JPEG at `quality` (q90 by default, like a camera or a shop export)."""
    return _save(photo(size, mode), "JPEG", quality=quality, **options)


def cmyk_jpeg(size: tuple[int, int] = SIZE, quality: int = 90, **options) -> bytes:
    return _save(photo(size).convert("CMYK"), "JPEG", quality=quality, **options)


def exif_rotated_jpeg(size: tuple[int, int] = SIZE, orientation: int = 6,
                      quality: int = 90) -> bytes:
    """A JPEG stored sideways with EXIF Orientation telling viewers how to turn it."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(photo(size), "JPEG", quality=quality, exif=exif.tobytes())


XMP = (b'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
       b'<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
       b'xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:creator>Secret Photographer'
       b'</dc:creator></rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>')


def gps_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"    # Make
    exif[0x0131] = "Editor 1.0"   # Software
    gps = exif.get_ifd(0x8825)
    gps[1] = "N"
    gps[2] = (52.0, 22.0, 1.5)
    gps[3] = "E"
    gps[4] = (4.0, 53.0, 2.5)
    return exif


def jpeg_with_metadata(size: tuple[int, int] = SIZE) -> bytes:
    """A JPEG with an ICC profile, EXIF with GPS, XMP and a comment."""
    return _save(photo(size), "JPEG", quality=90, icc_profile=srgb_profile(),
                 exif=gps_exif().tobytes(), xmp=XMP, comment=b"shot at home, 12 Main St")


# --------------------------------------------------------------------------- PNG

def png(size: tuple[int, int] = SIZE, mode: str = "RGB", **options) -> bytes:
    """PNG in `mode`: RGB (opaque), RGBA and LA (with alpha_mask()), L, P."""
    im = photo(size)
    if mode in ("RGBA", "LA"):
        im = im.convert(mode[:-1])
        im.putalpha(alpha_mask(size))
    elif mode != "RGB":
        im = im.convert(mode)
    return _save(im, "PNG", **options)


def palette_png_with_transparency(size: tuple[int, int] = SIZE) -> bytes:
    """A palette PNG whose index 0 is transparent (tRNS chunk), used on the right half."""
    im = photo(size).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    w, h = size
    im.paste(0, (w // 2, 0, w, h))  # index 0 everywhere on the right
    return _save(im, "PNG", transparency=0)


def png16_gray(size: tuple[int, int] = SIZE) -> bytes:
    """A 16-bit grayscale PNG (Pillow mode I;16) using the full 0..65535 range."""
    wide = Image.new("I;16", size)
    wide.putdata([v * 257 for v in photo(size, "L").get_flattened_data()])
    return _save(wide, "PNG")


def png16_rgb(size: tuple[int, int] = SIZE, alpha: bool = False) -> bytes:
    """A 16-bit-per-channel RGB(A) PNG, written by hand (Pillow cannot write one)."""
    w, h = size
    src = photo(size).convert("RGBA")
    if alpha:
        src.putalpha(alpha_mask(size))
    pixels = src.get_flattened_data()
    channels = 4 if alpha else 3
    rows = []
    for y in range(h):
        row = bytearray(b"\0")  # filter type 0
        for x in range(w):
            for value in pixels[y * w + x][:channels]:
                row += struct.pack(">H", value * 257)
        rows.append(bytes(row))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    colour_type = 6 if alpha else 2
    header = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b""))


# --------------------------------------------------------------------------- GIF, WebP, others

def animated_gif(size: tuple[int, int] = SIZE, frames: int = 3) -> bytes:
    """Frame 0 is the photo; later frames are flat colours (so frame 0 is recognisable)."""
    first = photo(size).convert("P", palette=Image.Palette.ADAPTIVE)
    rest = [Image.new("RGB", size, colour).convert("P")
            for colour in [(255, 0, 0), (0, 0, 255), (0, 255, 0)][: frames - 1]]
    return _save(first, "GIF", save_all=True, append_images=rest, duration=100, loop=0)


def animated_png(size: tuple[int, int] = SIZE) -> bytes:
    rest = [Image.new("RGB", size, (255, 0, 0)), Image.new("RGB", size, (0, 0, 255))]
    return _save(photo(size), "PNG", save_all=True, append_images=rest, duration=100)


def animated_webp(size: tuple[int, int] = SIZE) -> bytes:
    rest = [Image.new("RGB", size, (255, 0, 0)), Image.new("RGB", size, (0, 0, 255))]
    return _save(photo(size), "WEBP", save_all=True, append_images=rest, duration=100,
                 quality=90)


def webp(size: tuple[int, int] = SIZE, alpha: bool = False, lossless: bool = False,
         **options) -> bytes:
    im = photo(size)
    if alpha:
        im.putalpha(alpha_mask(size))
    return _save(im, "WEBP", quality=90, lossless=lossless, **options)


def bmp(size: tuple[int, int] = SIZE) -> bytes:
    return _save(photo(size), "BMP")


def tiff(size: tuple[int, int] = SIZE) -> bytes:
    return _save(photo(size), "TIFF")


def truncated_jpeg(size: tuple[int, int] = SIZE) -> bytes:
    data = jpeg(size)
    return data[: len(data) // 2]


def png_header_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims a huge size: what a decompression bomb looks like."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 100_000, 9)  # a start of rows; decoding would need gigabytes
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


def gray_profile(gamma: float = 2.2) -> bytes:
    """A minimal ICC v2 grayscale display profile (LittleCMS cannot create one for us)."""
    def s15(value: float) -> bytes:
        return struct.pack(">i", round(value * 65536))

    def pad(data: bytes) -> bytes:
        return data + b"\0" * (-len(data) % 4)

    name = b"Batchpress test gray\0"
    tags = [
        (b"desc", b"desc\0\0\0\0" + struct.pack(">I", len(name)) + name
         + b"\0" * 8 + b"\0\0\0" + b"\0" * 67),
        (b"wtpt", b"XYZ \0\0\0\0" + s15(0.9642) + s15(1.0) + s15(0.8249)),
        (b"kTRC", b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"),
        (b"cprt", b"text\0\0\0\0" + b"No copyright\0"),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, body = struct.pack(">I", len(tags)), b""
    for signature, data in tags:
        table += signature + struct.pack(">II", offset + len(body), len(data))
        body += pad(data)
    size = offset + len(body)
    header = (struct.pack(">I", size) + b"\0\0\0\0" + struct.pack(">I", 0x02100000) + b"mntr"
              + b"GRAY" + b"XYZ " + b"\0" * 12 + b"acsp" + b"\0" * 24 + b"\0" * 4
              + s15(0.9642) + s15(1.0) + s15(0.8249) + b"\0" * 48)
    assert len(header) == 128
    return header + table + body
