//! The `meridian` binary: parses the command line and runs it (see the `meridian` library).

// Tests, benchmarks and the command line measure and show real time: the clock rule (clippy.toml)
// is for the libraries.
#![allow(clippy::disallowed_methods)]

use std::process::ExitCode;

use clap::Parser as _;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = meridian::cli::Cli::parse();
    match meridian::cli::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
