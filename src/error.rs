//! The one mapping from what went wrong to what the caller sees: HTTP status, stable `code`,
//! public message. Caller's-fault errors (4xx) are kept apart from ours (5xx); for ours, the
//! details go to the log only and the body stays fixed.
//!
//! Bodies are `{"error": <message>, "code": <code>, "request_id": ...}`; the messages of the
//! Supabase Edge Function this worker replaces (`No authorization header`, `Unauthorized`,
//! `PowerSync not configured`, `Failed to import private key`) are kept verbatim.

use serde_json::{json, Value};

use crate::config::PowerSyncProblem;
use crate::keys::KeyError;
use crate::session::SessionError;
use crate::storage::FileError;

/// Most characters of an error's detail in the log line (then `…`).
pub const MAX_LOG_DETAIL_CHARS: usize = 300;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// No `Authorization: Bearer ...` header, or a blank one.
    MissingAuthorization,
    Session(SessionError),
    PowerSync(PowerSyncProblem),
    /// The session part of the configuration is unusable (names of the bad settings).
    SessionNotConfigured(Vec<String>),
    /// The upload part of the configuration is unusable (names of the bad settings).
    UploadNotConfigured(Vec<String>),
    /// WebCrypto refused the key or the signature failed.
    Signing(String),
    /// A malformed request body; `path` points at the offending field.
    BadRequest {
        path: String,
        message: String,
    },
    PayloadTooLarge(String),
    /// A body with a `Content-Encoding` other than `identity` (workerd does not decode a request
    /// body): the encoding's name, as sent (clipped).
    UnsupportedEncoding(String),
    /// Service mode refuses anonymous sign-ins (`UPLOAD_ALLOW_ANONYMOUS` unset).
    AnonymousNotAllowed,
    /// The file endpoints: a refused file request, or Storage's answer.
    File(FileError),
    /// The file part of the configuration is unusable (names of the bad settings).
    StorageNotConfigured(Vec<String>),
    NotFound,
    MethodNotAllowed {
        allow: &'static str,
    },
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            ApiError::MissingAuthorization => 401,
            ApiError::Session(e) => match e {
                SessionError::KeysUnavailable(_) | SessionError::AuthUnavailable(_) => 503,
                SessionError::AuthMisconfigured(_) => 500,
                _ => 401,
            },
            ApiError::PowerSync(_)
            | ApiError::SessionNotConfigured(_)
            | ApiError::UploadNotConfigured(_)
            | ApiError::Signing(_) => 500,
            ApiError::BadRequest { .. } => 400,
            ApiError::PayloadTooLarge(_) => 413,
            ApiError::UnsupportedEncoding(_) => 415,
            ApiError::AnonymousNotAllowed => 403,
            ApiError::File(e) => match e {
                FileError::Malformed { .. } | FileError::InvalidPath { .. } | FileError::InvalidBucket { .. } => 400,
                FileError::BucketNotAllowed { .. } | FileError::PathNotAllowed { .. } | FileError::Denied { .. } => 403,
                FileError::NotFound { .. } => 404,
                FileError::Exists { .. } => 409,
                FileError::TooLarge { .. } => 413,
                FileError::TypeNotAllowed { .. } => 415,
                FileError::Unavailable { .. } => 503,
                FileError::Failed { .. } => 502,
                FileError::Session(e) => ApiError::Session(e.clone()).status(),
            },
            ApiError::StorageNotConfigured(_) => 500,
            ApiError::NotFound => 404,
            ApiError::MethodNotAllowed { .. } => 405,
        }
    }

    /// Stable machine-readable code; apps and runbooks key on it.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MissingAuthorization => "missing_authorization",
            ApiError::Session(e) => match e {
                SessionError::Expired => "session_expired",
                SessionError::Revoked(_) => "session_revoked",
                SessionError::KeysUnavailable(_) => "session_keys_unavailable",
                SessionError::AuthUnavailable(_) => "auth_unavailable",
                SessionError::AuthMisconfigured(_) => "auth_check_misconfigured",
                _ => "session_invalid",
            },
            ApiError::PowerSync(PowerSyncProblem::Missing(_)) => "powersync_not_configured",
            ApiError::PowerSync(PowerSyncProblem::Key(e)) => e.code(),
            ApiError::PowerSync(PowerSyncProblem::Invalid(_)) => "powersync_config_invalid",
            ApiError::SessionNotConfigured(_) => "session_not_configured",
            ApiError::UploadNotConfigured(_) => "upload_not_configured",
            ApiError::Signing(_) => "signing_failed",
            ApiError::BadRequest { .. } => "invalid_body",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedEncoding(_) => "unsupported_encoding",
            ApiError::AnonymousNotAllowed => "anonymous_not_allowed",
            ApiError::File(e) => match e {
                FileError::Malformed { .. } => "invalid_body",
                FileError::InvalidPath { .. } => "file_path_invalid",
                FileError::InvalidBucket { .. } => "file_bucket_invalid",
                FileError::BucketNotAllowed { .. } => "file_bucket_not_allowed",
                FileError::PathNotAllowed { .. } => "file_path_not_allowed",
                FileError::TooLarge { .. } => "file_too_large",
                FileError::TypeNotAllowed { .. } => "file_type_not_allowed",
                FileError::Denied { .. } => "file_denied",
                FileError::NotFound { .. } => "file_not_found",
                FileError::Exists { .. } => "file_exists",
                FileError::Unavailable { .. } => "storage_unavailable",
                FileError::Failed { .. } => "storage_failed",
                FileError::Session(e) => ApiError::Session(e.clone()).code(),
            },
            ApiError::StorageNotConfigured(_) => "storage_not_configured",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
        }
    }

    /// The public message. Never contains a token, a key or an internal detail.
    pub fn message(&self) -> String {
        match self {
            ApiError::MissingAuthorization => "No authorization header".into(),
            ApiError::Session(SessionError::KeysUnavailable(_)) => "Session keys unavailable, try again".into(),
            ApiError::Session(SessionError::AuthUnavailable(_)) => "Supabase Auth unavailable, try again".into(),
            ApiError::Session(SessionError::AuthMisconfigured(_)) => "Session verification not configured".into(),
            ApiError::Session(_) => "Unauthorized".into(),
            ApiError::PowerSync(PowerSyncProblem::Key(_)) | ApiError::Signing(_) => {
                "Failed to import private key".into()
            }
            ApiError::PowerSync(_) => "PowerSync not configured".into(),
            ApiError::SessionNotConfigured(_) => "Session verification not configured".into(),
            ApiError::UploadNotConfigured(_) => "Upload not configured".into(),
            ApiError::BadRequest { path, message } => format!("{path}: {message}"),
            ApiError::PayloadTooLarge(message) => message.clone(),
            ApiError::UnsupportedEncoding(encoding) => {
                format!("Content-Encoding {encoding} is not accepted; send the body uncompressed")
            }
            ApiError::AnonymousNotAllowed => "Anonymous sessions cannot upload; sign in".into(),
            ApiError::File(e) => match e {
                FileError::Malformed { field, message } => format!("{field}: {message}"),
                FileError::InvalidPath { problem, .. } => format!("The path {}", problem.reason()),
                FileError::InvalidBucket { .. } => "The bucket name is not valid".into(),
                FileError::BucketNotAllowed { .. } => "Files cannot go to this bucket".into(),
                FileError::PathNotAllowed { .. } => "This path is outside your folder".into(),
                FileError::TooLarge { max_bytes: 0, .. } => "The file is too large".into(),
                FileError::TooLarge { max_bytes, .. } => format!("The file is too large; at most {max_bytes} bytes"),
                FileError::TypeNotAllowed { .. } => "This content type is not allowed here".into(),
                FileError::Denied { .. } => "Storage refused: a storage policy does not allow this".into(),
                FileError::NotFound { .. } => "No such file".into(),
                FileError::Exists { .. } => "A file already exists at this path (set upsert to replace it)".into(),
                FileError::Unavailable { .. } => "Storage unavailable, try again".into(),
                FileError::Failed { .. } => "Storage answered unexpectedly".into(),
                FileError::Session(e) => ApiError::Session(e.clone()).message(),
            },
            ApiError::StorageNotConfigured(_) => "Files not configured".into(),
            ApiError::NotFound => "Not found".into(),
            ApiError::MethodNotAllowed { allow } => format!("Method not allowed; use {allow}"),
        }
    }

    /// Detail for the log line: the reason behind the public message. No secrets.
    pub fn log_detail(&self) -> Option<String> {
        let detail = match self {
            ApiError::Session(e) | ApiError::File(FileError::Session(e)) => e.reason(),
            ApiError::PowerSync(PowerSyncProblem::Key(e)) => e.reason(),
            ApiError::Signing(why) => why.clone(),
            ApiError::File(FileError::Unavailable { detail } | FileError::Failed { detail }) => detail.clone(),
            _ => return None,
        };
        // A reason may quote the caller's input (a token's header, as its JSON parser saw it):
        // one anonymous request must not write a log line as long as its headers.
        Some(crate::credentials::clipped(&detail, MAX_LOG_DETAIL_CHARS).into_owned())
    }

    /// The JSON body. Configuration errors name the settings (never their values).
    pub fn body(&self, request_id: &str) -> Value {
        let mut body = json!({ "error": self.message(), "code": self.code(), "request_id": request_id });
        let names = match self {
            ApiError::PowerSync(PowerSyncProblem::Missing(names)) => Some(("missing", names)),
            ApiError::PowerSync(PowerSyncProblem::Invalid(names))
            | ApiError::SessionNotConfigured(names)
            | ApiError::UploadNotConfigured(names)
            | ApiError::StorageNotConfigured(names) => Some(("invalid", names)),
            _ => None,
        };
        if let Some((key, names)) = names {
            body[key] = json!(names);
        }
        if let ApiError::BadRequest { path, .. } = self {
            body["field"] = json!(path);
        }
        if let ApiError::File(e) = self {
            if let FileError::Malformed { field, .. } = e {
                body["field"] = json!(field);
            }
            if let Some(index) = e.index() {
                body["index"] = json!(index);
            }
        }
        body
    }
}

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> Self {
        ApiError::Session(e)
    }
}

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        ApiError::PowerSync(PowerSyncProblem::Key(e))
    }
}

/// The upload endpoint's status: 200 when every transaction reached a final outcome
/// (`success` or `fatal_error`), 503 + `Retry-After` when anything must be sent again, so a
/// client that looks only at the status retries (re-applying the applied prefix is harmless).
pub fn upload_status(needs_retry: bool) -> u16 {
    if needs_retry {
        503
    } else {
        200
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_refusals_are_the_callers_and_name_the_file_storage_failures_are_ours() {
        let outside = ApiError::File(FileError::PathNotAllowed { index: 3 });
        assert_eq!((outside.status(), outside.code()), (403, "file_path_not_allowed"));
        assert_eq!(outside.body("r")["index"], 3);
        let denied = ApiError::File(FileError::Denied { index: 0 });
        assert_eq!((denied.status(), denied.code()), (403, "file_denied"));
        let down = ApiError::File(FileError::Unavailable { detail: "storage: refused".into() });
        assert_eq!((down.status(), down.code()), (503, "storage_unavailable"));
        assert!(!down.body("r").to_string().contains("refused"), "details go to the log only");
        assert_eq!(ApiError::File(FileError::TooLarge { index: 0, max_bytes: 5 }).status(), 413);
        assert_eq!(ApiError::File(FileError::TypeNotAllowed { index: 0 }).status(), 415);
    }

    #[test]
    fn a_detail_quoting_the_callers_input_is_clipped_in_the_log() {
        let long = ApiError::Session(SessionError::Malformed("é".repeat(50_000)));
        let detail = long.log_detail().unwrap_or_default();
        assert_eq!(detail.chars().count(), MAX_LOG_DETAIL_CHARS + 1);
        assert!(detail.ends_with('…'));
        let short = ApiError::Session(SessionError::Malformed("not a JWT".into()));
        assert_eq!(short.log_detail().as_deref(), Some("malformed token: not a JWT"));
    }

    #[test]
    fn edge_function_messages_are_kept_verbatim() {
        assert_eq!(ApiError::MissingAuthorization.message(), "No authorization header");
        assert_eq!(ApiError::Session(SessionError::BadSignature).message(), "Unauthorized");
        assert_eq!(ApiError::PowerSync(PowerSyncProblem::Missing(vec![])).message(), "PowerSync not configured");
        assert_eq!(
            ApiError::from(KeyError::UnsupportedCurve("P-384".into())).message(),
            "Failed to import private key"
        );
    }

    #[test]
    fn expired_and_invalid_sessions_share_401_but_not_the_code() {
        let expired = ApiError::Session(SessionError::Expired);
        let invalid = ApiError::Session(SessionError::WrongAudience);
        assert_eq!((expired.status(), invalid.status()), (401, 401));
        assert_eq!((expired.code(), invalid.code()), ("session_expired", "session_invalid"));
    }

    #[test]
    fn our_failures_are_5xx_and_callers_are_4xx() {
        assert_eq!(ApiError::Session(SessionError::KeysUnavailable("x".into())).status(), 503);
        assert_eq!(ApiError::PowerSync(PowerSyncProblem::Invalid(vec![])).status(), 500);
        assert_eq!(ApiError::BadRequest { path: "batch".into(), message: "m".into() }.status(), 400);
        assert_eq!(ApiError::PayloadTooLarge("m".into()).status(), 413);
        assert_eq!(ApiError::AnonymousNotAllowed.status(), 403);
    }

    #[test]
    fn missing_secrets_are_named_in_the_body() {
        let body = ApiError::PowerSync(PowerSyncProblem::Missing(vec!["POWERSYNC_URL".into()])).body("r1");
        assert_eq!(
            body,
            json!({"error": "PowerSync not configured", "code": "powersync_not_configured", "request_id": "r1", "missing": ["POWERSYNC_URL"]})
        );
    }

    #[test]
    fn key_errors_carry_their_precise_code() {
        assert_eq!(ApiError::from(KeyError::EncryptedPem).code(), "private_key_encrypted");
        assert_eq!(ApiError::from(KeyError::EncryptedPem).status(), 500);
    }

    #[test]
    fn session_reason_goes_to_the_log_not_the_body() {
        let e = ApiError::Session(SessionError::WrongIssuer("iss \"x\", expected \"y\"".into()));
        assert!(e.log_detail().unwrap().contains("iss"));
        assert!(!e.body("r").to_string().contains("iss"));
    }
}
