"""worker/encode.py: every format case of the contract, checked from the output bytes."""
from __future__ import annotations

import io
import random
import struct
import threading
import warnings

import pytest
from PIL import Image, ImageChops, ImageOps, ImageStat

from schemas.failures import FailureCode
from tests import image_factory as make
from worker.encode import EncodedImage, ImageError, compress, header_pixels

Q = 50


# --------------------------------------------------------------------------- helpers

def open_out(result: EncodedImage) -> Image.Image:
    im = Image.open(io.BytesIO(result.data))
    im.load()
    return im


def reference_jpeg(mode: str = "RGB", quality: int = Q) -> Image.Image:
    """What Pillow itself writes at `quality`: the tables the output must carry."""
    out = io.BytesIO()
    make.photo(mode=mode).save(out, "JPEG", quality=quality)
    return Image.open(out)


def mean_diff(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference per channel, 0..255."""
    assert a.size == b.size
    if a.mode != b.mode:
        b = b.convert(a.mode)
    return max(ImageStat.Stat(ImageChops.difference(a, b)).mean)


def jpeg_segments(data: bytes) -> list[tuple[int, bytes]]:
    """(marker, payload) of every segment before the scan data."""
    assert data[:2] == b"\xff\xd8"
    segments, i = [], 2
    while True:
        assert data[i] == 0xFF
        marker = data[i + 1]
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        segments.append((marker, data[i + 4:i + 2 + length]))
        if marker == 0xDA:  # start of scan
            return segments
        i += 2 + length


def webp_chunks(data: bytes) -> dict[bytes, bytes]:
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    chunks, i = {}, 12
    while i < len(data):
        kind, size = data[i:i + 4], struct.unpack("<I", data[i + 4:i + 8])[0]
        chunks[kind] = data[i + 8:i + 8 + size]
        i += 8 + size + (size & 1)
    return chunks


def assert_no_metadata(result: EncodedImage) -> None:
    if result.content_type == "image/jpeg":
        markers = [marker for marker, _ in jpeg_segments(result.data)]
        assert 0xE1 not in markers  # APP1: EXIF and XMP
        assert 0xFE not in markers  # COM
        for marker, payload in jpeg_segments(result.data):
            if marker == 0xE2:
                assert payload.startswith(b"ICC_PROFILE\0")
            assert marker not in range(0xE3, 0xF0)  # no other application segments
    else:
        chunks = webp_chunks(result.data)
        assert b"EXIF" not in chunks and b"XMP " not in chunks
    im = open_out(result)
    assert not im.getexif()
    assert "exif" not in im.info and "xmp" not in im.info and "comment" not in im.info


def alpha_of(im: Image.Image) -> Image.Image:
    return im.convert("RGBA").getchannel("A")


# --------------------------------------------------------------------------- JPEG output

@pytest.mark.parametrize("quality", [30, 50, 80])
def test_jpeg_gets_exactly_the_quality_tables(quality):
    result = compress(make.jpeg(quality=90), quality=quality)
    out = open_out(result)
    assert out.format == "JPEG" and result.content_type == "image/jpeg"
    assert result.extension == "jpg"
    assert out.quantization == reference_jpeg(quality=quality).quantization
    assert out.quantization != reference_jpeg(quality=90).quantization


def test_jpeg_keeps_size_and_looks_the_same():
    result = compress(make.jpeg(size=(123, 45)))
    out = open_out(result)
    assert out.size == (123, 45) == (result.width, result.height)
    assert out.mode == "RGB"
    assert mean_diff(out, make.photo((123, 45))) < 12


def test_gray_jpeg_stays_gray_with_q50_table():
    out = open_out(compress(make.jpeg(mode="L")))
    assert out.mode == "L"
    assert out.quantization == reference_jpeg("L").quantization


@pytest.mark.parametrize("optimize", [False, True])
def test_optimize_changes_size_not_tables(optimize):
    plain = compress(make.jpeg(size=(300, 200)), optimize=False)
    result = compress(make.jpeg(size=(300, 200)), optimize=optimize)
    assert open_out(result).quantization == reference_jpeg().quantization
    if optimize:
        assert len(result.data) < len(plain.data)
        assert mean_diff(open_out(result), open_out(plain)) == 0  # lossless step


def test_progressive_and_444_input_become_baseline_q50():
    data = make.jpeg(size=(200, 100), progressive=True, subsampling=0)
    out = open_out(compress(data))
    assert out.quantization == reference_jpeg().quantization
    assert not out.info.get("progressive")


def test_low_quality_input_is_reencoded_at_q50_when_keeping_originals_is_off():
    result = compress(make.jpeg(quality=20), keep_original=False)
    assert not result.kept_original
    assert open_out(result).quantization == reference_jpeg().quantization


def test_memfd_and_bytesio_give_the_same_bytes():
    data = make.jpeg(size=(200, 150))
    assert compress(data, sink="memfd").data == compress(data, sink="bytesio").data


def test_threads_each_get_their_own_output():
    sources = {size: make.jpeg(size=size) for size in [(40, 30), (80, 60), (120, 90), (160, 90)]}
    expected = {size: compress(data, sink="bytesio").data for size, data in sources.items()}
    errors = []

    def work(size):
        try:
            for _ in range(20):
                assert compress(sources[size]).data == expected[size]
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(size,)) for size in sources]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors


# --------------------------------------------------------------------------- orientation

@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation):
    data = make.exif_rotated_jpeg(orientation=orientation)
    result = compress(data)
    out = open_out(result)
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    assert out.size == upright.size == (result.width, result.height)
    if orientation in (5, 6, 7, 8):
        assert out.size == (64, 96)  # stored 96x64, displayed turned
    assert mean_diff(out, upright) < 12
    stored = Image.open(io.BytesIO(data)).convert("RGB")
    if orientation != 1 and stored.size == out.size:
        assert mean_diff(out, stored) > 30  # the check would see a missed rotation
    assert not out.getexif()  # no Orientation tag left to turn it twice


def test_orientation_6_puts_the_dark_corner_top_right():
    out = open_out(compress(make.exif_rotated_jpeg(orientation=6)))
    w, h = out.size
    assert sum(out.getpixel((w - 3, 2))) < 60      # stored top-left is now top-right
    assert sum(out.getpixel((2, 2))) > 60


def test_png_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 8
    data = make.png(exif=exif.tobytes())
    out = open_out(compress(data))
    assert out.size == (64, 96)
    assert not out.getexif()


# --------------------------------------------------------------------------- metadata

def test_exif_gps_xmp_and_comment_are_stripped_icc_kept():
    data = make.jpeg_with_metadata()
    source = Image.open(io.BytesIO(data))
    assert source.info["icc_profile"] and source.getexif() and source.info["xmp"]
    result = compress(data)
    assert_no_metadata(result)
    for secret in (b"SecretCam", b"Secret Photographer", b"Main St", b"Editor 1.0"):
        assert secret not in result.data
    assert open_out(result).info["icc_profile"] == source.info["icc_profile"]


def test_png_text_and_icc():
    from PIL import PngImagePlugin
    text = PngImagePlugin.PngInfo()
    text.add_text("Author", "Secret Photographer")
    data = make.png(icc_profile=make.srgb_profile(), pnginfo=text)
    result = compress(data)
    assert result.content_type == "image/jpeg"
    assert_no_metadata(result)
    assert b"Secret Photographer" not in result.data
    assert open_out(result).info["icc_profile"] == make.srgb_profile()


def test_webp_metadata_stripped_icc_kept():
    exif = make.gps_exif()
    data = make.webp(icc_profile=make.srgb_profile(), exif=exif.tobytes(), xmp=make.XMP)
    result = compress(data)
    assert result.content_type == "image/webp"
    assert_no_metadata(result)
    assert webp_chunks(result.data)[b"ICCP"] == make.srgb_profile()


def test_no_icc_in_means_no_icc_out():
    assert "icc_profile" not in open_out(compress(make.jpeg())).info
    assert b"ICCP" not in webp_chunks(compress(make.webp()).data)


def test_gray_profile_stays_with_a_gray_jpeg():
    out = open_out(compress(make.png(mode="L", icc_profile=make.gray_profile())))
    assert out.mode == "L" and out.info["icc_profile"] == make.gray_profile()


def test_gray_with_alpha_and_a_profile_goes_to_webp_through_the_profile():
    result = compress(make.png(mode="LA", icc_profile=make.gray_profile()))
    _assert_alpha_kept(result)
    icc = webp_chunks(result.data)[b"ICCP"]
    assert icc[16:20] == b"RGB "  # an sRGB profile for the RGB pixels, not the gray one
    out = open_out(result).convert("RGB")
    r, g, b = out.getpixel((30, 40))
    assert r == g == b  # still gray


def test_broken_icc_profile_is_dropped_not_fatal():
    out = open_out(compress(make.png(icc_profile=b"not a profile" * 20)))
    assert "icc_profile" not in out.info


# --------------------------------------------------------------------------- alpha

def _assert_alpha_kept(result: EncodedImage) -> None:
    assert result.content_type == "image/webp" and result.extension == "webp"
    out = open_out(result)
    assert out.format == "WEBP" and out.mode == "RGBA"
    w, h = out.size
    alpha = alpha_of(out)
    assert alpha.getpixel((2, 2)) == 255              # left: opaque
    assert alpha.getpixel((w - 3, h - 3)) == 0        # right: transparent
    assert_no_metadata(result)


@pytest.mark.parametrize("source", [
    pytest.param(lambda: make.png(mode="RGBA"), id="rgba-png"),
    pytest.param(lambda: make.png(mode="LA"), id="la-png"),
    pytest.param(make.palette_png_with_transparency, id="palette-png-trns"),
    pytest.param(lambda: make.png16_rgb(alpha=True), id="16bit-rgba-png"),
    pytest.param(lambda: make.webp(alpha=True), id="webp-alpha"),
    pytest.param(lambda: make.webp(alpha=True, lossless=True), id="webp-lossless-alpha"),
])
def test_alpha_is_never_lost(source):
    _assert_alpha_kept(compress(source()))


def test_alpha_png_pixels_match():
    out = open_out(compress(make.png(mode="RGBA")))
    assert mean_diff(alpha_of(out), make.alpha_mask()) < 1  # alpha is stored losslessly


def test_gif_with_transparency_becomes_webp():
    im = make.photo().convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    im.paste(0, (48, 0, 96, 64))
    out = io.BytesIO()
    im.save(out, "GIF", transparency=0)
    _assert_alpha_kept(compress(out.getvalue()))


def test_rgb_png_with_transparent_colour_becomes_webp():
    im = make.photo()
    im.paste((1, 2, 3), (48, 0, 96, 64))
    out = io.BytesIO()
    im.save(out, "PNG", transparency=(1, 2, 3))
    _assert_alpha_kept(compress(out.getvalue()))


def test_16bit_gray_with_transparent_value_keeps_alpha():
    wide = Image.new("I;16", make.SIZE, 40000)
    wide.paste(0, (48, 0, 96, 64))
    out = io.BytesIO()
    wide.save(out, "PNG", transparency=0)
    _assert_alpha_kept(compress(out.getvalue()))


# --------------------------------------------------------------------------- WebP output

def test_webp_stays_webp_at_the_quality():
    data = make.webp(size=(120, 80))
    result = compress(data, quality=Q, webp_method=4)
    assert result.content_type == "image/webp"
    assert (result.width, result.height) == (120, 80)
    reference = io.BytesIO()
    Image.open(io.BytesIO(data)).save(reference, "WEBP", quality=Q, method=4)
    assert result.data == reference.getvalue()  # byte for byte what Pillow writes at q50
    assert b"VP8 " in webp_chunks(result.data)  # lossy


def test_lossless_webp_becomes_lossy_webp():
    result = compress(make.webp(lossless=True))
    chunks = webp_chunks(result.data)
    assert b"VP8 " in chunks and b"VP8L" not in chunks


def test_animated_webp_keeps_the_first_frame():
    result = compress(make.animated_webp())
    out = open_out(result)
    assert result.content_type == "image/webp"
    assert getattr(out, "n_frames", 1) == 1 and b"ANIM" not in webp_chunks(result.data)
    assert mean_diff(out.convert("RGB"), make.photo()) < 20


# --------------------------------------------------------------------------- other formats

@pytest.mark.parametrize("source", [
    pytest.param(lambda: make.png(), id="png"),
    pytest.param(make.bmp, id="bmp"),
    pytest.param(make.tiff, id="tiff"),
    pytest.param(lambda: make.png(mode="P"), id="palette-png-opaque"),
    pytest.param(make.png16_rgb, id="16bit-rgb-png"),
])
def test_other_opaque_formats_become_q50_jpeg(source):
    result = compress(source())
    out = open_out(result)
    assert out.format == "JPEG" and out.mode == "RGB" and out.size == make.SIZE
    assert out.quantization == reference_jpeg().quantization
    assert mean_diff(out, make.photo()) < 15


def test_16bit_gray_png_is_scaled_not_clipped():
    out = open_out(compress(make.png16_gray()))
    assert out.format == "JPEG" and out.mode == "L"
    assert mean_diff(out, make.photo(mode="L")) < 6  # clipping would make it nearly all white


def test_cmyk_becomes_rgb():
    result = compress(make.cmyk_jpeg())
    out = open_out(result)
    assert out.mode == "RGB" and out.format == "JPEG"
    expected = Image.open(io.BytesIO(make.cmyk_jpeg())).convert("RGB")
    assert mean_diff(out, expected) < 12
    assert out.quantization == reference_jpeg().quantization


def test_cmyk_with_a_profile_that_does_not_fit_gets_no_profile():
    out = open_out(compress(make.cmyk_jpeg(icc_profile=make.srgb_profile())))
    assert out.mode == "RGB" and "icc_profile" not in out.info


def test_animated_gif_keeps_the_first_frame():
    result = compress(make.animated_gif())
    out = open_out(result)
    assert result.content_type == "image/jpeg"
    assert mean_diff(out, make.photo()) < 20  # frame 0, not the red frame 1


def test_animated_png_keeps_the_first_frame():
    data = make.animated_png()
    assert Image.open(io.BytesIO(data)).n_frames == 3
    result = compress(data)
    assert result.content_type == "image/jpeg"
    assert mean_diff(open_out(result), make.photo()) < 20


def test_content_is_decided_by_the_bytes():
    # A PNG is a PNG whatever the URL or server said; compress() sees only bytes.
    assert compress(make.png(mode="RGBA")).source_format == "PNG"
    assert compress(make.jpeg()).source_format == "JPEG"


# --------------------------------------------------------------------------- limits

def test_pixel_limit_is_inclusive():
    w, h = make.SIZE
    assert compress(make.jpeg(), max_pixels=w * h).width == w
    with pytest.raises(ImageError, match="over the") as caught:
        compress(make.jpeg(), max_pixels=w * h - 1)
    assert caught.value.code == FailureCode.TOO_MANY_PIXELS


@pytest.mark.parametrize("w,h", [(100_000, 100_000), (60_000, 1_000), (1, 60_000_000)])
def test_huge_header_is_refused_before_decoding(w, h):
    with pytest.raises(ImageError, match="pixel") as caught:
        compress(make.png_header_claiming(w, h), max_pixels=50_000_000)
    assert caught.value.code == FailureCode.TOO_MANY_PIXELS


def test_pillow_bomb_warning_is_an_error(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(ImageError, match="pixel") as caught:
            compress(make.jpeg(), max_pixels=5000)  # 6144 pixels: Pillow warns
        assert caught.value.code == FailureCode.TOO_MANY_PIXELS


def test_pillow_bomb_error_is_an_image_error(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageError, match="pixel") as caught:
        compress(make.jpeg(), max_pixels=1000)  # over twice Pillow's limit: it raises
    assert caught.value.code == FailureCode.TOO_MANY_PIXELS


def test_our_limit_never_lowers_pillows():
    before = Image.MAX_IMAGE_PIXELS
    compress(make.jpeg(), max_pixels=10_000)
    assert Image.MAX_IMAGE_PIXELS == before


# --------------------------------------------------------------------------- broken input

@pytest.mark.parametrize("data,message", [
    (b"", "not an image"),
    (b"<html><body>Not found</body></html>", "not an image"),
    (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "not an image"),  # no Ghostscript
    (b"%PDF-1.4\n", "not an image"),
    (b'<svg xmlns="http://www.w3.org/2000/svg"/>', "not an image"),
    (b"\xff\xd8\xff" + b"\0" * 100, None),
    (b"GIF89a" + b"\xff" * 20, None),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 30, None),
])
def test_garbage_is_an_image_error(data, message):
    with pytest.raises(ImageError, match=message):
        compress(data)


def test_truncated_jpeg_is_an_image_error():
    with pytest.raises(ImageError, match="truncated") as caught:
        compress(make.truncated_jpeg())
    assert caught.value.code == FailureCode.BROKEN_IMAGE


@pytest.mark.parametrize("source", [make.jpeg, make.png, make.webp, make.animated_gif, make.tiff,
                                    make.png16_gray, make.cmyk_jpeg])
def test_truncated_files_fail_cleanly(source):
    data = source()
    for cut in (len(data) // 3, len(data) // 2, len(data) - 10):
        try:
            compress(data[:cut])
        except ImageError:
            pass


def test_corrupted_files_never_raise_anything_but_image_error():
    rng = random.Random(1234)
    sources = [make.jpeg(), make.png(mode="RGBA"), make.webp(alpha=True), make.animated_gif(),
               make.tiff(), make.bmp(), make.jpeg_with_metadata(), make.palette_png_with_transparency()]
    for data in sources:
        for _ in range(25):
            broken = bytearray(data)
            for _ in range(rng.randint(1, 8)):
                broken[rng.randrange(len(broken))] = rng.randrange(256)
            try:
                result = compress(bytes(broken))
            except ImageError:
                continue
            assert result.data and result.width > 0


# --------------------------------------------------------------------------- never larger

def pixels_equal(a: bytes, b: bytes) -> bool:
    first, second = Image.open(io.BytesIO(a)), Image.open(io.BytesIO(b))
    return first.size == second.size and ImageChops.difference(
        first.convert("RGBA"), second.convert("RGBA")).getbbox() is None


@pytest.mark.parametrize("options", [{"quality": 30}, {"quality": 40, "progressive": True}])
def test_a_jpeg_that_q50_would_make_larger_is_kept_as_it_is(options):
    data = make.jpeg(size=(320, 240), **options)
    assert len(compress(data, keep_original=False).data) >= len(data)  # the case at hand
    result = compress(data)
    assert result.kept_original and result.content_type == "image/jpeg"
    assert len(result.data) < len(data)
    assert pixels_equal(result.data, data)  # the same scan data, not a re-encode
    assert bool(open_out(result).info.get("progressive")) == bool(options.get("progressive"))


def test_a_kept_jpeg_loses_exif_gps_xmp_and_comments_but_keeps_its_profile():
    data = make._save(make.photo((320, 240)), "JPEG", quality=30, icc_profile=make.srgb_profile(),
                      exif=make.gps_exif().tobytes(), xmp=make.XMP, comment=b"12 Main St")
    result = compress(data)
    assert result.kept_original
    assert len(result.data) < len(compress(data, keep_original=False).data)
    assert_no_metadata(result)
    for secret in (b"SecretCam", b"Secret Photographer", b"Main St"):
        assert secret not in result.data
    assert open_out(result).info["icc_profile"] == make.srgb_profile()
    assert pixels_equal(result.data, data)


def test_a_kept_mpo_keeps_only_its_first_picture():
    first, second = make.photo((320, 240)), make.photo((320, 240)).rotate(180)
    data = make._save(first, "MPO", quality=30, save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    result = compress(data)
    assert result.kept_original and len(result.data) < len(data) // 2 + 200
    kept = open_out(result)
    assert kept.format == "JPEG" and getattr(kept, "n_frames", 1) == 1
    assert pixels_equal(result.data, make._save(first, "JPEG", quality=30))


def test_a_high_quality_jpeg_is_still_reencoded():
    result = compress(make.jpeg(size=(320, 240), quality=90))
    assert not result.kept_original
    assert open_out(result).quantization == reference_jpeg().quantization


@pytest.mark.parametrize("data", [make.exif_rotated_jpeg(orientation=6, quality=20),
                                  make.cmyk_jpeg(quality=20)], ids=["rotated", "cmyk"])
def test_inputs_that_need_their_pixels_changed_are_always_reencoded(data):
    result = compress(data)
    assert not result.kept_original
    assert open_out(result).mode in ("RGB", "L")
    assert open_out(result).quantization == reference_jpeg().quantization


def test_a_tiny_png_is_kept_as_png_without_its_text():
    from PIL import PngImagePlugin
    text = PngImagePlugin.PngInfo()
    text.add_text("Author", "Secret Photographer")
    data = make._save(Image.new("P", (16, 16), 3), "PNG", pnginfo=text, dpi=(300, 300))
    result = compress(data)
    assert result.kept_original and result.content_type == "image/png"
    assert result.extension == "png" and len(result.data) < len(data)
    assert b"Secret Photographer" not in result.data and b"pHYs" not in result.data
    assert pixels_equal(result.data, data)


def test_a_small_webp_is_kept_without_exif_and_xmp():
    data = make._save(make.photo((200, 150)), "WEBP", quality=20, icc_profile=make.srgb_profile(),
                      exif=make.gps_exif().tobytes(), xmp=make.XMP)
    result = compress(data)
    assert result.kept_original and result.content_type == "image/webp"
    assert_no_metadata(result)
    assert webp_chunks(result.data)[b"ICCP"] == make.srgb_profile()
    assert webp_chunks(result.data)[b"VP8X"][0] & 0x0C == 0  # EXIF and XMP flags cleared
    assert pixels_equal(result.data, data)


# --------------------------------------------------------------------------- sizes

def test_sizes_are_resized_by_their_longest_edge_never_enlarged_same_format_rules():
    result = compress(make.jpeg(size=(960, 640)), sizes={"thumb": 200, "huge": 2000})
    thumb = result.variants["thumb"]
    assert (thumb.width, thumb.height, thumb.content_type) == (200, 133, "image/jpeg")
    assert open_out(thumb).quantization == reference_jpeg().quantization
    assert result.variants["huge"] is None  # not larger than that: the main output serves it
    alpha = compress(make.png(size=(400, 300), mode="RGBA"), sizes={"t": 100}).variants["t"]
    assert (alpha.width, alpha.height, alpha.content_type) == (100, 75, "image/webp")
    assert open_out(alpha).mode == "RGBA"
    turned = compress(make.exif_rotated_jpeg(size=(96, 64)), sizes={"t": 48}).variants["t"]
    assert (turned.width, turned.height) == (32, 48)  # upright, like the main output


def test_sizes_of_one_edge_share_one_output_encoded_once():
    result = compress(make.jpeg(size=(960, 640)), sizes={"a": 200, "b": 200, "c": 400})
    assert result.variants["a"] is result.variants["b"]  # one encode, not two equal ones
    assert (result.variants["a"].width, result.variants["c"].width) == (200, 400)
    sized = compress(make.jpeg(size=(960, 640)), sizes={"a": 200, "b": 200, "c": 400},
                     full_size=False)
    assert sized.size_name == "c" and sized.variants["a"] is sized.variants["b"]


# --------------------------------------------------------------------------- without full size

def test_without_full_size_the_output_is_the_largest_size_and_the_others_follow():
    data = make.jpeg(size=(2000, 1200))
    result = compress(data, sizes={"thumb": 200, "large": 480}, full_size=False)
    assert result.size_name == "large"
    out = open_out(result)
    assert (out.format, out.size, result.width, result.height) == ("JPEG", (480, 288), 480, 288)
    assert out.quantization == reference_jpeg().quantization
    assert result.variants["large"] is None  # this output is that size
    thumb = open_out(result.variants["thumb"])
    assert (thumb.format, thumb.size) == ("JPEG", (200, 120))
    # Drafted, then Lanczos: the same picture as a full decode resized the same way.
    full = compress(data, sizes={"large": 480}).variants["large"]
    assert mean_diff(out.convert("RGB"), open_out(full).convert("RGB")) < 2.0


def test_a_jpeg_is_decoded_at_the_smallest_scale_still_as_large_as_the_largest_size():
    from worker.encode import _decode
    for edge, decoded in ((480, (500, 300)), (500, (500, 300)), (501, (1000, 600)),
                          (1000, (1000, 600)), (1001, (2000, 1200))):
        im, _, stored = _decode(make.jpeg(size=(2000, 1200)), 50_000_000, draft_edge=edge)
        assert (im.size, stored) == (decoded, (2000, 1200)), edge
        # The pixel budget admits it by what it is decoded at, read without decoding.
        assert header_pixels(make.jpeg(size=(2000, 1200)), edge) == decoded[0] * decoded[1]
    assert header_pixels(make.png(size=(2000, 1200)), 480) == 2000 * 1200  # no draft for PNG


def test_without_full_size_the_sizes_are_the_same_as_from_a_full_decode():
    # 3001x2001 is drafted to 1501x1001 (each side rounded up): the sizes still follow 3001x2001.
    data = make.jpeg(size=(3001, 2001))
    sizes = {"s": 333, "large": 800}
    drafted = compress(data, sizes=sizes, full_size=False)
    full = compress(data, sizes=sizes)
    assert (drafted.width, drafted.height) == (full.variants["large"].width,
                                               full.variants["large"].height) == (800, 533)
    assert open_out(drafted.variants["s"]).size == open_out(full.variants["s"]).size == (333, 222)


def test_without_full_size_the_contract_s_format_rules_hold():
    # Stored sideways (1600x800, orientation 6): upright it is 800x1600, longest edge the same.
    turned = compress(make.exif_rotated_jpeg(size=(1600, 800)), sizes={"s": 400},
                      full_size=False)
    assert open_out(turned).size == (200, 400) and turned.size_name == "s"
    assert open_out(turned).getexif().get(0x0112) is None
    cmyk = compress(make.cmyk_jpeg(size=(1200, 800)), sizes={"s": 300}, full_size=False)
    assert (open_out(cmyk).mode, open_out(cmyk).size) == ("RGB", (300, 200))
    profiled = compress(make.jpeg(size=(1200, 800), icc_profile=make.srgb_profile()),
                        sizes={"s": 300}, full_size=False)
    assert open_out(profiled).info["icc_profile"] == make.srgb_profile()
    alpha = compress(make.png(size=(800, 600), mode="RGBA"), sizes={"s": 200}, full_size=False)
    out = open_out(alpha)
    assert (out.format, out.mode, out.size) == ("WEBP", "RGBA", (200, 150))


def test_without_full_size_a_smaller_image_is_kept_at_its_own_size():
    result = compress(make.jpeg(size=(300, 200)), sizes={"thumb": 100, "large": 800},
                      full_size=False)
    assert result.size_name is None and open_out(result).size == (300, 200)
    assert result.variants["large"] is None and open_out(result.variants["thumb"]).size == (100, 67)
