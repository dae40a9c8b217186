"""Device-owned rows may only be written by the device that inserted them."""

import sqlite3
import subprocess
import sys
import uuid

import pytest

from util import EXT

OTHER = str(uuid.uuid4())


def switch_device(con):
    con.execute("SELECT lsync_debug_set_device_id(?)", (OTHER,)).fetchall()
    assert con.execute("SELECT lsync_device_id()").fetchone()[0] == OTHER


@pytest.mark.parametrize("sql", ["UPDATE files SET size = 2", "DELETE FROM files"])
def test_other_device_cannot_write_owned_rows(db, sql):
    db.execute("INSERT INTO files(name, size) VALUES ('a', 1)")
    switch_device(db)
    with pytest.raises(sqlite3.Error, match="owned by"):
        db.execute(sql)
    assert db.execute("SELECT name, size FROM files").fetchall() == [("a", 1)]


def test_new_owner_writes_its_own_rows(db):
    db.execute("INSERT INTO files(name) VALUES ('mine-before')")
    switch_device(db)
    db.execute("INSERT INTO files(name) VALUES ('mine-after')")
    db.execute("UPDATE files SET size = 5 WHERE name = 'mine-after'")
    db.execute("DELETE FROM files WHERE name = 'mine-after'")
    assert db.execute("SELECT name FROM files").fetchall() == [("mine-before",)]


def test_shared_rows_are_writable_by_any_device(db):
    db.execute("INSERT INTO tags(name) VALUES ('a'), ('b')")
    switch_device(db)
    db.execute("UPDATE tags SET color = 'red' WHERE name = 'a'")
    db.execute("DELETE FROM tags WHERE name = 'b'")
    assert db.execute("SELECT name, color FROM tags").fetchall() == [("a", "red")]


def test_set_device_id_needs_the_testing_entry_point(db_path, ext_path):
    script = (
        "import sqlite3, sys\n"
        "con = sqlite3.connect(sys.argv[1])\n"
        "con.enable_load_extension(True)\n"
        "con.load_extension(sys.argv[2])\n"
        "try:\n"
        f"    con.execute(\"SELECT lsync_debug_set_device_id('{OTHER}')\").fetchall()\n"
        "except sqlite3.Error as e:\n"
        "    print('refused:', e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(db_path), EXT],
        capture_output=True, text=True, check=True,
    ).stdout
    assert out.startswith("refused:") and "sqlite3_lsync_testing_init" in out
