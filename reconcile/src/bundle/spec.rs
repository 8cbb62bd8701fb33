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
    LinuxMemoryBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, Mount,
    MountBuilder, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec,
    UserBuilder,
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
    let etc = bundle.join("etc");
    fs::create_dir_all(&etc).map_err(ioe("creating etc", &etc))?;
    write_etc(&etc, &hostname, req)?;
    for name in ["hosts", "resolv.conf", "hostname"] {
        mounts.push(bind(&etc.join(name), &format!("/etc/{name}"), true)?);
    }
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

    // Annotations: the service's, then ours (which cannot be overridden).
    let mut ann: HashMap<String, String> = req.annotations.clone().into_iter().collect();
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
    if let Some(h) = &req.hooks {
        spec.set_hooks(Some(h.clone()));
    }

    // Linux: namespaces, sysctls, resources.
    let mut linux = spec
        .linux()
        .clone()
        .unwrap_or_else(|| LinuxBuilder::default().build().expect("empty linux"));
    let host_net = cfg.rootless || req.network == NetworkMode::Host;
    if req.network == NetworkMode::Host && !cfg.rootless && !cfg.policy.allow_host_network {
        return Err(invalid(
            "network_mode: host is refused by this agent's policy (--allow-host-network)".into(),
        ));
    }
    let mut namespaces = linux.namespaces().clone().unwrap_or_default();
    if host_net {
        namespaces.retain(|n| n.typ() != LinuxNamespaceType::Network);
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

fn write_etc(etc: &Path, hostname: &str, req: &ContainerRequest) -> Result<(), BundleError> {
    let mut hosts = format!(
        "127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n"
    );
    for (name, addr) in &req.extra_hosts {
        hosts.push_str(&format!("{addr}\t{name}\n"));
    }
    let resolv = if req.dns.is_empty() && req.dns_search.is_empty() {
        fs::read_to_string("/etc/resolv.conf").unwrap_or_default()
    } else {
        let mut r = String::new();
        let host = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let host_ns: Vec<&str> = host
            .lines()
            .filter(|l| l.starts_with("nameserver"))
            .collect();
        if req.dns.is_empty() {
            for l in host_ns {
                r.push_str(l);
                r.push('\n');
            }
        }
        for ns in &req.dns {
            r.push_str(&format!("nameserver {ns}\n"));
        }
        if !req.dns_search.is_empty() {
            r.push_str(&format!("search {}\n", req.dns_search.join(" ")));
        }
        r
    };
    let files: BTreeMap<&str, String> = [
        ("hosts", hosts),
        ("resolv.conf", resolv),
        ("hostname", format!("{hostname}\n")),
    ]
    .into_iter()
    .collect();
    for (name, content) in files {
        let p = etc.join(name);
        fs::write(&p, content).map_err(ioe("writing generated /etc file", &p))?;
    }
    Ok(())
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

    #[test]
    fn only_namespaced_sysctls_pass() {
        assert!(sysctl_allowed("net.ipv4.ip_forward", false));
        assert!(!sysctl_allowed("net.ipv4.ip_forward", true));
        assert!(sysctl_allowed("kernel.shmmax", false));
        assert!(!sysctl_allowed("kernel.panic", false));
    }
}
