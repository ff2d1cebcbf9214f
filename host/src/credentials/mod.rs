//! The credentials broker: short-lived cloud credentials obtained by the
//! host for a bucket whose `credentials_source` is not `static`, cached and
//! refreshed before they expire, and handed to the bucket's plugin through
//! `host.credentials`. The plugin never reaches the metadata service itself
//! (its sandbox refuses link-local addresses); the host does, here.
//!
//! One file per source: `aws_instance` (IMDSv2), `aws_ecs` (the container
//! credentials endpoint), `aws_web_identity` (STS
//! `AssumeRoleWithWebIdentity`), `gcp_metadata` (the GCE metadata server's
//! token endpoint). Imports only leaf modules of the crate.
//!
//! Refreshing: credentials are replaced once 80 % of their lifetime has
//! passed or 5 minutes before they expire, whichever is sooner (never
//! sooner than half their lifetime), so a rotation never costs a request.
//! One refresh runs at a time per bucket; callers wait for it. A transient
//! failure (no connection, a 5xx, a timeout) is retried with backoff; while
//! the credentials held are still valid they are used meanwhile. A 4xx, a
//! missing token file or an answer that cannot be read is permanent: only an
//! operator can fix it, and the error names the source, endpoint and fix.

mod config;

pub use config::{
    ContainerAuth, CredentialsSource, ResolvedSource, STATIC_CREDENTIAL_KEYS, SourceProblem, SourceSettings,
};

#[cfg(feature = "runtime")]
mod aws_ecs;
#[cfg(feature = "runtime")]
mod aws_instance;
#[cfg(feature = "runtime")]
mod aws_web_identity;
#[cfg(feature = "runtime")]
mod broker;
#[cfg(feature = "runtime")]
mod gcp_metadata;
#[cfg(feature = "runtime")]
mod http;
#[cfg(feature = "runtime")]
mod source;
mod time;

#[cfg(feature = "runtime")]
pub use broker::{Broker, CredentialsError};
#[cfg(feature = "runtime")]
pub use source::Issued;
pub use time::parse_rfc3339_ms;
