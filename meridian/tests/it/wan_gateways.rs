//! Only the gateways face the WAN (`federation.transport = "gateway"`): three DCs on their own
//! loopback addresses, each DC's peers named by their gateways' addresses alone, and an iptables
//! fence that lets a packet from one DC's address to another's through only when it goes to or
//! comes from a gateway port, and drops and counts everything else. Federation, DNS answers for
//! other DCs, cross-DC TLS, and failover when a DC is lost must all work as in the direct mode,
//! and the fence must count no packet.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};

use crate::failover::{Wan, World, fails_back, host};
use crate::harness::{Ports, eventually};

/// The iptables fence: a chain of its own (named after this process), jumped to from INPUT.
struct GatewaysOnly {
    chain: String,
}

/// The chains' name prefix; the process id follows.
const PREFIX: &str = "MWANGW";

fn iptables(args: &[&str]) -> Result<String> {
    let out = Command::new("iptables")
        .args(args)
        .output()
        .context("running iptables (this test needs root and iptables)")?;
    ensure!(
        out.status.success(),
        "iptables {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl GatewaysOnly {
    /// Fences the DCs at `host(i)` whose ports are `ports[i]`.
    fn new(ports: &[Ports]) -> Result<GatewaysOnly> {
        remove_stale_chains();
        let chain = format!("{PREFIX}{}", std::process::id());
        let fence = GatewaysOnly { chain };
        let c = fence.chain.as_str();
        iptables(&["-N", c])?;
        for (a, pa) in ports.iter().enumerate() {
            for (b, pb) in ports.iter().enumerate() {
                if a == b {
                    continue;
                }
                let (src, dst) = (host(a), host(b));
                let (to_gw, from_gw) = (pb.gateway.to_string(), pa.gateway.to_string());
                for proto in ["tcp", "udp"] {
                    for (dir, port) in [("--dport", &to_gw), ("--sport", &from_gw)] {
                        iptables(&[
                            "-A", c, "-s", &src, "-d", &dst, "-p", proto, dir, port, "-j", "RETURN",
                        ])?;
                    }
                }
                // The kernel's own errors about gateway traffic (port unreachable, after a
                // gateway died) are not traffic.
                iptables(&[
                    "-A", c, "-s", &src, "-d", &dst, "-p", "icmp", "-j", "RETURN",
                ])?;
                iptables(&["-A", c, "-s", &src, "-d", &dst, "-j", "DROP"])?;
            }
        }
        iptables(&["-I", "INPUT", "-j", c])?;
        Ok(fence)
    }

    /// Fails if the fence dropped any packet: one between two DCs that did not go to or come
    /// from a gateway. The listing says which pair.
    fn check(&self) -> Result<()> {
        let listing = iptables(&["-L", &self.chain, "-v", "-n", "-x"])?;
        let dropped: u64 = listing
            .lines()
            .filter(|l| l.split_whitespace().nth(2) == Some("DROP"))
            .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        ensure!(
            dropped == 0,
            "{dropped} packets between DCs went elsewhere than a gateway:\n{listing}"
        );
        Ok(())
    }
}

impl Drop for GatewaysOnly {
    fn drop(&mut self) {
        remove_chain(&self.chain);
    }
}

fn remove_chain(chain: &str) {
    let _ = iptables(&["-D", "INPUT", "-j", chain]);
    let _ = iptables(&["-F", chain]);
    let _ = iptables(&["-X", chain]);
}

/// Chains left by runs that were killed (their process is gone): they would fence addresses
/// this run uses.
fn remove_stale_chains() {
    let Ok(rules) = iptables(&["-S"]) else {
        return;
    };
    for line in rules.lines() {
        let Some(chain) = line.strip_prefix("-N ") else {
            continue;
        };
        let Some(pid) = chain.strip_prefix(PREFIX) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            remove_chain(chain);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_only_the_gateways_reachable_dcs_federate_route_and_fail_over() -> Result<()> {
    let mut fence = None;
    // `World::start_on` waits until every DC sees the others' `web` and gateways, and dc3
    // answers `web` with dc1 over DNS and through its gateway (TLS checked end to end).
    let mut w = World::start_on(false, Wan::Gateways, |ports| {
        fence = Some(GatewaysOnly::new(ports)?);
        Ok(())
    })
    .await?;
    let fence = fence.context("the fence was set")?;
    fence.check()?;
    // A registration made now replicates through the gateways too.
    let r = w.dcs[1]
        .put_json(
            "/v1/agent/service/register",
            &serde_json::json!({"ID": "api-1", "Name": "api", "Port": 9000, "Address": "127.0.0.1"}),
        )
        .await?;
    ensure!(r.status().is_success(), "register api in dc2");
    for at in [0, 2] {
        let a = &w.dcs[at];
        eventually(15, "dc2's api replicated", || async move {
            a.get_json("/v1/catalog/service/api?dc=dc2")
                .await
                .is_ok_and(|v| v.as_array().is_some_and(|l| l.len() == 1))
        })
        .await?;
    }
    // The streams did go through the gateways: dc1's gateway handed federation streams of the
    // other DCs to its server (counted when they end; these are open, so count the tunnel).
    let tunnelled = w.dcs[0]
        .metric("meridian_gateway_tunnel_streams_in_total")
        .await?;
    ensure!(tunnelled >= 2.0, "dc1's gateway took {tunnelled} streams");

    // Losing dc1: dc3's answers and routes move to dc2, as in the direct mode.
    let lost = Instant::now();
    w.dcs[0].kill9()?;
    w.moves_to(2, 1, Duration::from_secs(15)).await?;
    println!(
        "gateways only: dc1 lost, dc3 answers and routes to dc2 {:?} after the kill",
        lost.elapsed()
    );
    eventually(10, "dc1 found down by dc3", || async {
        w.status_of(2, "dc1").await.is_ok_and(|s| s == "down")
    })
    .await?;
    // And back: dc1's return is seen through the gateways (its federation streams resume).
    w.dcs[0].restart()?;
    let back = fails_back(&w, Instant::now()).await?;
    println!("gateways only: dc1 restarted, dc3 answers with it again {back:?} later");
    fence.check()?;
    Ok(())
}
