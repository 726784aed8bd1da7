"""Keeping the memory of decoded images mapped from one image to the next, and shared by the
threads of a process.

Decoding and encoding a photo allocate tens of megabytes (Pillow's image blocks, libjpeg's and
libwebp's buffers). By default Pillow frees its blocks at once and glibc hands large freed
areas back to the kernel (the pool threads' arenas are trimmed eagerly), so the next image
faults every page in again and the kernel zeroes each one: measured in `make bench`, about 3 ms
of a worker's CPU per image, 7 % of it. And glibc gives each thread an arena of its own (up to
8 per core), so every pool thread that ever decoded an image holds its own peak: a chunk job's
work-horse, forked fresh, faulted in ~45,000 pages (180 MB) before its images reused any.

So: Pillow keeps freed blocks (as many as MAX_PIXELS_IN_FLIGHT can fill), glibc keeps freed
memory up to TRIM_THRESHOLD and serves blocks up to MMAP_THRESHOLD from its arenas, and the
threads share one arena. A worker's resident size then stays near the peak of its images in
flight (which MAX_PIXELS_IN_FLIGHT bounds) instead of falling between images or adding up per
thread: `make bench`'s work-horses peaked at ~240 MB instead of ~380. One arena is enough: the
decoders and encoders allocate a few buffers an image, not a row, and the rest of the threads'
allocations are made holding the GIL, one thread at a time (interleaved `make bench` runs:
workers/encode 1.14-1.17 with one arena, 1.18-1.20 with glibc's default).

A forking worker's work-horse still starts with none of that memory: encoding the corpus once,
it faults in ~24,700 pages (4 KiB each) before its images reuse any. glibc can ask for that
memory in 2 MiB transparent huge pages (`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, read as a
process starts; glibc 2.35+, the kernel's THP in `madvise` mode): ~4,200 faults, but each
zeroes 2 MiB at once. Measured with `bench/fork_memory.py`, what a fresh work-horse pays for its
memory went down on one machine (72 -> 66 ms) and up on another of the same kind (55 -> 142
ms), so the service leaves it off; a deployment that measures a gain on its hosts sets it.

`keep_image_memory` is called once per process, before it forks work-horses (they inherit it).
What a deployment sets itself wins, parameter by parameter: `PILLOW_BLOCKS_MAX`,
`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`, `MALLOC_ARENA_MAX`, or the matching
`glibc.malloc.` tunable in `GLIBC_TUNABLES`.
"""
from __future__ import annotations

import ctypes
import logging
import os

from PIL import Image

log = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h) and the largest mmap threshold it takes on 64-bit
# (HEAP_MAX_SIZE / 2): blocks up to that size are served from the arenas and reused.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 256 * 1024 * 1024
ARENAS = 1
BYTES_PER_PIXEL = 4  # Pillow stores RGB as RGBX
MAX_BLOCKS = 1024  # Pillow's cache takes a bounded count (16 GiB of its default blocks)


def blocks_to_keep(max_pixels_in_flight: int) -> int:
    """Pillow's block cache holds at most what the pixel budget lets be decoded at once."""
    blocks = max_pixels_in_flight * BYTES_PER_PIXEL // Image.core.get_block_size()
    return min(MAX_BLOCKS, max(1, blocks))


def keep_image_memory(max_pixels_in_flight: int) -> dict[str, int]:
    """Keep freed image memory for the next image, in one glibc arena (see above); returns
    what was set."""
    done: dict[str, int] = {}
    if "PILLOW_BLOCKS_MAX" not in os.environ:
        done["pillow_blocks_max"] = blocks_to_keep(max_pixels_in_flight)
        Image.core.set_blocks_max(done["pillow_blocks_max"])
    tunables = _tunables(os.environ.get("GLIBC_TUNABLES", ""))
    mallopt = _mallopt()
    wanted = {"MALLOC_MMAP_THRESHOLD_": ("mmap_threshold", _M_MMAP_THRESHOLD, MMAP_THRESHOLD),
              "MALLOC_TRIM_THRESHOLD_": ("trim_threshold", _M_TRIM_THRESHOLD, TRIM_THRESHOLD),
              "MALLOC_ARENA_MAX": ("arena_max", _M_ARENA_MAX, ARENAS)}
    for variable, (name, parameter, value) in wanted.items():
        if mallopt is not None and variable not in os.environ and name not in tunables \
                and mallopt(parameter, value) == 1:
            done[name] = value
    log.debug("image memory kept between images: %s", done)
    return done


def _tunables(value: str) -> dict[str, str]:
    """glibc's malloc tunables in a GLIBC_TUNABLES value (`glibc.malloc.NAME=VALUE:...`)."""
    found = {}
    for item in value.split(":"):
        name, _, setting = item.partition("=")
        if name.startswith("glibc.malloc."):
            found[name.removeprefix("glibc.malloc.")] = setting
    return found


def _mallopt():
    """glibc's mallopt, or None where the C library is another (musl, macOS)."""
    try:
        # The C library this process already has loaded (find_library would run ldconfig).
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # only glibc has it
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return None
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt
