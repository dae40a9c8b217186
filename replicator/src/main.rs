//! `lsync`: the lsync replicator sidecar and its benchmarks.

mod admit;
mod bench;
mod cli;
mod cluster;
mod config;
mod courtesy;
mod db;
mod dbfile;
mod demo;
mod device;
mod forget;
mod held;
mod members;
mod metrics;
mod node;
mod now;
mod progress;
mod secret;
mod session;
mod snapshot;
mod status;
mod store;
mod wake;

use anyhow::Result;
use clap::Parser;
// The session codec lives in the library (src/lib.rs), for the fuzz targets.
use lsync_replicator::protocol;

use cli::{BenchCommand, Cli, Command, DeviceCommand, PeerCommand, SecretCommand};

fn main() {
    few_malloc_arenas();
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// At most two glibc malloc arenas, set before any thread starts.
///
/// glibc gives threads arenas of their own, up to eight per core, and an
/// arena keeps what is freed in it. The session's database work runs on
/// whichever thread `block_in_place` leaves it (`session::inline`), so the
/// buffers of a catch-up (pieces of about 4 MiB, each compressed, then
/// encrypted) were freed into several arenas and kept there: a sender's
/// peak RSS went from about 60 to 70-96 MiB over a 120 MiB catch-up
/// (tests/tests/memory.rs), and with two arenas it is 45 MiB.
fn few_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tunable of the allocator; no thread is
    // running yet that could be allocating.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn run(cli: Cli) -> Result<()> {
    // Every command but `secret new` opens databases with the extension loaded.
    let extension = cli.extension.as_deref();
    match cli.command {
        Command::Run(args) => {
            init_logging();
            let cfg = config::resolve(&args)?;
            db::register(extension.or(cfg.extension.as_deref()))?;
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(node::run(cfg))?;
        }
        Command::Secret(SecretCommand::New) => cli::print(&format!("{}\n", secret::new()?))?,
        Command::Secret(SecretCommand::Rotate(args)) => {
            db::register(extension)?;
            device::rotate(&args)?;
        }
        Command::Secret(SecretCommand::Show(args)) => {
            db::register(extension)?;
            device::show_secret(&args.db)?;
        }
        Command::Device(cmd) => {
            db::register(extension)?;
            match cmd {
                DeviceCommand::List(args) => device::list(&args)?,
                DeviceCommand::Revoke(args) => device::revoke(&args)?,
            }
        }
        Command::Peer(PeerCommand::Forget(args)) => {
            db::register(extension)?;
            forget::run(&args)?;
        }
        Command::Demo(args) => {
            db::register(extension)?;
            demo::run(&args.dir, args.keep)?;
        }
        Command::Status(args) => {
            db::register(extension)?;
            status::run(&args)?;
        }
        Command::Bench(bench) => {
            db::register(extension)?;
            match bench {
                BenchCommand::Capture(args) => bench::capture::run(&args)?,
                BenchCommand::Apply(args) => bench::apply::run(&args)?,
                BenchCommand::Latency(args) => bench::net::latency(&args)?,
                BenchCommand::Propagate(args) => bench::net::propagate(&args)?,
                BenchCommand::InitialSync(args) => bench::initial::run(&args)?,
            }
        }
    }
    Ok(())
}

/// Logs go to stderr; `RUST_LOG` filters them (default `info`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}
