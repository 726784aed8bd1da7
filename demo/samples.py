"""Sample product photos for the demo, drawn with Pillow: nothing to download, nothing shipped.

Each is a studio-style shot (a soft backdrop, a product, its shadow, a little sensor noise),
saved the way cameras and shops save photos (JPEG at quality 95, or PNG with transparency), so
re-encoding at quality 50 saves what it saves on real photos.
"""
from __future__ import annotations

import io
import random

from PIL import Image, ImageDraw, ImageFilter

SIZE = (960, 720)


def _backdrop(top: tuple, bottom: tuple) -> Image.Image:
    gradient = Image.linear_gradient("L").resize(SIZE)
    return Image.composite(Image.new("RGB", SIZE, bottom), Image.new("RGB", SIZE, top), gradient)


def _noise(image: Image.Image, amount: int, seed: int) -> Image.Image:
    random.seed(seed)
    grain = Image.effect_noise(SIZE, 40).convert("RGB")
    return Image.blend(image, grain, amount / 100)


def _shadow(image: Image.Image, box: tuple) -> None:
    shadow = Image.new("L", SIZE, 0)
    ImageDraw.Draw(shadow).ellipse(box, fill=120)
    shadow = shadow.filter(ImageFilter.GaussianBlur(25))
    image.paste((40, 40, 40), mask=shadow)


def mug() -> bytes:
    image = _backdrop((236, 229, 220), (190, 180, 170))
    _shadow(image, (300, 560, 700, 640))
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle((320, 230, 600, 600), radius=40, fill=(178, 34, 34))
    draw.ellipse((320, 205, 600, 265), fill=(120, 20, 20))
    draw.arc((560, 300, 700, 480), start=-90, end=90, fill=(178, 34, 34), width=30)
    draw.rectangle((350, 260, 380, 580), fill=(215, 90, 80))  # the highlight
    return _jpeg(_noise(image.filter(ImageFilter.GaussianBlur(1.2)), 8, 1))


def teapot() -> bytes:
    image = _backdrop((214, 228, 240), (150, 170, 190))
    _shadow(image, (230, 570, 740, 650))
    draw = ImageDraw.Draw(image)
    draw.ellipse((260, 260, 680, 610), fill=(30, 90, 140))
    draw.polygon([(660, 400), (820, 300), (835, 320), (690, 470)], fill=(30, 90, 140))
    draw.arc((170, 320, 330, 520), start=90, end=270, fill=(25, 75, 120), width=28)
    draw.ellipse((420, 200, 520, 270), fill=(20, 60, 100))
    draw.ellipse((330, 310, 420, 420), fill=(90, 150, 200))  # the highlight
    return _jpeg(_noise(image.filter(ImageFilter.GaussianBlur(1.2)), 8, 2))


def plant() -> bytes:
    image = _backdrop((240, 240, 232), (200, 205, 190))
    _shadow(image, (330, 590, 640, 660))
    draw = ImageDraw.Draw(image)
    draw.polygon([(360, 450), (600, 450), (570, 630), (390, 630)], fill=(196, 110, 60))
    rng = random.Random(3)
    for _ in range(40):
        x, y = rng.randint(300, 660), rng.randint(120, 460)
        green = (rng.randint(30, 70), rng.randint(110, 170), rng.randint(40, 80))
        draw.ellipse((x - 45, y - 20, x + 45, y + 20), fill=green)
    return _jpeg(_noise(image.filter(ImageFilter.GaussianBlur(1.0)), 8, 3))


def sticker() -> bytes:
    """A cut-out product on a transparent background (comes out as WebP with alpha)."""
    image = Image.new("RGBA", (640, 640), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.ellipse((40, 40, 600, 600), fill=(250, 200, 40, 255))
    draw.ellipse((180, 200, 260, 300), fill=(40, 40, 40, 255))
    draw.ellipse((380, 200, 460, 300), fill=(40, 40, 40, 255))
    draw.arc((160, 260, 480, 480), start=20, end=160, fill=(40, 40, 40, 255), width=24)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=95)
    return out.getvalue()


# File name -> (product name, how to draw it); two products share the mug photo.
PHOTOS = {"red-mug.jpg": mug, "blue-teapot.jpg": teapot, "fern.jpg": plant,
          "smiley-sticker.png": sticker}
PRODUCTS = [
    ("Red mug", ["red-mug.jpg"]),
    ("Blue teapot, large", ["blue-teapot.jpg", "red-mug.jpg"]),
    ("Fern in a clay pot", ["fern.jpg"]),
    ("Smiley sticker", ["smiley-sticker.png"]),
]


def render_all() -> dict[str, bytes]:
    """Every sample photo's bytes, by file name."""
    return {name: draw() for name, draw in PHOTOS.items()}
