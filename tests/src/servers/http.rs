//! A small blocking HTTP client for readiness checks against loopback
//! servers.

use std::sync::OnceLock;
use std::time::Duration;

/// A status code and body.
pub(crate) struct Reply {
    pub status: u16,
    pub body: String,
}

fn agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::Agent::config_builder()
            // Loopback only: a proxy from the environment must not apply.
            .proxy(None)
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .new_agent()
    })
}

fn reply(res: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<Reply, String> {
    let mut res = res.map_err(|e| e.to_string())?;
    let status = res.status().as_u16();
    let body = res.body_mut().read_to_string().map_err(|e| e.to_string())?;
    Ok(Reply { status, body })
}

pub(crate) fn get(url: &str) -> Result<Reply, String> {
    get_with(url, None)
}

/// `GET`, with Consul's `X-Consul-Token` header when `token` is given.
pub(crate) fn get_with(url: &str, token: Option<&str>) -> Result<Reply, String> {
    let mut req = agent().get(url);
    if let Some(t) = token {
        req = req.header(TOKEN_HEADER, t);
    }
    reply(req.call())
}

/// `PUT`, with Consul's `X-Consul-Token` header when `token` is given.
pub(crate) fn put_with(url: &str, body: &str, token: Option<&str>) -> Result<Reply, String> {
    let mut req = agent().put(url);
    if let Some(t) = token {
        req = req.header(TOKEN_HEADER, t);
    }
    reply(req.send(body))
}

/// `DELETE`, with Consul's `X-Consul-Token` header when `token` is given.
pub(crate) fn delete_with(url: &str, token: Option<&str>) -> Result<Reply, String> {
    let mut req = agent().delete(url);
    if let Some(t) = token {
        req = req.header(TOKEN_HEADER, t);
    }
    reply(req.call())
}

const TOKEN_HEADER: &str = "X-Consul-Token";
