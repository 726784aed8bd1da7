"""A MongoDB wire-protocol stand-in for multi-process tests: mockupdb in front of one mongomock.

Test tree only: `make run` never uses it (its embedded default keeps its data in SQLite). No
MongoDB server can be installed where the suite runs, and processes cannot share an in-process
mongomock, so this answers real pymongo clients over TCP from one mongomock store. Every command
runs under one lock, so each is atomic, as a single mongod makes each single-document write.

It answers the commands the service sends: `hello`/`ismaster`, `insert`, `find`/`getMore`/
`killCursors` (real cursors cut to `batchSize`), `update`, `delete`, `findAndModify`,
`aggregate`, `count`, `distinct`, `createIndexes`/`listIndexes`, `drop`, `dropDatabase`,
`listCollections`, `endSessions`, `ping`. Write errors come back in MongoDB's reply shapes
(`writeErrors` with code 11000, or `ok: 0` with a code), so pymongo raises its own exceptions.

`stop()` then `start()` serves the same data on the same port again: an outage. Run on its own,
`python -m tests.mongo_wire PORT` serves until SIGTERM; SIGUSR1 stops listening (and drops every
connection), SIGUSR2 listens again.
"""
from __future__ import annotations

import itertools
import re
import sys
import threading
import time

import mockupdb
import mongomock
from bson import SON

from tests import mongomock_indexes
from tests.servers import serve_until_terminated

MAX_WIRE_VERSION = 21  # MongoDB 7.0: what pymongo 4.10 expects of a current server
FIRST_BATCH = 101  # mongod's first batch when the client names no batchSize
_OK_FIELDS = {"ok": 1}


class MongoWire:
    """One mongomock store served over the wire protocol on 127.0.0.1."""

    def __init__(self, port: int | None = None):
        mongomock_indexes.install()  # reads by index, as mongod does
        self.client = mongomock.MongoClient()
        self._lock = threading.Lock()  # one command at a time
        self._serving = threading.Lock()  # one start or stop at a time
        self._cursors: dict[int, tuple[str, list]] = {}
        self._cursor_ids = itertools.count(1)
        self.port = port
        self._server: mockupdb.MockupDB | None = None
        self.commands: dict[str, int] = {}  # how many of each command were answered

    # --- serving ---------------------------------------------------------------------------

    def start(self) -> int:
        """Listen (on the same port as before, after a stop); returns the port."""
        with self._serving:
            if self._server is None:
                self._start()
            return self.port

    def _start(self) -> None:
        server = mockupdb.MockupDB(port=self.port, request_timeout=int(1e6))
        server._address = ("127.0.0.1", self.port)  # loopback only, never every interface
        server.autoresponds(self._handle)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.port = server.run()
                break
            except OSError:  # the old socket may linger a moment after a stop
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self._server = server

    def stop(self) -> None:
        """Stop listening and drop every connection; the data stays."""
        with self._serving:
            if self._server is not None:
                self._server.stop()
                self._server = None

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    # --- dispatch ----------------------------------------------------------------------------

    def _handle(self, request) -> bool:
        name = request.command_name
        doc = request.doc
        handler = getattr(self, "_cmd_" + (name or "").lower(), None)
        if handler is None:
            request.reply({"ok": 0, "errmsg": f"no such command: '{name}'", "code": 59,
                           "codeName": "CommandNotFound"})
            return True
        with self._lock:
            self.commands[name] = self.commands.get(name, 0) + 1
            try:
                answer = handler(doc, doc.get("$db", "admin"))
            except mongomock.DuplicateKeyError as error:
                answer = _duplicate(error)
            except mongomock.OperationFailure as error:
                answer = {"ok": 0, "errmsg": str(error), "code": error.code or 2}
        request.reply(answer)
        return True

    def _coll(self, db: str, name: str):
        return self.client[db][name]

    # --- handshake and admin -----------------------------------------------------------------

    def _cmd_hello(self, doc, db):
        return {"ismaster": True, "isWritablePrimary": True, "helloOk": True,
                "minWireVersion": 0, "maxWireVersion": MAX_WIRE_VERSION,
                "maxBsonObjectSize": 16 * 1024 * 1024, "maxMessageSizeBytes": 48_000_000,
                "maxWriteBatchSize": 100_000, "logicalSessionTimeoutMinutes": 30,
                "localTime": _now(), "connectionId": 1, "ok": 1}

    _cmd_ismaster = _cmd_hello

    def _cmd_ping(self, doc, db):
        return _OK_FIELDS

    def _cmd_endsessions(self, doc, db):
        return _OK_FIELDS

    def _cmd_buildinfo(self, doc, db):
        return {"version": "7.0.0", "versionArray": [7, 0, 0, 0], "ok": 1}

    def _cmd_listcollections(self, doc, db):
        names = self.client[db].list_collection_names()
        return self._cursor(f"{db}.$cmd.listCollections",
                            [{"name": n, "type": "collection", "options": {}} for n in names],
                            doc.get("cursor", {}).get("batchSize"))

    def _cmd_drop(self, doc, db):
        self.client[db].drop_collection(doc["drop"])
        return _OK_FIELDS

    def _cmd_dropdatabase(self, doc, db):
        self.client.drop_database(db)
        return _OK_FIELDS

    # --- writes ------------------------------------------------------------------------------

    def _cmd_insert(self, doc, db):
        coll = self._coll(db, doc["insert"])
        errors, n = [], 0
        for index, item in enumerate(doc.get("documents", [])):
            try:
                coll.insert_one(dict(item))
                n += 1
            except mongomock.DuplicateKeyError as error:
                errors.append({"index": index, **_duplicate(error, write_error=True)})
                if doc.get("ordered", True):
                    break
        return _write_reply(n, errors)

    def _cmd_update(self, doc, db):
        coll = self._coll(db, doc["update"])
        errors, n, modified, upserted = [], 0, 0, []
        for index, op in enumerate(doc.get("updates", [])):
            query, change = dict(op.get("q", {})), op.get("u", {})
            upsert = bool(op.get("upsert"))
            try:
                if isinstance(change, list) or any(k.startswith("$") for k in change):
                    method = coll.update_many if op.get("multi") else coll.update_one
                    kwargs = {"array_filters": op["arrayFilters"]} if "arrayFilters" in op else {}
                    result = method(query, change, upsert=upsert, **kwargs)
                else:
                    result = coll.replace_one(query, dict(change), upsert=upsert)
            except mongomock.DuplicateKeyError as error:
                errors.append({"index": index, **_duplicate(error, write_error=True)})
                if doc.get("ordered", True):
                    break
                continue
            n += result.matched_count
            modified += result.modified_count
            if result.upserted_id is not None:
                n += 1
                upserted.append({"index": index, "_id": result.upserted_id})
        reply = _write_reply(n, errors)
        reply["nModified"] = modified
        if upserted:
            reply["upserted"] = upserted
        return reply

    def _cmd_delete(self, doc, db):
        coll = self._coll(db, doc["delete"])
        n = 0
        for op in doc.get("deletes", []):
            method = coll.delete_one if op.get("limit") == 1 else coll.delete_many
            n += method(dict(op.get("q", {}))).deleted_count
        return _write_reply(n, [])

    def _cmd_findandmodify(self, doc, db):
        coll = self._coll(db, doc["findAndModify"] if "findAndModify" in doc
                          else doc["findandmodify"])
        query = dict(doc.get("query") or {})
        sort = _sort(doc.get("sort"))
        projection = doc.get("fields")
        if doc.get("remove"):
            value = coll.find_one_and_delete(query, projection=projection, sort=sort)
            return {"lastErrorObject": {"n": int(value is not None)}, "value": value, "ok": 1}
        change = doc.get("update") or {}
        upsert, new = bool(doc.get("upsert")), bool(doc.get("new"))
        existed = coll.find_one(query, sort=sort, projection={"_id": 1})
        if isinstance(change, list) or any(k.startswith("$") for k in change):
            value = coll.find_one_and_update(query, change, projection=projection, sort=sort,
                                             upsert=upsert, return_document=new)
        else:
            value = coll.find_one_and_replace(query, dict(change), projection=projection,
                                              sort=sort, upsert=upsert, return_document=new)
        last = {"n": int(existed is not None or upsert), "updatedExisting": existed is not None}
        if existed is None and upsert:
            created = value if new and value is not None else coll.find_one(query, sort=sort)
            if created is not None:
                last["upserted"] = created["_id"]
        return {"lastErrorObject": last, "value": value, "ok": 1}

    def _cmd_createindexes(self, doc, db):
        coll = self._coll(db, doc["createIndexes"])
        before = len(coll.index_information())
        for spec in doc.get("indexes", []):
            options = {k: v for k, v in spec.items() if k not in ("key", "v")}
            coll.create_index(list(spec["key"].items()), **options)
        after = len(coll.index_information())
        return {"numIndexesBefore": before, "numIndexesAfter": after,
                "createdCollectionAutomatically": before == 0, "ok": 1}

    # --- reads -------------------------------------------------------------------------------

    def _cmd_find(self, doc, db):
        coll = self._coll(db, doc["find"])
        cursor = coll.find(dict(doc.get("filter") or {}), projection=doc.get("projection"))
        if doc.get("sort"):
            cursor = cursor.sort(_sort(doc["sort"]))
        if doc.get("skip"):
            cursor = cursor.skip(doc["skip"])
        limit = abs(int(doc.get("limit") or 0))
        if limit:
            cursor = cursor.limit(limit)
        docs = list(cursor)
        if doc.get("singleBatch"):
            return self._cursor(f"{db}.{doc['find']}", docs, None, single=True)
        return self._cursor(f"{db}.{doc['find']}", docs, doc.get("batchSize"))

    def _cmd_getmore(self, doc, db):
        cursor_id = doc["getMore"]
        entry = self._cursors.get(cursor_id)
        if entry is None:
            return {"ok": 0, "errmsg": f"cursor id {cursor_id} not found", "code": 43,
                    "codeName": "CursorNotFound"}
        namespace, remaining = entry
        size = doc.get("batchSize") or len(remaining)
        batch, rest = remaining[:size], remaining[size:]
        if rest:
            self._cursors[cursor_id] = (namespace, rest)
        else:
            del self._cursors[cursor_id]
            cursor_id = 0
        return {"cursor": {"id": _int64(cursor_id), "ns": namespace, "nextBatch": batch},
                "ok": 1}

    def _cmd_killcursors(self, doc, db):
        killed = [c for c in doc.get("cursors", []) if self._cursors.pop(c, None) is not None]
        unknown = [c for c in doc.get("cursors", []) if c not in killed]
        return {"cursorsKilled": killed, "cursorsNotFound": unknown, "cursorsAlive": [],
                "cursorsUnknown": [], "ok": 1}

    def _cmd_aggregate(self, doc, db):
        coll = self._coll(db, doc["aggregate"])
        docs = list(coll.aggregate(list(doc.get("pipeline", []))))
        return self._cursor(f"{db}.{doc['aggregate']}", docs,
                            (doc.get("cursor") or {}).get("batchSize"))

    def _cmd_count(self, doc, db):
        coll = self._coll(db, doc["count"])
        options = {k: doc[k] for k in ("skip", "limit") if doc.get(k)}
        return {"n": coll.count_documents(dict(doc.get("query") or {}), **options), "ok": 1}

    def _cmd_distinct(self, doc, db):
        coll = self._coll(db, doc["distinct"])
        return {"values": coll.distinct(doc["key"], dict(doc.get("query") or {})), "ok": 1}

    def _cmd_listindexes(self, doc, db):
        coll = self._coll(db, doc["listIndexes"])
        indexes = []
        for name, info in coll.index_information().items():
            spec = {"v": 2, "key": SON(info["key"]), "name": name}
            spec.update({k: v for k, v in info.items() if k not in ("key", "v")})
            indexes.append(spec)
        return self._cursor(f"{db}.{doc['listIndexes']}", indexes,
                            (doc.get("cursor") or {}).get("batchSize"))

    def _cursor(self, namespace: str, docs: list, batch_size, single: bool = False) -> dict:
        """A first batch, and a live cursor for getMore when more documents are left."""
        size = len(docs) if single else int(batch_size or FIRST_BATCH)
        first, rest = docs[:size], docs[size:]
        cursor_id = 0
        if rest:
            cursor_id = next(self._cursor_ids)
            self._cursors[cursor_id] = (namespace, rest)
        return {"cursor": {"id": _int64(cursor_id), "ns": namespace, "firstBatch": first},
                "ok": 1}


def _int64(value: int):
    from bson.int64 import Int64
    return Int64(value)


def _now():
    from datetime import datetime, timezone
    return datetime.now(timezone.utc)


def _sort(spec):
    if not spec:
        return None
    return list(spec.items()) if hasattr(spec, "items") else list(spec)


def _write_reply(n: int, errors: list) -> dict:
    reply = {"n": n, "ok": 1}
    if errors:
        reply["writeErrors"] = errors
    return reply


_KEY_RE = re.compile(r"index: (\S+)")


def _duplicate(error, write_error: bool = False) -> dict:
    """A duplicate-key error as mongod words it: code 11000 and an `E11000 ...` message."""
    message = str(error)
    if not message.startswith("E11000"):
        message = f"E11000 duplicate key error: {message}"
    shape = {"code": 11000, "errmsg": message}
    if write_error:
        return shape
    return {"ok": 0, "codeName": "DuplicateKey", **shape}


def main(argv: list[str]) -> None:
    wire = MongoWire(port=int(argv[1]) if len(argv) > 1 else None)
    port = wire.start()
    print(f"mongo_wire listening on 127.0.0.1:{port}", flush=True)
    serve_until_terminated(wire)


if __name__ == "__main__":
    main(sys.argv)
