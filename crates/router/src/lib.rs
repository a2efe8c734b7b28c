//! The per-host router: serves the fv0 device to local processes.

pub mod containers;
pub mod control;
pub mod engine;
pub mod etcd;
pub mod events;
pub mod fuse;
pub mod identity;
pub mod limits;
pub mod link;
pub mod memory;
pub mod nic;
pub mod nic_path;
pub mod objects;
pub mod rdma_cm;
pub mod registry;
pub mod semi;
mod server;
pub mod sysfs;
pub mod throttle;
pub mod transport;

use std::path::PathBuf;

/// How the router moves data (docs/DESIGN.md section 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The router copies between memory regions; full isolation.
    Isolated,
    /// Providers write straight into their peers' memory (`semi`).
    Semi,
}

/// Router configuration, from the command line.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the socket, the generated sysfs tree and other state live.
    pub runtime_dir: PathBuf,
    pub mode: Mode,
    /// Where routers of other hosts connect (None: this host only).
    pub listen: Option<std::net::SocketAddr>,
    /// Routers of other hosts to connect to.
    pub peers: Vec<std::net::SocketAddr>,
    /// Where GIDs are registered: None for the static registry (`--peer`
    /// and announcements), or etcd (`--registry`).
    pub registry: Option<etcd::EtcdConfig>,
    /// What clients may hold of the router (`limits`).
    pub limits: limits::Limits,
    /// Who may be a peer router, and the routers' shared key (`link`).
    pub link: link::LinkPolicy,
    /// Semi mode: which processes share memory (`semi::SemiShare`).
    pub semi_share: semi::SemiShare,
    /// Semi mode: the real devices that carry QPs to other hosts (`nic`),
    /// each GID of this host on one of them; none: the link carries them.
    pub nics: Vec<nic::Nic>,
    /// Semi mode over a NIC: QPs between two processes of this host go
    /// over the NIC too (loopback), not through shared memory. For tests.
    pub nic_loopback: bool,
    /// Where librdmacm's device is served (`rdma_cm`).
    pub rdma_cm: RdmaCmNode,
}

/// The node the router serves rdma_cm at.
#[derive(Clone, Debug)]
pub enum RdmaCmNode {
    /// `/dev/infiniband/rdma_cm` if free, else one named after the router.
    Default,
    /// This name under /dev (only: taken is an error).
    Named(String),
    /// Not served.
    None,
}

/// Runs the router in the foreground until SIGTERM or SIGINT.
pub fn run(config: Config) -> anyhow::Result<()> {
    server::Server::start(&config)?.run()
}
