//! Linux names compose values refer to: signals and capabilities.

/// Signal names the kernel knows (without the `SIG` prefix).
const SIGNALS: &[&str] = &[
    "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "IOT", "BUS", "FPE", "KILL", "USR1", "SEGV",
    "USR2", "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU",
    "URG", "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "POLL", "PWR", "SYS",
];

/// Normalizes a signal written as `SIGTERM`, `TERM`, `sigterm`, a number
/// (`15`) or a real-time signal (`SIGRTMIN+3`) to its canonical `SIG…` form
/// (numbers stay numbers). Returns an error message for anything else.
pub fn normalize_signal(s: &str) -> Result<String, String> {
    let t = s.trim();
    if let Ok(n) = t.parse::<u32>() {
        if (1..=64).contains(&n) {
            return Ok(n.to_string());
        }
        return Err(format!("invalid signal {s:?}: numbers must be 1-64"));
    }
    let upper = t.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    if SIGNALS.contains(&bare) {
        return Ok(format!("SIG{bare}"));
    }
    for base in ["RTMIN", "RTMAX"] {
        if let Some(rest) = bare.strip_prefix(base) {
            let ok = rest.is_empty()
                || rest
                    .strip_prefix(['+', '-'])
                    .and_then(|n| n.parse::<u8>().ok())
                    .is_some_and(|n| n <= 30);
            if ok {
                return Ok(format!("SIG{bare}"));
            }
        }
    }
    Err(format!(
        "invalid signal {s:?}: not a known signal name such as SIGTERM or SIGHUP"
    ))
}

/// Capability names (without the `CAP_` prefix), as of Linux 6.x.
const CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Normalizes a capability written as `NET_ADMIN`, `cap_net_admin` or
/// `CAP_NET_ADMIN` to `CAP_NET_ADMIN`; `ALL` stays `ALL`.
pub fn normalize_capability(s: &str) -> Result<String, String> {
    let upper = s.trim().to_ascii_uppercase();
    if upper == "ALL" {
        return Ok(upper);
    }
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    if CAPABILITIES.contains(&bare) {
        Ok(format!("CAP_{bare}"))
    } else {
        Err(format!(
            "invalid capability {s:?}: not a Linux capability such as NET_ADMIN"
        ))
    }
}

/// Resource limit names accepted in `ulimits`.
pub const ULIMITS: &[&str] = &[
    "as",
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_normalize() {
        assert_eq!(normalize_signal("term").unwrap(), "SIGTERM");
        assert_eq!(normalize_signal("SIGHUP").unwrap(), "SIGHUP");
        assert_eq!(normalize_signal("9").unwrap(), "9");
        assert_eq!(normalize_signal("SIGRTMIN+3").unwrap(), "SIGRTMIN+3");
        assert!(normalize_signal("SIGFOO").is_err());
        assert!(normalize_signal("99").is_err());
    }

    #[test]
    fn capabilities_normalize() {
        assert_eq!(normalize_capability("net_admin").unwrap(), "CAP_NET_ADMIN");
        assert_eq!(
            normalize_capability("CAP_SYS_TIME").unwrap(),
            "CAP_SYS_TIME"
        );
        assert_eq!(normalize_capability("all").unwrap(), "ALL");
        assert!(normalize_capability("NET_ADMN").is_err());
    }
}
