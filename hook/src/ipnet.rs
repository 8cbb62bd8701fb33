//! A minimal IPv4 prefix type: what subnet allocation and route overlap need.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 network `addr/prefix` with the host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Net {
    /// `addr/prefix`, host bits cleared; `None` if `prefix > 32`.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Self> {
        (prefix <= 32).then(|| Self {
            addr: Ipv4Addr::from(u32::from(addr) & mask(prefix)),
            prefix,
        })
    }

    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether the two networks share at least one address.
    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        let p = self.prefix.min(other.prefix);
        u32::from(self.addr) & mask(p) == u32::from(other.addr) & mask(p)
    }

    /// Whether `ip` is inside.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.addr)
    }

    /// The `n`th address (0 is the network address); `None` past the end.
    pub fn nth(&self, n: u32) -> Option<Ipv4Addr> {
        let size = 1u64 << (32 - self.prefix);
        (u64::from(n) < size).then(|| Ipv4Addr::from(u32::from(self.addr) + n))
    }

    /// The subnets of length `prefix` inside this network, in address order
    /// (empty if `prefix` is shorter than this network's).
    pub fn subnets(&self, prefix: u8) -> impl Iterator<Item = Ipv4Net> + '_ {
        let count: u64 = if prefix < self.prefix || prefix > 32 {
            0
        } else {
            1u64 << (prefix - self.prefix)
        };
        let step = 1u64 << (32 - prefix.min(32));
        (0..count).map(move |i| Ipv4Net {
            addr: Ipv4Addr::from((u64::from(u32::from(self.addr)) + i * step) as u32),
            prefix,
        })
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Net {
    type Err = String;

    /// `a.b.c.d/n`, or a bare address (a /32).
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (
                a,
                p.parse::<u8>().map_err(|_| format!("bad prefix in {s}"))?,
            ),
            None => (s, 32),
        };
        let addr: Ipv4Addr = a.parse().map_err(|_| format!("bad IPv4 address in {s}"))?;
        Ipv4Net::new(addr, p).ok_or_else(|| format!("prefix longer than 32 in {s}"))
    }
}

impl serde::Serialize for Ipv4Net {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Ipv4Net {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn parse_clears_host_bits_and_prints() {
        assert_eq!(n("10.90.3.7/24").to_string(), "10.90.3.0/24");
        assert_eq!(n("192.0.2.2").to_string(), "192.0.2.2/32");
        assert!("10.0.0.0/33".parse::<Ipv4Net>().is_err());
        assert!("nope/8".parse::<Ipv4Net>().is_err());
    }

    #[test]
    fn overlap_table() {
        for (a, b, want) in [
            ("10.90.0.0/16", "10.90.4.0/24", true),
            ("10.90.4.0/24", "10.90.0.0/16", true),
            ("10.90.4.0/24", "10.90.5.0/24", false),
            ("0.0.0.0/0", "10.0.0.0/8", true),
            ("10.90.4.9/32", "10.90.4.0/24", true),
            ("172.17.0.0/16", "10.90.0.0/16", false),
        ] {
            assert_eq!(n(a).overlaps(&n(b)), want, "{a} vs {b}");
        }
    }

    #[test]
    fn subnets_and_hosts() {
        let s: Vec<String> = n("10.90.0.0/22")
            .subnets(24)
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            s,
            [
                "10.90.0.0/24",
                "10.90.1.0/24",
                "10.90.2.0/24",
                "10.90.3.0/24"
            ]
        );
        assert_eq!(n("10.90.0.0/24").subnets(16).count(), 0);
        assert_eq!(n("10.90.1.0/24").nth(1), Some(Ipv4Addr::new(10, 90, 1, 1)));
        assert_eq!(n("10.90.1.0/24").nth(256), None);
        assert!(n("10.90.1.0/24").contains(Ipv4Addr::new(10, 90, 1, 200)));
    }
}
