//! The broker of one bucket: the credentials it holds, when to replace
//! them, and the one refresh in flight.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::config::{CredentialsSource, ResolvedSource};
use super::http::{self, Answer};
use crate::telemetry::now_ms;

/// Attempts of one refresh (the first included) before a transient failure is returned.
const ATTEMPTS: u32 = 3;
/// Delay before the second attempt; doubles for each further one.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// After a refresh failed while the credentials held were still valid, the
/// next refresh is not tried for this long (the held ones are used).
const RETRY_REFRESH_AFTER_MS: u64 = 5_000;
/// Refresh at most this long before expiry (when 80 % of the lifetime is later).
const REFRESH_MARGIN_MS: u64 = 5 * 60 * 1000;
/// Lifetime assumed for a token whose answer gives none.
const DEFAULT_LIFETIME_MS: u64 = 5 * 60 * 1000;

/// Credentials a source issued: the settings they stand for and their expiry.
#[derive(Clone, PartialEq, Eq)]
pub struct Issued {
    /// Key/value pairs named as the providers name their settings
    /// (`access_key_id`, `secret_access_key`, `session_token`; `bearer_token`).
    pub values: Vec<(String, String)>,
    /// When they expire, in Unix milliseconds.
    pub expires_ms: u64,
    /// When to replace them, in Unix milliseconds.
    refresh_ms: u64,
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

/// Why no credentials could be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    /// Only an operator can fix it (a 4xx, a missing token file, an answer
    /// that cannot be read); names the source, the endpoint and the fix.
    #[error("{0}")]
    Permanent(String),
    /// Worth trying again later (no connection, a 5xx, a timeout).
    #[error("{0}")]
    Transient(String),
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
    broker: &Broker,
    method: ::http::Method,
    url: &str,
    headers: &[(&str, String)],
    body: Option<Bytes>,
) -> Result<Answer, Failure> {
    let what = format!("{method} {url}");
    let answer = http::send(method, url, headers, body, &broker.tls)
        .await
        .map_err(|e| Failure::Transient(format!("{what}: {e}")))?;
    if (200..300).contains(&answer.status) { Ok(answer) } else { Err(Failure::of_status(&what, &answer)) }
}

/// What the broker holds.
#[derive(Default)]
struct Held {
    issued: Option<Issued>,
    /// No refresh before this (Unix ms), after one failed while `issued` was valid.
    quiet_until_ms: u64,
}

/// The credentials broker of one bucket.
pub struct Broker {
    /// The bucket's name, for messages.
    bucket: String,
    /// The source and where it answers.
    pub(super) source: ResolvedSource,
    /// The TLS client of HTTPS endpoints (STS).
    tls: Arc<rustls::ClientConfig>,
    held: tokio::sync::Mutex<Held>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("bucket", &self.bucket).field("source", &self.source).finish_non_exhaustive()
    }
}

impl Broker {
    /// The broker of `bucket` for `source`; HTTPS endpoints are reached with `tls`.
    pub fn new(bucket: &str, source: ResolvedSource, tls: Arc<rustls::ClientConfig>) -> Self {
        Broker { bucket: bucket.to_string(), source, tls, held: Default::default() }
    }

    /// The source.
    pub fn source(&self) -> CredentialsSource {
        self.source.source
    }

    /// The current credentials: those held while they are fresh, else new
    /// ones (one refresh at a time; callers wait for it).
    pub async fn current(&self) -> Result<Issued, CredentialsError> {
        let mut held = self.held.lock().await;
        let now = now_ms();
        if let Some(issued) = &held.issued
            && (now < issued.refresh_ms || (now < held.quiet_until_ms && now < issued.expires_ms))
        {
            return Ok(issued.clone());
        }
        match self.refresh().await {
            Ok(issued) => {
                tracing::info!(
                    bucket = %self.bucket,
                    source = self.source.source.name(),
                    expires_in_s = issued.expires_ms.saturating_sub(now_ms()) / 1000,
                    "obtained credentials"
                );
                held.issued = Some(issued.clone());
                held.quiet_until_ms = 0;
                Ok(issued)
            }
            Err(CredentialsError::Transient(e)) if held.issued.as_ref().is_some_and(|i| now_ms() < i.expires_ms) => {
                tracing::warn!(bucket = %self.bucket, "{e}; the credentials held are used until they expire");
                held.quiet_until_ms = now_ms() + RETRY_REFRESH_AFTER_MS;
                Ok(held.issued.clone().expect("checked above"))
            }
            Err(e) => {
                tracing::warn!(bucket = %self.bucket, "{e}");
                Err(e)
            }
        }
    }

    /// Ask the source, retrying transient failures with backoff.
    async fn refresh(&self) -> Result<Issued, CredentialsError> {
        let mut delay = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            let failure = match self.fetch().await {
                Ok(issued) => return Ok(issued),
                Err(failure) => failure,
            };
            match failure {
                Failure::Transient(why) if attempt < ATTEMPTS => {
                    tracing::debug!(bucket = %self.bucket, attempt, "credentials: {why}; trying again");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                Failure::Transient(why) => {
                    return Err(CredentialsError::Transient(format!(
                        "{}: {why} (after {ATTEMPTS} attempts); retried later",
                        self.context()
                    )));
                }
                Failure::Permanent(why) => {
                    return Err(CredentialsError::Permanent(format!("{}: {why}; {}", self.context(), self.fix())));
                }
            }
        }
    }

    async fn fetch(&self) -> Result<Issued, Failure> {
        match self.source.source {
            CredentialsSource::AwsInstance => super::aws_instance::fetch(self).await,
            CredentialsSource::AwsEcs => super::aws_ecs::fetch(self).await,
            CredentialsSource::AwsWebIdentity => super::aws_web_identity::fetch(self).await,
            CredentialsSource::GcpMetadata => super::gcp_metadata::fetch(self).await,
            CredentialsSource::Static => Err(Failure::Permanent("a static bucket has no credentials source".into())),
        }
    }

    /// `credentials of bucket B (credentials_source = "S", ENDPOINT)`.
    fn context(&self) -> String {
        format!(
            "credentials of bucket {} (credentials_source = \"{}\", {})",
            self.bucket,
            self.source.source.name(),
            self.source.endpoint
        )
    }

    /// What an operator checks when the source refuses.
    fn fix(&self) -> &'static str {
        match self.source.source {
            CredentialsSource::AwsInstance => {
                "check that the instance has an IAM instance profile (a role) attached and that IMDSv2 answers \
                 this host (in a container, the instance's metadata hop limit must be at least 2), or point \
                 `credentials_endpoint` / AWS_EC2_METADATA_SERVICE_ENDPOINT at the metadata service"
            }
            CredentialsSource::AwsEcs => {
                "check the task role (or EKS Pod Identity association) and that AWS_CONTAINER_CREDENTIALS_FULL_URI \
                 / _RELATIVE_URI and AWS_CONTAINER_AUTHORIZATION_TOKEN[_FILE] reach blockferry's process, or set \
                 `credentials_endpoint` / `container_authorization_token_file`"
            }
            CredentialsSource::AwsWebIdentity => {
                "check `role_arn` / AWS_ROLE_ARN, that the role trusts the cluster's OIDC provider for this service \
                 account, and that the projected token file (`web_identity_token_file` / \
                 AWS_WEB_IDENTITY_TOKEN_FILE) is mounted and readable"
            }
            CredentialsSource::GcpMetadata => {
                "check that the VM has a service account (on GKE: Workload Identity binding the pod's Kubernetes \
                 service account to a Google service account) and that `credentials_endpoint` / GCE_METADATA_HOST \
                 points at the metadata server"
            }
            CredentialsSource::Static => "set `credentials_source`",
        }
    }
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
