//! Which addresses of a topology would collide when bound: the same port written two ways
//! (`localhost` and `127.0.0.1`), a wildcard and a specific address on one port, an admin
//! listener on a node's listener. Decided on the text alone: no name is resolved.

use crate::transport::{Endpoint, Scheme};

/// The port space an address binds in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Protocol {
    Tcp,
    Udp,
}

/// A socket address as a listener would bind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Bind {
    protocol: Protocol,
    host: Host,
    port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    AnyV4,
    AnyV6,
    /// A specific address or name, normalised (`localhost` is `127.0.0.1`).
    Named(String),
}

impl Bind {
    /// Where a listener endpoint binds; `None` for in-memory endpoints.
    pub(super) fn of_endpoint(endpoint: &Endpoint) -> Option<Bind> {
        let protocol = match endpoint.scheme {
            Scheme::Mem => return None,
            Scheme::Quic => Protocol::Udp,
            Scheme::Tcp | Scheme::Tls | Scheme::Ws | Scheme::Wss => Protocol::Tcp,
        };
        Bind::parse(protocol, &endpoint.address)
    }

    /// A `host:port` address (`[v6]:port` for IPv6); `None` when it is not one.
    pub(super) fn parse(protocol: Protocol, address: &str) -> Option<Bind> {
        let (host, port) = address.rsplit_once(':')?;
        let port = port.parse::<u16>().ok()?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return None;
        }
        let host = match host.to_ascii_lowercase().as_str() {
            "0.0.0.0" => Host::AnyV4,
            "::" => Host::AnyV6,
            "localhost" | "127.0.0.1" => Host::Named("127.0.0.1".into()),
            other => Host::Named(other.to_owned()),
        };
        Some(Bind {
            protocol,
            host,
            port,
        })
    }

    /// Whether binding both would fail (or one would steal the other's connections). Port 0
    /// never collides: the system picks a free one.
    pub(super) fn collides(&self, other: &Bind) -> bool {
        if self.protocol != other.protocol || self.port != other.port || self.port == 0 {
            return false;
        }
        let v6 = |h: &Host| matches!(h, Host::Named(n) if n.contains(':'));
        match (&self.host, &other.host) {
            (a, b) if a == b => true,
            // A dual-stack IPv6 wildcard takes the port on every address.
            (Host::AnyV6, _) | (_, Host::AnyV6) => true,
            (Host::AnyV4, h) | (h, Host::AnyV4) => !v6(h),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(address: &str) -> Bind {
        Bind::parse(Protocol::Tcp, address).expect("an address")
    }

    #[test]
    fn the_same_port_written_two_ways_collides() {
        assert!(tcp("localhost:7700").collides(&tcp("127.0.0.1:7700")));
        assert!(tcp("0.0.0.0:7700").collides(&tcp("127.0.0.1:7700")));
        assert!(tcp("[::]:7700").collides(&tcp("10.0.0.1:7700")));
        assert!(tcp("LocalHost:7700").collides(&tcp("localhost:7700")));
        assert!(!tcp("127.0.0.1:7700").collides(&tcp("127.0.0.2:7700")));
        assert!(!tcp("127.0.0.1:7700").collides(&tcp("127.0.0.1:7701")));
        assert!(!tcp("0.0.0.0:7700").collides(&tcp("[::1]:7700")));
        assert!(!tcp("127.0.0.1:0").collides(&tcp("127.0.0.1:0")));
        let udp = Bind::parse(Protocol::Udp, "127.0.0.1:7700").expect("an address");
        assert!(!udp.collides(&tcp("127.0.0.1:7700")), "QUIC is UDP");
    }
}
