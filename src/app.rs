//! The worker's behaviour as plain values: routing, CORS, the token, JWKS, health and upload
//! endpoints. An incoming request and the current time go in; a response and one log record
//! come out. Upstream I/O goes through [`Transport`] and signing through [`TokenSigner`], so the
//! whole flow runs natively in tests with fakes, and in workerd with `Fetch` and WebCrypto.

use std::cell::RefCell;

use serde::Serialize;
use serde_json::{json, Value};

use crate::config::{Config, Problem};
use crate::error::{self, ApiError};
use crate::http::{HttpResponse, Transport};
use crate::session::{self, Session, SessionError, SignatureVerifier, Step, Verifier};
use crate::token::{self, TokenSigner};
use crate::upload;

/// A request as the worker received it.
#[derive(Debug, Clone, Default)]
pub struct IncomingRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl IncomingRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        crate::http::header_value(&self.headers, name)
    }
}

/// What one request did, for the structured log line. Holds no token, key or row data.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RequestLog {
    pub route: &'static str,
    pub method: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
    /// Why it failed (the reason behind a fixed public message).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Upload outcome counts and subrequests, for upload requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload: Option<Value>,
}

/// One isolate's worth of state: the parsed configuration and the session verifier (JWKS cache).
pub struct App {
    pub config: Config,
    verifier: Option<RefCell<Verifier>>,
}

const TOKEN_PATH: &str = "/powersync-token";
const UPLOAD_PATH: &str = "/powersync-upload";
const JWKS_PATH: &str = "/.well-known/jwks.json";
const HEALTH_PATH: &str = "/health";

impl App {
    pub fn new(config: Config) -> App {
        let verifier = config.session.as_ref().ok().map(|s| RefCell::new(Verifier::new(s.clone())));
        App { config, verifier }
    }

    /// Handles one request at time `now` (Unix seconds).
    pub async fn handle<T: Transport, C: TokenSigner + SignatureVerifier>(
        &self,
        request: &IncomingRequest,
        transport: &T,
        crypto: &C,
        now: u64,
        request_id: &str,
    ) -> (HttpResponse, RequestLog) {
        let mut log = RequestLog { method: request.method.clone(), ..RequestLog::default() };
        let method = request.method.to_ascii_uppercase();
        let result = match (request.path.as_str(), method.as_str()) {
            (_, "OPTIONS") => {
                log.route = "preflight";
                Ok(HttpResponse { status: 204, headers: self.preflight_headers(request), body: String::new() })
            }
            (TOKEN_PATH, "GET" | "POST") => {
                log.route = "token";
                self.token(request, transport, crypto, now).await
            }
            (UPLOAD_PATH, "POST") => {
                log.route = "upload";
                self.upload(request, transport, crypto, now, &mut log).await
            }
            (JWKS_PATH, "GET" | "HEAD") => {
                log.route = "jwks";
                self.jwks()
            }
            (HEALTH_PATH, "GET" | "HEAD") => {
                log.route = "health";
                Ok(self.health())
            }
            (TOKEN_PATH, _) => Err(ApiError::MethodNotAllowed { allow: "GET, POST, OPTIONS" }),
            (UPLOAD_PATH, _) => Err(ApiError::MethodNotAllowed { allow: "POST, OPTIONS" }),
            (JWKS_PATH | HEALTH_PATH, _) => Err(ApiError::MethodNotAllowed { allow: "GET, HEAD, OPTIONS" }),
            _ => Err(ApiError::NotFound),
        };
        let mut response = match result {
            Ok(response) => response,
            Err(e) => {
                log.code = Some(e.code());
                log.detail = e.log_detail();
                let mut response = json_response(e.status(), &e.body(request_id));
                if let ApiError::MethodNotAllowed { allow } = e {
                    response.headers.push(("Allow".into(), allow.into()));
                }
                if e.status() == 503 {
                    response.headers.push(("Retry-After".into(), "5".into()));
                }
                response
            }
        };
        if log.route.is_empty() {
            log.route = "other";
        }
        log.status = response.status;
        response.headers.push(("X-Request-Id".into(), request_id.into()));
        if let Some(origin) = self.config.cors.allow_origin(request.header("Origin")) {
            if origin != "*" {
                response.headers.push(("Vary".into(), "Origin".into()));
            }
            response.headers.push(("Access-Control-Allow-Origin".into(), origin));
            response.headers.push(("Access-Control-Expose-Headers".into(), "X-Request-Id, Retry-After".into()));
        }
        (response, log)
    }

    fn preflight_headers(&self, request: &IncomingRequest) -> Vec<(String, String)> {
        let mut headers = vec![
            ("Access-Control-Allow-Methods".to_string(), "GET, POST, OPTIONS".to_string()),
            (
                "Access-Control-Allow-Headers".to_string(),
                request.header("Access-Control-Request-Headers").unwrap_or("authorization, content-type, apikey, x-client-info").to_string(),
            ),
            ("Access-Control-Max-Age".to_string(), "86400".to_string()),
        ];
        if self.config.cors.allow_origin(request.header("Origin")).is_none() {
            headers.clear();
        }
        headers
    }

    /// Verifies the caller's Supabase session (fetching the JWKS or asking Auth when needed).
    pub async fn session<T: Transport, V: SignatureVerifier>(
        &self,
        request: &IncomingRequest,
        transport: &T,
        signatures: &V,
        now: u64,
    ) -> Result<Session, ApiError> {
        let token = bearer(request.header("Authorization")).ok_or(ApiError::MissingAuthorization)?;
        let verifier = match (&self.verifier, &self.config.session) {
            (Some(verifier), _) => verifier,
            (None, Err(problems)) => return Err(ApiError::SessionNotConfigured(names(problems))),
            (None, Ok(_)) => return Err(ApiError::SessionNotConfigured(vec![])),
        };
        // Never hold the cache borrowed across an await.
        let step = verifier.borrow_mut().plan(token, now);
        if let Step::FetchJwks(fetch) = step {
            let answer = transport.send(fetch).await;
            verifier.borrow_mut().accept_jwks(answer, now);
        }
        let pending = verifier.borrow().begin(token, now)?;
        if let Some(check) = &pending.signature {
            if !signatures.verify(check).await? {
                return Err(SessionError::BadSignature.into());
            }
        }
        let session = verifier.borrow().finish(pending, now)?;
        let remote = verifier.borrow().remote_check_request(token);
        if let Some(check) = remote {
            session::interpret_remote_check(transport.send(check).await)?;
        }
        Ok(session)
    }

    async fn token<T: Transport, C: TokenSigner + SignatureVerifier>(
        &self,
        request: &IncomingRequest,
        transport: &T,
        crypto: &C,
        now: u64,
    ) -> Result<HttpResponse, ApiError> {
        // The header check comes first, as in the Edge Function.
        bearer(request.header("Authorization")).ok_or(ApiError::MissingAuthorization)?;
        let powersync = self.config.powersync.as_ref().map_err(|p| ApiError::PowerSync(p.clone()))?;
        let session = self.session(request, transport, crypto, now).await?;
        let unsigned = token::unsigned(&powersync.token, &session, now);
        let signature = crypto.sign(&powersync.key, unsigned.signing_input.as_bytes()).await.map_err(ApiError::Signing)?;
        let body = token::issued(&powersync.token, unsigned, &signature);
        let mut response = json_response(200, &json!(body));
        response.headers.push(("Cache-Control".into(), "no-store".into()));
        Ok(response)
    }

    fn jwks(&self) -> Result<HttpResponse, ApiError> {
        let powersync = self.config.powersync.as_ref().map_err(|p| ApiError::PowerSync(p.clone()))?;
        let mut response = json_response(200, &json!({ "keys": powersync.jwks }));
        // PowerSync keeps a JWKS 5 minutes; rotation waits for that anyway.
        response.headers.push(("Cache-Control".into(), "public, max-age=300".into()));
        Ok(response)
    }

    fn health(&self) -> HttpResponse {
        let part = |problems: Vec<&Problem>| {
            json!({ "configured": problems.is_empty(), "problems": problems.iter().map(|p| json!({"name": p.name, "message": p.message})).collect::<Vec<_>>() })
        };
        let of = |prefixes: &[&str]| -> Vec<&Problem> {
            self.config.problems.iter().filter(|p| prefixes.iter().any(|x| p.name.starts_with(x))).collect()
        };
        let session_problems: Vec<&Problem> = match &self.config.session {
            Ok(_) => vec![],
            Err(problems) => problems.iter().collect(),
        };
        let upload_problems: Vec<&Problem> = match &self.config.upload {
            Ok(_) => vec![],
            Err(problems) => problems.iter().collect(),
        };
        let token_ready = self.config.session.is_ok() && self.config.powersync.is_ok();
        let body = json!({
            "status": if token_ready { "ok" } else { "degraded" },
            "version": env!("CARGO_PKG_VERSION"),
            "session": part(session_problems),
            "powersync": part(of(&["POWERSYNC_"])),
            "upload": part(upload_problems),
        });
        let mut response = json_response(if token_ready { 200 } else { 503 }, &body);
        response.headers.push(("Cache-Control".into(), "no-store".into()));
        response
    }

    async fn upload<T: Transport, V: SignatureVerifier>(
        &self,
        request: &IncomingRequest,
        transport: &T,
        signatures: &V,
        now: u64,
        log: &mut RequestLog,
    ) -> Result<HttpResponse, ApiError> {
        let session = self.session(request, transport, signatures, now).await?;
        let settings = self.config.upload.as_ref().map_err(|problems| ApiError::UploadNotConfigured(names(problems)))?;
        let transactions = upload::crud::parse(&request.body, &settings.limits).map_err(|e| match e {
            upload::crud::CrudError::Malformed { path, message } => ApiError::BadRequest { path, message },
            upload::crud::CrudError::TooLarge { message } => ApiError::PayloadTooLarge(message),
        })?;
        let caller = upload::Caller { user_id: session.user_id.clone(), access_token: session.token.clone() };
        let report = upload::apply(&transactions, settings, &caller, transport).await;
        let needs_retry = report.needs_retry();
        log.upload = Some(report.log_summary());
        let mut response = json_response(error::upload_status(needs_retry), &report.body());
        if needs_retry {
            response.headers.push(("Retry-After".into(), report.retry_after_seconds.to_string()));
        }
        Ok(response)
    }
}

/// The token from `Authorization: Bearer <token>` (scheme case-insensitive; a bare token is
/// accepted, as the Edge Function did). `None` when absent or blank.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let value = header?.trim();
    let token = match value.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ if value.eq_ignore_ascii_case("bearer") => "",
        _ => value,
    };
    (!token.is_empty()).then_some(token)
}

fn names(problems: &[Problem]) -> Vec<String> {
    problems.iter().map(|p| p.name.clone()).collect()
}

fn json_response(status: u16, body: &Value) -> HttpResponse {
    HttpResponse {
        status,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: body.to_string(),
    }
}
