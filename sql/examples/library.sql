-- An example file-manager library: each device indexes its own disks
-- (locations, entries) and all devices share tags and tag assignments.
-- Tracked tables need a rowid (INTEGER PRIMARY KEY, the local id) and a
-- global `uuid` column; foreign keys are plain local integer ids.
-- Track them with track.sql once the extension is loaded.

CREATE TABLE IF NOT EXISTS devices(   -- local only: never tracked
  id         INTEGER PRIMARY KEY,
  uuid       TEXT UNIQUE,
  name       TEXT NOT NULL,
  os         TEXT,
  created_at INTEGER
);

CREATE TABLE IF NOT EXISTS locations(
  id         INTEGER PRIMARY KEY,
  uuid       TEXT UNIQUE,
  device_id  INTEGER REFERENCES devices(id),
  path       TEXT NOT NULL,
  name       TEXT,
  total_size INTEGER,
  created_at INTEGER
);

CREATE TABLE IF NOT EXISTS entries(
  id          INTEGER PRIMARY KEY,
  uuid        TEXT UNIQUE,
  parent_id   INTEGER REFERENCES entries(id),
  location_id INTEGER REFERENCES locations(id),
  name        TEXT NOT NULL,
  size        INTEGER,
  kind        INTEGER,   -- 0 file, 1 directory, 2 symlink
  mtime       INTEGER    -- unix ms
);
CREATE INDEX IF NOT EXISTS entries_parent ON entries(parent_id);
CREATE INDEX IF NOT EXISTS entries_location ON entries(location_id);

CREATE TABLE IF NOT EXISTS tags(
  id    INTEGER PRIMARY KEY,
  uuid  TEXT UNIQUE,
  name  TEXT NOT NULL,
  color TEXT
);

CREATE TABLE IF NOT EXISTS tag_assignments(
  id         INTEGER PRIMARY KEY,
  uuid       TEXT UNIQUE,
  tag_id     INTEGER REFERENCES tags(id),
  entry_id   INTEGER REFERENCES entries(id),
  created_at INTEGER
);
CREATE INDEX IF NOT EXISTS tag_assignments_entry ON tag_assignments(entry_id);
