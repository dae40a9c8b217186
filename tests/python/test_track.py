"""lsync_track / lsync_untrack: requirements, errors, options, re-tracking."""

import json
import sqlite3

import pytest

from util import REPO, changes, connect, cursor


def triggers(con, table):
    return con.execute(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = ?", (table,)
    ).fetchone()[0]


@pytest.mark.parametrize(
    "call, mentions",
    [
        ("lsync_track('nope', 'shared')", "nope"),
        ("lsync_track('files', 'bogus')", "bogus"),
        ("lsync_track(NULL, 'shared')", None),
        ("lsync_track('files', NULL)", None),
        ("lsync_track('norowid', 'shared')", "WITHOUT ROWID"),
        ("lsync_track('nouuid', 'device_owned')", "no usable key"),
        ("lsync_track('files', 'shared', 'not json')", None),
    ],
)
def test_track_errors(db, call, mentions):
    db.executescript(
        """
        CREATE TABLE norowid(a TEXT, b TEXT, name TEXT, PRIMARY KEY (a, b)) WITHOUT ROWID;
        CREATE TABLE nouuid(name TEXT, n INTEGER);
        """
    )
    with pytest.raises(sqlite3.Error) as err:
        db.execute(f"SELECT {call}").fetchall()
    if mentions:
        assert mentions in str(err.value)
    assert db.execute("SELECT 1").fetchone() == (1,)
    assert triggers(db, "norowid") == 0 and triggers(db, "nouuid") == 0


def test_track_is_idempotent(db):
    before = triggers(db, "files")
    assert before > 0
    db.execute("SELECT lsync_track('files', 'device_owned')").fetchall()
    assert triggers(db, "files") == before
    db.execute("INSERT INTO files(name) VALUES ('a')")
    assert len(changes(db)) == 1


def test_retrack_picks_up_added_column(db):
    db.execute("INSERT INTO tags(name) VALUES ('red')")
    db.execute("ALTER TABLE tags ADD COLUMN icon TEXT")
    db.execute("SELECT lsync_track('tags', 'shared')").fetchall()
    since = cursor(db)
    db.execute("UPDATE tags SET icon = 'star'")
    [change] = changes(db, since)
    assert change["op"] == "update" and change["data"] == {"icon": "star"}


def test_uuid_column_and_undeclared_fk_options(db):
    db.executescript(
        """
        CREATE TABLE folders(id INTEGER PRIMARY KEY, gid TEXT UNIQUE, name TEXT);
        CREATE TABLE docs(id INTEGER PRIMARY KEY, gid TEXT UNIQUE, folder INTEGER, name TEXT);
        SELECT lsync_track('folders', 'device_owned', '{"uuid_column": "gid"}');
        SELECT lsync_track('docs', 'device_owned', '{"uuid_column": "gid", "fks": {"folder": "folders"}}');
        INSERT INTO folders(name) VALUES ('inbox');
        INSERT INTO docs(folder, name) VALUES (1, 'note');
        """
    )
    folder = db.execute("SELECT gid FROM folders").fetchone()[0]
    doc = db.execute("SELECT gid FROM docs").fetchone()[0]
    assert folder[14] == "7" and doc[14] == "7"
    [change] = [c for c in changes(db) if c["tbl"] == "docs"]
    assert change["pk"] == doc and change["data"]["folder"] == folder


def test_declared_fks_travel_as_uuids(db_path, ext_path):
    con = connect(db_path)
    con.executescript((REPO / "sql/examples/library.sql").read_text())
    con.executescript((REPO / "sql/examples/track.sql").read_text())
    con.executescript(
        """
        INSERT INTO devices(name) VALUES ('laptop');
        INSERT INTO locations(device_id, path) VALUES (1, '/home');
        INSERT INTO entries(parent_id, location_id, name, kind) VALUES (NULL, 1, 'docs', 1);
        INSERT INTO entries(parent_id, location_id, name, kind) VALUES (1, 1, 'a.txt', 0);
        INSERT INTO tags(name) VALUES ('work');
        INSERT INTO tag_assignments(tag_id, entry_id) VALUES (1, 2);
        """
    )
    uuid_of = lambda t, i: con.execute(f"SELECT uuid FROM {t} WHERE id = ?", (i,)).fetchone()[0]
    all_changes = changes(con)
    assert {c["tbl"] for c in all_changes} == {"locations", "entries", "tags", "tag_assignments"}
    by_pk = {}  # a shared row may come as one change per column
    for c in all_changes:
        by_pk.setdefault(c["pk"], {}).update(c["data"])
    child = by_pk[uuid_of("entries", 2)]
    assert child["parent_id"] == uuid_of("entries", 1)
    assert child["location_id"] == uuid_of("locations", 1)
    assignment = by_pk[uuid_of("tag_assignments", 1)]
    assert assignment["tag_id"] == uuid_of("tags", 1)
    assert assignment["entry_id"] == uuid_of("entries", 2)


def test_untrack_stops_capture(db):
    db.execute("INSERT INTO tags(name) VALUES ('red')")
    db.execute("SELECT lsync_untrack('tags')").fetchall()
    assert triggers(db, "tags") == 0
    since = cursor(db)
    db.execute("UPDATE tags SET color = 'blue'")
    db.execute("INSERT INTO tags(uuid, name) VALUES ('0190a0a0-0000-7000-8000-000000000001', 'x')")
    db.execute("DELETE FROM tags")
    assert changes(db, since) == []


@pytest.mark.parametrize(
    "column, on_delete",
    [
        ("tag_id INTEGER NOT NULL REFERENCES tags(id)", "NO ACTION"),
        ("tag_id INTEGER NOT NULL REFERENCES tags(id) ON DELETE RESTRICT", "RESTRICT"),
        ("tag_id INTEGER NOT NULL REFERENCES tags(id) ON DELETE SET NULL", "SET NULL"),
        ("tag_id INTEGER REFERENCES tags(id)", None),
        ("tag_id INTEGER REFERENCES tags(id) ON DELETE SET NULL", None),
        ("tag_id INTEGER NOT NULL REFERENCES tags(id) ON DELETE CASCADE", None),
    ],
)
def test_not_null_fk_without_on_delete_action_warns(db, column, on_delete):
    """A NOT NULL FK column cannot hold the NULL of a link whose target has
    not arrived (such a change waits in the quarantine): lsync_track says
    so, and tracks the table all the same."""
    db.execute(f"CREATE TABLE tag_on_object(id INTEGER PRIMARY KEY, uuid TEXT, obj TEXT, {column})")
    summary = json.loads(db.execute("SELECT lsync_track('tag_on_object', 'shared')").fetchone()[0])
    if on_delete is None:
        assert summary["warnings"] == []
    else:
        [w] = summary["warnings"]
        assert (w["table"], w["column"], w["target"], w["on_delete"]) == (
            "tag_on_object",
            "tag_id",
            "tags",
            on_delete,
        )
        assert "tag_on_object.tag_id is NOT NULL" in w["message"]
        assert "waits in the quarantine (lsync_conflicts)" in w["message"]
    assert triggers(db, "tag_on_object") > 0
    db.execute("INSERT INTO tags(uuid, name) VALUES ('0190a0a0-0000-7000-8000-00000000000a', 'red')")
    db.execute("INSERT INTO tag_on_object(obj, tag_id) VALUES ('x', 1)")
    [change] = [c for c in changes(db) if c["tbl"] == "tag_on_object"]
    assert change["data"]["tag_id"] == "0190a0a0-0000-7000-8000-00000000000a"


def test_not_null_link_named_by_the_fks_option_warns(db):
    db.execute("CREATE TABLE marks(id INTEGER PRIMARY KEY, uuid TEXT, tag INTEGER NOT NULL)")
    summary = json.loads(
        db.execute("""SELECT lsync_track('marks', 'shared', '{"fks": {"tag": "tags"}}')""").fetchone()[0]
    )
    [w] = summary["warnings"]
    assert (w["column"], w["target"], w["on_delete"]) == ("tag", "tags", None)
    assert "no declared FK" in w["message"]
