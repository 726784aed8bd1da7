"""`make demo` end to end: from a checkout with no internet, a first batch that completes."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from demo import samples

ROOT = Path(__file__).resolve().parent.parent


def test_the_demo_runs_a_first_batch_and_says_what_was_saved(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "ALLOW_PRIVATE_URLS"}
    env["ALLOW_PRIVATE_URLS"] = "false"  # the demo must not need it, and must override it
    folder = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "demo", "--output", str(folder)], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    said = result.stdout
    assert "TRUSTED_IMAGE_ORIGINS=http://127.0.0.1:" in said
    assert "completed" in said and "saved)" in said and str(folder / "outputs") in said
    photos = samples.render_all()
    outputs = {p.stem: p for p in (folder / "outputs").iterdir()}
    assert sorted(outputs) == sorted(Path(name).stem for name in photos)
    for name, original in photos.items():
        out = outputs[Path(name).stem]
        before, after = Image.open(io.BytesIO(original)), Image.open(out)
        assert after.size == before.size
        assert out.stat().st_size <= len(original)
    jpeg_in = sum(len(b) for n, b in photos.items() if n.endswith(".jpg"))
    jpeg_out = sum(outputs[Path(n).stem].stat().st_size for n in photos if n.endswith(".jpg"))
    assert jpeg_out < jpeg_in / 2  # quality 50 of quality-95 photos
    output_csv = (folder / "output.csv").read_text().splitlines()
    assert output_csv[0] == "S. No.,Product Name,Input Image Urls,Output Image Urls"
    assert len(output_csv) == 1 + len(samples.PRODUCTS)
    assert len((folder / "errors.csv").read_text().splitlines()) == 1  # the header only


def test_the_demo_says_why_when_the_service_cannot_start(tmp_path):
    env = {**os.environ, "OUTPUT_QUALITY": "500"}  # refused by the service at start-up
    result = subprocess.run([sys.executable, "-m", "demo", "--output", str(tmp_path)], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("The demo could not finish: the service stopped at start-up")
    assert "OUTPUT_QUALITY=" in result.stderr and "Traceback" not in result.stderr
