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
mod db;

use anyhow::Result;
use clap::Parser;

use cli::{BenchCommand, Cli, Command};

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Bench(BenchCommand::Capture(args)) => bench::capture::run(&args)?,
    }
    Ok(())
}
