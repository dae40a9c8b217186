"""Changesets moved between two database files with SQL alone: export with
lsync_changeset, apply with lsync_apply, no replicator involved."""

import json

import pytest

from util import connect

SCHEMA = """
CREATE TABLE locations(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, path TEXT NOT NULL);
CREATE TABLE entries(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE,
  parent_id INTEGER REFERENCES entries(id),
  location_id INTEGER REFERENCES locations(id),
  name TEXT NOT NULL, size INTEGER);
CREATE TABLE tags(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT, color TEXT);
SELECT lsync_track('locations', 'device_owned');
SELECT lsync_track('entries', 'device_owned');
SELECT lsync_track('tags', 'shared');
"""


@pytest.fixture
def pair(tmp_path, ext_path):
    """Two database files in one library: (a, b, path of a, path of b)."""
    pa, pb = tmp_path / "a.db", tmp_path / "b.db"
    a, b = connect(pa), connect(pb)
    for con in (a, b):
        con.executescript(SCHEMA)
    library = a.execute("SELECT lsync_library_id()").fetchone()[0]
    assert b.execute("SELECT lsync_library_id(?)", (library,)).fetchone()[0] == library
    yield a, b, pa, pb
    a.close()
    b.close()


def export(con, since=0, max_changes=None):
    """(changeset blob, cursor to continue from)."""
    if max_changes is None:
        blob = con.execute("SELECT lsync_changeset(?)", (since,)).fetchone()[0]
    else:
        blob = con.execute("SELECT lsync_changeset(?, ?)", (since, max_changes)).fetchone()[0]
    to = con.execute("SELECT lsync_changeset_info(?) ->> 'to'", (blob,)).fetchone()[0]
    return blob, to


def apply(con, blob):
    return json.loads(con.execute("SELECT lsync_apply(?)", (blob,)).fetchone()[0])


def tables(con):
    """Every tracked table keyed by uuid, FKs as uuids (or the uuid a
    deferred link is waiting for)."""

    def link(table, col, target):
        return f"""coalesce((SELECT x.uuid FROM {target} x WHERE x.id = t.{col}),
                   (SELECT p.target_uuid FROM lsync_pending p
                    WHERE p.tbl = '{table}' AND p.pk = t.uuid AND p.col = '{col}'))"""

    return {
        "locations": con.execute("SELECT uuid, path FROM locations t ORDER BY uuid").fetchall(),
        "entries": con.execute(
            f"""SELECT uuid, {link('entries', 'parent_id', 'entries')},
                       {link('entries', 'location_id', 'locations')}, name, size
                FROM entries t ORDER BY uuid"""
        ).fetchall(),
        "tags": con.execute("SELECT uuid, name, color FROM tags t ORDER BY uuid").fetchall(),
    }


def test_both_directions_with_sql_alone(pair):
    a, b, _, _ = pair
    a.executescript(
        """
        INSERT INTO locations(uuid, path) VALUES ('LA', '/a');
        INSERT INTO entries(uuid, parent_id, location_id, name, size) VALUES ('A1', NULL, 1, 'root', 0);
        INSERT INTO entries(uuid, parent_id, location_id, name, size) VALUES ('A2', 1, 1, 'f', 5);
        INSERT INTO tags(uuid, name, color) VALUES ('T1', 'red', NULL);
        """
    )
    b.executescript(
        """
        INSERT INTO locations(uuid, path) VALUES ('LB', '/b');
        INSERT INTO entries(uuid, parent_id, location_id, name) VALUES ('B1', NULL, 1, 'broot');
        INSERT INTO tags(uuid, name) VALUES ('T2', 'blue');
        """
    )
    report = apply(b, export(a)[0])
    assert report["applied"] == 4
    report = apply(a, export(b)[0])
    assert report["applied"] == 3  # B's own rows
    # A's rows relayed back name A as their origin: never applied at A.
    assert report["own"] == 4 and report["stale"] == 0
    assert tables(a) == tables(b)
    assert len(tables(a)["entries"]) == 3

    # Incremental: concurrent edits of one shared row, both columns survive.
    a_cur, b_cur = export(a)[1], export(b)[1]
    a.execute("UPDATE tags SET color = 'dark' WHERE uuid = 'T1'")
    b.execute("UPDATE tags SET name = 'crimson' WHERE uuid = 'T1'")
    b.execute("UPDATE entries SET size = 9 WHERE uuid = 'B1'")
    apply(b, export(a, a_cur)[0])
    apply(a, export(b, b_cur)[0])
    assert tables(a) == tables(b)
    assert a.execute("SELECT name, color FROM tags WHERE uuid = 'T1'").fetchone() == (
        "crimson",
        "dark",
    )


def test_through_a_transfer_file_with_attach(pair, tmp_path):
    """The blob can travel through any file: A writes it into an outbox in a
    third database, B reads it from there, all in SQL."""
    a, b, _, _ = pair
    box = tmp_path / "outbox.db"
    a.executescript(
        """
        INSERT INTO locations(uuid, path) VALUES ('LA', '/a');
        INSERT INTO entries(uuid, location_id, name) VALUES ('A1', 1, 'root');
        """
    )
    a.execute("ATTACH ? AS box", (str(box),))
    a.execute("CREATE TABLE box.outbox(cs BLOB)")
    a.execute("INSERT INTO box.outbox SELECT lsync_changeset(0)")
    a.execute("DETACH box")
    b.execute("ATTACH ? AS box", (str(box),))
    report = json.loads(b.execute("SELECT lsync_apply(cs) FROM box.outbox").fetchone()[0])
    b.execute("DETACH box")
    assert report["applied"] == 2
    assert tables(a) == tables(b)


def test_a_child_before_its_parent_waits_then_links(pair):
    a, b, _, pb = pair
    a.executescript(
        """
        INSERT INTO locations(uuid, path) VALUES ('L', '/disk');
        INSERT INTO entries(uuid, parent_id, location_id, name) VALUES ('DIR', NULL, 1, 'dir');
        INSERT INTO entries(uuid, parent_id, location_id, name) VALUES ('FILE', 1, 1, 'file');
        """
    )
    parents, cur = export(a, 0, 2)
    child, _ = export(a, cur)

    report = apply(b, child)
    assert report["deferred"] == 2
    assert b.execute("SELECT parent_id, location_id FROM entries WHERE uuid = 'FILE'").fetchone() == (
        None,
        None,
    )
    assert sorted(b.execute("SELECT tbl, pk, col, target, target_uuid FROM lsync_pending")) == [
        ("entries", "FILE", "location_id", "locations", "L"),
        ("entries", "FILE", "parent_id", "entries", "DIR"),
    ]

    # Restart B between the two changesets.
    b.close()
    b = connect(pb)
    report = apply(b, parents)
    assert report["resolved"] == 2
    assert b.execute("SELECT count(*) FROM lsync_pending").fetchone()[0] == 0
    assert b.execute(
        """SELECT p.uuid, l.uuid FROM entries f
           JOIN entries p ON p.id = f.parent_id JOIN locations l ON l.id = f.location_id
           WHERE f.uuid = 'FILE'"""
    ).fetchone() == ("DIR", "L")
    assert tables(a) == tables(b)
    b.close()


def test_bad_input_is_refused_and_changes_nothing(pair):
    a, b, _, _ = pair
    a.execute("INSERT INTO tags(uuid, name) VALUES ('T1', 'red')")
    blob, _ = export(a)
    before = tables(b)
    for bad in (None, "text", blob[: len(blob) // 2], blob[:5] + b"\x09" + blob[6:]):
        with pytest.raises(Exception, match="^lsync"):
            b.execute("SELECT lsync_apply(?)", (bad,)).fetchone()
    assert tables(b) == before
