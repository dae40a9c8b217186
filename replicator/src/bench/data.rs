//! Pre-generated benchmark data, so that only SQLite work is timed.

use std::collections::VecDeque;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use uuid::Uuid;

use crate::cli::UuidKind;

/// Number of rows in `locations`.
pub const LOCATIONS: usize = 4;
/// How many of the most recent directories new entries are placed under.
const RECENT_DIRS: usize = 100;
/// One entry in this many is a directory.
const DIR_EVERY: u64 = 10;
const KIND_FILE: i64 = 0;
const KIND_DIR: i64 = 1;

pub struct Location {
    pub uuid: String,
    pub path: String,
}

pub struct Entry {
    pub uuid: String,
    pub parent_id: Option<i64>,
    pub location_id: i64,
    pub name: String,
    pub size: i64,
    pub kind: i64,
    pub mtime: i64,
}

pub struct Update {
    pub id: i64,
    pub size: i64,
    pub mtime: i64,
}

/// The same data is written to every variant, in every round.
pub struct Dataset {
    pub locations: Vec<Location>,
    pub entries: Vec<Entry>,
    pub updates: Vec<Update>,
}

fn new_uuid(kind: UuidKind) -> String {
    let u = match kind {
        UuidKind::V7 => Uuid::now_v7(),
        UuidKind::V4 => Uuid::new_v4(),
    };
    u.hyphenated().to_string()
}

/// Generates `rows` entries: a directory-like tree under [`LOCATIONS`] roots
/// (the first rows, with NULL parents), where every other entry is placed
/// under one of the last [`RECENT_DIRS`] directories. Ids are the rowids a
/// fresh table assigns (1..=rows). Also generates `rows / 10` (at least 1)
/// updates of random ids.
pub fn generate(rows: usize, kind: UuidKind) -> Dataset {
    // Seeded: every run generates the same tree.
    let mut rng = StdRng::seed_from_u64(0x1bad_5eed_0ddb_a110);
    let locations = (1..=LOCATIONS)
        .map(|k| Location {
            uuid: new_uuid(kind),
            path: format!("/Volumes/disk{k}"),
        })
        .collect();

    let mut entries = Vec::with_capacity(rows);
    let mut location_of: Vec<u8> = Vec::with_capacity(rows);
    let mut recent_dirs: VecDeque<i64> = VecDeque::with_capacity(RECENT_DIRS + 1);
    let base_mtime: i64 = 1_700_000_000;
    for i in 0..rows {
        let id = i as i64 + 1;
        let (parent_id, location) = if i < LOCATIONS || recent_dirs.is_empty() {
            (None, (i % LOCATIONS) as u8 + 1)
        } else {
            let pick = rng.random_range(0..recent_dirs.len());
            let parent = recent_dirs[pick];
            (Some(parent), location_of[(parent - 1) as usize])
        };
        let is_dir = parent_id.is_none() || rng.random_range(0..DIR_EVERY) == 0;
        let suffix = rng.random_range(0..1u32 << 20);
        let (kind_value, name, size) = if is_dir {
            (KIND_DIR, format!("d{i:09}-{suffix:05x}.dir"), 4096)
        } else {
            (
                KIND_FILE,
                format!("f{i:09}-{suffix:05x}.dat"),
                rng.random_range(0..1i64 << 32),
            )
        };
        if is_dir {
            recent_dirs.push_back(id);
            if recent_dirs.len() > RECENT_DIRS {
                recent_dirs.pop_front();
            }
        }
        location_of.push(location);
        entries.push(Entry {
            uuid: new_uuid(kind),
            parent_id,
            location_id: i64::from(location),
            name,
            size,
            kind: kind_value,
            mtime: base_mtime + rng.random_range(0..100_000_000i64),
        });
    }

    let n_updates = (rows / 10).max(1);
    let updates = (0..n_updates)
        .map(|_| Update {
            id: 1 + rng.random_range(0..rows as i64),
            size: rng.random_range(0..1i64 << 32),
            mtime: base_mtime + 100_000_000 + rng.random_range(0..1_000_000i64),
        })
        .collect();

    Dataset {
        locations,
        entries,
        updates,
    }
}
