//! What every source shares: the credentials it issues, how a step fails,
//! and one request to its endpoint.

use std::sync::Arc;

use bytes::Bytes;

use super::config::ResolvedSource;
use super::http::{self, Answer};
use crate::telemetry::now_ms;

/// Refresh at most this long before expiry (when 80 % of the lifetime is later).
const REFRESH_MARGIN_MS: u64 = 5 * 60 * 1000;
/// Lifetime assumed for a token whose answer gives none.
const DEFAULT_LIFETIME_MS: u64 = 5 * 60 * 1000;

/// A source of one bucket and how its endpoint is reached.
#[derive(Debug)]
pub(super) struct SourceClient {
    /// The source and where it answers.
    pub(super) source: ResolvedSource,
    /// The TLS client of HTTPS endpoints (STS).
    pub(super) tls: Arc<rustls::ClientConfig>,
}

/// Credentials a source issued: the settings they stand for and their expiry.
#[derive(Clone, PartialEq, Eq)]
pub struct Issued {
    /// Key/value pairs named as the providers name their settings
    /// (`access_key_id`, `secret_access_key`, `session_token`; `bearer_token`).
    pub values: Vec<(String, String)>,
    /// When they expire, in Unix milliseconds.
    pub expires_ms: u64,
    /// When to replace them, in Unix milliseconds.
    pub(super) refresh_ms: u64,
}

/// Shows the keys and the expiry only.
impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("keys", &self.values.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>())
            .field("expires_ms", &self.expires_ms)
            .finish_non_exhaustive()
    }
}

impl Issued {
    /// Credentials issued at `now_ms` that expire at `expires_ms` (`None`: the
    /// source said nothing; a default lifetime is assumed).
    pub(super) fn new(values: Vec<(String, String)>, now_ms: u64, expires_ms: Option<u64>) -> Self {
        let expires_ms = expires_ms.unwrap_or(now_ms + DEFAULT_LIFETIME_MS);
        let lifetime = expires_ms.saturating_sub(now_ms);
        let at_80 = lifetime * 4 / 5;
        let margin_before = lifetime.saturating_sub(REFRESH_MARGIN_MS);
        let after = at_80.min(margin_before).max(lifetime / 2).max(1_000.min(lifetime));
        Issued { values, expires_ms, refresh_ms: now_ms + after }
    }

    /// The value of `key`, if issued.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.values.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// One failed step of a source, before the broker names the bucket and source.
#[derive(Debug)]
pub(super) enum Failure {
    /// Only an operator can fix it.
    Permanent(String),
    /// Worth trying again.
    Transient(String),
}

impl Failure {
    /// What a non-2xx `answer` to `what` means: 5xx, 408 and 429 are
    /// transient, any other status permanent.
    pub(super) fn of_status(what: &str, answer: &Answer) -> Failure {
        let text = format!("{what} answered HTTP {}: {}", answer.status, answer.excerpt());
        match answer.status {
            500..=599 | 408 | 429 => Failure::Transient(text),
            _ => Failure::Permanent(text),
        }
    }
}

/// Sends one request of a source: a failure to exchange is transient, a
/// non-2xx status judged by [`Failure::of_status`]; the 2xx answer otherwise.
pub(super) async fn exchange(
    client: &SourceClient,
    method: ::http::Method,
    url: &str,
    headers: &[(&str, String)],
    body: Option<Bytes>,
) -> Result<Answer, Failure> {
    let what = format!("{method} {url}");
    let answer = http::send(method, url, headers, body, &client.tls)
        .await
        .map_err(|e| Failure::Transient(format!("{what}: {e}")))?;
    if (200..300).contains(&answer.status) { Ok(answer) } else { Err(Failure::of_status(&what, &answer)) }
}

/// The JSON the AWS instance and container endpoints answer with.
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AwsJson {
    code: Option<String>,
    message: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    token: Option<String>,
    expiration: Option<String>,
}

/// Reads the AWS credentials JSON of `what` (IMDS, ECS).
pub(super) fn aws_json(what: &str, answer: &Answer) -> Result<Issued, Failure> {
    let malformed = |why: &str| Failure::Permanent(format!("{what} answered {why}: {}", answer.excerpt()));
    let json: AwsJson =
        serde_json::from_slice(&answer.body).map_err(|e| malformed(&format!("what is not credentials JSON ({e})")))?;
    if let Some(code) = json.code.as_deref().filter(|c| *c != "Success") {
        return Err(Failure::Permanent(format!(
            "{what} answered code {code:?}: {}",
            json.message.as_deref().unwrap_or("(no message)")
        )));
    }
    let (Some(id), Some(secret)) =
        (json.access_key_id.filter(|s| !s.is_empty()), json.secret_access_key.filter(|s| !s.is_empty()))
    else {
        return Err(malformed("JSON without `AccessKeyId` and `SecretAccessKey`"));
    };
    let expires = match json.expiration.as_deref() {
        Some(text) => Some(
            super::parse_rfc3339_ms(text)
                .ok_or_else(|| malformed(&format!("an `Expiration` that is not an RFC 3339 time ({text:?})")))?,
        ),
        None => None,
    };
    let mut values = vec![("access_key_id".to_string(), id), ("secret_access_key".to_string(), secret)];
    if let Some(token) = json.token.filter(|t| !t.is_empty()) {
        values.push(("session_token".into(), token));
    }
    Ok(Issued::new(values, now_ms(), expires))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refreshes_at_80_percent_or_5_minutes_before_expiry() {
        let hour = 3_600_000;
        // 6 h: 80 % (4.8 h) is sooner than 5 min before (5 h 55 min).
        assert_eq!(Issued::new(vec![], 0, Some(6 * hour)).refresh_ms, 6 * hour * 4 / 5);
        // 15 min: 5 min before (10 min) is sooner than 80 % (12 min).
        assert_eq!(Issued::new(vec![], 0, Some(15 * 60_000)).refresh_ms, 10 * 60_000);
        // 10 s: never sooner than half the lifetime.
        assert_eq!(Issued::new(vec![], 1_000, Some(11_000)).refresh_ms, 6_000);
        // Already expired: replaced at the next call.
        assert_eq!(Issued::new(vec![], 5_000, Some(1_000)).refresh_ms, 5_000);
    }

    #[test]
    fn reads_aws_json_and_refuses_garbage() {
        let answer = |body: &str| Answer { status: 200, body: Bytes::from(body.to_string()) };
        let ok = aws_json(
            "GET x",
            &answer(r#"{"Code":"Success","AccessKeyId":"ASIA1","SecretAccessKey":"s","Token":"t","Expiration":"2099-01-01T00:00:00Z"}"#),
        )
        .unwrap();
        assert_eq!(ok.value("access_key_id"), Some("ASIA1"));
        assert_eq!(ok.value("session_token"), Some("t"));
        for bad in ["<html>", r#"{"AccessKeyId":"A"}"#, r#"{"Code":"Failed","Message":"no role"}"#] {
            assert!(matches!(aws_json("GET x", &answer(bad)), Err(Failure::Permanent(_))), "{bad}");
        }
    }
}
