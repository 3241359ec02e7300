//! Feeds arbitrary bytes to the DNS request path (decode, answer, encode) over UDP and TCP.
#![no_main]

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hickory_server::net::xfer::Protocol;
use libfuzzer_sys::fuzz_target;
use meridian_dns::{DnsCounters, DnsHandler, DnsSettings, Prepared};
use meridian_topology::{DcState, Instance, View, Weights};

fn handler() -> DnsHandler {
    let mut s = DcState::default();
    for i in 0..5 {
        let inst = Instance {
            id: format!("web-{i}"),
            service: "web".into(),
            node: "n1".into(),
            address: format!("10.0.0.{i}"),
            port: 80,
            tags: vec!["v1".into()],
            meta: Default::default(),
            weights: Weights::default(),
            create_index: 0,
            modify_index: 0,
        };
        s.register(inst, vec![], 1);
    }
    DnsHandler::new(
        DnsSettings::new("consul", "n1"),
        Arc::new(ArcSwap::from_pointee(View::new("dc1", s))),
        Arc::new(DnsCounters::default()),
    )
}

fuzz_target!(|raw: &[u8]| {
    let h = handler();
    let src: SocketAddr = ([127, 0, 0, 1], 5353).into();
    for protocol in [Protocol::Udp, Protocol::Tcp] {
        if let Ok(req) = h.decode(raw, src, protocol)
            && let Prepared::Reply(reply) = h.prepare(&req)
        {
            let mut out = Vec::new();
            h.encode(&req, &reply, &mut out);
        }
    }
});
