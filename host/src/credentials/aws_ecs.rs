//! `aws-ecs`: the task role's credentials from the ECS container
//! credentials endpoint (also EKS Pod Identity), authorised with the token
//! the platform gives, read again at each refresh when it is a file.

use http::Method;

use super::config::ContainerAuth;
use super::source::{Failure, Issued, SourceClient, aws_json, exchange};

/// Fetch the task role's current credentials.
pub(super) async fn fetch(client: &SourceClient) -> Result<Issued, Failure> {
    let mut headers = Vec::new();
    match &client.source.authorization {
        ContainerAuth::None => {}
        ContainerAuth::Token(token) => headers.push(("authorization", token.clone())),
        ContainerAuth::File(path) => {
            let token = std::fs::read_to_string(path).map_err(|e| {
                Failure::Permanent(format!("cannot read the authorization token file {}: {e}", path.display()))
            })?;
            headers.push(("authorization", token.trim().to_string()));
        }
    }
    let url = &client.source.endpoint;
    let answer = exchange(client, Method::GET, url, &headers, None).await?;
    aws_json(&format!("GET {url}"), &answer)
}
