//! RFC 3339 timestamps (`2026-12-02T10:00:00Z`), as the AWS sources write
//! an expiry, read with the `time` crate.

/// Milliseconds since the Unix epoch of an RFC 3339 timestamp
/// (`YYYY-MM-DDTHH:MM:SS[.fff](Z|±HH:MM)`); `None` when it is not one, or is before 1970.
pub fn parse_rfc3339_ms(text: &str) -> Option<u64> {
    let when = ::time::OffsetDateTime::parse(text.trim(), &::time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(when.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_the_sources_write() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339_ms("2026-12-02T10:00:00Z"), Some(1_796_205_600_000));
        assert_eq!(parse_rfc3339_ms("2026-12-02T10:00:00.250Z"), Some(1_796_205_600_250));
        assert_eq!(parse_rfc3339_ms("2026-12-02T12:00:00+02:00"), Some(1_796_205_600_000));
        assert_eq!(parse_rfc3339_ms("2000-02-29T00:00:01Z"), Some(951_782_401_000));
        for bad in ["", "tomorrow", "2026-13-01T00:00:00Z", "2026-12-02T10:00:00", "2026-12-02T10:00:00.Z"] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
    }
}
