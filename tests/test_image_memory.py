"""Freed image memory kept for the next image (worker/image_memory.py), each case in a fresh
process: the settings are process-wide."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import json
from PIL import Image
from worker.image_memory import keep_image_memory
done = keep_image_memory(60_000_000)
print(json.dumps({"done": done, "blocks_max": Image.core.get_blocks_max()}))
"""


def _clean_environment() -> dict[str, str]:
    """This environment without the settings the module leaves to a deployment."""
    return {k: v for k, v in os.environ.items()
            if k not in ("PILLOW_BLOCKS_MAX", "GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_",
                         "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX")}


def _probe(**env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT,
                         env={**_clean_environment(), **env},
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return json.loads(out.splitlines()[-1])


def test_pillow_keeps_as_many_freed_blocks_as_the_pixel_budget_can_hold():
    probe = _probe()
    # 60 M pixels x 4 bytes in Pillow's 16 MiB blocks
    assert probe["blocks_max"] == probe["done"]["pillow_blocks_max"] == 14


def test_glibc_serves_image_sized_blocks_from_one_arena_and_keeps_them():
    if not _glibc():
        pytest.skip("not glibc")
    done = _probe()["done"]
    assert done["mmap_threshold"] == 32 * 1024 * 1024
    assert done["trim_threshold"] == 256 * 1024 * 1024
    assert done["arena_max"] == 1  # the threads share it, not glibc's up to 8 a core


def test_what_the_deployment_set_in_the_environment_wins_parameter_by_parameter():
    probe = _probe(PILLOW_BLOCKS_MAX="3", GLIBC_TUNABLES="glibc.malloc.trim_threshold=1048576")
    assert probe["blocks_max"] == 3  # Pillow's own variable, read as it is imported
    assert "pillow_blocks_max" not in probe["done"]
    assert "trim_threshold" not in probe["done"]
    if _glibc():
        assert probe["done"]["mmap_threshold"] == 32 * 1024 * 1024  # the others still set
    assert "arena_max" not in _probe(MALLOC_ARENA_MAX="4")["done"]
    # Tunables of something else, or huge pages alone, leave glibc's malloc to this module.
    if _glibc():
        assert "arena_max" in _probe(GLIBC_TUNABLES="glibc.rtld.optional_static_tls=4096")["done"]
        assert "arena_max" in _probe(GLIBC_TUNABLES="glibc.malloc.hugetlb=1")["done"]


def _glibc() -> str | None:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):
        return None
