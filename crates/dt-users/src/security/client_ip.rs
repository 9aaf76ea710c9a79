//! The client's address: the peer's, or — when the peer is a trusted proxy — the last
//! untrusted hop of the forwarding header the proxies are configured to write
//! (`X-Forwarded-For`, or RFC 7239 `Forwarded`). A header from anyone else is ignored.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The header trusted proxies name the client in. Only this one is read: a proxy that writes
/// one header passes the other through untouched, so the other is wholly the client's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ForwardingHeader {
    #[default]
    XForwardedFor,
    /// RFC 7239.
    Forwarded,
}

impl ForwardingHeader {
    pub fn parse(name: &str) -> Result<Self, String> {
        let name = name.trim();
        if name.eq_ignore_ascii_case("x-forwarded-for") {
            Ok(Self::XForwardedFor)
        } else if name.eq_ignore_ascii_case("forwarded") {
            Ok(Self::Forwarded)
        } else {
            Err(format!(
                "{name:?}: expected \"x-forwarded-for\" or \"forwarded\""
            ))
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::XForwardedFor => "x-forwarded-for",
            Self::Forwarded => "forwarded",
        }
    }
}

/// Addresses and networks (`10.0.0.0/8`, `::1`) whose forwarding header is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<(IpAddr, u8)>,
    header: ForwardingHeader,
}

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
        Ok(Self {
            nets,
            header: ForwardingHeader::default(),
        })
    }

    /// The same proxies, naming the client in `header`.
    #[must_use]
    pub fn reading(self, header: ForwardingHeader) -> Self {
        Self { header, ..self }
    }

    /// The name of the header these proxies write.
    pub fn header_name(&self) -> &'static str {
        self.header.name()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets
            .iter()
            .any(|(net, bits)| same_prefix(*net, ip, *bits))
    }

    /// The client address of a request from `peer` carrying `lines`, every line of the
    /// forwarding header in the order received. A proxy may append a line of its own rather
    /// than extend the client's, so the lines are read as one list, in which the client's
    /// forged line comes first and never decides. From the right, trusted proxies are skipped;
    /// the first other hop is the client. A hop that cannot be read (garbage, `unknown`, an
    /// obfuscated identifier) ends the walk at the last hop that could.
    pub fn client_ip<'a, L>(&self, peer: IpAddr, lines: L) -> IpAddr
    where
        L: IntoIterator<Item = &'a [u8]>,
        L::IntoIter: DoubleEndedIterator,
    {
        let peer = peer.to_canonical();
        if !self.contains(peer) {
            return peer;
        }
        let mut client = peer;
        for line in lines.into_iter().rev() {
            let line = String::from_utf8_lossy(line);
            for hop in hops_from_the_right(self.header, &line) {
                let Some(ip) = hop else { return client };
                client = ip.to_canonical();
                if !self.contains(client) {
                    return client;
                }
            }
        }
        client
    }
}

/// The hops of one header line, the last first; `None` for a hop that names no address.
/// Reading from the right means only what the trusted proxies appended has to be well
/// formed: whatever the client sent before it — an unclosed quote included — is reached only
/// if every hop after it is trusted.
fn hops_from_the_right(
    header: ForwardingHeader,
    line: &str,
) -> impl Iterator<Item = Option<IpAddr>> + '_ {
    let (x_forwarded_for, forwarded) = match header {
        ForwardingHeader::XForwardedFor => (Some(line.rsplit(',').map(str::trim)), None),
        ForwardingHeader::Forwarded => (None, Some(rsplit_unquoted(line, ','))),
    };
    let x_forwarded_for = x_forwarded_for
        .into_iter()
        .flatten()
        // Empty list elements are allowed and mean nothing (RFC 9110, 5.6.1).
        .filter(|hop| !hop.is_empty())
        .map(node_address);
    let forwarded = forwarded
        .into_iter()
        .flatten()
        .filter(|element| !element.trim().is_empty())
        .map(forwarded_element_for);
    x_forwarded_for.chain(forwarded)
}

/// The address an RFC 7239 element's `for` parameter names; `None` when the element cannot
/// be read, names no address (`unknown`, `_hidden`), or has no `for` or more than one.
fn forwarded_element_for(element: &str) -> Option<IpAddr> {
    let mut node = None;
    for pair in rsplit_unquoted(element, ';').map(str::trim) {
        if pair.is_empty() {
            continue;
        }
        let (name, value) = pair.split_once('=')?;
        if name.trim().eq_ignore_ascii_case("for") {
            if node.is_some() {
                return None;
            }
            node = Some(unquote(value.trim())?);
        }
    }
    node_address(&node?)
}

/// Where a right-to-left reading stands with respect to quoted strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quoting {
    Outside,
    Inside,
    /// A quote seen inside a quoted string: it opens the string unless an odd number of
    /// backslashes stands before it, which only the characters further left tell.
    Opening {
        escaped: bool,
    },
}

impl Quoting {
    fn after(self, c: char) -> Self {
        match self {
            Self::Outside if c == '"' => Self::Inside,
            Self::Outside => Self::Outside,
            Self::Inside if c == '"' => Self::Opening { escaped: false },
            Self::Inside => Self::Inside,
            Self::Opening { escaped } if c == '\\' => Self::Opening { escaped: !escaped },
            Self::Opening { escaped: true } => Self::Inside.after(c),
            Self::Opening { escaped: false } => Self::Outside.after(c),
        }
    }
}

/// Splits at `separator` where it stands outside a quoted string (`"…"`, in which `\`
/// escapes the next character), from the right: the last piece first.
fn rsplit_unquoted(text: &str, separator: char) -> impl Iterator<Item = &str> {
    let mut chars = text.char_indices().rev();
    let mut end = Some(text.len());
    let mut quoting = Quoting::Outside;
    std::iter::from_fn(move || {
        let piece_end = end?;
        for (at, c) in chars.by_ref() {
            quoting = quoting.after(c);
            if quoting == Quoting::Outside && c == separator {
                end = Some(at);
                return text.get(at + c.len_utf8()..piece_end);
            }
        }
        end = None;
        text.get(..piece_end)
    })
}

/// A parameter value: a token as it is, a quoted string without its quotes and escapes;
/// `None` for a quoted string that is not closed or has a stray quote inside.
fn unquote(value: &str) -> Option<Cow<'_, str>> {
    let Some(quoted) = value.strip_prefix('"') else {
        return Some(Cow::Borrowed(value));
    };
    let mut text = String::with_capacity(quoted.len());
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => text.push(chars.next()?),
            '"' => return chars.next().is_none().then_some(Cow::Owned(text)),
            c => text.push(c),
        }
    }
    None
}

/// The address of one hop: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]` or
/// `[2001:db8::1]:443`. The port may be obfuscated (`_abc`, RFC 7239); the address may not.
fn node_address(node: &str) -> Option<IpAddr> {
    let node = node.trim();
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    let (ip, port) = match node.strip_prefix('[') {
        Some(bracketed) => {
            let (ip, rest) = bracketed.split_once(']')?;
            let ip = IpAddr::V6(ip.parse::<Ipv6Addr>().ok()?);
            if rest.is_empty() {
                return Some(ip);
            }
            (ip, rest.strip_prefix(':')?)
        }
        None => {
            let (ip, port) = node.split_once(':')?;
            (IpAddr::V4(ip.parse::<Ipv4Addr>().ok()?), port)
        }
    };
    is_port(port).then_some(ip)
}

fn is_port(port: &str) -> bool {
    let digits = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
    let obfuscated = port.strip_prefix('_').is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    });
    (digits && port.parse::<u16>().is_ok()) || obfuscated
}

/// The network of `bits` bits `ip` belongs to.
pub fn ipv6_network(ip: Ipv6Addr, bits: u8) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(ip) & v6_mask(bits))
}

fn v6_mask(bits: u8) -> u128 {
    128_u32
        .checked_sub(u32::from(bits))
        .map_or(u128::MAX, |shift| u128::MAX.checked_shl(shift).unwrap_or(0))
}

fn same_prefix(a: IpAddr, b: IpAddr, bits: u8) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = 32_u32
                .checked_sub(u32::from(bits))
                .map_or(u32::MAX, |shift| u32::MAX.checked_shl(shift).unwrap_or(0));
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = v6_mask(bits);
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

    fn client(proxies: &TrustedProxies, peer: &str, lines: &[&str]) -> IpAddr {
        proxies.client_ip(ip(peer), lines.iter().map(|line| line.as_bytes()))
    }

    fn trusted(list: &str) -> TrustedProxies {
        TrustedProxies::parse(list).unwrap()
    }

    fn forwarded(list: &str) -> TrustedProxies {
        trusted(list).reading(ForwardingHeader::Forwarded)
    }

    #[test]
    fn only_trusted_peers_are_believed() {
        let proxies = trusted("10.0.0.0/8, 192.168.1.1");
        assert_eq!(
            client(&proxies, "203.0.113.9", &["1.2.3.4"]),
            ip("203.0.113.9")
        );
        assert_eq!(client(&proxies, "10.1.2.3", &["1.2.3.4"]), ip("1.2.3.4"));
        // The last untrusted hop: the client cannot hide behind a forged first entry.
        assert_eq!(
            client(&proxies, "10.1.2.3", &["6.6.6.6, 1.2.3.4, 192.168.1.1"]),
            ip("1.2.3.4")
        );
        assert_eq!(client(&proxies, "10.1.2.3", &["garbage"]), ip("10.1.2.3"));
        assert_eq!(client(&proxies, "10.1.2.3", &[]), ip("10.1.2.3"));
        assert_eq!(
            client(&proxies, "::ffff:10.0.0.1", &["1.2.3.4"]),
            ip("1.2.3.4")
        );
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("nope").is_err());
        assert!(TrustedProxies::parse("").unwrap().nets.is_empty());
    }

    #[test]
    fn every_line_counts_and_the_last_line_is_read_first() {
        let proxies = trusted("10.0.0.0/8");
        // HAProxy's `option forwardfor` adds a line after the client's forged one.
        assert_eq!(
            client(&proxies, "10.0.0.1", &["6.6.6.6", "1.2.3.4"]),
            ip("1.2.3.4")
        );
        // A trusted hop at the end of the last line is skipped into the line before.
        assert_eq!(
            client(&proxies, "10.0.0.1", &["6.6.6.6, 1.2.3.4", "10.0.0.2"]),
            ip("1.2.3.4")
        );
        assert_eq!(
            client(&proxies, "10.0.0.1", &["6.6.6.6", "1.2.3.4, 10.0.0.2", ""]),
            ip("1.2.3.4")
        );
        // Garbage in a line ends the walk there, whichever line it is in.
        assert_eq!(
            client(&proxies, "10.0.0.1", &["1.2.3.4", "garbage, 10.0.0.2"]),
            ip("10.0.0.2")
        );
        assert_eq!(
            client(&proxies, "10.0.0.1", &["1.2.3.4", "not an address"]),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn hops_with_ports_and_brackets_are_read() {
        let proxies = trusted("10.0.0.0/8, 2001:db8:ffff::/48");
        for (hop, expected) in [
            ("1.2.3.4:5678", "1.2.3.4"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("2001:db8::1", "2001:db8::1"),
            ("[::ffff:1.2.3.4]:80", "1.2.3.4"),
        ] {
            assert_eq!(client(&proxies, "10.0.0.1", &[hop]), ip(expected), "{hop}");
        }
        assert_eq!(
            client(&proxies, "10.0.0.1", &["1.2.3.4:1, [2001:db8:ffff::9]:443"]),
            ip("1.2.3.4")
        );
        // Not a hop: the walk ends at the trusted peer.
        for hop in [
            "1.2.3.4:",
            "1.2.3.4:99999",
            "1.2.3.4:+80",
            "1.2.3.4:80:80",
            "[2001:db8::1",
            "[2001:db8::1]443",
            "[2001:db8::1]:",
            "[1.2.3.4]:80",
            "2001:db8::1]:443",
            "[fe80::1%eth0]",
            "_hidden",
        ] {
            assert_eq!(
                client(&proxies, "10.0.0.1", &[hop]),
                ip("10.0.0.1"),
                "{hop}"
            );
        }
    }

    #[test]
    fn forwarded_names_the_client_in_for() {
        let proxies = forwarded("10.0.0.0/8");
        for (lines, expected) in [
            (&["for=1.2.3.4"][..], "1.2.3.4"),
            (&["For=\"1.2.3.4:80\";proto=https"], "1.2.3.4"),
            (&["FOR=\"[2001:db8::1]:443\""], "2001:db8::1"),
            (&["for=\"[2001:db8::1]\""], "2001:db8::1"),
            (
                &["proto=https;by=10.0.0.1;for=1.2.3.4;host=example.com"],
                "1.2.3.4",
            ),
            (&["for = 1.2.3.4"], "1.2.3.4"),
            (&["for=\"1.2.3.\\4\""], "1.2.3.4"),
            (&["for=1.2.3.4:_gazonk"], "1.2.3.4"),
            // Several elements and several lines: one list, read from the right.
            (&["for=6.6.6.6, for=1.2.3.4, for=10.0.0.2"], "1.2.3.4"),
            (
                &["for=6.6.6.6", "for=1.2.3.4;proto=http, for=10.0.0.2"],
                "1.2.3.4",
            ),
            (
                &["for=6.6.6.6", "for=1.2.3.4", "for=10.0.0.2", ""],
                "1.2.3.4",
            ),
            // Quoted separators belong to the value, not the list.
            (&["for=1.2.3.4;x=\"a,b;c\", for=10.0.0.2"], "1.2.3.4"),
            (
                &["for=6.6.6.6;x=\"a, for=7.7.7.7\", for=10.0.0.2"],
                "6.6.6.6",
            ),
            (
                &["for=6.6.6.6;x=\"a\\\", for=7.7.7.7\", for=10.0.0.2"],
                "6.6.6.6",
            ),
            (&[",, for=1.2.3.4 ,"], "1.2.3.4"),
        ] {
            assert_eq!(
                client(&proxies, "10.0.0.1", lines),
                ip(expected),
                "{lines:?}"
            );
        }
    }

    #[test]
    fn forwarded_identifiers_that_are_not_addresses_end_the_walk() {
        let proxies = forwarded("10.0.0.0/8");
        for (lines, expected) in [
            (&["for=1.2.3.4, for=unknown"][..], "10.0.0.1"),
            (&["for=1.2.3.4, for=\"UNKNOWN\", for=10.0.0.2"], "10.0.0.2"),
            (&["for=1.2.3.4, for=_hidden, for=10.0.0.2"], "10.0.0.2"),
            (&["for=1.2.3.4", "for=\"_SEVKISEK\""], "10.0.0.1"),
            // No `for`, two of them, a pair without a value, an unclosed quote.
            (&["for=1.2.3.4, proto=https"], "10.0.0.1"),
            (&["for=1.2.3.4, for=5.6.7.8;for=9.9.9.9"], "10.0.0.1"),
            (&["for=1.2.3.4, for=10.0.0.2;secret"], "10.0.0.1"),
            (&["for=1.2.3.4, for=\"10.0.0.2"], "10.0.0.1"),
            (&["for=1.2.3.4, for=\"10.0.0.2\"x"], "10.0.0.1"),
            // X-Forwarded-For syntax is not an element.
            (&["1.2.3.4"], "10.0.0.1"),
        ] {
            assert_eq!(
                client(&proxies, "10.0.0.1", lines),
                ip(expected),
                "{lines:?}"
            );
        }
    }

    #[test]
    fn a_broken_client_part_does_not_hide_the_hop_a_proxy_appended() {
        let proxies = forwarded("10.0.0.0/8");
        // A proxy that extends the client's line rather than adding its own.
        for forged in [
            "for=\"6.6.6.6",
            "for=\"6.6.6.6\\\"",
            "\"",
            "for=\"a\\\\\"b\"",
            "for=1.1.1.1;for=2.2.2.2",
        ] {
            let line = format!("{forged}, for=\"[2001:db8::7]:443\"");
            assert_eq!(
                client(&proxies, "10.0.0.1", &[&line]),
                ip("2001:db8::7"),
                "{line}"
            );
        }
    }

    #[test]
    fn the_header_setting_names_one_of_two_headers() {
        assert_eq!(
            ForwardingHeader::parse("X-Forwarded-For"),
            Ok(ForwardingHeader::XForwardedFor)
        );
        assert_eq!(
            ForwardingHeader::parse(" forwarded "),
            Ok(ForwardingHeader::Forwarded)
        );
        for bad in [
            "",
            "x-real-ip",
            "forwarded-for",
            "x-forwarded-for,forwarded",
        ] {
            assert!(ForwardingHeader::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(trusted("").header_name(), "x-forwarded-for");
        assert_eq!(forwarded("").header_name(), "forwarded");
    }

    #[test]
    fn ipv6_networks_keep_the_prefix_bits() {
        let v6 = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        assert_eq!(
            ipv6_network(v6("2001:db8:1:2:3:4:5:6"), 64),
            v6("2001:db8:1:2::")
        );
        assert_eq!(
            ipv6_network(v6("2001:db8:1:2:3:4:5:6"), 56),
            v6("2001:db8:1::")
        );
        assert_eq!(
            ipv6_network(v6("2001:db8:1:2:3:4:5:6"), 128),
            v6("2001:db8:1:2:3:4:5:6")
        );
        assert_eq!(ipv6_network(v6("ffff::1"), 1), v6("8000::"));
        assert_eq!(ipv6_network(v6("ffff::1"), 0), v6("::"));
    }

    /// A hop as a proxy might write it.
    #[derive(Debug, Clone)]
    struct Written {
        ip: IpAddr,
        port: Option<u16>,
        brackets: bool,
        quoted: bool,
        upper: bool,
    }

    impl Written {
        fn x_forwarded_for(&self) -> String {
            match (self.ip, self.port) {
                (IpAddr::V4(v4), Some(port)) => format!("{v4}:{port}"),
                (IpAddr::V6(v6), Some(port)) => format!("[{v6}]:{port}"),
                (IpAddr::V6(v6), None) if self.brackets => format!("[{v6}]"),
                (ip, None) => ip.to_string(),
            }
        }

        fn forwarded(&self) -> String {
            let name = if self.upper { "For" } else { "for" };
            let node = self.x_forwarded_for();
            if self.quoted || node.contains(':') {
                format!("{name}=\"{node}\";proto=https")
            } else {
                format!("proto=https;{name}={node}")
            }
        }
    }

    fn written() -> impl Strategy<Value = Written> {
        let ip = prop_oneof![
            any::<Ipv4Addr>().prop_map(IpAddr::V4),
            any::<Ipv6Addr>().prop_map(IpAddr::V6),
            any::<[u8; 3]>().prop_map(|[a, b, c]| IpAddr::V4(Ipv4Addr::new(10, a, b, c))),
        ];
        (ip, any::<Option<u16>>(), any::<[bool; 3]>()).prop_map(
            |(ip, port, [brackets, quoted, upper])| Written {
                ip,
                port,
                brackets,
                quoted,
                upper,
            },
        )
    }

    /// The walk, on addresses already read.
    fn expected(proxies: &TrustedProxies, peer: IpAddr, hops: &[Written]) -> IpAddr {
        let mut client = peer;
        for hop in hops.iter().rev() {
            client = hop.ip.to_canonical();
            if !proxies.contains(client) {
                break;
            }
        }
        client
    }

    /// `items` as header lines, a new line where `breaks` says so.
    fn lines(items: &[String], breaks: &[bool]) -> Vec<String> {
        let mut lines = vec![String::new()];
        for (i, item) in items.iter().enumerate() {
            let last = lines.last_mut().unwrap();
            if !last.is_empty() {
                last.push_str(", ");
            }
            last.push_str(item);
            if breaks.get(i).copied().unwrap_or(false) {
                lines.push(String::new());
            }
        }
        lines
    }

    proptest! {
        #[test]
        fn parsing_never_panics(list in "\\PC*", lines in proptest::collection::vec("\\PC*", 0..4)) {
            if let Ok(proxies) = TrustedProxies::parse(&list) {
                let lines: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
                let _ = proxies.client_ip(ip("10.0.0.1"), lines.iter().copied());
                let _ = proxies
                    .reading(ForwardingHeader::Forwarded)
                    .client_ip(ip("10.0.0.1"), lines.iter().copied());
            }
        }

        #[test]
        fn header_garbage_never_panics(
            lines in proptest::collection::vec(
                proptest::collection::vec(any::<u8>(), 0..64), 0..4),
            text in "[\"\\\\,;=a-f0-9:\\[\\]_ .]{0,40}",
        ) {
            let proxies = trusted("0.0.0.0/0, ::/0");
            for header in [ForwardingHeader::XForwardedFor, ForwardingHeader::Forwarded] {
                let proxies = proxies.clone().reading(header);
                let _ = proxies.client_ip(ip("10.0.0.1"), lines.iter().map(Vec::as_slice));
                let _ = proxies.client_ip(ip("10.0.0.1"), [text.as_bytes()]);
            }
        }

        #[test]
        fn both_headers_find_the_last_untrusted_hop(
            hops in proptest::collection::vec(written(), 0..6),
            breaks in proptest::collection::vec(any::<bool>(), 6),
        ) {
            let proxies = trusted("10.0.0.0/8");
            let peer = ip("10.0.0.1");
            let want = expected(&proxies, peer, &hops);
            let xff: Vec<String> = hops.iter().map(Written::x_forwarded_for).collect();
            let xff = lines(&xff, &breaks);
            prop_assert_eq!(
                proxies.client_ip(peer, xff.iter().map(String::as_bytes)), want, "{:?}", xff);
            let fwd: Vec<String> = hops.iter().map(Written::forwarded).collect();
            let fwd = lines(&fwd, &breaks);
            let proxies = proxies.reading(ForwardingHeader::Forwarded);
            prop_assert_eq!(
                proxies.client_ip(peer, fwd.iter().map(String::as_bytes)), want, "{:?}", fwd);
        }

        #[test]
        fn what_the_client_sends_never_decides(
            forged in "\\PC{0,40}",
            real in written(),
            own_line in any::<bool>(),
        ) {
            // The proxy appends the address it saw, on the client's line or a line of its own.
            prop_assume!(!trusted("10.0.0.0/8").contains(real.ip));
            for header in [ForwardingHeader::XForwardedFor, ForwardingHeader::Forwarded] {
                let proxies = trusted("10.0.0.0/8").reading(header);
                let appended = match header {
                    ForwardingHeader::XForwardedFor => real.x_forwarded_for(),
                    ForwardingHeader::Forwarded => real.forwarded(),
                };
                let lines = if own_line {
                    vec![forged.clone(), appended]
                } else {
                    vec![format!("{forged}, {appended}")]
                };
                prop_assert_eq!(
                    proxies.client_ip(ip("10.0.0.1"), lines.iter().map(String::as_bytes)),
                    real.ip.to_canonical(),
                    "{:?}", lines
                );
            }
        }
    }
}
