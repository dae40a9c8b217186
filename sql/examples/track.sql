-- Track the example library (load the extension first). `devices` stays
-- local, and so does locations.device_id, which points at it: a local id of
-- an untracked table means nothing on another device.
-- Parents before children, so FK columns resolve to tracked tables.
SELECT lsync_track('locations', 'device_owned', '{"local_columns": ["device_id"]}');
SELECT lsync_track('entries', 'device_owned');
SELECT lsync_track('tags', 'shared');
SELECT lsync_track('tag_assignments', 'shared');
