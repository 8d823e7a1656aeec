//! The eBPF back end: loads `bpf/capture.bpf.c` once per node and attaches it per pod.

use std::collections::HashMap as StdHashMap;
use std::fs::File;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use aya::maps::{HashMap, MapData, SockHash};
use aya::programs::cgroup_sock_addr::CgroupSockAddrLink;
use aya::programs::cgroup_sockopt::CgroupSockoptLink;
use aya::programs::links::FdLink;
use aya::programs::sk_lookup::SkLookupLink;
use aya::programs::sock_ops::SockOpsLink;
use aya::programs::{CgroupAttachMode, CgroupSockAddr, CgroupSockopt, SkLookup, SockOps};
use aya::{Ebpf, EbpfLoader};

use crate::netns::{netns_cookie, own_cgroup, socket_netns_cookie};
use crate::pin::{PINNED_MAPS, PinDir};
use pinned::{PinnedPod, Pins, forget_proxy_flows};

mod pinned;
use crate::{Error, PodSpec, Ports};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/capture.bpf.o"));

/// Programs attached to each pod's cgroup.
const SOCK_ADDR_PROGRAMS: [&str; 6] = [
    "zm_connect4",
    "zm_connect6",
    "zm_getpeername4",
    "zm_getpeername6",
    "zm_bind4",
    "zm_bind6",
];
const SOCKOPS: &str = "zm_sockops";
const GETSOCKOPT: &str = "zm_getsockopt";
const PROXY_SOCKOPS: &str = "zm_proxy_sockops";
const SK_LOOKUP: &str = "zm_sk_lookup";
/// Every per-pod link, in attach order.
const POD_PROGRAMS: [&str; 8] = [
    "zm_connect4",
    "zm_connect6",
    "zm_getpeername4",
    "zm_getpeername6",
    "zm_bind4",
    "zm_bind6",
    SOCKOPS,
    SK_LOOKUP,
];

/// Cgroup attachments go through bpf_link (aya does so on 5.7+), which always stacks with
/// other programs on the cgroup and must be created without attach flags; "Single" is aya's
/// name for no flags.
const LINK_MODE: CgroupAttachMode = CgroupAttachMode::Single;

/// `struct zm_addr` in the C source: 16-byte address (IPv4 as v4-mapped), port, family.
type AddrKey = [u8; 20];
/// `struct zm_flow`: two 16-byte addresses and two ports.
type FlowKey = [u8; 36];

/// How to load the capture programs.
#[derive(Debug, Clone, Default)]
pub struct LoadConfig {
    pub ports: Ports,
    /// The cgroup v2 directory the proxy's sockets belong to (where the proxy process was when
    /// it created them): `cgroup/getsockopt` and the proxy's sockops program are attached
    /// there. Default: this process's own cgroup. It must not contain the pods' cgroups.
    pub proxy_cgroup: Option<PathBuf>,
    /// A directory on a bpffs: pin the maps and every pod's links there, so pods stay
    /// captured (failing closed) while the proxy is down and a restarted proxy adopts them.
    /// `None`: links live and die with this process.
    pub pin_dir: Option<PathBuf>,
}

/// The capture programs, loaded once per node. Dropping it detaches the proxy-side hook and
/// unloads the programs (pods still captured keep their links until their [`PodCapture`]s go).
pub struct Capture {
    bpf: Mutex<Ebpf>,
    maps: Arc<Mutex<Maps>>,
    proxy_cgroup: PathBuf,
    _getsockopt: CgroupSockoptLink,
    _proxy_sockops: SockOpsLink,
    pins: Option<Arc<Pins>>,
}

struct Maps {
    pods: HashMap<MapData, u64, u32>,
    captured: HashMap<MapData, AddrKey, u32>,
    inbound: SockHash<MapData, AddrKey>,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture").finish_non_exhaustive()
    }
}

impl Capture {
    /// Whether the hooks are usable here: loads every program (which needs root or CAP_BPF +
    /// CAP_NET_ADMIN and a 5.17+ kernel) and finds the cgroup v2 hierarchy, then unloads.
    /// The error says what is missing.
    pub fn detect() -> Result<(), Error> {
        crate::netns::cgroup2_mount()?;
        load_programs(Ports::default(), None).map(drop)
    }

    /// Loads the programs and attaches the proxy-side hooks to the proxy's cgroup.
    pub fn load(config: LoadConfig) -> Result<Self, Error> {
        let pin_dir = match &config.pin_dir {
            Some(dir) => Some(PinDir::open(dir, OBJECT, config.ports)?),
            None => None,
        };
        let mut bpf = load_programs(config.ports, pin_dir.as_ref())?;
        if pin_dir.is_some() {
            forget_proxy_flows(&mut bpf)?;
        }
        let proxy_cgroup = match config.proxy_cgroup {
            Some(path) => path,
            None => own_cgroup()?,
        };
        let (getsockopt, proxy_sockops) = attach_proxy(&mut bpf, &proxy_cgroup)?;
        let maps = Maps {
            pods: take_map(&mut bpf, "zm_pods")?,
            captured: take_map(&mut bpf, "zm_captured")?,
            inbound: take_map(&mut bpf, "zm_inbound")?,
        };
        tracing::info!(
            proxy_cgroup = %proxy_cgroup.display(),
            pin_dir = ?config.pin_dir,
            "eBPF capture loaded"
        );
        let proxy_cgroup = proxy_cgroup.canonicalize().unwrap_or(proxy_cgroup);
        Ok(Self {
            bpf: Mutex::new(bpf),
            maps: Arc::new(Mutex::new(maps)),
            proxy_cgroup,
            _getsockopt: getsockopt,
            _proxy_sockops: proxy_sockops,
            pins: pin_dir.map(|dir| {
                Arc::new(Pins {
                    dir,
                    active: Mutex::new(StdHashMap::new()),
                })
            }),
        })
    }

    /// Whether pods' links are pinned (capture survives a restart of this process).
    pub fn pinned(&self) -> bool {
        self.pins.is_some()
    }

    /// Kernel ids of the loaded programs (to check, e.g. with bpftool, that nothing is left).
    pub fn program_ids(&self) -> Vec<u32> {
        let bpf = lock(&self.bpf);
        bpf.programs()
            .filter_map(|(_, p)| p.info().ok())
            .map(|info| info.id())
            .collect()
    }

    /// Captures one pod: fills the maps, then attaches the cgroup hooks to `spec.cgroup` and
    /// sk_lookup to `spec.netns`. Dropping (or releasing) the result undoes all of it.
    pub fn capture_pod(&self, spec: &PodSpec<'_>) -> Result<PodCapture, Error> {
        // Programs on a cgroup also run for its descendants: a pod below the proxy's cgroup
        // would have its connections taken for the proxy's own.
        let pod_cgroup = spec.cgroup.canonicalize().map_err(|source| Error::Cgroup {
            path: spec.cgroup.to_owned(),
            source,
        })?;
        if pod_cgroup.starts_with(&self.proxy_cgroup) {
            return Err(Error::PodCgroupInsideProxy(pod_cgroup));
        }
        let cookie = netns_cookie(spec.netns)?;
        let cgroup = File::open(spec.cgroup).map_err(|source| Error::Cgroup {
            path: spec.cgroup.to_owned(),
            source,
        })?;
        let mut pod = PodCapture {
            links: Vec::new(),
            pinned: None,
            netns_cookie: cookie,
            inbound_keys: Vec::new(),
            maps: Arc::clone(&self.maps),
            released: false,
        };
        pod.fill_maps(spec, cookie)?;
        // Maps first: once a hook is attached it must find the pod's entries.
        let adopted = match &self.pins {
            None => {
                attach_pod(&mut lock(&self.bpf), &cgroup, spec.netns, &mut pod.links)?;
                0
            }
            Some(pins) => self.attach_pinned(pins, &cgroup, spec.netns, &mut pod)?,
        };
        tracing::info!(
            netns_cookie = cookie,
            cgroup = %spec.cgroup.display(),
            ips = ?spec.ips,
            adopted_links = adopted,
            "pod captured (eBPF)"
        );
        Ok(pod)
    }
}

/// One captured pod. `release` detaches its links and removes its map entries. Dropping it
/// does the same, except in pinned mode, where the pod stays captured (its pins hold the
/// links) for the next run of the proxy to adopt.
pub struct PodCapture {
    links: Vec<PodLink>,
    pinned: Option<PinnedPod>,
    netns_cookie: u64,
    inbound_keys: Vec<AddrKey>,
    maps: Arc<Mutex<Maps>>,
    released: bool,
}

impl std::fmt::Debug for PodCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodCapture")
            .field("netns_cookie", &self.netns_cookie)
            .field("links", &self.links.len())
            .field("pinned", &self.pinned.as_ref().map(|p| &p.dir))
            .finish_non_exhaustive()
    }
}

// Held only to be dropped: an owned aya link detaches on drop.
enum PodLink {
    SockAddr(CgroupSockAddrLink),
    SockOps(SockOpsLink),
    SkLookup(SkLookupLink),
}

impl PodLink {
    /// The bpf_link behind it, to pin (cgroup links are bpf_links on 5.7+).
    fn into_fd(self, name: &'static str) -> Result<FdLink, Error> {
        let err = |source| Error::Link { name, source };
        match self {
            Self::SockAddr(l) => FdLink::try_from(l).map_err(err),
            Self::SockOps(l) => FdLink::try_from(l).map_err(err),
            Self::SkLookup(l) => Ok(FdLink::from(l)),
        }
    }
}

impl PodCapture {
    fn fill_maps(&mut self, spec: &PodSpec<'_>, cookie: u64) -> Result<(), Error> {
        let mut maps = lock(&self.maps);
        for &ip in spec.ips {
            let listener = match ip {
                IpAddr::V4(_) => spec.inbound_v4.or(spec.inbound_v6),
                IpAddr::V6(_) => spec.inbound_v6,
            }
            .ok_or(Error::MissingListener(ip))?;
            check_in_pod(listener, cookie)?;
            let key = addr_key(ip);
            maps.inbound
                .insert(key, listener.as_raw_fd(), 0)
                .map_err(|source| Error::Map {
                    name: "zm_inbound",
                    source,
                })?;
            self.inbound_keys.push(key);
            maps.captured
                .insert(key, 0, 0)
                .map_err(|source| Error::Map {
                    name: "zm_captured",
                    source,
                })?;
        }
        maps.pods.insert(cookie, 0, 0).map_err(|source| Error::Map {
            name: "zm_pods",
            source,
        })
    }

    /// Stops capturing the pod: detaches every link, then removes the pod's map entries.
    pub fn release(mut self) -> Result<(), Error> {
        self.undo()
    }

    fn undo(&mut self) -> Result<(), Error> {
        if std::mem::replace(&mut self.released, true) {
            return Ok(());
        }
        // Links first, so no hook runs against half-removed entries.
        self.links.clear();
        if let Some(pinned) = self.pinned.take() {
            pinned.unpin()?;
        }
        let mut maps = lock(&self.maps);
        let mut result = Ok(());
        for key in self.inbound_keys.drain(..) {
            if let Err(source) = maps.captured.remove(&key) {
                result = Err(Error::Map {
                    name: "zm_captured",
                    source,
                });
            }
            // The kernel already dropped the entry if the proxy closed the listener.
            match maps.inbound.remove(&key) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(source) => {
                    result = Err(Error::Map {
                        name: "zm_inbound",
                        source,
                    })
                }
            }
        }
        if let Err(source) = maps.pods.remove(&self.netns_cookie) {
            result = Err(Error::Map {
                name: "zm_pods",
                source,
            });
        }
        tracing::info!(netns_cookie = self.netns_cookie, "pod released (eBPF)");
        result
    }
}

impl Drop for PodCapture {
    fn drop(&mut self) {
        // Pinned: the pod stays captured across this process's exit; only `release` ends it.
        if self.pinned.is_some() {
            return;
        }
        if let Err(e) = self.undo() {
            tracing::warn!(error = %e, "releasing a captured pod");
        }
    }
}

fn load_programs(ports: Ports, pins: Option<&PinDir>) -> Result<Ebpf, Error> {
    let mut loader = EbpfLoader::new();
    loader
        .override_global("zm_outbound_port", &ports.outbound, true)
        .override_global("zm_inbound_port", &ports.inbound, true)
        .override_global("zm_hbone_port", &ports.hbone, true);
    if let Some(pins) = pins {
        // An existing pin is opened (the maps of the pods' adopted links), else created.
        for name in PINNED_MAPS {
            loader.map_pin_path(name, pins.map_path(name));
        }
    }
    let mut bpf = loader.load(OBJECT)?;
    for name in SOCK_ADDR_PROGRAMS {
        let prog: &mut CgroupSockAddr = program(&mut bpf, name)?;
        prog.load()
            .map_err(|source| Error::Program { name, source })?;
    }
    for name in [SOCKOPS, PROXY_SOCKOPS] {
        let sockops: &mut SockOps = program(&mut bpf, name)?;
        sockops
            .load()
            .map_err(|source| Error::Program { name, source })?;
    }
    let getsockopt: &mut CgroupSockopt = program(&mut bpf, GETSOCKOPT)?;
    getsockopt.load().map_err(|source| Error::Program {
        name: GETSOCKOPT,
        source,
    })?;
    let sk_lookup: &mut SkLookup = program(&mut bpf, SK_LOOKUP)?;
    sk_lookup.load().map_err(|source| Error::Program {
        name: SK_LOOKUP,
        source,
    })?;
    Ok(bpf)
}

/// Attaches the per-pod hooks, pushing each link as it is made, so a failure half-way leaves
/// the caller holding (and dropping, hence detaching) the ones already attached.
fn attach_pod(
    bpf: &mut Ebpf,
    cgroup: &File,
    netns: BorrowedFd<'_>,
    links: &mut Vec<PodLink>,
) -> Result<(), Error> {
    for name in POD_PROGRAMS {
        links.push(attach_one(bpf, name, cgroup, netns)?);
    }
    Ok(())
}

/// Attaches one per-pod program: sk_lookup to the pod's netns, the others to its cgroup.
fn attach_one(
    bpf: &mut Ebpf,
    name: &'static str,
    cgroup: &File,
    netns: BorrowedFd<'_>,
) -> Result<PodLink, Error> {
    let err = |source| Error::Program { name, source };
    Ok(match name {
        SOCKOPS => {
            let prog: &mut SockOps = program(bpf, name)?;
            let id = prog.attach(cgroup, LINK_MODE).map_err(err)?;
            PodLink::SockOps(prog.take_link(id).map_err(err)?)
        }
        SK_LOOKUP => {
            let prog: &mut SkLookup = program(bpf, name)?;
            let id = prog.attach(netns).map_err(err)?;
            PodLink::SkLookup(prog.take_link(id).map_err(err)?)
        }
        _ => {
            let prog: &mut CgroupSockAddr = program(bpf, name)?;
            let id = prog.attach(cgroup, LINK_MODE).map_err(err)?;
            PodLink::SockAddr(prog.take_link(id).map_err(err)?)
        }
    })
}

/// The proxy-side hooks: `SO_ORIGINAL_DST` answers and the record of the proxy's own
/// connections (so sk_lookup never steers them back to the proxy).
fn attach_proxy(bpf: &mut Ebpf, cgroup: &Path) -> Result<(CgroupSockoptLink, SockOpsLink), Error> {
    let dir = File::open(cgroup).map_err(|source| Error::Cgroup {
        path: cgroup.to_owned(),
        source,
    })?;
    let prog: &mut CgroupSockopt = program(bpf, GETSOCKOPT)?;
    let err = |source| Error::Program {
        name: GETSOCKOPT,
        source,
    };
    let id = prog.attach(&dir, LINK_MODE).map_err(err)?;
    let getsockopt = prog.take_link(id).map_err(err)?;
    let prog: &mut SockOps = program(bpf, PROXY_SOCKOPS)?;
    let err = |source| Error::Program {
        name: PROXY_SOCKOPS,
        source,
    };
    let id = prog.attach(&dir, LINK_MODE).map_err(err)?;
    Ok((getsockopt, prog.take_link(id).map_err(err)?))
}

/// The program `name` as its concrete type. The names and types are fixed by the object this
/// crate embeds, so a mismatch is a build mistake, reported as an error all the same.
fn program<'a, P>(bpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, Error>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = bpf.program_mut(name).ok_or(Error::Program {
        name,
        source: aya::programs::ProgramError::UnexpectedProgramType,
    })?;
    prog.try_into()
        .map_err(|source| Error::Program { name, source })
}

fn take_map<M>(bpf: &mut Ebpf, name: &'static str) -> Result<M, Error>
where
    M: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = bpf.take_map(name).ok_or(Error::Map {
        name,
        source: aya::maps::MapError::InvalidName {
            name: name.to_owned(),
        },
    })?;
    M::try_from(map).map_err(|source| Error::Map { name, source })
}

fn check_in_pod(listener: BorrowedFd<'_>, pod_cookie: u64) -> Result<(), Error> {
    let cookie = socket_netns_cookie(listener.as_raw_fd()).map_err(Error::Netns)?;
    if cookie == pod_cookie {
        Ok(())
    } else {
        Err(Error::ListenerNotInPod)
    }
}

/// The sk_lookup key for a pod address: `struct zm_addr` with port 0.
fn addr_key(ip: IpAddr) -> AddrKey {
    let (octets, family) = match ip {
        IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), libc::AF_INET as u16),
        IpAddr::V6(v6) => (v6.octets(), libc::AF_INET6 as u16),
    };
    let mut key = [0u8; 20];
    key[..16].copy_from_slice(&octets);
    key[18..].copy_from_slice(&family.to_ne_bytes());
    key
}

/// Map and program handles stay consistent across a panic elsewhere (each operation is one
/// syscall), so a poisoned lock is still safe to use.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
