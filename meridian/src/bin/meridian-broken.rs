//! `meridian-broken`: the `meridian` command line built with the `chaos-broken` feature, whose
//! deliberate faults (`MERIDIAN_CHAOS_BREAK`) the chaos tests use to test their checkers.

// Tests, benchmarks and the command line measure and show real time: the clock rule (clippy.toml)
// is for the libraries.
#![allow(clippy::disallowed_methods)]

use std::process::ExitCode;

use clap::Parser as _;

#[tokio::main]
async fn main() -> ExitCode {
    match meridian::cli::run(meridian::cli::Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
