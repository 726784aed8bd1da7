"""Freed image memory kept for the next image (worker/image_memory.py), each case in a fresh
process: the settings are process-wide."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from worker.image_memory import EXECUTED, huge_pages_environment

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
                         "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX", EXECUTED)}


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


# Runs itself again on huge pages, then holds 48 MB of pixels (a colour, so each page is
# written) and reports where they are.
HUGE_PROBE = """
import json, os, sys
print("started", os.getpid(), flush=True)
from worker.image_memory import keep_image_memory, use_huge_pages
use_huge_pages()
done = keep_image_memory(60_000_000)
from PIL import Image
image = Image.new("RGB", (4000, 3000), (200, 100, 50))
huge = [line for line in open("/proc/self/smaps_rollup") if line.startswith("AnonHugePages")]
print(json.dumps({"pid": os.getpid(), "argv": sys.argv[1:], "done": done,
                  "tunables": os.environ.get("GLIBC_TUNABLES"),
                  "huge_kb": int(huge[0].split()[1]) if huge else 0}))
"""


def _huge_probe(**env: str) -> tuple[list[str], dict]:
    out = subprocess.run([sys.executable, "-c", HUGE_PROBE, "an-argument"], cwd=ROOT,
                         env={**_clean_environment(), **env}, capture_output=True, text=True,
                         timeout=60, check=True).stdout.splitlines()
    return [line for line in out if line.startswith("started")], json.loads(out[-1])


def _glibc() -> str | None:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):
        return None


def _huge_pages_possible() -> bool:
    """glibc 2.35 or later, and the kernel's transparent huge pages in `madvise` mode."""
    return huge_pages_environment({}) is not None


NO_HUGE_PAGES = "needs glibc >= 2.35 and transparent huge pages in madvise mode"


@pytest.mark.skipif(not _huge_pages_possible(), reason=NO_HUGE_PAGES)
def test_a_process_runs_itself_again_once_with_its_image_memory_on_huge_pages():
    starts, probe = _huge_probe(GLIBC_TUNABLES="glibc.rtld.optional_static_tls=4096")
    assert len(starts) == 2 and starts[0] == starts[1] == f"started {probe['pid']}"  # exec
    assert probe["argv"] == ["an-argument"]
    assert probe["tunables"] == "glibc.rtld.optional_static_tls=4096:glibc.malloc.hugetlb=1"
    assert probe["huge_kb"] >= 2048  # the pixels are on 2 MiB pages
    assert probe["done"]["arena_max"] == 1  # and the rest is set as without them


@pytest.mark.skipif(not _huge_pages_possible(), reason=NO_HUGE_PAGES)
def test_a_deployment_that_turned_huge_pages_off_is_not_run_again():
    starts, probe = _huge_probe(GLIBC_TUNABLES="glibc.malloc.hugetlb=0")
    assert len(starts) == 1
    assert probe["tunables"] == "glibc.malloc.hugetlb=0"
    assert probe["huge_kb"] == 0  # in madvise mode only memory glibc asks for gets them


@pytest.mark.skipif(not _huge_pages_possible(), reason=NO_HUGE_PAGES)
def test_a_process_run_again_once_is_never_run_again():
    # As in secure-execution mode (setuid, file capabilities), where glibc drops the tunable:
    # the process must go on without huge pages, not exec itself forever.
    starts, probe = _huge_probe(**{EXECUTED: "1"})
    assert len(starts) == 1
    assert probe["tunables"] is None
