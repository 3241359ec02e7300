//! `meridian-chaos`: runs chaos scenarios against real `meridian` processes and prints what
//! each saw. `--scenario NAME` (repeatable; default: all), `--seed N` to replay a schedule,
//! `--soak` for longer faults and more clients, `--bin PATH` for another binary,
//! `--gateways-only` for the topology where only the gateways face the WAN.

// Tests, benchmarks and the command line measure and show real time: the clock rule (clippy.toml)
// is for the libraries.
#![allow(clippy::disallowed_methods)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use meridian_chaos_tests::{Options, Scenario, scenario};

/// Chaos scenarios against real meridian processes.
#[derive(Parser, Debug)]
#[command(name = "meridian-chaos")]
struct Args {
    /// Scenario to run (repeatable): dc-loss, partition, one-way-partition, leader-kill,
    /// frozen-leader, gateway-kill, slow-wan, flapping-link, restart-in-partition, dc-restart.
    #[arg(long = "scenario")]
    scenarios: Vec<String>,
    /// Seed of the fault schedule (printed by every run; random if not given).
    #[arg(long)]
    seed: Option<u64>,
    /// Longer faults (a flapping link for a minute) and more clients.
    #[arg(long)]
    soak: bool,
    /// Runs of each scenario (new seeds after the first unless --seed is given).
    #[arg(long, default_value_t = 1)]
    repeat: u32,
    /// The meridian binary (default: the one beside this program).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// How WAN links are cut: proxy (user space) or iptables (root); default: iptables when
    /// it works here, else the proxy.
    #[arg(long, value_parser = ["proxy", "iptables"])]
    cuts: Option<String>,
    /// Only the gateways face the WAN: federation through the gateways, and no link for the
    /// servers' WAN ports.
    #[arg(long)]
    gateways_only: bool,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut scenarios = Vec::new();
    for name in &args.scenarios {
        match Scenario::from_name(name) {
            Some(s) => scenarios.push(s),
            None => {
                eprintln!("unknown scenario {name:?}");
                return ExitCode::FAILURE;
            }
        }
    }
    if scenarios.is_empty() {
        scenarios = Scenario::ALL.to_vec();
    }
    let opts = Options {
        seed: args.seed,
        soak: args.soak,
        bin: args.bin,
        env: Vec::new(),
        cuts: match args.cuts.as_deref() {
            Some("proxy") => Some("proxy"),
            Some("iptables") => Some("iptables"),
            _ => None,
        },
        gateways_only: args.gateways_only,
    };
    let mut all = Vec::new();
    for _ in 0..args.repeat.max(1) {
        all.extend(scenarios.iter().copied());
    }
    match scenario::run_all(&all, &opts).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meridian-chaos: {e:#}");
            ExitCode::FAILURE
        }
    }
}
