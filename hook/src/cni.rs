//! Running CNI plugins, as the CNI spec (1.0) asks of a runtime.
//!
//! Each plugin of a config list is executed with `CNI_COMMAND`,
//! `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME` and `CNI_PATH` set and its
//! network config on stdin: the plugin's own object plus the list's `name`
//! and `cniVersion`, `runtimeConfig` holding the capability args it declares
//! (`portMappings`), and `prevResult`. ADD runs the plugins in order, each
//! getting the previous one's result; DEL runs them in reverse with the
//! cached ADD result; CHECK in order with it. A plugin failing prints a CNI
//! error object (`code`, `msg`, `details`) on stdout and exits non-zero.

use crate::request::ConflistSource;
use crate::HookError;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Set (to anything) to have every plugin run's duration printed on stderr.
pub const TRACE_ENV: &str = "CNTNR_HOOK_TRACE";

/// `CNI_COMMAND`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CniCommand {
    /// Attach.
    Add,
    /// Detach (idempotent).
    Del,
    /// Verify an attachment.
    Check,
}

impl CniCommand {
    fn as_str(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Del => "DEL",
            CniCommand::Check => "CHECK",
        }
    }
}

/// Top-level key of a cntnr-generated config list: the subnet the hook
/// masquerades (see [`crate::firewall::ensure_network_rules`]).
pub const MASQUERADE_KEY: &str = "cntnrMasquerade";

/// A parsed network config list (a single-plugin `.conf` becomes a list of one).
#[derive(Clone, Debug, PartialEq)]
pub struct Conflist {
    /// `cniVersion`.
    pub cni_version: String,
    /// Network name.
    pub name: String,
    /// Plugin objects, in order.
    pub plugins: Vec<Map<String, Value>>,
    /// `cntnrMasquerade` (cntnr's own configs): the subnet whose outbound
    /// traffic the hook masquerades with one rule per network.
    pub masquerade: Option<crate::Ipv4Net>,
    /// The JSON it was parsed from.
    pub raw: Value,
}

impl Conflist {
    /// Parses a config list or a single plugin config.
    pub fn from_value(v: Value) -> Result<Self, HookError> {
        let raw = v.clone();
        let bad = |why: &str| HookError::Request(format!("network config: {why}"));
        let Value::Object(mut obj) = v else {
            return Err(bad("not a JSON object"));
        };
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| bad("no \"name\""))?
            .to_string();
        let cni_version = obj
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or(crate::conflist::CNI_VERSION)
            .to_string();
        let masquerade = match obj.get(MASQUERADE_KEY) {
            None => None,
            Some(v) => Some(
                v.as_str()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| bad(&format!("{MASQUERADE_KEY} is not an IPv4 subnet")))?,
            ),
        };
        let plugins = match obj.remove("plugins") {
            Some(Value::Array(ps)) => ps
                .into_iter()
                .map(|p| match p {
                    Value::Object(m) => Ok(m),
                    _ => Err(bad("a plugin is not an object")),
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => return Err(bad("\"plugins\" is not a list")),
            None => vec![obj],
        };
        if plugins.is_empty() {
            return Err(bad(&format!("network {name} has no plugins")));
        }
        for p in &plugins {
            match p.get("type").and_then(Value::as_str) {
                Some(t) if !t.is_empty() && !t.contains('/') => {}
                _ => {
                    return Err(bad(&format!(
                        "network {name}: a plugin has no valid \"type\""
                    )))
                }
            }
        }
        Ok(Self {
            cni_version,
            name,
            plugins,
            masquerade,
            raw,
        })
    }

    /// Reads it from where the request says.
    pub fn load(src: &ConflistSource) -> Result<Self, HookError> {
        match src {
            ConflistSource::Inline(v) => Self::from_value(v.clone()),
            ConflistSource::Path(p) => {
                let data = std::fs::read(p).map_err(HookError::io("reading network config", p))?;
                let v: Value = serde_json::from_slice(&data).map_err(|e| {
                    HookError::Request(format!("network config {}: {e}", p.display()))
                })?;
                Self::from_value(v)
            }
        }
    }

    /// The Linux bridge of its `bridge` plugin, if it has one.
    pub fn bridge(&self) -> Option<String> {
        self.plugins
            .iter()
            .find(|p| p.get("type").and_then(Value::as_str) == Some("bridge"))
            .map(|p| {
                p.get("bridge")
                    .and_then(Value::as_str)
                    .unwrap_or("cni0")
                    .to_string()
            })
    }
}

/// Where and for whom plugins run.
#[derive(Clone, Debug)]
pub struct Invocation<'a> {
    /// Plugin dirs (`CNI_PATH`).
    pub dirs: &'a [PathBuf],
    /// `CNI_CONTAINERID`.
    pub container_id: &'a str,
    /// `CNI_NETNS`; `None` (empty) for a DEL whose namespace is gone.
    pub netns: Option<&'a Path>,
    /// `CNI_IFNAME`.
    pub ifname: &'a str,
    /// Capability args available to plugins that declare them.
    pub runtime_config: &'a Map<String, Value>,
    /// No plugin runs past this instant (it is killed).
    pub deadline: Instant,
    /// `after-<type>`: SIGKILL this process after that plugin's ADD (tests).
    pub failpoint: Option<&'a str>,
}

/// Whether `p` has nothing to do: `portmap` without port mappings passes
/// `prevResult` through on ADD and finds no rules on DEL, so it is not
/// run (one process less per container, ~3 ms).
fn idle(p: &Map<String, Value>, inv: &Invocation) -> bool {
    plugin_type(p) == "portmap" && !inv.runtime_config.contains_key("portMappings")
}

/// ADD: runs the list; the last plugin's result.
pub fn add(conf: &Conflist, inv: &Invocation) -> Result<Value, HookError> {
    let mut prev: Option<Value> = None;
    for p in conf.plugins.iter().filter(|p| !idle(p, inv)) {
        let out = run(conf, p, inv, CniCommand::Add, prev.as_ref())?;
        let result: Value = serde_json::from_slice(&out).map_err(|e| HookError::Plugin {
            command: "ADD",
            network: conf.name.clone(),
            plugin: plugin_type(p).into(),
            message: format!("result is not JSON: {e}"),
        })?;
        prev = Some(result);
        if inv.failpoint == Some(&format!("after-{}", plugin_type(p))) {
            eprintln!(
                "cntnr-hook: failpoint after-{} hit: killing myself",
                plugin_type(p)
            );
            let _ = rustix::process::kill_process(
                rustix::process::getpid(),
                rustix::process::Signal::KILL,
            );
        }
    }
    Ok(prev.expect("at least one plugin"))
}

/// DEL: runs the list in reverse with the cached ADD result (if any). Every
/// plugin runs even if one fails; the first error is returned.
pub fn del(conf: &Conflist, inv: &Invocation, prev: Option<&Value>) -> Result<(), HookError> {
    let mut first = None;
    for p in conf.plugins.iter().rev().filter(|p| !idle(p, inv)) {
        if let Err(e) = run(conf, p, inv, CniCommand::Del, prev) {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

/// CHECK: runs the list in order with the cached ADD result.
pub fn check(conf: &Conflist, inv: &Invocation, prev: &Value) -> Result<(), HookError> {
    for p in conf.plugins.iter().filter(|p| !idle(p, inv)) {
        run(conf, p, inv, CniCommand::Check, Some(prev))?;
    }
    Ok(())
}

fn plugin_type(p: &Map<String, Value>) -> &str {
    p.get("type").and_then(Value::as_str).unwrap_or("?")
}

/// The network config a plugin gets on stdin.
pub fn netconf(
    conf: &Conflist,
    plugin: &Map<String, Value>,
    runtime_config: &Map<String, Value>,
    prev: Option<&Value>,
) -> Value {
    let mut m = plugin.clone();
    m.insert("cniVersion".into(), conf.cni_version.clone().into());
    m.insert("name".into(), conf.name.clone().into());
    let mut rc = Map::new();
    if let Some(caps) = plugin.get("capabilities").and_then(Value::as_object) {
        for (k, on) in caps {
            if on.as_bool() == Some(true) {
                if let Some(v) = runtime_config.get(k) {
                    rc.insert(k.clone(), v.clone());
                }
            }
        }
    }
    if !rc.is_empty() {
        m.insert("runtimeConfig".into(), Value::Object(rc));
    }
    if let Some(p) = prev {
        m.insert("prevResult".into(), p.clone());
    }
    Value::Object(m)
}

fn run(
    conf: &Conflist,
    plugin: &Map<String, Value>,
    inv: &Invocation,
    cmd: CniCommand,
    prev: Option<&Value>,
) -> Result<Vec<u8>, HookError> {
    let typ = plugin_type(plugin);
    let fail = |message: String| HookError::Plugin {
        command: cmd.as_str(),
        network: conf.name.clone(),
        plugin: typ.to_string(),
        message,
    };
    let bin = inv
        .dirs
        .iter()
        .map(|d| d.join(typ))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            fail(format!(
                "plugin binary not found in {}",
                std::env::join_paths(inv.dirs)
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ))
        })?;
    let stdin =
        serde_json::to_vec(&netconf(conf, plugin, inv.runtime_config, prev)).expect("serializes");
    let started = Instant::now();
    let mut child = Command::new(&bin)
        .env("CNI_COMMAND", cmd.as_str())
        .env("CNI_CONTAINERID", inv.container_id)
        .env(
            "CNI_NETNS",
            inv.netns.map(|p| p.as_os_str()).unwrap_or_default(),
        )
        .env("CNI_IFNAME", inv.ifname)
        .env(
            "CNI_PATH",
            std::env::join_paths(inv.dirs).unwrap_or_default(),
        )
        .env_remove("CNI_ARGS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("starting {}: {e}", bin.display())))?;
    // Small enough for the pipe buffer: written before the plugin reads.
    let mut pin = child.stdin.take().expect("piped");
    let writer = std::thread::spawn(move || {
        let _ = pin.write_all(&stdin);
    });
    let mut out_pipe = child.stdout.take().expect("piped");
    let mut err_pipe = child.stderr.take().expect("piped");
    let out_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out_pipe.read_to_end(&mut b);
        b
    });
    let err_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err_pipe.read_to_end(&mut b);
        b
    });
    let mut nap = Duration::from_micros(100);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() >= inv.deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(HookError::Timeout(format!(
                    "CNI {} network {:?} plugin {typ} did not finish in time (killed)",
                    cmd.as_str(),
                    conf.name
                )));
            }
            Ok(None) => {
                std::thread::sleep(nap);
                nap = (nap * 2).min(Duration::from_millis(2));
            }
            Err(e) => return Err(fail(format!("waiting: {e}"))),
        }
    };
    let _ = writer.join();
    if std::env::var_os(TRACE_ENV).is_some() {
        eprintln!(
            "cntnr-hook: CNI {} {} {typ}: {:?}",
            cmd.as_str(),
            conf.name,
            started.elapsed()
        );
    }
    let out = out_t.join().unwrap_or_default();
    let err = err_t.join().unwrap_or_default();
    if status.success() {
        return Ok(out);
    }
    Err(fail(error_message(&out, &err, status)))
}

#[derive(Deserialize)]
struct CniErrorJson {
    #[serde(default)]
    code: Option<u64>,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    details: String,
}

/// The plugin's error as one line: its CNI error `msg: details (code N)`, or
/// its stderr / raw stdout when it printed no error object.
fn error_message(stdout: &[u8], stderr: &[u8], status: std::process::ExitStatus) -> String {
    if let Ok(e) = serde_json::from_slice::<CniErrorJson>(stdout) {
        if !e.msg.is_empty() {
            let mut s = e.msg;
            if !e.details.is_empty() {
                s.push_str(": ");
                s.push_str(&e.details);
            }
            if let Some(c) = e.code {
                s.push_str(&format!(" (CNI error code {c})"));
            }
            return s.replace('\n', " ");
        }
    }
    let text = [stdout, stderr]
        .iter()
        .map(|b| String::from_utf8_lossy(b).trim().to_string())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    format!(
        "{status}{}{}",
        if text.is_empty() { "" } else { ": " },
        text.replace('\n', " ")
    )
}

/// A CNI 1.0 result, the parts cntnr reads.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct CniResult {
    /// Interfaces created.
    #[serde(default)]
    pub interfaces: Vec<CniInterface>,
    /// Addresses assigned.
    #[serde(default)]
    pub ips: Vec<CniIp>,
    /// Routes.
    #[serde(default)]
    pub routes: Vec<Value>,
    /// DNS settings.
    #[serde(default)]
    pub dns: Value,
}

/// A result interface.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct CniInterface {
    /// Name.
    pub name: String,
    /// MAC address.
    #[serde(default)]
    pub mac: String,
    /// Netns path when inside the container; empty on the host.
    #[serde(default)]
    pub sandbox: String,
}

/// A result address.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct CniIp {
    /// `addr/prefix`.
    pub address: String,
    /// Gateway.
    #[serde(default)]
    pub gateway: Option<String>,
    /// Index into `interfaces`.
    #[serde(default)]
    pub interface: Option<usize>,
}

impl CniResult {
    /// Parses a result value.
    pub fn parse(v: &Value) -> Result<Self, HookError> {
        serde_json::from_value(v.clone())
            .map_err(|e| HookError::Request(format!("CNI result does not parse: {e}")))
    }

    /// The container-side addresses (those on a sandbox interface, or all
    /// when the result does not say).
    pub fn container_ips(&self) -> Vec<IpAddr> {
        self.ips
            .iter()
            .filter(
                |ip| match ip.interface.and_then(|i| self.interfaces.get(i)) {
                    Some(itf) => !itf.sandbox.is_empty(),
                    None => true,
                },
            )
            .filter_map(|ip| ip.address.split('/').next()?.parse().ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn netconf_gets_name_version_declared_capabilities_and_prev_result() {
        let conf = Conflist::from_value(json!({
            "cniVersion": "1.0.0", "name": "n",
            "plugins": [{"type": "bridge"}, {"type": "portmap", "capabilities": {"portMappings": true, "bandwidth": false}}]
        }))
        .unwrap();
        let rc: Map<String, Value> = [
            (
                "portMappings".to_string(),
                json!([{"hostPort": 1, "containerPort": 2, "protocol": "tcp"}]),
            ),
            ("bandwidth".to_string(), json!({})),
        ]
        .into_iter()
        .collect();
        let prev = json!({"cniVersion": "1.0.0", "ips": []});
        let b = netconf(&conf, &conf.plugins[0], &rc, None);
        assert_eq!(
            b,
            json!({"type": "bridge", "cniVersion": "1.0.0", "name": "n"})
        );
        let p = netconf(&conf, &conf.plugins[1], &rc, Some(&prev));
        assert_eq!(
            p["runtimeConfig"],
            json!({"portMappings": rc["portMappings"]})
        );
        assert_eq!(p["prevResult"], prev);
    }

    #[test]
    fn single_plugin_conf_is_a_list_of_one_and_bad_configs_say_why() {
        let c =
            Conflist::from_value(json!({"cniVersion": "1.0.0", "name": "lo", "type": "loopback"}))
                .unwrap();
        assert_eq!(c.plugins.len(), 1);
        assert_eq!(c.bridge(), None);
        for (v, want) in [
            (json!([]), "not a JSON object"),
            (json!({"plugins": []}), "no \"name\""),
            (json!({"name": "x", "plugins": []}), "no plugins"),
            (
                json!({"name": "x", "plugins": [{"type": "../x"}]}),
                "valid \"type\"",
            ),
        ] {
            let e = Conflist::from_value(v).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn result_ips_are_the_sandbox_ones() {
        let r = CniResult::parse(&json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "cn-x", "mac": "aa"}, {"name": "vethx"}, {"name": "eth0", "sandbox": "/proc/1/ns/net"}],
            "ips": [{"address": "10.90.0.2/24", "gateway": "10.90.0.1", "interface": 2}],
            "dns": {}
        }))
        .unwrap();
        assert_eq!(
            r.container_ips(),
            vec!["10.90.0.2".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn plugin_errors_read_the_cni_error_object() {
        use std::os::unix::process::ExitStatusExt;
        let st = std::process::ExitStatus::from_raw(1 << 8);
        let m = error_message(
            br#"{"code":7,"msg":"failed to allocate","details":"range full"}"#,
            b"",
            st,
        );
        assert_eq!(m, "failed to allocate: range full (CNI error code 7)");
        let m = error_message(b"", b"panic: boom\n", st);
        assert!(m.ends_with("panic: boom"), "{m}");
    }

    #[test]
    fn a_missing_plugin_and_a_failing_plugin_are_reported() {
        let d = tempfile::tempdir().unwrap();
        let script = d.path().join("failer");
        std::fs::write(&script, "#!/bin/sh\ncat >/dev/null\necho '{\"code\":11,\"msg\":\"nope '$CNI_COMMAND'\"}'\nexit 1\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let dirs = vec![d.path().to_path_buf()];
        let rc = Map::new();
        let inv = Invocation {
            dirs: &dirs,
            container_id: "c",
            netns: None,
            ifname: "eth0",
            runtime_config: &rc,
            deadline: Instant::now() + Duration::from_secs(10),
            failpoint: None,
        };
        let conf =
            Conflist::from_value(json!({"name": "n", "plugins": [{"type": "failer"}]})).unwrap();
        let e = add(&conf, &inv).unwrap_err().to_string();
        assert!(
            e.contains("nope ADD (CNI error code 11)") && e.contains("failer"),
            "{e}"
        );
        let conf =
            Conflist::from_value(json!({"name": "n", "plugins": [{"type": "absent"}]})).unwrap();
        let e = del(&conf, &inv, None).unwrap_err().to_string();
        assert!(e.contains("plugin binary not found"), "{e}");
    }
}
