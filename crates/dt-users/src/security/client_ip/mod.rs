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
mod tests;
