//! `lsync`: the lsync replicator sidecar and its benchmarks.

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
