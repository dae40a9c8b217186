"""Helpers shared by the python tests: open connections, read lsync_changes."""

import json
import os
import pathlib
import sqlite3

REPO = pathlib.Path(__file__).resolve().parents[2]
EXT = os.environ.get("LSYNC_EXT") or str(REPO / "target" / "release" / "liblsync.so")


def connect(path, load=True):
    """A connection in autocommit mode, with the extension loaded unless load=False."""
    con = sqlite3.connect(str(path), isolation_level=None)
    if load:
        con.enable_load_extension(True)
        con.load_extension(EXT)
        con.enable_load_extension(False)
    return con


def changes(con, since=0):
    """lsync_changes(since) as a list of dicts, with `data` decoded."""
    cur = con.execute(
        "SELECT seq, hlc, origin, tbl, pk, op, data FROM lsync_changes(?)", (since,)
    )
    names = [d[0] for d in cur.description]
    rows = [dict(zip(names, r)) for r in cur.fetchall()]
    for r in rows:
        r["data"] = json.loads(r["data"]) if r["data"] is not None else None
    return rows


def cursor(con):
    """The cursor that covers every change so far."""
    return con.execute("SELECT coalesce(max(seq), 0) FROM lsync_changes(0)").fetchone()[0]
