//! `aws-instance`: the EC2 instance profile's credentials from the instance
//! metadata service, IMDSv2 only: a session token (`PUT /latest/api/token`)
//! sent with every read of `/latest/meta-data/iam/security-credentials/`.

use http::Method;

use super::source::{Failure, Issued, SourceClient, aws_json, exchange};

/// Lifetime asked for an IMDSv2 session token, in seconds (a new one is taken at each refresh).
const SESSION_TTL_SECS: &str = "300";
/// Where the role's name and credentials are read.
const CREDENTIALS_PATH: &str = "/latest/meta-data/iam/security-credentials/";

/// Fetch the role's current credentials.
pub(super) async fn fetch(client: &SourceClient) -> Result<Issued, Failure> {
    let base = client.source.endpoint.trim_end_matches('/');
    let token_url = format!("{base}/latest/api/token");
    let token = exchange(
        client,
        Method::PUT,
        &token_url,
        &[("x-aws-ec2-metadata-token-ttl-seconds", SESSION_TTL_SECS.into())],
        None,
    )
    .await?;
    let token = String::from_utf8_lossy(&token.body).trim().to_string();
    if token.is_empty() {
        return Err(Failure::Permanent(format!("PUT {token_url} answered an empty session token")));
    }
    let header = [("x-aws-ec2-metadata-token", token)];
    let roles_url = format!("{base}{CREDENTIALS_PATH}");
    let roles = exchange(client, Method::GET, &roles_url, &header, None).await.map_err(|f| match f {
        Failure::Permanent(why) if why.contains("HTTP 404") => {
            Failure::Permanent(format!("{why} (the instance has no IAM instance profile)"))
        }
        other => other,
    })?;
    let roles = String::from_utf8_lossy(&roles.body);
    let Some(role) = roles.lines().map(str::trim).find(|l| !l.is_empty()) else {
        return Err(Failure::Permanent(format!(
            "GET {roles_url} named no role (the instance has no IAM instance profile)"
        )));
    };
    if !role.chars().all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c)) {
        return Err(Failure::Permanent(format!("GET {roles_url} answered {role:?}, which is not a role name")));
    }
    let url = format!("{roles_url}{role}");
    let answer = exchange(client, Method::GET, &url, &header, None).await?;
    aws_json(&format!("GET {url}"), &answer)
}
