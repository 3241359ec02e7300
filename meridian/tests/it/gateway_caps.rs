//! The gateway's per-party caps against real processes and real sockets (issue 17, findings 2
//! and 7): one client address flooding the gateway, or holding its share of another
//! datacenter's tunnel, does not stop a second client. The clients speak from their own
//! loopback addresses (127.0.0.2, 127.0.0.3: all of 127/8 is local on Linux) so the gateway
//! tells them apart as it would two hosts.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::federation::dev_dc;
use crate::gateway::{metric, replicated_with_gateway};
use crate::harness::{Agent, AgentConfig, Ports, eventually, quick_raft};
use crate::security::raw_client_hello;

const FLOODER: [u8; 4] = [127, 0, 0, 2];
const OTHER: [u8; 4] = [127, 0, 0, 3];

/// A backend that answers every connection with one byte and then holds it open until the
/// client's side ends, as a TLS server waiting for the client's next flight does: a relayed
/// connection stays open (and holds its slots) until the client leaves.
async fn holding_backend() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                if s.write_all(b"!").await.is_ok() {
                    let mut sink = Vec::new();
                    let _ = s.read_to_end(&mut sink).await;
                }
            });
        }
    });
    Ok(port)
}

/// A TCP connection to `port` on loopback from the source address `from`.
async fn connect_from(from: [u8; 4], port: u16) -> Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    Ok(socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await?)
}

/// From `from`, a ClientHello for `sni` through the gateway at `port`: the connection and the
/// first bytes that came back (empty when it was closed without an answer).
async fn hello_from(from: [u8; 4], port: u16, sni: &str) -> Result<(TcpStream, Vec<u8>)> {
    let mut s = connect_from(from, port).await?;
    s.write_all(&raw_client_hello(sni)).await?;
    let mut buf = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .context("no answer and no close within 10 s")?
        .unwrap_or(0);
    buf.truncate(n);
    Ok((s, buf))
}

/// Registers `hold` at `port` (on loopback) in `agent`'s datacenter.
async fn register_hold(agent: &Agent, port: u16) -> Result<()> {
    let r = agent
        .put_json(
            "/v1/agent/service/register",
            &json!({"ID": "hold-1", "Name": "hold", "Port": port, "Address": "127.0.0.1"}),
        )
        .await?;
    ensure!(r.status().is_success(), "register: {}", r.status());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_idle_connections_from_one_client_do_not_stop_a_second() -> Result<()> {
    // 2,000 sockets here, as many accepted by the agent (which raises its own limit).
    meridian_node::descriptors::raise_limit();
    let dir = tempfile::tempdir()?;
    let backend = holding_backend().await?;
    let mut c = AgentConfig::new("dc1", "n1", Ports::free(), &dir.path().join("data"));
    c.raft = quick_raft();
    // A budget below the flood, and idle connections that are not cut meanwhile: without the
    // per-client cap the flooder would hold every slot for the whole test, and the second
    // client would wait in the accept queue. `max_connections_per_client` is left at its
    // default (256), loopback included.
    c.set("gateway", "max_connections", 1_000)
        .set("gateway", "handshake_timeout_ms", 120_000);
    let mut agent = Agent::start("caps", &c, dir.path(), &[])?;
    agent.wait_ready().await?;
    register_hold(&agent, backend).await?;
    let gw = agent.ports.gateway;

    let mut flood = Vec::with_capacity(2_000);
    for i in 0..2_000 {
        flood.push(
            connect_from(FLOODER, gw)
                .await
                .with_context(|| format!("flood connection {i}"))?,
        );
    }
    // The flood is counted as it is refused: all beyond the first 256, at once.
    eventually(20, "1,744 refused for client_limit", || async {
        metric(
            &agent,
            "meridian_gateway_connections_total{route=\"none\",outcome=\"client_limit\"}",
        )
        .await
            == 1_744.0
    })
    .await?;
    // The second client is relayed meanwhile (the service may take a moment to be routable).
    let mut answer = Vec::new();
    for _ in 0..50 {
        let (_s, got) = hello_from(OTHER, gw, "hold.service.consul").await?;
        if got == b"!" {
            answer = got;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(
        answer == b"!",
        "the second client was not relayed beside the flood"
    );
    // The admitted 256 are still open (held, not cut), and the refused ones were closed.
    let mut closed = 0;
    for s in &mut flood {
        let mut b = [0u8; 1];
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(5), s.read(&mut b)).await
            && matches!(r, Ok(0) | Err(_))
        {
            closed += 1;
        }
    }
    ensure!(
        closed == 1_744,
        "{closed} of the flood closed, 1,744 expected"
    );
    ensure!(
        metric(
            &agent,
            "meridian_gateway_connections_total{route=\"none\",outcome=\"client_limit\"}",
        )
        .await
            == 1_744.0,
        "the second client was never refused"
    );
    ensure!(agent.is_running());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_holding_its_tunnel_share_does_not_stop_another_reaching_the_remote_dc()
-> Result<()> {
    let dir = tempfile::tempdir()?;
    let backend = holding_backend().await?;
    let mut dc1 = dev_dc(dir.path(), "dc1", None)?;
    dc1.wait_ready().await?;
    let mut dc2 = dev_dc(dir.path(), "dc2", Some(dc1.ports.wan))?;
    dc2.wait_ready().await?;
    register_hold(&dc1, backend).await?;
    replicated_with_gateway(&dc2, "hold").await?;
    let (gw, name) = (dc2.ports.gateway, "hold.service.dc1.consul");

    // The defaults: 1,000 streams per DC, a client address's share an eighth of it.
    let share = 125;
    let mut held = Vec::with_capacity(share);
    for i in 0..share {
        let (s, got) = hello_from(FLOODER, gw, name).await?;
        ensure!(
            got == b"!",
            "stream {i} of the share was not relayed: {got:?}"
        );
        held.push(s);
    }
    // One more from the same client is refused (a TLS internal_error alert) and counted.
    let (_s, got) = hello_from(FLOODER, gw, name).await?;
    ensure!(got == [21, 3, 3, 0, 2, 2, 80], "beyond the share: {got:?}");
    eventually(10, "the refusal counted as client_share", || async {
        metric(
            &dc2,
            "meridian_gateway_connections_total{route=\"remote\",outcome=\"client_share\"}",
        )
        .await
            == 1.0
    })
    .await?;
    // Another client reaches dc1 meanwhile, through the same tunnel.
    let (_other, got) = hello_from(OTHER, gw, name).await?;
    ensure!(got == b"!", "the second client did not reach dc1: {got:?}");
    // And the first gets a place back as soon as it closes one.
    drop(held.pop());
    let mut again = Vec::new();
    for _ in 0..50 {
        let (_s, got) = hello_from(FLOODER, gw, name).await?;
        if got == b"!" {
            again = got;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(again == b"!", "the share was not given back");
    // dc1 served every stream; nothing was refused on its side.
    ensure!(metric(&dc1, "meridian_gateway_tunnel_streams_in_total").await >= 127.0);
    ensure!(
        metric(
            &dc1,
            "meridian_gateway_tunnel_limited_total{limit=\"peer_connections\"}"
        )
        .await
            == 0.0
    );
    Ok(())
}
