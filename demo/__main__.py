"""`make demo`: a first batch that works on a machine with no internet.

It serves a few sample photos (demo/samples.py) on 127.0.0.1, starts the service as `make run`
does (embedded default) allowing exactly that image server (TRUSTED_IMAGE_ORIGINS, not every
private address), uploads a sample CSV through the API, shows the progress, then saves the
outputs in a folder and says how much was saved.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

from demo import samples

ROOT = Path(__file__).resolve().parent.parent
SERVICE_VARIABLES = {"REDIS_URL", "MONGO_URL", "S3_ENDPOINT_URL", "API_KEYS", "PUBLIC_BASE_URL",
                     "PUBLIC_API_URL", "ALLOW_PRIVATE_URLS", "TRUSTED_IMAGE_ORIGINS", "HOST",
                     "PORT"}
FINISHED = {"completed", "completed_with_errors", "failed", "cancelled"}


class DemoError(Exception):
    """Why the demo could not finish (printed as one line)."""


def serve_photos(photos: dict[str, bytes]) -> ThreadingHTTPServer:
    """The sample photos on http://127.0.0.1:<free port>/<name>, from a thread."""
    types = {".jpg": "image/jpeg", ".png": "image/png"}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            body = photos.get(self.path.lstrip("/"))
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", types[Path(self.path).suffix])
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="photos", daemon=True).start()
    return server


def sample_csv(image_base: str) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["S. No.", "Product Name", "Input Image Urls"])
    for number, (name, files) in enumerate(samples.PRODUCTS, start=1):
        writer.writerow([number, name, ",".join(f"{image_base}/{f}" for f in files)])
    return out.getvalue()


def free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_service(port: int, image_origin: str, folder: Path) -> subprocess.Popen:
    """`python -m api` in the embedded default, trusting only the photo server's origin.

    It runs in the output folder, so a `.env` of the checkout (real services) is not read.
    """
    env = {k: v for k, v in os.environ.items() if k.upper() not in SERVICE_VARIABLES}
    env.update(PORT=str(port), TRUSTED_IMAGE_ORIGINS=image_origin, LOG_LEVEL="WARNING",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
               PYTHONUNBUFFERED="1")
    log = open(folder / "service.log", "w")
    return subprocess.Popen([sys.executable, "-m", "api"], cwd=folder, env=env, stdout=log,
                            stderr=subprocess.STDOUT)


def wait_until_up(base: str, service: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.poll() is not None:
            raise DemoError(f"the service stopped at start-up; its log is {log}:\n"
                            + log.read_text()[-2000:])
        try:
            if requests.get(base + "/healthz", timeout=1).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    raise DemoError(f"the service did not answer within {timeout:g} s; see {log}")


def watch(base: str, batch: dict, out=sys.stdout, timeout: float = 120) -> dict:
    """Poll the batch until it finishes, printing each change of its progress."""
    url = base + "/api/v1/batches/" + batch["id"]
    deadline, shown = time.monotonic() + timeout, None
    while True:
        images = batch["images"]
        state = (batch["status"], images["processed"], images["failed"], images["total"])
        if state != shown:
            bar = "#" * round(20 * batch["progress"])
            print(f"  [{bar:<20}] {batch['status']:<22} {images['processed']} done, "
                  f"{images['failed']} failed of {images['total']} images", file=out, flush=True)
            shown = state
        if batch["status"] in FINISHED:
            return batch
        if time.monotonic() > deadline:
            raise DemoError(f"the batch is still {batch['status']} after {timeout:g} s")
        time.sleep(0.2)
        batch = requests.get(url, timeout=10).json()


def save_outputs(base: str, batch: dict, folder: Path) -> list[dict]:
    """output.csv, errors.csv and every output image into `folder`; one entry per image."""
    for name, link in (("output.csv", "output_csv"), ("errors.csv", "errors_csv")):
        (folder / name).write_bytes(requests.get(batch["links"][link], timeout=30).content)
    outputs = folder / "outputs"
    outputs.mkdir(exist_ok=True)
    products = requests.get(batch["links"]["products"], params={"limit": 500}, timeout=30).json()
    saved, seen = [], set()
    for product in products["items"]:
        for image in product["images"]:
            if image["status"] != "processed" or image["output_url"] in seen:
                continue
            seen.add(image["output_url"])
            name = Path(image["input_url"]).stem + Path(image["output_url"]).suffix
            path = outputs / name
            path.write_bytes(requests.get(image["output_url"], timeout=30).content)
            saved.append({"path": path, "bytes_in": image["bytes_in"],
                          "bytes_out": image["bytes_out"], "url": image["output_url"],
                          "kept": image.get("kept_original", False)})
    return saved


def report(batch: dict, saved: list[dict], folder: Path, out=sys.stdout) -> None:
    print(f"\nBatch {batch['id']}: {batch['status']}", file=out)
    width = max((len(str(item["path"].name)) for item in saved), default=10)
    for item in saved:
        ratio = 1 - item["bytes_out"] / item["bytes_in"]
        how = ("kept as it was, metadata removed: re-encoding would not make it smaller"
               if item["kept"] else f"{ratio:.0%} smaller")
        print(f"  {item['path'].name:<{width}}  {item['bytes_in']:>9,} B -> "
              f"{item['bytes_out']:>9,} B  ({how})", file=out)
    total_in = sum(item["bytes_in"] for item in saved)
    total_out = sum(item["bytes_out"] for item in saved)
    if total_in:
        print(f"  {'total':<{width}}  {total_in:>9,} B -> {total_out:>9,} B  "
              f"({1 - total_out / total_in:.0%} saved)", file=out)
    print(f"\nOutputs saved in {folder / 'outputs'}/ ; output.csv, errors.csv and the sample "
          f"input (products.csv, photos/) are in {folder}/", file=out)


def run(folder: Path, keep: bool, out=sys.stdout) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    photos = samples.render_all()
    (folder / "photos").mkdir(exist_ok=True)
    for name, body in photos.items():
        (folder / "photos" / name).write_bytes(body)
    photo_server = serve_photos(photos)
    image_origin = f"http://127.0.0.1:{photo_server.server_address[1]}"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    print(f"Sample photos served on {image_origin}/ (the only private address the service may "
          f"fetch: TRUSTED_IMAGE_ORIGINS={image_origin})", file=out)
    print(f"Starting the service on {base} (embedded default; log in {folder / 'service.log'})",
          file=out, flush=True)
    service = start_service(port, image_origin, folder)
    try:
        wait_until_up(base, service, folder / "service.log")
        text = sample_csv(image_origin)
        (folder / "products.csv").write_text(text)
        answer = requests.post(base + "/api/v1/batches", timeout=30,
                               files={"file": ("products.csv", text, "text/csv")})
        if answer.status_code != 202:
            raise DemoError(f"the upload was refused: {answer.status_code} {answer.text[:300]}")
        batch = answer.json()
        print(f"Uploaded products.csv ({len(samples.PRODUCTS)} products): batch {batch['id']}, "
              f"{base}{answer.headers['Location']}", file=out, flush=True)
        batch = watch(base, batch, out)
        saved = save_outputs(base, batch, folder)
        report(batch, saved, folder, out)
        if keep:
            print(f"\nThe service keeps running on {base} (API docs: {base}/docs, console: "
                  f"{base}/); Ctrl-C stops it.", file=out, flush=True)
            service.wait()
        return 0 if batch["status"] == "completed" else 1
    except KeyboardInterrupt:
        return 130
    finally:
        service.terminate()
        try:
            service.wait(timeout=15)
        except subprocess.TimeoutExpired:
            service.kill()
        photo_server.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("demo-output"),
                        help="folder for the outputs (default: ./demo-output)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the service running afterwards, until Ctrl-C")
    args = parser.parse_args(argv)
    try:
        return run(args.output.resolve(), args.keep)
    except (DemoError, requests.RequestException, OSError) as error:
        print(f"The demo could not finish: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
