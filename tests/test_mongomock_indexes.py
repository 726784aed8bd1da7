"""The test tree's mongomock reads by index (tests/mongomock_indexes.py): the same answers as a
scan, unique indexes still enforced, and a cost that does not grow with the collection."""
from __future__ import annotations

import random

import mongomock
import mongomock.collection
import pytest
from mongomock.filtering import filter_applies
from pymongo.errors import DuplicateKeyError

from tests import mongomock_indexes


@pytest.fixture
def tested(monkeypatch):
    """How many documents reads test against a filter (by index, or mongomock's scans)."""
    count = {"n": 0}

    def counting(filter, document):
        count["n"] += 1
        return filter_applies(filter, document)
    monkeypatch.setattr(mongomock_indexes, "filter_applies", counting)
    monkeypatch.setattr(mongomock.collection, "filter_applies", counting)
    return count


def _collection():
    mongomock_indexes.install()
    images = mongomock.MongoClient().db.images
    images.create_index([("batch_id", 1), ("chunk", 1), ("status", 1)])
    images.create_index([("batch_id", 1), ("line", 1)], unique=True)
    return images


def test_a_unique_index_still_refuses_a_second_document_with_its_values():
    images = _collection()
    images.insert_one({"_id": "a", "batch_id": "b1", "line": 2})
    with pytest.raises(DuplicateKeyError):
        images.insert_one({"_id": "b", "batch_id": "b1", "line": 2})
    with pytest.raises(DuplicateKeyError):  # an update that would make a duplicate, too
        images.insert_one({"_id": "c", "batch_id": "b1", "line": 3})
        images.update_one({"_id": "c"}, {"$set": {"line": 2}})
    assert images.find_one({"_id": "c"})["line"] == 3  # rolled back
    images.delete_one({"_id": "a"})
    images.update_one({"_id": "c"}, {"$set": {"line": 2}})  # free again
    assert images.count_documents({"batch_id": "b1", "line": 2}) == 1


def test_inserts_and_reads_by_index_test_a_few_documents_whatever_the_collection_holds(tested):
    images = _collection()
    for line in range(3000):
        images.insert_one({"_id": f"i{line}", "batch_id": "b1", "line": line,
                           "chunk": line // 50, "status": "pending"})
    tested["n"] = 0
    images.insert_one({"_id": "last", "batch_id": "b1", "line": 3000, "chunk": 60,
                       "status": "pending"})
    assert tested["n"] <= 2  # the unique check read the document just filed, not 3000
    tested["n"] = 0
    assert len(list(images.find({"batch_id": "b1", "chunk": 7, "status": "pending"}))) == 50
    assert tested["n"] == 50


def test_reads_by_index_answer_as_a_scan_does_through_updates_deletes_and_arrays():
    images = _collection()
    rng = random.Random(7)
    for n in range(400):
        images.insert_one({"_id": n, "batch_id": rng.choice(["b1", "b2"]), "line": n,
                           "chunk": rng.randrange(5),
                           "status": rng.choice(["pending", "processed", ["pending", "x"]])})
    for n in rng.sample(range(400), 120):  # indexed fields changed in place
        images.update_one({"_id": n}, {"$set": {"status": rng.choice(["pending", "failed"]),
                                                "chunk": rng.randrange(5)}})
    images.delete_many({"chunk": 4, "status": "failed"})
    images.replace_one({"_id": 3}, {"batch_id": "b2", "line": 3, "chunk": 1, "status": "x"})
    documents = {d["_id"]: d for d in images.find({})}  # no index: a scan
    for query in ({"batch_id": "b1", "chunk": 2, "status": "pending"},
                  {"batch_id": "b2", "chunk": {"$in": [0, 1, 3]}},
                  {"batch_id": {"$in": ["b1", "b2"]}, "status": "failed"},
                  {"batch_id": "b2", "chunk": 1, "status": "x"},
                  {"batch_id": "b1", "line": {"$in": [5, 6, 7, 500]}},
                  {"batch_id": "b1", "chunk": {"$eq": 0}, "status": {"$ne": "pending"}}):
        expected = sorted(i for i, d in documents.items() if filter_applies(query, d))
        assert sorted(d["_id"] for d in images.find(query)) == expected, query
