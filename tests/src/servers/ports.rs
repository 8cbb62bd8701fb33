//! Free loopback ports.

use std::net::{Ipv4Addr, TcpListener, UdpSocket};

/// Picks `n` distinct ports on 127.0.0.1 that are free for TCP and, when
/// `udp` is set, for UDP as well (Consul's serf and DNS ports use both).
///
/// The ports are released before the server binds them, so another process
/// can take one in between: callers retry the start on "address in use".
pub(crate) fn free_ports(n: usize, udp: bool) -> Vec<u16> {
    let mut held = Vec::with_capacity(n);
    let mut ports = Vec::with_capacity(n);
    while ports.len() < n {
        let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        let port = tcp.local_addr().expect("local addr").port();
        let udp_sock = if udp {
            match UdpSocket::bind((Ipv4Addr::LOCALHOST, port)) {
                Ok(s) => Some(s),
                Err(_) => continue,
            }
        } else {
            None
        };
        held.push((tcp, udp_sock));
        ports.push(port);
    }
    ports
}
