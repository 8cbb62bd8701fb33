//! `config.json` from the image config and the request, with docker's
//! semantics, through oci-spec's builders.

use super::idmap::RootlessIds;
use super::user::{self, ResolvedUser};
use super::{ioe, BundleConfig, BundleError, ContainerRequest, MountRequest, NetworkMode};
use crate::images::model::ImageConfig;
use crate::runtime::{annotations, ContainerId, Signal};
use crate::unpack::resolve_dir_in_root;
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, Mount, MountBuilder, PosixRlimitBuilder, PosixRlimitType,
    ProcessBuilder, RootBuilder, Spec, UserBuilder,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// Docker's default capability set.
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

const ALL_CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Sysctls docker accepts: namespaced ones only (`net.*` needs a private netns).
fn sysctl_allowed(key: &str, host_net: bool) -> bool {
    let ipc = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    ipc.contains(&key) || key.starts_with("fs.mqueue.") || (key.starts_with("net.") && !host_net)
}

pub(super) fn build(
    cfg: &BundleConfig,
    id: &ContainerId,
    bundle: &Path,
    rootfs: &Path,
    image: &ImageConfig,
    req: &ContainerRequest,
) -> Result<Spec, BundleError> {
    let invalid = |reason: String| BundleError::Invalid {
        service: format!("{}/{}", req.project, req.service),
        reason,
    };
    let exec = image.config.clone().unwrap_or_default();

    // entrypoint + command, as docker combines them: a service entrypoint
    // resets the image's cmd; a service command replaces only the cmd.
    let (entrypoint, cmd) = match &req.entrypoint {
        Some(ep) => (ep.clone(), req.command.clone().unwrap_or_default()),
        None => (
            exec.entrypoint.clone().unwrap_or_default(),
            req.command.clone().or(exec.cmd.clone()).unwrap_or_default(),
        ),
    };
    let mut args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(invalid(
            "no command: neither the image nor the service sets entrypoint or command".into(),
        ));
    }

    // User, resolved against the image's own /etc files.
    let user_spec = req.user.clone().or(exec.user.clone()).unwrap_or_default();
    let passwd = read_in_root(rootfs, "etc/passwd");
    let group = read_in_root(rootfs, "etc/group");
    let user: ResolvedUser = user::resolve(&user_spec, &passwd, &group).map_err(invalid)?;

    // Env: the image's, then the service's on top (by key, order kept).
    let mut env: Vec<(String, String)> = Vec::new();
    fn set(env: &mut Vec<(String, String)>, k: &str, v: &str) {
        match env.iter_mut().find(|(ek, _)| ek == k) {
            Some(e) => e.1 = v.to_string(),
            None => env.push((k.to_string(), v.to_string())),
        }
    }
    for kv in exec.env.clone().unwrap_or_default() {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        set(&mut env, k, v);
    }
    for (k, v) in &req.environment {
        set(&mut env, k, v);
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        set(
            &mut env,
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    }
    let hostname = req.hostname.clone().unwrap_or_else(|| id.to_string());
    if !env.iter().any(|(k, _)| k == "HOSTNAME") {
        set(&mut env, "HOSTNAME", &hostname);
    }
    if !env.iter().any(|(k, _)| k == "HOME") {
        set(&mut env, "HOME", user.home.as_deref().unwrap_or("/"));
    }
    let env: Vec<String> = env.into_iter().map(|(k, v)| format!("{k}={v}")).collect();

    let cwd = req
        .working_dir
        .clone()
        .or(exec.working_dir.clone())
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        return Err(invalid(format!("working_dir {cwd:?} must be absolute")));
    }
    // Create it inside the rootfs (never following symlinks out), as docker does.
    resolve_dir_in_root(rootfs, Path::new(&cwd), true)
        .map_err(ioe("creating working_dir", Path::new(&cwd)))?;

    // Capabilities: docker's default set, `cap_drop`, then `cap_add`.
    if req.privileged && !cfg.policy.allow_privileged {
        return Err(invalid(
            "privileged containers are refused by this agent's policy (--allow-privileged)".into(),
        ));
    }
    let mut caps: HashSet<String> = if req.privileged {
        ALL_CAPABILITIES.iter().map(|s| s.to_string()).collect()
    } else {
        DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect()
    };
    let norm = |c: &str| {
        let up = c.trim().to_ascii_uppercase();
        if up.starts_with("CAP_") || up == "ALL" {
            up
        } else {
            format!("CAP_{up}")
        }
    };
    for c in &req.cap_drop {
        match norm(c).as_str() {
            "ALL" => caps.clear(),
            c => {
                caps.remove(c);
            }
        }
    }
    for c in &req.cap_add {
        match norm(c).as_str() {
            "ALL" => caps.extend(ALL_CAPABILITIES.iter().map(|s| s.to_string())),
            c => {
                caps.insert(c.to_string());
            }
        }
    }
    let mut capset = HashSet::new();
    for c in &caps {
        let cap: Capability = serde_json::from_value(serde_json::Value::String(c.clone()))
            .map_err(|_| invalid(format!("unknown capability {c}")))?;
        capset.insert(cap);
    }
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(capset.clone())
        .effective(capset.clone())
        .permitted(capset)
        .build()?;

    let mut rlimits = Vec::new();
    for u in &req.ulimits {
        let typ: PosixRlimitType = serde_json::from_value(serde_json::Value::String(format!(
            "RLIMIT_{}",
            u.name.to_ascii_uppercase()
        )))
        .map_err(|_| invalid(format!("unknown ulimit {}", u.name)))?;
        rlimits.push(
            PosixRlimitBuilder::default()
                .typ(typ)
                .soft(u.soft)
                .hard(u.hard)
                .build()?,
        );
    }

    // init: true, as docker does it: a static init (tini) bind-mounted
    // read-only from the host runs as PID 1 and execs nothing itself; it
    // forwards signals to the command, its child, and reaps orphans.
    let mut init_mount = None;
    if req.init {
        let bin = cfg.init_binary.clone().ok_or_else(|| {
            invalid(format!(
                "init: true but this agent has no init binary (install Debian's tini for {})",
                super::DEFAULT_INIT_BINARY
            ))
        })?;
        if !bin.is_file() {
            return Err(invalid(format!(
                "init: true but the init binary {} is missing",
                bin.display()
            )));
        }
        init_mount = Some(bind(&bin, super::INIT_PATH, true)?);
        args = [super::INIT_PATH.to_string(), "--".to_string()]
            .into_iter()
            .chain(args)
            .collect();
    }

    // In a user namespace (rootless) uid/gid are the container's view: only
    // mapped ids can be used (0 = the agent's user, plus any subordinate
    // range). Supplementary groups need runc to run as root of the namespace
    // (see `idmap`); otherwise runc refuses them.
    let (uid, gid) = (user.uid, user.gid);
    let rootless_ids = cfg.rootless.then(|| {
        cfg.rootless_ids.clone().unwrap_or_else(|| {
            RootlessIds::single(
                rustix::process::geteuid().as_raw(),
                rustix::process::getegid().as_raw(),
            )
        })
    });
    if let Some(ids) = &rootless_ids {
        if !ids.maps_uid(uid) || !ids.maps_gid(gid) {
            return Err(invalid(format!(
                "user {uid}:{gid} is not mapped in this rootless agent's user namespace \
                 (only 0 is, unless the agent's user has /etc/subuid and /etc/subgid \
                 ranges and newuidmap/newgidmap are installed)"
            )));
        }
    }
    let runc_in_userns = rootless_ids
        .as_ref()
        .is_some_and(RootlessIds::runc_in_userns);
    let mut ubuilder = UserBuilder::default().uid(uid).gid(gid);
    if !user.additional_gids.is_empty() && (!cfg.rootless || runc_in_userns) {
        ubuilder = ubuilder.additional_gids(user.additional_gids.clone());
    }
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(ubuilder.build()?)
        .args(args)
        .env(env)
        .cwd(PathBuf::from(&cwd))
        .capabilities(capabilities)
        .rlimits(rlimits)
        .no_new_privileges(!req.privileged)
        .build()?;

    let mut spec = match &rootless_ids {
        Some(ids) => {
            let mut spec = Spec::rootless(
                rustix::process::geteuid().as_raw(),
                rustix::process::getegid().as_raw(),
            );
            let (uids, gids) = ids.oci()?;
            if let Some(linux) = spec.linux_mut() {
                if runc_in_userns {
                    // runc runs inside the agent's user namespace: the
                    // container shares it instead of making its own.
                    let mut ns = linux.namespaces().clone().unwrap_or_default();
                    ns.retain(|n| n.typ() != LinuxNamespaceType::User);
                    linux.set_namespaces(Some(ns));
                    linux.set_uid_mappings(None);
                    linux.set_gid_mappings(None);
                } else {
                    linux.set_uid_mappings(Some(uids));
                    linux.set_gid_mappings(Some(gids));
                }
            }
            spec
        }
        None => Spec::default(),
    };
    spec.set_process(Some(process));
    spec.set_root(Some(
        RootBuilder::default()
            .path(rootfs.to_path_buf())
            .readonly(req.read_only)
            .build()?,
    ));
    spec.set_hostname(Some(hostname.clone()));
    spec.set_domainname(req.domainname.clone());

    // Mounts: the defaults, generated /etc files, then the service's.
    let mut mounts: Vec<Mount> = spec.mounts().clone().unwrap_or_default();
    if cfg.rootless {
        // Host network: the host's /sys is bind-mounted (runc's rootless spec does the same).
        mounts.retain(|m| m.destination() != Path::new("/sys"));
        mounts.push(
            MountBuilder::default()
                .destination("/sys")
                .typ("none")
                .source("/sys")
                .options(vec![
                    "rbind".into(),
                    "nosuid".into(),
                    "noexec".into(),
                    "nodev".into(),
                    "ro".into(),
                ])
                .build()?,
        );
    }
    let host_net = cfg.rootless || req.network == NetworkMode::Host;
    let etc = bundle.join("etc");
    fs::create_dir_all(&etc).map_err(ioe("creating etc", &etc))?;
    write_etc(&etc, &hostname, req, !host_net)?;
    for name in ["resolv.conf", "hostname"] {
        mounts.push(bind(&etc.join(name), &format!("/etc/{name}"), true)?);
    }
    // /etc/hosts: a symlink into the read-only hosts dir, so the agent can
    // replace the file by rename (see the module docs).
    link_etc_hosts(rootfs)?;
    // /run/cntnr: the agent's files for the container (`env`, `leader`),
    // replaced by rename like the hosts file; `net/` is the mount point of
    // the hosts dir below (made here: the read-only mount cannot get one).
    let run_dir = super::run_dir(bundle);
    fs::create_dir_all(run_dir.join("net")).map_err(ioe("creating the run dir", &run_dir))?;
    mounts.push(
        MountBuilder::default()
            .destination(super::RUN_DIR_IN_CONTAINER)
            .typ("bind")
            .source(&run_dir)
            .options(vec![
                "rbind".to_string(),
                "ro".into(),
                "nosuid".into(),
                "nodev".into(),
                "noexec".into(),
            ])
            .build()?,
    );
    let hosts_dir = bundle.join(super::HOSTS_DIR_IN_BUNDLE);
    mounts.push(
        MountBuilder::default()
            .destination(super::HOSTS_DIR_IN_CONTAINER)
            .typ("bind")
            .source(&hosts_dir)
            .options(vec![
                "rbind".to_string(),
                "ro".into(),
                "nosuid".into(),
                "nodev".into(),
                "noexec".into(),
            ])
            .build()?,
    );
    if let Some(m) = init_mount {
        mounts.push(m);
    }
    for m in &req.mounts {
        mounts.push(service_mount(cfg, req, m).map_err(|e| match e {
            BundleError::Invalid { reason, .. } => invalid(reason),
            other => other,
        })?);
    }
    spec.set_mounts(Some(mounts));

    // The bridge wiring: ignored rootless (containers share the host's
    // network, no CNI without root), refused with host or none.
    let wiring = match (&req.bridge, &req.network) {
        (None, _) => None,
        (Some(_), _) if cfg.rootless => None,
        (Some(w), NetworkMode::Bridge) => Some(w),
        (Some(_), other) => {
            return Err(invalid(format!(
                "bridge network wiring given for network_mode {}",
                if *other == NetworkMode::Host {
                    "host"
                } else {
                    "none"
                }
            )))
        }
    };

    // Annotations: the service's, the network wiring's, then ours (which
    // cannot be overridden).
    let mut ann: HashMap<String, String> = req.annotations.clone().into_iter().collect();
    if let Some(w) = wiring {
        ann.extend(w.annotations.clone());
    }
    let stop_signal = req
        .stop_signal
        .clone()
        .or(exec.stop_signal.clone())
        .unwrap_or_else(|| "SIGTERM".into());
    if Signal::parse(&stop_signal).is_none() {
        return Err(invalid(format!("unknown stop_signal {stop_signal}")));
    }
    for (k, v) in [
        (annotations::PROJECT, req.project.clone()),
        (annotations::SERVICE, req.service.clone()),
        (annotations::REPLICA, req.replica.to_string()),
        (annotations::CONFIG_HASH, req.config_hash.clone()),
        (annotations::NODE, cfg.node.clone()),
        (annotations::STOP_SIGNAL, stop_signal),
    ] {
        ann.insert(k.to_string(), v);
    }
    spec.set_annotations(Some(ann));
    if let Some(w) = wiring {
        spec.set_hooks(Some(w.hooks.clone()));
    }

    // Linux: namespaces, sysctls, resources.
    let mut linux = spec
        .linux()
        .clone()
        .unwrap_or_else(|| LinuxBuilder::default().build().expect("empty linux"));
    if req.network == NetworkMode::Host && !cfg.rootless && !cfg.policy.allow_host_network {
        return Err(invalid(
            "network_mode: host is refused by this agent's policy (--allow-host-network)".into(),
        ));
    }
    let mut namespaces = linux.namespaces().clone().unwrap_or_default();
    namespaces.retain(|n| n.typ() != LinuxNamespaceType::Network);
    if !host_net {
        // A new namespace (no path): runc creates it, the hook wires it.
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .build()?,
        );
    }
    linux.set_namespaces(Some(namespaces));
    let mut sysctl = HashMap::new();
    for (k, v) in &req.sysctls {
        if !sysctl_allowed(k, host_net) {
            return Err(invalid(format!(
                "sysctl {k} is not namespaced (or needs a private network) and is refused"
            )));
        }
        sysctl.insert(k.clone(), v.clone());
    }
    // runc before 1.2 ignores the spec's `domainname`; the UTS domain is
    // also set through its namespaced sysctl, which every runc applies.
    if let Some(d) = req.domainname.as_deref().filter(|d| !d.is_empty()) {
        sysctl.insert("kernel.domainname".to_string(), d.to_string());
    }
    linux.set_sysctl((!sysctl.is_empty()).then_some(sysctl));
    if req.privileged {
        linux.set_masked_paths(None);
        linux.set_readonly_paths(None);
    }
    if cfg.rootless {
        // No cgroup limits rootless (no delegated cgroup is assumed).
        linux.set_resources(None);
    } else {
        let device_rule = LinuxDeviceCgroupBuilder::default()
            .allow(req.privileged)
            .access("rwm")
            .build()?;
        let mut res = LinuxResourcesBuilder::default().devices(vec![device_rule]);
        if let Some(cpus) = req.limits.cpus {
            if cpus <= 0.0 {
                return Err(invalid(format!("cpus must be positive, got {cpus}")));
            }
            let period: u64 = 100_000;
            res = res.cpu(
                LinuxCpuBuilder::default()
                    .period(period)
                    .quota((cpus * period as f64).round() as i64)
                    .build()?,
            );
        }
        if let Some(mem) = req.limits.memory {
            res = res.memory(LinuxMemoryBuilder::default().limit(mem).build()?);
        }
        if let Some(p) = req.limits.pids {
            res = res.pids(LinuxPidsBuilder::default().limit(p).build()?);
        }
        linux.set_resources(Some(res.build()?));
        linux.set_cgroups_path(Some(PathBuf::from(format!("/cntnr/{id}"))));
    }
    spec.set_linux(Some(linux));
    Ok(spec)
}

fn bind(source: &Path, target: &str, ro: bool) -> Result<Mount, BundleError> {
    let mut options = vec!["rbind".to_string(), "nosuid".into(), "nodev".into()];
    options.push(if ro { "ro".into() } else { "rw".into() });
    Ok(MountBuilder::default()
        .destination(target)
        .typ("bind")
        .source(source)
        .options(options)
        .build()?)
}

fn check_target(target: &str) -> Result<(), String> {
    let p = Path::new(target);
    if !p.is_absolute() || p.components().any(|c| c == Component::ParentDir) {
        return Err(format!(
            "mount target {target:?} must be an absolute path without '..'"
        ));
    }
    Ok(())
}

fn service_mount(
    cfg: &BundleConfig,
    req: &ContainerRequest,
    m: &MountRequest,
) -> Result<Mount, BundleError> {
    let inv = |reason: String| BundleError::Invalid {
        service: String::new(),
        reason,
    };
    match m {
        MountRequest::Bind {
            source,
            target,
            read_only,
        } => {
            check_target(target).map_err(inv)?;
            // Canonical (symlinks resolved) source, under an allowed prefix.
            let real = fs::canonicalize(source)
                .map_err(|e| inv(format!("bind source {}: {e}", source.display())))?;
            let allowed = cfg
                .policy
                .allow_host_paths
                .iter()
                .filter_map(|p| fs::canonicalize(p).ok())
                .any(|prefix| real.starts_with(&prefix));
            if !allowed {
                return Err(inv(format!(
                    "bind mount of {} is outside the allowed host paths (--allow-host-path)",
                    real.display()
                )));
            }
            bind(&real, target, *read_only)
        }
        MountRequest::Volume {
            name,
            target,
            read_only,
        } => {
            check_target(target).map_err(inv)?;
            let ok = !name.is_empty()
                && name.as_bytes()[0].is_ascii_alphanumeric()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
            if !ok {
                return Err(inv(format!("invalid volume name {name:?}")));
            }
            let dir = cfg.volume_path(&req.project, name);
            fs::create_dir_all(&dir).map_err(ioe("creating volume", &dir))?;
            bind(&dir, target, *read_only)
        }
        MountRequest::Tmpfs { target, size, mode } => {
            check_target(target).map_err(inv)?;
            let mut options = vec!["nosuid".to_string(), "nodev".into()];
            if let Some(s) = size {
                options.push(format!("size={s}"));
            }
            options.push(format!("mode={:o}", mode.unwrap_or(0o1777)));
            Ok(MountBuilder::default()
                .destination(target.as_str())
                .typ("tmpfs")
                .source("tmpfs")
                .options(options)
                .build()?)
        }
    }
}

/// The names a container's own /etc/hosts line gives it: `hostname`, with
/// `hostname.domainname` first when a `domainname` is set (as docker does).
pub fn host_names(hostname: &str, domainname: Option<&str>) -> String {
    match domainname {
        Some(d) if !d.is_empty() => format!("{hostname}.{d} {hostname}"),
        _ => hostname.to_string(),
    }
}

fn write_etc(
    etc: &Path,
    hostname: &str,
    req: &ContainerRequest,
    private_net: bool,
) -> Result<(), BundleError> {
    let names = host_names(hostname, req.domainname.as_deref());
    let mut hosts = format!(
        "127.0.0.1\tlocalhost {names}\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n"
    );
    for (name, addr) in &req.extra_hosts {
        hosts.push_str(&format!("{addr}\t{name}\n"));
    }
    let host = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let upstream = if private_net {
        fs::read_to_string(SYSTEMD_RESOLVED_UPSTREAM).ok()
    } else {
        None
    };
    let resolv = resolv_conf(
        &host,
        upstream.as_deref(),
        private_net,
        &req.dns,
        &req.dns_search,
    );
    let bundle = etc.parent().unwrap_or(etc);
    let hosts_dir = bundle.join(super::HOSTS_DIR_IN_BUNDLE);
    fs::create_dir_all(&hosts_dir).map_err(ioe("creating hosts dir", &hosts_dir))?;
    let files: BTreeMap<PathBuf, String> = [
        (super::hosts_path(bundle), hosts),
        (etc.join("resolv.conf"), resolv),
        (etc.join("hostname"), format!("{hostname}\n")),
    ]
    .into_iter()
    .collect();
    for (p, content) in files {
        fs::write(&p, content).map_err(ioe("writing generated /etc file", &p))?;
    }
    Ok(())
}

/// systemd-resolved's list of the real upstream servers (its stub at
/// 127.0.0.53 is unreachable from a private network namespace).
const SYSTEMD_RESOLVED_UPSTREAM: &str = "/run/systemd/resolve/resolv.conf";

/// Written when a private network namespace is left with no usable
/// nameserver. Deliberately no public fallback (docker's 8.8.8.8): cntnr
/// never sends a container's lookups somewhere the operator did not name.
const NO_NAMESERVER: &str =
    "# cntnr: the host has no nameserver usable from a private network; set dns: in the compose file\n";

/// The container's `resolv.conf`, as docker makes it. Host network, nothing
/// set: the host's file as is. Otherwise the host's nameservers (`dns`
/// replaces them), `search` (`dns_search` replaces it) and `options`; in a
/// private namespace loopback nameservers are dropped (they are the
/// container's own loopback there), after first trying systemd-resolved's
/// `upstream` list when the host only has its stub; when none is left the
/// file names no server (unlike docker, no public fallback).
fn resolv_conf(
    host: &str,
    upstream: Option<&str>,
    private_net: bool,
    dns: &[String],
    dns_search: &[String],
) -> String {
    if !private_net && dns.is_empty() && dns_search.is_empty() {
        return host.to_string();
    }
    fn nameservers(text: &str) -> Vec<String> {
        text.lines()
            .filter_map(|l| l.trim().strip_prefix("nameserver"))
            .filter_map(|rest| rest.split_whitespace().next().map(String::from))
            .collect()
    }
    fn is_loopback(ns: &str) -> bool {
        ns.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
    }
    let mut base = host;
    if private_net && nameservers(host).iter().all(|n| is_loopback(n)) {
        if let Some(up) = upstream.filter(|u| !nameservers(u).is_empty()) {
            base = up;
        }
    }
    let mut servers = nameservers(base);
    if private_net {
        servers.retain(|n| !is_loopback(n));
    }
    if !dns.is_empty() {
        servers = dns.to_vec();
    }
    let mut out = String::new();
    if servers.is_empty() && private_net {
        out.push_str(NO_NAMESERVER);
    }
    for ns in servers {
        out.push_str(&format!("nameserver {ns}\n"));
    }
    let keep = |prefix: &str| {
        base.lines()
            .map(str::trim)
            .filter(|l| l.split_whitespace().next() == Some(prefix))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    };
    if dns_search.is_empty() {
        out.push_str(&keep("search"));
        out.push_str(&keep("domain"));
    } else {
        out.push_str(&format!("search {}\n", dns_search.join(" ")));
    }
    out.push_str(&keep("options"));
    out
}

/// Makes the rootfs's `/etc/hosts` a symlink to `hosts` in
/// [`super::HOSTS_DIR_IN_CONTAINER`] (in the overlay's upper dir, or the
/// rootless copy; the image's own file is hidden), and creates the mount
/// point. Paths resolve inside the rootfs, never following a symlink out.
fn link_etc_hosts(rootfs: &Path) -> Result<(), BundleError> {
    let in_root = |rel: &str| {
        resolve_dir_in_root(rootfs, Path::new(rel), true)
            .map_err(ioe("creating a dir in the rootfs", Path::new(rel)))
    };
    in_root(super::HOSTS_DIR_IN_CONTAINER.trim_start_matches('/'))?;
    let link = in_root("etc")?.join("hosts");
    match fs::symlink_metadata(&link) {
        Ok(m) if m.is_dir() => {
            return Err(BundleError::Invalid {
                service: rootfs.display().to_string(),
                reason: "the image's /etc/hosts is a directory".into(),
            })
        }
        Ok(_) => fs::remove_file(&link).map_err(ioe("replacing /etc/hosts", &link))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ioe("replacing /etc/hosts", &link)(e)),
    }
    let target = Path::new(super::HOSTS_DIR_IN_CONTAINER).join("hosts");
    std::os::unix::fs::symlink(&target, &link).map_err(ioe("linking /etc/hosts", &link))
}

/// Reads a file inside the rootfs without following symlinks out of it;
/// empty if missing.
fn read_in_root(rootfs: &Path, rel: &str) -> String {
    let rel = Path::new(rel);
    let Ok(dir) = resolve_dir_in_root(rootfs, rel.parent().unwrap_or(Path::new("")), false) else {
        return String::new();
    };
    let path = dir.join(rel.file_name().unwrap_or_default());
    let mut s = String::new();
    let opened = fs::File::options()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&path);
    if let Ok(mut f) = opened {
        let _ = f.read_to_string(&mut s);
    }
    s
}

use std::os::unix::fs::OpenOptionsExt;

#[cfg(test)]
mod tests {
    use super::*;

    use crate::bundle::{BridgeNetwork, Policy};
    use oci_spec::runtime::{HookBuilder, HooksBuilder};

    /// A bundle dir with a tiny rootfs whose `/etc/hosts` is a regular file.
    struct Fixture {
        dir: tempfile::TempDir,
        cfg: BundleConfig,
        image: ImageConfig,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let rootfs = dir.path().join("rootfs");
            fs::create_dir_all(rootfs.join("etc")).unwrap();
            fs::write(rootfs.join("etc/hosts"), "image's own\n").unwrap();
            fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
            let cfg = BundleConfig {
                state_dir: dir.path().join("state"),
                node: "node-a".into(),
                policy: Policy::default(),
                rootless: false,
                rootless_ids: None,
                init_binary: None,
            };
            let image = serde_json::from_value(serde_json::json!({
                "config": {"Cmd": ["sh"]},
                "rootfs": {"type": "layers", "diff_ids": []}
            }))
            .unwrap();
            Self { dir, cfg, image }
        }

        fn bundle(&self) -> PathBuf {
            self.dir.path().to_path_buf()
        }

        /// `config.json` as runc reads it.
        fn build(&self, req: &ContainerRequest) -> Result<serde_json::Value, BundleError> {
            let id = ContainerId::for_replica(&req.project, &req.service, req.replica).unwrap();
            let spec = build(
                &self.cfg,
                &id,
                &self.bundle(),
                &self.bundle().join("rootfs"),
                &self.image,
                req,
            )?;
            Ok(serde_json::to_value(&spec).unwrap())
        }
    }

    fn request(network: NetworkMode) -> ContainerRequest {
        ContainerRequest {
            project: "shop".into(),
            service: "web".into(),
            replica: 1,
            config_hash: "h".into(),
            network,
            ..Default::default()
        }
    }

    fn wiring() -> BridgeNetwork {
        let hook = |verb: &str| {
            HookBuilder::default()
                .path("/usr/libexec/cntnr-hook")
                .args(vec!["cntnr-hook".to_string(), verb.to_string()])
                .timeout(30)
                .build()
                .unwrap()
        };
        BridgeNetwork {
            hooks: HooksBuilder::default()
                .create_runtime(vec![hook("create")])
                .poststop(vec![hook("delete")])
                .build()
                .unwrap(),
            annotations: [(
                "cntnr.net.request".to_string(),
                r#"{"networks":[]}"#.to_string(),
            )]
            .into_iter()
            .collect(),
        }
    }

    fn netns(config: &serde_json::Value) -> Vec<serde_json::Value> {
        config["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["type"] == "network")
            .cloned()
            .collect()
    }

    fn mount<'a>(config: &'a serde_json::Value, dest: &str) -> Option<&'a serde_json::Value> {
        config["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == dest)
    }

    #[test]
    fn bridge_with_wiring_gets_a_new_netns_the_hooks_and_the_request() {
        let f = Fixture::new();
        let mut req = request(NetworkMode::Bridge);
        // A compose file cannot forge the hook's request.
        req.annotations
            .insert("cntnr.net.request".into(), "forged".into());
        req.annotations.insert("team".into(), "a".into());
        req.bridge = Some(wiring());
        let c = f.build(&req).unwrap();
        assert_eq!(
            netns(&c),
            [serde_json::json!({"type": "network"})],
            "a new namespace, no path"
        );
        assert_eq!(c["hooks"]["createRuntime"][0]["args"][1], "create");
        assert_eq!(
            c["hooks"]["createRuntime"][0]["path"],
            "/usr/libexec/cntnr-hook"
        );
        assert_eq!(c["hooks"]["poststop"][0]["args"][1], "delete");
        assert!(c["hooks"].get("prestart").is_none());
        assert_eq!(c["annotations"]["cntnr.net.request"], r#"{"networks":[]}"#);
        assert_eq!(c["annotations"]["team"], "a");
        assert_eq!(c["annotations"]["cntnr.project"], "shop");
    }

    #[test]
    fn bridge_without_wiring_is_an_unwired_private_netns() {
        let f = Fixture::new();
        let c = f.build(&request(NetworkMode::Bridge)).unwrap();
        assert_eq!(netns(&c), [serde_json::json!({"type": "network"})]);
        assert!(c.get("hooks").is_none_or(|h| h.is_null()));
    }

    #[test]
    fn host_and_none_get_no_hooks_and_refuse_wiring() {
        let mut f = Fixture::new();
        let none = f.build(&request(NetworkMode::None)).unwrap();
        assert_eq!(netns(&none), [serde_json::json!({"type": "network"})]);
        assert!(none.get("hooks").is_none_or(|h| h.is_null()));
        assert!(none["annotations"].get("cntnr.net.request").is_none());

        // Host network: policy first, and only for host mode.
        let e = f
            .build(&request(NetworkMode::Host))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--allow-host-network"), "{e}");
        f.cfg.policy.allow_host_network = true;
        let host = f.build(&request(NetworkMode::Host)).unwrap();
        assert!(netns(&host).is_empty(), "the host's namespace");
        assert!(host.get("hooks").is_none_or(|h| h.is_null()));

        for mode in [NetworkMode::Host, NetworkMode::None] {
            let mut req = request(mode);
            req.bridge = Some(wiring());
            let e = f.build(&req).unwrap_err().to_string();
            assert!(e.contains("bridge network wiring given"), "{e}");
        }
    }

    #[test]
    fn bridge_needs_no_host_network_policy() {
        let f = Fixture::new();
        assert!(!f.cfg.policy.allow_host_network);
        let mut req = request(NetworkMode::Bridge);
        req.bridge = Some(wiring());
        f.build(&req).unwrap();
    }

    #[test]
    fn rootless_ignores_the_wiring_and_shares_the_host_network() {
        let mut f = Fixture::new();
        f.cfg.rootless = true;
        f.cfg.rootless_ids = Some(RootlessIds::single(
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        ));
        let mut req = request(NetworkMode::Bridge);
        req.bridge = Some(wiring());
        let c = f.build(&req).unwrap();
        assert!(netns(&c).is_empty());
        assert!(c.get("hooks").is_none_or(|h| h.is_null()));
        assert!(c["annotations"].get("cntnr.net.request").is_none());
    }

    #[test]
    fn etc_hosts_is_a_symlink_into_the_read_only_hosts_dir() {
        let f = Fixture::new();
        let mut req = request(NetworkMode::Bridge);
        req.hostname = Some("web1".into());
        req.domainname = Some("corp.example".into());
        req.extra_hosts = vec![("gw.example".into(), "192.0.2.1".into())];
        let c = f.build(&req).unwrap();
        // domainname: the UTS domain, and the FQDN first on its own line.
        assert_eq!(c["hostname"], "web1");
        assert_eq!(c["domainname"], "corp.example");
        assert_eq!(c["linux"]["sysctl"]["kernel.domainname"], "corp.example");
        let m = mount(&c, HOSTS_DIR).expect("hosts dir mounted");
        assert_eq!(m["type"], "bind");
        assert_eq!(
            m["source"],
            f.bundle().join("net").display().to_string().as_str()
        );
        let opts: Vec<&str> = m["options"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o.as_str().unwrap())
            .collect();
        assert!(opts.contains(&"ro") && opts.contains(&"rbind"), "{opts:?}");
        assert!(mount(&c, "/etc/hosts").is_none(), "no file bind mount");
        assert!(mount(&c, "/etc/resolv.conf").is_some());
        assert!(mount(&c, "/etc/hostname").is_some());

        let rootfs = f.bundle().join("rootfs");
        assert_eq!(
            fs::read_link(rootfs.join("etc/hosts")).unwrap(),
            Path::new("/run/cntnr/net/hosts")
        );
        assert!(rootfs.join("run/cntnr/net").is_dir(), "mount point made");
        // /run/cntnr is the bundle's run dir, mounted before (under) net/.
        let run = mount(&c, crate::bundle::RUN_DIR_IN_CONTAINER).expect("run dir mounted");
        assert_eq!(
            run["source"],
            f.bundle().join("run").display().to_string().as_str()
        );
        assert!(run["options"].as_array().unwrap().iter().any(|o| o == "ro"));
        assert!(f.bundle().join("run/net").is_dir(), "net mount point made");
        let dests: Vec<&str> = c["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        let at = |d: &str| dests.iter().position(|x| *x == d).unwrap();
        assert!(at(crate::bundle::RUN_DIR_IN_CONTAINER) < at(HOSTS_DIR));
        let hosts = fs::read_to_string(crate::bundle::hosts_path(&f.bundle())).unwrap();
        assert!(
            hosts.starts_with("127.0.0.1\tlocalhost web1.corp.example web1\n"),
            "{hosts}"
        );
        assert!(hosts.ends_with("192.0.2.1\tgw.example\n"), "{hosts}");
        // Re-running over a rootfs that already has the link is fine.
        f.build(&req).unwrap();
    }

    #[test]
    fn etc_hosts_link_stays_inside_the_rootfs() {
        let f = Fixture::new();
        let rootfs = f.bundle().join("rootfs");
        // The image's /etc points out of the rootfs.
        let outside = f.bundle().join("outside");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("hosts"), "host file\n").unwrap();
        fs::remove_dir_all(rootfs.join("etc")).unwrap();
        std::os::unix::fs::symlink(&outside, rootfs.join("etc")).unwrap();
        f.build(&request(NetworkMode::Bridge)).unwrap();
        assert_eq!(
            fs::read_to_string(outside.join("hosts")).unwrap(),
            "host file\n"
        );
    }

    const HOSTS_DIR: &str = crate::bundle::HOSTS_DIR_IN_CONTAINER;

    #[test]
    fn resolv_conf_in_a_private_netns_never_points_at_host_loopback() {
        let resolved_stub = "# stub\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch lan\n";
        let upstream = "nameserver 192.0.2.53\nsearch lan\n";
        // systemd-resolved's stub: its upstream list instead.
        assert_eq!(
            resolv_conf(resolved_stub, Some(upstream), true, &[], &[]),
            "nameserver 192.0.2.53\nsearch lan\n"
        );
        // No upstream list: loopback dropped, and no public fallback.
        assert_eq!(
            resolv_conf(resolved_stub, None, true, &[], &[]),
            format!("{NO_NAMESERVER}search lan\noptions edns0 trust-ad\n")
        );
        // Mixed: only the loopback entry goes.
        assert_eq!(
            resolv_conf(
                "nameserver 127.0.0.1\nnameserver 198.51.100.1\n",
                None,
                true,
                &[],
                &[]
            ),
            "nameserver 198.51.100.1\n"
        );
        // Host network: the host's file untouched.
        assert_eq!(
            resolv_conf(resolved_stub, Some(upstream), false, &[], &[]),
            resolved_stub
        );
        // dns / dns_search replace what the host has.
        assert_eq!(
            resolv_conf(
                resolved_stub,
                None,
                true,
                &["10.0.0.2".into()],
                &["corp.example".into()]
            ),
            "nameserver 10.0.0.2\nsearch corp.example\noptions edns0 trust-ad\n"
        );
        assert_eq!(
            resolv_conf("nameserver 198.51.100.1\n", None, false, &[], &["x".into()]),
            "nameserver 198.51.100.1\nsearch x\n"
        );
    }

    #[test]
    fn only_namespaced_sysctls_pass() {
        assert!(sysctl_allowed("net.ipv4.ip_forward", false));
        assert!(!sysctl_allowed("net.ipv4.ip_forward", true));
        assert!(sysctl_allowed("kernel.shmmax", false));
        assert!(!sysctl_allowed("kernel.panic", false));
    }
}
