//! A real Consul 1.8 agent.

use std::cell::OnceCell;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::deps::require_bin;
use super::http;
use super::instance::Instance;
use super::ports::free_ports;
use super::tls::TlsFiles;
use super::PORT_RACE_ATTEMPTS;

/// The node name every harness Consul agent registers as.
const NODE: &str = "cntnr-e2e";

/// A single Consul server agent on loopback, in its own temporary directory.
///
/// Dropping it stops the agent and removes the directory; so does the end of
/// the test process, however it ends (see the crate docs).
pub struct Consul {
    instance: Instance,
    http_port: u16,
    dns_port: u16,
    /// With ACLs: the management token (also the agent's own token).
    acl_token: Option<String>,
    /// With TLS: the HTTPS port and the certificates.
    https: Option<(u16, TlsFiles)>,
}

/// How an agent is started.
struct Options {
    mode: Mode,
    acl_token: Option<String>,
    tls: bool,
}

#[derive(Clone, Copy)]
enum Mode {
    /// `-dev`: in memory, fastest to start.
    Dev,
    /// `-server -bootstrap-expect=1 -data-dir …`: survives a restart.
    Persistent,
}

impl Consul {
    /// Starts a persistent single-server agent owned by the caller (its KV
    /// survives [`Consul::restart`]) and waits until a leader is elected, a
    /// KV write succeeds and a session can be created.
    ///
    /// # Panics
    /// When the consul binary is missing ("run scripts/install-deps.sh"), or
    /// the agent exits or is not ready within 30 s (with the tail of its log).
    pub fn start() -> Consul {
        Consul::launch(Options {
            mode: Mode::Persistent,
            acl_token: None,
            tls: false,
        })
    }

    /// Like [`Consul::start`], but `-dev`: in memory, so a restart loses the
    /// KV, and quicker to start.
    pub fn start_dev() -> Consul {
        Consul::launch(Options {
            mode: Mode::Dev,
            acl_token: None,
            tls: false,
        })
    }

    /// A `-dev` agent with ACLs enforced: `default_policy = "deny"`, and
    /// `initial_management_token` as the management token (Consul 1.8's
    /// `acl.tokens.master`, later renamed `initial_management`) and the
    /// agent's own token (so it can register its node, which sessions
    /// need). Requests without a valid token are refused.
    ///
    /// The harness's own calls ([`Consul::kv_put`], [`Consul::kv_get`],
    /// [`Consul::consul`], the readiness check) send the token.
    ///
    /// # Panics
    /// As [`Consul::start`].
    pub fn start_with_acl(initial_management_token: &str) -> Consul {
        Consul::launch(Options {
            mode: Mode::Dev,
            acl_token: Some(initial_management_token.to_owned()),
            tls: false,
        })
    }

    /// A `-dev` agent that also serves its HTTP API over HTTPS
    /// ([`Consul::https_addr`]; [`Consul::store_url`] is `consul+https://…`),
    /// with a certificate for `127.0.0.1` and `localhost` signed by a CA
    /// made for this agent ([`Consul::ca_file`]). Client certificates are
    /// not required (`verify_incoming = false`). The plain HTTP port stays
    /// open for the harness's own calls.
    ///
    /// # Panics
    /// As [`Consul::start`].
    pub fn start_tls() -> Consul {
        Consul::launch(Options {
            mode: Mode::Dev,
            acl_token: None,
            tls: true,
        })
    }

    fn launch(opts: Options) -> Consul {
        let bin = require_bin("consul");
        let mut attempt = 0;
        loop {
            attempt += 1;
            // Serf and DNS use UDP too.
            let ports = free_ports(6, true);
            let tls = OnceCell::new();
            let instance = Instance::new("consul", |dir| {
                let files = opts.tls.then(|| TlsFiles::generate(dir));
                let config = config(dir, &opts, files.as_ref(), ports[5]);
                let _ = tls.set(files);
                argv(&bin, dir, opts.mode, &ports, config.as_deref())
            });
            let consul = Consul {
                instance,
                http_port: ports[0],
                dns_port: ports[1],
                acl_token: opts.acl_token.clone(),
                https: tls.into_inner().flatten().map(|files| (ports[5], files)),
            };
            match consul.instance.launch(|| consul.check_ready()) {
                Ok(()) => return consul,
                Err(e) if e.is_port_race() && attempt < PORT_RACE_ATTEMPTS => continue,
                Err(e) => panic!("consul on {} did not start: {e}", consul.http_addr()),
            }
        }
    }

    /// Ready means usable by cntnr: a leader, a working KV write, and a
    /// session (which needs the node registered in the catalog).
    fn check_ready(&self) -> Result<(), String> {
        let token = self.acl_token();
        let leader = http::get_with(&format!("{}/v1/status/leader", self.url()), token)?;
        if leader.status != 200 || leader.body.trim() == r#""""# {
            return Err(format!("no leader yet: {} {}", leader.status, leader.body));
        }
        let key = format!("{}/v1/kv/cntnr-e2e-harness/ready", self.url());
        let put = http::put_with(&key, "1", token)?;
        if put.status != 200 || put.body.trim() != "true" {
            return Err(format!("KV write: {} {}", put.status, put.body));
        }
        http::delete_with(&key, token)?;
        let session = http::put_with(
            &format!("{}/v1/session/create", self.url()),
            r#"{"Name":"cntnr-e2e-harness-ready","TTL":"10s"}"#,
            token,
        )?;
        if session.status != 200 {
            return Err(format!("session: {} {}", session.status, session.body));
        }
        let id = serde_json::from_str::<serde_json::Value>(&session.body)
            .ok()
            .and_then(|v| v["ID"].as_str().map(str::to_owned))
            .ok_or_else(|| format!("session: unexpected answer {}", session.body))?;
        http::put_with(
            &format!("{}/v1/session/destroy/{id}", self.url()),
            "",
            token,
        )?;
        Ok(())
    }

    /// The HTTP API address, `127.0.0.1:PORT`.
    pub fn http_addr(&self) -> String {
        format!("127.0.0.1:{}", self.http_port)
    }

    /// The HTTP API URL, `http://127.0.0.1:PORT` (plain HTTP, also for an
    /// agent started with TLS).
    pub fn url(&self) -> String {
        format!("http://{}", self.http_addr())
    }

    /// The store URL cntnr takes, `consul://127.0.0.1:PORT`; for an agent
    /// started with [`Consul::start_tls`], `consul+https://127.0.0.1:HTTPS_PORT`.
    pub fn store_url(&self) -> String {
        match self.https_addr() {
            Some(addr) => format!("consul+https://{addr}"),
            None => format!("consul://{}", self.http_addr()),
        }
    }

    /// The HTTPS API address, `127.0.0.1:PORT` ([`Consul::start_tls`] only).
    pub fn https_addr(&self) -> Option<String> {
        self.https
            .as_ref()
            .map(|(port, _)| format!("127.0.0.1:{port}"))
    }

    /// The certificates of an agent started with TLS; `None` without.
    pub fn tls_files(&self) -> Option<&TlsFiles> {
        self.https.as_ref().map(|(_, files)| files)
    }

    /// The CA file HTTPS clients must trust (TLS only).
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.tls_files().map(TlsFiles::ca)
    }

    /// The management token of an agent started with
    /// [`Consul::start_with_acl`]; `None` without ACLs.
    pub fn acl_token(&self) -> Option<&str> {
        self.acl_token.as_deref()
    }

    /// The DNS port (UDP and TCP on 127.0.0.1).
    pub fn dns_port(&self) -> u16 {
        self.dns_port
    }

    /// The node name the agent registers as.
    pub fn node_name(&self) -> &str {
        NODE
    }

    /// The agent's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.instance.pid()
    }

    /// The instance's temporary directory (data in `data/` for
    /// [`Consul::start`], output in `server.log`).
    pub fn data_dir(&self) -> &Path {
        self.instance.dir()
    }

    /// Stops the agent gracefully (SIGTERM; SIGKILL after 10 s) and waits for
    /// it. Keeps the data and the ports for [`Consul::restart`].
    pub fn stop(&mut self) {
        self.instance.stop();
    }

    /// Starts the agent again on the same ports and data (stopping it first
    /// if it runs) and waits until it is ready again.
    ///
    /// # Panics
    /// When it does not come back within 30 s.
    pub fn restart(&mut self) {
        if let Err(e) = self.instance.launch(|| self.check_ready()) {
            panic!("consul on {} did not restart: {e}", self.http_addr());
        }
    }

    /// Freezes the agent (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        self.instance.pause();
    }

    /// Thaws a [`paused`](Consul::pause) agent (SIGCONT).
    pub fn resume(&self) {
        self.instance.resume();
    }

    /// Writes a KV value through the HTTP API; true when Consul accepted it.
    pub fn kv_put(&self, key: &str, value: &str) -> bool {
        http::put_with(
            &format!("{}/v1/kv/{key}", self.url()),
            value,
            self.acl_token(),
        )
        .is_ok_and(|r| r.status == 200 && r.body.trim() == "true")
    }

    /// Reads a KV value through the HTTP API; `None` when the key is absent.
    ///
    /// # Panics
    /// When Consul does not answer or answers with an error.
    pub fn kv_get(&self, key: &str) -> Option<String> {
        let url = format!("{}/v1/kv/{key}?raw", self.url());
        let reply =
            http::get_with(&url, self.acl_token()).unwrap_or_else(|e| panic!("GET {url}: {e}"));
        match reply.status {
            200 => Some(reply.body),
            404 => None,
            status => panic!("GET {url}: {status} {}", reply.body),
        }
    }

    /// Runs `consul ARGS…` against this agent (`CONSUL_HTTP_ADDR` set to the
    /// plain HTTP address; with ACLs, `CONSUL_HTTP_TOKEN` set to the
    /// management token) and returns its output.
    ///
    /// # Panics
    /// When consul is missing or cannot be spawned.
    pub fn consul(&self, args: &[&str]) -> Output {
        let bin = require_bin("consul");
        let mut cmd = Command::new(&bin);
        cmd.args(args)
            .env("CONSUL_HTTP_ADDR", self.http_addr())
            .env_remove("CONSUL_HTTP_TOKEN")
            .env_remove("CONSUL_HTTP_SSL");
        if let Some(token) = self.acl_token() {
            cmd.env("CONSUL_HTTP_TOKEN", token);
        }
        cmd.output()
            .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()))
    }
}

/// Writes `<dir>/config.json` for ACLs and TLS, when asked for; returns its
/// path.
fn config(dir: &Path, opts: &Options, tls: Option<&TlsFiles>, https_port: u16) -> Option<PathBuf> {
    let mut config = serde_json::Map::new();
    if let Some(token) = &opts.acl_token {
        // Consul 1.8 names: `master` (1.11+: `initial_management`) and
        // `agent` (the agent's own token, for registering its node).
        config.insert(
            "acl".into(),
            serde_json::json!({
                "enabled": true,
                "default_policy": "deny",
                "down_policy": "extend-cache",
                "tokens": { "master": token, "agent": token },
            }),
        );
    }
    if let Some(files) = tls {
        config.insert("ports".into(), serde_json::json!({ "https": https_port }));
        config.insert(
            "cert_file".into(),
            files.server_cert().display().to_string().into(),
        );
        config.insert(
            "key_file".into(),
            files.server_key().display().to_string().into(),
        );
        config.insert("ca_file".into(), files.ca().display().to_string().into());
        config.insert("verify_incoming".into(), false.into());
    }
    if config.is_empty() {
        return None;
    }
    let path = dir.join("config.json");
    let text = serde_json::to_string_pretty(&config).expect("JSON config");
    fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    Some(path)
}

fn argv(bin: &Path, dir: &Path, mode: Mode, ports: &[u16], config: Option<&Path>) -> Vec<String> {
    let mut argv: Vec<String> = vec![
        bin.to_string_lossy().into_owned(),
        "agent".into(),
        format!("-node={NODE}"),
        "-bind=127.0.0.1".into(),
        "-advertise=127.0.0.1".into(),
        "-client=127.0.0.1".into(),
        format!("-http-port={}", ports[0]),
        format!("-dns-port={}", ports[1]),
        format!("-serf-lan-port={}", ports[2]),
        format!("-serf-wan-port={}", ports[3]),
        format!("-server-port={}", ports[4]),
        "-grpc-port=-1".into(),
        "-log-level=warn".into(),
        // Nothing phones home.
        "-hcl=disable_update_check = true".into(),
        "-hcl=disable_anonymous_signature = true".into(),
    ];
    if let Some(config) = config {
        argv.push(format!("-config-file={}", config.display()));
    }
    match mode {
        Mode::Dev => argv.push("-dev".into()),
        Mode::Persistent => argv.extend([
            "-server".into(),
            "-bootstrap-expect=1".into(),
            format!("-data-dir={}", dir.join("data").display()),
            // Elect the single server in about a second, as -dev does.
            "-hcl=performance { raft_multiplier = 1 }".into(),
        ]),
    }
    argv
}
