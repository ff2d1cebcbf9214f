//! A fake of the cloud platforms' credential sources on a loopback address,
//! for the credentials broker's tests: the EC2 instance metadata service
//! (IMDSv2 only: a request without a valid session token is refused with
//! 401), an ECS container credentials endpoint (checks its authorization
//! token), STS `AssumeRoleWithWebIdentity`, and the GCE metadata server's
//! token endpoint (refuses a request without `Metadata-Flavor: Google`).
//!
//! Every credential it issues is new (`ASIAFAKE0001`, `session-1`,
//! `gce-token-1`, ...) and expires after the configured lifetime, so tests
//! see rotation. It can be switched to answer 404s, garbage or 503s.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::AsyncWriteExt;

use super::servers::{read_body, read_head};

/// How the fake answers credential requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Issue new credentials.
    Serve,
    /// 404 for every credentials path (an instance without a role).
    NotFound,
    /// 200 with a body that is not credentials.
    Garbage,
    /// 503 (the source is down for a moment).
    Unavailable,
}

/// What the fake saw and how it behaves.
#[derive(Debug)]
pub struct State {
    /// Lifetime of issued credentials.
    pub lifetime: Duration,
    /// How it answers.
    pub mode: Mode,
    /// Credentials issued so far.
    pub issued: usize,
    /// Requests refused for a missing or wrong IMDS token, `Metadata-Flavor` or ECS authorization.
    pub refused: usize,
    /// `METHOD path` of every request.
    pub requests: Vec<String>,
    /// When set, the ECS endpoint wants this `Authorization`.
    pub ecs_authorization: Option<String>,
    /// When set, every issued AWS credential has this access key id and
    /// secret (a server that verifies signatures knows only them); the
    /// session token still changes each time.
    pub fixed_keys: Option<(String, String)>,
    /// The web identity tokens STS was given, in order.
    pub web_identity_tokens: Vec<String>,
    /// IMDSv2 session tokens handed out.
    imds_tokens: Vec<String>,
}

/// The fake, serving until dropped.
pub struct FakeMetadata {
    /// Its address.
    pub addr: SocketAddr,
    /// Shared state.
    pub state: Arc<Mutex<State>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FakeMetadata {
    /// Starts the fake on `ip` (a loopback address), issuing credentials that live `lifetime`.
    pub fn start(ip: IpAddr, lifetime: Duration) -> FakeMetadata {
        let state = Arc::new(Mutex::new(State {
            lifetime,
            mode: Mode::Serve,
            issued: 0,
            refused: 0,
            requests: Vec::new(),
            ecs_authorization: None,
            fixed_keys: None,
            web_identity_tokens: Vec::new(),
            imds_tokens: Vec::new(),
        }));
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = state.clone();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                let state = shared.clone();
                tokio::spawn(async move {
                    let _ = serve(client, &state).await;
                });
            }
        });
        FakeMetadata { addr, state, runtime: Some(runtime) }
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Changes how it answers.
    pub fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().mode = mode;
    }

    /// Credentials issued so far.
    pub fn issued(&self) -> usize {
        self.state.lock().unwrap().issued
    }

    /// Requests refused for a missing token or header.
    pub fn refused(&self) -> usize {
        self.state.lock().unwrap().refused
    }

    /// Requests seen so far.
    pub fn requests(&self) -> usize {
        self.state.lock().unwrap().requests.len()
    }
}

impl Drop for FakeMetadata {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The access key id of the `n`th credential the fake issues.
pub fn key_id(n: usize) -> String {
    format!("ASIAFAKE{n:04}")
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` of a time.
pub fn rfc3339(time: SystemTime) -> String {
    let ms = time.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    let (days, rest) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3_600_000,
        rest / 60_000 % 60,
        rest / 1000 % 60,
        rest % 1000
    )
}

async fn serve(mut client: tokio::net::TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let Some(head) = read_head(&mut client, &mut buf).await? else { return Ok(()) };
    read_body(&mut client, &mut buf, head.end + head.length).await?;
    let body = String::from_utf8_lossy(&buf[head.end..head.end + head.length]).into_owned();
    let header = |name: &str| head.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let (status, content_type, answer) = {
        let mut s = state.lock().unwrap();
        s.requests.push(format!("{} {}", head.method, head.target));
        answer(&mut s, &head.method, &head.target, &header, &body)
    };
    let response = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
        answer.len()
    );
    client.write_all(response.as_bytes()).await?;
    client.shutdown().await
}

const ROLE: &str = "blockferry-test-role";
const IMDS_CREDENTIALS: &str = "/latest/meta-data/iam/security-credentials/";
const GCE_TOKEN: &str = "/computeMetadata/v1/instance/service-accounts/default/token";
/// The path of the fake's ECS container credentials endpoint.
pub const ECS_PATH: &str = "/v2/credentials/blockferry-task";
/// The path of the fake's STS endpoint.
pub const STS_PATH: &str = "/sts/";

fn answer(
    s: &mut State,
    method: &str,
    target: &str,
    header: &dyn Fn(&str) -> Option<String>,
    body: &str,
) -> (u16, &'static str, String) {
    let json = "application/json";
    if method == "PUT" && target == "/latest/api/token" {
        if header("x-aws-ec2-metadata-token-ttl-seconds").is_none() {
            s.refused += 1;
            return (400, "text/plain", "missing x-aws-ec2-metadata-token-ttl-seconds".into());
        }
        let token = format!("imds-session-{}", s.imds_tokens.len() + 1);
        s.imds_tokens.push(token.clone());
        return (200, "text/plain", token);
    }
    if target.starts_with("/latest/") && !header("x-aws-ec2-metadata-token").is_some_and(|t| s.imds_tokens.contains(&t))
    {
        s.refused += 1;
        return (401, "text/plain", "IMDSv2 session token required".into());
    }
    let credentials_path = target.starts_with(IMDS_CREDENTIALS)
        || target == ECS_PATH
        || target == GCE_TOKEN
        || (method == "POST" && target == STS_PATH);
    if !credentials_path {
        return (404, "text/plain", "not found".into());
    }
    if target == GCE_TOKEN && header("metadata-flavor").as_deref() != Some("Google") {
        s.refused += 1;
        return (403, "text/plain", "Missing required header: Metadata-Flavor".into());
    }
    if target == ECS_PATH && s.ecs_authorization.is_some() && header("authorization") != s.ecs_authorization {
        s.refused += 1;
        return (401, json, r#"{"code":"AccessDeniedException","message":"bad authorization token"}"#.into());
    }
    match s.mode {
        Mode::Serve => {}
        Mode::NotFound => return (404, "text/plain", "Not Found".into()),
        Mode::Garbage => return (200, "text/html", "<html><body>captive portal</body></html>".into()),
        Mode::Unavailable => return (503, "text/plain", "try again".into()),
    }
    if target == IMDS_CREDENTIALS {
        return (200, "text/plain", format!("{ROLE}\n"));
    }
    if target.starts_with(IMDS_CREDENTIALS) && target != format!("{IMDS_CREDENTIALS}{ROLE}") {
        return (404, "text/plain", "no such role".into());
    }
    s.issued += 1;
    let n = s.issued;
    let expires = SystemTime::now() + s.lifetime;
    let (id, secret) = s.fixed_keys.clone().unwrap_or_else(|| (key_id(n), format!("fake-secret-{n}")));
    if target == GCE_TOKEN {
        let body = format!(
            r#"{{"access_token":"gce-token-{n}","expires_in":{},"token_type":"Bearer"}}"#,
            s.lifetime.as_secs().max(1)
        );
        return (200, json, body);
    }
    if target == STS_PATH {
        let form: Vec<(String, String)> = body
            .split('&')
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.to_string(), percent_decode(v)))
            .collect();
        let field = |k: &str| form.iter().find(|(name, _)| name == k).map(|(_, v)| v.clone()).unwrap_or_default();
        if field("Action") != "AssumeRoleWithWebIdentity" || field("RoleArn").is_empty() {
            return (
                400,
                "text/xml",
                "<ErrorResponse><Error><Code>InvalidAction</Code></Error></ErrorResponse>".into(),
            );
        }
        if field("WebIdentityToken").is_empty() {
            s.issued -= 1;
            return (
                400,
                "text/xml",
                "<ErrorResponse><Error><Code>InvalidIdentityToken</Code><Message>no token</Message></Error></ErrorResponse>"
                    .into(),
            );
        }
        s.web_identity_tokens.push(field("WebIdentityToken"));
        let xml = format!(
            "<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
             <AssumeRoleWithWebIdentityResult><Credentials><AccessKeyId>{id}</AccessKeyId>\
             <SecretAccessKey>{secret}</SecretAccessKey><SessionToken>session-{n}</SessionToken>\
             <Expiration>{}</Expiration></Credentials></AssumeRoleWithWebIdentityResult>\
             </AssumeRoleWithWebIdentityResponse>",
            rfc3339(expires)
        );
        return (200, "text/xml", xml);
    }
    let body = format!(
        r#"{{"Code":"Success","LastUpdated":"{}","Type":"AWS-HMAC","AccessKeyId":"{id}","SecretAccessKey":"{secret}","Token":"session-{n}","Expiration":"{}"}}"#,
        rfc3339(SystemTime::now()),
        rfc3339(expires)
    );
    (200, json, body)
}

/// Decodes `%XX` and `+` of a form value.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() && u8::from_str_radix(&value[i + 1..i + 3], 16).is_ok() => {
                out.push(u8::from_str_radix(&value[i + 1..i + 3], 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn rfc3339_writes_utc_times() {
    assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_millis(1_796_205_600_250)), "2026-12-02T10:00:00.250Z");
    assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_401)), "2000-02-29T00:00:01.000Z");
}
