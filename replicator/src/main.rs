//! `lsync`: the lsync replicator sidecar and its benchmarks.

// Link order workaround. The extension crate depends (through sqlite-loadable)
// on sqlite3ext-sys, whose archive contains a whole SQLite 3.39 amalgamation.
// The linker must see libsqlite3-sys (bundled 3.54) first, or it pulls in both
// copies and fails on duplicate symbols. rustc lists rlibs in reverse order of
// crate loading, so loading `lsync` before anything mentions `rusqlite` puts
// libsqlite3-sys ahead of sqlite3ext-sys. `db::register` checks the result.
extern crate lsync;

mod bench;
mod cli;
mod cluster;
mod config;
mod courtesy;
mod db;
mod dbfile;
mod demo;
mod node;
mod now;
mod progress;
mod protocol;
mod secret;
mod session;
mod snapshot;
mod status;
mod store;

use anyhow::Result;
use clap::Parser;

use cli::{BenchCommand, Cli, Command, SecretCommand};

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(args) => {
            init_logging();
            let cfg = config::resolve(&args)?;
            db::register(&db::Extension::Static)?;
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(node::run(cfg))?;
        }
        Command::Secret(SecretCommand::New) => cli::print(&format!("{}\n", secret::new()?))?,
        Command::Demo(args) => {
            db::register(&db::Extension::Static)?;
            demo::run(&args.dir, args.keep)?;
        }
        Command::Status(args) => {
            db::register(&db::Extension::Static)?;
            status::run(&args)?;
        }
        Command::Bench(BenchCommand::Capture(args)) => bench::capture::run(&args)?,
        Command::Bench(BenchCommand::Apply(args)) => bench::apply::run(&args)?,
        Command::Bench(BenchCommand::Latency(args)) => bench::net::latency(&args)?,
        Command::Bench(BenchCommand::Propagate(args)) => bench::net::propagate(&args)?,
        Command::Bench(BenchCommand::InitialSync(args)) => bench::initial::run(&args)?,
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
