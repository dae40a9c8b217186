//! Command-line interface of the `lsync` binary.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// lsync: leaderless replication for SQLite.
#[derive(Debug, Parser)]
#[command(name = "lsync", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run benchmarks of the extension and the replicator.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Measure the cost of change capture: inserts and updates into untracked,
    /// device-owned and shared tables, plus the sync metadata left behind.
    Capture(CaptureArgs),
}

/// Options of `lsync bench capture`.
#[derive(Debug, Clone, Args)]
pub struct CaptureArgs {
    /// Number of rows to insert into `entries`, in one transaction per variant.
    /// N/10 of them (at least 1) are then updated.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub rows: u64,

    /// Also print the results as one JSON object, on the last line of stdout.
    #[arg(long)]
    pub json: bool,

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

    /// Directory in which the temporary benchmark directory is created
    /// (default: the system temp directory).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Keep the temporary directory and its databases, and print its path.
    #[arg(long)]
    pub keep: bool,

    /// Load the extension from this shared library (e.g.
    /// target/release/liblsync.so) instead of the copy linked into this binary.
    #[arg(long, value_name = "PATH")]
    pub extension: Option<PathBuf>,
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
