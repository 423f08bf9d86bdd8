//! Files: signed Supabase Storage URLs for uploads and downloads, and deletes, after the same
//! session verification as the token endpoint. Pure: a request body and a session go in,
//! Storage requests come out as [`HttpRequest`] values, and Storage's answers are classified
//! into [`FileResult`]s or a [`FileError`] (mapped to HTTP in `error`, the one mapping).
//!
//! Who may do what:
//! - `rls` mode: Storage is asked with the user's own token, so the storage policies on
//!   `storage.objects` decide; a refusal (Storage answers 400 with `"statusCode":"403"` in its
//!   body) is the user's ([`FileError::Denied`]).
//! - `service` mode: Storage is asked with the service key, after the worker's own rules: the
//!   bucket allow-list, the path template per bucket (default: the first segment is the user's
//!   id), the largest size and the allowed content types.
//!
//! Every path is validated ([`check_path`]) before anything is signed, in both modes; every
//! file of a request passes every check before the first Storage request is sent.

pub mod settings;

use serde_json::{json, Value};

use crate::http::{HttpRequest, HttpResponse, Method, TransportError};
use crate::session::SessionError;
use settings::{BucketRules, StorageMode, StorageSettings};

/// Longest object path (S3's limit on a key, which Storage prefixes with the bucket).
pub const MAX_PATH_BYTES: usize = 1024;
/// Longest segment of an object path: Storage's file backend stores each as a directory or file
/// name, which most file systems cap at 255 bytes (a longer one was signed, then its upload
/// failed with Storage's 500, retried for ever).
pub const MAX_SEGMENT_BYTES: usize = 255;
/// Longest bucket name.
pub const MAX_BUCKET_BYTES: usize = 100;
/// Most files per request: each is one Storage request, and a Workers Free request may make 50.
pub const MAX_FILES_PER_REQUEST: usize = 40;
/// Largest request body of the file endpoints.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileOp {
    Upload,
    Download,
    Delete,
}

impl FileOp {
    pub fn name(self) -> &'static str {
        match self {
            FileOp::Upload => "upload",
            FileOp::Download => "download",
            FileOp::Delete => "delete",
        }
    }
}

/// One file of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSpec {
    pub bucket: String,
    pub path: String,
    /// Uploads only: the declared content type and size, and whether to replace an object.
    pub content_type: Option<String>,
    pub size: Option<u64>,
    pub upsert: bool,
}

/// A parsed request: the files and, for downloads, the asked lifetime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRequest {
    pub op: FileOp,
    pub files: Vec<FileSpec>,
    pub expires_in: Option<u64>,
}

/// Why a path or bucket name is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathProblem {
    Empty,
    TooLong,
    /// A segment over [`MAX_SEGMENT_BYTES`].
    LongSegment,
    EmptySegment,
    DotSegment,
    ControlCharacter,
    Backslash,
    /// A character outside the ones Storage accepts in an object's name ([`STORAGE_KEY_PUNCTUATION`]).
    Character,
}

/// The punctuation Storage accepts in an object's name besides ASCII letters and digits (its
/// `isValidKey`, supabase/storage `src/storage/limits.ts`), less `?`: a signed download URL of a
/// name with `?` never verifies (Storage signs the URL's path undecoded, `%3F`, and checks it
/// against the decoded name).
pub const STORAGE_KEY_PUNCTUATION: &str = "_/!.*'() &$=@;:+,-";

impl PathProblem {
    pub fn reason(self) -> &'static str {
        match self {
            PathProblem::Empty => "is empty",
            PathProblem::TooLong => "is too long",
            PathProblem::LongSegment => "has a segment over 255 bytes",
            PathProblem::EmptySegment => "has an empty segment (leading, trailing or double /)",
            PathProblem::DotSegment => "has a . or .. segment",
            PathProblem::ControlCharacter => "has a control character",
            PathProblem::Backslash => "has a backslash",
            PathProblem::Character => {
                "has a character Storage does not accept in a name (accepted: A-Z a-z 0-9 and _ / ! . * ' ( ) space & $ = @ ; : + , -)"
            }
        }
    }
}

/// Why a file request is refused, or what went wrong asking Storage. `index` is the file's
/// position in the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileError {
    /// The body is not a valid request (`field` names the place).
    Malformed {
        field: String,
        message: String,
    },
    InvalidPath {
        index: usize,
        problem: PathProblem,
    },
    InvalidBucket {
        index: usize,
    },
    BucketNotAllowed {
        index: usize,
    },
    PathNotAllowed {
        index: usize,
    },
    TooLarge {
        index: usize,
        max_bytes: u64,
    },
    TypeNotAllowed {
        index: usize,
    },
    /// Storage refused (a storage policy in rls mode).
    Denied {
        index: usize,
    },
    NotFound {
        index: usize,
    },
    /// An upload to a path that holds an object, without `upsert`.
    Exists {
        index: usize,
    },
    /// Storage could not be reached or failed: retry later.
    Unavailable {
        detail: String,
    },
    /// Storage answered something unexpected (configuration or a bug): detail for the log.
    Failed {
        detail: String,
    },
    /// Storage refused the session's times (rls mode): it allows no clock skew, where the worker
    /// allows `SUPABASE_JWT_LEEWAY_SECONDS`, so a session the worker accepted can be expired there.
    /// Answered as the worker answers such a session (401: the client refreshes it).
    Session(SessionError),
}

impl FileError {
    /// The file the error is about, if one.
    pub fn index(&self) -> Option<usize> {
        match self {
            FileError::InvalidPath { index, .. }
            | FileError::InvalidBucket { index }
            | FileError::BucketNotAllowed { index }
            | FileError::PathNotAllowed { index }
            | FileError::TooLarge { index, .. }
            | FileError::TypeNotAllowed { index }
            | FileError::Denied { index }
            | FileError::NotFound { index }
            | FileError::Exists { index } => Some(*index),
            _ => None,
        }
    }
}

/// Checks an object path: 1..=1024 bytes, no empty, `.` or `..` segment, none over 255 bytes, only the characters
/// Storage accepts in a name (ASCII letters, digits and [`STORAGE_KEY_PUNCTUATION`]; a name with
/// another one could be signed for an upload whose PUT Storage then refuses).
pub fn check_path(path: &str) -> Result<(), PathProblem> {
    if path.is_empty() {
        return Err(PathProblem::Empty);
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(PathProblem::TooLong);
    }
    if path.chars().any(char::is_control) {
        return Err(PathProblem::ControlCharacter);
    }
    if path.contains('\\') {
        return Err(PathProblem::Backslash);
    }
    if !path.chars().all(|c| c.is_ascii_alphanumeric() || STORAGE_KEY_PUNCTUATION.contains(c)) {
        return Err(PathProblem::Character);
    }
    for segment in path.split('/') {
        match segment {
            "" => return Err(PathProblem::EmptySegment),
            "." | ".." => return Err(PathProblem::DotSegment),
            _ if segment.len() > MAX_SEGMENT_BYTES => return Err(PathProblem::LongSegment),
            _ => {}
        }
    }
    Ok(())
}

/// Checks a bucket name: 1..=100 of `A-Z a-z 0-9 _ . -`, not `.` or `..`.
pub fn check_bucket(bucket: &str) -> Result<(), PathProblem> {
    if bucket.is_empty() {
        return Err(PathProblem::Empty);
    }
    if bucket.len() > MAX_BUCKET_BYTES {
        return Err(PathProblem::TooLong);
    }
    if bucket == "." || bucket == ".." {
        return Err(PathProblem::DotSegment);
    }
    if !bucket.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Err(PathProblem::ControlCharacter);
    }
    Ok(())
}

fn malformed(field: impl Into<String>, message: impl Into<String>) -> FileError {
    FileError::Malformed { field: field.into(), message: message.into() }
}

/// Parses a request body: `{"files": [{"bucket", "path", "content_type"?, "size"?, "upsert"?}],
/// "expires_in"?}`. Uploads need `content_type` and `size`.
pub fn parse_request(op: FileOp, body: &[u8]) -> Result<FileRequest, FileError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| malformed("$", format!("not valid JSON ({e})")))?;
    let Value::Object(top) = value else { return Err(malformed("$", "must be a JSON object")) };
    for key in top.keys() {
        if key != "files" && !(key == "expires_in" && op == FileOp::Download) {
            return Err(malformed(key.clone(), "unknown field"));
        }
    }
    let expires_in = match top.get("expires_in") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|n| *n > 0)
                .ok_or_else(|| malformed("expires_in", "must be a positive whole number of seconds"))?,
        ),
    };
    let Some(Value::Array(items)) = top.get("files") else { return Err(malformed("files", "must be an array")) };
    if items.is_empty() {
        return Err(malformed("files", "is empty"));
    }
    if items.len() > MAX_FILES_PER_REQUEST {
        return Err(malformed(
            "files",
            format!("has {} files; at most {MAX_FILES_PER_REQUEST} per request", items.len()),
        ));
    }
    let mut files = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let field = |name: &str| format!("files[{i}].{name}");
        let Value::Object(item) = item else { return Err(malformed(format!("files[{i}]"), "must be an object")) };
        let allowed: &[&str] = match op {
            FileOp::Upload => &["bucket", "path", "content_type", "size", "upsert"],
            _ => &["bucket", "path"],
        };
        if let Some(key) = item.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(malformed(field(key), "unknown field"));
        }
        let text = |name: &str| item.get(name).and_then(Value::as_str).map(str::to_string);
        let bucket = text("bucket").ok_or_else(|| malformed(field("bucket"), "must be a string"))?;
        let path = text("path").ok_or_else(|| malformed(field("path"), "must be a string"))?;
        let (mut content_type, mut size, mut upsert) = (None, None, false);
        if op == FileOp::Upload {
            let kind = text("content_type")
                // one media type: a list (`image/png;a=b, text/html`) is refused whole, since a
                // browser reads the last type of it and the bucket's rule the first
                // and only visible ASCII and spaces: the client PUTs it back as a header, which
                // fetch refuses beyond Latin-1 (a request that could never be sent, retried)
                .filter(|t| {
                    t.len() <= 255 && t.contains('/') && !t.contains(',') && t.bytes().all(|b| matches!(b, b' '..=b'~'))
                })
                .ok_or_else(|| malformed(field("content_type"), "must be a content type such as image/png"))?;
            content_type = Some(kind);
            size = Some(
                item.get("size")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| malformed(field("size"), "must be the size in bytes"))?,
            );
            upsert = match item.get("upsert") {
                None => false,
                Some(v) => v.as_bool().ok_or_else(|| malformed(field("upsert"), "must be true or false"))?,
            };
        }
        files.push(FileSpec { bucket, path, content_type, size, upsert });
    }
    Ok(FileRequest { op, files, expires_in })
}

/// Every check that comes before signing, for every file: names, then (when buckets are
/// configured, always in service mode) allow-list, path template, size and content type.
pub fn check(request: &FileRequest, settings: &StorageSettings, user_id: &str) -> Result<(), FileError> {
    for (index, file) in request.files.iter().enumerate() {
        check_bucket(&file.bucket).map_err(|_| FileError::InvalidBucket { index })?;
        check_path(&file.path).map_err(|problem| FileError::InvalidPath { index, problem })?;
    }
    let Some(buckets) = &settings.buckets else { return Ok(()) };
    for (index, file) in request.files.iter().enumerate() {
        let rules = buckets.get(&file.bucket).ok_or(FileError::BucketNotAllowed { index })?;
        if !within_template(rules, user_id, &file.path) {
            return Err(FileError::PathNotAllowed { index });
        }
        if request.op == FileOp::Upload {
            if file.size.unwrap_or(0) > rules.max_bytes {
                return Err(FileError::TooLarge { index, max_bytes: rules.max_bytes });
            }
            if !rules.allows_type(file.content_type.as_deref().unwrap_or("")) {
                return Err(FileError::TypeNotAllowed { index });
            }
        }
    }
    Ok(())
}

/// Whether `path` lies under the bucket's template for this user. A user id that is not one
/// plain path segment never matches (it could reach another user's folder).
pub fn within_template(rules: &BucketRules, user_id: &str, path: &str) -> bool {
    if rules.path_template.contains("{user_id}") && (check_path(user_id).is_err() || user_id.contains('/')) {
        return false;
    }
    let prefix = rules.path_template.replace("{user_id}", user_id);
    path.starts_with(&prefix) && path.len() > prefix.len()
}

/// A bucket and a path as a URL path: ASCII letters, digits and [`STORAGE_KEY_PUNCTUATION`] (all
/// that [`check_path`] lets through) as they are, but a space as `%20`; any other byte
/// percent-encoded (never reached after the checks; no `?` or `#` can end the path early).
/// Storage signs a download URL's path as it arrives, decoding only what `decodeURI` decodes
/// (not `%3A`, `%40`, `%26`, ...), and checks the signature against the decoded name: a name
/// with `:` sent as `%3A` got a URL that never verified.
fn object_path(file: &FileSpec) -> String {
    let mut out = String::with_capacity(file.bucket.len() + file.path.len() + 8);
    for byte in file.bucket.bytes().chain(std::iter::once(b'/')).chain(file.path.bytes()) {
        match byte {
            b' ' => out.push_str("%20"),
            b if b.is_ascii_alphanumeric() || STORAGE_KEY_PUNCTUATION.as_bytes().contains(&b) => out.push(b as char),
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The lifetime of a download URL: the asked one, at most the configured one.
pub fn download_seconds(request: &FileRequest, settings: &StorageSettings) -> u64 {
    request.expires_in.map_or(settings.download_url_seconds, |asked| asked.min(settings.download_url_seconds))
}

/// The Storage request for one file. Credentials: the user's own token in rls mode, the service
/// key in service mode; `apikey` beside it (Supabase's gateway needs one).
pub fn plan(request: &FileRequest, file: &FileSpec, settings: &StorageSettings, user_token: &str) -> HttpRequest {
    let base = &settings.storage_url;
    let object = object_path(file);
    let request_to = match request.op {
        FileOp::Upload => HttpRequest::new(Method::Post, format!("{base}/object/upload/sign/{object}"))
            .header("x-upsert", if file.upsert { "true" } else { "false" }),
        FileOp::Download => HttpRequest::new(Method::Post, format!("{base}/object/sign/{object}"))
            .json_body(json!({ "expiresIn": download_seconds(request, settings) }).to_string()),
        FileOp::Delete => HttpRequest::new(Method::Delete, format!("{base}/object/{object}")),
    };
    let (token, apikey) = match (settings.mode, &settings.service_key) {
        (StorageMode::Service, Some(key)) => (key.as_str(), key.as_str()),
        _ => (user_token, settings.anon_key.as_str()),
    };
    request_to.header("Authorization", format!("Bearer {token}")).header("apikey", apikey)
}

/// What one file got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileResult {
    /// A signed URL (absolute) and, for uploads, the headers the client must send with its PUT.
    Signed { url: String, headers: Vec<(String, String)>, expires_in: Option<u64> },
    /// Deleted (`existed: false` when there was nothing to delete: deletes are idempotent).
    Deleted { existed: bool },
}

/// Classifies Storage's answer for file `index`. Storage reports most refusals as HTTP 400 with
/// the real status in the body's `statusCode` (a string): an HTTP 400 is classified by that one;
/// a body never turns another status into a success.
///
/// Only Storage's own words for the user's case are the user's: its "no such object"
/// (`"error":"not_found"`: gone already for a delete, not found for a download) and, in rls
/// mode, a storage policy's refusal ([`is_policy_refusal`]). Every other 403 or 404 (Storage
/// did not accept the user's token, a missing GRANT, a missing bucket, a gateway's 404 for a
/// wrong `STORAGE_URL`) is the configuration's, for the operator to fix ([`FileError::Failed`]):
/// a delete is never reported done, nor an upload refused as the user's, for it.
pub fn interpret(
    request: &FileRequest,
    file: &FileSpec,
    index: usize,
    settings: &StorageSettings,
    answer: Result<HttpResponse, TransportError>,
) -> Result<FileResult, FileError> {
    let response = answer.map_err(|e| FileError::Unavailable { detail: format!("storage: {}", e.message) })?;
    let body: Value = serde_json::from_str(&response.body).unwrap_or(Value::Null);
    let inner = match &body["statusCode"] {
        Value::String(code) => code.parse::<u16>().ok(),
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        _ => None,
    };
    let status = match (response.status, inner) {
        (400, Some(code)) if code >= 400 => code,
        (status, _) => status,
    };
    // (for the log: what Storage, or whatever answers at STORAGE_URL, says, credentials left out)
    let error = crate::credentials::redact_clipped(body["error"].as_str().unwrap_or(""), 80);
    // Storage's own words for a refusal of the key or the setup (a wrong JWT secret, an issuer,
    // a missing GRANT look alike by status): its code, and for 401/403 its message, which names
    // no object there (messages that quote a path come with 400).
    let code = crate::credentials::redact_clipped(body["code"].as_str().unwrap_or(""), 40);
    let message = match status {
        401 | 403 => crate::credentials::redact_clipped(body["message"].as_str().unwrap_or(""), 120),
        _ => String::new(),
    };
    let described = || {
        format!(
            "storage answered {} (statusCode {:?}, error {error:?}, code {code:?}, message {message:?})",
            response.status_described(),
            inner
        )
    };
    match (status, settings.mode, session_time_refusal(&body)) {
        (403, StorageMode::Rls, Some(SessionError::Expired)) => return Err(FileError::Session(SessionError::Expired)),
        // Not valid yet for Storage, which allows no clock skew, though the worker's leeway
        // accepted it: a refreshed session is no better, the same request soon passes. A wait,
        // not a bad session (as PostgREST's "not yet valid" is retryable for uploads).
        (403, StorageMode::Rls, Some(_)) => {
            return Err(FileError::Unavailable {
                detail: "storage: the session is not valid yet by Storage's clock (it allows no clock skew)".into(),
            })
        }
        _ => {}
    }
    match status {
        200..=299 => {}
        // In service mode the service key was refused: the configuration's, never the user's.
        403 if settings.mode == StorageMode::Rls && is_policy_refusal(&body) => {
            return Err(FileError::Denied { index })
        }
        404 if error == "not_found" && request.op == FileOp::Delete => {
            return Ok(FileResult::Deleted { existed: false })
        }
        404 if error == "not_found" && request.op == FileOp::Download => return Err(FileError::NotFound { index }),
        // An occupied path (`Duplicate`); Storage's other 409s (a transaction conflict, a
        // referenced resource) are not the user's: try again.
        409 if error == "Duplicate" => return Err(FileError::Exists { index }),
        409 => return Err(FileError::Unavailable { detail: described() }),
        413 => return Err(FileError::TooLarge { index, max_bytes: 0 }),
        415 => return Err(FileError::TypeNotAllowed { index }),
        408 | 429 | 500..=599 => return Err(FileError::Unavailable { detail: described() }),
        _ => return Err(FileError::Failed { detail: described() }),
    }
    let base = &settings.storage_url;
    let relative = |key: &str| body[key].as_str().filter(|u| u.starts_with('/')).map(|u| format!("{base}{u}"));
    match request.op {
        FileOp::Upload => {
            let url = relative("url")
                .ok_or_else(|| FileError::Failed { detail: "storage: no url in the upload signing answer".into() })?;
            let headers = vec![
                ("Content-Type".to_string(), file.content_type.clone().unwrap_or_default()),
                ("x-upsert".to_string(), file.upsert.to_string()),
            ];
            Ok(FileResult::Signed { url, headers, expires_in: None })
        }
        FileOp::Download => {
            let url = relative("signedURL")
                .ok_or_else(|| FileError::Failed { detail: "storage: no signedURL in the signing answer".into() })?;
            // Served as an attachment (Storage's `download` parameter, as supabase-js's
            // `download` option): an SVG or HTML file a user uploaded never runs script on the
            // project's Storage origin for whoever opens the link. Images, media and fetch read
            // it as before.
            let url = format!("{url}{}download=", if url.contains('?') { '&' } else { '?' });
            Ok(FileResult::Signed { url, headers: vec![], expires_in: Some(download_seconds(request, settings)) })
        }
        // Storage answers `{"message": "Successfully deleted"}`; any other 2xx (a catch-all host or
        // a proxy at STORAGE_URL) deleted nothing the worker knows of: never reported deleted.
        FileOp::Delete if body["message"].is_string() => Ok(FileResult::Deleted { existed: true }),
        FileOp::Delete => {
            Err(FileError::Failed { detail: format!("{}: not Storage's answer to a delete", described()) })
        }
    }
}

/// Whether `result` says Storage has no such object (a delete of nothing, a download not found):
/// Storage says so for any object of a bucket it does not have (it looks the object up, not the
/// bucket), so in service mode the worker asks whether the bucket exists ([`bucket_request`]).
pub fn says_no_such_object(result: &Result<FileResult, FileError>) -> bool {
    matches!(result, Ok(FileResult::Deleted { existed: false }) | Err(FileError::NotFound { .. }))
}

/// Service mode: the request that asks Storage whether `file`'s bucket exists, with the service
/// key. Without it, a bucket missing from Storage (a name in `STORAGE_BUCKETS` it does not have,
/// a bucket dropped) reports every delete done and every download not found. In rls mode the user's
/// token may not read the bucket (storage.buckets' policies): `None`, nothing asked.
pub fn bucket_request(file: &FileSpec, settings: &StorageSettings) -> Option<HttpRequest> {
    let key = settings.service_key.as_deref().filter(|_| settings.mode == StorageMode::Service)?;
    // a checked bucket name (`A-Z a-z 0-9 _ . -`) goes into a URL as it is
    Some(
        HttpRequest::new(Method::Get, format!("{}/bucket/{}", settings.storage_url, file.bucket))
            .header("Authorization", format!("Bearer {key}"))
            .header("apikey", key),
    )
}

/// Storage's answer to [`bucket_request`]: `Ok` when the bucket exists; the configuration's
/// error (502) when Storage does not have it or the answer is not Storage's; unavailable when
/// Storage is.
pub fn bucket_exists(answer: Result<HttpResponse, TransportError>) -> Result<(), FileError> {
    let response = answer.map_err(|e| FileError::Unavailable { detail: format!("storage: {}", e.message) })?;
    let body: Value = serde_json::from_str(&response.body).unwrap_or(Value::Null);
    match response.status {
        200 if body["id"].is_string() => Ok(()),
        408 | 429 | 500..=599 => Err(FileError::Unavailable {
            detail: format!("storage answered {} for the bucket", response.status_described()),
        }),
        _ if body["error"] == "Bucket not found" => Err(FileError::Failed {
            detail: "storage does not have the bucket (check STORAGE_BUCKETS and STORAGE_URL): \
                     it answered no such object for it"
                .into(),
        }),
        _ => Err(FileError::Failed {
            detail: format!("storage answered {} when asked for the bucket", response.status_described()),
        }),
    }
}

/// Storage's refusal of the session's times, in its JWT library's words (jose 6, as Storage 1.70
/// answers them: `"exp" claim timestamp check failed`, ...): expired, or not valid yet.
fn session_time_refusal(body: &Value) -> Option<SessionError> {
    let message = body["message"].as_str()?;
    if message.starts_with("\"exp\" claim timestamp check failed")
        || message.starts_with("\"iat\" claim timestamp check failed (too far in the past)")
    {
        Some(SessionError::Expired)
    } else if message.starts_with("\"nbf\" claim timestamp check failed")
        || message.starts_with("\"iat\" claim timestamp check failed (it should be in the past)")
    {
        Some(SessionError::NotYetValid)
    } else {
        None
    }
}

/// Whether a 403 body is a storage policy's refusal, in Storage's words (supabase/storage 1.70):
/// a row the policies refuse (`new row violates row-level security policy`, from 42501 with
/// row-level security) or a delete they hide (`Access denied`). Not: a token Storage did not
/// accept (its JWT check's message), a role without the GRANT (`permission denied for table
/// objects`), `Access denied: JWT is not authenticated`.
fn is_policy_refusal(body: &Value) -> bool {
    let message = body["message"].as_str().unwrap_or("");
    message.contains("row-level security") || message == "Access denied"
}

/// The answer body: one entry per file, in request order.
pub fn answer_body(request: &FileRequest, results: &[FileResult]) -> Value {
    let files: Vec<Value> = request
        .files
        .iter()
        .zip(results)
        .map(|(file, result)| {
            let mut entry = json!({ "bucket": file.bucket, "path": file.path });
            match result {
                FileResult::Signed { url, headers, expires_in } => {
                    entry["url"] = json!(url);
                    if request.op == FileOp::Upload {
                        entry["method"] = json!("PUT");
                        entry["headers"] = Value::Object(headers.iter().map(|(k, v)| (k.clone(), json!(v))).collect());
                    }
                    if let Some(seconds) = expires_in {
                        entry["expires_in"] = json!(seconds);
                    }
                }
                FileResult::Deleted { existed } => entry["deleted"] = json!(existed),
            }
            entry
        })
        .collect();
    json!({ "files": files })
}

/// Most characters of a bucket's name in the log line (Storage's own limit is 100 bytes).
const MAX_LOGGED_BUCKET_CHARS: usize = 100;

/// The log line's `files` field: counts, declared bytes and buckets; never a path (paths often
/// hold names, ids or other personal data). Made before the request is checked, so from the
/// caller's input as it came: the declared sizes are added without overflowing, and a bucket
/// name is clipped to the longest Storage accepts.
pub fn log_summary(request: &FileRequest, done: usize) -> Value {
    let mut buckets: Vec<String> =
        request.files.iter().map(|f| f.bucket.chars().take(MAX_LOGGED_BUCKET_CHARS).collect()).collect();
    buckets.sort_unstable();
    buckets.dedup();
    let bytes = request.files.iter().filter_map(|f| f.size).fold(0u64, u64::saturating_add);
    json!({ "op": request.op.name(), "count": request.files.len(), "done": done, "bytes": bytes, "buckets": buckets })
}

#[cfg(test)]
mod tests {
    use super::settings::parse_buckets;
    use super::*;

    fn settings(mode: StorageMode, buckets: Option<&str>) -> StorageSettings {
        StorageSettings {
            mode,
            storage_url: "https://ref.supabase.co/storage/v1".into(),
            anon_key: "anon".into(),
            service_key: (mode == StorageMode::Service).then(|| "svc".to_string()),
            buckets: buckets.map(|b| parse_buckets(b).unwrap()),
            download_url_seconds: 600,
            allow_anonymous: false,
        }
    }

    fn upload(path: &str, kind: &str, size: u64) -> FileRequest {
        let body = json!({"files": [{"bucket": "photos", "path": path, "content_type": kind, "size": size}]});
        parse_request(FileOp::Upload, body.to_string().as_bytes()).unwrap()
    }

    fn answer(status: u16, body: Value) -> Result<HttpResponse, TransportError> {
        Ok(HttpResponse { status, headers: vec![], body: body.to_string() })
    }

    #[test]
    fn paths_with_traversal_empty_segments_or_control_characters_are_refused() {
        assert_eq!(check_path("u1/a b/c.jpg"), Ok(()));
        for (path, problem) in [
            ("", PathProblem::Empty),
            ("u1/../u2/a", PathProblem::DotSegment),
            ("./a", PathProblem::DotSegment),
            ("/u1/a", PathProblem::EmptySegment),
            ("u1//a", PathProblem::EmptySegment),
            ("u1/", PathProblem::EmptySegment),
            ("u1/a\u{0}b", PathProblem::ControlCharacter),
            ("u1/a\nb", PathProblem::ControlCharacter),
            ("u1\\..\\a", PathProblem::Backslash),
        ] {
            assert_eq!(check_path(path), Err(problem), "{path:?}");
        }
        assert_eq!(check_path(&"a".repeat(1025)), Err(PathProblem::TooLong));
        assert_eq!(check_path(&vec!["a".repeat(255); 4].join("/")), Ok(()));
        assert_eq!(check_path(&format!("u1/{}", "a".repeat(256))), Err(PathProblem::LongSegment));
    }

    #[test]
    fn paths_hold_only_the_characters_storage_accepts_in_a_name() {
        assert_eq!(check_path("u1/2024-01-01T10:00:00 (1) a_b!c*d'e&f$g=h@i;j+k,l.jpg"), Ok(()));
        for path in
            ["u1/ü.jpg", "u1/a?b", "u1/a#b", "u1/a%2e%2e", "u1/a|b", "u1/a~b", "u1/a\"b", "auth0|123/a", "u1/a[b]"]
        {
            assert!(check_path(path).is_err(), "{path:?}");
        }
        assert_eq!(check_path("u1/ü.jpg"), Err(PathProblem::Character));
        assert!(PathProblem::Character.reason().contains("A-Z a-z 0-9"));
    }

    #[test]
    fn malformed_bodies_name_the_field() {
        for (op, body, field) in [
            (FileOp::Upload, "[]", "$"),
            (FileOp::Upload, r#"{"files":[]}"#, "files"),
            (FileOp::Upload, r#"{"files":[{"bucket":"b","path":"p","size":1}]}"#, "files[0].content_type"),
            (
                FileOp::Upload,
                r#"{"files":[{"bucket":"b","path":"p","content_type":"image/png;a=b, text/html","size":1}]}"#,
                "files[0].content_type",
            ),
            (
                FileOp::Upload,
                r#"{"files":[{"bucket":"b","path":"p","content_type":"a/b","size":-1}]}"#,
                "files[0].size",
            ),
            (FileOp::Download, r#"{"files":[{"bucket":"b","path":"p","size":1}]}"#, "files[0].size"),
            (FileOp::Download, r#"{"files":[{"bucket":"b","path":"p"}],"expires_in":0}"#, "expires_in"),
            (FileOp::Delete, r#"{"files":[{"bucket":"b"}]}"#, "files[0].path"),
            (FileOp::Delete, r#"{"files":[{"bucket":"b","path":"p"}],"expires_in":5}"#, "expires_in"),
        ] {
            match parse_request(op, body.as_bytes()) {
                Err(FileError::Malformed { field: f, .. }) => assert_eq!(f, field, "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
        let many = json!({"files": vec![json!({"bucket": "b", "path": "p"}); MAX_FILES_PER_REQUEST + 1]});
        assert!(matches!(parse_request(FileOp::Delete, many.to_string().as_bytes()), Err(FileError::Malformed { .. })));
    }

    #[test]
    fn service_rules_refuse_other_buckets_other_users_folders_large_and_wrongly_typed_files() {
        let s = settings(StorageMode::Service, Some(r#"{"photos":{"max_bytes":100,"content_types":["image/*"]}}"#));
        assert_eq!(check(&upload("u1/a.jpg", "image/jpeg", 100), &s, "u1"), Ok(()));
        assert_eq!(check(&upload("u2/a.jpg", "image/jpeg", 1), &s, "u1"), Err(FileError::PathNotAllowed { index: 0 }));
        assert_eq!(check(&upload("u1", "image/jpeg", 1), &s, "u1"), Err(FileError::PathNotAllowed { index: 0 }));
        assert_eq!(check(&upload("u10/a.jpg", "image/jpeg", 1), &s, "u1"), Err(FileError::PathNotAllowed { index: 0 }));
        assert_eq!(
            check(&upload("u1/a.jpg", "image/jpeg", 101), &s, "u1"),
            Err(FileError::TooLarge { index: 0, max_bytes: 100 })
        );
        assert_eq!(check(&upload("u1/a.html", "text/html", 1), &s, "u1"), Err(FileError::TypeNotAllowed { index: 0 }));
        assert_eq!(
            check(&upload("u1/../u2/a.jpg", "image/jpeg", 1), &s, "u1"),
            Err(FileError::InvalidPath { index: 0, problem: PathProblem::DotSegment })
        );
        let other = settings(StorageMode::Service, Some("docs"));
        assert_eq!(
            check(&upload("u1/a.jpg", "image/jpeg", 1), &other, "u1"),
            Err(FileError::BucketNotAllowed { index: 0 })
        );
    }

    #[test]
    fn a_user_id_that_is_not_one_segment_never_matches_a_template() {
        let rules = BucketRules::default();
        assert!(within_template(&rules, "google-oauth2_123", "google-oauth2_123/a"));
        assert!(!within_template(&rules, "auth0|123", "auth0|123/a"), "Storage refuses | in a name");
        assert!(!within_template(&rules, "..", "../a"));
        assert!(!within_template(&rules, "a/b", "a/b/c"));
        assert!(!within_template(&rules, "", "/a"));
    }

    #[test]
    fn rls_mode_without_buckets_checks_only_names() {
        let s = settings(StorageMode::Rls, None);
        assert_eq!(check(&upload("anyone/a.jpg", "text/html", u64::MAX), &s, "u1"), Ok(()));
        assert!(matches!(check(&upload("a//b", "image/png", 1), &s, "u1"), Err(FileError::InvalidPath { .. })));
    }

    #[test]
    fn storage_requests_carry_the_users_token_in_rls_mode_and_the_service_key_in_service_mode() {
        let request = upload("u1/a b.jpg", "image/jpeg", 3);
        let rls = plan(&request, &request.files[0], &settings(StorageMode::Rls, None), "user-jwt");
        assert_eq!(rls.method, Method::Post);
        assert_eq!(rls.url, "https://ref.supabase.co/storage/v1/object/upload/sign/photos/u1/a%20b.jpg");
        assert_eq!(rls.header_value("authorization"), Some("Bearer user-jwt"));
        assert_eq!(rls.header_value("apikey"), Some("anon"));
        assert_eq!(rls.header_value("x-upsert"), Some("false"));
        let service = plan(&request, &request.files[0], &settings(StorageMode::Service, Some("photos")), "user-jwt");
        assert_eq!(service.header_value("authorization"), Some("Bearer svc"));
        assert_eq!(service.header_value("apikey"), Some("svc"));
    }

    #[test]
    fn download_lifetime_is_the_asked_one_at_most_the_configured_one() {
        let s = settings(StorageMode::Rls, None);
        for (asked, got) in [(None, 600), (Some(60), 60), (Some(6000), 600)] {
            let mut body = json!({"files": [{"bucket": "photos", "path": "u1/a"}]});
            if let Some(asked) = asked {
                body["expires_in"] = json!(asked);
            }
            let request = parse_request(FileOp::Download, body.to_string().as_bytes()).unwrap();
            let planned = plan(&request, &request.files[0], &s, "t");
            assert_eq!(planned.url, "https://ref.supabase.co/storage/v1/object/sign/photos/u1/a");
            assert_eq!(planned.body, Some(json!({"expiresIn": got}).to_string()));
        }
    }

    #[test]
    fn deletes_go_to_the_object() {
        let request = parse_request(FileOp::Delete, br#"{"files":[{"bucket":"photos","path":"u1/a.jpg"}]}"#).unwrap();
        let planned = plan(&request, &request.files[0], &settings(StorageMode::Rls, None), "t");
        assert_eq!(
            (planned.method, planned.url.as_str()),
            (Method::Delete, "https://ref.supabase.co/storage/v1/object/photos/u1/a.jpg")
        );
    }

    #[test]
    fn names_go_into_urls_as_storage_signs_them_punctuation_unencoded_and_spaces_as_percent_20() {
        let name = "u1/a:b@c&d=e+f,g;h$i!j*k'l(m) n.jpg";
        assert_eq!(check_path(name), Ok(()));
        let body = json!({"files": [{"bucket": "photos", "path": name}]}).to_string();
        let request = parse_request(FileOp::Download, body.as_bytes()).unwrap();
        let planned = plan(&request, &request.files[0], &settings(StorageMode::Rls, None), "t");
        assert_eq!(
            planned.url,
            "https://ref.supabase.co/storage/v1/object/sign/photos/u1/a:b@c&d=e+f,g;h$i!j*k'l(m)%20n.jpg"
        );
        // Unchecked names (never planned by the app) still cannot end the path early.
        let body = json!({"files": [{"bucket": "photos", "path": "u1/a?x=1#f%ü"}]}).to_string();
        let request = parse_request(FileOp::Delete, body.as_bytes()).unwrap();
        let planned = plan(&request, &request.files[0], &settings(StorageMode::Rls, None), "t");
        assert_eq!(planned.url, "https://ref.supabase.co/storage/v1/object/photos/u1/a%3Fx=1%23f%25%C3%BC");
    }

    #[test]
    fn storage_answers_are_classified_by_the_body_status_code() {
        let s = settings(StorageMode::Rls, None);
        let request = upload("u1/a.jpg", "image/jpeg", 3);
        let file = &request.files[0];
        let denied = answer(
            400,
            json!({"statusCode": "403", "error": "Unauthorized", "message": "new row violates row-level security policy"}),
        );
        assert_eq!(interpret(&request, file, 2, &s, denied.clone()), Err(FileError::Denied { index: 2 }));
        let service = settings(StorageMode::Service, Some("photos"));
        assert!(
            matches!(interpret(&request, file, 0, &service, denied), Err(FileError::Failed { .. })),
            "the service key refused: ours"
        );
        // Storage's other 403s, in its own form (HTTP 400, AccessDenied, the cause as message):
        // the operator's to fix, never the user's refusal.
        for message in [
            "signature verification failed",
            "unexpected \"iss\" claim value",
            "no applicable key found in the JSON Web Key Set",
            "permission denied for table objects",
            "Access denied: JWT is not authenticated",
            "JWT payload is missing",
        ] {
            let refused = answer(
                400,
                json!({"statusCode": "403", "code": "AccessDenied", "error": "Unauthorized", "message": message}),
            );
            assert!(matches!(interpret(&request, file, 0, &s, refused), Err(FileError::Failed { .. })), "{message}");
        }
        assert!(matches!(
            interpret(&request, file, 0, &s, answer(403, json!({"statusCode": "403", "error": "Unauthorized"}))),
            Err(FileError::Failed { .. })
        ));
        let exists =
            answer(400, json!({"statusCode": "409", "error": "Duplicate", "message": "The resource already exists"}));
        assert_eq!(interpret(&request, file, 0, &s, exists), Err(FileError::Exists { index: 0 }));
        let conflict = answer(400, json!({"statusCode": "409", "error": "TransactionError", "message": "x"}));
        assert!(matches!(interpret(&request, file, 0, &s, conflict), Err(FileError::Unavailable { .. })));
        assert!(matches!(
            interpret(&request, file, 0, &s, answer(502, json!(null))),
            Err(FileError::Unavailable { .. })
        ));
        // an answer echoing credentials (a proxy at STORAGE_URL) is logged without them
        let echoed =
            answer(418, json!({"error": "apikey sb_secret_ABCDEFGHIJ1234567890 authorization: Bearer eyJh.eyJz.sig"}));
        let Err(FileError::Failed { detail }) = interpret(&request, file, 0, &s, echoed) else { panic!("failed") };
        assert!(!detail.contains("sb_secret_ABCDEFGHIJ") && !detail.contains("eyJh.eyJz"), "{detail}");
        // in any field it logs (found by an audit: `code` was only clipped)
        for field in ["error", "code", "message"] {
            let echoed = answer(403, json!({field: "sb_secret_ABCDEFGHIJ1234567890"}));
            let Err(FileError::Failed { detail }) = interpret(&request, file, 0, &s, echoed) else { panic!("failed") };
            assert!(!detail.contains("sb_secret_ABCDEFGHIJ"), "{field}: {detail}");
        }
        assert!(matches!(
            interpret(&request, file, 0, &s, Err(TransportError::timed_out("t"))),
            Err(FileError::Unavailable { .. })
        ));
        assert!(matches!(
            interpret(&request, file, 0, &s, answer(400, json!({"statusCode": "400", "error": "InvalidJWT"}))),
            Err(FileError::Failed { .. })
        ));
        let signed = answer(200, json!({"url": "/object/upload/sign/photos/u1/a.jpg?token=abc"}));
        let FileResult::Signed { url, headers, .. } = interpret(&request, file, 0, &s, signed).unwrap() else {
            panic!()
        };
        assert_eq!(url, "https://ref.supabase.co/storage/v1/object/upload/sign/photos/u1/a.jpg?token=abc");
        assert_eq!(headers, vec![("Content-Type".into(), "image/jpeg".into()), ("x-upsert".into(), "false".into())]);
    }

    #[test]
    fn a_download_url_is_served_as_an_attachment() {
        let s = settings(StorageMode::Rls, None);
        let download =
            parse_request(FileOp::Download, br#"{"files":[{"bucket":"photos","path":"u1/x.svg"}]}"#).unwrap();
        let signed = answer(200, json!({"signedURL": "/object/sign/photos/u1/x.svg?token=abc"}));
        let Ok(FileResult::Signed { url, .. }) = interpret(&download, &download.files[0], 0, &s, signed) else {
            panic!()
        };
        assert_eq!(url, "https://ref.supabase.co/storage/v1/object/sign/photos/u1/x.svg?token=abc&download=");
    }

    #[test]
    fn a_missing_object_is_not_found_for_downloads_and_already_gone_for_deletes() {
        let s = settings(StorageMode::Rls, None);
        let missing = || answer(400, json!({"statusCode": "404", "error": "not_found", "message": "Object not found"}));
        let download = parse_request(FileOp::Download, br#"{"files":[{"bucket":"b","path":"u/a"}]}"#).unwrap();
        assert_eq!(interpret(&download, &download.files[0], 0, &s, missing()), Err(FileError::NotFound { index: 0 }));
        let delete = parse_request(FileOp::Delete, br#"{"files":[{"bucket":"b","path":"u/a"}]}"#).unwrap();
        assert_eq!(interpret(&delete, &delete.files[0], 0, &s, missing()), Ok(FileResult::Deleted { existed: false }));
        let hidden = answer(400, json!({"statusCode": "403", "error": "Unauthorized", "message": "Access denied"}));
        assert_eq!(interpret(&delete, &delete.files[0], 0, &s, hidden), Err(FileError::Denied { index: 0 }));
    }

    #[test]
    fn whether_storage_has_the_bucket_is_asked_in_service_mode_only_and_only_its_yes_passes() {
        let delete = parse_request(FileOp::Delete, br#"{"files":[{"bucket":"b","path":"u/a"}]}"#).unwrap();
        let file = &delete.files[0];
        assert!(says_no_such_object(&Ok(FileResult::Deleted { existed: false })));
        assert!(says_no_such_object(&Err(FileError::NotFound { index: 0 })));
        assert!(!says_no_such_object(&Ok(FileResult::Deleted { existed: true })));
        assert_eq!(bucket_request(file, &settings(StorageMode::Rls, None)), None, "a user may not read buckets");
        let asked = bucket_request(file, &settings(StorageMode::Service, Some("b"))).unwrap();
        assert_eq!((asked.method, asked.url.as_str()), (Method::Get, "https://ref.supabase.co/storage/v1/bucket/b"));
        assert_eq!(asked.header_value("apikey"), Some("svc"));
        assert_eq!(bucket_exists(answer(200, json!({"id": "b", "name": "b"}))), Ok(()));
        let missing = json!({"statusCode": "404", "error": "Bucket not found", "message": "Bucket not found"});
        for not_there in [answer(400, missing), answer(200, json!({})), answer(404, json!("gateway"))] {
            assert!(matches!(bucket_exists(not_there), Err(FileError::Failed { .. })));
        }
        assert!(matches!(bucket_exists(answer(503, json!({}))), Err(FileError::Unavailable { .. })));
        assert!(matches!(bucket_exists(Err(TransportError::timed_out("t"))), Err(FileError::Unavailable { .. })));
    }

    #[test]
    fn a_404_that_is_not_storages_missing_object_is_the_configurations_and_never_a_done_delete() {
        let s = settings(StorageMode::Service, Some("b"));
        let requests = [
            parse_request(FileOp::Delete, br#"{"files":[{"bucket":"b","path":"u/a"}]}"#).unwrap(),
            parse_request(FileOp::Download, br#"{"files":[{"bucket":"b","path":"u/a"}]}"#).unwrap(),
            upload("u/a", "image/png", 1),
        ];
        let answers = [
            answer(400, json!({"statusCode": "404", "error": "Bucket not found", "message": "Bucket not found"})),
            answer(
                400,
                json!({"statusCode": "404", "error": "InvalidRequest", "message": "The related resource does not exist"}),
            ),
            answer(404, json!({"message": "no Route matched with those values"})),
            Ok(HttpResponse { status: 404, headers: vec![], body: "<html><h1>404 Not Found</h1></html>".into() }),
            answer(404, json!(null)),
        ];
        for request in &requests {
            for got in &answers {
                let result = interpret(request, &request.files[0], 0, &s, got.clone());
                assert!(matches!(result, Err(FileError::Failed { .. })), "{:?} {got:?}: {result:?}", request.op);
            }
        }
        let upload_request = upload("u/a", "image/png", 1);
        let missing = answer(400, json!({"statusCode": "404", "error": "not_found", "message": "Object not found"}));
        assert!(matches!(
            interpret(&upload_request, &upload_request.files[0], 0, &s, missing),
            Err(FileError::Failed { .. })
        ));
    }

    #[test]
    fn a_session_storage_finds_expired_is_refused_as_expired_not_blamed_on_the_configuration() {
        // Storage checks a session's times with no clock skew; the worker allows some.
        let refusal =
            |message: &str| answer(400, json!({"statusCode": "403", "error": "Unauthorized", "message": message}));
        let rls = settings(StorageMode::Rls, None);
        let delete = parse_request(FileOp::Delete, br#"{"files":[{"bucket":"b","path":"u/a"}]}"#).unwrap();
        let got = |s: &StorageSettings, message: &str| interpret(&delete, &delete.files[0], 0, s, refusal(message));
        assert_eq!(got(&rls, "\"exp\" claim timestamp check failed"), Err(FileError::Session(SessionError::Expired)));
        for not_yet in
            ["\"nbf\" claim timestamp check failed", "\"iat\" claim timestamp check failed (it should be in the past)"]
        {
            let error = got(&rls, not_yet).expect_err(not_yet);
            assert!(matches!(error, FileError::Unavailable { .. }), "{not_yet}: a wait, not a bad session: {error:?}");
        }
        let error = crate::error::ApiError::File(FileError::Session(SessionError::Expired));
        assert_eq!((error.status(), error.code()), (401, "session_expired"));
        // the service key's times are the configuration's
        let service = settings(StorageMode::Service, Some("b"));
        assert!(matches!(got(&service, "\"exp\" claim timestamp check failed"), Err(FileError::Failed { .. })));
    }

    #[test]
    fn a_body_never_turns_a_failed_answer_into_a_success() {
        let s = settings(StorageMode::Rls, None);
        let delete = parse_request(FileOp::Delete, br#"{"files":[{"bucket":"b","path":"u/a"}]}"#).unwrap();
        for (status, body) in [
            (500, json!({"statusCode": 200})),
            (500, json!({"statusCode": "200"})),
            (400, json!({"statusCode": 65736})),
            (400, json!({"statusCode": "204"})),
            (503, json!({"statusCode": "404", "error": "not_found"})),
        ] {
            let result = interpret(&delete, &delete.files[0], 0, &s, answer(status, body.clone()));
            assert!(
                matches!(result, Err(FileError::Unavailable { .. } | FileError::Failed { .. })),
                "{status} {body}: {result:?}"
            );
        }
    }

    #[test]
    fn only_storages_own_answer_to_a_delete_reports_the_file_deleted() {
        let s = settings(StorageMode::Rls, None);
        let delete = parse_request(FileOp::Delete, br#"{"files":[{"bucket":"b","path":"u/a"}]}"#).unwrap();
        let got = |answer| interpret(&delete, &delete.files[0], 0, &s, answer);
        assert_eq!(
            got(answer(200, json!({"message": "Successfully deleted"}))),
            Ok(FileResult::Deleted { existed: true })
        );
        let html = Ok(HttpResponse { status: 200, headers: vec![], body: "<html>welcome</html>".into() });
        let empty = Ok(HttpResponse { status: 204, headers: vec![], body: String::new() });
        for not_storages in [html, empty, answer(200, json!({}))] {
            let result = got(not_storages.clone());
            assert!(matches!(result, Err(FileError::Failed { .. })), "{not_storages:?}: {result:?}");
        }
    }

    #[test]
    fn a_refusal_of_the_setup_is_logged_with_storages_code_and_message() {
        let s = settings(StorageMode::Service, Some("b"));
        let delete = parse_request(FileOp::Delete, br#"{"files":[{"bucket":"b","path":"u/a"}]}"#).unwrap();
        let refused = |message: &str| {
            answer(400, json!({"statusCode": "403", "code": "InvalidJWT", "error": "Unauthorized", "message": message}))
        };
        let detail = |message: &str| match interpret(&delete, &delete.files[0], 0, &s, refused(message)) {
            Err(FileError::Failed { detail }) => detail,
            other => panic!("{other:?}"),
        };
        let wrong_secret = detail("signature verification failed");
        assert!(
            wrong_secret.contains(r#"code "InvalidJWT", message "signature verification failed""#),
            "{wrong_secret}"
        );
        assert_ne!(wrong_secret, detail("unexpected \"iss\" claim value"), "two causes, two log lines");
        // a 400 that quotes the object's path logs no message
        let invalid = answer(
            400,
            json!({"statusCode": "400", "code": "InvalidKey", "error": "Invalid Input", "message": "Invalid key: u/secret"}),
        );
        match interpret(&delete, &delete.files[0], 0, &s, invalid) {
            Err(FileError::Failed { detail }) => assert!(!detail.contains("secret"), "{detail}"),
            other => panic!("{other:?}"),
        }
    }

    /// The declared type comes back as the `Content-Type` header the client must PUT with: a
    /// value no HTTP client can send as a header (beyond Latin-1, fetch, undici and browsers
    /// throw a TypeError) was signed, and the adapter's PUT failed as a `network_error`, retried
    /// for ever. It is the caller's 400 (`invalid_body`, field `files[0].content_type`).
    #[test]
    fn a_content_type_no_client_can_send_as_a_header_is_refused_before_signing() {
        for kind in ["image/p\u{2028}ng", "image/png\u{1F600}", "image/\u{0100}png"] {
            let body = json!({"files": [{"bucket": "photos", "path": "u1/a", "content_type": kind, "size": 1}]});
            match parse_request(FileOp::Upload, body.to_string().as_bytes()) {
                Err(FileError::Malformed { field, .. }) => assert_eq!(field, "files[0].content_type"),
                other => panic!("{kind:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn log_summary_has_counts_bytes_and_buckets_but_no_path() {
        let request = upload("u1/secret-diagnosis.pdf", "application/pdf", 42);
        let summary = log_summary(&request, 1);
        assert_eq!(summary, json!({"op": "upload", "count": 1, "done": 1, "bytes": 42, "buckets": ["photos"]}));
        assert!(!summary.to_string().contains("diagnosis"));
    }

    #[test]
    fn log_summary_of_unchecked_input_neither_overflows_nor_grows_with_a_bucket_name() {
        let body = json!({"files": [
            {"bucket": "b".repeat(60_000), "path": "u1/a", "content_type": "text/plain", "size": u64::MAX},
            {"bucket": "photos", "path": "u1/b", "content_type": "text/plain", "size": u64::MAX},
        ]});
        let request = parse_request(FileOp::Upload, body.to_string().as_bytes()).expect("parsed before it is checked");
        let summary = log_summary(&request, 0);
        assert_eq!(summary["bytes"], u64::MAX);
        assert!(summary.to_string().len() < 300, "{summary}");
    }
}
