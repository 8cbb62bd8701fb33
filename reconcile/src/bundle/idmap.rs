//! Rootless id mappings for the container's user namespace.
//!
//! Always: the agent's own uid/gid is container root (`0 → euid`, size 1),
//! which the kernel lets an unprivileged process write itself. Where the
//! agent's user has subordinate ranges in `/etc/subuid` / `/etc/subgid` and
//! `newuidmap` / `newgidmap` (Debian `uidmap`) are on `PATH`, the ranges are
//! mapped too, to container ids `1, 2, …` in file order: runc sees more than
//! one mapping, cannot write `uid_map` itself, and runs the setuid helpers,
//! which check the ranges against the same files. A container can then run as
//! a non-root user (`user: 1000:1000`).
//!
//! Who writes the maps:
//! - uids and gids both have ranges ([`RootlessIds::runc_in_userns`]): the
//!   driver starts `runc create` under `unshare --user --map-users=… \
//!   --map-groups=… --map-user=0 --map-group=0` (util-linux, which runs
//!   newuidmap/newgidmap), so runc itself runs as root of that namespace and
//!   the spec has no user namespace of its own (podman's rootless approach).
//!   Needed for supplementary groups: runc refuses `additionalGids`, and skips
//!   the `/etc/group` ones, whenever its own euid is not 0, whatever the maps
//!   (runc 1.1's `setupUser`, still so in 1.2). Verbs that act on the running
//!   container (kill, exec, delete --force) join that namespace with
//!   `nsenter --user --target <init>`: only from inside may a process signal
//!   or enter a container whose user is not the agent's own uid.
//! - otherwise the maps are in the spec: runc writes a single `0 → own`
//!   line itself, or runs the helpers for a range (no supplementary groups).
//!
//! With a range, a container can leave files owned by ids of the range in
//! its (copied) rootfs, which the agent's user cannot remove; bundle removal
//! then runs `rm -rf` as root of a user namespace with the same maps.

use oci_spec::runtime::{LinuxIdMapping, LinuxIdMappingBuilder};

/// The kernel accepts at most this many lines in `uid_map` / `gid_map`.
const MAX_MAP_LINES: usize = 340;

/// One `container_id → host_id` range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRange {
    /// First id inside the container.
    pub container_id: u32,
    /// First id on the host.
    pub host_id: u32,
    /// Number of ids.
    pub size: u32,
}

/// The uid and gid mappings of a rootless container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootlessIds {
    /// uid mappings, `0 → own uid` first.
    pub uids: Vec<IdRange>,
    /// gid mappings, `0 → own gid` first.
    pub gids: Vec<IdRange>,
}

impl RootlessIds {
    /// Only the user itself, as root: what needs no helper.
    pub fn single(uid: u32, gid: u32) -> Self {
        Self {
            uids: mappings(uid, &[]),
            gids: mappings(gid, &[]),
        }
    }

    /// For this process (euid/egid): the user's first subordinate range from
    /// `/etc/subuid` and `/etc/subgid` when the matching helper is on `PATH`,
    /// else [`RootlessIds::single`]. uids and gids are decided independently.
    pub fn detect() -> Self {
        let uid = rustix::process::geteuid().as_raw();
        let gid = rustix::process::getegid().as_raw();
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let name = user_name(&passwd, uid);
        // Files are keyed by user (name or uid), for subgid too; a range
        // holding our own id cannot be mapped beside it.
        let ranges = |file: &str, helper: &str, own: u32| -> Vec<(u32, u32)> {
            if !in_path(helper) {
                return Vec::new();
            }
            let text = std::fs::read_to_string(file).unwrap_or_default();
            subordinate_ranges(&text, name, uid)
                .into_iter()
                .filter(|&(start, count)| !(start..start.saturating_add(count)).contains(&own))
                .take(1)
                .collect()
        };
        Self {
            uids: mappings(uid, &ranges("/etc/subuid", "newuidmap", uid)),
            gids: mappings(gid, &ranges("/etc/subgid", "newgidmap", gid)),
        }
    }

    /// Whether runc should run as root inside a user namespace with these
    /// maps (both uids and gids have subordinate ranges) rather than be given
    /// the maps in the spec.
    pub fn runc_in_userns(&self) -> bool {
        self.uids.len() > 1 && self.gids.len() > 1
    }

    /// `unshare` arguments (before `--` and the command) that run a command as
    /// root of a new user namespace with these maps; `0 → own` comes from
    /// `--map-user=0` / `--map-group=0`, the first range from `--map-users` /
    /// `--map-groups` (through newuidmap/newgidmap). [`RootlessIds::detect`]
    /// yields one range at most.
    pub fn unshare_args(&self) -> Vec<String> {
        let mut args = vec![
            "--user".to_string(),
            "--map-user=0".into(),
            "--map-group=0".into(),
        ];
        // util-linux 2.38 keeps only the last --map-users / --map-groups.
        for (flag, ranges) in [("--map-users", &self.uids), ("--map-groups", &self.gids)] {
            if let Some(r) = ranges.iter().find(|r| r.container_id != 0) {
                args.push(format!(
                    "{flag}={},{},{}",
                    r.host_id, r.container_id, r.size
                ));
            }
        }
        args
    }

    /// Whether container uid `uid` is mapped.
    pub fn maps_uid(&self, uid: u32) -> bool {
        covers(&self.uids, uid)
    }

    /// Whether container gid `gid` is mapped.
    pub fn maps_gid(&self, gid: u32) -> bool {
        covers(&self.gids, gid)
    }

    pub(super) fn oci(
        &self,
    ) -> Result<(Vec<LinuxIdMapping>, Vec<LinuxIdMapping>), oci_spec::OciSpecError> {
        let conv = |v: &[IdRange]| {
            v.iter()
                .map(|r| {
                    LinuxIdMappingBuilder::default()
                        .container_id(r.container_id)
                        .host_id(r.host_id)
                        .size(r.size)
                        .build()
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok((conv(&self.uids)?, conv(&self.gids)?))
    }
}

fn covers(ranges: &[IdRange], id: u32) -> bool {
    ranges
        .iter()
        .any(|r| id >= r.container_id && id - r.container_id < r.size)
}

/// The name of `uid` in a passwd file.
fn user_name(passwd: &str, uid: u32) -> Option<&str> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && f[2].parse() == Ok(uid)).then_some(f[0])
    })
}

/// Whether `name` is on `PATH`, as runc looks the helpers up.
fn in_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
}

/// The `(start, count)` ranges of a subuid/subgid file that belong to the user
/// (lines `name:start:count` or `uid:start:count`), in file order.
pub fn subordinate_ranges(text: &str, name: Option<&str>, uid: u32) -> Vec<(u32, u32)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.trim().split(':').collect();
            if f.len() != 3 {
                return None;
            }
            let owner = Some(f[0]) == name || f[0].parse() == Ok(uid);
            let (start, count) = (f[1].parse().ok()?, f[2].parse::<u32>().ok()?);
            (owner && count > 0).then_some((start, count))
        })
        .collect()
}

/// `0 → own` plus each range at container ids `1, 2, …`. Ranges that contain
/// `own` (the kernel refuses overlapping host ranges) or would run past the
/// id space are dropped, as are lines beyond the kernel's limit.
pub fn mappings(own: u32, ranges: &[(u32, u32)]) -> Vec<IdRange> {
    let mut out = vec![IdRange {
        container_id: 0,
        host_id: own,
        size: 1,
    }];
    let mut next: u32 = 1;
    for &(start, count) in ranges {
        if out.len() == MAX_MAP_LINES {
            break;
        }
        let Some(end) = start.checked_add(count) else {
            continue;
        };
        let overlaps_own = own >= start && own < end;
        let overlaps_prev = out[1..]
            .iter()
            .any(|r| start < r.host_id + r.size && r.host_id < end);
        let Some(next_after) = next.checked_add(count) else {
            break;
        };
        if overlaps_own || overlaps_prev {
            continue;
        }
        out.push(IdRange {
            container_id: next,
            host_id: start,
            size: count,
        });
        next = next_after;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUBUID: &str =
        "alice:100000:65536\nbob:165536:65536\n# junk\n1001:300000:10\nalice:400000:5\n";

    #[test]
    fn ranges_by_name_or_uid_in_file_order() {
        assert_eq!(
            subordinate_ranges(SUBUID, Some("alice"), 1000),
            vec![(100000, 65536), (400000, 5)]
        );
        assert_eq!(
            subordinate_ranges(SUBUID, Some("carol"), 1001),
            vec![(300000, 10)]
        );
        assert!(subordinate_ranges(SUBUID, None, 1002).is_empty());
    }

    #[test]
    fn own_id_is_root_and_ranges_follow_contiguously() {
        let m = mappings(1000, &[(100000, 65536), (400000, 5)]);
        assert_eq!(
            m,
            vec![
                IdRange {
                    container_id: 0,
                    host_id: 1000,
                    size: 1
                },
                IdRange {
                    container_id: 1,
                    host_id: 100000,
                    size: 65536
                },
                IdRange {
                    container_id: 65537,
                    host_id: 400000,
                    size: 5
                },
            ]
        );
        let ids = RootlessIds {
            uids: m.clone(),
            gids: m,
        };
        assert!(ids.maps_uid(0) && ids.maps_uid(1000) && ids.maps_uid(65541));
        assert!(!ids.maps_uid(65542));
    }

    #[test]
    fn overlapping_or_overflowing_ranges_are_dropped() {
        // Contains the user's own id; overlaps the previous range; overflows.
        let m = mappings(
            100005,
            &[(100000, 10), (200000, 10), (200005, 10), (u32::MAX - 1, 5)],
        );
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].host_id, 200000);
        assert_eq!(m[1].container_id, 1);
    }

    #[test]
    fn unshare_gets_root_plus_every_range() {
        let ids = RootlessIds {
            uids: mappings(1000, &[(100000, 65536)]),
            gids: mappings(1001, &[(200000, 10)]),
        };
        assert!(ids.runc_in_userns());
        assert_eq!(
            ids.unshare_args(),
            [
                "--user",
                "--map-user=0",
                "--map-group=0",
                "--map-users=100000,1,65536",
                "--map-groups=200000,1,10",
            ]
        );
        let uids_only = RootlessIds {
            uids: mappings(1000, &[(100000, 65536)]),
            gids: mappings(1000, &[]),
        };
        assert!(!uids_only.runc_in_userns());
    }

    #[test]
    fn without_ranges_only_root_is_mapped() {
        let ids = RootlessIds::single(1000, 1000);
        assert!(ids.maps_uid(0) && !ids.maps_uid(1) && !ids.maps_gid(1000));
    }
}
