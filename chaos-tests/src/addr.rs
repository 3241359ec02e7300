//! The address plan. Node `i` of datacenter `d` (both from 1) listens on `127.77.d.i`; its WAN
//! face, the address it advertises to other DCs (federation and gateway), is `127.78.d.i`, where
//! the [`crate::link`] proxy listens on the same ports and forwards to the node. Every packet
//! between DCs therefore crosses a link, and the link knows which DC sent it from the source
//! address (federation and tunnel connections leave from the node's bind address). Traffic
//! inside a DC (Raft) and from the test's clients goes straight to the node. Free ports on
//! these addresses come from [`meridian_testkit::free_port_on`].

use std::net::{IpAddr, Ipv4Addr};

/// Second octet of node addresses.
pub const NODE_NET: u8 = 77;
/// Second octet of link (WAN face) addresses.
pub const LINK_NET: u8 = 78;
/// Last octet of a DC's TLS backend address.
const BACKEND_HOST: u8 = 100;

fn octet(n: usize) -> u8 {
    // Callers use small DC and node numbers (a handful); clamp rather than wrap.
    u8::try_from(n).unwrap_or(u8::MAX)
}

/// Where node `node` of DC `dc` listens.
pub fn node_ip(dc: usize, node: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, NODE_NET, octet(dc), octet(node))
}

/// The WAN face of node `node` of DC `dc` (a link proxy listens there).
pub fn link_ip(dc: usize, node: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, LINK_NET, octet(dc), octet(node))
}

/// Where DC `dc`'s TLS backend (`web`) listens.
pub fn backend_ip(dc: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, NODE_NET, octet(dc), BACKEND_HOST)
}

/// The DC an address of the plan belongs to (node, backend or link address).
pub fn dc_of(ip: IpAddr) -> Option<usize> {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            (o[0] == 127 && (o[1] == NODE_NET || o[1] == LINK_NET) && o[2] > 0)
                .then_some(usize::from(o[2]))
        }
        IpAddr::V6(_) => None,
    }
}

/// The name of DC `dc`.
pub fn dc_name(dc: usize) -> String {
    format!("dc{dc}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_name_their_dc() {
        assert_eq!(dc_of(node_ip(2, 3).into()), Some(2));
        assert_eq!(dc_of(link_ip(3, 1).into()), Some(3));
        assert_eq!(dc_of(backend_ip(1).into()), Some(1));
        assert_eq!(dc_of(Ipv4Addr::LOCALHOST.into()), None);
    }
}
