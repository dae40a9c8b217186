"""The SQL API surface and the identity/clock functions."""

import datetime
import re
import sqlite3
import time
import uuid

import pytest

from util import REPO, connect

EXPECTED_FUNCTIONS = sorted(
    [
        "lsync_apply",
        "lsync_capture_hlc",
        "lsync_capturing",
        "lsync_changeset",
        "lsync_changeset_info",
        "lsync_conflict_drop",
        "lsync_conflict_retry",
        "lsync_debug",
        "lsync_debug_set_device_id",
        "lsync_deny_owned",
        "lsync_device_id",
        "lsync_device_key",
        "lsync_drift",
        "lsync_flush",
        "lsync_forget_peer",
        "lsync_head",
        "lsync_hlc_now",
        "lsync_hlc_text",
        "lsync_hlc_wall",
        "lsync_key",
        "lsync_library_id",
        "lsync_library_secret",
        "lsync_member_admit",
        "lsync_members",
        "lsync_members_merge",
        "lsync_missing",
        "lsync_on_delete_target",
        "lsync_on_insert",
        "lsync_peer",
        "lsync_peer_acked",
        "lsync_peer_contact",
        "lsync_peer_error",
        "lsync_peer_held",
        "lsync_peer_held_by",
        "lsync_peer_received",
        "lsync_peer_reset",
        "lsync_peer_stuck",
        "lsync_prune",
        "lsync_restore",
        "lsync_revoke",
        "lsync_schema_fingerprint",
        "lsync_snapshot",
        "lsync_snapshot_info",
        "lsync_status",
        "lsync_track",
        "lsync_untrack",
        "lsync_uuid",
        "lsync_version",
    ]
)

FUNCS = "SELECT DISTINCT name FROM pragma_function_list WHERE name LIKE 'lsync%' ORDER BY name"
MODULES = "SELECT name FROM pragma_module_list WHERE name LIKE 'lsync%' ORDER BY name"


def workspace_version():
    text = (REPO / "Cargo.toml").read_text()
    return re.search(r'^version\s*=\s*"([^"]+)"', text, re.M).group(1)


def test_api_surface_is_locked(db_path, ext_path):
    plain = connect(db_path, load=False)
    assert plain.execute(FUNCS).fetchall() == []
    assert plain.execute(MODULES).fetchall() == []
    loaded = connect(db_path)
    assert [r[0] for r in loaded.execute(FUNCS)] == EXPECTED_FUNCTIONS
    assert [r[0] for r in loaded.execute(MODULES)] == ["lsync_changes", "lsync_statements"]


def test_version_and_debug(db):
    version = db.execute("SELECT lsync_version()").fetchone()[0]
    assert isinstance(version, str) and workspace_version() in version
    debug = db.execute("SELECT lsync_debug()").fetchone()[0]
    assert isinstance(debug, str) and debug.strip()


def test_device_id_is_stable_across_connections_and_reopen(db, db_path):
    device = db.execute("SELECT lsync_device_id()").fetchone()[0]
    assert str(uuid.UUID(device)) == device.lower()
    other = connect(db_path)
    assert other.execute("SELECT lsync_device_id()").fetchone()[0] == device
    other.close()
    db.close()
    assert connect(db_path).execute("SELECT lsync_device_id()").fetchone()[0] == device


def test_library_id_join_and_bad_uuid(db, db_path):
    current = db.execute("SELECT lsync_library_id()").fetchone()[0]
    uuid.UUID(current)
    new = str(uuid.uuid4())
    assert db.execute("SELECT lsync_library_id(?)", (new,)).fetchone()[0] == new
    assert db.execute("SELECT lsync_library_id()").fetchone()[0] == new
    with pytest.raises(sqlite3.Error):
        db.execute("SELECT lsync_library_id('not-a-uuid')").fetchone()
    db.close()
    assert connect(db_path).execute("SELECT lsync_library_id()").fetchone()[0] == new


def test_uuid_is_v7(db):
    a, b = db.execute("SELECT lsync_uuid(), lsync_uuid()").fetchone()
    assert a != b
    assert uuid.UUID(a).version == 7 and a[14] == "7"


def test_hlc_layout(db):
    before = int(time.time() * 1000)
    hlc = db.execute("SELECT lsync_hlc_now()").fetchone()[0]
    after = int(time.time() * 1000)
    assert isinstance(hlc, int)
    assert before - 1000 <= hlc >> 16 <= after + 1000


@pytest.mark.parametrize("hlc", [None, (1_700_000_000_123 << 16) | 2])
def test_hlc_text_starts_with_iso_date(db, hlc):
    if hlc is None:
        hlc = db.execute("SELECT lsync_hlc_now()").fetchone()[0]
    text = db.execute("SELECT lsync_hlc_text(?)", (hlc,)).fetchone()[0]
    ms = hlc >> 16
    date = datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc)
    assert text.startswith(date.strftime("%Y-%m-%d")), text


def test_hlc_monotonic_across_connections(db, db_path):
    other = connect(db_path)
    seen = []
    for _ in range(200):
        seen.append(db.execute("SELECT lsync_hlc_now()").fetchone()[0])
        seen.append(other.execute("SELECT lsync_hlc_now()").fetchone()[0])
    assert all(a < b for a, b in zip(seen, seen[1:]))


def test_hlc_monotonic_across_reopen(db, db_path):
    # Many calls within the same milliseconds push the counter ahead of the
    # wall clock; only a persisted HLC keeps the next value above them.
    db.execute("PRAGMA synchronous=OFF")
    last = max(db.execute("SELECT lsync_hlc_now()").fetchone()[0] for _ in range(2000))
    db.close()
    con = connect(db_path)
    assert con.execute("SELECT lsync_hlc_now()").fetchone()[0] > last
