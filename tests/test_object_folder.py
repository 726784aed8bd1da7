"""The local object folder: whole objects or none, keys that stay inside it."""
from __future__ import annotations

import io

import pytest

from infra.object_folder import BadKey, ObjectFolder, ObjectNotFound


class Breaks(io.RawIOBase):
    """A stream that fails after its first block, like an upload cut off."""

    def __init__(self):
        self.sent = False

    def readable(self):
        return True

    def readinto(self, buffer):
        if self.sent:
            raise ConnectionResetError("client went away")
        self.sent = True
        buffer[:4] = b"abcd"
        return 4


def test_objects_are_written_whole_and_read_back(tmp_path):
    folder = ObjectFolder(tmp_path / "objects")
    folder.ensure()
    folder.upload_stream("uploads/bat_1.csv", io.BytesIO(b"a,b\n" * 300_000))
    folder.put_bytes("outputs/bat_1/x.webp", b"RIFF....WEBP")
    got = folder.get("outputs/bat_1/x.webp")
    assert got["ContentType"] == "image/webp" and got["ContentLength"] == 12
    assert b"".join(got["Body"].iter_chunks(5)) == b"RIFF....WEBP"
    body = folder.open_stream("uploads/bat_1.csv")
    assert body.read(8) == b"a,b\na,b\n"
    body.close()
    assert folder.get("uploads/bat_1.csv")["ContentType"] == "text/csv"
    folder.delete("uploads/bat_1.csv")
    folder.delete("uploads/bat_1.csv")  # gone already: no error
    with pytest.raises(ObjectNotFound):
        folder.open_stream("uploads/bat_1.csv")
    folder.ping()


def test_a_failed_write_leaves_no_object_and_no_temporary_file(tmp_path):
    folder = ObjectFolder(tmp_path)
    folder.put_bytes("uploads/b.csv", b"old")
    with pytest.raises(ConnectionResetError):
        folder.upload_stream("uploads/b.csv", Breaks())
    assert (tmp_path / "uploads" / "b.csv").read_bytes() == b"old"  # the old one, whole
    assert list((tmp_path / ".tmp").iterdir()) == []


@pytest.mark.parametrize("key", ["../escape", "/etc/passwd", "outputs/../../x", "", "a//b",
                                 ".tmp/put-1", "outputs\\..\\x"])
def test_keys_that_leave_the_folder_are_refused(tmp_path, key):
    with pytest.raises(BadKey):
        ObjectFolder(tmp_path).path(key)


def test_a_copy_is_an_object_of_its_own(tmp_path):
    folder = ObjectFolder(tmp_path / "objects")
    folder.ensure()
    folder.put_bytes("outputs/a/x.jpg", b"first")
    folder.copy("outputs/a/x.jpg", "outputs/b/x.jpg")
    folder.put_bytes("outputs/a/x.jpg", b"overwritten")
    assert folder.open_stream("outputs/b/x.jpg").read() == b"first"
    folder.delete("outputs/a/x.jpg")
    assert folder.open_stream("outputs/b/x.jpg").read() == b"first"
    with pytest.raises(ObjectNotFound):
        folder.copy("outputs/a/x.jpg", "outputs/c/x.jpg")
    assert not (tmp_path / "objects" / "outputs" / "c").exists()
