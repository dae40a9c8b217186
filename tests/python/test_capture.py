"""Capture: what lsync_changes reports after ordinary writes."""

import sqlite3
import uuid

import pytest

from util import changes, connect, cursor

FIXED = "0190a0a0-0000-7000-8000-00000000000a"


def test_null_uuid_is_filled_with_v7(db):
    db.execute("INSERT INTO files(uuid, name) VALUES (NULL, 'a')")
    db.execute("INSERT INTO tags(name) VALUES ('b')")
    for table in ("files", "tags"):
        value = db.execute(f"SELECT uuid FROM {table}").fetchone()[0]
        assert uuid.UUID(value).version == 7, value


def test_given_uuid_is_kept(db):
    db.execute("INSERT INTO files(uuid, name) VALUES (?, 'a')", (FIXED,))
    assert db.execute("SELECT uuid FROM files").fetchone()[0] == FIXED


def test_insert_is_recorded(db):
    device = db.execute("SELECT lsync_device_id()").fetchone()[0]
    db.execute("INSERT INTO files(uuid, name, size) VALUES (?, 'a', 10)", (FIXED,))
    [change] = changes(db)
    assert change["tbl"] == "files" and change["op"] == "insert"
    assert change["pk"] == FIXED and change["origin"] == device
    assert change["data"]["name"] == "a" and change["data"]["size"] == 10
    assert change["hlc"] >> 16 > 0


def test_changes_are_in_seq_order_after_cursor(db):
    db.executemany("INSERT INTO files(name) VALUES (?)", [("a",), ("b",), ("c",)])
    all_changes = changes(db)
    seqs = [c["seq"] for c in all_changes]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert [c["seq"] for c in changes(db, seqs[0])] == seqs[1:]
    assert changes(db, seqs[-1]) == []


def test_shared_update_records_only_the_changed_column(db):
    db.execute("INSERT INTO tags(name, color) VALUES ('work', 'red')")
    since = cursor(db)
    db.execute("UPDATE tags SET color = 'blue'")
    [change] = changes(db, since)
    pk = db.execute("SELECT uuid FROM tags").fetchone()[0]
    assert change["op"] == "update" and change["pk"] == pk
    assert change["data"] == {"color": "blue"}


def test_only_latest_change_per_row_is_kept(db):
    db.execute("INSERT INTO files(name) VALUES ('a')")
    for size in range(5):
        db.execute("UPDATE files SET size = ?", (size,))
    [change] = changes(db)
    assert change["data"]["size"] == 4


@pytest.mark.parametrize("table", ["files", "tags"])
def test_delete_is_a_tombstone(db, table):
    db.execute(f"INSERT INTO {table}(uuid, name) VALUES (?, 'a')", (FIXED,))
    since = cursor(db)
    db.execute(f"DELETE FROM {table}")
    [change] = changes(db, since)
    assert change["op"] == "delete" and change["pk"] == FIXED and change["tbl"] == table
    assert [c["op"] for c in changes(db) if c["pk"] == FIXED] == ["delete"]


def test_rolled_back_transaction_records_nothing(db):
    db.execute("INSERT INTO tags(name) VALUES ('keep')")
    since = cursor(db)
    db.execute("BEGIN")
    db.execute("INSERT INTO files(name) VALUES ('gone')")
    db.execute("INSERT INTO tags(name) VALUES ('gone')")
    db.execute("UPDATE tags SET color = 'x'")
    db.execute("DELETE FROM tags WHERE name = 'keep'")
    db.execute("ROLLBACK")
    assert db.execute("SELECT lsync_flush()").fetchone()[0] == 0
    assert changes(db, since) == []


def test_flush_returns_count_folded(db):
    db.executemany("INSERT INTO tags(name) VALUES (?)", [("a",), ("b",)])
    db.execute("UPDATE tags SET color = 'x' WHERE name = 'a'")
    folded = db.execute("SELECT lsync_flush()").fetchone()[0]
    assert isinstance(folded, int) and folded > 0
    assert db.execute("SELECT lsync_flush()").fetchone()[0] == 0


def test_trusted_schema_off_still_captures(db):
    db.execute("INSERT INTO files(name) VALUES ('old')")
    db.execute("INSERT INTO tags(uuid, name) VALUES (?, 't')", (FIXED,))
    since = cursor(db)
    db.execute("PRAGMA trusted_schema=OFF")
    db.execute("INSERT INTO files(name) VALUES ('new')")
    db.execute("UPDATE files SET size = 1 WHERE name = 'old'")
    db.execute("DELETE FROM tags")
    ops = sorted((c["tbl"], c["op"]) for c in changes(db, since))
    assert ops == [("files", "insert"), ("files", "update"), ("tags", "delete")]
    assert db.execute("SELECT uuid FROM files WHERE name = 'new'").fetchone()[0][14] == "7"


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO files(name) VALUES ('b')",
        "DELETE FROM files",
        "INSERT INTO tags(name) VALUES ('b')",
        "UPDATE tags SET color = 'x'",
        "DELETE FROM tags",
    ],
)
def test_plain_connection_write_is_refused(db, db_path, sql):
    db.execute("INSERT INTO files(name) VALUES ('a')")
    db.execute("INSERT INTO tags(name) VALUES ('a')")
    plain = connect(db_path, load=False)
    with pytest.raises(sqlite3.OperationalError, match="no such function: lsync"):
        plain.execute(sql)


def test_plain_connection_update_of_a_device_owned_row_is_captured(db, db_path):
    """Its trigger is plain SQL (no statement journal): no extension needed."""
    db.execute("INSERT INTO files(uuid, name) VALUES (?, 'a')", (FIXED,))
    db.execute("SELECT lsync_flush()")
    plain = connect(db_path, load=False)
    plain.execute("UPDATE files SET size = 2 WHERE uuid = ?", (FIXED,))
    plain.commit()
    assert [c["op"] for c in changes(db) if c["pk"] == FIXED] == ["update"]


def test_plain_connection_insert_with_uuid_is_refused_or_captured(db, db_path):
    """DESIGN.md: a write without the extension is captured or refused, never lost."""
    plain = connect(db_path, load=False)
    try:
        plain.execute("INSERT INTO files(uuid, name) VALUES (?, 'p')", (FIXED,))
    except sqlite3.OperationalError as err:
        assert "no such function: lsync" in str(err)
    else:
        assert [c["op"] for c in changes(db) if c["pk"] == FIXED] == ["insert"]


def test_extreme_cursors_are_clamped_not_overflowed(db):
    db.execute("INSERT INTO tags(name) VALUES ('a'), ('b')")
    low = -(2**63)
    high = 2**63 - 1
    assert db.execute("SELECT count(*) FROM lsync_changes(?)", (low,)).fetchone()[0] == 2
    assert db.execute("SELECT count(*) FROM lsync_changes(?)", (high,)).fetchone()[0] == 0
    assert db.execute("SELECT lsync_missing(?), lsync_missing(?)", (low, high)).fetchone() == (2, 0)
    blob = db.execute("SELECT lsync_changeset(?)", (low,)).fetchone()[0]
    info = db.execute("SELECT lsync_changeset_info(?) ->> 'count'", (blob,)).fetchone()[0]
    assert info == 2
