"""Re-encoding one image with Pillow by the contract's format policy, at OUTPUT_QUALITY."""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

Image.MAX_IMAGE_PIXELS = None  # we check the size ourselves, before decoding


class ImageError(Exception):
    """The bytes are not an image we can re-encode; the message is shown to the user."""


@dataclass(frozen=True)
class EncodedImage:
    data: bytes
    content_type: str
    extension: str
    width: int
    height: int


def compress(data: bytes, *, quality: int = 50, max_pixels: int = 50_000_000,
             optimize: bool = False, webp_method: int = 4) -> EncodedImage:
    """Decode `data`, apply EXIF orientation, and re-encode: JPEG, or WebP for WebP and alpha."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            source_format = im.format
            if im.width * im.height > max_pixels:
                raise ImageError(
                    f"image is {im.width}x{im.height} pixels, over the {max_pixels}-pixel limit")
            icc = im.info.get("icc_profile")
            if getattr(im, "is_animated", False):
                im.seek(0)
            im.load()
            ImageOps.exif_transpose(im, in_place=True)
    except ImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError("not a decodable image") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"broken image: {error}") from None

    has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
    out = io.BytesIO()
    options = {"icc_profile": icc} if icc else {}
    if source_format == "WEBP" or has_alpha:
        if im.mode not in ("RGB", "RGBA"):
            im = im.convert("RGBA" if has_alpha else "RGB")
        im.save(out, "WEBP", quality=quality, method=webp_method, **options)
        kind = ("image/webp", "webp")
    else:
        if im.mode != "RGB":
            im = _to_rgb(im)
        im.save(out, "JPEG", quality=quality, optimize=optimize, **options)
        kind = ("image/jpeg", "jpg")
    return EncodedImage(out.getvalue(), kind[0], kind[1], im.width, im.height)


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "CMYK":
        return im.convert("RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        return im.point(lambda v: v / 256).convert("L").convert("RGB")
    return im.convert("RGB")
