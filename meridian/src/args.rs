//! Argument groups more than one command shares: where a node listens ([`NodeArgs`], for `agent`
//! and `demo`) and which agent's API to talk to ([`ApiArgs`], for `services` and `members`).

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Args;
use meridian_node::config::Overrides;

/// Where a node listens and what it is called; every value overrides the config file.
#[derive(Debug, Clone, Default, Args)]
pub struct NodeArgs {
    /// Folder for the catalog's data (dev and demo: a temporary folder removed at exit).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address the listeners bind to.
    #[arg(long, value_name = "IP")]
    pub bind: Option<IpAddr>,
    /// Address other machines reach this node at (defaults to --bind).
    #[arg(long, value_name = "IP")]
    pub advertise: Option<IpAddr>,
    /// Node name (a DNS label).
    #[arg(long = "node", value_name = "NAME")]
    pub node_name: Option<String>,
    /// Datacenter name (a DNS label).
    #[arg(long, visible_alias = "dc", value_name = "DC")]
    pub datacenter: Option<String>,
    /// HTTP API port (default 8500; 0 picks a free one).
    #[arg(long, value_name = "N")]
    pub http_port: Option<u16>,
    /// DNS port (default 8600).
    #[arg(long, value_name = "N")]
    pub dns_port: Option<u16>,
    /// LAN gRPC port for Raft and write forwarding (default 8300).
    #[arg(long, value_name = "N")]
    pub rpc_port: Option<u16>,
    /// WAN gRPC port for federation (default 8302).
    #[arg(long, value_name = "N")]
    pub wan_port: Option<u16>,
    /// Gateway port (default 8443).
    #[arg(long, value_name = "N")]
    pub gateway_port: Option<u16>,
    /// WAN address (`host:port`) of a node of another datacenter to federate with; its
    /// datacenter, and the ones it knows, are learned from it. Repeatable.
    #[arg(long = "join-wan", value_name = "HOST:PORT")]
    pub join_wan: Vec<String>,
    /// Run only the gateway (and DNS): no catalog, no vote; follow this DC's servers, given
    /// with --follow, for the catalog.
    #[arg(long)]
    pub gateway_only: bool,
    /// WAN address (`host:port`) of a server of this node's DC, for --gateway-only. Repeatable.
    #[arg(long, value_name = "HOST:PORT")]
    pub follow: Vec<String>,
    /// Let a --dev agent listen on an address other than loopback (--bind). A --dev agent has
    /// no tokens and trusts a CA whose key is public: anyone who reaches it controls it.
    #[arg(long)]
    pub dev_listen_any: bool,
    /// The service mesh's trust domain (`[gateway] trust_domain`, the same in every DC): the
    /// DC's leader makes its mesh CA, and the gateway routes Consul's mesh SNI.
    #[arg(long, value_name = "DOMAIN")]
    pub trust_domain: Option<String>,
}

impl NodeArgs {
    /// The values given, as config overrides.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            data_dir: self.data_dir.clone(),
            bind: self.bind,
            advertise: self.advertise,
            node_name: self.node_name.clone(),
            datacenter: self.datacenter.clone(),
            http_port: self.http_port,
            dns_port: self.dns_port,
            rpc_port: self.rpc_port,
            wan_port: self.wan_port,
            gateway_port: self.gateway_port,
            join_wan: self.join_wan.clone(),
            gateway_only: self.gateway_only,
            follow: self.follow.clone(),
            dev_listen_any: self.dev_listen_any,
            trust_domain: self.trust_domain.clone(),
        }
    }
}

/// Where the HTTP API of the agent to talk to is.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// `host:port` (or URL) of the agent's HTTP API.
    #[arg(
        long,
        env = "MERIDIAN_HTTP_ADDR",
        default_value = "127.0.0.1:8500",
        global = true
    )]
    pub http_addr: String,
    /// ACL token sent with every request (`X-Consul-Token`).
    #[arg(
        long,
        env = "MERIDIAN_HTTP_TOKEN",
        global = true,
        hide_env_values = true
    )]
    pub token: Option<String>,
}
