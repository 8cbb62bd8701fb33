//! Bridge networking, the agent's side of `cntnr-hook` (crate `cntnr_hook`).
//!
//! - **Wiring** ([`Net::wire`]): a `network_mode: bridge` container (the
//!   compose default) gets, for each project network its service joins,
//!   the network's subnet and CNI config list ([`ensure_network`],
//!   idempotent), a [`NetRequest`] (those networks, in name order, the first
//!   one `eth0` and the published ports), and the hook's OCI hooks
//!   (`createRuntime` → `cntnr-hook create`, `poststop` → `cntnr-hook
//!   delete`). `host` (policy `--allow-host-network`, enforced by the bundle
//!   builder) and `none` get nothing; neither does a rootless agent (no CNI
//!   without root: its containers share the host's network).
//! - **Names** ([`Net::sync`], [`Net::joined`]): the project's running
//!   replicas on this node, with the IPs the hook wrote into each bundle
//!   ([`NetResult`]), rendered into every bridge container's hosts file
//!   ([`hosts_file`], replaced atomically, rewritten only when it changes).
//!   A replica sees the replicas that share a network with it, by service
//!   name, alias, `<service>-<replica>` and container id; nothing of other
//!   projects. Refreshed at every pass of the project (which follows every
//!   start, exit, stop and removal) and right after each create, before the
//!   container starts, so a new container can resolve its peers at once.
//! - **Release** ([`Net::sync`], [`Net::release_project`]): a network no
//!   service of the project uses any more and no container is attached to,
//!   and every network of a removed project once its last container is
//!   gone, loses its subnet and config list ([`release_network`]); the
//!   hook's DEL of a network's last container already removed its bridge,
//!   iptables rules and IPAM directory.
//! - **What `cntnr ps` and registration see** ([`Net::annotate`]): each
//!   container's IPs and published host ports, in its status record.
//!
//! The hook binary: `cntnr-hook` next to the agent's executable when it is
//! installed there, else the agent's executable itself, which acts as the
//! hook when runc calls it under that name (`argv[0]` is `cntnr-hook`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context as _, Result};
use cntnr_hook::alloc::SubnetPool;
use cntnr_hook::conflist::{ensure_network, network_name, release_network};
use cntnr_hook::hosts::{hosts_file, hosts_path, write_atomic, ReplicaAddr};
use cntnr_hook::{oci_hooks, HookOptions, NetRequest, NetResult, PortRequest, RESULT_FILE};
use cntnr_model::records::{PortBinding, StatusRecord};
use cntnr_model::{NetworkMode as ModelNetwork, Project, ProjectName, ServiceName, ServiceSpec};
use cntnr_reconcile::bundle::{BridgeNetwork, ContainerRequest};
use cntnr_reconcile::runtime::{annotations, ContainerState, Status};

/// The agent's bridge networking (cheap to clone: shared state).
#[derive(Debug, Clone)]
pub struct Net {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// False for a rootless agent: no CNI, host network for everyone.
    enabled: bool,
    /// The agent's state dir: subnets, config lists, port claims, locks.
    state_dir: PathBuf,
    /// Pinned network namespaces and the iptables lock (host-wide).
    run_dir: PathBuf,
    pool: SubnetPool,
    hook: HookOptions,
    /// Per project: its bridge containers on this node, by container id.
    /// Also serializes hosts-file rewrites.
    members: Mutex<BTreeMap<String, BTreeMap<String, Member>>>,
    /// Per project: what its spec says about networks, as of the start of
    /// its current pass ([`Net::sync`]); the pass's creates use it.
    known: Mutex<BTreeMap<String, Arc<Known>>>,
    /// Per project: containers of bridge services that carry no network
    /// request (created before the agent wired bridge networking).
    unwired: Mutex<BTreeMap<String, Vec<String>>>,
}

/// The network-relevant part of a project's spec.
#[derive(Debug, Default)]
struct Known {
    names: ProjectNames,
    /// Networks declared `external: true`.
    external: BTreeSet<String>,
}

/// One bridge container of a project, as the hosts files need it.
#[derive(Debug, Clone)]
struct Member {
    service: String,
    replica: u32,
    bundle: PathBuf,
    result: NetResult,
}

/// What the hosts files need of each service of a project.
#[derive(Debug, Clone, Default)]
pub struct ServiceNames {
    hostname: Option<String>,
    domainname: Option<String>,
    extra_hosts: Vec<(String, IpAddr)>,
    /// CNI network name → aliases of the service on it.
    aliases: BTreeMap<String, Vec<String>>,
}

/// The names-relevant part of a project: service → [`ServiceNames`].
pub type ProjectNames = BTreeMap<String, ServiceNames>;

/// A container as [`Net::sync`] needs it (owned: the work runs on a
/// blocking thread).
#[derive(Debug, Clone)]
struct Seen {
    id: String,
    service: String,
    replica: u32,
    status: Status,
    bundle: PathBuf,
}

/// Environment forwarded to the hook when the agent has it (tests only: a
/// hook failpoint; see `cntnr_hook::FAILPOINT_ENV`).
const FORWARDED_ENV: &[&str] = &[cntnr_hook::FAILPOINT_ENV];

impl Net {
    /// Bridge networking for an agent with `state_dir`; `enabled` is false
    /// for a rootless agent. The hook binary is found as the module docs say.
    pub fn new(state_dir: &Path, enabled: bool, pool: SubnetPool) -> Result<Net> {
        let exe = std::env::current_exe().context("locating the agent's executable")?;
        let binary = exe
            .parent()
            .map(|d| d.join("cntnr-hook"))
            .filter(|p| p.is_file())
            .unwrap_or(exe);
        let env = FORWARDED_ENV
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| format!("{k}={v}")))
            .collect();
        Ok(Net {
            inner: Arc::new(Inner {
                enabled,
                state_dir: state_dir.to_path_buf(),
                run_dir: cntnr_hook::request::DEFAULT_RUN_DIR.into(),
                pool,
                hook: HookOptions {
                    binary,
                    env,
                    ..HookOptions::default()
                },
                members: Mutex::new(BTreeMap::new()),
                known: Mutex::new(BTreeMap::new()),
                unwired: Mutex::new(BTreeMap::new()),
            }),
        })
    }

    /// Whether containers get CNI networking at all (root agents).
    pub fn enabled(&self) -> bool {
        self.inner.enabled
    }

    /// The hook binary the containers' `config.json` names.
    pub fn hook_binary(&self) -> &Path {
        &self.inner.hook.binary
    }

    /// Fills `req.bridge` for a bridge-mode service: ensures each network
    /// the service joins and builds the hook's request and OCI hooks.
    /// Nothing for `host`/`none` or when disabled. An error is one line
    /// naming the project, service and network.
    pub fn wire(
        &self,
        project: &ProjectName,
        service: &ServiceName,
        svc: &ServiceSpec,
        req: &mut ContainerRequest,
    ) -> Result<()> {
        if !self.inner.enabled || svc.network_mode != ModelNetwork::Bridge {
            return Ok(());
        }
        let known = lock(&self.inner.known).get(project.as_str()).cloned();
        let (project, service) = (project.as_str(), service.as_str());
        let mut attachments = Vec::with_capacity(svc.networks.len());
        for net in svc.networks.keys() {
            let at = || format!("project {project:?}, service {service:?}, network {net:?}");
            if known.as_ref().is_some_and(|k| k.external.contains(net)) {
                bail!(
                    "{}: external networks are not supported (cntnr creates every project network itself)",
                    at()
                );
            }
            let (att, _subnet) =
                ensure_network(&self.inner.state_dir, &self.inner.pool, project, net)
                    .map_err(|e| anyhow!("{}: {e}", at()))?;
            attachments.push(att);
        }
        if attachments.is_empty() {
            bail!("project {project:?}, service {service:?}, key \"networks\": a bridge service needs a network");
        }
        let mut net = NetRequest::new(attachments);
        net.ports = svc.ports.iter().map(PortRequest::from_model).collect();
        net.state_dir = self.inner.state_dir.clone();
        net.run_dir = self.inner.run_dir.clone();
        let hooks = oci_hooks(&self.inner.hook)
            .map_err(|e| anyhow!("project {project:?}, service {service:?}: OCI hooks: {e}"))?;
        req.bridge = Some(BridgeNetwork {
            hooks,
            annotations: [net.to_annotation()].into_iter().collect(),
        });
        Ok(())
    }

    /// Start of a pass over `project`: remembers what `spec` says about
    /// networks for the pass's creates ([`Net::wire`], [`Net::joined`]),
    /// takes its containers on this node (`mine`, from the runtime) as the
    /// truth, rewrites the hosts files that changed, and releases the
    /// project's networks that nothing uses any more. `spec` is `None` when
    /// the project is gone from the store (or does not parse): then only
    /// the bookkeeping is updated.
    pub async fn sync(
        &self,
        project: &ProjectName,
        spec: Option<&Project>,
        mine: &[ContainerState],
    ) {
        if !self.inner.enabled {
            return;
        }
        let seen: Vec<Seen> = mine
            .iter()
            .filter_map(|c| {
                Some(Seen {
                    id: c.id.to_string(),
                    service: c.annotations.get(annotations::SERVICE)?.clone(),
                    replica: c.annotations.get(annotations::REPLICA)?.parse().ok()?,
                    status: c.status,
                    bundle: c.bundle.clone(),
                })
            })
            .collect();
        let unwired: Vec<String> = mine
            .iter()
            .filter(|c| matches!(c.status, Status::Created | Status::Running | Status::Paused))
            .filter(|c| !c.annotations.contains_key(cntnr_hook::REQUEST_ANNOTATION))
            .filter(|c| {
                let svc = c.annotations.get(annotations::SERVICE);
                spec.and_then(|p| p.service(svc?.as_str()))
                    .is_some_and(|s| s.network_mode == ModelNetwork::Bridge)
            })
            .map(|c| c.id.to_string())
            .collect();
        {
            let mut all = lock(&self.inner.unwired);
            if unwired.is_empty() {
                all.remove(project.as_str());
            } else {
                all.insert(project.as_str().to_string(), unwired);
            }
        }
        let names = spec.map(project_names);
        {
            let mut known = lock(&self.inner.known);
            match spec {
                Some(p) => {
                    let k = Known {
                        names: names.clone().unwrap_or_default(),
                        external: p
                            .networks
                            .iter()
                            .filter(|(_, n)| n.external)
                            .map(|(k, _)| k.clone())
                            .collect(),
                    };
                    known.insert(project.as_str().to_string(), Arc::new(k));
                }
                None => {
                    known.remove(project.as_str());
                }
            }
        }
        let in_use: Option<BTreeSet<String>> = spec.map(|p| {
            p.services
                .values()
                .filter(|s| s.network_mode == ModelNetwork::Bridge)
                .flat_map(|s| s.networks.keys().cloned())
                .collect()
        });
        let inner = self.inner.clone();
        let project = project.clone();
        let r = tokio::task::spawn_blocking(move || {
            inner.sync(&project, names.as_ref(), &seen, in_use.as_ref())
        })
        .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "network sync task failed");
        }
    }

    /// Right after `id` of `project` was created (its network is up, the
    /// container not started yet): adds it to the project's names and
    /// rewrites the hosts files, its own included.
    pub async fn joined(
        &self,
        project: &ProjectName,
        service: &ServiceName,
        replica: u32,
        id: &str,
        bundle: &Path,
    ) {
        if !self.inner.enabled {
            return;
        }
        let Some(known) = lock(&self.inner.known).get(project.as_str()).cloned() else {
            return;
        };
        let inner = self.inner.clone();
        let member = (
            service.as_str().to_string(),
            replica,
            id.to_string(),
            bundle.to_path_buf(),
        );
        let project = project.clone();
        let r =
            tokio::task::spawn_blocking(move || inner.joined(&project, &known.names, member)).await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "network update task failed");
        }
    }

    /// The project is gone from the store and has no container left here:
    /// releases every network it still holds (subnet and config list).
    pub async fn release_project(&self, project: &ProjectName) {
        if !self.inner.enabled {
            return;
        }
        let inner = self.inner.clone();
        let project = project.clone();
        let r = tokio::task::spawn_blocking(move || {
            lock(&inner.members).remove(project.as_str());
            lock(&inner.known).remove(project.as_str());
            lock(&inner.unwired).remove(project.as_str());
            inner.release_unused(&project, &BTreeSet::new(), &BTreeSet::new());
        })
        .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "network release task failed");
        }
    }

    /// Fills each container's IPs and published ports in `record` from
    /// what the hook reported for it (only for created, running or paused
    /// containers: a stopped one has given its address back), and warns
    /// about bridge containers created without networking (by an agent
    /// that did not wire it yet: same config hash, so never recreated on
    /// its own).
    pub fn annotate(&self, project: &ProjectName, record: &mut StatusRecord) {
        if !self.inner.enabled {
            return;
        }
        if let Some(ids) = lock(&self.inner.unwired).get(project.as_str()) {
            for id in ids {
                record.warnings.push(format!(
                    "{id}: created without bridge networking (by an older agent), it has loopback only until it is recreated: change the service, or delete the container and the agent creates it again"
                ));
            }
        }
        let members = lock(&self.inner.members);
        let Some(mine) = members.get(project.as_str()) else {
            return;
        };
        for c in &mut record.containers {
            use cntnr_model::records::ContainerState as S;
            if !matches!(c.state, S::Created | S::Running | S::Paused) {
                continue;
            }
            let Some(m) = mine.get(c.id.as_str()) else {
                continue;
            };
            c.ips = m
                .result
                .networks
                .iter()
                .flat_map(|n| n.ips.iter().copied())
                .collect();
            c.ports = m
                .result
                .ports
                .iter()
                .map(|p| PortBinding {
                    host_ip: p.host_ip.parse().ok(),
                    host_port: p.host_port,
                    container_port: p.container_port,
                    protocol: p.protocol.to_string(),
                })
                .collect();
        }
    }
}

/// Where a container is reached, from the hook's result in its `bundle`:
/// its IP on its first network and the host ports published for it, as
/// registration takes them ([`crate::registration::RunningReplica`]'s
/// `container_ip` and `published`; a bridge service without a published
/// port registers that IP) and as direct health probes need them (the
/// address to probe). `(None, [])` for a `host`/`none` container, a
/// stopped one, or a rootless agent's.
pub fn container_addresses(
    bundle: &Path,
) -> (Option<IpAddr>, Vec<crate::registration::PublishedPort>) {
    let Ok(Some(r)) = NetResult::read(&bundle.join(RESULT_FILE)) else {
        return (None, Vec::new());
    };
    let published = r
        .ports
        .iter()
        .map(|p| crate::registration::PublishedPort {
            container_port: p.container_port,
            host_port: p.host_port,
            protocol: match p.protocol {
                cntnr_hook::PortProtocol::Tcp => cntnr_model::Protocol::Tcp,
                cntnr_hook::PortProtocol::Udp => cntnr_model::Protocol::Udp,
            },
        })
        .collect();
    (r.primary_ip(), published)
}

/// The published ports of a status entry as registration takes them
/// ([`crate::registration::RunningReplica::published`]); with
/// `ContainerStatus::ips.first()` as its `container_ip`, a bridge service
/// without a published port registers its container IP.
pub fn published_ports(
    c: &cntnr_model::records::ContainerStatus,
) -> Vec<crate::registration::PublishedPort> {
    c.ports
        .iter()
        .filter_map(|p| {
            Some(crate::registration::PublishedPort {
                container_port: p.container_port,
                host_port: p.host_port,
                protocol: match p.protocol.as_str() {
                    "tcp" => cntnr_model::Protocol::Tcp,
                    "udp" => cntnr_model::Protocol::Udp,
                    _ => return None,
                },
            })
        })
        .collect()
}

/// A `runc create` failure as one readable line: when the network hook
/// failed, `network hook failed (<how>): <its message>` instead of runc's
/// nested wrapping (`… error running hook #0: error running hook: exit
/// status 1, stdout: , stderr: cntnr-hook create: container X: <message>`).
pub fn explain_create_error(id: &str, e: anyhow::Error) -> anyhow::Error {
    let text = format!("{e:#}");
    let Some(at) = text.find("error running hook") else {
        return e;
    };
    let hook = &text[at..];
    let how = hook
        .split_once("error running hook: ")
        .map(|(_, r)| r.split(", stdout:").next().unwrap_or(r))
        .unwrap_or("failed")
        .trim();
    let stderr = hook.split_once("stderr: ").map_or("", |(_, r)| r.trim());
    let message = stderr
        .trim_start_matches("cntnr-hook create: ")
        .trim_start_matches(&format!("container {id}: "))
        .trim();
    if message.is_empty() {
        anyhow!("creating {id}: network hook failed ({how})")
    } else {
        anyhow!("creating {id}: network hook failed ({how}): {message}")
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The names-relevant part of `spec`.
pub fn project_names(spec: &Project) -> ProjectNames {
    spec.services
        .iter()
        .map(|(name, s)| {
            let aliases = s
                .networks
                .iter()
                .filter_map(|(net, sn)| {
                    Some((
                        network_name(spec.name.as_str(), net).ok()?,
                        sn.aliases.clone(),
                    ))
                })
                .collect();
            (
                name.as_str().to_string(),
                ServiceNames {
                    hostname: s.hostname.clone(),
                    domainname: s.domainname.clone(),
                    extra_hosts: s
                        .extra_hosts
                        .iter()
                        .map(|h| (h.host.clone(), h.ip))
                        .collect(),
                    aliases,
                },
            )
        })
        .collect()
}

/// The hosts file of `reader`: the members sharing a network with it, each
/// at its IP on the first such network in the reader's order.
fn render(
    reader_id: &str,
    reader: &Member,
    members: &BTreeMap<String, Member>,
    names: &ProjectNames,
) -> String {
    let mut replicas = Vec::new();
    for (id, m) in members {
        let shared = reader.result.networks.iter().find_map(|rn| {
            m.result
                .networks
                .iter()
                .find(|n| n.name == rn.name)
                .and_then(|n| n.ips.first().map(|ip| (n.name.as_str(), *ip)))
        });
        let Some((net, ip)) = shared else { continue };
        let aliases = names
            .get(&m.service)
            .and_then(|s| s.aliases.get(net))
            .cloned()
            .unwrap_or_default();
        replicas.push(ReplicaAddr {
            service: m.service.clone(),
            replica: m.replica,
            container_id: id.clone(),
            ip,
            aliases,
        });
    }
    let own = names.get(&reader.service);
    let hostname = own
        .and_then(|s| s.hostname.clone())
        .unwrap_or_else(|| reader_id.to_string());
    // `hostname.domainname hostname` on the container's own line.
    let hostname =
        cntnr_reconcile::bundle::host_names(&hostname, own.and_then(|s| s.domainname.as_deref()));
    let extra = own.map(|s| s.extra_hosts.clone()).unwrap_or_default();
    hosts_file(&hostname, reader.result.primary_ip(), &replicas, &extra)
}

impl Inner {
    fn sync(
        &self,
        project: &ProjectName,
        names: Option<&ProjectNames>,
        seen: &[Seen],
        in_use: Option<&BTreeSet<String>>,
    ) {
        let mut current = BTreeMap::new();
        let mut attached: BTreeSet<String> = BTreeSet::new();
        for c in seen {
            let Ok(Some(result)) = NetResult::read(&c.bundle.join(RESULT_FILE)) else {
                continue;
            };
            attached.extend(result.networks.iter().map(|n| n.name.clone()));
            if matches!(c.status, Status::Created | Status::Running | Status::Paused) {
                current.insert(
                    c.id.clone(),
                    Member {
                        service: c.service.clone(),
                        replica: c.replica,
                        bundle: c.bundle.clone(),
                        result,
                    },
                );
            }
        }
        {
            let mut all = lock(&self.members);
            if let Some(names) = names {
                write_hosts(project, &current, names);
            }
            if current.is_empty() {
                all.remove(project.as_str());
            } else {
                all.insert(project.as_str().to_string(), current);
            }
        }
        if let Some(in_use) = in_use {
            self.release_unused(project, in_use, &attached);
        }
    }

    fn joined(
        &self,
        project: &ProjectName,
        names: &ProjectNames,
        member: (String, u32, String, PathBuf),
    ) {
        let (service, replica, id, bundle) = member;
        let result = match NetResult::read(&bundle.join(RESULT_FILE)) {
            Ok(Some(r)) => r,
            Ok(None) => return, // not a bridge container
            Err(e) => {
                tracing::warn!(container = %id, error = %e, "reading the network result");
                return;
            }
        };
        let mut all = lock(&self.members);
        let members = all.entry(project.as_str().to_string()).or_default();
        members.insert(
            id,
            Member {
                service,
                replica,
                bundle,
                result,
            },
        );
        write_hosts(project, members, names);
    }

    /// Releases the networks of `project` allocated here that are neither
    /// `in_use` by its spec nor `attached` to one of its containers.
    fn release_unused(
        &self,
        project: &ProjectName,
        in_use: &BTreeSet<String>,
        attached: &BTreeSet<String>,
    ) {
        let prefix = format!("cntnr.{}.", project.as_str());
        let mut held: BTreeSet<String> = BTreeSet::new();
        let subnets = self.state_dir.join("net").join("subnets.json");
        if let Ok(bytes) = std::fs::read(&subnets) {
            if let Ok(map) = serde_json::from_slice::<BTreeMap<String, serde_json::Value>>(&bytes) {
                held.extend(map.into_keys().filter(|k| k.starts_with(&prefix)));
            }
        }
        if let Ok(rd) = std::fs::read_dir(self.state_dir.join("net").join("conf")) {
            for e in rd.flatten() {
                let f = e.file_name().to_string_lossy().into_owned();
                if let Some(name) = f
                    .strip_suffix(".conflist")
                    .filter(|n| n.starts_with(&prefix))
                {
                    held.insert(name.to_string());
                }
            }
        }
        for name in held {
            let net = &name[prefix.len()..];
            if in_use.contains(net) || attached.contains(&name) {
                continue;
            }
            match release_network(&self.state_dir, project.as_str(), net) {
                Ok(()) => tracing::info!(project = %project, network = %net, "network released"),
                Err(e) => {
                    tracing::warn!(project = %project, network = %net, error = %e, "releasing a network")
                }
            }
        }
    }
}

/// Rewrites the hosts file of every member (unchanged files are left alone).
fn write_hosts(project: &ProjectName, members: &BTreeMap<String, Member>, names: &ProjectNames) {
    for (id, m) in members {
        let path = hosts_path(&m.bundle);
        if !path.parent().is_some_and(Path::is_dir) {
            continue;
        }
        let text = render(id, m, members, names);
        if let Err(e) = write_atomic(&path, text.as_bytes()) {
            tracing::warn!(project = %project, container = %id, error = %e, "writing the hosts file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cntnr_hook::NetworkResult;

    fn member(service: &str, replica: u32, nets: &[(&str, &str)]) -> Member {
        Member {
            service: service.into(),
            replica,
            bundle: PathBuf::new(),
            result: NetResult {
                container_id: format!("p-{service}-{replica}"),
                networks: nets
                    .iter()
                    .map(|(n, ip)| NetworkResult {
                        name: format!("cntnr.p.{n}"),
                        ifname: "eth0".into(),
                        ips: vec![ip.parse().unwrap()],
                        cni_result: serde_json::Value::Null,
                        conflist: serde_json::Value::Null,
                    })
                    .collect(),
                ports: vec![],
            },
        }
    }

    #[test]
    fn addresses_come_from_the_hooks_result_in_the_bundle() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(container_addresses(d.path()), (None, vec![]));
        let mut m = member("web", 1, &[("default", "10.90.0.7")]);
        m.result.ports.push(cntnr_hook::request::PortMapping4Cni {
            host_port: 18081,
            container_port: 8080,
            protocol: cntnr_hook::PortProtocol::Tcp,
            host_ip: "127.0.0.1".into(),
        });
        std::fs::write(
            d.path().join(RESULT_FILE),
            serde_json::to_vec(&m.result).unwrap(),
        )
        .unwrap();
        let (ip, published) = container_addresses(d.path());
        assert_eq!(ip, Some("10.90.0.7".parse().unwrap()));
        assert_eq!(
            published,
            [crate::registration::PublishedPort {
                container_port: 8080,
                host_port: 18081,
                protocol: cntnr_model::Protocol::Tcp,
            }]
        );
    }

    #[tokio::test]
    async fn bridge_containers_created_without_networking_are_a_warning() {
        let d = tempfile::tempdir().unwrap();
        let net = Net::new(d.path(), true, SubnetPool::default()).unwrap();
        let p = ProjectName::new("p").unwrap();
        let spec = cntnr_model::load_stored(
            &p,
            "projects/p",
            "services:\n  web:\n    image: x\n  solo:\n    image: x\n    network_mode: none\n",
        )
        .unwrap();
        let container = |service: &str, wired: bool| {
            let mut annotations: BTreeMap<String, String> = [
                (annotations::SERVICE.to_string(), service.to_string()),
                (annotations::REPLICA.to_string(), "1".to_string()),
            ]
            .into();
            if wired {
                annotations.insert(cntnr_hook::REQUEST_ANNOTATION.into(), "{}".into());
            }
            ContainerState {
                id: cntnr_reconcile::runtime::ContainerId::new(format!("p-{service}-1")).unwrap(),
                pid: 1,
                status: Status::Running,
                bundle: d.path().join(service),
                annotations,
            }
        };
        let record = || StatusRecord {
            node: cntnr_model::NodeName::new("n1").unwrap(),
            generation: 1,
            updated: 1,
            containers: vec![],
            errors: vec![],
            warnings: vec![],
        };
        net.sync(
            &p,
            Some(&spec),
            &[container("web", false), container("solo", false)],
        )
        .await;
        let mut r = record();
        net.annotate(&p, &mut r);
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert!(
            r.warnings[0].starts_with("p-web-1: created without bridge networking"),
            "{:?}",
            r.warnings
        );
        net.sync(&p, Some(&spec), &[container("web", true)]).await;
        let mut r = record();
        net.annotate(&p, &mut r);
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    }

    #[test]
    fn hook_failures_read_as_one_line() {
        let e = anyhow!("runc create p-web-1: exit Some(1): runc create failed: unable to start container process: error during container init: error running hook #0: error running hook: exit status 1, stdout: , stderr: cntnr-hook create: container p-web-1: port 127.0.0.1:41019/tcp is already in use on this host\n");
        assert_eq!(
            explain_create_error("p-web-1", e).to_string(),
            "creating p-web-1: network hook failed (exit status 1): port 127.0.0.1:41019/tcp is already in use on this host"
        );
        let e = anyhow!("runc create p-web-1: … error running hook #0: error running hook: signal: killed, stdout: , stderr: ");
        assert_eq!(
            explain_create_error("p-web-1", e).to_string(),
            "creating p-web-1: network hook failed (signal: killed)"
        );
        let e = anyhow!("runc create p-web-1: exit Some(1): no such file");
        assert_eq!(
            explain_create_error("p-web-1", e).to_string(),
            "runc create p-web-1: exit Some(1): no such file"
        );
    }

    #[test]
    fn a_replica_sees_only_the_members_it_shares_a_network_with() {
        let members: BTreeMap<String, Member> = [
            (
                "p-web-1".to_string(),
                member("web", 1, &[("front", "10.90.1.2"), ("back", "10.90.2.2")]),
            ),
            (
                "p-db-1".to_string(),
                member("db", 1, &[("back", "10.90.2.3")]),
            ),
            (
                "p-proxy-1".to_string(),
                member("proxy", 1, &[("front", "10.90.1.3")]),
            ),
        ]
        .into_iter()
        .collect();
        let mut names = ProjectNames::new();
        names.insert(
            "db".into(),
            ServiceNames {
                aliases: [("cntnr.p.back".to_string(), vec!["postgres".to_string()])].into(),
                ..ServiceNames::default()
            },
        );
        names.insert(
            "proxy".into(),
            ServiceNames {
                hostname: Some("edge".into()),
                extra_hosts: vec![("gw".into(), "192.0.2.1".parse().unwrap())],
                ..ServiceNames::default()
            },
        );
        let web = render("p-web-1", &members["p-web-1"], &members, &names);
        assert!(
            web.contains("10.90.2.3\tdb postgres db-1 p-db-1\n"),
            "{web}"
        );
        assert!(
            web.contains("10.90.1.3\tproxy proxy-1 p-proxy-1\n"),
            "{web}"
        );
        assert!(web.contains("10.90.1.2\tp-web-1\n"), "{web}");
        let db = render("p-db-1", &members["p-db-1"], &members, &names);
        assert!(!db.contains("proxy"), "{db}");
        assert!(db.contains("10.90.2.2\tweb web-1 p-web-1\n"), "{db}");
        let proxy = render("p-proxy-1", &members["p-proxy-1"], &members, &names);
        assert!(!proxy.contains("\tdb"), "{proxy}");
        assert!(proxy.contains("10.90.1.3\tedge\n"), "{proxy}");
        assert!(proxy.ends_with("192.0.2.1\tgw\n"), "{proxy}");
    }
}
