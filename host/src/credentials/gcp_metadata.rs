//! `gcp-metadata`: an access token of the VM's (or GKE workload's) service
//! account from the metadata server, asked with `Metadata-Flavor: Google`.

use http::Method;

use super::source::{Failure, Issued, SourceClient, exchange};
use crate::telemetry::now_ms;

/// The token of the default service account.
const TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";

/// What the token endpoint answers.
#[derive(serde::Deserialize)]
struct TokenJson {
    access_token: Option<String>,
    expires_in: Option<u64>,
}

/// Fetch a current access token.
pub(super) async fn fetch(client: &SourceClient) -> Result<Issued, Failure> {
    let url = format!("{}{TOKEN_PATH}", client.source.endpoint.trim_end_matches('/'));
    let answer = exchange(client, Method::GET, &url, &[("metadata-flavor", "Google".into())], None).await?;
    let malformed = |why: String| Failure::Permanent(format!("GET {url} answered {why}: {}", answer.excerpt()));
    let json: TokenJson =
        serde_json::from_slice(&answer.body).map_err(|e| malformed(format!("what is not a token JSON ({e})")))?;
    let token = json.access_token.filter(|t| !t.is_empty()).ok_or_else(|| malformed("no `access_token`".into()))?;
    let now = now_ms();
    Ok(Issued::new(vec![("bearer_token".into(), token)], now, json.expires_in.map(|s| now + s * 1000)))
}
