//! Quotas, the GCRA decision itself, the limits configured per rule, and the key a client
//! address is counted under.

use std::net::IpAddr;

use crate::security::client_ip::ipv6_network;

/// A limit: `burst` requests at once, refilled at `per_period` requests per `period_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub burst: u32,
    pub per_period: u32,
    pub period_secs: u64,
}

impl Quota {
    /// Milliseconds between two requests at the steady rate.
    pub(super) fn emission_ms(self) -> i64 {
        let per = i64::from(self.per_period.max(1));
        (i64::try_from(self.period_secs)
            .unwrap_or(i64::MAX / 1000)
            .saturating_mul(1000)
            / per)
            .max(1)
    }

    pub(super) fn tolerance_ms(self) -> i64 {
        self.emission_ms()
            .saturating_mul(i64::from(self.burst.max(1)) - 1)
    }
}

/// What the limiter decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Requests left in the burst after this one.
    pub remaining: u32,
    /// Milliseconds until a request would be allowed (0 when allowed).
    pub retry_after_ms: i64,
    /// Milliseconds until the burst is full again.
    pub reset_ms: i64,
}

/// GCRA on a stored theoretical arrival time; returns the decision and the new time to store.
/// `consume = false` only asks.
pub fn gcra(
    stored_tat: Option<i64>,
    now: i64,
    quota: Quota,
    consume: bool,
) -> (Decision, Option<i64>) {
    let emission = quota.emission_ms();
    let tolerance = quota.tolerance_ms();
    let tat = stored_tat.unwrap_or(now).max(now);
    if tat - now > tolerance {
        let decision = Decision {
            allowed: false,
            remaining: 0,
            retry_after_ms: tat - now - tolerance,
            reset_ms: tat - now,
        };
        return (decision, None);
    }
    let new_tat = if consume { tat + emission } else { tat };
    let remaining = (tolerance + emission - (new_tat - now)) / emission;
    let decision = Decision {
        allowed: true,
        remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
        retry_after_ms: 0,
        reset_ms: new_tat - now,
    };
    (decision, consume.then_some(new_tat))
}

impl Quota {
    /// `burst/requests/seconds`, e.g. `10/1/1`: a burst of 10, then 1 request a second.
    pub fn parse(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split('/').map(str::trim).collect();
        let [burst, per, secs] = parts.as_slice() else {
            return Err(format!("{text:?}: expected burst/requests/seconds"));
        };
        let number = |s: &str| s.parse::<u64>().ok().filter(|n| *n > 0);
        match (number(burst), number(per), number(secs)) {
            (Some(burst), Some(per), Some(secs)) => Ok(Self {
                burst: u32::try_from(burst).map_err(|e| e.to_string())?,
                per_period: u32::try_from(per).map_err(|e| e.to_string())?,
                period_secs: secs,
            }),
            _ => Err(format!(
                "{text:?}: expected three positive numbers burst/requests/seconds"
            )),
        }
    }
}

/// The limits in force, by rule.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub login_ip: Quota,
    pub login_account: Quota,
    pub login_ip_account: Quota,
    pub register_ip: Quota,
    pub email_target: Quota,
    pub email_ip: Quota,
    pub refresh: Quota,
    pub email_change: Quota,
    pub global_ip: Quota,
    /// IPv6 clients are counted per network of this many bits (1 to 128).
    pub ipv6_prefix: u8,
}

impl Rules {
    /// The key every per-client limit counts `ip` under. An IPv6 subscriber is usually given
    /// a whole network (a /64 or more) and can take a new address from it for every request,
    /// so IPv6 is counted per network of [`Rules::ipv6_prefix`] bits: `2001:db8:1:2::/64`.
    /// IPv4 (and an IPv4-mapped IPv6 address) stays per address.
    pub fn client_key(&self, ip: IpAddr) -> String {
        match ip.to_canonical() {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!(
                "{}/{}",
                ipv6_network(v6, self.ipv6_prefix),
                self.ipv6_prefix
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LOGIN: Quota = Quota {
        burst: 10,
        per_period: 1,
        period_secs: 1,
    };

    #[test]
    fn a_burst_then_the_steady_rate() {
        let mut tat = None;
        let now = 1_000_000;
        for i in 0..10 {
            let (d, new) = gcra(tat, now, LOGIN, true);
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 9 - i);
            tat = new;
        }
        let (d, _) = gcra(tat, now, LOGIN, true);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_ms, 1_000);
        let (d, _) = gcra(tat, now + 1_000, LOGIN, true);
        assert!(d.allowed);
    }

    #[test]
    fn asking_does_not_count() {
        let (d, new) = gcra(None, 0, LOGIN, false);
        assert!(d.allowed && new.is_none());
        assert_eq!(d.remaining, 10);
    }

    #[test]
    fn quotas_parse() {
        assert_eq!(
            Quota::parse("10/1/1"),
            Ok(Quota {
                burst: 10,
                per_period: 1,
                period_secs: 1
            })
        );
        for bad in ["", "10", "10/1", "0/1/1", "a/b/c", "10/1/1/1", "-1/1/1"] {
            assert!(Quota::parse(bad).is_err(), "{bad}");
        }
    }

    fn rules(ipv6_prefix: u8) -> Result<Rules, String> {
        crate::config::Settings {
            rate_limit_ipv6_prefix: ipv6_prefix,
            ..crate::config::Settings::default()
        }
        .validate()
        .map(|config| config.limits.rules)
        .map_err(|e| e.to_string())
    }

    #[test]
    fn ipv6_clients_are_counted_per_network() {
        let rules = rules(64).unwrap();
        let key = |s: &str| rules.client_key(s.parse().unwrap());
        assert_eq!(key("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64");
        assert_eq!(key("2001:db8:1:2:ffff::1"), "2001:db8:1:2::/64");
        assert_eq!(key("2001:db8:1:3::1"), "2001:db8:1:3::/64");
        assert_eq!(key("198.51.100.7"), "198.51.100.7");
        assert_eq!(key("::ffff:198.51.100.7"), "198.51.100.7");
        let rules = self::rules(48).unwrap();
        assert_eq!(
            rules.client_key("2001:db8:1:2::1".parse().unwrap()),
            "2001:db8:1::/48"
        );
        let rules = self::rules(128).unwrap();
        assert_eq!(
            rules.client_key("2001:db8::1".parse().unwrap()),
            "2001:db8::1/128"
        );
    }

    #[test]
    fn an_ipv6_prefix_outside_1_to_128_is_refused() {
        for bad in [0, 129, 255] {
            let error = rules(bad).unwrap_err();
            assert!(error.contains("DT_USERS_RATE_LIMIT_IPV6_PREFIX"), "{error}");
        }
        assert!(rules(1).is_ok());
    }

    proptest! {
        #[test]
        fn quota_parsing_never_panics(s in "\\PC*") {
            let _ = Quota::parse(&s);
        }

        #[test]
        fn never_more_than_burst_plus_rate(times in proptest::collection::vec(0_i64..100_000, 1..300)) {
            let mut times = times;
            times.sort_unstable();
            let mut tat = None;
            let mut allowed = 0_i64;
            for now in &times {
                let (d, new) = gcra(tat, *now, LOGIN, true);
                if d.allowed { allowed += 1; tat = new; }
            }
            let span = times.last().unwrap() - times.first().unwrap();
            prop_assert!(allowed <= 10 + span / 1_000 + 1);
        }
    }
}
