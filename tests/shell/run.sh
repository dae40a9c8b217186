#!/usr/bin/env bash
# Drives the Debian sqlite3 shell (SQLite 3.40) with the real extension loaded
# by `.load`. Prints one line per check and a final "N passed, M failed";
# exits non-zero if any check fails.
set -uo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
sqlite=${SQLITE3:-/usr/bin/sqlite3}
ext=${LSYNC_EXT:-$root/target/release/liblsync}
ext=${ext%.so}
version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$root/Cargo.toml" | head -n1)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0
failed=0

# sql DB ARGS...: one shell run with the extension loaded; stdout+stderr.
sql() { local db=$1; shift; "$sqlite" -batch -bail "$db" ".load $ext" "$@" 2>&1; }
# tsql DB ARGS...: the same through the testing entry point (test-only hooks on).
tsql() { local db=$1; shift; "$sqlite" -batch -bail "$db" ".load $ext sqlite3_lsync_testing_init" "$@" 2>&1; }
# plain DB ARGS...: the same without loading the extension.
plain() { local db=$1; shift; "$sqlite" -batch -bail "$db" "$@" 2>&1; }

ok() { passed=$((passed + 1)); echo "ok - $1"; }
not_ok() { failed=$((failed + 1)); echo "FAIL - $1"; printf '    %s\n' "${@:2}"; }

# expect NAME WANT GOT: GOT must equal WANT.
expect() { if [ "$3" == "$2" ]; then ok "$1"; else not_ok "$1" "want: $2" "got:  $3"; fi; }
# expect_match NAME REGEX GOT
expect_match() { if [[ $3 =~ $2 ]]; then ok "$1"; else not_ok "$1" "want match: $2" "got: $3"; fi; }

# cursor DB: the lsync_changes cursor that covers every change so far.
cursor() { sql "$1" "SELECT coalesce(max(seq), 0) FROM lsync_changes(0);"; }

# fresh NAME: a database with a tracked device_owned `files` and shared `tags`.
fresh() {
  local db=$tmp/$1.db
  sql "$db" \
    "CREATE TABLE files(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT, size INTEGER);" \
    "CREATE TABLE tags(id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT, color TEXT);" \
    "SELECT lsync_track('files','device_owned');" \
    "SELECT lsync_track('tags','shared');" >/dev/null
  echo "$db"
}

# Every check below needs a loadable extension; without one, stop here.
if ! out=$(sql :memory: "SELECT 1;"); then
  not_ok "load $ext" "$out"
  echo "$passed passed, $failed failed"
  exit 1
fi

# 1. the extension loads and reports the workspace version
expect_match "lsync_version() reports $version" "$version" "$(sql :memory: "SELECT lsync_version();")"

# 2. tracking creates triggers
db=$(fresh track)
expect_match "lsync_track creates triggers" '^[1-9][0-9]*$' \
  "$(plain "$db" "SELECT count(*) FROM sqlite_schema WHERE type='trigger' AND tbl_name='files';")"

# 3. an insert with NULL uuid gets a UUIDv7 and is recorded as an insert
sql "$db" "INSERT INTO files(name, size) VALUES ('a', 1);" >/dev/null
uuid=$(plain "$db" "SELECT uuid FROM files;")
expect_match "NULL uuid filled with a UUIDv7" '^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-' "$uuid"
expect "insert recorded in lsync_changes" "files|$uuid|insert" \
  "$(sql "$db" "SELECT tbl, pk, op FROM lsync_changes(0);")"

# 4. shared update records only the changed column
db=$(fresh shared)
sql "$db" "INSERT INTO tags(name, color) VALUES ('t', 'red');" >/dev/null
since=$(cursor "$db")
expect "shared update records one column" 'update|{"color":"blue"}' \
  "$(sql "$db" "UPDATE tags SET color = 'blue';" "SELECT op, data FROM lsync_changes($since);")"

# 5. a rolled back transaction records nothing
since=$(cursor "$db")
expect "rollback records nothing" "0" \
  "$(sql "$db" "BEGIN; INSERT INTO tags(name) VALUES ('x'); UPDATE tags SET color = 'y'; DELETE FROM files; ROLLBACK;" \
    "SELECT count(*) FROM lsync_changes($since);")"

# 6. another device may not update or delete device-owned rows, but may write shared ones
db=$(fresh owned)
sql "$db" "INSERT INTO files(name) VALUES ('a');" "INSERT INTO tags(name) VALUES ('t');" >/dev/null
other=$(sql :memory: "SELECT lsync_uuid();")
# as_other DB ARGS...: run as device $other (the test-only route needs the
# testing entry point).
as_other() {
  local db=$1; shift
  tsql "$db" ".output /dev/null" "SELECT lsync_debug_set_device_id('$other');" \
    ".output stdout" "$@"
}
for stmt in "UPDATE files SET size = 2;" "DELETE FROM files;"; do
  expect_match "ownership: '$stmt' by another device fails" "owned by" "$(as_other "$db" "$stmt")"
done
expect "ownership: owned row unchanged" "a|" "$(plain "$db" "SELECT name, size FROM files;")"
expect "ownership: shared table writable by another device" "0" \
  "$(as_other "$db" "UPDATE tags SET color = 'red';" "DELETE FROM tags;" "SELECT count(*) FROM tags;")"

# 7. the debug route refuses without the testing entry point
expect_match "set_device_id needs sqlite3_lsync_testing_init" "sqlite3_lsync_testing_init" \
  "$(sql "$db" "SELECT lsync_debug_set_device_id('$other');")"

# 8. PRAGMA trusted_schema=OFF: inserts, updates and deletes are still captured
db=$(fresh untrusted)
sql "$db" "INSERT INTO files(name) VALUES ('old');" "INSERT INTO tags(name) VALUES ('t');" >/dev/null
since=$(cursor "$db")
expect "trusted_schema=OFF still captures" $'files|insert\nfiles|update\ntags|delete' \
  "$(sql "$db" "PRAGMA trusted_schema=OFF;" \
    "INSERT INTO files(name) VALUES ('new');" \
    "UPDATE files SET size = 1 WHERE name = 'old';" \
    "DELETE FROM tags;" \
    "SELECT tbl, op FROM lsync_changes($since) ORDER BY tbl, op;")"

# 9. a delete is a tombstone carrying the row's uuid
db=$(fresh tomb)
expect "delete recorded as tombstone" "delete|0190a0a0-0000-7000-8000-00000000000a" \
  "$(sql "$db" "INSERT INTO files(uuid, name) VALUES ('0190a0a0-0000-7000-8000-00000000000a', 'a');" \
    "DELETE FROM files;" "SELECT op, pk FROM lsync_changes(0);")"

# 10. a shell without .load cannot write to a tracked table, but for an
# UPDATE of a device-owned table, whose trigger is plain SQL: that is captured
for stmt in "INSERT INTO files(name) VALUES ('b');" "UPDATE tags SET color = 'x';" "DELETE FROM tags;"; do
  out=$(plain "$db" "$stmt"); rc=$?
  if [ $rc -ne 0 ] && [[ $out == *"no such function: lsync"* ]]; then ok "no .load: '$stmt' refused"
  else not_ok "no .load: '$stmt' refused" "rc=$rc" "$out"; fi
done
db=$(fresh noload)
sql "$db" "INSERT INTO files(name) VALUES ('a');" "SELECT lsync_flush();" >/dev/null
since=$(cursor "$db")
plain "$db" "UPDATE files SET size = 3;" >/dev/null
expect "no .load: a device-owned update is captured" "files|update" \
  "$(sql "$db" "SELECT tbl, op FROM lsync_changes($since);")"

# 11. bad lsync_track calls are errors, and the shell survives them
db=$(fresh errors)
plain "$db" "CREATE TABLE norowid(n INTEGER PRIMARY KEY, uuid TEXT) WITHOUT ROWID;" >/dev/null
for call in "lsync_track('nope','shared')" "lsync_track('files','bogus')" \
  "lsync_track(NULL,'shared')" "lsync_track('norowid','shared')"; do
  out=$(sql "$db" "SELECT $call;"); rc=$?
  if [ $rc -ne 0 ] && [[ $out == *Error:* ]]; then ok "$call is an error"
  else not_ok "$call is an error" "rc=$rc" "$out"; fi
done

# 12. a snapshot restored into an empty library: the same rows, its own device id;
#     restored again, it merges and changes nothing
src=$(fresh snapsrc)
sql "$src" "INSERT INTO files(name, size) VALUES ('a', 1), ('b', 2);" "INSERT INTO tags(name) VALUES ('red');" >/dev/null
expect_match "lsync_snapshot returns the file size" '^[1-9][0-9]*$' \
  "$(sql "$src" "SELECT lsync_snapshot('$tmp/snap.db');")"
expect "the snapshot holds no device id" "0" \
  "$(plain "$tmp/snap.db" "SELECT count(*) FROM lsync_config WHERE key IN ('device_id', 'device_idx');")"
dst=$(fresh snapdst)
library=$(sql "$src" "SELECT lsync_library_id();")
me=$(sql "$dst" "SELECT lsync_library_id('$library');" "SELECT lsync_device_id();" | tail -n1)
expect "lsync_restore into an empty library" "empty|1|2|$me" \
  "$(sql "$dst" "SELECT json_extract(lsync_restore('$tmp/snap.db'), '\$.mode');" \
    "SELECT count(*) FROM tags;" "SELECT count(*) FROM files;" "SELECT lsync_device_id();" | paste -sd'|')"
expect "lsync_restore again merges, nothing new" "merge|0|2" \
  "$(sql "$dst" "SELECT json_extract(r, '\$.mode'), json_extract(r, '\$.applied') FROM (SELECT lsync_restore('$tmp/snap.db') AS r);" \
    "SELECT count(*) FROM files;" | paste -sd'|')"
expect_match "lsync_restore refuses a file that is not a snapshot" "is not an lsync snapshot" \
  "$(sql "$dst" "SELECT lsync_restore('$src');")"

# 12b. {"consume": true}: the same import from a scratch copy, which is deleted
dst2=$(fresh snapdst2)
sql "$dst2" "SELECT lsync_library_id('$library');" >/dev/null
cp "$tmp/snap.db" "$tmp/scratch.db"
expect "lsync_restore consumes a scratch copy" "empty|2|gone" \
  "$(sql "$dst2" "SELECT json_extract(lsync_restore('$tmp/scratch.db', '{\"consume\": true}'), '\$.mode');" \
    "SELECT count(*) FROM files;" | paste -sd'|')|$([ -e "$tmp/scratch.db" ] && echo kept || echo gone)"

# 13. lsync_missing counts what a changeset would hold; a peer's own changes,
#     relayed back, are not missing for it
src_device=$(sql "$src" "SELECT lsync_device_id();")
expect "lsync_missing at the restored library: all, after 1, none for their origin" "3|2|0" \
  "$(sql "$dst" "SELECT lsync_missing(0), lsync_missing(1), lsync_missing(0, '$src_device');")"
db=$(fresh missing)
expect "lsync_missing folds new rows first, as the docs show" "3|2|0" \
  "$(sql "$db" "INSERT INTO tags(name) VALUES ('a'), ('b'), ('c');" \
    "SELECT lsync_missing(0), lsync_missing(1), lsync_missing(0, lsync_device_id());")"

# 14. A change the receiver refuses for a constraint is quarantined, the rest
#     applies, and the DBA sees it in lsync_conflicts and drops it
qa=$(fresh quarantine_a)
qb=$(fresh quarantine_b)
sql "$qb" "SELECT lsync_library_id('$(sql "$qa" "SELECT lsync_library_id();")');" \
  "CREATE TRIGGER no_black BEFORE INSERT ON tags WHEN NEW.color = 'black' BEGIN SELECT RAISE(ABORT, 'no black tags'); END;" >/dev/null
sql "$qa" "INSERT INTO tags(name, color) VALUES ('night', 'black'), ('day', 'white');" \
  "SELECT writefile('$tmp/q.lsync', lsync_changeset(0));" >/dev/null
expect "a refused change is quarantined, the rest applies" "1|1|day|tags|insert|no black tags" \
  "$(sql "$qb" "SELECT json_extract(r, '\$.applied'), json_extract(r, '\$.quarantined') FROM (SELECT lsync_apply(readfile('$tmp/q.lsync')) AS r);" \
    "SELECT name FROM tags;" "SELECT tbl, op, substr(error, instr(error, 'no black')) FROM lsync_conflicts;" | paste -sd'|')"
expect "lsync_conflict_drop empties the quarantine" "1|0" \
  "$(sql "$qb" "SELECT lsync_conflict_drop(id) FROM lsync_conflicts;" "SELECT count(*) FROM lsync_conflicts;" | paste -sd'|')"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
