//! Why a connection, or a tunnelled stream, was closed without being relayed: one error type for
//! every step of the path, each variant a stable reason for logs and the
//! `meridian_gateway_connections_total` outcome label, and, where the client spoke TLS, the
//! alert it is sent before the close.

use std::io;

use meridian_topology::ResolveError;

use crate::client_hello::HelloError;
use crate::route::{RouteError, UnknownName};
use crate::tunnel::TunnelError;

/// Why a connection was closed without being relayed; each variant is a stable log reason.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnError {
    /// The client did not send a routable ClientHello.
    #[error(transparent)]
    Hello(#[from] HelloError),
    /// The ClientHello did not arrive within the handshake timeout.
    #[error("no ClientHello within the handshake timeout")]
    HandshakeTimeout,
    /// The client closed before its ClientHello was complete.
    #[error("the client closed during the ClientHello")]
    ClientClosed,
    /// The SNI is not a name the gateway routes.
    #[error(transparent)]
    UnknownName(#[from] UnknownName),
    /// The name is a service, but it resolved to nothing.
    #[error("{sni}: {error}")]
    Resolve {
        /// The name asked for.
        sni: String,
        /// Why it resolved to nothing.
        error: ResolveError,
    },
    /// Every local instance of the name is at a gateway's address: relaying would loop.
    #[error("{sni}: every instance is at a gateway's address (refused: it would loop)")]
    SelfRoute {
        /// The name asked for.
        sni: String,
    },
    /// The name resolved to another datacenter, and this gateway has no tunnel.
    #[error("{sni} resolved to remote datacenter {dc}, but the tunnel is off")]
    Remote {
        /// The name asked for.
        sni: String,
        /// The datacenter it resolved to.
        dc: String,
    },
    /// Every candidate instance refused or timed out.
    #[error("no instance of {sni} accepted a connection ({tried} tried)")]
    NoInstance {
        /// The name asked for.
        sni: String,
        /// How many instances were tried.
        tried: usize,
    },
    /// The tunnel to the remote datacenter could not carry the connection.
    #[error(transparent)]
    Tunnel(#[from] TunnelError),
    /// A tunnelled stream named a datacenter other than this one (never relayed further).
    #[error("a tunnelled stream for datacenter {0} reached this one")]
    WrongDc(String),
    /// A tunnelled stream's header was malformed or late.
    #[error("bad tunnel header: {0}")]
    BadHeader(String),
    /// A tunnelled stream came while the gateway held `max_connections` (it would need a backend
    /// socket beyond the budget).
    #[error("the gateway is at its connection budget")]
    GatewayFull,
    /// A tunnelled stream came from a peer already holding its share of streams here.
    #[error("the remote peer holds its share of tunnelled streams")]
    PeerLimit,
    /// A tunnelled stream asked for a service this datacenter does not export.
    #[error("service {0} is not exported to other datacenters")]
    NotExported(String),
    /// Reading from or writing to a socket failed.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
}

impl ConnError {
    /// A short, stable name for the outcome, for logs and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            ConnError::Hello(e) => e.reason(),
            ConnError::HandshakeTimeout => "handshake_timeout",
            ConnError::ClientClosed => "client_closed",
            ConnError::UnknownName(e) => e.reason(),
            ConnError::Resolve { .. } => "no_healthy_instance",
            ConnError::SelfRoute { .. } => "self_route",
            ConnError::Remote { .. } => "remote",
            ConnError::NoInstance { .. } => "connect_failed",
            ConnError::Tunnel(TunnelError::Busy(_)) => "tunnel_busy",
            ConnError::Tunnel(TunnelError::ClientShare { .. }) => "client_share",
            ConnError::Tunnel(TunnelError::NoGateway(_)) => "no_remote_gateway",
            ConnError::Tunnel(_) => "tunnel_failed",
            ConnError::WrongDc(_) => "wrong_dc",
            ConnError::BadHeader(_) => "bad_tunnel_header",
            ConnError::GatewayFull => "gateway_full",
            ConnError::PeerLimit => "peer_limit",
            ConnError::NotExported(_) => "not_exported",
            ConnError::Io(_) => "io",
        }
    }

    /// The route label of a refused client connection: `local` or `remote` when it failed
    /// there, `none` when it was refused before a route was chosen.
    pub(crate) fn route(&self) -> &'static str {
        match self {
            ConnError::NoInstance { .. } | ConnError::SelfRoute { .. } | ConnError::Io(_) => {
                "local"
            }
            ConnError::Remote { .. } | ConnError::Tunnel(_) => "remote",
            _ => "none",
        }
    }

    /// The TLS alert to send before closing, where the client spoke TLS (RFC 8446 6.2).
    pub(crate) fn alert(&self) -> Option<u8> {
        const UNRECOGNIZED_NAME: u8 = 112;
        const INTERNAL_ERROR: u8 = 80;
        match self {
            ConnError::Hello(
                HelloError::NoSni | HelloError::InvalidSni { .. } | HelloError::DuplicateSni,
            )
            | ConnError::UnknownName(_) => Some(UNRECOGNIZED_NAME),
            ConnError::Resolve { .. }
            | ConnError::SelfRoute { .. }
            | ConnError::Remote { .. }
            | ConnError::NoInstance { .. }
            | ConnError::Tunnel(_) => Some(INTERNAL_ERROR),
            _ => None,
        }
    }
}

impl From<RouteError> for ConnError {
    fn from(e: RouteError) -> Self {
        match e {
            RouteError::UnknownName(e) => ConnError::UnknownName(e),
            RouteError::Resolve { sni, error } => ConnError::Resolve { sni, error },
            RouteError::SelfRoute { sni } => ConnError::SelfRoute { sni },
        }
    }
}
