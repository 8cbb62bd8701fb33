//! A real etcd 3.5 server.

use std::path::Path;
use std::process::{Command, Output};

use super::deps::require_bin;
use super::http;
use super::instance::Instance;
use super::ports::free_ports;
use super::PORT_RACE_ATTEMPTS;

/// A single-member etcd cluster on loopback, in its own temporary directory.
///
/// Dropping it stops the server and removes the directory; so does the end
/// of the test process, however it ends (see the crate docs).
pub struct Etcd {
    instance: Instance,
    client_port: u16,
}

impl Etcd {
    /// Starts an etcd owned by the caller, on free loopback ports, and waits
    /// until `/health` answers.
    ///
    /// # Panics
    /// When the etcd binary is missing ("run scripts/install-deps.sh"), or the
    /// server exits or is not ready within 30 s (with the tail of its log).
    pub fn start() -> Etcd {
        let bin = require_bin("etcd");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let ports = free_ports(2, false);
            let (client, peer) = (ports[0], ports[1]);
            let instance = Instance::new("etcd", |dir| argv(&bin, dir, client, peer));
            let etcd = Etcd {
                instance,
                client_port: client,
            };
            match etcd.instance.launch(|| etcd.check_ready()) {
                Ok(()) => return etcd,
                Err(e) if e.is_port_race() && attempt < PORT_RACE_ATTEMPTS => continue,
                Err(e) => panic!("etcd on 127.0.0.1:{client} did not start: {e}"),
            }
        }
    }

    fn check_ready(&self) -> Result<(), String> {
        let reply = http::get(&format!("{}/health", self.url()))?;
        if reply.status == 200 && reply.body.contains(r#""health":"true""#) {
            Ok(())
        } else {
            Err(format!("/health: {} {}", reply.status, reply.body))
        }
    }

    /// The client endpoint, `127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// The client URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.endpoint())
    }

    /// The store URL cntnr takes, `etcd://127.0.0.1:PORT`.
    pub fn store_url(&self) -> String {
        format!("etcd://{}", self.endpoint())
    }

    /// The server's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.instance.pid()
    }

    /// The instance's temporary directory (data in `data/`, output in
    /// `server.log`).
    pub fn data_dir(&self) -> &Path {
        self.instance.dir()
    }

    /// Stops the server gracefully (SIGTERM; SIGKILL after 10 s) and waits
    /// for it. Keeps the data and the ports for [`Etcd::restart`].
    pub fn stop(&mut self) {
        self.instance.stop();
    }

    /// Starts the server again on the same ports and data (stopping it first
    /// if it runs) and waits until it answers.
    ///
    /// # Panics
    /// When it does not come back within 30 s, e.g. because another process
    /// took its port meanwhile.
    pub fn restart(&mut self) {
        if let Err(e) = self.instance.launch(|| self.check_ready()) {
            panic!("etcd on {} did not restart: {e}", self.endpoint());
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        self.instance.pause();
    }

    /// Thaws a [`paused`](Etcd::pause) server (SIGCONT).
    pub fn resume(&self) {
        self.instance.resume();
    }

    /// Runs `etcdctl --endpoints=<this server> ARGS…` and returns its output.
    ///
    /// # Panics
    /// When etcdctl is missing or cannot be spawned.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        let bin = require_bin("etcdctl");
        Command::new(&bin)
            .arg(format!("--endpoints={}", self.url()))
            .args(args)
            .env_remove("ETCDCTL_ENDPOINTS")
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()))
    }
}

fn argv(bin: &Path, dir: &Path, client: u16, peer: u16) -> Vec<String> {
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    [
        bin.to_string_lossy().into_owned(),
        "--name=cntnr-e2e".into(),
        format!("--data-dir={}", dir.join("data").display()),
        format!("--listen-client-urls={client_url}"),
        format!("--advertise-client-urls={client_url}"),
        format!("--listen-peer-urls={peer_url}"),
        format!("--initial-advertise-peer-urls={peer_url}"),
        format!("--initial-cluster=cntnr-e2e={peer_url}"),
        "--initial-cluster-state=new".into(),
        "--initial-cluster-token=cntnr-e2e".into(),
        // Tests do not survive power loss; fsync only slows them down.
        "--unsafe-no-fsync".into(),
        "--log-level=warn".into(),
    ]
    .into()
}
