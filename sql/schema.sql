-- lsync's own metadata. Created on first use; every statement is idempotent.
-- Everything here lives in the app's database file so that capture is part of
-- the writing transaction.

-- Key/value settings: device_id, device_idx, library_id, hlc, max_drift_ms, ...
CREATE TABLE IF NOT EXISTS lsync_config(
  key   TEXT PRIMARY KEY,
  value ANY
) WITHOUT ROWID;

-- Devices seen by this database. `idx` is the compact local alias stored in
-- lsync_clock.origin; the UUID is what travels.
CREATE TABLE IF NOT EXISTS lsync_devices(
  idx INTEGER PRIMARY KEY,
  id  TEXT NOT NULL UNIQUE
);

-- Tracked tables. `hwm` is the rowid high-water mark: rows above it are local
-- inserts not yet folded into lsync_clock (inserts need no per-row trigger).
CREATE TABLE IF NOT EXISTS lsync_tables(
  id       INTEGER PRIMARY KEY,
  name     TEXT NOT NULL UNIQUE,
  mode     TEXT NOT NULL CHECK (mode IN ('device_owned', 'shared')),
  uuid_col TEXT NOT NULL,
  hwm      INTEGER NOT NULL DEFAULT 0,
  columns  TEXT NOT NULL,   -- JSON array of the tracked column names, in mask-bit order
  fks      TEXT NOT NULL,   -- JSON object: column -> target table
  options  TEXT NOT NULL DEFAULT '{}'
);

-- Rows changed by UPDATE (and INSERTs below the high-water mark) since the
-- last fold. One row per (table, rowid): repeated edits overwrite it, so its
-- size is bounded by the number of rows, never by the number of edits.
CREATE TABLE IF NOT EXISTS lsync_dirty(
  tbl  INTEGER NOT NULL,
  rid  INTEGER NOT NULL,
  op   INTEGER NOT NULL,          -- 0 insert, 1 update
  hlc  INTEGER NOT NULL,
  cols INTEGER NOT NULL DEFAULT 0, -- bit i: column i of lsync_tables.columns changed
  PRIMARY KEY (tbl, rid)
) WITHOUT ROWID;

-- Rows deleted since the last fold. Keyed by global id and rowid together:
-- a uuid deleted, re-inserted and deleted again leaves both rowids to fold.
CREATE TABLE IF NOT EXISTS lsync_deleted(
  tbl  INTEGER NOT NULL,
  uuid ANY NOT NULL,
  rid  INTEGER NOT NULL,
  hlc  INTEGER NOT NULL,
  PRIMARY KEY (tbl, uuid, rid)
) WITHOUT ROWID;

-- The change clock: what a peer at cursor `since` is missing is every entry
-- with seq > since. An entry covers the rowids lo..hi of one table (a whole
-- bulk insert is one entry), or one column of one row (`col`, shared tables),
-- or a tombstone (lo IS NULL, uuid set, op 2), or a merge (lo IS NULL, op 3,
-- uuid the row merged away; see lsync_alias). The row with rowid r in an entry has
-- cursor seq - (hi - r). Each live row is covered by exactly one row entry.
CREATE TABLE IF NOT EXISTS lsync_clock(
  seq    INTEGER PRIMARY KEY,
  tbl    INTEGER NOT NULL,
  lo     INTEGER,
  hi     INTEGER,
  col    TEXT,
  op     INTEGER NOT NULL,        -- 0 insert, 1 update, 2 delete
  hlc    INTEGER NOT NULL,
  origin INTEGER NOT NULL,        -- lsync_devices.idx
  uuid   ANY                      -- tombstones only
);
-- Row entries by first rowid: the entry covering a rowid is the last one
-- starting at or before it.
CREATE INDEX IF NOT EXISTS lsync_clock_row ON lsync_clock(tbl, lo) WHERE col IS NULL AND lo IS NOT NULL;
-- The column entries of one rowid (shared tables). Each entry is in one
-- index only: before version 13 row entries were in two, which doubled
-- what a range split by updates costs.
CREATE INDEX IF NOT EXISTS lsync_clock_col ON lsync_clock(tbl, lo, col) WHERE col IS NOT NULL;
CREATE INDEX IF NOT EXISTS lsync_clock_tomb ON lsync_clock(tbl, uuid) WHERE uuid IS NOT NULL;

-- Rows of shared tables that clashed on a UNIQUE key and became one
-- (docs/conflicts.md): `uuid` is an alias of `root`, the lowest global id of
-- the rows merged together. Changes addressed to an alias apply to its root.
-- The merge itself travels as a clock entry (op 3, uuid = the alias, pruned
-- like a tombstone); this table stays, so that late changes still find it.
CREATE TABLE IF NOT EXISTS lsync_alias(
  tbl  INTEGER NOT NULL,
  uuid ANY NOT NULL,
  root ANY NOT NULL,
  PRIMARY KEY (tbl, uuid)
) WITHOUT ROWID;

-- The global ids lsync keeps for tables that have no column holding them
-- (lsync_tables.options.identity): derived from a row's key, or minted for
-- a table with an INTEGER PRIMARY KEY only. A local row gets its id when
-- its insert is folded; a row from a peer comes with its id.
CREATE TABLE IF NOT EXISTS lsync_gid(
  tbl INTEGER NOT NULL,
  rid INTEGER NOT NULL,
  gid ANY NOT NULL,
  PRIMARY KEY (tbl, rid)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS lsync_gid_of ON lsync_gid(tbl, gid);
CREATE INDEX IF NOT EXISTS lsync_alias_root ON lsync_alias(tbl, root);

-- FK links that arrived before their target row. The row was applied with
-- the column NULL; the link is completed (and removed from here) as soon as
-- the target row exists. Never dropped while the row lives.
CREATE TABLE IF NOT EXISTS lsync_deferred(
  tbl         INTEGER NOT NULL,
  rid         INTEGER NOT NULL,
  col         TEXT NOT NULL,
  uuid        ANY NOT NULL,     -- the row's global id
  target      TEXT NOT NULL,    -- the table the FK points at
  target_uuid ANY NOT NULL,
  PRIMARY KEY (tbl, rid, col)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS lsync_deferred_target ON lsync_deferred(target, target_uuid);

-- What is waiting for an FK target, readably.
CREATE VIEW IF NOT EXISTS lsync_pending AS
  SELECT t.name AS tbl, d.uuid AS pk, d.col AS col, d.target AS target, d.target_uuid AS target_uuid
  FROM lsync_deferred d JOIN lsync_tables t ON t.id = d.tbl;

-- Replication peers, as the replicator knows them; it keeps them through the
-- lsync_peer* functions. Watermarks advance in the same transaction as the
-- apply, so a crash never loses or repeats a change.
CREATE TABLE IF NOT EXISTS lsync_peers(
  device_id    TEXT PRIMARY KEY,
  addr         TEXT,
  recv_cursor  INTEGER NOT NULL DEFAULT 0,  -- the peer's cursor: applied here up to it
  acked_cursor INTEGER NOT NULL DEFAULT 0,  -- our cursor: the peer holds our changes up to it
  failures     INTEGER NOT NULL DEFAULT 0,  -- consecutive failed catch-ups from the peer
  last_contact INTEGER,                     -- unix ms
  last_error   TEXT,
  -- The error a full resync from the peer was started for, or that a
  -- resync would hit again: no (further) escalation until a catch-up
  -- completes. Added in schema version 6 (see schema.rs's migration).
  resync_error TEXT,
  -- A peer whose clock is ahead is held, not failed (issue 11; schema
  -- version 7): we hold its changes, its newest HLC being held_ahead_ms
  -- ahead of our clock, until held_until_ms (unix ms, our clock); and it
  -- holds ours, by its report, held_by_peer_ahead_ms and
  -- held_by_peer_until_ms (its clock). Cleared by an apply and an ack.
  held_ahead_ms         INTEGER,
  held_until_ms         INTEGER,
  held_by_peer_ahead_ms INTEGER,
  held_by_peer_until_ms INTEGER,
  -- A device gone for good (lsync_forget_peer, schema version 12): unix ms
  -- of the forget. Its ACKs no longer gate pruning, and a session with it
  -- is refused; its watermarks stay, so that every fence stays true.
  forgotten_ms INTEGER,
  -- The highest recv_cursor a full resync (lsync_peer_reset) set back to 0
  -- (schema version 14): what was applied stays applied, so the fence of
  -- our changesets for the peer certifies max(recv_cursor, applied_cursor),
  -- the highest cursor ever, and a resync never makes them stale at a peer
  -- that pruned on our earlier ACK. NULL: no reset yet.
  applied_cursor INTEGER
);

-- Column edits of shared rows that arrived before the row itself (changesets
-- applied out of order). Applied, last writer wins, when the row arrives;
-- dropped if the row's delete arrives instead.
CREATE TABLE IF NOT EXISTS lsync_parked(
  tbl    INTEGER NOT NULL,
  uuid   ANY NOT NULL,
  col    TEXT NOT NULL,
  value  ANY,
  hlc    INTEGER NOT NULL,
  origin TEXT NOT NULL,
  PRIMARY KEY (tbl, uuid, col)
) WITHOUT ROWID;

-- Quarantine: changes from peers that this database refused for a
-- constraint (CHECK, NOT NULL, UNIQUE, an app trigger's RAISE), kept aside
-- so that the rest of their changeset applies (docs/conflicts.md). `change`
-- is the change itself as a one-change changeset, for retries; `data` its
-- values as JSON (FK columns hold their target's global id; blobs as hex). Retried when
-- a later changeset touches the row, its table, or a table it links to, and
-- by lsync_conflict_retry(id); dropped by lsync_conflict_drop(id).
CREATE TABLE IF NOT EXISTS lsync_quarantine(
  id       INTEGER PRIMARY KEY,
  tbl      TEXT NOT NULL,
  uuid     ANY NOT NULL,
  origin   TEXT NOT NULL,
  hlc      INTEGER NOT NULL,
  op       INTEGER NOT NULL,       -- 0 insert, 1 update, 2 delete, 3 merge
  change   BLOB NOT NULL,
  data     TEXT NOT NULL,
  error    TEXT NOT NULL,
  at       INTEGER NOT NULL,       -- unix ms, first refused
  tried_at INTEGER NOT NULL,       -- unix ms, last refused
  tries    INTEGER NOT NULL DEFAULT 1,
  UNIQUE (tbl, uuid, origin, hlc, op)
);

-- The quarantine, readably. (Dropped first: schema version 8 added 'merge'.)
DROP VIEW IF EXISTS lsync_conflicts;
CREATE VIEW lsync_conflicts AS
  SELECT id, tbl, uuid, origin, hlc,
         CASE op WHEN 0 THEN 'insert' WHEN 1 THEN 'update' WHEN 2 THEN 'delete'
                 ELSE 'merge' END AS op,
         data, error, at, tried_at, tries
  FROM lsync_quarantine;

-- Rows inserted at or below their table's high-water mark (an explicit or
-- reused rowid, INSERT OR REPLACE), logged by the INSERT triggers of tables
-- with no id to fill, and at once turned into `lsync_dirty` rows by the
-- trigger below; empty at rest. Those INSERT triggers hold one INSERT and
-- nothing else because SQLite sets up a trigger program's registers and
-- cursors for every inserted row, even when its WHEN clause is false: the
-- work lives in this trigger's program, which runs only when a row is
-- logged. None of them calls a function or can ABORT: either one makes
-- SQLite keep a statement journal for every insert (schema version 11).
CREATE TABLE IF NOT EXISTS lsync_reinserted(tbl INTEGER, rid INTEGER);
CREATE TRIGGER IF NOT EXISTS lsync_reinserted_log AFTER INSERT ON lsync_reinserted
BEGIN
  -- While lsync applies changes (`capture::quietly`) nothing is captured.
  -- A device-owned row of another device is not this device's to replace:
  -- RAISE(ROLLBACK), since RAISE(ABORT) would count as an abort.
  SELECT RAISE(ROLLBACK, 'lsync: this row is owned by another device; only its owner may replace it (the transaction was rolled back)')
  FROM (SELECT hi, origin FROM lsync_clock
        WHERE tbl = NEW.tbl AND col IS NULL AND lo <= NEW.rid
        ORDER BY lo DESC LIMIT 1) AS c
  WHERE c.hi >= NEW.rid
    AND c.origin IS NOT (SELECT value FROM lsync_config WHERE key = 'device_idx')
    AND (SELECT mode FROM lsync_tables WHERE id = NEW.tbl) = 'device_owned'
    AND NOT EXISTS (SELECT 1 FROM lsync_config WHERE key = 'capture_off');
  -- An insert (op 0), whatever was pending for the rowid; its HLC (0) is
  -- the fold's.
  DELETE FROM lsync_dirty WHERE tbl = NEW.tbl AND rid = NEW.rid
    AND NOT EXISTS (SELECT 1 FROM lsync_config WHERE key = 'capture_off');
  INSERT OR IGNORE INTO lsync_dirty(tbl, rid, op, hlc, cols)
    SELECT NEW.tbl, NEW.rid, 0, 0, 0
    WHERE NOT EXISTS (SELECT 1 FROM lsync_config WHERE key = 'capture_off');
  DELETE FROM lsync_reinserted;
END;
