//! The broker of one bucket: the credentials it holds, when to replace
//! them, and the one refresh in flight.

use std::sync::Arc;
use std::time::Duration;

use super::config::{CredentialsSource, ResolvedSource};
use super::source::{Failure, Issued, SourceClient};
use crate::telemetry::now_ms;

/// Attempts of one refresh (the first included) before a transient failure is returned.
const ATTEMPTS: u32 = 3;
/// Delay before the second attempt; doubles for each further one.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// After a refresh failed while the credentials held were still valid, the
/// next refresh is not tried for this long (the held ones are used).
const RETRY_REFRESH_AFTER_MS: u64 = 5_000;

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
    /// The source, where it answers and how it is reached.
    client: SourceClient,
    held: tokio::sync::Mutex<Held>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("bucket", &self.bucket)
            .field("source", &self.client.source)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// The broker of `bucket` for `source`; HTTPS endpoints are reached with `tls`.
    pub fn new(bucket: &str, source: ResolvedSource, tls: Arc<rustls::ClientConfig>) -> Self {
        Broker { bucket: bucket.to_string(), client: SourceClient { source, tls }, held: Default::default() }
    }

    /// The source.
    pub fn source(&self) -> CredentialsSource {
        self.client.source.source
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
                    source = self.client.source.source.name(),
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
        match self.client.source.source {
            CredentialsSource::AwsInstance => super::aws_instance::fetch(&self.client).await,
            CredentialsSource::AwsEcs => super::aws_ecs::fetch(&self.client).await,
            CredentialsSource::AwsWebIdentity => super::aws_web_identity::fetch(&self.client).await,
            CredentialsSource::GcpMetadata => super::gcp_metadata::fetch(&self.client).await,
            CredentialsSource::Static => Err(Failure::Permanent("a static bucket has no credentials source".into())),
        }
    }

    /// `credentials of bucket B (credentials_source = "S", ENDPOINT)`.
    fn context(&self) -> String {
        format!(
            "credentials of bucket {} (credentials_source = \"{}\", {})",
            self.bucket,
            self.client.source.source.name(),
            self.client.source.endpoint
        )
    }

    /// What an operator checks when the source refuses.
    fn fix(&self) -> &'static str {
        match self.client.source.source {
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
