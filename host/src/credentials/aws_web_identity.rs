//! `aws-web-identity`: an IAM role assumed with STS
//! `AssumeRoleWithWebIdentity` (unsigned, the query API), with the web
//! identity token read again from its file at each refresh (EKS rotates it).

use bytes::Bytes;
use http::Method;

use super::source::{Failure, Issued, SourceClient, exchange};
use crate::telemetry::now_ms;

/// Lifetime asked for the role's session, in seconds (STS's default).
const SESSION_SECS: u32 = 3600;

/// Assume the role.
pub(super) async fn fetch(client: &SourceClient) -> Result<Issued, Failure> {
    let source = &client.source;
    let file = &source.web_identity_token_file;
    let token = std::fs::read_to_string(file)
        .map_err(|e| Failure::Permanent(format!("cannot read the web identity token file {}: {e}", file.display())))?;
    let token = token.trim();
    if token.is_empty() {
        return Err(Failure::Permanent(format!("the web identity token file {} is empty", file.display())));
    }
    let form = [
        ("Action", "AssumeRoleWithWebIdentity"),
        ("Version", "2011-06-15"),
        ("RoleArn", source.role_arn.as_str()),
        ("RoleSessionName", source.role_session_name.as_str()),
        ("DurationSeconds", &SESSION_SECS.to_string()),
        ("WebIdentityToken", token),
    ]
    .iter()
    .map(|(k, v)| format!("{k}={}", form_encode(v)))
    .collect::<Vec<_>>()
    .join("&");
    let url = format!("{}/", source.endpoint.trim_end_matches('/'));
    let what = format!("STS AssumeRoleWithWebIdentity at {url} for {}", source.role_arn);
    let answer = exchange(
        client,
        Method::POST,
        &url,
        &[("content-type", "application/x-www-form-urlencoded; charset=utf-8".into()), ("accept", "text/xml".into())],
        Some(Bytes::from(form)),
    )
    .await
    .map_err(|failure| match failure {
        // STS's error document names the code: a throttled or unreachable identity provider is worth retrying.
        Failure::Permanent(why) if ["Throttling", "IDPCommunicationError"].iter().any(|c| why.contains(c)) => {
            Failure::Transient(why)
        }
        other => other,
    })?;
    let body = String::from_utf8_lossy(&answer.body);
    let field = |name: &str| xml_text(&body, name);
    let malformed = |why: &str| Failure::Permanent(format!("{what} answered {why}: {}", answer.excerpt()));
    let (Some(id), Some(secret), Some(session)) =
        (field("AccessKeyId"), field("SecretAccessKey"), field("SessionToken"))
    else {
        return Err(malformed("no `Credentials` (AccessKeyId, SecretAccessKey, SessionToken)"));
    };
    let expires = match field("Expiration") {
        Some(text) => Some(
            super::parse_rfc3339_ms(&text)
                .ok_or_else(|| malformed(&format!("an `Expiration` that is not an RFC 3339 time ({text:?})")))?,
        ),
        None => None,
    };
    let values = vec![
        ("access_key_id".to_string(), id),
        ("secret_access_key".to_string(), secret),
        ("session_token".to_string(), session),
    ];
    Ok(Issued::new(values, now_ms(), expires))
}

/// `application/x-www-form-urlencoded` encoding of a value.
fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for &b in value.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The text of the first `<name>` element of `xml` (entities decoded), if
/// it has one; STS's answers are flat enough for this.
fn xml_text(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{name}>"))? + start;
    let text = xml[start..end]
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&");
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sts_answers() {
        let xml = "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials>\
                   <AccessKeyId>ASIA9</AccessKeyId><SecretAccessKey>s&amp;k</SecretAccessKey>\
                   <SessionToken>tok</SessionToken><Expiration>2099-01-01T00:00:00Z</Expiration>\
                   </Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>";
        assert_eq!(xml_text(xml, "AccessKeyId").as_deref(), Some("ASIA9"));
        assert_eq!(xml_text(xml, "SecretAccessKey").as_deref(), Some("s&k"));
        assert_eq!(xml_text(xml, "Nope"), None);
        assert_eq!(form_encode("arn:aws:iam::1:role/r a"), "arn%3Aaws%3Aiam%3A%3A1%3Arole%2Fr%20a");
    }
}
