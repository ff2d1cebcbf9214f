//! Authorisation of requests: none (an emulator), a static bearer token, or
//! a service-account key from which the plugin makes RS256-signed JWTs and
//! exchanges them at the key's `token_uri` for short-lived access tokens
//! (OAuth 2 JWT bearer grant, RFC 7523), cached and refreshed before they expire.

use std::cell::RefCell;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use blockferry_guest::http::{self, Body, Request, Response, Timeouts};
use blockferry_guest::operation::{self, Accept, Failure, Service};
use blockferry_guest::retry::Policy;
use blockferry_guest::settings::Endpoint;
use blockferry_guest::{Level, UploadError};
use blockferry_guest::{unix_now, uri_encode};
use rsa::RsaPrivateKey;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::signature::{SignatureEncoding, Signer};
use sha2::Sha256;
use wasip2::http::types::Method;

/// The OAuth scope asked for: read and write objects, nothing else.
pub const SCOPE: &str = "https://www.googleapis.com/auth/devstorage.read_write";
/// Lifetime asked for each JWT assertion (Google's maximum).
const ASSERTION_LIFETIME_SECS: u64 = 3600;
/// A token is refreshed when less than this (or half its lifetime, if shorter) is left.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// How requests are authorised.
pub enum Auth {
    /// No `authorization` header (emulators).
    None,
    /// `authorization: Bearer <token>`, as given.
    Bearer(String),
    /// Access tokens obtained with a service-account key.
    ServiceAccount(Box<ServiceAccount>),
    /// Access tokens the host obtains from the platform (`host.credentials`,
    /// its `bearer_token`), from the source named by setting `credentials_source`.
    Host(String),
}

/// A parsed service-account key and its cached access token.
pub struct ServiceAccount {
    /// `client_email`: the JWT's issuer.
    pub client_email: String,
    /// `private_key_id`, sent as the JWT's `kid` when present.
    pub key_id: Option<String>,
    /// `token_uri` as written in the key (the JWT's audience).
    pub token_uri: String,
    /// Its scheme and authority.
    pub token_endpoint: Endpoint,
    /// Its path and query.
    pub token_path: String,
    /// The RS256 signing key.
    key: SigningKey<Sha256>,
    /// The current access token.
    cache: RefCell<Option<Token>>,
}

/// An access token and when to replace it.
#[derive(Clone)]
struct Token {
    /// The token.
    value: String,
    /// Monotonic time (ns) from which it is refreshed.
    refresh_at: u64,
}

/// The fields of a service-account JSON key the plugin uses.
#[derive(serde::Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: Option<String>,
    client_email: Option<String>,
    private_key: Option<String>,
    private_key_id: Option<String>,
    token_uri: Option<String>,
}

/// What a token endpoint answers.
#[derive(serde::Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: Option<u64>,
}

impl Auth {
    /// Parses the service-account JSON key in setting `service_account_json`.
    pub fn service_account(json: &str) -> Result<Auth, String> {
        let key: KeyFile = serde_json::from_str(json).map_err(|e| {
            format!(
                "setting `service_account_json` is not a JSON object ({e}): paste the whole JSON key file \
                 of the service account (IAM > Service accounts > Keys > Add key > JSON)"
            )
        })?;
        let missing = |field: &str| {
            format!(
                "setting `service_account_json` has no `{field}`: it must be a service account's JSON key file \
                 (\"type\": \"service_account\") as Google issues it"
            )
        };
        if let Some(kind) = &key.kind
            && kind != "service_account"
        {
            return Err(format!(
                "setting `service_account_json` is a {kind:?} credential, not a service-account key: create a \
                 JSON key for a service account (user credentials are not supported)"
            ));
        }
        let client_email = key.client_email.filter(|e| !e.is_empty()).ok_or_else(|| missing("client_email"))?;
        let pem = key.private_key.filter(|p| !p.is_empty()).ok_or_else(|| missing("private_key"))?;
        let token_uri = key.token_uri.filter(|u| !u.is_empty()).ok_or_else(|| missing("token_uri"))?;
        let private =
            RsaPrivateKey::from_pkcs8_pem(&pem).or_else(|_| RsaPrivateKey::from_pkcs1_pem(&pem)).map_err(|e| {
                format!(
                    "setting `service_account_json`: `private_key` is not an RSA private key in PEM ({e}); \
                     use the key file exactly as downloaded (the PEM's newlines written as \\n)"
                )
            })?;
        let (token_endpoint, token_path) = split_url(&token_uri)?;
        Ok(Auth::ServiceAccount(Box::new(ServiceAccount {
            client_email,
            key_id: key.private_key_id.filter(|k| !k.is_empty()),
            token_uri,
            token_endpoint,
            token_path,
            key: SigningKey::<Sha256>::new(private),
            cache: RefCell::new(None),
        })))
    }

    /// The `authorization` header value for the next request, fetching or
    /// refreshing an access token when needed.
    pub fn header(&self, policy: &Policy, timeouts: Timeouts) -> Result<Option<String>, UploadError> {
        match self {
            Auth::None => Ok(None),
            Auth::Bearer(token) => Ok(Some(format!("Bearer {token}"))),
            Auth::ServiceAccount(account) => {
                account.access_token(policy, timeouts).map(|t| Some(format!("Bearer {t}")))
            }
            Auth::Host(source) => {
                let target = "authorising the request";
                match blockferry_guest::host_credentials(target, source, &["bearer_token"])?.pop().flatten() {
                    Some(token) => Ok(Some(format!("Bearer {token}"))),
                    None => Err(UploadError::Permanent(format!(
                        "{target}: the host's credentials from `credentials_source` = {source:?} have no \
                         `bearer_token`: use `gcp-metadata` for a GCS bucket"
                    ))),
                }
            }
        }
    }

    /// Forgets a cached access token (the server refused it); the next
    /// request gets a new one. Returns whether there was one to forget.
    pub fn invalidate(&self) -> bool {
        match self {
            Auth::ServiceAccount(account) => account.cache.borrow_mut().take().is_some(),
            _ => false,
        }
    }

    /// The setting to check when the server refuses the credentials.
    pub fn hint(&self) -> &'static str {
        match self {
            Auth::None => "; set `service_account_json` or `bearer_token`",
            Auth::Bearer(_) => "; check `bearer_token` (is it expired? prefer `service_account_json`, which refreshes)",
            Auth::ServiceAccount(_) => {
                "; check that the service account of `service_account_json` may create objects in the bucket \
                 (roles/storage.objectCreator and objectViewer)"
            }
            Auth::Host(_) => {
                "; check that the platform's service account (the VM's, or the Google service account the GKE \
                 workload is bound to) may create objects in the bucket (roles/storage.objectCreator and objectViewer)"
            }
        }
    }
}

impl ServiceAccount {
    /// A valid access token: the cached one, or a new one from the token endpoint.
    fn access_token(&self, policy: &Policy, timeouts: Timeouts) -> Result<String, UploadError> {
        let now = http::now_nanos();
        if let Some(token) = self.cache.borrow().as_ref()
            && now < token.refresh_at
        {
            return Ok(token.value.clone());
        }
        let endpoint = TokenEndpoint { account: self, policy: *policy };
        let (value, lifetime) = endpoint
            .call(
                "token exchange",
                "",
                |_| {
                    let body = format!(
                        "grant_type={}&assertion={}",
                        uri_encode("urn:ietf:params:oauth:grant-type:jwt-bearer", false),
                        self.assertion(unix_now())
                    );
                    Ok(Request {
                        method: Method::Post,
                        https: self.token_endpoint.https,
                        authority: self.token_endpoint.authority.clone(),
                        path_and_query: self.token_path.clone(),
                        headers: vec![("content-type".into(), "application/x-www-form-urlencoded".into())],
                        body: Body::Bytes(body.into_bytes()),
                        timeouts,
                        sink: None,
                    })
                },
                |response| {
                    let status = response.status;
                    if !(200..300).contains(&status) {
                        return Accept::Other(response);
                    }
                    Accept::Done(match serde_json::from_slice::<TokenResponse>(&response.body) {
                        Ok(t) if !t.access_token.is_empty() => {
                            Ok((t.access_token, Duration::from_secs(t.expires_in.unwrap_or(3600).max(1))))
                        }
                        _ => Err(UploadError::Permanent(format!(
                            "token exchange at {} for {}: HTTP {status} without an access_token: {}",
                            self.token_uri,
                            self.client_email,
                            String::from_utf8_lossy(&response.body[..response.body.len().min(300)])
                        ))),
                    })
                },
            )
            .run()?;
        let margin = REFRESH_MARGIN.min(lifetime / 2);
        let refresh_at = now + (lifetime - margin).as_nanos() as u64;
        blockferry_guest::log(
            Level::Debug,
            &format!(
                "gcs: new access token for {} from {}, valid {} s",
                self.client_email,
                self.token_uri,
                lifetime.as_secs()
            ),
        );
        *self.cache.borrow_mut() = Some(Token { value: value.clone(), refresh_at });
        Ok(value)
    }

    /// A signed JWT assertion issued at `now` (Unix seconds).
    pub fn assertion(&self, now: u64) -> String {
        let mut header = serde_json::json!({ "alg": "RS256", "typ": "JWT" });
        if let Some(kid) = &self.key_id {
            header["kid"] = kid.clone().into();
        }
        let claims = serde_json::json!({
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": self.token_uri,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_SECS,
        });
        let signing_input = format!("{}.{}", B64URL.encode(header.to_string()), B64URL.encode(claims.to_string()));
        let signature = self.key.sign(signing_input.as_bytes()).to_bytes();
        format!("{signing_input}.{}", B64URL.encode(signature))
    }
}

/// The token endpoint of a service account, as a [`Service`]: the token
/// exchange is retried and its failures judged like any other request.
struct TokenEndpoint<'a> {
    account: &'a ServiceAccount,
    policy: Policy,
}

impl Service for TokenEndpoint<'_> {
    type State = ();

    /// `at <token_uri> for <client_email>` (the operation is the token exchange).
    fn location(&self, _key: &str) -> String {
        format!("at {} for {}", self.account.token_uri, self.account.client_email)
    }

    fn policy(&self) -> &Policy {
        &self.policy
    }

    fn endpoints(&self) -> (String, &'static str) {
        (self.account.token_endpoint.authority.clone(), "the `token_uri` of `service_account_json` (the key file)")
    }

    /// 408/429/5xx are retried; any other refusal is the key's.
    fn judge(&self, target: &str, response: Response, _: &mut ()) -> Failure {
        let status = response.status;
        let text = String::from_utf8_lossy(&response.body[..response.body.len().min(300)]).into_owned();
        let why = format!("{target}: HTTP {status}: {text}");
        if crate::retryable(status) {
            return Failure::Retry { why, retry_after: operation::retry_after(&response) };
        }
        Failure::Fail(UploadError::Permanent(format!(
            "{why}; the token endpoint refused the service account's key: check that the key in \
             `service_account_json` is current (not deleted or disabled) and the machine's clock is right"
        )))
    }
}

/// Splits the URL of setting `key` into scheme and authority (a missing
/// default port is left out, as the host's allow-list normalises it).
pub fn parse_endpoint(key: &str, url: &str) -> Result<Endpoint, String> {
    blockferry_guest::settings::parse_endpoint(key, url, "a local emulator")
}

/// Splits `token_uri` into its endpoint and its path with query.
fn split_url(url: &str) -> Result<(Endpoint, String), String> {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let (authority_len, path) = match after_scheme.find('/') {
        Some(i) => (i, &after_scheme[i..]),
        None => (after_scheme.len(), "/"),
    };
    let base = &url[..url.len() - after_scheme.len() + authority_len];
    let endpoint = parse_endpoint("service_account_json", base)
        .map_err(|e| format!("{e} (its `token_uri` = {url:?} must be an http(s) URL)"))?;
    Ok((endpoint, path.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_uri_is_split() {
        let (e, p) = split_url("https://oauth2.googleapis.com/token").unwrap();
        assert_eq!((e.https, e.authority.as_str(), p.as_str()), (true, "oauth2.googleapis.com", "/token"));
        let (e, p) = split_url("http://127.0.0.1:8080").unwrap();
        assert_eq!((e.https, e.authority.as_str(), p.as_str()), (false, "127.0.0.1:8080", "/"));
        assert!(split_url("oauth2.googleapis.com/token").is_err());
    }

    #[test]
    fn bad_keys_are_refused_naming_the_setting() {
        for json in [
            "not json",
            r#"{"type":"authorized_user"}"#,
            r#"{"type":"service_account","private_key":"x","token_uri":"https://t/token"}"#,
            r#"{"type":"service_account","client_email":"a@b","private_key":"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n","token_uri":"https://t/token"}"#,
        ] {
            let err = Auth::service_account(json).err().expect(json);
            assert!(err.contains("`service_account_json`"), "{err}");
        }
    }
}
