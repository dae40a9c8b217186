//! Snapshot files on both ends of a transfer, kept in `<db>-lsync/`.
//!
//! The sender keeps each snapshot it made (with `lsync_snapshot`) and its
//! description under `snapshots/`, so that a transfer can resume after
//! either side restarts. The receiver appends verified chunks to
//! `incoming/<peer>.part`, described by `incoming/<peer>.json`; after a
//! crash it resumes from the last whole chunk. Every chunk carries the
//! xxh3-64 of its bytes and the whole file is checked against its xxh3-128
//! before `lsync_restore` imports it.
//!
//! The sender's snapshots are written without fsync (they can be made
//! again): a snapshot made by an earlier process, which a power loss may
//! have torn, is checked against its checksum before it is offered again.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use crate::now::now_ms;

/// Bytes per chunk: large enough to compress well, small enough that a
/// resumed transfer repeats little.
pub const CHUNK_SIZE: u64 = 4 << 20;
/// zstd level for chunks: level 1 gives ~43 B per file entry at ~200 MB/s.
const LEVEL: i32 = 1;
/// A snapshot this recent is offered again instead of making a new one.
const REUSE: Duration = Duration::from_secs(60);
/// Snapshots older than this are deleted when the next one is made.
const KEEP: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum SnapError {
    #[error("snapshot file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Sql(#[from] rusqlite::Error),
    #[error("snapshot description: {0}")]
    Json(#[from] serde_json::Error),
    #[error("chunk at offset {offset} is corrupt: {why}")]
    Corrupt { offset: u64, why: String },
    #[error("peer id {0:?} is not a uuid")]
    BadPeer(String),
    #[error("the snapshot file does not match its checksum")]
    BadFile,
}

type R<T> = Result<T, SnapError>;

fn io<T>(path: &Path, r: std::io::Result<T>) -> R<T> {
    r.map_err(|source| SnapError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// What a snapshot is; travels in the offer and is stored beside the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub id: String,
    pub size: u64,
    pub chunk_size: u64,
    pub checksum: String,
    pub cursor: i64,
    pub rows: i64,
    pub created_ms: i64,
}

/// `<db>-lsync/<sub>`, created on demand.
pub fn work_dir(db: &Path, sub: &str) -> R<PathBuf> {
    let mut name = db.as_os_str().to_owned();
    name.push("-lsync");
    let dir = PathBuf::from(name).join(sub);
    io(&dir, fs::create_dir_all(&dir))?;
    Ok(dir)
}

/// Snapshot ids are uuids; anything else (a path) is refused.
fn valid_id(id: &str) -> bool {
    uuid::Uuid::parse_str(id).is_ok()
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> R<()> {
    let tmp = path.with_extension("json.tmp");
    let written = io(&tmp, fs::write(&tmp, serde_json::to_vec(v)?))
        .and_then(|()| io(path, fs::rename(&tmp, path)));
    if written.is_err() {
        // A full disk must not keep the torn file.
        let _ = fs::remove_file(&tmp);
    }
    written
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

/// xxh3-128 of a whole file, in hex.
pub fn file_checksum(path: &Path) -> R<String> {
    let f = io(path, File::open(path))?;
    Ok(hex128(&io(path, hash_all(f))?))
}

fn hex128(h: &Xxh3) -> String {
    format!("{:032x}", h.digest128())
}

/// The xxh3 state after every byte `r` yields.
fn hash_all(mut r: impl Read) -> std::io::Result<Xxh3> {
    let mut h = Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(h);
        }
        h.update(&buf[..n]);
    }
}

/// Snapshots this process made or has checked whole.
static TRUSTED: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(Mutex::default);

/// The sender's snapshots.
pub struct Outgoing {
    dir: PathBuf,
}

impl Outgoing {
    pub fn new(db: &Path) -> R<Self> {
        Ok(Self {
            dir: work_dir(db, "snapshots")?,
        })
    }

    fn file(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.db"))
    }

    fn meta_file(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn all(&self) -> Vec<Meta> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<Meta> = entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| read_json(&e.path()))
            .collect();
        out.sort_by_key(|m: &Meta| m.created_ms);
        out
    }

    /// A snapshot by id, if this side still has it intact.
    pub fn find(&self, id: &str) -> Option<Meta> {
        if !valid_id(id) || !self.file(id).exists() {
            return None;
        }
        read_json(&self.meta_file(id)).filter(|m| self.intact(m))
    }

    /// Whether the snapshot's file still matches its checksum: made by this
    /// process, or checked once by it. A torn file is deleted.
    fn intact(&self, m: &Meta) -> bool {
        let trusted = || TRUSTED.lock().unwrap_or_else(|e| e.into_inner());
        if trusted().contains(&m.id) {
            return true;
        }
        // Read the file without holding the lock: other sessions go on.
        if file_checksum(&self.file(&m.id)).is_ok_and(|c| c == m.checksum) {
            trusted().insert(m.id.clone());
            return true;
        }
        let _ = fs::remove_file(self.file(&m.id));
        let _ = fs::remove_file(self.meta_file(&m.id));
        false
    }

    /// A recent snapshot that is ahead of the peer's watermark `since`, or
    /// a new one made with `lsync_snapshot`. Returns the description and
    /// whether it was made now. A snapshot not ahead of `since` would bring
    /// the peer nothing and leave it pulling from the same cursor again.
    pub fn get_or_make(&self, c: &Connection, since: i64) -> R<(Meta, bool)> {
        let now = now_ms();
        if let Some(m) = self
            .all()
            .into_iter()
            .rev()
            .find(|m| now - m.created_ms < REUSE.as_millis() as i64 && m.cursor > since)
        {
            if self.file(&m.id).exists() && self.intact(&m) {
                return Ok((m, false));
            }
        }
        self.prune(now);
        let id = uuid::Uuid::now_v7().to_string();
        let path = self.file(&id);
        let _ = fs::remove_file(&path);
        let made = c.query_row(
            r#"SELECT lsync_snapshot(?1, NULL, '{"sync": false}')"#,
            [path.to_string_lossy()],
            |r| r.get::<_, i64>(0),
        );
        if let Err(e) = made {
            let _ = fs::remove_file(&path);
            return Err(e.into());
        }
        let (cursor, rows) = describe(c, &path)?;
        let meta = Meta {
            size: io(&path, fs::metadata(&path))?.len(),
            chunk_size: CHUNK_SIZE,
            checksum: file_checksum(&path)?,
            id: id.clone(),
            cursor,
            rows,
            created_ms: now,
        };
        write_json(&self.meta_file(&id), &meta)?;
        TRUSTED.lock().unwrap_or_else(|e| e.into_inner()).insert(id);
        Ok((meta, true))
    }

    /// Deletes snapshots older than [`KEEP`].
    fn prune(&self, now: i64) {
        for m in self.all() {
            if now - m.created_ms > KEEP.as_millis() as i64 {
                let _ = fs::remove_file(self.file(&m.id));
                let _ = fs::remove_file(self.meta_file(&m.id));
            }
        }
    }

    /// Reads and compresses the chunk at `offset`. `corrupt` flips a byte of
    /// the compressed data (a test hook for the receiver's checks).
    pub fn chunk(&self, meta: &Meta, offset: u64, corrupt: bool) -> R<Chunk> {
        let path = self.file(&meta.id);
        let mut f = io(&path, File::open(&path))?;
        io(&path, f.seek(SeekFrom::Start(offset)))?;
        let len = meta.chunk_size.min(meta.size.saturating_sub(offset));
        let mut raw = vec![0u8; len as usize];
        io(&path, f.read_exact(&mut raw))?;
        let mut data = io(&path, zstd::bulk::compress(&raw, LEVEL))?;
        if corrupt {
            let mid = data.len() / 2;
            data[mid] ^= 0x5a;
        }
        Ok(Chunk {
            offset,
            len,
            checksum: format!("{:016x}", xxh3_64(&raw)),
            data,
        })
    }
}

/// The snapshot's cursor and row count, as it describes itself.
fn describe(c: &Connection, path: &Path) -> R<(i64, i64)> {
    let info: String = c.query_row(
        "SELECT lsync_snapshot_info(?1)",
        [path.to_string_lossy()],
        |r| r.get(0),
    )?;
    let info: serde_json::Value = serde_json::from_str(&info)?;
    let get = |k: &str| info[k].as_i64().unwrap_or(0);
    Ok((get("cursor"), get("rows")))
}

/// One compressed chunk, ready to send.
pub struct Chunk {
    pub offset: u64,
    pub len: u64,
    pub checksum: String,
    pub data: Vec<u8>,
}

/// A download in progress from one peer.
pub struct Incoming {
    pub meta: Meta,
    part: PathBuf,
    json: PathBuf,
    file: File,
    /// Bytes received and verified so far; the next chunk starts here.
    pub offset: u64,
    /// The whole-file checksum of those bytes, as they were written: the
    /// complete file is checked without reading it again. (Boxed: the
    /// state is over 500 bytes, and a download waits in an enum.)
    hash: Box<Xxh3>,
}

impl Incoming {
    fn paths(db: &Path, peer: &str) -> R<(PathBuf, PathBuf)> {
        if !valid_id(peer) {
            return Err(SnapError::BadPeer(peer.to_owned()));
        }
        let dir = work_dir(db, "incoming")?;
        Ok((
            dir.join(format!("{peer}.part")),
            dir.join(format!("{peer}.json")),
        ))
    }

    /// Starts a new download, replacing any partial one from this peer.
    pub fn begin(db: &Path, peer: &str, meta: Meta) -> R<Self> {
        let (part, json) = Self::paths(db, peer)?;
        let file = io(
            &part,
            OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&part),
        )?;
        if let Err(e) = write_json(&json, &meta) {
            let _ = fs::remove_file(&part);
            return Err(e);
        }
        Ok(Self {
            meta,
            part,
            json,
            file,
            offset: 0,
            hash: Box::new(Xxh3::new()),
        })
    }

    /// The partial download from this peer, cut back to its last whole chunk.
    pub fn resume(db: &Path, peer: &str) -> R<Option<Self>> {
        let (part, json) = Self::paths(db, peer)?;
        let Some(meta) = read_json::<Meta>(&json) else {
            let _ = fs::remove_file(&part);
            return Ok(None);
        };
        let Ok(file) = OpenOptions::new().read(true).write(true).open(&part) else {
            let _ = fs::remove_file(&json);
            return Ok(None);
        };
        let len = io(&part, file.metadata())?.len().min(meta.size);
        let offset = if len == meta.size {
            len
        } else {
            len - len % meta.chunk_size.max(1)
        };
        io(&part, file.set_len(offset))?;
        // What an earlier process wrote is hashed as it is on disk now.
        let hash = Box::new(io(&part, hash_all(&file))?);
        Ok(Some(Self {
            meta,
            part,
            json,
            file,
            offset,
            hash,
        }))
    }

    /// Verifies and appends one chunk. A chunk for another offset (sent
    /// before we asked again) is ignored: returns false.
    pub fn write(&mut self, offset: u64, len: u64, checksum: &str, data: &[u8]) -> R<bool> {
        if offset != self.offset {
            return Ok(false);
        }
        let corrupt = |why: String| SnapError::Corrupt { offset, why };
        if len > self.meta.chunk_size || offset + len > self.meta.size {
            return Err(corrupt(format!("length {len} is out of bounds")));
        }
        let raw = zstd::bulk::decompress(data, len as usize)
            .map_err(|e| corrupt(format!("zstd: {e}")))?;
        if raw.len() as u64 != len {
            return Err(corrupt(format!("{} bytes, expected {len}", raw.len())));
        }
        if format!("{:016x}", xxh3_64(&raw)) != checksum {
            return Err(corrupt("checksum mismatch".into()));
        }
        let written = io(&self.part, self.file.seek(SeekFrom::Start(offset)))
            .and_then(|_| io(&self.part, self.file.write_all(&raw)));
        if let Err(e) = written {
            self.abandon();
            return Err(e);
        }
        self.offset += len;
        self.hash.update(&raw);
        Ok(true)
    }

    /// After a failed write (a full disk, most often): the download is
    /// given up and its space freed at once. The file is emptied before it
    /// is removed, since removing a file that is still open frees nothing.
    fn abandon(&mut self) {
        let _ = self.file.set_len(0);
        let _ = fs::remove_file(&self.part);
        let _ = fs::remove_file(&self.json);
        self.offset = 0;
    }

    pub fn complete(&self) -> bool {
        self.offset >= self.meta.size
    }

    /// The finished file, after checking it whole.
    pub fn verified(&mut self) -> R<&Path> {
        io(&self.part, self.file.flush())?;
        if !self.complete() || hex128(&self.hash) != self.meta.checksum {
            return Err(SnapError::BadFile);
        }
        Ok(&self.part)
    }

    /// Removes the download's files.
    pub fn discard(self) {
        let _ = fs::remove_file(&self.part);
        let _ = fs::remove_file(&self.json);
    }
}

/// A downloaded snapshot that `lsync_restore` refused. The download is
/// discarded and the peer's changes come as changesets instead; the record,
/// `<db>-lsync/failed/<peer>.json`, is what `lsync status` shows until a
/// later snapshot from that peer is imported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestoreFailure {
    pub peer: String,
    pub snapshot: String,
    pub cursor: i64,
    pub error: String,
    pub at_ms: i64,
}

impl RestoreFailure {
    fn path(db: &Path, peer: &str) -> R<PathBuf> {
        if !valid_id(peer) {
            return Err(SnapError::BadPeer(peer.to_owned()));
        }
        Ok(work_dir(db, "failed")?.join(format!("{peer}.json")))
    }

    pub fn record(&self, db: &Path) -> R<()> {
        write_json(&Self::path(db, &self.peer)?, self)
    }

    pub fn clear(db: &Path, peer: &str) {
        if let Ok(p) = Self::path(db, peer) {
            let _ = fs::remove_file(p);
        }
    }

    /// Every recorded failure, oldest first; creates nothing.
    pub fn all(db: &Path) -> Vec<RestoreFailure> {
        let mut dir = db.as_os_str().to_owned();
        dir.push("-lsync/failed");
        let Ok(entries) = fs::read_dir(PathBuf::from(dir)) else {
            return Vec::new();
        };
        let mut out: Vec<RestoreFailure> = entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| read_json(&e.path()))
            .collect();
        out.sort_by_key(|f| f.at_ms);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: &str = "01a20142-c196-70dc-8b46-cc82023ee619";

    fn meta(size: u64) -> Meta {
        Meta {
            id: uuid::Uuid::now_v7().to_string(),
            size,
            chunk_size: 8,
            checksum: String::new(),
            cursor: 1,
            rows: 1,
            created_ms: 0,
        }
    }

    fn chunk_of(data: &[u8]) -> (String, Vec<u8>) {
        (
            format!("{:016x}", xxh3_64(data)),
            zstd::bulk::compress(data, 1).unwrap(),
        )
    }

    #[test]
    fn chunks_are_verified_and_a_download_resumes_at_a_whole_chunk() {
        let dir = std::env::temp_dir().join(format!("lsync-snap-{}", uuid::Uuid::now_v7()));
        fs::create_dir_all(&dir).unwrap();
        let db = dir.join("x.db");
        let content: Vec<u8> = (0..20u8).collect();
        let mut m = meta(20);
        let whole = dir.join("whole");
        fs::write(&whole, &content).unwrap();
        m.checksum = file_checksum(&whole).unwrap();

        let mut inc = Incoming::begin(&db, PEER, m.clone()).unwrap();
        let (sum, data) = chunk_of(&content[..8]);
        // A corrupted payload and a wrong checksum are both refused.
        let mut bad = data.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(
            inc.write(0, 8, &sum, &bad),
            Err(SnapError::Corrupt { offset: 0, .. })
        ));
        assert!(matches!(
            inc.write(0, 8, "0000000000000000", &data),
            Err(SnapError::Corrupt { .. })
        ));
        assert_eq!(inc.offset, 0);
        assert!(inc.write(0, 8, &sum, &data).unwrap());
        // A chunk for another offset is ignored.
        assert!(!inc.write(16, 4, &sum, &data).unwrap());
        // A torn write after the first chunk: resume cuts back to 8.
        inc.file.write_all(&[1, 2, 3]).unwrap();
        drop(inc);
        let mut inc = Incoming::resume(&db, PEER).unwrap().unwrap();
        assert_eq!(inc.offset, 8);
        for off in [8u64, 16] {
            let end = (off + 8).min(20) as usize;
            let (sum, data) = chunk_of(&content[off as usize..end]);
            assert!(inc
                .write(off, (end - off as usize) as u64, &sum, &data)
                .unwrap());
        }
        assert!(inc.complete());
        assert_eq!(fs::read(inc.verified().unwrap()).unwrap(), content);
        inc.discard();
        assert!(Incoming::resume(&db, PEER).unwrap().is_none());
        let _ = fs::remove_dir_all(dir);
    }

    /// A small tmpfs at a fresh directory, unmounted on drop; `None` where
    /// mounting is not allowed (not root).
    struct SmallDisk(PathBuf);

    impl SmallDisk {
        fn mount(kib: u64) -> Option<SmallDisk> {
            let dir = std::env::temp_dir().join(format!("lsync-disk-{}", uuid::Uuid::now_v7()));
            fs::create_dir_all(&dir).ok()?;
            let ok = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
                .arg(&dir)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = fs::remove_dir(&dir);
                return None;
            }
            Some(SmallDisk(dir))
        }
    }

    impl Drop for SmallDisk {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
            let _ = fs::remove_dir(&self.0);
        }
    }

    /// Free bytes on the filesystem holding `dir`.
    fn free_bytes(dir: &Path) -> u64 {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
        // SAFETY: statvfs is plain data, for which all zeroes is valid.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: a NUL-terminated path and a statvfs the call fills.
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
        st.f_bavail as u64 * st.f_frsize as u64
    }

    /// A chunk that does not fit on the disk: the partial download is
    /// removed and its space is free again, so the app can still write.
    #[test]
    fn a_download_that_fills_the_disk_is_removed() {
        let Some(disk) = SmallDisk::mount(512) else {
            eprintln!("skipped: cannot mount a tmpfs here (not root)");
            return;
        };
        let db = disk.0.join("x.db");
        let free = free_bytes(&disk.0);
        let mut m = meta(4 << 20);
        m.chunk_size = 256 << 10;
        let mut inc = Incoming::begin(&db, PEER, m).unwrap();
        let (part, json) = (inc.part.clone(), inc.json.clone());
        let mut failed = None;
        for k in 0..16u64 {
            let raw: Vec<u8> = (0..256u32 << 10)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ k as u8)
                .collect();
            let (sum, data) = chunk_of(&raw);
            if let Err(e) = inc.write(k * (256 << 10), 256 << 10, &sum, &data) {
                failed = Some(e);
                break;
            }
        }
        let e = failed.expect("the disk filled up");
        assert!(matches!(e, SnapError::Io { .. }), "{e}");
        assert!(e.to_string().contains("No space left"), "{e}");
        assert!(
            !part.exists() && !json.exists(),
            "the partial download is removed"
        );
        // Freed while the download is still open, not only when it closes.
        assert!(
            free_bytes(&disk.0) + (16 << 10) >= free,
            "its space is free again"
        );
        drop(inc);
        fs::write(disk.0.join("app-write"), vec![1u8; 256 << 10]).expect("the app can write");
    }

    #[test]
    fn a_file_that_does_not_match_its_checksum_is_refused() {
        let dir = std::env::temp_dir().join(format!("lsync-snap-{}", uuid::Uuid::now_v7()));
        fs::create_dir_all(&dir).unwrap();
        let db = dir.join("x.db");
        let mut m = meta(4);
        m.checksum = "0".repeat(32);
        let mut inc = Incoming::begin(&db, PEER, m).unwrap();
        let (sum, data) = chunk_of(&[9, 9, 9, 9]);
        assert!(inc.write(0, 4, &sum, &data).unwrap());
        assert!(matches!(inc.verified(), Err(SnapError::BadFile)));
        let _ = fs::remove_dir_all(dir);
    }

    /// A snapshot left by an earlier process is offered again only if its
    /// file still matches its checksum; a torn one is deleted.
    #[test]
    fn a_snapshot_from_an_earlier_process_is_checked_before_reuse() {
        let dir = std::env::temp_dir().join(format!("lsync-snap-{}", uuid::Uuid::now_v7()));
        let out = Outgoing::new(&dir.join("x.db")).unwrap();
        let leave = |bytes: &[u8], torn: bool| {
            let mut m = meta(bytes.len() as u64);
            fs::write(out.file(&m.id), bytes).unwrap();
            m.checksum = file_checksum(&out.file(&m.id)).unwrap();
            write_json(&out.meta_file(&m.id), &m).unwrap();
            if torn {
                fs::write(out.file(&m.id), [0u8; 4]).unwrap();
            }
            m.id
        };
        let good = leave(&[1, 2, 3, 4], false);
        let torn = leave(&[5, 6, 7, 8], true);
        assert_eq!(out.find(&good).map(|m| m.id), Some(good.clone()));
        assert!(out.find(&torn).is_none());
        assert!(!out.file(&torn).exists() && !out.meta_file(&torn).exists());
        // Once checked, this process trusts it.
        fs::write(out.file(&good), [0u8; 4]).unwrap();
        assert!(out.find(&good).is_some());
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn ids_that_are_not_uuids_are_never_looked_up() {
        let dir = std::env::temp_dir().join(format!("lsync-snap-{}", uuid::Uuid::now_v7()));
        let out = Outgoing::new(&dir.join("x.db")).unwrap();
        assert!(out.find("../../etc/passwd").is_none());
        assert!(out.find(&uuid::Uuid::now_v7().to_string()).is_none());
        let _ = fs::remove_dir_all(dir);
    }
}
