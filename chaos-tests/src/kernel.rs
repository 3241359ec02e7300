//! Kernel-level faults, used when the machine allows them: WAN cuts as iptables rules on the
//! address plan of [`crate::addr`] (root and iptables needed), and the probe that tells whether
//! `tc netem` exists (this machine's kernel has no `sch_netem`, so shaping stays in the proxy).
//!
//! Rules live in a chain of their own, named after this process, so that they never touch the
//! rules of other tests and a run killed midway leaves nothing that a later run cannot remove.

use std::process::{Command, Stdio};
use std::sync::Mutex;

use anyhow::{Context as _, Result, ensure};

use crate::addr::{LINK_NET, NODE_NET};

/// Which mechanism cuts WAN links: `wanted` (`proxy` or `iptables`), else
/// `MERIDIAN_CHAOS_NET`, else iptables when it works here and the proxy when not.
pub fn choose(wanted: Option<&str>) -> Result<Option<Iptables>> {
    let env = std::env::var("MERIDIAN_CHAOS_NET").ok();
    match wanted.or(env.as_deref()) {
        Some("proxy") => Ok(None),
        Some("iptables") => Iptables::new().map(Some),
        Some(other) if !other.is_empty() => {
            anyhow::bail!("cut mechanism {other:?}: expected proxy or iptables")
        }
        _ => Ok(Iptables::new().ok()),
    }
}

/// Whether `tc qdisc ... netem` works on this kernel (tried in a throwaway network namespace,
/// so the host's loopback is never touched).
pub fn netem_available() -> bool {
    let ns = format!("mchaos-probe-{}", std::process::id());
    let ok = |cmd: &mut Command| {
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ok(Command::new("ip").args(["netns", "add", &ns])) {
        return false;
    }
    let found = ok(Command::new("ip").args([
        "netns", "exec", &ns, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms",
    ]));
    let _ = ok(Command::new("ip").args(["netns", "del", &ns]));
    found
}

/// A chain of DROP/REJECT rules between DCs, removed when dropped.
#[derive(Debug)]
pub struct Iptables {
    chain: String,
    /// Rules in force (arguments after `-A chain`), so a heal removes exactly them.
    rules: Mutex<Vec<(usize, usize, Vec<String>)>>,
}

fn iptables(args: &[&str]) -> Result<()> {
    let out = Command::new("iptables")
        .args(args)
        .output()
        .context("running iptables")?;
    ensure!(
        out.status.success(),
        "iptables {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

impl Iptables {
    /// A fresh chain jumped to from INPUT; fails without root or iptables.
    pub fn new() -> Result<Iptables> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        remove_stale_chains();
        // One chain per instance: the previous run's chain may still be going away.
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let chain = format!("MCHAOS-{}-{n}", std::process::id());
        iptables(&["-N", &chain])?;
        if let Err(e) = iptables(&["-I", "INPUT", "-j", &chain]) {
            let _ = iptables(&["-X", &chain]);
            return Err(e);
        }
        Ok(Iptables {
            chain,
            rules: Mutex::new(Vec::new()),
        })
    }

    fn add(&self, a: usize, b: usize, rule: Vec<String>) -> Result<()> {
        let mut args = vec!["-A", &self.chain];
        args.extend(rule.iter().map(String::as_str));
        iptables(&args)?;
        self.rules
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((a.min(b), a.max(b), rule));
        Ok(())
    }

    /// Packets DC `from` sends towards DC `to`: its connections to `to`'s WAN faces, and its
    /// WAN faces' answers to `to`'s nodes.
    fn dir_matches(from: usize, to: usize) -> [[String; 4]; 2] {
        let net = |n: u8, dc: usize| format!("127.{n}.{dc}.0/24");
        [
            [
                "-s".into(),
                net(NODE_NET, from),
                "-d".into(),
                net(LINK_NET, to),
            ],
            [
                "-s".into(),
                net(LINK_NET, from),
                "-d".into(),
                net(NODE_NET, to),
            ],
        ]
    }

    /// Silently drops everything from `from` to `to`.
    pub fn drop_dir(&self, from: usize, to: usize) -> Result<()> {
        for m in Self::dir_matches(from, to) {
            let mut rule: Vec<String> = m.to_vec();
            rule.extend(["-j".into(), "DROP".into()]);
            self.add(from, to, rule)?;
        }
        Ok(())
    }

    /// Answers everything between `a` and `b` with a reset (TCP) or port unreachable (UDP).
    pub fn reject(&self, a: usize, b: usize) -> Result<()> {
        for (from, to) in [(a, b), (b, a)] {
            for m in Self::dir_matches(from, to) {
                let mut tcp: Vec<String> = m.to_vec();
                tcp.extend(
                    ["-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"].map(String::from),
                );
                self.add(a, b, tcp)?;
                let mut other: Vec<String> = m.to_vec();
                other.extend(["-j", "REJECT"].map(String::from));
                self.add(a, b, other)?;
            }
        }
        Ok(())
    }

    /// Removes the rules between `a` and `b`.
    pub fn heal(&self, a: usize, b: usize) -> Result<()> {
        let key = (a.min(b), a.max(b));
        let mut rules = self
            .rules
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut first_error = None;
        rules.retain(|(x, y, rule)| {
            if (*x, *y) != key {
                return true;
            }
            let mut args = vec!["-D", &self.chain];
            args.extend(rule.iter().map(String::as_str));
            if let Err(e) = iptables(&args) {
                first_error.get_or_insert(e);
            }
            false
        });
        first_error.map_or(Ok(()), Err)
    }

    /// Removes every rule.
    pub fn heal_all(&self) -> Result<()> {
        self.rules
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        iptables(&["-F", &self.chain])
    }
}

impl Drop for Iptables {
    fn drop(&mut self) {
        let _ = iptables(&["-D", "INPUT", "-j", &self.chain]);
        let _ = iptables(&["-F", &self.chain]);
        let _ = iptables(&["-X", &self.chain]);
    }
}

/// Removes chains that runs killed before their cleanup left behind (their process is gone).
fn remove_stale_chains() {
    let Ok(out) = Command::new("iptables").args(["-S"]).output() else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        let Some(chain) = line.strip_prefix("-N ") else {
            continue;
        };
        let Some(pid) = chain
            .strip_prefix("MCHAOS-")
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = iptables(&["-D", "INPUT", "-j", chain]);
        let _ = iptables(&["-F", chain]);
        let _ = iptables(&["-X", chain]);
    }
}
