"""Shared fixtures: a real redis-server, S3 through moto's HTTP server, mongomock (or a real
MongoDB when MONGO_URL is set), loopback HTTP servers, the Flask app, a burst-mode worker, and
each store implementation in turn (`store`)."""
from __future__ import annotations

import os
import uuid

import boto3
import mongomock
import pytest
from moto.server import ThreadedMotoServer

from infra import db, queues, settings as settings_module, storage, stores
from infra.stores.mongo import MongoStores
from infra.stores.sqlite import SqliteStores
from tests import mongomock_indexes
from tests.live_service import live_real_services, live_service  # noqa: F401  (browser, CLI)
from tests.servers import HttpServer, RedisServer

REAL_MONGO_URL = os.environ.get("MONGO_URL")
mongomock_indexes.install()  # the suite's mongomock reads by index, as mongod does


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture()
def env(monkeypatch, redis_server, s3_server):
    """Settings for one test: real Redis and S3, a fresh bucket and database, private URLs allowed."""
    bucket = "bp-" + uuid.uuid4().hex[:12]
    values = {
        "REDIS_URL": redis_server.url, "S3_ENDPOINT_URL": s3_server, "S3_BUCKET": bucket,
        "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1", "ALLOW_PRIVATE_URLS": "true",
        "MONGO_URL": REAL_MONGO_URL or "mongodb://mongomock.invalid",
        "MONGO_DB": "bp_test_" + uuid.uuid4().hex[:8], "DOWNLOAD_TIMEOUT_S": "5",
        "WEBHOOK_TIMEOUT_S": "2", "DOWNLOAD_RETRY_BACKOFF_S": "0.05", "CHUNK_SIZE": "3", "IMAGE_CONCURRENCY": "2",
        "WEBHOOK_SECRET": "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    }
    for name in list(os.environ):
        if name in {"API_KEYS", "DASHBOARD_USER", "DASHBOARD_PASSWORD", "PUBLIC_BASE_URL"}:
            monkeypatch.delenv(name)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    settings_module.use_settings(None)
    storage.use_endpoint(None)
    client = None if REAL_MONGO_URL else mongomock.MongoClient(tz_aware=True)
    db.use_client(client)
    queues.use_connection(None)
    queues.get_redis().flushdb()
    current = settings_module.get_settings()
    yield current
    if REAL_MONGO_URL:
        db.get_client().drop_database(current.mongo_db)
    queues.get_redis().flushdb()
    settings_module.use_settings(None)
    storage.use_endpoint(None)
    db.use_client(None)
    queues.use_connection(None)


@pytest.fixture()
def app(env):
    from api import create_app
    application = create_app(env)
    application.config["TESTING"] = True
    return application


@pytest.fixture()
def client(app):
    return app.test_client()


@pytest.fixture()
def s3(env):
    return boto3.client("s3", endpoint_url=env.s3_endpoint_url, region_name="us-east-1")


@pytest.fixture()
def http_server():
    server = HttpServer()
    yield server
    server.stop()


@pytest.fixture()
def work(env):
    """Run a burst-mode SimpleWorker over every queue until they are empty."""
    from worker.runner import make_worker

    def run() -> None:
        make_worker(simple=True).work(burst=True, logging_level="WARNING")
    return run


@pytest.fixture(params=["mongodb", "sqlite"])
def store(request, env, tmp_path):
    """Each store implementation in turn, in use: MongoDB (as `env` has it) and SQLite (a file
    in the test's folder)."""
    implementation = (SqliteStores(str(tmp_path / "batchpress.sqlite3"))
                      if request.param == "sqlite" else MongoStores())
    implementation.prepare()
    stores.use(implementation)
    yield implementation
    stores.use(None)


@pytest.fixture(scope="session")
def mongo_wire():
    """The MongoDB wire stand-in (tests/mongo_wire.py) on a free loopback port."""
    from tests.mongo_wire import MongoWire
    wire = MongoWire()
    wire.start()
    yield wire
    wire.stop()


@pytest.fixture()
def wire_env(env, monkeypatch, mongo_wire):
    """`env`, with the stores reached through real pymongo clients over the wire stand-in."""
    if not mongo_wire.running:
        mongo_wire.start()
    monkeypatch.setenv("MONGO_URL", mongo_wire.uri)
    monkeypatch.setenv("MONGO_TIMEOUT_S", "1")
    monkeypatch.setenv("READY_TIMEOUT_S", "1")
    settings_module.get_settings.cache_clear()
    db.use_client(None)
    current = settings_module.get_settings()
    yield current
    db.get_client().close()
    if not mongo_wire.running:
        mongo_wire.start()
    mongo_wire.client.drop_database(current.mongo_db)
    db.use_client(None)
