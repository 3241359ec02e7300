//! Issue 17, finding 6: federation from a compromised node. Each test is a peer with a valid
//! certificate that misbehaves, and what a user of the attacked node would notice.

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Result, bail, ensure};
use meridian_federation::peers::{MAX_RELAYED_ADDRESSES, MAX_RELAYED_DATACENTERS};
use meridian_federation::{Limits, Peer};
use meridian_identity::{Role, TlsMaterial};
use meridian_protos::federation as pb;
use meridian_protos::federation::federation_client::FederationClient;

use crate::harness::{Script, ScriptedOrigin, entry, eventually, node, snapshot};

fn request(subscriber: &str, origin: &str) -> pb::SubscribeRequest {
    pb::SubscribeRequest {
        subscriber_dc: subscriber.to_owned(),
        origin_dc: origin.to_owned(),
        subscriber_node: "test".to_owned(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_over_the_per_certificate_cap_are_refused_and_counted() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let limits = Limits {
        max_streams_per_identity: 2,
        ..Limits::default()
    };
    let dc1 = node("dc1", dir.path(), vec![], limits).await?;
    let wan = dc1.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let t = Duration::from_secs(5);
    let evil = TlsMaterial::dev("dc2", "evil", Role::Server)?;
    let ch = meridian_federation::client::channel(evil.client_config()?, &wan, "dc1", t).await?;
    let mut client = FederationClient::new(ch);

    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = client.subscribe(request("dc2", "dc1")).await?.into_inner();
        ensure!(tokio::time::timeout(t, s.message()).await??.is_some());
        held.push(s);
    }
    match client.subscribe(request("dc2", "dc1")).await {
        Err(s) if s.code() == tonic::Code::ResourceExhausted => {}
        other => bail!("a third stream of one certificate got {other:?}"),
    }
    ensure!(dc1.counters().refused("stream_cap") == 1);

    // Another node of the same DC is not held back by it.
    let honest = TlsMaterial::dev("dc2", "n2", Role::Server)?;
    let ch = meridian_federation::client::channel(honest.client_config()?, &wan, "dc1", t).await?;
    let mut s = FederationClient::new(ch)
        .subscribe(request("dc2", "dc1"))
        .await?
        .into_inner();
    ensure!(tokio::time::timeout(t, s.message()).await??.is_some());

    // A stream that ends gives its slot back.
    drop(held.pop());
    let deadline = tokio::time::Instant::now() + t;
    loop {
        match client.subscribe(request("dc2", "dc1")).await {
            Ok(_) => break,
            Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                ensure!(
                    tokio::time::Instant::now() < deadline,
                    "the slot never came back"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) => bail!("{s}"),
        }
    }
    dc1.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_advertising_phantom_datacenters_and_another_dcs_addresses_is_refused_counted_and_forgotten()
-> Result<()> {
    // dc1's compromised node: a real snapshot, and a list of 50 phantom DCs plus ten addresses
    // of its choosing for dc2, repeated in every heartbeat.
    let mut list = vec![pb::Datacenter {
        name: "dc2".into(),
        addresses: (0..10).map(|i| format!("127.0.0.1:{}", 1000 + i)).collect(),
    }];
    list.extend((0..50).map(|i| pb::Datacenter {
        name: format!("ghost{i}"),
        addresses: vec![format!("127.0.0.1:{}", 2000 + i)],
    }));
    let sent = list.clone();
    let origin = ScriptedOrigin::start(
        "dc1",
        Script {
            messages: Box::new(move |_| snapshot(vec![entry("web1")], 1, sent.clone())),
            stay: true,
            heartbeat_datacenters: list,
        },
    )
    .await?;

    let dir = tempfile::tempdir()?;
    let limits = Limits {
        unproven_ttl: Duration::from_secs(2),
        ..Limits::default()
    };
    let peers = vec![
        Peer {
            dc: "dc1".into(),
            addresses: vec![origin.addr.to_string()],
        },
        Peer {
            dc: "dc2".into(),
            addresses: vec!["127.0.0.1:9".into()],
        },
    ];
    let dc3 = node("dc3", dir.path(), peers.clone(), limits.clone()).await?;
    eventually(10, "dc1's snapshot", || {
        dc3.view().remote("dc1").is_some_and(|r| r.synced)
    })
    .await?;
    let ghosts = |f: &crate::harness::Node| {
        f.datacenters()
            .iter()
            .filter(|p| p.dc.starts_with("ghost"))
            .count()
    };
    eventually(5, "the relayed list", || {
        dc3.counters().refused("relayed_datacenter") > 0
    })
    .await?;
    ensure!(
        ghosts(&dc3) <= MAX_RELAYED_DATACENTERS,
        "{} phantom DCs followed",
        ghosts(&dc3)
    );
    ensure!(dc3.counters().refused("relayed_datacenter") == (50 - MAX_RELAYED_DATACENTERS) as u64);
    let dc2 = dc3
        .datacenters()
        .into_iter()
        .find(|p| p.dc == "dc2")
        .map(|p| p.addresses)
        .unwrap_or_default();
    ensure!(
        dc2.first().map(String::as_str) == Some("127.0.0.1:9"),
        "dc2's configured address comes first: {dc2:?}"
    );
    ensure!(dc2.len() <= 1 + MAX_RELAYED_ADDRESSES, "{dc2:?}");
    ensure!(dc3.counters().refused("relayed_address") == (10 - MAX_RELAYED_ADDRESSES) as u64);
    // No phantom ever shows to readers (DNS, the HTTP API): none answered.
    ensure!(
        dc3.view()
            .datacenters()
            .iter()
            .all(|d| !d.starts_with("ghost")),
        "{:?}",
        dc3.view().datacenters()
    );

    // None answers: they are forgotten, and the relay, which repeats them every 100 ms, does not
    // bring them back.
    eventually(10, "phantoms forgotten", || ghosts(&dc3) == 0).await?;
    ensure!(
        dc3.counters().forgotten_datacenters.load(Ordering::Relaxed)
            >= MAX_RELAYED_DATACENTERS as u64
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    ensure!(ghosts(&dc3) == 0, "a relay brought phantoms back");
    ensure!(dc3.counters().refused("relayed_expired") > 0);
    // Sixteen phantoms that never answered: dc1's relays are no longer believed, so the 34
    // phantoms held back by the cap do not take their place.
    ensure!(dc3.counters().refused("relayed_distrusted") > 0);
    // The configured DCs stay, whatever answered.
    let known: Vec<String> = dc3.datacenters().into_iter().map(|p| p.dc).collect();
    ensure!(
        known == ["dc1", "dc2"],
        "{known:?} {:?} {}",
        [
            "relayed_expired",
            "relayed_distrusted",
            "relayed_datacenter",
            "relayed_address"
        ]
        .map(|r| dc3.counters().refused(r)),
        dc3.counters().forgotten_datacenters.load(Ordering::Relaxed)
    );
    dc3.shutdown().await;
    drop(dc3);

    // Nothing relayed reached the disk: a restart follows no phantom.
    let store = meridian_federation::store::Store::open(dir.path())?;
    let on_disk: Vec<String> = store
        .known_datacenters()?
        .into_iter()
        .map(|(dc, _)| dc)
        .collect();
    ensure!(
        on_disk.iter().all(|d| !d.starts_with("ghost")),
        "{on_disk:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_snapshot_is_refused_counted_and_the_replica_keeps_its_last_good_state()
-> Result<()> {
    // The first subscription gets a good snapshot of 10 entries and the stream ends; the next
    // ones get 5,000 entries, over the subscriber's cap of 1,000.
    let origin = ScriptedOrigin::start(
        "dc1",
        Script {
            messages: Box::new(|n| {
                let count = if n == 0 { 10 } else { 5_000 };
                snapshot(
                    (0..count).map(|i| entry(&format!("web{i}"))).collect(),
                    1 + u64::from(n),
                    vec![],
                )
            }),
            stay: false,
            heartbeat_datacenters: vec![],
        },
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let limits = Limits {
        max_replica_entries: 1_000,
        ..Limits::default()
    };
    let peers = vec![Peer {
        dc: "dc1".into(),
        addresses: vec![origin.addr.to_string()],
    }];
    let dc3 = node("dc3", dir.path(), peers, limits).await?;
    eventually(10, "the oversize snapshot refused", || {
        dc3.counters().refused("replica_entries") >= 1
    })
    .await?;
    ensure!(origin.subscriptions.load(Ordering::SeqCst) >= 2);
    let view = dc3.view();
    let Some(dc1) = view.remote("dc1") else {
        bail!("dc1 vanished from the view");
    };
    ensure!(dc1.synced && dc1.index == 1, "index {}", dc1.index);
    ensure!(
        dc1.state.instance_count() == 10,
        "{} instances: a refused snapshot leaked into the replica",
        dc1.state.instance_count()
    );
    dc3.shutdown().await;
    Ok(())
}
