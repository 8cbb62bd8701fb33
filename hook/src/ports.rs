//! Published ports: choosing host ports and refusing ones already taken.
//!
//! portmap publishes with DNAT rules and binds nothing, so two checks are
//! needed: a host process holding the port is found by binding it (and
//! letting go) — EADDRINUSE means taken; another container publishing it
//! is found in the claims dir `<state-dir>/net/ports/`, one file
//! `<proto>-<port>-<host ip|any>` per published port holding the owner's
//! container id, written under a lock before ADD and removed by DEL. A claim
//! whose owner has no pinned netns any more (its hook was killed and never
//! cleaned up) is stale and taken over.

use crate::lock::FileLock;
use crate::request::{PortMapping4Cni, PortProtocol, PortRequest};
use crate::HookError;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};

fn claims_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("net").join("ports")
}

fn claim_name(proto: PortProtocol, port: u16, ip: Option<IpAddr>) -> String {
    format!(
        "{proto}-{port}-{}",
        ip.map(|i| i.to_string()).unwrap_or_else(|| "any".into())
    )
}

fn parse_claim(name: &str) -> Option<(PortProtocol, u16, Option<IpAddr>)> {
    let mut it = name.splitn(3, '-');
    let proto = match it.next()? {
        "tcp" => PortProtocol::Tcp,
        "udp" => PortProtocol::Udp,
        _ => return None,
    };
    let port = it.next()?.parse().ok()?;
    let ip = match it.next()? {
        "any" => None,
        s => Some(s.parse().ok()?),
    };
    Some((proto, port, ip))
}

/// Tries to bind the port on the host; the error if it is held.
fn probe(proto: PortProtocol, ip: Option<IpAddr>, port: u16) -> std::io::Result<u16> {
    let addr = SocketAddr::new(ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)), port);
    match proto {
        PortProtocol::Tcp => TcpListener::bind(addr)?.local_addr().map(|a| a.port()),
        PortProtocol::Udp => UdpSocket::bind(addr)?.local_addr().map(|a| a.port()),
    }
}

fn ips_clash(a: Option<IpAddr>, b: Option<IpAddr>) -> bool {
    a.is_none() || b.is_none() || a == b
}

/// Picks host ports for `ports` and claims them for `container_id`.
/// `owner_alive(id)` says whether another claim's owner still exists.
/// Claims this container already holds (a retried create) are reused.
pub fn claim(
    state_dir: &Path,
    container_id: &str,
    ports: &[PortRequest],
    owner_alive: impl Fn(&str) -> bool,
) -> Result<Vec<PortMapping4Cni>, HookError> {
    if ports.is_empty() {
        return Ok(Vec::new());
    }
    let dir = claims_dir(state_dir);
    let _l = FileLock::acquire(&state_dir.join("net").join("ports.lock"))?;
    std::fs::create_dir_all(&dir).map_err(HookError::io("creating port claims dir", &dir))?;
    let existing: Vec<(PortProtocol, u16, Option<IpAddr>, String)> = std::fs::read_dir(&dir)
        .map_err(HookError::io("reading port claims", &dir))?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let (p, port, ip) = parse_claim(&name)?;
            let owner = owner_of(&std::fs::read_to_string(e.path()).ok()?);
            Some((p, port, ip, owner))
        })
        .collect();
    let mut chosen: Vec<PortMapping4Cni> = Vec::new();
    let mut new_claims: Vec<(PathBuf, u16)> = Vec::new();
    for req in ports {
        let taken_by_container = |port: u16| {
            existing.iter().find(|(p, pt, ip, owner)| {
                *p == req.protocol
                    && *pt == port
                    && ips_clash(*ip, req.host_ip)
                    && owner != container_id
                    && owner_alive(owner)
            })
        };
        let taken_now = |port: u16| {
            chosen.iter().any(|c| {
                c.protocol == req.protocol
                    && c.host_port == port
                    && ips_clash(c.host_ip.parse().ok(), req.host_ip)
            })
        };
        let mine = |port: u16| {
            existing.iter().any(|(p, pt, ip, owner)| {
                *p == req.protocol && *pt == port && *ip == req.host_ip && owner == container_id
            })
        };
        let what = |port: u16| {
            format!(
                "{}:{port}/{}",
                req.host_ip
                    .map(|i| i.to_string())
                    .unwrap_or_else(|| "0.0.0.0".into()),
                req.protocol
            )
        };
        let host_port = match req.host_port {
            None => probe(req.protocol, req.host_ip, 0).map_err(|e| {
                HookError::PortInUse(format!("no ephemeral port for {}: {e}", what(0)))
            })?,
            Some(r) => {
                let mut last_err = String::new();
                let mut found = None;
                for port in r.start..=r.end {
                    if let Some((.., owner)) = taken_by_container(port) {
                        last_err = format!(
                            "port {} is already published by container {owner}",
                            what(port)
                        );
                        continue;
                    }
                    if taken_now(port) {
                        last_err = format!("port {} is requested twice", what(port));
                        continue;
                    }
                    if !mine(port) {
                        if let Err(e) = probe(req.protocol, req.host_ip, port) {
                            last_err =
                                format!("port {} is already in use on this host: {e}", what(port));
                            continue;
                        }
                    }
                    found = Some(port);
                    break;
                }
                match found {
                    Some(p) => p,
                    None if r.start == r.end => return Err(HookError::PortInUse(last_err)),
                    None => {
                        return Err(HookError::PortInUse(format!(
                            "no free port in {}-{} ({last_err})",
                            r.start, r.end
                        )))
                    }
                }
            }
        };
        chosen.push(PortMapping4Cni {
            host_port,
            container_port: req.container_port,
            protocol: req.protocol,
            host_ip: req.host_ip.map(|i| i.to_string()).unwrap_or_default(),
        });
        new_claims.push((
            dir.join(claim_name(req.protocol, host_port, req.host_ip)),
            req.container_port,
        ));
    }
    for (p, container_port) in &new_claims {
        std::fs::write(p, format!("{container_id}\n{container_port}\n"))
            .map_err(HookError::io("writing port claim", p))?;
    }
    Ok(chosen)
}

/// A claim file holds `<owner container id>\n<container port>\n`.
fn owner_of(content: &str) -> String {
    content
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The ports `container_id` holds claims on (DEL passes them as
/// `portMappings`: portmap refuses a mapping without a container port).
pub fn claimed_by(state_dir: &Path, container_id: &str) -> Vec<PortMapping4Cni> {
    let Ok(d) = std::fs::read_dir(claims_dir(state_dir)) else {
        return Vec::new();
    };
    d.flatten()
        .filter_map(|e| {
            let content = std::fs::read_to_string(e.path()).ok()?;
            if owner_of(&content) != container_id {
                return None;
            }
            let container_port = content.lines().nth(1)?.trim().parse().ok()?;
            let (protocol, host_port, ip) = parse_claim(&e.file_name().to_string_lossy())?;
            Some(PortMapping4Cni {
                host_port,
                container_port,
                protocol,
                host_ip: ip.map(|i| i.to_string()).unwrap_or_default(),
            })
        })
        .collect()
}

/// Drops every claim of `container_id`. Idempotent.
pub fn release(state_dir: &Path, container_id: &str) -> Result<(), HookError> {
    let dir = claims_dir(state_dir);
    let _l = FileLock::acquire(&state_dir.join("net").join("ports.lock"))?;
    let Ok(d) = std::fs::read_dir(&dir) else {
        return Ok(());
    };
    for e in d.flatten() {
        if std::fs::read_to_string(e.path()).is_ok_and(|o| owner_of(&o) == container_id) {
            std::fs::remove_file(e.path())
                .map_err(HookError::io("removing port claim", &e.path()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(port: u16) -> PortRequest {
        PortRequest {
            host_ip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            host_port: Some(crate::request::HostPortRange {
                start: port,
                end: port,
            }),
            container_port: 80,
            protocol: PortProtocol::Tcp,
        }
    }

    #[test]
    fn a_port_held_by_a_host_process_is_refused_clearly() {
        let d = tempfile::tempdir().unwrap();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let e = claim(d.path(), "c1", &[req(port)], |_| true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!(
                "127.0.0.1:{port}/tcp is already in use on this host"
            )),
            "{e}"
        );
    }

    #[test]
    fn claims_conflict_between_live_containers_only() {
        let d = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let got = claim(d.path(), "c1", &[req(port)], |_| true).unwrap();
        assert_eq!(got[0].host_port, port);
        // The same container again (a retried create): fine.
        claim(d.path(), "c1", &[req(port)], |_| true).unwrap();
        let e = claim(d.path(), "c2", &[req(port)], |_| true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("already published by container c1"), "{e}");
        // c1 is gone without cleanup: its claim is stale.
        claim(d.path(), "c2", &[req(port)], |o| o != "c1").unwrap();
        let held = claimed_by(d.path(), "c2");
        assert_eq!(
            (held.len(), held[0].container_port, held[0].host_port),
            (1, 80, port)
        );
        release(d.path(), "c2").unwrap();
        assert!(claimed_by(d.path(), "c2").is_empty());
    }

    #[test]
    fn ranges_and_ephemeral_ports_pick_a_free_one() {
        let d = tempfile::tempdir().unwrap();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let busy = l.local_addr().unwrap().port();
        let mut r = req(busy);
        r.host_port = Some(crate::request::HostPortRange {
            start: busy,
            end: busy.saturating_add(20),
        });
        let got = claim(d.path(), "c1", &[r], |_| true).unwrap();
        assert_ne!(got[0].host_port, busy);
        let mut e = req(1);
        e.host_port = None;
        let got = claim(d.path(), "c2", &[e], |_| true).unwrap();
        assert_ne!(got[0].host_port, 0);
    }
}
