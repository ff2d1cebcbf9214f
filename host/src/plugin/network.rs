//! The outbound-network policy of plugins, in one place: which addresses a
//! plugin may never reach (whatever name leads there, in whatever spelling)
//! and how an authority is compared with a bucket's allow-list. Pure
//! functions: the config check uses them as the runtime's egress hook does.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::Uri;
use http::uri::{Authority, Scheme};
use ipnet::IpNet;

/// Networks refused by default even when a permitted name resolves into them:
/// link-local (cloud metadata services live there) and known metadata addresses.
pub const DEFAULT_DENIED_NETWORKS: &[&str] =
    &["169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128", "100.100.100.200/32"];

/// The well-known NAT64 prefix (RFC 6052): `64:ff9b::a.b.c.d` reaches IPv4 `a.b.c.d`.
const NAT64_WELL_KNOWN: [u16; 6] = [0x64, 0xff9b, 0, 0, 0, 0];

/// The address `addr` really reaches: an IPv6 address that embeds an IPv4 one
/// (IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d`, NAT64
/// `64:ff9b::a.b.c.d`) as that IPv4 address; any other address unchanged.
/// Parsing already folds every spelling of one IPv6 address (zero-padded,
/// abbreviated, upper case) into one value.
pub fn canonical_ip(addr: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = addr else { return addr };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    let s = v6.segments();
    let embedded = || Ipv4Addr::from(((u32::from(s[6])) << 16) | u32::from(s[7]));
    // IPv4-compatible (deprecated, but still routed by some stacks); `::` and
    // `::1` are the IPv6 unspecified and loopback addresses, not IPv4 ones.
    if s[..6] == [0; 6] && v6 != Ipv6Addr::UNSPECIFIED && v6 != Ipv6Addr::LOCALHOST {
        return IpAddr::V4(embedded());
    }
    if s[..6] == NAT64_WELL_KNOWN {
        return IpAddr::V4(embedded());
    }
    addr
}

/// Why `addr` may not be contacted given `denied` networks, if it may not: it
/// is checked as written and as the IPv4 address it embeds, if any.
pub fn denied_address(addr: IpAddr, denied: &[IpNet]) -> Option<String> {
    let canonical = canonical_ip(addr);
    let shown = if canonical == addr { addr.to_string() } else { format!("{addr} (that is {canonical})") };
    if canonical.is_unspecified() || canonical.is_multicast() || addr.is_unspecified() || addr.is_multicast() {
        return Some(format!("{shown} is not a unicast address"));
    }
    denied
        .iter()
        .find(|net| net.contains(&addr) || net.contains(&canonical))
        .map(|net| format!("{shown} is in the denied network {net}"))
}

/// Why the literal address in `authority` (`host:port`, `[v6]:port`, or a URL)
/// may not be contacted, if it is a literal address that may not; `None` for
/// names (they are checked when they resolve) and permitted addresses.
pub fn denied_literal(authority: &str, denied: &[IpNet]) -> Option<String> {
    let key = url_authority(authority).or_else(|| url_authority(&format!("https://{authority}")))?;
    let host = key.rsplit_once(':').map_or(key.as_str(), |(h, _)| h);
    let ip: IpAddr = host.trim_start_matches('[').trim_end_matches(']').parse().ok()?;
    denied_address(ip, denied)
}

/// Normalise a URI's authority to `host:port` (lower-case host, default port
/// made explicit, a literal IPv6 address in its canonical spelling), the form
/// the allow-list compares.
pub fn normalise_authority(scheme: Option<&Scheme>, authority: &Authority) -> String {
    let port = authority.port_u16().unwrap_or(if scheme == Some(&Scheme::HTTP) { 80 } else { 443 });
    let host = authority.host().to_ascii_lowercase();
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).and_then(|h| h.parse::<Ipv6Addr>().ok()) {
        Some(v6) => format!("[{v6}]:{port}"),
        None => format!("{host}:{port}"),
    }
}

/// The authority of `url` in allow-list form, when `url` is an http(s) URL.
pub fn url_authority(url: &str) -> Option<String> {
    let uri: Uri = url.trim().parse().ok()?;
    let scheme = uri.scheme()?;
    if scheme != &Scheme::HTTP && scheme != &Scheme::HTTPS {
        return None;
    }
    Some(normalise_authority(Some(scheme), uri.authority()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_are_normalised_with_default_ports() {
        assert_eq!(url_authority("http://LocalHost/x").as_deref(), Some("localhost:80"));
        assert_eq!(url_authority("https://s3.example.com").as_deref(), Some("s3.example.com:443"));
        assert_eq!(url_authority("http://127.0.0.1:9000/b").as_deref(), Some("127.0.0.1:9000"));
        assert_eq!(url_authority("not a url"), None);
        assert_eq!(url_authority("ftp://host/x"), None);
    }

    #[test]
    fn link_local_and_unspecified_addresses_are_refused() {
        let denied = defaults();
        let refused = |addr: &str| denied_address(addr.parse().unwrap(), &denied).is_some();
        assert!(refused("169.254.169.254"));
        assert!(refused("0.0.0.0"));
        assert!(refused("fe80::1"));
        assert!(!refused("127.0.0.1"));
        assert!(!refused("10.1.2.3"));
    }

    fn defaults() -> Vec<IpNet> {
        DEFAULT_DENIED_NETWORKS.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn ipv6_spellings_of_a_denied_ipv4_address_are_refused() {
        let denied = defaults();
        for spelling in [
            "::ffff:169.254.169.254",                  // IPv4-mapped
            "::ffff:a9fe:a9fe",                        // IPv4-mapped, hex
            "0:0:0:0:0:ffff:a9fe:a9fe",                // IPv4-mapped, unabbreviated
            "0000:0000:0000:0000:0000:FFFF:A9FE:A9FE", // zero-padded, upper case
            "::169.254.169.254",                       // IPv4-compatible
            "::a9fe:a9fe",                             // IPv4-compatible, hex
            "64:ff9b::169.254.169.254",                // NAT64 well-known prefix
            "64:ff9b::a9fe:a9fe",
            "0064:ff9b:0000::a9fe:a9fe",
            "::ffff:100.100.100.200", // another metadata address
        ] {
            let addr: IpAddr = spelling.parse().unwrap();
            let why = denied_address(addr, &denied).unwrap_or_else(|| panic!("{spelling} was allowed"));
            assert!(why.contains("denied network"), "{spelling}: {why}");
        }
        // Unspecified and multicast, in IPv6 dress too.
        for spelling in ["::", "::ffff:0.0.0.0", "::ffff:224.0.0.1", "64:ff9b::"] {
            assert!(denied_address(spelling.parse().unwrap(), &denied).is_some(), "{spelling} was allowed");
        }
        // Ordinary addresses, IPv6 loopback and other embeddings of allowed IPv4 addresses pass.
        for spelling in ["::1", "2001:db8::1", "::ffff:10.1.2.3", "64:ff9b::8.8.8.8", "127.0.0.1"] {
            assert_eq!(denied_address(spelling.parse().unwrap(), &denied), None, "{spelling}");
        }
    }

    #[test]
    fn an_operator_s_ipv6_denied_network_still_applies_as_written() {
        let denied: Vec<IpNet> = vec!["::ffff:0:0/96".parse().unwrap()];
        assert!(denied_address("::ffff:10.0.0.1".parse().unwrap(), &denied).is_some());
        let denied: Vec<IpNet> = vec!["127.0.0.0/8".parse().unwrap()];
        assert!(denied_address("::ffff:127.0.0.1".parse().unwrap(), &denied).is_some());
        assert!(denied_address("::ffff:7f00:1".parse().unwrap(), &denied).is_some());
    }

    #[test]
    fn literal_authorities_are_checked_in_every_form() {
        let denied = defaults();
        for authority in [
            "[::ffff:169.254.169.254]:80",
            "[::ffff:a9fe:a9fe]:80",
            "[::ffff:a9fe:a9fe]",
            "http://[64:ff9b::a9fe:a9fe]/latest/meta-data",
            "169.254.169.254",
            "https://169.254.169.254:8443",
            "[fe80::1]:80",
        ] {
            assert!(denied_literal(authority, &denied).is_some(), "{authority} was allowed");
        }
        for authority in ["s3.example.com:443", "[::1]:9000", "127.0.0.1:9000", "https://[2001:db8::1]/"] {
            assert_eq!(denied_literal(authority, &denied), None, "{authority}");
        }
    }

    #[test]
    fn ipv6_authorities_compare_in_one_spelling() {
        let a = url_authority("http://[0:0:0:0:0:FFFF:A9FE:A9FE]:80/").unwrap();
        let b = url_authority("http://[::ffff:169.254.169.254]/").unwrap();
        assert_eq!(a, b);
        assert_eq!(url_authority("https://[2001:DB8:0::1]").as_deref(), Some("[2001:db8::1]:443"));
    }
}
