"""lsync: leaderless replication for SQLite, as a loadable extension.

This package carries lsync's SQLite extension (``liblsync.so``), built from
the same release as the ``lsync`` replicator, and two functions to use it
from Python's ``sqlite3`` module::

    import sqlite3
    import lsync

    con = sqlite3.connect("library.db")
    lsync.load(con)
    con.execute("SELECT lsync_version()").fetchone()

Once loaded, the connection has lsync's SQL functions (``lsync_track``,
``lsync_changeset``, ``lsync_apply``, ...), described in ``docs/sql-api.md``
of the lsync repository.
"""

import os
import sqlite3

__all__ = ["load", "loadable_path"]

# The version of the extension this package carries: `make wheel` builds it
# from the Cargo workspace of the same version, and the wheel test checks the
# two against each other (SELECT lsync_version()).
__version__ = "0.1.0"


def loadable_path() -> str:
    """The path of the bundled extension, without its ``.so`` suffix.

    SQLite adds the suffix itself and derives the entry point
    (``sqlite3_lsync_init``) from the file name, so this path can be given
    as it is to ``sqlite3.Connection.load_extension``, to the ``sqlite3``
    shell's ``.load``, or to SQL's ``load_extension()``. Use it to load the
    extension into a host other than Python's ``sqlite3`` module; for a
    ``sqlite3`` connection, :func:`load` does it in one call.
    """
    return os.path.normpath(os.path.join(os.path.dirname(__file__), "liblsync"))


def load(conn: sqlite3.Connection) -> None:
    """Load the lsync extension into ``conn``, a ``sqlite3.Connection``.

    Extension loading is turned on for this call only and is off again when
    it returns, whether the load succeeded or not (SQLite's default, so that
    SQL run later on ``conn`` cannot load other libraries). Load it once per
    connection, before using any ``lsync_*`` function.

    Raises ``sqlite3.NotSupportedError`` when this Python's ``sqlite3``
    module was built without extension loading (the
    ``--enable-loadable-sqlite-extensions`` build option), and
    ``sqlite3.OperationalError`` when SQLite cannot load the library.
    """
    if not hasattr(conn, "enable_load_extension"):
        raise sqlite3.NotSupportedError(
            "this Python's sqlite3 module cannot load extensions "
            "(built without --enable-loadable-sqlite-extensions)"
        )
    conn.enable_load_extension(True)
    try:
        conn.load_extension(loadable_path())
    finally:
        conn.enable_load_extension(False)
