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

/// The share of rows `lsync bench capture` updates unless told otherwise.
pub const DEFAULT_UPDATE_SHARE: f64 = 0.1;

/// Which of `rows` rows (indexes from 0) a schema updates: `share` of them
/// (at least one), distinct, scattered at random.
fn updated(rng: &mut StdRng, rows: usize, share: f64) -> Vec<usize> {
    let n = ((rows as f64 * share).round() as usize).clamp(1, rows.max(1));
    rand::seq::index::sample(rng, rows.max(1), n).into_vec()
}

/// Generates `rows` entries: a directory-like tree under [`LOCATIONS`] roots
/// (the first rows, with NULL parents), where every other entry is placed
/// under one of the last [`RECENT_DIRS`] directories. Ids are the rowids a
/// fresh table assigns (1..=rows). Also generates the updates of random ids
/// ([`updated`]).
pub fn generate(rows: usize, kind: UuidKind, share: f64) -> Dataset {
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

    let updates = updated(&mut rng, rows, share)
        .into_iter()
        .map(|i| Update {
            id: 1 + i as i64,
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

/// Number of rows in `tag` (`--schema composite`).
pub const TAGS: usize = 1_000;
/// How many tags each object gets: `rows / TAGS_PER_OBJECT` objects.
const TAGS_PER_OBJECT: usize = 10;

/// A row of `tag` or `object`.
pub struct Named {
    pub uuid: String,
    pub name: String,
}

/// A row of `tag_on_object`, or the new `added` of one (an update).
pub struct Pair {
    pub tag_id: i64,
    pub object_id: i64,
    pub added: String,
}

/// `--schema composite`: the targets, then the pairs that join them.
pub struct Pairs {
    pub tags: Vec<Named>,
    pub objects: Vec<Named>,
    pub pairs: Vec<Pair>,
    pub updates: Vec<Pair>,
}

/// An ISO 8601 time, `secs` after 2023-11-14 (spread, not calendar-exact).
fn timestamp(secs: i64) -> String {
    let (days, s) = (secs / 86_400, secs % 86_400);
    format!(
        "2023-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        11 + days / 28 % 2,
        1 + days % 28,
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// Generates `rows` pairs: objects 1, 2, ... in order (ids as a fresh table
/// assigns them), each with [`TAGS_PER_OBJECT`] distinct random tags of
/// [`TAGS`], so the key index takes inserts all over. Then the updates of
/// random pairs' `added` ([`updated`]).
pub fn pairs(rows: usize, kind: UuidKind, share: f64) -> Pairs {
    let mut rng = StdRng::seed_from_u64(0x7a90_b1ec_75ee_d5ed);
    let named = |prefix: &str, n: usize| -> Vec<Named> {
        (1..=n)
            .map(|k| Named {
                uuid: new_uuid(kind),
                name: format!("{prefix}{k}"),
            })
            .collect()
    };
    let tags = named("tag", TAGS);
    let objects = named("object", rows.div_ceil(TAGS_PER_OBJECT));
    let mut pairs: Vec<Pair> = Vec::with_capacity(rows);
    for i in 0..rows {
        let object_id = (i / TAGS_PER_OBJECT) as i64 + 1;
        let first = i - i % TAGS_PER_OBJECT;
        let tag_id = loop {
            let t = rng.random_range(1..=TAGS as i64);
            if !pairs[first..].iter().any(|p| p.tag_id == t) {
                break t;
            }
        };
        pairs.push(Pair {
            tag_id,
            object_id,
            added: timestamp(rng.random_range(0..5_000_000)),
        });
    }
    let updates = updated(&mut rng, rows, share)
        .into_iter()
        .map(|i| {
            let p = &pairs[i];
            Pair {
                tag_id: p.tag_id,
                object_id: p.object_id,
                added: timestamp(5_000_000 + rng.random_range(0..1_000_000)),
            }
        })
        .collect();
    Pairs {
        tags,
        objects,
        pairs,
        updates,
    }
}

/// A row of `track` (`--schema intpk`).
pub struct Track {
    pub name: String,
    pub album_id: i64,
    pub ms: i64,
    pub bytes: i64,
    pub price: f64,
}

/// New `bytes` and `price` of track `id`.
pub struct TrackUpdate {
    pub id: i64,
    pub bytes: i64,
    pub price: f64,
}

/// `--schema intpk`: the rows, whose ids a fresh table assigns (1..=rows).
pub struct Tracks {
    pub tracks: Vec<Track>,
    pub updates: Vec<TrackUpdate>,
}

/// A price in cents, as the REAL an app stores.
fn price(rng: &mut StdRng) -> f64 {
    rng.random_range(49..300i64) as f64 / 100.0
}

/// Generates `rows` tracks, then the updates of random ids ([`updated`]).
pub fn tracks(rows: usize, share: f64) -> Tracks {
    let mut rng = StdRng::seed_from_u64(0x7ac6_5eed_a1b0_0001);
    let tracks = (0..rows)
        .map(|i| Track {
            name: format!("track {i:09} {:05x}", rng.random_range(0..1u32 << 20)),
            album_id: i as i64 / 12 + 1,
            ms: rng.random_range(60_000..600_000),
            bytes: rng.random_range(1_000_000..20_000_000),
            price: price(&mut rng),
        })
        .collect();
    let updates = updated(&mut rng, rows, share)
        .into_iter()
        .map(|i| TrackUpdate {
            id: 1 + i as i64,
            bytes: rng.random_range(1_000_000..20_000_000),
            price: price(&mut rng),
        })
        .collect();
    Tracks { tracks, updates }
}
