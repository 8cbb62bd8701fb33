//! The three probe kinds and what one probe round of a container runs:
//! - the compose `healthcheck` (`CMD` / `CMD-SHELL`) inside the container
//!   through [`Runtime::exec`], whose timeout kills the check's processes in
//!   the container (none is leaked);
//! - `cntnr.check.http`: one HTTP/1.1 `GET` from the agent straight to the
//!   container's address (no exec, no process in the container); a 2xx or
//!   3xx status passes;
//! - `cntnr.check.tcp`: a TCP connect from the agent.
//!
//! When a container has several, they run concurrently and **all** must pass
//! (a service that declares both a `healthcheck` and a direct check is
//! healthy only if both agree).
//!
//! The address is the caller's: `127.0.0.1` for `network_mode: host` (the
//! container's ports are the host's), the container's IP on its project
//! network for bridge mode.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use cntnr_model::{HealthTest, Protocol, ServiceSpec};
use cntnr_reconcile::runtime::{
    ContainerId, ContainerState, ExecOutput, ExecRequest, Runtime, RuntimeError,
};
use http_body_util::Empty;
use hyper::header::{CONNECTION, HOST, USER_AGENT};
use hyper_util::rt::TokioIo;

use super::state::{HealthPolicy, ProbeResult};

/// Runs one probe round. The checker's seam: [`ContainerProbes`] is the real
/// one; tests of the schedule use scripted ones.
pub trait Probe: Send + Sync + 'static {
    /// Runs every probe once and combines the results. Bounded by the
    /// policy's timeout (each probe enforces it itself).
    fn probe(&self) -> impl Future<Output = ProbeResult> + Send;
}

/// `cntnr.check.http`, resolved to a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpProbe {
    /// The container port.
    pub port: u16,
    /// The request path (starts with `/`).
    pub path: String,
}

/// Everything checked on a container of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    /// Timings.
    pub policy: HealthPolicy,
    /// argv run in the container (`CMD-SHELL x` is `/bin/sh -c x`).
    pub exec: Option<Vec<String>>,
    /// The direct HTTP probe.
    pub http: Option<HttpProbe>,
    /// The direct TCP probe: a container port.
    pub tcp: Option<u16>,
}

impl HealthConfig {
    /// What a service's containers are checked with; `None` when nothing is
    /// (no `healthcheck` test, or `disable`/`NONE`, and no `cntnr.check.*`):
    /// their health is `none` and they count as healthy.
    ///
    /// - The compose `healthcheck`'s timings apply to every probe; with only
    ///   direct checks, [`HealthPolicy::DIRECT_DEFAULT`].
    /// - `disable: true` / `test: NONE` turns off the compose check only: a
    ///   `cntnr.check.*` annotation is an explicit request and still runs.
    /// - A `healthcheck` without `test` would inherit the image's test;
    ///   cntnr's image store does not keep images' `HEALTHCHECK`, so such a
    ///   block only sets timings.
    /// - `cntnr.check.http` without a port probes the first TCP port of
    ///   `ports` (target), else of `expose` (validation guarantees one; if
    ///   there is none it is ignored rather than probing port 0).
    pub fn from_spec(spec: &ServiceSpec) -> Option<HealthConfig> {
        let exec = spec
            .healthcheck
            .as_ref()
            .and_then(|h| h.test.as_ref())
            .and_then(|t| match t {
                HealthTest::Disabled => None,
                HealthTest::Cmd(args) => Some(args.clone()),
                HealthTest::Shell(cmd) => {
                    Some(vec!["/bin/sh".to_string(), "-c".to_string(), cmd.clone()])
                }
            });
        let http = spec.agent.check_http.as_ref().and_then(|c| {
            let port = c.port.or_else(|| first_container_port(spec))?;
            Some(HttpProbe {
                port,
                path: c.path.clone(),
            })
        });
        let tcp = spec.agent.check_tcp;
        if exec.is_none() && http.is_none() && tcp.is_none() {
            return None;
        }
        let policy = match &spec.healthcheck {
            Some(h) if !matches!(h.test, Some(HealthTest::Disabled)) => {
                HealthPolicy::from_healthcheck(h)
            }
            _ => HealthPolicy::DIRECT_DEFAULT,
        };
        Some(HealthConfig {
            policy,
            exec,
            http,
            tcp,
        })
    }
}

/// The first TCP container port of `ports`, else of `expose`.
pub fn first_container_port(spec: &ServiceSpec) -> Option<u16> {
    spec.ports
        .iter()
        .find(|p| p.protocol == Protocol::Tcp)
        .map(|p| p.target)
        .or_else(|| {
            spec.expose
                .iter()
                .find(|p| p.protocol == Protocol::Tcp)
                .map(|p| p.port)
        })
}

/// The probes of one running container.
///
/// The exec probe looks the container's state up once and then reuses it
/// ([`Runtime::exec_in`]): a `runc state` per check would add a quarter to
/// the cost of each `runc exec`. After an exec error other than a timeout
/// the state is looked up again on the next round.
#[derive(Debug)]
pub struct ContainerProbes<R> {
    runtime: Arc<R>,
    container: ContainerId,
    address: IpAddr,
    config: HealthConfig,
    state: std::sync::Mutex<Option<ContainerState>>,
}

impl<R: Runtime + 'static> ContainerProbes<R> {
    /// Probes `container` (exec through `runtime`) at `address` (direct probes).
    pub fn new(
        runtime: Arc<R>,
        container: ContainerId,
        address: IpAddr,
        config: HealthConfig,
    ) -> Self {
        ContainerProbes {
            runtime,
            container,
            address,
            config,
            state: std::sync::Mutex::new(None),
        }
    }

    async fn exec_check(&self, argv: &[String], timeout: Duration) -> ProbeResult {
        let cached = self.state.lock().expect("not poisoned").clone();
        let state = match cached {
            Some(s) => s,
            None => match self.runtime.state(&self.container).await {
                Ok(Some(s)) => {
                    *self.state.lock().expect("not poisoned") = Some(s.clone());
                    s
                }
                Ok(None) => {
                    return ProbeResult::fail(format!(
                        "health check could not run: container {} does not exist",
                        self.container
                    ))
                }
                Err(e) => return ProbeResult::fail(format!("health check could not run: {e}")),
            },
        };
        let res = self
            .runtime
            .exec_in(&state, &exec_request(argv, timeout))
            .await;
        if matches!(&res, Err(e) if !matches!(e, RuntimeError::Timeout { .. })) {
            *self.state.lock().expect("not poisoned") = None;
        }
        exec_result(res)
    }

    /// The configuration.
    pub fn config(&self) -> &HealthConfig {
        &self.config
    }
}

impl<R: Runtime + 'static> Probe for ContainerProbes<R> {
    async fn probe(&self) -> ProbeResult {
        let timeout = self.config.policy.timeout;
        let exec = async {
            match &self.config.exec {
                Some(argv) => Some(self.exec_check(argv, timeout).await),
                None => None,
            }
        };
        let http = async {
            match &self.config.http {
                Some(h) => {
                    Some(http_probe(SocketAddr::new(self.address, h.port), &h.path, timeout).await)
                }
                None => None,
            }
        };
        let tcp = async {
            match self.config.tcp {
                Some(port) => Some(tcp_probe(SocketAddr::new(self.address, port), timeout).await),
                None => None,
            }
        };
        let (e, h, t) = tokio::join!(exec, http, tcp);
        combine([e, h, t].into_iter().flatten())
    }
}

/// All must pass; the output lists each probe's, failures first (they are
/// what an operator looks for).
pub fn combine(results: impl IntoIterator<Item = ProbeResult>) -> ProbeResult {
    let (mut failed, passed): (Vec<_>, Vec<_>) = results.into_iter().partition(|r| !r.passed);
    let ok = failed.is_empty();
    failed.extend(passed);
    let output = failed
        .iter()
        .map(|r| r.output.trim())
        .filter(|o| !o.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    ProbeResult { passed: ok, output }
}

/// Runs `argv` in the container: exit 0 passes. On timeout the check's
/// processes are killed by the runtime and the probe fails with docker's
/// message.
pub async fn exec_probe<R: Runtime>(
    runtime: &R,
    container: &ContainerId,
    argv: &[String],
    timeout: Duration,
) -> ProbeResult {
    exec_result(runtime.exec(container, &exec_request(argv, timeout)).await)
}

fn exec_request(argv: &[String], timeout: Duration) -> ExecRequest {
    ExecRequest {
        args: argv.to_vec(),
        env: Vec::new(),
        cwd: None,
        timeout,
    }
}

fn exec_result(res: Result<ExecOutput, RuntimeError>) -> ProbeResult {
    match res {
        Ok(out) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            if out.code == 0 {
                ProbeResult::pass(text)
            } else if text.trim().is_empty() {
                ProbeResult::fail(format!("exit code {}", out.code))
            } else {
                ProbeResult::fail(text)
            }
        }
        Err(RuntimeError::Timeout { after, .. }) => ProbeResult::fail(format!(
            "Health check exceeded timeout ({})",
            cntnr_model::units::format_duration(after)
        )),
        Err(e) => ProbeResult::fail(format!("health check could not run: {e}")),
    }
}

/// One `GET path` to `addr` on a fresh connection (`Connection: close`), the
/// whole exchange bounded by `timeout`. 2xx and 3xx pass (redirects are not
/// followed, as Consul does not follow them either). The body is not read.
pub async fn http_probe(addr: SocketAddr, path: &str, timeout: Duration) -> ProbeResult {
    let what = format!("HTTP GET http://{addr}{path}");
    match tokio::time::timeout(timeout, http_status(addr, path)).await {
        Ok(Ok(status)) => {
            let line = format!("{what}: {status}");
            if status.is_success() || status.is_redirection() {
                ProbeResult::pass(line)
            } else {
                ProbeResult::fail(line)
            }
        }
        Ok(Err(e)) => ProbeResult::fail(format!("{what}: {e}")),
        Err(_) => ProbeResult::fail(format!(
            "{what}: timed out after {}",
            cntnr_model::units::format_duration(timeout)
        )),
    }
}

async fn http_status(addr: SocketAddr, path: &str) -> Result<hyper::StatusCode, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let req = hyper::Request::get(path)
        .header(HOST, addr.to_string())
        .header(USER_AGENT, "cntnr-agent health check")
        .header(CONNECTION, "close")
        .body(Empty::<&'static [u8]>::new())
        .map_err(|e| e.to_string())?;
    // The connection is driven here rather than in a spawned task, so
    // nothing outlives the probe. With `Connection: close` it may finish in
    // the same instant it hands over the response: then take the response.
    let mut conn = std::pin::pin!(conn);
    let mut response = std::pin::pin!(sender.send_request(req));
    let res = tokio::select! {
        biased;
        res = &mut response => res,
        done = &mut conn => {
            done.map_err(|e| e.to_string())?;
            response.await
        }
    };
    res.map(|r| r.status()).map_err(|e| e.to_string())
}

/// A TCP connect to `addr` within `timeout`; the connection is closed at once.
pub async fn tcp_probe(addr: SocketAddr, timeout: Duration) -> ProbeResult {
    let what = format!("TCP connect {addr}");
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => ProbeResult::pass(format!("{what}: success")),
        Ok(Err(e)) => ProbeResult::fail(format!("{what}: {e}")),
        Err(_) => ProbeResult::fail(format!(
            "{what}: timed out after {}",
            cntnr_model::units::format_duration(timeout)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cntnr_model::HttpCheck;

    fn spec(yaml: &str) -> ServiceSpec {
        let text = format!("services:\n  s:\n    image: busybox\n{yaml}");
        let name = cntnr_model::ProjectName::new("p").unwrap();
        let project = cntnr_model::load_stored(&name, "projects/p", &text).expect("valid");
        project.services.into_values().next().unwrap()
    }

    #[test]
    fn health_config_from_compose_and_annotations() {
        assert_eq!(HealthConfig::from_spec(&spec("")), None, "no check at all");

        let c = HealthConfig::from_spec(&spec(
            "    healthcheck: {test: [CMD-SHELL, 'wget -q localhost'], interval: 2s, timeout: 1s, retries: 4}\n",
        ))
        .unwrap();
        assert_eq!(
            c.exec.as_deref(),
            Some(
                &[
                    "/bin/sh".to_string(),
                    "-c".into(),
                    "wget -q localhost".into()
                ][..]
            )
        );
        assert_eq!(
            (c.policy.interval, c.policy.timeout, c.policy.retries),
            (Duration::from_secs(2), Duration::from_secs(1), 4)
        );

        let c = HealthConfig::from_spec(&spec("    healthcheck: {test: [CMD, pg_isready, -q]}\n"))
            .unwrap();
        assert_eq!(c.exec, Some(vec!["pg_isready".to_string(), "-q".into()]));

        for off in [
            "    healthcheck: {test: [NONE]}\n",
            "    healthcheck: {disable: true}\n",
            "    healthcheck: {interval: 3s}\n",
        ] {
            assert_eq!(HealthConfig::from_spec(&spec(off)), None, "{off}");
        }

        // Direct checks alone: the direct defaults; the port from `ports`.
        let c = HealthConfig::from_spec(&spec(
            "    ports: ['9000:80/udp', '8080:80']\n    annotations: {cntnr.check.http: /healthz, cntnr.check.tcp: '81'}\n",
        ))
        .unwrap();
        assert_eq!(c.policy, HealthPolicy::DIRECT_DEFAULT);
        assert_eq!(
            c.http,
            Some(HttpProbe {
                port: 80,
                path: "/healthz".into()
            })
        );
        assert_eq!((c.exec, c.tcp), (None, Some(81)));

        // `disable` turns off only the compose check.
        let c = HealthConfig::from_spec(&spec(
            "    expose: ['7000']\n    healthcheck: {disable: true}\n    annotations: {cntnr.check.http: 7001/ready}\n",
        ))
        .unwrap();
        assert_eq!((c.exec, c.policy), (None, HealthPolicy::DIRECT_DEFAULT));
        assert_eq!(c.http.unwrap().port, 7001);

        // With a healthcheck block, its timings apply to the direct checks.
        let c = HealthConfig::from_spec(&spec(
            "    expose: ['7000']\n    healthcheck: {interval: 3s}\n    annotations: {cntnr.check.http: /}\n",
        ))
        .unwrap();
        assert_eq!(c.policy.interval, Duration::from_secs(3));
        assert_eq!(c.http.unwrap().port, 7000);
    }

    #[test]
    fn http_check_without_any_port_is_not_probed_on_port_zero() {
        let mut s = spec("");
        s.agent.check_http = Some(HttpCheck {
            port: None,
            path: "/".into(),
        });
        assert_eq!(HealthConfig::from_spec(&s), None);
    }

    #[test]
    fn combine_needs_every_probe_and_lists_failures_first() {
        let r = combine([ProbeResult::pass("exec ok"), ProbeResult::fail("http 500")]);
        assert_eq!(r, ProbeResult::fail("http 500\nexec ok"));
        let r = combine([ProbeResult::pass("a"), ProbeResult::pass("")]);
        assert_eq!(r, ProbeResult::pass("a"));
    }
}
