"""mongomock reading by index, as mongod does, for the test tree's stores (the wire stand-in and
the in-process mongomock of the suite).

mongomock tests every document of a collection against every query, and its unique-index check
on every insert is such a query: a batch's rows cost it a scan each, so its time grows with the
collection, which a real MongoDB's never does. `install()` makes two kinds of query read only
the documents that can match, then test those against the whole filter as before:

- a query naming its `_id`s (equal to one, or `$in` a list): those documents, by key;
- a query giving equal values (or `$in` a list of values) for every field of a prefix of one of
  the collection's indexes (`create_index`): the documents filed under those values, as mongod
  reads its index. The longest such prefix is used. Anything else is still a scan.

How the indexes stay right: every document mongomock inserts or changes passes through
`Collection._ensure_uniques` (made for every insert and every update that changed a document);
`install` has it file the document under its current values before the check. A document may
stay filed under values it no longer has, or after it was deleted: every candidate is read from
the collection and tested against the whole filter, so those cost a test, and no matching
document is ever missed. A document whose indexed value is an array or a sub-document (which
an equality query may match by an element) is a candidate of every read of that index.
"""
from __future__ import annotations

import datetime
import itertools
import re
import threading

from mongomock import DuplicateKeyError, helpers
from mongomock.collection import Collection
from mongomock.filtering import filter_applies

_SCAN = Collection._iter_documents
_ENSURE_UNIQUES = Collection._ensure_uniques
MAX_LOOKUPS = 1000  # value combinations of one read ($in lists multiply); more: a scan
_lock = threading.Lock()  # filing and lazy building: a document is never filed twice or missed


def install() -> None:
    """Patch mongomock's Collection in this process (idempotent)."""
    Collection._iter_documents = _iter_documents
    Collection._ensure_uniques = _ensure_uniques


class _Index:
    """Document ids by the values of some fields: {values: {id: None}} (ordered sets)."""

    def __init__(self, fields: tuple[str, ...]):
        self.fields = fields
        self.by_values: dict[tuple, dict] = {}
        self.any: dict = {}  # documents with an array or sub-document there: always candidates

    def file(self, doc_id, document: dict) -> None:
        values = tuple(_value(document, field) for field in self.fields)
        if any(isinstance(v, (list, dict)) for v in values):
            self.any[doc_id] = None
            return
        try:
            self.by_values.setdefault(values, {})[doc_id] = None
        except TypeError:  # unhashable
            self.any[doc_id] = None

    def ids(self, combinations) -> dict:
        found = dict(self.any)
        for values in combinations:
            found.update(self.by_values.get(values, {}))
        return found


def _value(document: dict, field: str):
    try:
        return helpers.get_value_by_dot(document, field)
    except KeyError:
        return None  # a missing field matches an equality with None, as a null one does


def _indexes(collection) -> dict:
    store = collection._store
    indexes = getattr(store, "_read_indexes", None)
    if indexes is None:
        indexes = store._read_indexes = {}
    return indexes


def _ensure_uniques(self, new_data):
    doc_id = _key(new_data["_id"])
    with _lock:
        if isinstance(doc_id, datetime.datetime):
            # mongomock keys the document by the date as given, the document holds it naive
            # and cut to milliseconds: this collection's reads go back to scans.
            self._store._read_indexes_off = True
        for index in _indexes(self).values():
            index.file(doc_id, new_data)
    try:
        return _ENSURE_UNIQUES(self, new_data)
    except DuplicateKeyError:
        # mongomock puts the document back as it was, past this module: it stays a candidate
        # of every read, whatever its values.
        with _lock:
            for index in _indexes(self).values():
                index.any[doc_id] = None
        raise


def _iter_documents(self, filter):
    ids = _ids_named(filter)
    if ids is None:
        ids = _ids_by_index(self, filter)
    if ids is None:
        return _SCAN(self, filter)
    found = []
    for key in ids:
        if key in self._store:
            document = self._store[key]
            if filter_applies(filter, document):
                found.append(document)
    return iter(found)


def _key(doc_id):
    """The key mongomock's store files a document under."""
    return helpers.hashdict(doc_id) if isinstance(doc_id, dict) else doc_id


def _ids_named(filter) -> list | None:
    if not isinstance(filter, dict) or "_id" not in filter:
        return None
    return _equal_values(filter["_id"])


def _ids_by_index(collection, filter) -> dict | None:
    """The ids filed under the filter's values in the longest index prefix it covers."""
    if not isinstance(filter, dict) or getattr(collection._store, "_read_indexes_off", False):
        return None
    wanted = {field: values for field, values in
              ((field, _equal_values(value)) for field, value in filter.items()
               if not field.startswith("$")) if values is not None}
    best: tuple[str, ...] = ()
    for spec in collection._store.indexes.values():
        fields = [field for field, _ in spec.get("key", [])]
        if fields == ["_id"] or spec.get("partialFilterExpression") or spec.get("sparse") \
                or any("." in field for field in fields):  # a path may cross an array: a scan
            continue
        prefix = tuple(itertools.takewhile(lambda field: field in wanted, fields))
        if len(prefix) > len(best):
            best = prefix
    if not best:
        return None
    lookups = 1
    for field in best:
        lookups *= len(wanted[field])
    if lookups > MAX_LOOKUPS:
        return None
    with _lock:
        indexes = _indexes(collection)
        index = indexes.get(best)
        if index is None:  # built once, from every document there; filed on writes from now on
            index = indexes[best] = _Index(best)
            for document in list(collection._store.documents):
                index.file(_key(document["_id"]), document)
        return index.ids(itertools.product(*(wanted[field] for field in best)))


def _equal_values(condition) -> list | None:
    """The values a field's condition asks it to equal (one, or `$in`'s), else None."""
    if isinstance(condition, dict):
        if set(condition) == {"$eq"} and _plain(condition["$eq"]):
            return [condition["$eq"]]
        if set(condition) == {"$in"} and isinstance(condition["$in"], list) \
                and all(_plain(v) for v in condition["$in"]):
            return list(dict.fromkeys(condition["$in"]))
        return None
    return [condition] if _plain(condition) else None


def _plain(value) -> bool:
    """A value an equality compares as itself: not an array, a document, a pattern, nor a date
    (mongomock stores dates naive and cut to milliseconds: equal ones may not look equal)."""
    if isinstance(value, (list, tuple, dict, set, re.Pattern, datetime.datetime)) \
            or hasattr(value, "pattern"):
        return False
    try:
        hash(value)
    except TypeError:
        return False
    return True
