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
    BadRequest { path: String, message: String },
    PayloadTooLarge(String),
    /// Service mode refuses anonymous sign-ins (`UPLOAD_ALLOW_ANONYMOUS` unset).
    AnonymousNotAllowed,
    NotFound,
    MethodNotAllowed { allow: &'static str },
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
            ApiError::PowerSync(_) | ApiError::SessionNotConfigured(_) | ApiError::UploadNotConfigured(_) | ApiError::Signing(_) => 500,
            ApiError::BadRequest { .. } => 400,
            ApiError::PayloadTooLarge(_) => 413,
            ApiError::AnonymousNotAllowed => 403,
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
            ApiError::AnonymousNotAllowed => "anonymous_not_allowed",
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
            ApiError::PowerSync(PowerSyncProblem::Key(_)) | ApiError::Signing(_) => "Failed to import private key".into(),
            ApiError::PowerSync(_) => "PowerSync not configured".into(),
            ApiError::SessionNotConfigured(_) => "Session verification not configured".into(),
            ApiError::UploadNotConfigured(_) => "Upload not configured".into(),
            ApiError::BadRequest { path, message } => format!("{path}: {message}"),
            ApiError::PayloadTooLarge(message) => message.clone(),
            ApiError::AnonymousNotAllowed => "Anonymous sessions cannot upload; sign in".into(),
            ApiError::NotFound => "Not found".into(),
            ApiError::MethodNotAllowed { allow } => format!("Method not allowed; use {allow}"),
        }
    }

    /// Detail for the log line: the reason behind the public message. No secrets.
    pub fn log_detail(&self) -> Option<String> {
        match self {
            ApiError::Session(e) => Some(e.reason()),
            ApiError::PowerSync(PowerSyncProblem::Key(e)) => Some(e.reason()),
            ApiError::Signing(why) => Some(why.clone()),
            _ => None,
        }
    }

    /// The JSON body. Configuration errors name the settings (never their values).
    pub fn body(&self, request_id: &str) -> Value {
        let mut body = json!({ "error": self.message(), "code": self.code(), "request_id": request_id });
        let names = match self {
            ApiError::PowerSync(PowerSyncProblem::Missing(names)) => Some(("missing", names)),
            ApiError::PowerSync(PowerSyncProblem::Invalid(names))
            | ApiError::SessionNotConfigured(names)
            | ApiError::UploadNotConfigured(names) => Some(("invalid", names)),
            _ => None,
        };
        if let Some((key, names)) = names {
            body[key] = json!(names);
        }
        if let ApiError::BadRequest { path, .. } = self {
            body["field"] = json!(path);
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
    fn edge_function_messages_are_kept_verbatim() {
        assert_eq!(ApiError::MissingAuthorization.message(), "No authorization header");
        assert_eq!(ApiError::Session(SessionError::BadSignature).message(), "Unauthorized");
        assert_eq!(ApiError::PowerSync(PowerSyncProblem::Missing(vec![])).message(), "PowerSync not configured");
        assert_eq!(ApiError::from(KeyError::UnsupportedCurve("P-384".into())).message(), "Failed to import private key");
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
        assert_eq!(body, json!({"error": "PowerSync not configured", "code": "powersync_not_configured", "request_id": "r1", "missing": ["POWERSYNC_URL"]}));
    }

    #[test]
    fn key_errors_carry_their_precise_code() {
        assert_eq!(ApiError::from(KeyError::EncryptedPem).code(), "private_key_encrypted");
        assert_eq!(ApiError::from(KeyError::EncryptedPem).status(), 500);
    }

    #[test]
    fn session_reason_goes_to_the_log_not_the_body() {
        let e = ApiError::Session(SessionError::WrongIssuer);
        assert!(e.log_detail().unwrap().contains("iss"));
        assert!(!e.body("r").to_string().contains("iss"));
    }
}
