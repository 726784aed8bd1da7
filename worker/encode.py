"""Re-encoding one image with Pillow by the contract's format policy, at OUTPUT_QUALITY.

The policy (CONTRACT.md section 2):

- What an image is is decided by its bytes; only common web and photo formats are decoded
  (JPEG, PNG/APNG, GIF, WebP, BMP, TIFF, AVIF), never the exotic ones Pillow could also open.
- The pixel count is checked against `max_pixels` from the header, before any pixel is decoded;
  Pillow's DecompressionBombWarning counts as an error. Truncated or corrupt files raise
  ImageError, never anything else.
- Output: JPEG stays JPEG, WebP stays WebP, anything else becomes JPEG, or WebP when it has an
  alpha channel or a transparent colour (alpha is never lost). Same pixel dimensions as displayed:
  the EXIF orientation is applied. An animation keeps its first frame.
- Metadata is stripped (EXIF incl. GPS, XMP, comments, text chunks, DPI) except the ICC colour
  profile, which is kept when it fits the output's colours. Colours that change model (CMYK, or
  gray with a profile going to WebP) are converted through the profile to sRGB, and the output
  carries an sRGB profile. CMYK becomes RGB; 16-bit samples are scaled to 8 bits.
- JPEG at `quality` with libjpeg's standard tables scaled to it (4:2:0, baseline; `optimize`
  adds Huffman optimisation), lossy WebP at `quality` with `webp_method`; alpha is kept lossless.

Defaults, from bench/pipeline.py --compare on the corpus (one core): `optimize=False` (True makes
JPEGs 7.7 % smaller for 1.54x the JPEG encode time, 16 % less throughput on the whole corpus) and
WebP `method=2` (vs libwebp's default 4: WebP outputs 13 % larger at the same PSNR, 1.7x faster,
+33 % throughput on the whole corpus for +0.8 % of its output bytes).

Speed: JPEG output is written into a per-thread `memfd` so Pillow releases the GIL while it
encodes (with a BytesIO it holds it); WebP releases it either way. See bench/pipeline.py.
"""
from __future__ import annotations

import io
import math
import os
import threading
import warnings
from dataclasses import dataclass, field, replace

from PIL import Image, ImageCms, ImageMath, ImageOps, UnidentifiedImageError

from infra.per_process import per_process
from schemas.failures import FailureCode
from schemas.sizes import largest_size
from worker.strip import strip_metadata

# Formats we decode, by Pillow plugin name. MPO is how Pillow names a JPEG with extra pictures
# (phone cameras write them). Anything else is refused without trying its decoder.
Image.init()
SOURCE_FORMATS = tuple(f for f in ("JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF")
                       if f in Image.OPEN)
JPEG_SOURCES = ("JPEG", "MPO")

# Pillow only warns between MAX_IMAGE_PIXELS and twice that: make the warning an error,
# process-wide (warnings.catch_warnings() is not thread-safe, and the chunk job uses threads).
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_SRGB = ImageCms.createProfile("sRGB")
_SRGB_BYTES = ImageCms.ImageCmsProfile(_SRGB).tobytes()
_ICC_SPACE = {"RGB": b"RGB ", "RGBA": b"RGB ", "L": b"GRAY", "CMYK": b"CMYK"}


class ImageError(Exception):
    """The bytes are not an image we can re-encode; the message is shown to the user, `code`
    says why."""

    def __init__(self, message: str, code: FailureCode):
        super().__init__(message)
        self.code = code


_BROKEN, _PIXELS = FailureCode.BROKEN_IMAGE, FailureCode.TOO_MANY_PIXELS


@dataclass(frozen=True)
class EncodedImage:
    data: bytes
    content_type: str
    extension: str
    width: int
    height: int
    source_format: str = ""  # what the input was, e.g. "PNG"
    kept_original: bool = False  # the input's own bytes, metadata removed (never larger)
    # Smaller outputs by size name; None where the image is not larger than that size (or,
    # without a full-size output, for the size this output is itself).
    variants: dict[str, "EncodedImage | None"] = field(default_factory=dict)
    size_name: str | None = None  # the size this output was made at; None: full size

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def input_format(self) -> str:
        """The input's format as the API names it: jpeg (an MPO is a JPEG), png, webp, ..."""
        return "jpeg" if self.source_format == "MPO" else self.source_format.lower()

    @property
    def output_format(self) -> str:
        return {"jpg": "jpeg"}.get(self.extension, self.extension)


def compress(data: bytes, *, quality: int = 50, max_pixels: int = 50_000_000,
             optimize: bool = False, webp_method: int = 2, sink: str = "auto",
             keep_original: bool = True, sizes: dict[str, int] | None = None,
             full_size: bool = True) -> EncodedImage:
    """Decode `data`, apply EXIF orientation, and re-encode: JPEG, or WebP for WebP and alpha.

    With `keep_original`, when `data` already shows what the output would (see `_keepable`) and,
    with its metadata removed, is smaller than the re-encoded file, the result is that stripped
    `data` instead (`kept_original`): an output is never larger than its input.

    `sizes` (name -> longest edge) adds `variants`: the image resized to each (Lanczos, never
    enlarged), encoded by the same format rules at the same quality, from the same decode;
    sizes of the same edge share one output (the same object), encoded once.

    Without `full_size` (and with `sizes`), no full-size output is made when the image is larger
    than the largest size: the result is that size's output (`size_name`), and a JPEG is
    decoded in draft mode, at the smallest DCT scale still at least that large (`_draft`).

    `sink` picks where JPEG output is written: "memfd" (releases the GIL), "bytesio", or "auto"
    (memfd where the OS has it). It exists for the benchmark; the output is the same.
    """
    largest = largest_size(sizes) if sizes and not full_size else None
    im, source_format, stored = _decode(data, max_pixels,
                                        draft_edge=largest[1] if largest else None)
    try:
        # The output is the largest size when the image is larger than it (never enlarged).
        main_size = largest if largest and max(stored) > largest[1] else None
        keepable = keep_original and main_size is None and _keepable(im, source_format, data)
        # Output sizes come from the full image's upright size, not from a draft's (rounded up
        # on each side), so they are the same as with a full decode.
        upright = stored[::-1] if _turned(im) else stored
        im, fmt, icc = _prepare(im, source_format)
        options = dict(quality=quality, optimize=optimize, webp_method=webp_method, sink=sink)
        if main_size is not None:
            encoded = replace(_resized(im, _fit(upright, main_size[1]), fmt, icc, source_format,
                                       options), size_name=main_size[0])
        else:
            encoded = _encode(im, fmt, icc, source_format, **options)
        if keepable:
            encoded = _original(data, encoded)
        if sizes:
            # Without a full-size output, this output is the largest size (and any as large).
            others = {n: e for n, e in sizes.items() if main_size is None or e < main_size[1]}
            variants = _variants(im, upright, fmt, icc, source_format, others, options)
            encoded = replace(encoded, variants={n: variants.get(n) for n in sizes})
        return encoded
    except ImageError:
        raise
    except MemoryError:
        raise ImageError("not enough memory to re-encode this image", FailureCode.ENCODE_FAILED) from None
    except Exception as error:  # a decoder or encoder failure must fail this image only
        raise ImageError(f"could not re-encode the image: {_short(error)}",
                         FailureCode.ENCODE_FAILED) from None
    finally:
        im.close()


def draft_edge(sizes: dict[str, int] | None, full_size: bool) -> int | None:
    """The longest edge a decode must keep: the largest size's without a full-size output."""
    return largest_size(sizes)[1] if sizes and not full_size else None


def header_pixels(data: bytes, draft_edge: int | None = None) -> int:
    """The pixel count the file's header announces (0 when it has none we read), or with
    `draft_edge` the count compress() decodes for it (a JPEG's draft): cheap, no pixel is
    decoded. compress() makes the real checks; this only sizes the decode in advance."""
    try:
        with Image.open(io.BytesIO(data), formats=SOURCE_FORMATS) as im:
            if draft_edge is not None and im.format in JPEG_SOURCES \
                    and im.size[0] * im.size[1] > 0:
                _draft(im, draft_edge)  # sets the size it would decode at, decodes nothing
            width, height = im.size
    except Exception:  # noqa: BLE001 - compress() reports what is wrong with the file
        return 0
    return max(0, width) * max(0, height)


# --------------------------------------------------------------------------- decoding

def _decode(data: bytes, max_pixels: int,
            draft_edge: int | None = None) -> tuple[Image.Image, str, tuple[int, int]]:
    """The image's first frame loaded, its format, and its size as stored. `draft_edge`: a JPEG
    may be decoded smaller, its longest edge still at least that (`_draft`)."""
    _raise_pillow_limit(max_pixels)
    try:
        im = Image.open(io.BytesIO(data), formats=SOURCE_FORMATS)
    except UnidentifiedImageError:
        raise ImageError("not an image in a supported format "
                         "(JPEG, PNG, GIF, WebP, BMP, TIFF, AVIF)", FailureCode.NOT_AN_IMAGE) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"image has more than the {max_pixels:,}-pixel limit", _PIXELS) from None
    except Exception as error:
        raise ImageError(f"broken image header: {_short(error)}", _BROKEN) from None
    try:
        width, height = im.size
        if width < 1 or height < 1:
            raise ImageError("image has no pixels", _BROKEN)
        if width * height > max_pixels:
            raise ImageError(f"image is {width}x{height} = {width * height:,} pixels, over the "
                             f"{max_pixels:,}-pixel limit", _PIXELS)
        source_format = im.format or "?"
        if draft_edge is not None and source_format in JPEG_SOURCES:
            _draft(im, draft_edge)
        im.load()  # frame 0; loading now also avoids a full copy in save()
        if im.size != (width, height) and im.size[0] * im.size[1] > max_pixels:
            raise ImageError("image frame is over the pixel limit", _PIXELS)
    except ImageError:
        im.close()
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        im.close()
        raise ImageError(f"image has more than the {max_pixels:,}-pixel limit", _PIXELS) from None
    except MemoryError:
        im.close()
        raise ImageError("not enough memory to decode this image", FailureCode.ENCODE_FAILED) from None
    except Exception as error:
        im.close()
        if "truncated" in str(error):
            raise ImageError("image file is truncated", _BROKEN) from None
        raise ImageError(f"broken image data: {_short(error)}", _BROKEN) from None
    return im, source_format, (width, height)


def _draft(im: Image.Image, edge: int) -> None:
    """Have libjpeg decode at 1/2, 1/4 or 1/8 scale, the smallest whose longest edge is still
    at least `edge` (Lanczos then makes the exact size from it, so the quality is the same).

    Draft works on the pixels as stored, before the EXIF orientation is applied; a rotation by
    90 degrees swaps width and height but keeps the longest edge, so both are scaled by the
    same factor the longest edge needs, and the upright image's longest edge is at least `edge`.
    """
    width, height = im.size
    scale = edge / max(width, height)
    if scale > 0.5:
        return  # more than half: the full decode is needed
    # draft() keeps both sides at least what is asked for (ceil: never a pixel short)
    im.draft(None, (max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))))


def _raise_pillow_limit(max_pixels: int) -> None:
    """Keep Pillow's own bomb limit at or above ours, so it never refuses what we allow.

    Only ever raised, never lowered (other code in the process opens images too).
    """
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and limit < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels


# --------------------------------------------------------------------------- policy

_KEEPABLE_MODES = {"JPEG": ("L", "RGB"), "MPO": ("L", "RGB"), "WEBP": ("RGB", "RGBA"),
                   "PNG": ("1", "L", "LA", "P", "RGB", "RGBA")}


def _keepable(im: Image.Image, source_format: str, data: bytes) -> bool:
    """Whether the input file itself, metadata removed, shows what its re-encode would: a still
    JPEG, PNG or WebP with 8-bit gray or RGB(A) samples, upright as stored, whose ICC profile (if
    any) fits its pixels. CMYK, 16-bit, rotated and animated inputs are always re-encoded."""
    if im.mode not in _KEEPABLE_MODES.get(source_format, ()):
        return False
    if source_format != "MPO" and getattr(im, "n_frames", 1) > 1:
        return False
    if source_format == "PNG" and (len(data) < 25 or data[24] > 8):  # IHDR bit depth
        return False
    try:
        if im.getexif().get(ORIENTATION, 1) != 1:
            return False
    except Exception:  # unreadable EXIF is shown as stored, as in _prepare
        pass
    icc = im.info.get("icc_profile")
    return not icc or (_valid_icc(icc) is not None and icc[16:20] == _pixel_space(im))


def _original(data: bytes, encoded: EncodedImage) -> EncodedImage:
    """`data` with its metadata removed, in place of `encoded` when that is smaller."""
    stripped = strip_metadata(data, encoded.source_format)
    if stripped is None or len(stripped) >= len(encoded.data):
        return encoded
    content_type, extension = _ORIGINAL_TYPES[encoded.source_format]
    return EncodedImage(stripped, content_type, extension, encoded.width, encoded.height,
                        encoded.source_format, kept_original=True)


_ORIGINAL_TYPES = {"JPEG": ("image/jpeg", "jpg"), "MPO": ("image/jpeg", "jpg"),
                   "PNG": ("image/png", "png"), "WEBP": ("image/webp", "webp")}
ORIENTATION = 0x0112

def _has_alpha(im: Image.Image) -> bool:
    return im.mode in _ALPHA_MODES or "transparency" in im.info


def _prepare(im: Image.Image, source_format: str) -> tuple[Image.Image, str, bytes | None]:
    """The image in the output's mode, the output format, and the ICC profile to embed."""
    icc = _valid_icc(im.info.get("icc_profile"))
    try:
        ImageOps.exif_transpose(im, in_place=True)
    except Exception:  # unreadable EXIF: browsers cannot read it either, show it as stored
        pass

    alpha = _has_alpha(im)
    if source_format == "WEBP" or alpha:
        fmt, mode = "WEBP", ("RGBA" if alpha else "RGB")
    else:
        fmt, mode = "JPEG", ("L" if im.mode in ("L", "1", "I;16", "I;16B", "I;16L", "I", "F")
                             else "RGB")

    if im.mode.startswith("I") or im.mode == "F":
        im = _to_8bit_gray(im)  # keeps a transparent colour as an alpha channel

    if icc is not None and icc[16:20] != _pixel_space(im):
        icc = None  # a profile for other colours than the pixels have: unusable, dropped
    if icc is not None and icc[16:20] != _ICC_SPACE.get(mode):
        # The colour model changes (CMYK to RGB, gray to RGB for WebP): go through the profile.
        converted = _convert_with_profile(im, icc, mode)
        if converted is not None:
            return converted, fmt, _SRGB_BYTES
        icc = None  # the profile cannot be applied: plain conversion, and no profile

    if im.mode != mode:
        im = _convert(im, mode)
    return im, fmt, icc


def _pixel_space(im: Image.Image) -> bytes:
    """The ICC colour-space signature that fits the pixels of `im`."""
    return {"CMYK": b"CMYK", "L": b"GRAY", "LA": b"GRAY", "La": b"GRAY", "1": b"GRAY",
            "LAB": b"Lab ", "YCbCr": b"YCbr"}.get(im.mode, b"RGB ")


def _convert(im: Image.Image, mode: str) -> Image.Image:
    if im.mode == "P" and mode == "RGB" and "transparency" not in im.info:
        return im.convert("RGB")
    if im.mode in ("RGBa", "La"):  # premultiplied
        im = im.convert("RGBA" if im.mode == "RGBa" else "LA")
    return im.convert(mode)


def _to_8bit_gray(im: Image.Image) -> Image.Image:
    """16/32-bit integer or float gray to 8-bit L (LA when it has a transparent value)."""
    transparent = im.info.get("transparency")
    wide = im if im.mode in ("I", "F") else im.convert("I")
    low, high = wide.getextrema()
    if im.mode == "F":
        scale = 255.0 if high <= 1.0 else (255.0 / high if high > 255 else 1.0)
    else:
        scale = 1 / 257 if high > 255 else 1.0  # 16-bit samples: 65535 -> 255 exactly
    gray = wide.point(lambda v: v * scale).convert("L") if scale != 1.0 else wide.convert("L")
    if isinstance(transparent, int):
        mask = ImageMath.lambda_eval(
            lambda args: args["convert"]((args["a"] != transparent) * 255, "L"), a=wide)
        gray.putalpha(mask)
    return gray


def _valid_icc(icc: bytes | None) -> bytes | None:
    if not icc or len(icc) < 132 or icc[36:40] != b"acsp":
        return None
    return icc


def _convert_with_profile(im: Image.Image, icc: bytes, mode: str) -> Image.Image | None:
    """`im` converted from its profile to sRGB in `mode` (RGB or RGBA), or None if impossible."""
    if mode not in ("RGB", "RGBA"):
        return None
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        alpha = None
        base = im
        if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
            rgba_like = im.convert("LA" if im.mode in ("L", "LA", "La") else "RGBA")
            alpha = rgba_like.getchannel("A")
            base = rgba_like.convert("L" if rgba_like.mode == "LA" else "RGB")
        elif im.mode == "P":
            base = im.convert("RGB")
        out = ImageCms.profileToProfile(base, source, _SRGB, outputMode="RGB")
        if out is None:
            return None
        if mode == "RGBA":
            out.putalpha(alpha if alpha is not None else 255)
        return out
    except Exception:
        return None


# --------------------------------------------------------------------------- encoding

def _encode(im: Image.Image, fmt: str, icc: bytes | None, source_format: str, *, quality: int,
            optimize: bool, webp_method: int, sink: str) -> EncodedImage:
    im.info = {}  # nothing from the input is written back (Pillow re-uses a JPEG's comment)
    options: dict = {"quality": quality}
    if icc:
        options["icc_profile"] = icc
    if fmt == "JPEG":
        options["optimize"] = optimize
        data = _save_jpeg(im, options, sink)
        content_type, extension = "image/jpeg", "jpg"
    else:
        out = io.BytesIO()  # libwebp releases the GIL whatever the target
        im.save(out, "WEBP", method=webp_method, **options)
        data = out.getvalue()
        content_type, extension = "image/webp", "webp"
    return EncodedImage(data, content_type, extension, im.width, im.height, source_format)


def _variants(im: Image.Image, upright: tuple[int, int], fmt: str, icc: bytes | None,
              source_format: str, sizes: dict[str, int],
              options: dict) -> dict[str, EncodedImage | None]:
    """One smaller output per named size; None where the image (`upright`: its full size,
    whether `im` is that or a draft of it) is not larger than it. Sizes of one edge get the
    same output, encoded once (the bytes would be identical)."""
    by_edge: dict[int, EncodedImage | None] = {}
    for edge in sizes.values():
        if edge not in by_edge:
            by_edge[edge] = (None if max(upright) <= edge else
                             _resized(im, _fit(upright, edge), fmt, icc, source_format, options))
    return {name: by_edge[edge] for name, edge in sizes.items()}


def _fit(size: tuple[int, int], edge: int) -> tuple[int, int]:
    """`size` scaled so that its longest edge is `edge`."""
    scale = edge / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _turned(im: Image.Image) -> bool:
    """Whether the EXIF orientation (as _prepare applies it) swaps width and height."""
    try:
        return im.getexif().get(ORIENTATION, 1) in (5, 6, 7, 8)
    except Exception:  # unreadable EXIF: shown as stored
        return False


def _resized(im: Image.Image, size: tuple[int, int], fmt: str, icc: bytes | None,
             source_format: str, options: dict) -> EncodedImage:
    """`im` resized to `size`, encoded."""
    if im.size == size:  # a draft decode can land on the size exactly
        return _encode(im, fmt, icc, source_format, **options)
    # reducing_gap: a box reduce to about 3x the target first, then Lanczos (fast, and
    # indistinguishable from Lanczos over the full image at these ratios)
    small = im.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    try:
        return _encode(small, fmt, icc, source_format, **options)
    finally:
        small.close()


# One memory-backed file per thread, and new ones in a forked child: the parent's would be shared.
_scratch = per_process(threading.local)


def _save_jpeg(im: Image.Image, options: dict, sink: str) -> bytes:
    if sink == "bytesio" or (sink == "auto" and not hasattr(os, "memfd_create")):
        out = io.BytesIO()
        im.save(out, "JPEG", **options)
        return out.getvalue()
    file = _scratch_file()
    try:
        im.save(file, "JPEG", **options)  # Pillow writes straight to the descriptor
        size = file.tell()
        return os.pread(file.fileno(), size, 0)
    finally:
        file.seek(0)
        file.truncate(0)


def _scratch_file() -> io.FileIO:
    """This thread's memory-backed file."""
    scratch = _scratch()
    file = getattr(scratch, "file", None)
    if file is None:
        fd = os.memfd_create("batchpress-encode", os.MFD_CLOEXEC)
        file = scratch.file = io.FileIO(fd, "w+b", closefd=True)
    return file


def _short(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text if len(text) < 160 else text[:160] + "…"
