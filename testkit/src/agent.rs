//! One `meridian agent` process with its ports and an HTTP client of its API: started from a
//! typed configuration ([`crate::AgentConfig`]) or as `--dev`, waited for, asked, and killed,
//! frozen or restarted through its [`Proc`].

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::config::{AgentConfig, TEST_TOKEN};
use crate::ports::Ports;
use crate::process::Proc;
use crate::wait;

/// How long an agent may take to answer with a leader known.
pub const READY_LIMIT: Duration = Duration::from_secs(60);

/// A running agent; the process is killed when this is dropped (its log printed if a test fails).
pub struct Agent {
    /// Its name in logs and messages.
    pub name: String,
    /// Its ports.
    pub ports: Ports,
    /// The address it listens on.
    pub host: IpAddr,
    /// Its process.
    pub proc: Proc,
    /// A client of its API presenting [`TEST_TOKEN`] (harmless where the API is open).
    pub http: reqwest::Client,
}

/// An HTTP client presenting `token`, with a 30 s limit per request.
pub fn api_client(token: Option<&str>) -> Result<reqwest::Client> {
    api_client_with(token, Duration::from_secs(30))
}

/// An HTTP client presenting `token`, with `timeout` per request (2 s to connect). It never uses
/// a proxy from the environment: agents are on loopback or in the test's own namespaces.
pub fn api_client_with(token: Option<&str>, timeout: Duration) -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .default_headers(meridian_client::api::token_headers(token)?)
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(2))
        .build()?)
}

/// How an agent's process is started: which `meridian`, with what environment, on which CPU.
/// The default is the workspace's `meridian` ([`crate::process::bin`]), as it is, anywhere.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// The binary, when not the workspace's (a benchmark's `--meridian`).
    pub bin: Option<PathBuf>,
    /// Environment variables added to the kit's (`RUST_LOG`, for one).
    pub env: Vec<(String, String)>,
    /// The CPU to pin the process to ([`crate::process::pinned`]).
    pub core: Option<usize>,
}

impl Agent {
    /// Writes `config` to `dir/<name>.toml` and starts `meridian agent --config` on it with
    /// `extra_args`, its output in `dir/<name>.log`.
    pub fn start(
        name: &str,
        config: &AgentConfig,
        dir: &Path,
        extra_args: &[&str],
    ) -> Result<Agent> {
        Self::launch(name, config, dir, extra_args, &Launch::default())
    }

    /// [`Agent::start`] as `launch` says.
    pub fn launch(
        name: &str,
        config: &AgentConfig,
        dir: &Path,
        extra_args: &[&str],
        launch: &Launch,
    ) -> Result<Agent> {
        let file = dir.join(format!("{name}.toml"));
        config.write(&file)?;
        let mut args = vec!["agent".to_owned(), "--config".to_owned(), path_arg(&file)?];
        args.extend(extra_args.iter().map(|s| (*s).to_owned()));
        let log = dir.join(format!("{name}.log"));
        Self::launch_args(name, config.ports, config.bind, args, &log, launch)
    }

    /// Starts `meridian agent --dev` on `ports` with its data in `data_dir`, and `extra_args`.
    pub fn start_dev(
        name: &str,
        ports: Ports,
        data_dir: &Path,
        dir: &Path,
        extra_args: &[&str],
    ) -> Result<Agent> {
        let mut args: Vec<String> = vec![
            "agent".into(),
            "--dev".into(),
            "--data-dir".into(),
            path_arg(data_dir)?,
        ];
        args.extend(ports.args());
        args.extend(extra_args.iter().map(|s| (*s).to_owned()));
        Self::spawn(name, ports, IpAddr::from([127, 0, 0, 1]), args, dir)
    }

    fn spawn(
        name: &str,
        ports: Ports,
        host: IpAddr,
        args: Vec<String>,
        dir: &Path,
    ) -> Result<Agent> {
        let log = dir.join(format!("{name}.log"));
        Self::launch_args(name, ports, host, args, &log, &Launch::default())
    }

    /// Starts `meridian args…` (the whole command line, `agent` included) as `launch` says, as
    /// agent `name` on `ports` at `host`, its output in `log`.
    pub fn launch_args(
        name: &str,
        ports: Ports,
        host: IpAddr,
        args: Vec<String>,
        log: &Path,
        launch: &Launch,
    ) -> Result<Agent> {
        let bin = match &launch.bin {
            Some(b) => b.clone(),
            None => crate::process::bin("meridian")?,
        };
        let (program, args) = crate::process::pinned(launch.core, &bin, args)?;
        let proc = Proc::start(name, &program, args, launch.env.clone(), log)?;
        Ok(Agent {
            name: name.to_owned(),
            ports,
            host,
            proc,
            http: api_client(Some(TEST_TOKEN))?,
        })
    }

    /// `http://host:http_port`.
    pub fn base(&self) -> String {
        format!("http://{}:{}", self.host, self.ports.http)
    }

    /// The URL of `path` on its API.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    /// Its DNS server.
    pub fn dns(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.ports.dns)
    }

    /// Its gateway.
    pub fn gateway(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.ports.gateway)
    }

    /// `host:rpc_port`, as `/v1/status/leader` names a leader.
    pub fn rpc(&self) -> String {
        format!("{}:{}", self.host, self.ports.rpc)
    }

    /// Waits until it answers and knows a leader ([`READY_LIMIT`]); fails at once, with its log,
    /// if the process exited.
    pub async fn wait_ready(&mut self) -> Result<()> {
        let deadline = std::time::Instant::now() + READY_LIMIT;
        loop {
            if let Some(status) = self.proc.exit_status() {
                bail!(
                    "{} exited with {status}; log:\n{}",
                    self.name,
                    self.proc.log_text()
                );
            }
            if wait::leader_of(&self.http, &self.base()).await.is_some() {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "{} not ready within {READY_LIMIT:?}; log:\n{}",
                    self.name,
                    self.proc.log_text()
                );
            }
            tokio::time::sleep(wait::POLL).await;
        }
    }

    /// GETs `path` and decodes its JSON; an error status is an error with the body.
    pub async fn get_json(&self, path: &str) -> Result<Value> {
        let r = self.http.get(self.url(path)).send().await?;
        let status = r.status();
        let body = r.text().await?;
        if !status.is_success() {
            bail!("GET {path} on {}: {status}: {body}", self.name);
        }
        serde_json::from_str(&body).with_context(|| format!("GET {path}: not JSON: {body}"))
    }

    /// PUTs `body` as JSON to `path`.
    pub async fn put_json(&self, path: &str, body: &Value) -> Result<reqwest::Response> {
        Ok(self.http.put(self.url(path)).json(body).send().await?)
    }

    /// IDs of the instances of `service` its catalog holds.
    pub async fn instance_ids(&self, service: &str) -> Result<Vec<String>> {
        let v = self
            .get_json(&format!("/v1/catalog/service/{service}"))
            .await?;
        Ok(v.as_array()
            .context("/v1/catalog/service is not an array")?
            .iter()
            .filter_map(|e| e["ServiceID"].as_str().map(str::to_owned))
            .collect())
    }

    /// SIGKILL: nothing is flushed.
    pub fn kill9(&mut self) -> Result<()> {
        self.proc.kill9()
    }

    /// SIGTERM, then a clean exit within 20 s (an error otherwise).
    pub fn stop(&mut self) -> Result<()> {
        self.proc.stop()
    }

    /// Stops it cleanly (SIGTERM) and starts it again on the same data folder and ports.
    pub fn restart(&mut self) -> Result<()> {
        self.proc.stop()?;
        self.proc.restart()
    }

    /// Whether the process runs.
    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// What it has logged so far.
    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }

    /// Its `/metrics` text.
    pub async fn metrics(&self) -> Result<String> {
        crate::metrics::scrape(&self.http, &self.base()).await
    }

    /// The value of sample `key` on its `/metrics`.
    pub async fn metric(&self, key: &str) -> Result<f64> {
        let text = self.metrics().await?;
        crate::metrics::value(&text, key)
            .with_context(|| format!("{key} not on /metrics of {}", self.name))
    }
}

/// `path` as an argument (UTF-8).
fn path_arg(path: &Path) -> Result<String> {
    path.to_str()
        .map(str::to_owned)
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

/// Index of the agent among `agents` that is the Raft leader, by asking each; `limit` in all.
pub async fn leader_index(agents: &[Agent], limit: Duration) -> Result<usize> {
    wait::until_some(limit, "a leader among the agents", || async {
        for a in agents {
            if let Some(leader) = wait::leader_of(&a.http, &a.base()).await
                && let Some(i) = agents.iter().position(|b| b.rpc() == leader)
            {
                return Some(i);
            }
        }
        None
    })
    .await
}

/// The configurations of a `n`-node DC `dc` on 127.0.0.1 (nodes `n1`…, ids from 1), every node
/// listing every voter, data under `dir/<node>`.
pub fn dc_configs(dc: &str, n: usize, dir: &Path) -> Vec<AgentConfig> {
    let ports: Vec<Ports> = (0..n).map(|_| Ports::free()).collect();
    let servers: Vec<crate::config::Server> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| crate::config::Server {
            id: i as u64 + 1,
            rpc: format!("127.0.0.1:{}", p.rpc),
        })
        .collect();
    ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let name = format!("n{}", i + 1);
            let data: PathBuf = dir.join(&name);
            let mut c = AgentConfig::new(dc, &name, *p, &data);
            c.node_id = i as u64 + 1;
            c.servers = servers.clone();
            c
        })
        .collect()
}
