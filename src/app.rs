//! The worker's behaviour as plain values: routing, CORS, the token, JWKS, health and upload
//! endpoints. An incoming request and the current time go in; a response and one log record
//! come out. Upstream I/O goes through [`Transport`] and signing through [`TokenSigner`], so the
//! whole flow runs natively in tests with fakes, and in workerd with `Fetch` and WebCrypto.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;

use serde::Serialize;
use serde_json::{json, Value};

use crate::config::{Config, Problem};
use crate::error::{self, ApiError};
use crate::http::{send_resending_once, HttpResponse, Resume, Transport};
use crate::metrics;
use crate::session::{self, KeySet, Session, SessionError, SignatureVerifier, Step, Verifier};
use crate::storage::{self, FileOp};
use crate::token::{self, TokenSigner};
use crate::upload;

/// A request as the worker received it, without its body: the body is a [`RequestBody`] passed
/// beside it, read only by the route that needs it (uploads, after the session is verified).
#[derive(Debug, Clone, Default)]
pub struct IncomingRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl IncomingRequest {
    /// From the request's head as the adapter reads it in one call: `method\nurl\n`, then
    /// `name\nvalue\n` per header (none of these can hold a line feed). The path is the URL's
    /// serialized path, without query or fragment, percent-encoding kept.
    pub fn from_head(head: &str) -> IncomingRequest {
        let mut lines = head.split('\n');
        let method = lines.next().unwrap_or_default().to_string();
        let path = crate::http::url_path(lines.next().unwrap_or_default()).to_string();
        IncomingRequest { method, path, headers: crate::http::read_head_lines(lines) }
    }
}

/// Why a request body was not read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// More than the limit arrived (or was declared); reading stopped there.
    TooLarge { limit: usize },
    /// The body could not be read (the client went away, a broken chunked encoding...).
    Unreadable(String),
}

/// A request body that has not been read yet. The adapter reads the platform's stream chunk by
/// chunk and stops as soon as more than `limit` bytes arrived, so a body over the limit is never
/// buffered whole, whether or not it declared a `Content-Length`.
pub trait RequestBody {
    fn read(self, limit: usize) -> impl Future<Output = Result<Vec<u8>, BodyError>>;
}

/// A body already in memory (tests, and anything that has the bytes).
impl RequestBody for Vec<u8> {
    fn read(self, limit: usize) -> impl Future<Output = Result<Vec<u8>, BodyError>> {
        std::future::ready(if self.len() > limit { Err(BodyError::TooLarge { limit }) } else { Ok(self) })
    }
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
    /// Who issued the verified session: `supabase`, or a third-party provider (`firebase`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<&'static str>,
    /// The verified session token's `alg` (HS256, ES256, RS256).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_alg: Option<&'static str>,
    /// The PowerSync token's `alg` (RS256, ES256, EdDSA), for issued tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_alg: Option<&'static str>,
    /// The verified user, as [`metrics::user_hash`] (never the raw id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Upload outcome counts and subrequests, for upload requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload: Option<Value>,
    /// File requests: operation, file count, files done, declared bytes, buckets (never paths).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<Value>,
    /// The client's upload queue as it reported it ([`metrics::QUEUE_HEADER`]), for uploads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<metrics::QueueReport>,
    /// Set by the adapter: the request id it answered with (`cf-ray` when present).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub request_id: String,
    /// Set by the adapter: wall time from the request's arrival to its answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Set by the adapter when the Analytics Engine dataset refused the data point.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_error: Option<String>,
}

/// One isolate's worth of state: the parsed configuration, the session verifier (JWKS cache)
/// and what the isolate knows about the atomic function (`UPLOAD_ATOMIC` unset).
pub struct App {
    pub config: Config,
    verifier: Option<RefCell<Verifier>>,
    atomic_function: RefCell<upload::AtomicFunction>,
    /// Requests waiting for another request's key fetch (single flight), by key cache.
    waiting: RefCell<Vec<(KeySet, Resume)>>,
    /// The `/health` answer: it depends only on the configuration, so it is built once.
    health: HttpResponse,
}

const TOKEN_PATH: &str = "/powersync-token";
const UPLOAD_PATH: &str = "/powersync-upload";
const JWKS_PATH: &str = "/.well-known/jwks.json";
const HEALTH_PATH: &str = "/health";
const FILES_UPLOAD_PATH: &str = "/powersync-files/upload";
const FILES_DOWNLOAD_PATH: &str = "/powersync-files/download";
const FILES_DELETE_PATH: &str = "/powersync-files/delete";

impl App {
    pub fn new(config: Config) -> App {
        let verifier = config.session.as_ref().ok().map(|s| RefCell::new(Verifier::new(s.clone())));
        let health = health(&config);
        App {
            config,
            verifier,
            atomic_function: RefCell::new(upload::AtomicFunction::default()),
            waiting: RefCell::default(),
            health,
        }
    }

    /// The largest body worth reading: the upload limit (`UPLOAD_MAX_BODY_BYTES`, default 5 MiB).
    /// A request declaring more is answered 413 without its body being read.
    pub fn body_limit(&self) -> u64 {
        let limits = self.config.upload.as_ref().map(|settings| settings.limits).unwrap_or_default();
        limits.max_body_bytes as u64
    }

    /// Handles one request at time `now` (Unix seconds). `body` is read only by the upload and
    /// file routes, after the session is verified; every other route drops it unread.
    #[allow(clippy::too_many_arguments)]
    pub async fn handle<B: RequestBody, T: Transport, C: TokenSigner + SignatureVerifier>(
        &self,
        request: &IncomingRequest,
        body: B,
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
                separately(self.token(request, transport, crypto, now, &mut log)).await
            }
            (UPLOAD_PATH, "POST") => {
                log.route = "upload";
                separately(self.upload(request, body, transport, crypto, now, &mut log)).await
            }
            (FILES_UPLOAD_PATH | FILES_DOWNLOAD_PATH | FILES_DELETE_PATH, "POST") => {
                let op = match request.path.as_str() {
                    FILES_UPLOAD_PATH => FileOp::Upload,
                    FILES_DOWNLOAD_PATH => FileOp::Download,
                    _ => FileOp::Delete,
                };
                log.route = match op {
                    FileOp::Upload => "files_upload",
                    FileOp::Download => "files_download",
                    FileOp::Delete => "files_delete",
                };
                separately(self.files(op, request, body, transport, crypto, now, &mut log)).await
            }
            (JWKS_PATH, "GET" | "HEAD") => {
                log.route = "jwks";
                self.jwks()
            }
            (HEALTH_PATH, "GET" | "HEAD") => {
                log.route = "health";
                Ok(self.health.clone())
            }
            (TOKEN_PATH, _) => Err(ApiError::MethodNotAllowed { allow: "GET, POST, OPTIONS" }),
            (UPLOAD_PATH | FILES_UPLOAD_PATH | FILES_DOWNLOAD_PATH | FILES_DELETE_PATH, _) => {
                Err(ApiError::MethodNotAllowed { allow: "POST, OPTIONS" })
            }
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
        // With an allow-list the answer depends on Origin, allowed or not: a cache (the JWKS is
        // `public, max-age=300`) must not serve one origin's copy to another.
        if !self.config.cors.allows_any() {
            response.headers.push(("Vary".into(), "Origin".into()));
        }
        if let Some(origin) = self.config.cors.allow_origin(request.header("Origin")) {
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
                request
                    .header("Access-Control-Request-Headers")
                    .unwrap_or("authorization, content-type, apikey, x-client-info")
                    .to_string(),
            ),
            ("Access-Control-Max-Age".to_string(), "86400".to_string()),
        ];
        if self.config.cors.allow_origin(request.header("Origin")).is_none() {
            headers.clear();
        }
        headers
    }

    /// Verifies the caller's Supabase session (fetching the JWKS or asking Auth when needed) and
    /// records who it is in `log`, for every route alike.
    pub async fn session<T: Transport, V: SignatureVerifier>(
        &self,
        request: &IncomingRequest,
        transport: &T,
        signatures: &V,
        now: u64,
        log: &mut RequestLog,
    ) -> Result<Session, ApiError> {
        let token = bearer(request.header("Authorization")).ok_or(ApiError::MissingAuthorization)?;
        let verifier = match (&self.verifier, &self.config.session) {
            (Some(verifier), _) => verifier,
            (None, Err(problems)) => return Err(ApiError::SessionNotConfigured(names(problems))),
            (None, Ok(_)) => return Err(ApiError::SessionNotConfigured(vec![])),
        };
        // Never hold the cache borrowed across an await.
        let mut step = verifier.borrow_mut().plan(token, now);
        // Single flight: while another request fetches these keys, wait for it.
        while let Step::Wait { keys, .. } = step {
            let (pause, resume) = transport.pause(self.longest_key_fetch());
            self.waiting.borrow_mut().push((keys, resume));
            let resumed = pause.await;
            step = verifier.borrow_mut().after_wait(token, now, &step, resumed);
        }
        if step.request().is_some() {
            let flight = Flight { app: self, verifier, step: &step, ended: false };
            // At most two fetches: a third-party issuer's discovery document, then its JWKS.
            let mut next = step.clone();
            while let Some(fetch) = next.request().cloned() {
                // A connection lost before any answer is tried again at once (see `http`).
                let (answer, _) = send_resending_once(transport, &fetch, true).await;
                next = verifier.borrow_mut().accept(&next, answer, now);
            }
            flight.end();
        }
        let pending = verifier.borrow().begin(token, now).map_err(|e| verifier.borrow().explain(token, &step, e))?;
        if let Some(check) = &pending.signature {
            if !signatures.verify(check).await? {
                return Err(SessionError::BadSignature.into());
            }
        }
        let session = verifier.borrow().finish(pending, now)?;
        let remote = verifier.borrow().remote_check_request(token);
        if let Some(check) = remote {
            session::interpret_remote_check(send_resending_once(transport, &check, true).await.0)?;
        }
        self.note_session(&session, log);
        Ok(session)
    }

    /// Records who the verified session is, for the log line and metrics (no token, no raw id).
    fn note_session(&self, session: &Session, log: &mut RequestLog) {
        if let Some(verifier) = &self.verifier {
            let (issuer, alg) = verifier.borrow().describe(&session.token);
            log.issuer = Some(issuer);
            log.session_alg = Some(alg);
        }
        log.user = Some(metrics::user_hash(&session.user_id));
    }

    /// How long a request waits for another's key fetch before taking it over: a discovery
    /// document and a key set, each within `UPSTREAM_TIMEOUT_MS`.
    fn longest_key_fetch(&self) -> std::time::Duration {
        std::time::Duration::from_millis(2 * self.config.upstream_timeout_ms)
    }

    /// Resumes every request waiting for a fetch of `keys`.
    fn resume_waiting(&self, keys: Option<KeySet>) {
        let resumes: Vec<Resume> = {
            let mut waiting = self.waiting.borrow_mut();
            let (done, rest) = std::mem::take(&mut *waiting).into_iter().partition(|(k, _)| Some(*k) == keys);
            *waiting = rest;
            done.into_iter().map(|(_, resume)| resume).collect()
        };
        for resume in resumes {
            resume();
        }
    }

    async fn token<T: Transport, C: TokenSigner + SignatureVerifier>(
        &self,
        request: &IncomingRequest,
        transport: &T,
        crypto: &C,
        now: u64,
        log: &mut RequestLog,
    ) -> Result<HttpResponse, ApiError> {
        // The header check comes first, as in the Edge Function.
        bearer(request.header("Authorization")).ok_or(ApiError::MissingAuthorization)?;
        let powersync = self.config.powersync.as_ref().map_err(|p| ApiError::PowerSync(p.clone()))?;
        let session = self.session(request, transport, crypto, now, log).await?;
        log.signing_alg = Some(powersync.key.alg());
        let unsigned = token::unsigned(&powersync.token, &session, now);
        let signature =
            crypto.sign(&powersync.key, unsigned.signing_input.as_bytes()).await.map_err(ApiError::Signing)?;
        let body = token::issued(&powersync.token, unsigned, &signature);
        let mut response = json_response(200, &json!(body));
        response.headers.push(("Cache-Control".into(), "no-store".into()));
        Ok(response)
    }

    fn jwks(&self) -> Result<HttpResponse, ApiError> {
        let powersync = self.config.powersync.as_ref().map_err(|p| ApiError::PowerSync(p.clone()))?;
        let mut response = json_response(200, &json!({ "keys": powersync.jwks }));
        // PowerSync fetches a JWKS again every 5 minutes; a rotation publishes the next key first
        // (docs/operations.md, Key rotation).
        response.headers.push(("Cache-Control".into(), "public, max-age=300".into()));
        Ok(response)
    }

    async fn upload<B: RequestBody, T: Transport, V: SignatureVerifier>(
        &self,
        request: &IncomingRequest,
        body: B,
        transport: &T,
        signatures: &V,
        now: u64,
        log: &mut RequestLog,
    ) -> Result<HttpResponse, ApiError> {
        let session = self.session(request, transport, signatures, now, log).await?;
        // Only a verified caller's report counts: nobody else can skew the queue figures.
        log.queue = metrics::queue_report(request.header(metrics::QUEUE_HEADER));
        let settings =
            self.config.upload.as_ref().map_err(|problems| ApiError::UploadNotConfigured(names(problems)))?;
        if !settings.admits(&session.claims) {
            return Err(ApiError::AnonymousNotAllowed);
        }
        // Only now, with the session verified, is the body read; over the limit, reading stops.
        let bytes = read_body(request, body, settings.limits.max_body_bytes).await?;
        let upload::Upload { client_id, transactions } =
            upload::crud::parse_upload(&bytes, &settings.limits).map_err(|e| match e {
                upload::crud::CrudError::Malformed { path, message } => ApiError::BadRequest { path, message },
                upload::crud::CrudError::TooLarge { message } => ApiError::PayloadTooLarge(message),
            })?;
        let role = session.claims.get("role").and_then(Value::as_str).map(str::to_string);
        let caller =
            upload::Caller { user_id: session.user_id.clone(), access_token: session.token.clone(), client_id, role };
        let route = self.atomic_function.borrow().route(settings.atomic, now);
        let report = upload::apply_with(&transactions, settings, &caller, transport, route).await;
        self.atomic_function.borrow_mut().learn(report.atomic_function, now, settings.atomic_recheck_seconds);
        let needs_retry = report.needs_retry();
        let mut summary = report.log_summary();
        summary["transactions"] = transactions.len().into();
        summary["entries"] = transactions.iter().map(|t| t.entries.len()).sum::<usize>().into();
        summary["write_mode"] = settings.mode.name().into();
        summary["atomic"] = match route {
            upload::Route::Atomic => true,
            upload::Route::Probe => report.atomic_function == Some(true),
            upload::Route::Rest => false,
        }
        .into();
        log.upload = Some(summary);
        let mut response = json_response(error::upload_status(needs_retry), &report.body());
        if needs_retry {
            response.headers.push(("Retry-After".into(), report.retry_after_seconds.to_string()));
        }
        Ok(response)
    }
}

impl App {
    /// The file endpoints: session, then every check on every file, then one Storage request per
    /// file, in order. The first refusal or failure answers the whole request (files signed
    /// before it are merely unused URLs; deletes are idempotent, so the request can be repeated).
    #[allow(clippy::too_many_arguments)]
    async fn files<B: RequestBody, T: Transport, V: SignatureVerifier>(
        &self,
        op: FileOp,
        request: &IncomingRequest,
        body: B,
        transport: &T,
        signatures: &V,
        now: u64,
        log: &mut RequestLog,
    ) -> Result<HttpResponse, ApiError> {
        let session = self.session(request, transport, signatures, now, log).await?;
        let settings =
            self.config.storage.as_ref().map_err(|problems| ApiError::StorageNotConfigured(names(problems)))?;
        if !settings.admits(&session.claims) {
            return Err(ApiError::AnonymousNotAllowed);
        }
        let bytes = read_body(request, body, storage::MAX_BODY_BYTES).await?;
        let files = storage::parse_request(op, &bytes).map_err(ApiError::File)?;
        log.files = Some(storage::log_summary(&files, 0));
        storage::check(&files, settings, &session.user_id).map_err(ApiError::File)?;
        let mut results = Vec::with_capacity(files.files.len());
        let mut buckets_asked = Vec::new();
        for (index, file) in files.files.iter().enumerate() {
            let planned = storage::plan(&files, file, settings, &session.token);
            // Signing, deleting and reading a bucket are idempotent: a connection lost before
            // any answer is retried.
            let (answer, _) = send_resending_once(transport, &planned, true).await;
            let mut result = storage::interpret(&files, file, index, settings, answer);
            if storage::says_no_such_object(&result) && !buckets_asked.contains(&file.bucket) {
                if let Some(asked) = storage::bucket_request(file, settings) {
                    let (answer, _) = send_resending_once(transport, &asked, true).await;
                    result = storage::bucket_exists(answer).and(result);
                    buckets_asked.push(file.bucket.clone());
                }
            }
            log.files = Some(storage::log_summary(&files, results.len()));
            results.push(result.map_err(ApiError::File)?);
        }
        log.files = Some(storage::log_summary(&files, results.len()));
        let mut response = json_response(200, &storage::answer_body(&files, &results));
        response.headers.push(("Cache-Control".into(), "no-store".into()));
        Ok(response)
    }
}

/// A key fetch under way for one request (single flight): when it ends, the requests waiting for
/// it are resumed; when it is dropped unfinished (its request went away), it is given up first,
/// so one of them fetches instead.
struct Flight<'a> {
    app: &'a App,
    verifier: &'a RefCell<Verifier>,
    step: &'a Step,
    ended: bool,
}

impl Flight<'_> {
    fn end(mut self) {
        self.ended = true;
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        if !self.ended {
            if let Ok(mut verifier) = self.verifier.try_borrow_mut() {
                verifier.abandon(self.step);
            }
        }
        self.app.resume_waiting(self.step.keys());
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

/// A route's future behind a pointer and awaited through its vtable, so that its state machine
/// stays a wasm function of its own instead of being inlined into [`App::handle`]'s. V8 compiles
/// each wasm function whole on its first call, so a fresh isolate then compiles only the routes
/// it serves: inlined, every route's code was compiled by the first request of any route
/// (`/health` included). docs/performance.md, "Cold start".
fn separately<'a, T>(route: impl Future<Output = T> + 'a) -> Pin<Box<dyn Future<Output = T> + 'a>> {
    Box::pin(route)
}

fn names(problems: &[Problem]) -> Vec<String> {
    problems.iter().map(|p| p.name.clone()).collect()
}

/// The `/health` answer for a configuration: what is configured, and every problem found.
fn health(config: &Config) -> HttpResponse {
    let part = |problems: Vec<&Problem>| json!({ "configured": problems.is_empty(), "problems": problems.iter().map(|p| json!({"name": p.name, "message": p.message})).collect::<Vec<_>>() });
    let of = |prefixes: &[&str]| -> Vec<&Problem> {
        config.problems.iter().filter(|p| prefixes.iter().any(|x| p.name.starts_with(x))).collect()
    };
    let session_problems: Vec<&Problem> = match &config.session {
        Ok(_) => vec![],
        Err(problems) => problems.iter().collect(),
    };
    let upload_problems: Vec<&Problem> = match &config.upload {
        Ok(_) => vec![],
        Err(problems) => problems.iter().collect(),
    };
    let storage_problems: Vec<&Problem> = match &config.storage {
        Ok(_) => vec![],
        Err(problems) => problems.iter().collect(),
    };
    let token_ready = config.session.is_ok() && config.powersync.is_ok();
    let body = json!({
        "status": if token_ready { "ok" } else { "degraded" },
        "version": env!("CARGO_PKG_VERSION"),
        "session": part(session_problems),
        "powersync": part(of(&["POWERSYNC_"])),
        "upload": part(upload_problems),
        "files": part(storage_problems),
        // Settings every route shares (CORS_ALLOWED_ORIGINS, UPSTREAM_TIMEOUT_MS).
        "worker": part(of(&["CORS_", "UPSTREAM_"])),
    });
    let mut response = json_response(if token_ready { 200 } else { 503 }, &body);
    response.headers.push(("Cache-Control".into(), "no-store".into()));
    response
}

/// Reads a request body of at most `limit` bytes, refusing a larger declared `Content-Length`
/// before reading any of it: more is the caller's 413, a body that cannot be read their 400.
async fn read_body<B: RequestBody>(request: &IncomingRequest, body: B, limit: usize) -> Result<Vec<u8>, ApiError> {
    // workerd hands a request body over as it came: a compressed one would read as bad JSON.
    if let Some(encoding) = request.header("Content-Encoding").map(str::trim) {
        if !encoding.is_empty() && !encoding.eq_ignore_ascii_case("identity") {
            let shown: String = encoding.chars().take(32).filter(|c| c.is_ascii_graphic() || *c == ' ').collect();
            return Err(ApiError::UnsupportedEncoding(shown));
        }
    }
    let declared = request.header("Content-Length").and_then(|n| n.trim().parse::<u64>().ok());
    if let Some(length) = declared.filter(|n| *n > limit as u64) {
        return Err(ApiError::PayloadTooLarge(format!("body is {length} bytes; at most {limit} are accepted")));
    }
    body.read(limit).await.map_err(|e| match e {
        BodyError::TooLarge { limit } => {
            ApiError::PayloadTooLarge(format!("body is over {limit} bytes; at most {limit} are accepted"))
        }
        BodyError::Unreadable(why) => {
            ApiError::BadRequest { path: "$".into(), message: format!("the body could not be read: {why}") }
        }
    })
}

fn json_response(status: u16, body: &Value) -> HttpResponse {
    HttpResponse { status, headers: vec![("Content-Type".into(), "application/json".into())], body: body.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::fake::{block_on, FakeTransport};
    use crate::http::{HttpResponse, Method};
    use crate::keys::tests::test_key;
    use crate::session::tests::{hs256, user_claims, NOW, SECRET, URL};
    use crate::session::{RustSignatureVerifier, SignatureCheck};
    use crate::token::RustSigner;
    use serde_json::json;

    #[test]
    fn request_head_gives_method_path_and_every_header_in_order() {
        let head = "POST\nhttps://w.example/powersync-upload?x=1#f\nauthorization\nBearer a b\ncontent-length\n12\nx-empty\n\n";
        let request = IncomingRequest::from_head(head);
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/powersync-upload");
        assert_eq!(
            request.headers,
            vec![
                ("authorization".to_string(), "Bearer a b".to_string()),
                ("content-length".to_string(), "12".to_string()),
                ("x-empty".to_string(), String::new()),
            ]
        );
        assert_eq!(request.header("Content-Length"), Some("12"));
    }

    #[test]
    fn request_head_without_headers_or_path() {
        let request = IncomingRequest::from_head("GET\nhttp://127.0.0.1:8787\n");
        assert_eq!((request.method.as_str(), request.path.as_str()), ("GET", "/"));
        assert!(request.headers.is_empty());
        assert_eq!(IncomingRequest::from_head("").path, "/");
    }

    /// The native stand-ins for WebCrypto.
    struct RustCrypto;

    impl TokenSigner for RustCrypto {
        async fn sign(&self, key: &crate::keys::SigningKey, input: &[u8]) -> Result<String, String> {
            RustSigner::sign_now(key, input)
        }
    }

    impl SignatureVerifier for RustCrypto {
        async fn verify(&self, check: &SignatureCheck) -> Result<bool, SessionError> {
            RustSignatureVerifier::check(check)
        }
    }

    fn app(extra: &[(&str, &str)]) -> App {
        let pem = test_key().pkcs8_pem();
        let mut vars: Vec<(String, String)> = [
            ("SUPABASE_URL", URL),
            ("SUPABASE_JWT_SECRET", SECRET),
            ("SUPABASE_ANON_KEY", "anon-key"),
            ("POWERSYNC_URL", "https://ps.example"),
            ("POWERSYNC_KEY_ID", "kid-1"),
            ("POWERSYNC_PRIVATE_KEY", pem.as_str()),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        vars.retain(|(k, _)| !extra.iter().any(|(name, _)| name == k));
        vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        App::new(Config::from_lookup(&|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())))
    }

    fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (IncomingRequest, Vec<u8>) {
        let request = IncomingRequest {
            method: method.into(),
            path: path.into(),
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        (request, body.as_bytes().to_vec())
    }

    /// A body that records whether anyone read it.
    struct WatchedBody<'a> {
        bytes: Vec<u8>,
        read: &'a std::cell::Cell<bool>,
    }

    impl RequestBody for WatchedBody<'_> {
        async fn read(self, limit: usize) -> Result<Vec<u8>, BodyError> {
            self.read.set(true);
            self.bytes.read(limit).await
        }
    }

    /// `app`'s answer to `req` with `bytes` as a body, and whether it read them.
    fn handle_watched(app: &App, req: &IncomingRequest, bytes: &[u8]) -> (HttpResponse, bool) {
        let read = std::cell::Cell::new(false);
        let body = WatchedBody { bytes: bytes.to_vec(), read: &read };
        let (response, _) = block_on(app.handle(req, body, &FakeTransport::default(), &RustCrypto, NOW, "r"));
        (response, read.get())
    }

    fn send(
        app: &App,
        transport: &FakeTransport,
        req: (IncomingRequest, Vec<u8>),
    ) -> (HttpResponse, RequestLog, Value) {
        let (req, body) = req;
        let (response, log) = block_on(app.handle(&req, body, transport, &RustCrypto, NOW, "req-1"));
        let body = serde_json::from_str(&response.body).unwrap_or(Value::Null);
        (response, log, body)
    }

    fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    #[test]
    fn health_names_problems_without_quoting_a_secret_pasted_under_the_wrong_name() {
        let secret = "sb_secret_N7UND0UgjKTVK-Uodkm0Hg_xSvEMPvz";
        let app = app(&[("UPLOAD_OWNER_COLUMN", secret)]);
        let (response, _, body) = send(&app, &FakeTransport::default(), request("GET", "/health", &[], ""));
        assert_eq!(body["upload"]["problems"][0]["name"], "UPLOAD_OWNER_COLUMN", "{body}");
        assert!(!response.body.contains(secret), "{}", response.body);
    }

    #[test]
    fn health_lists_the_problems_of_settings_every_route_shares() {
        let app = app(&[("CORS_ALLOWED_ORIGINS", "https://app.example/"), ("UPSTREAM_TIMEOUT_MS", "5")]);
        let (response, _, body) = send(&app, &FakeTransport::default(), request("GET", "/health", &[], ""));
        assert_eq!(response.status, 200, "the token still works: {body}");
        let names: Vec<&str> =
            body["worker"]["problems"].as_array().into_iter().flatten().filter_map(|p| p["name"].as_str()).collect();
        assert_eq!(names, ["CORS_ALLOWED_ORIGINS", "UPSTREAM_TIMEOUT_MS"], "{body}");
        assert_eq!(body["worker"]["configured"], false);
    }

    #[test]
    fn hs256_session_gets_a_token_without_any_upstream_request() {
        let (app, transport) = (app(&[]), FakeTransport::default());
        let auth = bearer(&hs256(&user_claims()));
        let (response, log, body) =
            send(&app, &transport, request("GET", "/powersync-token", &[("authorization", &auth)], ""));
        assert_eq!(response.status, 200, "{body}");
        assert_eq!(body["user_id"], "user-1");
        assert_eq!(body["powersync_url"], "https://ps.example");
        assert_eq!(response.header_value("cache-control"), Some("no-store"));
        assert_eq!(response.header_value("x-request-id"), Some("req-1"));
        assert_eq!((log.route, log.status, log.code), ("token", 200, None));
        assert!(transport.sent().is_empty());
    }

    #[test]
    fn rs256_session_fetches_the_jwks_once_then_uses_the_cache() {
        let jwks = json!({"keys": [test_key().public_jwk("sk-1")]}).to_string();
        let transport = FakeTransport::scripted(vec![Ok(HttpResponse { status: 200, headers: vec![], body: jwks })]);
        let app = app(&[]);
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some("sk-1".into());
        let token = jsonwebtoken::encode(
            &header,
            &user_claims(),
            &jsonwebtoken::EncodingKey::from_rsa_der(&test_key().pkcs1_der()),
        )
        .unwrap();
        for _ in 0..2 {
            let (response, _, body) =
                send(&app, &transport, request("POST", "/powersync-token", &[("Authorization", &bearer(&token))], ""));
            assert_eq!(response.status, 200, "{body}");
        }
        let sent = transport.sent();
        assert_eq!(sent.len(), 1);
        assert_eq!(
            (sent[0].method, sent[0].url.as_str()),
            (Method::Get, "http://127.0.0.1:54321/auth/v1/.well-known/jwks.json")
        );
    }

    // --- single flight: one key fetch per isolate and key set --------------------------------

    /// A transport whose answers arrive one poll later (so requests overlap), and whose pauses
    /// can be made to run out at once.
    struct SlowTransport {
        inner: FakeTransport,
        pauses_run_out: bool,
    }

    impl SlowTransport {
        fn new(answers: Vec<Result<HttpResponse, crate::http::TransportError>>) -> Self {
            SlowTransport { inner: FakeTransport::scripted(answers), pauses_run_out: false }
        }
    }

    impl Transport for SlowTransport {
        async fn send(&self, request: &crate::http::HttpRequest) -> Result<HttpResponse, crate::http::TransportError> {
            let answer = self.inner.send(request).await;
            let mut yielded = false;
            std::future::poll_fn(|cx| {
                if yielded {
                    return std::task::Poll::Ready(());
                }
                yielded = true;
                cx.waker().wake_by_ref();
                std::task::Poll::Pending
            })
            .await;
            answer
        }

        fn pause(&self, _max: std::time::Duration) -> (impl Future<Output = bool>, Resume) {
            let (pause, resume) = crate::http::local_pause();
            let runs_out = self.pauses_run_out;
            (async move { !runs_out && pause.await }, resume)
        }
    }

    /// Polls every future in turn until all are done (they wake each other through the app).
    fn run_all<F: Future>(futures: Vec<std::pin::Pin<Box<F>>>) -> Vec<F::Output> {
        let mut futures: Vec<Option<std::pin::Pin<Box<F>>>> = futures.into_iter().map(Some).collect();
        let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        for _ in 0..1000 {
            for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
                if let Some(running) = future {
                    if let std::task::Poll::Ready(done) = running.as_mut().poll(&mut context) {
                        *output = Some(done);
                        *future = None;
                    }
                }
            }
            if outputs.iter().all(Option::is_some) {
                return outputs.into_iter().flatten().collect();
            }
        }
        panic!("the requests never finished");
    }

    fn rs256_session() -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some("sk-1".into());
        jsonwebtoken::encode(&header, &user_claims(), &jsonwebtoken::EncodingKey::from_rsa_der(&test_key().pkcs1_der()))
            .unwrap()
    }

    fn jwks_answer() -> Result<HttpResponse, crate::http::TransportError> {
        Ok(HttpResponse {
            status: 200,
            headers: vec![],
            body: json!({"keys": [test_key().public_jwk("sk-1")]}).to_string(),
        })
    }

    fn token_requests<'a>(
        app: &'a App,
        transport: &'a SlowTransport,
        auth: &'a str,
        n: usize,
    ) -> Vec<std::pin::Pin<Box<impl Future<Output = (HttpResponse, RequestLog)> + 'a>>> {
        (0..n)
            .map(|_| {
                Box::pin(async move {
                    let (req, body) = request("GET", "/powersync-token", &[("Authorization", auth)], "");
                    app.handle(&req, body, transport, &RustCrypto, NOW, "r").await
                })
            })
            .collect()
    }

    #[test]
    fn concurrent_sessions_with_a_cold_key_cache_share_one_jwks_fetch() {
        let (app, transport) = (app(&[]), SlowTransport::new(vec![jwks_answer()]));
        let auth = bearer(&rs256_session());
        let answers = run_all(token_requests(&app, &transport, &auth, 5));
        assert!(answers.iter().all(|(response, _)| response.status == 200), "{answers:?}");
        assert_eq!(transport.inner.sent().len(), 1, "one fetch for five requests");
        assert!(app.waiting.borrow().is_empty(), "every waiting request was resumed");
    }

    #[test]
    fn requests_waiting_for_a_failed_key_fetch_do_not_fetch_again() {
        let refused = Err(crate::http::TransportError::timed_out("no answer"));
        let (app, transport) = (app(&[]), SlowTransport::new(vec![refused]));
        let auth = bearer(&rs256_session());
        let answers = run_all(token_requests(&app, &transport, &auth, 4));
        assert!(
            answers
                .iter()
                .all(|(response, log)| (response.status, log.code) == (503, Some("session_keys_unavailable"))),
            "{answers:?}"
        );
        assert_eq!(transport.inner.sent().len(), 1);
    }

    #[test]
    fn key_fetch_whose_request_went_away_is_taken_over_by_a_waiting_request() {
        let (app, transport) = (app(&[]), SlowTransport::new(vec![jwks_answer(), jwks_answer()]));
        let auth = bearer(&rs256_session());
        let mut requests = token_requests(&app, &transport, &auth, 3);
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        for request in requests.iter_mut() {
            assert!(request.as_mut().poll(&mut context).is_pending());
        }
        assert_eq!(transport.inner.sent().len(), 1, "the first fetches, the others wait");
        drop(requests.remove(0));
        let answers = run_all(requests);
        assert!(answers.iter().all(|(response, _)| response.status == 200), "{answers:?}");
        assert_eq!(transport.inner.sent().len(), 2, "one waiting request fetched instead");
    }

    #[test]
    fn key_fetch_that_outlives_the_wait_is_taken_over() {
        let mut transport = SlowTransport::new(vec![jwks_answer(), jwks_answer()]);
        transport.pauses_run_out = true;
        let app = app(&[]);
        let auth = bearer(&rs256_session());
        let answers = run_all(token_requests(&app, &transport, &auth, 2));
        assert!(answers.iter().all(|(response, _)| response.status == 200), "{answers:?}");
        assert_eq!(transport.inner.sent().len(), 2);
    }

    #[test]
    fn jwks_fetch_whose_connection_was_lost_is_sent_again_at_once() {
        let jwks = json!({"keys": [test_key().public_jwk("sk-1")]}).to_string();
        let lost = Err(crate::http::TransportError::no_answer("Network connection lost."));
        let transport =
            FakeTransport::scripted(vec![lost, Ok(HttpResponse { status: 200, headers: vec![], body: jwks })]);
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some("sk-1".into());
        let token = jsonwebtoken::encode(
            &header,
            &user_claims(),
            &jsonwebtoken::EncodingKey::from_rsa_der(&test_key().pkcs1_der()),
        )
        .unwrap();
        let (response, _, body) =
            send(&app(&[]), &transport, request("POST", "/powersync-token", &[("Authorization", &bearer(&token))], ""));
        assert_eq!(response.status, 200, "{body}");
        let sent = transport.sent();
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[0], sent[1]);
    }

    #[test]
    fn missing_header_comes_before_configuration_errors() {
        let app = app(&[("POWERSYNC_URL", "")]);
        let (response, log, body) = send(&app, &FakeTransport::default(), request("GET", "/powersync-token", &[], ""));
        assert_eq!((response.status, body["error"].as_str()), (401, Some("No authorization header")));
        assert_eq!(log.code, Some("missing_authorization"));
        let auth = bearer(&hs256(&user_claims()));
        let (response, _, body) =
            send(&app, &FakeTransport::default(), request("GET", "/powersync-token", &[("authorization", &auth)], ""));
        assert_eq!((response.status, body["error"].as_str()), (500, Some("PowerSync not configured")));
        assert_eq!(body["missing"], json!(["POWERSYNC_URL"]));
    }

    #[test]
    fn invalid_session_reason_is_logged_not_answered() {
        let token = hs256(&json!({"sub": "u", "aud": "authenticated", "iss": "other", "exp": NOW + 60}));
        let (response, log, body) = send(
            &app(&[]),
            &FakeTransport::default(),
            request("GET", "/powersync-token", &[("authorization", &bearer(&token))], ""),
        );
        assert_eq!(response.status, 401);
        assert_eq!(body, json!({"error": "Unauthorized", "code": "session_invalid", "request_id": "req-1"}));
        assert_eq!(
            log.detail.as_deref(),
            Some("iss is not the configured issuer: iss \"other\", expected \"http://127.0.0.1:54321/auth/v1\"")
        );
    }

    #[test]
    fn unknown_paths_and_wrong_methods_get_json_errors() {
        let (response, _, body) = send(&app(&[]), &FakeTransport::default(), request("GET", "/nope", &[], ""));
        assert_eq!((response.status, body["code"].as_str()), (404, Some("not_found")));
        let (response, _, body) =
            send(&app(&[]), &FakeTransport::default(), request("GET", "/powersync-upload", &[], ""));
        assert_eq!((response.status, body["code"].as_str()), (405, Some("method_not_allowed")));
        assert_eq!(response.header_value("allow"), Some("POST, OPTIONS"));
    }

    #[test]
    fn preflight_is_answered_only_for_allowed_origins() {
        let app = app(&[("CORS_ALLOWED_ORIGINS", "https://app.example")]);
        let ok = send(
            &app,
            &FakeTransport::default(),
            request("OPTIONS", "/powersync-token", &[("Origin", "https://app.example")], ""),
        )
        .0;
        assert_eq!(ok.status, 204);
        assert_eq!(ok.header_value("access-control-allow-origin"), Some("https://app.example"));
        assert_eq!(ok.header_value("vary"), Some("Origin"));
        let other = send(
            &app,
            &FakeTransport::default(),
            request("OPTIONS", "/powersync-token", &[("Origin", "https://evil.example")], ""),
        )
        .0;
        assert_eq!(other.header_value("access-control-allow-origin"), None);
        assert_eq!(other.header_value("access-control-allow-methods"), None);
        // an answer that depends on Origin says so whether or not it was allowed (a cache would
        // otherwise serve a copy without the CORS header to an allowed origin), and with `*` not
        assert_eq!(other.header_value("vary"), Some("Origin"));
        let jwks = send(&app, &FakeTransport::default(), request("GET", "/.well-known/jwks.json", &[], "")).0;
        assert_eq!((jwks.status, jwks.header_value("vary")), (200, Some("Origin")));
        let any = send(&self::app(&[]), &FakeTransport::default(), request("GET", "/.well-known/jwks.json", &[], "")).0;
        assert_eq!(any.header_value("vary"), None);
    }

    #[test]
    fn files_declaring_a_body_over_the_limit_is_413_before_reading_it() {
        let app = app(&[]);
        let auth = bearer(&hs256(&user_claims()));
        let declared = (storage::MAX_BODY_BYTES + 1).to_string();
        let (response, _, body) = send(
            &app,
            &FakeTransport::default(),
            request("POST", FILES_UPLOAD_PATH, &[("authorization", &auth), ("Content-Length", &declared)], ""),
        );
        assert_eq!((response.status, body["code"].as_str()), (413, Some("payload_too_large")));
        assert!(body["error"].as_str().is_some_and(|e| e.contains(&declared)), "{body}");
    }

    #[test]
    fn upload_with_a_malformed_body_is_400_naming_the_field_and_sends_nothing() {
        let (app, transport) = (app(&[]), FakeTransport::default());
        let auth = bearer(&hs256(&user_claims()));
        let body = r#"{"batch":[{"op":"UPSERT","table":"todos","id":"1"}]}"#;
        let (response, _, answer) =
            send(&app, &transport, request("POST", "/powersync-upload", &[("authorization", &auth)], body));
        assert_eq!(response.status, 400);
        assert_eq!(answer["field"], "batch[0].op");
        assert!(transport.sent().is_empty());
    }

    #[test]
    fn upload_declaring_a_body_over_the_limit_is_413_before_reading_it() {
        let app = app(&[("UPLOAD_MAX_BODY_BYTES", "100")]);
        let auth = bearer(&hs256(&user_claims()));
        let (response, _, body) = send(
            &app,
            &FakeTransport::default(),
            request("POST", "/powersync-upload", &[("authorization", &auth), ("Content-Length", "101")], ""),
        );
        assert_eq!((response.status, body["code"].as_str()), (413, Some("payload_too_large")));
        assert_eq!(app.body_limit(), 100);
    }

    #[test]
    fn upload_body_is_not_read_without_a_valid_session() {
        let app = app(&[]);
        let body = br#"{"batch":[{"op":"PUT","table":"todos","id":"1","data":{"a":1}}]}"#;
        for auth in [None, Some("Bearer not-a-jwt".to_string()), Some(bearer(&hs256(&json!({"sub": "u", "exp": 1}))))] {
            let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
            let (req, _) = request("POST", "/powersync-upload", &headers, "");
            let (response, read) = handle_watched(&app, &req, body);
            assert_eq!(response.status, 401);
            assert!(!read, "the body was read before the session was verified");
        }
        let auth = bearer(&hs256(&user_claims()));
        let (req, _) = request("POST", "/powersync-upload", &[("authorization", &auth)], "");
        let (response, read) = handle_watched(&app, &req, body);
        assert_eq!(response.status, 200);
        assert!(read);
    }

    #[test]
    fn a_compressed_body_is_refused_415_unread() {
        let app =
            app(&[("STORAGE_MODE", "service"), ("SUPABASE_SERVICE_ROLE_KEY", "svc"), ("STORAGE_BUCKETS", "photos")]);
        let auth = bearer(&hs256(&user_claims()));
        let paths = [
            ("/powersync-upload", "gzip"),
            ("/powersync-upload", "BR"),
            ("/powersync-files/upload", "deflate"),
            ("/powersync-upload", "gzip, br"),
        ];
        for (path, encoding) in paths {
            let (req, _) = request("POST", path, &[("authorization", &auth), ("content-encoding", encoding)], "");
            let (response, read) = handle_watched(&app, &req, b"{}");
            assert_eq!(response.status, 415, "{path} {encoding}: {}", response.body);
            let body: Value = serde_json::from_str(&response.body).unwrap();
            assert_eq!(body["code"], "unsupported_encoding");
            assert!(body["error"].as_str().unwrap().contains(encoding), "{body}");
            assert!(!read, "{path} read a {encoding} body");
        }
        // `identity` is no encoding at all.
        let (req, _) =
            request("POST", "/powersync-upload", &[("authorization", &auth), ("content-encoding", "identity")], "");
        let (response, _) = handle_watched(&app, &req, br#"{"batch":[]}"#);
        assert_eq!(response.status, 200, "{}", response.body);
    }

    #[test]
    fn bodies_of_other_routes_are_never_read() {
        let app = app(&[]);
        let auth = bearer(&hs256(&user_claims()));
        for (method, path) in [
            ("POST", "/powersync-token"),
            ("POST", "/nope"),
            ("PUT", "/powersync-upload"),
            ("OPTIONS", "/powersync-upload"),
        ] {
            let (req, _) = request(method, path, &[("authorization", &auth)], "");
            let (_, read) = handle_watched(&app, &req, b"{}");
            assert!(!read, "{method} {path} read its body");
        }
    }

    #[test]
    fn upload_body_over_the_limit_without_a_declared_length_is_413() {
        let app = app(&[("UPLOAD_MAX_BODY_BYTES", "100")]);
        let auth = bearer(&hs256(&user_claims()));
        let body =
            format!(r#"{{"batch":[{{"op":"PUT","table":"todos","id":"1","data":{{"a":"{}"}}}}]}}"#, "x".repeat(100));
        let transport = FakeTransport::default();
        let (response, _, answer) =
            send(&app, &transport, request("POST", "/powersync-upload", &[("authorization", &auth)], &body));
        assert_eq!((response.status, answer["code"].as_str()), (413, Some("payload_too_large")));
        assert!(transport.sent().is_empty());
    }

    #[test]
    fn upload_that_must_be_retried_is_503_with_retry_after() {
        let transport =
            FakeTransport::scripted(vec![Ok(HttpResponse { status: 503, headers: vec![], body: String::new() })]);
        let auth = bearer(&hs256(&user_claims()));
        let body = r#"{"batch":[{"op":"PUT","table":"todos","id":"1","data":{"a":1}}]}"#;
        let (response, log, answer) =
            send(&app(&[]), &transport, request("POST", "/powersync-upload", &[("authorization", &auth)], body));
        assert_eq!(response.status, 503);
        assert_eq!(response.header_value("retry-after"), Some("5"));
        assert_eq!(answer["results"][0]["status"], "retryable_error");
        assert_eq!(log.upload.unwrap()["retryable"], 1);
        let sent = transport.sent();
        assert_eq!(sent[0].header_value("authorization"), Some(auth.as_str()), "the caller's own token: RLS decides");
    }

    #[test]
    fn isolate_remembers_a_missing_atomic_function_until_the_recheck_interval_has_passed() {
        let app = app(&[("UPLOAD_ATOMIC_RECHECK_SECONDS", "60")]);
        let auth = bearer(&hs256(&user_claims()));
        let body = r#"{"client_id":"c-1","transactions":[{"transaction_id":1,"crud":[{"op":"DELETE","table":"todos","id":"1"}]}]}"#;
        let upload_at = |now: u64, transport: &FakeTransport| {
            let (req, bytes) = request("POST", "/powersync-upload", &[("authorization", &auth)], body);
            let (response, log) = block_on(app.handle(&req, bytes, transport, &RustCrypto, now, "req-1"));
            let paths: Vec<String> = transport.sent().iter().map(|r| r.url.replace(URL, "")).collect();
            (response.status, log.upload.unwrap_or_default(), paths)
        };
        let missing = HttpResponse {
            status: 404,
            headers: vec![],
            body: r#"{"code":"PGRST202","message":"Could not find the function"}"#.to_string(),
        };
        let rpc = "/rest/v1/rpc/powersync_apply_transaction";
        let rest = "/rest/v1/todos?id=eq.1";
        let (status, log, paths) = upload_at(NOW, &FakeTransport::scripted(vec![Ok(missing)]));
        assert_eq!((status, paths), (200, vec![rpc.to_string(), rest.to_string()]), "same upload, through REST");
        assert_eq!(log["atomic_function"], "missing");
        let (_, _, paths) = upload_at(NOW + 59, &FakeTransport::default());
        assert_eq!(paths, vec![rest.to_string()], "not looked for again yet");
        let (_, log, paths) = upload_at(NOW + 60, &FakeTransport::default());
        assert_eq!(paths, vec![rpc.to_string()], "looked for again, and found");
        assert_eq!(log["atomic_function"], "found");
    }

    #[test]
    fn one_users_role_that_may_not_execute_the_atomic_function_leaves_other_users_on_it() {
        let app = app(&[]);
        // user A: a session whose role (custom, from an access-token hook) lacks EXECUTE
        let mut a = user_claims();
        a["role"] = json!("moderator");
        a["sub"] = json!("user-a");
        let auth_a = bearer(&hs256(&a));
        let mut b = user_claims();
        b["sub"] = json!("user-b");
        let auth_b = bearer(&hs256(&b));
        let body = r#"{"client_id":"c-1","transactions":[{"transaction_id":1,"crud":[{"op":"DELETE","table":"todos","id":"1"}]}]}"#;
        let upload = |auth: &str, now: u64, transport: &FakeTransport| {
            let (req, bytes) = request("POST", "/powersync-upload", &[("authorization", auth)], body);
            let (response, log) = block_on(app.handle(&req, bytes, transport, &RustCrypto, now, "req-1"));
            let paths: Vec<String> = transport.sent().iter().map(|r| r.url.replace(URL, "")).collect();
            (response.status, log.upload.unwrap_or_default(), paths)
        };
        let denied = HttpResponse {
            status: 403,
            headers: vec![],
            body: r#"{"code":"42501","message":"permission denied for function powersync_apply_transaction","details":null,"hint":null}"#.to_string(),
        };
        let (status, log, paths) = upload(&auth_a, NOW, &FakeTransport::scripted(vec![Ok(denied)]));
        assert_eq!(status, 200, "A's upload went on through REST");
        assert_eq!(paths, ["/rest/v1/rpc/powersync_apply_transaction", "/rest/v1/todos?id=eq.1"]);
        assert_eq!(log["atomic_function"], "not_executable");
        let (_, _, paths) = upload(&auth_b, NOW + 10, &FakeTransport::default());
        assert_eq!(paths, ["/rest/v1/rpc/powersync_apply_transaction"], "B's role may execute it: B stays atomic");
        // A's next upload tries it again (one subrequest more, while A's role lacks the GRANT)
        let (_, _, paths) = upload(&auth_a, NOW + 20, &FakeTransport::default());
        assert_eq!(paths[0], "/rest/v1/rpc/powersync_apply_transaction");
    }

    #[test]
    fn service_mode_upload_from_an_anonymous_session_is_403_and_sends_nothing() {
        let service = [
            ("UPLOAD_MODE", "service"),
            ("SUPABASE_SERVICE_ROLE_KEY", "svc"),
            ("UPLOAD_OWNER_COLUMN", "user_id"),
            ("UPLOAD_TABLES", "todos"),
        ];
        let mut claims = user_claims();
        claims["is_anonymous"] = json!(true);
        let auth = bearer(&hs256(&claims));
        let body = r#"{"batch":[{"op":"PUT","table":"todos","id":"1","data":{"a":1}}]}"#;
        let transport = FakeTransport::default();
        let (response, log, answer) =
            send(&app(&service), &transport, request("POST", "/powersync-upload", &[("authorization", &auth)], body));
        assert_eq!((response.status, answer["code"].as_str()), (403, Some("anonymous_not_allowed")));
        assert_eq!(log.code, Some("anonymous_not_allowed"));
        assert!(transport.sent().is_empty());

        let mut allowed = service.to_vec();
        allowed.push(("UPLOAD_ALLOW_ANONYMOUS", "true"));
        let transport = FakeTransport::scripted(vec![Ok(HttpResponse {
            status: 200,
            headers: vec![],
            body: r#"{"applied":1}"#.into(),
        })]);
        let (response, _, answer) =
            send(&app(&allowed), &transport, request("POST", "/powersync-upload", &[("authorization", &auth)], body));
        assert_eq!(response.status, 200, "{answer}");
        assert_eq!(answer["results"][0]["status"], "success");
    }

    #[test]
    fn file_request_outside_the_users_folder_is_refused_before_anything_is_signed() {
        let service =
            [("STORAGE_MODE", "service"), ("SUPABASE_SERVICE_ROLE_KEY", "svc"), ("STORAGE_BUCKETS", "photos")];
        let auth = bearer(&hs256(&user_claims()));
        let body = r#"{"files":[{"bucket":"photos","path":"user-1/a.jpg","content_type":"image/jpeg","size":3},
                              {"bucket":"photos","path":"user-2/a.jpg","content_type":"image/jpeg","size":3}]}"#;
        let transport = FakeTransport::default();
        let (response, log, answer) = send(
            &app(&service),
            &transport,
            request("POST", "/powersync-files/upload", &[("authorization", &auth)], body),
        );
        assert_eq!(
            (response.status, answer["code"].as_str(), answer["index"].as_u64()),
            (403, Some("file_path_not_allowed"), Some(1))
        );
        assert!(transport.sent().is_empty(), "nothing signed");
        // A file request records its verified session as every route does (log line, metrics).
        assert_eq!(
            (log.issuer, log.session_alg, log.user.as_deref()),
            (Some("supabase"), Some("HS256"), Some(metrics::user_hash("user-1").as_str()))
        );
        assert_eq!(log.files.unwrap()["done"], 0);
        assert!(!format!("{:?}", log.detail).contains("user-2"));
    }

    #[test]
    fn file_upload_url_is_signed_with_the_service_key_and_answered_absolute() {
        let service =
            [("STORAGE_MODE", "service"), ("SUPABASE_SERVICE_ROLE_KEY", "svc"), ("STORAGE_BUCKETS", "photos")];
        let auth = bearer(&hs256(&user_claims()));
        let signed = r#"{"url":"/object/upload/sign/photos/user-1/a.jpg?token=t"}"#;
        let transport =
            FakeTransport::scripted(vec![Ok(HttpResponse { status: 200, headers: vec![], body: signed.into() })]);
        let body = r#"{"files":[{"bucket":"photos","path":"user-1/a.jpg","content_type":"image/jpeg","size":3}]}"#;
        let (response, log, answer) = send(
            &app(&service),
            &transport,
            request("POST", "/powersync-files/upload", &[("authorization", &auth)], body),
        );
        assert_eq!(response.status, 200, "{answer}");
        assert_eq!(
            answer["files"][0]["url"],
            format!("{URL}/storage/v1/object/upload/sign/photos/user-1/a.jpg?token=t")
        );
        assert_eq!(answer["files"][0]["headers"]["Content-Type"], "image/jpeg");
        let sent = transport.sent();
        assert_eq!(sent[0].url, format!("{URL}/storage/v1/object/upload/sign/photos/user-1/a.jpg"));
        assert_eq!(sent[0].header_value("authorization"), Some("Bearer svc"));
        assert_eq!(
            log.files.unwrap(),
            json!({"op": "upload", "count": 1, "done": 1, "bytes": 3, "buckets": ["photos"]})
        );
    }

    #[test]
    fn a_delete_of_nothing_in_service_mode_asks_once_per_bucket_whether_storage_has_it() {
        let service =
            [("STORAGE_MODE", "service"), ("SUPABASE_SERVICE_ROLE_KEY", "svc"), ("STORAGE_BUCKETS", "photos")];
        let auth = bearer(&hs256(&user_claims()));
        let answer_of = |status: u16, body: &str| Ok(HttpResponse { status, headers: vec![], body: body.into() });
        let no_such_object = r#"{"statusCode":"404","error":"not_found","message":"Object not found"}"#;
        let body = r#"{"files":[{"bucket":"photos","path":"user-1/a.jpg"},{"bucket":"photos","path":"user-1/b.jpg"}]}"#;
        let delete = || request("POST", "/powersync-files/delete", &[("authorization", &auth)], body);

        // the bucket exists: nothing to delete, and the second file's bucket is not asked again
        let transport = FakeTransport::scripted(vec![
            answer_of(400, no_such_object),
            answer_of(200, r#"{"id":"photos","name":"photos","public":false}"#),
            answer_of(400, no_such_object),
        ]);
        let (response, _, answer) = send(&app(&service), &transport, delete());
        assert_eq!(response.status, 200, "{answer}");
        let deleted: Vec<&Value> = answer["files"].as_array().unwrap().iter().map(|f| &f["deleted"]).collect();
        assert_eq!(deleted, [&json!(false), &json!(false)], "{answer}");
        let sent = transport.sent();
        assert_eq!(sent.len(), 3);
        assert_eq!(
            (sent[1].method, sent[1].url.as_str()),
            (Method::Get, format!("{URL}/storage/v1/bucket/photos").as_str())
        );
        assert_eq!(sent[1].header_value("authorization"), Some("Bearer svc"));

        // Storage does not have the bucket: never reported deleted
        let transport = FakeTransport::scripted(vec![
            answer_of(400, no_such_object),
            answer_of(400, r#"{"statusCode":"404","error":"Bucket not found","message":"Bucket not found"}"#),
        ]);
        let (response, _, answer) = send(&app(&service), &transport, delete());
        assert_eq!((response.status, answer["code"].as_str()), (502, Some("storage_failed")), "{answer}");
        assert!(answer.get("files").is_none());
    }

    #[test]
    fn file_endpoints_need_a_session_and_refuse_anonymous_users_in_service_mode() {
        let service =
            [("STORAGE_MODE", "service"), ("SUPABASE_SERVICE_ROLE_KEY", "svc"), ("STORAGE_BUCKETS", "photos")];
        let body = r#"{"files":[{"bucket":"photos","path":"user-1/a.jpg"}]}"#;
        let (response, _, _) =
            send(&app(&service), &FakeTransport::default(), request("POST", "/powersync-files/download", &[], body));
        assert_eq!(response.status, 401);
        let mut claims = user_claims();
        claims["is_anonymous"] = json!(true);
        let auth = bearer(&hs256(&claims));
        let (response, _, answer) = send(
            &app(&service),
            &FakeTransport::default(),
            request("POST", "/powersync-files/delete", &[("authorization", &auth)], body),
        );
        assert_eq!((response.status, answer["code"].as_str()), (403, Some("anonymous_not_allowed")));
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_blank_is_missing() {
        assert_eq!(bearer_token(Some("bearer abc")), Some("abc"));
        assert_eq!(bearer_token(Some("Bearer  abc ")), Some("abc"));
        assert_eq!(bearer_token(Some("abc")), Some("abc"));
        assert_eq!(bearer_token(Some("Bearer")), None);
        assert_eq!(bearer_token(Some("  ")), None);
        assert_eq!(bearer_token(None), None);
    }

    use super::bearer as bearer_token;

    // --- one metric data point per request, from the log line --------------------------------

    /// The log line as the adapter writes it, and the data point built from it.
    fn line_and_point(log: &RequestLog) -> (Value, metrics::DataPoint) {
        let mut line = serde_json::to_value(log).unwrap();
        line["request_id"] = "req-1".into();
        line["duration_ms"] = 7.into();
        let point = metrics::data_point(&line);
        (line, point)
    }

    fn blob<'a>(point: &'a metrics::DataPoint, name: &str) -> &'a str {
        &point.blobs[metrics::BLOBS.iter().position(|b| *b == name).unwrap()]
    }

    fn double(point: &metrics::DataPoint, name: &str) -> f64 {
        point.doubles[metrics::DOUBLES.iter().position(|d| *d == name).unwrap()]
    }

    #[test]
    fn token_data_point_names_issuer_algorithms_and_hashed_user_without_secrets() {
        let token = hs256(&user_claims());
        let (response, log, _) = send(
            &app(&[]),
            &FakeTransport::default(),
            request("GET", "/powersync-token", &[("authorization", &bearer(&token))], ""),
        );
        assert_eq!(response.status, 200);
        let (line, point) = line_and_point(&log);
        let user = metrics::user_hash("user-1");
        assert_eq!(line["user"], json!(user));
        assert_eq!(point.indexes, vec![user.clone()]);
        assert_eq!(
            [
                blob(&point, "route"),
                blob(&point, "status_class"),
                blob(&point, "code"),
                blob(&point, "issuer"),
                blob(&point, "session_alg"),
                blob(&point, "signing_alg"),
                blob(&point, "user")
            ],
            ["token", "2xx", "", "supabase", "HS256", "RS256", user.as_str()]
        );
        assert_eq!((double(&point, "status"), double(&point, "duration_ms")), (200.0, 7.0));
        let everything = format!("{line} {point:?}");
        assert!(!everything.contains("user-1") && !everything.contains(&token), "no raw user id, no token");
    }

    #[test]
    fn rs256_session_is_described_in_the_data_point() {
        let jwks = json!({"keys": [test_key().public_jwk("sk-1")]}).to_string();
        let transport = FakeTransport::scripted(vec![Ok(HttpResponse { status: 200, headers: vec![], body: jwks })]);
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some("sk-1".into());
        let token = jsonwebtoken::encode(
            &header,
            &user_claims(),
            &jsonwebtoken::EncodingKey::from_rsa_der(&test_key().pkcs1_der()),
        )
        .unwrap();
        let (_, log, _) =
            send(&app(&[]), &transport, request("GET", "/powersync-token", &[("Authorization", &bearer(&token))], ""));
        let (_, point) = line_and_point(&log);
        assert_eq!((blob(&point, "issuer"), blob(&point, "session_alg")), ("supabase", "RS256"));
    }

    #[test]
    fn refused_request_data_point_has_its_code_and_no_user() {
        let (_, log, _) = send(
            &app(&[]),
            &FakeTransport::default(),
            request("POST", "/powersync-upload", &[(metrics::QUEUE_HEADER, "count=3")], "{}"),
        );
        let (_, point) = line_and_point(&log);
        assert_eq!(
            (blob(&point, "route"), blob(&point, "status_class"), blob(&point, "code")),
            ("upload", "4xx", "missing_authorization")
        );
        assert!(point.indexes.is_empty());
        assert_eq!(blob(&point, "user"), "");
        assert_eq!(double(&point, "status"), 401.0);
        assert_eq!(
            (log.queue, double(&point, "queue_reported")),
            (None, 0.0),
            "an unverified caller's queue report is not taken"
        );
    }

    #[test]
    fn upload_data_point_carries_the_outcome_counts_queue_and_write_path() {
        // Two transactions through the atomic function: the first applied, the second refused.
        let applied = Ok(HttpResponse { status: 200, headers: vec![], body: r#"{"applied":1}"#.into() });
        let refused = Ok(HttpResponse {
            status: 409,
            headers: vec![],
            body:
                r#"{"code":"23505","message":"duplicate key value","details":"Key (id)=(secret) exists","hint":null}"#
                    .into(),
        });
        // The third answers the ledger's record of the refused transaction (no dead-letter table).
        let transport = FakeTransport::scripted(vec![
            applied,
            refused,
            Ok(HttpResponse { status: 200, headers: vec![], body: "true".into() }),
        ]);
        let auth = bearer(&hs256(&user_claims()));
        let body = r#"{"client_id":"c-1","transactions":[
            {"transaction_id":1,"crud":[{"op":"PUT","table":"todos","id":"1","data":{"a":1}},{"op":"DELETE","table":"todos","id":"2"}]},
            {"transaction_id":2,"crud":[{"op":"PUT","table":"todos","id":"3","data":{"a":"secret"}}]}]}"#;
        let headers = [("authorization", auth.as_str()), (metrics::QUEUE_HEADER, "count=42; oldest_seconds=90")];
        let (response, log, answer) = send(&app(&[]), &transport, request("POST", "/powersync-upload", &headers, body));
        assert_eq!(response.status, 200, "{answer}");
        let (line, point) = line_and_point(&log);
        assert_eq!(line["queue"], json!({"count": 42, "oldest_seconds": 90}));
        assert_eq!(
            (blob(&point, "write_mode"), blob(&point, "failure_codes"), blob(&point, "issuer")),
            ("rls", "23505", "supabase")
        );
        let figures: Vec<(&str, f64)> = [
            "transactions",
            "entries",
            "success",
            "discarded",
            "retryable",
            "not_attempted",
            "atomic",
            "queue_reported",
            "queue_count",
            "queue_oldest_seconds",
        ]
        .iter()
        .map(|name| (*name, double(&point, name)))
        .collect();
        assert_eq!(
            figures,
            vec![
                ("transactions", 2.0),
                ("entries", 3.0),
                ("success", 1.0),
                ("discarded", 1.0),
                ("retryable", 0.0),
                ("not_attempted", 0.0),
                ("atomic", 1.0),
                ("queue_reported", 1.0),
                ("queue_count", 42.0),
                ("queue_oldest_seconds", 90.0)
            ]
        );
        // Every double is the log line's figure of the same name.
        for (name, value) in metrics::DOUBLES.iter().zip(&point.doubles) {
            let in_line = line["upload"].get(*name).or_else(|| line.get(*name));
            if let Some(figure) =
                in_line.and_then(|v| v.as_f64().or_else(|| v.as_bool().map(|b| f64::from(u8::from(b)))))
            {
                assert_eq!(figure, *value, "{name}");
            }
        }
        assert_eq!(double(&point, "subrequests"), line["upload"]["subrequests"].as_f64().unwrap());
        assert!(!format!("{point:?}").contains("secret"), "no row data");
    }

    #[test]
    fn malformed_queue_report_is_ignored_and_the_upload_goes_on() {
        let transport = FakeTransport::scripted(vec![Ok(HttpResponse {
            status: 200,
            headers: vec![],
            body: r#"{"applied":1}"#.into(),
        })]);
        let auth = bearer(&hs256(&user_claims()));
        let body = r#"{"batch":[{"op":"PUT","table":"todos","id":"1","data":{"a":1}}]}"#;
        let headers = [("authorization", auth.as_str()), (metrics::QUEUE_HEADER, "count=lots")];
        let (response, log, answer) =
            send(&app(&[("UPLOAD_ATOMIC", "true")]), &transport, request("POST", "/powersync-upload", &headers, body));
        assert_eq!((response.status, answer["results"][0]["status"].as_str()), (200, Some("success")));
        assert_eq!(log.queue, None);
        let (line, point) = line_and_point(&log);
        assert!(line.get("queue").is_none());
        assert_eq!((double(&point, "queue_reported"), double(&point, "queue_count")), (0.0, 0.0));
    }
}
