//! A bucket's `credentials_source` and the keys that say where the source
//! is reached, with the environment variables the cloud platforms set as
//! their defaults. Resolved once, when the config is loaded.

use std::path::PathBuf;

use serde::Deserialize;

/// Where a bucket's credentials come from (`credentials_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialsSource {
    /// The keys in the bucket's settings and the credentials file (the plugin signs with them).
    #[default]
    Static,
    /// The EC2 instance profile's role, from the instance metadata service (IMDSv2).
    AwsInstance,
    /// The ECS task role (or EKS Pod Identity), from the container credentials endpoint.
    AwsEcs,
    /// An IAM role assumed with a web identity token file (EKS IRSA), through STS.
    AwsWebIdentity,
    /// The service account of a GCE VM or a GKE workload, from the metadata server.
    GcpMetadata,
}

impl CredentialsSource {
    /// The name as the config writes it.
    pub fn name(self) -> &'static str {
        match self {
            CredentialsSource::Static => "static",
            CredentialsSource::AwsInstance => "aws-instance",
            CredentialsSource::AwsEcs => "aws-ecs",
            CredentialsSource::AwsWebIdentity => "aws-web-identity",
            CredentialsSource::GcpMetadata => "gcp-metadata",
        }
    }

    /// Whether the plugin signs with keys of its own settings (no broker).
    pub fn is_static(self) -> bool {
        self == CredentialsSource::Static
    }
}

/// The settings (and credentials-file keys) that are static credentials: a
/// bucket with another `credentials_source` must not have any of them.
pub const STATIC_CREDENTIAL_KEYS: &[&str] =
    &["access_key_id", "secret_access_key", "session_token", "bearer_token", "service_account_json"];

/// Where the metadata service answers on EC2 and GCE.
pub const LINK_LOCAL_METADATA: &str = "http://169.254.169.254";
/// The ECS agent's credentials address (for `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`).
pub const ECS_CREDENTIALS_HOST: &str = "http://169.254.170.2";
/// STS's global endpoint, when neither `credentials_endpoint`, `AWS_ENDPOINT_URL_STS` nor `AWS_REGION` says otherwise.
pub const GLOBAL_STS: &str = "https://sts.amazonaws.com";

/// A bucket's credentials keys as written in its `[[buckets]]` table.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SourceSettings {
    /// `credentials_source`.
    pub source: CredentialsSource,
    /// `credentials_endpoint`: the metadata service's base URL, the container
    /// credentials URL, or the STS endpoint, replacing the platform's default.
    pub endpoint: Option<String>,
    /// `role_arn` (aws-web-identity).
    pub role_arn: Option<String>,
    /// `role_session_name` (aws-web-identity).
    pub role_session_name: Option<String>,
    /// `web_identity_token_file` (aws-web-identity).
    pub web_identity_token_file: Option<PathBuf>,
    /// `container_authorization_token_file` (aws-ecs).
    pub authorization_token_file: Option<PathBuf>,
}

/// How the ECS endpoint wants to be authorised.
#[derive(Clone, PartialEq, Eq)]
pub enum ContainerAuth {
    /// No `Authorization` header.
    None,
    /// This value (`AWS_CONTAINER_AUTHORIZATION_TOKEN`).
    Token(String),
    /// The content of this file, read at each refresh (EKS Pod Identity rotates it).
    File(PathBuf),
}

impl std::fmt::Debug for ContainerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ContainerAuth::None => f.write_str("none"),
            ContainerAuth::Token(_) => f.write_str("token(<redacted>)"),
            ContainerAuth::File(path) => write!(f, "file({})", path.display()),
        }
    }
}

/// A non-static source with everything it needs, keys and environment combined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedSource {
    /// The source.
    pub source: CredentialsSource,
    /// The URL asked: the metadata service's base, the container credentials URL, or STS.
    pub endpoint: String,
    /// The role to assume (aws-web-identity).
    pub role_arn: String,
    /// The session name given to STS (aws-web-identity).
    pub role_session_name: String,
    /// The projected token file (aws-web-identity).
    pub web_identity_token_file: PathBuf,
    /// The container endpoint's authorization (aws-ecs).
    pub authorization: ContainerAuth,
}

/// Why a source could not be resolved: the key at fault, the problem, the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceProblem {
    /// The bucket key at fault (`credentials_endpoint`, `role_arn`, ...).
    pub key: &'static str,
    /// What is wrong.
    pub problem: String,
    /// How to fix it.
    pub fix: String,
}

impl SourceSettings {
    /// Combine the keys with the environment (`env` looks a variable up;
    /// the keys win); `None` for `static`.
    pub fn resolve(
        &self,
        bucket: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<ResolvedSource>, SourceProblem> {
        let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let source = self.source;
        let endpoint = match source {
            CredentialsSource::Static => {
                let set = [
                    ("credentials_endpoint", self.endpoint.is_some()),
                    ("role_arn", self.role_arn.is_some()),
                    ("role_session_name", self.role_session_name.is_some()),
                    ("web_identity_token_file", self.web_identity_token_file.is_some()),
                    ("container_authorization_token_file", self.authorization_token_file.is_some()),
                ];
                if let Some((key, _)) = set.iter().find(|(_, set)| *set) {
                    return Err(SourceProblem {
                        key,
                        problem: "is set but `credentials_source` is \"static\" (the default)".into(),
                        fix: "set `credentials_source` to the source it belongs to, or remove it".into(),
                    });
                }
                return Ok(None);
            }
            CredentialsSource::AwsInstance => self
                .endpoint
                .clone()
                .or_else(|| env("AWS_EC2_METADATA_SERVICE_ENDPOINT"))
                .unwrap_or_else(|| LINK_LOCAL_METADATA.into()),
            CredentialsSource::GcpMetadata => self
                .endpoint
                .clone()
                .or_else(|| env("GCE_METADATA_HOST").map(|h| format!("http://{}", h.trim())))
                .unwrap_or_else(|| LINK_LOCAL_METADATA.into()),
            CredentialsSource::AwsEcs => self
                .endpoint
                .clone()
                .or_else(|| env("AWS_CONTAINER_CREDENTIALS_FULL_URI"))
                .or_else(|| env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").map(|r| format!("{ECS_CREDENTIALS_HOST}{r}")))
                .ok_or_else(|| SourceProblem {
                    key: "credentials_endpoint",
                    problem: "is not set, nor is AWS_CONTAINER_CREDENTIALS_FULL_URI or \
                              AWS_CONTAINER_CREDENTIALS_RELATIVE_URI in blockferry's environment"
                        .into(),
                    fix: "run blockferry in an ECS task with a task role (or an EKS pod with Pod Identity), \
                          which sets those variables, and pass them to its process; or set \
                          `credentials_endpoint` to the container credentials URL"
                        .into(),
                })?,
            CredentialsSource::AwsWebIdentity => self
                .endpoint
                .clone()
                .or_else(|| env("AWS_ENDPOINT_URL_STS"))
                .or_else(|| {
                    env("AWS_REGION")
                        .or_else(|| env("AWS_DEFAULT_REGION"))
                        .map(|r| format!("https://sts.{}.amazonaws.com", r.trim()))
                })
                .unwrap_or_else(|| GLOBAL_STS.into()),
        };
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
            || endpoint.parse::<http::Uri>().ok().and_then(|u| u.host().map(str::to_string)).is_none()
        {
            return Err(SourceProblem {
                key: "credentials_endpoint",
                problem: format!("= {endpoint:?} is not an http:// or https:// URL"),
                fix: format!("write the URL of the {} endpoint, e.g. \"http://127.0.0.1:8080\"", source.name()),
            });
        }
        let mut resolved = ResolvedSource {
            source,
            endpoint,
            role_arn: String::new(),
            role_session_name: String::new(),
            web_identity_token_file: PathBuf::new(),
            authorization: ContainerAuth::None,
        };
        match source {
            CredentialsSource::AwsWebIdentity => {
                resolved.role_arn =
                    self.role_arn.clone().or_else(|| env("AWS_ROLE_ARN")).ok_or_else(|| SourceProblem {
                        key: "role_arn",
                        problem: "is not set, nor is AWS_ROLE_ARN in blockferry's environment".into(),
                        fix: "set `role_arn` to the IAM role to assume (EKS sets AWS_ROLE_ARN for a service \
                              account annotated with `eks.amazonaws.com/role-arn`)"
                            .into(),
                    })?;
                resolved.web_identity_token_file = self
                    .web_identity_token_file
                    .clone()
                    .or_else(|| env("AWS_WEB_IDENTITY_TOKEN_FILE").map(PathBuf::from))
                    .ok_or_else(|| SourceProblem {
                        key: "web_identity_token_file",
                        problem: "is not set, nor is AWS_WEB_IDENTITY_TOKEN_FILE in blockferry's environment".into(),
                        fix: "set `web_identity_token_file` to the projected service-account token \
                              (EKS mounts it at /var/run/secrets/eks.amazonaws.com/serviceaccount/token)"
                            .into(),
                    })?;
                resolved.role_session_name = self
                    .role_session_name
                    .clone()
                    .or_else(|| env("AWS_ROLE_SESSION_NAME"))
                    .unwrap_or_else(|| format!("blockferry-{bucket}"));
            }
            CredentialsSource::AwsEcs => {
                resolved.authorization =
                    match (&self.authorization_token_file, env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")) {
                        (Some(file), _) => ContainerAuth::File(file.clone()),
                        (None, Some(file)) => ContainerAuth::File(file.into()),
                        (None, None) => {
                            env("AWS_CONTAINER_AUTHORIZATION_TOKEN").map_or(ContainerAuth::None, ContainerAuth::Token)
                        }
                    };
            }
            _ => {}
        }
        Ok(Some(resolved))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }

    #[test]
    fn keys_win_over_the_environment_and_defaults_fill_in() {
        let s = SourceSettings { source: CredentialsSource::AwsInstance, ..Default::default() };
        let r = s.resolve("b", env(&[])).unwrap().unwrap();
        assert_eq!(r.endpoint, LINK_LOCAL_METADATA);
        let r = s.resolve("b", env(&[("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://10.0.0.1:1")])).unwrap().unwrap();
        assert_eq!(r.endpoint, "http://10.0.0.1:1");
        let s = SourceSettings { endpoint: Some("http://127.0.0.1:9".into()), ..s };
        let r = s.resolve("b", env(&[("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://10.0.0.1:1")])).unwrap().unwrap();
        assert_eq!(r.endpoint, "http://127.0.0.1:9");
        let g = SourceSettings { source: CredentialsSource::GcpMetadata, ..Default::default() };
        let r = g.resolve("b", env(&[("GCE_METADATA_HOST", "127.0.0.1:7")])).unwrap().unwrap();
        assert_eq!(r.endpoint, "http://127.0.0.1:7");
        let e = SourceSettings { source: CredentialsSource::AwsEcs, ..Default::default() };
        let r = e
            .resolve(
                "b",
                env(&[("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/v2/x"), ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "t")]),
            )
            .unwrap()
            .unwrap();
        assert_eq!(r.endpoint, "http://169.254.170.2/v2/x");
        assert_eq!(r.authorization, ContainerAuth::Token("t".into()));
    }

    #[test]
    fn missing_requirements_name_the_key() {
        let e = SourceSettings { source: CredentialsSource::AwsEcs, ..Default::default() };
        assert_eq!(e.resolve("b", env(&[])).unwrap_err().key, "credentials_endpoint");
        let w = SourceSettings { source: CredentialsSource::AwsWebIdentity, ..Default::default() };
        assert_eq!(w.resolve("b", env(&[])).unwrap_err().key, "role_arn");
        let w = SourceSettings { role_arn: Some("arn:aws:iam::1:role/r".into()), ..w };
        assert_eq!(w.resolve("b", env(&[])).unwrap_err().key, "web_identity_token_file");
        let r = w
            .resolve("b", env(&[("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"), ("AWS_REGION", "eu-west-1")]))
            .unwrap()
            .unwrap();
        assert_eq!(r.endpoint, "https://sts.eu-west-1.amazonaws.com");
        assert_eq!(r.role_session_name, "blockferry-b");
        let s = SourceSettings { role_arn: Some("x".into()), ..Default::default() };
        assert_eq!(s.resolve("b", env(&[])).unwrap_err().key, "role_arn");
        let bad = SourceSettings {
            source: CredentialsSource::AwsInstance,
            endpoint: Some("169.254.169.254".into()),
            ..Default::default()
        };
        assert_eq!(bad.resolve("b", env(&[])).unwrap_err().key, "credentials_endpoint");
    }
}
