"""The embedded default: the service with no outside services, its data kept on disk.

Batches, rows, images and webhooks go to SQLite (`<BATCHPRESS_HOME>/batchpress.sqlite3`),
uploads and output images to `<BATCHPRESS_HOME>/objects/`, so a restart loses nothing; the
queues are in this process (fakeredis), and what they held is recovered at start-up by the
stall sweeper from what the stores say is unfinished.
"""
from __future__ import annotations

import logging
from pathlib import Path

from infra.settings import Settings

log = logging.getLogger(__name__)

DATABASE_FILE = "batchpress.sqlite3"
OBJECTS_FOLDER = "objects"

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

    root = home(settings)
    root.mkdir(parents=True, exist_ok=True)
    stores.use(SqliteStores(str(root / DATABASE_FILE)))
    storage.use_folder(root / OBJECTS_FOLDER)
    queues.use_connection(in_memory_redis())
    print(BANNER.format(home=root, database=DATABASE_FILE, objects=OBJECTS_FOLDER), flush=True)
    if settings.public_base_url:
        return settings
    return settings.model_copy(
        update={"public_base_url": f"http://localhost:{settings.port}/files"})
