//! Store URLs (`etcd://`, `etcd+https://`, `consul://`, `consul+https://`,
//! `dir://`) and the options that go with them (TLS files, credentials).

use std::path::PathBuf;

use crate::{Error, Result};

/// A parsed store URL. Holds no credentials: those come through
/// [`ConnectOptions`] and never appear in a URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreUrl {
    /// `etcd://h:p[,h:p…]` or `etcd+https://…`.
    Etcd {
        /// `host:port` of each member.
        endpoints: Vec<String>,
        /// TLS (`etcd+https`).
        tls: bool,
    },
    /// `consul://h:p` or `consul+https://h:p` (the local agent).
    Consul {
        /// `host:port` of the agent's HTTP(S) API.
        address: String,
        /// TLS (`consul+https`).
        tls: bool,
    },
    /// `dir:///absolute/path`.
    Dir {
        /// Root directory of the store.
        root: PathBuf,
    },
}

impl StoreUrl {
    /// Parses a store URL. Errors are one line and say what is wrong.
    pub fn parse(url: &str) -> Result<StoreUrl> {
        let bad = |reason: &str| Error::BadUrl {
            url: redact(url),
            reason: reason.to_string(),
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            bad("expected SCHEME://…, with scheme etcd, etcd+https, consul, consul+https or dir")
        })?;
        if rest.contains('?') || rest.contains('#') {
            return Err(bad("query strings and fragments are not accepted (pass credentials with --etcd-user/ETCD_PASSWORD or CONSUL_HTTP_TOKEN)"));
        }
        match scheme {
            "dir" => {
                if !rest.starts_with('/') {
                    return Err(bad("dir store needs an absolute path: dir:///path"));
                }
                let root = PathBuf::from(rest);
                if root
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
                {
                    return Err(bad("dir store path must not contain '..'"));
                }
                Ok(StoreUrl::Dir { root })
            }
            "etcd" | "etcd+https" | "consul" | "consul+https" => {
                let rest = rest.strip_suffix('/').unwrap_or(rest);
                if rest.contains('@') {
                    return Err(bad("credentials are not accepted in the URL"));
                }
                if rest.contains('/') {
                    return Err(bad("no path expected after host:port"));
                }
                let mut endpoints = Vec::new();
                for hp in rest.split(',') {
                    endpoints.push(host_port(hp).map_err(|r| bad(&r))?);
                }
                let tls = scheme.ends_with("+https");
                if scheme.starts_with("etcd") {
                    Ok(StoreUrl::Etcd { endpoints, tls })
                } else {
                    if endpoints.len() != 1 {
                        return Err(bad("consul takes one agent address: consul://host:port"));
                    }
                    Ok(StoreUrl::Consul {
                        address: endpoints.remove(0),
                        tls,
                    })
                }
            }
            other => Err(bad(&format!(
                "unknown scheme {other:?} (expected etcd, etcd+https, consul, consul+https or dir)"
            ))),
        }
    }
}

impl std::str::FromStr for StoreUrl {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        StoreUrl::parse(s)
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreUrl::Etcd { endpoints, tls } => {
                write!(
                    f,
                    "{}://{}",
                    if *tls { "etcd+https" } else { "etcd" },
                    endpoints.join(",")
                )
            }
            StoreUrl::Consul { address, tls } => {
                write!(
                    f,
                    "{}://{}",
                    if *tls { "consul+https" } else { "consul" },
                    address
                )
            }
            StoreUrl::Dir { root } => write!(f, "dir://{}", root.display()),
        }
    }
}

fn host_port(hp: &str) -> std::result::Result<String, String> {
    if hp.is_empty() {
        return Err("empty host:port".into());
    }
    let (host, port) = if let Some(rest) = hp.strip_prefix('[') {
        let (h, p) = rest.split_once(']').ok_or("unclosed '[' in IPv6 address")?;
        (
            h,
            p.strip_prefix(':')
                .ok_or_else(|| format!("{hp:?}: missing :port"))?,
        )
    } else {
        hp.rsplit_once(':')
            .ok_or_else(|| format!("{hp:?}: missing :port"))?
    };
    if host.is_empty() {
        return Err(format!("{hp:?}: empty host"));
    }
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
    {
        return Err(format!("{hp:?}: invalid host"));
    }
    port.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{hp:?}: port must be 1-65535"))?;
    Ok(hp.to_string())
}

/// Cuts anything that might be a credential out of a URL before it goes
/// into an error message.
fn redact(url: &str) -> String {
    let mut s = url.to_string();
    if let Some(i) = s.find('?') {
        s.truncate(i);
        s.push_str("?<redacted>");
    }
    if let (Some(scheme_end), Some(at)) = (s.find("://"), s.rfind('@')) {
        if at > scheme_end {
            s.replace_range(scheme_end + 3..at, "<redacted>");
        }
    }
    s
}

/// Whether `pem` holds at least one PEM certificate block.
pub(crate) fn looks_like_pem_cert(pem: &[u8]) -> bool {
    const TAG: &[u8] = b"-----BEGIN CERTIFICATE-----";
    pem.windows(TAG.len()).any(|w| w == TAG)
}

/// A secret string: never printed by `Debug`/`Display`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Options for connecting, besides the URL.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// CA bundle (PEM) to trust for `+https` URLs.
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    pub cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    pub key: Option<PathBuf>,
    /// Consul ACL token (`CONSUL_HTTP_TOKEN` / `--consul-token-file`).
    pub consul_token: Option<Secret>,
    /// etcd user and password (`--etcd-user` + `ETCD_PASSWORD`).
    pub etcd_user: Option<(String, Secret)>,
    /// Prefix of registry records for etcd and dir (`<prefix>/services`).
    pub registry_prefix: String,
    /// How long `connect` keeps retrying an unreachable server before
    /// giving up (`None`: forever).
    pub connect_timeout: Option<std::time::Duration>,
    /// Blocking-query wait for Consul watches (server caps at 10 min).
    pub consul_wait: std::time::Duration,
    /// Lock-delay for Consul sessions created by this store.
    pub consul_lock_delay: std::time::Duration,
    /// dir backend: interval of the safety-net rescan of watched prefixes.
    pub dir_rescan: std::time::Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            ca: None,
            cert: None,
            key: None,
            consul_token: None,
            etcd_user: None,
            registry_prefix: "cntnr/services".into(),
            connect_timeout: None,
            consul_wait: std::time::Duration::from_secs(60),
            consul_lock_delay: std::time::Duration::from_secs(15),
            dir_rescan: std::time::Duration::from_secs(5),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_scheme() {
        assert_eq!(
            StoreUrl::parse("etcd://a:2379,b:2379").unwrap(),
            StoreUrl::Etcd {
                endpoints: vec!["a:2379".into(), "b:2379".into()],
                tls: false
            }
        );
        assert_eq!(
            StoreUrl::parse("etcd+https://[::1]:2379").unwrap(),
            StoreUrl::Etcd {
                endpoints: vec!["[::1]:2379".into()],
                tls: true
            }
        );
        assert_eq!(
            StoreUrl::parse("consul://127.0.0.1:8500/").unwrap(),
            StoreUrl::Consul {
                address: "127.0.0.1:8500".into(),
                tls: false
            }
        );
        assert_eq!(
            StoreUrl::parse("consul+https://c:8501").unwrap(),
            StoreUrl::Consul {
                address: "c:8501".into(),
                tls: true
            }
        );
        assert_eq!(
            StoreUrl::parse("dir:///var/lib/cntnr/store").unwrap(),
            StoreUrl::Dir {
                root: "/var/lib/cntnr/store".into()
            }
        );
        assert_eq!(
            StoreUrl::parse("etcd://a:1,b:2").unwrap().to_string(),
            "etcd://a:1,b:2"
        );
    }

    #[test]
    fn bad_urls_give_one_line_errors() {
        for (url, needle) in [
            ("etcd", "SCHEME://"),
            ("redis://x:1", "unknown scheme"),
            ("etcd://host", "missing :port"),
            ("etcd://host:0", "port must be"),
            ("etcd://host:99999", "port must be"),
            ("etcd://a:1,", "empty host:port"),
            ("consul://a:1,b:2", "one agent address"),
            ("consul://a:1/v1", "no path"),
            ("dir://relative/path", "absolute path"),
            ("dir:///a/../b", "'..'"),
            ("consul://h:1?token=s3cret", "query strings"),
            ("etcd://user:s3cret@h:1", "credentials"),
        ] {
            let e = StoreUrl::parse(url).unwrap_err().to_string();
            assert!(e.contains(needle), "{url}: {e}");
            assert!(!e.contains('\n'), "{url}: multi-line error {e}");
            assert!(!e.contains("s3cret"), "{url}: credential leaked in {e}");
        }
    }

    #[test]
    fn secrets_never_print() {
        let o = ConnectOptions {
            consul_token: Some(Secret::new("tok-123")),
            etcd_user: Some(("root".into(), Secret::new("pw-456"))),
            ..Default::default()
        };
        let s = format!("{o:?}");
        assert!(!s.contains("tok-123") && !s.contains("pw-456"), "{s}");
    }
}
