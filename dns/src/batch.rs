//! Batched UDP I/O on Linux: up to [`BATCH`] datagrams per `recvmmsg` and per `sendmmsg`.
//!
//! Under load most of a DNS server's time goes to the kernel: one system call per datagram each
//! way, and waking the client once per answer. Batching both sides, as Knot does, pays those once
//! per batch. Nothing here blocks: the caller waits for readiness on its tokio socket.

use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

use nix::sys::socket::{
    ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg,
};

/// Most datagrams moved per system call.
pub(crate) const BATCH: usize = 32;
/// Room for one query; a larger datagram is no DNS query we answer (it arrives truncated and
/// fails to decode).
const SLOT: usize = 4096;

/// Receive buffers, reused across batches. (nix's message headers hold raw pointers and are not
/// `Send`, so they are built per system call: one small allocation per batch, not per query.)
pub(crate) struct UdpBatch {
    bufs: Vec<[u8; SLOT]>,
    received: Vec<(usize, Option<SocketAddr>)>,
}

fn to_std(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    a.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
}

impl UdpBatch {
    pub(crate) fn new() -> Self {
        UdpBatch {
            bufs: vec![[0u8; SLOT]; BATCH],
            received: Vec::with_capacity(BATCH),
        }
    }

    /// Receives what is queued, up to [`BATCH`] datagrams, without blocking. Returns how many.
    pub(crate) fn recv(&mut self, fd: RawFd) -> std::io::Result<usize> {
        let mut slices: Vec<[IoSliceMut<'_>; 1]> = self
            .bufs
            .iter_mut()
            .map(|b| [IoSliceMut::new(&mut b[..])])
            .collect();
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
        let got = recvmmsg(
            fd,
            &mut headers,
            slices.iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        )
        .map_err(std::io::Error::from)?;
        self.received.clear();
        for m in got {
            // A datagram cut to the slot size decodes as garbage: count it as such downstream.
            let len = if m.flags.contains(MsgFlags::MSG_TRUNC) {
                0
            } else {
                m.bytes.min(SLOT)
            };
            self.received
                .push((len, m.address.as_ref().and_then(to_std)));
        }
        Ok(self.received.len())
    }

    /// Datagram `i` of the last batch and its sender (`None` if the kernel gave no address).
    pub(crate) fn datagram(&self, i: usize) -> (&[u8], Option<SocketAddr>) {
        match (self.received.get(i), self.bufs.get(i)) {
            (Some((len, src)), Some(buf)) => (&buf[..*len], *src),
            _ => (&[], None),
        }
    }

    /// Sends `msgs` (at most [`BATCH`]) in one system call without blocking. Returns how many the
    /// kernel took; the caller sends the rest one by one.
    pub(crate) fn send(&self, fd: RawFd, msgs: &[(&[u8], SocketAddr)]) -> std::io::Result<usize> {
        if msgs.is_empty() {
            return Ok(0);
        }
        let slices: Vec<[IoSlice<'_>; 1]> = msgs.iter().map(|(m, _)| [IoSlice::new(m)]).collect();
        let addrs: Vec<Option<SockaddrStorage>> = msgs
            .iter()
            .map(|(_, a)| Some(SockaddrStorage::from(*a)))
            .collect();
        let cmsgs: [ControlMessage<'_>; 0] = [];
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(msgs.len(), None);
        let sent = sendmmsg(
            fd,
            &mut headers,
            &slices,
            &addrs,
            cmsgs,
            MsgFlags::MSG_DONTWAIT,
        )
        .map_err(std::io::Error::from)?;
        Ok(sent.count())
    }
}
