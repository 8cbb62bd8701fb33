//! Service names inside a project: a generated `/etc/hosts`.
//!
//! The agent renders one file per container from the project's running
//! replicas on this node ([`hosts_file`], pure) and replaces it with
//! [`write_atomic`] whenever a replica starts, stops or changes IP. A file
//! bind mount pins the old inode (a rename would never be seen), so the file
//! lives in a directory that is bind-mounted read-only into the container
//! ([`HOSTS_DIR_IN_CONTAINER`]), and the container's `/etc/hosts` is a
//! symlink into it: readers see either the old or the new file, never half.

use std::io::Write;
use std::net::IpAddr;
use std::path::Path;

/// Where the bundle builder mounts the container's hosts dir (read-only).
pub const HOSTS_DIR_IN_CONTAINER: &str = "/run/cntnr/net";
/// The hosts dir inside the bundle (mounted at [`HOSTS_DIR_IN_CONTAINER`]).
pub const HOSTS_DIR_IN_BUNDLE: &str = "net";

/// The hosts file of the container whose bundle is `bundle`.
pub fn hosts_path(bundle: &Path) -> std::path::PathBuf {
    bundle.join(HOSTS_DIR_IN_BUNDLE).join("hosts")
}

/// The read-only bind mount of the container's hosts dir
/// (`<bundle>/net` at [`HOSTS_DIR_IN_CONTAINER`]) for `config.json`. The
/// bundle builder also makes the rootfs's `/etc/hosts` a symlink to
/// `/run/cntnr/net/hosts` (in the container's overlay upper dir, or its
/// rootless copy) instead of bind-mounting a file over it.
pub fn hosts_mount(bundle: &Path) -> Result<oci_spec::runtime::Mount, oci_spec::OciSpecError> {
    oci_spec::runtime::MountBuilder::default()
        .destination(HOSTS_DIR_IN_CONTAINER)
        .typ("bind")
        .source(bundle.join(HOSTS_DIR_IN_BUNDLE))
        .options(vec![
            "rbind".to_string(),
            "ro".into(),
            "nosuid".into(),
            "nodev".into(),
            "noexec".into(),
        ])
        .build()
}

/// A running replica of the project, as the agent observes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaAddr {
    /// Service name.
    pub service: String,
    /// Replica number, from 1.
    pub replica: u32,
    /// Container id (`<project>-<service>-<replica>`).
    pub container_id: String,
    /// Its IP on the network shared with the reader.
    pub ip: IpAddr,
    /// Network aliases of the service on that network.
    pub aliases: Vec<String>,
}

/// The `/etc/hosts` of a container named `hostname` (with `own_ip`, if
/// any): localhost entries, then every replica (`service`, its aliases, the
/// container id and `service-replica`), then `extra_hosts`. A service with
/// several replicas appears on several lines: resolvers that return every
/// match (musl; glibc's `getaddrinfo`) get all of them. Output is sorted,
/// so the same input always renders the same bytes (no needless rewrite).
pub fn hosts_file(
    hostname: &str,
    own_ip: Option<IpAddr>,
    replicas: &[ReplicaAddr],
    extra_hosts: &[(String, IpAddr)],
) -> String {
    let mut out = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    match own_ip {
        Some(ip) => out.push_str(&format!("{ip}\t{hostname}\n")),
        None => out.push_str(&format!("127.0.1.1\t{hostname}\n")),
    }
    let mut sorted: Vec<&ReplicaAddr> = replicas.iter().collect();
    sorted.sort_by(|a, b| (&a.service, a.replica, a.ip).cmp(&(&b.service, b.replica, b.ip)));
    for r in sorted {
        let mut names = vec![r.service.clone()];
        names.extend(r.aliases.iter().cloned());
        names.push(format!("{}-{}", r.service, r.replica));
        names.push(r.container_id.clone());
        names.dedup();
        out.push_str(&format!("{}\t{}\n", r.ip, names.join(" ")));
    }
    for (name, ip) in extra_hosts {
        out.push_str(&format!("{ip}\t{name}\n"));
    }
    out
}

/// Replaces `path` with `content` atomically: a temp file in the same dir,
/// fsynced, renamed over it. Unchanged content is not rewritten.
pub fn write_atomic(path: &Path, content: &[u8]) -> std::io::Result<()> {
    replace(path, content, true)
}

/// [`write_atomic`] with or without the fsync: a file that means nothing
/// after a host crash (the container's result file: its netns and veth are
/// gone too) is not worth the disk flush on every container start.
pub(crate) fn replace(path: &Path, content: &[u8], sync: bool) -> std::io::Result<()> {
    if std::fs::read(path).is_ok_and(|old| old == content) {
        return Ok(());
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(content)?;
        if sync {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(service: &str, replica: u32, ip: &str) -> ReplicaAddr {
        ReplicaAddr {
            service: service.into(),
            replica,
            container_id: format!("shop-{service}-{replica}"),
            ip: ip.parse().unwrap(),
            aliases: vec![],
        }
    }

    #[test]
    fn every_replica_is_listed_under_its_service_name() {
        let mut db = r("db", 1, "10.90.0.3");
        db.aliases = vec!["postgres".into()];
        let out = hosts_file(
            "shop-web-1",
            Some("10.90.0.2".parse().unwrap()),
            &[r("web", 2, "10.90.0.5"), db, r("web", 1, "10.90.0.2")],
            &[("gw".into(), "192.0.2.1".parse().unwrap())],
        );
        let lines: Vec<&str> = out.lines().skip(6).collect();
        assert_eq!(
            lines,
            [
                "10.90.0.2\tshop-web-1",
                "10.90.0.3\tdb postgres db-1 shop-db-1",
                "10.90.0.2\tweb web-1 shop-web-1",
                "10.90.0.5\tweb web-2 shop-web-2",
                "192.0.2.1\tgw",
            ]
        );
        assert!(out.starts_with("127.0.0.1\tlocalhost\n"));
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("hosts");
        write_atomic(&p, b"a\n").unwrap();
        let ino1 = std::fs::metadata(&p)
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap();
        write_atomic(&p, b"a\n").unwrap();
        let ino2 = std::fs::metadata(&p)
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap();
        assert_eq!(ino1, ino2, "unchanged content is not rewritten");
        write_atomic(&p, b"b\n").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"b\n");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
