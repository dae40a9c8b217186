-- The library's members (issue 13, docs/security.md): each device's id, the
-- static X25519 public key that proves it in every session (Noise), and its
-- status. Replicated in sessions (`lsync_members_merge`), merged so that
-- every replica converges whatever the order: the first binding of a device
-- id to a key is permanent, and 'revoked' is terminal.
CREATE TABLE IF NOT EXISTS lsync_members(
  device     TEXT PRIMARY KEY,
  pubkey     BLOB UNIQUE,         -- 32 bytes; NULL: revoked before its key was known here
  status     TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
  added_ms   INTEGER NOT NULL,
  revoked_ms INTEGER
) WITHOUT ROWID;
