//! Which requests are addressed to the relay: the `Host` check against DNS rebinding, the
//! `Origin` check against other sites' pages, and the token.
//!
//! DNS rebinding: a page at `http://attacker.test:7480/` whose name the attacker re-points to
//! 127.0.0.1 reaches a relay on that address as a same-origin page, with `Host:
//! attacker.test:7480` and a matching `Origin`. So the Host must be a name the relay answers
//! to: an IP literal of the address it listens on (any IP literal when it listens on all
//! addresses: a literal cannot be rebound), `localhost` when it listens on loopback or on all
//! addresses (browsers resolve it to loopback themselves), or a name configured in `hosts`.
//! Only then is an Origin equal to the Host the relay's own.

use std::net::IpAddr;

/// The names and addresses a relay answers to.
#[derive(Debug, Clone)]
pub(crate) struct HostCheck {
    listen_ip: IpAddr,
    names: Vec<String>,
}

impl HostCheck {
    pub fn new(listen_ip: IpAddr, names: &[String]) -> Self {
        HostCheck {
            listen_ip,
            names: names.iter().map(|n| n.to_ascii_lowercase()).collect(),
        }
    }

    /// Whether a `Host` header value (`name[:port]`, `ip[:port]`, `[v6][:port]`) names this relay.
    pub fn allows(&self, host: &str) -> bool {
        let Some(name) = host_name(host) else {
            return false;
        };
        if let Ok(ip) = name.trim_matches(['[', ']']).parse::<IpAddr>() {
            return self.listen_ip.is_unspecified() || ip == self.listen_ip;
        }
        let name = name.to_ascii_lowercase();
        let local = self.listen_ip.is_unspecified() || self.listen_ip.is_loopback();
        (local && name == "localhost") || self.names.contains(&name)
    }
}

/// The name part of a Host value, when the whole value is well formed: a port, if any, is
/// digits only, and the name has no characters a name cannot have.
fn host_name(host: &str) -> Option<&str> {
    let (name, port) = if host.starts_with('[') {
        let end = host.find(']')?;
        let (name, rest) = host.split_at(end + 1);
        // After the bracket: nothing, or a port. `[::1]junk` is not a host.
        let port = match rest {
            "" => None,
            rest => Some(rest.strip_prefix(':')?),
        };
        (name, port)
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let name_ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b));
    (port_ok && name_ok).then_some(name)
}

/// Whether a page's `Origin` may use the relay: the relay's own (its authority equals the
/// already checked Host) or one configured.
pub(crate) fn origin_allowed(origin: &str, host: &str, allowed: &[String]) -> bool {
    let own = origin.split_once("://").is_some_and(|(scheme, authority)| {
        matches!(scheme, "http" | "https") && authority.eq_ignore_ascii_case(host)
    });
    own || allowed.iter().any(|o| o == origin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::acl::token_matches;

    #[test]
    fn a_host_must_name_the_relay() {
        let loopback = HostCheck::new("127.0.0.1".parse().expect("ip"), &["relay.example".into()]);
        for ok in [
            "127.0.0.1:7480",
            "127.0.0.1",
            "localhost:7480",
            "LOCALHOST",
            "relay.example",
            "Relay.Example:443",
        ] {
            assert!(loopback.allows(ok), "{ok}");
        }
        for refused in [
            "attacker.test:7480",
            "127.0.0.2:7480",
            "relay.example.attacker.test",
            "",
            "localhost:",
            "localhost:x",
            "relay.example:1 evil",
            "[::1]:7480",
        ] {
            assert!(!loopback.allows(refused), "{refused}");
        }
        let all = HostCheck::new("0.0.0.0".parse().expect("ip"), &[]);
        assert!(all.allows("192.168.1.5:7480") && all.allows("[::1]:7480"));
        assert!(!all.allows("attacker.test:7480"));
        for junk in [
            "[::1]anything",
            "[::1]\nX-Injected: 1",
            "[::1]:",
            "[::1]:80x",
        ] {
            assert!(!all.allows(junk), "{junk:?}");
        }
        assert!(all.allows("[::1]"));
        let public = HostCheck::new("192.168.1.5".parse().expect("ip"), &[]);
        assert!(
            !public.allows("localhost:7480"),
            "localhost is not this address"
        );
    }

    #[test]
    fn only_the_relays_own_or_listed_origins() {
        let listed = ["https://app.example".to_owned()];
        assert!(origin_allowed(
            "http://127.0.0.1:7480",
            "127.0.0.1:7480",
            &listed
        ));
        assert!(origin_allowed(
            "https://app.example",
            "127.0.0.1:7480",
            &listed
        ));
        assert!(!origin_allowed(
            "http://evil.example",
            "127.0.0.1:7480",
            &listed
        ));
        assert!(!origin_allowed("null", "127.0.0.1:7480", &listed));
        assert!(!origin_allowed(
            "file://127.0.0.1:7480",
            "127.0.0.1:7480",
            &listed
        ));
    }

    #[test]
    fn tokens_match_only_when_equal() {
        assert!(token_matches("s3cret", "s3cret"));
        assert!(!token_matches("s3cre", "s3cret"));
        assert!(!token_matches("s3cret!", "s3cret"));
        assert!(!token_matches("S3cret", "s3cret"));
        assert!(!token_matches("", "s3cret"));
        // A guess is read round again up to the token's length: a repeat is still not equal.
        assert!(!token_matches("ab", "abab"));
        assert!(!token_matches("abab", "ab"));
        assert!(!token_matches("s3cret", ""));
    }
}
