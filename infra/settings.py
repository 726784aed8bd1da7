"""Service settings, read from the environment and a `.env` file and validated at start-up."""
from __future__ import annotations

import base64
import functools
import re
import secrets
import sys
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.sizes import parse_sizes


class Settings(BaseSettings):
    """Every setting named by the public contract, with its default.

    Each field's docstring is its description in docs/settings.md (`python -m infra.settings_doc`).
    """

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False,
                                      use_attribute_docstrings=True)

    # Where the service listens and which outside services it uses.
    host: str = Field("127.0.0.1", min_length=1)
    """Address `make run` listens on. Loopback by default: the embedded default has no API keys,
    so other machines must not reach it unless asked for (`HOST=0.0.0.0`, and then set
    `API_KEYS`). `gunicorn.conf.py` reads it too, defaulting to `0.0.0.0` for containers."""
    port: int = Field(8000, ge=1, le=65535)
    """Port `make run` listens on (gunicorn's too, through `gunicorn.conf.py`)."""
    redis_url: str | None = None
    """Redis for the job queues and metrics, e.g. `redis://localhost:6379/0`. Set all three of
    `REDIS_URL`, `MONGO_URL` and `S3_ENDPOINT_URL` for the real services, or none for the
    embedded default; one or two alone stop the service at start-up."""
    mongo_url: str | None = None
    """MongoDB for batches, products, images and deliveries, e.g. `mongodb://localhost:27017`."""
    mongo_db: str = "batchpress"
    """The MongoDB database."""
    mongo_timeout_s: float = Field(5.0, gt=0, le=60)
    """How long a MongoDB call waits for a reachable server before it fails (the API then
    answers 503 naming MongoDB; a job fails and is retried)."""
    s3_endpoint_url: str | None = None
    """S3 or MinIO, e.g. `http://localhost:9000`; credentials come from the usual
    `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`."""
    s3_bucket: str = Field("batchpress", min_length=3, max_length=63)
    """The bucket holding the uploaded files (`uploads/`) and the outputs (`outputs/`)."""
    s3_region: str = "us-east-1"
    """The bucket's region."""
    public_base_url: str | None = None
    """Where output URLs point (a CDN, or the bucket's public URL), followed by the object key;
    unset: the S3 endpoint's own URL for the object."""
    public_api_url: str | None = None
    """Absolute base of the API for the `links` inside webhook bodies. Unset under `make run`: the
    address it serves on (`http://localhost:$PORT`). Compose sets `http://localhost:8000`; set it
    wherever workers run apart from the API (they cannot guess its public address)."""
    batchpress_home: str = Field(".batchpress", min_length=1)
    """The embedded default's data folder: its SQLite file `batchpress.sqlite3` and the objects
    under `objects/`, kept across restarts (delete it to wipe them). Unused with the services."""

    # Upload limits.
    max_upload_bytes: int = Field(100 * 1024 * 1024, gt=0)
    """Largest CSV accepted (100 MiB), checked while it streams: `413 too-large`."""

    # Image pipeline.
    output_quality: int = Field(50, ge=1, le=100)
    """JPEG and WebP quality of the outputs."""
    output_optimize: bool = False
    """Huffman-optimised JPEGs: 7-8 % smaller for about 1.5x the JPEG encoding time."""
    webp_method: int = Field(2, ge=0, le=6)
    """libwebp's effort: 2 gives +33 % throughput for +0.8 % bytes against 4 (`make bench`)."""
    keep_original_when_smaller: bool = True
    """Store the input itself (metadata removed) when that is smaller than its re-encode."""
    default_sizes: str = ""
    """Extra outputs of every batch that names none at upload, e.g. `thumb=200,medium=800`."""
    default_full_size: bool = True
    """Make the full-size output of every image, unless an upload says `full_size=false`; when
    false (it needs `DEFAULT_SIZES`), the main output is the largest size, and JPEGs are decoded
    only as large as that size needs."""
    max_download_bytes: int = Field(25_000_000, gt=0)
    """Largest image downloaded: a larger `Content-Length` is refused before the body is read,
    a longer body is cut off at the limit."""
    max_image_pixels: int = Field(50_000_000, gt=0)
    """Largest image decoded, checked from the file's header before any pixel is decoded."""
    download_timeout_s: float = Field(30.0, gt=0)
    """Deadline for a whole image download: redirects, headers and body together."""
    connect_timeout_s: float = Field(5.0, gt=0)
    """Per connection attempt, never more than what is left of the download deadline."""
    max_redirects: int = Field(3, ge=0, le=10)
    """Redirects followed per image; each hop is checked like the first URL."""
    per_host_concurrency: int = Field(4, ge=1, le=64)
    """Image downloads in flight at once per host, across all workers (Redis-held slots whose
    leases expire, so a killed worker cannot keep one). A host that throttles (429, 503) gets
    half as many, then one more per that many successes, back up to this."""
    max_retry_after_s: float = Field(600.0, ge=0, le=86400)
    """How long in all an image may wait on a host answering 429 (or 503 with `Retry-After`):
    while within it, the image is put back and its chunk queued again after the wait asked
    for; past it, the image fails with `http_status`."""
    download_retries: int = Field(2, ge=0, le=10)
    """More tries of an image whose download fails on the connection or with a 5xx."""
    download_retry_backoff_s: float = Field(1.0, ge=0, le=60)
    """Wait before the first of those tries, doubled before each next one."""
    image_concurrency: int = Field(8, ge=1, le=64)
    """Images in flight per chunk job (threads); decode+encode is capped at one per core
    (`worker/chunks.py`)."""
    max_pixels_in_flight: int = Field(60_000_000, gt=0)
    """Pixels decoded at once per worker process (`worker/pixel_budget.py`): 14-35 bytes each at
    the peak (photo to noise, `bench/pixel_budget.py`), so 60 M is 0.85-2 GB; a larger image
    runs alone."""
    chunk_size: int = Field(100, ge=1, le=5000)
    """Unique image URLs per chunk job. Each chunk job runs in a work-horse process of its own
    (forked, its memory and clients new), which costs ~50 ms of CPU: 100 images a chunk spend
    3 % less CPU per image than 50 did (`make bench`). A chunk's time is bounded anyway
    (CHUNK_BUDGET_S)."""
    allow_private_urls: bool = False
    """Let image and webhook URLs reach loopback and private addresses, and webhooks use plain
    `http`: for tests and local development only."""
    trusted_image_origins: str = ""
    """Origins (`scheme://host[:port]`, comma-separated) whose images are fetched even on a
    loopback or private address, e.g. a local image server; every other host keeps the address
    rule."""

    storage_retry_s: float = Field(60.0, ge=0, le=3600)
    """How long an output's S3 upload is retried (backoff 0.5 s doubling to 8 s) while S3 fails
    with connection errors, 5xx or throttling; then the image stays pending (not failed) and its
    chunk job is retried."""

    # Jobs.
    job_timeout_s: int = Field(900, gt=0)
    """RQ's timeout of one job."""
    chunk_budget_s: float = Field(0.0, ge=0)
    """How long a chunk job starts new images. Past it, the images not started yet are left
    pending and the chunk is queued again at once, so that a chunk of slow images (a host
    sending slowly) never reaches JOB_TIMEOUT_S. 0: half of JOB_TIMEOUT_S."""
    stall_timeout_s: int = Field(600, gt=0)
    """A running batch with no progress for this long (and no live job) is taken for stalled by
    the sweeper."""
    max_image_attempts: int = Field(3, ge=1, le=100)
    """A worker dying while it processes an image (OOM, decoder crash) leaves it pending: after
    this many started attempts the image fails instead of being tried again."""

    job_retry_schedule: str = "10,60,300"
    """Seconds before each retry of a failed parse or chunk job (a crash, a killed work-horse,
    S3 or MongoDB down); RQ's scheduler runs them (`python -m worker` has it)."""
    job_heartbeat_s: int = Field(30, ge=1, le=3600)
    """How often a worker writes a running job's heartbeat; the sweeper takes a job silent for
    twice that for dead."""
    rq_maintenance_interval_s: int = Field(600, ge=1, le=86400)
    """How often each worker cleans RQ's registries (fails or retries the jobs of killed
    workers)."""

    # Stall sweeper (worker/sweeper.py).
    sweep_interval_s: int = Field(60, ge=1, le=86400)
    """How often the cron scheduler enqueues a sweep."""
    sweep_limit: int = Field(1000, ge=1)
    """Stalled batches handled per sweep, oldest first."""
    max_stall_recoveries: int = Field(5, ge=1, le=1000)
    """Recoveries of one batch in a row without progress before the sweeper gives up on it."""

    # Progress events (GET /batches/{id}/events).
    events_max_stream_s: float = Field(300.0, gt=0)
    """Longest single event stream; then it ends and the client reconnects."""
    events_poll_s: float = Field(1.0, gt=0)
    """How often a stream reads MongoDB for changes."""
    events_heartbeat_s: float = Field(15.0, gt=0)
    """A heartbeat comment goes out after this much silence."""
    events_retry_ms: int = Field(2000, ge=0)
    """The reconnect delay suggested to clients (`retry:`)."""

    # Webhooks.
    webhook_secret: str = Field(default_factory=lambda: "whsec_" + base64.b64encode(
        secrets.token_bytes(32)).decode())
    """`whsec_<base64 of 24-64 random bytes>` signing deliveries to a batch's `webhook_url`.
    Unset, each process makes a random one that receivers cannot know (the embedded default
    keeps its one in `BATCHPRESS_HOME` and prints it): set it, the same value in API and
    workers."""
    webhook_timeout_s: float = Field(10.0, gt=0)
    """Seconds a delivery attempt may take, from connecting to the end of the answer."""
    webhook_retry_schedule: str = "5,30,300,1800,7200,18000,36000"
    """Seconds to wait before each retry of a delivery; its length + 1 is the number of
    attempts."""
    redeliver_rate: str = "10/minute"
    """Manual redeliveries per caller (API key, or client address when the API is open), in the
    `limits` notation: `N/second`, `N/minute`, `N/hour`, `N/day`."""

    # Operators.
    api_keys: str | None = None
    """`name:key,name:key`, or the path of a file (`/…`, `./…`, `../…`, `~…` or `@path`) with one
    `name:key` a line (`#` comments allowed); a name may have two keys while its key is rotated.
    Unset: the API is open to anyone who reaches it."""
    dashboard_user: str | None = None
    """With `DASHBOARD_PASSWORD`, opens the RQ dashboard at `/rq` with HTTP basic auth; unset
    (and no API key named `ADMIN_KEY_NAME`): `/rq` is off."""
    dashboard_password: str | None = None
    """The RQ dashboard's basic-auth password (see `DASHBOARD_USER`)."""
    log_level: str = "INFO"
    """`DEBUG`, `INFO`, `WARNING`, `ERROR` or `CRITICAL`."""
    log_format: str = "json"
    """`json` (one object a line) or `text` (one line a record, control characters escaped)."""
    admin_key_name: str = "admin"
    """The API key of this name also opens `/rq` (user `admin`, the key as password)."""
    ready_timeout_s: float = Field(2.0, gt=0, le=30)
    """Per-dependency timeout of `/readyz` and of `make run`'s start-up check."""
    cors_origins: str | None = None
    """Browser origins allowed to call `/api/v1` (CORS), comma-separated `https://host[:port]`,
    or `*`; none by default."""
    events_token_ttl_s: int = Field(300, ge=10, le=86400)
    """How long an events-stream token (for browsers: the console) is accepted."""

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        value = value.upper()
        if value not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return value

    @field_validator("default_sizes")
    @classmethod
    def _sizes(cls, value: str) -> str:
        parse_sizes(value)  # raises ValueError naming what is wrong
        return value

    @field_validator("log_format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        value = value.lower()
        if value not in {"json", "text"}:
            raise ValueError("must be json or text")
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: str | None) -> str | None:
        for origin in (part.strip() for part in (value or "").split(",") if part.strip()):
            if origin != "*" and not re.fullmatch(r"https?://[^/?#\s]+", origin):
                raise ValueError(f"{origin!r} is not an origin like https://shop.example.com "
                                 "(scheme and host, no path) or *")
        return value or None

    @property
    def cors_origin_list(self) -> list[str]:
        return [part.strip() for part in (self.cors_origins or "").split(",") if part.strip()]

    @field_validator("webhook_secret")
    @classmethod
    def _secret(cls, value: str) -> str:
        if not value.startswith("whsec_"):
            raise ValueError("must look like whsec_<base64 of 24-64 random bytes>")
        try:
            raw = base64.b64decode(value.removeprefix("whsec_"), validate=True)
        except ValueError:
            raise ValueError("the part after whsec_ must be base64") from None
        if not 24 <= len(raw) <= 64:
            raise ValueError("must hold 24 to 64 random bytes")
        return value

    @field_validator("redeliver_rate")
    @classmethod
    def _rate(cls, value: str) -> str:
        from limits import parse
        try:
            parse(value)
        except ValueError:
            raise ValueError("must be a rate such as 10/minute or 100/hour") from None
        return value

    @field_validator("webhook_retry_schedule", "job_retry_schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        try:
            delays = [int(part) for part in value.split(",") if part.strip()]
        except ValueError:
            raise ValueError("must be comma-separated whole seconds, e.g. 5,30,300") from None
        if not delays or any(d < 0 for d in delays):
            raise ValueError("must list at least one non-negative delay in seconds")
        return value

    @field_validator("trusted_image_origins")
    @classmethod
    def _image_origins(cls, value: str) -> str:
        for origin in filter(None, (part.strip() for part in value.split(","))):
            try:
                parts = urlsplit(origin)
                parts.port  # noqa: B018 - raises on a bad port
            except ValueError:
                raise ValueError(f"{origin!r} is not an origin like http://127.0.0.1:9000") from None
            if (parts.scheme.lower() not in ("http", "https") or not parts.hostname
                    or "@" in parts.netloc or parts.path not in ("", "/") or parts.query
                    or parts.fragment):
                raise ValueError(f"{origin!r} is not an origin like http://127.0.0.1:9000 "
                                 "(scheme, host and port only)")
        return value

    @property
    def image_origin_prefixes(self) -> list[str]:
        """TRUSTED_IMAGE_ORIGINS as URL prefixes (`http://host:port/`), lower-cased."""
        prefixes = []
        for origin in filter(None, (part.strip() for part in self.trusted_image_origins.split(","))):
            parts = urlsplit(origin)
            prefixes.append(f"{parts.scheme.lower()}://{parts.netloc.lower()}/")
        return prefixes

    @model_validator(mode="after")
    def _sizes_without_full_size(self) -> "Settings":
        if not self.default_full_size and not parse_sizes(self.default_sizes):
            raise ValueError("DEFAULT_FULL_SIZE=false needs DEFAULT_SIZES: without a full-size "
                             "output, an image's outputs are its sizes")
        return self

    @model_validator(mode="after")
    def _chunk_budget_within_the_job_timeout(self) -> "Settings":
        if self.chunk_budget_s >= self.job_timeout_s:
            raise ValueError(f"CHUNK_BUDGET_S ({self.chunk_budget_s:g}) must be less than "
                             f"JOB_TIMEOUT_S ({self.job_timeout_s}): the images a chunk job has "
                             "started must still finish within its timeout")
        return self

    @model_validator(mode="after")
    def _all_services_or_none(self) -> "Settings":
        # Half a configuration would quietly send the rest to localhost defaults and real AWS.
        named = {"REDIS_URL": self.redis_url, "MONGO_URL": self.mongo_url,
                 "S3_ENDPOINT_URL": self.s3_endpoint_url}
        unset = [name for name, value in named.items() if not value]
        if unset and len(unset) < len(named):
            given = [name for name in named if name not in unset]
            raise ValueError(
                f"{' and '.join(given)} {'is' if len(given) == 1 else 'are'} set but "
                f"{' and '.join(unset)} {'is' if len(unset) == 1 else 'are'} not: set all three "
                "of REDIS_URL, MONGO_URL and S3_ENDPOINT_URL for the real services, or none for "
                "the embedded default")
        return self

    @property
    def retry_delays(self) -> list[int]:
        """Seconds to wait before each webhook retry, in order."""
        return [int(part) for part in self.webhook_retry_schedule.split(",") if part.strip()]

    @property
    def chunk_budget(self) -> float:
        """Seconds a chunk job starts new images for (CHUNK_BUDGET_S, or half the job timeout)."""
        return self.chunk_budget_s or self.job_timeout_s / 2

    @property
    def job_retry_delays(self) -> list[int]:
        """Seconds to wait before each retry of a failed parse or chunk job, in order."""
        return [int(part) for part in self.job_retry_schedule.split(",") if part.strip()]

    @property
    def embedded(self) -> bool:
        """True when no outside service is configured: run on SQLite and local files."""
        return not (self.redis_url or self.mongo_url or self.s3_endpoint_url)


def startup_warnings(settings: Settings) -> list[str]:
    """What an operator should hear about at start-up: unsafe or surprising defaults."""
    warnings = []
    if "webhook_secret" not in settings.model_fields_set and not settings.embedded:
        warnings.append("WEBHOOK_SECRET is not set: a random one is used by this process only, "
                        "so receivers of batch webhook_url events cannot verify them; set it")
    if settings.allow_private_urls:
        warnings.append("ALLOW_PRIVATE_URLS is on: image and webhook URLs may reach private "
                        "addresses; use it for tests and local development only")
    if settings.image_origin_prefixes and not settings.allow_private_urls:
        warnings.append("TRUSTED_IMAGE_ORIGINS lets images come from private addresses of "
                        + ", ".join(settings.image_origin_prefixes) + " (and no other host)")
    return warnings


def describe_error(error: ValidationError) -> str:
    """One readable line per bad setting, naming the environment variable (one line for one)."""
    lines = []
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        if not item["loc"]:  # a rule over several settings names them in its message
            lines.append(message)
            continue
        name = ".".join(str(part) for part in item["loc"]).upper()
        lines.append(f"{name}={item.get('input')!r}: {message}")
    if len(lines) == 1:
        return "Invalid settings: " + lines[0]
    return "Invalid settings:\n" + "\n".join("  " + line for line in lines)


_installed: dict[str, Settings | None] = {"settings": None}


def use_settings(settings: Settings | None) -> None:
    """Make `settings` the process's own (`make run` builds them at start-up); None forgets them,
    so the environment is read again."""
    _installed["settings"] = settings
    get_settings.cache_clear()


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings: the installed ones, else read from the environment; exits with a
    clear message when a value is invalid."""
    if _installed["settings"] is not None:
        return _installed["settings"]
    try:
        return Settings()
    except ValidationError as error:
        print(describe_error(error), file=sys.stderr)
        raise SystemExit(2) from None
