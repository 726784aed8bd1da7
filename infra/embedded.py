"""In-memory stand-ins for Redis, MongoDB and S3, so the service runs with no outside services."""
from __future__ import annotations

import logging
import os

from infra.settings import Settings

log = logging.getLogger(__name__)

BANNER = """
==========================================================================================
  EMBEDDED MODE: Redis, MongoDB and S3 are in-memory stand-ins inside this one process
  (fakeredis, mongomock, moto). Everything is lost when it stops. For the real services
  set REDIS_URL, MONGO_URL and S3_ENDPOINT_URL (see README, "Running the real stack").
==========================================================================================
"""


def in_memory_redis():
    """The embedded default's Redis stand-in (one process, nothing on disk)."""
    import fakeredis
    return fakeredis.FakeStrictRedis()


def start(settings: Settings) -> Settings:
    """Install the stand-ins and return the settings that go with them (outputs served by this
    process at /files/); call before anything touches a store."""
    import mongomock
    from moto.server import ThreadedMotoServer

    from infra import db, queues, storage

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, moto_port = moto.get_host_and_port()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "embedded")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "embedded")
    # Outputs are served by this process at /files/<key>; S3 itself listens on loopback only.
    storage.use_endpoint(f"http://{host}:{moto_port}")
    db.use_client(mongomock.MongoClient(tz_aware=True))
    queues.use_connection(in_memory_redis())
    print(BANNER, flush=True)
    if settings.public_base_url:
        return settings
    return settings.model_copy(
        update={"public_base_url": f"http://localhost:{settings.port}/files"})
