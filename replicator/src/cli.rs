//! Command-line interface of the `lsync` binary.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Changes per changeset of a catch-up stream. At 4,096 an applied batch
/// holds the write lock for about 20 ms, and a 1M-entry stream is about a
/// quarter faster than at 1,000 (`lsync bench initial-sync --strategy
/// batch`: each batch pays a fixed cost, and the apply thread waits on the
/// network less often).
pub const DEFAULT_BATCH: u32 = 4096;

/// lsync: leaderless replication for SQLite.
#[derive(Debug, Parser)]
#[command(name = "lsync", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// The lsync extension to load into every connection; `lsync run` also
    /// reads it as `extension` from --config (default: liblsync.so next to
    /// this executable, else ../lib/liblsync.so).
    #[arg(long, global = true, value_name = "PATH")]
    pub extension: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the replicator sidecar until SIGINT or SIGTERM: keep the database
    /// converged with its peers over authenticated, encrypted TCP.
    Run(Box<RunArgs>),
    /// Manage the library secret.
    #[command(subcommand)]
    Secret(SecretCommand),
    /// The library's member devices: list them, revoke one.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Show each peer's watermarks, lag, last contact and last error, plus the
    /// deferred links and the tombstones waiting for ACKs.
    Status(StatusArgs),
    /// This database's replication peers.
    #[command(subcommand)]
    Peer(PeerCommand),
    /// Two devices on loopback: A indexes DIR, B tags entries, both converge.
    Demo(DemoArgs),
    /// Run benchmarks of the extension and the replicator.
    #[command(subcommand)]
    Bench(BenchCommand),
}

/// Options of `lsync demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Directory tree to index into device A (at most 300,000 entries).
    #[arg(default_value = "/usr/share")]
    pub dir: PathBuf,
    /// Keep the demo's databases and logs.
    #[arg(long)]
    pub keep: bool,
}

/// Options of `lsync run`. Every option can also be set in the TOML file
/// given with --config (same names, `_` for `-`; `peer` is a list).
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The app's SQLite database file (tracked tables set up with lsync_track).
    #[arg(long, value_name = "PATH")]
    pub db: Option<PathBuf>,
    /// Address to listen on for peers, e.g. 127.0.0.1:7400.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// A peer to keep a session with (repeatable), e.g. 127.0.0.1:7401.
    #[arg(long, value_name = "ADDR")]
    pub peer: Vec<String>,
    /// File holding the library secret (from `lsync secret new`).
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
    /// TOML file with any of these settings; flags win over it.
    #[arg(long, value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
    /// Join the first peer's library if this database is in another one and
    /// has applied nothing yet (how a fresh device joins a library).
    #[arg(long)]
    pub join: bool,
    /// Changes per changeset when catching up (default 4096).
    #[arg(long, value_name = "N")]
    pub batch: Option<u32>,
    /// Heartbeat interval; a peer silent for 4 intervals is dropped (default 2000).
    #[arg(long, value_name = "MS")]
    pub heartbeat_ms: Option<u64>,
    /// How often to check PRAGMA data_version for local commits when they
    /// are not watched: with --no-watch, or where the WAL cannot be watched
    /// (default 5).
    #[arg(long, value_name = "MS")]
    pub poll_ms: Option<u64>,
    /// Poll for local commits every --poll-ms instead of watching the
    /// database's WAL file for writes (inotify).
    #[arg(long)]
    pub no_watch: bool,
    /// First retry delay after a failed session (default 200); doubles per failure.
    #[arg(long, value_name = "MS")]
    pub backoff_initial_ms: Option<u64>,
    /// Cap on the retry delay (default 30000).
    #[arg(long, value_name = "MS")]
    pub backoff_max_ms: Option<u64>,
    /// How to serve a peer that is behind: `auto` picks by how much it is
    /// missing; `snapshot` and `batch` force one way (default auto).
    #[arg(long, value_enum)]
    pub strategy: Option<Strategy>,
    /// A peer missing at least this many changes gets a snapshot (default 100000).
    #[arg(long, value_name = "N")]
    pub snapshot_min: Option<u64>,
    /// A peer missing at most this many changes gets them in a single
    /// changeset; between the two, a stream of --batch sized ones (default 5000).
    #[arg(long, value_name = "N")]
    pub single_max: Option<u64>,
    /// After a local write of at least this many changes, peers get a
    /// notification and pull at their own pace instead of a push (default 10000).
    #[arg(long, value_name = "N")]
    pub bulk_notify: Option<u64>,
    /// Serve Prometheus metrics on http://ADDR/metrics, e.g. 127.0.0.1:9400
    /// (docs/metrics.md; default: none).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// Test hook: sleep this long before sending each snapshot chunk.
    #[arg(long, hide = true, value_name = "MS")]
    pub test_chunk_delay_ms: Option<u64>,
    /// Test hook: corrupt the snapshot chunk of this index (from 0) the first
    /// time this process sends it.
    #[arg(long, hide = true, value_name = "N")]
    pub test_corrupt_chunk: Option<u64>,
    /// Test hook: hold the write lock this much longer in every apply.
    #[arg(long, hide = true, value_name = "MS")]
    pub test_apply_delay_ms: Option<u64>,
    /// Test hook: claim this cursor as the `to` of every changeset sent.
    #[arg(long, hide = true, value_name = "CURSOR")]
    pub test_claim_to: Option<i64>,
    /// Test hook: send this many MiB of noise instead of each changeset.
    #[arg(long, hide = true, value_name = "MIB")]
    pub test_junk_changes_mib: Option<usize>,
}

/// How a peer that is behind is brought up to date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    Auto,
    Snapshot,
    Batch,
}

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Print a new random library secret (64 hex characters).
    New,
    /// Replace the library secret: record a new one in the database, which
    /// its sidecar sends to every active member in their next session,
    /// and print it. Only the new secret admits new devices; members keep
    /// their sessions (docs/security.md).
    Rotate(SecretRotateArgs),
    /// Print the newest library secret the database knows (what a new
    /// device needs to join).
    Show(DbArg),
}

/// Options of `lsync secret rotate`.
#[derive(Debug, Clone, Args)]
pub struct SecretRotateArgs {
    /// The database file.
    #[arg(long, value_name = "PATH")]
    pub db: PathBuf,
    /// Also write the new secret to this file (the sidecar's --secret-file).
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
}

/// A command's one option: the database.
#[derive(Debug, Clone, Args)]
pub struct DbArg {
    /// The database file.
    #[arg(long, value_name = "PATH")]
    pub db: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// List the library's members: device id, public key, status.
    List(DeviceListArgs),
    /// Revoke a device, for good: every peer that learns of it refuses its
    /// sessions and its changes. Revoke a device that knew the secret, then
    /// `lsync secret rotate`, so that it cannot join again as a new device.
    Revoke(DeviceRevokeArgs),
}

/// Options of `lsync device list`.
#[derive(Debug, Clone, Args)]
pub struct DeviceListArgs {
    /// The database file.
    #[arg(long, value_name = "PATH")]
    pub db: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Options of `lsync device revoke`.
#[derive(Debug, Clone, Args)]
pub struct DeviceRevokeArgs {
    /// The database file.
    #[arg(long, value_name = "PATH")]
    pub db: PathBuf,
    /// The device id (a UUID) to revoke.
    pub id: String,
}

#[derive(Debug, Subcommand)]
pub enum PeerCommand {
    /// Forget a device gone for good: its ACKs no longer hold back the
    /// pruning of tombstones, and sessions with it are refused from then
    /// on (it comes back only as a new device, from a fresh database).
    Forget(PeerForgetArgs),
}

/// Options of `lsync peer forget`.
#[derive(Debug, Clone, Args)]
pub struct PeerForgetArgs {
    /// The database file.
    #[arg(long, value_name = "PATH")]
    pub db: PathBuf,
    /// The peer's device id (a UUID), as `lsync status` lists it.
    pub id: String,
}

/// Options of `lsync status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// The database file.
    #[arg(long, value_name = "PATH")]
    pub db: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Measure the cost of change capture: inserts and updates into untracked,
    /// device-owned and shared tables, plus the sync metadata left behind.
    Capture(CaptureArgs),
    /// Measure applying a changeset of N entries to an empty peer, against a
    /// plain prepared insert of the same rows.
    Apply(ApplyArgs),
    /// Two replicators on loopback: single-row commits on one side, time
    /// until each is visible on the other.
    Latency(LatencyArgs),
    /// Two replicators on loopback: update N rows that are already synced,
    /// time until the peer has all of them, against a plain prepared insert
    /// of N entries in the same run (issue 14's 0.5 s as a ratio to it).
    Propagate(PropagateArgs),
    /// Two replicators on loopback: a fresh peer joins a source holding N
    /// file entries; time until it holds them all, against the floor of
    /// backing up, copying and opening the source file, and against a plain
    /// prepared insert of the same entries (issue 14's 3 s as a ratio to it).
    InitialSync(InitialSyncArgs),
}

/// Options of `lsync bench initial-sync`.
#[derive(Debug, Clone, Args)]
pub struct InitialSyncArgs {
    /// Number of file entries at the source.
    #[arg(long, value_name = "N", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub rows: u64,
    /// The source's --strategy.
    #[arg(long, value_enum, default_value_t = Strategy::Auto)]
    pub strategy: Strategy,
    /// The peer's --batch (changes per changeset in a batched stream).
    #[arg(long, default_value_t = DEFAULT_BATCH, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch: u32,
    /// Also print the results as one JSON object, on the last line of stdout.
    #[arg(long)]
    pub json: bool,
    /// Directory in which the temporary benchmark directory is created
    /// (default: the system temp directory).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Keep the temporary directory, its databases and logs, and print its path.
    #[arg(long)]
    pub keep: bool,
}

/// Options of `lsync bench latency`.
#[derive(Debug, Clone, Args)]
pub struct LatencyArgs {
    /// Number of single-row commits, one after the other.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub commits: u32,
    /// Then measure the CPU both idle replicators spend over this many seconds.
    #[arg(long, value_name = "S", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub idle_secs: u64,
    /// Run the replicators with --no-watch (polling every 5 ms), to compare.
    #[arg(long)]
    pub no_watch: bool,
    /// Also print one JSON object (commits, p50_ms, p99_ms, max_ms,
    /// idle_cpu_ms_per_s) as the last line.
    #[arg(long)]
    pub json: bool,
    /// Keep the temporary directory, its databases and the replicators'
    /// logs, and print its path.
    #[arg(long)]
    pub keep: bool,
}

/// Options of `lsync bench propagate`.
#[derive(Debug, Clone, Args)]
pub struct PropagateArgs {
    /// Number of rows to sync first, then update in one transaction.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub rows: u64,
    /// The replicators' --batch (changes per changeset).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub batch: u32,
    /// Also print one JSON object (rows, seconds) as the last line.
    #[arg(long)]
    pub json: bool,
    /// Keep the temporary directory, its databases and the replicators'
    /// logs, and print its path.
    #[arg(long)]
    pub keep: bool,
}

/// Options of `lsync bench apply`.
#[derive(Debug, Clone, Args)]
pub struct ApplyArgs {
    /// Number of file entries in the changeset.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub rows: u64,
    /// Also print the results as one JSON object, on the last line of stdout.
    #[arg(long)]
    pub json: bool,
    /// UUID version of the rows' global ids.
    #[arg(long, value_enum, default_value_t = UuidKind::V7)]
    pub uuid: UuidKind,
    /// Run plain insert and apply this many times, interleaved; keep the best.
    #[arg(long, value_name = "K", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub repeat: u32,
    /// Directory for the temporary databases (default: the system temp dir).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Keep the temporary databases and print where they are.
    #[arg(long)]
    pub keep: bool,
}

/// Options of `lsync bench capture`.
#[derive(Debug, Clone, Args)]
pub struct CaptureArgs {
    /// Number of rows to insert into the table of --schema, in one
    /// transaction per variant. A share of them (--update-share) is then updated.
    /// At most 10,000,000 (the rows are generated in memory first, about 150
    /// bytes each).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub rows: u64,

    /// Also print the results as one JSON object, on the last line of stdout.
    #[arg(long)]
    pub json: bool,

    /// The table written: `entries` (a uuid column and two FKs), `composite`
    /// (a join table keyed by two FKs) or `intpk` (an INTEGER PRIMARY KEY
    /// and no uuid column). The last two have their global ids kept by lsync.
    #[arg(long, value_enum, default_value_t = SchemaKind::Entries)]
    pub schema: SchemaKind,

    /// UUID version that the client generates for the `uuid` column
    /// (v7 is time-ordered and appends to the UNIQUE index; v4 is random).
    #[arg(long, value_enum, default_value_t = UuidKind::V7)]
    pub uuid: UuidKind,

    /// Run the three variants this many times, interleaved, and keep the best
    /// time of each.
    #[arg(long, value_name = "K", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub repeat: u32,

    /// Value of `PRAGMA foreign_keys` on every connection. The bundled SQLite
    /// defaults to on; the Debian shell and Python default to off.
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    pub foreign_keys: OnOff,

    /// Also call `lsync_flush()` between the insert and the update (untimed),
    /// as if the inserts had been exported: the updates then hit rows that
    /// are already in the change clock.
    #[arg(long)]
    pub flush_before_update: bool,

    /// The share of the rows updated after the insert (0 < S <= 1): that
    /// many distinct rows, scattered at random. With --flush-before-update
    /// and 0.5, the metadata column shows what split clock ranges cost.
    #[arg(long, value_name = "S", default_value_t = 0.1, value_parser = update_share)]
    pub update_share: f64,

    /// Directory in which the temporary benchmark directory is created
    /// (default: the system temp directory).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Keep the temporary directory and its databases, and print its path.
    #[arg(long)]
    pub keep: bool,
}

/// The table `lsync bench capture` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SchemaKind {
    /// File entries with a uuid column, a parent FK and a location FK.
    Entries,
    /// A join table whose PRIMARY KEY is a pair of FKs (tag, object).
    Composite,
    /// A table with an INTEGER PRIMARY KEY only.
    #[value(name = "intpk")]
    IntPk,
}

impl SchemaKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SchemaKind::Entries => "entries",
            SchemaKind::Composite => "composite",
            SchemaKind::IntPk => "intpk",
        }
    }
}

/// Which UUID version the benchmark writes into `uuid` columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UuidKind {
    /// Time-ordered UUIDv7.
    V7,
    /// Random UUIDv4.
    V4,
}

impl UuidKind {
    pub fn as_str(self) -> &'static str {
        match self {
            UuidKind::V7 => "v7",
            UuidKind::V4 => "v4",
        }
    }
}

/// A boolean switch spelled `on` / `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

impl OnOff {
    pub fn is_on(self) -> bool {
        self == OnOff::On
    }
}

/// Writes command output to stdout. When the reader has gone (`lsync status
/// | head`), the output just ends, as with any Unix tool.
pub fn print(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

/// `--update-share`: a share of the rows, above 0 and at most 1.
fn update_share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 1.0 => Ok(v),
        _ => Err(format!("expected a share above 0 and at most 1, got '{s}'")),
    }
}
