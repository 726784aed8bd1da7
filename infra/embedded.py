"""The embedded default: the service with no outside services, its data kept on disk.

Batches, rows, images and webhooks go to SQLite (`<BATCHPRESS_HOME>/batchpress.sqlite3`),
uploads and output images to `<BATCHPRESS_HOME>/objects/`, so a restart loses nothing; the
queues are in this process (fakeredis), and what they held is recovered at start-up by the
stall sweeper from what the stores say is unfinished.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from infra.settings import Settings

log = logging.getLogger(__name__)

DATABASE_FILE = "batchpress.sqlite3"
OBJECTS_FOLDER = "objects"
SECRET_FILE = "webhook_secret"

BANNER = """
==========================================================================================
  EMBEDDED MODE: no Redis, MongoDB or S3. Data is kept in {home}
  (SQLite {database}, files in {objects}/); it survives restarts, and unfinished batches
  resume. To wipe it, stop the service and delete that folder. Queues are in this process.
  For the real services set REDIS_URL, MONGO_URL and S3_ENDPOINT_URL (README, "Running the
  real stack").
==========================================================================================
"""


def in_memory_redis():
    """The embedded default's queues (one process, nothing on disk)."""
    import fakeredis
    return fakeredis.FakeStrictRedis()


def home(settings: Settings) -> Path:
    return Path(settings.batchpress_home).expanduser().resolve()


def start(settings: Settings) -> Settings:
    """Install SQLite, the object folder and the in-process queues, and return the settings
    that go with them (outputs served by this process at /files/); call before anything
    touches a store."""
    from infra import queues, storage, stores
    from infra.stores.sqlite import SqliteStores
    try:
        import fakeredis  # noqa: F401
    except ImportError as error:
        raise SystemExit(
            f"none of REDIS_URL, MONGO_URL, S3_ENDPOINT_URL is set, so this would run in the "
            f"embedded mode, whose stand-ins are not installed ({error.name}): set the three "
            f"variables, or pip install -r requirements-embedded.txt") from None

    root = home(settings)
    root.mkdir(parents=True, exist_ok=True)
    stores.use(SqliteStores(str(root / DATABASE_FILE)))
    storage.use_folder(root / OBJECTS_FOLDER)
    queues.use_connection(in_memory_redis())
    print(BANNER.format(home=root, database=DATABASE_FILE, objects=OBJECTS_FOLDER), flush=True)
    update = {}
    if "webhook_secret" not in settings.model_fields_set:
        update["webhook_secret"] = kept_webhook_secret(root, settings.webhook_secret)
        print(f"Webhooks to a batch's webhook_url are signed with WEBHOOK_SECRET="
              f"{update['webhook_secret']}\n(kept in {root / SECRET_FILE} with the data, so "
              "retries after a restart verify too; set WEBHOOK_SECRET to choose your own)",
              flush=True)
    if not settings.public_base_url:
        update["public_base_url"] = f"http://localhost:{settings.port}/files"
    return settings.model_copy(update=update)


def kept_webhook_secret(root: Path, fresh: str) -> str:
    """The secret this home signs batch webhooks with: made once (`fresh`), then read back, so
    a delivery retried after a restart carries a signature the receiver can still check."""
    path = root / SECRET_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    # Created with owner-only permissions and never replaced: two starts at once keep one.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as file:
        file.write(fresh + "\n")
    return fresh
