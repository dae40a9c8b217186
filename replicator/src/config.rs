//! `lsync run` settings: flags, or the same keys in a TOML file. A flag
//! given on the command line wins over the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::cli::{RunArgs, Strategy, DEFAULT_BATCH};

/// The resolved settings.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub db: PathBuf,
    pub listen: String,
    pub peers: Vec<String>,
    pub secret_file: PathBuf,
    pub join: bool,
    pub batch: u32,
    pub heartbeat_ms: u64,
    pub poll_ms: u64,
    /// Poll every `poll_ms` rather than watch the WAL for commits.
    pub no_watch: bool,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    pub strategy: Strategy,
    pub snapshot_min: u64,
    pub single_max: u64,
    pub bulk_notify: u64,
    pub test: TestHooks,
    /// `extension` in the file; --extension wins over it.
    pub extension: Option<PathBuf>,
    /// Where to serve Prometheus metrics (docs/metrics.md); none without.
    pub metrics: Option<std::net::SocketAddr>,
}

/// Test hooks, set only by hidden flags of `lsync run`: they let the
/// end-to-end tests slow a transfer down or damage it on purpose.
#[derive(Debug, Clone, Default)]
pub struct TestHooks {
    /// Sleep before sending each snapshot chunk (to interrupt a transfer).
    pub chunk_delay: Option<Duration>,
    /// Corrupt the chunk of this index (from 0) the first time it is sent.
    pub corrupt_chunk: Option<u64>,
    /// Hold the write lock this much longer in every apply (a long catch-up).
    pub apply_delay: Option<Duration>,
    /// Claim this cursor as the `to` of every changeset sent (a lying peer).
    pub claim_to: Option<i64>,
    /// Send this many MiB of noise instead of each changeset (a member
    /// that sends the largest message it may).
    pub junk_changes_mib: Option<usize>,
}

/// Capped exponential backoff: for dialing a peer, and for pulling a
/// held peer's changes again.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The delays of one run of retries.
    pub fn delays(self) -> Delays {
        Delays {
            backoff: self,
            next: self.initial,
        }
    }
}

/// The delays of a run of retries: each doubles the last, up to the max.
#[derive(Debug)]
pub struct Delays {
    backoff: Backoff,
    next: Duration,
}

impl Delays {
    /// The delay to wait now.
    pub fn next(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(self.backoff.max);
        d
    }

    /// Starts a new run: the next delay is the first again.
    pub fn reset(&mut self) {
        self.next = self.backoff.initial;
    }

    /// Whether no delay of this run has been taken yet.
    pub fn is_fresh(&self) -> bool {
        self.next == self.backoff.initial
    }

    /// The longest delay.
    pub fn max(&self) -> Duration {
        self.backoff.max
    }
}

impl RunConfig {
    pub fn backoff(&self) -> Backoff {
        Backoff {
            initial: Duration::from_millis(self.backoff_initial_ms),
            max: Duration::from_millis(self.backoff_max_ms),
        }
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }
}

/// The TOML file: the same names as the flags, with `_` for `-`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    db: Option<PathBuf>,
    listen: Option<String>,
    #[serde(default)]
    peer: Vec<String>,
    secret_file: Option<PathBuf>,
    join: Option<bool>,
    batch: Option<u32>,
    heartbeat_ms: Option<u64>,
    poll_ms: Option<u64>,
    no_watch: Option<bool>,
    backoff_initial_ms: Option<u64>,
    backoff_max_ms: Option<u64>,
    strategy: Option<Strategy>,
    snapshot_min: Option<u64>,
    single_max: Option<u64>,
    bulk_notify: Option<u64>,
    extension: Option<PathBuf>,
    metrics: Option<String>,
}

fn load(path: &Path) -> Result<File> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("in the config file {}", path.display()))
}

pub fn resolve(a: &RunArgs) -> Result<RunConfig> {
    let f = match &a.config {
        Some(p) => load(p)?,
        None => File::default(),
    };
    let need = |v: Option<PathBuf>, flag: &str| {
        v.with_context(|| format!("--{flag} is required (on the command line or in --config)"))
    };
    let cfg = RunConfig {
        db: need(a.db.clone().or(f.db), "db")?,
        listen: a
            .listen
            .clone()
            .or(f.listen)
            .context("--listen is required (on the command line or in --config)")?,
        peers: if a.peer.is_empty() {
            f.peer
        } else {
            a.peer.clone()
        },
        secret_file: need(a.secret_file.clone().or(f.secret_file), "secret-file")?,
        join: a.join || f.join.unwrap_or(false),
        batch: a.batch.or(f.batch).unwrap_or(DEFAULT_BATCH),
        heartbeat_ms: a.heartbeat_ms.or(f.heartbeat_ms).unwrap_or(2000),
        poll_ms: a.poll_ms.or(f.poll_ms).unwrap_or(5),
        no_watch: a.no_watch || f.no_watch.unwrap_or(false),
        backoff_initial_ms: a.backoff_initial_ms.or(f.backoff_initial_ms).unwrap_or(200),
        backoff_max_ms: a.backoff_max_ms.or(f.backoff_max_ms).unwrap_or(30_000),
        strategy: a.strategy.or(f.strategy).unwrap_or(Strategy::Auto),
        snapshot_min: a.snapshot_min.or(f.snapshot_min).unwrap_or(100_000),
        single_max: a.single_max.or(f.single_max).unwrap_or(5_000),
        bulk_notify: a.bulk_notify.or(f.bulk_notify).unwrap_or(10_000),
        test: TestHooks {
            chunk_delay: a.test_chunk_delay_ms.map(Duration::from_millis),
            corrupt_chunk: a.test_corrupt_chunk,
            apply_delay: a.test_apply_delay_ms.map(Duration::from_millis),
            claim_to: a.test_claim_to,
            junk_changes_mib: a.test_junk_changes_mib,
        },
        extension: f.extension,
        metrics: match a.metrics.as_deref().or(f.metrics.as_deref()) {
            Some(m) => Some(crate::metrics::parse_addr(m)?),
            None => None,
        },
    };
    if cfg.single_max >= cfg.snapshot_min {
        bail!("single-max must be smaller than snapshot-min");
    }
    if cfg.bulk_notify == 0 {
        bail!("bulk-notify must be positive");
    }
    if cfg.batch == 0 || cfg.heartbeat_ms == 0 || cfg.poll_ms == 0 {
        bail!("batch, heartbeat-ms and poll-ms must be positive");
    }
    if cfg.backoff_initial_ms == 0 || cfg.backoff_max_ms < cfg.backoff_initial_ms {
        bail!("backoff-initial-ms must be positive and at most backoff-max-ms");
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn resolve_with(toml: &str, flags: &[&str]) -> Result<RunConfig> {
        let dir = std::env::temp_dir().join(format!("lsync-cfg-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir)?;
        let file = dir.join("c.toml");
        std::fs::write(&file, toml)?;
        let mut argv = vec![
            "lsync",
            "run",
            "--config",
            file.to_str().unwrap_or_default(),
        ];
        argv.extend_from_slice(flags);
        let cli = crate::cli::Cli::try_parse_from(argv)?;
        let crate::cli::Command::Run(args) = cli.command else {
            bail!("not a run command");
        };
        let out = resolve(&args);
        let _ = std::fs::remove_dir_all(dir);
        out
    }

    const BASE: &str = "db = 'x.db'\nlisten = '127.0.0.1:1'\nsecret_file = 's'\n";

    #[test]
    fn bulk_settings_come_from_the_file_and_flags_win() {
        let c = resolve_with(BASE, &[]).unwrap();
        assert_eq!(c.strategy, Strategy::Auto);
        assert_eq!(
            (c.single_max, c.snapshot_min, c.bulk_notify),
            (5_000, 100_000, 10_000)
        );
        let toml = format!("{BASE}strategy = 'batch'\nsnapshot_min = 500\nsingle_max = 10\n");
        let c = resolve_with(&toml, &[]).unwrap();
        assert_eq!(
            (c.strategy, c.snapshot_min, c.single_max),
            (Strategy::Batch, 500, 10)
        );
        let c = resolve_with(&toml, &["--strategy", "snapshot"]).unwrap();
        assert_eq!(c.strategy, Strategy::Snapshot);
    }

    #[test]
    fn test_hooks_are_hidden_flags() {
        let c = resolve_with(BASE, &[]).unwrap();
        assert_eq!(
            (c.test.chunk_delay, c.test.corrupt_chunk, c.test.apply_delay),
            (None, None, None)
        );
        let flags = [
            "--test-chunk-delay-ms",
            "150",
            "--test-corrupt-chunk",
            "1",
            "--test-apply-delay-ms",
            "40",
        ];
        let c = resolve_with(BASE, &flags).unwrap();
        assert_eq!(c.test.chunk_delay, Some(Duration::from_millis(150)));
        assert_eq!(c.test.corrupt_chunk, Some(1));
        assert_eq!(c.test.apply_delay, Some(Duration::from_millis(40)));
        let mut cmd = <crate::cli::Cli as clap::CommandFactory>::command();
        let help = cmd
            .find_subcommand_mut("run")
            .map(|run| run.render_long_help().to_string())
            .unwrap_or_default();
        assert!(help.contains("--bulk-notify"), "{help}");
        assert!(!help.contains("--test-"), "{help}");
    }

    #[test]
    fn metrics_address_comes_from_the_file_and_the_flag_wins() {
        assert_eq!(resolve_with(BASE, &[]).unwrap().metrics, None);
        let toml = format!("{BASE}metrics = '127.0.0.1:9400'\n");
        let c = resolve_with(&toml, &[]).unwrap();
        assert_eq!(c.metrics, Some("127.0.0.1:9400".parse().unwrap()));
        let c = resolve_with(&toml, &["--metrics", "127.0.0.1:9500"]).unwrap();
        assert_eq!(c.metrics, Some("127.0.0.1:9500".parse().unwrap()));
        let e = resolve_with(BASE, &["--metrics", "nowhere"]).unwrap_err();
        assert!(format!("{e:#}").contains("--metrics nowhere"), "{e:#}");
    }

    #[test]
    fn inconsistent_bulk_settings_are_refused() {
        let e = resolve_with(BASE, &["--single-max", "200000"]).unwrap_err();
        assert!(e.to_string().contains("single-max"), "{e}");
        let e = resolve_with(BASE, &["--bulk-notify", "0"]).unwrap_err();
        assert!(e.to_string().contains("bulk-notify"), "{e}");
        let e = resolve_with(&format!("{BASE}strategy = 'fast'\n"), &[]).unwrap_err();
        assert!(format!("{e:#}").contains("strategy"), "{e:#}");
    }
}
