//! The client address: header parsing, the walk, and networks, by example and by property.

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
