//! A real resolver in front of Meridian: unbound, configured with a stub zone for `consul.` that
//! points at a dev agent's DNS port (as Consul's documentation configures it), answers SRV and A
//! queries from `dig`, including the SRV targets' addresses and NXDOMAIN for an unknown service.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::json;

use crate::harness::{eventually, free_port};

/// A program on PATH or in /usr/sbin, or a failure naming the Debian package to install.
fn need(program: &str, package: &str) -> Result<PathBuf> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()?;
    let found = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if out.status.success() && !found.is_empty() {
        return Ok(PathBuf::from(found));
    }
    let sbin = Path::new("/usr/sbin").join(program);
    if sbin.exists() {
        return Ok(sbin);
    }
    bail!(
        "this test needs `{program}` (Debian package {package}): run scripts/test.sh as root, \
         or 'sudo apt-get install unbound bind9-dnsutils'"
    )
}

/// An `unbound -d` process, killed when dropped; its log is printed if the test fails.
struct Unbound {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Unbound {
    fn start(unbound: &Path, dir: &Path, meridian_dns: u16) -> Result<Unbound> {
        let port = free_port();
        let log = dir.join("unbound.log");
        let conf = dir.join("unbound.conf");
        // The stub zone is the one from Consul's DNS forwarding guide; the rest keeps unbound
        // on loopback, in the foreground, as the current user, without DNSSEC or root hints.
        std::fs::write(
            &conf,
            format!(
                "server:\n\
                 \x20   interface: 127.0.0.1\n\
                 \x20   port: {port}\n\
                 \x20   do-ip6: no\n\
                 \x20   do-daemonize: no\n\
                 \x20   chroot: \"\"\n\
                 \x20   username: \"\"\n\
                 \x20   directory: \"{dir}\"\n\
                 \x20   pidfile: \"\"\n\
                 \x20   use-syslog: no\n\
                 \x20   logfile: \"{log}\"\n\
                 \x20   verbosity: 1\n\
                 \x20   num-threads: 1\n\
                 \x20   module-config: \"iterator\"\n\
                 \x20   access-control: 127.0.0.0/8 allow\n\
                 \x20   do-not-query-localhost: no\n\
                 \x20   domain-insecure: \"consul.\"\n\
                 remote-control:\n\
                 \x20   control-enable: no\n\
                 stub-zone:\n\
                 \x20   name: \"consul.\"\n\
                 \x20   stub-addr: 127.0.0.1@{meridian_dns}\n",
                dir = dir.display(),
                log = log.display(),
            ),
        )?;
        let child = Command::new(unbound)
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("unbound.stderr"))?)
            .spawn()
            .context("spawning unbound")?;
        Ok(Unbound { child, port, log })
    }

    fn log_text(&self) -> String {
        let stderr = self.log.with_file_name("unbound.stderr");
        format!(
            "{}{}",
            std::fs::read_to_string(&stderr).unwrap_or_default(),
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }
}

impl Drop for Unbound {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("----- unbound log -----\n{}", self.log_text());
        }
    }
}

/// `dig @127.0.0.1 -p port <args>`, bounded by two tries of two seconds; its whole output.
fn dig(dig: &Path, port: u16, args: &[&str]) -> Result<String> {
    let out = Command::new(dig)
        .args(["@127.0.0.1", "-p", &port.to_string(), "+time=2", "+tries=2"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running dig")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The sorted lines of `dig +short`.
fn short(dig_bin: &Path, port: u16, name: &str, qtype: &str) -> Result<Vec<String>> {
    let text = dig(dig_bin, port, &["+short", name, qtype])?;
    let mut lines: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with(';'))
        .map(str::to_owned)
        .collect();
    lines.sort();
    Ok(lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbound_stub_zone_answers_srv_and_a() -> Result<()> {
    let unbound_bin = need("unbound", "unbound")?;
    let dig_bin = need("dig", "bind9-dnsutils")?;
    let dir = tempfile::tempdir()?;
    let mut agent = crate::harness::dev("dev", &dir.path().join("data"), dir.path(), &[])?;
    agent.wait_ready().await?;
    for (id, port, addr) in [("web-1", 8080, "10.0.0.1"), ("web-2", 8081, "10.0.0.2")] {
        let body = json!({ "ID": id, "Name": "web", "Port": port, "Address": addr });
        let r = agent.put_json("/v1/agent/service/register", &body).await?;
        ensure!(
            r.status().is_success(),
            "register {id}: {}",
            r.text().await?
        );
    }
    let dns = agent.ports.dns;
    let expected_srv = vec![
        "1 1 8080 0a000001.addr.dc1.consul.".to_owned(),
        "1 1 8081 0a000002.addr.dc1.consul.".to_owned(),
    ];
    // Straight from Meridian first, so that unbound never sees (or caches) an early NXDOMAIN.
    eventually(30, "Meridian to answer web.service.consul SRV", || async {
        short(&dig_bin, dns, "web.service.consul", "SRV").is_ok_and(|l| l == expected_srv)
    })
    .await
    .with_context(|| {
        let direct = dig(&dig_bin, dns, &["web.service.consul", "SRV"]);
        format!(
            "Meridian's own answer, without unbound:\n{}",
            direct.unwrap_or_else(|e| e.to_string())
        )
    })?;

    let unbound = Unbound::start(&unbound_bin, dir.path(), dns)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let srv = loop {
        let lines = short(&dig_bin, unbound.port, "web.service.consul", "SRV")?;
        if !lines.is_empty() {
            break lines;
        }
        if Instant::now() > deadline {
            bail!(
                "unbound gave no SRV answer within 20 s: {}\nlog:\n{}",
                dig(&dig_bin, unbound.port, &["web.service.consul", "SRV"])?,
                unbound.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    ensure!(srv == expected_srv, "SRV through unbound: {srv:?}");

    let rfc2782 = short(&dig_bin, unbound.port, "_web._tcp.service.consul", "SRV")?;
    ensure!(
        rfc2782 == expected_srv,
        "RFC 2782 SRV through unbound: {rfc2782:?}"
    );

    let a = short(&dig_bin, unbound.port, "web.service.consul", "A")?;
    ensure!(a == ["10.0.0.1", "10.0.0.2"], "A through unbound: {a:?}");

    // A client that got the SRV answer resolves its targets through the same resolver.
    for (target, addr) in [
        ("0a000001.addr.dc1.consul", "10.0.0.1"),
        ("0a000002.addr.dc1.consul", "10.0.0.2"),
    ] {
        let got = short(&dig_bin, unbound.port, target, "A")?;
        ensure!(got == [addr], "{target} A through unbound: {got:?}");
    }

    // Mixed case is answered too (resolvers may randomise it), with the name as asked.
    let mixed = short(&dig_bin, unbound.port, "WEB.Service.Consul", "A")?;
    ensure!(mixed == ["10.0.0.1", "10.0.0.2"], "mixed-case A: {mixed:?}");

    let missing = dig(&dig_bin, unbound.port, &["nosuch.service.consul", "SRV"])?;
    ensure!(
        missing.contains("status: NXDOMAIN"),
        "unknown service through unbound:\n{missing}"
    );
    Ok(())
}
