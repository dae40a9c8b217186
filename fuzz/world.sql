-- The SQL fuzz targets' world (fuzz/src/lib.rs), also read by
-- tests/tests/fuzz_regressions.rs so that a crash's input means there what
-- it meant here.
PRAGMA page_size = 512;
CREATE TABLE folders(
  id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT NOT NULL,
  parent_id INTEGER REFERENCES folders(id));
CREATE TABLE labels(
  id INTEGER PRIMARY KEY, uuid TEXT UNIQUE, name TEXT NOT NULL UNIQUE,
  color TEXT CHECK (color IS NOT 'forbidden'),
  folder_id INTEGER REFERENCES folders(id) ON DELETE CASCADE);
CREATE TABLE pins(
  label_id INTEGER NOT NULL REFERENCES labels(id) ON DELETE CASCADE,
  folder_id INTEGER NOT NULL REFERENCES folders(id),
  note TEXT,
  PRIMARY KEY (label_id, folder_id));
SELECT lsync_track('folders', 'device_owned');
SELECT lsync_track('labels', 'shared');
SELECT lsync_track('pins', 'shared');
