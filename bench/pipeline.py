"""Image pipeline benchmark (`make bench`).

(a) The machine's limit: decode + re-encode of the corpus with the service's encoder settings
    (worker.encode.compress, OUTPUT_QUALITY / OUTPUT_OPTIMIZE / WEBP_METHOD) on all cores, in a
    process pool, no I/O. Images/s and MP/s (megapixels of input decoded and encoded per second).
(b) End to end: the corpus (repeated, distinct URLs) served over loopback HTTP by its own
    process, uploaded through the API, processed by the production processes that the Procfile
    names (gunicorn, one `python -m worker` per core, `python -m worker --cron`) on a real
    redis-server, moto's S3 server and the MongoDB wire stand-in, each a process of its own
    (tests/topology.py); `--store sqlite` runs bare RQ workers on one SQLite file instead, and
    `--workers 0` the API and a SimpleWorker in one process on mongomock. See bench/e2e.py.
    Also prints the CPU seconds each process used while the batch ran. The last line reads
    `ratio e2e/limit: X` (images/s of (b) over images/s of (a) on all cores).

(a) on all cores runs before (b) and again after it; the limit (b) is compared with is the two
together (on a shared host the machine's speed drifts over a minute: a warning says when the
two differ by more than 5 %).

Options:
    --seconds S   run each measurement of (a) for at least S seconds (default 8)
    --e2e-seconds S   size the corpus repetitions so that (b) runs about S seconds (default 30)
    --profile FILE    run (b)'s service process under `py-spy record` (collapsed stacks in
                  FILE; summarise with `python bench/profile_summary.py FILE`); --native adds C
                  frames (py-spy then takes ~0.5 core itself: use it for where, not how fast)
    --latency-ms MS   the image server answers after MS ms, like a remote host (default 0)
    --limit R     skip (a), take R images/s as the limit (sweeps of (b))
    --no-e2e      only (a)
    --compare     also measure the encoder choices on one core and with threads: OUTPUT_OPTIMIZE
                  on/off, WebP `method` 0..6, BytesIO vs memfd output, 1 vs 2 threads
    --workers N   worker processes of (b) (default one per core); --store wire|sqlite

The corpus is BENCH_CORPUS, or ../shared/corpus next to the repository.
"""
from __future__ import annotations

import argparse
import io
import os
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from infra.settings import Settings  # noqa: E402
from worker.encode import compress  # noqa: E402
from worker.image_memory import keep_image_memory  # noqa: E402

EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif"}


# --------------------------------------------------------------------------- corpus

@dataclass(frozen=True)
class Item:
    name: str
    data: bytes
    pixels: int
    format: str


def corpus_dir() -> Path:
    return Path(os.environ.get("BENCH_CORPUS") or ROOT.parent / "shared" / "corpus")


def load_corpus(path: Path | None = None) -> list[Item]:
    path = path or corpus_dir()
    if not path.is_dir():
        raise SystemExit(f"no corpus folder at {path}: set BENCH_CORPUS to a folder of photos")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in EXTENSIONS)
    if not files:
        raise SystemExit(f"no images in {path} (set BENCH_CORPUS)")
    items = []
    for file in files:
        data = file.read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            items.append(Item(file.name, data, im.width * im.height, im.format))
    return items


def encoder_options(settings: Settings, **overrides) -> dict:
    options = dict(quality=settings.output_quality, max_pixels=settings.max_image_pixels,
                   optimize=settings.output_optimize, webp_method=settings.webp_method,
                   keep_original=settings.keep_original_when_smaller)
    options.update(overrides)
    return options


# --------------------------------------------------------------------------- (a) the limit

_worker_items: list[Item] = []
_worker_options: dict = {}


def _init_worker(items: list[Item], options: dict, max_pixels_in_flight: int) -> None:
    global _worker_items, _worker_options
    _worker_items, _worker_options = items, options
    keep_image_memory(max_pixels_in_flight)  # as the service's workers do


def _encode_round(indices: list[int]) -> tuple[int, int, int, float]:
    """Encode the given corpus items; (images, pixels, bytes out, CPU seconds of the encodes)."""
    images = pixels = out = 0
    started = time.process_time()
    for index in indices:
        item = _worker_items[index]
        out += len(compress(item.data, **_worker_options).data)
        images += 1
        pixels += item.pixels
    return images, pixels, out, time.process_time() - started


@dataclass
class Rate:
    label: str
    images: int
    pixels: int
    seconds: float
    bytes_in: int = 0
    bytes_out: int = 0
    peak_rss_mb: float = 0.0
    cpu_s: float = 0.0  # the encodes' CPU seconds, where measured

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds

    @property
    def mp_per_s(self) -> float:
        return self.pixels / self.seconds / 1e6


def measure_limit_alone(items: list[Item], options: dict, processes: int,
                        seconds: float) -> Rate:
    """measure_limit (its `cpu_s`: the timed encodes' own CPU, whatever else ran), with a
    warning when other processes took a share of the cores meanwhile (its images/s drops)."""
    busy, ours = e2e_module().machine_busy_seconds(), _our_cpu()
    started = time.perf_counter()
    rate = measure_limit(items, options, processes, seconds)
    wall = time.perf_counter() - started
    other = e2e_module().machine_busy_seconds() - busy - (_our_cpu() - ours)
    if other > 0.05 * wall * processes:
        print(f"warning: other processes used ~{other:.1f} CPU-s while (a) ran on all cores; "
              "the limit is understated", file=sys.stderr)
    return rate


def measure_limit(items: list[Item], options: dict, processes: int, seconds: float) -> Rate:
    """Whole-corpus rounds on `processes` processes until `seconds` have passed.

    Each task is one image, handed out largest first so that no core idles at the end of a
    round; the corpus is sent to each process once, at start-up.
    """
    order = sorted(range(len(items)), key=lambda i: -items[i].pixels)
    with ProcessPoolExecutor(processes, initializer=_init_worker,
                             initargs=(items, options, Settings().max_pixels_in_flight)) as pool:
        list(pool.map(_encode_round, [[i] for i in order]))  # warm-up: imports, first calls
        images = pixels = out = rounds = 0
        cpu = 0.0
        started = time.perf_counter()
        while True:
            for n, p, o, c in pool.map(_encode_round, [[i] for i in order]):
                images, pixels, out, cpu = images + n, pixels + p, out + o, cpu + c
            rounds += 1
            elapsed = time.perf_counter() - started
            if elapsed >= seconds:
                break
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    bytes_in = rounds * sum(item.data.__len__() for item in items)
    return Rate(f"limit: {processes} process(es)", images, pixels, elapsed, bytes_in, out, peak,
                cpu)


# --------------------------------------------------------------------------- (b) end to end

def measure_end_to_end(items: list[Item], settings: Settings, seconds: float,
                       limit_images_per_s: float, *, profile: str | None = None,
                       native: bool = False, latency_ms: float = 0.0,
                       workers: int = 0, store: str = "wire") -> tuple[Rate, dict]:
    """(b) The same images through the whole service (see bench/e2e.py for the processes).

    The corpus is repeated (distinct URLs, ?copy=N) so that the run lasts about `seconds` at
    0.55 of the limit (what this machine reaches with mongomock; a longer run is slower per
    image, as mongomock's scans grow with the batch). The rate is images done over the batch's started_at -> finished_at
    (parse included); the peak RSS is the service process's (API + worker).
    """
    from bench import e2e

    per_pass = len(items)
    copies = max(1, round(seconds * 0.55 * limit_images_per_s / per_pass))
    if store == "wire":
        report = e2e.run_topology(corpus_dir(), [item.name for item in items], copies,
                                  workers=workers, latency_ms=latency_ms)
    else:
        report = e2e.run(corpus_dir(), [item.name for item in items], copies, profile=profile,
                         native=native, latency_ms=latency_ms, workers=workers)
    done = report["images"]["processed"]
    if done == 0:
        raise SystemExit(f"e2e: no image was processed (batch {report['status']}: "
                         f"{report['images']})")
    if report["images"]["failed"] or done != copies * per_pass:
        print(f"warning: e2e batch {report['status']}: {report['images']}", file=sys.stderr)
    pixels = round(sum(item.pixels for item in items) * copies * done / (copies * per_pass))
    bytes_in = sum(len(item.data) for item in items) * copies
    elapsed = report["batch_s"] or report["worker_wall_s"]
    shape = (f"{report['workers']} worker processes+{report['mongo']}" if report.get("workers")
             else f"worker+{report['mongo']}")
    label = f"e2e: {shape}" + (f", +{latency_ms:g} ms" if latency_ms else "")
    return Rate(label, done, pixels, elapsed, 0, 0, report["peak_rss_mb"]), report


def _our_cpu() -> float:
    """CPU seconds of this process and its finished children."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def e2e_module():
    from bench import e2e
    return e2e


def print_cpu(report: dict, limit: Rate, e2e: Rate, cores: int, encode_cpu: float) -> None:
    """Where the machine's CPU went while the worker ran: each process's CPU seconds."""
    wall = report["worker_wall_s"]
    capacity = wall * cores
    print(f"\nCPU seconds while the worker ran ({wall:.1f} s wall x {cores} cores = "
          f"{capacity:.1f} CPU-s; chunk size {report['chunk_size']}, "
          f"image concurrency {report['image_concurrency']}):")
    used = 0.0
    for name, seconds in sorted(report["cpu_s"].items(), key=lambda kv: -kv[1]):
        used += seconds
        print(f"  {name:<24}{seconds:>8.1f}  {seconds / capacity:>6.1%}")
    print(f"  {'idle':<24}{max(0.0, capacity - used):>8.1f}  "
          f"{max(0.0, capacity - used) / capacity:>6.1%}")
    stages = report.get("stages") or {}
    if stages:
        print(f"\nService process, per step (CPU time of the thread that ran it; wall includes "
              f"waiting for the GIL and sockets):")
        print(f"  {'step':<30}{'calls':>7}{'CPU s':>8}{'ms/call':>9}{'wall s':>8}")
        for name, (calls, cpu_s, wall_s) in stages.items():
            print(f"  {name:<30}{calls:>7}{cpu_s:>8.1f}{cpu_s / max(calls, 1) * 1e3:>9.2f}"
                  f"{wall_s:>8.1f}")
    # What encoding alone needs for these images, at the limit's per-core speed:
    encode = e2e.images / (limit.images_per_s / cores)
    print(f"  (encoding these {e2e.images} images costs {encode:.1f} CPU-s at the limit's "
          f"per-core rate: {encode / capacity:.1%} of the machine)")
    workers = {n: v for n, v in report["cpu_s"].items() if n.startswith("worker ")}
    if workers and report.get("worker_steps"):
        print_worker_steps(report["worker_steps"], sum(workers.values()), e2e.images)
    if workers:
        # Both per image in CPU seconds, so they do not depend on what else runs meanwhile.
        per_image = sum(workers.values()) / e2e.images
        print(f"\nworkers' CPU per image: {per_image * 1e3:.1f} ms; the encode alone in (a): "
              f"{encode_cpu * 1e3:.1f} ms; workers/encode: {per_image / encode_cpu:.2f}")
        encode_step = (report.get("worker_steps") or {}).get("encode", 0.0) / e2e.images
        if encode_step > 0:
            # Both factors below measured in the same processes at the same time: the first
            # does not move with the machine's speed, the second is where that speed shows.
            print(f"  = workers' CPU over their own encode step ({encode_step * 1e3:.1f} ms): "
                  f"{per_image / encode_step:.3f} x their encode step over (a)'s: "
                  f"{encode_step / encode_cpu:.3f}")
        # The stand-ins (moto, the image server, redis-server) and the API run on other
        # machines in production: the limit the workers had is the CPU those left them.
        stand_ins = sum(v for n, v in report["cpu_s"].items()
                        if n not in workers and n != "other processes")
        left = max(capacity - stand_ins, 1e-9)
        print(f"ratio e2e/limit, unadjusted: {e2e.images_per_s / limit.images_per_s:.2f}; "
              f"adjusted to the {left / capacity:.0%} of the CPU the stand-ins and the API "
              f"left: {e2e.images_per_s / (limit.images_per_s * left / capacity):.2f}")
        other = report["cpu_s"].get("other processes", 0.0)
        if other > 0.05 * capacity:
            print(f"warning: other processes took {other / capacity:.0%} of the machine during "
                  "(b): the ratios are understated (workers/encode is not)")


def print_worker_steps(steps: dict[str, float], workers_cpu: float, images: int) -> None:
    """Where the workers' CPU went, from the service's `worker_cpu_seconds_total{step}`."""
    print("\nWorkers' CPU per step (batchpress_worker_cpu_seconds_total, the threads' CPU time):")
    print(f"  {'step':<50}{'CPU s':>7}{'ms/image':>10}{'share':>8}")
    rows = [(f"  {name}", steps[name]) for name in ("encode", "store", "download", "record",
                                                    "hash") if name in steps]
    image, chunk = steps.get("image", 0.0), steps.get("chunk", 0.0)
    rows.append(("  the rest of an image's work", image - sum(v for _, v in rows)))
    parse = steps.get("parse", 0.0)
    rows.append(("chunk jobs' own threads (slots, dispatch)", chunk))
    rows.append(("parse job (the CSV into the store)", parse))
    rows.append(("the rest (RQ, forks, clients)", workers_cpu - image - chunk - parse))
    for name, seconds in rows:
        print(f"  {name:<50}{seconds:>7.1f}{seconds / images * 1e3:>10.2f}"
              f"{seconds / workers_cpu:>8.1%}")


# --------------------------------------------------------------------------- --compare

def _time_serial(items: list[Item], options: dict, seconds: float) -> tuple[float, int, int]:
    """(seconds per corpus pass, bytes out per pass, pixels per pass) on one thread."""
    for item in items:
        compress(item.data, **options)  # warm-up
    passes, elapsed, out = 0, 0.0, 0
    started = time.perf_counter()
    while elapsed < seconds or passes < 2:
        out = sum(len(compress(item.data, **options).data) for item in items)
        passes += 1
        elapsed = time.perf_counter() - started
    return elapsed / passes, out, sum(item.pixels for item in items)


def _time_threads(items: list[Item], options: dict, threads: int, seconds: float) -> float:
    """Images per second with `threads` threads sharing one process (as the chunk job does)."""
    order = sorted(items, key=lambda item: -item.pixels)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda item: compress(item.data, **options), order))
        images, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            images += len(list(pool.map(lambda item: compress(item.data, **options), order)))
        return images / (time.perf_counter() - started)


def compare(items: list[Item], settings: Settings, seconds: float) -> None:
    base = encoder_options(settings)
    jpegs = [item for item in items if item.format == "JPEG"]
    webp_out = [item for item in items
                if item.format == "WEBP" or (item.format == "PNG" and _has_alpha(item))]
    each = max(1.0, seconds / 4)

    print("\nOUTPUT_OPTIMIZE (JPEG sources, one thread):")
    print(f"  {'optimize':<9}{'ms/image':>10}{'img/s':>8}{'MP/s':>8}{'bytes out':>12}")
    rows = {}
    for optimize in (False, True):
        per_pass, out, pixels = _time_serial(jpegs, dict(base, optimize=optimize), each)
        rows[optimize] = (per_pass, out)
        print(f"  {str(optimize):<9}{per_pass / len(jpegs) * 1e3:>10.1f}"
              f"{len(jpegs) / per_pass:>8.1f}{pixels / per_pass / 1e6:>8.1f}{out:>12,}")
    print(f"  optimize=True: {rows[True][1] / rows[False][1] - 1:+.1%} bytes, "
          f"{rows[True][0] / rows[False][0]:.2f}x time")

    print("\nWEBP_METHOD (WebP-output sources, one thread):")
    print(f"  {'method':<7}{'ms/image':>10}{'bytes out':>12}")
    for method in range(7):
        per_pass, out, _ = _time_serial(webp_out, dict(base, webp_method=method), each / 3)
        print(f"  {method:<7}{per_pass / len(webp_out) * 1e3:>10.1f}{out:>12,}")

    print("\nOutput sink and threads (JPEG sources, one process, images/s):")
    print(f"  {'sink':<9}{'1 thread':>10}{'2 threads':>11}{'4 threads':>11}{'2t/1t':>7}")
    for sink in ("bytesio", "memfd"):
        options = dict(base, sink=sink)
        rates = [_time_threads(jpegs, options, n, each) for n in (1, 2, 4)]
        print(f"  {sink:<9}{rates[0]:>10.1f}{rates[1]:>11.1f}{rates[2]:>11.1f}"
              f"{rates[1] / rates[0]:>7.2f}")


def _has_alpha(item: Item) -> bool:
    with Image.open(io.BytesIO(item.data)) as im:
        return im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info


# --------------------------------------------------------------------------- main

def print_table(rates: list[Rate]) -> None:
    print(f"\n{'measurement':<28}{'images':>8}{'seconds':>9}{'img/s':>8}{'MP/s':>8}"
          f"{'out/in':>8}{'peak RSS':>10}")
    for r in rates:
        ratio = f"{r.bytes_out / r.bytes_in:.2f}" if r.bytes_in else "-"
        peak = f"{r.peak_rss_mb:.0f} MB" if r.peak_rss_mb else "-"
        print(f"{r.label:<28}{r.images:>8}{r.seconds:>9.1f}{r.images_per_s:>8.1f}"
              f"{r.mp_per_s:>8.1f}{ratio:>8}{peak:>10}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--e2e-seconds", type=float, default=30.0,
                        help="target length of the end-to-end run (default 30)")
    parser.add_argument("--profile", metavar="FILE",
                        help="run the service process under py-spy (raw collapsed stacks)")
    parser.add_argument("--native", action="store_true",
                        help="with --profile: also native frames (py-spy --native; costly)")
    parser.add_argument("--latency-ms", type=float, default=0.0,
                        help="the image server waits this long before each response")
    parser.add_argument("--limit", type=float, metavar="IMG_PER_S",
                        help="skip (a) and take this as the limit (for sweeps of (b) only)")
    parser.add_argument("--no-e2e", action="store_true", help="only (a)")
    parser.add_argument("--compare", action="store_true")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="(b) with this many worker processes (default: one per core); "
                             "0: API and one worker in one process, on mongomock (or "
                             "MONGO_URL), with the per-step CPU table")
    parser.add_argument("--store", choices=("wire", "sqlite"), default="wire",
                        help="with worker processes: `wire` (default) runs the Procfile's "
                             "processes (gunicorn, python -m worker, cron) on the MongoDB wire "
                             "stand-in; `sqlite` runs bare RQ workers on one SQLite file")
    args = parser.parse_args(argv)

    settings = Settings()
    items = load_corpus()
    cores = os.cpu_count() or 1
    total_mp = sum(item.pixels for item in items) / 1e6
    print(f"corpus: {corpus_dir()} — {len(items)} images, {total_mp:.0f} MP, "
          f"{sum(len(i.data) for i in items) / 1e6:.1f} MB; {cores} cores; "
          f"quality {settings.output_quality}, optimize {settings.output_optimize}, "
          f"webp method {settings.webp_method}")

    options = encoder_options(settings)
    if args.limit:
        pixels = sum(item.pixels for item in items)
        limit = Rate("limit: given", len(items), pixels, len(items) / args.limit)
        rates = [limit]
    else:
        rates = [measure_limit(items, options, 1, args.seconds / 2)]
        limit = before = measure_limit_alone(items, options, cores, args.seconds)
        rates.append(before)
    e2e = report = None
    if not args.no_e2e:
        e2e, report = measure_end_to_end(items, settings, args.e2e_seconds,
                                         limit.images_per_s, profile=args.profile,
                                         native=args.native, latency_ms=args.latency_ms,
                                         workers=args.workers, store=args.store)
        rates.append(e2e)
        if not args.limit:
            # The machine's speed drifts (a shared host): (a) again after (b), and the two
            # together are the limit (b) is compared with.
            after = measure_limit_alone(items, options, cores, args.seconds)
            # ru_maxrss of the children now counts (b)'s processes too: no peak for this row.
            after = replace(after, label=f"{after.label}, after (b)", peak_rss_mb=0.0)
            rates.append(after)
            limit = Rate(f"limit: {cores} process(es), before and after (b)",
                         before.images + after.images, before.pixels + after.pixels,
                         before.seconds + after.seconds, before.bytes_in + after.bytes_in,
                         before.bytes_out + after.bytes_out, before.peak_rss_mb,
                         before.cpu_s + after.cpu_s)
            drift = abs(after.images_per_s / before.images_per_s - 1)
            if drift > 0.05:
                print(f"warning: the limit moved by {drift:.0%} between before and after (b): "
                      "the machine's speed changed during the run, and the ratios may be off "
                      "by about as much", file=sys.stderr)
    # The encode's CPU per image, as (a) measured it (a given limit: a core per image at its rate).
    encode_cpu = limit.cpu_s / limit.images if limit.cpu_s else cores / limit.images_per_s
    print_table(rates)
    if report is not None:
        print_cpu(report, limit, e2e, cores, encode_cpu)
    if args.compare:
        compare(items, settings, args.seconds)
    if e2e is not None:
        print(f"ratio e2e/limit: {e2e.images_per_s / limit.images_per_s:.2f}")


if __name__ == "__main__":
    main()
