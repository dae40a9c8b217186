"""Sync metadata is bounded by rows (x columns), not by the number of edits."""

import pytest

LSYNC_TABLES = "SELECT name FROM sqlite_schema WHERE type = 'table' AND name LIKE 'lsync\\_%' ESCAPE '\\'"


def metadata_size(con):
    con.execute("SELECT lsync_flush()").fetchall()
    tables = [r[0] for r in con.execute(LSYNC_TABLES)]
    rows = sum(con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables)
    pages = con.execute(
        "SELECT count(*) FROM dbstat WHERE name LIKE 'lsync\\_%' ESCAPE '\\'"
    ).fetchone()[0]
    return rows, pages


@pytest.mark.parametrize("table", ["files", "tags"])
def test_metadata_does_not_grow_with_edits(db, table):
    db.execute("PRAGMA synchronous=OFF")
    db.execute(f"INSERT INTO {table}(name) VALUES ('row')")
    # Fold the insert first: edits to a row not yet folded ride on its insert
    # entry, so only from here on is the metadata in its steady state.
    db.execute("SELECT lsync_flush()").fetchall()

    def update(i):
        db.execute(f"UPDATE {table} SET name = ? WHERE id = 1", (f"name-{i}",))

    for i in range(10):
        update(i)
    after_10 = metadata_size(db)
    for i in range(10, 10_000):
        update(i)
    assert metadata_size(db) == after_10
