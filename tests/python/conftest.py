"""Fixtures that load the real liblsync.so into Debian's python sqlite3.

Run with /usr/bin/python3: the pyenv python3 on PATH cannot load extensions.
"""

import os

import pytest

from util import EXT, connect


def connect_testing(path):
    """connect(), through the testing entry point: lsync_debug_set_device_id
    works on this connection (Debian's python 3.11 has no entrypoint
    argument to load_extension, so SQL's load_extension() names it)."""
    con = connect(path, load=False)
    con.enable_load_extension(True)
    con.execute("SELECT load_extension(?, 'sqlite3_lsync_testing_init')", (EXT,))
    con.enable_load_extension(False)
    return con


@pytest.fixture(scope="session")
def ext_path():
    if not os.path.exists(EXT):
        pytest.fail(f"extension not built: {EXT} (run `make build` or set LSYNC_EXT)")
    return EXT


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "test.db"


@pytest.fixture
def db(db_path, ext_path):
    """A fresh database file with the extension loaded, plus two tables:
    `files` (device_owned) and `tags` (shared), both tracked."""
    con = connect_testing(db_path)
    con.executescript(
        """
        CREATE TABLE files(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT, size INTEGER);
        CREATE TABLE tags(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT, color TEXT);
        SELECT lsync_track('files', 'device_owned');
        SELECT lsync_track('tags', 'shared');
        """
    )
    yield con
    con.close()
