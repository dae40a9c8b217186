-- Track the example library (load the extension first). `devices` stays local.
-- Parents before children, so FK columns resolve to tracked tables.
SELECT lsync_track('locations', 'device_owned');
SELECT lsync_track('entries', 'device_owned');
SELECT lsync_track('tags', 'shared');
SELECT lsync_track('tag_assignments', 'shared');
