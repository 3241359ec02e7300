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
    without_huge_pages();
    let cli = meridian::cli::Cli::parse();
    match meridian::cli::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Turns transparent huge pages off for this process. mimalloc asks for them (`madvise`) on its
/// arenas; a purge of a freed range then drops a whole huge page and the next allocation there
/// faults in a new one, which the kernel zeroes whole (2 MiB): under a stream of writes that was
/// 5-7 % of a catalog node's CPU, and 16-18 MiB more resident memory per process, idle or busy.
/// Called before any work; a kernel that refuses leaves huge pages on, which is only slower.
fn without_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        eprintln!(
            "warning: cannot turn transparent huge pages off ({e}); memory use will be higher"
        );
    }
}
