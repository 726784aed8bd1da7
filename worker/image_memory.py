"""Keeping the memory of decoded images mapped from one image to the next.

Decoding and encoding a photo allocate tens of megabytes (Pillow's image blocks, libjpeg's and
libwebp's buffers). By default Pillow frees its blocks at once and glibc hands large freed
areas back to the kernel (the pool threads' arenas are trimmed eagerly), so the next image
faults every page in again and the kernel zeroes each one: measured in `make bench`, about 3 ms
of a worker's CPU per image, 7 % of it. Kept mapped, a worker's resident size stays near its
peak instead of falling between images; MAX_PIXELS_IN_FLIGHT bounds that peak either way.

`keep_image_memory` is called once per process, before it forks work-horses (they inherit it).
What a deployment sets itself wins: `PILLOW_BLOCKS_MAX`, `MALLOC_MMAP_THRESHOLD_`,
`MALLOC_TRIM_THRESHOLD_` or `GLIBC_TUNABLES` in the environment leave the matching part alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

from PIL import Image

log = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h) and the largest mmap threshold it takes on 64-bit
# (HEAP_MAX_SIZE / 2): blocks up to that size are served from the arenas and reused.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 256 * 1024 * 1024
BYTES_PER_PIXEL = 4  # Pillow stores RGB as RGBX


def blocks_to_keep(max_pixels_in_flight: int) -> int:
    """Pillow's block cache holds at most what the pixel budget lets be decoded at once."""
    return max(1, max_pixels_in_flight * BYTES_PER_PIXEL // Image.core.get_block_size())


def keep_image_memory(max_pixels_in_flight: int) -> dict[str, int]:
    """Keep freed image memory for the next image (see above); returns what was set."""
    done: dict[str, int] = {}
    if "PILLOW_BLOCKS_MAX" not in os.environ:
        done["pillow_blocks_max"] = blocks_to_keep(max_pixels_in_flight)
        Image.core.set_blocks_max(done["pillow_blocks_max"])
    if not any(name in os.environ for name in
               ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")):
        mallopt = _mallopt()
        if mallopt is not None and mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 \
                and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1:
            done.update(mmap_threshold=MMAP_THRESHOLD, trim_threshold=TRIM_THRESHOLD)
    log.debug("image memory kept between images: %s", done)
    return done


def _mallopt():
    """glibc's mallopt, or None where the C library is another (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # only glibc has it
    except (OSError, AttributeError, TypeError):
        return None
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt
