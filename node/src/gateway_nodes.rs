//! Gateway-only nodes as their datacenter's servers see them. A gateway-only node has no catalog
//! of its own: it announces its gateway on its federation subscription to a server of its DC
//! (authenticated by its gateway certificate, which names the node), and that server registers
//! it here: the node (marked [`GATEWAY_ONLY_META`]) and its `meridian-gateway` instance at the
//! address other DCs reach it, with a TCP check of its port that the DC's Raft leader runs
//! (`catalog::health`). A gateway that stops answering turns critical, and is left out by its
//! own DC and by every remote DC's tunnel (`DcState::gateway_addrs` skips critical gateways).
//!
//! The registration is written only when the catalog does not already hold it as announced, so
//! a gateway that reconnects (to this server or another) costs no write, and does not reset
//! the status its check found.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meridian_catalog::{Catalog, Command, GATEWAY_ONLY_META};
use meridian_federation::{AnnouncedGateway, GatewayHook};
use meridian_topology::{
    Check, CheckKind, CheckSpec, GATEWAY_LAN_META, GATEWAY_SERVICE, Health, Instance, Node, View,
};

/// The check's ID on the gateway's node.
pub const CHECK_ID: &str = "meridian-gateway-alive";
/// How often the leader connects to a gateway-only node's port, and how long it waits.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// A gateway critical this long is deregistered (it was retired, not restarted).
const DEREGISTER_AFTER: Duration = Duration::from_secs(72 * 3600);
/// Tries of a registration (a write can fail while the DC elects a leader).
const TRIES: u32 = 8;

/// The hook a server gives federation: each announcement is registered on its own task.
pub fn registrar(catalog: Catalog) -> GatewayHook {
    Arc::new(move |gw: AnnouncedGateway| {
        let catalog = catalog.clone();
        tokio::spawn(async move { register(&catalog, gw).await });
    })
}

/// The `meridian-gateway` instance of the gateway of node `node`, which other DCs reach at
/// `advertised`: servers' gateways and gateway-only nodes' alike.
pub(crate) fn gateway_instance(
    node: &str,
    advertised: SocketAddr,
    meta: BTreeMap<String, String>,
) -> Instance {
    Instance {
        id: GATEWAY_SERVICE.to_owned(),
        service: GATEWAY_SERVICE.into(),
        node: node.into(),
        address: advertised.ip().to_string(),
        port: advertised.port(),
        tags: vec!["wan".to_owned()],
        meta,
        weights: Default::default(),
        create_index: 0,
        modify_index: 0,
        proxy: None,
    }
}

/// The node, instance and check that stand for `gw` in the catalog.
fn entries(gw: &AnnouncedGateway) -> (Node, Instance, Check) {
    let node = Node {
        name: gw.node.clone(),
        address: gw.address.ip().to_string(),
        meta: BTreeMap::from([(GATEWAY_ONLY_META.to_owned(), "true".to_owned())]),
        create_index: 0,
        modify_index: 0,
    };
    let meta = gw
        .http
        .map(|h| (crate::http::drills::HTTP_META.to_owned(), h.to_string()))
        .into_iter()
        .chain([(GATEWAY_LAN_META.to_owned(), gw.check.to_string())])
        .collect();
    let instance = gateway_instance(&gw.node, gw.address, meta);
    let check = Check {
        id: CHECK_ID.to_owned(),
        name: "Gateway port answers".to_owned(),
        node: gw.node.clone(),
        service_id: GATEWAY_SERVICE.to_owned(),
        service_name: GATEWAY_SERVICE.to_owned(),
        // It just proved itself alive by subscribing; the leader's check takes over.
        status: Health::Passing,
        output: String::new(),
        notes: String::new(),
        spec: Some(CheckSpec {
            kind: CheckKind::Tcp {
                address: gw.check.to_string(),
            },
            interval: CHECK_INTERVAL,
            timeout: CHECK_INTERVAL,
            deregister_critical_after: Some(DEREGISTER_AFTER),
        }),
        create_index: 0,
        modify_index: 0,
    };
    (node, instance, check)
}

/// Whether `view` holds `gw` as announced (whatever its check's status).
fn registered(view: &View, node: &Node, instance: &Instance, check: &Check) -> bool {
    let state = view.local();
    let same_node = state
        .node(&node.name)
        .is_some_and(|n| n.address == node.address && n.meta == node.meta);
    let same_instance = state
        .instance(&instance.node, &instance.id)
        .is_some_and(|i| {
            i.address == instance.address
                && i.port == instance.port
                && i.meta == instance.meta
                && i.tags == instance.tags
        });
    let same_check = state
        .check(&check.node, &check.id)
        .is_some_and(|c| c.spec == check.spec && c.service_id == check.service_id);
    same_node && same_instance && same_check
}

/// Registers `gw` unless the catalog holds it already; retried a few times with backoff.
async fn register(catalog: &Catalog, gw: AnnouncedGateway) {
    let (node, instance, check) = entries(&gw);
    let mut backoff = Duration::from_millis(100);
    for _ in 0..TRIES {
        if registered(&catalog.view(), &node, &instance, &check) {
            return;
        }
        let written = async {
            catalog
                .write(Command::RegisterNode { node: node.clone() })
                .await?;
            catalog
                .write(Command::Register {
                    instance: instance.clone(),
                    checks: vec![check.clone()],
                })
                .await
        };
        match written.await {
            Ok(_) => {
                tracing::info!(node = %gw.node, address = %gw.address, check = %gw.check, "registered a gateway-only node's gateway");
                return;
            }
            Err(e) => {
                tracing::debug!(node = %gw.node, error = %e, "cannot register the gateway yet")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
    tracing::warn!(node = %gw.node, "could not register a gateway-only node's gateway; it will be tried again when it reconnects");
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_topology::dc::DcState;

    fn announced() -> AnnouncedGateway {
        AnnouncedGateway {
            node: "g1".into(),
            address: "203.0.113.7:8443".parse().expect("addr"),
            check: "10.0.0.7:8443".parse().expect("addr"),
            http: Some("10.0.0.7:8500".parse().expect("addr")),
        }
    }

    #[test]
    fn a_gateway_is_registered_at_its_wan_address_and_checked_at_its_lan_one() {
        let (node, instance, check) = entries(&announced());
        assert_eq!(
            node.meta.get(GATEWAY_ONLY_META).map(String::as_str),
            Some("true")
        );
        assert_eq!(
            (instance.address.as_str(), instance.port),
            ("203.0.113.7", 8443)
        );
        assert_eq!(
            check.spec.as_ref().map(|s| &s.kind),
            Some(&CheckKind::Tcp {
                address: "10.0.0.7:8443".into()
            })
        );
    }

    #[test]
    fn only_a_changed_announcement_needs_a_write() {
        let gw = announced();
        let (node, instance, check) = entries(&gw);
        let mut state = DcState::default();
        let view = |s: &DcState| View::new("dc1", s.clone());
        assert!(!registered(&view(&state), &node, &instance, &check));
        state.upsert_node(node.clone(), 1);
        state.register(instance.clone(), vec![check.clone()], 2);
        assert!(registered(&view(&state), &node, &instance, &check));
        // The check found it dead meanwhile: the same announcement changes nothing.
        state.update_check("g1", CHECK_ID, Health::Critical, "refused", 3);
        assert!(registered(&view(&state), &node, &instance, &check));
        // Moved behind another NAT address: written again.
        let moved = AnnouncedGateway {
            address: "203.0.113.8:8443".parse().expect("addr"),
            ..gw
        };
        let (n2, i2, c2) = entries(&moved);
        assert!(!registered(&view(&state), &n2, &i2, &c2));
    }
}
