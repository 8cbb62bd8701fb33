//! A real etcd 3.5 server.

use std::cell::OnceCell;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::deps::require_bin;
use super::http;
use super::instance::Instance;
use super::ports::free_ports;
use super::tls::TlsFiles;
use super::PORT_RACE_ATTEMPTS;

/// A single-member etcd cluster on loopback, in its own temporary directory.
///
/// Dropping it stops the server and removes the directory; so does the end
/// of the test process, however it ends (see the crate docs).
pub struct Etcd {
    instance: Instance,
    client_port: u16,
    tls: Option<Tls>,
}

/// How an etcd started with TLS is set up.
struct Tls {
    files: TlsFiles,
    /// `--client-cert-auth`: clients must present a certificate the CA signed.
    client_cert_auth: bool,
    /// A plain-HTTP listener that serves only `/health` and `/metrics`, so
    /// readiness needs no TLS client.
    metrics_port: u16,
}

#[derive(Clone, Copy)]
enum Mode {
    Plain,
    Tls { client_cert_auth: bool },
}

impl Etcd {
    /// Starts an etcd owned by the caller, on free loopback ports, and waits
    /// until `/health` answers.
    ///
    /// # Panics
    /// When the etcd binary is missing ("run scripts/install-deps.sh"), or the
    /// server exits or is not ready within 30 s (with the tail of its log).
    pub fn start() -> Etcd {
        Etcd::launch(Mode::Plain)
    }

    /// Like [`Etcd::start`], but clients must use TLS: the client port
    /// serves HTTPS with a certificate for `127.0.0.1` and `localhost`
    /// signed by a CA made for this server ([`Etcd::ca_file`]). Clients need
    /// no certificate of their own.
    ///
    /// The certificates are generated into the server's directory; a second
    /// listener on loopback serves plain `/health` for the readiness check.
    pub fn start_tls() -> Etcd {
        Etcd::launch(Mode::Tls {
            client_cert_auth: false,
        })
    }

    /// Like [`Etcd::start_tls`], with `--client-cert-auth`: clients must also
    /// present a certificate signed by the CA ([`Etcd::client_cert_file`],
    /// [`Etcd::client_key_file`]).
    pub fn start_mtls() -> Etcd {
        Etcd::launch(Mode::Tls {
            client_cert_auth: true,
        })
    }

    fn launch(mode: Mode) -> Etcd {
        let bin = require_bin("etcd");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let ports = free_ports(3, false);
            let (client, peer) = (ports[0], ports[1]);
            let tls = OnceCell::new();
            let instance = Instance::new("etcd", |dir| {
                let t = match mode {
                    Mode::Plain => None,
                    Mode::Tls { client_cert_auth } => Some(Tls {
                        files: TlsFiles::generate(dir),
                        client_cert_auth,
                        metrics_port: ports[2],
                    }),
                };
                let argv = argv(&bin, dir, client, peer, t.as_ref());
                let _ = tls.set(t);
                argv
            });
            let etcd = Etcd {
                instance,
                client_port: client,
                tls: tls.into_inner().flatten(),
            };
            match etcd.instance.launch(|| etcd.check_ready()) {
                Ok(()) => return etcd,
                Err(e) if e.is_port_race() && attempt < PORT_RACE_ATTEMPTS => continue,
                Err(e) => panic!("etcd on 127.0.0.1:{client} did not start: {e}"),
            }
        }
    }

    fn check_ready(&self) -> Result<(), String> {
        let health = match &self.tls {
            None => format!("{}/health", self.url()),
            Some(t) => format!("http://127.0.0.1:{}/health", t.metrics_port),
        };
        let reply = http::get(&health)?;
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

    /// The client URL, `http://127.0.0.1:PORT` (`https://…` with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.endpoint())
    }

    /// The store URL cntnr takes, `etcd://127.0.0.1:PORT`
    /// (`etcd+https://…` with TLS).
    pub fn store_url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "etcd+https"
        } else {
            "etcd"
        };
        format!("{scheme}://{}", self.endpoint())
    }

    /// The certificates of a server started with TLS; `None` without.
    pub fn tls_files(&self) -> Option<&TlsFiles> {
        self.tls.as_ref().map(|t| &t.files)
    }

    /// The CA file clients must trust (TLS only).
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.tls_files().map(TlsFiles::ca)
    }

    /// A client certificate the server accepts (TLS only; required by
    /// [`Etcd::start_mtls`]).
    pub fn client_cert_file(&self) -> Option<PathBuf> {
        self.tls_files().map(TlsFiles::client_cert)
    }

    /// The key of [`Etcd::client_cert_file`] (TLS only).
    pub fn client_key_file(&self) -> Option<PathBuf> {
        self.tls_files().map(TlsFiles::client_key)
    }

    /// Whether clients must present a certificate ([`Etcd::start_mtls`]).
    pub fn requires_client_cert(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.client_cert_auth)
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
    /// With TLS, etcdctl trusts the server's CA and presents the client
    /// certificate.
    ///
    /// # Panics
    /// When etcdctl is missing or cannot be spawned.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        let bin = require_bin("etcdctl");
        let mut cmd = Command::new(&bin);
        cmd.arg(format!("--endpoints={}", self.url()));
        if let Some(files) = self.tls_files() {
            cmd.arg(format!("--cacert={}", files.ca().display()))
                .arg(format!("--cert={}", files.client_cert().display()))
                .arg(format!("--key={}", files.client_key().display()));
        }
        cmd.args(args)
            .env_remove("ETCDCTL_ENDPOINTS")
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()))
    }
}

fn argv(bin: &Path, dir: &Path, client: u16, peer: u16, tls: Option<&Tls>) -> Vec<String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let client_url = format!("{scheme}://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let mut argv: Vec<String> = [
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
    .into();
    if let Some(t) = tls {
        argv.extend([
            format!("--cert-file={}", t.files.server_cert().display()),
            format!("--key-file={}", t.files.server_key().display()),
            format!("--listen-metrics-urls=http://127.0.0.1:{}", t.metrics_port),
        ]);
        // etcd requires client certificates as soon as it has a trusted CA.
        if t.client_cert_auth {
            argv.extend([
                format!("--trusted-ca-file={}", t.files.ca().display()),
                "--client-cert-auth".into(),
            ]);
        }
    }
    argv
}
