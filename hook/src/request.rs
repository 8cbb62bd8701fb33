//! The network request a container carries in its `config.json`
//! annotations, and the result the hook writes into its bundle.

use crate::HookError;
use cntnr_model::{PortMapping, Protocol};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;

/// Annotation holding the JSON [`NetRequest`].
pub const REQUEST_ANNOTATION: &str = "cntnr.net.request";
/// File the hook writes in the bundle dir: [`NetResult`] as JSON.
pub const RESULT_FILE: &str = "cntnr-net.json";
/// Where CNI plugins are looked for unless the request says otherwise.
pub const DEFAULT_CNI_PATH: &str = "/usr/lib/cni:/opt/cni/bin";
/// Default state dir (subnet allocations, conflists, locks, port claims).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/cntnr";
/// Default run dir (pinned network namespaces; tmpfs, gone at reboot with them).
pub const DEFAULT_RUN_DIR: &str = "/run/cntnr";

/// What a container asks of the hook. Serialized into annotation
/// [`REQUEST_ANNOTATION`] by the agent; every field but `networks` has a
/// default, so an old request keeps parsing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetRequest {
    /// Networks to attach, in order: the first gets `eth0` and the published ports.
    pub networks: Vec<NetworkAttachment>,
    /// Published ports (CNI `portMappings` on the first network).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortRequest>,
    /// Bring `lo` up with the `loopback` plugin (default true).
    #[serde(default = "yes")]
    pub loopback: bool,
    /// Colon-separated plugin dirs (default [`DEFAULT_CNI_PATH`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni_path: Option<String>,
    /// State dir (default [`DEFAULT_STATE_DIR`]).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Run dir (default [`DEFAULT_RUN_DIR`]).
    #[serde(default = "default_run_dir")]
    pub run_dir: PathBuf,
    /// Where to write the [`NetResult`] (default `<bundle>/cntnr-net.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_path: Option<PathBuf>,
}

fn yes() -> bool {
    true
}
fn default_state_dir() -> PathBuf {
    DEFAULT_STATE_DIR.into()
}
fn default_run_dir() -> PathBuf {
    DEFAULT_RUN_DIR.into()
}

impl NetRequest {
    /// A request for `networks` with defaults everywhere else.
    pub fn new(networks: Vec<NetworkAttachment>) -> Self {
        Self {
            networks,
            ports: Vec::new(),
            loopback: true,
            cni_path: None,
            state_dir: default_state_dir(),
            run_dir: default_run_dir(),
            result_path: None,
        }
    }

    /// The annotation (key, value) carrying this request.
    pub fn to_annotation(&self) -> (String, String) {
        (
            REQUEST_ANNOTATION.to_string(),
            serde_json::to_string(self).expect("request serializes"),
        )
    }

    /// The request in `annotations`; `Ok(None)` when there is none.
    pub fn from_annotations(
        annotations: &HashMap<String, String>,
    ) -> Result<Option<Self>, HookError> {
        let Some(v) = annotations.get(REQUEST_ANNOTATION) else {
            return Ok(None);
        };
        let req: NetRequest = serde_json::from_str(v)
            .map_err(|e| HookError::Request(format!("annotation {REQUEST_ANNOTATION}: {e}")))?;
        req.validate()?;
        Ok(Some(req))
    }

    fn validate(&self) -> Result<(), HookError> {
        let mut ifnames = std::collections::HashSet::new();
        for (i, n) in self.networks.iter().enumerate() {
            let ifname = n.ifname(i);
            if ifname.is_empty() || ifname.len() > 15 || ifname.contains(['/', ' ', ':']) {
                return Err(HookError::Request(format!("bad interface name {ifname:?}")));
            }
            if !ifnames.insert(ifname.clone()) {
                return Err(HookError::Request(format!(
                    "interface {ifname} requested twice"
                )));
            }
        }
        for p in &self.ports {
            if let Some(r) = p.host_port {
                if r.start == 0 || r.end < r.start {
                    return Err(HookError::Request(format!(
                        "bad host port range {}-{}",
                        r.start, r.end
                    )));
                }
            }
            if p.container_port == 0 {
                return Err(HookError::Request("container port 0".into()));
            }
        }
        Ok(())
    }

    /// Plugin dirs.
    pub fn cni_dirs(&self) -> Vec<PathBuf> {
        self.cni_path
            .as_deref()
            .unwrap_or(DEFAULT_CNI_PATH)
            .split(':')
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .collect()
    }
}

/// One network to attach.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetworkAttachment {
    /// The network config list.
    pub conflist: ConflistSource,
    /// Interface name in the container (default `eth<index>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
}

impl NetworkAttachment {
    /// The interface name of attachment number `index`.
    pub fn ifname(&self, index: usize) -> String {
        self.ifname.clone().unwrap_or_else(|| format!("eth{index}"))
    }
}

/// Where a network config list comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflistSource {
    /// A `.conflist` (or single-plugin `.conf`) file, as generated by
    /// [`crate::conflist::ensure_network`].
    Path(PathBuf),
    /// The JSON itself.
    Inline(serde_json::Value),
}

/// `tcp` or `udp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortProtocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl std::fmt::Display for PortProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PortProtocol::Tcp => "tcp",
            PortProtocol::Udp => "udp",
        })
    }
}

/// An inclusive host port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPortRange {
    /// First port.
    pub start: u16,
    /// Last port.
    pub end: u16,
}

/// A published port as requested: the hook picks the host port when a
/// range or nothing (ephemeral) is given.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PortRequest {
    /// Host address (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<IpAddr>,
    /// Host port or range; `None`: an ephemeral port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<HostPortRange>,
    /// Port in the container.
    pub container_port: u16,
    /// Protocol.
    pub protocol: PortProtocol,
}

impl PortRequest {
    /// From a normalized compose `ports:` entry (every form the model parses).
    pub fn from_model(p: &PortMapping) -> Self {
        Self {
            host_ip: p.host_ip,
            host_port: p.published.map(|r| HostPortRange {
                start: r.start,
                end: r.end,
            }),
            container_port: p.target,
            protocol: match p.protocol {
                Protocol::Tcp => PortProtocol::Tcp,
                Protocol::Udp => PortProtocol::Udp,
            },
        }
    }
}

/// A published port as set up: the CNI `portMappings` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping4Cni {
    /// Host port.
    pub host_port: u16,
    /// Container port.
    pub container_port: u16,
    /// `tcp`/`udp`.
    pub protocol: PortProtocol,
    /// Host address; empty means all.
    #[serde(default, rename = "hostIP", skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
}

/// What the hook writes into the bundle after a successful ADD (and the
/// agent reads): the container's addresses and the ports actually published.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NetResult {
    /// Container id.
    pub container_id: String,
    /// One entry per attached network, in request order.
    pub networks: Vec<NetworkResult>,
    /// Ports published, with the host ports chosen.
    #[serde(default)]
    pub ports: Vec<PortMapping4Cni>,
}

impl NetResult {
    /// The container's first IP (on its first network): what a
    /// `network_mode: bridge` service without a published port registers.
    pub fn primary_ip(&self) -> Option<IpAddr> {
        self.networks.first().and_then(|n| n.ips.first().copied())
    }
}

/// One network's outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetworkResult {
    /// CNI network name.
    pub name: String,
    /// Interface in the container.
    pub ifname: String,
    /// The container's addresses on it (without prefix length).
    pub ips: Vec<IpAddr>,
    /// The CNI result of the last plugin (the cached result CNI passes as
    /// `prevResult` to DEL and CHECK).
    pub cni_result: serde_json::Value,
    /// The config list ADD ran with: DEL runs with the same one, even if
    /// the agent has since rewritten or removed the file.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub conflist: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_roundtrips_through_annotation_with_defaults() {
        let mut req = NetRequest::new(vec![NetworkAttachment {
            conflist: ConflistSource::Path("/var/lib/cntnr/net/conf/x.conflist".into()),
            ifname: None,
        }]);
        req.ports.push(PortRequest {
            host_ip: Some("127.0.0.1".parse().unwrap()),
            host_port: Some(HostPortRange {
                start: 8080,
                end: 8080,
            }),
            container_port: 80,
            protocol: PortProtocol::Tcp,
        });
        let (k, v) = req.to_annotation();
        let ann: HashMap<String, String> = [(k, v)].into_iter().collect();
        assert_eq!(NetRequest::from_annotations(&ann).unwrap(), Some(req));
        assert_eq!(NetRequest::from_annotations(&HashMap::new()).unwrap(), None);

        let minimal: HashMap<String, String> = [(
            REQUEST_ANNOTATION.to_string(),
            r#"{"networks":[{"conflist":{"inline":{"name":"n"}}}]}"#.to_string(),
        )]
        .into_iter()
        .collect();
        let r = NetRequest::from_annotations(&minimal).unwrap().unwrap();
        assert!(r.loopback);
        assert_eq!(r.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(r.networks[0].ifname(0), "eth0");
        assert_eq!(
            r.cni_dirs(),
            [PathBuf::from("/usr/lib/cni"), "/opt/cni/bin".into()]
        );
    }

    #[test]
    fn bad_requests_are_refused_with_the_reason() {
        for (json, want) in [
            (
                r#"{"networks":[{"conflist":{"inline":{}},"ifname":"averyveryverylongname"}]}"#,
                "bad interface",
            ),
            (
                r#"{"networks":[{"conflist":{"inline":{}}},{"conflist":{"inline":{}},"ifname":"eth0"}]}"#,
                "twice",
            ),
            (
                r#"{"networks":[],"ports":[{"container_port":80,"protocol":"tcp","host_port":{"start":90,"end":80}}]}"#,
                "range",
            ),
            (r#"{"networks":"x"}"#, "cntnr.net.request"),
        ] {
            let ann: HashMap<String, String> = [(REQUEST_ANNOTATION.to_string(), json.to_string())]
                .into_iter()
                .collect();
            let e = NetRequest::from_annotations(&ann).unwrap_err().to_string();
            assert!(e.contains(want), "{json}: {e}");
        }
    }

    #[test]
    fn compose_ports_map_to_requests() {
        use cntnr_model::{PortMode, PortRange};
        let m = PortMapping {
            target: 53,
            published: Some(PortRange {
                start: 5300,
                end: 5310,
            }),
            host_ip: Some("127.0.0.1".parse().unwrap()),
            protocol: Protocol::Udp,
            mode: PortMode::Host,
            name: None,
            app_protocol: None,
        };
        let r = PortRequest::from_model(&m);
        assert_eq!(r.container_port, 53);
        assert_eq!(
            r.host_port,
            Some(HostPortRange {
                start: 5300,
                end: 5310
            })
        );
        assert_eq!(r.protocol, PortProtocol::Udp);
        assert_eq!(r.host_ip, m.host_ip);
        let eph = PortRequest::from_model(&PortMapping {
            published: None,
            host_ip: None,
            ..m
        });
        assert_eq!((eph.host_port, eph.host_ip), (None, None));
    }

    #[test]
    fn cni_port_mapping_json_uses_cni_field_names() {
        let p = PortMapping4Cni {
            host_port: 8080,
            container_port: 80,
            protocol: PortProtocol::Udp,
            host_ip: "127.0.0.1".into(),
        };
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            serde_json::json!({"hostPort": 8080, "containerPort": 80, "protocol": "udp", "hostIP": "127.0.0.1"})
        );
    }
}
