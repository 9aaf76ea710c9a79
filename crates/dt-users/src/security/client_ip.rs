//! The client's address: the peer's, or — when the peer is a trusted proxy — the last
//! untrusted hop of `X-Forwarded-For`. A header from anyone else is ignored.

use std::net::IpAddr;

/// Addresses and networks (`10.0.0.0/8`, `::1`) whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    /// Parses a comma-separated list; an entry that is neither an address nor a network is an
    /// error (a typo must not silently trust nobody, or everybody).
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut nets = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (addr, bits) = match entry.split_once('/') {
                Some((addr, bits)) => (addr, Some(bits)),
                None => (entry, None),
            };
            let addr: IpAddr = addr
                .parse()
                .map_err(|_| format!("not an address: {entry}"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                Some(b) => b
                    .parse::<u8>()
                    .ok()
                    .filter(|b| *b <= max)
                    .ok_or(format!("bad prefix: {entry}"))?,
                None => max,
            };
            nets.push((addr.to_canonical(), bits));
        }
        Ok(Self(nets))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0
            .iter()
            .any(|(net, bits)| same_prefix(*net, ip, *bits))
    }

    /// The client address of a request from `peer` carrying `forwarded_for`.
    pub fn client_ip(&self, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.contains(peer) {
            return peer;
        }
        let Some(header) = forwarded_for else {
            return peer;
        };
        let mut client = peer;
        for hop in header.rsplit(',').map(str::trim) {
            let Ok(ip) = hop.parse::<IpAddr>() else { break };
            client = ip.to_canonical();
            if !self.contains(client) {
                break;
            }
        }
        client
    }
}

fn same_prefix(a: IpAddr, b: IpAddr, bits: u8) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_trusted_peers_are_believed() {
        let trusted = TrustedProxies::parse("10.0.0.0/8, 192.168.1.1").unwrap();
        assert_eq!(
            trusted.client_ip(ip("203.0.113.9"), Some("1.2.3.4")),
            ip("203.0.113.9")
        );
        assert_eq!(
            trusted.client_ip(ip("10.1.2.3"), Some("1.2.3.4")),
            ip("1.2.3.4")
        );
        // The last untrusted hop: the client cannot hide behind a forged first entry.
        assert_eq!(
            trusted.client_ip(ip("10.1.2.3"), Some("6.6.6.6, 1.2.3.4, 192.168.1.1")),
            ip("1.2.3.4")
        );
        assert_eq!(
            trusted.client_ip(ip("10.1.2.3"), Some("garbage")),
            ip("10.1.2.3")
        );
        assert_eq!(trusted.client_ip(ip("10.1.2.3"), None), ip("10.1.2.3"));
        assert_eq!(
            trusted.client_ip(ip("::ffff:10.0.0.1"), Some("1.2.3.4")),
            ip("1.2.3.4")
        );
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("nope").is_err());
        assert!(TrustedProxies::parse("").unwrap().0.is_empty());
    }

    proptest! {
        #[test]
        fn parsing_never_panics(list in "\\PC*", header in "\\PC*") {
            if let Ok(t) = TrustedProxies::parse(&list) {
                let _ = t.client_ip(ip("10.0.0.1"), Some(&header));
            }
        }
    }
}
