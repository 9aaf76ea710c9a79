use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Formats Unix seconds as RFC 3339 UTC (`2026-11-26T13:10:37Z`).
pub(crate) fn rfc3339(unix_secs: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix_secs)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned())
}

/// Formats Unix milliseconds as RFC 3339 UTC with milliseconds (`2026-11-26T13:10:37.123Z`).
pub(crate) fn rfc3339_millis(unix_millis: i64) -> String {
    let secs = rfc3339(unix_millis.div_euclid(1000));
    let millis = unix_millis.rem_euclid(1000);
    match secs.strip_suffix('Z') {
        Some(base) => format!("{base}.{millis:03}Z"),
        None => secs,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_utc_with_seconds() {
        assert_eq!(super::rfc3339(1_795_698_637), "2026-11-26T13:10:37Z");
        assert_eq!(
            super::rfc3339_millis(1_795_698_637_045),
            "2026-11-26T13:10:37.045Z"
        );
    }
}
