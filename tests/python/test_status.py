"""The DBA's view in SQL from Python (Debian's /usr/bin/python3 and the real
liblsync.so): lsync_status() says what `lsync status --json` says, and a
device gone for good is forgotten with lsync_forget_peer, after which its
silence no longer keeps tombstones."""

import json

import pytest

from util import connect

PEER = "01a20142-c196-70dc-8b46-cc82023ee619"
GONE = "01a20142-c196-70dc-8b46-cc82023ee61a"


def status(con):
    return json.loads(con.execute("SELECT lsync_status()").fetchone()[0])


def peer_in(doc, device):
    return next(p for p in doc["peers"] if p["device_id"] == device)


def test_status_and_forgetting_a_silent_peer(tmp_path):
    con = connect(tmp_path / "a.db")
    con.executescript(
        """
        CREATE TABLE tags(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT);
        SELECT lsync_track('tags', 'shared');
        INSERT INTO tags(name) VALUES ('keep'), ('doomed');
        """
    )
    con.execute("SELECT lsync_flush()")
    doc = status(con)
    assert doc["head"] == con.execute("SELECT lsync_head()").fetchone()[0] > 0
    assert doc["device_id"] == con.execute("SELECT lsync_device_id()").fetchone()[0]
    assert (doc["peers"], doc["tombstones"], doc["hlc_ahead_ms"]) == ([], 0, 0)

    for device in (PEER, GONE):
        con.execute("SELECT lsync_peer_contact(?, '127.0.0.1:1')", (device,))
    con.execute("DELETE FROM tags WHERE name = 'doomed'")
    con.execute("SELECT lsync_flush()")
    head = con.execute("SELECT lsync_head()").fetchone()[0]
    # PEER holds everything; GONE never answers again.
    con.execute("SELECT lsync_peer_acked(?, ?)", (PEER, head))
    doc = status(con)
    assert (doc["tombstones"], doc["tombstones_awaiting_ack"]) == (1, 1)
    assert peer_in(doc, PEER)["tombstones_held"] == 0
    assert peer_in(doc, GONE)["tombstones_held"] == 1
    assert peer_in(doc, GONE)["lag"] == head
    assert con.execute("SELECT lsync_prune()").fetchone()[0] == 0, "GONE's ACK is missing"

    assert con.execute("SELECT lsync_forget_peer(?)", (GONE.upper(),)).fetchone()[0] == 1
    doc = status(con)
    assert doc["tombstones_awaiting_ack"] == 0
    assert peer_in(doc, GONE)["forgotten_ms"] > 0
    assert con.execute("SELECT lsync_prune()").fetchone()[0] == 1
    assert status(con)["tombstones"] == 0

    with pytest.raises(Exception, match="was forgotten here"):
        con.execute("SELECT lsync_peer_contact(?, '127.0.0.1:1')", (GONE,))
    me = con.execute("SELECT lsync_device_id()").fetchone()[0]
    with pytest.raises(Exception, match="is this database's own device"):
        con.execute("SELECT lsync_forget_peer(?)", (me,))
