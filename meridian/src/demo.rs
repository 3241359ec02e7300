//! `meridian demo`: a dev agent in this process with three demo services registered through its
//! own HTTP API — `web` twice with HTTP checks against tiny backends the demo serves, `api` with
//! a TCP check, `db` with a TTL check the demo keeps passing — then the endpoints and a few
//! commands to try (HTTP, CLI and `dig` against the DNS server), until Ctrl-C (or `--exit-after`).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use axum::Router;
use axum::routing::get;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::agent::{Agent, dev_data_dir, shutdown_signal};
use crate::cli::DemoArgs;
use crate::client::{ApiClient, HealthEntry, StatusError, worst};
use crate::config::{Config, join_host_port};

/// How long the demo waits for its services to pass their checks.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// TTL of the `db` check; the demo refreshes it three times per TTL.
const DB_TTL: Duration = Duration::from_secs(15);

/// Runs the demo.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let mut cfg = Config::dev(&args.node.overrides());
    let temp = dev_data_dir(&mut cfg)?;

    let mut tasks = JoinSet::new();
    let web1 = backend(&mut tasks, "web-1").await?;
    let web2 = backend(&mut tasks, "web-2").await?;
    let api = backend(&mut tasks, "api").await?;

    let agent = Agent::start(cfg, temp).await?;
    let result = demo(&agent, &mut tasks, [web1, web2, api], args.exit_after).await;
    tasks.shutdown().await;
    agent.shutdown().await;
    result
}

async fn demo(
    agent: &Agent,
    tasks: &mut JoinSet<()>,
    [web1, web2, api]: [SocketAddr; 3],
    exit_after: Option<u64>,
) -> anyhow::Result<()> {
    let client = ApiClient::new(&agent.http_addr().to_string())?;
    let definitions = [
        json!({"ID": "web-1", "Name": "web", "Tags": ["v1"], "Address": "127.0.0.1", "Port": web1.port(),
               "Meta": {"demo": "true"},
               "Check": {"HTTP": format!("http://{web1}/health"), "Interval": "1s", "Timeout": "1s"}}),
        json!({"ID": "web-2", "Name": "web", "Tags": ["v1"], "Address": "127.0.0.1", "Port": web2.port(),
               "Meta": {"demo": "true"},
               "Check": {"HTTP": format!("http://{web2}/health"), "Interval": "1s", "Timeout": "1s"}}),
        json!({"ID": "api", "Name": "api", "Tags": ["grpc"], "Address": "127.0.0.1", "Port": api.port(),
               "Check": {"TCP": api.to_string(), "Interval": "1s", "Timeout": "1s"}}),
        json!({"ID": "db", "Name": "db", "Tags": ["primary"], "Address": "127.0.0.1", "Port": 5432,
               "Check": {"CheckID": "service:db", "TTL": format!("{}s", DB_TTL.as_secs())}}),
    ];
    for def in &definitions {
        register_with_retry(&client, def).await?;
    }
    // The TTL check starts critical: pass it now and keep it passing.
    client
        .put("/v1/agent/check/pass/service:db?note=demo", None)
        .await?;
    let ttl_client = client.clone();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(DB_TTL / 3);
        loop {
            tick.tick().await;
            if let Err(e) = ttl_client
                .put("/v1/agent/check/pass/service:db?note=demo", None)
                .await
            {
                tracing::warn!(error = %e, "cannot refresh the db TTL check");
            }
        }
    });

    wait_until_passing(&client, &[("web", 2), ("api", 1), ("db", 1)]).await?;
    print_banner(agent, exit_after);

    match exit_after {
        Some(secs) => {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(secs)) => {}
                () = shutdown_signal() => {}
            }
        }
        None => shutdown_signal().await,
    }
    tracing::info!("demo stopping");
    Ok(())
}

/// Serves a tiny HTTP backend on a free loopback port, for the demo's checks.
async fn backend(tasks: &mut JoinSet<()>, name: &'static str) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot bind a demo backend on 127.0.0.1")?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .fallback(move || async move { format!("hello from {name}\n") });
    tasks.spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(backend = name, error = %e, "demo backend stopped");
        }
    });
    Ok(addr)
}

/// Registers a definition, retrying while the fresh datacenter elects its leader.
async fn register_with_retry(client: &ApiClient, def: &serde_json::Value) -> anyhow::Result<()> {
    let body = serde_json::to_vec(def)?;
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        match client
            .put("/v1/agent/service/register", Some(body.clone()))
            .await
        {
            Ok(()) => return Ok(()),
            Err(e)
                if e.downcast_ref::<StatusError>()
                    .is_some_and(|s| s.status == 503)
                    && tokio::time::Instant::now() < deadline =>
            {
                tracing::info!(error = %e, "waiting for a leader");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e.context(format!("cannot register {def}"))),
        }
    }
}

/// Waits until each `(service, n)` has `n` passing instances.
async fn wait_until_passing(client: &ApiClient, wanted: &[(&str, usize)]) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        let mut pending = Vec::new();
        for (service, n) in wanted {
            let entries: Vec<HealthEntry> =
                client.get(&format!("/v1/health/service/{service}")).await?;
            let passing = entries
                .iter()
                .filter(|e| worst(&e.checks) == "passing")
                .count();
            if passing < *n {
                pending.push(format!("{service}: {passing}/{n} passing"));
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "the demo services did not pass their checks within {READY_TIMEOUT:?}: {}",
                pending.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn print_banner(agent: &Agent, exit_after: Option<u64>) {
    let c = agent.config();
    let host = c.bind.to_string();
    let http = agent.http_addr();
    let dns = agent.dns_addr().unwrap_or_else(|| c.bind_addr(c.ports.dns));
    let exe = std::env::current_exe()
        .ok()
        .map_or_else(|| "meridian".to_owned(), |p| p.display().to_string());
    let addr_flag = if http.port() == 8500 && http.ip().is_loopback() {
        String::new()
    } else {
        format!(" --http-addr {http}")
    };
    println!(
        "\nMeridian demo: datacenter {dc}, node {node}, services web (x2), api, db — all passing.\n\
         \n  HTTP API (Consul-compatible)  http://{http}\
         \n  Metrics                       http://{http}/metrics\
         \n  RPC (Raft, LAN gRPC)          {rpc}\
         \n  DNS (UDP and TCP)             {dns}\
         \n  WAN (federation, mTLS gRPC)   {wan}\
         \n  Gateway (SNI passthrough)     {gw}  (TCP; UDP for the QUIC tunnel)\
         \n  Data folder                   {data}{removed}\n\
         \nTry:\
         \n  curl -s 'http://{http}/v1/health/service/web?passing'\
         \n  curl -s http://{http}/v1/catalog/services\
         \n  {exe} services list{addr_flag}\
         \n  {exe} services show web{addr_flag}\
         \n  {exe} members{addr_flag}\
         \n  dig @{dns_ip} -p {dns_port} web.service.consul SRV\
         \n  dig @{dns_ip} -p {dns_port} +short web.service.consul A\
         \n  # a second datacenter that federates with this one (dc2 sees dc1's services, and back):\
         \n  {exe} agent --dev --dc dc2 --http-port 9500 --dns-port 9600 --rpc-port 9300 --wan-port 9302 --gateway-port 9443 --join-wan {wan}\
         \n  curl -s 'http://127.0.0.1:9500/v1/health/service/web?dc={dc}'\n\
         \n{stop}",
        stop = match exit_after {
            Some(secs) => format!("Stopping in {secs} s (or on Ctrl-C)."),
            None => "Press Ctrl-C to stop.".to_owned(),
        },
        dc = c.datacenter,
        node = c.node_name,
        rpc = join_host_port(&host, c.ports.rpc),
        dns = dns,
        dns_ip = dns.ip(),
        dns_port = dns.port(),
        wan = agent
            .wan_addr()
            .map_or_else(|| join_host_port(&host, c.ports.wan), |a| a.to_string()),
        gw = agent
            .gateway_addr()
            .map_or_else(|| join_host_port(&host, c.ports.gateway), |a| a.to_string()),
        removed = if agent.data_is_temporary() {
            " (removed at exit)"
        } else {
            ""
        },
        data = c
            .data_dir
            .as_ref()
            .map(|d| d.display().to_string())
            .unwrap_or_default(),
    );
}
