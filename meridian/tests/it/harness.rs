//! Starts and stops real `meridian agent` processes and talks to their HTTP API.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_meridian");

/// The management token of every config-file agent the harness starts (unless the test's
/// config has its own `[acl]`); [`Agent::http`] presents it.
pub const TEST_TOKEN: &str = "meridian-test-management-token";

/// What the harness adds to a test's config file, which tests of other things leave out: the
/// management token, and `insecure = true` when the file sets no certificates (the agent refuses
/// a plain-text rpc port otherwise).
fn with_test_security(toml: &str) -> String {
    let mut out = String::new();
    if !toml.contains("ca_file") && !toml.contains("insecure") {
        out.push_str("insecure = true\n");
    }
    out.push_str(toml);
    if !toml.contains("[acl]") && !toml.contains("acl.") {
        out.push_str(&format!("\n[acl]\nmanagement_token = \"{TEST_TOKEN}\"\n"));
    }
    out
}

/// A free loopback port for an agent to listen on, TCP and UDP, never the same one twice in this
/// test process. Drawn at random below the kernel's ephemeral range (32768 and up), so neither
/// the outgoing connections of other tests nor another test process asking the kernel for a
/// port can take it between this check and the agent's bind.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let port: u16 = rand::random_range(10_000..32_768);
        if given.contains(&port) {
            continue;
        }
        let free = std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok();
        if free {
            given.push(port);
            return port;
        }
    }
}

/// The ports of one agent.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub http: u16,
    pub dns: u16,
    pub rpc: u16,
    pub wan: u16,
    pub gateway: u16,
}

impl Ports {
    pub fn free() -> Self {
        Ports {
            http: free_port(),
            dns: free_port(),
            rpc: free_port(),
            wan: free_port(),
            gateway: free_port(),
        }
    }
}

/// How to start an agent.
#[derive(Clone, Debug)]
pub enum Mode {
    /// `--dev` with a data folder.
    Dev { data_dir: PathBuf },
    /// `--config FILE`.
    Config { file: PathBuf },
}

/// A running agent process, killed when dropped. Its log is kept in `log` and printed if a test
/// fails while it runs.
pub struct Agent {
    pub name: String,
    pub ports: Ports,
    /// The address the agent listens on (its config's `bind`).
    pub host: std::net::IpAddr,
    mode: Mode,
    log: PathBuf,
    child: Option<Child>,
    extra: Vec<String>,
    pub http: reqwest::Client,
}

impl Agent {
    pub fn start(name: &str, mode: Mode, ports: Ports, log_dir: &Path) -> Result<Agent> {
        Self::start_with(name, mode, ports, log_dir, &[])
    }

    /// Starts an agent with extra command-line arguments.
    pub fn start_with(
        name: &str,
        mode: Mode,
        ports: Ports,
        log_dir: &Path,
        extra: &[&str],
    ) -> Result<Agent> {
        let mut agent = Agent {
            name: name.to_owned(),
            ports,
            host: std::net::IpAddr::from([127, 0, 0, 1]),
            mode,
            log: log_dir.join(format!("{name}.log")),
            child: None,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            http: reqwest::Client::builder()
                .default_headers(
                    [(
                        reqwest::header::HeaderName::from_static("x-consul-token"),
                        reqwest::header::HeaderValue::from_static(TEST_TOKEN),
                    )]
                    .into_iter()
                    .collect(),
                )
                .timeout(Duration::from_secs(30))
                .build()?,
        };
        agent.spawn()?;
        Ok(agent)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = Command::new(BIN);
        cmd.arg("agent");
        match &self.mode {
            Mode::Dev { data_dir } => {
                cmd.arg("--dev").arg("--data-dir").arg(data_dir);
                let p = self.ports;
                cmd.args(["--http-port", &p.http.to_string()])
                    .args(["--dns-port", &p.dns.to_string()])
                    .args(["--rpc-port", &p.rpc.to_string()])
                    .args(["--wan-port", &p.wan.to_string()])
                    .args(["--gateway-port", &p.gateway.to_string()]);
            }
            Mode::Config { file } => {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("reading {}", file.display()))?;
                let secured = with_test_security(&text);
                if secured != text {
                    std::fs::write(file, secured)?;
                }
                cmd.arg("--config").arg(file);
            }
        }
        cmd.args(&self.extra);
        cmd.env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.child = Some(cmd.spawn().context("spawning meridian")?);
        Ok(())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}:{}{path}", self.host, self.ports.http)
    }

    /// Starts the process again on the same data folder and ports.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.spawn()
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            let pid = c.id().to_string();
            Command::new("kill").args(["-TERM", &pid]).status()?;
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Some(status) = c.try_wait()? {
                    if !status.success() {
                        bail!("{} exited with {status} after SIGTERM", self.name);
                    }
                    return Ok(());
                }
                if Instant::now() > deadline {
                    c.kill()?;
                    bail!("{} did not exit within 20 s of SIGTERM", self.name);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the agent answers and knows a leader; fails at once if the process exited.
    pub async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                bail!(
                    "{} exited with {status}; log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            if let Ok(r) = self.http.get(self.url("/v1/status/leader")).send().await
                && r.status().is_success()
                && let Ok(Value::String(leader)) = r.json::<Value>().await
                && !leader.is_empty()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not ready within 60 s; log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn get_json(&self, path: &str) -> Result<Value> {
        let r = self.http.get(self.url(path)).send().await?;
        let status = r.status();
        let body = r.text().await?;
        if !status.is_success() {
            bail!("GET {path}: {status}: {body}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    pub async fn put_json(&self, path: &str, body: &Value) -> Result<reqwest::Response> {
        Ok(self.http.put(self.url(path)).json(body).send().await?)
    }

    /// IDs of the instances of `service` this agent's catalog holds.
    pub async fn instance_ids(&self, service: &str) -> Result<Vec<String>> {
        let v = self
            .get_json(&format!("/v1/catalog/service/{service}"))
            .await?;
        Ok(v.as_array()
            .context("catalog service is an array")?
            .iter()
            .filter_map(|e| e["ServiceID"].as_str().map(str::to_owned))
            .collect())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("----- log of {} -----\n{}", self.name, self.log_text());
        }
    }
}

/// A 3-node datacenter from generated config files.
pub fn three_node_dc(dir: &Path) -> Result<Vec<Agent>> {
    let ports: Vec<Ports> = (0..3).map(|_| Ports::free()).collect();
    let mut servers = String::new();
    for (i, p) in ports.iter().enumerate() {
        write!(
            servers,
            "\n[[servers]]\nid = {}\nrpc = \"127.0.0.1:{}\"\n",
            i + 1,
            p.rpc
        )?;
    }
    let mut agents = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let name = format!("n{}", i + 1);
        let file = dir.join(format!("{name}.toml"));
        let config = format!(
            "datacenter = \"dc1\"\nnode_name = \"{name}\"\nnode_id = {id}\nbind = \"127.0.0.1\"\n\
             data_dir = \"{data}\"\n\n[ports]\nhttp = {http}\ndns = {dns}\nrpc = {rpc}\nwan = {wan}\n\
             gateway = {gw}\n\n[raft]\nheartbeat_ms = 100\nelection_timeout_min_ms = 500\n\
             election_timeout_max_ms = 1000\n{servers}",
            id = i + 1,
            data = dir.join(&name).display(),
            http = p.http,
            dns = p.dns,
            rpc = p.rpc,
            wan = p.wan,
            gw = p.gateway,
        );
        std::fs::write(&file, config)?;
        agents.push(Agent::start(&name, Mode::Config { file }, *p, dir)?);
    }
    Ok(agents)
}

/// Index of the agent that is the Raft leader, by asking each for `/v1/status/leader`.
pub async fn leader_index(agents: &[Agent]) -> Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for a in agents {
            if let Ok(Value::String(leader)) = a.get_json("/v1/status/leader").await
                && let Some(i) = agents
                    .iter()
                    .position(|b| leader == format!("127.0.0.1:{}", b.ports.rpc))
            {
                return Ok(i);
            }
        }
        if Instant::now() > deadline {
            bail!("no leader within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `f` until it returns true or `secs` pass.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut f: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("timed out after {secs} s waiting for {what}")
}

/// A registration body in Consul's shape.
pub fn service(name: &str, id: &str, port: u16) -> Value {
    serde_json::json!({ "ID": id, "Name": name, "Port": port, "Tags": ["t1"], "Address": "127.0.0.1" })
}
