#!/usr/bin/env bash
# Single-process demo: a library database in a temp dir, the extension loaded
# into the Debian sqlite3 shell, a few writes, and the changes lsync recorded.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
ext=${LSYNC_EXT:-$root/target/release/liblsync}
sqlite=${SQLITE3:-/usr/bin/sqlite3}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
db=$dir/library.db

"$sqlite" "$db" < "$root/sql/examples/library.sql"
echo "library database: $db"

"$sqlite" -bail "$db" <<SQL
.load $ext
.headers on
.mode box
SELECT lsync_version() AS version, lsync_device_id() AS device_id;
.output /dev/null
.read $root/sql/examples/track.sql
.output stdout
SELECT name, mode FROM lsync_tables ORDER BY id;
INSERT INTO devices(name, os) VALUES ('laptop', 'linux');
INSERT INTO locations(uuid, device_id, path, name) VALUES (NULL, 1, '/home/me', 'home');
INSERT INTO entries(uuid, parent_id, location_id, name, size, kind, mtime)
  VALUES (NULL, NULL, 1, 'photos', 0, 1, 1767225600000);
INSERT INTO entries(uuid, parent_id, location_id, name, size, kind, mtime)
  VALUES (NULL, 1, 1, 'beach.jpg', 2400000, 0, 1767225601000);
INSERT INTO tags(uuid, name, color) VALUES (NULL, 'holiday', '#ffaa00');
INSERT INTO tag_assignments(uuid, tag_id, entry_id, created_at) VALUES (NULL, 1, 2, 1767225602000);
UPDATE tags SET color = '#00aaff' WHERE name = 'holiday';
SELECT * FROM lsync_changes(0);
SQL
