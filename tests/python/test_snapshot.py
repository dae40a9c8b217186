"""Snapshots with SQL alone, in Debian's python sqlite3 (SQLite 3.40):
lsync_snapshot writes a file, lsync_restore imports it."""

import json
import sqlite3

import pytest

from test_changesets import SCHEMA as LIBRARY
from util import connect

# The changeset tests' library, in WAL mode, plus a local table.
SCHEMA = (
    "PRAGMA journal_mode=WAL;\nCREATE TABLE devices(id INTEGER PRIMARY KEY, name TEXT);\n"
    + LIBRARY
)


@pytest.fixture
def pair(tmp_path, ext_path):
    """A source with rows and an empty database in its library."""
    src, dst = connect(tmp_path / "src.db"), connect(tmp_path / "dst.db")
    for con in (src, dst):
        con.executescript(SCHEMA)
    library = src.execute("SELECT lsync_library_id()").fetchone()[0]
    dst.execute("SELECT lsync_library_id(?)", (library,))
    src.executescript(
        """
        INSERT INTO devices(name) VALUES ('private laptop name');
        INSERT INTO locations(path) VALUES ('/home');
        INSERT INTO entries(name, location_id) VALUES ('root', 1);
        INSERT INTO entries(name, parent_id, location_id) VALUES ('a', 1, 1), ('b', 2, 1);
        INSERT INTO tags(name, color) VALUES ('red', '#f00');
        """
    )
    yield src, dst
    src.close()
    dst.close()


def tree(con):
    return con.execute(
        """SELECT e.uuid, e.name, p.uuid, l.uuid FROM entries e
           LEFT JOIN entries p ON p.id = e.parent_id
           LEFT JOIN locations l ON l.id = e.location_id ORDER BY e.uuid"""
    ).fetchall()


def test_snapshot_restore_and_catch_up(pair, tmp_path):
    src, dst = pair
    snap = tmp_path / "snap.db"
    size = src.execute("SELECT lsync_snapshot(?)", (str(snap),)).fetchone()[0]
    assert size == snap.stat().st_size > 0
    plain = sqlite3.connect(snap)
    tables = {r[0] for r in plain.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
    assert "devices" not in tables and "entries" in tables
    keys = {r[0] for r in plain.execute("SELECT key FROM lsync_config")}
    assert "device_id" not in keys and "snapshot_cursor" in keys
    plain.close()

    src.execute("UPDATE tags SET color = '#e00'")  # after the snapshot
    me = dst.execute("SELECT lsync_device_id()").fetchone()[0]
    report = json.loads(dst.execute("SELECT lsync_restore(?)", (str(snap),)).fetchone()[0])
    assert report["mode"] == "empty"
    assert report["rows"] == 5
    assert report["source_device"] == src.execute("SELECT lsync_device_id()").fetchone()[0]
    assert dst.execute("SELECT lsync_device_id()").fetchone()[0] == me
    assert tree(dst) == tree(src)

    blob = src.execute("SELECT lsync_changeset(?)", (report["cursor"],)).fetchone()[0]
    applied = json.loads(dst.execute("SELECT lsync_apply(?)", (blob,)).fetchone()[0])
    assert applied["applied"] == 1
    assert dst.execute("SELECT color FROM tags").fetchone()[0] == "#e00"


def test_restore_merges_into_a_library_with_rows(pair, tmp_path):
    src, dst = pair
    dst.execute("INSERT INTO tags(name) VALUES ('mine')")
    snap = tmp_path / "snap.db"
    src.execute("SELECT lsync_snapshot(?)", (str(snap),))
    report = json.loads(dst.execute("SELECT lsync_restore(?)", (str(snap),)).fetchone()[0])
    assert report["mode"] == "merge"
    assert report["applied"] == 5
    names = [r[0] for r in dst.execute("SELECT name FROM tags ORDER BY name")]
    assert names == ["mine", "red"]
    assert tree(dst) == tree(src)


def test_restore_refuses_a_file_that_is_not_a_snapshot(pair, tmp_path):
    src, dst = pair
    with pytest.raises(sqlite3.OperationalError, match="is not an lsync snapshot"):
        dst.execute("SELECT lsync_restore(?)", (str(tmp_path / "src.db"),))
    assert dst.execute("SELECT count(*) FROM entries").fetchone()[0] == 0
