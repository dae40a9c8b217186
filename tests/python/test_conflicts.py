"""Constraint conflicts from Python (Debian's /usr/bin/python3 and its
sqlite3 module, the real liblsync.so): a refused change is quarantined and
shown in lsync_conflicts, the rest applies, and a DBA retries or drops it;
a delete's FK action reaches links made elsewhere (docs/conflicts.md)."""

import json

from util import connect

SCHEMA = """
CREATE TABLE notes(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, body TEXT);
CREATE TABLE tags(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT);
CREATE TABLE tag_on_note(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE,
  tag_id INTEGER NOT NULL REFERENCES tags(id) ON DELETE CASCADE,
  note_id INTEGER NOT NULL REFERENCES notes(id) ON DELETE CASCADE);
SELECT lsync_track('notes', 'shared');
SELECT lsync_track('tags', 'shared');
SELECT lsync_track('tag_on_note', 'shared');
"""


def pair(tmp_path):
    a, b = connect(tmp_path / "a.db"), connect(tmp_path / "b.db")
    a.executescript(SCHEMA)
    b.executescript(SCHEMA)
    library = a.execute("SELECT lsync_library_id()").fetchone()[0]
    b.execute("SELECT lsync_library_id(?)", (library,))
    return a, b


def send(src, dst):
    blob = src.execute("SELECT lsync_changeset(0)").fetchone()[0]
    return json.loads(dst.execute("SELECT lsync_apply(?)", (blob,)).fetchone()[0])


def test_a_refused_change_is_quarantined_and_a_dba_acts_on_it(tmp_path):
    a, b = pair(tmp_path)
    b.execute(
        "CREATE TRIGGER no_drafts BEFORE INSERT ON notes WHEN NEW.body = 'draft' "
        "BEGIN SELECT RAISE(ABORT, 'no drafts here'); END"
    )
    a.execute("INSERT INTO notes(uuid, body) VALUES ('D', 'draft'), ('K', 'kept')")
    report = send(a, b)
    assert (report["applied"], report["quarantined"]) == (1, 1)
    assert b.execute("SELECT uuid FROM notes").fetchall() == [("K",)]
    [(cid, tbl, uuid, op, data, error)] = b.execute(
        "SELECT id, tbl, uuid, op, data, error FROM lsync_conflicts"
    ).fetchall()
    assert (tbl, uuid, op, json.loads(data)) == ("notes", "D", "insert", {"body": "draft"})
    assert "no drafts here" in error
    assert json.loads(b.execute("SELECT lsync_status()").fetchone()[0])["conflicts"] == 1

    again = json.loads(b.execute("SELECT lsync_conflict_retry(?)", (cid,)).fetchone()[0])
    assert again["applied"] is False and "no drafts here" in again["error"]
    b.execute("DROP TRIGGER no_drafts")
    done = json.loads(b.execute("SELECT lsync_conflict_retry(?)", (cid,)).fetchone()[0])
    assert done == {"id": cid, "applied": True, "error": None}
    assert sorted(b.execute("SELECT uuid FROM notes").fetchall()) == [("D",), ("K",)]
    assert b.execute("SELECT count(*) FROM lsync_conflicts").fetchone()[0] == 0


def test_a_link_made_to_a_row_deleted_elsewhere_goes_with_it(tmp_path):
    a, b = pair(tmp_path)
    a.execute("INSERT INTO tags(uuid, name) VALUES ('T', 'red')")
    a.execute("INSERT INTO notes(uuid, body) VALUES ('N', 'x')")
    send(a, b)
    b.execute(
        "INSERT INTO tag_on_note(uuid, tag_id, note_id) "
        "SELECT 'J', t.id, n.id FROM tags t, notes n"
    )
    a.execute("PRAGMA foreign_keys = ON")
    a.execute("DELETE FROM tags WHERE uuid = 'T'")
    assert send(b, a)["quarantined"] == 0
    assert send(a, b)["quarantined"] == 0
    for c in (a, b):
        assert c.execute("SELECT count(*) FROM tag_on_note").fetchone()[0] == 0
        assert c.execute("SELECT count(*) FROM tags").fetchone()[0] == 0
        assert c.execute("SELECT count(*) FROM lsync_conflicts").fetchone()[0] == 0


def test_the_same_unique_name_on_two_devices_becomes_one_row(tmp_path):
    a, b = pair(tmp_path)
    for c in (a, b):
        c.execute("CREATE UNIQUE INDEX tags_name ON tags(name)")
    a.execute("INSERT INTO tags(uuid, name) VALUES ('T-a', 'red')")
    b.execute("INSERT INTO tags(uuid, name) VALUES ('T-b', 'red')")
    b.execute("INSERT INTO notes(uuid, body) VALUES ('N', 'holiday')")
    b.execute(
        "INSERT INTO tag_on_note(uuid, tag_id, note_id) VALUES "
        "('TN', (SELECT id FROM tags WHERE uuid = 'T-b'), (SELECT id FROM notes))"
    )
    assert send(b, a)["merged"] == 1
    assert send(a, b)["merged"] == 1
    for c in (a, b):
        # The lower uuid stays; the other is its alias, and B's assignment
        # points at the tag that stays.
        assert c.execute("SELECT uuid, name FROM tags").fetchall() == [("T-a", "red")]
        assert c.execute("SELECT uuid, root FROM lsync_alias").fetchall() == [("T-b", "T-a")]
        assert c.execute(
            "SELECT t.uuid FROM tag_on_note x JOIN tags t ON t.id = x.tag_id"
        ).fetchall() == [("T-a",)]
        assert c.execute("SELECT count(*) FROM lsync_conflicts").fetchone()[0] == 0
