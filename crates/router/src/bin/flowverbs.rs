//! `flowverbs`: the router, installation of the provider, and running
//! programs with the device `fv0`.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The `.driver` file naming the provider for the stock libibverbs.
const DRIVER_TEMPLATE: &str = include_str!("../../provider-config/flowverbs.driver");
/// libibverbs' compiled-in config directory.
const DRIVER_CONFIG: &str = "/etc/libibverbs.d/flowverbs.driver";
/// libibverbs' compiled-in provider directory (Debian multiarch).
#[cfg(target_arch = "x86_64")]
const PROVIDER_DIR: &str = "/usr/lib/x86_64-linux-gnu/libibverbs";
#[cfg(target_arch = "aarch64")]
const PROVIDER_DIR: &str = "/usr/lib/aarch64-linux-gnu/libibverbs";
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const PROVIDER_DIR: &str = "/usr/lib/libibverbs";
/// The file name libibverbs looks for (`lib<name>` + `-rdmav34.so`).
const PROVIDER_FILE: &str = "libflowverbs-rdmav34.so";
/// The suffix libibverbs appends to every driver name.
const PROVIDER_SUFFIX: &str = "-rdmav34.so";
/// What cargo builds.
const BUILT_PROVIDER: &str = "libflowverbs.so";
const DEFAULT_RUNTIME_DIR: &str = "/run/flowverbs";
/// A spec for the running router: transient, like the router (CDI reads
/// /etc/cdi and /var/run/cdi; the latter wins).
const DEFAULT_CDI_SPEC: &str = "/var/run/cdi/flowverbs.json";
/// containers-common's default profile (podman's).
const DEFAULT_SECCOMP_BASE: &str = "/usr/share/containers/seccomp.json";

#[derive(Parser, Debug)]
#[command(
    name = "flowverbs",
    version,
    about = "RDMA verbs for containers: the fv0 device"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ModeArg {
    /// The router copies between memory regions (default).
    Isolated,
    /// Peers on one host write into each other's memory.
    Semi,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum SemiShareArg {
    /// One uid in the same user, pid and network namespaces (default).
    SameContainer,
    /// One uid in the same user namespace.
    SameUser,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the per-host router in the foreground (until SIGTERM/SIGINT).
    Router {
        /// Where the socket and the generated sysfs tree live.
        #[arg(long, default_value = DEFAULT_RUNTIME_DIR)]
        runtime_dir: PathBuf,
        #[arg(long, value_enum, default_value_t = ModeArg::Isolated)]
        mode: ModeArg,
        /// Semi mode: which processes may map each other's registered
        /// memory (others keep the router's path).
        #[arg(long, value_enum, default_value_t = SemiShareArg::SameContainer)]
        semi_share: SemiShareArg,
        /// Semi mode: a real RDMA device (and port, default 1) that
        /// carries QPs to other hosts; repeatable (rails: each container
        /// posts to one of them, spread evenly); `auto` (default): the
        /// device whose GID table holds an address of this host, if any;
        /// `none`: the routers' link carries them.
        #[arg(long, value_name = "DEVICE[:PORT]|auto|none", default_values_t = ["auto".to_string()])]
        nic: Vec<String>,
        /// Semi mode over a NIC: QPs between processes of this host go
        /// over the NIC too, not through shared memory (for testing).
        #[arg(long)]
        nic_loopback: bool,
        /// Accept connections from the routers of other hosts on IP:PORT
        /// (a specific address: it is this router's name among routers).
        #[arg(long, value_name = "IP:PORT")]
        listen: Option<std::net::SocketAddr>,
        /// A router on another host to connect to (repeatable). GIDs are
        /// learned from the peers themselves.
        #[arg(long = "peer", value_name = "IP:PORT", requires = "listen")]
        peers: Vec<std::net::SocketAddr>,
        /// Where routers register themselves and their GIDs and look up
        /// each other's: etcd://HOST:PORT[,HOST:PORT...] (etcd v3). Without
        /// it, routers come from --peer and GIDs from their announcements.
        /// With it, routers connect to each other on demand.
        #[arg(
            long,
            value_name = "etcd://HOST:PORT[,...]",
            requires = "listen",
            conflicts_with = "peers"
        )]
        registry: Option<String>,
        /// Seconds a router's etcd registrations outlive it (its lease).
        #[arg(
            long,
            value_name = "SECONDS",
            default_value_t = 10,
            requires = "registry"
        )]
        registry_ttl: u64,
        /// Routers that are not a --peer but may connect from these
        /// addresses (repeatable CIDR, e.g. 10.0.0.0/24); they get a
        /// connection back. Without it only --peer routers are accepted.
        #[arg(long = "accept-peers", value_name = "CIDR", requires = "listen")]
        accept_peers: Vec<ipnet::IpNet>,
        /// A file holding the routers' shared key: a router must prove it
        /// to connect (HMAC of a challenge). The same file on every host.
        #[arg(long, value_name = "FILE", requires = "listen")]
        link_key: Option<PathBuf>,
        /// Seconds a client connection may take to say Hello.
        #[arg(long, value_name = "SECONDS", default_value_t = 5)]
        hello_timeout: u64,
        /// The node to serve rdma_cm at, under /dev (e.g.
        /// infiniband/rdma_cm_a), or `none`. Default:
        /// infiniband/rdma_cm if it is free, else
        /// infiniband/rdma_cm_fv<hash> (RUNTIME_DIR/rdma_cm.node says which).
        #[arg(long, value_name = "NAME|none")]
        rdma_cm_node: Option<String>,
        /// Caps per user and per context.
        #[command(flatten)]
        limits: Box<LimitArgs>,
    },
    /// Install the provider and /etc/libibverbs.d/flowverbs.driver.
    Install {
        /// The provider to install [default: libflowverbs.so beside this executable].
        #[arg(long)]
        provider: Option<PathBuf>,
    },
    /// Remove what `install` wrote.
    Uninstall,
    /// Print the environment (KEY=VALUE lines) a process needs to see fv0.
    Env(EnvArgs),
    /// Show the router's sessions: process, GID, the verbs objects each
    /// owns and each QP's state and data path. Root of the host sees every
    /// session; others see those of their own user (and namespaces).
    Status {
        /// The router's runtime directory.
        #[arg(long, default_value = DEFAULT_RUNTIME_DIR)]
        runtime_dir: PathBuf,
        /// One JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Write the CDI spec that gives containers fv0 of the running router
    /// (`podman run --device flowverbs.io/rdma=fv0`): its device node, its
    /// runtime directory (recursive bind), the provider and the
    /// environment; in semi mode over a NIC also the real devices' nodes
    /// and providers.
    Cdi {
        /// The router's runtime directory.
        #[arg(long, default_value = DEFAULT_RUNTIME_DIR)]
        runtime_dir: PathBuf,
        /// The provider the containers get [default: the one `flowverbs
        /// install` put in libibverbs' folder].
        #[arg(long)]
        provider: Option<PathBuf>,
        /// Where to write the spec (`-`: standard output).
        #[arg(long, short, default_value = DEFAULT_CDI_SPEC)]
        output: PathBuf,
        /// The spec's `cdiVersion` [default: the newest the installed
        /// podman accepts: 0.5.0 before podman 4.8, else 0.6.0].
        #[arg(long, value_name = "VERSION")]
        cdi_version: Option<String>,
    },
    /// Print an OCI seccomp profile for containers using fv0 on a host
    /// whose kernel has RDMA: the base profile (podman's default) plus the
    /// rule `flowverbs exec` installs, socket(AF_NETLINK, *, NETLINK_RDMA)
    /// failing with EPROTONOSUPPORT.
    SeccompProfile {
        /// The profile to extend.
        #[arg(long, default_value = DEFAULT_SECCOMP_BASE)]
        base: PathBuf,
        /// The netlink protocol to deny (tests use one the kernel has).
        #[arg(long, hide = true, default_value_t = flowverbs_router::containers::NETLINK_RDMA)]
        netlink_protocol: u64,
    },
    /// Run PROGRAM with that environment (execvp: no child process), with
    /// RDMA netlink blocked so that libibverbs reads the generated tree.
    /// Where the router's rdma_cm node is not /dev/infiniband/rdma_cm (a
    /// host whose kernel or another router has that name), PROGRAM runs in
    /// a mount namespace of its own with the router's node mounted there
    /// (root only; otherwise a warning), so that librdmacm opens it.
    Exec {
        #[command(flatten)]
        env: EnvArgs,
        /// The program and its arguments (after `--`).
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        program: Vec<OsString>,
    },
}

/// What clients may hold of the router and how fast they may ask
/// (`flowverbs_router::limits`).
#[derive(clap::Args, Debug)]
struct LimitArgs {
    /// Most sessions (opened device contexts) one user may hold.
    #[arg(long, value_name = "N", default_value_t = flowverbs_router::limits::Limits::default().sessions_per_uid)]
    max_sessions_per_user: usize,
    /// Most CQs, QPs, SRQs and completion channels one context may hold.
    #[arg(long, value_name = "N", default_value_t = flowverbs_router::limits::Limits::default().objects_per_session)]
    max_objects_per_context: usize,
    /// Most CQs, QPs, SRQs and completion channels one user may hold
    /// [default: a quarter of the router's descriptors and mappings].
    #[arg(long, value_name = "N")]
    max_objects_per_user: Option<usize>,
    /// Most QPs one context may hold.
    #[arg(long, value_name = "N", default_value_t = flowverbs_router::limits::Limits::default().qps_per_session)]
    max_qps_per_context: u64,
    /// Most QPs one user may hold [default: as --max-objects-per-user].
    #[arg(long, value_name = "N")]
    max_qps_per_user: Option<u64>,
    /// Most CQs one context may hold.
    #[arg(long, value_name = "N", default_value_t = flowverbs_router::limits::Limits::default().cqs_per_session)]
    max_cqs_per_context: u64,
    /// Most CQs one user may hold [default: as --max-objects-per-user].
    #[arg(long, value_name = "N")]
    max_cqs_per_user: Option<u64>,
    /// Most MRs one context may hold.
    #[arg(long, value_name = "N", default_value_t = flowverbs_router::limits::Limits::default().mrs_per_session)]
    max_mrs_per_context: u64,
    /// Most MRs one user may hold.
    #[arg(long, value_name = "N", default_value_t = flowverbs_router::limits::Limits::default().mrs_per_uid)]
    max_mrs_per_user: u64,
    /// Most bytes one user may have registered (the sum of its MRs'
    /// lengths; suffixes K, M, G, T) [default: no cap].
    #[arg(long, value_name = "BYTES", value_parser = flowverbs_router::limits::parse_bytes)]
    max_registered_bytes_per_user: Option<u64>,
    /// Most queue entries one user may hold: the depths of its send
    /// and receive queues, SRQs and CQs, which bound its outstanding
    /// work requests and completions.
    #[arg(long, value_name = "N", default_value_t = flowverbs_router::limits::Limits::default().queue_entries_per_uid)]
    max_queue_entries_per_user: u64,
    /// Most bytes one user's QPs may have on the links to other hosts,
    /// sent and not yet answered (suffixes K, M, G, T); past it they wait
    /// for answers before sending more [default: no cap].
    #[arg(long, value_name = "BYTES", value_parser = flowverbs_router::limits::parse_bytes)]
    max_link_bytes_per_user: Option<u64>,
    /// Most control requests (creating, modifying or querying objects)
    /// one context may send per second, and at once; more fail with
    /// EAGAIN.
    #[arg(long, value_name = "N", default_value_t = flowverbs_router::limits::Limits::default().requests_per_second,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_requests_per_second: u32,
    /// Most rdma_cm ids one user may hold (the children of connection
    /// requests included); more fail with ENOMEM, requests are rejected.
    #[arg(long, value_name = "N", default_value_t = flowverbs_router::rdma_cm::CmLimits::default().ids_per_user,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_cm_ids_per_user: usize,
    /// Most connection requests one user's listeners may hold unanswered;
    /// more are rejected.
    #[arg(long, value_name = "N", default_value_t = flowverbs_router::rdma_cm::CmLimits::default().pending_per_user,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_cm_pending_per_user: usize,
    /// The largest listen backlog (a larger or non-positive one asks for
    /// this).
    #[arg(long, value_name = "N", default_value_t = flowverbs_router::rdma_cm::CmLimits::default().max_backlog,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_cm_backlog: usize,
    /// Most rdma_cm descriptors one user may hold open; more fail with
    /// EMFILE.
    #[arg(long, value_name = "N", default_value_t = flowverbs_router::rdma_cm::CmLimits::default().files_per_user,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_cm_files_per_user: usize,
}

impl LimitArgs {
    fn limits(&self, hello_timeout: u64) -> flowverbs_router::limits::Limits {
        let d = flowverbs_router::limits::Limits::default();
        let objects_per_uid = self.max_objects_per_user.unwrap_or(d.objects_per_uid);
        flowverbs_router::limits::Limits {
            sessions_per_uid: self.max_sessions_per_user,
            objects_per_session: self.max_objects_per_context,
            objects_per_uid,
            hello_within: std::time::Duration::from_secs(hello_timeout),
            qps_per_session: self.max_qps_per_context,
            qps_per_uid: self.max_qps_per_user.unwrap_or(objects_per_uid as u64),
            cqs_per_session: self.max_cqs_per_context,
            cqs_per_uid: self.max_cqs_per_user.unwrap_or(objects_per_uid as u64),
            mrs_per_session: self.max_mrs_per_context,
            mrs_per_uid: self.max_mrs_per_user,
            registered_bytes_per_uid: self.max_registered_bytes_per_user,
            queue_entries_per_uid: self.max_queue_entries_per_user,
            requests_per_second: self.max_requests_per_second,
            link_bytes_per_uid: self.max_link_bytes_per_user,
            rdma_cm: flowverbs_router::rdma_cm::CmLimits {
                ids_per_user: self.max_cm_ids_per_user,
                pending_per_user: self.max_cm_pending_per_user,
                max_backlog: self.max_cm_backlog,
                files_per_user: self.max_cm_files_per_user,
            },
            ..d
        }
    }
}

#[derive(clap::Args, Debug)]
struct EnvArgs {
    /// The router's runtime directory.
    #[arg(long, default_value = DEFAULT_RUNTIME_DIR)]
    runtime_dir: PathBuf,
    /// A provider file named `lib<x>-rdmav34.so`, loaded through
    /// RDMAV_DRIVERS [default: the installed one, else
    /// libflowverbs-rdmav34.so beside this executable].
    #[arg(long)]
    provider: Option<PathBuf>,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::new().filter_or("FLOWVERBS_LOG", "warn")).init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flowverbs: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The routers' shared key from `file`: its bytes, at least 16 of them
/// (trailing newline and blanks removed).
fn read_link_key(file: &Path) -> anyhow::Result<Vec<u8>> {
    let mut key =
        fs::read(file).with_context(|| format!("reading the link key {}", file.display()))?;
    while key.last().is_some_and(|b| b.is_ascii_whitespace()) {
        key.pop();
    }
    if key.len() < 16 {
        bail!("the link key in {} has {} bytes; use at least 16 (e.g. `head -c 32 /dev/urandom | base64`)", file.display(), key.len());
    }
    Ok(key)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Cmd::Router {
            runtime_dir,
            mode,
            semi_share,
            nic,
            nic_loopback,
            listen,
            peers,
            registry,
            registry_ttl,
            accept_peers,
            link_key,
            hello_timeout,
            rdma_cm_node,
            limits,
        } => {
            let rdma_cm = match rdma_cm_node.as_deref() {
                None => flowverbs_router::RdmaCmNode::Default,
                Some("none") => flowverbs_router::RdmaCmNode::None,
                Some(name) => flowverbs_router::RdmaCmNode::Named(
                    flowverbs_router::rdma_cm::node_name(name).map_err(|e| anyhow::anyhow!(e))?,
                ),
            };
            let registry = registry
                .map(|url| flowverbs_router::etcd::EtcdConfig::parse(&url, registry_ttl))
                .transpose()
                .map_err(|e| anyhow::anyhow!(e))?;
            let mode = match mode {
                ModeArg::Isolated => flowverbs_router::Mode::Isolated,
                ModeArg::Semi => flowverbs_router::Mode::Semi,
            };
            let nics = choose_nics(mode, &nic, nic_loopback)?;
            flowverbs_router::run(flowverbs_router::Config {
                runtime_dir,
                mode,
                listen,
                peers,
                registry,
                limits: limits.limits(hello_timeout),
                semi_share: match semi_share {
                    SemiShareArg::SameContainer => flowverbs_router::semi::SemiShare::SameContainer,
                    SemiShareArg::SameUser => flowverbs_router::semi::SemiShare::SameUser,
                },
                nics,
                nic_loopback,
                rdma_cm,
                link: flowverbs_router::link::LinkPolicy {
                    key: link_key.map(|f| read_link_key(&f)).transpose()?,
                    accept_from: accept_peers,
                },
            })
            .context("router failed")
        }
        Cmd::Install { provider } => install(provider),
        Cmd::Uninstall => uninstall(),
        Cmd::Env(args) => {
            let mut out = io::stdout().lock();
            let (vars, nic) = environment(&args)?;
            if let Some(nic) = nic {
                eprintln!("{}", nic_needs(&nic));
            }
            for (k, v) in vars {
                writeln!(out, "{k}={}", v.display())?;
            }
            Ok(())
        }
        Cmd::Exec { env, program } => exec(&env, &program),
        Cmd::Cdi {
            runtime_dir,
            provider,
            output,
            cdi_version,
        } => cdi(&runtime_dir, provider, &output, cdi_version),
        Cmd::SeccompProfile {
            base,
            netlink_protocol,
        } => {
            let text = fs::read_to_string(&base).with_context(|| {
                format!(
                    "reading the base profile {} (give --base FILE)",
                    base.display()
                )
            })?;
            let base: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", base.display()))?;
            let profile = flowverbs_router::containers::seccomp_profile(&base, netlink_protocol)?;
            let mut out = io::stdout().lock();
            serde_json::to_writer_pretty(&mut out, &profile)?;
            writeln!(out)?;
            Ok(())
        }
        Cmd::Status { runtime_dir, json } => status(&runtime_dir, json),
    }
}

fn exe_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("finding this executable")?;
    Ok(exe
        .parent()
        .context("this executable has no directory")?
        .to_path_buf())
}

fn hint_root(e: io::Error) -> anyhow::Error {
    if e.kind() == io::ErrorKind::PermissionDenied {
        anyhow::Error::new(e).context("permission denied (run as root)")
    } else {
        e.into()
    }
}

/// Writes `dest` through a temporary file in the same directory and a rename.
fn install_file(dest: &Path, write: impl FnOnce(&Path) -> io::Result<()>) -> anyhow::Result<()> {
    let dir = dest.parent().context("destination without directory")?;
    fs::create_dir_all(dir)
        .map_err(hint_root)
        .with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        dest.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> io::Result<()> {
        write(&tmp)?;
        fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        fs::File::open(&tmp)?.sync_all()?;
        fs::rename(&tmp, dest)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(hint_root(e)).with_context(|| format!("writing {}", dest.display()));
    }
    Ok(())
}

fn install(provider: Option<PathBuf>) -> anyhow::Result<()> {
    let src = match provider {
        Some(p) => p,
        None => exe_dir()?.join(BUILT_PROVIDER),
    };
    if !src.is_file() {
        bail!(
            "provider {} not found: build it (cargo build --release) or pass --provider PATH",
            src.display()
        );
    }
    let dest = Path::new(PROVIDER_DIR).join(PROVIDER_FILE);
    install_file(&dest, |tmp| fs::copy(&src, tmp).map(|_| ()))
        .with_context(|| format!("installing {}", src.display()))?;
    install_file(Path::new(DRIVER_CONFIG), |tmp| {
        fs::write(tmp, DRIVER_TEMPLATE)
    })?;
    println!("installed {} and {}", dest.display(), DRIVER_CONFIG);
    Ok(())
}

fn uninstall() -> anyhow::Result<()> {
    for path in [
        Path::new(PROVIDER_DIR).join(PROVIDER_FILE),
        PathBuf::from(DRIVER_CONFIG),
    ] {
        match fs::remove_file(&path) {
            Ok(()) => println!("removed {}", path.display()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(hint_root(e)).with_context(|| format!("removing {}", path.display()))
            }
        }
    }
    Ok(())
}

/// Whether `flowverbs install` has put the provider where libibverbs finds
/// it by itself.
fn system_installed() -> bool {
    Path::new(PROVIDER_DIR).join(PROVIDER_FILE).is_file() && Path::new(DRIVER_CONFIG).is_file()
}

/// The value of RDMAV_DRIVERS for a provider file `…/lib<x>-rdmav34.so`:
/// the path without the suffix, which libibverbs appends.
fn rdmav_drivers_for(provider: &Path) -> anyhow::Result<PathBuf> {
    let abs =
        fs::canonicalize(provider).with_context(|| format!("provider {}", provider.display()))?;
    let name = provider
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some(stem) = name.strip_suffix(PROVIDER_SUFFIX) else {
        bail!(
            "provider {} must be named lib<name>{PROVIDER_SUFFIX} (libibverbs appends that suffix to RDMAV_DRIVERS)",
            provider.display()
        );
    };
    // Keep the name given (it may be a symlink), in the canonical directory.
    let dir = abs.parent().context("provider without directory")?;
    let dir = provider
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(|p| fs::canonicalize(p).unwrap_or_else(|_| dir.to_path_buf()))
        .unwrap_or_else(|| dir.to_path_buf());
    Ok(dir.join(stem))
}

/// The NICs the `--nic` options name (semi mode only).
fn choose_nics(
    mode: flowverbs_router::Mode,
    specs: &[String],
    loopback: bool,
) -> anyhow::Result<Vec<flowverbs_router::nic::Nic>> {
    use flowverbs_router::nic;
    let sysfs = Path::new(nic::SYSFS);
    let keyword = |s: &String| s == "auto" || s == "none";
    if specs.len() > 1 && specs.iter().any(keyword) {
        bail!("--nic auto and --nic none stand alone (several --nic name devices)");
    }
    if mode != flowverbs_router::Mode::Semi {
        if !specs.iter().all(keyword) || loopback {
            bail!("--nic and --nic-loopback need --mode semi");
        }
        return Ok(Vec::new());
    }
    let mut chosen = Vec::new();
    for spec in specs {
        match spec.as_str() {
            "none" => {}
            "auto" => {
                let addrs: Vec<std::net::Ipv4Addr> = flowverbs_router::identity::ipv4_addresses()
                    .into_iter()
                    .map(|(_, a)| a)
                    .collect();
                chosen.extend(nic::automatic(sysfs, &addrs));
            }
            named => {
                let n = nic::named(sysfs, named)?;
                if chosen.contains(&n) {
                    bail!("--nic {named} is given twice");
                }
                chosen.push(n);
            }
        }
    }
    if loopback && chosen.is_empty() {
        bail!("--nic-loopback needs a NIC (--nic DEVICE)");
    }
    Ok(chosen)
}

/// The variables a process needs to see the router's fv0 (see README):
/// - `SYSFS_PATH=<runtime dir>/sysfs` (the provider finds the router's
///   socket beside it);
/// - `RDMAV_DRIVERS`, unless the provider is installed system-wide: from
///   `--provider`, else `libflowverbs-rdmav34.so` beside this executable.
type NicBinding = flowverbs_wire::control::NicBinding;
/// `KEY=VALUE` pairs of an environment.
type Vars = Vec<(&'static str, PathBuf)>;

/// The variables, and the router's NIC (semi mode over a NIC).
fn environment(args: &EnvArgs) -> anyhow::Result<(Vars, Option<NicBinding>)> {
    let runtime_dir = fs::canonicalize(&args.runtime_dir).with_context(|| {
        format!(
            "runtime dir {}: is `flowverbs router` running?",
            args.runtime_dir.display()
        )
    })?;
    let (sysfs, nic) = device_view(&runtime_dir).with_context(|| {
        format!(
            "asking the router in {} for this network namespace's device tree: is `flowverbs router --runtime-dir {}` running?",
            runtime_dir.display(),
            args.runtime_dir.display()
        )
    })?;
    if !sysfs.join("class/infiniband_verbs").is_dir() {
        bail!(
            "the router answered with {}, which has no device tree",
            sysfs.display()
        );
    }
    let mut vars = vec![("SYSFS_PATH", sysfs)];
    if let Some(p) = &args.provider {
        vars.push(("RDMAV_DRIVERS", rdmav_drivers_for(p)?));
    } else if !system_installed() {
        let beside = exe_dir()?.join(PROVIDER_FILE);
        if beside.is_file() {
            vars.push(("RDMAV_DRIVERS", rdmav_drivers_for(&beside)?));
        } else {
            bail!(
                "the provider is not installed ({}/{PROVIDER_FILE}): run `flowverbs install` or pass --provider PATH",
                PROVIDER_DIR
            );
        }
    }
    Ok((vars, nic))
}

/// Asks the router one question on a connection of its own.
fn ask_router(
    runtime_dir: &Path,
    request: &flowverbs_wire::control::Request,
) -> anyhow::Result<flowverbs_wire::control::Reply> {
    use flowverbs_wire::control::{self, Reply};
    use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};
    use std::os::fd::{AsFd, AsRawFd};
    let sock = socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::connect(
        sock.as_raw_fd(),
        &UnixAddr::new(&runtime_dir.join("router.sock"))?,
    )?;
    control::send(sock.as_fd(), request, &[])?;
    match control::recv::<Reply>(sock.as_fd(), MsgFlags::empty())?.0 {
        Reply::Error { message, .. } => bail!("the router refused: {message}"),
        other => Ok(other),
    }
}

/// Asks the router which `SYSFS_PATH` shows this process's network
/// namespace its own GID (the router reads the namespace's address itself).
fn device_view(runtime_dir: &Path) -> anyhow::Result<(PathBuf, Option<NicBinding>)> {
    use flowverbs_wire::control::{Reply, Request};
    match ask_router(runtime_dir, &Request::DeviceView)? {
        Reply::DeviceView { sysfs_path, nic } => Ok((PathBuf::from(sysfs_path), nic)),
        other => bail!("unexpected reply {other:?}"),
    }
}

/// libibverbs' provider of a real device: its driver name (from the
/// device's name: `mlx5_0` -> `mlx5`, `rxe0` -> `rxe`), and the library
/// if this host has it.
fn vendor_provider(device: &str) -> (String, Option<PathBuf>) {
    let driver = device
        .trim_end_matches(|c: char| c.is_ascii_digit())
        .trim_end_matches('_')
        .to_string();
    let file = format!("lib{driver}-rdmav34.so");
    let library = [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib64",
    ]
    .iter()
    .map(|d| Path::new(d).join("libibverbs").join(&file))
    .find(|p| p.is_file());
    (driver, library)
}

/// `flowverbs cdi`.
fn cdi(
    runtime_dir: &Path,
    provider: Option<PathBuf>,
    output: &Path,
    cdi_version: Option<String>,
) -> anyhow::Result<()> {
    use flowverbs_router::containers::{cdi_spec, cdi_version_for_podman, CdiInput, VendorDevice};
    let dir = fs::canonicalize(runtime_dir).with_context(|| {
        format!(
            "runtime dir {}: is `flowverbs router` running?",
            runtime_dir.display()
        )
    })?;
    let (_, nic) = device_view(&dir).with_context(|| {
        format!(
            "asking the router in {}: is `flowverbs router --runtime-dir {}` running?",
            dir.display(),
            runtime_dir.display()
        )
    })?;
    // Every container reads the tree the router's FUSE mount serves.
    if !dir.join("fuse/sysfs/class/infiniband_verbs").is_dir() {
        bail!(
            "the router in {} serves no device tree at fuse/sysfs (it could not mount FUSE: \
             it needs CAP_SYS_ADMIN and /dev/fuse; see its log)",
            dir.display()
        );
    }
    let dev_node = Path::new("/dev/infiniband").join(flowverbs_router::sysfs::uverbs_name(&dir));
    if !dev_node.exists() {
        bail!("the router's device node {} is missing", dev_node.display());
    }
    let provider = match provider {
        Some(p) => fs::canonicalize(&p).with_context(|| format!("provider {}", p.display()))?,
        None if system_installed() => Path::new(PROVIDER_DIR).join(PROVIDER_FILE),
        None => bail!(
            "the provider is not installed ({PROVIDER_DIR}/{PROVIDER_FILE}): run `flowverbs install` or pass --provider PATH"
        ),
    };
    // Semi mode over a NIC: every real device (a container posts to the
    // one the router assigns it, which a static spec cannot know).
    let mut vendor = Vec::new();
    if nic.is_some() {
        let sysfs = Path::new(flowverbs_router::nic::SYSFS);
        for d in flowverbs_router::nic::real_devices(sysfs) {
            let (driver, library) = vendor_provider(&d.device);
            if library.is_none() {
                log::warn!(
                    "no libibverbs provider for {} (lib{driver}-rdmav34.so) on this host",
                    d.device
                );
            }
            let driver_file = Path::new("/etc/libibverbs.d").join(format!("{driver}.driver"));
            vendor.push(VendorDevice {
                node: Path::new("/dev/infiniband").join(&d.uverbs),
                library: library.map(|l| fs::canonicalize(&l).unwrap_or(l)),
                driver_file: driver_file.is_file().then_some(driver_file),
            });
        }
    }
    let cdi_version = cdi_version.unwrap_or_else(|| {
        let podman = std::process::Command::new("podman")
            .arg("--version")
            .output();
        let text = podman
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        cdi_version_for_podman(text.as_deref()).to_string()
    });
    let rdma_cm = flowverbs_router::rdma_cm::service::served_node(&dir);
    let spec = cdi_spec(&CdiInput {
        cdi_version,
        runtime_dir: dir,
        dev_node,
        provider,
        vendor,
        rdma_cm,
    });
    let text = serde_json::to_string_pretty(&spec)? + "\n";
    if output == Path::new("-") {
        io::stdout().lock().write_all(text.as_bytes())?;
    } else {
        install_file(output, |tmp| fs::write(tmp, &text))?;
        eprintln!("flowverbs: wrote {}", output.display());
    }
    Ok(())
}

/// What a container needs beyond fv0's own environment for semi mode's
/// NIC path: the device node and libibverbs' provider of the device.
fn nic_needs(nic: &NicBinding) -> String {
    let (driver, library) = vendor_provider(&nic.device);
    let library = library.map_or(format!("lib{driver}-rdmav34.so"), |p| {
        p.display().to_string()
    });
    format!(
        "flowverbs: semi mode posts to the NIC {} (port {}): a container also needs \
         /dev/infiniband/{} and libibverbs' provider for it ({library}, \
         with /etc/libibverbs.d/{driver}.driver)",
        nic.device, nic.port, nic.uverbs
    )
}

/// `flowverbs status`: one line per session.
fn qp_type_name(t: u32) -> &'static str {
    match t {
        2 => "RC",
        3 => "UC",
        4 => "UD",
        _ => "?",
    }
}

fn qp_state_name(s: u32) -> &'static str {
    ["RESET", "INIT", "RTR", "RTS", "SQD", "SQE", "ERR"]
        .get(s as usize)
        .copied()
        .unwrap_or("?")
}

fn qp_path_name(p: flowverbs_wire::control::QpPath) -> &'static str {
    use flowverbs_wire::control::QpPath;
    match p {
        QpPath::Router => "router",
        QpPath::Semi => "semi",
        QpPath::Nic => "nic",
        QpPath::Link => "link",
    }
}

fn moved_json(m: &flowverbs_wire::control::Moved) -> serde_json::Value {
    serde_json::json!({
        "sends": m.sends,
        "writes": m.writes,
        "reads": m.reads,
        "atomics": m.atomics,
        "bytes": m.bytes,
        "inline": m.inline,
        "errors": m.errors,
    })
}

fn moved_by_path_json(m: &flowverbs_wire::control::MovedByPath) -> serde_json::Value {
    serde_json::json!({
        "router": moved_json(&m.router),
        "semi": moved_json(&m.semi),
        "link": moved_json(&m.link),
    })
}

fn status(runtime_dir: &Path, json: bool) -> anyhow::Result<()> {
    use flowverbs_wire::control::{Reply, Request};
    let reply = ask_router(runtime_dir, &Request::Status).with_context(|| {
        format!(
            "is `flowverbs router --runtime-dir {}` running?",
            runtime_dir.display()
        )
    })?;
    let Reply::Status {
        sessions,
        totals,
        peers,
        limits,
        rdma_cm,
    } = reply
    else {
        bail!("unexpected reply {reply:?}");
    };
    let mut out = io::stdout().lock();
    if json {
        let sessions: Vec<serde_json::Value> = sessions
            .iter()
            .map(|s| {
                let qps: Vec<serde_json::Value> = s
                    .qp_list
                    .iter()
                    .map(|q| {
                        serde_json::json!({
                            "qpn": q.qpn,
                            "type": qp_type_name(q.qp_type),
                            "state": qp_state_name(q.state),
                            "dest_qpn": q.dest_qpn,
                            "path": qp_path_name(q.path),
                            "moved": moved_by_path_json(&q.moved),
                        })
                    })
                    .collect();
                serde_json::json!({
                    "pid": s.pid,
                    "uid": s.uid,
                    "gid": std::net::Ipv6Addr::from(s.gid).to_string(),
                    "pds": s.pds,
                    "mrs": s.mrs,
                    "cqs": s.cqs,
                    "srqs": s.srqs,
                    "nic": s.nic,
                    "qps": qps,
                })
            })
            .collect();
        let peers: Vec<serde_json::Value> = peers
            .iter()
            .map(|p| {
                serde_json::json!({
                    "addr": p.addr,
                    "up": p.up,
                    "queued": p.queued,
                    "reading": p.reading,
                })
            })
            .collect();
        let cm_ids: Vec<serde_json::Value> = rdma_cm
            .iter()
            .map(|i| {
                serde_json::json!({
                    "uid": i.uid,
                    "netns": i.netns,
                    "port_space": i.port_space,
                    "state": i.state,
                    "local": i.local,
                    "remote": i.remote,
                    "remote_router_gid": i.remote_router_gid
                        .map(|g| std::net::Ipv6Addr::from(g).to_string()),
                })
            })
            .collect();
        let mut doc =
            serde_json::json!({ "sessions": sessions, "peers": peers, "rdma_cm": cm_ids });
        if !limits.is_empty() {
            let caps: serde_json::Map<String, serde_json::Value> = limits
                .iter()
                .map(|c| {
                    (
                        c.name.clone(),
                        serde_json::json!({ "limit": c.limit, "refused": c.refused }),
                    )
                })
                .collect();
            doc["limits"] = caps.into();
        }
        if let Some(t) = totals {
            doc["totals"] = serde_json::json!({
                "sessions": t.sessions,
                "qps": t.qps,
                "moved": moved_by_path_json(&t.moved),
            });
        }
        writeln!(out, "{doc}")?;
        return Ok(());
    }
    writeln!(out, "{} session(s)", sessions.len())?;
    let row = |pid: &dyn std::fmt::Display,
               uid: &dyn std::fmt::Display,
               gid: &dyn std::fmt::Display,
               n: [&dyn std::fmt::Display; 5]| {
        format!(
            "{pid:>8} {uid:>6}  {gid:<22} {:>4} {:>4} {:>4} {:>4} {:>4}",
            n[0], n[1], n[2], n[3], n[4]
        )
    };
    writeln!(
        out,
        "{}",
        row(&"PID", &"UID", &"GID", [&"PD", &"MR", &"CQ", &"QP", &"SRQ"])
    )?;
    for s in sessions {
        let gid = std::net::Ipv6Addr::from(s.gid).to_string();
        writeln!(
            out,
            "{}",
            row(
                &s.pid,
                &s.uid,
                &gid,
                [&s.pds, &s.mrs, &s.cqs, &s.qps, &s.srqs]
            )
        )?;
        if let Some(nic) = &s.nic {
            writeln!(out, "{:>10} posts to the NIC {nic}", "")?;
        }
        for q in &s.qp_list {
            let m = &q.moved;
            let (msgs, bytes) = [m.router, m.semi, m.link].iter().fold((0, 0), |(n, b), x| {
                (n + x.sends + x.writes + x.reads + x.atomics, b + x.bytes)
            });
            writeln!(
                out,
                "{:>10} QP {:#08x} {} {:<5} -> {:#08x} path {:<6} {msgs} requests, {bytes} bytes",
                "",
                q.qpn,
                qp_type_name(q.qp_type),
                qp_state_name(q.state),
                q.dest_qpn,
                qp_path_name(q.path)
            )?;
        }
    }
    if let Some(t) = totals {
        let line = |name: &str, m: &flowverbs_wire::control::Moved| {
            format!(
                "  {name:<6} {} sends, {} writes, {} reads, {} atomics, {} bytes; {} failed",
                m.sends, m.writes, m.reads, m.atomics, m.bytes, m.errors
            )
        };
        writeln!(
            out,
            "since start: {} session(s), {} QP(s)",
            t.sessions, t.qps
        )?;
        writeln!(out, "{}", line("router", &t.moved.router))?;
        writeln!(out, "{}", line("semi", &t.moved.semi))?;
        writeln!(out, "{}", line("link", &t.moved.link))?;
    }
    if !limits.is_empty() {
        writeln!(out, "  {:<26} {:>14} {:>8}", "CAP", "LIMIT", "REFUSED")?;
        for c in &limits {
            let limit = c.limit.map_or("none".to_string(), |l| l.to_string());
            writeln!(out, "  {:<26} {limit:>14} {:>8}", c.name, c.refused)?;
        }
    }
    for p in &peers {
        writeln!(
            out,
            "peer {} {}, {} bytes queued{}",
            p.addr,
            if p.up { "up" } else { "down" },
            p.queued,
            if p.reading {
                ""
            } else {
                ", not read from (it does not read our replies)"
            }
        )?;
    }
    if !rdma_cm.is_empty() {
        writeln!(out, "{} rdma_cm id(s)", rdma_cm.len())?;
        for i in &rdma_cm {
            let there = i
                .remote_router_gid
                .map(|g| format!(" (router of {})", std::net::Ipv6Addr::from(g)))
                .unwrap_or_default();
            writeln!(
                out,
                "  uid {:>6} netns {:>10} {:<5} {:<14} {} -> {}{there}",
                i.uid,
                i.netns,
                i.port_space,
                i.state,
                i.local.as_deref().unwrap_or("-"),
                i.remote.as_deref().unwrap_or("-"),
            )?;
        }
    }
    Ok(())
}

fn exec(args: &EnvArgs, program: &[OsString]) -> anyhow::Result<()> {
    let (vars, _) = environment(args)?;
    if let Err(e) = map_rdma_cm(&args.runtime_dir) {
        log::warn!("{e:#}");
    }
    if let Err(e) = seccomp::block_rdma_netlink() {
        log::warn!(
            "could not block RDMA netlink (fv0 may be invisible if the kernel has RDMA): {e:#}"
        );
    }
    let mut cmd = std::process::Command::new(&program[0]);
    cmd.args(&program[1..]).envs(vars);
    let err = cmd.exec();
    bail!("cannot execute {}: {err}", program[0].to_string_lossy())
}

/// librdmacm opens /dev/infiniband/rdma_cm whatever the device tree says
/// (without RDMA netlink it has no other name): if the router serves its
/// rdma_cm device at another node, this process moves to a mount namespace
/// of its own (mounts from the host still propagate into it) where the
/// router's node is bind-mounted over that path.
fn map_rdma_cm(runtime_dir: &Path) -> anyhow::Result<()> {
    use nix::mount::{mount, MsFlags};
    const CM: &str = "/dev/infiniband/rdma_cm";
    let Some(node) = flowverbs_router::rdma_cm::service::served_node(runtime_dir) else {
        return Ok(());
    };
    if node == Path::new(CM) {
        return Ok(());
    }
    let cannot = || {
        format!(
            "cannot map the router's rdma_cm device {} at {CM} (librdmacm will not reach fv0's;              run as root, or map it there yourself, as the CDI spec does for containers)",
            node.display()
        )
    };
    if !Path::new(CM).exists() {
        bail!("{}: {CM} does not exist to mount over", cannot());
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).with_context(cannot)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .with_context(cannot)?;
    mount(
        Some(&node),
        CM,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .with_context(cannot)?;
    Ok(())
}

/// A seccomp filter making `socket(AF_NETLINK, *, NETLINK_RDMA)` fail with
/// EPROTONOSUPPORT, so that libibverbs falls back to `SYSFS_PATH` even on a
/// kernel with RDMA loaded (docs/verbs-provider-contract.md section 2, "Netlink first").
mod seccomp {
    use anyhow::bail;
    use std::io;

    const NETLINK_RDMA: u32 = 20;

    #[cfg(target_arch = "x86_64")]
    const AUDIT_ARCH: u32 = 0xc000_003e; // EM_X86_64 | 64BIT | LE
    #[cfg(target_arch = "aarch64")]
    const AUDIT_ARCH: u32 = 0xc000_00b7; // EM_AARCH64 | 64BIT | LE

    // struct seccomp_data { int nr; u32 arch; u64 ip; u64 args[6]; }
    const OFF_NR: u32 = 0;
    const OFF_ARCH: u32 = 4;
    /// The low 32 bits of args[i] (little-endian).
    const fn off_arg(i: u32) -> u32 {
        16 + 8 * i
    }

    const BPF_LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const BPF_JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const BPF_RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

    fn stmt(code: u16, k: u32) -> libc::sock_filter {
        libc::sock_filter {
            code,
            jt: 0,
            jf: 0,
            k,
        }
    }

    fn jeq(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
        libc::sock_filter {
            code: BPF_JEQ_K,
            jt,
            jf,
            k,
        }
    }

    /// The program: on another architecture, or any other system call or
    /// arguments, allow.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    pub fn program() -> Vec<libc::sock_filter> {
        let errno = libc::SECCOMP_RET_ERRNO | (libc::EPROTONOSUPPORT as u32);
        vec![
            /* 0 */ stmt(BPF_LD_W_ABS, OFF_ARCH),
            /* 1 */ jeq(AUDIT_ARCH, 0, 7), // -> 9 allow
            /* 2 */ stmt(BPF_LD_W_ABS, OFF_NR),
            /* 3 */ jeq(libc::SYS_socket as u32, 0, 5), // -> 9
            /* 4 */ stmt(BPF_LD_W_ABS, off_arg(0)),
            /* 5 */ jeq(libc::AF_NETLINK as u32, 0, 3), // -> 9
            /* 6 */ stmt(BPF_LD_W_ABS, off_arg(2)),
            /* 7 */ jeq(NETLINK_RDMA, 0, 1), // -> 9
            /* 8 */ stmt(BPF_RET_K, errno),
            /* 9 */ stmt(BPF_RET_K, libc::SECCOMP_RET_ALLOW),
        ]
    }

    /// Installs the filter on the calling thread (inherited across exec).
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    pub fn block_rdma_netlink() -> anyhow::Result<()> {
        let filter = program();
        let prog = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: prctl with PR_SET_NO_NEW_PRIVS takes integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            bail!("prctl(PR_SET_NO_NEW_PRIVS): {}", io::Error::last_os_error());
        }
        // SAFETY: `prog` points to `filter`, which outlives the call; the
        // kernel copies the program.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &prog as *const libc::sock_fprog,
            )
        };
        if rc != 0 {
            bail!(
                "seccomp(SECCOMP_SET_MODE_FILTER): {}",
                io::Error::last_os_error()
            );
        }
        Ok(())
    }

    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    pub fn block_rdma_netlink() -> anyhow::Result<()> {
        bail!("not supported on this architecture")
    }

    #[cfg(test)]
    mod tests {
        /// Forks; the child installs the filter and reports which sockets
        /// it can open through its exit code.
        #[test]
        fn blocks_only_netlink_rdma() {
            // SAFETY: the child only makes raw system calls and _exits.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0);
            if pid == 0 {
                let code = (|| {
                    if super::block_rdma_netlink().is_err() {
                        return 10;
                    }
                    // SAFETY: plain system calls; the fds are closed or leaked in the child.
                    unsafe {
                        let fd = libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, 20);
                        if fd >= 0 || *libc::__errno_location() != libc::EPROTONOSUPPORT {
                            return 11;
                        }
                        let fd =
                            libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 20);
                        if fd >= 0 || *libc::__errno_location() != libc::EPROTONOSUPPORT {
                            return 12;
                        }
                        let fd = libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, 0);
                        if fd < 0 {
                            return 13;
                        }
                        libc::close(fd);
                        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                        if fd < 0 {
                            return 14;
                        }
                        libc::close(fd);
                    }
                    0
                })();
                // SAFETY: terminating the forked child without running destructors.
                unsafe { libc::_exit(code) };
            }
            let mut status = 0;
            // SAFETY: waiting for our own child.
            assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
            assert!(libc::WIFEXITED(status));
            assert_eq!(libc::WEXITSTATUS(status), 0, "child failed step");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli =
            Cli::try_parse_from(["flowverbs", "exec", "--", "ib_send_bw", "-d", "fv0"]).unwrap();
        match cli.command {
            Cmd::Exec { env, program } => {
                assert_eq!(env.runtime_dir, Path::new(DEFAULT_RUNTIME_DIR));
                assert_eq!(program, ["ib_send_bw", "-d", "fv0"]);
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from(["flowverbs", "router", "--mode", "semi"]).unwrap();
        assert!(matches!(
            cli.command,
            Cmd::Router {
                mode: ModeArg::Semi,
                ..
            }
        ));
    }

    #[test]
    fn driver_template() {
        assert_eq!(DRIVER_TEMPLATE.trim(), "driver flowverbs");
    }

    #[test]
    fn rdmav_drivers_strips_suffix() {
        let dir = std::env::temp_dir().join(format!("fv-bin-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let lib = dir.join(PROVIDER_FILE);
        fs::write(&lib, b"").unwrap();
        let canon = fs::canonicalize(&dir).unwrap();
        assert_eq!(rdmav_drivers_for(&lib).unwrap(), canon.join("libflowverbs"));
        let bad = dir.join("libflowverbs.so");
        fs::write(&bad, b"").unwrap();
        assert!(rdmav_drivers_for(&bad).is_err());
        fs::remove_dir_all(dir).unwrap();
    }
}
