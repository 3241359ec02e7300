//! Address prefixes (`10.0.0.0/8`, `fd00::/8`) and the classes of address policy decisions
//! use: which sources are local to a site (loopback, private, link-local), as opposed to the
//! public Internet, where a spoofed source could belong to anyone.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An address prefix: the addresses whose first `len` bits are `net`'s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Prefix {
    net: IpAddr,
    len: u8,
}

/// Why a prefix does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not an address prefix ({reason}); write it as 10.1.0.0/16 or fd00::/8")]
pub struct PrefixError {
    text: String,
    reason: &'static str,
}

impl Prefix {
    /// The prefix of `net`'s first `len` bits (the rest of `net` is ignored); `None` when `len`
    /// is longer than the address.
    pub fn new(net: IpAddr, len: u8) -> Option<Prefix> {
        let net = net.to_canonical();
        let bits = match net {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        (len <= bits).then(|| Prefix {
            net: mask(net, len),
            len,
        })
    }

    /// The prefix of one address.
    pub fn host(ip: IpAddr) -> Prefix {
        let ip = ip.to_canonical();
        let len = if ip.is_ipv4() { 32 } else { 128 };
        Prefix { net: ip, len }
    }

    /// Whether `ip` is in this prefix (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.net.is_ipv4() && mask(ip, self.len) == self.net
    }
}

fn mask(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let m = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & m).into())
        }
        IpAddr::V6(v6) => {
            let m = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & m).into())
        }
    }
}

impl FromStr for Prefix {
    type Err = PrefixError;

    /// `addr/len`, or a bare address (one host).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |reason| PrefixError {
            text: text.to_owned(),
            reason,
        };
        let (addr, len) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let ip: IpAddr = addr.parse().map_err(|_| err("not an IP address"))?;
        match len {
            None => Ok(Prefix::host(ip)),
            Some(l) => {
                let len: u8 = l.parse().map_err(|_| err("the length is not a number"))?;
                Prefix::new(ip, len).ok_or_else(|| err("the length is longer than the address"))
            }
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.len)
    }
}

/// Whether `ip` can only be a source inside a site: loopback, private (RFC 1918, shared
/// 100.64.0.0/10, unique-local fc00::/7) or link-local. Such a source cannot be spoofed from the
/// Internet at large, and answers sent to one stay inside the site.
pub fn is_site_local(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let shared =
                (u32::from(v4) >> 22) == (u32::from(std::net::Ipv4Addr::new(100, 64, 0, 0)) >> 22);
            v4.is_loopback() || v4.is_private() || v4.is_link_local() || shared
        }
        IpAddr::V6(v6) => v6.is_loopback() || v6.is_unique_local() || v6.is_unicast_link_local(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn prefixes_parse_mask_and_contain() {
        let p: Prefix = "10.1.2.3/16".parse().expect("v4");
        assert_eq!(p.to_string(), "10.1.0.0/16");
        assert!(p.contains(ip("10.1.255.1")) && !p.contains(ip("10.2.0.1")));
        assert!(p.contains(ip("::ffff:10.1.0.9")), "v4-mapped counts as v4");
        let h: Prefix = "192.0.2.7".parse().expect("host");
        assert!(h.contains(ip("192.0.2.7")) && !h.contains(ip("192.0.2.8")));
        let all: Prefix = "0.0.0.0/0".parse().expect("all");
        assert!(all.contains(ip("203.0.113.9")) && !all.contains(ip("::1")));
        let v6: Prefix = "fd00::/8".parse().expect("v6");
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        for bad in ["10.0.0.0/33", "::/129", "x/8", "10.0.0.0/", "10.0.0.0/a"] {
            assert!(bad.parse::<Prefix>().is_err(), "{bad}");
        }
    }

    #[test]
    fn site_local_sources_are_the_ones_the_internet_cannot_send() {
        for local in [
            "127.0.0.1",
            "10.9.8.7",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.1.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_site_local(ip(local)), "{local}");
        }
        for public in [
            "8.8.8.8",
            "100.128.0.1",
            "172.32.0.1",
            "2001:db8::1",
            "::ffff:1.1.1.1",
        ] {
            assert!(!is_site_local(ip(public)), "{public}");
        }
    }
}
