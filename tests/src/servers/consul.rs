//! A real Consul 1.8 agent.

use std::path::Path;
use std::process::{Command, Output};

use super::deps::require_bin;
use super::http;
use super::instance::Instance;
use super::ports::free_ports;
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
        Consul::launch(Mode::Persistent)
    }

    /// Like [`Consul::start`], but `-dev`: in memory, so a restart loses the
    /// KV, and quicker to start.
    pub fn start_dev() -> Consul {
        Consul::launch(Mode::Dev)
    }

    fn launch(mode: Mode) -> Consul {
        let bin = require_bin("consul");
        let mut attempt = 0;
        loop {
            attempt += 1;
            // Serf and DNS use UDP too.
            let ports = free_ports(5, true);
            let consul = Consul {
                instance: Instance::new("consul", |dir| argv(&bin, dir, mode, &ports)),
                http_port: ports[0],
                dns_port: ports[1],
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
        let leader = http::get(&format!("{}/v1/status/leader", self.url()))?;
        if leader.status != 200 || leader.body.trim() == r#""""# {
            return Err(format!("no leader yet: {} {}", leader.status, leader.body));
        }
        let key = format!("{}/v1/kv/cntnr-e2e-harness/ready", self.url());
        let put = http::put(&key, "1")?;
        if put.status != 200 || put.body.trim() != "true" {
            return Err(format!("KV write: {} {}", put.status, put.body));
        }
        http::delete(&key)?;
        let session = http::put(
            &format!("{}/v1/session/create", self.url()),
            r#"{"Name":"cntnr-e2e-harness-ready","TTL":"10s"}"#,
        )?;
        if session.status != 200 {
            return Err(format!("session: {} {}", session.status, session.body));
        }
        let id = serde_json::from_str::<serde_json::Value>(&session.body)
            .ok()
            .and_then(|v| v["ID"].as_str().map(str::to_owned))
            .ok_or_else(|| format!("session: unexpected answer {}", session.body))?;
        http::put(&format!("{}/v1/session/destroy/{id}", self.url()), "")?;
        Ok(())
    }

    /// The HTTP API address, `127.0.0.1:PORT`.
    pub fn http_addr(&self) -> String {
        format!("127.0.0.1:{}", self.http_port)
    }

    /// The HTTP API URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.http_addr())
    }

    /// The store URL cntnr takes, `consul://127.0.0.1:PORT`.
    pub fn store_url(&self) -> String {
        format!("consul://{}", self.http_addr())
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
        http::put(&format!("{}/v1/kv/{key}", self.url()), value)
            .is_ok_and(|r| r.status == 200 && r.body.trim() == "true")
    }

    /// Reads a KV value through the HTTP API; `None` when the key is absent.
    ///
    /// # Panics
    /// When Consul does not answer or answers with an error.
    pub fn kv_get(&self, key: &str) -> Option<String> {
        let url = format!("{}/v1/kv/{key}?raw", self.url());
        let reply = http::get(&url).unwrap_or_else(|e| panic!("GET {url}: {e}"));
        match reply.status {
            200 => Some(reply.body),
            404 => None,
            status => panic!("GET {url}: {status} {}", reply.body),
        }
    }

    /// Runs `consul ARGS…` against this agent (`CONSUL_HTTP_ADDR` set) and
    /// returns its output.
    ///
    /// # Panics
    /// When consul is missing or cannot be spawned.
    pub fn consul(&self, args: &[&str]) -> Output {
        let bin = require_bin("consul");
        Command::new(&bin)
            .args(args)
            .env("CONSUL_HTTP_ADDR", self.http_addr())
            .env_remove("CONSUL_HTTP_TOKEN")
            .env_remove("CONSUL_HTTP_SSL")
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()))
    }
}

fn argv(bin: &Path, dir: &Path, mode: Mode, ports: &[u16]) -> Vec<String> {
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
